//! The toxic wire model: Toxiproxy's JSON shape, decoded and validated.
//!
//! Toxiproxy clients depend on details of Go's `encoding/json`, so decoding mimics it:
//! object keys match case-insensitively, unknown keys are ignored, omitted attributes are 0,
//! negative numbers are accepted, and a float (`1.5`, `1e3`) where an integer is expected is an
//! error. Checks run in Toxiproxy's order: stream, type, duplicate name (in the store), then
//! attributes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::http_faults::{
    HttpAbortAttrs, HttpDelayAttrs, HttpSlowBodyAttrs, HttpTruncateAttrs, MaintenanceAttrs,
    RateLimitAttrs, TamperAttrs,
};
use super::latency::LatencyModel;
use super::profile::{ProfileAttrs, ProfileToxic};
use super::{
    Noop, Toxic, bandwidth::Bandwidth, latency::Latency, limit_data::LimitData,
    reset_peer::ResetPeer, slicer::Slicer, slow_close::SlowClose, timeout::Timeout,
};
use crate::http::Matcher;
use crate::units::parse_duration;

/// Every toxic type fallacy knows, in the order the docs list them.
pub const TOXIC_TYPES: &[&str] = &[
    "latency",
    "bandwidth",
    "slow_close",
    "timeout",
    "reset_peer",
    "slicer",
    "limit_data",
    "noop",
    "connect_delay",
    "profile",
    "loss",
    "corrupt",
    "flap",
    "packet_loss",
    "duplicate",
    "reorder",
    "http_abort",
    "http_delay",
    "maintenance",
    "rate_limit",
    "http_truncate",
    "http_slow_body",
    "tamper",
    "downgrade",
];

/// Which way the bytes flow. Toxiproxy calls it the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server.
    Upstream,
    /// Server to client.
    Downstream,
}

impl Direction {
    /// Parses a stream name, case-insensitively as Toxiproxy does.
    pub fn parse(stream: &str) -> Option<Direction> {
        if stream.eq_ignore_ascii_case("upstream") {
            Some(Direction::Upstream)
        } else if stream.eq_ignore_ascii_case("downstream") {
            Some(Direction::Downstream)
        } else {
            None
        }
    }

    /// The canonical lower-case name, used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated toxic, as stored and as shown by the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ToxicSpec {
    /// Unique within its proxy, across both streams.
    pub name: String,
    /// The stream exactly as the client spelled it (`"UpStream"` stays `"UpStream"`).
    pub stream: String,
    /// The parsed stream.
    pub direction: Direction,
    /// Chance in 0..=1 that the toxic applies to a connection and direction, drawn once.
    pub toxicity: f32,
    /// Type and attributes.
    pub kind: ToxicKind,
    /// On HTTP proxies: the requests it acts on (all when `None`).
    pub matcher: Option<Arc<Matcher>>,
    /// It removes itself this long after it was created or last given a ttl.
    pub ttl: Option<Duration>,
    /// When, if it has a ttl.
    pub expires_at: Option<tokio::time::Instant>,
    /// Who made it (a test, a CI job), for people reading the API and the audit log.
    pub owner: Option<String>,
}

/// The longest owner string: a label, not a document.
const MAX_OWNER: usize = 200;

/// Reads a `ttl`: a duration string or an integer of milliseconds, above 0.
fn parse_ttl(value: &Value) -> Result<Duration, AttrError> {
    let d = crate::units::duration_value(value).map_err(|m| AttrError::new("ttl", &m))?;
    if d.is_zero() {
        return Err(AttrError::new(
            "ttl",
            "must be more than 0; leave it out to keep the toxic",
        ));
    }
    Ok(d)
}

fn check_owner(owner: &Option<String>) -> Result<(), AttrError> {
    match owner {
        Some(o) if o.len() > MAX_OWNER => Err(AttrError::new(
            "owner",
            &format!("at most {MAX_OWNER} bytes"),
        )),
        _ => Ok(()),
    }
}

impl ToxicSpec {
    /// Applies an update: attributes are merged into the current ones, toxicity replaced when
    /// given. Returns the new spec; `self` is untouched, so a rejected update changes nothing.
    pub fn patched(&self, patch: &ToxicPatch) -> Result<ToxicSpec, AttrError> {
        let mut merged = self.kind.attributes();
        if let Some(Value::Object(given)) = &patch.attributes {
            for (key, value) in lowercase_map(given.clone()) {
                // Go's decoder leaves a field alone when it meets null.
                if !value.is_null() {
                    merged.insert(key, value);
                }
            }
        } else if let Some(other) = &patch.attributes {
            if !other.is_null() {
                return Err(AttrError::new("attributes", "expected an object"));
            }
        }
        let kind = ToxicKind::decode(self.kind.type_name(), Value::Object(merged))?;
        let matcher = match &patch.matcher {
            None => self.matcher.clone(),
            Some(Value::Null) => None,
            Some(m) => Some(Arc::new(Matcher::from_json(m)?)),
        };
        let ttl = patch
            .ttl
            .as_ref()
            .filter(|v| !v.is_null())
            .map(parse_ttl)
            .transpose()?;
        check_owner(&patch.owner)?;
        Ok(ToxicSpec {
            kind,
            toxicity: patch.toxicity.unwrap_or(self.toxicity),
            matcher,
            ttl: ttl.or(self.ttl),
            expires_at: ttl
                .map(|t| tokio::time::Instant::now() + t)
                .or(self.expires_at),
            owner: patch.owner.clone().or_else(|| self.owner.clone()),
            ..self.clone()
        })
    }
}

