//! Scenarios: timelines of fault changes (PRODUCT.md section 7). This module is the pure part:
//! the format, its checks, and the planner that turns a scenario into a sorted list of timed
//! changes, with the changes that undo whatever a cycle left in effect at its end.
//!
//! ```text
//! TOML / JSON ──parse──▶ Scenario ──plan──▶ [Change { at, cycle, phase, action }]  (sorted)
//!                                              └─ the runner sleeps until each and applies it
//! ```
//!
//! A [`Model`] applies actions to a plain description of the state; property tests check that
//! folding the plan over it gives what applying the steps one by one gives, and that a cycle
//! ends where it started.

pub mod lab;
pub mod play;
pub mod record;
pub mod report;
pub mod runner;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::toxic::AttrError;
use crate::units::parse_duration;

/// The most cycles a finite scenario plans ahead.
pub const MAX_REPEAT: u32 = 1000;

/// One change a step makes.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Adds a toxic (`toxic` is the API's toxic body, with its final name).
    AddToxic {
        /// The proxy.
        proxy: String,
        /// The toxic's name.
        name: String,
        /// The body for `POST /proxies/{proxy}/toxics`.
        toxic: Value,
    },
    /// Updates a toxic (`patch` is the API's update body).
    UpdateToxic {
        /// The proxy.
        proxy: String,
        /// The toxic.
        name: String,
        /// The body for `PATCH /proxies/{proxy}/toxics/{name}`.
        patch: Value,
    },
    /// Removes a toxic.
    RemoveToxic {
        /// The proxy.
        proxy: String,
        /// The toxic.
        name: String,
    },
    /// Creates a partition (`body` is the API's partition body).
    Partition {
        /// Its name.
        name: String,
        /// The body for `POST /partitions`.
        body: Value,
    },
    /// Heals a partition.
    Heal(String),
    /// Enables a proxy.
    Enable(String),
    /// Disables a proxy.
    Disable(String),
    /// Points a proxy at another upstream.
    Upstream {
        /// The proxy.
        proxy: String,
        /// The new upstream.
        upstream: String,
    },
    /// Gives a proxy back the upstream it had before the scenario switched it.
    RestoreUpstream(String),
}

/// One step: a phase of the scenario, with the changes it makes at its instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Offset from the start of a cycle.
    pub at: Duration,
    /// The phase's name (`step N` unless named).
    pub phase: String,
    /// What it changes, in order.
    pub actions: Vec<Action>,
}

/// A checked scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Unique name.
    pub name: String,
    /// Length of one cycle; its changes are undone at its end.
    pub duration: Duration,
    /// Cycles; 0 = until stopped.
    pub repeat: u32,
    /// In order of `at`.
    pub steps: Vec<Step>,
}

/// A timed change of the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Offset from the scenario's start.
    pub at: Duration,
    /// Which cycle (from 0).
    pub cycle: u32,
    /// The phase it opens (the step's), or `"end"` for a cycle's undoing.
    pub phase: String,
    /// What to do.
    pub action: Action,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> AttrError {
    AttrError {
        path: path.into(),
        message: message.into(),
    }
}

fn string(map: &Map<String, Value>, key: &str, path: &str) -> Result<String, AttrError> {
    match map.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(err(format!("{path}.{key}"), "required"))
        }
        Some(other) => Err(err(
            format!("{path}.{key}"),
            format!("must be a string, got {other}"),
        )),
    }
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, AttrError> {
    v.as_object()
        .ok_or_else(|| err(path, format!("must be a table (an object), got {v}")))
}

fn duration(v: &Value, path: &str) -> Result<Duration, AttrError> {
    match v {
        Value::String(s) => parse_duration(s).map_err(|m| err(path, m)),
        other => Err(err(
            path,
            format!("must be a duration such as \"30s\", got {other}"),
        )),
    }
}

impl Scenario {
    /// Reads a TOML scenario; errors name the field (`step[2].at`).
    pub fn from_toml(text: &str) -> Result<Scenario, AttrError> {
        Scenario::from_json(&toml_to_json(text)?)
    }

    /// Reads a file's text: JSON when it starts with `{`, TOML otherwise. Also answers the
    /// JSON shape, to post to `/scenarios`.
    pub fn from_text(text: &str) -> Result<(Scenario, Value), AttrError> {
        let json = if text.trim_start().starts_with('{') {
            serde_json::from_str(text).map_err(|e| {
                err(
                    format!("scenario (line {}, column {})", e.line(), e.column()),
                    format!("not valid JSON: {e}"),
                )
            })?
        } else {
            toml_to_json(text)?
        };
        Ok((Scenario::from_json(&json)?, json))
    }

