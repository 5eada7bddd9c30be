//! Toxics: the faults applied to a byte stream.
//!
//! Two layers, kept apart on purpose:
//! - [`ToxicSpec`] / [`ToxicKind`] (in `spec`) are the *wire model*: what the admin API and the
//!   config file say, validated, serialised back in Toxiproxy's exact shape.
//! - [`Toxic`] is the *runtime*: one boxed instance per connection and direction, built from a
//!   `ToxicKind`, driven inline by the duplex loop (`proxy/duplex.rs`). No task and no channel
//!   per toxic: a chain is a `Vec` the loop walks for every chunk.
//!
//! Adding a toxic: a variant in [`ToxicKind`] with its attributes, a module with a type that
//! implements [`Toxic`], and a line in [`ToxicKind::instantiate`]. ARCHITECTURE.md has the
//! longer how-to.

mod bandwidth;
mod corrupt;
pub(crate) mod datagram;
pub mod distribution;
pub mod http_faults;
mod latency;
mod limit_data;
pub mod loss;
pub mod profile;
mod reset_peer;
mod slicer;
mod slow_close;
mod spec;
mod timeout;

use std::fmt;

use bytes::Bytes;
use rand::rngs::SmallRng;
use tokio::time::Instant;

pub(crate) use latency::Latency;
pub use latency::{DISTRIBUTIONS, LatencyModel};
pub use spec::{
    AttrError, Direction, Envelope, EnvelopeError, Head, Micros, Millis, TOXIC_TYPES, ToxicKind,
    ToxicPatch, ToxicSpec, decode_object, lowercase_keys,
};

/// A piece of the stream on its way through a chain, with the earliest instant it may be written.
///
/// `at` starts as the instant the bytes were read; delaying toxics push it later. The duplex loop
/// keeps the queue in order, so a later chunk is never written before an earlier one even when
/// jitter would draw a smaller delay for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The bytes.
    pub data: Bytes,
    /// Not before this instant.
    pub at: Instant,
}

/// What a toxic wants done with the connection, besides the chunks it emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Carry on. For `on_eof`, this forwards the FIN at the (possibly moved) instant.
    Continue,
    /// Swallow the event: used by `on_eof` to keep a half open (the FIN is not forwarded).
    Swallow,
    /// Close the whole connection (both legs, with FIN) once the data queued before it is out.
    Close(Instant),
    /// Reset both legs (RST) at this instant; data not yet written is lost.
    Reset(Instant),
}

/// Per-connection, per-direction context handed to every toxic call.
///
/// The random generator is seeded from `--seed`, the proxy and the connection number, so a
/// seeded run replays the same draws.
pub struct ToxicCx {
    /// The seeded generator of this connection and direction.
    pub rng: SmallRng,
}

impl fmt::Debug for ToxicCx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToxicCx").finish_non_exhaustive()
    }
}

