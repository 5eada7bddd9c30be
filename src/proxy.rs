//! The TCP data path: accept, dial, and one duplex future per connection.
//!
//! ```text
//! listener::serve ──accept──▶ spawn conn::handle ──dial upstream──▶ duplex::run
//!                                                          ├─ half upstream   (client ▶ server)
//!                                                          └─ half downstream (server ▶ client)
//! ```
//!
//! A [`Link`] is what a proxy's connections share: its name, upstream and the current toxic
//! snapshot. It outlives a disable/enable cycle, so toxics survive it.

pub mod conn;
pub mod dataplane;
pub mod duplex;
pub mod listener;
pub mod udp;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::watch;

use crate::measure::{MeasureSettings, ProxyStats};
use crate::metrics::ProxyMetrics;
use crate::toxic::{AttrError, Direction, ToxicSpec};

/// Where a proxy without a `listen` address listens. Toxiproxy binds every interface on a
/// random port; fallacy stays on loopback unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:0";

/// How long to wait for an upstream connect before giving up on a client connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a proxy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Bytes: toxics act on the stream (the default, and Toxiproxy's only kind).
    #[default]
    Tcp,
    /// HTTP/1.1 and h2c: toxics act on requests, `match` picks which.
    Http,
    /// Datagrams: a session per client address, toxics act on each datagram.
    Udp,
}

impl Protocol {
    /// Parses `"tcp"` or `"http"`; the error says what is accepted.
    pub fn parse(s: &str) -> Result<Protocol, String> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "http" => Ok(Protocol::Http),
            "udp" => Ok(Protocol::Udp),
            other => Err(format!(
                "must be \"tcp\", \"http\" or \"udp\", got {other:?}"
            )),
        }
    }

    /// The name used in the API and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Udp => "udp",
        }
    }
}

/// Checks a `rewrite_host` for a proxy of this protocol: `None` or `""` means none; anything
/// else must be a valid `Host` value on an HTTP proxy. The error says what is wrong.
pub fn check_rewrite_host(
    protocol: Protocol,
    host: Option<&str>,
) -> Result<Option<String>, String> {
    match host.filter(|h| !h.is_empty()) {
        None => Ok(None),
        Some(_) if protocol != Protocol::Http => {
            Err("applies to HTTP proxies (\"protocol\": \"http\"); a TCP proxy has no Host".into())
        }
        Some(h) if h.parse::<http::uri::Authority>().is_err() => {
            Err(format!("{h:?} is not a valid host (host or host:port)"))
        }
        Some(h) => Ok(Some(h.to_owned())),
    }
}

/// How a proxy with several upstreams picks one for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The first healthy one in order; the next on a failed dial.
    #[default]
    Failover,
    /// Each in turn, skipping unhealthy ones.
    RoundRobin,
}

impl Policy {
    /// The name used in the API and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Failover => "failover",
            Policy::RoundRobin => "round_robin",
        }
    }
}

/// A proxy's upstreams, when it has more than one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSet {
    /// In order of preference (failover) or of turn (round robin).
    pub list: Vec<String>,
    /// How one is picked.
    pub policy: Policy,
}

/// Reads `upstream`, `upstreams` and `policy` as the API and config files give them: the
/// primary upstream, and the set when `upstreams` lists addresses. `upstream` may be left out
/// when `upstreams` is given; if both are, `upstream` must be the first of the list.
pub fn parse_upstreams(
    upstream: Option<&str>,
    upstreams: Option<&serde_json::Value>,
    policy: Option<&serde_json::Value>,
) -> Result<(Option<String>, Option<UpstreamSet>), AttrError> {
    use serde_json::Value;
    let policy = match policy {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) if p == "failover" => Some(Policy::Failover),
        Some(Value::String(p)) if p == "round_robin" => Some(Policy::RoundRobin),
        Some(other) => {
            return Err(AttrError::new(
                "policy",
                &format!("must be \"failover\" or \"round_robin\", got {other}"),
            ));
        }
    };
    let list = match upstreams {
        None | Some(Value::Null) => {
            if policy.is_some() {
                return Err(AttrError::new("policy", "needs upstreams = [...]"));
            }
            return Ok((upstream.map(str::to_owned), None));
        }
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(AttrError::new(
                "upstreams",
                &format!("must be a list of host:port addresses, got {other}"),
            ));
        }
    };
    if list.is_empty() {
        return Err(AttrError::new(
            "upstreams",
            "must list at least one address",
        ));
    }
    let mut addrs = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let Value::String(a) = v else {
            return Err(AttrError::new(
                &format!("upstreams[{i}]"),
                &format!("must be a string, got {v}"),
            ));
        };
        crate::config::validate_addr(a)
            .map_err(|m| AttrError::new(&format!("upstreams[{i}]"), &m))?;
        addrs.push(a.clone());
    }
    if let Some(u) = upstream.filter(|u| !u.is_empty() && *u != addrs[0]) {
        return Err(AttrError::new(
            "upstream",
            &format!(
                "{u:?} must be the first of upstreams ({:?}) or be left out",
                addrs[0]
            ),
        ));
    }
    Ok((
        Some(addrs[0].clone()),
        Some(UpstreamSet {
            list: addrs,
            policy: policy.unwrap_or_default(),
        }),
    ))
}

