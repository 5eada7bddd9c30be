//! Config fixtures, rathole style, checked through both the library and the real binary.
//!
//! - `tests/config/valid/*.{toml,json}` must load and make `fallacy check` exit 0.
//! - `tests/config/invalid/*.{toml,json}` must make `fallacy check` exit 2. Each holds one
//!   mistake and says which error it expects: a TOML fixture on its first line
//!   (`# expect: LINE:COL: text`), a JSON one in a sibling `<name>.expect` file (JSON has no
//!   comments). The expectation must appear in stderr right after `FILE:`.
//!
//! The fixture directories are read at run time, so a new fixture is picked up without touching
//! this file. Every fixture is checked before any failure is reported, and the report names
//! each failing fixture with what it printed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use fallacy::config::{self, Config};
use fallacy::toxic::{TOXIC_TYPES, ToxicKind};

/// `fallacy check` reads one small file: anything near this long is a hang.
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `.toml` and `.json` files of `tests/config/<kind>`, sorted.
fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = root().join("tests/config").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| matches!(extension(p), "toml" | "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    files
}

fn extension(path: &Path) -> &str {
    path.extension().and_then(|e| e.to_str()).unwrap_or("")
}

/// Runs the real binary with `args`, killing it if it outlives [`CHECK_TIMEOUT`].
fn fallacy(args: &[&std::ffi::OsStr]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fallacy"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot spawn the fallacy binary");
    // Drain both pipes on threads so a chatty child can never block on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fallacy {args:?} still running after {CHECK_TIMEOUT:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn check(path: &Path) -> Output {
    fallacy(&["check".as_ref(), path.as_os_str()])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Panics with every failure at once, so one run shows all broken fixtures.
fn report(failures: Vec<String>) {
    if !failures.is_empty() {
        panic!(
            "{} fixture(s) failed:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}

/// The expectations of an invalid fixture: the `# expect:` lines at the top of a TOML file, or
/// the lines of the sibling `.expect` file of a JSON one.
fn expectations(path: &Path) -> Vec<String> {
    let found: Vec<String> = if extension(path) == "json" {
        let expect = path.with_extension("expect");
        std::fs::read_to_string(&expect)
            .unwrap_or_else(|e| panic!("{}: cannot read {}: {e}", path.display(), expect.display()))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map_while(|l| l.strip_prefix("# expect: "))
            .map(str::to_owned)
            .collect()
    };
    assert!(
        !found.is_empty(),
        "{}: no expectation (a first line `# expect: LINE:COL: text`, or a .expect file for JSON)",
        path.display()
    );
    for e in &found {
        assert!(
            line_col_prefix(e).is_some(),
            "{}: expectation {e:?} must start with LINE:COL:",
            path.display()
        );
    }
    found
}

/// Parses the `LINE:COL: ` that starts `s`.
fn line_col_prefix(s: &str) -> Option<(usize, usize)> {
    let mut parts = s.splitn(3, ':');
    let line = parts.next()?.parse().ok()?;
    let col = parts.next()?.parse().ok()?;
    parts.next()?.strip_prefix(' ')?;
    Some((line, col))
}

/// Checks that every line of `stderr` is one diagnostic: `FILE:LINE:COL: text`.
fn check_diagnostic_lines(path: &Path, stderr: &str) -> Result<(), String> {
    let prefix = format!("{}:", path.display());
    for line in stderr.lines() {
        let rest = line
            .strip_prefix(&prefix)
            .ok_or_else(|| format!("line does not start with {prefix:?}: {line:?}"))?;
        let (l, c) = line_col_prefix(rest)
            .ok_or_else(|| format!("line has no LINE:COL after the file: {line:?}"))?;
        if l == 0 || c == 0 {
            return Err(format!("lines and columns count from 1: {line:?}"));
        }
    }
    Ok(())
}

#[test]
fn valid_fixtures_load_and_check_clean() {
    let mut failures = Vec::new();
    for path in fixtures("valid") {
        let name = path.display();
        if let Err(err) = config::load(&path) {
            failures.push(format!("{name}: config::load refused it:\n{err}"));
        }
        let out = check(&path);
        let stdout = text(&out.stdout);
        if out.status.code() != Some(0)
            || !out.stderr.is_empty()
            || !stdout.starts_with(&format!("{name}: ok ("))
        {
            failures.push(format!(
                "{name}: `fallacy check` exited {:?}\nstdout: {stdout}\nstderr: {}",
                out.status.code(),
                text(&out.stderr)
            ));
        }
    }
    report(failures);
}

#[test]
fn invalid_fixtures_fail_check_with_the_expected_error() {
    let mut failures = Vec::new();
    for path in fixtures("invalid") {
        let name = path.display();
        let expected = expectations(&path);
        let out = check(&path);
        let stderr = text(&out.stderr);
        let mut problems = Vec::new();
        if out.status.code() != Some(2) {
            problems.push(format!("exit code {:?}, want 2", out.status.code()));
        }
        if !out.stdout.is_empty() {
            problems.push(format!("stdout not empty: {}", text(&out.stdout)));
        }
        if let Err(e) = check_diagnostic_lines(&path, &stderr) {
            problems.push(e);
        }
        for e in &expected {
            let want = format!("{name}:{e}");
            if !stderr.contains(&want) {
                problems.push(format!("stderr lacks {want:?}"));
            }
        }
        // The binary prints exactly what the library reports.
        match config::load(&path) {
            Ok(_) => problems.push("config::load accepted it".into()),
            Err(err) if err.to_string() != stderr.trim_end() => {
                problems.push(format!("config::load says something else:\n{err}"))
            }
            Err(_) => {}
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{name}:\n  - {}\n  stderr was:\n{stderr}",
                problems.join("\n  - ")
            ));
        }
    }
    report(failures);
}

/// Keeps the fixture directory tidy: nothing the two tests above would silently skip.
#[test]
fn every_invalid_fixture_has_one_expectation_source() {
    let dir = root().join("tests/config/invalid");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        match extension(&path) {
            "toml" | "json" => {
                expectations(&path);
            }
            "expect" => assert!(
                path.with_extension("json").exists(),
                "{}: no JSON fixture next to it",
                path.display()
            ),
            _ => panic!(
                "{}: unexpected file (fixtures are .toml, .json and .expect)",
                path.display()
            ),
        }
    }
}

