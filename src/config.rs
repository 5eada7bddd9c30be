//! Configuration files: fallacy's TOML, or a Toxiproxy populate JSON array.
//!
//! Raw serde types (with `deny_unknown_fields` and source spans) are parsed into a typed,
//! validated [`Config`] before anything binds. Validation collects *every* problem, each with
//! its line, column and field, so `fallacy check` can list them all at once.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::measure::MeasurePatch;
use crate::partition::{Labels, Partition};
use crate::proxy::DEFAULT_CONNECT_TIMEOUT;
use crate::proxy::Protocol;
use crate::state::NewProxy;
use crate::toxic::{Envelope, ToxicSpec, lowercase_keys};
use crate::units::parse_duration;

/// Where the admin API listens when neither the command line nor the file says (Toxiproxy's
/// port, on loopback).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8474";

/// How long open connections may finish after a shutdown starts, unless configured.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Admin API address, if the file sets one.
    pub admin: Option<String>,
    /// Seed for every random draw.
    pub seed: Option<u64>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// HTTP proxies: how long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Drain period on shutdown.
    pub shutdown_grace: Duration,
    /// TCP proxies: close a connection idle (no byte either way) this long; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// The most connections all proxies hold together; `None` is "auto": what the open-file
    /// limit allows (see [`crate::limits`]); 0 is no limit.
    pub max_connections: Option<u64>,
    /// Threads TCP connections run on; `None` is "auto": one per CPU.
    pub threads: Option<usize>,
    /// Proxies to create at start, with their toxics.
    pub proxies: Vec<ProxyConfig>,
    /// Partitions in force from the start (validated; the API's JSON shape).
    pub partitions: Vec<Value>,
    /// The admin API's bearer token: `--admin-token` (`FALLACY_ADMIN_TOKEN`), else
    /// `--admin-token-file`, else `[admin] token`.
    pub admin_token: Option<Secret>,
    /// With a token: `GET /metrics` needs none (`--metrics-public`).
    pub metrics_public: bool,
    /// The file it was read from, for SIGHUP and `POST /reload`.
    pub source: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin: None,
            seed: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            header_read_timeout: crate::http::DEFAULT_HEADER_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_connections: None,
            threads: None,
            idle_timeout: None,
            proxies: Vec::new(),
            partitions: Vec::new(),
            admin_token: None,
            metrics_public: false,
            source: None,
        }
    }
}

/// A value that must never reach a log line or an error message: its `Debug` form is masked,
/// so printing a [`Config`] cannot leak the admin token.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that compares it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Secret {
        Secret(value.to_owned())
    }
}

/// One proxy of a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// The proxy.
    pub proxy: NewProxy,
    /// Its toxics, applied from the start (Toxiproxy ignores toxics in its config file).
    pub toxics: Vec<ToxicSpec>,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted path of the field, e.g. `proxy[0].toxic[1].attributes.latency`.
    pub field: String,
    /// What is wrong and what would fix it.
    pub message: String,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but is not valid.
    #[error("{}", Problems { path, diagnostics })]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found, in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

struct Problems<'a> {
    path: &'a Path,
    diagnostics: &'a [Diagnostic],
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: ", self.path.display(), d.line, d.column)?;
            if !d.field.is_empty() {
                write!(f, "{}: ", d.field)?;
            }
            write!(f, "{}", d.message)?;
        }
        Ok(())
    }
}

/// Reads and validates a file: JSON when it ends in `.json`, TOML when it ends in `.toml`, and
/// otherwise JSON when it looks like a JSON array (`[` then `{` or `]`), TOML otherwise.
pub fn load(path: &Path) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = parse(&text, is_json(path, &text)).map_err(|diagnostics| Error::Invalid {
        path: path.to_owned(),
        diagnostics,
    })?;
    Ok(Config {
        source: Some(path.to_owned()),
        ..config
    })
}

