//! The admin API: Toxiproxy's routes, exactly, plus fallacy's extensions.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/proxies` | 200, object name -> proxy |
//! | POST | `/proxies` | 201 proxy; 400, 409, 500 |
//! | POST | `/populate` | 201 `{"proxies":[...]}`; 400, 500 |
//! | GET | `/proxies/{p}` | 200; 404 |
//! | POST, PATCH | `/proxies/{p}` | 200 (partial update) |
//! | DELETE | `/proxies/{p}` | 204 |
//! | GET | `/proxies/{p}/toxics` | 200 array, upstream first |
//! | POST | `/proxies/{p}/toxics` | 200 toxic; 400, 404, 409 |
//! | GET | `/proxies/{p}/toxics/{t}` | 200; 404 |
//! | POST, PATCH | `/proxies/{p}/toxics/{t}` | 200 (attributes merged) |
//! | DELETE | `/proxies/{p}/toxics/{t}` | 204 |
//! | POST | `/reset` | 204 (heals partitions too) |
//! | GET, POST | `/scenarios` | 200 array; 201 scenario (JSON or TOML body); 400, 409 |
//! | GET, DELETE | `/scenarios/{name}` | 200 with figures per phase (`?series=true`: and over time); 200 (stops, reverts, answers the final figures); 404 |
//! | GET | `/audit?limit=N` | 200, the last N changes (default 100, at most 1000) |
//! | GET, POST | `/partitions` | 200 array; 201 partition; 400, 409 |
//! | GET, DELETE | `/partitions/{name}` | 200; 204 (heals); 404 |
//! | GET | `/version` | 200 `{"version":..}` |
//! | GET | `/proxies/{p}/stats` | 200 live figures (requests, latency, abandonment, retries) |
//! | GET | `/proxies/{p}/timeout-advice?false_timeout_rate=R` | 200 advice; 400 bad R; 422 too few samples |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/healthz`, `/readyz` | 200; `/readyz` 503 until configured listeners are bound |
//! | POST | `/shutdown` | 204, then a graceful drain |
//! | GET | `/openapi.json` | 200, an OpenAPI 3.1 description of every route |
//! | POST | `/reload` | 200 what changed; 400 invalid file (nothing changes); 409 no config file |
//! | GET, PUT | `/log-level` | 200 `{"level":..}`; 400 bad filter; 501 when fallacy's logger is not installed |
//!
//! With a token (`FALLACY_ADMIN_TOKEN`) every route but `/healthz` and `/readyz` (and
//! `/metrics` with `--metrics-public`) answers 401 without `Authorization: Bearer <token>`.
//!
//! Errors are `{"error": "...", "status": N}`. Every answer carries `x-request-id`. A browser
//! (`User-Agent: Mozilla/...`) gets 403 on every Toxiproxy route, as with Toxiproxy, so a web
//! page cannot drive the API through the user's browser.

mod dto;
mod error;
pub mod openapi;
mod routes;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use error::Error;

use crate::state::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    store: Store,
    prometheus: Option<PrometheusHandle>,
    shutdown: CancellationToken,
    audit: Arc<Mutex<VecDeque<AuditEntry>>>,
    /// When set, every route but the health checks wants `Authorization: Bearer <token>`.
    token: Option<Arc<str>>,
    /// `GET /metrics` needs no token (for scrapers that cannot send one).
    metrics_public: bool,
    /// `POST /reload` reads the config file again (absent without one).
    reloader: Option<Arc<crate::reload::Reloader>>,
    /// Scenarios started through the API, by name.
    scenarios: Arc<
        tokio::sync::Mutex<std::collections::BTreeMap<String, crate::scenario::runner::Running>>,
    >,
}

/// One admin change, as `GET /audit` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditEntry {
    /// When it was answered (HTTP date, UTC).
    pub time: String,
    /// Milliseconds since the Unix epoch, for sorting and arithmetic.
    pub time_unix_ms: u64,
    /// The method.
    pub method: String,
    /// The route as called (`/proxies/db/toxics`).
    pub path: String,
    /// Who: the `X-Fallacy-Owner` header, else the body's `"owner"`.
    pub owner: Option<String>,
    /// The answer's status code.
    pub status: u16,
}

/// Changes kept for `GET /audit`.
pub const AUDIT_KEPT: usize = 1000;
/// The largest admin request body read (the API's bodies are a few hundred bytes).
pub const MAX_BODY: usize = 1024 * 1024;

impl AdminState {
    /// `prometheus` renders `/metrics` (an empty page without it); `shutdown` is cancelled by
    /// `POST /shutdown`.
    pub fn new(
        store: Store,
        prometheus: Option<PrometheusHandle>,
        shutdown: CancellationToken,
    ) -> AdminState {
        AdminState {
            store,
            prometheus,
            shutdown,
            token: None,
            metrics_public: false,
            reloader: None,
            audit: Arc::default(),
            scenarios: Arc::default(),
        }
    }

