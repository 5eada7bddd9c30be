//! One future per connection: two halves joined, each copying one direction through its toxic
//! chain.
//!
//! # Half-close
//! EOF on one side shuts down the *write* side of the other leg and nothing more: the opposite
//! direction keeps flowing until it sees its own EOF. (Toxiproxy closes both ways on the first
//! EOF, which truncates every request-then-shutdown protocol.)
//!
//! # Pipelining
//! A half reads a chunk, runs it through the chain, and queues what comes out with the instant
//! each piece may be written. It keeps reading while earlier pieces wait, up to
//! [`MAX_QUEUED_BYTES`], so a latency toxic delays bytes without throttling the stream.
//! Beyond that bound it stops reading, and TCP flow control pushes back on the sender.
//!
//! # Fast path
//! With no toxic in a direction and nothing queued, a chunk is written straight from the read
//! buffer: no copy, no queue, no timer. Once such a direction carries bulk data (a read filled
//! [`SPLICE_AFTER`] bytes), it moves bytes with splice(2) through a pipe instead, socket to
//! pipe to socket, without copying them through user space; a small chunk sends it back to
//! plain reads, which cost fewer syscalls for request/response traffic. Each spliced chunk
//! leaves the pipe before the half looks at anything else, so a toxic added mid-stream takes
//! the next byte, with nothing lost or reordered, exactly as on the read path.
//!
//! # Memory
//! The 64 KiB read buffer is released whenever the source has nothing more to read, so an idle
//! connection holds no buffer at all.
//!
//! # Live changes
//! Each half watches its link's generation. On a change it rebuilds its chain at the next
//! chunk boundary, keeping the sockets and the state of toxics that did not change.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Link, Side};
use crate::measure::TcpTrack;
use crate::metrics;
use crate::partition;
use crate::toxic::{Chunk, Direction, Toxic, ToxicCx, ToxicSpec, Verdict};

/// Read size. Large reads amortise syscalls on bulk transfers; the buffer is only held while
/// data is flowing (see the module doc).
const BUF_SIZE: usize = 64 * 1024;

/// Bytes moved by splice(2) in this process: a check that the fast path runs.
static SPLICED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes this process has moved with splice(2), for tests and benchmarks.
pub fn spliced_bytes() -> u64 {
    SPLICED.load(Ordering::Relaxed)
}

/// A read at least this large moves a toxic-free direction to splice(2).
const SPLICE_AFTER: usize = 32 * 1024;

/// A splice smaller than this moves it back to plain reads.
const SPLICE_BELOW: usize = 4 * 1024;

/// The most one splice moves: the capacity each pipe is given.
const SPLICE_LEN: usize = 1024 * 1024;

/// Below this much free room, a read buffer is replaced rather than read into.
const MIN_READ: usize = 4 * 1024;

/// Written buffers a half keeps for its own next reads: as many as a full queue holds, so a
/// burst of releases does not send buffers to the allocator only for the next reads to fault
/// fresh pages in. Spares plus queue never exceed the queue's own peak.
const SPARE_BUFFERS: usize = MAX_QUEUED_BYTES / BUF_SIZE;

/// How long a half keeps its spare buffers after its queue empties. A stream whose source
/// pauses now and then (a busy machine) empties the queue between bursts; freeing hundreds of
/// buffers each time let the allocator trim its heap, and every later read faulted its pages
/// back in (40,000 faults a second at 1 GB/s).
const SPARE_HOLD: Duration = Duration::from_secs(1);

/// The most bytes a half holds waiting for their release time before it stops reading.
/// Throughput under a delay d is capped at this / d: 32 MiB keeps a 10 ms latency toxic from
/// capping a stream below 3 GB/s (more than loopback gives one proxied stream here), while a
/// stalled connection cannot grow without bound. Memory is only used while bytes wait.
pub const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both directions saw EOF and forwarded it.
    Finished,
    /// A toxic closed the connection.
    Closed,
    /// A toxic reset it, or a peer reset and the reset was passed on.
    Reset,
    /// The proxy was disabled, deleted or shut down.
    Stopped,
    /// An I/O error other than a reset.
    Failed(Side),
}

/// How a half asks its sibling (and the connection) to end.
const END_NONE: u8 = 0;
const END_CLOSE: u8 = 1;
const END_RESET: u8 = 2;

/// What the two halves share.
struct Shared<'a> {
    link: &'a Link,
    /// TCP proxies: the requests of this connection, for false timeouts and latency.
    track: Option<&'a TcpTrack>,
    /// Cancelled by the proxy (disable, delete, shutdown) or by a half that ends the connection.
    stop: CancellationToken,
    end: AtomicU8,
    /// Set by every read, cleared by the idle watch (`[server] idle_timeout`): a plain store
    /// per chunk, where a byte count would be a read-modify-write.
    active: AtomicBool,
}

