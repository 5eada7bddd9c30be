//! The admin API against a real server on 127.0.0.1:0: every route, status code, JSON shape
//! and error case of Toxiproxy 2.12 that clients rely on (PRODUCT.md 4.1).

mod support;

use rstest::rstest;
use serde_json::{Value, json};
use support::{Echo, Fallacy, dead_addr};

async fn with_proxy() -> (Fallacy, Echo) {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    f.proxy("p", echo.addr).await;
    (f, echo)
}

#[tokio::test]
async fn empty_index_is_an_empty_object() {
    let f = Fallacy::start().await;
    assert_eq!(f.call("GET", "/proxies", None).await, (200, json!({})));
}

#[tokio::test]
async fn create_show_index_delete() {
    let f = Fallacy::start().await;
    let up = dead_addr().await.to_string();
    let body = json!({"name": "db", "listen": "127.0.0.1:0", "upstream": up});
    let (status, created) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201);
    let listen = created["listen"].as_str().unwrap();
    assert!(
        listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"),
        "{listen}"
    );
    assert_eq!(
        created,
        json!({"name": "db", "listen": listen, "upstream": up, "enabled": true, "toxics": []})
    );
    assert_eq!(
        f.call("GET", "/proxies/db", None).await,
        (200, created.clone())
    );
    assert_eq!(
        f.call("GET", "/proxies", None).await,
        (200, json!({ "db": created }))
    );
    assert_eq!(
        f.call_raw("DELETE", "/proxies/db", None).await,
        (204, String::new())
    );
    assert_eq!(f.call("GET", "/proxies", None).await, (200, json!({})));
    // The listener is closed with the proxy.
    assert!(tokio::net::TcpStream::connect(listen).await.is_err());
}

#[tokio::test]
async fn success_is_json_and_every_answer_has_a_request_id() {
    let f = Fallacy::start().await;
    for (method, path) in [("GET", "/proxies"), ("GET", "/version"), ("GET", "/nope")] {
        let resp = f
            .http
            .request(method.parse().unwrap(), f.url(path))
            .send()
            .await
            .unwrap();
        assert!(resp.headers().contains_key("x-request-id"), "{path}");
        if resp.status().is_success() {
            assert_eq!(resp.headers()["content-type"], "application/json", "{path}");
        }
    }
}

#[tokio::test]
async fn version() {
    let f = Fallacy::start().await;
    let (status, body) = f.call("GET", "/version", None).await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[rstest]
#[case::null_body("null", 400, "missing required field: name")]
#[case::empty_body("", 400, "bad request body: EOF")]
#[case::malformed("{\"name\":", 400, "bad request body")]
#[case::not_an_object("[1,2]", 400, "bad request body")]
#[case::name_wrong_type(r#"{"name": 5, "upstream": "127.0.0.1:1"}"#, 400, "name")]
#[case::missing_name(r#"{"upstream": "127.0.0.1:1"}"#, 400, "missing required field: name")]
#[case::missing_upstream(r#"{"name": "x"}"#, 400, "missing required field: upstream")]
#[case::enabled_wrong_type(
    r#"{"name":"x","upstream":"127.0.0.1:1","enabled":"yes"}"#,
    400,
    "enabled"
)]
#[case::bad_port(
    r#"{"name":"x","upstream":"127.0.0.1:1","listen":"127.0.0.1:99999"}"#,
    500,
    "listen"
)]
#[case::unresolvable(
    r#"{"name":"x","upstream":"127.0.0.1:1","listen":"no-such-host.invalid:0"}"#,
    500,
    "no-such-host.invalid"
)]
#[tokio::test]
async fn create_rejections(#[case] body: &str, #[case] status: u16, #[case] needle: &str) {
    let f = Fallacy::start().await;
    let (got, answer) = f.call("POST", "/proxies", Some(body)).await;
    assert_eq!(got, status, "{answer}");
    assert_eq!(answer["status"], status);
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains(needle),
        "{message:?} should contain {needle:?}"
    );
    // Nothing was added.
    assert_eq!(f.call("GET", "/proxies", None).await, (200, json!({})));
}

