//! UDP proxies (`protocol = "udp"`): a session per client address, each with its own socket to
//! the upstream, ended after [`IDLE_TIMEOUT`] without a datagram either way.
//!
//! ```text
//! client ──▶ proxy socket ──recv_from──▶ session(peer) ──▶ Pipe(upstream) ──▶ upstream socket
//! client ◀──send_to── proxy socket ◀── Pipe(downstream) ◀──recv── upstream socket
//! ```
//!
//! A [`Pipe`] runs one direction's toxics on each datagram (one chunk, never split or merged)
//! and sends it when it is due. Datagrams may overtake each other when their delays say so, as
//! on a real network. Loss really drops them; a partition drops the directions it holds.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Link;
use crate::metrics::{ByteCount, ConnectionGuard};
use crate::partition;
use crate::toxic::datagram::Pace;
use crate::toxic::{Chunk, Direction, Toxic, ToxicCx, ToxicKind};

/// A session with no datagram either way for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Datagrams waiting to be sent per direction and session; beyond it they are dropped, as a
/// full router queue drops them.
const QUEUE_LIMIT: usize = 4096;
/// The largest datagram.
const MAX_DATAGRAM: usize = 65_536;

struct Session {
    up: mpsc::Sender<Bytes>,
    stop: CancellationToken,
    last_seen: Arc<Mutex<Instant>>,
}

/// Receives client datagrams until `accept_stop` fires; sessions stop with it or with the
/// epoch token (the proxy's connections).
pub async fn serve(
    socket: UdpSocket,
    link: Arc<Link>,
    accept_stop: CancellationToken,
    epoch: Arc<Mutex<CancellationToken>>,
) {
    let socket = Arc::new(socket);
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = accept_stop.cancelled() => break,
            _ = sweep.tick() => {
                let now = Instant::now();
                sessions.retain(|peer, s| {
                    let seen = *s.last_seen.lock().unwrap_or_else(|e| e.into_inner());
                    let keep = now.duration_since(seen) < IDLE_TIMEOUT && !s.stop.is_cancelled();
                    if !keep {
                        debug!(%peer, "udp session closed");
                        s.stop.cancel();
                    }
                    keep
                });
            }
            received = socket.recv_from(&mut buf) => {
                let (n, peer) = match received {
                    Ok(r) => r,
                    Err(err) => {
                        debug!(%err, "udp receive");
                        continue;
                    }
                };
                if sessions.get(&peer).is_none_or(|s| s.stop.is_cancelled()) {
                    let stop = epoch.lock().unwrap_or_else(|e| e.into_inner()).child_token();
                    match open(&link, &socket, peer, stop).await {
                        Some(s) => {
                            sessions.insert(peer, s);
                        }
                        None => continue,
                    }
                }
                if let Some(s) = sessions.get(&peer) {
                    *s.last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    // A full queue drops the datagram.
                    let _ = s.up.try_send(Bytes::copy_from_slice(&buf[..n]));
                }
            }
        }
    }
    for s in sessions.values() {
        s.stop.cancel();
    }
}

/// Opens a session: a socket connected to the upstream, and a task per direction.
async fn open(
    link: &Arc<Link>,
    socket: &Arc<UdpSocket>,
    peer: SocketAddr,
    stop: CancellationToken,
) -> Option<Session> {
    let upstream_addr = link.upstream();
    let target = match tokio::net::lookup_host(upstream_addr.as_str()).await {
        Ok(mut addrs) => addrs.next(),
        Err(_) => None,
    };
    let Some(target) = target else {
        link.metrics().upstream_connect_error();
        debug!(upstream = %upstream_addr, "udp upstream does not resolve");
        return None;
    };
    let local: SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let upstream = match UdpSocket::bind(local).await {
        Ok(u) if u.connect(target).await.is_ok() => Arc::new(u),
        _ => {
            link.metrics().upstream_connect_error();
            return None;
        }
    };
    let guard = Arc::new(ConnectionGuard::open(link.metrics()));
    let id = link.next_connection();
    let last_seen = Arc::new(Mutex::new(Instant::now()));
    let (up_tx, mut up_rx) = mpsc::channel::<Bytes>(QUEUE_LIMIT);
    debug!(%peer, id, "udp session opened");

    // Client to upstream.
    {
        let (link, upstream, stop, guard) =
            (link.clone(), upstream.clone(), stop.clone(), guard.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let mut pipe = Pipe::new(&link, Direction::Upstream, id);
            loop {
                let due = pipe.next_due();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = pipe.changes.changed() => pipe.rebuild(&link),
                    got = up_rx.recv() => match got {
                        Some(d) => pipe.push(&link, d),
                        None => return,
                    },
                    _ = crate::timer::sleep_until(due.unwrap_or_else(far)), if due.is_some() => {
                        for d in pipe.take_due(Instant::now()) {
                            let _ = upstream.send(&d).await;
                        }
                    }
                }
            }
        });
    }
    // Upstream to client.
    {
        let (link, socket, stop, last_seen) = (
            link.clone(),
            socket.clone(),
            stop.clone(),
            last_seen.clone(),
        );
        tokio::spawn(async move {
            let _guard = guard;
            let mut pipe = Pipe::new(&link, Direction::Downstream, id);
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let due = pipe.next_due();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = pipe.changes.changed() => pipe.rebuild(&link),
                    got = upstream.recv(&mut buf) => match got {
                        Ok(n) => {
                            *last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                            pipe.push(&link, Bytes::copy_from_slice(&buf[..n]));
                        }
                        // An ICMP "port unreachable" from the upstream: it has no listener now;
                        // the session goes on, as UDP does.
                        Err(err) => debug!(%err, "udp upstream receive"),
                    },
                    _ = crate::timer::sleep_until(due.unwrap_or_else(far)), if due.is_some() => {
                        for d in pipe.take_due(Instant::now()) {
                            let _ = socket.send_to(&d, peer).await;
                        }
                    }
                }
            }
        });
    }
    Some(Session {
        up: up_tx,
        stop,
        last_seen,
    })
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// A datagram waiting for its instant; ties keep arrival order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Due(Instant, u64, Bytes);

