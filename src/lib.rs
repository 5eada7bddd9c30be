//! fallacy: a fault-injecting TCP and HTTP proxy that makes the fallacies of distributed computing happen
//! on purpose, with an admin API that Toxiproxy clients can drive.
//!
//! # Layout
//!
//! | module | role |
//! |---|---|
//! | [`config`] | TOML / Toxiproxy JSON files → validated [`config::Config`] |
//! | [`state`] | [`state::Store`]: every proxy and toxic; the single writer |
//! | [`proxy`] | the data path: accept loop, connection, duplex copy with toxics |
//! | [`toxic`] | the toxic wire model and the runtime toxics |
//! | [`admin`] | the HTTP admin API (axum) |
//! | [`demo`] | `fallacy demo`: the timeout false-positive lesson, self-contained |
//! | [`measure`] | what clients did: abandonment, false timeouts, retries, timeout advice |
//! | [`scenario`] | scenarios: the format, the planner, the runner and what it records, `scenario run` and its report |
//! | [`partition`] | named cuts between groups of nodes: shapes, validation, each proxy's cut |
//! | [`metrics`] | metric names, help texts, data-path helpers |
//! | [`shutdown`] | OS signals |
//! | [`timer`] | sub-millisecond sleeps for delays |
//! | [`units`] | human-readable durations |
//!
//! [`run`] ties them together; `main.rs` only parses the command line, binds and calls it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod client;
pub mod config;
pub mod ctl;
pub mod demo;
pub mod http;
pub mod limits;
pub mod logging;
pub mod measure;
pub mod metrics;
pub mod partition;
pub mod proxy;
pub mod reload;
pub mod scenario;
pub mod shutdown;
pub mod state;
pub mod timer;
pub mod toxic;
pub mod units;

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::proxy::Settings;
use crate::state::Store;

/// How often the metrics exporter folds recorded histogram samples in.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How long connections get after the grace period to notice they were told to close.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Why [`run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A proxy from the config file could not be started.
    #[error("proxy {name:?}: {source}")]
    Proxy {
        /// The proxy.
        name: String,
        /// Why.
        source: state::Error,
    },
    /// A partition from the config file could not be created.
    #[error("partition {name:?}: {source}")]
    Partition {
        /// The partition.
        name: String,
        /// Why.
        source: state::Error,
    },
    /// The admin listener has no address.
    #[error("admin API listener: {0}")]
    Admin(std::io::Error),
}

/// A running server: its store, and the token that shuts it down.
#[derive(Clone)]
pub struct Server {
    /// Where the admin API listens.
    pub admin: std::net::SocketAddr,
    /// Reloads the config file, when there is one.
    pub reloader: Option<Arc<reload::Reloader>>,
    /// The store behind the admin API.
    pub store: Store,
    /// Cancel to shut down (what SIGTERM and `POST /shutdown` do).
    pub shutdown: CancellationToken,
    grace: Duration,
    tracker: TaskTracker,
    accept_root: CancellationToken,
    conn_root: CancellationToken,
}

impl Server {
    /// Serves the admin API on `admin` (already bound) and creates the proxies of `config`.
    /// Returns once every configured listener is bound; the server runs until `shutdown`
    /// is cancelled, then [`Server::drain`] finishes it.
    pub async fn start(
        admin: TcpListener,
        config: Config,
        prometheus: Option<PrometheusHandle>,
        shutdown: CancellationToken,
    ) -> Result<Server, RunError> {
        let admin_addr = admin.local_addr().map_err(RunError::Admin)?;
        let tracker = TaskTracker::new();
        let accept_root = CancellationToken::new();
        let conn_root = CancellationToken::new();
        let nofile = limits::raise_nofile();
        let max_connections = config
            .max_connections
            .unwrap_or_else(|| limits::auto_max_connections(nofile).unwrap_or(0));
        tracing::info!(
            max_connections,
            open_file_limit = nofile,
            "connection limit for all proxies together (0: none)"
        );
        let threads = config
            .threads
            .unwrap_or_else(proxy::dataplane::default_threads);
        let dataplane = match proxy::dataplane::DataPlane::start(threads) {
            Ok(plane) => Some(plane),
            Err(err) => {
                warn!(%err, threads, "cannot start the data threads; connections run on the main runtime");
                None
            }
        };
        let settings = Settings {
            seed: config.seed,
            connect_timeout: config.connect_timeout,
            header_read_timeout: config.header_read_timeout,
            total: Arc::new(limits::Total::new(max_connections)),
            idle_timeout: config.idle_timeout,
            dataplane: dataplane.clone(),
        };
        let store = Store::new(
            settings,
            accept_root.clone(),
            conn_root.clone(),
            tracker.clone(),
        );
        if let Some(handle) = prometheus.clone() {
            // The exporter keeps histogram samples until upkeep folds them in: without a
            // scrape, they would pile up.
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(UPKEEP_EVERY);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = every.tick() => {
                            handle.run_upkeep();
                            metrics::tasks_alive(dataplane.as_deref());
                        }
                    }
                }
            });
        }
        let reloader = config
            .source
            .clone()
            .map(|path| Arc::new(reload::Reloader::new(path, &config)));
        let router = admin::router(
            admin::AdminState::new(store.clone(), prometheus, shutdown.clone())
                .with_token(
                    config.admin_token.as_ref().map(|t| t.expose().to_owned()),
                    config.metrics_public,
                )
                .with_reloader(reloader.clone()),
        );
        let stop_admin = shutdown.clone();
        // The admin API is not on the tracker: it must keep answering during the drain.
        tokio::spawn(async move {
            let served = axum::serve(admin, router)
                .with_graceful_shutdown(stop_admin.cancelled_owned())
                .await;
            if let Err(err) = served {
                warn!(%err, "admin API stopped");
            }
        });
        let server = Server {
            store,
            shutdown,
            admin: admin_addr,
            reloader,
            grace: config.shutdown_grace,
            tracker,
            accept_root,
            conn_root,
        };
        for p in config.proxies {
            let name = p.proxy.name.clone();
            if let Err(source) = server.store.create_with_toxics(p.proxy, p.toxics).await {
                server.shutdown.cancel();
                server.drain().await;
                return Err(RunError::Proxy { name, source });
            }
        }
        for p in &config.partitions {
            // Checked when the file was read; a failure here is the store disagreeing.
            if let Err(source) = server.store.create_partition(p).await {
                let name = p["name"].as_str().unwrap_or_default().to_owned();
                server.shutdown.cancel();
                server.drain().await;
                return Err(RunError::Partition { name, source });
            }
        }
        server.store.set_ready();
        Ok(server)
    }

    /// Reads the config file again and applies what changed (SIGHUP); `None` without a file.
    pub async fn reload(&self) -> Option<Result<serde_json::Value, reload::ReloadError>> {
        match &self.reloader {
            Some(r) => Some(r.reload(&self.store).await),
            None => None,
        }
    }

    /// Waits for the shutdown token, then drains: stop accepting, let open connections finish
    /// for the grace period, close what is left.
    pub async fn run_until_shutdown(self) {
        self.shutdown.cancelled().await;
        self.drain().await;
    }

    async fn drain(&self) {
        self.shutdown.cancel();
        self.accept_root.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = self.tracker.len(),
                grace = ?self.grace,
                "grace period over; closing open connections"
            );
        }
        self.conn_root.cancel();
        let _ = tokio::time::timeout(CLOSE_WAIT, self.tracker.wait()).await;
        info!("stopped");
    }
}
