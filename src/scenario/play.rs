//! `fallacy scenario run`: play a scenario file against a server, with load, and write a
//! report.
//!
//! ```text
//! FILE ─parse─▶ server: --target URL │ --config FILE (embedded) │ the lab (embedded)
//!        │        └ POST /scenarios ─▶ poll GET /scenarios/{name} (progress bar)
//!        ├ load:  -- CMD (its output to OUT/command.log) │ the lab's built-in client
//!        └ end:   the timeline is over │ CMD ended │ Ctrl-C  ─▶ DELETE (reverts, final figures)
//!                   ─▶ OUT/report.json, report.md, *.svg
//! ```
//!
//! Everything a run could trip on (the file, the target, the config, the command) is checked
//! before the scenario is posted, and the server checks the scenario whole before its first
//! change: a failure leaves nothing applied.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use http::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::lab::{self, Load};
use super::{Scenario, report};
use crate::client::{Admin, target_base};
use crate::config;

/// What to play, against what, with what load.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The scenario file (TOML or JSON).
    pub file: PathBuf,
    /// A running server's admin API.
    pub target: Option<String>,
    /// Its bearer token, if it wants one.
    pub admin_token: Option<String>,
    /// A config for an embedded server.
    pub config: Option<PathBuf>,
    /// Where the report goes.
    pub out: PathBuf,
    /// The load command and its arguments (empty: none).
    pub command: Vec<String>,
    /// The lab's built-in client.
    pub load: Load,
    /// Seeds the embedded server (the lab's default is 42; a config's own seed otherwise).
    pub seed: Option<u64>,
    /// Draw a progress bar (when stderr is a terminal).
    pub progress: bool,
}

/// Why a run failed: bad input (nothing was applied; exit 2) or trouble on the way (exit 1).
#[derive(Debug)]
pub enum Failure {
    /// Refused before anything was applied.
    Input(anyhow::Error),
    /// Failed while playing.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Runtime(e)
    }
}

fn input(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Input(e.into())
}

/// What a finished run left.
#[derive(Debug)]
pub struct Outcome {
    /// `report.json`'s content.
    pub report: Value,
    /// The phase table, as printed.
    pub summary: String,
    /// The files written.
    pub files: Vec<PathBuf>,
    /// The load command ended with a failure status.
    pub command_failed: bool,
}

/// How long a command has to show it started: one that ends sooner failed to start.
const START_GRACE: Duration = Duration::from_millis(300);
/// How long a command has to end after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The environment a load command gets: where the admin API and each proxy listen.
fn command_env(admin: &str, proxies: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::from([("FALLACY_ADMIN".to_owned(), admin.to_owned())]);
    for (name, p) in proxies.as_object().into_iter().flatten() {
        if let Some(listen) = p["listen"].as_str() {
            env.insert(env_name(name), listen.to_owned());
        }
    }
    env
}

/// `FALLACY_PROXY_` and the name in capitals, other characters as `_`.
pub fn env_name(proxy: &str) -> String {
    let tail: String = proxy
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("FALLACY_PROXY_{tail}")
}

/// Reads and checks the file.
fn read(file: &Path) -> Result<(Scenario, Value), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| input(anyhow!("{}: cannot read: {e}", file.display())))?;
    Scenario::from_text(&text)
        .map_err(|e| input(anyhow!("{}: {}: {}", file.display(), e.path, e.message)))
}

/// Where the scenario plays: a server someone else runs, or one in this process.
struct Target {
    admin: Admin,
    described: String,
    /// Set for the lab: where its built-in client sends load.
    lab_proxy: Option<std::net::SocketAddr>,
    _embedded: Option<crate::Server>,
}

