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
    /// Log lines as text, or as one JSON object per line. RUST_LOG sets the filter; PUT
    /// /log-level changes it while serving.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "FALLACY_LOG_FORMAT"
    )]
    log_format: fallacy::logging::Format,
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
        /// Threads TCP connections run on, each with its own event loop [default: one per
        /// CPU, or [server] threads from the config].
        #[arg(long, value_name = "N", env = "FALLACY_THREADS", value_parser = clap::value_parser!(u16).range(1..=fallacy::proxy::dataplane::MAX_THREADS as i64))]
        threads: Option<u16>,
        /// Require `Authorization: Bearer TOKEN` on every admin route but /healthz and
        /// /readyz. With a token, the admin API may listen beyond loopback.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "FALLACY_ADMIN_TOKEN",
            hide_env_values = true
        )]
        admin_token: Option<String>,
        /// Read the admin token from this file (trailing whitespace dropped), e.g. a mounted
        /// Kubernetes or compose secret; keeps it out of the environment and the process list.
        #[arg(
            long,
            value_name = "FILE",
            env = "FALLACY_ADMIN_TOKEN_FILE",
            conflicts_with = "admin_token"
        )]
        admin_token_file: Option<PathBuf>,
        /// With a token, let GET /metrics through without it, for scrapers that cannot send
        /// one (Prometheus's pod annotations).
        #[arg(long, env = "FALLACY_METRICS_PUBLIC")]
        metrics_public: bool,
        /// Allow the admin API on a non-loopback address without a token. Anyone who can reach
        /// it can change every proxy.
        #[arg(long, env = "FALLACY_INSECURE_ADMIN")]
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
    /// Ask a running fallacy's GET /healthz: exit 0 when it answers 200, 1 otherwise (for a
    /// container's HEALTHCHECK: the image has no curl).
    Health {
        /// Its admin API.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8474")]
        admin: String,
    },
    /// Drive a running fallacy (or a fleet of them) through its admin API.
    Ctl(fallacy::ctl::CtlArgs),
    /// Print a shell completion script: bash, zsh, fish, elvish or powershell.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `fallacy man > fallacy.1`.
    Man,
    /// Fault timelines: play one with load and write a report, or check one.
    Scenario {
        #[command(subcommand)]
        action: ScenarioCommand,
    },
}

