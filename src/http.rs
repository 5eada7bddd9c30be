//! HTTP proxies (`protocol = "http"`): faults per request instead of per chunk.
//!
//! ```text
//! listener::serve ──accept──▶ http::handle: hyper server (HTTP/1.1 keep-alive, h2c)
//!                                  │ per request: faults::decide (match, toxicity, buckets)
//!                                  ├─ an answer (abort, maintenance, 429) or a reset, or
//!                                  └─ forward with the pooled hyper client ──▶ upstream
//!                                     (delays before the request, the headers, the body)
//! ```
//!
//! The upstream is spoken to in HTTP/1.1 over a connection pool shared by the proxy's client
//! connections; it is re-read per request, so an upstream change applies to the next request.

pub mod faults;
pub mod matcher;

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rand::Rng;
use rand::rngs::SmallRng;
use socket2::SockRef;
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use matcher::Matcher;

use crate::measure::{BodyHashCell, BodyHasher, Exchange, RequestId, UpstreamResult};
use crate::metrics;
use crate::proxy::{Link, Protocol, Settings, duplex};
use crate::toxic::Direction;
use faults::{Answer, ConnFaults, Decision, Shaping};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body fallacy sends, either way: boxed, since faults wrap it in layers.
pub type ResBody = UnsyncBoxBody<Bytes, BoxError>;

type PooledClient = Client<HttpConnector, ResBody>;

/// The pooled clients a proxy's connections share: HTTP/1.1, and h2c (prior knowledge) for
/// requests that came in over HTTP/2, so that an h2-only upstream (gRPC) keeps working.
#[derive(Clone)]
pub struct UpstreamClient {
    http1: PooledClient,
    h2c: PooledClient,
}

/// How long a client may take to send a request's headers unless configured
/// (`[server] header_read_timeout`): a slow-loris client is cut off.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The header that names the faults a response went through.
pub const FAULT_HEADER: &str = "x-fallacy-fault";

/// The seeding stream of a connection's request draws (0 and 1 are TCP directions, 2 the dial).
const REQUEST_STREAM: u64 = 3;

/// The clients for one proxy's upstream: TCP_NODELAY, the server's connect timeout, pooled.
pub fn client(settings: &Settings) -> UpstreamClient {
    let build = |h2: bool| {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .http2_only(h2)
            .timer(TokioTimer::new())
            .build(connector)
    };
    UpstreamClient {
        http1: build(false),
        h2c: build(true),
    }
}

/// What every request of a connection needs.
struct Conn {
    link: Arc<Link>,
    upstream: UpstreamClient,
    faults: Mutex<ConnFaults>,
    peer: SocketAddr,
    /// A second descriptor of the client socket, for `SO_LINGER 0` when a fault resets an
    /// HTTP/1 connection. Closed with the connection (both leave `handle` together).
    sock: Option<OwnedFd>,
    /// Held by upgraded tunnels too, so the connection counts as open while they run.
    active: Arc<metrics::ConnectionGuard>,
    /// Whether bodies count their bytes (not when the duplex of the byte path does).
    count_bodies: bool,
    stop: CancellationToken,
}

