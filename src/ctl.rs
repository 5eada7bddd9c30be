//! `fallacy ctl`: the whole admin API from the command line, on one server or a fleet.
//!
//! Each command is one request (toggle and watch are a few); the answer is printed as a table
//! or text, or as the API's JSON with `--json`. `--target` may repeat, and a DNS name that
//! resolves to several addresses means each of them (a Kubernetes headless Service, say): the
//! request goes to every one, and the exit code is 1 if any of them failed.

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::client::{Admin, segment as seg, target_base};

/// Where and how.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Admin API: host:port or http://host:port. Repeat it, or give a DNS name with several
    /// addresses, to act on a fleet.
    #[arg(
        long = "target",
        short = 't',
        value_name = "URL",
        default_value = "127.0.0.1:8474",
        env = "FALLACY_TARGET",
        value_delimiter = ','
    )]
    pub targets: Vec<String>,
    /// Bearer token, when the admin API wants one (also `--admin-token`, as `serve` spells it).
    #[arg(
        long,
        alias = "admin-token",
        value_name = "TOKEN",
        env = "FALLACY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON answers (an object by target when there are several).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Ctl,
}

/// Every route of the admin API.
#[derive(Debug, Subcommand)]
pub enum Ctl {
    /// Every proxy.
    List,
    /// One proxy, with its toxics.
    Show {
        /// The proxy.
        proxy: String,
    },
    /// Create a proxy.
    Create {
        /// Its name.
        name: String,
        /// Where it listens (host:port; port 0 picks one).
        #[arg(long)]
        listen: String,
        /// Where it forwards (host:port).
        #[arg(long)]
        upstream: String,
        /// tcp, http or udp.
        #[arg(long)]
        protocol: Option<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
        /// The node its clients are on (labels.from), for partitions.
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// The node its upstream is on (labels.to).
        #[arg(long, requires = "from")]
        to: Option<String>,
    },
    /// Change a proxy's listen address or upstream.
    Update {
        /// The proxy.
        proxy: String,
        /// New listen address.
        #[arg(long)]
        listen: Option<String>,
        /// New upstream.
        #[arg(long)]
        upstream: Option<String>,
        /// Close open connections when the upstream changes.
        #[arg(long)]
        drain: bool,
    },
    /// Delete a proxy.
    Delete {
        /// The proxy.
        proxy: String,
    },
    /// Enable a disabled proxy, or disable an enabled one.
    Toggle {
        /// The proxy.
        proxy: String,
    },
    /// Enable a proxy.
    Enable {
        /// The proxy.
        proxy: String,
    },
    /// Disable a proxy (its listener closes; toxics stay).
    Disable {
        /// The proxy.
        proxy: String,
    },
    /// Create or replace proxies from a JSON array (Toxiproxy's populate).
    Populate {
        /// The file.
        file: PathBuf,
    },
    /// Toxics of a proxy.
    #[command(subcommand)]
    Toxic(ToxicCmd),
    /// Partitions between groups of nodes.
    #[command(subcommand)]
    Partition(PartitionCmd),
    /// Scenarios running on the server.
    #[command(subcommand)]
    Scenario(ScenarioCmd),
    /// A proxy's live figures.
    Stats {
        /// The proxy.
        proxy: String,
    },
    /// The timeout that keeps a proxy's false timeouts under a rate.
    Advice {
        /// The proxy.
        proxy: String,
        /// The false-timeout rate, strictly between 0 and 1.
        #[arg(long, default_value = "0.001")]
        rate: String,
    },
    /// The last admin changes.
    Audit {
        /// How many (1 to 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Remove every toxic, enable every proxy, heal every partition.
    Reset,
    /// Read the server's config file again and apply what changed.
    Reload,
    /// Show the log filter, or set it (a level or RUST_LOG directives).
    LogLevel {
        /// The new filter.
        level: Option<String>,
    },
    /// The server's version.
    Version,
    /// The Prometheus metrics.
    Metrics,
    /// Ready or not (GET /readyz: ready once every configured listener is bound).
    Health,
    /// The OpenAPI description of the API.
    Openapi,
    /// Drain and stop the server.
    Shutdown,
    /// A live table of every proxy: connections, bytes, faults, requests, false timeouts.
    Watch {
        /// Time between refreshes.
        #[arg(long, default_value = "1s", value_parser = crate::units::parse_duration)]
        interval: Duration,
        /// Stop after this many refreshes (default: until Ctrl-C).
        #[arg(long)]
        count: Option<u64>,
    },
}

/// `fallacy ctl toxic ...`
#[derive(Debug, Subcommand)]
pub enum ToxicCmd {
    /// A proxy's toxics.
    List {
        /// The proxy.
        proxy: String,
    },
    /// One toxic.
    Show {
        /// The proxy.
        proxy: String,
        /// The toxic.
        name: String,
    },
    /// Add a toxic: `fallacy ctl toxic add db --type latency -a latency=300`.
    Add {
        /// The proxy.
        proxy: String,
        /// The toxic's type (latency, bandwidth, ... see the README's catalog).
        #[arg(long = "type")]
        kind: String,
        /// Its name [default: TYPE_STREAM].
        #[arg(long)]
        name: Option<String>,
        /// upstream or downstream [default: downstream].
        #[arg(long)]
        stream: Option<String>,
        /// The share of connections (or requests) it applies to, 0 to 1.
        #[arg(long)]
        toxicity: Option<f64>,
        /// An attribute, KEY=VALUE; VALUE is read as JSON when it is JSON (300, true,
        /// "5s", {...}), else as a string. Repeat for several.
        #[arg(short = 'a', long = "attribute", value_name = "KEY=VALUE")]
        attributes: Vec<String>,
    },
    /// Change a toxic's attributes or toxicity.
    Update {
        /// The proxy.
        proxy: String,
        /// The toxic.
        name: String,
        /// New toxicity.
        #[arg(long)]
        toxicity: Option<f64>,
        /// An attribute to change, KEY=VALUE.
        #[arg(short = 'a', long = "attribute", value_name = "KEY=VALUE")]
        attributes: Vec<String>,
    },
    /// Remove a toxic.
    Remove {
        /// The proxy.
        proxy: String,
        /// The toxic.
        name: String,
    },
}

/// `fallacy ctl partition ...`
#[derive(Debug, Subcommand)]
pub enum PartitionCmd {
    /// Every partition.
    List,
    /// One partition.
    Show {
        /// Its name.
        name: String,
    },
    /// Cut the nodes of A from those of B: `fallacy ctl partition create split --a app --b db`.
    Create {
        /// Its name.
        name: String,
        /// One side: nodes or proxies, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        a: Vec<String>,
        /// The other side.
        #[arg(long, value_delimiter = ',', required = true)]
        b: Vec<String>,
        /// both or a_to_b.
        #[arg(long)]
        direction: Option<String>,
        /// blackhole or reset.
        #[arg(long)]
        mode: Option<String>,
        /// Heal by itself after this long (e.g. 30s).
        #[arg(long)]
        duration: Option<String>,
        /// Who made it.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Heal a partition.
    Heal {
        /// Its name.
        name: String,
    },
}

/// `fallacy ctl scenario ...`
#[derive(Debug, Subcommand)]
pub enum ScenarioCmd {
    /// Start a scenario from a TOML or JSON file.
    Start {
        /// The file.
        file: PathBuf,
    },
    /// Every scenario started.
    List,
    /// One scenario: its phase and the figures of each phase.
    Show {
        /// Its name.
        name: String,
    },
    /// Stop a scenario (reverting it); prints its final figures.
    Stop {
        /// Its name.
        name: String,
    },
}

/// One request.
struct Call {
    method: Method,
    path: String,
    body: Option<Value>,
    /// Raw body text (a scenario file) instead of JSON.
    text: Option<String>,
}

fn call(method: Method, path: impl Into<String>) -> Call {
    Call {
        method,
        path: path.into(),
        body: None,
        text: None,
    }
}

fn with(mut c: Call, body: Value) -> Call {
    c.body = Some(body);
    c
}

/// `KEY=VALUE` pairs as a JSON object; values that parse as JSON are taken as such.
pub fn attributes(pairs: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut out = Map::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("--attribute {pair:?}: expected KEY=VALUE, e.g. latency=300"))?;
        if key.is_empty() {
            anyhow::bail!("--attribute {pair:?}: the key is empty");
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

fn read(file: &PathBuf) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))
}