#[derive(Subcommand)]
enum ScenarioCommand {
    /// Play a scenario with load and write report.md, report.json and SVG charts.
    ///
    /// Without --target or --config it plays against the lab: an embedded upstream behind an
    /// HTTP proxy named "api", loaded by a built-in client (the examples in config/scenarios/
    /// act on it). With `-- CMD ...`, CMD is the load: it runs during the scenario, its output
    /// goes to OUT/command.log, and it finds the proxies in FALLACY_PROXY_<NAME> (host:port)
    /// and the admin API in FALLACY_ADMIN. The run ends when the timeline or CMD ends.
    Run {
        /// The scenario, TOML or JSON.
        file: PathBuf,
        /// A running fallacy's admin API (host:port or http:// URL).
        #[arg(long, value_name = "URL", conflicts_with = "config")]
        target: Option<String>,
        /// The target's admin token, if it wants one.
        #[arg(
            long,
            value_name = "TOKEN",
            env = "FALLACY_ADMIN_TOKEN",
            hide_env_values = true
        )]
        admin_token: Option<String>,
        /// Start an embedded server from this config instead of the lab.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where the report goes.
        #[arg(long, value_name = "DIR", default_value = "fallacy-report")]
        out: PathBuf,
        /// The built-in client's logical requests per second.
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        rate: u32,
        /// The built-in client's timeout per attempt.
        #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_timeout)]
        client_timeout: std::time::Duration,
        /// The built-in client's retries after a failure or timeout.
        #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
        retries: u32,
        /// Seed the embedded server's random draws.
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
        /// The load command and its arguments, after `--`.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Redraw report.md and the charts from a saved report.json.
    Report {
        /// The report.json a run wrote.
        file: PathBuf,
        /// Where the redrawn report goes [default: beside FILE].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Check a scenario file, and its changes against the lab or a config, without playing it.
    Check {
        /// The scenario, TOML or JSON.
        file: PathBuf,
        /// Check against the proxies of this config instead of the lab's.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match fallacy::units::parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0".into()),
        d => Ok(d),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo, scenarios and health print their own output; the servers they start need not
    // announce themselves.
    fallacy::logging::init(
        if matches!(cli.command, Command::Serve { .. } | Command::Check { .. }) {
            "info"
        } else {
            "warn"
        },
        cli.log_format,
    );
    match cli.command {
        Command::Ctl(args) => ctl(&args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "fallacy", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                // `fallacy man | head` is not a failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fallacy man: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Health { admin } => health(&admin),
        Command::Scenario { action } => scenario(action),
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
            threads,
            admin_token,
            admin_token_file,
            metrics_public,
            insecure_admin,
        } => {
            if admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
                eprintln!(
                    "fallacy: --admin-token (FALLACY_ADMIN_TOKEN) is empty; unset it or give a token"
                );
                return ExitCode::from(2);
            }
            let from_file = match admin_token_file.as_deref().map(read_token_file).transpose() {
                Ok(token) => token,
                Err(err) => {
                    eprintln!("fallacy: {err}");
                    return ExitCode::from(2);
                }
            };
            let config_path = config;
            let config = match config_path.as_deref().map(config::load).transpose() {
                Ok(c) => c.unwrap_or_default(),
                Err(err) => {
                    eprintln!("{err}");
                    return ExitCode::from(2);
                }
            };
            // The command line wins over the file, as for every other setting.
            let admin_token = admin_token
                .map(config::Secret::from)
                .or(from_file)
                .or(config.admin_token.clone());
            // Name where the address came from, so an error points at what to change.
            let (admin, origin) = match (admin, &config.admin, &config_path) {
                (Some(a), _, _) => (a, "--admin".to_owned()),
                (None, Some(a), Some(path)) => {
                    (a.clone(), format!("{}: [admin] listen", path.display()))
                }
                (None, _, _) => (config::DEFAULT_ADMIN.to_owned(), "--admin".to_owned()),
            };
            let admin = match admin_addr(&admin, &origin, insecure_admin || admin_token.is_some()) {
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
                    threads: threads.map(usize::from).or(config.threads),
                    admin_token,
                    metrics_public,
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

fn scenario(action: ScenarioCommand) -> ExitCode {
    use fallacy::scenario::play::{self, Failure};
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("fallacy scenario: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let failed = |f: Failure| match f {
        Failure::Input(e) => {
            eprintln!("fallacy scenario: {e:#}");
            ExitCode::from(2)
        }
        Failure::Runtime(e) => {
            eprintln!("fallacy scenario: {e:#}");
            ExitCode::from(1)
        }
    };
    match action {
        ScenarioCommand::Report { file, out } => {
            let out = out.unwrap_or_else(|| {
                file.parent()
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("."))
            });
            match play::redraw(&file, &out) {
                Ok(files) => {
                    for f in &files {
                        println!("wrote {}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(f) => failed(f),
            }
        }
        ScenarioCommand::Check { file, config } => {
            match runtime.block_on(play::check(&file, config.as_deref())) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(f) => failed(f),
            }
        }
        ScenarioCommand::Run {
            file,
            target,
            admin_token,
            config,
            out,
            rate,
            client_timeout,
            retries,
            seed,
            command,
        } => {
            let options = play::RunOptions {
                file,
                target,
                admin_token,
                config,
                out,
                command,
                load: fallacy::scenario::lab::Load {
                    rate,
                    timeout: client_timeout,
                    retries,
                    seed: seed.unwrap_or(42),
                },
                seed,
                progress: true,
            };
            match runtime.block_on(play::run(options)) {
                Ok(outcome) => {
                    println!("{}", outcome.summary);
                    for f in &outcome.files {
                        println!("wrote {}", f.display());
                    }
                    if outcome.command_failed {
                        eprintln!("fallacy scenario: the load command failed; see command.log");
                        ExitCode::from(1)
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(f) => failed(f),
            }
        }
    }
}

fn ctl(args: &fallacy::ctl::CtlArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("fallacy ctl: cannot start the runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(fallacy::ctl::run(args)) {
        Ok(out) => {
            print!("{}", out.text);
            for e in &out.errors {
                eprintln!("fallacy ctl: {e}");
            }
            if out.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("fallacy ctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn health(admin: &str) -> ExitCode {
    use std::io::Read;
    let answer = (|| -> anyhow::Result<String> {
        let addr = admin
            .to_socket_addrs()
            .with_context(|| format!("--admin {admin:?}: cannot resolve"))?
            .next()
            .with_context(|| format!("--admin {admin:?}: no address"))?;
        let wait = std::time::Duration::from_secs(2);
        let mut s = std::net::TcpStream::connect_timeout(&addr, wait)
            .with_context(|| format!("{addr}: cannot connect"))?;
        s.set_read_timeout(Some(wait))?;
        s.set_write_timeout(Some(wait))?;
        write!(
            s,
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut head = String::new();
        s.take(4096).read_to_string(&mut head)?;
        Ok(head.lines().next().unwrap_or_default().to_owned())
    })();
    match answer {
        Ok(status) if status.split(' ').nth(1) == Some("200") => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("fallacy health: {admin}: GET /healthz answered {status:?}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("fallacy health: {e:#}");
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
/// The token in `path`, without the trailing newline an editor or `echo` leaves. Errors name
/// the file and never show its content.
fn read_token_file(path: &std::path::Path) -> Result<config::Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--admin-token-file {}: cannot read: {e}", path.display()))?;
    let token = text.trim_end();
    if token.trim().is_empty() {
        return Err(format!(
            "--admin-token-file {}: the file is empty; put the token in it",
            path.display()
        ));
    }
    Ok(token.into())
}

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
             set FALLACY_ADMIN_TOKEN (or --admin-token, --admin-token-file, [admin] token), or pass --insecure-admin \
             (FALLACY_INSECURE_ADMIN=true) if every host that can reach it is trusted"
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
    // SIGHUP reloads the config file (when there is one); a bad file is logged and changes
    // nothing.
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        let server = server.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match server.reload().await {
                    Some(Ok(report)) => tracing::info!(%report, "SIGHUP: config reloaded"),
                    Some(Err(err)) => {
                        tracing::error!(%err, "SIGHUP: config not reloaded; the running one is kept")
                    }
                    None => tracing::warn!("SIGHUP: started without --config, nothing to reload"),
                }
            }
        });
    }
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
