//! TCP: one connection's requests, as far as bytes tell them.
//!
//! A request is a burst of client bytes followed by waiting for upstream bytes. It is answered
//! when the first answer byte reaches the client, and abandoned when the client leaves first.
//!
//! Leaving is not always visible at once. A reset is. A FIN is not: the client may have closed
//! (a timeout) or only half-closed (it still reads, and fallacy keeps half-close working). So a
//! FIN with a request waiting is provisional: it becomes an abandonment when writing the
//! answer to the client fails, or when the client's socket holds a reset at the end; otherwise
//! the client got its answer and the request counts as answered.
//!
//! Both halves of a connection run in one task, so these atomics are never contended; they are
//! atomics only because the halves share them by reference. Instants are nanoseconds since the
//! connection's start, plus one, with 0 for "not yet".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::{Cause, Outcome, abandoned};
use crate::proxy::Link;

/// Below this, time a request spent in fallacy is its own work, not an injected delay.
const INJECTED_FLOOR: Duration = Duration::from_micros(100);

/// One TCP connection's request bookkeeping.
#[derive(Debug)]
pub struct TcpTrack {
    epoch: Instant,
    start: AtomicU64,
    /// The request's first byte written upstream.
    sent: AtomicU64,
    /// The answer's first byte read from upstream.
    read: AtomicU64,
    /// When fallacy's toxics let that byte go to the client.
    release: AtomicU64,
    /// A FIN from the client while the request waited (provisional, see the module doc).
    fin: AtomicU64,
    /// The answer written to a client that had sent its FIN (provisional too).
    delivered: AtomicU64,
    /// The client is known to have left with the request waiting.
    abandoned: AtomicU64,
    upstream_failed: AtomicBool,
    resolved: AtomicBool,
    /// A toxic applies to this connection: a delay may be fallacy's doing.
    faulted: AtomicBool,
    /// A toxic ended the connection (close, reset): a reconnect is a retry.
    fault_ended: AtomicBool,
    /// Fires when an abandonment's outcome is known, ending the wait for it.
    pub settled: Notify,
}

impl Default for TcpTrack {
    fn default() -> Self {
        TcpTrack {
            epoch: Instant::now(),
            start: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            read: AtomicU64::new(0),
            release: AtomicU64::new(0),
            fin: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            upstream_failed: AtomicBool::new(false),
            resolved: AtomicBool::new(false),
            faulted: AtomicBool::new(false),
            fault_ended: AtomicBool::new(false),
            settled: Notify::new(),
        }
    }
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn set(a: &AtomicU64, v: u64) {
    a.store(v, Ordering::Relaxed);
}

fn span(from: u64, to: u64) -> Duration {
    Duration::from_nanos(to.saturating_sub(from))
}

impl TcpTrack {
    fn at(&self, t: Instant) -> u64 {
        let nanos = t.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
    }

    fn now(&self) -> u64 {
        self.at(Instant::now())
    }

    /// A toxic applies to this connection.
    pub fn faulted(&self) {
        self.faulted.store(true, Ordering::Relaxed);
    }

    /// A toxic closed or reset the connection.
    pub fn fault_ended(&self) {
        self.fault_ended.store(true, Ordering::Relaxed);
    }

