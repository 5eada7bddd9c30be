//! Admin API errors: one status code each, and Toxiproxy's `{"error","status"}` body.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::state;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store refused the change.
    #[error(transparent)]
    Store(#[from] state::Error),
    /// The body is not JSON, or a field has the wrong JSON type.
    #[error("bad request body: {0}")]
    BadBody(String),
    /// A browser user agent.
    #[error("User agent not allowed")]
    BrowserRefused,
    /// No such route.
    #[error("not found: no such route (see GET /openapi.json or the README's API table)")]
    RouteNotFound,
    /// A known route with another method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// Something by that name is not there (extensions).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with what runs (extensions).
    #[error("{0}")]
    Conflict(String),
    /// A query parameter is missing or wrong.
    #[error("bad query: {0}")]
    BadQuery(String),
    /// A path segment cannot be read (not UTF-8 once percent-decoded).
    #[error("bad path: {0}")]
    BadPath(String),
    /// Too few samples (used by extensions).
    #[error("{0}")]
    Unprocessable(String),
    /// The feature is not available in this process.
    #[error("{0}")]
    NotImplemented(String),
    /// An admin token is set and the request did not carry it.
    #[error("{0}")]
    Unauthorized(&'static str),
}

impl Error {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        use state::Error as S;
        match self {
            Error::Store(S::ProxyNotFound | S::ToxicNotFound | S::PartitionNotFound)
            | Error::RouteNotFound
            | Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Store(S::ProxyExists | S::ToxicExists | S::PartitionExists)
            | Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Store(S::MissingField(_) | S::Envelope(_) | S::Attr(_))
            | Error::BadBody(_)
            | Error::BadQuery(_)
            | Error::BadPath(_) => StatusCode::BAD_REQUEST,
            Error::Store(S::Listen { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::BrowserRefused => StatusCode::FORBIDDEN,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The JSON body, with extra fields merged in (`/populate` adds `"proxies"`).
    pub(super) fn body(&self, extra: Option<(&str, serde_json::Value)>) -> serde_json::Value {
        let mut body =
            serde_json::json!({ "error": self.to_string(), "status": self.status().as_u16() });
        if let (Some((key, value)), Some(map)) = (extra, body.as_object_mut()) {
            map.insert(key.to_owned(), value);
        }
        body
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "admin request failed");
        } else {
            tracing::debug!(error = %self, "admin request refused");
        }
        let mut response = (status, Json(self.body(None))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"fallacy\""),
            );
        }
        response
    }
}