/// The JSON object the API returns for a toxic.
impl Serialize for ToxicSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("Toxic", 6)?;
        s.serialize_field("name", &self.name)?;
        s.serialize_field("type", self.kind.type_name())?;
        s.serialize_field("stream", &self.stream)?;
        // Go prints a whole float32 without a decimal point (`1`, not `1.0`).
        if self.toxicity.fract() == 0.0 {
            s.serialize_field("toxicity", &(self.toxicity as i64))?;
        } else {
            s.serialize_field("toxicity", &self.toxicity)?;
        }
        s.serialize_field("attributes", &self.kind.attributes())?;
        if let Some(m) = &self.matcher {
            s.serialize_field("match", m.source())?;
        }
        if let Some(ttl) = self.ttl {
            s.serialize_field("ttl", &crate::units::format_duration(ttl))?;
        }
        if let Some(owner) = &self.owner {
            s.serialize_field("owner", owner)?;
        }
        s.end()
    }
}

/// The outer fields of a toxic create request, before the type-specific attributes are decoded.
#[derive(Debug, Default, Deserialize)]
pub struct Envelope {
    /// Defaults to `<type>_<stream>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The toxic type.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Defaults to `downstream`.
    #[serde(default)]
    pub stream: Option<String>,
    /// Defaults to 1.0.
    #[serde(default)]
    pub toxicity: Option<f32>,
    /// Type-specific attributes.
    #[serde(default)]
    pub attributes: Option<Value>,
    /// Which requests it acts on (HTTP proxies).
    #[serde(default, rename = "match")]
    pub matcher: Option<Value>,
    /// It removes itself after this long.
    #[serde(default)]
    pub ttl: Option<Value>,
    /// Who made it.
    #[serde(default)]
    pub owner: Option<String>,
}

/// Why a toxic create request was refused before the store saw it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvelopeError {
    /// Not an object, or a field of the wrong JSON type.
    #[error("bad request body: {0}")]
    Body(String),
    /// Stream not upstream/downstream (Toxiproxy's message, then the value given).
    #[error("stream was invalid, can be either upstream or downstream (got {0:?})")]
    Stream(String),
    /// Type unknown (Toxiproxy's message, then the value given and the known types).
    #[error("invalid toxic type {0:?}: known types are {known}", known = TOXIC_TYPES.join(", "))]
    Type(String),
    /// Toxicity outside 0..=1 (Toxiproxy does not check; a toxicity of 3 is always a mistake).
    #[error("bad request body: toxicity must be between 0 and 1, got {0}")]
    Toxicity(f32),
}

/// The head of a toxic create request: everything but the attributes, checked in Toxiproxy's
/// order. The attributes are decoded separately, after the store has checked the name is free.
#[derive(Debug, Clone)]
pub struct Head {
    /// Final name.
    pub name: String,
    /// Stream as sent.
    pub stream: String,
    /// Parsed stream.
    pub direction: Direction,
    /// Type name, known to be valid.
    pub type_name: String,
    /// Toxicity.
    pub toxicity: f32,
}

impl Envelope {
    /// Decodes a request body: keys match case-insensitively, unknown keys are ignored, `null`
    /// is an empty object (as with Go's decoder).
    pub fn from_json(body: Value) -> Result<Envelope, EnvelopeError> {
        decode_object(body).map_err(EnvelopeError::Body)
    }