/// The request a command makes (toggle and watch are handled apart).
fn request(command: &Ctl) -> anyhow::Result<Call> {
    use Method as M;
    Ok(match command {
        Ctl::List => call(M::GET, "/proxies"),
        Ctl::Show { proxy } => call(M::GET, format!("/proxies/{}", seg(proxy))),
        Ctl::Create {
            name,
            listen,
            upstream,
            protocol,
            disabled,
            from,
            to,
        } => {
            let mut body =
                json!({"name": name, "listen": listen, "upstream": upstream, "enabled": !disabled});
            if let Some(p) = protocol {
                body["protocol"] = json!(p);
            }
            if let (Some(from), Some(to)) = (from, to) {
                body["labels"] = json!({"from": from, "to": to});
            }
            with(call(M::POST, "/proxies"), body)
        }
        Ctl::Update {
            proxy,
            listen,
            upstream,
            drain,
        } => {
            let mut body = Map::new();
            if let Some(l) = listen {
                body.insert("listen".into(), json!(l));
            }
            if let Some(u) = upstream {
                body.insert("upstream".into(), json!(u));
            }
            if body.is_empty() {
                anyhow::bail!("update: give --listen, --upstream or both");
            }
            let query = if *drain { "?drain=true" } else { "" };
            with(
                call(M::POST, format!("/proxies/{}{query}", seg(proxy))),
                Value::Object(body),
            )
        }
        Ctl::Delete { proxy } => call(M::DELETE, format!("/proxies/{}", seg(proxy))),
        Ctl::Enable { proxy } | Ctl::Disable { proxy } | Ctl::Toggle { proxy } => with(
            call(M::POST, format!("/proxies/{}", seg(proxy))),
            json!({"enabled": matches!(command, Ctl::Enable { .. })}),
        ),
        Ctl::Populate { file } => {
            let text = read(file)?;
            let body: Value = serde_json::from_str(&text).map_err(|e| {
                anyhow!(
                    "{}:{}:{}: not JSON: {e}",
                    file.display(),
                    e.line(),
                    e.column()
                )
            })?;
            with(call(M::POST, "/populate"), body)
        }
        Ctl::Toxic(t) => match t {
            ToxicCmd::List { proxy } => call(M::GET, format!("/proxies/{}/toxics", seg(proxy))),
            ToxicCmd::Show { proxy, name } => call(
                M::GET,
                format!("/proxies/{}/toxics/{}", seg(proxy), seg(name)),
            ),
            ToxicCmd::Add {
                proxy,
                kind,
                name,
                stream,
                toxicity,
                attributes: pairs,
            } => {
                let mut body = json!({"type": kind, "attributes": attributes(pairs)?});
                if let Some(n) = name {
                    body["name"] = json!(n);
                }
                if let Some(s) = stream {
                    body["stream"] = json!(s);
                }
                if let Some(t) = toxicity {
                    body["toxicity"] = json!(t);
                }
                with(
                    call(M::POST, format!("/proxies/{}/toxics", seg(proxy))),
                    body,
                )
            }
            ToxicCmd::Update {
                proxy,
                name,
                toxicity,
                attributes: pairs,
            } => {
                let mut body = json!({"attributes": attributes(pairs)?});
                if let Some(t) = toxicity {
                    body["toxicity"] = json!(t);
                }
                if pairs.is_empty() && toxicity.is_none() {
                    anyhow::bail!("toxic update: give --toxicity or -a KEY=VALUE");
                }
                with(
                    call(
                        M::POST,
                        format!("/proxies/{}/toxics/{}", seg(proxy), seg(name)),
                    ),
                    body,
                )
            }
            ToxicCmd::Remove { proxy, name } => call(
                M::DELETE,
                format!("/proxies/{}/toxics/{}", seg(proxy), seg(name)),
            ),
        },
        Ctl::Partition(p) => match p {
            PartitionCmd::List => call(M::GET, "/partitions"),
            PartitionCmd::Show { name } => call(M::GET, format!("/partitions/{}", seg(name))),
            PartitionCmd::Create {
                name,
                a,
                b,
                direction,
                mode,
                duration,
                owner,
            } => {
                let mut body = json!({"name": name, "a": a, "b": b});
                for (key, value) in [
                    ("direction", direction),
                    ("mode", mode),
                    ("duration", duration),
                    ("owner", owner),
                ] {
                    if let Some(v) = value {
                        body[key] = json!(v);
                    }
                }
                with(call(M::POST, "/partitions"), body)
            }
            PartitionCmd::Heal { name } => call(M::DELETE, format!("/partitions/{}", seg(name))),
        },
        Ctl::Scenario(s) => match s {
            ScenarioCmd::Start { file } => Call {
                text: Some(read(file)?),
                ..call(M::POST, "/scenarios")
            },
            ScenarioCmd::List => call(M::GET, "/scenarios"),
            ScenarioCmd::Show { name } => call(M::GET, format!("/scenarios/{}", seg(name))),
            ScenarioCmd::Stop { name } => call(M::DELETE, format!("/scenarios/{}", seg(name))),
        },
        Ctl::Stats { proxy } => call(M::GET, format!("/proxies/{}/stats", seg(proxy))),
        Ctl::Advice { proxy, rate } => call(
            M::GET,
            format!(
                "/proxies/{}/timeout-advice?false_timeout_rate={}",
                seg(proxy),
                seg(rate)
            ),
        ),
        Ctl::Audit { limit } => call(
            M::GET,
            match limit {
                Some(n) => format!("/audit?limit={n}"),
                None => "/audit".into(),
            },
        ),
        Ctl::Reset => call(M::POST, "/reset"),
        Ctl::Reload => call(M::POST, "/reload"),
        Ctl::LogLevel { level: None } => call(M::GET, "/log-level"),
        Ctl::LogLevel { level: Some(l) } => with(call(M::PUT, "/log-level"), json!({"level": l})),
        Ctl::Version => call(M::GET, "/version"),
        Ctl::Metrics => call(M::GET, "/metrics"),
        Ctl::Health => call(M::GET, "/readyz"),
        Ctl::Openapi => call(M::GET, "/openapi.json"),
        Ctl::Shutdown => call(M::POST, "/shutdown"),
        Ctl::Watch { .. } => call(M::GET, "/proxies"),
    })
}

