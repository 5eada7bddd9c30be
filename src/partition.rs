//! Partitions: named cuts between groups of nodes (fallacy 5, "topology doesn't change").
//!
//! Proxies carry `labels = {from, to}`, the nodes the link joins. A partition names two groups,
//! `a` and `b`; every proxy whose `from` is in one group and `to` in the other is cut, and a
//! proxy named in a group is cut whole. `direction = "a_to_b"` holds only traffic from A to B:
//! the `upstream` stream of a proxy from A to B, the `downstream` stream of one from B to A.
//!
//! This module is the pure part: the shapes, their validation and what each proxy's cut is.
//! The store applies cuts to links ([`crate::proxy::Link::set_cut`]); the data paths read them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::toxic::AttrError;

/// The bit of a held upstream stream (client to server) in a link's cut.
pub const HOLD_UPSTREAM: u8 = 1;
/// The bit of a held downstream stream.
pub const HOLD_DOWNSTREAM: u8 = 2;
/// Set with the hold bits when the cut resets instead of holding.
pub const RESET: u8 = 4;

/// The hold bit of a direction.
pub fn hold_bit(direction: crate::toxic::Direction) -> u8 {
    match direction {
        crate::toxic::Direction::Upstream => HOLD_UPSTREAM,
        crate::toxic::Direction::Downstream => HOLD_DOWNSTREAM,
    }
}

/// The nodes a proxy joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// The client's node.
    pub from: String,
    /// The upstream's node.
    pub to: String,
}

impl Labels {
    /// Reads `{"from": ..., "to": ...}`; the error names the field.
    pub fn from_json(value: &Value) -> Result<Labels, AttrError> {
        let Value::Object(map) = value else {
            return Err(AttrError::new(
                "labels",
                "must be an object {\"from\": node, \"to\": node}",
            ));
        };
        if let Some(key) = map.keys().find(|k| !matches!(k.as_str(), "from" | "to")) {
            return Err(AttrError::new(
                &format!("labels.{key}"),
                "unknown label; use \"from\" and \"to\"",
            ));
        }
        let get = |key: &str| match map.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(Value::String(_)) | None => Err(AttrError::new(
                &format!("labels.{key}"),
                "required: the name of a node",
            )),
            Some(other) => Err(AttrError::new(
                &format!("labels.{key}"),
                &format!("must be a string, got {other}"),
            )),
        };
        Ok(Labels {
            from: get("from")?,
            to: get("to")?,
        })
    }

    /// As the API shows it.
    pub fn to_json(&self) -> Value {
        json!({"from": self.from, "to": self.to})
    }
}

impl Partition {
    /// As the API shows it, with the proxies it cuts.
    pub fn to_json(&self, proxies: &[String]) -> Value {
        json!({
            "name": self.name,
            "a": self.a,
            "b": self.b,
            "direction": match self.way { Way::Both => "both", Way::AToB => "a_to_b" },
            "mode": match self.mode { Mode::Blackhole => "blackhole", Mode::Reset => "reset" },
            "duration": self.duration.map(crate::units::format_duration),
            "owner": self.owner,
            "proxies": proxies,
        })
    }
}

/// Which traffic a partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Both ways between the groups.
    Both,
    /// Only from A to B; B to A flows.
    AToB,
}

/// What a partition does to the traffic it cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Holds the bytes and keeps connections open; new connections wait. On heal the held
    /// bytes flow in order, as TCP's retransmissions would deliver them.
    Blackhole,
    /// Resets open connections and refuses new ones.
    Reset,
}

/// A partition as asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// Unique name.
    pub name: String,
    /// One group of nodes (or proxy names).
    pub a: Vec<String>,
    /// The other group.
    pub b: Vec<String>,
    /// Both ways, or only A to B.
    pub way: Way,
    /// Hold or reset.
    pub mode: Mode,
    /// Heals itself after this long.
    pub duration: Option<Duration>,
    /// Members of either group that name a proxy rather than a node: cut whole.
    pub whole: Vec<String>,
    /// Who made it.
    pub owner: Option<String>,
}

/// The most names in one group: a partition is meant for people to read.
const MAX_GROUP: usize = 256;

