//! The decision stream's answers (`/v1/decisions/stream`), read and checked, and the decisions
//! in force that they add up to. Pure: no I/O; the bouncer applies what changed.
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{
    model::prefixes::{canonical, covers_mapped_v4},
    policy::fleet::{FleetDecision, FleetNets},
};

/// One decision as the Local API gives it (fields it may leave out are optional).
#[derive(Debug, Deserialize)]
struct Raw {
    id: Option<i64>,
    origin: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    scope: Option<String>,
    value: Option<String>,
    duration: Option<String>,
    scenario: Option<String>,
}

/// An element of the answer's lists: a decision, or anything else (counted as malformed).
/// Read one at a time, never the whole answer as a tree: a startup answer of 100,000
/// decisions is 14 MB of JSON.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Item {
    Decision(Raw),
    Other(serde::de::IgnoredAny),
}

#[derive(Debug, Deserialize)]
struct Answer {
    // `null` when empty.
    new: Option<Vec<Item>>,
    deleted: Option<Vec<Item>>,
}

/// One copy of each origin, scenario and type in an answer.
#[derive(Default)]
struct Interned(HashMap<String, Arc<str>>);

impl Interned {
    fn get(&mut self, s: String) -> Arc<str> {
        self.0.entry(s).or_insert_with_key(|k| Arc::from(k.as_str())).clone()
    }
}

/// Why a decision was not applied; each is a label of `enforcer_crowdsec_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejected {
    /// Not a decision: a field missing or unreadable, a value that is no address or range.
    Malformed,
    /// A scope enforcer cannot contain (a country, an AS, a user name).
    Scope,
    /// A range wider than an IPv4 /8 or an IPv6 /16, or an IPv6 range that holds IPv4-mapped
    /// addresses (wider than `::ffff:0:0/96`): a decision that would contain a large part of the
    /// Internet is taken for a mistake.
    TooWide,
    /// Inside a protected network (`--protect-cidr`).
    Protected,
    /// The contained trie is full.
    Capacity,
}

impl Rejected {
    pub const ALL: [Rejected; 5] = [Self::Malformed, Self::Scope, Self::TooWide, Self::Protected, Self::Capacity];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Scope => "scope",
            Self::TooWide => "too_wide",
            Self::Protected => "protected",
            Self::Capacity => "capacity",
        }
    }
}

/// The narrowest ranges accepted.
const WIDEST_V4: u8 = 8;
const WIDEST_V6: u8 = 16;

/// What one answer says.
#[derive(Debug, Default)]
pub struct Delta {
    /// Decisions to apply, of the types acted on.
    pub new: Vec<(IpNet, FleetDecision)>,
    /// Ids of decisions deleted or expired.
    pub deleted: Vec<i64>,
    /// Decisions received (new ones, all types).
    pub received: usize,
    /// Of a type this host does not act on.
    pub ignored: usize,
    pub rejected: Vec<Rejected>,
}

/// Reads an answer of the stream; `Err` when the whole answer is not one (the bouncer counts it
/// and tries again). A decision that is not right is skipped and counted.
pub fn parse(body: &[u8], types: &[String], now_unix_ms: u64) -> Result<Delta, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|e| format!("not a decision stream: {e}"))?;
    let mut delta = Delta::default();
    let mut interned = Interned::default();
    for item in answer.new.unwrap_or_default() {
        delta.received += 1;
        let Item::Decision(raw) = item else {
            delta.rejected.push(Rejected::Malformed);
            continue;
        };
        match decision(raw, types, now_unix_ms, &mut interned) {
            Ok(Some(d)) => delta.new.push(d),
            Ok(None) => delta.ignored += 1,
            Err(why) => delta.rejected.push(why),
        }
    }
    for item in answer.deleted.unwrap_or_default() {
        // A deletion names the decision by id; one without is of no use.
        if let Item::Decision(Raw { id: Some(id), .. }) = item {
            delta.deleted.push(id);
        }
    }
    Ok(delta)
}

