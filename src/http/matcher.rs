//! Which requests a toxic acts on, on an HTTP proxy: `match = {method, path, header}`.
//!
//! Every given part must match. `path` is a prefix, or a glob when it holds a glob character
//! (`*`, `?`, `[`, `{`; a `*` also crosses `/`). `header` tests one header by `equals` (exact,
//! case-sensitive), `regex` (anywhere in the value), or neither (present). Unknown keys are
//! errors: a misspelt key that silently matched every request would be worse than a 400.

use globset::{Glob, GlobMatcher};
use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use serde_json::{Map, Value};

use crate::toxic::AttrError;

/// A validated `match`, and the JSON it came from (shown back as given).
#[derive(Debug, Clone)]
pub struct Matcher {
    source: Value,
    method: Option<Method>,
    path: Option<PathPattern>,
    header: Option<HeaderTest>,
}

#[derive(Debug, Clone)]
enum PathPattern {
    Prefix(String),
    Glob(GlobMatcher),
}

#[derive(Debug, Clone)]
struct HeaderTest {
    name: HeaderName,
    test: ValueTest,
}

#[derive(Debug, Clone)]
enum ValueTest {
    Present,
    Equals(String),
    Regex(Regex),
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

fn bad(path: &str, message: impl Into<String>) -> AttrError {
    AttrError {
        path: format!("match.{path}"),
        message: message.into(),
    }
}

fn string<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, AttrError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(bad(path, format!("must be a string, got {other}"))),
    }
}