    /// Reads the JSON shape (`POST /scenarios`, or TOML converted).
    pub fn from_json(v: &Value) -> Result<Scenario, AttrError> {
        let map = object(v, "scenario")?;
        for key in map.keys() {
            if !matches!(key.as_str(), "name" | "duration" | "repeat" | "step") {
                return Err(err(
                    key.as_str(),
                    "unknown field; a scenario has name, duration, repeat and step",
                ));
            }
        }
        let name = match map.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(err("name", "required: a name for the scenario")),
        };
        let total = duration(
            map.get("duration").ok_or_else(|| {
                err(
                    "duration",
                    "required: how long one cycle lasts, e.g. \"120s\"",
                )
            })?,
            "duration",
        )?;
        if total.is_zero() {
            return Err(err("duration", "must be more than 0"));
        }
        let repeat = match map.get("repeat") {
            None | Some(Value::Null) => 1,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(r) if r <= u64::from(MAX_REPEAT) => r as u32,
                _ => {
                    return Err(err(
                        "repeat",
                        format!("must be 0 (until stopped) to {MAX_REPEAT}, got {n}"),
                    ));
                }
            },
            Some(other) => {
                return Err(err(
                    "repeat",
                    format!("must be a whole number, got {other}"),
                ));
            }
        };
        let raw_steps = match map.get("step") {
            Some(Value::Array(list)) if !list.is_empty() => list,
            _ => return Err(err("step", "required: at least one [[step]]")),
        };
        let mut steps: Vec<Step> = Vec::new();
        for (i, raw) in raw_steps.iter().enumerate() {
            let path = format!("step[{i}]");
            let step = parse_step(raw, &path, i)?;
            if step.at > total {
                return Err(err(
                    format!("{path}.at"),
                    format!(
                        "{} is past the scenario's duration ({})",
                        crate::units::format_duration(step.at),
                        crate::units::format_duration(total)
                    ),
                ));
            }
            if let Some(prev) = steps.last().filter(|p| p.at > step.at) {
                return Err(err(
                    format!("{path}.at"),
                    format!(
                        "{} comes before the step above it ({}): steps go in time order",
                        crate::units::format_duration(step.at),
                        crate::units::format_duration(prev.at)
                    ),
                ));
            }
            steps.push(step);
        }
        Ok(Scenario {
            name,
            duration: total,
            repeat,
            steps,
        })
    }

    /// The changes of one cycle, from its start at `cycle × duration`, closed by the changes
    /// that undo what it left in effect.
    pub fn plan_cycle(&self, cycle: u32) -> Vec<Change> {
        let offset = self.duration * cycle;
        let mut model = Model::default();
        let mut changes = Vec::new();
        for step in &self.steps {
            for action in &step.actions {
                model.apply(action);
                changes.push(Change {
                    at: offset + step.at,
                    cycle,
                    phase: step.phase.clone(),
                    action: action.clone(),
                });
            }
        }
        for action in model.undo() {
            changes.push(Change {
                at: offset + self.duration,
                cycle,
                phase: "end".into(),
                action,
            });
        }
        changes
    }

    /// The whole plan, sorted by time (ties keep step order); for `repeat = 0`, the first
    /// cycle (the runner plans each next one as it goes).
    pub fn plan(&self) -> Vec<Change> {
        (0..self.repeat.max(1))
            .flat_map(|c| self.plan_cycle(c))
            .collect()
    }
}

/// TOML text as the JSON shape; a syntax error names its line and column.
fn toml_to_json(text: &str) -> Result<Value, AttrError> {
    let value: toml::Value = toml::from_str(text).map_err(|e| {
        let place = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" (line {line}, column {column})")
        });
        err(
            format!("scenario{}", place.unwrap_or_default()),
            e.message(),
        )
    })?;
    serde_json::to_value(value).map_err(|e| err("scenario", e.to_string()))
}

fn parse_step(raw: &Value, path: &str, index: usize) -> Result<Step, AttrError> {
    let map = object(raw, path)?;
    let at = duration(
        map.get("at").ok_or_else(|| {
            err(
                format!("{path}.at"),
                "required: when, from the start, e.g. \"30s\"",
            )
        })?,
        &format!("{path}.at"),
    )?;
    let phase = match map.get("name") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => format!("step {}", index + 1),
        Some(other) => {
            return Err(err(
                format!("{path}.name"),
                format!("must be a string, got {other}"),
            ));
        }
    };
    let mut actions = Vec::new();
    for (key, value) in map {
        if matches!(key.as_str(), "at" | "name") {
            continue;
        }
        // A list makes several changes of one kind: `remove = [{...}, {...}]`.
        match value {
            Value::Array(items) if !items.is_empty() => {
                for (j, item) in items.iter().enumerate() {
                    actions.push(parse_action(key, item, &format!("{path}.{key}[{j}]"))?);
                }
            }
            Value::Array(_) => {
                return Err(err(
                    format!("{path}.{key}"),
                    "an empty list changes nothing",
                ));
            }
            _ => actions.push(parse_action(key, value, &format!("{path}.{key}"))?),
        }
    }
    if actions.is_empty() {
        return Err(err(
            path,
            "changes nothing: give add, update, remove, partition, heal, enable, disable or upstream",
        ));
    }
    Ok(Step { at, phase, actions })
}