/// Each target as a base URL; a name with several addresses gives each (IPv4 ones when there
/// are any, so that `localhost` means one server, not its IPv4 and IPv6 faces).
pub fn expand(targets: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for t in targets {
        let base = target_base(t)?;
        let authority = base.trim_start_matches("http://");
        let addrs: Vec<_> = authority
            .to_socket_addrs()
            .with_context(|| format!("--target {t:?}: cannot resolve {authority}"))?
            .collect();
        let v4: Vec<_> = addrs.iter().filter(|a| a.is_ipv4()).collect();
        let chosen: Vec<_> = if v4.is_empty() {
            addrs.iter().collect()
        } else {
            v4
        };
        if chosen.len() <= 1 {
            out.push(base);
        } else {
            out.extend(chosen.iter().map(|a| format!("http://{a}")));
        }
    }
    out.dedup();
    Ok(out)
}

/// What `run` prints.
pub struct Output {
    /// For stdout.
    pub text: String,
    /// One line per target that failed, for stderr (the exit code is then 1).
    pub errors: Vec<String>,
}

async fn send(admin: &Admin, c: &Call) -> anyhow::Result<(StatusCode, Value)> {
    match &c.text {
        Some(text) => admin.call_text(c.method.clone(), &c.path, text).await,
        None => admin.call(c.method.clone(), &c.path, c.body.as_ref()).await,
    }
}