    /// Checks stream then type, fills in the defaults.
    pub fn head(&self) -> Result<Head, EnvelopeError> {
        let stream = self
            .stream
            .clone()
            .unwrap_or_else(|| "downstream".to_owned());
        let direction =
            Direction::parse(&stream).ok_or_else(|| EnvelopeError::Stream(stream.clone()))?;
        let type_name = self.kind.clone().unwrap_or_default();
        if !TOXIC_TYPES.contains(&type_name.as_str()) {
            return Err(EnvelopeError::Type(type_name));
        }
        let toxicity = self.toxicity.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&toxicity) {
            return Err(EnvelopeError::Toxicity(toxicity));
        }
        let name = match &self.name {
            Some(name) if !name.is_empty() => name.clone(),
            _ => format!("{type_name}_{stream}"),
        };
        Ok(Head {
            name,
            stream,
            direction,
            type_name,
            toxicity,
        })
    }

    /// Decodes the attributes for `head.type_name` and builds the spec.
    pub fn into_spec(self, head: Head) -> Result<ToxicSpec, AttrError> {
        let attributes = self.attributes.unwrap_or(Value::Null);
        let attributes = match attributes {
            Value::Object(map) => Value::Object(lowercase_map(map)),
            Value::Null => Value::Object(Map::new()),
            _ => return Err(AttrError::new("attributes", "expected an object")),
        };
        let kind = ToxicKind::decode(&head.type_name, attributes)?;
        let matcher = match &self.matcher {
            None | Some(Value::Null) => None,
            Some(m) => Some(Arc::new(Matcher::from_json(m)?)),
        };
        let ttl = self
            .ttl
            .as_ref()
            .filter(|v| !v.is_null())
            .map(parse_ttl)
            .transpose()?;
        check_owner(&self.owner)?;
        Ok(ToxicSpec {
            name: head.name,
            stream: head.stream,
            direction: head.direction,
            toxicity: head.toxicity,
            kind,
            matcher,
            ttl,
            expires_at: ttl.map(|t| tokio::time::Instant::now() + t),
            owner: self.owner.filter(|o| !o.is_empty()),
        })
    }
}

/// A toxic update request: `{attributes?, toxicity?}`.
#[derive(Debug, Default, Deserialize)]
pub struct ToxicPatch {
    /// Merged into the existing attributes.
    #[serde(default)]
    pub attributes: Option<Value>,
    /// Replaces the toxicity when present.
    #[serde(default)]
    pub toxicity: Option<f32>,
    /// Replaces the `match` when present; `null` removes it.
    #[serde(default, rename = "match", deserialize_with = "present")]
    pub matcher: Option<Value>,
    /// A new ttl, counted from now.
    #[serde(default)]
    pub ttl: Option<Value>,
    /// A new owner.
    #[serde(default)]
    pub owner: Option<String>,
}

/// Keeps an explicit `null` as `Some(Null)`, so that it can mean "remove".
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl ToxicPatch {
    /// Decodes an update body with the same leniency as [`Envelope::from_json`].
    pub fn from_json(body: Value) -> Result<ToxicPatch, EnvelopeError> {
        let patch: ToxicPatch = decode_object(body).map_err(EnvelopeError::Body)?;
        if let Some(t) = patch.toxicity {
            if !(0.0..=1.0).contains(&t) {
                return Err(EnvelopeError::Toxicity(t));
            }
        }
        Ok(patch)
    }
}