/// How long an upstream whose dial failed is skipped.
pub const UNHEALTHY_FOR: Duration = Duration::from_secs(2);

/// Settings every proxy shares.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seed for every random draw; `None` draws from the OS.
    pub seed: Option<u64>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// HTTP proxies: how long a client may take to send a request's headers (slow loris).
    pub header_read_timeout: Duration,
    /// Connections open on all proxies, and their limit.
    pub total: Arc<crate::limits::Total>,
    /// TCP proxies: a connection that carries no byte either way for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// TCP proxies: the threads their connections run on; `None` runs them on the runtime
    /// that accepted them.
    pub dataplane: Option<Arc<dataplane::DataPlane>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            seed: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            header_read_timeout: crate::http::DEFAULT_HEADER_READ_TIMEOUT,
            total: Arc::default(),
            idle_timeout: None,
            dataplane: None,
        }
    }
}

/// The state a proxy's connections share, read on every connection and never locked.
#[derive(Debug)]
pub struct Link {
    name: String,
    protocol: Protocol,
    /// HTTP: whether responses a fault touched carry `x-fallacy-fault`.
    fault_header: AtomicBool,
    /// HTTP: the `Host` forwarded requests carry instead of the client's.
    rewrite_host: arc_swap::ArcSwapOption<String>,
    upstream: ArcSwap<String>,
    /// Several upstreams, when configured; `upstream` is then the first.
    pool: arc_swap::ArcSwapOption<UpstreamSet>,
    /// Round robin's turn.
    turn: AtomicU64,
    /// Upstreams whose last dial failed, until when they are skipped.
    unhealthy: std::sync::Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
    /// All toxics of the proxy in creation order; each connection filters its direction.
    toxics: ArcSwap<Vec<Arc<ToxicSpec>>>,
    /// Bumped on every toxic change, so open connections rebuild their chains.
    generation: watch::Sender<u64>,
    connections: AtomicU64,
    settings: Arc<Settings>,
    metrics: ProxyMetrics,
    /// abandon_grace, retry_window, idempotency headers: read per request.
    measure: ArcSwap<MeasureSettings>,
    stats: ProxyStats,
    /// Partition bits (`crate::partition::HOLD_*`, `RESET`), read per loop by the data paths.
    cut: std::sync::atomic::AtomicU8,
    /// The same bits, while a `flap` toxic has the link down.
    flap: std::sync::atomic::AtomicU8,
    /// Connections open now, against `max_connections` (see [`crate::limits`]).
    open: std::sync::atomic::AtomicUsize,
    /// When a refusal was last logged (Unix seconds).
    refusal_warned: AtomicU64,
}

impl Link {
    /// A link with no toxics.
    pub fn new(name: &str, upstream: &str, protocol: Protocol, settings: Arc<Settings>) -> Link {
        Link {
            name: name.to_owned(),
            protocol,
            fault_header: AtomicBool::new(true),
            rewrite_host: arc_swap::ArcSwapOption::empty(),
            upstream: ArcSwap::from_pointee(upstream.to_owned()),
            pool: arc_swap::ArcSwapOption::empty(),
            turn: AtomicU64::new(0),
            unhealthy: std::sync::Mutex::default(),
            toxics: ArcSwap::from_pointee(Vec::new()),
            generation: watch::channel(0).0,
            connections: AtomicU64::new(0),
            settings,
            metrics: ProxyMetrics::new(name, protocol == Protocol::Http),
            measure: ArcSwap::from_pointee(MeasureSettings::default()),
            stats: ProxyStats::default(),
            cut: std::sync::atomic::AtomicU8::new(0),
            flap: std::sync::atomic::AtomicU8::new(0),
            open: std::sync::atomic::AtomicUsize::new(0),
            refusal_warned: AtomicU64::new(0),
        }
    }