#[test]
fn a_file_with_several_errors_reports_each_on_its_own_line() {
    let path = root().join("tests/config/multi_error.toml");
    let expected = expectations(&path);
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    check_diagnostic_lines(&path, &stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        expected.len(),
        "one line per error, in file order:\n{stderr}"
    );
    for (line, e) in lines.iter().zip(&expected) {
        assert_eq!(*line, format!("{}:{e}", path.display()), "{stderr}");
    }
}

#[test]
fn the_annotated_example_checks_clean_and_uses_every_key_and_toxic() {
    let path = root().join("config/fallacy.toml");
    let out = check(&path);
    assert_eq!(
        out.status.code(),
        Some(0),
        "config/fallacy.toml must pass `fallacy check`:\n{}",
        text(&out.stderr)
    );
    let config = config::load(&path).unwrap();
    let mut types: Vec<&str> = config
        .proxies
        .iter()
        .flat_map(|p| &p.toxics)
        .map(|t| t.kind.type_name())
        .collect();
    types.sort_unstable();
    types.dedup();
    let mut all = TOXIC_TYPES.to_vec();
    all.sort_unstable();
    assert_eq!(types, all, "the example shows every toxic type");

    // Every key the loader accepts appears at least once (keys only, comments do not count).
    let raw: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let table = |v: &toml::Value| v.as_table().unwrap().clone();
    let mut seen = std::collections::BTreeSet::new();
    for (key, value) in raw.iter().filter(|(k, _)| *k != "proxy") {
        // [[partition]] is an array of tables; [admin] and [server] are tables.
        let tables = match value.as_array() {
            Some(list) => list.iter().map(table).collect(),
            None => vec![table(value)],
        };
        for sub in tables.iter().flat_map(|t| t.keys()) {
            seen.insert(format!("{key}.{sub}"));
        }
    }
    for proxy in raw["proxy"].as_array().unwrap() {
        for (key, value) in &table(proxy) {
            seen.insert(format!("proxy.{key}"));
            if key == "toxic" {
                for toxic in value.as_array().unwrap() {
                    for key in table(toxic).keys() {
                        seen.insert(format!("proxy.toxic.{key}"));
                    }
                }
            }
        }
    }
    for key in [
        "admin.listen",
        "server.seed",
        "server.connect_timeout",
        "server.header_read_timeout",
        "server.shutdown_grace",
        "server.max_connections",
        "server.idle_timeout",
        "proxy.max_connections",
        "proxy.name",
        "proxy.listen",
        "proxy.upstream",
        "proxy.enabled",
        "proxy.protocol",
        "proxy.fault_header",
        "proxy.rewrite_host",
        "proxy.abandon_grace",
        "proxy.retry_window",
        "proxy.idempotency_headers",
        "proxy.price_per_gb",
        "proxy.labels",
        "proxy.upstreams",
        "proxy.policy",
        "partition.name",
        "partition.a",
        "partition.b",
        "partition.direction",
        "partition.mode",
        "partition.duration",
        "partition.owner",
        "proxy.toxic.ttl",
        "proxy.toxic.owner",
        "proxy.toxic",
        "proxy.toxic.name",
        "proxy.toxic.type",
        "proxy.toxic.stream",
        "proxy.toxic.toxicity",
        "proxy.toxic.attributes",
        "proxy.toxic.match",
    ] {
        assert!(seen.contains(key), "config/fallacy.toml never sets {key}");
    }
}

#[test]
fn a_missing_file_exits_2_naming_the_path() {
    let path = root().join("tests/config/no-such-file.toml");
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: cannot read", path.display())),
        "{stderr}"
    );
    assert!(matches!(
        config::load(&path),
        Err(config::Error::Read { .. })
    ));
}

// What some valid fixtures must mean, not only that they load.