/// Runs a command against every target.
pub async fn run(args: &CtlArgs) -> anyhow::Result<Output> {
    let targets = expand(&args.targets)?;
    if let Ctl::Watch { interval, count } = &args.command {
        return watch(&targets, args, *interval, *count).await;
    }
    let mut request = request(&args.command)?;
    let mut answers: BTreeMap<String, Result<Value, String>> = BTreeMap::new();
    for base in &targets {
        let admin = Admin::new(base.clone(), args.token.clone());
        if let Ctl::Toggle { proxy } = &args.command {
            // Toggle: read the state on this target, then flip it.
            match admin
                .call(Method::GET, &format!("/proxies/{}", seg(proxy)), None)
                .await
            {
                Ok((s, v)) if s.is_success() => {
                    let enabled = v["enabled"].as_bool().unwrap_or(true);
                    request.body = Some(json!({ "enabled": !enabled }));
                }
                Ok((s, v)) => {
                    answers.insert(base.clone(), Err(refusal("GET", &request.path, s, &v)));
                    continue;
                }
                Err(e) => {
                    answers.insert(base.clone(), Err(format!("{e:#}")));
                    continue;
                }
            }
        }
        let answer = match send(&admin, &request).await {
            Ok((s, v)) if s.is_success() => Ok(v),
            Ok((s, v)) => Err(refusal(request.method.as_str(), &request.path, s, &v)),
            Err(e) => Err(format!("{e:#}")),
        };
        answers.insert(base.clone(), answer);
    }
    let several = targets.len() > 1;
    let text = if args.json {
        let pick = |r: &Result<Value, String>| match r {
            Ok(v) => v.clone(),
            Err(e) => json!({ "error": e }),
        };
        let value = if several {
            Value::Object(
                answers
                    .iter()
                    .map(|(t, r)| (t.trim_start_matches("http://").to_owned(), pick(r)))
                    .collect(),
            )
        } else {
            answers.values().next().map(pick).unwrap_or(Value::Null)
        };
        format!("{value:#}\n")
    } else {
        let mut out = String::new();
        for (target, answer) in &answers {
            if let Ok(v) = answer {
                if several {
                    out.push_str(&format!("== {}\n", target.trim_start_matches("http://")));
                }
                out.push_str(&render(&args.command, v));
            }
        }
        out
    };
    let errors = answers
        .iter()
        .filter_map(|(t, r)| {
            r.as_ref()
                .err()
                .map(|e| format!("{}: {e}", t.trim_start_matches("http://")))
        })
        .collect();
    Ok(Output { text, errors })
}