impl Shared<'_> {
    fn end(&self, how: u8) {
        // The first reason wins: a reset after a close is still a close.
        let _ = self
            .end
            .compare_exchange(END_NONE, how, Ordering::AcqRel, Ordering::Acquire);
        self.stop.cancel();
    }
}

/// What a duplex copies between: TCP connections, or (an HTTP proxy running byte toxics) one
/// end of a local socket pair whose other end hyper serves. Each method is the tokio one.
pub trait Socket: std::os::fd::AsFd + Sync {
    /// Waits for read readiness.
    fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
    /// Waits for write readiness.
    fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send;
    /// Reads into the buffer's free room without waiting.
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Writes without waiting.
    fn try_write(&self, data: &[u8]) -> io::Result<usize>;
    /// Runs an I/O step; a `WouldBlock` from it clears the readiness sampled before it.
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

macro_rules! socket {
    ($t:ty) => {
        impl Socket for $t {
            fn readable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
                <$t>::readable(self)
            }
            fn writable(&self) -> impl std::future::Future<Output = io::Result<()>> + Send {
                <$t>::writable(self)
            }
            fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
                <$t>::try_read_buf(self, buf)
            }
            fn try_write(&self, data: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, data)
            }
            fn try_io<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                <$t>::try_io(self, interest, f)
            }
        }
    };
}
socket!(TcpStream);
socket!(UnixStream);

/// Copies both directions until the connection ends. The caller closes the sockets by dropping
/// them; this function sets SO_LINGER 0 first when the connection must end with RST.
///
/// With a `track`, the connection's requests are measured, and a client that leaves with a
/// request unanswered leaves the upstream leg open for up to `abandon_grace` to learn the
/// outcome (a reset client's leg too).
pub async fn run<C: Socket, U: Socket>(
    client: &C,
    upstream: &U,
    link: &Link,
    id: u64,
    stop: &CancellationToken,
    track: Option<&TcpTrack>,
) -> Outcome {
    let shared = Shared {
        link,
        track,
        stop: stop.child_token(),
        end: AtomicU8::new(END_NONE),
        active: AtomicBool::new(true),
    };
    let up = Half::new(Direction::Upstream, &shared, id).run(client, upstream, &shared);
    let down = Half::new(Direction::Downstream, &shared, id).run(upstream, client, &shared);
    // The watch's state (a timer entry, a cancellation future) is boxed, and only with a limit:
    // inline, it made every connection 0.5 KiB larger, idle_timeout or not.
    let idle = async {
        if let Some(limit) = link.settings().idle_timeout {
            Box::pin(idle_watch(&shared, limit)).await;
        }
    };
    let (a, b, ()) = tokio::join!(up, down, idle);
    let outcome = match shared.end.load(Ordering::Acquire) {
        END_RESET => Outcome::Reset,
        END_CLOSE => Outcome::Closed,
        _ if a == HalfEnd::Finished && b == HalfEnd::Finished => Outcome::Finished,
        _ => match (a, b) {
            (HalfEnd::Failed(side), _) | (_, HalfEnd::Failed(side)) => Outcome::Failed(side),
            _ => Outcome::Stopped,
        },
    };
    if outcome == Outcome::Reset {
        // SO_LINGER 0 makes close() send RST instead of FIN.
        let _ = SockRef::from(client).set_linger(Some(Duration::ZERO));
        let _ = SockRef::from(upstream).set_linger(Some(Duration::ZERO));
    }
    outcome
}

/// Closes the connection once no byte has been read either way for `limit`: checked every
/// quarter of it, so an idle connection ends between `limit` and 1.25 × `limit` after its
/// last byte. Ends by itself when the connection does.
async fn idle_watch(shared: &Shared<'_>, limit: Duration) {
    let step = limit / 4;
    let mut quiet_since = Instant::now();
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(step) => {}
        }
        let now = Instant::now();
        if shared.active.swap(false, Ordering::Relaxed) {
            quiet_since = now;
        } else if now - quiet_since >= limit {
            debug!(?limit, "closing an idle connection (idle_timeout)");
            shared.end(END_CLOSE);
            return;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HalfEnd {
    Finished,
    Ended,
    Stopped,
    Failed(Side),
    /// The client left with a request unanswered; the other half goes on reading the
    /// upstream for up to abandon_grace (see [`Half::run`]).
    Abandoned,
}

/// A toxic of the chain, as this connection and direction sees it.
struct Slot {
    spec: Arc<ToxicSpec>,
    /// `None` when the toxicity draw said this toxic does not apply here.
    toxic: Option<Box<dyn Toxic>>,
}

/// A pending end of the half, at an instant.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Fin(Instant),
    Close(Instant),
    Reset(Instant),
}

