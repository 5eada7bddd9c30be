//! `GET /openapi.json`: an OpenAPI 3.1 description of every route, built from one table, with
//! the schemas of bodies and answers, an example body, and links from each create to the
//! operations on what it created. `tests/openapi.rs` holds the table to the router both ways
//! (every route here answers as a route, and every `.route(...)` in `admin.rs` is here) and
//! validates the document with `openapi-spec-validator`; `tests/api_fuzz.rs` fuzzes the live API
//! from it with schemathesis, which checks every answer against it.

use serde_json::{Map, Value, json};

/// One operation: method, path, summary, query parameters, request body (description and the
/// component schema it follows), responses, and the component schema of its 2xx JSON answer.
struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [(&'static str, &'static str)],
    body: Option<(&'static str, &'static str)>,
    responses: &'static [(u16, &'static str)],
    answer: Option<&'static str>,
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
        answer: None,
    }
}

/// The request body: what it is, and the schema in `components` it follows.
const fn with_body(o: Op, body: &'static str, schema: &'static str) -> Op {
    Op {
        body: Some((body, schema)),
        ..o
    }
}

/// The schema in `components` of the 2xx JSON answer.
const fn answers(o: Op, schema: &'static str) -> Op {
    Op {
        answer: Some(schema),
        ..o
    }
}

const fn with_query(o: Op, query: &'static [(&'static str, &'static str)]) -> Op {
    Op { query, ..o }
}

/// `POST` and `PATCH /proxies/{proxy}`: the same update under two methods.
const fn proxy_update(method: &'static str, summary: &'static str) -> Op {
    answers(
        with_query(
            with_body(
                op(
                    method,
                    "/proxies/{proxy}",
                    summary,
                    &[OK, BAD, MISSING, LISTEN],
                ),
                PROXY_BODY,
                "ProxyUpdate",
            ),
            &[(
                "drain",
                "true: close open connections when the upstream changes",
            )],
        ),
        "Proxy",
    )
}

const OK: (u16, &str) = (200, "OK");
const BAD: (u16, &str) = (400, "bad body or query: the error names the field");
const MISSING: (u16, &str) = (404, "no such proxy, toxic, partition or scenario");
const TAKEN: (u16, &str) = (409, "the name is taken");
const GONE: (u16, &str) = (204, "done");
const LISTEN: (u16, &str) = (
    500,
    "cannot listen: the address is taken or cannot be bound (`{\"error\": \"listen ...\"}`)",
);

const PROXY_BODY: &str = "A proxy: name, listen, upstream, enabled; fallacy's extensions (protocol, labels, upstreams, policy, fault_header, rewrite_host, abandon_grace, retry_window, idempotency_headers, price_per_gb, max_connections). Toxiproxy's JSON.";
const TOXIC_BODY: &str =
    "A toxic: name, type, stream, toxicity, attributes; fallacy's ttl, owner, match.";