#[tokio::test]
async fn duplicate_name_is_409_and_checked_before_binding() {
    let (f, _echo) = with_proxy().await;
    let before = f.call("GET", "/proxies", None).await;
    // Same name, listen address already in use: 409 (name), not 500 (bind).
    let taken = before.1["p"]["listen"].as_str().unwrap();
    let body = json!({"name": "p", "listen": taken, "upstream": "127.0.0.1:1"});
    let (status, answer) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(
        (status, answer),
        (409, json!({"error": "proxy already exists", "status": 409}))
    );
    assert_eq!(f.call("GET", "/proxies", None).await, before);
}

#[tokio::test]
async fn listen_in_use_is_500_with_the_os_message_and_adds_nothing() {
    let f = Fallacy::start().await;
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap().to_string();
    let body = json!({"name": "x", "listen": taken, "upstream": "127.0.0.1:1"});
    let (status, answer) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 500);
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains(&taken) && message.to_lowercase().contains("in use"),
        "{message}"
    );
    assert_eq!(f.call("GET", "/proxies", None).await, (200, json!({})));
}

#[tokio::test]
async fn keys_are_case_insensitive_unknown_keys_and_content_type_ignored() {
    let f = Fallacy::start().await;
    let resp = f
        .http
        .post(f.url("/proxies"))
        .header("content-type", "text/plain")
        .body(r#"{"NAME": "c", "Upstream": "127.0.0.1:1", "LISTEN": "127.0.0.1:0", "toxics": [1], "extra": {}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["name"], "c");
    assert_eq!(body["toxics"], json!([]));
    assert!(body.get("Logger").is_none());
}

#[tokio::test]
async fn localhost_listen_comes_back_as_127_0_0_1() {
    let f = Fallacy::start().await;
    let body = json!({"name": "l", "listen": "localhost:0", "upstream": "127.0.0.1:1"});
    let (status, answer) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201);
    assert!(
        answer["listen"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{answer}"
    );
}

#[tokio::test]
async fn disabled_proxy_keeps_its_listen_string_and_does_not_listen() {
    let f = Fallacy::start().await;
    let body =
        json!({"name": "d", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1", "enabled": false});
    let (status, answer) = f.call("POST", "/proxies", Some(&body.to_string())).await;
    assert_eq!(status, 201);
    assert_eq!(answer["listen"], "127.0.0.1:0");
    assert_eq!(answer["enabled"], false);
}

#[tokio::test]
async fn update_is_partial_and_toggles() {
    let (f, echo) = with_proxy().await;
    let (_, before) = f.call("GET", "/proxies/p", None).await;
    // Disable: listener closed, connections refused.
    let (status, off) = f
        .call("PATCH", "/proxies/p", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(status, 200);
    assert_eq!(off["enabled"], false);
    assert_eq!(off["upstream"], before["upstream"]);
    let listen = before["listen"].as_str().unwrap();
    assert!(tokio::net::TcpStream::connect(listen).await.is_err());
    // Enable with POST (Toxiproxy's older verb): listens again on the same address.
    let (status, on) = f
        .call("POST", "/proxies/p", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(status, 200);
    assert_eq!(on["enabled"], true);
    assert_eq!(on["listen"], before["listen"]);
    let mut s = support::connect(listen.parse().unwrap()).await;
    support::round_trip(&mut s, b"again").await;
    // Change the upstream only: name, listen, enabled keep their values.
    let other = dead_addr().await.to_string();
    let (status, moved) = f
        .call(
            "PATCH",
            "/proxies/p",
            Some(&json!({"upstream": other}).to_string()),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(moved["upstream"], other.as_str());
    assert_eq!(moved["listen"], before["listen"]);
    assert_eq!(moved["enabled"], true);
    drop(echo);
}

#[tokio::test]
async fn update_listen_rebinds_and_bad_listen_changes_nothing() {
    let (f, _echo) = with_proxy().await;
    let (_, before) = f.call("GET", "/proxies/p", None).await;
    let (status, answer) = f
        .call(
            "PATCH",
            "/proxies/p",
            Some(r#"{"listen": "127.0.0.1:99999"}"#),
        )
        .await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(
        f.call("GET", "/proxies/p", None).await,
        (200, before.clone())
    );
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap().to_string();
    let (status, _) = f
        .call(
            "PATCH",
            "/proxies/p",
            Some(&json!({"listen": taken}).to_string()),
        )
        .await;
    assert_eq!(status, 500);
    assert_eq!(
        f.call("GET", "/proxies/p", None).await,
        (200, before.clone())
    );
    let (status, moved) = f
        .call("PATCH", "/proxies/p", Some(r#"{"listen": "127.0.0.1:0"}"#))
        .await;
    assert_eq!(status, 200);
    assert_ne!(moved["listen"], before["listen"]);
    let mut s = support::connect(moved["listen"].as_str().unwrap().parse().unwrap()).await;
    support::round_trip(&mut s, b"moved").await;
}

/// What axum's extractors refuse (a path segment that is not UTF-8, a repeated query parameter)
/// is the API's JSON error, not axum's plain text. Found by the API fuzz test.
#[rstest]
#[case("GET", "/proxies/%FF", "bad path: ")]
#[case("DELETE", "/proxies/p/toxics/%FE", "bad path: ")]
#[case("GET", "/audit?limit=1&limit=2", "bad query: ")]
#[case("PATCH", "/proxies/p?drain=true&drain=false", "bad query: ")]
#[case("GET", "/scenarios/s?series=true&series=true", "bad query: ")]
#[case(
    "GET",
    "/proxies/p/timeout-advice?false_timeout_rate=0.1&false_timeout_rate=0.2",
    "bad query: "
)]
#[tokio::test]
async fn extractor_rejections_are_json_errors(
    #[case] method: &str,
    #[case] path: &str,
    #[case] prefix: &str,
) {
    let (f, _echo) = with_proxy().await;
    let resp = f
        .http
        .request(method.parse().unwrap(), f.url(path))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with(prefix),
        "{body}"
    );
}

/// An empty listen on update means the default (127.0.0.1:0), as on create: the proxy moves to
/// a new loopback port. It was a 500 ("listen : invalid socket address"), found by the API fuzz
/// test (tests/api_fuzz.rs).
#[tokio::test]
async fn update_with_an_empty_listen_moves_to_the_default() {
    let (f, _echo) = with_proxy().await;
    let (_, before) = f.call("GET", "/proxies/p", None).await;
    let (status, moved) = f
        .call("POST", "/proxies/p", Some(r#"{"listen": ""}"#))
        .await;
    assert_eq!(status, 200, "{moved}");
    let listen = moved["listen"].as_str().unwrap();
    assert!(
        listen.starts_with("127.0.0.1:")
            && !listen.ends_with(":0")
            && moved["listen"] != before["listen"],
        "{moved}"
    );
    let mut s = support::connect(listen.parse().unwrap()).await;
    support::round_trip(&mut s, b"moved").await;
}

#[rstest]
#[case("GET", "/proxies/nope")]
#[case("PATCH", "/proxies/nope")]
#[case("POST", "/proxies/nope")]
#[case("DELETE", "/proxies/nope")]
#[case("GET", "/proxies/nope/toxics")]
#[case("POST", "/proxies/nope/toxics")]
#[case("GET", "/proxies/nope/toxics/t")]
#[case("PATCH", "/proxies/nope/toxics/t")]
#[case("DELETE", "/proxies/nope/toxics/t")]
#[tokio::test]
async fn unknown_proxy_is_404(#[case] method: &str, #[case] path: &str) {
    let f = Fallacy::start().await;
    let (status, body) = f.call(method, path, Some("{}")).await;
    assert_eq!(
        (status, body),
        (404, json!({"error": "proxy not found", "status": 404}))
    );
}

#[rstest]
#[case("GET")]
#[case("PATCH")]
#[case("DELETE")]
#[tokio::test]
async fn unknown_toxic_is_404(#[case] method: &str) {
    let (f, _echo) = with_proxy().await;
    let (status, body) = f.call(method, "/proxies/p/toxics/nope", Some("{}")).await;
    assert_eq!(
        (status, body),
        (404, json!({"error": "toxic not found", "status": 404}))
    );
}

#[tokio::test]
async fn toxic_create_defaults_and_listing_order() {
    let (f, _echo) = with_proxy().await;
    let t = f
        .toxic(
            "p",
            json!({"type": "latency", "attributes": {"latency": 100}}),
        )
        .await;
    assert_eq!(
        t,
        json!({"name": "latency_downstream", "type": "latency", "stream": "downstream",
               "toxicity": 1, "attributes": {"latency": 100, "jitter": 0}})
    );
    let noop = f
        .toxic("p", json!({"type": "noop", "stream": "upstream"}))
        .await;
    assert_eq!(noop["attributes"], json!({}));
    assert_eq!(noop["name"], "noop_upstream");
    f.toxic(
        "p",
        json!({"type": "timeout", "name": "t2", "stream": "upstream"}),
    )
    .await;
    let (status, list) = f.call("GET", "/proxies/p/toxics", None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    // Upstream first, then downstream, each in creation order.
    assert_eq!(names, ["noop_upstream", "t2", "latency_downstream"]);
    let (status, shown) = f.call("GET", "/proxies/p/toxics/t2", None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["attributes"], json!({"timeout": 0}));
    // The proxy shows its toxics too.
    let (_, proxy) = f.call("GET", "/proxies/p", None).await;
    assert_eq!(proxy["toxics"], list);
}

#[rstest]
#[case::latency("latency", json!({"latency": 0, "jitter": 0}))]
#[case::bandwidth("bandwidth", json!({"rate": 0}))]
#[case::slow_close("slow_close", json!({"delay": 0}))]
#[case::timeout("timeout", json!({"timeout": 0}))]
#[case::reset_peer("reset_peer", json!({"timeout": 0}))]
#[case::slicer("slicer", json!({"average_size": 0, "size_variation": 0, "delay": 0}))]
#[case::limit_data("limit_data", json!({"bytes": 0}))]
#[case::noop("noop", json!({}))]
#[tokio::test]
async fn omitted_attributes_are_zero(#[case] kind: &str, #[case] attributes: Value) {
    let (f, _echo) = with_proxy().await;
    let t = f.toxic("p", json!({"type": kind})).await;
    assert_eq!(t["attributes"], attributes);
}

#[tokio::test]
async fn stream_is_case_insensitive_but_stored_as_sent() {
    let (f, _echo) = with_proxy().await;
    let t = f
        .toxic("p", json!({"type": "timeout", "stream": "UpStream"}))
        .await;
    assert_eq!(t["stream"], "UpStream");
    assert_eq!(t["name"], "timeout_UpStream");
}

#[tokio::test]
async fn negative_numbers_are_accepted() {
    let (f, _echo) = with_proxy().await;
    let t = f
        .toxic(
            "p",
            json!({"type": "latency", "attributes": {"latency": -5}}),
        )
        .await;
    assert_eq!(t["attributes"]["latency"], -5);
}

#[rstest]
#[case::bad_stream(
    r#"{"type": "latency", "stream": "sideways"}"#,
    400,
    "stream was invalid, can be either upstream or downstream"
)]
#[case::stream_before_type(
    r#"{"type": "nope", "stream": "sideways"}"#,
    400,
    "stream was invalid, can be either upstream or downstream"
)]
#[case::unknown_type(r#"{"type": "nope"}"#, 400, "invalid toxic type")]
#[case::missing_type(r#"{"name": "x"}"#, 400, "invalid toxic type")]
#[case::type_before_duplicate(r#"{"type": "nope", "name": "existing"}"#, 400, "invalid toxic type")]
#[case::duplicate(r#"{"type": "noop", "name": "existing"}"#, 409, "toxic already exists")]
#[case::duplicate_across_streams(
    r#"{"type": "noop", "name": "existing", "stream": "upstream"}"#,
    409,
    "toxic already exists"
)]
#[case::duplicate_before_attributes(
    r#"{"type": "latency", "name": "existing", "attributes": {"latency": 1.5}}"#,
    409,
    "toxic already exists"
)]
#[case::float_for_integer(
    r#"{"type": "latency", "attributes": {"latency": 1.5}}"#,
    400,
    "attributes.latency"
)]
#[case::exponent_for_integer(
    r#"{"type": "latency", "attributes": {"latency": 1e3}}"#,
    400,
    "attributes.latency"
)]
#[case::string_toxicity(r#"{"type": "latency", "toxicity": "1"}"#, 400, "toxicity")]
#[case::toxicity_above_one(r#"{"type": "latency", "toxicity": 2}"#, 400, "toxicity")]
#[case::attributes_not_object(r#"{"type": "latency", "attributes": 5}"#, 400, "attributes")]
#[case::unitless_string(
    r#"{"type": "latency", "attributes": {"latency": "250"}}"#,
    400,
    "no unit"
)]
#[case::malformed("{", 400, "bad request body")]
#[case::empty("", 400, "bad request body: EOF")]
#[case::unknown_distribution(
    r#"{"type": "latency", "attributes": {"distribution": "gauss"}}"#,
    400,
    "attributes.distribution: unknown distribution"
)]
#[case::p99_below_p50(r#"{"type": "latency", "attributes": {"distribution": "lognormal", "p50": "20ms", "p99": "10ms"}}"#, 400, "attributes.p99: must be at least p50")]
#[case::pareto_shape(
    r#"{"type": "latency", "attributes": {"distribution": "pareto", "scale": 10, "shape": 0}}"#,
    400,
    "attributes.shape"
)]
#[case::correlation_range(
    r#"{"type": "latency", "attributes": {"correlation": 2}}"#,
    400,
    "attributes.correlation: must be within 0..1"
)]
#[case::unreadable_samples(
    r#"{"type": "latency", "attributes": {"distribution": "empirical", "file": "/nonexistent"}}"#,
    400,
    "attributes.file: cannot read"
)]
#[case::unknown_profile(
    r#"{"type": "profile", "attributes": {"name": "5g"}}"#,
    400,
    "attributes.name: unknown profile"
)]
#[case::negative_burst(
    r#"{"type": "bandwidth", "attributes": {"rate": 1, "burst": -1}}"#,
    400,
    "attributes.burst"
)]
#[case::loss_without_rate(r#"{"type": "loss"}"#, 400, "attributes.rate: required")]
#[case::loss_rate_range(
    r#"{"type": "loss", "attributes": {"rate": 1.5}}"#,
    400,
    "attributes.rate: must be a probability between 0 and 1, got 1.5"
)]
#[case::loss_rate_and_bursts(
    r#"{"type": "loss", "attributes": {"rate": 0.1, "p": 0.1, "r": 0.5}}"#,
    400,
    "attributes.rate: give either rate"
)]
#[case::loss_p_without_r(
    r#"{"type": "loss", "attributes": {"p": 0.1}}"#,
    400,
    "attributes.r: required with p"
)]
#[case::loss_endless_burst(
    r#"{"type": "loss", "attributes": {"p": 0.1, "r": 0}}"#,
    400,
    "attributes.r: must be above 0"
)]
#[case::loss_good_with_rate(
    r#"{"type": "loss", "attributes": {"rate": 0.1, "loss_good": 0.1}}"#,
    400,
    "attributes.loss_good: belongs to the Gilbert-Elliott model"
)]
#[case::loss_negative_rtt(
    r#"{"type": "loss", "attributes": {"rate": 0.1, "rtt": -5}}"#,
    400,
    "attributes.rtt: must not be negative"
)]
#[case::loss_mss(
    r#"{"type": "loss", "attributes": {"rate": 0.1, "mss": 10}}"#,
    400,
    "attributes.mss: must be 64 to 65535 bytes, got 10"
)]
#[case::loss_rate_string(
    r#"{"type": "loss", "attributes": {"rate": "often"}}"#,
    400,
    "attributes.rate"
)]
#[case::corrupt_range(
    r#"{"type": "corrupt", "attributes": {"rate": -0.1}}"#,
    400,
    "attributes.rate: must be a fraction of bytes between 0 and 1"
)]
#[tokio::test]
async fn toxic_create_rejections(#[case] body: &str, #[case] status: u16, #[case] message: &str) {
    let (f, _echo) = with_proxy().await;
    f.toxic("p", json!({"type": "noop", "name": "existing"}))
        .await;
    let (_, before) = f.call("GET", "/proxies/p/toxics", None).await;
    let (got, answer) = f.call("POST", "/proxies/p/toxics", Some(body)).await;
    assert_eq!(got, status, "{answer}");
    assert_eq!(answer["status"], status);
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains(message),
        "{error:?} should contain {message:?}"
    );
    assert_eq!(
        f.call("GET", "/proxies/p/toxics", None).await,
        (200, before)
    );
}

