//! Playing a scenario: check it against the store, then sleep until each planned change and
//! apply it through the store (the same methods the admin API calls). Stopping reverts what
//! the current cycle has changed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::record::{self, Recorder};
use super::{Action, Change, Model, Scenario};
use crate::proxy::UpstreamSet;
use crate::state::{ProxyPatch, Store};
use crate::toxic::{AttrError, Envelope, ToxicPatch};

/// What a running scenario shows.
pub struct Status {
    /// The phase in force (the last step applied), `None` before the first.
    pub phase: Option<String>,
    /// The cycle being played (from 0).
    pub cycle: u32,
    /// Changes applied so far.
    pub applied: u64,
    /// Changes the store refused while running (the scenario goes on).
    pub errors: Vec<String>,
    /// The next change: when (from the start) and what.
    pub next: Option<(Duration, String)>,
    /// Over: played to its end, or stopped.
    pub done: bool,
    /// Stopped before its end.
    pub stopped: bool,
    /// Its figures, phase by phase.
    pub record: Recorder,
}

/// A scenario playing in the background.
pub struct Running {
    /// The scenario.
    pub scenario: Scenario,
    started: Instant,
    every: Duration,
    status: Arc<Mutex<Status>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The figures `GET /scenarios` shows; with `detail` (`GET /scenarios/{name}`), the
    /// figures of every phase so far, and with `series` their time series too.
    pub fn to_json(&self, detail: bool, series: bool) -> Value {
        let s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = json!({
            "name": self.scenario.name,
            "duration": crate::units::format_duration(self.scenario.duration),
            "repeat": self.scenario.repeat,
            "state": match (s.done, s.stopped) {
                (false, _) => "running",
                (true, false) => "done",
                (true, true) => "stopped",
            },
            "phase": s.phase,
            "cycle": s.cycle,
            "elapsed_ms": self.started.elapsed().as_millis() as u64,
            "applied": s.applied,
            "errors": s.errors,
            "next": s.next.as_ref().map(|(at, what)| json!({"at_ms": at.as_millis() as u64, "change": what})),
            "sample_every_ms": self.every.as_millis() as u64,
            "latest": s.record.latest(),
        });
        if detail
            && let (Value::Object(out), Value::Object(record)) =
                (&mut out, s.record.to_json(series))
        {
            out.extend(record);
        }
        out
    }

    /// Stops it and reverts what its current cycle changed; waits for both, and answers its
    /// final figures.
    pub async fn stop(mut self) -> Value {
        self.stop.cancel();
        let _ = (&mut self.task).await;
        self.to_json(true, true)
    }

    /// Whether it has played to its end.
    pub fn done(&self) -> bool {
        lock(&self.status).done
    }
}

fn describe(a: &Action) -> String {
    match a {
        Action::AddToxic { proxy, name, .. } => format!("add {proxy}/{name}"),
        Action::UpdateToxic { proxy, name, .. } => format!("update {proxy}/{name}"),
        Action::RemoveToxic { proxy, name } => format!("remove {proxy}/{name}"),
        Action::Partition { name, .. } => format!("partition {name}"),
        Action::Heal(n) => format!("heal {n}"),
        Action::Enable(p) => format!("enable {p}"),
        Action::Disable(p) => format!("disable {p}"),
        Action::Upstream { proxy, upstream } => format!("upstream {proxy} -> {upstream}"),
        Action::RestoreUpstream(p) => format!("restore upstream of {p}"),
    }
}