/// One instance per connection and direction.
///
/// Implementations are pure state machines: they never sleep or do I/O. They push the chunks to
/// emit into `out` (nothing, to drop; several, to split) and return a [`Verdict`]. Timers are
/// expressed as instants ([`Toxic::deadline`]) that the duplex loop sleeps until. That keeps the
/// whole chain inside one future per connection, which is what makes fallacy cheap per byte.
pub trait Toxic: Send + fmt::Debug {
    /// One chunk in, zero or more chunks out (in order).
    fn on_chunk(&mut self, chunk: Chunk, cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict;

    /// The source sent FIN at `at`. A toxic may move `at` later (slow close), swallow the FIN or
    /// end the connection. The default forwards it unchanged: half-close is preserved.
    fn on_eof(&mut self, _at: &mut Instant, _cx: &mut ToxicCx) -> Verdict {
        Verdict::Continue
    }

    /// An instant at which this toxic wants [`Toxic::on_deadline`] called, if any. It must move
    /// on (or become `None`) once `on_deadline` has run, or the duplex loop would spin.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Called once `deadline()` has passed.
    fn on_deadline(&mut self, _now: Instant, _cx: &mut ToxicCx) -> Verdict {
        Verdict::Continue
    }

    /// Datagram toxics: emits what has waited long enough without a new datagram to carry it
    /// (UDP pipes call it once `deadline()` has passed; byte streams never hold chunks so).
    fn release(&mut self, _now: Instant, _out: &mut Vec<Chunk>) {}

    /// Apply new attributes in place, keeping per-connection state (such as the bytes a
    /// `limit_data` toxic has already let through). Returns false when the toxic would rather be
    /// rebuilt from scratch, which is the default.
    fn reconfigure(&mut self, _kind: &ToxicKind) -> bool {
        false
    }

    /// Whether removing this toxic from a live connection must close it. True for `timeout`,
    /// which has dropped bytes: the stream cannot be resumed without corrupting it (Toxiproxy
    /// closes in that case too).
    fn closes_on_removal(&self) -> bool {
        false
    }
}

/// `noop`: passes every chunk on unchanged. A real link in the chain (not skipped), so that
/// benchmarks of a no-op chain measure what a chain costs.
#[derive(Debug)]
pub struct Noop;

impl Toxic for Noop {
    fn on_chunk(&mut self, chunk: Chunk, _cx: &mut ToxicCx, out: &mut Vec<Chunk>) -> Verdict {
        out.push(chunk);
        Verdict::Continue
    }
}

impl ToxicSpec {
    /// Checks that the toxic makes sense on a proxy of this protocol: HTTP faults and `match`
    /// need an HTTP proxy; byte-stream toxics other than `latency` do not run on HTTP proxies
    /// yet.
    pub fn fits(&self, protocol: crate::proxy::Protocol) -> Result<(), AttrError> {
        use crate::proxy::Protocol;
        let name = self.kind.type_name();
        if protocol != Protocol::Udp && self.kind.is_udp_only() {
            return Err(AttrError::new(
                "type",
                &format!("{name} acts on datagrams; create the proxy with \"protocol\": \"udp\""),
            ));
        }
        match protocol {
            Protocol::Udp => {
                if self.matcher.is_some() {
                    return Err(AttrError::new(
                        "match",
                        "matches HTTP requests, and this proxy is UDP",
                    ));
                }
                match &self.kind {
                    ToxicKind::Latency(a)
                        if a.per.is_some() && a.per.as_deref() != Some("chunk") =>
                    {
                        Err(AttrError::new(
                            "attributes.per",
                            "on a UDP proxy latency delays every datagram; leave per out",
                        ))
                    }
                    ToxicKind::Bandwidth(a) if a.shared == Some(true) => Err(AttrError::new(
                        "attributes.shared",
                        "is not supported on UDP proxies: each session is paced on its own",
                    )),
                    ToxicKind::Latency(_)
                    | ToxicKind::Bandwidth(_)
                    | ToxicKind::Corrupt(_)
                    | ToxicKind::Noop(_)
                    | ToxicKind::PacketLoss(_)
                    | ToxicKind::Duplicate(_)
                    | ToxicKind::Reorder(_) => Ok(()),
                    _ => Err(AttrError::new(
                        "type",
                        &format!(
                            "{name} does not act on datagrams; a UDP proxy takes latency, bandwidth, corrupt, packet_loss, duplicate, reorder and noop"
                        ),
                    )),
                }
            }
            Protocol::Tcp => {
                if self.kind.is_http() {
                    return Err(AttrError::new(
                        "type",
                        &format!(
                            "{name} acts on HTTP requests; create the proxy with \"protocol\": \"http\""
                        ),
                    ));
                }
                if self.matcher.is_some() {
                    return Err(AttrError::new(
                        "match",
                        "matches HTTP requests, and this proxy is TCP (\"protocol\": \"http\" makes an HTTP proxy)",
                    ));
                }
                if let ToxicKind::Latency(a) = &self.kind {
                    if a.per.as_deref() == Some("request") {
                        return Err(AttrError::new(
                            "attributes.per",
                            "\"request\" needs an HTTP proxy; use \"chunk\" or \"connection\"",
                        ));
                    }
                }
                Ok(())
            }
            Protocol::Http => match &self.kind {
                ToxicKind::Latency(a)
                    if matches!(a.per.as_deref(), Some("chunk" | "connection")) =>
                {
                    Err(AttrError::new(
                        "attributes.per",
                        "on an HTTP proxy latency waits once per request; leave per out or use \"request\"",
                    ))
                }
                ToxicKind::Downgrade(_) if self.matcher.is_some() => Err(AttrError::new(
                    "match",
                    "downgrade acts on whole connections, before any request: it cannot match one",
                )),
                _ if self.matcher.is_some() && self.acts_on_bytes(protocol) => Err(AttrError::new(
                    "match",
                    &format!(
                        "{name} acts on the connection's bytes, not on requests: it cannot match one"
                    ),
                )),
                ToxicKind::ConnectDelay(_) => Err(AttrError::new(
                    "type",
                    "connect_delay delays a TCP proxy's dial; an HTTP proxy dials its pool ahead of \
                     requests, so use http_delay with phase \"request\" instead",
                )),
                _ => Ok(()),
            },
        }
    }

    /// Whether the toxic runs in a connection's byte chain on a proxy of this protocol. On HTTP
    /// proxies `latency` acts per request instead (`http::faults`) and `noop` has no bytes to
    /// pass; the other stream toxics act on the client connection's bytes.
    pub fn acts_on_bytes(&self, protocol: crate::proxy::Protocol) -> bool {
        self.kind.acts_on_stream()
            && (protocol == crate::proxy::Protocol::Tcp
                || !matches!(self.kind, ToxicKind::Latency(_) | ToxicKind::Noop(_)))
    }

    /// Draws whether this toxic applies to a connection and direction, per its toxicity.
    pub fn applies(&self, cx: &mut ToxicCx) -> bool {
        use rand::Rng;
        self.toxicity >= 1.0 || (self.toxicity > 0.0 && cx.rng.random::<f32>() < self.toxicity)
    }

    /// For a `connect_delay` toxic that applies to this connection: how long to wait before
    /// dialling the upstream; for `loss`, what lost SYNs cost (`Duration::MAX` when every try
    /// is lost). `None` for other toxics or when the toxicity draw says no.
    pub fn connect_delay(&self, cx: &mut ToxicCx) -> Option<std::time::Duration> {
        match &self.kind {
            ToxicKind::ConnectDelay(attrs) if self.applies(cx) => {
                Some(latency::Latency::new(attrs).draw(0, cx))
            }
            ToxicKind::Loss(attrs) if self.applies(cx) => {
                let model = attrs.model.as_ref()?;
                Some(
                    model
                        .syn_delay(&mut cx.rng)
                        .unwrap_or(std::time::Duration::MAX),
                )
            }
            _ => None,
        }
    }

    /// Whether the toxic acts when a connection is dialled (`connect_delay`, `loss`'s SYNs).
    pub fn acts_on_connect(&self) -> bool {
        matches!(self.kind, ToxicKind::ConnectDelay(_) | ToxicKind::Loss(_))
    }
}

/// Converts a signed number of milliseconds (Toxiproxy accepts negative values) to a duration,
/// treating negative values as zero.
pub(crate) fn nonneg_nanos(nanos: i64) -> std::time::Duration {
    std::time::Duration::from_nanos(nanos.max(0) as u64)
}

#[cfg(test)]
mod tests;
