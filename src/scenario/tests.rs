use proptest::prelude::*;
use serde_json::json;

use super::*;

const EXAMPLE: &str = r#"
name = "db-brownout"
duration = "120s"
repeat = 1
[[step]]
at = "0s"
add = { proxy = "db", name = "slow", type = "latency", attributes = { distribution = "lognormal", p50 = "20ms", p99 = "300ms" } }
[[step]]
at = "30s"
update = { proxy = "db", toxic = "slow", attributes = { p99 = "2s" } }
[[step]]
at = "60s"
remove = { proxy = "db", toxic = "slow" }
partition = { name = "split", a = ["db"], b = ["app"], direction = "both" }
[[step]]
at = "90s"
heal = "split"
"#;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn the_product_example_plans_its_changes_in_order() {
    let s = Scenario::from_toml(EXAMPLE).unwrap();
    assert_eq!(
        (s.name.as_str(), s.duration, s.repeat),
        ("db-brownout", secs(120), 1)
    );
    let plan = s.plan();
    let at: Vec<u64> = plan.iter().map(|c| c.at.as_secs()).collect();
    assert_eq!(
        at,
        [0, 30, 60, 60, 90],
        "everything undone by its own steps: no end changes"
    );
    assert_eq!(plan[0].phase, "step 1");
    assert!(matches!(&plan[2].action, Action::RemoveToxic { name, .. } if name == "slow"));
    assert!(matches!(&plan[3].action, Action::Partition { name, .. } if name == "split"));
    // Two cycles: the second starts at 120 s.
    let twice = Scenario { repeat: 2, ..s }.plan();
    assert_eq!(twice.len(), 10);
    assert_eq!(twice[5].at, secs(120));
    assert_eq!(twice[5].cycle, 1);
}

#[test]
fn a_cycle_undoes_what_it_left_in_effect() {
    let s = Scenario::from_json(&json!({
        "name": "left-over", "duration": "10s",
        "step": [
            {"at": "1s", "name": "brownout", "add": {"proxy": "db", "type": "latency", "attributes": {"latency": 100}}},
            {"at": "2s", "disable": "cache", "upstream": {"proxy": "api", "upstream": "127.0.0.1:9"}},
            {"at": "3s", "partition": {"name": "p", "a": ["x"], "b": ["y"]}},
        ]
    }))
    .unwrap();
    let plan = s.plan();
    let end: Vec<&Action> = plan
        .iter()
        .filter(|c| c.phase == "end")
        .map(|c| &c.action)
        .collect();
    assert_eq!(
        end,
        [
            &Action::RemoveToxic {
                proxy: "db".into(),
                name: "latency_downstream".into()
            },
            &Action::Heal("p".into()),
            &Action::Enable("cache".into()),
            &Action::RestoreUpstream("api".into()),
        ]
    );
    assert!(
        plan.iter()
            .filter(|c| c.phase == "end")
            .all(|c| c.at == secs(10))
    );
    assert_eq!(plan[0].phase, "brownout");
}

#[test]
fn bad_scenarios_name_the_field() {
    let base = |steps: Value| json!({"name": "s", "duration": "60s", "step": steps});
    for (v, path, words) in [
        (
            json!({"duration": "1s", "step": [{"at": "0s", "heal": "x"}]}),
            "name",
            "required",
        ),
        (
            json!({"name": "s", "step": [{"at": "0s", "heal": "x"}]}),
            "duration",
            "required",
        ),
        (
            json!({"name": "s", "duration": "0s", "step": [{"at": "0s", "heal": "x"}]}),
            "duration",
            "more than 0",
        ),
        (
            json!({"name": "s", "duration": "1s", "repeat": -1, "step": [{"at": "0s", "heal": "x"}]}),
            "repeat",
            "0 (until stopped)",
        ),
        (
            json!({"name": "s", "duration": "1s", "step": []}),
            "step",
            "at least one",
        ),
        (
            json!({"name": "s", "duration": "1s", "steps": []}),
            "steps",
            "unknown field",
        ),
        (
            base(json!([{"at": "10s", "heal": "x"}, {"at": "5s", "heal": "y"}])),
            "step[1].at",
            "comes before the step above it",
        ),
        (
            base(json!([{"at": "-5s", "heal": "x"}])),
            "step[0].at",
            "not a duration",
        ),
        (
            base(json!([{"at": "61s", "heal": "x"}])),
            "step[0].at",
            "past the scenario's duration",
        ),
        (base(json!([{"at": "1s"}])), "step[0]", "changes nothing"),
        (
            base(json!([{"at": "1s", "explode": true}])),
            "step[0].explode",
            "unknown field",
        ),
        (
            base(json!([{"at": "1s", "add": {"type": "latency"}}])),
            "step[0].add.proxy",
            "required",
        ),
        (
            base(json!([{"at": "1s", "update": {"proxy": "db"}}])),
            "step[0].update.toxic",
            "required",
        ),
        (
            base(json!([{"at": "1s", "heal": 5}])),
            "step[0].heal",
            "must be a name",
        ),
        (
            base(json!([{"at": "1s", "remove": [{"proxy": "db", "toxic": "a"}, {"proxy": "db"}]}])),
            "step[0].remove[1].toxic",
            "required",
        ),
        (
            base(json!([{"at": "1s", "heal": []}])),
            "step[0].heal",
            "empty list",
        ),
    ] {
        let e = Scenario::from_json(&v).unwrap_err();
        assert_eq!(e.path, path, "{v}");
        assert!(e.message.contains(words), "{v}: {}", e.message);
    }
    let e = Scenario::from_toml("name = \"s\"\nduration = 5").unwrap_err();
    assert_eq!(e.path, "duration");
    // A syntax error names its line and column.
    let e = Scenario::from_toml("name = \"s\"\nduration = = 5").unwrap_err();
    assert!(e.path.starts_with("scenario (line 2, column"), "{}", e.path);
    let e = Scenario::from_text("{\"name\": }").unwrap_err();
    assert!(e.path.starts_with("scenario (line 1, column"), "{}", e.path);
}

