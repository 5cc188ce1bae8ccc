//! Carrying out a judgement: candidates in order of evidence, destroyed one by one until the
//! projected pressure is back at the threshold. Only a destroy that succeeded counts as relief:
//! after a failure the next candidate is taken in the same interval.
use ipnet::IpNet;

use super::{Assessment, Decision, Kind, episode::Change, repeat::Flagged};

/// Failed destroys tried in one interval before giving up on the rest: a kernel that refuses
/// every destroy must not make the agent spin through the whole candidate list.
pub const MAX_FAILURES_PER_INTERVAL: usize = 256;

/// What one snapshot's judgement proposes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pressure: u64,
    pub threshold: u64,
    /// What the budget aims for: the low line within an episode of pressure, the threshold
    /// otherwise.
    pub target: u64,
    kind: Kind,
    /// The episode spent long enough over the threshold to take `escalation` candidates.
    pub escalate: bool,
    /// What this judgement did to the episode of pressure.
    pub episode: Change,
    /// Stalled connections of repeat offenders: all of them go while pressure is over the
    /// threshold, whatever the budget, in order of evidence among the offenders.
    pub sweep: Vec<Decision>,
    /// Over their share and stalled or slow, worst evidence first.
    pub offenders: Vec<Decision>,
    /// Stalled, under their share: taken only when `escalate`, and only what the budget needs.
    pub escalation: Vec<Decision>,
    /// `--max-per-remote`, whatever the pressure.
    pub remote_cap: Vec<Decision>,
    /// Per socket, in snapshot order.
    pub assessments: Vec<Assessment>,
    /// Remotes that stopped being repeat offenders in this judgement.
    pub released: Vec<IpNet>,
    /// Remotes this judgement made repeat offenders because they were stuck (held more than
    /// their share with nothing progressing for `--stall`); destroys flag theirs as they happen.
    pub flagged: Vec<Flagged>,
    /// Sockets over their share with no progress for an interval, not stalled long enough yet.
    pub waiting: Waiting,
}

/// The offenders in the making a capped budget keeps destroys for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Waiting {
    pub count: usize,
    /// The most one of them holds.
    pub largest: u64,
}

impl Waiting {
    pub(super) fn note(&mut self, charged: u64) {
        self.count += 1;
        self.largest = self.largest.max(charged);
    }
}

/// What became of one decision ([`Plan::carry_out`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Destroyed (or, in a dry run, reported).
    Done,
    /// The destroy failed: the socket holds its memory.
    Failed,
    /// Already gone: taken before in this episode.
    Gone,
}

/// What carrying out a plan did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Decisions carried out (destroyed, or recorded in a dry run), in the order taken.
    pub acted: Vec<Decision>,
    pub failed: usize,
    /// Decisions the rule wanted that the per-interval or per-minute cap held back.
    pub held_back: usize,
}

impl Plan {
    pub(super) fn new(pressure: u64, threshold: u64, target: u64, kind: Kind, escalate: bool) -> Self {
        Self {
            pressure,
            threshold,
            target,
            kind,
            escalate,
            episode: Change::None,
            sweep: Vec::new(),
            offenders: Vec::new(),
            escalation: Vec::new(),
            remote_cap: Vec::new(),
            assessments: Vec::new(),
            released: Vec::new(),
            flagged: Vec::new(),
            waiting: Waiting::default(),
        }
    }

    /// Worst evidence first; the lower cookie among equals, so the order never depends on the
    /// snapshot's.
    pub(super) fn rank(&mut self) {
        for list in [&mut self.sweep, &mut self.offenders, &mut self.escalation] {
            list.sort_by_key(|d| (std::cmp::Reverse(d.evidence), d.socket.cookie));
        }
    }

