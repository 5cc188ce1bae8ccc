//! Acting on a judgement: the dry run's episode, the kill caps, each destroy with its log line
//! and journal record, and containing or releasing repeat offenders.
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Instant,
};

use ipnet::IpNet;

use super::Agent;
use crate::{
    bpf::{
        contained::{Containment, Source},
        journal::{Event, Journal},
    },
    host::{
        netns::{self, Namespace},
        sock_diag::Netlink,
    },
    model::socket::Socket,
    observe::{attribution::Attributor, decisions},
    policy::{Decision, Outcome, Plan, Taken, repeat::Flagged, storm::StormGuard},
};

/// What acting needs beyond the rule: where decisions go, and the caps and memory of acting.
pub(super) struct Act {
    pub journal: Journal,
    /// Shared with the fleet's bouncer, which writes CrowdSec's decisions to the same trie.
    pub containment: Arc<Mutex<Containment>>,
    pub storm: StormGuard,
    /// One netlink socket per network namespace it destroys in, by namespace inode.
    pub destroyers: HashMap<u64, Netlink>,
    /// Names the namespace, cgroup path and process of each socket decided on.
    pub attribution: Attributor,
    /// Dry run: the sockets reported in this episode, kept while the rule keeps them among its
    /// candidates (carried out or held back by a cap). A dry run reports a socket once per
    /// episode (until the rule stops choosing it, say when pressure falls), so its log, ring
    /// and counters count sockets, not intervals, and real history stays in the ring.
    pub reported: HashSet<u64>,
}

/// What one interval's acting did, for the report.
pub(super) struct Acted {
    /// What the rule was judged against this interval.
    pub pressure: u64,
    pub threshold: u64,
    /// Sockets the rule chose, before the budget and the caps.
    pub candidates: usize,
    pub outcome: Outcome,
}

impl Agent {
    /// Carries the plan out within the kill caps, and remembers what was destroyed.
    pub(super) fn act(&mut self, plan: Plan, started: Instant) -> Acted {
        let (pressure, threshold, candidates) = (plan.pressure, plan.threshold, plan.candidates());
        let dry_run = self.settings.dry_run;
        let allowed = self.settings.max_kills.min(self.act.storm.available(started));
        // In a dry run, sockets chosen again that were reported earlier in the episode: taken as
        // gone, as a real run would have destroyed them, so they are not reported again and do
        // not use up the caps; the next candidates are reported as a real run would destroy them.
        let still: HashSet<u64> = if dry_run { plan.cookies().collect() } else { HashSet::new() };
        let outcome = if candidates == 0 {
            Outcome::default()
        } else {
            let outcome = plan.carry_out(allowed, |d| {
                if dry_run && self.act.reported.contains(&d.socket.cookie) {
                    Taken::Gone
                } else if self.enforce(d, pressure, threshold) {
                    Taken::Done
                } else {
                    Taken::Failed
                }
            });
            self.act.storm.spend(started, outcome.acted.len());
            outcome
        };
        if dry_run {
            // A socket leaves the episode when the rule no longer names it at all, not when a
            // cap held it back for an interval.
            self.act.reported.retain(|c| still.contains(c));
            self.act.reported.extend(outcome.acted.iter().map(|d| d.socket.cookie));
        }
        if outcome.held_back > 0 {
            // Name the cap that bit: the per-interval one when it was the smaller.
            let cap = if allowed == self.settings.max_kills { "--max-kills" } else { "--max-kills-per-minute" };
            tracing::warn!(
                held_back = outcome.held_back,
                max_kills = self.settings.max_kills,
                max_kills_per_minute = self.act.storm.per_minute,
                "kill-storm guard: {cap} held back sockets the rule chose this interval"
            );
        }
        // Flagged as of now, after the walk, not as of the interval's start: every connection this
        // walk saw was opened before the flag and keeps the ordinary grace (`--stall`), also one
        // whose record the walk itself made at first sight, dated after the interval started.
        // +1: an age is whole milliseconds, rounded down.
        let flagged_ms = self.epoch.elapsed().as_millis() as u64 + 1;
        for d in &outcome.acted {
            if let Some(flag) = self.judge.record_destroy(d, flagged_ms) {
                self.flag(&flag);
            }
        }
        // Netlink sockets of namespaces that are gone would keep them alive.
        if let Some(listed) = self.namespaces.listed() {
            self.act.destroyers.retain(|inode, _| listed.iter().any(|n| n.inode == *inode));
            self.act.attribution.retain_namespaces(|inode| listed.iter().any(|n| n.inode == inode));
        }
        Acted { pressure, threshold, candidates, outcome }
    }