fn decision(
    raw: Raw,
    types: &[String],
    now_unix_ms: u64,
    interned: &mut Interned,
) -> Result<Option<(IpNet, FleetDecision)>, Rejected> {
    let kind = raw.kind.ok_or(Rejected::Malformed)?.to_ascii_lowercase();
    if !types.contains(&kind) {
        return Ok(None);
    }
    let (Some(id), Some(scope), Some(value), Some(duration)) = (raw.id, raw.scope, raw.value, raw.duration) else {
        return Err(Rejected::Malformed);
    };
    let net: IpNet = match scope.to_ascii_lowercase().as_str() {
        "ip" => value.trim().parse::<std::net::IpAddr>().map(IpNet::from).map_err(|_| Rejected::Malformed)?,
        "range" => value.trim().parse::<IpNet>().map_err(|_| Rejected::Malformed)?,
        _ => return Err(Rejected::Scope),
    };
    // An IPv4-mapped IPv6 network is its IPv4 network; a wider IPv6 one that holds them would
    // hold every IPv4 peer there.
    if covers_mapped_v4(net) {
        return Err(Rejected::TooWide);
    }
    let net = canonical(net);
    let widest = if net.addr().is_ipv4() { WIDEST_V4 } else { WIDEST_V6 };
    if net.prefix_len() < widest {
        return Err(Rejected::TooWide);
    }
    let left_ms = go_duration_ms(&duration).ok_or(Rejected::Malformed)?;
    if left_ms <= 0 {
        // Already over: nothing to apply.
        return Ok(None);
    }
    let d = FleetDecision {
        id,
        origin: interned.get(raw.origin.unwrap_or_default()),
        scenario: interned.get(raw.scenario.unwrap_or_default()),
        kind: interned.get(kind),
        until_unix_ms: now_unix_ms.saturating_add(left_ms as u64),
    };
    Ok(Some((net, d)))
}

/// A Go duration (`3h59m58.8s`, `-1m2.5s`, `150ms`) in ms, or `None` if it is not one.
pub fn go_duration_ms(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.trim().strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.trim().strip_prefix('+').unwrap_or(s.trim())),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let ms = match &rest[..u] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" | "μs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        rest = &rest[u..];
        total += value * ms;
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return None;
    }
    Some(if neg { -(total as i64) } else { total as i64 })
}

/// The decisions in force, by id, and the networks they hold.
#[derive(Debug, Default)]
pub struct InForce {
    by_id: HashMap<i64, (IpNet, FleetDecision)>,
    by_net: HashMap<IpNet, BTreeSet<i64>>,
    /// Bumped by every change, so the set is rebuilt only when it changed.
    generation: u64,
}

/// What a change did to a network: contained now (with the decision that speaks for it), or
/// no longer.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Hold(IpNet, FleetDecision),
    Release(IpNet),
}

