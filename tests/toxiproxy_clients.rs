//! Existing Toxiproxy clients drive fallacy unchanged: the real PyPI `toxiproxy-python` client
//! and the real npm `toxiproxy-node-client` each run a full workflow (create, toxic
//! add/update/remove, disable/enable, populate, reset, destroy, version) against a fallacy server
//! on a real port, checking real traffic through the proxies; and the real Chaos Toolkit CLI runs
//! `tests/compat/chaostoolkit/experiment.json` with the real `chaostoolkit-toxiproxy` driver
//! (every action and probe it has, real echo traffic after each step, rollbacks that delete its
//! proxies). `.ci/run` installs all three (the npm one from `tests/compat/node/package-lock.json`).

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Echo, Fallacy};
use tokio::process::Command;

/// Each script bounds itself at 30 s; this is the outer bound.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs a client's workflow script (`program script http://admin`) against a fresh fallacy and
/// asserts it passed; `hint` says how to install the client.
async fn workflow(program: &str, script: &str, client: &str, hint: &str) {
    let f = Fallacy::start().await;
    let child = Command::new(program)
        .arg(script)
        .arg(format!("http://{}", f.admin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program} is needed for the {client} test: {e}"));
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the {client} workflow hung"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{client} workflow failed ({}); install the client with `.ci/run` or `{hint}`\n\
         --- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_python_full_workflow() {
    workflow(
        "python3",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/compat/toxiproxy_python_workflow.py"
        ),
        "toxiproxy-python",
        "pip install toxiproxy-python",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_node_full_workflow() {
    workflow(
        "node",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/compat/node/workflow.mjs"
        ),
        "toxiproxy-node-client",
        "npm ci --prefix tests/compat/node",
    )
    .await;
}

/// The real Chaos Toolkit CLI runs `tests/compat/chaostoolkit/experiment.json` against fallacy:
/// the real `chaostoolkit-toxiproxy` driver creates two proxies, adds and removes every toxic it
/// has helpers for (latency both ways, bandwidth, slow_close, timeout, slicer, limit_data),
/// disables/enables, moves the listen address and the upstream, resets, reads everything back
/// with its probes, and its rollbacks delete both proxies. After every step
/// `tests/compat/chaostoolkit/fallacy_traffic.py` sends real echo traffic through the proxy and
/// fails the run when the traffic is not what the toxics in force should give.
///
/// The CLI is started as `python3 -m chaostoolkit` (the `chaos` script's own entry point) so it is
/// the python3 `.ci/run` installs into; `--no-version-check` and an empty settings file (no
/// notifications, no controls) keep it off the network: it only talks to 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaostoolkit_toxiproxy_experiment() {
    let f = Fallacy::start().await;
    let echo = Echo::start().await;
    let dead = support::dead_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.yaml");
    std::fs::write(&settings, "# no notifications, no controls\n{}\n").unwrap();
    let journal_path = dir.path().join("journal.json");
    let log_path = dir.path().join("chaostoolkit.log");
    let compat = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/chaostoolkit");
    let experiment = format!("{compat}/experiment.json");
    let pythonpath = match std::env::var("PYTHONPATH") {
        Ok(p) if !p.is_empty() => format!("{compat}:{p}"),
        _ => compat.to_owned(),
    };
    let child = support::loopback_client("python3")
        .args(["-m", "chaostoolkit", "--no-version-check", "--settings"])
        .arg(&settings)
        .arg("--log-file")
        .arg(&log_path)
        .args(["--log-file-level", "debug", "run", "--journal-path"])
        .arg(&journal_path)
        .arg(&experiment)
        // Anything chaos leaves in its working directory goes to the temporary one.
        .current_dir(dir.path())
        .env("CTK_TOXIPROXY_HOST", f.admin.ip().to_string())
        .env("CTK_TOXIPROXY_PORT", f.admin.port().to_string())
        .env("CTK_UPSTREAM_HOST", echo.addr.ip().to_string())
        .env("CTK_UPSTREAM_PORT", echo.addr.port().to_string())
        .env("CTK_DEAD_PORT", dead.port().to_string())
        // fallacy_traffic.py, the experiment's traffic probes.
        .env("PYTHONPATH", pythonpath)
        .spawn()
        .expect("python3 is needed for the Toxiproxy client tests");
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("the Chaos Toolkit experiment hung")
        .unwrap();
    let journal_text = std::fs::read_to_string(&journal_path).unwrap_or_default();
    let journal: Value = serde_json::from_str(&journal_text).unwrap_or(Value::Null);
    let report = |why: &str| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        format!(
            "{why} (exit: {}); install Chaos Toolkit and the driver with `.ci/run` or \
             `pip install chaostoolkit==1.19.0 chaostoolkit-toxiproxy==0.3.1`\n--- journal\n\
             {journal_text}\n--- stdout\n{}\n--- stderr\n{}\n--- chaostoolkit.log\n{log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        )
    };

    assert_eq!(
        journal["status"],
        "completed",
        "{}",
        report("not completed")
    );
    assert_eq!(journal["deviated"], false, "{}", report("deviated"));
    assert_eq!(
        journal["steady_states"]["after"]["steady_state_met"],
        true,
        "{}",
        report("steady state not met after the method")
    );
    let planned: Value = serde_json::from_str(&std::fs::read_to_string(&experiment).unwrap())
        .expect("experiment.json is JSON");
    let runs = journal["run"].as_array().cloned().unwrap_or_default();
    let rollbacks = journal["rollbacks"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        runs.len(),
        planned["method"].as_array().unwrap().len(),
        "{}",
        report("not every method activity ran")
    );
    assert_eq!(
        rollbacks.len(),
        planned["rollbacks"].as_array().unwrap().len(),
        "{}",
        report("not every rollback ran")
    );
    for run in runs.iter().chain(&rollbacks) {
        let name = &run["activity"]["name"];
        assert_eq!(
            run["status"],
            "succeeded",
            "{}",
            report(&format!("activity {name} did not succeed"))
        );
    }
    assert!(out.status.success(), "{}", report("chaos exited non-zero"));

    // What the driver's probes read back from fallacy along the way.
    let output = |name: &str| {
        runs.iter()
            .find(|r| r["activity"]["name"] == name)
            .map(|r| r["output"].clone())
            .unwrap_or_else(|| panic!("{}", report(&format!("no run named {name}"))))
    };
    let expect = [
        ("proxy-exists", json!(true)),
        (
            "toxics-with-latency",
            json!([{"name": "ctk_latency", "type": "latency", "stream": "downstream",
                    "toxicity": 1, "attributes": {"latency": 300, "jitter": 0}}]),
        ),
        ("enabled-after-disable", json!(false)),
        ("standby-enabled-at-creation", json!(false)),
        ("toxics-after-reset", json!([])),
        ("standby-enabled-after-reset", json!(true)),
    ];
    for (name, want) in expect {
        assert_eq!(output(name), want, "{}", report(&format!("probe {name}")));
    }
    // modify_proxy's new listen address is the one the traffic then went through.
    let moved = output("listen-after-move");
    let moved_port = output("echo-on-new-listen")["port"].clone();
    assert_eq!(
        moved,
        json!(format!("127.0.0.1:{moved_port}")),
        "{}",
        report("listen-after-move")
    );

    // The rollbacks left nothing behind.
    let (status, proxies) = f.call("GET", "/proxies", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        proxies,
        json!({}),
        "{}",
        report("the rollbacks left proxies behind")
    );
}
