//! The deployment examples, as far as a machine without a Docker engine or a cluster can check
//! them. docker-compose: its files agree with each other (services, ports, paths), Prometheus's
//! config passes promtool, fallacy's config passes `fallacy check`, and the example app works
//! through fallacy against a real Redis, fault included.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/docker-compose")
        .join(name)
}

/// A YAML file of one document as JSON.
fn yaml(path: &Path) -> Value {
    let mut docs = yaml_documents(path);
    assert_eq!(docs.len(), 1, "{}", path.display());
    docs.remove(0)
}

/// Every document of a YAML file as JSON, read by PyYAML (installed by .ci/run).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn toml(path: &Path) -> toml::Value {
    toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_compose_files_agree_with_each_other() {
    let compose = yaml(&example("docker-compose.yml"));
    let services = compose["services"].as_object().unwrap();
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(names, ["app", "fallacy", "redis", "prometheus", "grafana"]);
    for (name, s) in services {
        for port in s["ports"].as_array().into_iter().flatten() {
            assert!(
                port.as_str().unwrap().starts_with("127.0.0.1:"),
                "{name}: {port} is published beyond the host's loopback"
            );
        }
        for v in s["volumes"].as_array().into_iter().flatten() {
            let host = v.as_str().unwrap().split(':').next().unwrap();
            assert!(
                example(host).exists(),
                "{name}: volume {host} does not exist"
            );
        }
        for dep in s["depends_on"].as_array().into_iter().flatten() {
            assert!(
                services.contains_key(dep.as_str().unwrap()),
                "{name}: {dep}"
            );
        }
    }
    let fallacy = &services["fallacy"];
    assert!(
        example(fallacy["build"]["context"].as_str().unwrap())
            .join(fallacy["build"]["dockerfile"].as_str().unwrap())
            .exists()
    );
    assert_eq!(
        services["app"]["depends_on"]["fallacy"]["condition"], "service_healthy",
        "the image's HEALTHCHECK gates the app"
    );

    // The app reaches Redis through the fallacy proxy, and the proxy forwards to the redis
    // service on Redis's port.
    let config = toml(&example("fallacy.toml"));
    let proxy = &config["proxy"][0];
    let listen_port = proxy["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert_eq!(
        services["app"]["environment"]["REDIS_ADDR"],
        format!("fallacy:{listen_port}")
    );
    assert_eq!(proxy["upstream"].as_str(), Some("redis:6379"));
    // Prometheus scrapes fallacy's admin port, which the compose file publishes.
    let admin_port = config["admin"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    let prometheus = yaml(&example("prometheus.yml"));
    assert_eq!(
        prometheus["scrape_configs"][0]["static_configs"][0]["targets"],
        json!([format!("fallacy:{admin_port}")])
    );
    assert_eq!(
        fallacy["ports"],
        json!([format!("127.0.0.1:{admin_port}:{admin_port}")])
    );
    // Grafana: the data source points at the prometheus service; the dashboard provider reads
    // the folder the dashboard is mounted in.
    let sources = yaml(&example("grafana/provisioning/datasources/prometheus.yml"));
    assert_eq!(sources["apiVersion"], 1);
    assert_eq!(sources["datasources"][0]["type"], "prometheus");
    assert_eq!(sources["datasources"][0]["url"], "http://prometheus:9090");
    let boards = yaml(&example("grafana/provisioning/dashboards/fallacy.yml"));
    assert_eq!(boards["apiVersion"], 1);
    let folder = boards["providers"][0]["options"]["path"].as_str().unwrap();
    let mounted = services["grafana"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .find(|v| v.contains("fallacy.json"))
        .unwrap();
    assert!(
        mounted.contains(&format!(":{folder}/fallacy.json")),
        "{mounted}"
    );
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(example("../../config/grafana/fallacy.json")).unwrap(),
    )
    .unwrap();
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
}

/// Runs a checking tool and asserts it passed, showing what it said; `missing` says how to get
/// the tool.
fn passes(command: &mut Command, missing: &str) {
    let out = command.output().expect(missing);
    assert!(
        out.status.success(),
        "{command:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_and_fallacy_accept_their_configs() {
    passes(
        Command::new("promtool")
            .args(["check", "config"])
            .arg(example("prometheus.yml")),
        "promtool is not installed: .ci/run installs Debian's prometheus",
    );
    let fallacy = env!("CARGO_BIN_EXE_fallacy");
    passes(
        Command::new(fallacy)
            .arg("check")
            .arg(example("fallacy.toml")),
        "the fallacy binary",
    );
    // The README's scenario fits the example's proxies.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fallacy.toml");
    std::fs::write(&config, on_loopback("127.0.0.1:9")).unwrap();
    passes(
        Command::new(fallacy)
            .args(["scenario", "check"])
            .arg(example("redis-brownout.toml"))
            .arg("--config")
            .arg(&config),
        "the fallacy binary",
    );
}

/// The example's fallacy.toml with its addresses on loopback port 0, and Redis at `redis`.
fn on_loopback(redis: &str) -> String {
    std::fs::read_to_string(example("fallacy.toml"))
        .unwrap()
        .replace("0.0.0.0:8474", "127.0.0.1:0")
        .replace("0.0.0.0:16379", "127.0.0.1:0")
        .replace("redis:6379", redis)
}

/// A Redis server on a free loopback port, stopped on drop.
struct Redis {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Redis {
    async fn start() -> Redis {
        let addr = support::dead_addr().await;
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: .ci/run installs Debian's redis-server");
        // It says when it listens.
        let out = child.stdout.take().unwrap();
        let ready = tokio::task::spawn_blocking(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains("Ready to accept connections"))
        });
        let ready = tokio::time::timeout(Duration::from_secs(10), ready).await;
        assert!(matches!(ready, Ok(Ok(true))), "redis-server did not start");
        Redis { child, addr }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example app, on a free loopback port, stopped on drop.
struct App {
    /// Killed when dropped.
    _child: tokio::process::Child,
    url: String,
}

impl App {
    async fn start(redis: &str) -> App {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("python3")
            .arg(example("app/app.py"))
            .env("REDIS_ADDR", redis)
            .env("REDIS_TIMEOUT_MS", "200")
            .env("LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the app did not start")
            .unwrap()
            .unwrap();
        let url = line.strip_prefix("app on ").unwrap().to_owned();
        App { _child: child, url }
    }
}

/// The compose example's chain on loopback: app -> fallacy (the example's proxy) -> a real
/// Redis. It counts; with 300 ms of latency added it answers 503 within its 200 ms timeout;
/// with the toxic gone it counts again.
#[tokio::test]
async fn the_example_app_counts_through_fallacy_and_times_out_under_latency() {
    let redis = Redis::start().await;
    let text = on_loopback(&redis.addr.to_string());
    let config = fallacy::config::parse(&text, false).expect("the example config");
    let f = support::Fallacy::with_config(config).await;
    let listen = f.call("GET", "/proxies/redis", None).await.1["listen"]
        .as_str()
        .unwrap()
        .to_owned();
    let app = App::start(&listen).await;
    let http = reqwest::Client::new();
    let get = || async {
        let r = http.get(&app.url).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    let (status, first) = get().await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = get().await;
    assert_eq!(
        second["hits"].as_u64(),
        first["hits"].as_u64().map(|n| n + 1),
        "it counts in Redis"
    );
    f.toxic(
        "redis",
        json!({"name": "slow", "type": "latency", "attributes": {"latency": 300}}),
    )
    .await;
    let (status, slow) = get().await;
    assert_eq!(status, 503, "{slow}");
    assert!(
        slow["error"].as_str().unwrap().contains("timed out"),
        "{slow}"
    );
    let (status, _) = f.call("DELETE", "/proxies/redis/toxics/slow", None).await;
    assert_eq!(status, 204);
    let (status, again) = get().await;
    assert_eq!(status, 200, "{again}");
    drop(app);
    drop(redis);
}

fn kubernetes(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/kubernetes")
        .join(name)
}

/// The manifests pass the Kubernetes schemas (kubernetes-validate, strict: no unknown fields).
#[test]
fn the_kubernetes_manifests_pass_the_schemas() {
    passes(
        Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(kubernetes("fallacy-sidecar.yaml")),
        "kubernetes-validate is not installed: .ci/run installs it (pip)",
    );
}

/// The sidecar's pieces agree: the ConfigMap's config passes `fallacy check`, the app points at
/// the proxy, the probes, annotations and Service use the admin port, and the token comes from
/// the Secret.
#[test]
fn the_kubernetes_sidecar_pieces_agree() {
    let docs = yaml_documents(&kubernetes("fallacy-sidecar.yaml"));
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
            .clone()
    };
    let (config_map, secret, deployment, service) = (
        kind("ConfigMap"),
        kind("Secret"),
        kind("Deployment"),
        kind("Service"),
    );
    let text = config_map["data"]["fallacy.toml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fallacy.toml"), text).unwrap();
    passes(
        Command::new(env!("CARGO_BIN_EXE_fallacy"))
            .arg("check")
            .arg(dir.path().join("fallacy.toml")),
        "the fallacy binary",
    );
    let config: toml::Value = toml::from_str(text).unwrap();
    let admin_port: u64 = config["admin"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let proxy_listen = config["proxy"][0]["listen"].as_str().unwrap();
    assert!(
        proxy_listen.starts_with("127.0.0.1:"),
        "the proxy is the pod's own"
    );

    let pod = &deployment["spec"]["template"];
    let containers = pod["spec"]["containers"].as_array().unwrap();
    let app = &containers[0];
    let sidecar = containers.iter().find(|c| c["name"] == "fallacy").unwrap();
    let env = |c: &Value, name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no env {name}"))
            .clone()
    };
    assert_eq!(
        env(app, "DATABASE_ADDR")["value"].as_str().unwrap(),
        proxy_listen.replace("127.0.0.1", "localhost")
    );
    let token = &env(sidecar, "FALLACY_ADMIN_TOKEN")["valueFrom"]["secretKeyRef"];
    assert_eq!(token["name"], secret["metadata"]["name"]);
    assert!(
        secret["stringData"]
            .get(token["key"].as_str().unwrap())
            .is_some()
    );
    assert_eq!(env(sidecar, "FALLACY_METRICS_PUBLIC")["value"], "true");
    assert_eq!(sidecar["ports"][0]["containerPort"], admin_port);
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(
        sidecar["securityContext"]["runAsUser"], 10001,
        "the image's USER"
    );
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], admin_port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let mount = &sidecar["volumeMounts"][0];
    assert_eq!(
        sidecar["args"],
        json!([
            "--config",
            format!("{}/fallacy.toml", mount["mountPath"].as_str().unwrap())
        ])
    );
    assert_eq!(
        pod["spec"]["volumes"][0]["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(service["spec"]["ports"][0]["port"], admin_port);
}