/// One direction of a session: its toxics, and the datagrams waiting to go.
struct Pipe {
    dir: Direction,
    chain: Vec<Box<dyn Toxic>>,
    cx: ToxicCx,
    heap: BinaryHeap<Reverse<Due>>,
    seq: u64,
    bytes: ByteCount,
    changes: watch::Receiver<u64>,
}

impl Pipe {
    fn new(link: &Link, dir: Direction, id: u64) -> Pipe {
        let mut changes = link.subscribe();
        changes.mark_unchanged();
        let mut pipe = Pipe {
            dir,
            chain: Vec::new(),
            cx: ToxicCx {
                rng: link.rng(id, dir),
            },
            heap: BinaryHeap::new(),
            seq: 0,
            bytes: link.metrics().bytes(dir),
            changes,
        };
        pipe.rebuild(link);
        pipe
    }

    /// The chain afresh from the link's toxics (their per-session state starts over).
    fn rebuild(&mut self, link: &Link) {
        let now = Instant::now();
        let toxics = link.toxics();
        self.chain.clear();
        for t in toxics.iter().filter(|t| t.direction == self.dir) {
            if !t.applies(&mut self.cx) {
                continue;
            }
            self.chain.push(match &t.kind {
                // Pacing must not split a datagram.
                ToxicKind::Bandwidth(a) => Box::new(Pace::new(a.rate)),
                kind => kind.instantiate(now, self.dir, &mut self.cx),
            });
        }
    }

    fn push(&mut self, link: &Link, data: Bytes) {
        self.bytes.increment(data.len() as u64);
        // A partition holding this direction drops datagrams, as a cut link does.
        if link.cut() & partition::hold_bit(self.dir) != 0 {
            return;
        }
        let chunk = Chunk {
            data,
            at: Instant::now(),
        };
        self.run(0, vec![chunk]);
    }

    /// Runs chunks through the chain from toxic `from` on, and queues what comes out.
    fn run(&mut self, from: usize, mut cur: Vec<Chunk>) {
        for toxic in self.chain.iter_mut().skip(from) {
            let mut next = Vec::with_capacity(cur.len());
            for c in cur {
                toxic.on_chunk(c, &mut self.cx, &mut next);
            }
            cur = next;
        }
        for c in cur {
            if self.heap.len() >= QUEUE_LIMIT {
                return;
            }
            self.seq += 1;
            self.heap.push(Reverse(Due(c.at, self.seq, c.data)));
        }
    }

    /// The next instant something is due: a queued datagram, or a toxic's held one.
    fn next_due(&self) -> Option<Instant> {
        let held = self.chain.iter().filter_map(|t| t.deadline()).min();
        let queued = self.heap.peek().map(|Reverse(d)| d.0);
        match (held, queued) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn take_due(&mut self, now: Instant) -> Vec<Bytes> {
        for i in 0..self.chain.len() {
            if self.chain[i].deadline().is_some_and(|d| d <= now) {
                let mut released = Vec::new();
                self.chain[i].release(now, &mut released);
                self.run(i + 1, released);
            }
        }
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|Reverse(d)| d.0 <= now) {
            if let Some(Reverse(Due(_, _, data))) = self.heap.pop() {
                out.push(data);
            }
        }
        out
    }
}