    /// Enforces one decision: destroys the socket (or, in a dry run, only says so), logs and
    /// journals it. True when it freed the socket's memory (or would have, in a dry run).
    fn enforce(&mut self, d: &Decision, pressure: u64, threshold: u64) -> bool {
        // A destroy must be sent from inside the socket's namespace, reached through a process
        // of the cgroup that is in it; the process holding the socket is looked for there.
        let ns = self.namespaces.list().iter().find(|n| n.inode == d.socket.netns);
        // Before the destroy: netlink finds a destroyed socket no more.
        let who = self.act.attribution.attribute(&d.socket, ns);
        let (event, err) = if self.settings.dry_run {
            (Event::WouldDestroy, None)
        } else {
            match destroy_in(&mut self.act.destroyers, ns, &d.socket) {
                Ok(()) => (Event::Destroyed, None),
                Err(e) => (Event::DestroyFailed, Some(e)),
            }
        };
        decisions::log(event, d, &who, pressure, threshold, err.as_ref());
        self.metrics.decisions.get_or_create(&vec![("event", event.as_str()), ("reason", d.reason.as_str())]).inc();
        let errno = err.as_ref().and_then(std::io::Error::raw_os_error).unwrap_or(0);
        if let Err(e) = self.act.journal.write(decisions::record(event, d, &who, pressure, threshold, errno)) {
            tracing::warn!(error = %format!("{e:#}"), "could not record the decision in the pinned ring");
        }
        err.is_none()
    }

    /// A new repeat offender: say so, have the kernel give its new connections a small send
    /// buffer and a user timeout, and tell the fleet (not in a dry run: a dry run changes
    /// nothing, here or on other hosts).
    pub(super) fn flag(&mut self, f: &Flagged) {
        self.metrics.repeat_offenders.inc();
        let sndbuf = self.settings.contain_sndbuf;
        let contained = !self.settings.dry_run && sndbuf > 0;
        decisions::log_repeat_offender(f, contained.then_some(sndbuf));
        if contained {
            let mut c = self.act.containment.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if c.is_protected(f.remote) {
                tracing::info!(remote = %f.remote, "a repeat offender inside a protected network is not contained");
            } else if let Err(e) = c.hold(f.remote, Source::Repeat, None, 0) {
                tracing::warn!(remote = %f.remote, error = %format!("{e:#}"), "could not contain the repeat offender");
            }
        }
        if !self.settings.dry_run
            && let Some(fleet) = &self.fleet
        {
            fleet.share(f);
        }
    }

    /// A repeat offender the rule let go.
    pub(super) fn release(&mut self, remote: IpNet) {
        tracing::info!(remote = %remote, "repeat offender released: no destroy for a whole --repeat-window");
        // Whatever the mode now: a reload into a dry run must not leave a containment behind.
        let mut c = self.act.containment.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = c.release(remote, Source::Repeat) {
            tracing::warn!(remote = %remote, error = %format!("{e:#}"), "could not release the repeat offender");
        }
    }
}

/// Destroys a socket from inside its network namespace, through a netlink socket made there
/// (a netlink socket keeps the namespace it was created in).
fn destroy_in(destroyers: &mut HashMap<u64, Netlink>, ns: Option<&Namespace>, socket: &Socket) -> std::io::Result<()> {
    let ns = ns.ok_or_else(|| std::io::Error::other("its network namespace is no longer reachable"))?;
    let nl = match destroyers.entry(ns.inode) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(netns::run_in(ns, Netlink::open).map_err(|e| std::io::Error::other(format!("{e:#}")))??)
        }
    };
    nl.destroy(&socket.raw)
}