/// A bad attribute: which one, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("bad request body: {path}: {message}")]
pub struct AttrError {
    /// Dotted path, such as `attributes.latency`.
    pub path: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl AttrError {
    /// An error about the attribute `name` (shown as `attributes.<name>`).
    pub fn attribute(name: &str, message: impl Into<String>) -> AttrError {
        AttrError {
            path: format!("attributes.{name}"),
            message: message.into(),
        }
    }

    /// An error about `path` (e.g. `attributes.p99`).
    pub fn new(path: &str, message: &str) -> AttrError {
        AttrError {
            path: path.to_owned(),
            message: message.to_owned(),
        }
    }
}

/// Type and attributes of a toxic. Attribute names and units are Toxiproxy's.
#[derive(Debug, Clone, PartialEq)]
pub enum ToxicKind {
    /// Delay every chunk by `latency` ± `jitter` milliseconds.
    Latency(Box<LatencyAttrs>),
    /// Cap the rate at `rate` KB/s (1 KB = 1000 B).
    Bandwidth(BandwidthAttrs),
    /// Delay the close (FIN) by `delay` milliseconds.
    SlowClose(SlowCloseAttrs),
    /// Drop all data; close after `timeout` milliseconds (0 = never).
    Timeout(TimeoutAttrs),
    /// Reset (RST) the connection `timeout` milliseconds after the first data.
    ResetPeer(TimeoutAttrs),
    /// Split chunks into pieces of about `average_size` bytes, `delay` µs apart.
    Slicer(SlicerAttrs),
    /// Close the connection after `bytes` bytes.
    LimitData(LimitDataAttrs),
    /// Do nothing (useful to test the plumbing).
    Noop(NoopAttrs),
    /// Delay the upstream dial (connection setup cost); the attributes are `latency`'s.
    ConnectDelay(Box<LatencyAttrs>),
    /// A named network: latency and bandwidth together.
    Profile(ProfileAttrs),
    /// TCP segment loss, charged as the delay of its recovery.
    Loss(Box<LossAttrs>),
    /// Bit flips in a share of the bytes (destructive).
    Corrupt(CorruptAttrs),
    /// The whole link goes down for `down`, up for `up`, again and again.
    Flap(FlapAttrs),
    /// UDP: datagrams really dropped, independently or in bursts.
    PacketLoss(Box<PacketLossAttrs>),
    /// UDP: datagrams sent twice.
    Duplicate(RateAttrs),
    /// UDP: datagrams held back behind `gap` later ones.
    Reorder(ReorderAttrs),
    /// HTTP: answer with a status (or reset) without asking the upstream.
    HttpAbort(HttpAbortAttrs),
    /// HTTP: delay a request or its response, with any latency distribution.
    HttpDelay(Box<HttpDelayAttrs>),
    /// HTTP: 503 with `Retry-After`.
    Maintenance(MaintenanceAttrs),
    /// HTTP: 429 with `Retry-After` over a token bucket's rate.
    RateLimit(RateLimitAttrs),
    /// HTTP: the body stops after `bytes` and the exchange is aborted.
    HttpTruncate(HttpTruncateAttrs),
    /// HTTP: the body paced at `rate` KB/s.
    HttpSlowBody(HttpSlowBodyAttrs),
    /// HTTP: headers set or removed, body bits flipped.
    Tamper(TamperAttrs),
    /// HTTP: HTTP/2 refused on the connections it applies to.
    Downgrade(NoopAttrs),
}

/// `latency` attributes: Toxiproxy's two, then fallacy's extensions, shown only when set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyAttrs {
    /// Base delay (and the value of `distribution = "constant"`).
    pub latency: Millis,
    /// Uniform spread either side of `latency` (Toxiproxy's model, used without `distribution`).
    pub jitter: Millis,
    /// `constant`, `uniform`, `normal`, `lognormal`, `pareto`, `exponential` or `empirical`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// Uniform's lower bound; a clamp for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<Millis>,
    /// Uniform's upper bound; a clamp for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<Millis>,
    /// Normal and exponential mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<Millis>,
    /// Normal standard deviation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stddev: Option<Millis>,
    /// Lognormal median.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<Millis>,
    /// Lognormal 99th percentile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<Millis>,
    /// Lognormal μ: the natural log of the median in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mu: Option<f64>,
    /// Lognormal σ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma: Option<f64>,
    /// Pareto minimum.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<Millis>,
    /// Pareto tail index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<f64>,
    /// Empirical samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub samples: Option<Vec<Millis>>,
    /// Empirical samples from a file: one per line, milliseconds or a duration with a unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 0..1: how much each delay follows the previous one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation: Option<f64>,
    /// `chunk` (default: every chunk waits) or `connection` (only the first chunk each way).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per: Option<String>,
    /// Transport cost: extra microseconds per 1000 bytes of each chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_byte: Option<f64>,
    /// The validated model, built when the attributes are decoded.
    #[serde(skip)]
    pub(crate) model: Option<Arc<LatencyModel>>,
}

/// `bandwidth` attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BandwidthAttrs {
    /// KB/s; 0 or less means unlimited.
    pub rate: i64,
    /// Bytes that may go at once after an idle spell (a token bucket's depth); 0 by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    /// One link for all of the proxy's connections, shared fairly, instead of `rate` each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    /// The link the connections share, when `shared`; made when the attributes are decoded.
    #[serde(skip)]
    pub(crate) link: Option<Arc<super::bandwidth::SharedLink>>,
}

/// `slow_close` attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlowCloseAttrs {
    /// How long to hold the FIN.
    pub delay: Millis,
}

/// `timeout` and `reset_peer` attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TimeoutAttrs {
    /// Milliseconds.
    pub timeout: Millis,
}

/// `slicer` attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SlicerAttrs {
    /// Bytes per piece on average.
    pub average_size: i64,
    /// Spread of the piece size, in bytes.
    pub size_variation: i64,
    /// Pause between pieces, in **microseconds** (Toxiproxy's unit for this attribute).
    pub delay: Micros,
}

/// `limit_data` attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitDataAttrs {
    /// Bytes let through before the connection is closed.
    pub bytes: i64,
}

/// `loss` attributes: `rate`, or Gilbert-Elliott's `p`, `r`, `loss_good`, `loss_bad`; and the
/// path being modelled. Shown as given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossAttrs {
    /// Chance per segment, independently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Gilbert-Elliott: chance per segment of going from good to bad.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// Gilbert-Elliott: chance per segment of going from bad to good.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r: Option<f64>,
    /// Gilbert-Elliott: loss chance in the good state (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_good: Option<f64>,
    /// Gilbert-Elliott: loss chance in the bad state (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_bad: Option<f64>,
    /// The modelled round trip (default 50 ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt: Option<Millis>,
    /// The retransmission timeout's floor (default 200 ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto_min: Option<Millis>,
    /// Segment size in bytes (default 1448).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mss: Option<i64>,
    /// The validated model, built when the attributes are decoded.
    #[serde(skip)]
    pub(crate) model: Option<Arc<super::loss::LossModel>>,
}

