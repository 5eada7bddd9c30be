//! One client connection: dial the upstream, then run the duplex.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{ConnError, Link, duplex};
use crate::measure::{self, TcpTrack};
use crate::metrics;
use crate::toxic::loss::SYN_GIVE_UP;
use crate::toxic::{Direction, ToxicCx};

/// Runs one connection to completion, holding its place under the connection limits until
/// it ends. Never panics on network errors; everything is logged and counted.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    link: Arc<Link>,
    stop: CancellationToken,
    id: u64,
    _slot: crate::limits::Slot,
) {
    let _active = metrics::ConnectionGuard::open(link.metrics());
    let started = tokio::time::Instant::now();
    // Nagle would add up to 40 ms per small write (delayed-ACK interplay); a fault proxy must
    // not add latency nobody asked for.
    let _ = client.set_nodelay(true);
    if let Some(delay) = connect_delay(&link, id) {
        // Connection setup cost: the dial waits, as a slow handshake would. Every SYN lost:
        // the kernel's connect() gives up after its last retry, and so does this one.
        let gave_up = delay == Duration::MAX;
        let wait = if gave_up { SYN_GIVE_UP } else { delay };
        let deadline = tokio::time::Instant::now() + wait;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = crate::timer::sleep_until(deadline) => {}
        }
        if gave_up {
            link.metrics().upstream_connect_error();
            warn!(proxy = %link.name(), %peer, "closing client: every SYN was lost (loss toxic)");
            measure::tcp_connection_ended(&link, peer.ip(), started, true);
            return;
        }
    }
    // A partition holds the handshake (a lost SYN or SYN-ACK) until it heals, or refuses it.
    let passable = async {
        link.flowing(Direction::Upstream).await?;
        link.flowing(Direction::Downstream).await
    };
    let passed = tokio::select! {
        _ = stop.cancelled() => return,
        passed = passable => passed,
    };
    if passed.is_err() {
        debug!(%peer, "partition (reset): refusing the connection");
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        return;
    }
    let upstream = tokio::select! {
        _ = stop.cancelled() => return,
        dialled = dial(&link) => dialled,
    };
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(err) => {
            link.metrics().upstream_connect_error();
            warn!(proxy = %link.name(), %peer, %err, "closing client: upstream unavailable");
            measure::tcp_connection_ended(&link, peer.ip(), started, true);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    debug!(upstream.addr = ?upstream.peer_addr().ok(), "connected");
    let track = TcpTrack::default();
    let outcome = duplex::run(&client, &upstream, &link, id, &stop, Some(&track)).await;
    // A connection that a fault ended, or that its client gave up on, failed: the same
    // client's next connection within the retry window is a retry.
    let client_reset = matches!(
        socket2::SockRef::from(&client).take_error(),
        Ok(Some(err)) if crate::proxy::is_routine(&err)
    );
    let failed = track.finish(&link, client_reset);
    measure::tcp_connection_ended(&link, peer.ip(), started, failed);
    debug!(?outcome, "closed");
}

/// The total `connect_delay` of the toxics that apply to this connection.
fn connect_delay(link: &Link, id: u64) -> Option<std::time::Duration> {
    let toxics = link.toxics();
    let mut specs = toxics.iter().filter(|t| t.acts_on_connect()).peekable();
    specs.peek()?;
    // A generator of its own: the halves' draws stay what they would be without this toxic.
    let mut cx = ToxicCx {
        rng: link.rng_for(id, CONNECT_STREAM),
    };
    specs
        .filter_map(|t| t.connect_delay(&mut cx))
        .reduce(|a, b| a.saturating_add(b))
}

/// The seeding stream for connect-time draws (0 and 1 are the directions).
const CONNECT_STREAM: u64 = 2;

/// Dials the upstream; with several, each candidate in the policy's order until one answers.
async fn dial(link: &Link) -> Result<TcpStream, ConnError> {
    let timeout = link.settings().connect_timeout;
    let mut last = None;
    for upstream in link.candidates() {
        let err = match tokio::time::timeout(timeout, TcpStream::connect(upstream.as_str())).await {
            Ok(Ok(stream)) => {
                link.dialled(&upstream, true);
                return Ok(stream);
            }
            Ok(Err(source)) => ConnError::Connect {
                upstream: upstream.to_string(),
                source,
            },
            Err(_) => ConnError::ConnectTimeout {
                upstream: upstream.to_string(),
                timeout,
            },
        };
        debug!(%err, "dial failed");
        link.dialled(&upstream, false);
        last = Some(err);
    }
    Err(last.unwrap_or_else(|| ConnError::Connect {
        upstream: link.upstream().to_string(),
        source: std::io::Error::other("no upstream"),
    }))
}