fn refusal(method: &str, path: &str, status: StatusCode, body: &Value) -> String {
    let why = body["error"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    format!("{method} {path}: {} {why}", status.as_u16())
}

/// Columns, left-aligned to the widest cell.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A JSON array as a table: one row per element, one column per key.
fn array_table(v: &Value, head: &[&str], keys: &[&str]) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| keys.iter().map(|k| s(&item[*k])).collect())
        .collect();
    table(head, &rows)
}

const TOXIC_KEYS: [&str; 5] = ["name", "type", "stream", "toxicity", "attributes"];

const TOXIC_HEAD: [&str; 5] = ["NAME", "TYPE", "STREAM", "TOXICITY", "ATTRIBUTES"];

/// The answer as people read it.
fn render(command: &Ctl, v: &Value) -> String {
    match command {
        Ctl::List => {
            let rows: Vec<Vec<String>> = v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, p)| {
                    let toxics: Vec<String> = p["toxics"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| s(&t["name"]))
                        .collect();
                    vec![
                        name.clone(),
                        s(&p["listen"]),
                        s(&p["upstream"]),
                        s(&p["enabled"]),
                        if toxics.is_empty() {
                            "-".into()
                        } else {
                            toxics.join(",")
                        },
                    ]
                })
                .collect();
            table(&["NAME", "LISTEN", "UPSTREAM", "ENABLED", "TOXICS"], &rows)
        }
        Ctl::Toxic(ToxicCmd::List { .. }) => array_table(v, &TOXIC_HEAD, &TOXIC_KEYS),
        Ctl::Show { .. } => {
            let mut out = String::new();
            for key in ["name", "listen", "upstream", "enabled"] {
                out.push_str(&format!("{key}: {}\n", s(&v[key])));
            }
            out.push_str(&array_table(&v["toxics"], &TOXIC_HEAD, &TOXIC_KEYS));
            out
        }
        Ctl::Partition(PartitionCmd::List) => array_table(
            v,
            &["NAME", "A", "B", "DIRECTION", "MODE", "CUTS"],
            &["name", "a", "b", "direction", "mode", "proxies"],
        ),
        Ctl::Scenario(ScenarioCmd::List) => array_table(
            v,
            &["NAME", "STATE", "PHASE", "ELAPSED MS"],
            &["name", "state", "phase", "elapsed_ms"],
        ),
        Ctl::Version => format!("{}\n", s(&v["version"])),
        Ctl::LogLevel { .. } => format!("{}\n", s(&v["level"])),
        Ctl::Health => format!("{}\n", s(&v["status"])),
        _ => match v {
            Value::Null => "ok\n".into(),
            Value::String(text) if text.is_empty() => "ok\n".into(),
            Value::String(text) => {
                if text.ends_with('\n') {
                    text.clone()
                } else {
                    format!("{text}\n")
                }
            }
            other => format!("{other:#}\n"),
        },
    }
}