impl InForce {
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn networks(&self) -> usize {
        self.by_net.len()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds a decision; the changes to networks (a decision that ends later speaks for its
    /// network; an id given again for another network leaves the old one first).
    pub fn add(&mut self, net: IpNet, d: FleetDecision) -> Vec<Change> {
        let mut changes = match self.by_id.get(&d.id) {
            Some((old, _)) if *old != net => self.remove(d.id),
            _ => Vec::new(),
        };
        let id = d.id;
        self.generation += 1;
        self.by_id.insert(id, (net, d));
        self.by_net.entry(net).or_default().insert(id);
        changes.extend(self.speaker(net).map(|d| Change::Hold(net, d.clone())));
        changes
    }

    /// Removes a decision by id; the change to its network.
    pub fn remove(&mut self, id: i64) -> Vec<Change> {
        let Some((net, _)) = self.by_id.remove(&id) else { return Vec::new() };
        self.generation += 1;
        let ids = self.by_net.entry(net).or_default();
        ids.remove(&id);
        if ids.is_empty() {
            self.by_net.remove(&net);
            return vec![Change::Release(net)];
        }
        self.speaker(net).map(|d| Change::Hold(net, d.clone())).into_iter().collect()
    }

    /// Removes the decisions that ended by `now_unix_ms` (the stream also says so, but not while
    /// the Local API is unreachable).
    pub fn expire(&mut self, now_unix_ms: u64) -> Vec<Change> {
        let ended: Vec<i64> =
            self.by_id.iter().filter(|(_, (_, d))| d.until_unix_ms <= now_unix_ms).map(|(id, _)| *id).collect();
        ended.into_iter().flat_map(|id| self.remove(id)).collect()
    }

    /// Replaces everything with a startup answer's decisions: the changes that brings.
    pub fn replace(&mut self, decisions: Vec<(IpNet, FleetDecision)>) -> Vec<Change> {
        let before: Vec<IpNet> = self.by_net.keys().copied().collect();
        let generation = self.generation + 1;
        *self = Self { generation, ..Self::default() };
        let holds: Vec<Change> = decisions.into_iter().flat_map(|(net, d)| self.add(net, d)).collect();
        // Releases first: near the trie's capacity, the slots they free make room for the holds.
        let mut changes: Vec<Change> =
            before.into_iter().filter(|n| !self.by_net.contains_key(n)).map(Change::Release).collect();
        changes.extend(holds);
        changes
    }

    /// The decision that speaks for `net`: the one that ends last.
    fn speaker(&self, net: IpNet) -> Option<&FleetDecision> {
        self.by_net
            .get(&net)?
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .map(|(_, d)| d)
            .max_by_key(|d| d.until_unix_ms)
    }

    /// The set the rule judges with.
    pub fn nets(&self) -> FleetNets {
        FleetNets::new(self.by_net.keys().filter_map(|net| Some((*net, self.speaker(*net)?.clone()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> Vec<String> {
        vec!["contain".into()]
    }

    #[test]
    fn every_reason_to_reject_has_its_series_from_the_start() {
        let names: Vec<&str> = Rejected::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, crate::observe::metrics::CROWDSEC_REJECTED);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms("3h59m58.5s"), Some(((3 * 60 + 59) * 60 + 58) * 1000 + 500));
        assert_eq!(go_duration_ms("-1m2s"), Some(-62_000));
        assert_eq!(go_duration_ms("150ms"), Some(150));
        assert_eq!(go_duration_ms("1.5µs"), Some(0));
        assert_eq!(go_duration_ms("0"), Some(0));
        assert_eq!(go_duration_ms("1d"), None);
        assert_eq!(go_duration_ms(""), None);
        assert_eq!(go_duration_ms("h"), None);
    }

    #[test]
    fn a_stream_answer_is_read_and_each_bad_decision_skipped_and_counted() {
        let body = br#"{"new":[
            {"id":1,"origin":"cscli","type":"contain","scope":"Ip","value":"192.0.2.7","duration":"59m59s","scenario":"manual"},
            {"id":2,"origin":"crowdsec","type":"ban","scope":"Ip","value":"192.0.2.8","duration":"1h","scenario":"x"},
            {"id":3,"origin":"cscli","type":"contain","scope":"Range","value":"198.51.100.0/24","duration":"1h","scenario":"y"},
            {"id":4,"origin":"cscli","type":"contain","scope":"Country","value":"FR","duration":"1h","scenario":"z"},
            {"id":5,"origin":"cscli","type":"contain","scope":"Ip","value":"not-an-ip","duration":"1h","scenario":"z"},
            {"id":6,"origin":"cscli","type":"contain","scope":"Range","value":"0.0.0.0/0","duration":"1h","scenario":"z"},
            {"id":7,"origin":"cscli","type":"contain","scope":"Ip","value":"::ffff:192.0.2.9","duration":"1h","scenario":"z"},
            {"id":8,"type":"contain","scope":"Ip","value":"192.0.2.10","duration":"forever"},
            {"id":10,"origin":"cscli","type":"contain","scope":"Range","value":"::/80","duration":"1h","scenario":"z"},
            "garbage"
        ],"deleted":[{"id":9,"value":"192.0.2.11"},{"value":"no id"}]}"#;
        let d = parse(body, &types(), 1000).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.received, 10);
        assert_eq!(d.ignored, 1);
        let nets: Vec<String> = d.new.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(nets, ["192.0.2.7/32", "198.51.100.0/24", "192.0.2.9/32"]);
        assert_eq!(d.new[0].1.until_unix_ms, 1000 + 3_599_000);
        assert_eq!(
            d.rejected,
            [
                Rejected::Scope,
                Rejected::Malformed,
                Rejected::TooWide,
                Rejected::Malformed,
                // ::/80 holds every IPv4-mapped address.
                Rejected::TooWide,
                Rejected::Malformed
            ]
        );
        assert_eq!(d.deleted, [9]);
        // Empty lists are null.
        let d = parse(br#"{"new":null,"deleted":null}"#, &types(), 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((d.received, d.deleted.len()), (0, 0));
        assert!(parse(b"<html>proxy error</html>", &types(), 0).is_err());
    }

    fn fd(id: i64, until: u64) -> FleetDecision {
        FleetDecision { id, origin: "o".into(), scenario: "s".into(), kind: "contain".into(), until_unix_ms: until }
    }

    #[test]
    fn a_network_is_held_while_any_decision_holds_it() {
        let net: IpNet = "192.0.2.7/32".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut f = InForce::default();
        assert_eq!(f.add(net, fd(1, 100)), vec![Change::Hold(net, fd(1, 100))]);
        // A later-ending decision speaks for it.
        assert_eq!(f.add(net, fd(2, 200)), vec![Change::Hold(net, fd(2, 200))]);
        assert_eq!(f.remove(2), vec![Change::Hold(net, fd(1, 100))]);
        assert_eq!(f.expire(99), vec![]);
        assert_eq!(f.expire(100), vec![Change::Release(net)]);
        assert!(f.is_empty());
        // A startup answer replaces everything: what it leaves out is released.
        let other: IpNet = "198.51.100.0/24".parse().unwrap_or_else(|e| panic!("{e}"));
        f.add(net, fd(3, 500));
        let changes = f.replace(vec![(other, fd(4, 500))]);
        assert_eq!(changes, vec![Change::Release(net), Change::Hold(other, fd(4, 500))]);
        assert_eq!(f.nets().len(), 1);
    }
}
