//! Connection limits, so that running out of descriptors refuses new work instead of breaking
//! what is open.
//!
//! Every proxied TCP connection holds two descriptors (client and upstream). Left alone, a
//! flood of connections runs the process out of them: `accept` fails with EMFILE, the listener
//! backs off, and the admin API cannot accept either, just when someone wants to look. So
//! connections are admitted against two limits, each checked at accept:
//! - a proxy's own `max_connections` (0: none), set like its other settings;
//! - `[server] max_connections` for all proxies together, by default what the open-file limit
//!   allows after a reserve for the admin API, listeners and splice pipes.
//!
//! A refused connection is reset at once (the client sees ECONNRESET, not a silent hang) and
//! counted in `fallacy_connections_refused_total{proxy,reason}`. UDP sessions are not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::proxy::Link;

/// Descriptors kept back from the automatic limit: the admin API's connections, listeners,
/// the epoll and timer descriptors, and splice pipes (two descriptors each).
pub fn reserved_fds(limit: u64) -> u64 {
    64 + limit / 10
}

/// Raises the soft open-file limit to the hard one, as proxies usually do: the soft default of
/// 1,024 would cap a load test at a few hundred connections. Returns the soft limit in force
/// afterwards, `None` when it cannot be read.
pub fn raise_nofile() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// The total limit "auto" stands for: half of what the open-file limit leaves after the
/// reserve, as each connection holds two descriptors. `None` (no limit) when the limit is
/// unknown or unlimited.
pub fn auto_max_connections(nofile: Option<u64>) -> Option<u64> {
    let limit = nofile.filter(|&n| n != nix::sys::resource::RLIM_INFINITY)?;
    Some((limit.saturating_sub(reserved_fds(limit)) / 2).max(1))
}

/// The server-wide count and limit every proxy admits against. The limit is fixed at start
/// (a reload does not change `[server]` settings).
#[derive(Debug, Default)]
pub struct Total {
    open: AtomicUsize,
    /// 0: no limit.
    max: usize,
}

impl Total {
    /// A count with this limit (0: none).
    pub fn new(max: u64) -> Total {
        Total {
            open: AtomicUsize::new(0),
            max: usize::try_from(max).unwrap_or(usize::MAX),
        }
    }

    /// The limit, 0 for none.
    pub fn max(&self) -> u64 {
        self.max as u64
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The proxy's own `max_connections`.
    Proxy = 0,
    /// `[server] max_connections`.
    Total = 1,
}

impl Refusal {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Proxy => "proxy_limit",
            Refusal::Total => "server_limit",
        }
    }
}

/// A connection's place under both limits, given back when the connection's task ends.
#[derive(Debug)]
pub struct Slot {
    link: Arc<Link>,
}

/// Takes one place on the proxy and one on the server, or neither.
pub fn admit(link: &Arc<Link>) -> Result<Slot, Refusal> {
    let own = link.measure().max_connections;
    if !take(link.open_counter(), own as usize) {
        return Err(Refusal::Proxy);
    }
    let total = &link.settings().total;
    if !take(&total.open, total.max) {
        link.open_counter().fetch_sub(1, Ordering::Relaxed);
        return Err(Refusal::Total);
    }
    Ok(Slot { link: link.clone() })
}

/// Counts one more unless that would pass `max` (0: no limit).
fn take(open: &AtomicUsize, max: usize) -> bool {
    let before = open.fetch_add(1, Ordering::Relaxed);
    if max != 0 && before >= max {
        open.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.link.open_counter().fetch_sub(1, Ordering::Relaxed);
        self.link
            .settings()
            .total
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// At most one warning per proxy in this long: a flood would otherwise log a line per refusal.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Counts a refusal, and warns about it now and then.
pub fn refused(link: &Link, why: Refusal) {
    let last_warned = link.refusal_warned();
    link.metrics().refused(why);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = last_warned.load(Ordering::Relaxed);
    if now >= last + WARN_EVERY.as_secs()
        && last_warned
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let limit = match why {
            Refusal::Proxy => link.measure().max_connections,
            Refusal::Total => link.settings().total.max(),
        };
        tracing::warn!(
            proxy = %link.name(),
            reason = why.as_str(),
            limit,
            "refusing new connections: at the connection limit (counted in fallacy_connections_refused_total)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_leaves_a_reserve_and_counts_two_descriptors_per_connection() {
        assert_eq!(
            auto_max_connections(Some(1024)),
            Some((1024 - 64 - 102) / 2)
        );
        assert_eq!(
            auto_max_connections(Some(20_000)),
            Some((20_000 - 64 - 2_000) / 2)
        );
        assert_eq!(auto_max_connections(Some(10)), Some(1));
        assert_eq!(auto_max_connections(None), None);
        assert_eq!(
            auto_max_connections(Some(nix::sys::resource::RLIM_INFINITY)),
            None
        );
    }

    #[test]
    fn take_stops_at_the_limit_and_zero_means_none() {
        let open = AtomicUsize::new(0);
        assert!(take(&open, 2));
        assert!(take(&open, 2));
        assert!(!take(&open, 2));
        assert_eq!(open.load(Ordering::Relaxed), 2);
        assert!(take(&open, 0));
        assert_eq!(open.load(Ordering::Relaxed), 3);
    }
}