#[tokio::test]
async fn duration_strings_are_accepted_as_an_extension() {
    let (f, _echo) = with_proxy().await;
    let t = f
        .toxic(
            "p",
            json!({"type": "latency", "attributes": {"latency": "1.5s", "jitter": "250us"}}),
        )
        .await;
    assert_eq!(t["attributes"], json!({"latency": 1500, "jitter": 0.25}));
}

#[tokio::test]
async fn toxic_update_merges_attributes_and_replaces_toxicity() {
    let (f, _echo) = with_proxy().await;
    f.toxic(
        "p",
        json!({"type": "latency", "name": "l", "attributes": {"latency": 100, "jitter": 10}}),
    )
    .await;
    let (status, t) = f
        .call(
            "PATCH",
            "/proxies/p/toxics/l",
            Some(r#"{"attributes": {"JITTER": 20}}"#),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(t["attributes"], json!({"latency": 100, "jitter": 20}));
    assert_eq!(t["toxicity"], 1);
    let (status, t) = f
        .call("POST", "/proxies/p/toxics/l", Some(r#"{"toxicity": 0.5}"#))
        .await;
    assert_eq!(status, 200);
    assert_eq!(t["toxicity"], 0.5);
    assert_eq!(t["attributes"], json!({"latency": 100, "jitter": 20}));
    // A rejected update changes nothing.
    let (status, _) = f
        .call(
            "PATCH",
            "/proxies/p/toxics/l",
            Some(r#"{"attributes": {"latency": 1.5}}"#),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = f
        .call("PATCH", "/proxies/p/toxics/l", Some(r#"{"toxicity": 7}"#))
        .await;
    assert_eq!(status, 400);
    let (_, now) = f.call("GET", "/proxies/p/toxics/l", None).await;
    assert_eq!(now, t);
}

#[tokio::test]
async fn toxic_delete_is_204_with_empty_body() {
    let (f, _echo) = with_proxy().await;
    f.toxic("p", json!({"type": "noop", "name": "n"})).await;
    assert_eq!(
        f.call_raw("DELETE", "/proxies/p/toxics/n", None).await,
        (204, String::new())
    );
    assert_eq!(
        f.call("GET", "/proxies/p/toxics", None).await,
        (200, json!([]))
    );
}

#[tokio::test]
async fn reset_removes_toxics_and_enables_everything() {
    let (f, _echo) = with_proxy().await;
    f.toxic(
        "p",
        json!({"type": "latency", "attributes": {"latency": 100}}),
    )
    .await;
    let body = json!({"name": "off", "upstream": "127.0.0.1:1", "enabled": false});
    assert_eq!(
        f.call("POST", "/proxies", Some(&body.to_string())).await.0,
        201
    );
    f.call("PATCH", "/proxies/p", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(
        f.call_raw("POST", "/reset", None).await,
        (204, String::new())
    );
    let (_, all) = f.call("GET", "/proxies", None).await;
    for name in ["p", "off"] {
        assert_eq!(all[name]["enabled"], true, "{all}");
        assert_eq!(all[name]["toxics"], json!([]), "{all}");
    }
}

#[tokio::test]
async fn populate_creates_keeps_identical_replaces_different_and_leaves_others() {
    let (f, echo) = with_proxy().await;
    f.toxic("p", json!({"type": "noop", "name": "kept"})).await;
    let (_, p) = f.call("GET", "/proxies/p", None).await;
    let other = json!({"name": "other", "upstream": "127.0.0.1:1"});
    assert_eq!(
        f.call("POST", "/proxies", Some(&other.to_string())).await.0,
        201
    );
    let (_, other) = f.call("GET", "/proxies/other", None).await;
    let list = json!([
        {"name": "p", "listen": p["listen"], "upstream": echo.addr.to_string()},
        {"name": "new", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:2"},
    ]);
    let (status, answer) = f.call("POST", "/populate", Some(&list.to_string())).await;
    assert_eq!(status, 201, "{answer}");
    let proxies = answer["proxies"].as_array().unwrap();
    assert_eq!(proxies.len(), 2);
    // Identical: kept with its toxics.
    assert_eq!(proxies[0], p);
    assert_eq!(proxies[1]["name"], "new");
    // Unlisted: untouched.
    assert_eq!(f.call("GET", "/proxies/other", None).await, (200, other));
    // Different upstream: replaced (toxics gone).
    let list = json!([{"name": "p", "listen": p["listen"], "upstream": "127.0.0.1:3"}]);
    let (status, answer) = f.call("POST", "/populate", Some(&list.to_string())).await;
    assert_eq!(status, 201);
    assert_eq!(answer["proxies"][0]["upstream"], "127.0.0.1:3");
    assert_eq!(answer["proxies"][0]["toxics"], json!([]));
}

#[tokio::test]
async fn populate_empty_list_answers_null() {
    let f = Fallacy::start().await;
    assert_eq!(
        f.call("POST", "/populate", Some("[]")).await,
        (201, json!({"proxies": null}))
    );
}

#[tokio::test]
async fn populate_validates_everything_first() {
    let f = Fallacy::start().await;
    let list = json!([
        {"name": "a", "upstream": "127.0.0.1:1"},
        {"name": "b"},
    ]);
    let (status, answer) = f.call("POST", "/populate", Some(&list.to_string())).await;
    assert_eq!(
        (status, answer),
        (
            400,
            json!({"error": "missing required field: upstream at proxy 2", "status": 400, "proxies": null})
        )
    );
    assert_eq!(f.call("GET", "/proxies", None).await, (200, json!({})));
    let (status, answer) = f.call("POST", "/populate", Some(r#"{"name": "a"}"#)).await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test]
async fn populate_bind_failure_keeps_earlier_entries() {
    let f = Fallacy::start().await;
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = blocker.local_addr().unwrap().to_string();
    let list = json!([
        {"name": "a", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"},
        {"name": "b", "listen": taken, "upstream": "127.0.0.1:1"},
    ]);
    let (status, answer) = f.call("POST", "/populate", Some(&list.to_string())).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["status"], 500);
    assert_eq!(answer["proxies"][0]["name"], "a");
    let (_, all) = f.call("GET", "/proxies", None).await;
    assert!(all.get("a").is_some() && all.get("b").is_none(), "{all}");
}

#[rstest]
#[case("GET", "/proxies")]
#[case("POST", "/proxies")]
#[case("POST", "/reset")]
#[case("GET", "/version")]
#[tokio::test]
async fn browsers_are_refused(#[case] method: &str, #[case] path: &str) {
    let f = Fallacy::start().await;
    let resp = f
        .http
        .request(method.parse().unwrap(), f.url(path))
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn unknown_route_404_wrong_method_405() {
    let f = Fallacy::start().await;
    let (status, body) = f.call("GET", "/nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["status"], 404);
    let (status, body) = f.call("DELETE", "/proxies", None).await;
    assert_eq!(status, 405);
    assert_eq!(body["status"], 405);
    let (status, _) = f.call("PUT", "/reset", None).await;
    assert_eq!(status, 405);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let f = Fallacy::start().await;
    assert_eq!(f.call("GET", "/healthz", None).await.0, 200);
    assert_eq!(f.call("GET", "/readyz", None).await.0, 200);
    let (status, _) = f.call_raw("GET", "/metrics", None).await;
    assert_eq!(status, 200);
}

/// Embedded in another program, fallacy has not installed the logger: the log level is not
/// its to change.
#[tokio::test]
async fn the_log_level_is_not_adjustable_without_fallacys_logger() {
    let f = Fallacy::start().await;
    let (status, body) = f.call("GET", "/log-level", None).await;
    assert_eq!(status, 501, "{body}");
    let (status, body) = f
        .call("PUT", "/log-level", Some(r#"{"level":"debug"}"#))
        .await;
    assert_eq!(status, 501, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot be changed"),
        "{body}"
    );
}

/// A body over 1 MiB is refused whole (400, naming the limit) and changes nothing.
#[tokio::test]
async fn an_oversized_body_is_refused_and_changes_nothing() {
    let f = Fallacy::start().await;
    let padding = "x".repeat(fallacy::admin::MAX_BODY + 1);
    let body = format!(
        r#"{{"name": "big", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:1", "pad": "{padding}"}}"#
    );
    let (status, err) = f.call("POST", "/proxies", Some(&body)).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("over 1048576 bytes"),
        "{err}"
    );
    assert_eq!(f.call("GET", "/proxies/big", None).await.0, 404);
}

/// No CORS: a preflight gets no `Access-Control-Allow-*` header, so a web page on another
/// origin cannot read or drive the API, whatever the browser.
#[tokio::test]
async fn cross_origin_requests_get_no_cors_headers() {
    let f = Fallacy::start().await;
    for method in ["OPTIONS", "GET", "POST"] {
        let resp = f
            .http
            .request(method.parse().unwrap(), f.url("/proxies"))
            .header("origin", "http://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        let cors: Vec<_> = resp
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{method}: {cors:?}");
        assert_ne!(resp.status(), 204, "{method}: no preflight answer");
    }
}
