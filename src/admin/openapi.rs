//! `GET /openapi.json`: an OpenAPI 3.1 description of every route, built from one table.
//! `tests/openapi.rs` holds the table to the router both ways (every route here answers as a
//! route, and every `.route(...)` in `admin.rs` is here) and validates the document with
//! `openapi-spec-validator`.

use serde_json::{Map, Value, json};

/// One operation: method, path, summary, query parameters, request body, responses.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [(&'static str, &'static str)],
    body: Option<&'static str>,
    responses: &'static [(u16, &'static str)],
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    responses: &'static [(u16, &'static str)],
) -> Op {
    Op {
        method,
        path,
        summary,
        query: &[],
        body: None,
        responses,
    }
}

const fn with_body(o: Op, body: &'static str) -> Op {
    Op {
        body: Some(body),
        ..o
    }
}

const fn with_query(o: Op, query: &'static [(&'static str, &'static str)]) -> Op {
    Op { query, ..o }
}

const OK: (u16, &str) = (200, "OK");
const BAD: (u16, &str) = (400, "bad body or query: the error names the field");
const MISSING: (u16, &str) = (404, "no such proxy, toxic, partition or scenario");
const TAKEN: (u16, &str) = (409, "the name is taken");
const GONE: (u16, &str) = (204, "done");

const PROXY_BODY: &str = "A proxy: name, listen, upstream, enabled; fallacy's extensions (protocol, labels, upstreams, policy, fault_header, rewrite_host, abandon_grace, retry_window, idempotency_headers, price_per_gb, max_connections). Toxiproxy's JSON.";
const TOXIC_BODY: &str =
    "A toxic: name, type, stream, toxicity, attributes; fallacy's ttl, owner, match.";

const OPS: &[Op] = &[
    op("get", "/proxies", "Every proxy, by name", &[OK]),
    with_body(
        op(
            "post",
            "/proxies",
            "Create a proxy",
            &[(201, "created"), BAD, TAKEN, (500, "cannot listen")],
        ),
        PROXY_BODY,
    ),
    with_body(
        op(
            "post",
            "/populate",
            "Create or replace many proxies (Toxiproxy's populate)",
            &[(201, "the proxies"), BAD, (500, "cannot listen")],
        ),
        "An array of proxies.",
    ),
    op(
        "get",
        "/proxies/{proxy}",
        "One proxy with its toxics",
        &[OK, MISSING],
    ),
    with_query(
        with_body(
            op(
                "post",
                "/proxies/{proxy}",
                "Update a proxy",
                &[OK, BAD, MISSING],
            ),
            PROXY_BODY,
        ),
        &[(
            "drain",
            "true: close open connections when the upstream changes",
        )],
    ),
    with_query(
        with_body(
            op(
                "patch",
                "/proxies/{proxy}",
                "Update a proxy (as POST)",
                &[OK, BAD, MISSING],
            ),
            PROXY_BODY,
        ),
        &[(
            "drain",
            "true: close open connections when the upstream changes",
        )],
    ),
    op(
        "delete",
        "/proxies/{proxy}",
        "Delete a proxy",
        &[GONE, MISSING],
    ),
    op(
        "get",
        "/proxies/{proxy}/toxics",
        "A proxy's toxics",
        &[OK, MISSING],
    ),
    with_body(
        op(
            "post",
            "/proxies/{proxy}/toxics",
            "Add a toxic",
            &[OK, BAD, MISSING, TAKEN],
        ),
        TOXIC_BODY,
    ),
    op(
        "get",
        "/proxies/{proxy}/toxics/{toxic}",
        "One toxic",
        &[OK, MISSING],
    ),
    with_body(
        op(
            "post",
            "/proxies/{proxy}/toxics/{toxic}",
            "Update a toxic (attributes merged)",
            &[OK, BAD, MISSING],
        ),
        TOXIC_BODY,
    ),
    with_body(
        op(
            "patch",
            "/proxies/{proxy}/toxics/{toxic}",
            "Update a toxic (as POST)",
            &[OK, BAD, MISSING],
        ),
        TOXIC_BODY,
    ),
    op(
        "delete",
        "/proxies/{proxy}/toxics/{toxic}",
        "Remove a toxic",
        &[GONE, MISSING],
    ),
    op(
        "get",
        "/proxies/{proxy}/stats",
        "Live figures: requests, latency, abandonment, retries",
        &[OK, MISSING],
    ),
    with_query(
        op(
            "get",
            "/proxies/{proxy}/timeout-advice",
            "The timeout that keeps false timeouts under a rate",
            &[OK, BAD, MISSING, (422, "too few samples yet")],
        ),
        &[(
            "false_timeout_rate",
            "required: the rate, strictly between 0 and 1",
        )],
    ),
    op("get", "/partitions", "Every partition", &[OK]),
    with_body(
        op(
            "post",
            "/partitions",
            "Create a partition",
            &[(201, "created"), BAD, TAKEN],
        ),
        "name, a, b, direction, mode, duration (or ttl), owner",
    ),
    op(
        "get",
        "/partitions/{partition}",
        "One partition",
        &[OK, MISSING],
    ),
    op(
        "delete",
        "/partitions/{partition}",
        "Heal a partition",
        &[GONE, MISSING],
    ),
    with_query(
        op("get", "/audit", "The last admin changes", &[OK, BAD]),
        &[("limit", "how many, 1 to 1000 (default 100)")],
    ),
    op("get", "/scenarios", "Every scenario started", &[OK]),
    with_body(
        op(
            "post",
            "/scenarios",
            "Start a scenario (JSON or TOML)",
            &[(201, "started"), BAD, TAKEN],
        ),
        "A scenario: name, duration, repeat, step[].",
    ),
    with_query(
        op(
            "get",
            "/scenarios/{scenario}",
            "A scenario: phase, figures per phase",
            &[OK, BAD, MISSING],
        ),
        &[("series", "true: the time series too")],
    ),
    op(
        "delete",
        "/scenarios/{scenario}",
        "Stop a scenario, revert it, answer its final figures",
        &[OK, MISSING],
    ),
    op(
        "post",
        "/reset",
        "Remove every toxic, enable every proxy, heal every partition",
        &[GONE],
    ),
    op("get", "/version", "fallacy's version", &[OK]),
    op(
        "get",
        "/log-level",
        "The log filter in force",
        &[OK, (501, "not fallacy's logger")],
    ),
    with_body(
        op(
            "put",
            "/log-level",
            "Replace the log filter",
            &[OK, BAD, (501, "not fallacy's logger")],
        ),
        "{\"level\": \"debug\"}, RUST_LOG directives, or the bare text",
    ),
    op(
        "post",
        "/reload",
        "Read the config file again and apply what changed",
        &[OK, BAD, (409, "no config file")],
    ),
    op("get", "/metrics", "Prometheus metrics (text)", &[OK]),
    op("get", "/healthz", "Alive", &[OK]),
    op(
        "get",
        "/readyz",
        "Every configured listener is bound",
        &[OK, (503, "not yet")],
    ),
    op("post", "/shutdown", "Drain and stop, as SIGTERM", &[GONE]),
    op("get", "/openapi.json", "This document", &[OK]),
];

