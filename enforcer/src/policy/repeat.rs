//! Repeat offenders: a remote (`Fairness::remote`: an address, a prefix under prefix fairness,
//! an IPv6 /64) whose connections were destroyed `kills` times within `window_ms` for what the
//! remote did (`Decision::blames_the_remote`), or that held more than its share without progress
//! for `--stall` (`remote.rs`). Destroying connections one by one cannot keep a remote that opens
//! a new zero-window connection every 50 ms under the threshold: each is charged megabytes within
//! milliseconds. So the agent asks the kernel to give a repeat offender's new connections a small
//! send buffer, which they earn back by progress, and its stalled connections go whatever their
//! share, after the same `--stall` as anyone's (a reader behind a shared address that pauses is
//! judged on its own). The flag lapses after a whole window without a destroy or a stuck
//! interval.
use std::collections::{HashMap, VecDeque};

use ipnet::IpNet;

use super::RepeatRule;

/// A remote that just became a repeat offender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flagged {
    pub remote: IpNet,
    pub why: Why,
}

/// What made a remote a repeat offender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// `kills` destroys within `window_ms`, the last one included.
    Destroys { kills: usize, window_ms: u64 },
    /// Its connections held `charged` bytes, more than its `share`, with none progressing for
    /// `stuck_ms`.
    Stuck { charged: u64, share: u64, stuck_ms: u64 },
}

#[derive(Debug, Clone)]
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
        Some(Flagged { remote, why: Why::Destroys { kills: times.len(), window_ms: self.rule.window_ms } })
    }

    /// A remote stuck (over its share, nothing progressing) this interval for `why`'s
    /// `stuck_ms`: it counts as activity that keeps a flag alive, like a destroy; returns the
    /// flag if this makes it a repeat offender. Off with the rest (`kills` 0).
    pub fn stuck(&mut self, remote: IpNet, why: Why, now_ms: u64) -> Option<Flagged> {
        if self.rule.kills == 0 {
            return None;
        }
        let times = self.kills.entry(remote).or_default();
        Self::prune(self.rule, times, now_ms);
        times.push_back(now_ms);
        if self.flagged.contains_key(&remote) {
            return None;
        }
        self.flagged.insert(remote, now_ms);
        Some(Flagged { remote, why })
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
    use crate::policy::{
        Judge, Reason,
        testing::{chosen, policy, sock},
    };

    #[test]
    fn k_destroys_within_the_window_flag_and_a_quiet_window_releases() {
        let mut r = RepeatOffenders::new(RepeatRule { kills: 3, window_ms: 10_000 });
        let a: IpNet = "192.0.2.1/32".parse().expect("net");
        assert_eq!(r.record(a, 0), None);
        assert_eq!(r.record(a, 5_000), None);
        // The first destroy has left the window: still two.
        assert_eq!(r.record(a, 10_000), None);
        let f = r.record(a, 12_000).expect("three within 10 s");
        assert_eq!(f.why, Why::Destroys { kills: 3, window_ms: 10_000 });
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

    #[test]
    fn a_stuck_remote_is_flagged_once_and_stays_flagged_while_stuck() {
        let mut r = RepeatOffenders::new(RepeatRule { kills: 3, window_ms: 10_000 });
        let a: IpNet = "2001:db8::/64".parse().expect("net");
        let why = Why::Stuck { charged: 20 << 20, share: 8 << 20, stuck_ms: 3000 };
        assert_eq!(r.stuck(a, why, 3000), Some(Flagged { remote: a, why }));
        assert_eq!(r.stuck(a, why, 9000), None);
        // Still stuck at 9 s: the flag holds until 19 s.
        assert!(r.expire(18_999).is_empty());
        assert_eq!(r.expire(19_000), [a]);
    }

    #[test]
    fn a_repeat_offenders_stalled_connections_go_whatever_their_share_after_the_usual_stall() {
        let mut p = policy(8 << 20);
        p.stall_ms = 3000;
        let mut j = Judge::new(p);
        let offender = |cookie, age_ms, stalled_ms| {
            let mut s = sock(cookie, "192.0.2.7:1", 128 << 10, stalled_ms, 0);
            s.age_ms = age_ms;
            s
        };
        // Three destroys within the window flag the remote, once.
        let d = chosen(&j.judge_all(&[sock(1, "192.0.2.7:1", 9 << 20, 5000, 0)], 10_000, 10 << 20));
        assert_eq!(d.len(), 1);
        assert!(j.record_destroy(&d[0], 10_000).is_none());
        assert!(j.record_destroy(&d[0], 10_500).is_none());
        let flag = j.record_destroy(&d[0], 11_000).expect("flagged at the third destroy");
        assert_eq!(flag.remote.to_string(), "192.0.2.7/32");
        assert_eq!(flag.why, Why::Destroys { kills: 3, window_ms: 60_000 });
        assert!(j.record_destroy(&d[0], 11_100).is_none(), "flagged once");
        // Its connections keep the ordinary grace (--stall), whether opened before the flag or
        // after (a reader behind the same address pausing for 2 s is judged on its own), then
        // go whatever their share. Another remote is judged as ever.
        let mut other = offender(3, 100, 3_000);
        other.remote = "192.0.2.8:1".parse().expect("addr");
        let sockets = [offender(1, 200, 300), offender(2, 5_000, 2_000), other.clone(), offender(4, 5_000, 3_000)];
        let d = chosen(&j.judge_all(&sockets, 12_000, 9 << 20));
        assert_eq!(crate::policy::testing::cookies(&d), [4]);
        assert_eq!(d[0].reason, Reason::RepeatOffender);
        // Under the threshold, nothing.
        assert!(chosen(&j.judge_all(&sockets, 12_250, 1 << 20)).is_empty());
        // A window without destroys releases the remote.
        let plan = j.judge_all(&sockets, 11_100 + 60_000, 9 << 20);
        assert!(plan.sweep.is_empty());
        assert_eq!(plan.released.iter().map(ToString::to_string).collect::<Vec<_>>(), ["192.0.2.7/32"]);
    }
}