impl Pending {
    fn at(self) -> Instant {
        match self {
            Pending::Fin(at) | Pending::Close(at) | Pending::Reset(at) => at,
        }
    }
}

struct Half {
    dir: Direction,
    protocol: crate::proxy::Protocol,
    chain: Vec<Slot>,
    cx: ToxicCx,
    queue: VecDeque<Chunk>,
    queued_bytes: usize,
    /// Two scratch vectors for passing chunks along the chain without allocating per chunk.
    scratch: (Vec<Chunk>, Vec<Chunk>),
    /// The source's EOF, once seen: kept so a chain rebuild can re-decide what to do with it.
    eof_at: Option<Instant>,
    pending: Option<Pending>,
    changes: watch::Receiver<u64>,
    bytes: metrics::ByteCount,
    /// Buffers of written chunks, for this half's next reads: a delayed stream frees a chunk
    /// and reads the next one all the time, and recycling here (rather than through the
    /// thread's pool) holds whichever worker runs the task. Handed back to the pool once the
    /// queue has stayed empty for [`SPARE_HOLD`], so an idle connection holds none.
    spare: Vec<BytesMut>,
    spare_until: Option<Instant>,
    /// The destination refused the last write (its buffer is full): flushing waits for it to
    /// drain while reads go on, so arrivals keep their true timestamps.
    write_blocked: bool,
    /// Toxic-free bulk traffic: chunks go by splice(2) (see the module doc).
    splicing: bool,
}

impl Half {
    fn new(dir: Direction, shared: &Shared<'_>, id: u64) -> Half {
        let link = shared.link;
        // Subscribe before reading the snapshot, so a change in between is not missed.
        let mut changes = link.subscribe();
        changes.mark_unchanged();
        let mut half = Half {
            dir,
            protocol: link.protocol(),
            chain: Vec::new(),
            cx: ToxicCx {
                rng: link.rng(id, dir),
            },
            queue: VecDeque::new(),
            queued_bytes: 0,
            spare: Vec::new(),
            spare_until: None,
            write_blocked: false,
            splicing: false,
            scratch: (Vec::new(), Vec::new()),
            eof_at: None,
            pending: None,
            changes,
            bytes: link.metrics().bytes(dir),
        };
        half.rebuild(&link.toxics(), link.name(), Instant::now());
        half.note_faults(shared);
        half
    }

    /// Tells the tracker when a toxic applies to this connection.
    fn note_faults(&self, shared: &Shared<'_>) {
        if let Some(track) = shared.track {
            if self.chain.iter().any(|s| s.toxic.is_some()) {
                track.faulted();
            }
        }
    }

    /// Bytes were written to the destination; `at_once` when straight after their read (the
    /// fast path), so the read's instant stands for the write's and the clock is not read.
    fn wrote(&self, shared: &Shared<'_>, at_once: bool) {
        if let Some(track) = shared.track {
            match self.dir {
                Direction::Upstream => track.sent_upstream(at_once),
                Direction::Downstream => track.delivered(shared.link, at_once),
            }
        }
    }

    async fn run<S: Socket, D: Socket>(mut self, src: &S, dst: &D, shared: &Shared<'_>) -> HalfEnd {
        let end = self.pump(src, dst, shared).await;
        if let HalfEnd::Failed(_) = end {
            // The other direction cannot go on without this one's peer.
            shared.stop.cancel();
        }
        if let (HalfEnd::Abandoned, Some(track)) = (end, shared.track) {
            // The connection ends when the outcome is known, when the other half ends it, or
            // abandon_grace after the client left, whichever comes first. Waiting here rather
            // than beside the halves keeps the common path free of another future to poll.
            let grace = shared.link.measure().abandon_grace;
            tokio::select! {
                _ = crate::timer::sleep_until(Instant::now() + grace) => {}
                _ = track.settled.notified() => {}
                _ = shared.stop.cancelled() => {}
            }
            shared.stop.cancel();
            return HalfEnd::Ended;
        }
        end
    }

