//! One client connection: dial the upstream, then run the duplex.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{ConnError, Link, duplex};
use crate::metrics;

/// Runs one connection to completion. Never panics on network errors; everything is logged
/// and counted.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    link: Arc<Link>,
    stop: CancellationToken,
    id: u64,
) {
    let _active = metrics::ConnectionGuard::open(link.metrics());
    // Nagle would add up to 40 ms per small write (delayed-ACK interplay); a fault proxy must
    // not add latency nobody asked for.
    let _ = client.set_nodelay(true);
    let upstream = tokio::select! {
        _ = stop.cancelled() => return,
        dialled = dial(&link) => dialled,
    };
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(err) => {
            link.metrics().upstream_connect_error();
            warn!(proxy = %link.name(), %peer, %err, "closing client: upstream unavailable");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    debug!(upstream.addr = ?upstream.peer_addr().ok(), "connected");
    let outcome = duplex::run(&client, &upstream, &link, id, &stop).await;
    debug!(?outcome, "closed");
}

async fn dial(link: &Link) -> Result<TcpStream, ConnError> {
    let upstream = link.upstream();
    let timeout = link.settings().connect_timeout;
    match tokio::time::timeout(timeout, TcpStream::connect(upstream.as_str())).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(ConnError::Connect {
            upstream: upstream.to_string(),
            source,
        }),
        Err(_) => Err(ConnError::ConnectTimeout {
            upstream: upstream.to_string(),
            timeout,
        }),
    }
}