/// `corrupt` attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorruptAttrs {
    /// The fraction of bytes (0..1) that get one random bit flipped.
    pub rate: f64,
}

/// `packet_loss` attributes: `rate`, or Gilbert-Elliott's `p`, `r`, `loss_good`, `loss_bad`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PacketLossAttrs {
    /// Chance per datagram, independently.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Gilbert-Elliott: chance per datagram of going from good to bad.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p: Option<f64>,
    /// Gilbert-Elliott: chance per datagram of going from bad to good.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r: Option<f64>,
    /// Loss chance in the good state (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_good: Option<f64>,
    /// Loss chance in the bad state (default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss_bad: Option<f64>,
    /// The validated process.
    #[serde(skip)]
    pub(crate) process: Option<super::loss::LossProcess>,
}

/// `duplicate` attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateAttrs {
    /// Chance per datagram, 0..1.
    pub rate: f64,
}

/// `reorder` attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReorderAttrs {
    /// Chance per datagram of being held back, 0..1.
    pub rate: f64,
    /// How many later datagrams overtake a held one (default 1).
    pub gap: i64,
}

fn check_chance(v: f64, name: &str) -> Result<(), AttrError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(AttrError::attribute(
            name,
            format!("must be a probability between 0 and 1, got {v}"),
        ))
    }
}

/// `flap` attributes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlapAttrs {
    /// How long each down period lasts (its mean with `distribution = "exponential"`).
    pub down: Millis,
    /// How long each up period lasts (likewise).
    pub up: Millis,
    /// `constant` (default) or `exponential`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// `reset` (default: connections are reset and refused while down) or `blackhole` (held).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl FlapAttrs {
    fn check(&self) -> Result<(), AttrError> {
        for (name, v) in [("down", self.down), ("up", self.up)] {
            if v.0 <= 0 {
                return Err(AttrError::attribute(
                    name,
                    "must be more than 0 (a duration)",
                ));
            }
        }
        if !matches!(
            self.distribution.as_deref(),
            None | Some("constant" | "exponential")
        ) {
            return Err(AttrError::attribute(
                "distribution",
                "must be \"constant\" or \"exponential\"",
            ));
        }
        if !matches!(self.mode.as_deref(), None | Some("reset" | "blackhole")) {
            return Err(AttrError::attribute(
                "mode",
                "must be \"reset\" or \"blackhole\"",
            ));
        }
        Ok(())
    }

    /// The cut bits of a down period.
    pub fn down_bits(&self) -> u8 {
        use crate::partition::{HOLD_DOWNSTREAM, HOLD_UPSTREAM, RESET};
        let hold = HOLD_UPSTREAM | HOLD_DOWNSTREAM;
        if self.mode.as_deref() == Some("blackhole") {
            hold
        } else {
            hold | RESET
        }
    }

    /// The length of the next period, `mean` long on average.
    pub fn draw(&self, mean: Millis, rng: &mut impl rand::Rng) -> Duration {
        let mean = mean.duration();
        match self.distribution.as_deref() {
            Some("exponential") => {
                let u: f64 = rng.random();
                mean.mul_f64(-(1.0 - u).ln())
                    .min(Duration::from_secs(86_400 * 365))
            }
            _ => mean,
        }
    }
}

/// `noop` has no attributes and shows `{}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NoopAttrs {}