    async fn pump<S: Socket, D: Socket>(
        &mut self,
        src: &S,
        dst: &D,
        shared: &Shared<'_>,
    ) -> HalfEnd {
        let stop = &shared.stop;
        let mut buf = BytesMut::new();
        let mut changes_open = true;
        // A stand-in deadline for the disabled timer branch, computed once rather than per
        // chunk (select! evaluates every branch's expression, enabled or not).
        let never = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            // 0. A partition: in reset mode the connection ends; otherwise a held direction
            //    neither reads nor writes until it heals, and its bytes then go on in order.
            let cut = shared.link.cut();
            if cut & partition::RESET != 0 {
                shared.end(END_RESET);
                return HalfEnd::Ended;
            }
            let held = cut & partition::hold_bit(self.dir) != 0;

            // 1. Write whatever is due, then act on a due end. The fast path (nothing queued,
            //    nothing pending) skips this, clock read included.
            if (!self.queue.is_empty() || self.pending.is_some()) && !held {
                let now = Instant::now();
                if !self.write_blocked {
                    let before = self.queued_bytes;
                    match self.flush_due(now, dst) {
                        Ok(blocked) => self.write_blocked = blocked,
                        Err(err) => return self.io_failed(err, self.dst_side(), shared),
                    }
                    if self.queued_bytes < before {
                        self.wrote(shared, false);
                    }
                }
                if let Some(end) = self.due_end(now, dst, shared) {
                    return end;
                }
            }

            // 2. Wait for the next thing: data, a timer, a toxic change or a stop.
            let wake = if held { None } else { self.next_wake() };
            let can_read = self.eof_at.is_none()
                && self.pending.is_none()
                && self.queued_bytes < MAX_QUEUED_BYTES
                && !held;
            tokio::select! {
                biased;
                _ = stop.cancelled() => return HalfEnd::Stopped,
                changed = self.changes.changed(), if changes_open => match changed {
                    Ok(()) => {
                        let toxics = shared.link.toxics();
                        self.rebuild(&toxics, shared.link.name(), Instant::now());
                        self.note_faults(shared);
                    }
                    // The link is gone; the proxy's stop token will end us.
                    Err(_) => changes_open = false,
                },
                _ = crate::timer::sleep_until(wake.unwrap_or(never)), if wake.is_some() => {
                    self.fire_deadlines(Instant::now());
                }
                ready = dst.writable(), if self.write_blocked && !held => {
                    if let Err(err) = ready {
                        return self.io_failed(err, self.dst_side(), shared);
                    }
                    self.write_blocked = false;
                }
                ready = src.readable(), if can_read => {
                    if let Err(err) = ready {
                        return self.io_failed(err, self.src_side(), shared);
                    }
                    if self.splicing && self.chain.is_empty() && self.queue.is_empty() {
                        if let Some(end) = self.splice_chunk(src, dst, shared).await {
                            return end;
                        }
                        continue;
                    }
                    // After a split (toxic path) the remainder may be small: start afresh.
                    if buf.capacity() < MIN_READ {
                        buf = self.spare.pop().unwrap_or_else(pool::take);
                    }
                    let room = buf.capacity();
                    match read_chunk(src, &mut buf) {
                        Ok(0) => {
                            pool::give(mem::take(&mut buf));
                            self.source_ended(shared);
                        }
                        Ok(n) => {
                            self.bytes.increment(n as u64);
                            shared.active.store(true, Ordering::Relaxed);
                            let track = shared.track.filter(|_| self.dir == Direction::Upstream);
                            if let Some(track) = track {
                                track.client_bytes(shared.link);
                            }
                            if self.chain.is_empty() && self.queue.is_empty() {
                                if let Some(track) = shared.track.filter(|_| self.dir == Direction::Downstream) {
                                    track.upstream_bytes(shared.link, None);
                                }
                                // Fast path: straight from the read buffer.
                                if let Err(err) = write_all(dst, &buf, stop).await {
                                    return self.write_failed(err, shared);
                                }
                                self.wrote(shared, true);
                                buf.clear();
                                // Bulk data: splice the next chunks.
                                self.splicing = n >= SPLICE_AFTER && pipes::available();
                            } else {
                                let data = buf.split().freeze();
                                let queued = self.queue.len();
                                let now = Instant::now();
                                self.on_chunk(Chunk { data, at: now });
                                if let Some(track) = shared.track.filter(|_| self.dir == Direction::Downstream) {
                                    // When the toxics let the answer's first byte go.
                                    let release = self.queue.get(queued).map_or(now, |c| c.at);
                                    track.upstream_bytes(shared.link, Some(release));
                                }
                            }
                            if n < room && buf.is_empty() {
                                // Drained: an idle connection holds no buffer.
                                pool::give(mem::take(&mut buf));
                            }
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                            // Nothing more for now: give the buffer back while we wait.
                            if buf.is_empty() {
                                pool::give(mem::take(&mut buf));
                            }
                        }
                        Err(err) => return self.io_failed(err, self.src_side(), shared),
                    }
                }
            }
        }
    }

    /// The source sent its FIN: tell the tracker, then let the chain decide what to do with it.
    fn source_ended(&mut self, shared: &Shared<'_>) {
        if let Some(track) = shared.track {
            match self.dir {
                Direction::Upstream => track.client_fin(),
                Direction::Downstream => track.upstream_ended(shared.link),
            }
        }
        self.on_eof(Instant::now());
    }

    /// One chunk by splice(2): source to a pipe, then all of it from the pipe to the
    /// destination before anything else happens, so the pipe is empty again whenever the half
    /// looks at its toxics. `Some` when the half ends.
    async fn splice_chunk<S: Socket, D: Socket>(
        &mut self,
        src: &S,
        dst: &D,
        shared: &Shared<'_>,
    ) -> Option<HalfEnd> {
        let Some(pipe) = pipes::take() else {
            // No pipe to be had (file descriptors exhausted): plain reads do the same job.
            self.splicing = false;
            return None;
        };
        let mut got = None;
        // Unlike `read_chunk`, a short splice does not prove the socket empty (it also stops
        // when the pipe runs out of slots), so readiness is only cleared by a splice that
        // finds nothing: one EAGAIN per burst, rather than a lost edge and a stalled stream.
        let res = src.try_io(Interest::READABLE, || {
            let n = pipes::splice(src.as_fd(), pipe.write.as_fd(), SPLICE_LEN)?;
            got = Some(n);
            Ok(())
        });
        match (got, res) {
            (Some(0), _) => {
                pipes::give(pipe);
                self.source_ended(shared);
                None
            }
            (Some(n), _) => {
                self.bytes.increment(n as u64);
                shared.active.store(true, Ordering::Relaxed);
                if let Some(track) = shared.track {
                    match self.dir {
                        Direction::Upstream => track.client_bytes(shared.link),
                        Direction::Downstream => track.upstream_bytes(shared.link, None),
                    }
                }
                // A pipe left holding bytes (a stop or a failed write) is dropped, never
                // pooled: its bytes belong to this connection only.
                if let Err(err) = splice_out(&pipe, dst, n, &shared.stop).await {
                    return Some(self.write_failed(err, shared));
                }
                pipes::give(pipe);
                SPLICED.fetch_add(n as u64, Ordering::Relaxed);
                self.wrote(shared, true);
                if n < SPLICE_BELOW {
                    self.splicing = false;
                }
                None
            }
            (None, Err(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                pipes::give(pipe);
                None
            }
            (None, Err(err)) => {
                pipes::give(pipe);
                Some(self.io_failed(err, self.src_side(), shared))
            }
            (None, Ok(())) => unreachable!("the closure records every successful splice"),
        }
    }

    /// Acts on a pending end whose time has come: RST, close, or the FIN of a half-close.
    fn due_end<D: Socket>(&self, now: Instant, dst: &D, shared: &Shared<'_>) -> Option<HalfEnd> {
        let pending = self.pending?;
        let due = pending.at() <= now;
        match pending {
            Pending::Reset(_) if due => {
                if let Some(track) = shared.track {
                    track.fault_ended();
                }
                shared.end(END_RESET);
                Some(HalfEnd::Ended)
            }
            Pending::Close(_) if due && self.queue.is_empty() => {
                if let Some(track) = shared.track {
                    track.fault_ended();
                }
                shared.end(END_CLOSE);
                Some(HalfEnd::Ended)
            }
            Pending::Fin(_) if due && self.queue.is_empty() => {
                // Half-close: only our write side towards the destination.
                let _ = SockRef::from(dst).shutdown(Shutdown::Write);
                Some(HalfEnd::Finished)
            }
            _ => None,
        }
    }

    /// The leg this half reads from.
    fn src_side(&self) -> Side {
        match self.dir {
            Direction::Upstream => Side::Client,
            Direction::Downstream => Side::Upstream,
        }
    }

    /// The leg this half writes to.
    fn dst_side(&self) -> Side {
        match self.dir {
            Direction::Upstream => Side::Upstream,
            Direction::Downstream => Side::Client,
        }
    }

    fn write_failed(&self, err: WriteError, shared: &Shared<'_>) -> HalfEnd {
        match err {
            WriteError::Stopped => HalfEnd::Stopped,
            WriteError::Io(err) => self.io_failed(err, self.dst_side(), shared),
        }
    }

    fn io_failed(&self, err: io::Error, side: Side, shared: &Shared<'_>) -> HalfEnd {
        debug!(%err, ?side, direction = %self.dir, "i/o failed");
        if let Some(track) = shared.track {
            match side {
                // The client vanished with a request unanswered: its upstream leg goes on, to
                // learn whether the client was right to give up.
                Side::Client if track.client_gone(shared.link) => return HalfEnd::Abandoned,
                Side::Upstream if self.dir == Direction::Downstream => {
                    track.upstream_ended(shared.link)
                }
                _ => {}
            }
        }
        // A peer's reset is passed on as a reset, so the other peer learns the truth.
        if err.kind() == io::ErrorKind::ConnectionReset {
            shared.end(END_RESET);
            HalfEnd::Ended
        } else {
            HalfEnd::Failed(side)
        }
    }

    /// The earliest instant something is due: a queued chunk, a pending end or a toxic timer.
    /// Queued chunks, and the close or FIN that waits for them, do not count while the
    /// destination is full: its readiness wakes the half, and a timer would only spin.
    fn next_wake(&self) -> Option<Instant> {
        let mut wake = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
            }
        };
        if !self.write_blocked {
            consider(self.queue.front().map(|c| c.at));
        }
        consider(self.spare_until);
        consider(self.pending.and_then(|p| match p {
            Pending::Reset(at) => Some(at),
            // Acted on only once the queue is empty: the queue's own wake covers it until then.
            Pending::Fin(at) | Pending::Close(at) => self.queue.is_empty().then_some(at),
        }));
        for slot in &self.chain {
            if let Some(toxic) = &slot.toxic {
                consider(toxic.deadline());
            }
        }
        wake
    }

    /// Writes the queued chunks whose time has come, in order, as far as the destination takes
    /// them without waiting. Returns whether it stopped because the destination is full.
    fn flush_due<D: Socket>(&mut self, now: Instant, dst: &D) -> io::Result<bool> {
        let limit = match self.pending {
            // Nothing at or after the reset instant is written.
            Some(Pending::Reset(at)) => now.min(at),
            _ => now,
        };
        while let Some(front) = self.queue.front_mut().filter(|c| c.at <= limit) {
            match dst.try_write(&front.data) {
                Ok(n) => {
                    self.queued_bytes -= n;
                    if n < front.data.len() {
                        front.data.advance(n);
                        continue;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(err) => return Err(err),
            }
            let chunk = self.queue.pop_front().expect("front checked above");
            if let Some(buf) = pool::reclaim(chunk.data) {
                if self.spare.len() < SPARE_BUFFERS {
                    self.spare.push(buf);
                } else {
                    pool::give(buf);
                }
            }
        }
        if self.queue.is_empty() && !self.spare.is_empty() && self.spare_until.is_none() {
            self.spare_until = Some(now + SPARE_HOLD);
        }
        Ok(false)
    }

    /// Runs a chunk through the active toxics and queues what comes out.
    fn on_chunk(&mut self, chunk: Chunk) {
        let (mut cur, mut next) = mem::take(&mut self.scratch);
        cur.push(chunk);
        let mut verdict = Verdict::Continue;
        for slot in &mut self.chain {
            let Some(toxic) = slot.toxic.as_mut() else {
                continue;
            };
            for c in cur.drain(..) {
                let v = toxic.on_chunk(c, &mut self.cx, &mut next);
                if matches!(verdict, Verdict::Continue) {
                    verdict = v;
                }
            }
            mem::swap(&mut cur, &mut next);
        }
        for c in cur.drain(..) {
            self.enqueue(c);
        }
        self.scratch = (cur, next);
        self.act(verdict);
    }

    /// Queues a chunk, never before the one ahead of it: the stream stays in order even when
    /// jitter draws a shorter delay for a later chunk.
    fn enqueue(&mut self, mut chunk: Chunk) {
        if let Some(last) = self.queue.back() {
            chunk.at = chunk.at.max(last.at);
        }
        self.queued_bytes += chunk.data.len();
        self.queue.push_back(chunk);
    }

    fn on_eof(&mut self, at: Instant) {
        self.eof_at = Some(at);
        self.decide_eof();
    }

    /// Passes the EOF through the chain and records what to do with it.
    fn decide_eof(&mut self) {
        let Some(mut at) = self.eof_at else { return };
        if self.pending.is_some() {
            return;
        }
        for slot in &mut self.chain {
            let Some(toxic) = slot.toxic.as_mut() else {
                continue;
            };
            match toxic.on_eof(&mut at, &mut self.cx) {
                Verdict::Continue => {}
                Verdict::Swallow => return,
                other => return self.act(other),
            }
        }
        let after_data = self.queue.back().map_or(at, |c| c.at.max(at));
        self.pending = Some(Pending::Fin(after_data));
    }

    fn act(&mut self, verdict: Verdict) {
        let new = match verdict {
            Verdict::Continue | Verdict::Swallow => return,
            // A close waits for the data queued before it.
            Verdict::Close(at) => Pending::Close(self.queue.back().map_or(at, |c| c.at.max(at))),
            Verdict::Reset(at) => Pending::Reset(at),
        };
        // A reset overrides a pending FIN or close; anything overrides a FIN.
        self.pending = match (self.pending, new) {
            (None | Some(Pending::Fin(_)), new) => Some(new),
            (Some(Pending::Close(_)), Pending::Reset(at)) => Some(Pending::Reset(at)),
            (old, _) => old,
        };
    }

    fn fire_deadlines(&mut self, now: Instant) {
        if self.spare_until.is_some_and(|t| t <= now) {
            self.spare_until = None;
            if self.queue.is_empty() {
                self.spare.drain(..).for_each(pool::give);
            }
        }
        let mut verdicts = Vec::new();
        for slot in &mut self.chain {
            if let Some(toxic) = slot.toxic.as_mut() {
                if toxic.deadline().is_some_and(|d| d <= now) {
                    verdicts.push(toxic.on_deadline(now, &mut self.cx));
                }
            }
        }
        for v in verdicts {
            self.act(v);
        }
    }

    /// Brings the chain in line with `toxics`, keeping the instances of unchanged toxics.
    ///
    /// Updated and removed toxics release what is queued at once (Toxiproxy flushes on
    /// interrupt too), new ones act from the next chunk. Removing a toxic that dropped data
    /// closes the connection.
    fn rebuild(&mut self, toxics: &[Arc<ToxicSpec>], proxy: &str, now: Instant) {
        let mut old = mem::take(&mut self.chain);
        let mut flush = false;
        for spec in toxics
            .iter()
            .filter(|s| s.direction == self.dir && s.acts_on_bytes(self.protocol))
        {
            let slot = match old.iter().position(|s| s.spec.name == spec.name) {
                Some(pos) => {
                    let mut slot = old.swap_remove(pos);
                    if !Arc::ptr_eq(&slot.spec, spec) {
                        flush = true;
                        let keep = slot.toxic.take().filter(|_| spec.applies(&mut self.cx));
                        slot.toxic = match keep {
                            Some(mut t) => {
                                if !t.reconfigure(&spec.kind) {
                                    t = spec.kind.instantiate(now, self.dir, &mut self.cx);
                                }
                                Some(t)
                            }
                            None => activate(&mut self.cx, spec, proxy, now),
                        };
                        slot.spec = spec.clone();
                    }
                    slot
                }
                None => Slot {
                    spec: spec.clone(),
                    toxic: activate(&mut self.cx, spec, proxy, now),
                },
            };
            self.chain.push(slot);
        }
        for removed in old {
            flush = true;
            if removed.toxic.is_some_and(|t| t.closes_on_removal()) {
                self.act(Verdict::Close(now));
            }
        }
        if flush {
            for c in &mut self.queue {
                c.at = c.at.min(now);
            }
            if let Some(Pending::Fin(at)) = self.pending {
                self.pending = Some(Pending::Fin(at.min(now)));
            }
        }
        // An EOF the old chain swallowed gets another chance with the new one.
        self.decide_eof();
        if self.chain.iter().all(|s| s.toxic.is_none()) {
            // Nothing active: an empty chain lets the fast path run.
            self.chain.clear();
        }
        debug!(direction = %self.dir, toxics = self.chain.len(), "chain rebuilt");
    }
}

fn activate(
    cx: &mut ToxicCx,
    spec: &ToxicSpec,
    proxy: &str,
    now: Instant,
) -> Option<Box<dyn Toxic>> {
    if !spec.applies(cx) {
        return None;
    }
    metrics::toxic_applied(proxy, &spec.name);
    Some(spec.kind.instantiate(now, spec.direction, cx))
}

enum WriteError {
    Stopped,
    Io(io::Error),
}

/// One read into `buf`'s free room. A short read means the socket is drained (Linux's TCP
/// recv stops early only on an empty queue), so tokio's read readiness is cleared in the same
/// step, which saves the read that would return EAGAIN: a syscall per request on
/// request/response traffic. It must be the same step: tokio clears readiness only if no new
/// event came in since it was sampled before the read, whereas clearing it afterwards could
/// swallow the edge of data that arrived in between; with the peer then blocked on a full
/// window, no further edge would ever come, and the connection would hang.
fn read_chunk<S: Socket>(src: &S, buf: &mut BytesMut) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut got = None;
    let res = src.try_io(Interest::READABLE, || {
        let n = src.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && n < room {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(())
        }
    });
    match (got, res) {
        (Some(n), _) => Ok(n),
        (None, Err(err)) => Err(err),
        (None, Ok(())) => unreachable!("the closure records every successful read"),
    }
}

