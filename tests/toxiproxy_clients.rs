//! Existing Toxiproxy clients drive fallacy unchanged: the real PyPI `toxiproxy-python` client
//! and the real npm `toxiproxy-node-client` each run a full workflow (create, toxic
//! add/update/remove, disable/enable, populate, reset, destroy, version) against a fallacy server
//! on a real port, checking real traffic through the proxies. `.ci/run` installs both clients
//! (the npm one from `tests/compat/node/package-lock.json`).

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::Fallacy;
use tokio::process::Command;

/// Each script bounds itself at 30 s; this is the outer bound.
const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_python_full_workflow() {
    let f = Fallacy::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/compat/toxiproxy_python_workflow.py"
    );
    let child = Command::new("python3")
        .arg(script)
        .arg(format!("http://{}", f.admin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 is needed for the Toxiproxy client tests");
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("the toxiproxy-python workflow hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "toxiproxy-python workflow failed ({}); install the client with `.ci/run` or \
         `pip install toxiproxy-python`\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toxiproxy_node_full_workflow() {
    let f = Fallacy::start().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/compat/node/workflow.mjs"
    );
    let child = Command::new("node")
        .arg(script)
        .arg(format!("http://{}", f.admin))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node is needed for the Toxiproxy client tests");
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("the toxiproxy-node-client workflow hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "toxiproxy-node-client workflow failed ({}); install the client with `.ci/run` or \
         `npm ci --prefix tests/compat/node`\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}