fn is_json(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("json") => true,
        Some(e) if e.eq_ignore_ascii_case("toml") => false,
        // A TOML file often starts with `[server]` or `[[proxy]]` too: only `[` followed by an
        // object or the end of the array is a populate array.
        _ => text
            .trim_start()
            .strip_prefix('[')
            .is_some_and(|rest| matches!(rest.trim_start().chars().next(), Some('{' | ']') | None)),
    }
}

/// Parses file contents; `json` selects the Toxiproxy format.
pub fn parse(text: &str, json: bool) -> Result<Config, Vec<Diagnostic>> {
    if json {
        parse_json(text)
    } else {
        parse_toml(text)
    }
}

// === TOML ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    server: Option<RawServer>,
    #[serde(default)]
    proxy: Vec<Spanned<RawProxy>>,
    #[serde(default)]
    partition: Vec<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    seed: Option<u64>,
    connect_timeout: Option<Spanned<String>>,
    header_read_timeout: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<toml::Value>>,
    threads: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    name: Spanned<String>,
    #[serde(default)]
    listen: Option<Spanned<String>>,
    #[serde(default)]
    upstream: Option<Spanned<String>>,
    #[serde(default)]
    upstreams: Option<Spanned<toml::Value>>,
    #[serde(default)]
    policy: Option<Spanned<toml::Value>>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    fault_header: Option<bool>,
    #[serde(default)]
    rewrite_host: Option<Spanned<String>>,
    #[serde(default)]
    abandon_grace: Option<Spanned<toml::Value>>,
    #[serde(default)]
    retry_window: Option<Spanned<toml::Value>>,
    #[serde(default)]
    idempotency_headers: Option<Spanned<toml::Value>>,
    #[serde(default)]
    price_per_gb: Option<Spanned<toml::Value>>,
    #[serde(default)]
    max_connections: Option<Spanned<toml::Value>>,
    #[serde(default)]
    labels: Option<Spanned<toml::Value>>,
    #[serde(default)]
    toxic: Vec<Spanned<RawToxic>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToxic {
    #[serde(default)]
    name: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    #[serde(default)]
    stream: Option<Spanned<String>>,
    #[serde(default)]
    toxicity: Option<Spanned<f32>>,
    /// Spans per attribute, so an error points at the value at fault.
    #[serde(default)]
    attributes: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
    /// HTTP proxies: which requests it acts on.
    #[serde(default, rename = "match")]
    matcher: Option<Spanned<toml::Value>>,
    /// It removes itself after this long (from start-up).
    #[serde(default)]
    ttl: Option<Spanned<toml::Value>>,
    #[serde(default)]
    owner: Option<Spanned<String>>,
}

impl RawToxic {
    /// Where the sub-field named by a [`toxic_spec`] error starts; the toxic's own header when
    /// the field is absent (a default name or stream).
    fn offset_of(&self, sub: &str, toxic: usize) -> usize {
        let start = |s: Option<std::ops::Range<usize>>| s.map_or(toxic, |r| r.start);
        match sub {
            "name" => start(self.name.as_ref().map(Spanned::span)),
            "type" => self.kind.span().start,
            "stream" => start(self.stream.as_ref().map(Spanned::span)),
            "toxicity" => start(self.toxicity.as_ref().map(Spanned::span)),
            "ttl" => start(self.ttl.as_ref().map(Spanned::span)),
            "owner" => start(self.owner.as_ref().map(Spanned::span)),
            m if m == "match" || m.starts_with("match.") => {
                start(self.matcher.as_ref().map(Spanned::span))
            }
            _ => {
                let Some(attrs) = &self.attributes else {
                    return toxic;
                };
                // `attributes.<key>`: keys were lower-cased before decoding.
                sub.strip_prefix("attributes.")
                    .and_then(|key| {
                        attrs
                            .get_ref()
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    })
                    .map_or(attrs.span().start, |(_, v)| v.span().start)
            }
        }
    }
}