/// Writes all of `data`, or fails; gives up at once when `stop` fires.
async fn write_all<D: Socket>(
    dst: &D,
    data: &[u8],
    stop: &CancellationToken,
) -> Result<(), WriteError> {
    let total = data.len();
    push(dst, total, stop, |left| {
        dst.try_write(&data[total - left..])
    })
    .await
}

/// Moves `left` bytes from the pipe to `dst`, or fails; gives up at once when `stop` fires.
async fn splice_out<D: Socket>(
    pipe: &pipes::Pipe,
    dst: &D,
    left: usize,
    stop: &CancellationToken,
) -> Result<(), WriteError> {
    push(dst, left, stop, |left| {
        dst.try_io(Interest::WRITABLE, || {
            pipes::splice(pipe.read.as_fd(), dst.as_fd(), left)
        })
    })
    .await
}

/// Runs `step(bytes left)` (a non-blocking write of some of them) until none are left, waiting
/// for `dst` to drain between refusals.
async fn push<D: Socket>(
    dst: &D,
    mut left: usize,
    stop: &CancellationToken,
    mut step: impl FnMut(usize) -> io::Result<usize>,
) -> Result<(), WriteError> {
    while left > 0 {
        match step(left) {
            Ok(0) => {
                return Err(WriteError::Io(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "a writable socket took nothing",
                )));
            }
            Ok(n) => left -= n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Err(WriteError::Stopped),
                    ready = dst.writable() => ready.map_err(WriteError::Io)?,
                }
            }
            Err(err) => return Err(WriteError::Io(err)),
        }
    }
    Ok(())
}