/// Every (method, path) the document describes, for tests.
pub fn operations() -> Vec<(&'static str, &'static str)> {
    OPS.iter().map(|o| (o.method, o.path)).collect()
}

fn operation(o: &Op) -> Value {
    let mut parameters: Vec<Value> = o
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
        })
        .collect();
    parameters.extend(o.query.iter().map(|(name, what)| {
        json!({"name": name, "in": "query", "required": name == &"false_timeout_rate",
               "description": what, "schema": {"type": "string"}})
    }));
    let mut responses = Map::new();
    for (code, what) in o.responses {
        let content = if o.path == "/metrics" && *code == 200 {
            json!({"text/plain": {"schema": {"type": "string"}}})
        } else if *code == 204 {
            Value::Null
        } else if *code >= 400 {
            json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}})
        } else {
            json!({"application/json": {"schema": {}}})
        };
        let mut r = json!({ "description": what });
        if !content.is_null() {
            r["content"] = content;
        }
        responses.insert(code.to_string(), r);
    }
    responses.insert(
        "401".into(),
        json!({"description": "an admin token is set and the request did not carry it",
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
    );
    let id: String = format!("{} {}", o.method, o.path)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut out = json!({
        "summary": o.summary,
        "operationId": id,
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(body) = o.body {
        out["requestBody"] = json!({
            "description": body,
            "content": {"application/json": {"schema": {}}},
        });
    }
    out
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for o in OPS {
        let item = paths
            .entry(o.path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[o.method] = operation(o);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fallacy admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Toxiproxy 2.12's API, and fallacy's extensions (partitions, scenarios, stats, timeout advice, audit, reload, log level). See the README's Admin API table.",
        },
        "servers": [{"url": "http://127.0.0.1:8474"}],
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "status"],
                    "properties": {
                        "error": {"type": "string"},
                        "status": {"type": "integer"},
                    },
                },
            },
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer",
                          "description": "Only when fallacy runs with FALLACY_ADMIN_TOKEN"},
            },
        },
        "security": [{}, {"token": []}],
    })
}
