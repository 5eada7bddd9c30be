//! The store: every proxy and toxic, and the only place that changes them.
//!
//! The admin API, the config loader (and later reloads and scenarios) all call the same
//! [`Store`] methods, so a rule such as "a toxic name is unique across both streams" lives in
//! one place.
//!
//! Writes are serialised by one async mutex. It is async because stopping a proxy waits for its
//! accept loop to drop the listening socket: an immediate re-enable can then bind the same
//! port again. Nothing else is awaited under it, and the data path never takes it: connections
//! read their [`Link`]'s lock-free snapshot.
//!
//! Every method validates before it changes anything, so a refused request leaves no trace.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::measure::{MeasurePatch, MeasureSettings};
use crate::partition::{Labels, Partition};
use crate::proxy::{Link, Protocol, Settings, UpstreamSet, check_rewrite_host, listener};
use crate::toxic::{AttrError, Direction, Envelope, EnvelopeError, ToxicPatch, ToxicSpec};

/// Why the store refused a change. The admin API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No proxy by that name.
    #[error("proxy not found")]
    ProxyNotFound,
    /// A proxy by that name exists.
    #[error("proxy already exists")]
    ProxyExists,
    /// No toxic by that name on the proxy.
    #[error("toxic not found")]
    ToxicNotFound,
    /// A toxic by that name exists on the proxy, in either stream.
    #[error("toxic already exists")]
    ToxicExists,
    /// No partition by that name.
    #[error("partition not found")]
    PartitionNotFound,
    /// A partition by that name exists.
    #[error("partition already exists")]
    PartitionExists,
    /// A required field is missing or empty (`what` names it, e.g. `name at proxy 2`).
    #[error("missing required field: {0}")]
    MissingField(String),
    /// The toxic request's envelope was refused.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The toxic's attributes were refused.
    #[error(transparent)]
    Attr(#[from] AttrError),
    /// The listen address could not be resolved or bound.
    #[error("listen {listen}: {reason}")]
    Listen {
        /// The address as given.
        listen: String,
        /// The OS's reason, e.g. "Address already in use (os error 98)".
        reason: String,
    },
}

/// A new proxy, as the API or a config file describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewProxy {
    /// Unique name.
    pub name: String,
    /// Address to listen on (`host:port`, port 0 picks one).
    pub listen: String,
    /// Address to dial (`host:port`).
    pub upstream: String,
    /// Whether to listen right away.
    pub enabled: bool,
    /// TCP (default) or HTTP.
    pub protocol: Protocol,
    /// HTTP: name the faults in `x-fallacy-fault` (default on).
    pub fault_header: bool,
    /// HTTP: the `Host` forwarded requests carry instead of the client's.
    pub rewrite_host: Option<String>,
    /// abandon_grace, retry_window, idempotency headers; unset ones keep their defaults.
    pub measure: MeasurePatch,
    /// The nodes the proxy joins, for partitions.
    pub labels: Option<Labels>,
    /// Several upstreams (`upstream` is then the first).
    pub upstreams: Option<UpstreamSet>,
}

/// A partial update of a proxy; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProxyPatch {
    /// New listen address.
    pub listen: Option<String>,
    /// New upstream (open connections keep theirs).
    pub upstream: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Must equal the current protocol: a proxy cannot change what it speaks.
    pub protocol: Option<Protocol>,
    /// HTTP: turn `x-fallacy-fault` on or off.
    pub fault_header: Option<bool>,
    /// HTTP: a new `Host` for forwarded requests; `""` goes back to the client's.
    pub rewrite_host: Option<String>,
    /// Measurement settings to change.
    pub measure: MeasurePatch,
    /// New labels.
    pub labels: Option<Labels>,
    /// New upstreams (replacing `upstream`).
    pub upstreams: Option<UpstreamSet>,
    /// Close the open connections too when the upstream changes (`?drain=true`).
    pub drain: bool,
}