    /// Bytes from the client: a request starts unless one is waiting already.
    pub fn client_bytes(&self, link: &Link) {
        if get(&self.start) == 0 && get(&self.fin) == 0 && get(&self.abandoned) == 0 {
            set(&self.start, self.now());
            link.stats().requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Bytes written upstream: the request's first ones start the upstream's clock.
    /// `at_once`: written as they were read, so the request's start is their instant.
    pub fn sent_upstream(&self, at_once: bool) {
        let start = get(&self.start);
        if start != 0 && get(&self.sent) == 0 {
            set(&self.sent, if at_once { start } else { self.now() });
        }
    }

    /// Bytes from the upstream, which fallacy's toxics release to the client at `release`
    /// (`None`: at once). The clock is only read when the bytes answer a request.
    pub fn upstream_bytes(&self, link: &Link, release: Option<Instant>) {
        if get(&self.start) != 0 && get(&self.read) == 0 {
            let now = self.now();
            set(&self.read, now);
            set(&self.release, release.map_or(now, |r| self.at(r)));
            if get(&self.abandoned) != 0 {
                self.resolve(link, true);
            }
        }
    }

    /// Bytes written to the client: the first ones after an answer end the request.
    /// `at_once`: written as they were read from the upstream, at that instant.
    pub fn delivered(&self, link: &Link, at_once: bool) {
        let read = get(&self.read);
        if get(&self.start) == 0 || read == 0 || get(&self.abandoned) != 0 {
            return;
        }
        let now = if at_once { read } else { self.now() };
        if get(&self.fin) != 0 {
            // Half-closed or gone: the end of the connection tells.
            if get(&self.delivered) == 0 {
                set(&self.delivered, now);
            }
            return;
        }
        self.answered(link, now);
    }

    fn answered(&self, link: &Link, at: u64) {
        let start = get(&self.start);
        let observed = span(start, at);
        let stats = link.stats();
        stats.answered.fetch_add(1, Ordering::Relaxed);
        stats.client.record(observed);
        stats.observed.record(observed);
        let (sent, read) = (get(&self.sent), get(&self.read));
        if sent != 0 {
            let upstream = span(sent, read);
            stats.upstream.record(upstream);
            stats.upstream_all.record(upstream);
            // What fallacy held: the request on its way up, the answer on its way back.
            let injected = span(start, sent) + span(read, at);
            if injected >= INJECTED_FLOOR {
                link.metrics().injected_delay(injected);
            }
        }
        for a in [
            &self.start,
            &self.sent,
            &self.read,
            &self.release,
            &self.delivered,
        ] {
            set(a, 0);
        }
    }

    /// The client sent its FIN.
    pub fn client_fin(&self) {
        if get(&self.start) != 0 && get(&self.fin) == 0 && get(&self.abandoned) == 0 {
            set(&self.fin, self.now());
        }
    }

    /// The client reset its side, or writing to it failed: with a request waiting, it left.
    /// Returns true when the upstream leg should stay open (for up to `abandon_grace`) to
    /// learn the outcome.
    pub fn client_gone(&self, link: &Link) -> bool {
        if get(&self.start) == 0 || get(&self.abandoned) != 0 {
            return false;
        }
        // It left when it sent its FIN, if it did.
        let fin = get(&self.fin);
        set(&self.abandoned, if fin != 0 { fin } else { self.now() });
        if get(&self.read) != 0 {
            // The answer had come: fallacy was holding it, or the client left as it arrived.
            self.resolve(link, true);
            return false;
        }
        if self.upstream_failed.load(Ordering::Relaxed) {
            self.resolve(link, false);
            return false;
        }
        true
    }

    /// The upstream closed or failed.
    pub fn upstream_ended(&self, link: &Link) {
        if get(&self.abandoned) != 0 {
            self.resolve(link, false);
        } else if get(&self.start) != 0 && get(&self.read) == 0 {
            self.upstream_failed.store(true, Ordering::Relaxed);
        }
    }

    /// The connection is over. `client_reset` says whether the client's socket holds a reset
    /// (it had closed, not half-closed). An abandonment still unresolved stays pending.
    /// Returns whether the connection failed, for the reconnect count.
    pub fn finish(&self, link: &Link, client_reset: bool) -> bool {
        if get(&self.fin) != 0 && get(&self.abandoned) == 0 {
            if client_reset {
                self.client_gone(link);
            } else if get(&self.delivered) != 0 {
                self.answered(link, get(&self.delivered));
            }
        }
        if get(&self.abandoned) != 0 && !self.resolved.swap(true, Ordering::Relaxed) {
            abandoned(link, Outcome::UpstreamPending, Cause::Upstream, None);
        }
        self.fault_ended.load(Ordering::Relaxed) || get(&self.abandoned) != 0
    }

    fn resolve(&self, link: &Link, ok: bool) {
        if self.resolved.swap(true, Ordering::Relaxed) {
            return;
        }
        self.settled.notify_one();
        let (start, gone) = (get(&self.start), get(&self.abandoned));
        let (sent, read) = (get(&self.sent), get(&self.read));
        let at = span(start, gone);
        let late = span(gone, self.now()) > link.measure().abandon_grace;
        let upstream = (sent != 0 && read != 0).then(|| span(sent, read));
        if let Some(u) = upstream.filter(|_| !late) {
            link.stats().upstream_all.record(u);
            if ok {
                link.stats().upstream.record(u);
            }
        }
        let faulted = self.faulted.load(Ordering::Relaxed);
        let (o, c, d) = match upstream {
            _ if late => (Outcome::UpstreamPending, Cause::Upstream, None),
            Some(u) => {
                // The upstream alone answered before the client gave up: fallacy held it.
                let cause = if faulted && u < at {
                    Cause::Injected
                } else {
                    Cause::Upstream
                };
                if ok {
                    // Had the client waited, it would have had the answer when released.
                    (
                        Outcome::UpstreamOk,
                        cause,
                        Some(span(start, get(&self.release))),
                    )
                } else {
                    (Outcome::UpstreamError, cause, None)
                }
            }
            None if ok => (Outcome::UpstreamOk, Cause::Upstream, None),
            None => (Outcome::UpstreamError, Cause::Upstream, None),
        };
        abandoned(link, o, c, d);
    }
}