/// Serves one client connection until it closes or `stop` fires.
pub async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    link: Arc<Link>,
    stop: CancellationToken,
    id: u64,
    upstream: UpstreamClient,
    _slot: crate::limits::Slot,
) {
    let active = Arc::new(metrics::ConnectionGuard::open(link.metrics()));
    let _ = client.set_nodelay(true);
    let header_read_timeout = link.settings().header_read_timeout;
    let mut faults = ConnFaults::new(link.rng_for(id, REQUEST_STREAM));
    let downgrade = faults.downgrades(&link.toxics());
    if let Some(name) = &downgrade {
        metrics::toxic_applied(link.name(), name);
        debug!(toxic = %name, "downgrade: HTTP/1.1 only on this connection");
    }
    // Byte toxics (bandwidth, slicer, ...) on the proxy when the connection opens: its bytes
    // go through the TCP duplex, with its toxic chains, into one end of a local socket pair
    // whose other end hyper serves. Without them, hyper reads the client socket directly.
    let pair = if link
        .toxics()
        .iter()
        .any(|t| t.acts_on_bytes(Protocol::Http))
    {
        UnixStream::pair()
            .inspect_err(|err| warn!(%err, "no socket pair; byte toxics skip this connection"))
            .ok()
    } else {
        None
    };
    let conn = Arc::new(Conn {
        active,
        stop: stop.clone(),
        faults: Mutex::new(faults),
        sock: client.as_fd().try_clone_to_owned().ok(),
        link: link.clone(),
        upstream,
        peer,
        // On the byte path the duplex counts the bytes; bodies would count them twice.
        count_bodies: pair.is_none(),
    });
    let service = service_fn(move |req| conn.clone().serve(req));
    // Either way the connection closes when `stop` fires (disabled, deleted, or the drain is
    // over), as TCP proxies' do.
    macro_rules! serve_on {
        ($io:expr) => {
            if downgrade.is_some() {
                // HTTP/1 only: an h2c preface is answered as a bad HTTP/1 request, so the
                // client learns that HTTP/2 is not spoken here. (hyper-util's auto builder
                // ignores its own http1_only once upgrades are on.)
                let mut h1 = hyper::server::conn::http1::Builder::new();
                h1.timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .keep_alive(true);
                let serving = h1.serve_connection($io, service).with_upgrades();
                tokio::select! {
                    served = serving => served.err().map(|e| e.to_string()),
                    _ = stop.cancelled() => None,
                }
            } else {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .keep_alive(true);
                builder.http2().timer(TokioTimer::new());
                let serving = builder.serve_connection_with_upgrades($io, service);
                tokio::select! {
                    served = serving => served.err().map(|e| e.to_string()),
                    _ = stop.cancelled() => None,
                }
            }
        };
    }
    let served = match pair {
        None => serve_on!(TokioIo::new(client)),
        Some((near, far)) => {
            let tunnel_stop = stop.child_token();
            let tunnel = {
                let (link, tunnel_stop) = (link.clone(), tunnel_stop.clone());
                // Owns both ends it copies between: when it ends, `near` closes and hyper
                // sees the client gone.
                async move {
                    let outcome = duplex::run(&client, &near, &link, id, &tunnel_stop, None).await;
                    debug!(?outcome, "byte path closed");
                }
            };
            let serving = async {
                let served = serve_on!(TokioIo::new(far));
                if served.is_some() {
                    // hyper dropped the connection (a reset fault, a protocol error): end the
                    // client's side now rather than wait for the client to close.
                    tunnel_stop.cancel();
                }
                served
            };
            tokio::join!(tunnel, serving).1
        }
    };
    if let Some(err) = served {
        debug!(%err, "http connection ended with an error");
    }
}

