//! The rule with its memory: what it makes of each socket in one snapshot, given what earlier
//! snapshots saw (`history`) and the repeat offenders (`repeat`).
//!
//! A socket's history is small, and kept only while it holds more than its share. (A stall is
//! bounded by the data's age in the kernel, which notes when a scan last saw nothing
//! outstanding: see `SnapshotEntry::stalled_since_ns`.) Sockets the scan leaves out hold
//! nothing, so they are under any share and have no history to lose.
use std::collections::HashMap;

use ipnet::IpNet;

use super::{
    Assessment, Decision, ESCALATE_AFTER_INTERVALS, Policy, Population, Reason,
    episode::{Change, Episode, Episodes, max_drain_now},
    fleet::FleetNets,
    history::{OverShare, remember},
    plan::Plan,
    quiet,
    relay::RelayMemory,
    remote::RemoteEvidence,
    remote_cap::remote_cap,
    repeat::{Flagged, RepeatOffenders},
    stall::{rx_stall_needed_ms, stall_needed_ms},
};
use crate::model::socket::Socket;

/// The rule with its memory: one per agent (and one per `enforcer top`). A clone judges what
/// a revisit found without committing the agent's own memory to it.
#[derive(Clone)]
pub struct Judge {
    policy: Policy,
    /// The sockets over their share, by cookie.
    over: HashMap<u64, OverShare>,
    /// Last interval's map, cleared, so steady state allocates nothing.
    spare: HashMap<u64, OverShare>,
    /// The episode of pressure the rule is in, if any.
    episodes: Episodes,
    repeat: RepeatOffenders,
    /// What each remote holds and whether any of its connections progresses.
    remotes: RemoteEvidence,
    /// What the per-remote cap saw of relays last time (proxy mode).
    relays: RelayMemory,
    /// The networks the fleet contains (CrowdSec decisions), judged as repeat offenders are.
    fleet: std::sync::Arc<FleetNets>,
}

impl Judge {
    pub fn new(policy: Policy) -> Self {
        let repeat = RepeatOffenders::new(policy.repeat);
        Self {
            policy,
            over: HashMap::new(),
            spare: HashMap::new(),
            episodes: Episodes::default(),
            repeat,
            remotes: RemoteEvidence::default(),
            relays: RelayMemory::default(),
            fleet: Default::default(),
        }
    }

    /// The networks the fleet contains from now on (the bouncer's latest set).
    pub fn set_fleet(&mut self, fleet: std::sync::Arc<FleetNets>) {
        self.fleet = fleet;
    }

    /// For what the agent re-reads every interval (the protected cgroups' ids).
    pub fn policy_mut(&mut self) -> &mut Policy {
        &mut self.policy
    }

    /// A new policy (the agent reloaded its settings): what the rule remembers of each socket
    /// and of repeat offenders stays, so a reload neither resets a stall nor pardons a remote.
    pub fn set_policy(&mut self, policy: Policy) {
        self.repeat.set_rule(policy.repeat);
        self.policy = policy;
    }

    /// Counts a destroy (or, in a dry run, a decision) against its remote; the remote it makes
    /// a repeat offender, if it does. A destroy that is not the remote's doing (a per-remote
    /// cap's, a stall a lossy path explains) counts for nothing.
    pub fn record_destroy(&mut self, d: &Decision, now_ms: u64) -> Option<Flagged> {
        self.episodes.count_decision();
        if !d.blames_the_remote() {
            return None;
        }
        self.repeat.record(self.policy.fairness.remote(d.socket.remote.ip()), now_ms)
    }

    /// Remotes flagged as repeat offenders now.
    pub fn repeat_offenders(&self) -> usize {
        self.repeat.flagged_count()
    }

    /// The episode of pressure the rule is in, if any.
    pub fn episode(&self) -> Option<&Episode> {
        self.episodes.current()
    }

    /// An interval the agent did not judge: pressure so far below the threshold that its scan
    /// read a summary only. Nothing can be chosen, no socket is over its share for long enough
    /// to matter, and over-share histories start afresh next time; repeat offenders still
    /// expire, and an episode settles as under the low line. Returns the remotes released and
    /// what became of the episode.
    pub fn rest(&mut self, now_ms: u64, pressure: u64) -> (Vec<IpNet>, Change) {
        let change = self.step_episode(pressure, now_ms);
        self.over.clear();
        self.remotes.clear();
        (self.repeat.expire(now_ms), change)
    }