fn load(name: &str) -> Config {
    config::load(&root().join("tests/config/valid").join(name)).unwrap()
}

#[test]
fn toxiproxy_json_matches_keys_case_insensitively_and_keeps_toxics() {
    let config = load("toxiproxy.json");
    let names: Vec<&str> = config
        .proxies
        .iter()
        .map(|p| p.proxy.name.as_str())
        .collect();
    assert_eq!(names, ["redis", "postgres", "no-listen"]);
    let pg = &config.proxies[1];
    assert!(!pg.proxy.enabled);
    assert_eq!(pg.proxy.listen, "localhost:0");
    let toxics: Vec<(&str, &str, f32)> = pg
        .toxics
        .iter()
        .map(|t| (t.name.as_str(), t.stream.as_str(), t.toxicity))
        .collect();
    assert_eq!(
        toxics,
        [
            ("latency_downstream", "downstream", 1.0),
            ("cut [a], {b}", "upstream", 0.5),
            ("slicer_downstream", "downstream", 1.0),
        ]
    );
    match &pg.toxics[2].kind {
        ToxicKind::Slicer(a) => {
            assert_eq!(a.average_size, 8);
            assert_eq!(a.delay.duration(), Duration::from_millis(1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(config.proxies[2].proxy.listen, "127.0.0.1:0");
    assert!(config.proxies[2].proxy.enabled);
}

#[test]
fn toml_duration_attributes_and_defaults() {
    let config = load("toxic_durations.toml");
    let p = &config.proxies[0];
    assert!(!p.proxy.enabled);
    assert_eq!(p.proxy.listen, "127.0.0.1:0");
    let slow = &p.toxics[0];
    assert_eq!(slow.stream, "UpStream", "the stream is kept as written");
    match &slow.kind {
        ToxicKind::Latency(a) => {
            assert_eq!(a.latency.duration(), Duration::from_millis(1500));
            assert_eq!(a.jitter.duration(), Duration::from_micros(500));
        }
        other => panic!("{other:?}"),
    }
    match &p.toxics[1].kind {
        ToxicKind::Latency(a) => assert_eq!(a.latency.duration(), Duration::ZERO),
        other => panic!("{other:?}"),
    }
    assert_eq!(p.toxics[2].toxicity, 0.25);
    assert_eq!(p.toxics[3].name, "defaults");
    assert_eq!(p.toxics[3].stream, "downstream");
    assert_eq!(p.toxics[3].toxicity, 1.0);

    let every = load("every_toxic_integers.toml");
    let types: Vec<&str> = every.proxies[0]
        .toxics
        .iter()
        .map(|t| t.kind.type_name())
        .collect();
    let names = |i: usize| -> Vec<&str> {
        every.proxies[i]
            .toxics
            .iter()
            .map(|t| t.kind.type_name())
            .collect()
    };
    let (udp, http) = (names(1), names(2));
    assert_eq!(
        every.proxies[1].proxy.protocol,
        fallacy::proxy::Protocol::Udp
    );
    assert_eq!(
        every.proxies[2].proxy.protocol,
        fallacy::proxy::Protocol::Http
    );
    assert!(every.proxies[1].toxics.iter().all(|t| t.kind.is_udp_only()));
    assert!(every.proxies[2].toxics.iter().all(|t| t.kind.is_http()));
    // Between them, the three proxies show every type once, in the order of TOXIC_TYPES.
    let all: Vec<&str> = types.iter().chain(&udp).chain(&http).copied().collect();
    assert_eq!(all, TOXIC_TYPES);
    assert!(every.proxies[2].toxics[0].matcher.is_some());

    let server = load("server_and_admin.toml");
    assert_eq!(server.admin.as_deref(), Some("localhost:8474"));
    assert_eq!(server.seed, Some(u64::MAX));
    assert_eq!(server.connect_timeout, Duration::from_millis(1500));
    assert_eq!(server.shutdown_grace, Duration::from_millis(250));
    assert_eq!(server.threads, Some(3));

    // A loaded config remembers its file (for reloads); the rest is the default.
    for name in ["empty.toml", "empty.json"] {
        let config = load(name);
        assert!(config.source.as_ref().is_some_and(|p| p.ends_with(name)));
        assert_eq!(
            Config {
                source: None,
                ..config
            },
            Config::default()
        );
    }
}

/// The README shows the annotated example in full; it must not drift from the file.
#[test]
fn the_readme_embeds_the_annotated_example_verbatim() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let example = std::fs::read_to_string(format!("{root}/config/fallacy.toml")).unwrap();
    let start = readme
        .find("<!-- CONFIG:BEGIN -->")
        .expect("README has no CONFIG:BEGIN marker");
    let end = readme
        .find("<!-- CONFIG:END -->")
        .expect("README has no CONFIG:END marker");
    let block = &readme[start..end];
    let code = block
        .split_once("```toml\n")
        .and_then(|(_, rest)| rest.rsplit_once("```"))
        .map(|(code, _)| code)
        .expect("no ```toml block between the markers");
    assert_eq!(
        code, example,
        "README's copy of config/fallacy.toml is out of date"
    );
}
