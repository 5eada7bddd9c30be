//! The accept loop. Deliberately trivial: accept, spawn, repeat. The upstream dial happens in
//! the connection task, so a slow or dead upstream never stalls accepting (Toxiproxy dials
//! inside its accept loop). With a data plane, a TCP proxy's loop runs on a data thread and
//! deals connections to the threads in turn, so each thread serves an equal share.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

use super::dataplane::DataPlane;
use super::{Link, Protocol, conn};

/// First pause after an accept error such as EMFILE; doubles up to [`MAX_BACKOFF`]. The
/// listener never gives up: it serves again as soon as descriptors free up.
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts until `accept_stop` fires. Connections run on `tracker` and stop when the `epoch`
/// token they were accepted under fires: with the proxy (which may be later than
/// `accept_stop`, a graceful drain), or alone when the store drains them
/// (`?drain=true` on an upstream change).
pub async fn serve(
    listener: TcpListener,
    link: Arc<Link>,
    accept_stop: CancellationToken,
    epoch: Arc<std::sync::Mutex<CancellationToken>>,
    tracker: TaskTracker,
) {
    match link.settings().dataplane.clone() {
        Some(plane) if link.protocol() == Protocol::Tcp => {
            serve_on_threads(listener, link, accept_stop, epoch, tracker, plane).await;
        }
        _ => accept_loop(listener, link, accept_stop, epoch, tracker, None).await,
    }
}

/// Where an accept loop runs and where it sends what it accepts.
struct Placement {
    plane: Arc<DataPlane>,
    /// The data thread the loop runs on.
    home: usize,
}

impl Placement {
    /// The thread whose turn the next connection is, unless it is this one: connections take
    /// turns over the threads, so each serves an equal share.
    fn away(&self) -> Option<&tokio::runtime::Handle> {
        let to = self.plane.next();
        (to != self.home).then(|| &self.plane.runtimes()[to])
    }
}

/// Moves the accept loop to a data thread (the listeners take turns, so several proxies spread
/// over the threads) and waits for it: returns once the socket is closed.
async fn serve_on_threads(
    listener: TcpListener,
    link: Arc<Link>,
    accept_stop: CancellationToken,
    epoch: Arc<std::sync::Mutex<CancellationToken>>,
    tracker: TaskTracker,
    plane: Arc<DataPlane>,
) {
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(err) => {
            warn!(proxy = %link.name(), %err, "cannot hand the listener to a data thread; it is closed");
            return;
        }
    };
    let home = plane.next();
    let thread = plane.runtimes()[home].clone();
    let accepting = thread.spawn(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => {
                let placement = Placement { plane, home };
                accept_loop(listener, link, accept_stop, epoch, tracker, Some(placement)).await;
            }
            Err(err) => {
                warn!(proxy = %link.name(), %err, "a data thread cannot take the listener; it is closed");
            }
        }
    });
    // An error is a data thread that stopped, which closed the listener with it.
    let _ = accepting.await;
}

async fn accept_loop(
    listener: TcpListener,
    link: Arc<Link>,
    accept_stop: CancellationToken,
    epoch: Arc<std::sync::Mutex<CancellationToken>>,
    tracker: TaskTracker,
    placement: Option<Placement>,
) {
    let mut backoff = MIN_BACKOFF;
    // HTTP proxies share one pooled upstream client per listening spell.
    let http_client =
        (link.protocol() == Protocol::Http).then(|| crate::http::client(link.settings()));
    let mut draining = false;
    loop {
        let accepted = if draining {
            match accept_now(&listener) {
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                accepted => accepted,
            }
        } else {
            tokio::select! {
                biased;
                _ = accept_stop.cancelled() => {
                    // A client's connect() returns once the kernel completes the handshake,
                    // before this loop accepts; closing the listener would reset those still
                    // in its backlog. In a graceful drain (connections go on) they are served
                    // like the open ones; a stopped proxy (connections stopped too) takes none.
                    let conns = epoch.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if conns.is_cancelled() {
                        break;
                    }
                    draining = true;
                    continue;
                }
                accepted = listener.accept() => accepted,
            }
        };
        match accepted {
            Ok((client, peer)) => {
                backoff = MIN_BACKOFF;
                let slot = match crate::limits::admit(&link) {
                    Ok(slot) => slot,
                    Err(why) => {
                        crate::limits::refused(&link, why);
                        // A reset, so the client fails fast instead of waiting on a silent
                        // socket.
                        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                        continue;
                    }
                };
                let conn_stop = epoch.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let id = link.next_connection();
                // A debug span: at the default info level it costs nothing per connection.
                let span = debug_span!("conn", proxy = %link.name(), id, client.addr = %peer);
                match &http_client {
                    Some(upstream) => tracker.spawn(
                        crate::http::handle(
                            client,
                            peer,
                            link.clone(),
                            conn_stop,
                            id,
                            upstream.clone(),
                            slot,
                        )
                        .instrument(span),
                    ),
                    None => match placement.as_ref().and_then(Placement::away) {
                        Some(thread) => {
                            // Leave this thread's epoll now; join the other's on arrival.
                            let client = client.into_std();
                            let task =
                                conn_on_arrival(client, peer, link.clone(), conn_stop, id, slot);
                            thread.spawn(tracker.track_future(task.instrument(span)))
                        }
                        None => tracker.spawn(
                            conn::handle(client, peer, link.clone(), conn_stop, id, slot)
                                .instrument(span),
                        ),
                    },
                };
            }
            // A connection that died between SYN and accept: nothing to do.
            Err(err) if super::is_routine(&err) => debug!(%err, "accept"),
            Err(_) if draining => break,
            Err(err) => {
                warn!(proxy = %link.name(), %err, ?backoff, "accept failed; backing off");
                tokio::select! {
                    _ = accept_stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    debug!(proxy = %link.name(), "listener closed");
}

/// Accepts what the backlog holds now, without waiting: accept(2) itself, since tokio's
/// `accept` answers "pending" until the runtime has seen the listener's readiness event, which
/// it may not have yet.
fn accept_now(
    listener: &TcpListener,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    let (socket, peer) = socket2::SockRef::from(listener).accept()?;
    let peer = peer
        .as_socket()
        .ok_or_else(|| std::io::Error::other("accepted a connection that is not IP"))?;
    socket.set_nonblocking(true)?;
    Ok((tokio::net::TcpStream::from_std(socket.into())?, peer))
}

/// A connection handed over from another data thread (`client` is what leaving that thread's
/// epoll gave): registered with this thread's runtime, then served.
async fn conn_on_arrival(
    client: std::io::Result<std::net::TcpStream>,
    peer: std::net::SocketAddr,
    link: Arc<Link>,
    stop: CancellationToken,
    id: u64,
    slot: crate::limits::Slot,
) {
    match client.and_then(tokio::net::TcpStream::from_std) {
        Ok(client) => conn::handle(client, peer, link, stop, id, slot).await,
        Err(err) => {
            warn!(proxy = %link.name(), %peer, %err, "cannot move a connection to another data thread; closing it");
        }
    }
}
