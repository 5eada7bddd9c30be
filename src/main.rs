//! The `fallacy` binary: parse the command line, load the config, bind, run, map exit codes.
//! Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fallacy::config::{self, Config};
use fallacy::{Server, shutdown};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fallacy",
    version,
    about = "A fault-injecting TCP proxy with a Toxiproxy-compatible API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxies and the admin API.
    Serve {
        /// Config file: fallacy TOML, or a Toxiproxy populate JSON array.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Admin API address [default: 127.0.0.1:8474, or [admin] listen from the config].
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
        /// Seed every random draw, so a run can be replayed.
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
        /// Allow the admin API on a non-loopback address. Anyone who can reach it can change
        /// every proxy.
        #[arg(long)]
        insecure_admin: bool,
    },
    /// Validate a config file and print every error with its line and column.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// The timeout false-positive lesson: a client with a 100 ms timeout, a lognormal delay
    /// (p50 20 ms, p99 300 ms), and what fallacy measured. Needs nothing else.
    Demo {
        /// Print the figures as JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Logical requests per run (one run without retries, one with).
        #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        requests: u32,
        /// Seed fallacy's delays and the client's jitter.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints tables; the proxies it starts need not announce themselves.
    init_tracing(if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    });
    match cli.command {
        Command::Check { file } => check(&file),
        Command::Demo {
            json,
            requests,
            seed,
        } => demo(json, requests, seed),
        Command::Serve {
            config,
            admin,
            seed,
            insecure_admin,
        } => {
            let config_path = config;
            let config = match config_path.as_deref().map(config::load).transpose() {
                Ok(c) => c.unwrap_or_default(),
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(2);
                }
            };
            // Name where the address came from, so an error points at what to change.
            let (admin, origin) = match (admin, &config.admin, &config_path) {
                (Some(a), _, _) => (a, "--admin".to_owned()),
                (None, Some(a), Some(path)) => {
                    (a.clone(), format!("{}: [admin] listen", path.display()))
                }
                (None, _, _) => (config::DEFAULT_ADMIN.to_owned(), "--admin".to_owned()),
            };
            let admin = match admin_addr(&admin, &origin, insecure_admin) {
                Ok(addr) => addr,
                Err(err) => {
                    eprintln!("fallacy: {err:#}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(err) => {
                    eprintln!("fallacy: cannot start the runtime: {err}");
                    return ExitCode::from(1);
                }
            };
            match runtime.block_on(serve(
                admin,
                Config {
                    seed: seed.or(config.seed),
                    ..config
                },
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("fallacy: {err:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn demo(json: bool, requests: u32, seed: u64) -> ExitCode {
    let options = fallacy::demo::Options {
        requests: requests as usize,
        seed,
        progress: !json,
        ..Default::default()
    };
    let report = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(fallacy::demo::run(options)));
    match report {
        Ok(report) if json => {
            println!("{:#}", report.to_json());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("fallacy demo: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    match config::load(file) {
        Ok(config) => {
            let toxics: usize = config.proxies.iter().map(|p| p.toxics.len()).sum();
            println!(
                "{}: ok ({} proxies, {toxics} toxics)",
                file.display(),
                config.proxies.len()
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::from(2)
        }
    }
}

/// Resolves the admin address and refuses a non-loopback one unless explicitly allowed.
/// `origin` names where the address came from (`--admin`, or the config file's key).
fn admin_addr(admin: &str, origin: &str, insecure: bool) -> anyhow::Result<SocketAddr> {
    config::validate_addr(admin).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let addr = admin
        .to_socket_addrs()
        .with_context(|| format!("{origin}: cannot resolve {admin:?}"))?
        .next()
        .with_context(|| format!("{origin}: {admin:?} resolves to no address"))?;
    if !addr.ip().is_loopback() && !insecure {
        anyhow::bail!(
            "{origin} {admin}: refusing to expose the admin API beyond loopback without a token; \
             pass --insecure-admin if every host that can reach it is trusted"
        );
    }
    Ok(addr)
}

async fn serve(admin: SocketAddr, config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(admin).await.with_context(|| {
        format!("cannot listen on {admin} for the admin API (is another fallacy or Toxiproxy running? choose another with --admin)")
    })?;
    let bound = listener.local_addr()?;
    let prometheus = fallacy::metrics::prometheus_builder()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    fallacy::metrics::describe();

    let shutdown = CancellationToken::new();
    let server = Server::start(listener, config, Some(prometheus), shutdown.clone()).await?;

    // Handlers first, then the ready line: see `Signals`.
    let signals = shutdown::Signals::install();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("signal received; draining");
        on_signal.cancel();
    });

    // Scripts wait for this line: it is printed once every configured proxy listens.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "fallacy admin API on http://{bound}");
    let _ = stdout.flush();
    server.run_until_shutdown().await;
    Ok(())
}

fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // No colour codes in log files and CI output.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}