/// A read-only copy of a proxy, for the API.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyView {
    /// Name.
    pub name: String,
    /// The bound address when enabled; the address as given when disabled.
    pub listen: String,
    /// Upstream for new connections.
    pub upstream: String,
    /// Listening or not.
    pub enabled: bool,
    /// TCP or HTTP.
    pub protocol: Protocol,
    /// HTTP: whether faulted responses carry `x-fallacy-fault`.
    pub fault_header: bool,
    /// HTTP: the `Host` forwarded requests carry, when set.
    pub rewrite_host: Option<String>,
    /// abandon_grace, retry_window, idempotency headers.
    pub measure: MeasureSettings,
    /// The nodes it joins.
    pub labels: Option<Labels>,
    /// Its upstreams, when it has a set.
    pub upstreams: Option<UpstreamSet>,
    /// Held streams and reset by partitions now (see [`crate::partition`]'s bits).
    pub cut: u8,
    /// Upstream toxics first, then downstream, each in creation order.
    pub toxics: Vec<Arc<ToxicSpec>>,
}

struct Entry {
    link: Arc<Link>,
    listen: String,
    running: Option<Running>,
    /// Source of truth for the toxics, mirrored into the link on every change.
    toxics: Vec<Arc<ToxicSpec>>,
    labels: Option<Labels>,
}

struct Running {
    accept: CancellationToken,
    conns: CancellationToken,
    /// The stop token of the connections accepted now (a child of `conns`); replaced on a
    /// drain, so later connections are not stopped with the earlier ones.
    epoch: Arc<std::sync::Mutex<CancellationToken>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Closes the open connections and keeps accepting.
    fn drain(&self) {
        let mut epoch = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut *epoch, self.conns.child_token());
        old.cancel();
    }
}

/// Shared handle to all proxies. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    proxies: Mutex<BTreeMap<String, Entry>>,
    /// Partitions by name, each with the id of its creation (an expiry heals only its own).
    /// Locked only under `proxies`, and never across an await.
    partitions: std::sync::Mutex<BTreeMap<String, (Partition, u64)>>,
    next_partition: std::sync::atomic::AtomicU64,
    settings: Arc<Settings>,
    /// Stops every accept loop (first step of a graceful shutdown).
    accept_root: CancellationToken,
    /// Stops every connection (last step, after the grace period).
    conn_root: CancellationToken,
    tracker: TaskTracker,
    ready: AtomicBool,
}

impl Store {
    /// An empty store. Proxies are spawned on `tracker`; the root tokens stop them.
    pub fn new(
        settings: Settings,
        accept_root: CancellationToken,
        conn_root: CancellationToken,
        tracker: TaskTracker,
    ) -> Store {
        Store {
            inner: Arc::new(Inner {
                proxies: Mutex::new(BTreeMap::new()),
                partitions: std::sync::Mutex::new(BTreeMap::new()),
                next_partition: std::sync::atomic::AtomicU64::new(1),
                settings: Arc::new(settings),
                accept_root,
                conn_root,
                tracker,
                ready: AtomicBool::new(false),
            }),
        }
    }

    /// Marks the configured listeners as bound, for `/readyz`.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    /// Whether every configured listener is bound.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// All proxies, by name.
    pub async fn list(&self) -> Vec<ProxyView> {
        self.inner
            .proxies
            .lock()
            .await
            .iter()
            .map(|(n, e)| view(n, e))
            .collect()
    }

    /// One proxy.
    pub async fn get(&self, name: &str) -> Result<ProxyView, Error> {
        let proxies = self.inner.proxies.lock().await;
        proxies
            .get(name)
            .map(|e| view(name, e))
            .ok_or(Error::ProxyNotFound)
    }

    /// Creates a proxy. The name is checked before anything binds; a bind failure adds nothing.
    pub async fn create(&self, new: NewProxy) -> Result<ProxyView, Error> {
        self.create_with_toxics(new, Vec::new()).await
    }

