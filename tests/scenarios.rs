//! Scenarios played through the store: a runner test on paused time, and the `/scenarios` API
//! on real time (start, status, stop with revert, bad input).

mod support;

use std::time::Duration;

use fallacy::scenario::{Scenario, runner};
use fallacy::state::Store;
use serde_json::json;
use support::{Fallacy, bare_store, new_proxy};
use tokio_util::sync::CancellationToken;

async fn toxic_names(store: &Store, proxy: &str) -> Vec<String> {
    store
        .toxics(proxy)
        .await
        .unwrap()
        .iter()
        .map(|t| t.name.clone())
        .collect()
}

/// On paused time: each change lands at its instant, the phase follows, and the cycle's end
/// undoes what was left (here a disabled proxy and a switched upstream).
#[tokio::test(start_paused = true)]
async fn the_runner_applies_each_change_at_its_time_and_undoes_the_rest() {
    let stop = CancellationToken::new();
    let store = bare_store(&stop);
    store.create(new_proxy("db")).await.unwrap();
    store.create(new_proxy("cache")).await.unwrap();
    let scenario = Scenario::from_toml(
        r#"
name = "brownout"
duration = "60s"
[[step]]
at = "10s"
name = "slow"
add = { proxy = "db", name = "slow", type = "latency", attributes = { latency = 100 } }
[[step]]
at = "20s"
update = { proxy = "db", toxic = "slow", attributes = { latency = 500 } }
disable = "cache"
upstream = { proxy = "db", upstream = "127.0.0.1:7" }
[[step]]
at = "30s"
name = "recovered"
remove = { proxy = "db", toxic = "slow" }
"#,
    )
    .unwrap();
    runner::check(&store, &scenario).await.unwrap();
    let running = runner::start(store.clone(), scenario).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(toxic_names(&store, "db").await.is_empty());
    assert_eq!(running.to_json(true, false)["next"]["at_ms"], 10_000);
    tokio::time::sleep(Duration::from_secs(10)).await; // 15 s
    assert_eq!(toxic_names(&store, "db").await, ["slow"]);
    assert_eq!(running.to_json(true, false)["phase"], "slow");
    tokio::time::sleep(Duration::from_secs(10)).await; // 25 s
    let slow = store.toxic("db", "slow").await.unwrap();
    assert_eq!(slow.kind.attributes()["latency"], 500);
    assert!(!store.get("cache").await.unwrap().enabled);
    assert_eq!(store.get("db").await.unwrap().upstream, "127.0.0.1:7");
    tokio::time::sleep(Duration::from_secs(10)).await; // 35 s
    assert!(toxic_names(&store, "db").await.is_empty());
    assert_eq!(running.to_json(true, false)["phase"], "recovered");
    tokio::time::sleep(Duration::from_secs(30)).await; // 65 s: the cycle is over
    assert!(
        store.get("cache").await.unwrap().enabled,
        "undone at the end"
    );
    assert_eq!(store.get("db").await.unwrap().upstream, "127.0.0.1:9");
    assert!(running.done());
    assert_eq!(running.to_json(true, false)["errors"], json!([]));
    // Each phase runs from its step to the next, the last to the cycle's end; the series
    // is sampled every 300 ms (60 s / 200).
    let report = running.to_json(true, true);
    let phases: Vec<_> = report["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["phase"].as_str().unwrap().to_owned(),
                p["start_ms"].as_u64().unwrap(),
                p["end_ms"].as_u64().unwrap(),
                p["open"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        [
            ("baseline".into(), 0, 10_000, false),
            ("slow".into(), 10_000, 20_000, false),
            ("step 2".into(), 20_000, 30_000, false),
            ("recovered".into(), 30_000, 60_000, false),
        ]
    );
    assert_eq!(report["sample_every_ms"], 300);
    let series = report["series"].as_array().unwrap();
    assert_eq!(series.len(), 200, "one sample per 300 ms over 60 s");
    assert_eq!(series[40]["phase"], "slow");
    assert_eq!(report["state"], "done");
    let changes: Vec<_> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["at_ms"].as_u64().unwrap(), c["change"].as_str().unwrap()))
        .collect();
    assert_eq!(changes[0], (10_000, "add db/slow"));
    assert_eq!(changes.last().unwrap().0, 60_000, "the undoing at the end");
    stop.cancel();
}