/// A server setting that is an integer in `range` or "auto" (`None`); anything else is an
/// error saying it is not `what`.
fn int_or_auto(
    c: &mut Collector<'_>,
    raw: Option<Spanned<toml::Value>>,
    field: &str,
    range: std::ops::RangeInclusive<i64>,
    what: &str,
) -> Option<i64> {
    let raw = raw?;
    match raw.get_ref() {
        toml::Value::Integer(n) if range.contains(n) => Some(*n),
        toml::Value::String(s) if s == "auto" => None,
        other => {
            c.at(raw.span().start, field, format!("{other} is not {what}"));
            None
        }
    }
}

/// Collects diagnostics against one source text.
struct Collector<'a> {
    text: &'a str,
    diagnostics: Vec<Diagnostic>,
}

impl Collector<'_> {
    fn at(&mut self, offset: usize, field: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, offset);
        self.diagnostics.push(Diagnostic {
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }
}

fn parse_toml(text: &str) -> Result<Config, Vec<Diagnostic>> {
    let mut c = Collector {
        text,
        diagnostics: Vec::new(),
    };
    let mut pending_field = String::new();
    // serde_path_to_error names the field at fault (`server.connect_timeout`), which toml's
    // own error leaves out; the span still comes from toml.
    let raw: Result<RawConfig, _> = toml::Deserializer::parse(text).and_then(|de| {
        serde_path_to_error::deserialize(de).map_err(|err| {
            pending_field = field_path(err.path());
            err.into_inner()
        })
    });
    let raw = match raw {
        Ok(raw) => raw,
        Err(err) => {
            let offset = err.span().map_or(0, |s| s.start);
            c.at(offset, pending_field, err.message().trim().to_owned());
            return Err(c.diagnostics);
        }
    };
    let mut config = Config::default();
    if let Some(admin) = raw.admin {
        if let Some(listen) = admin.listen {
            check_addr(&mut c, &listen, "admin.listen");
            config.admin = Some(listen.into_inner());
        }
        if let Some(token) = admin.token {
            if token.get_ref().trim().is_empty() {
                c.at(
                    token.span().start,
                    "admin.token",
                    "must not be empty (leave it out for no token)",
                );
            } else {
                config.admin_token = Some(token.into_inner().into());
            }
        }
    }
    if let Some(server) = raw.server {
        config.seed = server.seed;
        let mut duration = |value: Option<Spanned<String>>, field: &str, default: Duration| {
            value.map_or(default, |v| {
                parse_duration(v.get_ref()).unwrap_or_else(|e| {
                    c.at(v.span().start, field, e);
                    default
                })
            })
        };
        config.connect_timeout = duration(
            server.connect_timeout,
            "server.connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
        );
        config.header_read_timeout = duration(
            server.header_read_timeout,
            "server.header_read_timeout",
            crate::http::DEFAULT_HEADER_READ_TIMEOUT,
        );
        config.shutdown_grace = duration(
            server.shutdown_grace,
            "server.shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
        );
        let idle = duration(server.idle_timeout, "server.idle_timeout", Duration::ZERO);
        config.idle_timeout = (!idle.is_zero()).then_some(idle);
        let limit = crate::measure::MAX_CONNECTIONS_LIMIT;
        config.max_connections = int_or_auto(
            &mut c,
            server.max_connections,
            "server.max_connections",
            0..=limit as i64,
            &format!("a connection limit: an integer from 0 (no limit) to {limit}, or \"auto\" (from the open-file limit)"),
        )
        .map(|n| n as u64);
        let max = crate::proxy::dataplane::MAX_THREADS;
        config.threads = int_or_auto(
            &mut c,
            server.threads,
            "server.threads",
            1..=max as i64,
            &format!("a thread count: an integer from 1 to {max}, or \"auto\" (one per CPU)"),
        )
        .map(|n| n as usize);
    }
    for (i, raw_proxy) in raw.proxy.into_iter().enumerate() {
        let proxy_at = raw_proxy.span().start;
        let p = raw_proxy.into_inner();
        let field = format!("proxy[{i}]");
        if p.name.get_ref().is_empty() {
            c.at(
                p.name.span().start,
                format!("{field}.name"),
                "must not be empty",
            );
        }
        if let Some(first) = config
            .proxies
            .iter()
            .position(|q| q.proxy.name == *p.name.get_ref())
        {
            c.at(
                p.name.span().start,
                format!("{field}.name"),
                format!(
                    "duplicate proxy name {:?} (also proxy[{first}])",
                    p.name.get_ref()
                ),
            );
        }
        let listen = match &p.listen {
            Some(l) => {
                check_addr(&mut c, l, &format!("{field}.listen"));
                l.get_ref().clone()
            }
            None => crate::proxy::DEFAULT_LISTEN.to_owned(),
        };
        if let Some(u) = &p.upstream {
            check_addr(&mut c, u, &format!("{field}.upstream"));
        }
        let json = |v: &Option<Spanned<toml::Value>>| {
            v.as_ref()
                .map(|v| serde_json::to_value(v.get_ref()).unwrap_or(Value::Null))
        };
        let (upstream, upstreams) = match crate::proxy::parse_upstreams(
            p.upstream.as_ref().map(|u| u.get_ref().as_str()),
            json(&p.upstreams).as_ref(),
            json(&p.policy).as_ref(),
        ) {
            Ok((Some(upstream), set)) => (upstream, set),
            Ok((None, _)) => {
                c.at(
                    proxy_at,
                    format!("{field}.upstream"),
                    "required: the address (host:port) to forward to, or upstreams = [...]",
                );
                (String::new(), None)
            }
            Err(e) => {
                let at = match e.path.as_str() {
                    "policy" => p.policy.as_ref().map(|v| v.span().start),
                    "upstream" => p.upstream.as_ref().map(|v| v.span().start),
                    _ => p.upstreams.as_ref().map(|v| v.span().start),
                };
                c.at(
                    at.unwrap_or(proxy_at),
                    format!("{field}.{}", e.path),
                    e.message,
                );
                (String::new(), None)
            }
        };
        let protocol = match &p.protocol {
            None => Protocol::Tcp,
            Some(raw) => Protocol::parse(raw.get_ref()).unwrap_or_else(|message| {
                c.at(raw.span().start, format!("{field}.protocol"), message);
                Protocol::Tcp
            }),
        };
        let rewrite_host = p.rewrite_host.and_then(|h| {
            match crate::proxy::check_rewrite_host(protocol, Some(h.get_ref())) {
                Ok(host) => host,
                Err(message) => {
                    c.at(h.span().start, format!("{field}.rewrite_host"), message);
                    None
                }
            }
        });
        let mut measure = MeasurePatch::default();
        for (key, raw) in [
            ("abandon_grace", &p.abandon_grace),
            ("retry_window", &p.retry_window),
            ("idempotency_headers", &p.idempotency_headers),
            ("price_per_gb", &p.price_per_gb),
            ("max_connections", &p.max_connections),
        ] {
            if let Some(raw) = raw {
                let value = serde_json::to_value(raw.get_ref()).unwrap_or(Value::Null);
                if let Err(message) = measure.set(key, &value) {
                    c.at(raw.span().start, format!("{field}.{key}"), message);
                }
            }
        }
        let labels = p.labels.as_ref().and_then(|raw| {
            let value = serde_json::to_value(raw.get_ref()).unwrap_or(Value::Null);
            Labels::from_json(&value)
                .map_err(|e| c.at(raw.span().start, format!("{field}.{}", e.path), e.message))
                .ok()
        });
        let mut toxics: Vec<ToxicSpec> = Vec::new();
        for (j, raw_toxic) in p.toxic.into_iter().enumerate() {
            let span = raw_toxic.span().start;
            let t = raw_toxic.get_ref();
            let attributes = t.attributes.as_ref().map(|a| {
                Value::Object(
                    a.get_ref()
                        .iter()
                        .map(|(k, v)| {
                            let v = serde_json::to_value(v.get_ref()).unwrap_or(Value::Null);
                            (k.clone(), v)
                        })
                        .collect(),
                )
            });
            let envelope = Envelope {
                name: t.name.as_ref().map(|n| n.get_ref().clone()),
                kind: Some(t.kind.get_ref().clone()),
                stream: t.stream.as_ref().map(|s| s.get_ref().clone()),
                toxicity: t.toxicity.as_ref().map(|x| *x.get_ref()),
                attributes,
                matcher: t
                    .matcher
                    .as_ref()
                    .map(|m| serde_json::to_value(m.get_ref()).unwrap_or(Value::Null)),
                ttl: t
                    .ttl
                    .as_ref()
                    .map(|v| serde_json::to_value(v.get_ref()).unwrap_or(Value::Null)),
                owner: t.owner.as_ref().map(|o| o.get_ref().clone()),
            };
            let field = format!("{field}.toxic[{j}]");
            match toxic_spec(envelope, &toxics, protocol) {
                Ok(spec) => toxics.push(spec),
                Err((sub, message)) => {
                    c.at(t.offset_of(&sub, span), join_field(&field, &sub), message)
                }
            }
        }
        config.proxies.push(ProxyConfig {
            proxy: NewProxy {
                name: p.name.into_inner(),
                listen,
                upstream,
                upstreams,
                enabled: p.enabled.unwrap_or(true),
                protocol,
                fault_header: p.fault_header.unwrap_or(true),
                rewrite_host,
                measure,
                labels,
            },
            toxics,
        });
    }
    let nodes = config
        .proxies
        .iter()
        .flat_map(|p| {
            p.proxy
                .labels
                .iter()
                .flat_map(|l| [l.from.clone(), l.to.clone()])
        })
        .collect();
    let names = config
        .proxies
        .iter()
        .map(|p| p.proxy.name.clone())
        .collect();
    for (i, raw) in raw.partition.iter().enumerate() {
        let value = serde_json::to_value(raw.get_ref()).unwrap_or(Value::Null);
        match Partition::from_json(&value, &nodes, &names) {
            Ok(p)
                if config
                    .partitions
                    .iter()
                    .any(|q| q["name"] == p.name.as_str()) =>
            {
                c.at(
                    raw.span().start,
                    format!("partition[{i}].name"),
                    format!("duplicate partition name {:?}", p.name),
                )
            }
            Ok(_) => config.partitions.push(value),
            Err(e) => c.at(
                raw.span().start,
                format!("partition[{i}].{}", e.path),
                e.message,
            ),
        }
    }
    if c.diagnostics.is_empty() {
        Ok(config)
    } else {
        Err(c.diagnostics)
    }
}