fn only(map: &Map<String, Value>, allowed: &[&str], path: &str) -> Result<(), AttrError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(key) => Err(bad(
            &format!("{path}{key}"),
            format!("unknown key; use {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

impl Matcher {
    /// Validates a `match` object. Errors name the key (`match.header.regex`) and what it
    /// accepts.
    pub fn from_json(value: &Value) -> Result<Matcher, AttrError> {
        let Value::Object(map) = value else {
            return Err(AttrError::new(
                "match",
                "expected an object such as {\"method\":\"POST\",\"path\":\"/orders*\"}",
            ));
        };
        only(map, &["method", "path", "header"], "")?;
        let method = match string(map, "method", "method")? {
            None => None,
            Some(m) => Some(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .ok()
                    .filter(|_| !m.is_empty())
                    .ok_or_else(|| bad("method", format!("{m:?} is not an HTTP method")))?,
            ),
        };
        let path = match string(map, "path", "path")? {
            None => None,
            Some(p) if !p.starts_with('/') && !p.starts_with('*') => {
                return Err(bad(
                    "path",
                    format!("must start with / (or a glob *), got {p:?}"),
                ));
            }
            Some(p) if p.contains(['*', '?', '[', '{']) => Some(PathPattern::Glob(
                Glob::new(p)
                    .map_err(|e| bad("path", format!("bad glob {p:?}: {}", e.kind())))?
                    .compile_matcher(),
            )),
            Some(p) => Some(PathPattern::Prefix(p.to_owned())),
        };
        let header = match map.get("header") {
            None | Some(Value::Null) => None,
            Some(Value::Object(h)) => {
                only(h, &["name", "equals", "regex"], "header.")?;
                let name = string(h, "name", "header.name")?
                    .ok_or_else(|| bad("header.name", "required: the header to test"))?;
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    bad(
                        "header.name",
                        format!("{name:?} is not a valid header name"),
                    )
                })?;
                let test = match (
                    string(h, "equals", "header.equals")?,
                    string(h, "regex", "header.regex")?,
                ) {
                    (Some(_), Some(_)) => {
                        return Err(bad("header", "give equals or regex, not both"));
                    }
                    (Some(v), None) => ValueTest::Equals(v.to_owned()),
                    (None, Some(r)) => ValueTest::Regex(Regex::new(r).map_err(|e| {
                        // The regex crate's message spans lines; the first says what is wrong.
                        let first = e.to_string().lines().last().unwrap_or("").trim().to_owned();
                        bad("header.regex", format!("bad regex {r:?}: {first}"))
                    })?),
                    (None, None) => ValueTest::Present,
                };
                Some(HeaderTest { name, test })
            }
            Some(other) => {
                return Err(bad(
                    "header",
                    format!(
                        "must be an object such as {{\"name\":\"x-tenant\",\"equals\":\"a\"}}, got {other}"
                    ),
                ));
            }
        };
        Ok(Matcher {
            source: value.clone(),
            method,
            path,
            header,
        })
    }

    /// The JSON shown by the API.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Whether a request with this method, path and headers is matched.
    pub fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let path_ok = match &self.path {
            None => true,
            Some(PathPattern::Prefix(p)) => path.starts_with(p.as_str()),
            Some(PathPattern::Glob(g)) => g.is_match(path),
        };
        if !path_ok {
            return false;
        }
        match &self.header {
            None => true,
            Some(h) => headers.get_all(&h.name).iter().any(|v| match &h.test {
                ValueTest::Present => true,
                ValueTest::Equals(want) => v.as_bytes() == want.as_bytes(),
                ValueTest::Regex(re) => v.to_str().is_ok_and(|s| re.is_match(s)),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn m(v: Value) -> Matcher {
        Matcher::from_json(&v).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn method_path_and_header_must_all_match() {
        let matcher = m(
            json!({"method": "post", "path": "/orders*", "header": {"name": "X-Tenant", "equals": "a"}}),
        );
        let h = headers(&[("x-tenant", "a")]);
        assert!(matcher.matches(&Method::POST, "/orders/7", &h));
        assert!(!matcher.matches(&Method::GET, "/orders/7", &h));
        assert!(!matcher.matches(&Method::POST, "/users", &h));
        assert!(!matcher.matches(&Method::POST, "/orders", &headers(&[("x-tenant", "b")])));
    }

    #[test]
    fn a_path_without_glob_characters_is_a_prefix() {
        let matcher = m(json!({"path": "/api/v1"}));
        assert!(matcher.matches(&Method::GET, "/api/v1/items", &HeaderMap::new()));
        assert!(!matcher.matches(&Method::GET, "/api/v2", &HeaderMap::new()));
        let glob = m(json!({"path": "/users/*/orders"}));
        assert!(glob.matches(&Method::GET, "/users/42/orders", &HeaderMap::new()));
        assert!(!glob.matches(&Method::GET, "/users/42/orders/1", &HeaderMap::new()));
    }

    #[test]
    fn header_regex_and_presence() {
        let re = m(json!({"header": {"name": "user-agent", "regex": "^curl/"}}));
        assert!(re.matches(&Method::GET, "/", &headers(&[("user-agent", "curl/8.5")])));
        assert!(!re.matches(&Method::GET, "/", &headers(&[("user-agent", "wget")])));
        let present = m(json!({"header": {"name": "authorization"}}));
        assert!(present.matches(&Method::GET, "/", &headers(&[("authorization", "x")])));
        assert!(!present.matches(&Method::GET, "/", &HeaderMap::new()));
    }

    #[test]
    fn bad_matchers_name_the_key() {
        for (v, path, fragment) in [
            (json!({"methd": "GET"}), "match.methd", "unknown key"),
            (
                json!({"method": "GE T"}),
                "match.method",
                "not an HTTP method",
            ),
            (json!({"path": "orders"}), "match.path", "must start with /"),
            (json!({"path": "/a[b"}), "match.path", "bad glob"),
            (
                json!({"header": {"equals": "a"}}),
                "match.header.name",
                "required",
            ),
            (
                json!({"header": {"name": "bad header"}}),
                "match.header.name",
                "not a valid header name",
            ),
            (
                json!({"header": {"name": "a", "regex": "("}}),
                "match.header.regex",
                "bad regex",
            ),
            (
                json!({"header": {"name": "a", "regex": "x", "equals": "y"}}),
                "match.header",
                "not both",
            ),
            (
                json!({"header": "x-tenant"}),
                "match.header",
                "must be an object",
            ),
            (json!({"method": 5}), "match.method", "must be a string"),
            (json!("GET"), "match", "expected an object"),
        ] {
            let err = Matcher::from_json(&v).unwrap_err();
            assert_eq!(err.path, path, "{v}");
            assert!(err.message.contains(fragment), "{v}: {}", err.message);
        }
    }
}
