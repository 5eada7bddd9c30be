//! `fallacy scenario run` end to end: the real binary, a real load command, the report; and
//! every input it must refuse before anything is applied.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use support::Fallacy;

/// Runs the binary with `args` (bounded), from the project root.
async fn fallacy(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_fallacy"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("fallacy scenario run did not end within 60 s")
        .expect("cannot run the fallacy binary")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.display().to_string()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn phase<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["scenario"]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == name)
        .unwrap_or_else(|| panic!("no phase {name}: {report:#}"))
}

/// A Python client loads the lab while a 50 ms delay comes and goes: the report's phase
/// figures show it (p50 up by 50 ms in the slow phase only), and the charts are written.
#[tokio::test]
async fn a_scenario_with_a_real_load_command_reports_the_injected_latency_per_phase() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "e2e.toml",
        r#"
name = "e2e"
duration = "6s"
[[step]]
at = "2s"
name = "slow"
add = { proxy = "api", name = "slow", type = "latency", attributes = { latency = 50 } }
[[step]]
at = "4s"
name = "recovered"
remove = { proxy = "api", toxic = "slow" }
"#,
    );
    let out = dir.path().join("report");
    let load = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scenario/load.py");
    let run = fallacy(&[
        "scenario",
        "run",
        &file,
        "--out",
        out.to_str().unwrap(),
        "--",
        "python3",
        load,
        "30",
    ])
    .await;
    assert!(
        run.status.success(),
        "{}\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["ended_by"], "the timeline ended");
    assert_eq!(report["scenario"]["state"], "done");
    let names: Vec<&str> = report["scenario"]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["baseline", "slow", "recovered"]);
    let p50 = |name: &str| phase(&report, name)["total"]["p50_ms"].as_f64().unwrap();
    let (base, slow, after) = (p50("baseline"), p50("slow"), p50("recovered"));
    assert!(
        (48.0..65.0).contains(&(slow - base)),
        "p50 baseline {base} ms, slow {slow} ms: the 50 ms should show"
    );
    assert!(after < base + 10.0, "recovered p50 {after} ms");
    for name in names {
        let f = &phase(&report, name)["total"];
        assert!(f["requests"].as_u64().unwrap() > 5, "{name}: {f}");
        assert_eq!(f["errors"], 0, "{name}: {f}");
    }
    let log = std::fs::read_to_string(out.join("command.log")).unwrap();
    assert!(!log.contains("error:"), "the load saw errors: {log}");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| slow |") && md.contains("![Throughput](throughput.svg)"),
        "{md}"
    );
    for chart in ["latency", "throughput", "errors", "amplification"] {
        let svg = std::fs::read_to_string(out.join(format!("{chart}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{chart}"
        );
        assert!(svg.contains(">\nslow\n<"), "{chart}.svg marks the phases");
        assert!(svg.contains("<polyline"), "{chart}.svg draws lines");
    }
    assert!(
        text(&run.stdout).contains("| slow |"),
        "the table is printed"
    );
}

/// Against a running server: the run ends with its command, and stopping reverts the
/// scenario there.
#[tokio::test]
async fn the_run_ends_with_its_command_and_reverts_the_target() {
    let f = Fallacy::start().await;
    let echo = support::Echo::start().await;
    f.proxy("db", echo.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "s.json",
        &json!({"name": "long", "duration": "60s", "step": [
            {"at": "0s", "add": {"proxy": "db", "name": "slow", "type": "latency", "attributes": {"latency": 10}}}
        ]})
        .to_string(),
    );
    let out = dir.path().join("r");
    let target = f.admin.to_string();
    let run = fallacy(&[
        "scenario",
        "run",
        &file,
        "--target",
        &target,
        "--out",
        out.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo \"$FALLACY_ADMIN $FALLACY_PROXY_DB\"; sleep 1",
    ])
    .await;
    assert!(run.status.success(), "{}", text(&run.stderr));
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["ended_by"], "the command ended");
    assert_eq!(report["scenario"]["state"], "stopped");
    assert_eq!(report["command"]["success"], true);
    let log = std::fs::read_to_string(out.join("command.log")).unwrap();
    let listen = f.call("GET", "/proxies/db", None).await.1["listen"].clone();
    assert_eq!(
        log.trim(),
        format!("http://{target} {}", listen.as_str().unwrap()),
        "the command finds the admin API and the proxies in its environment"
    );
    assert_eq!(f.call("GET", "/proxies/db/toxics", None).await.1, json!([]));
    assert_eq!(f.call("GET", "/scenarios", None).await.1, json!([]));
}