/// Formats a serde path as this module's field names (`proxy[0].toxic[1].type`), leaving out
/// the private keys through which `toml::Spanned` deserialises.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if key.starts_with("$__serde_spanned") => {}
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// Validates a toxic the same way the API does, plus name uniqueness within the proxy.
/// On error returns the sub-field at fault and the message.
fn toxic_spec(
    envelope: Envelope,
    siblings: &[ToxicSpec],
    protocol: Protocol,
) -> Result<ToxicSpec, (String, String)> {
    let head = envelope.head().map_err(|e| {
        let field = match e {
            crate::toxic::EnvelopeError::Stream(_) => "stream",
            crate::toxic::EnvelopeError::Type(_) => "type",
            crate::toxic::EnvelopeError::Toxicity(_) => "toxicity",
            crate::toxic::EnvelopeError::Body(_) => "",
        };
        let message = match e {
            crate::toxic::EnvelopeError::Type(given) => format!(
                "unknown toxic type {given:?}; known types: {}",
                crate::toxic::TOXIC_TYPES.join(", ")
            ),
            crate::toxic::EnvelopeError::Stream(_) => {
                "must be \"upstream\" or \"downstream\"".to_owned()
            }
            // The API's "bad request body" prefix means nothing in a file.
            crate::toxic::EnvelopeError::Toxicity(t) => {
                format!("must be between 0 and 1, got {t}")
            }
            crate::toxic::EnvelopeError::Body(message) => message.clone(),
        };
        (field.to_owned(), message)
    })?;
    if siblings.iter().any(|t| t.name == head.name) {
        return Err((
            "name".into(),
            format!("duplicate toxic name {:?} in this proxy", head.name),
        ));
    }
    let spec = envelope.into_spec(head).map_err(|e| (e.path, e.message))?;
    spec.fits(protocol).map_err(|e| (e.path, e.message))?;
    Ok(spec)
}