/// Pipes for splice(2), recycled per worker thread. A pipe is only ever pooled empty; an idle
/// connection holds none.
mod pipes {
    use std::cell::{Cell, RefCell};
    use std::io;
    use std::os::fd::{BorrowedFd, OwnedFd};

    use nix::fcntl::{OFlag, SpliceFFlags};

    /// Pipes kept per thread.
    const KEEP: usize = 16;

    /// Both ends of a pipe.
    pub(super) struct Pipe {
        pub(super) read: OwnedFd,
        pub(super) write: OwnedFd,
    }

    thread_local! {
        static FREE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
        /// Set once pipe2 has failed on this thread (descriptors exhausted): plain reads then.
        static FAILED: Cell<bool> = const { Cell::new(false) };
    }

    /// Whether splicing is worth trying on this thread.
    pub(super) fn available() -> bool {
        !FAILED.with(Cell::get)
    }

    pub(super) fn take() -> Option<Pipe> {
        if let Some(p) = FREE.with(|f| f.borrow_mut().pop()) {
            return Some(p);
        }
        match nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC) {
            Ok((read, write)) => {
                // A bigger pipe moves more per syscall; the default (64 KiB) is kept if the
                // system refuses.
                let _ = nix::fcntl::fcntl(
                    &write,
                    nix::fcntl::FcntlArg::F_SETPIPE_SZ(super::SPLICE_LEN as i32),
                );
                Some(Pipe { read, write })
            }
            Err(_) => {
                FAILED.with(|f| f.set(true));
                None
            }
        }
    }

    /// Gives back an empty pipe.
    pub(super) fn give(pipe: Pipe) {
        FREE.with(|f| {
            let mut free = f.borrow_mut();
            if free.len() < KEEP {
                free.push(pipe);
            }
        });
    }

    /// One non-blocking splice of up to `len` bytes.
    pub(super) fn splice(
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        len: usize,
    ) -> io::Result<usize> {
        nix::fcntl::splice(
            from,
            None,
            to,
            None,
            len,
            SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
        )
        .map_err(io::Error::from)
    }
}