/// Checks every change against the store before anything is applied: the proxies exist, the
/// toxic bodies decode and fit their proxy, updated and removed toxics exist (or are added
/// earlier by the scenario). The error names the step.
pub async fn check(store: &Store, scenario: &Scenario) -> Result<(), AttrError> {
    let mut added: Vec<(String, String)> = Vec::new();
    // Partitions in force as the steps go: those there now, then as the scenario makes and
    // heals them.
    let mut partitions: Vec<String> = store
        .list_partitions()
        .await
        .into_iter()
        .map(|p| p.partition.name)
        .collect();
    for (i, step) in scenario.steps.iter().enumerate() {
        let at = |what: &str| format!("step[{i}].{what}");
        for action in &step.actions {
            let proxy = match action {
                Action::AddToxic { proxy, .. }
                | Action::UpdateToxic { proxy, .. }
                | Action::RemoveToxic { proxy, .. }
                | Action::Upstream { proxy, .. }
                | Action::Enable(proxy)
                | Action::Disable(proxy)
                | Action::RestoreUpstream(proxy) => Some(proxy),
                _ => None,
            };
            let view =
                match proxy {
                    Some(p) => Some(store.get(p).await.map_err(|_| {
                        AttrError::new(&at("proxy"), &format!("no proxy named {p:?}"))
                    })?),
                    None => None,
                };
            match action {
                Action::AddToxic { proxy, name, toxic } => {
                    let env = Envelope::from_json(toxic.clone())
                        .map_err(|e| AttrError::new(&at("add"), &e.to_string()))?;
                    let head = env
                        .head()
                        .map_err(|e| AttrError::new(&at("add"), &e.to_string()))?;
                    let spec = env
                        .into_spec(head)
                        .map_err(|e| AttrError::new(&at(&format!("add.{}", e.path)), &e.message))?;
                    if let Some(v) = &view {
                        spec.fits(v.protocol).map_err(|e| {
                            AttrError::new(&at(&format!("add.{}", e.path)), &e.message)
                        })?;
                    }
                    added.push((proxy.clone(), name.clone()));
                }
                Action::UpdateToxic { proxy, name, .. } | Action::RemoveToxic { proxy, name } => {
                    let known = added.contains(&(proxy.clone(), name.clone()))
                        || view
                            .as_ref()
                            .is_some_and(|v| v.toxics.iter().any(|t| &t.name == name));
                    if !known {
                        return Err(AttrError::new(
                            &at("toxic"),
                            &format!(
                                "no toxic {name:?} on proxy {proxy:?}, nor added by an earlier step"
                            ),
                        ));
                    }
                }
                Action::Partition { name, body } => {
                    store.check_partition(body).await.map_err(|e| match e {
                        crate::state::Error::Attr(a) => {
                            AttrError::new(&at(&format!("partition.{}", a.path)), &a.message)
                        }
                        other => AttrError::new(&at("partition"), &other.to_string()),
                    })?;
                    if partitions.contains(name) {
                        return Err(AttrError::new(
                            &at("partition.name"),
                            &format!("a partition {name:?} is already in force at this step"),
                        ));
                    }
                    partitions.push(name.clone());
                }
                Action::Heal(name) => {
                    let Some(i) = partitions.iter().position(|p| p == name) else {
                        return Err(AttrError::new(
                            &at("heal"),
                            &format!("no partition {name:?}, nor one made by an earlier step"),
                        ));
                    };
                    partitions.remove(i);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Starts playing a checked scenario. It records every proxy there is now.
pub async fn start(store: Store, scenario: Scenario) -> Running {
    // The answer to POST shows the first change even before the task has run.
    let first = scenario.plan_cycle(0).into_iter().next();
    let started = Instant::now();
    let status = Arc::new(Mutex::new(Status {
        phase: None,
        cycle: 0,
        applied: 0,
        errors: Vec::new(),
        next: first.map(|c| (c.at, describe(&c.action))),
        done: false,
        stopped: false,
        record: Recorder::new(store.links().await, started),
    }));
    let stop = CancellationToken::new();
    let every = record::sample_every(scenario.duration, scenario.repeat);
    let task = {
        let (status, stop, scenario) = (status.clone(), stop.clone(), scenario.clone());
        tokio::spawn(async move { play(store, scenario, started, status, stop, every).await })
    };
    Running {
        scenario,
        started,
        every,
        status,
        stop,
        task,
    }
}

fn lock(status: &Mutex<Status>) -> std::sync::MutexGuard<'_, Status> {
    status.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps until `deadline`, sampling the figures on the way. False when stopped first.
async fn wait_until(
    deadline: Instant,
    stop: &CancellationToken,
    status: &Mutex<Status>,
    every: Duration,
) -> bool {
    loop {
        let tick = lock(status).record.next_sample(every);
        tokio::select! {
            biased;
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep_until(deadline), if deadline <= tick => return true,
            _ = tokio::time::sleep_until(tick) => lock(status).record.sample(Instant::now()),
        }
    }
}

async fn play(
    store: Store,
    scenario: Scenario,
    started: Instant,
    status: Arc<Mutex<Status>>,
    stop: CancellationToken,
    every: Duration,
) {
    let mut originals: BTreeMap<String, Original> = BTreeMap::new();
    let mut cycle = 0u32;
    info!(scenario = %scenario.name, "scenario started");
    let stopped = 'cycles: loop {
        let plan: Vec<Change> = scenario.plan_cycle(cycle);
        let mut model = Model::default();
        for (i, change) in plan.iter().enumerate() {
            {
                let mut s = lock(&status);
                s.cycle = cycle;
                s.next = Some((change.at, describe(&change.action)));
            }
            if !wait_until(started + change.at, &stop, &status, every).await {
                // Undo what this cycle has done so far.
                for action in model.undo() {
                    apply(&store, &action, &mut originals).await.ok();
                }
                break 'cycles true;
            }
            let opens = change.phase != "end"
                && lock(&status).record.phase() != Some((cycle, change.phase.as_str()));
            if opens {
                // The boundary comes before the change, so the change's effect is all inside.
                lock(&status)
                    .record
                    .enter(cycle, &change.phase, Instant::now());
            }
            let result = apply(&store, &change.action, &mut originals).await;
            model.apply(&change.action);
            let mut s = lock(&status);
            s.applied += 1;
            let what = describe(&change.action);
            s.record.change(Instant::now(), &change.phase, &what);
            if change.phase != "end" && s.phase.as_deref() != Some(&change.phase) {
                crate::metrics::scenario_phase(s.phase.as_deref(), Some(&change.phase));
                s.phase = Some(change.phase.clone());
            }
            if let Err(e) = result {
                warn!(scenario = %scenario.name, change = %what, %e, "scenario change refused");
                s.errors.push(format!("{what}: {e}"));
            }
            if i + 1 == plan.len() {
                s.next = None;
            }
        }
        cycle += 1;
        // Wait out the cycle, so that its last phase lasts until its end and `done` means
        // the timeline is over.
        if !wait_until(started + scenario.duration * cycle, &stop, &status, every).await {
            break true;
        }
        if scenario.repeat != 0 && cycle >= scenario.repeat {
            break false;
        }
        lock(&status)
            .record
            .enter(cycle, "baseline", Instant::now());
    };
    let mut s = lock(&status);
    s.record.finish(Instant::now());
    crate::metrics::scenario_phase(s.phase.as_deref(), None);
    s.done = true;
    s.stopped = stopped;
    s.next = None;
    info!(scenario = %scenario.name, stopped, "scenario over");
}

/// A proxy's upstream before the scenario switched it: the address, and its set of upstreams
/// when it has one. (Restoring the address alone replaced a set with its first member, so a
/// cycle did not end where it started: fuzz target scenario_file, whose input is kept in
/// fuzz/regressions/scenario_file/upstream_set_restored.toml.)
type Original = (String, Option<UpstreamSet>);

/// Applies one change through the store.
async fn apply(
    store: &Store,
    action: &Action,
    originals: &mut BTreeMap<String, Original>,
) -> Result<(), String> {
    let result = match action {
        Action::AddToxic { proxy, toxic, .. } => {
            let env = Envelope::from_json(toxic.clone()).map_err(|e| e.to_string())?;
            store.add_toxic(proxy, env).await.map(|_| ())
        }
        Action::UpdateToxic { proxy, name, patch } => {
            let patch = ToxicPatch::from_json(patch.clone()).map_err(|e| e.to_string())?;
            store.update_toxic(proxy, name, patch).await.map(|_| ())
        }
        Action::RemoveToxic { proxy, name } => store.remove_toxic(proxy, name).await,
        Action::Partition { body, .. } => store.create_partition(body).await.map(|_| ()),
        Action::Heal(name) => store.delete_partition(name).await,
        Action::Enable(p) | Action::Disable(p) => {
            let patch = ProxyPatch {
                enabled: Some(matches!(action, Action::Enable(_))),
                ..ProxyPatch::default()
            };
            store.update(p, patch).await.map(|_| ())
        }
        Action::Upstream { proxy, upstream } => {
            if let Ok(v) = store.get(proxy).await {
                originals
                    .entry(proxy.clone())
                    .or_insert((v.upstream, v.upstreams));
            }
            let patch = ProxyPatch {
                upstream: Some(upstream.clone()),
                ..ProxyPatch::default()
            };
            store.update(proxy, patch).await.map(|_| ())
        }
        Action::RestoreUpstream(proxy) => match originals.remove(proxy) {
            Some((upstream, upstreams)) => {
                let patch = ProxyPatch {
                    upstream: Some(upstream),
                    upstreams,
                    ..ProxyPatch::default()
                };
                store.update(proxy, patch).await.map(|_| ())
            }
            None => Ok(()),
        },
    };
    result.map_err(|e| e.to_string())
}