    /// Creates a proxy with toxics already in place (config files).
    pub async fn create_with_toxics(
        &self,
        new: NewProxy,
        toxics: Vec<ToxicSpec>,
    ) -> Result<ProxyView, Error> {
        require(&new.name, "name")?;
        require(&new.upstream, "upstream")?;
        let mut proxies = self.inner.proxies.lock().await;
        if proxies.contains_key(&new.name) {
            return Err(Error::ProxyExists);
        }
        let entry = self.build(new.clone(), toxics)?;
        let name = new.name.clone();
        for spec in &entry.toxics {
            self.expire_later(&name, spec);
            self.drive_flap(&entry.link, spec);
        }
        proxies.insert(new.name, entry);
        self.apply_cuts(&proxies);
        Ok(view(&name, &proxies[&name]))
    }

    fn build(&self, new: NewProxy, toxics: Vec<ToxicSpec>) -> Result<Entry, Error> {
        for spec in &toxics {
            spec.fits(new.protocol)?;
        }
        if new.protocol == Protocol::Udp {
            // A UDP upstream is resolved when a session opens, where a bad address could only
            // be logged: refuse it now.
            crate::config::validate_addr(&new.upstream)
                .map_err(|m| AttrError::new("upstream", &m))?;
        }
        let rewrite_host = check_rewrite_host(new.protocol, new.rewrite_host.as_deref())
            .map_err(|m| AttrError::new("rewrite_host", &m))?;
        // Bind before anything else exists: a proxy that cannot listen leaves no trace, not
        // even an empty metric series under its name.
        let listener = if new.enabled {
            Some(bind(&new.listen, new.protocol)?)
        } else {
            None
        };
        let link = Arc::new(Link::new(
            &new.name,
            &new.upstream,
            new.protocol,
            self.inner.settings.clone(),
        ));
        link.set_fault_header(new.fault_header);
        link.set_rewrite_host(rewrite_host);
        link.set_measure(new.measure.apply(&MeasureSettings::default()));
        if let Some(set) = new.upstreams {
            link.set_upstreams(set);
        }
        let toxics: Vec<Arc<ToxicSpec>> = toxics.into_iter().map(Arc::new).collect();
        link.set_toxics(toxics.clone());
        let mut entry = Entry {
            link,
            listen: new.listen,
            running: None,
            toxics,
            labels: new.labels,
        };
        if let Some(listener) = listener {
            self.serve(&mut entry, listener)?;
        }
        Ok(entry)
    }

    /// Applies a partial update. Changing only the upstream keeps the listener and open
    /// connections; changing the listen address rebinds, and if the new address cannot be
    /// bound the proxy keeps the old one.
    pub async fn update(&self, name: &str, patch: ProxyPatch) -> Result<ProxyView, Error> {
        let mut proxies = self.inner.proxies.lock().await;
        let entry = proxies.get_mut(name).ok_or(Error::ProxyNotFound)?;
        if let Some(upstream) = &patch.upstream {
            require(upstream, "upstream")?;
            if entry.link.protocol() == Protocol::Udp {
                crate::config::validate_addr(upstream)
                    .map_err(|m| AttrError::new("upstream", &m))?;
            }
        }
        let rewrite_host = patch
            .rewrite_host
            .as_deref()
            .map(|h| check_rewrite_host(entry.link.protocol(), Some(h)))
            .transpose()
            .map_err(|m| AttrError::new("rewrite_host", &m))?;
        if let Some(protocol) = patch.protocol {
            if protocol != entry.link.protocol() {
                return Err(AttrError::new(
                    "protocol",
                    &format!(
                        "a proxy cannot change protocol (it is {:?}); delete it and create it again",
                        entry.link.protocol().as_str()
                    ),
                )
                .into());
            }
        }
        let enabled = patch.enabled.unwrap_or(entry.running.is_some());
        let listen_changed = match &patch.listen {
            Some(listen) => resolve(listen)? != entry.listen,
            None => false,
        };
        if listen_changed {
            let old_listen = entry.listen.clone();
            let was_running = entry.running.is_some();
            stop(entry).await;
            entry.listen = patch.listen.clone().unwrap_or_default();
            if enabled {
                if let Err(err) = self.start(entry) {
                    entry.listen = old_listen;
                    if was_running {
                        // Best effort: the old address was ours a moment ago.
                        let _ = self.start(entry);
                    }
                    return Err(err);
                }
            }
        } else if enabled && entry.running.is_none() {
            self.start(entry)?;
        } else if !enabled {
            stop(entry).await;
        }
        let rerouted = patch.upstream.is_some() || patch.upstreams.is_some();
        if let Some(set) = patch.upstreams {
            entry.link.set_upstreams(set);
        } else if let Some(upstream) = patch.upstream {
            entry.link.set_upstream(&upstream);
        }
        if rerouted && patch.drain {
            if let Some(running) = &entry.running {
                info!(proxy = name, "upstream changed; draining open connections");
                running.drain();
            }
        }
        if let Some(on) = patch.fault_header {
            entry.link.set_fault_header(on);
        }
        if let Some(host) = rewrite_host {
            entry.link.set_rewrite_host(host);
        }
        if patch.measure != MeasurePatch::default() {
            // Bytes moved so far are priced at the old price.
            crate::measure::ProxyStats::transport_cost(&entry.link);
            let measure = patch.measure.apply(&entry.link.measure());
            entry.link.set_measure(measure);
        }
        if let Some(labels) = patch.labels {
            entry.labels = Some(labels);
            self.apply_cuts(&proxies);
        }
        Ok(view(name, &proxies[name]))
    }