/// Read buffers, recycled per worker thread. An idle connection holds no buffer; a busy one
/// takes one per burst from here rather than from the allocator (64 KiB allocations churn the
/// heap's top and cost a `brk` now and then).
mod pool {
    use std::cell::RefCell;

    use bytes::{Bytes, BytesMut};

    use super::BUF_SIZE;

    /// Buffers kept per thread: enough for the connections one worker serves in a burst.
    const KEEP: usize = 32;

    thread_local! {
        static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take() -> BytesMut {
        FREE.with(|f| f.borrow_mut().pop())
            .unwrap_or_else(|| BytesMut::with_capacity(BUF_SIZE))
    }

    /// The whole buffer behind a written chunk, when no other chunk still shares it. A delayed
    /// stream holds hundreds of chunks in its queue; freeing each and allocating anew made the
    /// allocator hand pages back and fault them in again (a third of all pages at 1 GB/s, and
    /// a third of the throughput).
    pub(super) fn reclaim(data: Bytes) -> Option<BytesMut> {
        let mut buf = data.try_into_mut().ok()?;
        buf.clear();
        buf.try_reclaim(BUF_SIZE).then_some(buf)
    }

    pub(super) fn give(mut buf: BytesMut) {
        // Only whole, unshared buffers: a split one still backs bytes in flight.
        if buf.capacity() >= BUF_SIZE {
            buf.clear();
            FREE.with(|f| {
                let mut free = f.borrow_mut();
                if free.len() < KEEP {
                    free.push(buf);
                }
            });
        }
    }
}
