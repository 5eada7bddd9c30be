//! Reloading the config file, on SIGHUP or `POST /reload`: the new file is read and checked
//! whole first (an invalid file changes nothing and says why), then only what differs from
//! the last load is applied.
//!
//! - A proxy added to the file is created; one removed is deleted.
//! - A proxy whose settings changed is updated in place (listen, upstream, enabled, HTTP
//!   options, measurement settings: open connections stay, as with `POST /proxies/{p}`); a
//!   change of protocol, labels or upstream set recreates it.
//! - Toxics are compared against the last load: those whose name is gone are removed, new or
//!   changed ones set. Toxics added through the API under other names stay.
//! - Partitions likewise, by name.
//! - A proxy whose entry did not change is not touched: it keeps its connections, and whatever
//!   the API did to it.
//!
//! What could not be applied (a listen address in use, say) is reported, and stays as it was;
//! the next reload tries again, because the comparison is with what was applied.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::config::{self, Config, ProxyConfig};
use crate::state::{Error as StoreError, NewProxy, ProxyPatch, Store};

/// The config file and what of it was last applied.
pub struct Reloader {
    path: PathBuf,
    applied: tokio::sync::Mutex<Applied>,
}

/// The parts of a config a reload compares.
#[derive(Clone)]
struct Applied {
    proxies: Vec<ProxyConfig>,
    partitions: Vec<Value>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read or is invalid; the running config is kept.
    #[error("{0}")]
    Invalid(String),
}

/// The settings that differ, as a `ProxyPatch` (a listen address that did not change in the
/// file is not rebound, even if it is port 0).
fn patch_for(old: &NewProxy, new: &NewProxy) -> ProxyPatch {
    let changed = |a: bool| a.then_some(());
    let defaults = crate::measure::MeasureSettings::default();
    let (was, now) = (old.measure.apply(&defaults), new.measure.apply(&defaults));
    ProxyPatch {
        listen: changed(old.listen != new.listen).map(|_| new.listen.clone()),
        upstream: changed(old.upstream != new.upstream).map(|_| new.upstream.clone()),
        enabled: changed(old.enabled != new.enabled).map(|_| new.enabled),
        protocol: None,
        fault_header: changed(old.fault_header != new.fault_header).map(|_| new.fault_header),
        rewrite_host: changed(old.rewrite_host != new.rewrite_host)
            .map(|_| new.rewrite_host.clone().unwrap_or_default()),
        measure: crate::measure::MeasurePatch {
            abandon_grace: changed(was.abandon_grace != now.abandon_grace)
                .map(|_| now.abandon_grace),
            retry_window: changed(was.retry_window != now.retry_window).map(|_| now.retry_window),
            idempotency_headers: changed(was.idempotency_headers != now.idempotency_headers)
                .map(|_| now.idempotency_headers.clone()),
            price_per_gb: changed(was.price_per_gb != now.price_per_gb).map(|_| now.price_per_gb),
            max_connections: changed(was.max_connections != now.max_connections)
                .map(|_| now.max_connections),
        },
        labels: None,
        upstreams: None,
        drain: false,
    }
}

fn partition_name(p: &Value) -> String {
    p["name"].as_str().unwrap_or_default().to_owned()
}

impl Reloader {
    /// Remembers `config` (read from `path`) as applied.
    pub fn new(path: PathBuf, config: &Config) -> Reloader {
        Reloader {
            path,
            applied: tokio::sync::Mutex::new(Applied {
                proxies: config.proxies.clone(),
                partitions: config.partitions.clone(),
            }),
        }
    }