const OPS: &[Op] = &[
    answers(
        op("get", "/proxies", "Every proxy, by name", &[OK]),
        "ProxyMap",
    ),
    answers(
        with_body(
            op(
                "post",
                "/proxies",
                "Create a proxy",
                &[(201, "created"), BAD, TAKEN, LISTEN],
            ),
            PROXY_BODY,
            "NewProxy",
        ),
        "Proxy",
    ),
    answers(
        with_body(
            op(
                "post",
                "/populate",
                "Create or replace many proxies (Toxiproxy's populate)",
                &[(201, "the proxies"), BAD, LISTEN],
            ),
            "An array of proxies.",
            "Populate",
        ),
        "Populated",
    ),
    answers(
        op(
            "get",
            "/proxies/{proxy}",
            "One proxy with its toxics",
            &[OK, MISSING],
        ),
        "Proxy",
    ),
    proxy_update("post", "Update a proxy"),
    proxy_update("patch", "Update a proxy (as POST)"),
    op(
        "delete",
        "/proxies/{proxy}",
        "Delete a proxy",
        &[GONE, MISSING],
    ),
    answers(
        op(
            "get",
            "/proxies/{proxy}/toxics",
            "A proxy's toxics",
            &[OK, MISSING],
        ),
        "ToxicList",
    ),
    answers(
        with_body(
            op(
                "post",
                "/proxies/{proxy}/toxics",
                "Add a toxic",
                &[OK, BAD, MISSING, TAKEN],
            ),
            TOXIC_BODY,
            "NewToxic",
        ),
        "Toxic",
    ),
    answers(
        op(
            "get",
            "/proxies/{proxy}/toxics/{toxic}",
            "One toxic",
            &[OK, MISSING],
        ),
        "Toxic",
    ),
    answers(
        with_body(
            op(
                "post",
                "/proxies/{proxy}/toxics/{toxic}",
                "Update a toxic (attributes merged)",
                &[OK, BAD, MISSING],
            ),
            TOXIC_BODY,
            "ToxicUpdate",
        ),
        "Toxic",
    ),
    answers(
        with_body(
            op(
                "patch",
                "/proxies/{proxy}/toxics/{toxic}",
                "Update a toxic (as POST)",
                &[OK, BAD, MISSING],
            ),
            TOXIC_BODY,
            "ToxicUpdate",
        ),
        "Toxic",
    ),
    op(
        "delete",
        "/proxies/{proxy}/toxics/{toxic}",
        "Remove a toxic",
        &[GONE, MISSING],
    ),
    answers(
        op(
            "get",
            "/proxies/{proxy}/stats",
            "Live figures: requests, latency, abandonment, retries",
            &[OK, MISSING],
        ),
        "Object",
    ),
    answers(
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
        "Object",
    ),
    answers(
        op("get", "/partitions", "Every partition", &[OK]),
        "PartitionList",
    ),
    answers(
        with_body(
            op(
                "post",
                "/partitions",
                "Create a partition",
                &[(201, "created"), BAD, TAKEN],
            ),
            "name, a, b, direction, mode, duration (or ttl), owner",
            "NewPartition",
        ),
        "Partition",
    ),
    answers(
        op(
            "get",
            "/partitions/{partition}",
            "One partition",
            &[OK, MISSING],
        ),
        "Partition",
    ),
    op(
        "delete",
        "/partitions/{partition}",
        "Heal a partition",
        &[GONE, MISSING],
    ),
    answers(
        with_query(
            op("get", "/audit", "The last admin changes", &[OK, BAD]),
            &[("limit", "how many, 1 to 1000 (default 100)")],
        ),
        "Audit",
    ),
    answers(
        op("get", "/scenarios", "Every scenario started", &[OK]),
        "ScenarioList",
    ),
    answers(
        with_body(
            op(
                "post",
                "/scenarios",
                "Start a scenario (JSON or TOML)",
                &[(201, "started"), BAD, TAKEN],
            ),
            "A scenario: name, duration, repeat, step[].",
            "NewScenario",
        ),
        "Object",
    ),
    answers(
        with_query(
            op(
                "get",
                "/scenarios/{scenario}",
                "A scenario: phase, figures per phase",
                &[OK, BAD, MISSING],
            ),
            &[("series", "true: the time series too")],
        ),
        "Object",
    ),
    answers(
        op(
            "delete",
            "/scenarios/{scenario}",
            "Stop a scenario, revert it, answer its final figures",
            &[OK, MISSING],
        ),
        "Object",
    ),
    op(
        "post",
        "/reset",
        "Remove every toxic, enable every proxy, heal every partition",
        &[
            GONE,
            (500, "cannot listen: a disabled proxy's address is taken"),
        ],
    ),
    answers(op("get", "/version", "fallacy's version", &[OK]), "Version"),
    answers(
        op(
            "get",
            "/log-level",
            "The log filter in force",
            &[OK, (501, "not fallacy's logger")],
        ),
        "LogLevel",
    ),
    answers(
        with_body(
            op(
                "put",
                "/log-level",
                "Replace the log filter",
                &[OK, BAD, (501, "not fallacy's logger")],
            ),
            "{\"level\": \"debug\"}, RUST_LOG directives, or the bare text",
            "LogLevel",
        ),
        "LogLevel",
    ),
    answers(
        op(
            "post",
            "/reload",
            "Read the config file again and apply what changed",
            &[OK, BAD, (409, "no config file")],
        ),
        "Object",
    ),
    op("get", "/metrics", "Prometheus metrics (text)", &[OK]),
    answers(op("get", "/healthz", "Alive", &[OK]), "Health"),
    answers(
        op(
            "get",
            "/readyz",
            "Every configured listener is bound",
            &[OK, (503, "not yet")],
        ),
        "Health",
    ),
    op("post", "/shutdown", "Drain and stop, as SIGTERM", &[GONE]),
    answers(op("get", "/openapi.json", "This document", &[OK]), "Object"),
];