impl Conn {
    /// An `Err` makes hyper drop the exchange without an answer: the reset faults use it.
    /// hyper drops this future when the client goes away first: the [`Exchange`] counts that.
    async fn serve(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ResBody>, FaultReset> {
        let start = Instant::now();
        let link = self.link.clone();
        link.metrics().request();
        let (parts, mut body) = req.into_parts();
        let version = parts.version;
        let toxics = link.toxics();
        let (d, up_rng, down_rng) = {
            let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
            let d: Decision = faults.decide(&toxics, &parts, self.peer.ip(), start);
            let up = d.request.flip.map(|_| faults.body_rng());
            let down = d.response.flip.map(|_| faults.body_rng());
            (d, up, down)
        };
        for name in &d.names {
            metrics::toxic_applied(link.name(), name);
        }
        if !d.names.is_empty() {
            debug!(faults = ?d.names, method = %parts.method, path = parts.uri.path(), "faults applied");
        }
        let fingerprint = RequestId {
            peer: self.peer.ip(),
            parts: &parts,
        }
        .fingerprint(&link.measure().idempotency_headers);
        let mut exchange = Exchange::new(
            link.clone(),
            start,
            d.before_request + d.before_headers,
            fingerprint,
        );
        // A partition holds the request (blackhole) or resets the connection.
        if link.flowing(Direction::Upstream).await.is_err() {
            exchange.reset();
            return Err(self.reset(version));
        }
        let mut response = match &d.answer {
            Some(answer) => {
                exchange.injected_answer();
                if exchange.hashes_body() && !body.is_end_stream() {
                    exchange.set_body_hash(hash_body_prefix(&mut body).await);
                }
                wait(d.before_request).await;
                match answer {
                    Answer::Reset => {
                        exchange.reset();
                        return Err(self.reset(version));
                    }
                    Answer::Respond {
                        status,
                        body,
                        retry_after,
                    } => {
                        let mut r = text(*status, body.clone());
                        if let Some(secs) = retry_after {
                            r.headers_mut()
                                .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
                        }
                        r
                    }
                }
            }
            None => {
                let hash = (!body.is_end_stream())
                    .then(|| exchange.body_hash_cell())
                    .flatten();
                let (conn, shaping, before) = (self.clone(), d.request.clone(), d.before_request);
                let leg = async move {
                    wait(before).await;
                    conn.forward(parts, body, &shaping, up_rng, hash).await
                };
                exchange.run_leg(Box::pin(leg)).await
            }
        };
        d.response.edit(response.headers_mut());
        if !d.response.body_untouched() || !d.before_body.is_zero() {
            let shaping = d.response.clone();
            response =
                response.map(|b| Shaped::new(b, shaping, down_rng, d.before_body).boxed_unsync());
        }
        // A proxy answers in its own HTTP version (RFC 9110 section 6.2), not the upstream's:
        // an HTTP/1.0 upstream must not turn a keep-alive client's connection into 1.0.
        *response.version_mut() = version;
        let bytes = self
            .count_bodies
            .then(|| link.metrics().bytes(Direction::Downstream));
        response = response.map(|b| {
            Counted {
                inner: b,
                bytes,
                hash: None,
            }
            .boxed_unsync()
        });
        wait(d.before_headers).await;
        if link.flowing(Direction::Downstream).await.is_err() {
            exchange.reset();
            return Err(self.reset(version));
        }
        if link.fault_header() && !d.names.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&d.names.join(", ")) {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(FAULT_HEADER), v);
            }
        }
        exchange.answered(response.status());
        Ok(response)
    }

    /// Sends the request to the current upstream and hands its response back.
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        shaping: &Shaping,
        rng: Option<SmallRng>,
        hash: Option<Arc<BodyHashCell>>,
    ) -> (Response<ResBody>, UpstreamResult) {
        // One upstream per request, by the proxy's policy (HTTP retries are the client's call).
        let upstream = self.link.pick();
        // fallacy's own answers (501, 502) stand for an upstream that failed at once.
        let failed = |r| {
            (
                r,
                UpstreamResult {
                    elapsed: Duration::ZERO,
                    ok: false,
                },
            )
        };
        let upgrade =
            parts.headers.contains_key(header::UPGRADE) && parts.version == Version::HTTP_11;
        if parts.method == Method::CONNECT
            || (parts.headers.contains_key(header::UPGRADE) && !upgrade)
        {
            return failed(text(
                StatusCode::NOT_IMPLEMENTED,
                "fallacy: this HTTP proxy passes HTTP/1.1 upgrades (WebSocket) through, but not \
                 CONNECT or HTTP/2 upgrades; use a TCP proxy for them\n"
                    .into(),
            ));
        }
        // The client's half of an upgrade, taken before the request is rebuilt for upstream.
        let client_upgrade = upgrade
            .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
            .flatten();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri: Uri = match format!("http://{upstream}{path}").parse() {
            Ok(uri) => uri,
            Err(err) => {
                return failed(text(
                    StatusCode::BAD_GATEWAY,
                    format!("fallacy: upstream {upstream:?} is not a valid authority: {err}\n"),
                ));
            }
        };
        if let Some(host) = self.link.rewrite_host() {
            // Checked to be a valid authority when set.
            if let Ok(v) = HeaderValue::from_str(&host) {
                parts.headers.insert(header::HOST, v);
            }
        } else if !parts.headers.contains_key(header::HOST) {
            // An HTTP/2 request names its host in :authority only; HTTP/1.1 needs Host.
            if let Some(authority) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        let kept = upgrade.then(|| {
            (
                parts.headers.get(header::UPGRADE).cloned(),
                parts.headers.get(header::CONNECTION).cloned(),
            )
        });
        let te_trailers = parts
            .headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        strip_hop_by_hop(&mut parts.headers);
        if let Some((up, conn)) = kept {
            // An upgrade names itself in hop-by-hop headers, which must reach the upstream.
            parts.headers.extend(up.map(|v| (header::UPGRADE, v)));
            parts.headers.extend(conn.map(|v| (header::CONNECTION, v)));
        }
        shaping.edit(&mut parts.headers);
        parts.uri = uri;
        // Each protocol goes on as it came: HTTP/2 requests over h2c (gRPC needs it, trailers
        // and `te: trailers` included), everything else over HTTP/1.1.
        let h2 = parts.version == Version::HTTP_2;
        if h2 && te_trailers {
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        parts.version = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let client = if h2 {
            &self.upstream.h2c
        } else {
            &self.upstream.http1
        };
        let mut body = Counted {
            inner: body,
            bytes: self
                .count_bodies
                .then(|| self.link.metrics().bytes(Direction::Upstream)),
            hash,
        }
        .map_err(box_error)
        .boxed_unsync();
        if !shaping.body_untouched() {
            body = Shaped::new(body, shaping.clone(), rng, Duration::ZERO).boxed_unsync();
        }
        let sent = Instant::now();
        let answered = client.request(Request::from_parts(parts, body)).await;
        let elapsed = sent.elapsed();
        match answered {
            Ok(mut response) => {
                self.link.dialled(&upstream, true);
                let status = response.status();
                let result = UpstreamResult {
                    elapsed,
                    ok: !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS,
                };
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = client_upgrade {
                        let upstream_side = hyper::upgrade::on(&mut response);
                        self.tunnel(client_side, upstream_side);
                        return (
                            response.map(|b| b.map_err(box_error).boxed_unsync()),
                            result,
                        );
                    }
                }
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                (
                    Response::from_parts(parts, body.map_err(box_error).boxed_unsync()),
                    result,
                )
            }
            Err(err) => {
                // hyper's message is the outermost of a chain ("client error (Connect)"); the
                // innermost cause ("Connection refused") is what a user can act on.
                let mut cause: &dyn std::error::Error = &err;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                let reason = format!("{err}: {cause}");
                if err.is_connect() {
                    self.link.dialled(&upstream, false);
                    self.link.metrics().upstream_connect_error();
                    warn!(proxy = %self.link.name(), %upstream, %reason, "answering 502: upstream unavailable");
                } else {
                    debug!(%upstream, %reason, "upstream request failed");
                }
                let answer = text(
                    StatusCode::BAD_GATEWAY,
                    format!("fallacy: upstream {upstream} failed: {reason}\n"),
                );
                (answer, UpstreamResult { elapsed, ok: false })
            }
        }
    }

    /// Once both sides have switched protocols (the client gets the upstream's 101 first),
    /// copies bytes both ways until either side closes or the proxy stops. The bytes count in
    /// `fallacy_bytes_total` as they pass; the connection stays in `connections_active`.
    fn tunnel(&self, client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
        let (link, stop, active) = (self.link.clone(), self.stop.clone(), self.active.clone());
        tokio::spawn(async move {
            let _active = active;
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(err) => return debug!(%err, "upgrade failed"),
            };
            let metrics = link.metrics();
            let mut client = CountingIo {
                io: TokioIo::new(client),
                read: metrics.bytes(Direction::Upstream),
            };
            let mut upstream = CountingIo {
                io: TokioIo::new(upstream),
                read: metrics.bytes(Direction::Downstream),
            };
            tokio::select! {
                copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                    debug!(?copied, "upgraded connection closed");
                }
                _ = stop.cancelled() => {}
            }
        });
    }

    /// Ends the exchange without an answer: the caller returns the error to hyper, which then
    /// closes an HTTP/1 connection (with `SO_LINGER 0` set here, so the close is a RST) or
    /// resets an HTTP/2 stream.
    fn reset(&self, version: Version) -> FaultReset {
        if let Some(sock) = self.sock.as_ref().filter(|_| version < Version::HTTP_2) {
            let _ = SockRef::from(sock).set_linger(Some(Duration::ZERO));
        }
        FaultReset
    }
}