/// Each refusal exits 2 with words that say what to fix, and leaves the target untouched.
#[tokio::test]
async fn bad_input_is_refused_before_anything_is_applied() {
    let f = Fallacy::start().await;
    let echo = support::Echo::start().await;
    f.proxy("db", echo.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let good = write(
        dir.path(),
        "good.toml",
        "name = \"s\"\nduration = \"30s\"\n[[step]]\nat = \"0s\"\nadd = { proxy = \"db\", type = \"latency\", attributes = { latency = 5 } }\n",
    );
    let unknown = write(
        dir.path(),
        "unknown.toml",
        "name = \"s\"\nduration = \"30s\"\n[[step]]\nat = \"0s\"\nadd = { proxy = \"nope\", type = \"latency\" }\n",
    );
    let syntax = write(dir.path(), "syntax.toml", "name = \"s\"\nduration = = 5\n");
    let target = f.admin.to_string();
    let dead = support::dead_addr().await.to_string();
    let out = dir.path().join("r").display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![&good, "--target", &target, "--", "/nonexistent/load"],
            "cannot start the command \"/nonexistent/load\"",
        ),
        (
            vec![
                &good,
                "--target",
                &target,
                "--",
                "sh",
                "-c",
                "echo broken >&2; exit 3",
            ],
            "ended at once (exit status: 3), before the scenario started; its last output:\n  broken",
        ),
        (vec![&good, "--target", &dead], "does not answer"),
        (
            vec![&good, "--target", "https://127.0.0.1:1"],
            "plain http://",
        ),
        (vec![&good, "--target", "127.0.0.1"], "give the port"),
        (
            vec![&unknown, "--target", &target, "--", "sleep", "30"],
            "step[0].proxy: no proxy named \"nope\"",
        ),
        (vec![&syntax], "syntax.toml: scenario (line 2, column"),
        (
            vec!["/nonexistent/s.toml"],
            "/nonexistent/s.toml: cannot read",
        ),
    ];
    for (args, words) in cases {
        let mut all = vec!["scenario", "run", "--out", &out];
        all.extend(args.iter().copied());
        let started = std::time::Instant::now();
        let run = fallacy(&all).await;
        let err = text(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(words), "{args:?}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            f.call("GET", "/proxies/db/toxics", None).await.1,
            json!([]),
            "{args:?}"
        );
        assert_eq!(
            f.call("GET", "/scenarios", None).await.1,
            json!([]),
            "{args:?}"
        );
    }
    let check = fallacy(&["scenario", "check", &unknown]).await;
    assert_eq!(check.status.code(), Some(2));
    assert!(
        text(&check.stderr).contains("no proxy named \"nope\""),
        "{}",
        text(&check.stderr)
    );
}

/// Every example in config/scenarios/ checks against the lab it is written for.
#[tokio::test]
async fn every_example_scenario_checks_against_the_lab() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/scenarios");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "administrator.toml",
            "bandwidth.toml",
            "cost.toml",
            "homogeneous.toml",
            "latency.toml",
            "reliable.toml",
            "retry-storm.toml",
            "secure.toml",
            "topology.toml",
        ]
    );
    for name in names {
        let path = format!("config/scenarios/{name}");
        let check = fallacy(&["scenario", "check", &path]).await;
        assert!(check.status.success(), "{name}: {}", text(&check.stderr));
        assert!(text(&check.stdout).contains(": ok ("), "{name}");
    }
}

/// A target with an admin token: refused without it, played with it (from the environment).
#[tokio::test]
async fn a_target_that_wants_a_token_gets_it_from_the_environment() {
    let f = Fallacy::with_config(fallacy::config::Config {
        admin_token: Some("s3cret".into()),
        ..Default::default()
    })
    .await;
    let echo = support::Echo::start().await;
    f.proxy("db", echo.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "s.toml",
        "name = \"s\"\nduration = \"1s\"\n[[step]]\nat = \"0s\"\ndisable = \"db\"\n",
    );
    let out = dir.path().join("r").display().to_string();
    let target = f.admin.to_string();
    let args = ["scenario", "run", &file, "--target", &target, "--out", &out];
    let refused = fallacy(&args).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("wants an admin token: set FALLACY_ADMIN_TOKEN"),
        "{}",
        text(&refused.stderr)
    );
    let played = tokio::process::Command::new(env!("CARGO_BIN_EXE_fallacy"))
        .args(args)
        .env("FALLACY_ADMIN_TOKEN", "s3cret")
        .kill_on_drop(true)
        .output();
    let played = tokio::time::timeout(Duration::from_secs(30), played)
        .await
        .unwrap()
        .unwrap();
    assert!(played.status.success(), "{}", text(&played.stderr));
    let report = read_json(&Path::new(&out).join("report.json"));
    assert_eq!(report["scenario"]["state"], "done");
    assert_eq!(report["scenario"]["errors"], json!([]));
}