/// Every (method, path) the document describes, for tests.
pub fn operations() -> Vec<(&'static str, &'static str)> {
    OPS.iter().map(|o| (o.method, o.path)).collect()
}

fn operation_id(o: &Op) -> String {
    format!("{} {}", o.method, o.path)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// A create (`POST` on a collection such as `/proxies/{proxy}/toxics`) links to every operation
/// on what it created (`/proxies/{proxy}/toxics/{toxic}...`): the new name from the answer's
/// `name`, the others from the request's path. Schemathesis follows these in its stateful phase.
fn links(o: &Op) -> Map<String, Value> {
    let mut out = Map::new();
    if o.method != "post" {
        return out;
    }
    let prefix = format!("{}/{{", o.path);
    for target in OPS.iter().filter(|t| t.path.starts_with(&prefix)) {
        let new = target.path[prefix.len()..]
            .split('}')
            .next()
            .unwrap_or_default();
        if path_params(target.path).any(|p| p != new && !path_params(o.path).any(|q| q == p)) {
            continue;
        }
        let parameters: Map<String, Value> = path_params(target.path)
            .map(|p| {
                let from = if p == new {
                    "$response.body#/name".to_owned()
                } else {
                    format!("$request.path.{p}")
                };
                (p.to_owned(), Value::String(from))
            })
            .collect();
        out.insert(
            operation_id(target),
            json!({"operationId": operation_id(target), "parameters": parameters}),
        );
    }
    out
}

fn operation(o: &Op) -> Value {
    let mut parameters: Vec<Value> = path_params(o.path)
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"},
                   "example": path_example(name)})
        })
        .collect();
    parameters.extend(o.query.iter().map(|(name, what)| {
        let schema = match *name {
            "limit" => json!({"type": "integer", "minimum": 1, "maximum": 1000}),
            "false_timeout_rate" => {
                json!({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})
            }
            // drain, series: a flag.
            _ => json!({"type": "string", "enum": ["true", "false"]}),
        };
        json!({"name": name, "in": "query", "required": name == &"false_timeout_rate",
               "description": what, "schema": schema})
    }));
    let mut responses = Map::new();
    let links = links(o);
    for (code, what) in o.responses {
        let content = if o.path == "/metrics" && *code == 200 {
            json!({"text/plain": {"schema": {"type": "string"}}})
        } else if *code == 204 {
            Value::Null
        } else if *code >= 400 {
            json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}})
        } else {
            let schema = o.answer.map_or_else(|| json!({}), schema_ref);
            json!({"application/json": {"schema": schema}})
        };
        let mut r = json!({ "description": what });
        if !content.is_null() {
            r["content"] = content;
        }
        if (200..300).contains(code) && !links.is_empty() {
            r["links"] = Value::Object(links.clone());
        }
        responses.insert(code.to_string(), r);
    }
    responses.insert(
        "401".into(),
        json!({"description": "an admin token is set and the request did not carry it",
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
    );
    let id = operation_id(o);
    let mut out = json!({
        "summary": o.summary,
        "operationId": id,
        "parameters": parameters,
        "responses": responses,
    });
    if let Some((body, schema)) = o.body {
        let mut content = json!({"application/json": {"schema": schema_ref(schema)}});
        if let Some(example) = body_example(schema) {
            content["application/json"]["example"] = example;
        }
        if o.path == "/log-level" {
            content["text/plain"] = json!({"schema": {"type": "string"}});
        }
        out["requestBody"] = json!({"description": body, "required": true, "content": content});
    }
    out
}

/// A duration as text (`crate::units::parse_duration`).
const DURATION: &str = r"^[0-9]{1,6}(\.[0-9]{1,3})?(ns|us|µs|ms|s|m|h)$";
/// One above zero.
const POSITIVE_DURATION: &str = r"^[1-9][0-9]{0,5}(\.[0-9]{1,3})?(ns|us|µs|ms|s|m|h)$";

/// The names the examples use: the proxy `api` (and `db`, from the populate example), its
/// toxic, a partition between the two, a scenario.
fn path_example(param: &str) -> &'static str {
    match param {
        "proxy" => "api",
        "toxic" => "latency_downstream",
        "partition" => "split",
        _ => "blip",
    }
}