/// What the service returns to make hyper drop an exchange (a concrete type: hyper-util's
/// connection builder cannot infer the lifetimes of a boxed error here).
#[derive(Debug, thiserror::Error)]
#[error("connection reset by an http_abort fault")]
pub struct FaultReset;

/// A body that counts its bytes into `fallacy_bytes_total` as they pass, as the TCP path does
/// per chunk.
pub struct Counted<B> {
    inner: B,
    /// `None` when something else counts these bytes.
    bytes: Option<metrics::ByteCount>,
    /// Request bodies whose hash goes into the retry fingerprint.
    hash: Option<Arc<BodyHashCell>>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                if let Some(bytes) = &self.bytes {
                    bytes.increment(data.len() as u64);
                }
                if let Some(hash) = &self.hash {
                    hash.feed(data);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upgraded stream that counts the bytes read from it.
struct CountingIo<T> {
    io: T,
    read: metrics::ByteCount,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        self.read.increment((buf.filled().len() - before) as u64);
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A body under `http_delay`'s body phase, `http_truncate`, `http_slow_body` and `tamper`'s bit
/// flips: its first frame waits, it is cut after a number of bytes (then failed, so the
/// exchange is aborted rather than ended cleanly), paced at a rate in pieces of about 10 ms,
/// with a fraction of its bytes flipped.
struct Shaped {
    inner: ResBody,
    plan: Shaping,
    rng: Option<SmallRng>,
    /// Bytes taken from `inner`, and bytes passed on.
    received: u64,
    sent: u64,
    /// Data taken but not yet passed on (pacing).
    pending: Option<Bytes>,
    /// `inner` will not be read again: the body was cut.
    cut: bool,
    /// The abort waits a moment after the last bytes, so that hyper flushes them first
    /// (it flushes while the body is pending; an error at once would discard its buffer).
    abort_armed: bool,
    start: Option<Instant>,
    wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Shaped {
    fn new(inner: ResBody, plan: Shaping, rng: Option<SmallRng>, first_wait: Duration) -> Shaped {
        let wait: Option<Pin<Box<dyn Future<Output = ()> + Send>>> =
            (!first_wait.is_zero()).then(|| Box::pin(wait(first_wait)) as _);
        Shaped {
            inner,
            plan,
            rng,
            received: 0,
            sent: 0,
            pending: None,
            cut: false,
            abort_armed: false,
            start: None,
            wait,
        }
    }

    /// Truncation and bit flips, applied to data as it comes from `inner`.
    fn arrive(&mut self, mut data: Bytes) -> Bytes {
        if let Some(limit) = self.plan.truncate {
            let left = limit.saturating_sub(self.received);
            if data.len() as u64 >= left {
                data.truncate(left as usize);
                self.cut = true;
            }
        }
        self.received += data.len() as u64;
        if let (Some(p), Some(rng)) = (self.plan.flip, self.rng.as_mut()) {
            let mut bytes = data.to_vec();
            for b in &mut bytes {
                if rng.random::<f64>() < p {
                    *b ^= 1 << rng.random_range(0..8);
                }
            }
            data = Bytes::from(bytes);
        }
        data
    }
}

impl Body for Shaped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(wait) = this.wait.as_mut() {
                ready!(wait.as_mut().poll(cx));
                this.wait = None;
            }
            let mut data = match this.pending.take() {
                Some(data) => data,
                None if this.cut && !this.abort_armed => {
                    this.abort_armed = true;
                    let soon = Instant::now() + Duration::from_millis(20);
                    this.wait = Some(Box::pin(crate::timer::sleep_until(soon)));
                    continue;
                }
                None if this.cut => {
                    return Poll::Ready(Some(Err(
                        "body truncated by an http_truncate fault".into()
                    )));
                }
                None => match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    None => return Poll::Ready(None),
                    Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => this.arrive(data),
                        // Trailers pass as they are.
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                },
            };
            if let Some(rate) = this.plan.rate {
                let now = Instant::now();
                let start = *this.start.get_or_insert(now);
                let due = start + Duration::from_secs_f64(this.sent as f64 / rate);
                if due > now {
                    this.pending = Some(data);
                    this.wait = Some(Box::pin(crate::timer::sleep_until(due)));
                    continue;
                }
                // About 10 ms of data at a time, so the pace is smooth.
                let piece = ((rate / 100.0) as usize).max(1);
                if data.len() > piece {
                    this.pending = Some(data.split_off(piece));
                }
            }
            this.sent += data.len() as u64;
            if data.is_empty() {
                continue;
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.wait.is_none() && self.pending.is_none() && !self.cut && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.plan.truncate.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

/// Reads up to [`BODY_HASH_LIMIT`](crate::measure::BODY_HASH_LIMIT) bytes of a body that a
/// fault answers without forwarding, for the retry fingerprint. A client that sends its body
/// slowly gets a second at most: the answer must not wait on it.
async fn hash_body_prefix(body: &mut Incoming) -> u64 {
    let mut hasher = BodyHasher::default();
    let read = async {
        while !hasher.full() {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        hasher.feed(data);
                    }
                }
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    hasher.value()
}

fn box_error(err: hyper::Error) -> BoxError {
    Box::new(err)
}

async fn wait(d: Duration) {
    if !d.is_zero() {
        crate::timer::sleep_until(Instant::now() + d).await;
    }
}

fn text(status: StatusCode, body: String) -> Response<ResBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Removes the headers that describe one hop (RFC 9110 section 7.6.1), including those the
/// `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}