    pub(crate) fn open_counter(&self) -> &std::sync::atomic::AtomicUsize {
        &self.open
    }

    pub(crate) fn refusal_warned(&self) -> &AtomicU64 {
        &self.refusal_warned
    }

    /// The proxy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the proxy speaks; fixed for its lifetime.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// HTTP: whether faulted responses name the fault in `x-fallacy-fault`.
    pub fn fault_header(&self) -> bool {
        self.fault_header.load(Ordering::Relaxed)
    }

    /// HTTP: the `Host` forwarded requests carry, when set.
    pub fn rewrite_host(&self) -> Option<Arc<String>> {
        self.rewrite_host.load_full()
    }

    /// Sets (or, with `None`, clears) the `Host` of the next forwarded requests. The caller
    /// has checked it with [`check_rewrite_host`].
    pub fn set_rewrite_host(&self, host: Option<String>) {
        self.rewrite_host.store(host.map(Arc::new));
    }

    /// Turns the `x-fallacy-fault` header on or off, for the next responses.
    pub fn set_fault_header(&self, on: bool) {
        self.fault_header.store(on, Ordering::Relaxed);
    }

    /// Where new connections go. Open connections keep the upstream they dialled.
    pub fn upstream(&self) -> Arc<String> {
        self.upstream.load_full()
    }

    /// Points new connections at another upstream (and forgets a set of upstreams).
    pub fn set_upstream(&self, upstream: &str) {
        self.pool.store(None);
        self.upstream.store(Arc::new(upstream.to_owned()));
    }

    /// Gives the proxy several upstreams; new connections pick by its policy.
    pub fn set_upstreams(&self, set: UpstreamSet) {
        self.upstream.store(Arc::new(set.list[0].clone()));
        self.pool.store(Some(Arc::new(set)));
    }

    /// The set of upstreams, when there is one.
    pub fn upstream_set(&self) -> Option<Arc<UpstreamSet>> {
        self.pool.load_full()
    }

    /// The upstreams a new connection tries, in order: by the policy, healthy ones first
    /// (unhealthy ones last, so a proxy whose upstreams all failed recently still tries).
    pub fn candidates(&self) -> Vec<Arc<String>> {
        let Some(set) = self.pool.load_full() else {
            return vec![self.upstream()];
        };
        let n = set.list.len();
        let start = match set.policy {
            Policy::Failover => 0,
            Policy::RoundRobin => (self.turn.fetch_add(1, Ordering::Relaxed) % n as u64) as usize,
        };
        let now = tokio::time::Instant::now();
        let unhealthy = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        let (mut good, mut bad): (Vec<_>, Vec<_>) = (0..n)
            .map(|i| &set.list[(start + i) % n])
            .partition(|a| unhealthy.get(*a).is_none_or(|until| *until <= now));
        good.append(&mut bad);
        good.into_iter().map(|a| Arc::new(a.clone())).collect()
    }

    /// The one upstream a request goes to (HTTP): the first candidate. Without a set of
    /// upstreams it is the upstream itself, with no list built per request.
    pub fn pick(&self) -> Arc<String> {
        if self.pool.load().is_none() {
            return self.upstream();
        }
        self.candidates()
            .into_iter()
            .next()
            .unwrap_or_else(|| self.upstream())
    }