async fn target(o: &RunOptions, stop: &CancellationToken) -> Result<Target, Failure> {
    if let Some(target) = &o.target {
        let base = target_base(target).map_err(input)?;
        let admin = Admin::new(base.clone(), o.admin_token.clone());
        let (status, _) = admin
            .call(Method::GET, "/version", None)
            .await
            .map_err(|e| {
                input(anyhow!(
                    "--target {base} does not answer: {:#}; is `fallacy serve` running there?",
                    e
                ))
            })?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(input(anyhow!(
                "--target {base} wants an admin token: set FALLACY_ADMIN_TOKEN (or --admin-token){}",
                if o.admin_token.is_some() {
                    "; the one given was refused"
                } else {
                    ""
                }
            )));
        }
        if !status.is_success() {
            return Err(input(anyhow!(
                "--target {base}: GET /version answered {status}; is it a fallacy admin API?"
            )));
        }
        return Ok(Target {
            admin,
            described: format!("the server at {base}"),
            lab_proxy: None,
            _embedded: None,
        });
    }
    let (embedded, described) = match &o.config {
        Some(path) => (
            embedded(path, o.seed, stop).await?,
            format!("an embedded server from {}", path.display()),
        ),
        None => (
            lab::start(o.seed.unwrap_or(42), stop.clone()).await?,
            format!(
                "the lab: proxy \"{}\" (http) in front of an upstream that answers {} bytes at once",
                lab::PROXY,
                lab::BODY_BYTES
            ),
        ),
    };
    let lab_proxy = match o.config {
        Some(_) => None,
        None => Some(
            embedded
                .store
                .get(lab::PROXY)
                .await
                .context("the lab proxy")?
                .listen
                .parse()
                .context("the lab proxy's address")?,
        ),
    };
    Ok(Target {
        admin: Admin::new(format!("http://{}", embedded.admin), None),
        described,
        lab_proxy,
        _embedded: Some(embedded),
    })
}

/// A server in this process from a config file, its admin API on 127.0.0.1:0.
async fn embedded(
    path: &Path,
    seed: Option<u64>,
    stop: &CancellationToken,
) -> Result<crate::Server, Failure> {
    let config = config::load(path).map_err(|e| input(anyhow!("{e}")))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind an admin API on 127.0.0.1")?;
    let config = config::Config {
        seed: seed.or(config.seed),
        ..config
    };
    crate::Server::start(listener, config, None, stop.clone())
        .await
        .map_err(|e| input(anyhow!("{}: {e}", path.display())))
}

/// Starts the load command; one that cannot start, or ends at once, is refused.
async fn spawn(
    command: &[String],
    env: &BTreeMap<String, String>,
    log: &Path,
) -> Result<Child, Failure> {
    let file = std::fs::File::create(log)
        .map_err(|e| input(anyhow!("cannot create {}: {e}", log.display())))?;
    let err_file = file
        .try_clone()
        .map_err(|e| input(anyhow!("{}: {e}", log.display())))?;
    let mut child = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        // Its own process group, so that stopping it stops what it started (`sh -c`).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| input(anyhow!("cannot start the command {:?}: {e}", command[0])))?;
    if let Ok(status) = tokio::time::timeout(START_GRACE, child.wait()).await {
        let status = status.map_err(|e| input(anyhow!("the command {:?}: {e}", command[0])))?;
        let output = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = output.lines().rev().take(5).collect();
        return Err(input(anyhow!(
            "the command {:?} ended at once ({status}), before the scenario started{}",
            command.join(" "),
            if tail.is_empty() {
                String::new()
            } else {
                format!(
                    "; its last output:\n  {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
                )
            }
        )));
    }
    Ok(child)
}

/// SIGTERM to the command's group, SIGKILL after a grace period; answers its status.
async fn stop_command(child: &mut Child) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    if let Some(pid) = child.id() {
        let group = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(STOP_GRACE, child.wait()).await {
            return status.ok();
        }
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
    child.wait().await.ok()
}

