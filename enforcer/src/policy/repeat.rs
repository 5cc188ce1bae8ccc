//! Repeat offenders: a remote (an address, or a prefix under prefix fairness) whose connections
//! were destroyed `kills` times within `window_ms`. Destroying connections one by one cannot keep
//! a remote that opens a new zero-window connection every 50 ms under the threshold: each is
//! charged megabytes within milliseconds. So a repeat offender's new connections get one
//! interval of grace instead of `--stall`, and the agent asks the kernel to give them a small
//! send buffer. The flag lapses after a whole window without a destroy.
use std::collections::{HashMap, VecDeque};

use ipnet::IpNet;

use super::RepeatRule;

/// A remote that just became a repeat offender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flagged {
    pub remote: IpNet,
    /// Destroys within the window, this one included.
    pub kills: usize,
    pub window_ms: u64,
}

#[derive(Debug)]
pub struct RepeatOffenders {
    rule: RepeatRule,
    /// Times of recent destroys per remote, oldest first, none older than the window.
    kills: HashMap<IpNet, VecDeque<u64>>,
    /// Flagged remotes and since when.
    flagged: HashMap<IpNet, u64>,
}

impl RepeatOffenders {
    pub fn new(rule: RepeatRule) -> Self {
        Self { rule, kills: HashMap::new(), flagged: HashMap::new() }
    }

    /// A new rule (a reload): what was counted and flagged is kept.
    pub fn set_rule(&mut self, rule: RepeatRule) {
        self.rule = rule;
    }

    fn prune(rule: RepeatRule, times: &mut VecDeque<u64>, now_ms: u64) {
        while times.front().is_some_and(|t| t.saturating_add(rule.window_ms) <= now_ms) {
            times.pop_front();
        }
    }

    /// Counts a destroy of `remote`'s connection; returns the flag if this one makes it a
    /// repeat offender.
    pub fn record(&mut self, remote: IpNet, now_ms: u64) -> Option<Flagged> {
        if self.rule.kills == 0 {
            return None;
        }
        let times = self.kills.entry(remote).or_default();
        Self::prune(self.rule, times, now_ms);
        times.push_back(now_ms);
        if times.len() < self.rule.kills || self.flagged.contains_key(&remote) {
            return None;
        }
        self.flagged.insert(remote, now_ms);
        Some(Flagged { remote, kills: times.len(), window_ms: self.rule.window_ms })
    }

    pub fn flagged_since(&self, remote: &IpNet) -> Option<u64> {
        if self.flagged.is_empty() {
            return None;
        }
        self.flagged.get(remote).copied()
    }

    /// Forgets destroys older than the window; returns the remotes that are no longer repeat
    /// offenders.
    pub fn expire(&mut self, now_ms: u64) -> Vec<IpNet> {
        let rule = self.rule;
        self.kills.retain(|_, times| {
            Self::prune(rule, times, now_ms);
            !times.is_empty()
        });
        let mut released: Vec<IpNet> = self.flagged.keys().filter(|r| !self.kills.contains_key(r)).copied().collect();
        released.sort_unstable();
        for r in &released {
            self.flagged.remove(r);
        }
        released
    }

    /// How many remotes are flagged now.
    pub fn flagged_count(&self) -> usize {
        self.flagged.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_destroys_within_the_window_flag_and_a_quiet_window_releases() {
        let mut r = RepeatOffenders::new(RepeatRule { kills: 3, window_ms: 10_000 });
        let a: IpNet = "192.0.2.1/32".parse().expect("net");
        assert_eq!(r.record(a, 0), None);
        assert_eq!(r.record(a, 5_000), None);
        // The first destroy has left the window: still two.
        assert_eq!(r.record(a, 10_000), None);
        let f = r.record(a, 12_000).expect("three within 10 s");
        assert_eq!(f.kills, 3);
        assert_eq!(r.flagged_since(&a), Some(12_000));
        assert!(r.expire(21_999).is_empty());
        assert_eq!(r.expire(22_000), [a]);
        assert_eq!(r.flagged_since(&a), None);
    }

    #[test]
    fn off_when_kills_is_zero() {
        let mut r = RepeatOffenders::new(RepeatRule { kills: 0, window_ms: 10_000 });
        let a: IpNet = "192.0.2.1/32".parse().expect("net");
        assert!((0..100).all(|t| r.record(a, t).is_none()));
    }
}