    /// The sockets of every candidate, carried out or not.
    pub fn cookies(&self) -> impl Iterator<Item = u64> + '_ {
        self.sweep
            .iter()
            .chain(&self.offenders)
            .chain(&self.escalation)
            .chain(&self.remote_cap)
            .map(|d| d.socket.cookie)
    }

    /// How many candidates the rule has (before budget and caps).
    pub fn candidates(&self) -> usize {
        self.sweep.len() + self.offenders.len() + self.escalation.len() + self.remote_cap.len()
    }

    /// Carries the plan out: `act` destroys one socket and says what became of it. At most
    /// `allowed` succeed; the budget counts only what succeeded. A socket `act` says is already
    /// gone ([`Taken::Gone`]: a dry run's socket reported earlier in the episode, which a real
    /// run would have destroyed then) frees its memory in the projection, but neither uses up
    /// `allowed` nor counts as acted or failed.
    pub fn carry_out(self, allowed: usize, mut act: impl FnMut(&Decision) -> Taken) -> Outcome {
        let mut out = Outcome::default();
        let mut projected = self.pressure;
        let mut done = std::collections::HashSet::new();
        let target = self.target;
        let waiting = self.waiting;
        // What the pressure rules want now or soon: when the budget cannot cover it, it is kept
        // for the memory.
        let pending = self.sweep.len() + self.offenders.len() + self.escalation.len() + waiting.count;
        // `for_memory`: a decision of the pressure rules, which frees memory; the per-remote cap's
        // free a connection and are counted, not weighed.
        let mut take = |d: Decision, out: &mut Outcome, projected: &mut u64, for_memory: bool| {
            if !done.insert(d.socket.cookie) || out.failed >= MAX_FAILURES_PER_INTERVAL {
                return;
            }
            let left = allowed.saturating_sub(out.acted.len());
            // A capped budget (fewer destroys left than the rules want) is for the memory: while
            // an offender in the making holds four times as much, a destroy that would free under
            // a quarter of its even part of the excess waits, so a flagged remote's cheap churn
            // cannot spend the minute's destroys before the large offender's stall is long
            // enough. An uncapped budget takes everything as ever.
            let cheap = for_memory
                && left < pending
                && waiting.largest / 4 > d.socket.charged
                && u128::from(d.socket.charged) * 4 * (left as u128) < u128::from(projected.saturating_sub(target));
            if left == 0 || cheap {
                // Counted as if it went, so the count says how many the rule wanted.
                out.held_back += 1;
                *projected = projected.saturating_sub(d.socket.charged);
                return;
            }
            match act(&d) {
                Taken::Done => {
                    *projected = projected.saturating_sub(d.socket.charged);
                    out.acted.push(d);
                }
                Taken::Gone => *projected = projected.saturating_sub(d.socket.charged),
                Taken::Failed => out.failed += 1,
            }
        };
        if self.pressure > target {
            // The memory first: a repeat offender's stalled connections and the offenders in one
            // order of evidence (bytes held over the share × how long), so a capped budget is
            // spent on what holds the most, never on a flagged remote's cheap connections while a
            // large offender waits. The sweep goes whole; offenders until the projection is back
            // at the threshold.
            let mut first: Vec<(bool, Decision)> = self
                .sweep
                .into_iter()
                .map(|d| (true, d))
                .chain(self.offenders.into_iter().map(|d| (false, d)))
                .collect();
            first.sort_by_key(|(_, d)| (std::cmp::Reverse(d.evidence), d.socket.cookie));
            for (swept, d) in first {
                if !swept && self.kind == Kind::Budget && projected <= target {
                    continue;
                }
                take(d, &mut out, &mut projected, true);
            }
            if self.escalate {
                for d in self.escalation {
                    if projected <= target {
                        break;
                    }
                    take(d, &mut out, &mut projected, true);
                }
            }
        }
        for d in self.remote_cap {
            take(d, &mut out, &mut projected, false);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::{
        Judge, Taken,
        testing::{policy, sock},
    };

    #[test]
    fn a_failed_destroy_frees_nothing_and_the_next_candidate_goes() {
        // Pressure 12 MiB over an 8 MiB threshold; the worst offender (5 MiB) cannot be
        // destroyed (a device-bound socket, say): the next ones must cover the 4 MiB.
        let sockets = vec![
            sock(1, "192.0.2.1:1", 3 << 20, 5000, 0),
            sock(2, "192.0.2.2:1", 5 << 20, 5000, 0),
            sock(3, "192.0.2.3:1", 4 << 20, 5000, 0),
        ];
        let mut p = policy(8 << 20);
        p.low_water = p.threshold;
        let plan = Judge::new(p).judge_all(&sockets, 1000, 12 << 20);
        let mut tried = Vec::new();
        let out = plan.carry_out(100, |d| {
            tried.push(d.socket.cookie);
            if d.socket.cookie == 2 { Taken::Failed } else { Taken::Done }
        });
        assert_eq!(tried, [2, 3], "4 MiB from cookie 3 brings it back to the threshold");
        assert_eq!(out.acted.iter().map(|d| d.socket.cookie).collect::<Vec<_>>(), [3]);
        assert_eq!(out.failed, 1);
    }

    #[test]
    fn failures_are_bounded() {
        let sockets: Vec<_> = (1..=1000).map(|c| sock(c, "192.0.2.1:1", 1 << 20, 5000, 0)).collect();
        let plan = Judge::new(policy(1 << 20)).judge_all(&sockets, 1000, 1 << 30);
        let mut calls = 0;
        let out = plan.carry_out(10_000, |_| {
            calls += 1;
            Taken::Failed
        });
        assert_eq!((calls, out.failed), (super::MAX_FAILURES_PER_INTERVAL, super::MAX_FAILURES_PER_INTERVAL));
    }

    #[test]
    fn a_dry_run_takes_what_it_reported_as_gone() {
        // Three stalled offenders, one per interval (--max-kills 1), as a dry run sees them on
        // its third interval: the first two were reported and count as destroyed, so the third
        // is reported now, and none of it uses up the cap or counts as a failure.
        let sockets: Vec<_> = (1..=3).map(|c| sock(c, "192.0.2.1:1", (4 - c) << 20, 5000, 0)).collect();
        let mut p = policy(1 << 20);
        p.kind = super::Kind::Heffner;
        let plan = Judge::new(p).judge_all(&sockets, 1000, 8 << 20);
        let out = plan.carry_out(1, |d| if d.socket.cookie == 3 { super::Taken::Done } else { super::Taken::Gone });
        assert_eq!(out.acted.iter().map(|d| d.socket.cookie).collect::<Vec<_>>(), [3]);
        assert_eq!((out.failed, out.held_back), (0, 0));
    }

    #[test]
    fn a_capped_budget_is_kept_for_the_memory() {
        // 16 MiB over an 8 MiB threshold, 44 connections (share ~190 KB): three 300 KB offenders
        // stalled long enough, and an 8 MiB socket with no progress for two intervals, not yet
        // for --stall (1 s).
        let sockets = |large_stalled_ms| {
            let mut v: Vec<_> = (10..50).map(|c| sock(c, "192.0.2.1:1", 1000, 0, 0)).collect();
            v.extend((1..=3).map(|c| sock(c, "192.0.2.7:1", 300_000, 5000, 0)));
            v.push(sock(9, "192.0.2.9:1", 8 << 20, large_stalled_ms, 0));
            v
        };
        let mut p = policy(8 << 20);
        p.kind = super::Kind::Heffner;
        let acted = |large_stalled_ms, allowed| {
            let plan = Judge::new(p.clone()).judge_all(&sockets(large_stalled_ms), 1000, 24 << 20);
            let out = plan.carry_out(allowed, |_| Taken::Done);
            (out.acted.iter().map(|d| d.socket.cookie).collect::<Vec<_>>(), out.held_back)
        };
        // Two destroys left: the cheap ones wait for the large one.
        assert_eq!(acted(500, 2), (vec![], 3));
        // Its stall long enough, it goes first; then the budget left takes a cheap one.
        assert_eq!(acted(1000, 2), (vec![9, 1], 2));
        // A budget that covers everything the rules want takes the cheap ones at once.
        assert_eq!(acted(500, 1000), (vec![1, 2, 3], 0));
        // No progress for less than an interval is no offender in the making.
        assert_eq!(acted(200, 2), (vec![1, 2], 1));
    }
}