    /// Lets `POST /reload` read the config file again.
    pub fn with_reloader(self, reloader: Option<Arc<crate::reload::Reloader>>) -> AdminState {
        AdminState { reloader, ..self }
    }

    /// Requires `Authorization: Bearer <token>` on every route but `/healthz` and `/readyz`
    /// (and `GET /metrics` when `metrics_public`).
    pub fn with_token(self, token: Option<String>, metrics_public: bool) -> AdminState {
        AdminState {
            token: token.map(Arc::from),
            metrics_public,
            ..self
        }
    }
}

/// Whether the request carries the token. The comparison takes the same time wherever the
/// first difference lies, so response times do not reveal a prefix.
fn authorized(request: &Request, token: &str) -> bool {
    let Some(given) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    let differ = a
        .iter()
        .zip(b.iter())
        .fold(a.len() ^ b.len(), |acc, (x, y)| acc | usize::from(x ^ y));
    differ == 0
}

/// The whole admin API as a router, so tests can call it with `oneshot` or serve it on a port.
pub fn router(state: AdminState) -> Router {
    use routes::*;
    let state = Arc::new(state);
    Router::new()
        .route("/proxies", get(proxy_index).post(proxy_create))
        .route("/populate", post(populate))
        .route(
            "/proxies/{proxy}",
            get(proxy_show)
                .post(proxy_update)
                .patch(proxy_update)
                .delete(proxy_delete),
        )
        .route(
            "/proxies/{proxy}/toxics",
            get(toxic_index).post(toxic_create),
        )
        .route(
            "/proxies/{proxy}/toxics/{toxic}",
            get(toxic_show)
                .post(toxic_update)
                .patch(toxic_update)
                .delete(toxic_delete),
        )
        .route("/proxies/{proxy}/stats", get(proxy_stats))
        .route("/proxies/{proxy}/timeout-advice", get(proxy_timeout_advice))
        .route("/partitions", get(partition_index).post(partition_create))
        .route(
            "/partitions/{partition}",
            get(partition_show).delete(partition_delete),
        )
        .route("/audit", get(audit))
        .route("/scenarios", get(scenario_index).post(scenario_create))
        .route(
            "/scenarios/{scenario}",
            get(scenario_show).delete(scenario_delete),
        )
        .route("/reset", post(reset))
        .route("/version", get(version))
        .route("/log-level", get(log_level_show).put(log_level_set))
        .route("/reload", post(reload))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/shutdown", post(shutdown))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::document()) }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state.clone())
        .layer(middleware::from_fn_with_state(state, guard))
}

async fn not_found() -> Error {
    Error::RouteNotFound
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}

/// Request id, browser guard, a span and a metric for every request; changes go to the audit
/// log.
async fn guard(State(st): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let span = tracing::debug_span!(
        "admin",
        request.id = id,
        method = %request.method(),
        path = %request.uri().path()
    );
    let changes = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let (method, path) = (
        request.method().to_string(),
        request.uri().path().to_owned(),
    );
    let mut owner = request
        .headers()
        .get("x-fallacy-owner")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut response = async {
        let path = request.uri().path();
        let health = request.method() == Method::GET
            && (matches!(path, "/healthz" | "/readyz")
                || (st.metrics_public && path == "/metrics"));
        if let Some(token) = &st.token
            && !health
            && !authorized(&request, token)
        {
            return Error::Unauthorized(
                "this admin API wants a token: send Authorization: Bearer <FALLACY_ADMIN_TOKEN>",
            )
            .into_response();
        }
        if is_browser(&request) && !is_read_only_extension(&request) {
            return Error::BrowserRefused.into_response();
        }
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
            return Error::BadBody(format!("the body is over {MAX_BODY} bytes")).into_response();
        };
        if changes && owner.is_none() {
            owner = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("owner").and_then(|o| o.as_str()).map(str::to_owned));
        }
        next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
            .await
    }
    .instrument(span)
    .await;
    if changes {
        let now = std::time::SystemTime::now();
        let entry = AuditEntry {
            time: httpdate::fmt_http_date(now),
            time_unix_ms: now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            method,
            path,
            owner,
            status: response.status().as_u16(),
        };
        let mut audit = st.audit.lock().unwrap_or_else(|e| e.into_inner());
        if audit.len() == AUDIT_KEPT {
            audit.pop_front();
        }
        audit.push_back(entry);
    }
    let outcome = match response.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    crate::metrics::admin_request(outcome);
    if let Ok(value) = HeaderValue::from_str(&format!("{id:016x}")) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn is_browser(request: &Request) -> bool {
    request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|ua| ua.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Mozilla/"))
}

/// Our read-only extensions stay open to browsers: a person may look at `/metrics`.
fn is_read_only_extension(request: &Request) -> bool {
    let path = request.uri().path();
    request.method() == Method::GET
        && (matches!(path, "/metrics" | "/healthz" | "/readyz" | "/openapi.json")
            || (path.starts_with("/proxies/")
                && (path.ends_with("/stats") || path.ends_with("/timeout-advice"))))
}