impl Partition {
    /// Reads the API's (and the config's, converted) shape. `nodes` holds every node label,
    /// `proxies` every proxy name; a member is a node when some proxy has that label, else a
    /// proxy; anything else is refused, so a typo cannot quietly cut nothing.
    pub fn from_json(
        value: &Value,
        nodes: &BTreeSet<String>,
        proxies: &BTreeSet<String>,
    ) -> Result<Partition, AttrError> {
        let Value::Object(map) = value else {
            return Err(AttrError::new("partition", "must be a JSON object"));
        };
        for key in map.keys() {
            if !matches!(
                key.as_str(),
                "name" | "a" | "b" | "direction" | "mode" | "duration" | "ttl" | "owner"
            ) {
                return Err(AttrError::new(
                    key,
                    "unknown field; a partition has name, a, b, direction, mode, duration (or ttl) and owner",
                ));
            }
        }
        let name = match map.get("name") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(AttrError::new("name", "required"));
            }
            Some(other) => {
                return Err(AttrError::new(
                    "name",
                    &format!("must be a string, got {other}"),
                ));
            }
        };
        let group = |key: &str| -> Result<Vec<String>, AttrError> {
            let Some(Value::Array(list)) = map.get(key) else {
                return Err(AttrError::new(
                    key,
                    "required: a list of nodes (proxy labels) or proxy names, e.g. [\"db\"]",
                ));
            };
            if list.is_empty() {
                return Err(AttrError::new(key, "must name at least one node"));
            }
            if list.len() > MAX_GROUP {
                return Err(AttrError::new(key, &format!("at most {MAX_GROUP} names")));
            }
            let mut names = Vec::new();
            for (i, v) in list.iter().enumerate() {
                let Value::String(s) = v else {
                    return Err(AttrError::new(
                        &format!("{key}[{i}]"),
                        &format!("must be a string, got {v}"),
                    ));
                };
                if !nodes.contains(s) && !proxies.contains(s) {
                    return Err(AttrError::new(
                        &format!("{key}[{i}]"),
                        &format!(
                            "unknown node or proxy {s:?}: no proxy has this label (labels.from or labels.to) or name"
                        ),
                    ));
                }
                if !names.contains(s) {
                    names.push(s.clone());
                }
            }
            Ok(names)
        };
        let (a, b) = (group("a")?, group("b")?);
        if let Some(both) = a.iter().find(|n| b.contains(n)) {
            return Err(AttrError::new(
                "b",
                &format!("{both:?} is in both groups; a node can only be on one side"),
            ));
        }
        let way = match map.get("direction") {
            None | Some(Value::Null) => Way::Both,
            Some(Value::String(s)) if s == "both" => Way::Both,
            Some(Value::String(s)) if s == "a_to_b" => Way::AToB,
            Some(other) => {
                return Err(AttrError::new(
                    "direction",
                    &format!("must be \"both\" or \"a_to_b\", got {other}"),
                ));
            }
        };
        let mode = match map.get("mode") {
            None | Some(Value::Null) => Mode::Blackhole,
            Some(Value::String(s)) if s == "blackhole" => Mode::Blackhole,
            Some(Value::String(s)) if s == "reset" => Mode::Reset,
            Some(other) => {
                return Err(AttrError::new(
                    "mode",
                    &format!("must be \"blackhole\" or \"reset\", got {other}"),
                ));
            }
        };
        if map.get("duration").is_some_and(|v| !v.is_null())
            && map.get("ttl").is_some_and(|v| !v.is_null())
        {
            return Err(AttrError::new(
                "ttl",
                "is another name for duration: give one of them",
            ));
        }
        let duration = match map.get("duration").or_else(|| map.get("ttl")) {
            None | Some(Value::Null) => None,
            Some(v) => {
                let d =
                    crate::units::duration_value(v).map_err(|m| AttrError::new("duration", &m))?;
                if d.is_zero() {
                    return Err(AttrError::new(
                        "duration",
                        "must be positive (more than 0); leave it out to keep the partition until DELETE",
                    ));
                }
                Some(d)
            }
        };
        let whole = a
            .iter()
            .chain(&b)
            .filter(|m| !nodes.contains(*m))
            .cloned()
            .collect();
        let owner = match map.get("owner") {
            None | Some(Value::Null) => None,
            Some(Value::String(o)) if o.len() <= 200 => Some(o.clone()),
            Some(other) => {
                return Err(AttrError::new(
                    "owner",
                    &format!("must be a string of at most 200 bytes, got {other}"),
                ));
            }
        };
        Ok(Partition {
            name,
            a,
            b,
            way,
            mode,
            duration,
            whole,
            owner,
        })
    }

    /// The cut bits this partition puts on a proxy `name` joining `labels`.
    pub fn cut(&self, name: &str, labels: Option<&Labels>) -> u8 {
        let in_a = |n: &str| self.a.iter().any(|x| x == n);
        let in_b = |n: &str| self.b.iter().any(|x| x == n);
        let mut bits = 0;
        if self.whole.iter().any(|w| w == name) {
            bits = HOLD_UPSTREAM | HOLD_DOWNSTREAM;
        } else if let Some(l) = labels {
            let a_to_b = in_a(&l.from) && in_b(&l.to);
            let b_to_a = in_b(&l.from) && in_a(&l.to);
            bits = match (self.way, a_to_b, b_to_a) {
                (_, false, false) => 0,
                (Way::Both, _, _) => HOLD_UPSTREAM | HOLD_DOWNSTREAM,
                // A's traffic to B is what a client in A sends upstream ...
                (Way::AToB, true, _) => HOLD_UPSTREAM,
                // ... and what a server in A sends back down to a client in B.
                (Way::AToB, false, true) => HOLD_DOWNSTREAM,
            };
        }
        if bits != 0 && self.mode == Mode::Reset {
            bits |= RESET;
        }
        bits
    }
}

