//! The real `fallacy` binary: start-up line, exit codes and error messages.
//!
//! Every child runs inside a [`Child`] guard that kills it when the test ends, however it ends,
//! and every wait is bounded. Servers bind `127.0.0.1:0` (one test binds `0.0.0.0:0` on
//! purpose); readiness is the `fallacy admin API on http://ADDR` line, never a sleep.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Bound on start-up (the first stdout line) and on an exit that is expected.
const WAIT: Duration = Duration::from_secs(20);

/// A running `fallacy`, killed on drop. Its stdout arrives line by line on a channel and its
/// stderr is collected, both by threads, so it never blocks on a full pipe.
struct Child {
    child: std::process::Child,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Child {
    fn spawn(args: &[&str]) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fallacy"));
        command.args(args);
        Child::start(command)
    }

    /// Runs the binary under `ulimit -n limit` (through sh, which then execs it, so the PID is
    /// fallacy's own).
    fn spawn_with_fd_limit(limit: u32, args: &[&str]) -> Child {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_fallacy"))
            .args(args);
        Child::start(command)
    }

    fn start(mut command: Command) -> Child {
        // Logs at info unless the test decided otherwise (set or removed RUST_LOG itself).
        if !command.get_envs().any(|(k, _)| k == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot spawn the fallacy binary");
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Child {
            child,
            stdout,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line, within [`WAIT`].
    fn line(&self) -> String {
        self.stdout.recv_timeout(WAIT).unwrap_or_else(|e| {
            panic!(
                "no stdout line within {WAIT:?} ({e}); stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// Waits for the `fallacy admin API on http://ADDR` line and returns ADDR.
    fn admin(&self) -> SocketAddr {
        let line = self.line();
        let addr = line
            .strip_prefix("fallacy admin API on http://")
            .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"));
        addr.parse()
            .unwrap_or_else(|e| panic!("{addr:?} is not an address: {e}"))
    }

    /// Waits for the process to exit, within [`WAIT`]; then stderr is complete.
    fn exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread reach EOF, so stderr holds everything.
                let until = Instant::now() + Duration::from_secs(5);
                while Arc::strong_count(&self.stderr) > 1 && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fallacy still running after {WAIT:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything left on stdout, once the process has exited (bounded by [`WAIT`]).
    fn rest_of_stdout(&self) -> String {
        let mut text = String::new();
        // The channel disconnects when the reader thread reaches EOF.
        while let Ok(line) = self.stdout.recv_timeout(WAIT) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    /// Waits for an exit and returns the code with stderr.
    fn exit_code(&mut self) -> (Option<i32>, String) {
        let status = self.exit();
        (status.code(), self.stderr())
    }

    fn sigterm(&self) {
        self.signal("TERM");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{name} failed");
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET over a fresh connection, every step bounded; returns status and parsed JSON body.
fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    get_with(addr, path, "")
}

/// A GET with extra header lines (each ending in CRLF).
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, Value) {
    request(addr, "GET", path, headers, "")
}

/// Any request, with a body.
fn request(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).expect("connect to the admin API");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    (status, body)
}

/// Writes a config file into a fresh temporary directory (removed when the guard drops).
fn config_file(name: &str, text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path.to_str().unwrap().to_owned())
}

#[test]
fn serve_announces_the_admin_api_answers_and_exits_0_on_sigterm() {
    let mut fallacy = Child::spawn(&["serve", "--admin", "127.0.0.1:0"]);
    let admin = fallacy.admin();
    assert!(admin.ip().is_loopback());
    assert_ne!(admin.port(), 0, "the real port is printed");

    let (status, body) = get(admin, "/version");
    assert_eq!(status, 200);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    let (status, body) = get(admin, "/proxies");
    assert_eq!((status, body), (200, serde_json::json!({})));

    let start = Instant::now();
    fallacy.sigterm();
    let (code, stderr) = fallacy.exit_code();
    assert_eq!(
        code,
        Some(0),
        "SIGTERM drains and exits 0; stderr:\n{stderr}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn serve_applies_the_proxies_and_toxics_of_a_config_file() {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_dir, path) = config_file(
        "fallacy.toml",
        &format!(
            r#"
[server]
seed = 7

[[proxy]]
name = "db"
listen = "127.0.0.1:0"
upstream = "{}"

[[proxy.toxic]]
name = "slow"
type = "latency"
stream = "upstream"
toxicity = 0.5
attributes = {{ latency = "250ms", jitter = 10 }}
"#,
            upstream.local_addr().unwrap()
        ),
    );
    let fallacy = Child::spawn(&["serve", "--config", &path, "--admin", "127.0.0.1:0"]);
    let admin = fallacy.admin();

    let (status, proxies) = get(admin, "/proxies");
    assert_eq!(status, 200);
    let db = &proxies["db"];
    assert_eq!(db["enabled"], true, "{proxies}");
    let listen: SocketAddr = db["listen"].as_str().unwrap().parse().unwrap();
    assert!(listen.ip().is_loopback());
    assert_ne!(listen.port(), 0, "the bound port is shown, not 0: {db}");
    assert_eq!(
        db["toxics"],
        serde_json::json!([{
            "name": "slow",
            "type": "latency",
            "stream": "upstream",
            "toxicity": 0.5,
            "attributes": {"latency": 250, "jitter": 10}
        }])
    );
    // The listener is really there (the line is printed once every proxy listens).
    TcpStream::connect_timeout(&listen, WAIT).expect("the configured proxy accepts");
}

#[test]
fn seed_is_accepted() {
    let fallacy = Child::spawn(&["serve", "--admin", "127.0.0.1:0", "--seed", "42"]);
    let (status, _) = get(fallacy.admin(), "/version");
    assert_eq!(status, 200);

    let mut bad = Child::spawn(&["serve", "--admin", "127.0.0.1:0", "--seed", "many"]);
    let (code, stderr) = bad.exit_code();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--seed"), "{stderr}");
}

#[test]
fn a_non_loopback_admin_needs_insecure_admin() {
    let mut refused = Child::spawn(&["serve", "--admin", "0.0.0.0:0"]);
    let (code, stderr) = refused.exit_code();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--insecure-admin"), "{stderr}");
    assert!(stderr.contains("0.0.0.0:0"), "names the address: {stderr}");

    // The same address from a config file: the message names the file and key.
    let (_dir, path) = config_file("admin.toml", "[admin]\nlisten = \"0.0.0.0:0\"\n");
    let mut refused = Child::spawn(&["serve", "--config", &path]);
    let (code, stderr) = refused.exit_code();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--insecure-admin"), "{stderr}");
    assert!(stderr.contains(&path), "names the file: {stderr}");

    let allowed = Child::spawn(&["serve", "--admin", "0.0.0.0:0", "--insecure-admin"]);
    let admin = allowed.admin();
    assert!(admin.ip().is_unspecified(), "{admin}");
    let loopback = SocketAddr::from(([127, 0, 0, 1], admin.port()));
    assert_eq!(get(loopback, "/version").0, 200);
}

/// With a token from the environment the admin API may listen beyond loopback, and every
/// route but the health checks wants it.
/// The token can also come from a file (a mounted secret) or from `[admin] token`; the command
/// line wins, and the token never shows in the logs, even at debug level.
#[test]
fn an_admin_token_from_a_file_or_the_config_guards_the_api_and_is_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "from-file-7f3a\n").unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_fallacy"));
    command
        .args(["serve", "--admin", "0.0.0.0:0", "--admin-token-file"])
        .arg(&token_file)
        .env("RUST_LOG", "debug");
    let server = Child::start(command);
    let admin = SocketAddr::from(([127, 0, 0, 1], server.admin().port()));
    assert_eq!(get(admin, "/proxies").0, 401);
    assert_eq!(
        get_with(
            admin,
            "/proxies",
            "Authorization: Bearer from-file-7f3a\r\n"
        )
        .0,
        200,
        "the trailing newline is not part of the token"
    );
    assert_eq!(
        get_with(admin, "/proxies", "Authorization: Bearer wrong\r\n").0,
        401
    );
    assert!(
        !server.stderr().contains("from-file-7f3a"),
        "{}",
        server.stderr()
    );

    let (_cfg_dir, path) = config_file("token.toml", "[admin]\ntoken = \"from-config-9c1d\"\n");
    let from_config = Child::spawn(&["serve", "--admin", "0.0.0.0:0", "--config", &path]);
    let admin = SocketAddr::from(([127, 0, 0, 1], from_config.admin().port()));
    assert_eq!(get(admin, "/proxies").0, 401);
    assert_eq!(
        get_with(
            admin,
            "/proxies",
            "Authorization: Bearer from-config-9c1d\r\n"
        )
        .0,
        200
    );
    // --admin-token wins over the file's.
    let mut both = Command::new(env!("CARGO_BIN_EXE_fallacy"));
    both.args(["serve", "--admin", "127.0.0.1:0", "--config", &path])
        .env("FALLACY_ADMIN_TOKEN", "from-env-22");
    let both = Child::start(both);
    let admin = both.admin();
    assert_eq!(
        get_with(admin, "/proxies", "Authorization: Bearer from-env-22\r\n").0,
        200
    );
    assert_eq!(
        get_with(
            admin,
            "/proxies",
            "Authorization: Bearer from-config-9c1d\r\n"
        )
        .0,
        401
    );

    // Bad input exits 2 naming what is wrong, and never echoes a token.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let missing = dir.path().join("missing");
    for (args, words) in [
        (
            vec!["--admin-token-file".to_owned(), empty.display().to_string()],
            "the file is empty",
        ),
        (
            vec![
                "--admin-token-file".to_owned(),
                missing.display().to_string(),
            ],
            "cannot read",
        ),
        (
            vec![
                "--admin-token-file".to_owned(),
                token_file.display().to_string(),
                "--admin-token".to_owned(),
                "x".to_owned(),
            ],
            "cannot be used with",
        ),
    ] {
        let mut all = vec![
            "serve".to_owned(),
            "--admin".to_owned(),
            "127.0.0.1:0".to_owned(),
        ];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let (code, stderr) = Child::spawn(&all).exit_code();
        assert_eq!(code, Some(2), "{all:?}: {stderr}");
        assert!(stderr.contains(words), "{all:?}: {stderr}");
        assert!(!stderr.contains("from-file-7f3a"), "{stderr}");
    }
    let (_bad_dir, bad) = config_file("bad.toml", "[admin]\ntoken = \" \"\n");
    let (code, stderr) = Child::spawn(&["serve", "--config", &bad]).exit_code();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("admin.token: must not be empty"),
        "{stderr}"
    );
}

#[test]
fn an_admin_token_from_the_environment_guards_every_route_but_health() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fallacy"));
    command
        .args(["serve", "--admin", "0.0.0.0:0"])
        .env("FALLACY_ADMIN_TOKEN", "s3cret");
    let server = Child::start(command);
    let admin = server.admin();
    let admin = SocketAddr::from(([127, 0, 0, 1], admin.port()));
    let (status, body) = get(admin, "/proxies");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    assert_eq!(
        get_with(admin, "/proxies", "Authorization: Bearer wrong\r\n").0,
        401
    );
    assert_eq!(
        get_with(admin, "/proxies", "Authorization: Bearer s3cre\r\n").0,
        401
    );
    assert_eq!(
        get_with(admin, "/proxies", "Authorization: s3cret\r\n").0,
        401
    );
    assert_eq!(
        get_with(admin, "/proxies", "Authorization: Bearer s3cret\r\n").0,
        200
    );
    assert_eq!(
        get(admin, "/metrics").0,
        401,
        "metrics name every proxy: guarded too"
    );
    assert_eq!(get(admin, "/healthz").0, 200, "health checks need no token");

    // --metrics-public (here from the environment) opens /metrics alone.
    let mut public = Command::new(env!("CARGO_BIN_EXE_fallacy"));
    public
        .args(["serve", "--admin", "127.0.0.1:0"])
        .env("FALLACY_ADMIN_TOKEN", "s3cret")
        .env("FALLACY_METRICS_PUBLIC", "true");
    let public = Child::start(public);
    let admin = public.admin();
    assert_eq!(get(admin, "/metrics").0, 200);
    assert_eq!(get(admin, "/proxies").0, 401);

    // The container's other way: no token, a private network.
    let mut insecure = Command::new(env!("CARGO_BIN_EXE_fallacy"));
    insecure
        .args(["serve", "--admin", "0.0.0.0:0"])
        .env("FALLACY_INSECURE_ADMIN", "true");
    let insecure = Child::start(insecure);
    let port = insecure.admin().port();
    assert_eq!(
        get(SocketAddr::from(([127, 0, 0, 1], port)), "/proxies").0,
        200
    );

    let mut empty = Command::new(env!("CARGO_BIN_EXE_fallacy"));
    empty
        .args(["serve", "--admin", "127.0.0.1:0"])
        .env("FALLACY_ADMIN_TOKEN", " ");
    let (code, stderr) = Child::start(empty).exit_code();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("FALLACY_ADMIN_TOKEN) is empty"), "{stderr}");
}

/// `--log-format json` writes one JSON object per line; `PUT /log-level` changes the filter
/// while serving, and refuses what `RUST_LOG` would not take.
#[test]
fn logs_go_out_as_json_lines_and_their_level_changes_at_runtime() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fallacy"));
    command
        .args(["--log-format", "json", "serve", "--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "info");
    let mut server = Child::start(command);
    let admin = server.admin();
    assert_eq!(get(admin, "/log-level"), (200, json!({"level": "info"})));
    let (status, body) = request(admin, "PUT", "/log-level", "", r#"{"level":"debug"}"#);
    assert_eq!((status, &body), (200, &json!({"level": "debug"})));
    assert_eq!(get(admin, "/log-level").1, json!({"level": "debug"}));
    assert_eq!(
        request(admin, "PUT", "/log-level", "", "warn,fallacy=trace").0,
        200
    );
    for (bad, words) in [
        (r#"{"level":"loud=="}"#, "level: \"loud==\""),
        (r#"{"level":5}"#, "level: must be a string"),
        (r#"{}"#, "level: required"),
        ("", "level: empty"),
    ] {
        let (status, body) = request(admin, "PUT", "/log-level", "", bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(words),
            "{bad}: {body}"
        );
    }
    assert_eq!(
        get(admin, "/log-level").1,
        json!({"level": "warn,fallacy=trace"}),
        "unchanged"
    );
    server.sigterm();
    server.exit();
    let stderr = server.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("log level changed")),
        "the change is logged: {stderr}"
    );
}

/// SIGHUP reloads the config file: a new proxy appears; an invalid file is logged and changes
/// nothing.
#[test]
fn sighup_reloads_the_config_file() {
    let proxy = |name: &str| {
        format!(
            "[[proxy]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\n"
        )
    };
    let (_dir, path) = config_file("fallacy.toml", &proxy("x"));
    let server = Child::spawn(&["serve", "--admin", "127.0.0.1:0", "--config", &path]);
    let admin = server.admin();
    let names = || -> Vec<String> {
        get(admin, "/proxies")
            .1
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(names(), ["x"]);
    std::fs::write(&path, proxy("x") + &proxy("y")).unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + WAIT;
    while names() != ["x", "y"] {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload: {}",
            server.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::write(&path, "[[proxy]]\nname = 7\n").unwrap();
    server.signal("HUP");
    let deadline = std::time::Instant::now() + WAIT;
    while !server.stderr().contains("config not reloaded") {
        assert!(std::time::Instant::now() < deadline, "{}", server.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(names(), ["x", "y"], "the running config is kept");
}

#[test]
fn an_admin_address_in_use_exits_1_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut fallacy = Child::spawn(&["serve", "--admin", &addr]);
    let (code, stderr) = fallacy.exit_code();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&addr), "names {addr}: {stderr}");
    assert!(stderr.contains("admin"), "{stderr}");
}

#[test]
fn a_proxy_address_in_use_exits_1_naming_the_proxy() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (_dir, path) = config_file(
        "busy.toml",
        &format!("[[proxy]]\nname = \"busy\"\nlisten = \"{addr}\"\nupstream = \"127.0.0.1:9\"\n"),
    );
    let mut fallacy = Child::spawn(&["serve", "--config", &path, "--admin", "127.0.0.1:0"]);
    let (code, stderr) = fallacy.exit_code();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("\"busy\""), "names the proxy: {stderr}");
    assert!(stderr.contains(&addr.to_string()), "names {addr}: {stderr}");
    // Nothing was announced: the proxies are bound before the line is printed.
    assert!(fallacy.stdout.try_recv().is_err());
}

#[test]
fn an_invalid_config_exits_2_with_file_line_and_column() {
    let (_dir, path) = config_file(
        "bad.toml",
        "[[proxy]]\nname = \"db\"\nupstream = \"db:5432\"\ncolour = \"red\"\n",
    );
    for args in [
        vec!["serve", "--config", &path, "--admin", "127.0.0.1:0"],
        vec!["check", &path],
    ] {
        let mut fallacy = Child::spawn(&args);
        let (code, stderr) = fallacy.exit_code();
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{path}:4:1: proxy[0].colour: unknown field `colour`"
            )),
            "{args:?}: {stderr}"
        );
    }

    let mut missing = Child::spawn(&["serve", "--config", "/nonexistent/fallacy.toml"]);
    let (code, stderr) = missing.exit_code();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/fallacy.toml"), "{stderr}");
}

#[test]
fn help_works_and_usage_errors_exit_2() {
    let mut help = Child::spawn(&["--help"]);
    assert_eq!(help.exit().code(), Some(0));
    let usage = help.rest_of_stdout();
    for word in ["serve", "check", "Usage"] {
        assert!(usage.contains(word), "--help lacks {word:?}:\n{usage}");
    }

    let mut serve_help = Child::spawn(&["serve", "--help"]);
    assert_eq!(serve_help.exit().code(), Some(0));
    let text = serve_help.rest_of_stdout();
    for flag in ["--config", "--admin", "--seed", "--insecure-admin"] {
        assert!(text.contains(flag), "serve --help lacks {flag}:\n{text}");
    }

    for args in [
        &["frobnicate"][..],
        &[][..],
        &["serve", "--no-such-flag"][..],
        &["check"][..],
    ] {
        let mut fallacy = Child::spawn(args);
        let (code, stderr) = fallacy.exit_code();
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(!stderr.is_empty(), "{args:?} says why");
    }
}

/// An echo upstream on a thread of this process (not under the child's descriptor limit),
/// for at most 60 s.
fn echo_upstream() -> SocketAddr {
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        upstream.set_nonblocking(true).unwrap();
        while Instant::now() < deadline {
            match upstream.accept() {
                Ok((mut s, _)) => {
                    std::thread::spawn(move || {
                        s.set_nonblocking(false).unwrap();
                        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    upstream_addr
}

/// Whether `ping` comes back through `s` within 2 s (a refused connection is reset at once).
fn echoes(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 4];
    s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
}

/// Runs fallacy under `ulimit -n fds` with one proxy `p` to an echo upstream and `server`
/// lines in `[server]`; returns it, its admin address, the proxy's address and the config's
/// directory guard.
fn serve_under_fd_limit(
    fds: u32,
    server: &str,
) -> (Child, SocketAddr, SocketAddr, tempfile::TempDir) {
    let upstream = echo_upstream();
    let config = format!(
        "[server]\n{server}\n[[proxy]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n"
    );
    let (dir, path) = config_file("fd.toml", &config);
    let fallacy =
        Child::spawn_with_fd_limit(fds, &["serve", "--admin", "127.0.0.1:0", "--config", &path]);
    let admin = fallacy.admin();
    let (_, proxy) = get(admin, "/proxies/p");
    let listen = proxy["listen"].as_str().unwrap().parse().unwrap();
    (fallacy, admin, listen, dir)
}

/// Waits (bounded) until a new connection through `listen` echoes again.
fn assert_serves_again(fallacy: &Child, listen: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect_timeout(&listen, Duration::from_secs(2)) {
            if echoes(&mut s) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "listener never recovered; stderr:\n{}",
            fallacy.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// File-descriptor exhaustion slows the proxy down but never kills its listener: once the
/// descriptors are free again, the same listener serves. (`max_connections = 0` turns the
/// limit off, so the descriptors really run out.)
#[test]
fn the_listener_survives_file_descriptor_exhaustion() {
    let (fallacy, _admin, listen, _dir) = serve_under_fd_limit(64, "max_connections = 0");
    // Each proxied connection holds two descriptors: 60 connections exhaust 64, so accept
    // itself fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..60 {
        if let Ok(s) = TcpStream::connect_timeout(&listen, Duration::from_millis(300)) {
            held.push(s);
        }
    }
    // Wait (bounded) until accept itself has failed for want of descriptors.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fallacy.stderr().contains("accept failed") {
        assert!(
            Instant::now() < deadline,
            "the limit was never reached ({} connections held)",
            held.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(held);
    assert_serves_again(&fallacy, listen);
}

/// By default the connection limit comes from the open-file limit, so a flood is refused
/// (reset, counted, logged once) before the descriptors run out: the connections already
/// open keep working, the admin API keeps answering, and the proxy serves again after.
#[test]
fn the_automatic_limit_refuses_a_flood_before_descriptors_run_out() {
    // 128 descriptors: 64 + 12 kept back, 26 connections of two each.
    let (fallacy, admin, listen, _dir) = serve_under_fd_limit(128, "");
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        // The reset can come so fast that connect() itself reports it.
        match TcpStream::connect_timeout(&listen, Duration::from_secs(2)) {
            Ok(mut s) => {
                if echoes(&mut s) {
                    held.push(s);
                } else {
                    refused += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            Err(e) => panic!("connect: {e}"),
        }
    }
    assert_eq!((held.len(), refused), (26, 14), "{}", fallacy.stderr());
    for s in &mut held {
        assert!(echoes(s), "an admitted connection stopped working");
    }
    let (status, metrics) = get(admin, "/metrics");
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap().to_owned();
    assert!(
        metrics
            .contains(r#"fallacy_connections_refused_total{proxy="p",reason="server_limit"} 14"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"fallacy_connections_refused_total{proxy="p",reason="proxy_limit"} 0"#),
        "{metrics}"
    );
    assert!(metrics.contains("\nfallacy_tasks_alive "), "{metrics}");
    assert!(
        !fallacy.stderr().contains("accept failed"),
        "{}",
        fallacy.stderr()
    );
    assert_eq!(
        fallacy.stderr().matches("refusing new connections").count(),
        1,
        "one warning for the whole flood: {}",
        fallacy.stderr()
    );
    drop(held);
    assert_serves_again(&fallacy, listen);
}

/// `fallacy demo` runs the lesson by itself: the false-timeout rate at the client's 100 ms
/// matches the injected lognormal (p50 20 ms, p99 300 ms: P(X > 100 ms) = 8.3 %), fallacy's
/// retry count matches the client's, and bad input exits 2.
#[test]
fn demo_prints_the_lesson_and_its_figures_as_json() {
    let mut demo = Child::spawn(&["demo", "--json", "--requests", "1000", "--seed", "7"]);
    let started = Instant::now();
    assert_eq!(demo.exit().code(), Some(0), "{}", demo.stderr());
    assert!(started.elapsed() < Duration::from_secs(30));
    let out = format!("{}\n{}", demo.line(), demo.rest_of_stdout());
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["samples"], 1000, "{report:#}");
    let at_100 = report["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["timeout_ms"] == 100.0)
        .unwrap()["false_timeout_rate"]
        .as_f64()
        .unwrap();
    // 1000 samples: the standard error is 0.9 %; four of them either way.
    assert!((0.083 - at_100).abs() < 0.035, "{at_100}: {report:#}");
    let advice = &report["advice"][0];
    assert_eq!(advice["false_timeout_rate"], 0.05);
    // The lognormal's 95th percentile is 133 ms.
    let ms = advice["timeout_ms"].as_f64().unwrap();
    assert!((100.0..180.0).contains(&ms), "{report:#}");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs[0]["fallacy_retries"], 0);
    assert_eq!(runs[0]["amplification"], 1.0);
    let (made, counted) = (
        runs[1]["client_retries"].as_u64().unwrap(),
        runs[1]["fallacy_retries"].as_u64().unwrap(),
    );
    assert!(made > 20, "{report:#}");
    // An attempt that times out in the instant its answer leaves counts as answered.
    assert!(
        made.abs_diff(counted) <= 3,
        "client {made}, fallacy {counted}"
    );
    assert!(runs[1]["amplification"].as_f64().unwrap() > 1.0);

    let mut command = Command::new(env!("CARGO_BIN_EXE_fallacy"));
    command
        .args(["demo", "--requests", "200"])
        .env_remove("RUST_LOG");
    let mut table = Child::start(command);
    assert_eq!(table.exit().code(), Some(0), "{}", table.stderr());
    let text = format!("{}\n{}", table.line(), table.rest_of_stdout());
    for words in [
        "| timeout | false-timeout rate |",
        "<- the client's",
        "Advice",
        "amplification",
    ] {
        assert!(text.contains(words), "{words:?} missing:\n{text}");
    }
    assert!(!table.stderr().contains("INFO"), "{}", table.stderr());

    let mut bad = Child::spawn(&["demo", "--requests", "0"]);
    let (code, stderr) = bad.exit_code();
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--requests"), "{stderr}");
}

/// The names of `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn threads_sets_the_data_threads_and_a_bad_count_exits_2() {
    let upstream = echo_upstream();
    let config = format!(
        "[server]\nthreads = 2\n[[proxy]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\n"
    );
    let (_dir, path) = config_file("threads.toml", &config);
    // The command line wins over the file.
    let fallacy = Child::spawn(&[
        "serve",
        "--admin",
        "127.0.0.1:0",
        "--config",
        &path,
        "--threads",
        "3",
    ]);
    let (_, proxy) = get(fallacy.admin(), "/proxies/p");
    let listen: SocketAddr = proxy["listen"].as_str().unwrap().parse().unwrap();
    let data: Vec<String> = thread_names(fallacy.child.id())
        .into_iter()
        .filter(|n| n.starts_with("fallacy-data-"))
        .collect();
    assert_eq!(data, ["fallacy-data-0", "fallacy-data-1", "fallacy-data-2"]);
    // Connections on every thread (they take turns) carry bytes, all open at once.
    let mut open: Vec<TcpStream> = (0..7)
        .map(|_| TcpStream::connect_timeout(&listen, WAIT).unwrap())
        .collect();
    for s in &mut open {
        assert!(echoes(s));
    }

    for bad in ["0", "257", "many", ""] {
        let mut fallacy = Child::spawn(&["serve", "--admin", "127.0.0.1:0", "--threads", bad]);
        let (code, stderr) = fallacy.exit_code();
        assert_eq!(code, Some(2), "--threads {bad:?}: {stderr}");
        assert!(stderr.contains("--threads"), "--threads {bad:?}: {stderr}");
    }
}