/// The live table: every proxy of every target, refreshed each interval.
async fn watch(
    targets: &[String],
    args: &CtlArgs,
    interval: Duration,
    count: Option<u64>,
) -> anyhow::Result<Output> {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {}
        }
        let mut rows = Vec::new();
        let mut errors = Vec::new();
        for base in targets {
            let admin = Admin::new(base.clone(), args.token.clone());
            match watch_rows(&admin, targets.len() > 1).await {
                Ok(mut r) => rows.append(&mut r),
                Err(e) => errors.push(format!("{base}: {e:#}")),
            }
        }
        let mut screen = table(
            &[
                "PROXY",
                "ON",
                "CONNS",
                "BYTES UP",
                "BYTES DOWN",
                "FAULTS",
                "REQUESTS",
                "FAILED",
                "FALSE TIMEOUTS",
                "AMPL",
                "P50",
                "P99",
            ],
            &rows,
        );
        for e in &errors {
            screen.push_str(&format!("error: {e}\n"));
        }
        if args.json {
            // Machines get one JSON line per refresh.
            let value: Vec<Value> = rows.iter().map(|r| json!(r)).collect();
            println!("{}", Value::Array(value));
        } else if terminal {
            print!("\x1b[2J\x1b[H{screen}");
        } else {
            println!("{screen}");
        }
        n += 1;
        if count.is_some_and(|c| n >= c) {
            break;
        }
    }
    Ok(Output {
        text: String::new(),
        errors: Vec::new(),
    })
}