    /// A proxy's link, for its live figures.
    pub async fn link(&self, name: &str) -> Result<Arc<Link>, Error> {
        let proxies = self.inner.proxies.lock().await;
        proxies
            .get(name)
            .map(|e| e.link.clone())
            .ok_or(Error::ProxyNotFound)
    }

    /// Every proxy's link.
    pub async fn links(&self) -> Vec<Arc<Link>> {
        let proxies = self.inner.proxies.lock().await;
        proxies.values().map(|e| e.link.clone()).collect()
    }

    /// Deletes a proxy, closing its listener and connections.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let mut proxies = self.inner.proxies.lock().await;
        let mut entry = proxies.remove(name).ok_or(Error::ProxyNotFound)?;
        stop(&mut entry).await;
        Ok(())
    }

    /// Toxiproxy's `/populate`: all entries are validated first; an identical existing proxy
    /// (same upstream and resolved listen) is kept with its toxics, a different one replaced,
    /// unlisted ones left alone. On a bind failure the proxies handled so far stay, and are
    /// returned along with the error.
    pub async fn populate(&self, list: Vec<NewProxy>) -> (Vec<ProxyView>, Option<Error>) {
        for (i, new) in list.iter().enumerate() {
            if new.name.is_empty() {
                return (
                    Vec::new(),
                    Some(Error::MissingField(format!("name at proxy {}", i + 1))),
                );
            }
            if new.upstream.is_empty() {
                return (
                    Vec::new(),
                    Some(Error::MissingField(format!("upstream at proxy {}", i + 1))),
                );
            }
        }
        let mut done = Vec::new();
        let mut proxies = self.inner.proxies.lock().await;
        for new in list {
            if let Some(existing) = proxies.get_mut(&new.name) {
                let same = match resolve(&new.listen) {
                    Ok(listen) => {
                        listen == existing.listen
                            && *existing.link.upstream() == new.upstream
                            && existing.link.protocol() == new.protocol
                    }
                    Err(err) => return (done, Some(err)),
                };
                if same {
                    done.push(view(&new.name, existing));
                    continue;
                }
                stop(existing).await;
                proxies.remove(&new.name);
            }
            match self.build(new.clone(), Vec::new()) {
                Ok(entry) => {
                    done.push(view(&new.name, &entry));
                    proxies.insert(new.name, entry);
                }
                Err(err) => return (done, Some(err)),
            }
        }
        (done, None)
    }

    /// Toxiproxy's `/reset`: every toxic removed, every proxy enabled, and (fallacy's faults
    /// too) every partition healed.
    pub async fn reset(&self) -> Result<(), Error> {
        let mut proxies = self.inner.proxies.lock().await;
        self.partitions().clear();
        self.apply_cuts(&proxies);
        let mut first_error = None;
        for entry in proxies.values_mut() {
            entry.toxics.clear();
            entry.link.set_toxics(Vec::new());
            if entry.running.is_none() {
                if let Err(err) = self.start(entry) {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The toxics of a proxy, upstream first.
    pub async fn toxics(&self, proxy: &str) -> Result<Vec<Arc<ToxicSpec>>, Error> {
        Ok(self.get(proxy).await?.toxics)
    }

    /// One toxic.
    pub async fn toxic(&self, proxy: &str, name: &str) -> Result<Arc<ToxicSpec>, Error> {
        let proxies = self.inner.proxies.lock().await;
        let entry = proxies.get(proxy).ok_or(Error::ProxyNotFound)?;
        entry
            .toxics
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or(Error::ToxicNotFound)
    }

    /// A toxic has just been put in `entry.toxics`: publish the list to open connections, and
    /// start its ttl and its flap driver.
    fn installed(&self, proxy: &str, entry: &Entry, spec: &Arc<ToxicSpec>) {
        entry.link.set_toxics(entry.toxics.clone());
        self.expire_later(proxy, spec);
        self.drive_flap(&entry.link, spec);
    }

    /// Sets a checked toxic: replaces the one of that name, or adds it (a config reload).
    pub async fn put_toxic(&self, proxy: &str, spec: ToxicSpec) -> Result<(), Error> {
        let mut proxies = self.inner.proxies.lock().await;
        let entry = proxies.get_mut(proxy).ok_or(Error::ProxyNotFound)?;
        spec.fits(entry.link.protocol())?;
        let spec = Arc::new(spec);
        match entry.toxics.iter_mut().find(|t| t.name == spec.name) {
            Some(slot) => *slot = spec.clone(),
            None => entry.toxics.push(spec.clone()),
        }
        self.installed(proxy, entry, &spec);
        Ok(())
    }

    /// Adds a toxic. Checks, in Toxiproxy's order: proxy, stream, type, duplicate name, then
    /// attributes. Open connections pick it up at their next chunk.
    pub async fn add_toxic(
        &self,
        proxy: &str,
        envelope: Envelope,
    ) -> Result<Arc<ToxicSpec>, Error> {
        let mut proxies = self.inner.proxies.lock().await;
        let entry = proxies.get_mut(proxy).ok_or(Error::ProxyNotFound)?;
        let head = envelope.head()?;
        if entry.toxics.iter().any(|t| t.name == head.name) {
            return Err(Error::ToxicExists);
        }
        let spec = Arc::new(envelope.into_spec(head)?);
        spec.fits(entry.link.protocol())?;
        entry.toxics.push(spec.clone());
        self.installed(proxy, entry, &spec);
        Ok(spec)
    }

    /// Merges new attributes into a toxic and replaces its toxicity if given.
    pub async fn update_toxic(
        &self,
        proxy: &str,
        name: &str,
        patch: ToxicPatch,
    ) -> Result<Arc<ToxicSpec>, Error> {
        let mut proxies = self.inner.proxies.lock().await;
        let entry = proxies.get_mut(proxy).ok_or(Error::ProxyNotFound)?;
        let slot = entry
            .toxics
            .iter_mut()
            .find(|t| t.name == name)
            .ok_or(Error::ToxicNotFound)?;
        let spec = Arc::new(slot.patched(&patch)?);
        spec.fits(entry.link.protocol())?;
        *slot = spec.clone();
        self.installed(proxy, entry, &spec);
        Ok(spec)
    }

    /// Removes a toxic. Never waits on connections: they notice at their next wake-up.
    pub async fn remove_toxic(&self, proxy: &str, name: &str) -> Result<(), Error> {
        let mut proxies = self.inner.proxies.lock().await;
        let entry = proxies.get_mut(proxy).ok_or(Error::ProxyNotFound)?;
        let before = entry.toxics.len();
        entry.toxics.retain(|t| t.name != name);
        if entry.toxics.len() == before {
            return Err(Error::ToxicNotFound);
        }
        entry.link.set_toxics(entry.toxics.clone());
        Ok(())
    }

    /// Runs `job` at `at`, unless the server shuts down first (a 30-minute ttl must not hold
    /// up a drain).
    fn later(
        &self,
        at: tokio::time::Instant,
        job: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let stop = self.inner.accept_root.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep_until(at) => job.await,
            }
        });
    }

    /// Drives a `flap` toxic: up for `up`, down for `down`, until the toxic is removed or
    /// replaced (an update starts a new driver), its proxy is gone, or the server stops.
    fn drive_flap(&self, link: &Arc<Link>, spec: &Arc<ToxicSpec>) {
        let crate::toxic::ToxicKind::Flap(attrs) = &spec.kind else {
            return;
        };
        let mut cx = crate::toxic::ToxicCx {
            rng: link.rng_for(0, FLAP_STREAM),
        };
        let mut changes = link.subscribe();
        // Held weakly: a strong link would keep its own change channel open, so a deleted or
        // replaced proxy's driver never learnt it was gone and ran (holding the link) until the
        // server stopped; the 30-minute soak counted one task more per such proxy. Once the
        // last connection lets the link go, `changes` reports it closed.
        let link = Arc::downgrade(link);
        let (spec, attrs) = (spec.clone(), attrs.clone());
        let stop = self.inner.accept_root.clone();
        tokio::spawn(async move {
            let present = || {
                link.upgrade()
                    .is_some_and(|link| link.toxics().iter().any(|t| Arc::ptr_eq(t, &spec)))
            };
            let set_flap = |bits| {
                if let Some(link) = link.upgrade() {
                    link.set_flap(bits);
                }
            };
            // Waits `d`; false once the toxic or its proxy is gone, or the server stops.
            let mut wait = async |d: std::time::Duration| {
                let until = tokio::time::Instant::now() + d;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep_until(until) => return present(),
                        changed = changes.changed() => if changed.is_err() || !present() {
                            return false;
                        },
                    }
                }
            };
            loop {
                if !wait(attrs.draw(attrs.up, &mut cx.rng)).await {
                    break;
                }
                let down = attrs.draw(attrs.down, &mut cx.rng);
                if spec.applies(&mut cx) {
                    if let Some(link) = link.upgrade() {
                        info!(proxy = %link.name(), toxic = %spec.name, ?down, "flap: link down");
                        link.set_flap(attrs.down_bits());
                    }
                }
                let going = wait(down).await;
                set_flap(0);
                if !going {
                    break;
                }
            }
            set_flap(0);
        });
    }

    /// Arms the expiry of a toxic with a ttl. A later update moves `expires_at`; a timer that
    /// fires for an instant no longer set does nothing.
    fn expire_later(&self, proxy: &str, spec: &ToxicSpec) {
        if let Some(at) = spec.expires_at {
            let (store, proxy, name) = (self.clone(), proxy.to_owned(), spec.name.clone());
            self.later(at, async move { store.expire_toxic(&proxy, &name).await });
        }
    }

    async fn expire_toxic(&self, proxy: &str, name: &str) {
        let mut proxies = self.inner.proxies.lock().await;
        let Some(entry) = proxies.get_mut(proxy) else {
            return;
        };
        let now = tokio::time::Instant::now();
        let before = entry.toxics.len();
        entry
            .toxics
            .retain(|t| !(t.name == name && t.expires_at.is_some_and(|at| at <= now)));
        if entry.toxics.len() != before {
            entry.link.set_toxics(entry.toxics.clone());
            info!(proxy, toxic = name, "toxic removed: its ttl ran out");
        }
    }

    fn partitions(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (Partition, u64)>> {
        self.inner
            .partitions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Puts every proxy's cut under the current partitions on its link. Open connections see
    /// it at once (the link wakes them); new ones on their next accept.
    fn apply_cuts(&self, proxies: &BTreeMap<String, Entry>) {
        let partitions = self.partitions();
        let cuts = crate::partition::cuts(
            proxies.iter().map(|(n, e)| (n.as_str(), e.labels.as_ref())),
            &partitions,
        );
        for (name, bits) in cuts {
            proxies[name].link.set_cut(bits);
        }
    }

    /// Every partition, by name, with the proxies it cuts.
    pub async fn list_partitions(&self) -> Vec<PartitionView> {
        let proxies = self.inner.proxies.lock().await;
        let partitions = self.partitions();
        partitions
            .values()
            .map(|(p, _)| partition_view(p, &proxies))
            .collect()
    }

    /// Creates a partition from its JSON shape (API, or config converted). Validated against
    /// the proxies' names and labels first; it cuts open and new connections at once, and
    /// heals itself after its `duration` if it has one.
    pub async fn create_partition(&self, body: &serde_json::Value) -> Result<PartitionView, Error> {
        let proxies = self.inner.proxies.lock().await;
        let partition = partition_against(body, &proxies)?;
        let id = self.inner.next_partition.fetch_add(1, Ordering::Relaxed);
        {
            let mut partitions = self.partitions();
            if partitions.contains_key(&partition.name) {
                return Err(Error::PartitionExists);
            }
            partitions.insert(partition.name.clone(), (partition.clone(), id));
        }
        self.apply_cuts(&proxies);
        let view = partition_view(&partition, &proxies);
        info!(partition = %partition.name, cut = ?view.proxies, "partition created");
        if let Some(after) = partition.duration {
            let (store, name) = (self.clone(), partition.name.clone());
            self.later(tokio::time::Instant::now() + after, async move {
                store.heal(&name, Some(id)).await;
            });
        }
        Ok(view)
    }

    /// Checks a partition body against the proxies there are now, without creating it.
    pub async fn check_partition(&self, body: &serde_json::Value) -> Result<(), Error> {
        let proxies = self.inner.proxies.lock().await;
        partition_against(body, &proxies).map(|_| ())
    }

    /// Heals a partition: held bytes flow, waiting connections dial.
    pub async fn delete_partition(&self, name: &str) -> Result<(), Error> {
        if self.heal(name, None).await {
            Ok(())
        } else {
            Err(Error::PartitionNotFound)
        }
    }

    /// Removes a partition (only the one created as `id`, when given); true if it was there.
    async fn heal(&self, name: &str, id: Option<u64>) -> bool {
        let proxies = self.inner.proxies.lock().await;
        let removed = {
            let mut partitions = self.partitions();
            match partitions.get(name) {
                Some((_, pid)) if id.is_none_or(|id| id == *pid) => {
                    partitions.remove(name).is_some()
                }
                _ => false,
            }
        };
        if removed {
            self.apply_cuts(&proxies);
            info!(partition = %name, "partition healed");
        }
        removed
    }

    /// Binds the entry's listen address and spawns its accept loop.
    fn start(&self, entry: &mut Entry) -> Result<(), Error> {
        let listener = bind(&entry.listen, entry.link.protocol())?;
        self.serve(entry, listener)
    }

    /// Spawns the accept loop of an already bound listener (the receive loop of a UDP socket).
    fn serve(&self, entry: &mut Entry, bound: Bound) -> Result<(), Error> {
        let addr = match &bound {
            Bound::Tcp(l) => l.local_addr(),
            Bound::Udp(s) => s.local_addr(),
        }
        .map_err(|e| listen_error(&entry.listen, &e))?;
        let accept = self.inner.accept_root.child_token();
        let conns = self.inner.conn_root.child_token();
        let epoch = Arc::new(std::sync::Mutex::new(conns.child_token()));
        let task = match bound {
            Bound::Tcp(listener) => self.inner.tracker.spawn(listener::serve(
                listener,
                entry.link.clone(),
                accept.clone(),
                epoch.clone(),
                self.inner.tracker.clone(),
            )),
            Bound::Udp(socket) => self.inner.tracker.spawn(crate::proxy::udp::serve(
                socket,
                entry.link.clone(),
                accept.clone(),
                epoch.clone(),
            )),
        };
        info!(proxy = %entry.link.name(), listen = %addr, upstream = %entry.link.upstream(), "proxy listening");
        entry.listen = addr.to_string();
        entry.running = Some(Running {
            accept,
            conns,
            epoch,
            task,
        });
        Ok(())
    }
}

/// Stops accepting, closes open connections, and waits until the listening socket is closed.
async fn stop(entry: &mut Entry) {
    if let Some(running) = entry.running.take() {
        running.accept.cancel();
        running.conns.cancel();
        let _ = running.task.await;
        info!(proxy = %entry.link.name(), "proxy stopped");
    }
}

/// The seeding stream of flap drivers (0..=3 are taken by connections).
const FLAP_STREAM: u64 = 4;

/// A partition as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionView {
    /// The partition.
    pub partition: Partition,
    /// The proxies it cuts now.
    pub proxies: Vec<String>,
}