    /// Records a dial's result for an upstream's health (a proxy with several upstreams).
    pub fn dialled(&self, upstream: &str, ok: bool) {
        if self.pool.load().is_none() {
            return;
        }
        let mut unhealthy = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            unhealthy.remove(upstream);
        } else {
            unhealthy.insert(
                upstream.to_owned(),
                tokio::time::Instant::now() + UNHEALTHY_FOR,
            );
        }
    }

    /// The current toxics, upstream and downstream mixed, in creation order.
    pub fn toxics(&self) -> Arc<Vec<Arc<ToxicSpec>>> {
        self.toxics.load_full()
    }

    /// Publishes a new toxic list and wakes every open connection. Unchanged toxics must be the
    /// same `Arc`s as before: connections use pointer identity to keep their state.
    pub fn set_toxics(&self, toxics: Vec<Arc<ToxicSpec>>) {
        self.toxics.store(Arc::new(toxics));
        self.generation.send_modify(|g| *g += 1);
    }

    /// A receiver that fires on every toxic change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The measurement settings requests use now.
    pub fn measure(&self) -> arc_swap::Guard<Arc<MeasureSettings>> {
        self.measure.load()
    }

    /// Replaces the measurement settings, for the next requests.
    pub fn set_measure(&self, settings: MeasureSettings) {
        self.measure.store(Arc::new(settings));
    }

    /// What partitions do to this proxy now: held streams, and whether they reset.
    pub fn cut(&self) -> u8 {
        self.cut.load(Ordering::Acquire) | self.flap.load(Ordering::Acquire)
    }

    /// The partition bits alone (without a flap's).
    pub fn partition_cut(&self) -> u8 {
        self.cut.load(Ordering::Acquire)
    }

    /// Sets a flap's bits (0: up) and wakes the connections.
    pub fn set_flap(&self, bits: u8) {
        if self.flap.swap(bits, Ordering::AcqRel) != bits {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Sets the partition bits and wakes every open connection, so a cut or a heal reaches
    /// them at once.
    pub fn set_cut(&self, bits: u8) {
        if self.cut.swap(bits, Ordering::AcqRel) != bits {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// Waits until `direction` flows (no partition holds it). `Err` when a partition in reset
    /// mode cuts this proxy: the caller resets its connection.
    pub async fn flowing(&self, direction: Direction) -> Result<(), PartitionReset> {
        let bit = crate::partition::hold_bit(direction);
        if self.cut() == 0 {
            return Ok(());
        }
        let mut changes = self.subscribe();
        loop {
            let cut = self.cut();
            if cut & crate::partition::RESET != 0 {
                return Err(PartitionReset);
            }
            if cut & bit == 0 {
                return Ok(());
            }
            if changes.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// The live figures of what clients did.
    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }

    pub(crate) fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Connections accepted so far.
    pub fn connections_total(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Numbers connections from 1, for logs and for seeding.
    pub(crate) fn next_connection(&self) -> u64 {
        self.connections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The generator for one connection and direction: derived from `--seed`, the proxy name
    /// and the connection number when seeded, so runs replay; from the OS otherwise.
    pub(crate) fn rng(&self, connection: u64, direction: Direction) -> SmallRng {
        self.rng_for(connection, direction as u64)
    }

    /// [`Link::rng`] for a purpose other than a direction (`stream` 0 and 1 are taken).
    pub(crate) fn rng_for(&self, connection: u64, stream: u64) -> SmallRng {
        match self.settings.seed {
            Some(seed) => {
                let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
                for b in self.name.bytes() {
                    h = splitmix(h ^ u64::from(b));
                }
                h = splitmix(h ^ connection);
                h = splitmix(h ^ stream);
                SmallRng::seed_from_u64(h)
            }
            None => SmallRng::from_rng(&mut rand::rng()),
        }
    }
}

/// A partition in reset mode cuts the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionReset;

/// SplitMix64's finaliser: a cheap, well-mixed hash step for deriving seeds.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Which side of a connection an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The accepted client socket.
    Client,
    /// The dialled upstream socket.
    Upstream,
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The upstream refused, was unreachable or did not resolve.
    #[error("cannot connect to upstream {upstream}: {source}")]
    Connect {
        /// The upstream address as configured.
        upstream: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The upstream did not answer the connect in time.
    #[error("connect to upstream {upstream} timed out after {timeout:?}")]
    ConnectTimeout {
        /// The upstream address as configured.
        upstream: String,
        /// The timeout that expired.
        timeout: Duration,
    },
}

/// True for errors that are part of normal network life (a peer that resets or vanishes).
/// These are logged at debug, not warn.
pub fn is_routine(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
    )
}