fn progress(o: &RunOptions, total: Option<Duration>) -> ProgressBar {
    if !o.progress {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => ProgressBar::new(t.as_millis() as u64),
        None => ProgressBar::no_length(),
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{bar:24}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A line above the bar, or on stderr when there is no bar to draw.
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn live_line(status: &Value, total: Option<Duration>) -> String {
    let elapsed = status["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    let of = total.map_or(String::new(), |t| format!("/{:.0}", t.as_secs_f64()));
    let phase = status["phase"].as_str().unwrap_or("baseline");
    let l = &status["latest"];
    let ms = |v: &Value| v.as_f64().map_or("-".into(), |v| format!("{v:.1} ms"));
    format!(
        "{elapsed:.1}{of} s │ {phase} │ {:.0} req/s │ p50 {} │ p99 {} │ errors {} │ false timeouts {} │ amplification {}",
        l["requests_per_s"].as_f64().unwrap_or(0.0),
        ms(&l["p50_ms"]),
        ms(&l["p99_ms"]),
        l["errors"].as_u64().unwrap_or(0),
        l["false_timeouts"].as_u64().unwrap_or(0),
        l["amplification"]
            .as_f64()
            .map_or("-".into(), |a| format!("{a:.2}×")),
    )
}

/// How the run ended.
enum EndedBy {
    Timeline,
    Command(std::process::ExitStatus),
    Interrupted,
}

/// Plays the scenario and writes the report.
pub async fn run(o: RunOptions) -> Result<Outcome, Failure> {
    let (scenario, body) = read(&o.file)?;
    std::fs::create_dir_all(&o.out)
        .map_err(|e| input(anyhow!("--out {}: cannot create: {e}", o.out.display())))?;
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let server = target(&o, &stop).await?;
    let admin = &server.admin;
    let (_, proxies) = admin.call(Method::GET, "/proxies", None).await?;

    let mut child = None;
    if !o.command.is_empty() {
        let env = command_env(&admin.base, &proxies);
        child = Some(spawn(&o.command, &env, &o.out.join("command.log")).await?);
    }
    let (status, answer) = admin.call(Method::POST, "/scenarios", Some(&body)).await?;
    if status != StatusCode::CREATED {
        if let Some(c) = child.as_mut() {
            stop_command(c).await;
        }
        let why = answer["error"]
            .as_str()
            .map_or(answer.to_string(), str::to_owned);
        return Err(input(anyhow!(
            "{}: refused ({status}): {why}",
            o.file.display()
        )));
    }

    // Load from the lab's own client when there is no command.
    let lab_counts = Arc::new(lab::Counts::default());
    let load_stop = CancellationToken::new();
    let load = match (server.lab_proxy, child.is_none()) {
        (Some(addr), true) => Some(tokio::spawn(lab::drive(
            addr,
            o.load.clone(),
            load_stop.clone(),
            lab_counts.clone(),
        ))),
        _ => None,
    };

    let total = (scenario.repeat > 0).then(|| scenario.duration * scenario.repeat);
    let bar = progress(&o, total);
    say(
        &bar,
        format!(
            "playing {:?} against {} ({})",
            scenario.name,
            server.described,
            match (&child, &load) {
                (Some(_), _) => format!("load: {}", o.command.join(" ")),
                (None, Some(_)) => format!(
                    "load: built-in client, {} req/s, {} ms timeout, {} retries",
                    o.load.rate,
                    o.load.timeout.as_millis(),
                    o.load.retries
                ),
                (None, None) => "no load of its own: it measures whatever passes".into(),
            }
        ),
    );
    let path = format!("/scenarios/{}", crate::client::segment(&scenario.name));
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    let mut phase = String::new();
    let ended = loop {
        let exited = async {
            match child.as_mut() {
                Some(c) => c.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut interrupt => break EndedBy::Interrupted,
            status = exited => break EndedBy::Command(status.context("waiting for the command")?),
            _ = ticker.tick() => {}
        }
        let (code, s) = admin.call(Method::GET, &path, None).await?;
        if code != StatusCode::OK {
            return Err(
                anyhow!("GET {path} answered {code}: {s} (was the scenario deleted?)").into(),
            );
        }
        if let Some(p) = s["phase"].as_str().filter(|p| *p != phase) {
            phase = p.to_owned();
            say(
                &bar,
                format!(
                    "{:>7.1} s  phase {p}",
                    s["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
                ),
            );
        }
        bar.set_position(s["elapsed_ms"].as_u64().unwrap_or(0));
        bar.set_message(live_line(&s, total));
        if s["state"] != "running" {
            break EndedBy::Timeline;
        }
    };
    let (code, record) = admin.call(Method::DELETE, &path, None).await?;
    if code != StatusCode::OK {
        return Err(anyhow!("DELETE {path} answered {code}: {record}").into());
    }
    bar.finish_and_clear();
    load_stop.cancel();
    if let Some(task) = load {
        let _ = task.await;
    }
    let command_status = match (&ended, child.as_mut()) {
        (EndedBy::Command(status), _) => Some(*status),
        (_, Some(c)) => stop_command(c).await,
        _ => None,
    };
    let ended_by = match ended {
        EndedBy::Timeline => "the timeline ended",
        EndedBy::Command(_) => "the command ended",
        EndedBy::Interrupted => "interrupted (Ctrl-C)",
    };
    let command_failed = matches!(ended, EndedBy::Command(s) if !s.success());
    let report = json!({
        "scenario": record,
        "file": o.file.display().to_string(),
        "against": server.described,
        "ended_by": ended_by,
        "command": (!o.command.is_empty()).then(|| json!({
            "argv": o.command,
            "status": command_status.map(|s| s.to_string()),
            "success": command_status.map(|s| s.success()),
            "log": "command.log",
        })),
        "builtin_load": server.lab_proxy.filter(|_| o.command.is_empty()).map(|_| lab_counts.to_json(&o.load)),
    });
    let files = report::write(&o.out, &report).context("writing the report")?;
    Ok(Outcome {
        summary: report::phase_table(&report["scenario"]),
        report,
        files,
        command_failed,
    })
}

/// `fallacy scenario check`: the file, then its changes against the lab or a config, without
/// playing it. Answers a one-line summary.
pub async fn check(file: &Path, config_path: Option<&Path>) -> Result<String, Failure> {
    let (scenario, _) = read(file)?;
    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let (server, against) = match config_path {
        Some(path) => (
            embedded(path, None, &stop).await?,
            path.display().to_string(),
        ),
        None => (lab::start(0, stop.clone()).await?, "the lab".to_owned()),
    };
    super::runner::check(&server.store, &scenario)
        .await
        .map_err(|e| input(anyhow!("{}: {}: {}", file.display(), e.path, e.message)))?;
    let changes = scenario.plan_cycle(0).len();
    Ok(format!(
        "{}: ok ({:?}: {} steps, {changes} changes a cycle, {} long, repeat {}; checked against {against})",
        file.display(),
        scenario.name,
        scenario.steps.len(),
        crate::units::format_duration(scenario.duration),
        scenario.repeat,
    ))
}

/// `fallacy scenario report`: writes the report again from a saved `report.json`.
pub fn redraw(file: &Path, out: &Path) -> Result<Vec<PathBuf>, Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| input(anyhow!("{}: cannot read: {e}", file.display())))?;
    let report: Value = serde_json::from_str(&text).map_err(|e| {
        input(anyhow!(
            "{}:{}:{}: not JSON: {e}",
            file.display(),
            e.line(),
            e.column()
        ))
    })?;
    if !report["scenario"]["phases"].is_array() {
        return Err(input(anyhow!(
            "{}: scenario.phases: missing; is this a report.json written by `fallacy scenario run`?",
            file.display()
        )));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| input(anyhow!("--out {}: cannot create: {e}", out.display())))?;
    Ok(report::write(out, &report)?)
}