/// A partition body read against the proxies' names and node labels.
fn partition_against(
    body: &serde_json::Value,
    proxies: &BTreeMap<String, Entry>,
) -> Result<Partition, Error> {
    let nodes = proxies
        .values()
        .flat_map(|e| e.labels.iter().flat_map(|l| [l.from.clone(), l.to.clone()]))
        .collect();
    let names = proxies.keys().cloned().collect();
    Ok(Partition::from_json(body, &nodes, &names)?)
}

fn partition_view(p: &Partition, proxies: &BTreeMap<String, Entry>) -> PartitionView {
    PartitionView {
        partition: p.clone(),
        proxies: proxies
            .iter()
            .filter(|(n, e)| p.cut(n, e.labels.as_ref()) != 0)
            .map(|(n, _)| n.clone())
            .collect(),
    }
}

fn view(name: &str, entry: &Entry) -> ProxyView {
    let mut toxics = entry.toxics.clone();
    // Stable: creation order within each stream.
    toxics.sort_by_key(|t| t.direction == Direction::Downstream);
    ProxyView {
        name: name.to_owned(),
        listen: entry.listen.clone(),
        upstream: entry.link.upstream().to_string(),
        enabled: entry.running.is_some(),
        protocol: entry.link.protocol(),
        fault_header: entry.link.fault_header(),
        rewrite_host: entry.link.rewrite_host().map(|h| h.to_string()),
        measure: MeasureSettings::clone(&entry.link.measure()),
        labels: entry.labels.clone(),
        upstreams: entry.link.upstream_set().map(|s| UpstreamSet::clone(&s)),
        cut: entry.link.cut(),
        toxics,
    }
}