impl ToxicKind {
    /// The `type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            ToxicKind::Latency(_) => "latency",
            ToxicKind::Bandwidth(_) => "bandwidth",
            ToxicKind::SlowClose(_) => "slow_close",
            ToxicKind::Timeout(_) => "timeout",
            ToxicKind::ResetPeer(_) => "reset_peer",
            ToxicKind::Slicer(_) => "slicer",
            ToxicKind::LimitData(_) => "limit_data",
            ToxicKind::Noop(_) => "noop",
            ToxicKind::ConnectDelay(_) => "connect_delay",
            ToxicKind::Profile(_) => "profile",
            ToxicKind::Loss(_) => "loss",
            ToxicKind::Corrupt(_) => "corrupt",
            ToxicKind::Flap(_) => "flap",
            ToxicKind::PacketLoss(_) => "packet_loss",
            ToxicKind::Duplicate(_) => "duplicate",
            ToxicKind::Reorder(_) => "reorder",
            ToxicKind::HttpAbort(_) => "http_abort",
            ToxicKind::HttpDelay(_) => "http_delay",
            ToxicKind::Maintenance(_) => "maintenance",
            ToxicKind::RateLimit(_) => "rate_limit",
            ToxicKind::HttpTruncate(_) => "http_truncate",
            ToxicKind::HttpSlowBody(_) => "http_slow_body",
            ToxicKind::Tamper(_) => "tamper",
            ToxicKind::Downgrade(_) => "downgrade",
        }
    }

    /// Whether the toxic acts on datagrams and so needs a UDP proxy.
    pub fn is_udp_only(&self) -> bool {
        matches!(
            self,
            ToxicKind::PacketLoss(_) | ToxicKind::Duplicate(_) | ToxicKind::Reorder(_)
        )
    }

    /// Whether the toxic acts on requests and so needs an HTTP proxy.
    pub fn is_http(&self) -> bool {
        matches!(
            self,
            ToxicKind::HttpAbort(_)
                | ToxicKind::HttpDelay(_)
                | ToxicKind::Maintenance(_)
                | ToxicKind::RateLimit(_)
                | ToxicKind::HttpTruncate(_)
                | ToxicKind::HttpSlowBody(_)
                | ToxicKind::Tamper(_)
                | ToxicKind::Downgrade(_)
        )
    }

    /// Decodes the attributes of a known type. Keys must already be lower-case.
    pub fn decode(type_name: &str, attributes: Value) -> Result<ToxicKind, AttrError> {
        fn de<T: for<'de> Deserialize<'de>>(v: Value) -> Result<T, AttrError> {
            serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                AttrError {
                    path: if path == "." {
                        "attributes".into()
                    } else {
                        format!("attributes.{path}")
                    },
                    message: e.into_inner().to_string(),
                }
            })
        }
        Ok(match type_name {
            "latency" => {
                let mut attrs: LatencyAttrs = de(attributes)?;
                attrs.model = Some(Arc::new(LatencyModel::build(&attrs)?));
                ToxicKind::Latency(Box::new(attrs))
            }
            "bandwidth" => {
                let mut attrs: BandwidthAttrs = de(attributes)?;
                if attrs.burst.is_some_and(|b| b < 0) {
                    return Err(AttrError::new(
                        "attributes.burst",
                        "must not be negative (bytes)",
                    ));
                }
                if attrs.shared == Some(true) {
                    attrs.link = Some(Arc::default());
                }
                ToxicKind::Bandwidth(attrs)
            }
            "slow_close" => ToxicKind::SlowClose(de(attributes)?),
            "timeout" => ToxicKind::Timeout(de(attributes)?),
            "reset_peer" => ToxicKind::ResetPeer(de(attributes)?),
            "slicer" => ToxicKind::Slicer(de(attributes)?),
            "limit_data" => ToxicKind::LimitData(de(attributes)?),
            "noop" => ToxicKind::Noop(NoopAttrs {}),
            "connect_delay" => {
                let mut attrs: LatencyAttrs = de(attributes)?;
                attrs.model = Some(Arc::new(LatencyModel::build(&attrs)?));
                ToxicKind::ConnectDelay(Box::new(attrs))
            }
            "profile" => ToxicKind::Profile(de::<ProfileAttrs>(attributes)?.resolve()?),
            "loss" => {
                let mut attrs: LossAttrs = de(attributes)?;
                attrs.model = Some(Arc::new(super::loss::LossModel::build(&attrs)?));
                ToxicKind::Loss(Box::new(attrs))
            }
            "packet_loss" => {
                let mut attrs: PacketLossAttrs = de(attributes)?;
                attrs.process = Some(super::loss::LossProcess::build(
                    attrs.rate,
                    attrs.p,
                    attrs.r,
                    attrs.loss_good,
                    attrs.loss_bad,
                )?);
                ToxicKind::PacketLoss(Box::new(attrs))
            }
            "duplicate" => {
                let attrs: RateAttrs = de(attributes)?;
                check_chance(attrs.rate, "rate")?;
                ToxicKind::Duplicate(attrs)
            }
            "reorder" => {
                let mut attrs: ReorderAttrs = de(attributes)?;
                check_chance(attrs.rate, "rate")?;
                if attrs.gap == 0 {
                    attrs.gap = 1;
                }
                if !(1..=1000).contains(&attrs.gap) {
                    return Err(AttrError::attribute(
                        "gap",
                        format!("must be 1 to 1000 datagrams, got {}", attrs.gap),
                    ));
                }
                ToxicKind::Reorder(attrs)
            }
            "flap" => {
                let attrs: FlapAttrs = de(attributes)?;
                attrs.check()?;
                ToxicKind::Flap(attrs)
            }
            "corrupt" => {
                let attrs: CorruptAttrs = de(attributes)?;
                super::corrupt::check(&attrs)?;
                ToxicKind::Corrupt(attrs)
            }
            "http_abort" => {
                let attrs: HttpAbortAttrs = de(attributes)?;
                attrs.check()?;
                ToxicKind::HttpAbort(attrs)
            }
            "http_delay" => {
                let mut attrs: HttpDelayAttrs = de(attributes)?;
                attrs.check()?;
                attrs.latency.model = Some(Arc::new(LatencyModel::build(&attrs.latency)?));
                ToxicKind::HttpDelay(Box::new(attrs))
            }
            "maintenance" => {
                let attrs: MaintenanceAttrs = de(attributes)?;
                attrs.check()?;
                ToxicKind::Maintenance(attrs)
            }
            "rate_limit" => {
                let mut attrs: RateLimitAttrs = de(attributes)?;
                attrs.check()?;
                ToxicKind::RateLimit(attrs)
            }
            "http_truncate" => {
                let attrs: HttpTruncateAttrs = de(attributes)?;
                attrs.check()?;
                ToxicKind::HttpTruncate(attrs)
            }
            "http_slow_body" => {
                let attrs: HttpSlowBodyAttrs = de(attributes)?;
                attrs.check()?;
                ToxicKind::HttpSlowBody(attrs)
            }
            "tamper" => {
                let attrs: TamperAttrs = de(attributes)?;
                attrs.check()?;
                ToxicKind::Tamper(attrs)
            }
            "downgrade" => ToxicKind::Downgrade(NoopAttrs {}),
            other => {
                return Err(AttrError::new(
                    "type",
                    &format!("unknown toxic type {other:?}"),
                ));
            }
        })
    }

    /// The attributes as a JSON object, every attribute present (omitted ones show as 0).
    pub fn attributes(&self) -> Map<String, Value> {
        let value = match self {
            ToxicKind::Latency(a) | ToxicKind::ConnectDelay(a) => serde_json::to_value(a),
            ToxicKind::Profile(a) => serde_json::to_value(a),
            ToxicKind::Loss(a) => serde_json::to_value(a),
            ToxicKind::Corrupt(a) => serde_json::to_value(a),
            ToxicKind::Flap(a) => serde_json::to_value(a),
            ToxicKind::PacketLoss(a) => serde_json::to_value(a),
            ToxicKind::Duplicate(a) => serde_json::to_value(a),
            ToxicKind::Reorder(a) => serde_json::to_value(a),
            ToxicKind::Bandwidth(a) => serde_json::to_value(a),
            ToxicKind::SlowClose(a) => serde_json::to_value(a),
            ToxicKind::Timeout(a) | ToxicKind::ResetPeer(a) => serde_json::to_value(a),
            ToxicKind::Slicer(a) => serde_json::to_value(a),
            ToxicKind::LimitData(a) => serde_json::to_value(a),
            ToxicKind::Noop(a) => serde_json::to_value(a),
            ToxicKind::HttpAbort(a) => serde_json::to_value(a),
            ToxicKind::HttpDelay(a) => serde_json::to_value(a),
            ToxicKind::Maintenance(a) => serde_json::to_value(a),
            ToxicKind::RateLimit(a) => serde_json::to_value(a),
            ToxicKind::HttpTruncate(a) => serde_json::to_value(a),
            ToxicKind::HttpSlowBody(a) => serde_json::to_value(a),
            ToxicKind::Tamper(a) => serde_json::to_value(a),
            ToxicKind::Downgrade(a) => serde_json::to_value(a),
        };
        match value {
            Ok(Value::Object(map)) => map,
            // The attribute structs only hold numbers: serialising them cannot fail.
            _ => Map::new(),
        }
    }

    /// Builds the runtime instance for one connection and direction.
    pub fn instantiate(
        &self,
        now: Instant,
        direction: Direction,
        cx: &mut super::ToxicCx,
    ) -> Box<dyn Toxic> {
        match self {
            ToxicKind::Latency(a) => Box::new(Latency::new(a)),
            ToxicKind::Bandwidth(a) => Box::new(Bandwidth::new(a)),
            ToxicKind::SlowClose(a) => Box::new(SlowClose::new(a)),
            ToxicKind::Timeout(a) => Box::new(Timeout::new(a, now)),
            ToxicKind::ResetPeer(a) => Box::new(ResetPeer::new(a)),
            ToxicKind::Slicer(a) => Box::new(Slicer::new(a)),
            ToxicKind::LimitData(a) => Box::new(LimitData::new(a)),
            ToxicKind::Profile(a) => Box::new(ProfileToxic::new(a, direction, cx)),
            ToxicKind::Loss(a) => match &a.model {
                Some(model) => Box::new(super::loss::Loss::new(model.clone())),
                // Decoding always builds the model.
                None => Box::new(Noop),
            },
            ToxicKind::Corrupt(a) => Box::new(super::corrupt::Corrupt::new(a)),
            // Acts before the stream exists (see `proxy::conn`), or on requests (see
            // `http::faults`): nothing to do per chunk.
            ToxicKind::PacketLoss(a) => match a.process {
                Some(p) => Box::new(super::datagram::PacketLoss::new(p)),
                None => Box::new(Noop),
            },
            ToxicKind::Duplicate(a) => Box::new(super::datagram::Duplicate::new(a.rate)),
            ToxicKind::Reorder(a) => Box::new(super::datagram::Reorder::new(a)),
            ToxicKind::Noop(_)
            | ToxicKind::Flap(_)
            | ToxicKind::ConnectDelay(_)
            | ToxicKind::HttpAbort(_)
            | ToxicKind::HttpDelay(_)
            | ToxicKind::Maintenance(_)
            | ToxicKind::RateLimit(_)
            | ToxicKind::HttpTruncate(_)
            | ToxicKind::HttpSlowBody(_)
            | ToxicKind::Tamper(_)
            | ToxicKind::Downgrade(_) => Box::new(Noop),
        }
    }

    /// Whether the toxic acts on the byte stream. `connect_delay` acts on the dial only and
    /// `flap` on the whole link (through its cut), so they stay out of the chains (and off the
    /// fast path's way).
    pub fn acts_on_stream(&self) -> bool {
        !matches!(self, ToxicKind::ConnectDelay(_) | ToxicKind::Flap(_)) && !self.is_http()
    }
}

