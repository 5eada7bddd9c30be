//! Wire shapes of the admin API, kept apart from the store's types so that the JSON can follow
//! Toxiproxy to the letter while the internals follow their own needs.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Error;
use crate::state::{NewProxy, ProxyPatch, ProxyView};
use crate::toxic::{ToxicSpec, decode_object};

use crate::measure::{MeasurePatch, MeasureSettings};
use crate::partition::Labels;
use crate::proxy::{DEFAULT_LISTEN, Protocol, UpstreamSet};
use crate::units::format_duration;

/// A proxy as the API shows it. Deliberately no `Logger` field (Toxiproxy leaks one).
#[derive(Debug, Serialize)]
pub struct ProxyOut {
    name: String,
    listen: String,
    upstream: String,
    enabled: bool,
    /// Shown for HTTP proxies only, so TCP proxies keep Toxiproxy's exact shape.
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault_header: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rewrite_host: Option<String>,
    /// The measurement settings, on HTTP proxies and wherever they differ from the defaults.
    #[serde(skip_serializing_if = "Option::is_none")]
    abandon_grace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_headers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    price_per_gb: Option<f64>,
    /// The proxy's own connection limit, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<u64>,
    /// The nodes the proxy joins, when set (partitions).
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<Value>,
    /// Several upstreams and how one is picked, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstreams: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'static str>,
    /// What partitions do to it now, when any cuts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    partitioned: Option<Value>,
    toxics: Vec<Arc<ToxicSpec>>,
}

impl From<ProxyView> for ProxyOut {
    fn from(v: ProxyView) -> ProxyOut {
        let http = v.protocol == Protocol::Http;
        let defaults = MeasureSettings::default();
        let m = &v.measure;
        let show = |differs: bool| http || differs;
        use crate::partition::{HOLD_DOWNSTREAM, HOLD_UPSTREAM, RESET};
        let partitioned = (v.cut != 0).then(|| {
            serde_json::json!({
                "upstream": v.cut & HOLD_UPSTREAM != 0,
                "downstream": v.cut & HOLD_DOWNSTREAM != 0,
                "mode": if v.cut & RESET != 0 { "reset" } else { "blackhole" },
            })
        });
        ProxyOut {
            policy: v.upstreams.as_ref().map(|s| s.policy.as_str()),
            upstreams: v.upstreams.map(|s| s.list),
            labels: v.labels.as_ref().map(|l| l.to_json()),
            partitioned,
            abandon_grace: show(m.abandon_grace != defaults.abandon_grace)
                .then(|| format_duration(m.abandon_grace)),
            retry_window: show(m.retry_window != defaults.retry_window)
                .then(|| format_duration(m.retry_window)),
            idempotency_headers: show(m.idempotency_headers != defaults.idempotency_headers).then(
                || {
                    m.idempotency_headers
                        .iter()
                        .map(|h| h.to_string())
                        .collect()
                },
            ),
            price_per_gb: show(m.price_per_gb != defaults.price_per_gb).then_some(m.price_per_gb),
            max_connections: (m.max_connections != 0).then_some(m.max_connections),
            name: v.name,
            listen: v.listen,
            upstream: v.upstream,
            enabled: v.enabled,
            protocol: (v.protocol != Protocol::Tcp).then_some(v.protocol.as_str()),
            fault_header: (v.protocol == Protocol::Http).then_some(v.fault_header),
            rewrite_host: v.rewrite_host,
            toxics: v.toxics,
        }
    }
}

/// The body of `POST /proxies`, of each `/populate` entry and of a proxy update. Unknown keys
/// (such as `toxics`) are ignored, as Toxiproxy does.
#[derive(Debug, Default, Deserialize)]
pub struct ProxyIn {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    listen: Option<String>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    fault_header: Option<bool>,
    #[serde(default)]
    rewrite_host: Option<String>,
    #[serde(default)]
    abandon_grace: Option<Value>,
    #[serde(default)]
    retry_window: Option<Value>,
    #[serde(default)]
    idempotency_headers: Option<Value>,
    #[serde(default)]
    price_per_gb: Option<Value>,
    #[serde(default)]
    max_connections: Option<Value>,
    #[serde(default)]
    labels: Option<Value>,
    #[serde(default)]
    upstreams: Option<Value>,
    #[serde(default)]
    policy: Option<Value>,
}