    /// Judgements an escalation waits for, and an episode's calm lasts: four intervals, or the
    /// drain window if longer (a slow reader over its share would have been found by then).
    fn settle_intervals(&self) -> u32 {
        let p = &self.policy;
        ESCALATE_AFTER_INTERVALS.max(p.drain_window_ms.div_ceil(p.interval_ms.max(1)) as u32)
    }

    fn step_episode(&mut self, pressure: u64, now_ms: u64) -> Change {
        let settle = self.settle_intervals();
        let p = &self.policy;
        self.episodes.step(pressure, p.threshold, p.low_water, settle, now_ms)
    }

    /// Judges the sockets of one snapshot taken at `now_ms` (the caller's monotonic clock) under
    /// `pressure`, and remembers what the next snapshot needs of it. `sockets` may leave out
    /// connections that hold nothing (the agent's scan does): `population` counts them all.
    pub fn judge(&mut self, sockets: &[Socket], population: &Population, now_ms: u64, pressure: u64) -> Plan {
        let released = self.repeat.expire(now_ms);
        let change = self.step_episode(pressure, now_ms);
        let settle = self.settle_intervals();
        let p = &self.policy;
        // The rule acts within an episode while pressure is over the low line, and aims for it.
        let episode = self.episodes.current();
        let acting = episode.is_some() && pressure > p.low_water;
        let target = if episode.is_some() { p.low_water } else { p.threshold };
        // Quiet pressure keeps no history: the same as an interval the agent did not judge
        // (`rest`), so reading a summary only changes nothing.
        let keep = !quiet(pressure, p.threshold);
        // Stalled sockets under their share are taken only once the fair-share rule and the drain
        // window had their chance: the episode spent that long over the threshold.
        let escalate = episode.is_some_and(|e| e.over >= settle);
        let mut plan = Plan::new(pressure, p.threshold, target, p.kind, escalate);
        plan.released = released;
        plan.episode = change;
        // Remotes: the evidence builds while the rule acts, and a remote stuck for --stall is
        // flagged (contained) whether or not any connection of it is destroyed.
        if acting {
            plan.flagged = self.remotes.flag_stuck(p, sockets, &mut self.repeat, now_ms);
        } else {
            self.remotes.clear();
        }
        let p = &self.policy;
        let mut prev = std::mem::take(&mut self.over);
        let mut next = std::mem::take(&mut self.spare);
        next.clear();
        plan.assessments.reserve(sockets.len());
        for s in sockets {
            let share = population.share(p.fairness, p.threshold, s);
            let h = remember(s, prev.remove(&s.cookie), share, now_ms, p.drain_window_ms).filter(|_| keep);
            let drain = h.as_ref().and_then(|o| o.drain_estimate_ms(s, now_ms, p.drain_window_ms, p.interval_ms));
            let a = Assessment {
                fair_share: share,
                stalled_ms: s.stalled_ms,
                stall_needed_ms: stall_needed_ms(p, s),
                rx_stalled_ms: if s.out_of_order { s.rx_idle_ms } else { 0 },
                rx_stall_needed_ms: rx_stall_needed_ms(p, s),
                drain_estimate_ms: drain,
            };
            if acting && !p.protect.covers(s) {
                self.classify(&mut plan, s, &a, h.as_ref().map(|o| o.since_ms), now_ms);
            }
            plan.assessments.push(a);
            if let Some(h) = h {
                next.insert(s.cookie, h);
            }
        }
        prev.clear();
        self.spare = prev;
        self.over = next;
        if let Some(cap) = self.policy.max_per_remote {
            plan.remote_cap = remote_cap(&self.policy, sockets, cap, &plan, &mut self.relays);
        }
        plan.rank();
        plan
    }

    /// Forgets what each remote's connections said so far: after judging a revisit, which sees
    /// the last walk's candidates and not a connection of the same remote that started holding
    /// data since (its progress would have kept the remote from being stuck), a remote's streak
    /// starts again at the next walk of every socket.
    pub fn forget_remotes(&mut self) {
        self.remotes.clear();
    }