fn require(value: &str, field: &str) -> Result<(), Error> {
    if value.is_empty() {
        Err(Error::MissingField(field.to_owned()))
    } else {
        Ok(())
    }
}

fn listen_error(listen: &str, err: &std::io::Error) -> Error {
    Error::Listen {
        listen: listen.to_owned(),
        reason: err.to_string(),
    }
}

/// Resolves a listen address the way the API shows it: `localhost:N` becomes `127.0.0.1:N`.
pub fn resolve(listen: &str) -> Result<String, Error> {
    first_addr(listen).map(|a| a.to_string())
}

fn first_addr(listen: &str) -> Result<SocketAddr, Error> {
    let mut addrs = listen
        .to_socket_addrs()
        .map_err(|e| listen_error(listen, &e))?;
    // Prefer IPv4, as `localhost` usually means 127.0.0.1 to the people typing it.
    let all: Vec<SocketAddr> = addrs.by_ref().collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| Error::Listen {
            listen: listen.to_owned(),
            reason: "resolves to no address".into(),
        })
}

/// Binds synchronously, so the caller knows the outcome before it answers.
/// A bound listening socket.
enum Bound {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

fn bind(listen: &str, protocol: Protocol) -> Result<Bound, Error> {
    let addr = first_addr(listen)?;
    if protocol == Protocol::Udp {
        let std = std::net::UdpSocket::bind(addr).map_err(|e| listen_error(listen, &e))?;
        std.set_nonblocking(true)
            .map_err(|e| listen_error(listen, &e))?;
        return tokio::net::UdpSocket::from_std(std)
            .map(Bound::Udp)
            .map_err(|e| listen_error(listen, &e));
    }
    let std = StdListener::bind(addr).map_err(|e| listen_error(listen, &e))?;
    std.set_nonblocking(true)
        .map_err(|e| listen_error(listen, &e))?;
    TcpListener::from_std(std)
        .map(Bound::Tcp)
        .map_err(|e| listen_error(listen, &e))
}
