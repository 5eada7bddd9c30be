//! The accept loop. Deliberately trivial: accept, spawn, repeat. The upstream dial happens in
//! the connection task, so a slow or dead upstream never stalls accepting (Toxiproxy dials
//! inside its accept loop).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, warn};

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
    let mut backoff = MIN_BACKOFF;
    // HTTP proxies share one pooled upstream client per listening spell.
    let http_client =
        (link.protocol() == Protocol::Http).then(|| crate::http::client(link.settings()));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = accept_stop.cancelled() => break,
            accepted = listener.accept() => accepted,
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
                            conn_stop.clone(),
                            id,
                            upstream.clone(),
                            slot,
                        )
                        .instrument(span),
                    ),
                    None => tracker.spawn(
                        conn::handle(client, peer, link.clone(), conn_stop.clone(), id, slot)
                            .instrument(span),
                    ),
                };
            }
            // A connection that died between SYN and accept: nothing to do.
            Err(err) if super::is_routine(&err) => debug!(%err, "accept"),
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
