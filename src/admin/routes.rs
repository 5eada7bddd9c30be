//! Handlers. Each one parses, calls one [`Store`](crate::state::Store) method, and shapes the
//! answer; the rules live in the store.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::dto::{ProxyIn, ProxyOut, parse_body};
use super::{AdminState, Error};
use crate::measure::advice::NoAdvice;
use crate::state;
use crate::toxic::{Envelope, ToxicPatch, ToxicSpec};

type S = State<Arc<AdminState>>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// axum's `Path`, refused with the API's JSON error (`/proxies/%FF`: not UTF-8) rather than
/// axum's plain text.
pub(super) struct Path<T>(T);

impl<T: DeserializeOwned + Send, St: Send + Sync> FromRequestParts<St> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|e| Error::BadPath(e.body_text()))
    }
}

/// axum's `Query`, refused with the API's JSON error (`?limit=1&limit=2`) rather than axum's
/// plain text.
pub(super) struct Query<T>(T);

impl<T: DeserializeOwned + Send, St: Send + Sync> FromRequestParts<St> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|e| Error::BadQuery(e.body_text()))
    }
}

pub(super) async fn proxy_index(State(st): S) -> Json<BTreeMap<String, ProxyOut>> {
    let proxies = st.store.list().await;
    Json(
        proxies
            .into_iter()
            .map(|p| (p.name.clone(), ProxyOut::from(p)))
            .collect(),
    )
}

pub(super) async fn proxy_create(
    State(st): S,
    body: Bytes,
) -> Result<(StatusCode, Json<ProxyOut>)> {
    let input = ProxyIn::from_value(parse_body(&body)?)?;
    let view = st.store.create(input.into_new()?).await?;
    Ok((StatusCode::CREATED, Json(view.into())))
}

pub(super) async fn proxy_show(State(st): S, Path(proxy): Path<String>) -> Result<Json<ProxyOut>> {
    Ok(Json(st.store.get(&proxy).await?.into()))
}

/// `?drain=true` on a proxy update.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct UpdateQuery {
    drain: Option<String>,
}

pub(super) async fn proxy_update(
    State(st): S,
    Path(proxy): Path<String>,
    Query(query): Query<UpdateQuery>,
    body: Bytes,
) -> Result<Json<ProxyOut>> {
    st.store.get(&proxy).await?;
    let drain = flag("drain", query.drain.as_deref())?;
    let patch = ProxyIn::from_value(parse_body(&body)?)?.into_patch(drain)?;
    Ok(Json(st.store.update(&proxy, patch).await?.into()))
}

