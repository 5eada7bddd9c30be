//! `GET /openapi.json` and the router agree both ways, and the document is valid OpenAPI.

mod support;

use std::collections::BTreeSet;

use regex::Regex;
use serde_json::Value;
use support::Fallacy;

/// The (method, path) pairs the router in src/admin.rs registers, read from its source: the
/// spec may not forget a route added there.
fn routed() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/admin.rs");
    let start = source.find("pub fn router(").expect("the router function");
    let body = &source[start..source[start..].find(".fallback(").unwrap() + start];
    let route = Regex::new(r#"\.route\(\s*"([^"]+)","#).unwrap();
    let method = Regex::new(r"\b(get|post|put|patch|delete)\(").unwrap();
    let starts: Vec<_> = route.captures_iter(body).collect();
    let mut out = BTreeSet::new();
    for (i, c) in starts.iter().enumerate() {
        let from = c.get(0).unwrap().end();
        let to = starts
            .get(i + 1)
            .map_or(body.len(), |n| n.get(0).unwrap().start());
        for m in method.captures_iter(&body[from..to]) {
            out.insert((m[1].to_owned(), c[1].to_owned()));
        }
    }
    out
}

#[tokio::test]
async fn the_document_and_the_router_describe_the_same_routes() {
    let f = Fallacy::start().await;
    let (status, doc) = f.call("GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    let routed = routed();
    assert!(routed.len() > 30, "the source parse found {routed:?}");
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routed but not in /openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "in /openapi.json but not routed: {extra:?}"
    );
    let ops: BTreeSet<(String, String)> = fallacy::admin::openapi::operations()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    assert_eq!(ops, documented);

    // Each documented operation answers as a route (whatever the resource), not as the
    // router's "no such route" or "method not allowed". /shutdown would end the server.
    for (method, path) in &documented {
        if path == "/shutdown" {
            continue;
        }
        let concrete = path
            .replace("{proxy}", "nope")
            .replace("{toxic}", "nope")
            .replace("{partition}", "nope")
            .replace("{scenario}", "nope");
        let (status, body) = f.call(&method.to_uppercase(), &concrete, Some("{}")).await;
        assert_ne!(status, 405, "{method} {concrete}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            !error.contains("no such route"),
            "{method} {concrete}: {body}"
        );
    }
}

#[tokio::test]
async fn the_document_is_valid_openapi() {
    let f = Fallacy::start().await;
    let (_, doc): (u16, Value) = f.call("GET", "/openapi.json", None).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = tokio::process::Command::new("openapi-spec-validator")
        .arg(&path)
        .output()
        .await
        .expect("openapi-spec-validator is not installed: .ci/run installs it (pip)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(doc["openapi"], "3.1.0");
}

/// Every operation that binds a listener documents the 500 of a bind failure (and the API fuzz
/// test, tests/api_fuzz.rs, accepts a 500 only there); no other 5xx is documented but `/readyz`'s
/// 503 and `/log-level`'s 501. Each create links to the operations on what it created, with the
/// new name from the answer: schemathesis's stateful phase follows these links.
#[tokio::test]
async fn bind_failures_and_links_are_documented() {
    let f = Fallacy::start().await;
    let (_, doc) = f.call("GET", "/openapi.json", None).await;
    let binds = [
        ("post", "/proxies"),
        ("post", "/populate"),
        ("post", "/proxies/{proxy}"),
        ("patch", "/proxies/{proxy}"),
        ("post", "/reset"),
    ];
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            ids.insert(op["operationId"].as_str().unwrap().to_owned());
            for code in op["responses"].as_object().unwrap().keys() {
                if !code.starts_with('5') {
                    continue;
                }
                let allowed = match code.as_str() {
                    "500" => binds.contains(&(method.as_str(), path.as_str())),
                    "501" => path == "/log-level",
                    "503" => path == "/readyz",
                    _ => false,
                };
                assert!(allowed, "{method} {path} documents a {code}");
            }
        }
    }
    for (method, path) in binds {
        assert!(
            doc["paths"][path][method]["responses"]["500"].is_object(),
            "{method} {path}: no 500"
        );
    }

    let proxy_links = &doc["paths"]["/proxies"]["post"]["responses"]["201"]["links"];
    assert_eq!(
        proxy_links["delete__proxies__proxy_"]["parameters"],
        serde_json::json!({"proxy": "$response.body#/name"})
    );
    let toxic_links = &doc["paths"]["/proxies/{proxy}/toxics"]["post"]["responses"]["200"]["links"];
    assert_eq!(
        toxic_links["patch__proxies__proxy__toxics__toxic_"]["parameters"],
        serde_json::json!({"proxy": "$request.path.proxy", "toxic": "$response.body#/name"})
    );
    for (create, code, count) in [
        ("/proxies", "201", 8),
        ("/proxies/{proxy}/toxics", "200", 4),
        ("/partitions", "201", 2),
        ("/scenarios", "201", 2),
    ] {
        let links = doc["paths"][create]["post"]["responses"][code]["links"]
            .as_object()
            .unwrap_or_else(|| panic!("POST {create}: no links"));
        assert_eq!(links.len(), count, "POST {create}: {links:?}");
        for link in links.values() {
            let target = link["operationId"].as_str().unwrap();
            assert!(ids.contains(target), "POST {create} links to {target}");
        }
    }
}