/// One change of a step: `key` is its kind, `at` its path for errors.
fn parse_action(key: &str, value: &Value, at: &str) -> Result<Action, AttrError> {
    Ok(match key {
        "add" => {
            let t = object(value, at)?;
            let proxy = string(t, "proxy", at)?;
            let kind = string(t, "type", at)?;
            let stream = t
                .get("stream")
                .and_then(Value::as_str)
                .unwrap_or("downstream")
                .to_owned();
            let name = match t.get("name") {
                Some(Value::String(n)) if !n.is_empty() => n.clone(),
                _ => format!("{kind}_{stream}"),
            };
            let mut toxic = t.clone();
            toxic.remove("proxy");
            toxic.insert("name".into(), Value::String(name.clone()));
            Action::AddToxic {
                proxy,
                name,
                toxic: Value::Object(toxic),
            }
        }
        "update" => {
            let t = object(value, at)?;
            let (proxy, name) = (string(t, "proxy", at)?, string(t, "toxic", at)?);
            let mut patch = t.clone();
            patch.remove("proxy");
            patch.remove("toxic");
            Action::UpdateToxic {
                proxy,
                name,
                patch: Value::Object(patch),
            }
        }
        "remove" => {
            let t = object(value, at)?;
            Action::RemoveToxic {
                proxy: string(t, "proxy", at)?,
                name: string(t, "toxic", at)?,
            }
        }
        "partition" => {
            let p = object(value, at)?;
            Action::Partition {
                name: string(p, "name", at)?,
                body: value.clone(),
            }
        }
        "heal" | "enable" | "disable" => {
            let Value::String(name) = value else {
                return Err(err(at, format!("must be a name, got {value}")));
            };
            match key {
                "heal" => Action::Heal(name.clone()),
                "enable" => Action::Enable(name.clone()),
                _ => Action::Disable(name.clone()),
            }
        }
        "upstream" => {
            let u = object(value, at)?;
            Action::Upstream {
                proxy: string(u, "proxy", at)?,
                upstream: string(u, "upstream", at)?,
            }
        }
        other => {
            return Err(err(
                at,
                format!(
                    "unknown field {other:?}; a step has at, name, add, update, remove, partition, heal, enable, disable and upstream"
                ),
            ));
        }
    })
}

/// What a scenario has changed, as a plain description: enough to check plans and to know
/// what undoes a cycle.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    /// Toxics added (by proxy and name), with their body after updates.
    pub toxics: BTreeMap<(String, String), Value>,
    /// Partitions in force.
    pub partitions: BTreeSet<String>,
    /// Proxies disabled.
    pub disabled: BTreeSet<String>,
    /// Proxies switched to another upstream.
    pub upstreams: BTreeMap<String, String>,
}

impl Model {
    /// Applies one action.
    pub fn apply(&mut self, action: &Action) {
        match action {
            Action::AddToxic { proxy, name, toxic } => {
                self.toxics
                    .insert((proxy.clone(), name.clone()), toxic.clone());
            }
            Action::UpdateToxic { proxy, name, patch } => {
                if let Some(Value::Object(t)) = self.toxics.get_mut(&(proxy.clone(), name.clone()))
                {
                    for (k, v) in patch.as_object().into_iter().flatten() {
                        if k == "attributes" {
                            let attrs = t
                                .entry("attributes")
                                .or_insert_with(|| Value::Object(Map::new()));
                            if let (Value::Object(a), Value::Object(new)) = (attrs, v) {
                                a.extend(new.clone());
                            }
                        } else {
                            t.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            Action::RemoveToxic { proxy, name } => {
                self.toxics.remove(&(proxy.clone(), name.clone()));
            }
            Action::Partition { name, .. } => {
                self.partitions.insert(name.clone());
            }
            Action::Heal(name) => {
                self.partitions.remove(name);
            }
            Action::Disable(p) => {
                self.disabled.insert(p.clone());
            }
            Action::Enable(p) => {
                self.disabled.remove(p);
            }
            Action::Upstream { proxy, upstream } => {
                self.upstreams.insert(proxy.clone(), upstream.clone());
            }
            Action::RestoreUpstream(p) => {
                self.upstreams.remove(p);
            }
        }
    }

    /// The actions that bring this state back to none: toxics removed, partitions healed,
    /// proxies enabled, upstreams restored.
    pub fn undo(&self) -> Vec<Action> {
        let toxics = self.toxics.keys().map(|(proxy, name)| Action::RemoveToxic {
            proxy: proxy.clone(),
            name: name.clone(),
        });
        let heals = self.partitions.iter().cloned().map(Action::Heal);
        let enables = self.disabled.iter().cloned().map(Action::Enable);
        let restores = self.upstreams.keys().cloned().map(Action::RestoreUpstream);
        toxics.chain(heals).chain(enables).chain(restores).collect()
    }
}

#[cfg(test)]
mod tests;
