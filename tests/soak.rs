//! The soak's short version: `bench/soak --quick --seed 1 --strict` against the debug binary.
//! About 20 s of load over TCP (200 busy connections, 20 streaming ones) and HTTP through
//! fallacy while toxics, partitions and proxies are added and removed at random: every byte of
//! the checksum traffic is checked end to end, every admin call must answer within 100 ms
//! (toxic removal with the busy connections open included), and RSS, file descriptors and tasks
//! must be flat at rest and back to idle at the end. The 30-minute version and its method are
//! in bench/README.md ("Soak: `bench/soak`").

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

/// The whole run takes about 50 s; this bounds it whatever happens.
const LIMIT: Duration = Duration::from_secs(150);

#[tokio::test]
async fn soak_quick() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("soak.md");
    let stdout = std::fs::File::create(dir.path().join("stdout.txt")).unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
    let mut child = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/soak"))
        .args(["--quick", "--seed", "1", "--strict", "--fallacy-bin"])
        .arg(env!("CARGO_BIN_EXE_fallacy"))
        .arg("--out")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // bench/soak execs the Python driver, whose children (fallacy, the upstreams, the
        // load) die with it (PR_SET_PDEATHSIG).
        .kill_on_drop(true)
        .spawn()
        .expect("bench/soak starts");
    let status = tokio::time::timeout(LIMIT, child.wait()).await;
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    match status {
        Ok(Ok(status)) => assert!(
            status.success(),
            "bench/soak --quick failed ({status}):\n{}\n--- stderr ---\n{}",
            read("stdout.txt"),
            read("stderr.txt")
        ),
        Ok(Err(err)) => panic!("bench/soak: {err}"),
        Err(_) => {
            let _ = child.kill().await;
            panic!(
                "bench/soak --quick did not finish within {LIMIT:?}:\n--- stderr ---\n{}",
                read("stderr.txt")
            );
        }
    }
}