impl ProxyIn {
    /// Decodes one proxy object (keys case-insensitive; `null` is an empty object).
    pub fn from_value(value: Value) -> Result<ProxyIn, Error> {
        decode_object(value).map_err(Error::BadBody)
    }

    /// As a new proxy (enabled unless it says otherwise). Missing fields are left empty for
    /// the store to report by name.
    pub fn into_new(self) -> Result<NewProxy, Error> {
        let protocol = self.protocol()?.unwrap_or_default();
        let measure = self.measure()?;
        let labels = self.labels()?;
        let (upstream, upstreams) = self.upstreams()?;
        Ok(NewProxy {
            labels,
            upstreams,
            name: self.name.unwrap_or_default(),
            listen: self
                .listen
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            upstream: upstream.unwrap_or_default(),
            enabled: self.enabled.unwrap_or(true),
            protocol,
            fault_header: self.fault_header.unwrap_or(true),
            measure,
            rewrite_host: self.rewrite_host,
        })
    }

    fn upstreams(&self) -> Result<(Option<String>, Option<UpstreamSet>), Error> {
        crate::proxy::parse_upstreams(
            self.upstream.as_deref(),
            self.upstreams.as_ref(),
            self.policy.as_ref(),
        )
        .map_err(|e| Error::BadBody(format!("{}: {}", e.path, e.message)))
    }

    fn labels(&self) -> Result<Option<Labels>, Error> {
        self.labels
            .as_ref()
            .filter(|v| !v.is_null())
            .map(|v| {
                Labels::from_json(v)
                    .map_err(|e| Error::BadBody(format!("{}: {}", e.path, e.message)))
            })
            .transpose()
    }

    fn measure(&self) -> Result<MeasurePatch, Error> {
        let mut patch = MeasurePatch::default();
        for (key, value) in [
            ("abandon_grace", &self.abandon_grace),
            ("retry_window", &self.retry_window),
            ("idempotency_headers", &self.idempotency_headers),
            ("price_per_gb", &self.price_per_gb),
            ("max_connections", &self.max_connections),
        ] {
            if let Some(v) = value.as_ref().filter(|v| !v.is_null()) {
                patch
                    .set(key, v)
                    .map_err(|m| Error::BadBody(format!("{key}: {m}")))?;
            }
        }
        Ok(patch)
    }

    fn protocol(&self) -> Result<Option<Protocol>, Error> {
        self.protocol
            .as_deref()
            .map(|p| Protocol::parse(p).map_err(|m| Error::BadBody(format!("protocol: {m}"))))
            .transpose()
    }

    /// As a partial update; `drain` closes open connections when the upstream changes.
    pub fn into_patch(self, drain: bool) -> Result<ProxyPatch, Error> {
        let measure = self.measure()?;
        let labels = self.labels()?;
        let (upstream, upstreams) = self.upstreams()?;
        Ok(ProxyPatch {
            labels,
            measure,
            upstreams,
            drain,
            protocol: self.protocol()?,
            // Empty means the default, as on create (it was a 500: "listen : invalid socket
            // address").
            listen: self.listen.map(|l| {
                if l.is_empty() {
                    DEFAULT_LISTEN.into()
                } else {
                    l
                }
            }),
            upstream,
            enabled: self.enabled,
            fault_header: self.fault_header,
            rewrite_host: self.rewrite_host,
        })
    }
}

/// Decodes a request body the way Go's `json.Decoder` does: the first JSON value counts,
/// anything after it is ignored, and an empty body is the error `EOF`.
pub fn parse_body(body: &Bytes) -> Result<Value, Error> {
    let mut values = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    match values.next() {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) if e.is_eof() && body.iter().all(u8::is_ascii_whitespace) => {
            Err(Error::BadBody("EOF".into()))
        }
        Some(Err(e)) => Err(Error::BadBody(e.to_string())),
        None => Err(Error::BadBody("EOF".into())),
    }
}
