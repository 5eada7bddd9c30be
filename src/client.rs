//! A client of the admin API, for `fallacy scenario run` and `fallacy ctl`: JSON in and out,
//! an optional bearer token, every call bounded in time.

use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long an admin call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the admin API.
pub struct Admin {
    /// `http://host:port`.
    pub base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Admin {
    /// A client of the API at `base` (`http://host:port`).
    pub fn new(base: String, token: Option<String>) -> Admin {
        Admin {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// One call; the answer's status and body (JSON, or the text as a JSON string).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let body = Bytes::from(body.map(Value::to_string).unwrap_or_default());
        self.send(method, path, "application/json", body).await
    }

    /// One call with a text body (a scenario's TOML).
    pub async fn call_text(
        &self,
        method: Method,
        path: &str,
        text: &str,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let body = Bytes::from(text.to_owned());
        self.send(method, path, "text/plain", body).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header(http::header::CONTENT_TYPE, content_type);
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body))?;
        let call = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            anyhow::Ok((status, value))
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| {
                anyhow!(
                    "{method} {}{path}: no answer in {CALL_TIMEOUT:?}",
                    self.base
                )
            })?
            .with_context(|| format!("{method} {}{path}", self.base))
    }
}

/// `http://host:port` from `host:port` or a URL; only plain HTTP.
pub fn target_base(target: &str) -> anyhow::Result<String> {
    let with_scheme = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    let uri: hyper::Uri = with_scheme
        .parse()
        .map_err(|e| anyhow!("--target {target:?}: not a URL or host:port ({e})"))?;
    if uri.scheme_str() != Some("http") {
        anyhow::bail!("--target {target:?}: the admin API speaks plain http://");
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("--target {target:?}: no host:port"))?;
    if authority.port().is_none() {
        anyhow::bail!("--target {target:?}: give the port, e.g. 127.0.0.1:8474");
    }
    Ok(format!("http://{authority}"))
}

/// A name as one path segment, percent-encoded (proxy and scenario names may hold anything).
pub fn segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