    /// Judges a full snapshot: every tracked connection is in `sockets` (`enforcer top`).
    pub fn judge_all(&mut self, sockets: &[Socket], now_ms: u64, pressure: u64) -> Plan {
        let population = Population::of(self.policy.fairness, sockets);
        self.judge(sockets, &population, now_ms, pressure)
    }

    fn classify(&self, plan: &mut Plan, s: &Socket, a: &Assessment, over_since: Option<u64>, now_ms: u64) {
        let p = &self.policy;
        let decision = |reason, offending_ms: u64, over_bytes: u64| Decision {
            socket: Socket { stalled_ms: a.stalled_ms, ..s.clone() },
            reason,
            fair_share: a.fair_share,
            drain_estimate_ms: a.drain_estimate_ms,
            offending_ms,
            evidence: over_bytes.saturating_mul(offending_ms),
        };
        // A stall counts once it is longer than --stall and than what the socket's own path
        // explains (`stall_needed_ms`): a repeat offender's stalled connections all go, whatever
        // their share (taking only what the budget needs would leave the remote holding the
        // threshold), but after the same stall as anyone's, so a reader behind a shared address
        // that pauses is judged on its own. The receive side stalls when nothing arrives in order
        // while segments wait beyond a hole: memory only the peer can free.
        let stalled = a.stalled_ms >= a.stall_needed_ms;
        let rx_stuck = a.rx_stalled_ms > 0 && a.rx_stalled_ms >= a.rx_stall_needed_ms;
        // What the peer holds: data received in order and not read is the application's.
        let held = s.held_by_peer();
        // Contained: by this host's rule, or by the fleet (a CrowdSec decision).
        let contained = if self.repeat.flagged_since(&p.fairness.remote(s.remote.ip())).is_some() {
            Some(Reason::RepeatOffender)
        } else {
            self.fleet.lookup(s.remote.ip()).map(|_| Reason::ContainedByCrowdsec)
        };
        if let Some(reason) = contained
            && (stalled || rx_stuck)
            && held > 0
        {
            plan.sweep.push(decision(reason, a.stalled_ms.max(a.rx_stalled_ms), held));
        } else if held > a.fair_share {
            let over_bytes = held - a.fair_share;
            if stalled {
                plan.offenders.push(decision(Reason::Stalled, a.stalled_ms, over_bytes));
            } else if rx_stuck {
                plan.offenders.push(decision(Reason::OutOfOrder, a.rx_stalled_ms, over_bytes));
            } else if a.drain_estimate_ms.is_some_and(|d| d > self.max_drain_now(plan.pressure, now_ms)) {
                let slow_for = now_ms.saturating_sub(over_since.unwrap_or(now_ms));
                plan.offenders.push(decision(Reason::SlowDrain, slow_for, over_bytes));
            } else if a.stalled_ms >= p.interval_ms {
                // Over its share and no progress for an interval: an offender in the making,
                // which a capped budget keeps a destroy for (`Plan::carry_out`).
                plan.waiting.note(s.charged);
            }
        } else if (stalled || rx_stuck) && held.saturating_mul(NEGLIGIBLE_FRACTION) >= a.fair_share && held > 0 {
            // Not a socket whose destroy frees a negligible part of its share (an idle keep-alive
            // whose small response a slow path has not acknowledged yet).
            plan.escalation.push(decision(Reason::StalledUnderShare, a.stalled_ms.max(a.rx_stalled_ms), held));
        }
    }
}

impl Judge {
    /// `--max-drain` as it stands now: it tightens while an episode lasts ([`max_drain_now`]).
    fn max_drain_now(&self, pressure: u64, now_ms: u64) -> u64 {
        let p = &self.policy;
        let age_ms = self.episodes.current().map_or(0, |e| now_ms.saturating_sub(e.started_ms));
        max_drain_now(p.max_drain_ms, p.threshold, pressure, age_ms)
    }
}

/// Escalation leaves alone a socket holding less than its share over this: what it frees is
/// negligible, and such sockets are mostly keep-alives with a small response in flight.
const NEGLIGIBLE_FRACTION: u64 = 8;

#[cfg(test)]
mod tests;