/// A request body that works, for people reading the document and for schemathesis's
/// examples phase.
fn body_example(schema: &str) -> Option<Value> {
    Some(match schema {
        "NewProxy" => json!({"name": "api", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:8080"}),
        "ProxyUpdate" => json!({"upstream": "127.0.0.1:8081"}),
        "Populate" => {
            json!([{"name": "db", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:5432"}])
        }
        "NewToxic" => json!({"name": "latency_downstream", "type": "latency",
                             "stream": "downstream", "toxicity": 1,
                             "attributes": {"latency": 100, "jitter": 10}}),
        "ToxicUpdate" => json!({"attributes": {"latency": 200}}),
        "NewPartition" => json!({"name": "split", "a": ["api"], "b": ["db"], "duration": "30s"}),
        "NewScenario" => json!({"name": "blip", "duration": "10s", "step": [
            {"at": "1s", "add": {"proxy": "api", "name": "slow", "type": "latency",
                                 "attributes": {"latency": 200}}},
            {"at": "5s", "remove": {"proxy": "api", "toxic": "slow"}},
        ]}),
        "LogLevel" => json!({"level": "info"}),
        _ => return None,
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// The shapes of bodies and answers. Requests are described as a client should send them;
/// fallacy reads them as leniently as Toxiproxy (keys in any case, unknown keys ignored, `null`
/// as absent), so these are not a list of everything it refuses.
fn schemas() -> Value {
    let string = json!({"type": "string"});
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let duration_text = json!({"type": "string", "pattern": DURATION,
                               "description": "a number and a unit: \"250ms\", \"1.5s\", \"2m\""});
    let duration = json!({"anyOf": [duration_text, {"type": "integer", "minimum": 0}],
                          "description": "a duration (\"250ms\", \"2s\") or milliseconds"});
    // Above zero: a retry window, a ttl, how long a partition or a scenario cycle lasts.
    let positive_text = json!({"type": "string", "pattern": POSITIVE_DURATION,
                               "description": "a number above 0 and a unit: \"250ms\", \"2m\""});
    let positive = json!({"anyOf": [positive_text, {"type": "integer", "minimum": 1}],
                          "description": "a duration above 0 (\"250ms\", \"2s\") or milliseconds"});
    let labels = json!({
        "type": "object",
        "required": ["from", "to"],
        "properties": {"from": {"type": "string", "minLength": 1},
                       "to": {"type": "string", "minLength": 1}},
        "additionalProperties": false,
    });
    let proxy_in = json!({
        "name": {"type": "string", "minLength": 1},
        "listen": {"type": "string", "description": "host:port; empty or absent: 127.0.0.1:0"},
        "upstream": {"type": "string", "minLength": 1},
        "enabled": {"type": "boolean"},
        "protocol": {"enum": ["tcp", "http", "udp"]},
        "fault_header": {"type": "boolean"},
        "rewrite_host": string,
        "abandon_grace": duration,
        "retry_window": positive,
        "idempotency_headers": strings,
        "price_per_gb": {"type": "number", "minimum": 0},
        "max_connections": {"type": "integer", "minimum": 0},
        "labels": labels,
        "upstreams": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "policy": {"enum": ["failover", "round_robin"]},
    });
    let toxic_types: Vec<&str> = crate::toxic::TOXIC_TYPES.to_vec();
    json!({
        "Error": {
            "type": "object",
            "required": ["error", "status"],
            "properties": {
                "error": {"type": "string"},
                "status": {"type": "integer"},
            },
        },
        "Object": {"type": "object"},
        "NewProxy": {"type": "object", "required": ["name", "upstream"], "properties": proxy_in,
                     "dependentRequired": {"policy": ["upstreams"]}},
        "ProxyUpdate": {"type": "object", "properties": proxy_in,
                        "dependentRequired": {"policy": ["upstreams"]}},
        "Populate": {"type": "array", "items": schema_ref("NewProxy")},
        "Proxy": {
            "type": "object",
            "required": ["name", "listen", "upstream", "enabled", "toxics"],
            "properties": {
                "name": string,
                "listen": string,
                "upstream": string,
                "enabled": {"type": "boolean"},
                "protocol": {"enum": ["http", "udp"]},
                "fault_header": {"type": "boolean"},
                "rewrite_host": string,
                "abandon_grace": string,
                "retry_window": string,
                "idempotency_headers": strings,
                "price_per_gb": {"type": "number"},
                "max_connections": {"type": "integer", "minimum": 1},
                "labels": labels,
                "upstreams": strings,
                "policy": {"enum": ["failover", "round_robin"]},
                "partitioned": {
                    "type": "object",
                    "required": ["upstream", "downstream", "mode"],
                    "properties": {
                        "upstream": {"type": "boolean"},
                        "downstream": {"type": "boolean"},
                        "mode": {"enum": ["blackhole", "reset"]},
                    },
                },
                "toxics": {"type": "array", "items": schema_ref("Toxic")},
            },
        },
        "ProxyMap": {"type": "object", "additionalProperties": schema_ref("Proxy")},
        "Populated": {
            "type": "object",
            "required": ["proxies"],
            "properties": {
                "proxies": {"type": ["array", "null"], "items": schema_ref("Proxy")},
            },
        },
        "NewToxic": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "name": string,
                "type": {"enum": toxic_types},
                "stream": {"enum": ["upstream", "downstream"]},
                "toxicity": {"type": "number", "minimum": 0, "maximum": 1},
                "attributes": {"type": "object"},
                "match": {"type": "object", "description": "HTTP proxies: which requests"},
                "ttl": positive,
                "owner": {"type": "string", "maxLength": 200},
            },
        },
        "ToxicUpdate": {
            "type": "object",
            "properties": {
                "toxicity": {"type": "number", "minimum": 0, "maximum": 1},
                "attributes": {"type": "object"},
                "match": {"type": ["object", "null"]},
                "ttl": positive,
                "owner": {"type": "string", "maxLength": 200},
            },
        },
        "Toxic": {
            "type": "object",
            "required": ["name", "type", "stream", "toxicity", "attributes"],
            "properties": {
                "name": string,
                "type": {"enum": toxic_types},
                "stream": {"type": "string", "description": "as the client spelled it"},
                "toxicity": {"type": "number", "minimum": 0, "maximum": 1},
                "attributes": {"type": "object"},
                "match": {},
                "ttl": string,
                "owner": string,
            },
        },
        "ToxicList": {"type": "array", "items": schema_ref("Toxic")},
        "NewPartition": {
            "type": "object",
            "required": ["name", "a", "b"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "a": {"type": "array", "items": string, "minItems": 1, "maxItems": 256},
                "b": {"type": "array", "items": string, "minItems": 1, "maxItems": 256},
                "direction": {"enum": ["both", "a_to_b"]},
                "mode": {"enum": ["blackhole", "reset"]},
                "duration": positive,
                "ttl": positive,
                "owner": string,
            },
            "additionalProperties": false,
        },
        "Partition": {
            "type": "object",
            "required": ["name", "a", "b", "direction", "mode", "duration", "owner", "proxies"],
            "properties": {
                "name": string,
                "a": strings,
                "b": strings,
                "direction": {"enum": ["both", "a_to_b"]},
                "mode": {"enum": ["blackhole", "reset"]},
                "duration": {"type": ["string", "null"]},
                "owner": {"type": ["string", "null"]},
                "proxies": strings,
            },
        },
        "PartitionList": {"type": "array", "items": schema_ref("Partition")},
        "NewScenario": {
            "type": "object",
            "required": ["name", "duration", "step"],
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "duration": positive_text,
                "repeat": {"type": "integer", "minimum": 0, "maximum": 1000},
                "step": {"type": "array", "items": {"type": "object"}, "minItems": 1},
            },
            "additionalProperties": false,
        },
        "ScenarioList": {"type": "array", "items": {"type": "object"}},
        "Audit": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["time", "time_unix_ms", "method", "path", "owner", "status"],
                "properties": {
                    "time": string,
                    "time_unix_ms": {"type": "integer", "minimum": 0},
                    "method": string,
                    "path": string,
                    "owner": {"type": ["string", "null"]},
                    "status": {"type": "integer"},
                },
            },
        },
        "Version": {
            "type": "object",
            "required": ["version"],
            "properties": {"version": string},
        },
        "LogLevel": {
            "type": "object",
            "required": ["level"],
            "properties": {"level": string},
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": string},
        },
    })
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
            "schemas": schemas(),
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer",
                          "description": "Only when fallacy runs with FALLACY_ADMIN_TOKEN"},
            },
        },
        "security": [{}, {"token": []}],
    })
}