#[test]
fn a_list_makes_several_changes_of_one_kind_in_order() {
    let s = Scenario::from_toml(
        r#"
name = "s"
duration = "10s"
[[step]]
at = "1s"
remove = [{ proxy = "db", toxic = "a" }, { proxy = "db", toxic = "b" }]
heal = ["x", "y"]
"#,
    )
    .unwrap();
    assert_eq!(
        s.steps[0].actions,
        [
            Action::RemoveToxic {
                proxy: "db".into(),
                name: "a".into()
            },
            Action::RemoveToxic {
                proxy: "db".into(),
                name: "b".into()
            },
            Action::Heal("x".into()),
            Action::Heal("y".into()),
        ]
    );
}

/// A small universe of actions for the property test.
fn action() -> impl Strategy<Value = Action> {
    let proxy = prop::sample::select(vec!["db", "api"]);
    let toxic = prop::sample::select(vec!["slow", "lossy"]);
    prop_oneof![
        (proxy.clone(), toxic.clone(), 1u64..500).prop_map(|(p, t, ms)| Action::AddToxic {
            proxy: p.into(),
            name: t.into(),
            toxic: json!({"name": t, "type": "latency", "attributes": {"latency": ms}}),
        }),
        (proxy.clone(), toxic.clone(), 1u64..500).prop_map(|(p, t, ms)| Action::UpdateToxic {
            proxy: p.into(),
            name: t.into(),
            patch: json!({"attributes": {"jitter": ms}}),
        }),
        (proxy.clone(), toxic).prop_map(|(p, t)| Action::RemoveToxic {
            proxy: p.into(),
            name: t.into()
        }),
        prop::sample::select(vec!["s1", "s2"]).prop_map(|n| Action::Partition {
            name: n.into(),
            body: json!({"name": n})
        }),
        prop::sample::select(vec!["s1", "s2"]).prop_map(|n| Action::Heal(n.into())),
        proxy.clone().prop_map(|p| Action::Disable(p.into())),
        proxy.clone().prop_map(|p| Action::Enable(p.into())),
        proxy.prop_map(|p| Action::Upstream {
            proxy: p.into(),
            upstream: "127.0.0.1:9".into()
        }),
    ]
}

proptest! {
    /// Folding the plan up to any instant gives the state that applying the steps up to that
    /// instant gives; a cycle ends where it began; the plan is in time order.
    #[test]
    fn folding_the_plan_is_applying_the_steps(
        raw in prop::collection::vec((0u64..60, prop::collection::vec(action(), 1..4)), 1..12),
        repeat in 1u32..4,
    ) {
        let mut raw = raw;
        raw.sort_by_key(|(at, _)| *at);
        let steps: Vec<Step> = raw
            .iter()
            .enumerate()
            .map(|(i, (at, actions))| Step { at: secs(*at), phase: format!("step {}", i + 1), actions: actions.clone() })
            .collect();
        let s = Scenario { name: "p".into(), duration: secs(60), repeat, steps: steps.clone() };
        let plan = s.plan();
        prop_assert!(plan.windows(2).all(|w| w[0].at <= w[1].at), "sorted");
        for cycle in 0..repeat {
            let offset = secs(60) * cycle;
            for t in (0..=60).step_by(7) {
                let mut folded = Model::default();
                for c in plan.iter().filter(|c| c.cycle == cycle && c.at <= offset + secs(t) && c.phase != "end") {
                    folded.apply(&c.action);
                }
                let mut direct = Model::default();
                for step in steps.iter().filter(|st| st.at <= secs(t)) {
                    for a in &step.actions {
                        direct.apply(a);
                    }
                }
                prop_assert_eq!(&folded, &direct, "cycle {} at {}s", cycle, t);
            }
            let mut whole = Model::default();
            for c in plan.iter().filter(|c| c.cycle == cycle) {
                whole.apply(&c.action);
            }
            prop_assert_eq!(whole, Model::default(), "cycle {} undone at its end", cycle);
        }
    }
}