async fn watch_rows(admin: &Admin, prefix: bool) -> anyhow::Result<Vec<Vec<String>>> {
    let (status, proxies) = admin.call(Method::GET, "/proxies", None).await?;
    if !status.is_success() {
        anyhow::bail!("{}", refusal("GET", "/proxies", status, &proxies));
    }
    let mut rows = Vec::new();
    for (name, p) in proxies.as_object().into_iter().flatten() {
        let (_, st) = admin
            .call(Method::GET, &format!("/proxies/{}/stats", seg(name)), None)
            .await?;
        let mut faults: Vec<String> = p["toxics"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| s(&t["type"]))
            .collect();
        if !p["partitioned"].is_null() {
            faults.push("partitioned".into());
        }
        let ms = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}ms"));
        let label = if prefix {
            format!("{}/{name}", admin.base.trim_start_matches("http://"))
        } else {
            name.clone()
        };
        rows.push(vec![
            label,
            if p["enabled"] == true { "yes" } else { "no" }.into(),
            s(&st["connections_total"]),
            s(&st["bytes"]["upstream"]),
            s(&st["bytes"]["downstream"]),
            if faults.is_empty() {
                "-".into()
            } else {
                faults.join(",")
            },
            s(&st["requests"]["total"]),
            s(&st["requests"]["failed"]),
            s(&st["timeout_false_positives"]),
            st["retries"]["amplification"]
                .as_f64()
                .map_or("-".into(), |a| format!("{a:.2}")),
            ms(&st["latency"]["client_observed"]["p50_ms"]),
            ms(&st["latency"]["client_observed"]["p99_ms"]),
        ]);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// One command of each kind, as `request` turns it into a call.
    fn every_command() -> Vec<Ctl> {
        let p = || "p".to_owned();
        let file = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        vec![
            Ctl::List,
            Ctl::Show { proxy: p() },
            Ctl::Create {
                name: p(),
                listen: "127.0.0.1:0".into(),
                upstream: "127.0.0.1:9".into(),
                protocol: None,
                disabled: false,
                from: None,
                to: None,
            },
            Ctl::Update {
                proxy: p(),
                listen: None,
                upstream: Some("127.0.0.1:7".into()),
                drain: false,
            },
            Ctl::Delete { proxy: p() },
            Ctl::Enable { proxy: p() },
            Ctl::Toxic(ToxicCmd::List { proxy: p() }),
            Ctl::Toxic(ToxicCmd::Add {
                proxy: p(),
                kind: "latency".into(),
                name: None,
                stream: None,
                toxicity: None,
                attributes: vec!["latency=5".into()],
            }),
            Ctl::Toxic(ToxicCmd::Update {
                proxy: p(),
                name: "t".into(),
                toxicity: Some(0.5),
                attributes: vec![],
            }),
            Ctl::Toxic(ToxicCmd::Remove {
                proxy: p(),
                name: "t".into(),
            }),
            Ctl::Toxic(ToxicCmd::Show {
                proxy: p(),
                name: "t".into(),
            }),
            Ctl::Partition(PartitionCmd::List),
            Ctl::Partition(PartitionCmd::Show { name: "s".into() }),
            Ctl::Partition(PartitionCmd::Create {
                name: "s".into(),
                a: vec!["x".into()],
                b: vec!["y".into()],
                direction: None,
                mode: None,
                duration: None,
                owner: None,
            }),
            Ctl::Partition(PartitionCmd::Heal { name: "s".into() }),
            Ctl::Scenario(ScenarioCmd::Start { file: file.clone() }),
            Ctl::Scenario(ScenarioCmd::List),
            Ctl::Scenario(ScenarioCmd::Show { name: "s".into() }),
            Ctl::Scenario(ScenarioCmd::Stop { name: "s".into() }),
            Ctl::Stats { proxy: p() },
            Ctl::Advice {
                proxy: p(),
                rate: "0.01".into(),
            },
            Ctl::Audit { limit: None },
            Ctl::Reset,
            Ctl::Reload,
            Ctl::LogLevel { level: None },
            Ctl::LogLevel {
                level: Some("debug".into()),
            },
            Ctl::Version,
            Ctl::Metrics,
            Ctl::Health,
            Ctl::Openapi,
            Ctl::Shutdown,
        ]
    }

    /// A concrete path back to the route it matches (`/proxies/p/toxics/t` ->
    /// `/proxies/{proxy}/toxics/{toxic}`).
    fn template(path: &str) -> String {
        let path = path.split('?').next().unwrap_or_default();
        let segs: Vec<&str> = path.split('/').collect();
        segs.iter()
            .enumerate()
            .map(|(i, s)| match (i, segs.get(1).copied()) {
                (2, Some("proxies")) => "{proxy}".to_owned(),
                (4, Some("proxies")) if segs[3] == "toxics" => "{toxic}".to_owned(),
                (2, Some("partitions")) => "{partition}".to_owned(),
                (2, Some("scenarios")) => "{scenario}".to_owned(),
                _ => s.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// `fallacy ctl` reaches every route of the admin API: the commands' calls, plus
    /// toxic and populate forms, cover `/openapi.json`'s operations.
    #[test]
    fn ctl_covers_every_route() {
        let mut reached: BTreeSet<(String, String)> = every_command()
            .iter()
            .map(|c| {
                let call = request(c).unwrap();
                (call.method.as_str().to_lowercase(), template(&call.path))
            })
            .collect();
        // Populate reads a JSON file; PATCH routes are POST's twins, which ctl uses.
        reached.insert(("post".into(), "/populate".into()));
        for (m, p) in [
            ("patch", "/proxies/{proxy}"),
            ("patch", "/proxies/{proxy}/toxics/{toxic}"),
        ] {
            reached.insert((m.into(), p.into()));
        }
        // healthz: `fallacy health`; the rest is read by `watch` and `stats`.
        reached.insert(("get".into(), "/healthz".into()));
        let all: BTreeSet<(String, String)> = crate::admin::openapi::operations()
            .into_iter()
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        let missing: Vec<_> = all.difference(&reached).collect();
        assert!(missing.is_empty(), "no ctl command for {missing:?}");
    }

    #[test]
    fn attributes_read_json_values_and_name_bad_pairs() {
        let a = attributes(&[
            "latency=300".into(),
            "p50=\"20ms\"".into(),
            "mode=fast".into(),
        ])
        .unwrap();
        assert_eq!(
            json!(a),
            json!({"latency": 300, "p50": "20ms", "mode": "fast"})
        );
        let e = attributes(&["latency".into()]).unwrap_err().to_string();
        assert!(e.contains("expected KEY=VALUE"), "{e}");
        let e = attributes(&["=5".into()]).unwrap_err().to_string();
        assert!(e.contains("the key is empty"), "{e}");
    }
}