#[tokio::test]
async fn the_api_starts_shows_and_stops_a_scenario_and_stopping_reverts_it() {
    let f = Fallacy::start().await;
    let echo = support::Echo::start().await;
    f.proxy("db", echo.addr).await;
    let toml = r#"
name = "blip"
duration = "30s"
[[step]]
at = "0s"
add = { proxy = "db", name = "slow", type = "latency", attributes = { latency = 50 } }
[[step]]
at = "20s"
remove = { proxy = "db", toxic = "slow" }
"#;
    let (status, s) = f.call("POST", "/scenarios", Some(toml)).await;
    assert_eq!(status, 201, "{s}");
    assert_eq!(s["name"], "blip");
    assert_eq!(s["next"]["change"], "add db/slow");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, toxics) = f.call("GET", "/proxies/db/toxics", None).await;
        if toxics.as_array().unwrap().len() == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first step never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, s) = f.call("GET", "/scenarios/blip", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (s["state"].as_str(), s["phase"].as_str()),
        (Some("running"), Some("step 1"))
    );
    assert_eq!(s["next"]["change"], "remove db/slow");
    let (status, err) = f.call("POST", "/scenarios", Some(toml)).await;
    assert_eq!(status, 409, "{err}");
    let (status, last) = f.call("DELETE", "/scenarios/blip", None).await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(last["state"], "stopped");
    let phases = last["phases"].as_array().unwrap();
    assert_eq!(phases.last().unwrap()["phase"], "step 1");
    assert_eq!(phases.last().unwrap()["open"], false);
    let (_, toxics) = f.call("GET", "/proxies/db/toxics", None).await;
    assert_eq!(toxics, json!([]), "stopping reverts the cycle's changes");
    let (status, _) = f.call("GET", "/scenarios/blip", None).await;
    assert_eq!(status, 404);
    let (_, list) = f.call("GET", "/scenarios", None).await;
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn bad_scenarios_are_refused_before_anything_is_applied() {
    let f = Fallacy::start().await;
    let echo = support::Echo::start().await;
    f.proxy("db", echo.addr).await;
    f.proxy("app", echo.addr).await;
    for (body, words) in [
        (
            json!({"name": "s", "duration": "10s", "step": [{"at": "1s", "add": {"proxy": "nope", "type": "latency"}}]}),
            "step[0].proxy: no proxy named \"nope\"",
        ),
        (
            json!({"name": "s", "duration": "10s", "step": [{"at": "1s", "remove": {"proxy": "db", "toxic": "ghost"}}]}),
            "step[0].toxic: no toxic \"ghost\"",
        ),
        (
            json!({"name": "s", "duration": "10s", "step": [{"at": "1s", "add": {"proxy": "db", "type": "warp"}}]}),
            "step[0].add",
        ),
        (
            json!({"name": "s", "duration": "10s", "step": [
                {"at": "1s", "add": {"proxy": "db", "name": "a", "type": "latency"}},
                {"at": "5s", "add": {"proxy": "db", "type": "http_abort"}}]}),
            "step[1].add.type",
        ),
        (
            json!({"name": "s", "duration": "10s", "step": [{"at": "5s", "heal": "x"}, {"at": "2s", "heal": "y"}]}),
            "step[1].at",
        ),
        (
            json!({"name": "s", "duration": "10s", "step": [{"at": "1s", "heal": "x"}]}),
            "step[0].heal: no partition \"x\", nor one made by an earlier step",
        ),
        (
            json!({"name": "s", "duration": "10s", "step": [{"at": "1s", "partition": {"name": "p", "a": ["mars"], "b": ["db"]}}]}),
            "step[0].partition.a[0]: unknown node or proxy \"mars\"",
        ),
        (
            json!({"name": "s", "duration": "10s", "step": [
                {"at": "1s", "partition": {"name": "p", "a": ["db"], "b": ["app"]}},
                {"at": "2s", "partition": {"name": "p", "a": ["db"], "b": ["app"]}}]}),
            "step[1].partition.name: a partition \"p\" is already in force",
        ),
    ] {
        let (status, err) = f.call("POST", "/scenarios", Some(&body.to_string())).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(
            err["error"].as_str().unwrap().contains(words),
            "{body}: {err}"
        );
    }
    let (_, toxics) = f.call("GET", "/proxies/db/toxics", None).await;
    assert_eq!(toxics, json!([]), "nothing applied");
    let (status, err) = f.call("POST", "/scenarios", Some("name = ")).await;
    assert_eq!(status, 400, "{err}");
    let (status, _) = f.call("DELETE", "/scenarios/none", None).await;
    assert_eq!(status, 404);
    let (status, err) = f.call("GET", "/scenarios/none?series=maybe", None).await;
    assert_eq!(status, 400);
    assert!(
        err.to_string().contains("series must be true or false"),
        "{err}"
    );
}