/// A duration attribute counted in milliseconds on the wire (Toxiproxy's unit for most toxics).
///
/// Accepts an integer number of milliseconds (negative allowed, meaning zero, as in Toxiproxy)
/// or a string with a unit (`"250ms"`, `"1.5s"`: our extension). Shown as an integer number of
/// milliseconds, or a fraction when a string asked for sub-millisecond precision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Millis(pub i64 /* nanoseconds */);

/// A duration attribute counted in microseconds on the wire (`slicer.delay`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Micros(pub i64 /* nanoseconds */);

impl Millis {
    /// The duration, negative values read as zero.
    pub fn duration(self) -> Duration {
        super::nonneg_nanos(self.0)
    }

    /// Milliseconds as a float (negative kept).
    pub fn as_ms(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl Micros {
    /// The duration, negative values read as zero.
    pub fn duration(self) -> Duration {
        super::nonneg_nanos(self.0)
    }
}

fn serialize_unit<S: Serializer>(nanos: i64, unit: i64, s: S) -> Result<S::Ok, S::Error> {
    if nanos % unit == 0 {
        s.serialize_i64(nanos / unit)
    } else {
        s.serialize_f64(nanos as f64 / unit as f64)
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_unit(self.0, 1_000_000, s)
    }
}

impl Serialize for Micros {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_unit(self.0, 1_000, s)
    }
}

struct DurationVisitor {
    unit_nanos: i64,
    unit_name: &'static str,
}

impl Visitor<'_> for DurationVisitor {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "an integer number of {} or a duration string such as \"250ms\"",
            self.unit_name
        )
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        v.checked_mul(self.unit_nanos)
            .ok_or_else(|| E::custom(format!("{v} {} is out of range", self.unit_name)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        let v = i64::try_from(v)
            .map_err(|_| E::custom(format!("{v} {} is out of range", self.unit_name)))?;
        self.visit_i64(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        let d = parse_duration(v).map_err(E::custom)?;
        i64::try_from(d.as_nanos()).map_err(|_| E::custom(format!("\"{v}\" is out of range")))
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor {
            unit_nanos: 1_000_000,
            unit_name: "milliseconds",
        })
        .map(Millis)
    }
}

impl<'de> Deserialize<'de> for Micros {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(DurationVisitor {
            unit_nanos: 1_000,
            unit_name: "microseconds",
        })
        .map(Micros)
    }
}

/// Decodes a JSON object the way Go's `encoding/json` does for Toxiproxy: keys match
/// case-insensitively, unknown keys are ignored, `null` gives the defaults. The error names the
/// field at fault.
pub fn decode_object<T: DeserializeOwned + Default>(body: Value) -> Result<T, String> {
    match body {
        Value::Null => Ok(T::default()),
        Value::Object(map) => serde_path_to_error::deserialize(Value::Object(lowercase_map(map)))
            .map_err(|e| e.to_string()),
        other => Err(format!(
            "expected a JSON object, got {}",
            describe_json(&other)
        )),
    }
}

/// Lower-cases the keys of a JSON object, keeping the last of keys that collide (Go's
/// case-insensitive matching lets the last one win too).
pub fn lowercase_map(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect()
}

/// [`lowercase_map`] for any JSON value (non-objects are returned unchanged).
pub fn lowercase_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(lowercase_map(map)),
        other => other,
    }
}

fn describe_json(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