    /// Reads the file again and applies what changed; answers what was done.
    pub async fn reload(&self, store: &Store) -> Result<Value, ReloadError> {
        let new = config::load(&self.path).map_err(|e| ReloadError::Invalid(e.to_string()))?;
        let mut applied = self.applied.lock().await;
        let mut done = Applied {
            proxies: Vec::new(),
            partitions: Vec::new(),
        };
        let (mut added, mut removed, mut changed, mut unchanged) = (vec![], vec![], vec![], vec![]);
        let mut errors: Vec<String> = Vec::new();

        for old in &applied.proxies {
            let name = &old.proxy.name;
            if !new.proxies.iter().any(|p| &p.proxy.name == name) {
                match store.delete(name).await {
                    Ok(()) | Err(StoreError::ProxyNotFound) => removed.push(name.clone()),
                    Err(e) => {
                        errors.push(format!("proxy {name:?}: {e}"));
                        done.proxies.push(old.clone());
                    }
                }
            }
        }
        for p in &new.proxies {
            let name = p.proxy.name.clone();
            let Some(old) = applied.proxies.iter().find(|o| o.proxy.name == name) else {
                match store
                    .create_with_toxics(p.proxy.clone(), p.toxics.clone())
                    .await
                {
                    Ok(_) => {
                        added.push(name);
                        done.proxies.push(p.clone());
                    }
                    Err(e) => errors.push(format!("proxy {name:?}: {e}")),
                }
                continue;
            };
            if old == p {
                unchanged.push(name);
                done.proxies.push(p.clone());
                continue;
            }
            match apply_changed(store, old, p).await {
                Ok(()) => {
                    changed.push(name);
                    done.proxies.push(p.clone());
                }
                Err(e) => {
                    errors.push(format!("proxy {name:?}: {e}"));
                    done.proxies.push(old.clone());
                }
            }
        }

        // Partitions: heal the gone and the changed, then create the new and the changed.
        for old in &applied.partitions {
            let name = partition_name(old);
            let kept = new.partitions.iter().any(|p| p == old);
            if !kept {
                match store.delete_partition(&name).await {
                    Ok(()) | Err(StoreError::PartitionNotFound) => {}
                    Err(e) => errors.push(format!("partition {name:?}: {e}")),
                }
            } else {
                done.partitions.push(old.clone());
            }
        }
        for p in &new.partitions {
            if applied.partitions.contains(p) {
                continue;
            }
            let name = partition_name(p);
            match store.create_partition(p).await {
                Ok(_) => done.partitions.push(p.clone()),
                Err(e) => errors.push(format!("partition {name:?}: {e}")),
            }
        }
        *applied = done;
        tracing::info!(
            ?added,
            ?removed,
            ?changed,
            errors = errors.len(),
            "config reloaded"
        );
        Ok(json!({
            "file": self.path.display().to_string(),
            "added": added,
            "removed": removed,
            "changed": changed,
            "unchanged": unchanged,
            "errors": errors,
        }))
    }
}

/// Brings one proxy from its last loaded entry to its new one.
async fn apply_changed(
    store: &Store,
    old: &ProxyConfig,
    new: &ProxyConfig,
) -> Result<(), StoreError> {
    let (o, n) = (&old.proxy, &new.proxy);
    let recreate = o.protocol != n.protocol || o.labels != n.labels || o.upstreams != n.upstreams;
    if recreate {
        store.delete(&n.name).await.or_else(|e| match e {
            StoreError::ProxyNotFound => Ok(()),
            e => Err(e),
        })?;
        if let Err(e) = store
            .create_with_toxics(n.clone(), new.toxics.clone())
            .await
        {
            // Put the old one back rather than leave nothing.
            let _ = store
                .create_with_toxics(o.clone(), old.toxics.clone())
                .await;
            return Err(e);
        }
        return Ok(());
    }
    if o != n {
        store.update(&n.name, patch_for(o, n)).await?;
    }
    for gone in old
        .toxics
        .iter()
        .filter(|t| !new.toxics.iter().any(|s| s.name == t.name))
    {
        match store.remove_toxic(&n.name, &gone.name).await {
            Ok(()) | Err(StoreError::ToxicNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    for spec in new.toxics.iter().filter(|s| !old.toxics.contains(s)) {
        store.put_toxic(&n.name, spec.clone()).await?;
    }
    Ok(())
}