/// A boolean query parameter: absent or `false`, `true` or bare.
fn flag(name: &str, value: Option<&str>) -> Result<bool> {
    match value {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => Err(Error::BadQuery(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

pub(super) async fn proxy_delete(State(st): S, Path(proxy): Path<String>) -> Result<StatusCode> {
    st.store.delete(&proxy).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `/populate` answers with the proxies handled so far even when it fails, as Toxiproxy does.
pub(super) async fn populate(State(st): S, body: Bytes) -> Response {
    let list = match parse_body(&body).and_then(populate_list) {
        Ok(list) => list,
        Err(err) => return populate_answer(Vec::new(), Some(err)),
    };
    let (done, err) = st.store.populate(list).await;
    populate_answer(done, err.map(Error::from))
}

fn populate_list(value: Value) -> Result<Vec<state::NewProxy>> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|v| ProxyIn::from_value(v).and_then(ProxyIn::into_new))
            .collect(),
        // Go decodes null into an empty list.
        Value::Null => Ok(Vec::new()),
        _ => Err(Error::BadBody("expected a JSON array of proxies".into())),
    }
}

fn populate_answer(done: Vec<state::ProxyView>, err: Option<Error>) -> Response {
    // An empty list is `null`, as Toxiproxy's Go nil slice.
    let proxies = if done.is_empty() {
        Value::Null
    } else {
        json!(done.into_iter().map(ProxyOut::from).collect::<Vec<_>>())
    };
    match err {
        None => (StatusCode::CREATED, Json(json!({ "proxies": proxies }))).into_response(),
        Some(err) => {
            let status = err.status();
            (status, Json(err.body(Some(("proxies", proxies))))).into_response()
        }
    }
}

pub(super) async fn reset(State(st): S) -> Result<StatusCode> {
    st.store.reset().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn toxic_index(
    State(st): S,
    Path(proxy): Path<String>,
) -> Result<Json<Vec<Arc<ToxicSpec>>>> {
    Ok(Json(st.store.toxics(&proxy).await?))
}

pub(super) async fn toxic_create(
    State(st): S,
    Path(proxy): Path<String>,
    body: Bytes,
) -> Result<Json<Arc<ToxicSpec>>> {
    // Toxiproxy looks the proxy up before it reads the body.
    st.store.get(&proxy).await?;
    let envelope = Envelope::from_json(parse_body(&body)?).map_err(state::Error::from)?;
    Ok(Json(st.store.add_toxic(&proxy, envelope).await?))
}

pub(super) async fn toxic_show(
    State(st): S,
    Path((proxy, toxic)): Path<(String, String)>,
) -> Result<Json<Arc<ToxicSpec>>> {
    Ok(Json(st.store.toxic(&proxy, &toxic).await?))
}

pub(super) async fn toxic_update(
    State(st): S,
    Path((proxy, toxic)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<Arc<ToxicSpec>>> {
    st.store.toxic(&proxy, &toxic).await?;
    let patch = ToxicPatch::from_json(parse_body(&body)?).map_err(state::Error::from)?;
    Ok(Json(st.store.update_toxic(&proxy, &toxic, patch).await?))
}

pub(super) async fn toxic_delete(
    State(st): S,
    Path((proxy, toxic)): Path<(String, String)>,
) -> Result<StatusCode> {
    st.store.remove_toxic(&proxy, &toxic).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn scenario_index(State(st): S) -> Json<Value> {
    let scenarios = st.scenarios.lock().await;
    Json(Value::Array(
        scenarios
            .values()
            .map(|r| r.to_json(false, false))
            .collect(),
    ))
}

/// Starts a scenario from its JSON shape, or from TOML (a body that is not JSON is read as
/// TOML). Everything is checked against the store before the first change.
pub(super) async fn scenario_create(
    State(st): S,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    use crate::scenario::{Scenario, runner};
    let bad = |e: crate::toxic::AttrError| Error::BadBody(format!("{}: {}", e.path, e.message));
    let scenario = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => Scenario::from_json(&v).map_err(bad)?,
        Err(_) => {
            let text = std::str::from_utf8(&body)
                .map_err(|_| Error::BadBody("a scenario is JSON or TOML text".into()))?;
            Scenario::from_toml(text).map_err(bad)?
        }
    };
    runner::check(&st.store, &scenario).await.map_err(bad)?;
    let mut scenarios = st.scenarios.lock().await;
    if scenarios.get(&scenario.name).is_some_and(|r| !r.done()) {
        return Err(Error::Conflict(format!(
            "scenario {:?} is running; DELETE /scenarios/{} first",
            scenario.name, scenario.name
        )));
    }
    let name = scenario.name.clone();
    let running = runner::start(st.store.clone(), scenario).await;
    let out = running.to_json(false, false);
    scenarios.insert(name, running);
    Ok((StatusCode::CREATED, Json(out)))
}

/// `?series=true` on a scenario: its time series too.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct ScenarioQuery {
    series: Option<String>,
}

pub(super) async fn scenario_show(
    State(st): S,
    Path(name): Path<String>,
    Query(query): Query<ScenarioQuery>,
) -> Result<Json<Value>> {
    let series = flag("series", query.series.as_deref())?;
    let scenarios = st.scenarios.lock().await;
    scenarios
        .get(&name)
        .map(|r| Json(r.to_json(true, series)))
        .ok_or_else(|| Error::NotFound(format!("scenario {name:?} not found")))
}

/// Stops a scenario (reverting what its cycle changed) and answers its final figures.
pub(super) async fn scenario_delete(State(st): S, Path(name): Path<String>) -> Result<Json<Value>> {
    let running = st.scenarios.lock().await.remove(&name);
    match running {
        Some(r) => Ok(Json(r.stop().await)),
        None => Err(Error::NotFound(format!("scenario {name:?} not found"))),
    }
}

/// `?limit=N`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct AuditQuery {
    limit: Option<String>,
}

pub(super) async fn audit(
    State(st): S,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<super::AuditEntry>>> {
    let limit = match query.limit.as_deref() {
        None => 100,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=super::AUDIT_KEPT).contains(&n) => n,
            _ => {
                return Err(Error::BadQuery(format!(
                    "limit must be a whole number from 1 to {}, got {raw:?}",
                    super::AUDIT_KEPT
                )));
            }
        },
    };
    let audit = st.audit.lock().unwrap_or_else(|e| e.into_inner());
    let skip = audit.len().saturating_sub(limit);
    Ok(Json(audit.iter().skip(skip).cloned().collect()))
}

pub(super) async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

fn partition_out(v: state::PartitionView) -> Value {
    v.partition.to_json(&v.proxies)
}

pub(super) async fn partition_index(State(st): S) -> Json<Value> {
    let list = st.store.list_partitions().await;
    Json(Value::Array(list.into_iter().map(partition_out).collect()))
}

pub(super) async fn partition_create(
    State(st): S,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>)> {
    let value = parse_body(&body)?;
    let view = st.store.create_partition(&value).await?;
    Ok((StatusCode::CREATED, Json(partition_out(view))))
}

pub(super) async fn partition_show(State(st): S, Path(name): Path<String>) -> Result<Json<Value>> {
    st.store
        .list_partitions()
        .await
        .into_iter()
        .find(|v| v.partition.name == name)
        .map(|v| Json(partition_out(v)))
        .ok_or(Error::Store(state::Error::PartitionNotFound))
}

pub(super) async fn partition_delete(State(st): S, Path(name): Path<String>) -> Result<StatusCode> {
    st.store.delete_partition(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn proxy_stats(State(st): S, Path(proxy): Path<String>) -> Result<Json<Value>> {
    let link = st.store.link(&proxy).await?;
    Ok(Json(crate::measure::stats_json(&link)))
}

/// `?false_timeout_rate=R`, R strictly between 0 and 1.
#[derive(Debug, serde::Deserialize)]
pub(super) struct AdviceQuery {
    false_timeout_rate: Option<String>,
}

pub(super) async fn proxy_timeout_advice(
    State(st): S,
    Path(proxy): Path<String>,
    Query(query): Query<AdviceQuery>,
) -> Result<Json<Value>> {
    let link = st.store.link(&proxy).await?;
    let Some(raw) = query.false_timeout_rate else {
        return Err(Error::BadQuery(
            "false_timeout_rate is required, e.g. ?false_timeout_rate=0.001".into(),
        ));
    };
    let rate: f64 = raw
        .trim()
        .parse()
        .map_err(|_| Error::BadQuery(format!("false_timeout_rate: {raw:?} is not a number")))?;
    crate::measure::advice_json(&link, rate)
        .map(Json)
        .map_err(|e| match e {
            NoAdvice::BadRate(_) => Error::BadQuery(e.to_string()),
            NoAdvice::NotEnoughData { .. } => Error::Unprocessable(e.to_string()),
        })
}

pub(super) async fn metrics(State(st): S) -> Response {
    // Amplification and closed logical requests are brought up to date before the scrape.
    let links = st.store.links().await;
    for link in &links {
        crate::measure::ProxyStats::refresh(link);
    }
    let text = st.prometheus.as_ref().map_or_else(String::new, |handle| {
        handle.run_upkeep();
        let mut text = handle.render();
        crate::metrics::render_own(&mut text, &links);
        text
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn readyz(State(st): S) -> (StatusCode, Json<Value>) {
    if st.store.is_ready() {
        (StatusCode::OK, Json(json!({ "status": "ready" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "starting" })),
        )
    }
}

pub(super) async fn shutdown(State(st): S) -> StatusCode {
    st.shutdown.cancel();
    StatusCode::NO_CONTENT
}

/// `GET /log-level`: the log filter in force.
pub(super) async fn log_level_show() -> Result<Json<Value>> {
    crate::logging::level()
        .map(|level| Json(serde_json::json!({ "level": level })))
        .ok_or_else(|| Error::NotImplemented(crate::logging::LevelError::NotInstalled.to_string()))
}

/// `PUT /log-level`: `{"level": "debug"}` (or `RUST_LOG` directives), or the bare text.
pub(super) async fn log_level_set(body: Bytes) -> Result<Json<Value>> {
    use crate::logging::{LevelError, set_level};
    let wanted = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => match map.get("level") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(Error::BadBody(format!(
                    "level: must be a string such as \"debug\", got {other}"
                )));
            }
            None => {
                return Err(Error::BadBody(
                    "level: required, e.g. {\"level\": \"debug\"}".into(),
                ));
            }
        },
        Ok(Value::String(s)) => s,
        Ok(other) => {
            return Err(Error::BadBody(format!(
                "a log level is {{\"level\": \"debug\"}} or plain text, got {other}"
            )));
        }
        Err(_) => String::from_utf8(body.to_vec())
            .map_err(|_| Error::BadBody("the body is not UTF-8 text".into()))?,
    };
    match set_level(&wanted) {
        Ok(level) => {
            tracing::warn!(%level, "log level changed");
            Ok(Json(serde_json::json!({ "level": level })))
        }
        Err(e @ LevelError::Invalid(_)) => Err(Error::BadBody(e.to_string())),
        Err(e @ LevelError::NotInstalled) => Err(Error::NotImplemented(e.to_string())),
    }
}

/// `POST /reload`: reads the config file again and applies what changed since the last load.
pub(super) async fn reload(State(st): S) -> Result<Json<Value>> {
    let reloader = st.reloader.as_ref().ok_or_else(|| {
        Error::Conflict("fallacy was started without --config: there is no file to reload".into())
    })?;
    reloader
        .reload(&st.store)
        .await
        .map(Json)
        .map_err(|e| Error::BadBody(format!("the config file was not applied: {e}")))
}