/// Every proxy's cut under a set of partitions: the union of each partition's.
pub fn cuts<'a>(
    proxies: impl Iterator<Item = (&'a str, Option<&'a Labels>)>,
    partitions: &BTreeMap<String, (Partition, u64)>,
) -> Vec<(&'a str, u8)> {
    proxies
        .map(|(name, labels)| {
            let bits = partitions
                .values()
                .fold(0, |bits, (p, _)| bits | p.cut(name, labels));
            (name, bits)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn partition(v: Value) -> Result<Partition, AttrError> {
        // "db" is both a node and a proxy's name: the node wins.
        Partition::from_json(
            &v,
            &set(&["app", "db", "n1", "n2", "n3"]),
            &set(&["p13", "db"]),
        )
    }

    fn labels(from: &str, to: &str) -> Labels {
        Labels {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn a_one_way_partition_holds_a_to_b_on_both_kinds_of_proxy() {
        let p = partition(json!({"name": "s", "a": ["app"], "b": ["db"], "direction": "a_to_b"}))
            .unwrap();
        assert_eq!(p.cut("x", Some(&labels("app", "db"))), HOLD_UPSTREAM);
        assert_eq!(p.cut("y", Some(&labels("db", "app"))), HOLD_DOWNSTREAM);
        assert_eq!(p.cut("z", Some(&labels("app", "n1"))), 0);
        assert_eq!(p.cut("w", None), 0);
        let both =
            partition(json!({"name": "s", "a": ["app"], "b": ["db"], "mode": "reset"})).unwrap();
        assert_eq!(
            both.cut("x", Some(&labels("db", "app"))),
            HOLD_UPSTREAM | HOLD_DOWNSTREAM | RESET
        );
    }

    #[test]
    fn ttl_is_another_name_for_duration() {
        let p = partition(json!({"name": "s", "a": ["app"], "b": ["db"], "ttl": "90s"})).unwrap();
        assert_eq!(p.duration, Some(Duration::from_secs(90)));
    }

    #[test]
    fn a_proxy_named_in_a_group_is_cut_whole() {
        let p = partition(json!({"name": "s", "a": ["p13"], "b": ["n1"], "direction": "a_to_b"}))
            .unwrap();
        assert_eq!(
            p.cut("p13", Some(&labels("n2", "n2"))),
            HOLD_UPSTREAM | HOLD_DOWNSTREAM
        );
    }

    /// A proxy called "db" joining app to db: "db" in a group is the node, so a one-way
    /// partition holds only the upstream stream of that proxy.
    #[test]
    fn a_name_that_is_also_a_node_means_the_node() {
        let p = partition(json!({"name": "s", "a": ["app"], "b": ["db"], "direction": "a_to_b"}))
            .unwrap();
        assert!(p.whole.is_empty());
        assert_eq!(p.cut("db", Some(&labels("app", "db"))), HOLD_UPSTREAM);
    }

    /// The README's example: three nodes, six proxies (one per directed link); node 3 is cut
    /// off from nodes 1 and 2, and the link between 1 and 2 is untouched.
    #[test]
    fn isolating_node_3_cuts_its_four_links_only() {
        let p = partition(json!({"name": "iso", "a": ["n3"], "b": ["n1", "n2"]})).unwrap();
        let mut partitions = BTreeMap::new();
        partitions.insert(p.name.clone(), (p, 1));
        let links: Vec<(String, Labels)> = [(1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2)]
            .iter()
            .map(|(f, t)| {
                (
                    format!("n{f}-n{t}"),
                    labels(&format!("n{f}"), &format!("n{t}")),
                )
            })
            .collect();
        let got = cuts(
            links.iter().map(|(n, l)| (n.as_str(), Some(l))),
            &partitions,
        );
        let cut: Vec<&str> = got
            .iter()
            .filter(|(_, b)| *b != 0)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(cut, ["n1-n3", "n3-n1", "n2-n3", "n3-n2"]);
    }

    #[test]
    fn bad_partitions_name_the_field() {
        for (v, field, words) in [
            (json!({"a": ["app"], "b": ["db"]}), "name", "required"),
            (json!({"name": "s", "b": ["db"]}), "a", "required"),
            (
                json!({"name": "s", "a": [], "b": ["db"]}),
                "a",
                "at least one",
            ),
            (
                json!({"name": "s", "a": ["app"], "b": ["dbx"]}),
                "b[0]",
                "unknown node or proxy \"dbx\"",
            ),
            (
                json!({"name": "s", "a": ["app", "db"], "b": ["db"]}),
                "b",
                "in both groups",
            ),
            (
                json!({"name": "s", "a": ["app"], "b": ["db"], "direction": "up"}),
                "direction",
                "\"both\" or \"a_to_b\"",
            ),
            (
                json!({"name": "s", "a": ["app"], "b": ["db"], "mode": "drop"}),
                "mode",
                "\"blackhole\" or \"reset\"",
            ),
            (
                json!({"name": "s", "a": ["app"], "b": ["db"], "duration": "-1s"}),
                "duration",
                "not a duration",
            ),
            (
                json!({"name": "s", "a": ["app"], "b": ["db"], "duration": 0}),
                "duration",
                "positive",
            ),
            (
                json!({"name": "s", "a": ["app"], "b": ["db"], "after": "1s"}),
                "after",
                "unknown field",
            ),
            (
                json!({"name": "s", "a": ["app"], "b": ["db"], "ttl": "1s", "duration": "2s"}),
                "ttl",
                "another name for duration",
            ),
            (
                json!({"name": "s", "a": [1], "b": ["db"]}),
                "a[0]",
                "must be a string",
            ),
        ] {
            let err = partition(v.clone()).unwrap_err();
            assert_eq!(err.path, field, "{v}");
            assert!(err.message.contains(words), "{v}: {}", err.message);
        }
    }

    #[test]
    fn labels_need_both_ends() {
        assert!(Labels::from_json(&json!({"from": "a", "to": "b"})).is_ok());
        for (v, field) in [
            (json!({"from": "a"}), "labels.to"),
            (json!({"from": "", "to": "b"}), "labels.from"),
            (json!({"from": "a", "to": "b", "via": "c"}), "labels.via"),
            (json!("a->b"), "labels"),
        ] {
            assert_eq!(Labels::from_json(&v).unwrap_err().path, field, "{v}");
        }
    }
}