fn join_field(base: &str, sub: &str) -> String {
    if sub.is_empty() {
        base.to_owned()
    } else {
        format!("{base}.{sub}")
    }
}

/// A `host:port` check that does not resolve (resolution happens at bind or dial time).
fn check_addr(c: &mut Collector<'_>, value: &Spanned<String>, field: &str) {
    if let Err(message) = validate_addr(value.get_ref()) {
        c.at(value.span().start, field, message);
    }
}

/// Checks that `addr` looks like `host:port` with a valid port.
pub fn validate_addr(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!(
            "{addr:?} is not host:port (example: \"127.0.0.1:5432\")"
        ));
    };
    if host.is_empty() {
        return Err(format!(
            "{addr:?} has no host (example: \"127.0.0.1{}\")",
            &addr[addr.len() - port.len() - 1..]
        ));
    }
    port.parse::<u16>()
        .map(|_| ())
        .map_err(|_| format!("{addr:?} has an invalid port {port:?} (0 to 65535)"))
}

// === Toxiproxy JSON ===

fn parse_json(text: &str) -> Result<Config, Vec<Diagnostic>> {
    let mut c = Collector {
        text,
        diagnostics: Vec::new(),
    };
    let items: Vec<Value> = match serde_json::from_str(text) {
        Ok(items) => items,
        Err(err) => {
            // serde_json's message ends with " at line L column C", which the prefix repeats.
            let text = err.to_string();
            let suffix = format!(" at line {} column {}", err.line(), err.column());
            let message = text.strip_suffix(&suffix).unwrap_or(&text);
            c.diagnostics.push(Diagnostic {
                line: err.line(),
                // serde_json counts columns from 0 at the start of a line (after a newline).
                column: err.column().max(1),
                field: String::new(),
                message: format!("{message} (expected a Toxiproxy populate array: [{{\"name\",\"listen\",\"upstream\"}}])"),
            });
            return Err(c.diagnostics);
        }
    };
    let offsets = element_offsets(text);
    let mut config = Config::default();
    for (i, item) in items.into_iter().enumerate() {
        let at = offsets.get(i).copied().unwrap_or(0);
        let field = format!("[{i}]");
        let Value::Object(map) = lowercase_keys(item) else {
            c.at(
                at,
                field,
                "expected an object with name, listen and upstream",
            );
            continue;
        };
        let get_str = |c: &mut Collector<'_>, key: &str, required: bool| -> Option<String> {
            match map.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                None | Some(Value::Null) if !required => None,
                Some(Value::String(_)) | None | Some(Value::Null) => {
                    c.at(at, format!("[{i}].{key}"), "missing required field");
                    None
                }
                Some(_) => {
                    c.at(at, format!("[{i}].{key}"), "must be a string");
                    None
                }
            }
        };
        let name = get_str(&mut c, "name", true);
        let has_set = map.get("upstreams").is_some_and(|v| !v.is_null());
        let upstream = get_str(&mut c, "upstream", !has_set);
        let listen = get_str(&mut c, "listen", false);
        for (key, value) in [("listen", &listen), ("upstream", &upstream)] {
            if let Some(v) = value {
                if let Err(message) = validate_addr(v) {
                    c.at(at, format!("[{i}].{key}"), message);
                }
            }
        }
        let enabled = match map.get("enabled") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                c.at(at, format!("[{i}].enabled"), "must be true or false");
                true
            }
        };
        let fault_header = match map.get("fault_header") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                c.at(at, format!("[{i}].fault_header"), "must be true or false");
                true
            }
        };
        let protocol = match map.get("protocol") {
            None | Some(Value::Null) => Protocol::Tcp,
            Some(Value::String(p)) => Protocol::parse(p).unwrap_or_else(|message| {
                c.at(at, format!("[{i}].protocol"), message);
                Protocol::Tcp
            }),
            Some(_) => {
                c.at(at, format!("[{i}].protocol"), "must be a string");
                Protocol::Tcp
            }
        };
        let rewrite_host = match map.get("rewrite_host") {
            None | Some(Value::Null) => None,
            Some(Value::String(h)) => crate::proxy::check_rewrite_host(protocol, Some(h))
                .unwrap_or_else(|message| {
                    c.at(at, format!("[{i}].rewrite_host"), message);
                    None
                }),
            Some(_) => {
                c.at(at, format!("[{i}].rewrite_host"), "must be a string");
                None
            }
        };
        let labels = match map.get("labels") {
            None | Some(Value::Null) => None,
            Some(v) => Labels::from_json(v)
                .map_err(|e| c.at(at, format!("[{i}].{}", e.path), e.message))
                .ok(),
        };
        let mut measure = MeasurePatch::default();
        for key in MeasurePatch::KEYS {
            if let Some(v) = map.get(key).filter(|v| !v.is_null()) {
                if let Err(message) = measure.set(key, v) {
                    c.at(at, format!("[{i}].{key}"), message);
                }
            }
        }
        let mut toxics: Vec<ToxicSpec> = Vec::new();
        match map.get("toxics") {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for (j, t) in list.iter().enumerate() {
                    let field = format!("[{i}].toxics[{j}]");
                    let result = Envelope::from_json(t.clone())
                        .map_err(|e| match e {
                            crate::toxic::EnvelopeError::Body(message) => (String::new(), message),
                            other => (String::new(), other.to_string()),
                        })
                        .and_then(|env| toxic_spec(env, &toxics, protocol));
                    match result {
                        Ok(spec) => toxics.push(spec),
                        Err((sub, message)) => c.at(at, join_field(&field, &sub), message),
                    }
                }
            }
            Some(_) => c.at(at, format!("[{i}].toxics"), "must be an array of toxics"),
        }
        if let Some(name) = &name {
            if config.proxies.iter().any(|p| p.proxy.name == *name) {
                c.at(
                    at,
                    format!("[{i}].name"),
                    format!("duplicate proxy name {name:?}"),
                );
            }
        }
        let (upstream, upstreams) = match crate::proxy::parse_upstreams(
            upstream.as_deref(),
            map.get("upstreams"),
            map.get("policy"),
        ) {
            Ok(pair) => pair,
            Err(e) => {
                c.at(at, format!("[{i}].{}", e.path), e.message);
                (None, None)
            }
        };
        if let (Some(name), Some(upstream)) = (name, upstream) {
            config.proxies.push(ProxyConfig {
                proxy: NewProxy {
                    name,
                    listen: listen.unwrap_or_else(|| crate::proxy::DEFAULT_LISTEN.to_owned()),
                    upstream,
                    upstreams,
                    enabled,
                    protocol,
                    fault_header,
                    rewrite_host,
                    measure,
                    labels,
                },
                toxics,
            });
        }
    }
    if c.diagnostics.is_empty() {
        Ok(config)
    } else {
        Err(c.diagnostics)
    }
}

/// Byte offsets where each element of the top-level JSON array starts, found with a tiny
/// scanner that skips strings. Only used to point error messages at the right line.
fn element_offsets(text: &str) -> Vec<usize> {
    let mut offsets = Vec::new();
    let (mut depth, mut in_string, mut escaped, mut expect_element) = (0usize, false, false, false);
    for (i, ch) in text.char_indices() {
        if in_string {
            match ch {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        if expect_element && !ch.is_whitespace() && ch != ']' {
            offsets.push(i);
            expect_element = false;
        }
        match ch {
            '"' => in_string = true,
            '[' | '{' => {
                depth += 1;
                if depth == 1 {
                    expect_element = true;
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expect_element = true,
            _ => {}
        }
    }
    offsets
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // Spans always start on a character, but slicing inside one would panic: be safe.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
