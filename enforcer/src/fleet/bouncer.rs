//! The bouncer: a thread that polls the Local API's decision stream (a startup answer first,
//! then what changed), writes what changed to the contained trie a chunk at a time (the agent
//! writes its own repeat offenders between chunks), and hands the rule the set of contained
//! networks. It fails open: while the Local API is unreachable or answers nonsense, what was
//! applied stays until each decision's own end, and local enforcement goes on; it says so once,
//! retries with back-off, counts each failure, and asks for a startup answer again once it is
//! back, so it catches up.
use std::{
    sync::{Arc, Mutex, atomic::Ordering, mpsc},
    time::{Duration, Instant},
};

use super::{
    Shared,
    lapi::{Lapi, LapiError},
    stream::{self, Change, InForce},
};
use crate::{
    bpf::contained::{Containment, Source},
    config::crowdsec::Crowdsec,
    host::sys,
    observe::metrics::Metrics,
};

/// Trie writes per hold of the containment's lock: the agent's own flags wait at most this many
/// system calls (a few ms).
const CHUNK: usize = 2000;
/// Back-off after failures: doubles from the first, up to the poll interval or this, whichever
/// is longer.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(60);
/// A startup answer is asked for again this often: the Local API's flush of old alerts
/// (`db_config.flush.max_items`) deletes their decisions, active ones included, without them
/// ever appearing among a delta's deletions.
const RESYNC: Duration = Duration::from_secs(600);

pub(super) struct Bouncer {
    pub lapi: Lapi,
    pub key: String,
    pub settings: Crowdsec,
    pub containment: Arc<Mutex<Containment>>,
    pub shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
}

impl Bouncer {
    /// Runs until `stop` is dropped.
    pub fn run(mut self, stop: mpsc::Receiver<()>) {
        let mut in_force = InForce::default();
        let mut failures: u32 = 0;
        let mut startup = true;
        let mut published = None;
        let mut synced = Instant::now();
        let poll = Duration::from_millis(self.settings.poll_ms.max(1));
        loop {
            let polled = Instant::now();
            if synced.elapsed() >= RESYNC || self.shared.resync.swap(false, Ordering::Relaxed) {
                startup = true;
            }
            if startup {
                synced = polled;
            }
            match self.poll(&mut in_force, startup) {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(
                            url = self.lapi.url(),
                            failures,
                            "CrowdSec Local API: reachable again, caught up"
                        );
                    }
                    (failures, startup) = (0, false);
                    self.metrics.crowdsec_up.set(1);
                }
                Err(e) => {
                    self.metrics.crowdsec_errors.get_or_create(&vec![("kind", e.kind())]).inc();
                    self.metrics.crowdsec_up.set(0);
                    if failures == 0 {
                        tracing::warn!(
                            url = self.lapi.url(), error = %e,
                            "CrowdSec Local API: {e}; enforcing locally with the decisions already taken (each ends \
                             on time) and retrying with back-off (said once until it answers again)"
                        );
                    }
                    failures = failures.saturating_add(1);
                    // What was missed comes with a startup answer.
                    startup = true;
                }
            }
            // Decisions end on time also while the Local API is away.
            self.apply(in_force.expire(sys::unix_ms()));
            if published != Some(in_force.generation()) {
                self.publish(&in_force);
                published = Some(in_force.generation());
            }
            let wait = if failures == 0 {
                poll.saturating_sub(polled.elapsed())
            } else {
                let longest = LONGEST_RETRY.max(poll);
                FIRST_RETRY.saturating_mul(1 << (failures - 1).min(16)).min(longest)
            };
            match stop.recv_timeout(wait) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    fn poll(&mut self, in_force: &mut InForce, startup: bool) -> Result<(), LapiError> {
        let asked = Instant::now();
        let body = self.lapi.stream(&self.key, startup)?;
        let (answered, bytes) = (asked.elapsed(), body.len());
        let now = sys::unix_ms();
        let delta = stream::parse(&body, &self.settings.types, now).map_err(LapiError::Garbage)?;
        drop(body);
        let count = |outcome: &'static str, why: &'static str, n: usize| {
            if n > 0 {
                self.metrics
                    .crowdsec_decisions
                    .get_or_create(&vec![("outcome", outcome), ("why", why)])
                    .inc_by(n as u64);
            }
        };
        count("received", "", delta.received);
        count("ignored", "type", delta.ignored);
        for why in &delta.rejected {
            count("rejected", why.as_str(), 1);
        }
        if !delta.rejected.is_empty() {
            tracing::debug!(
                rejected = delta.rejected.len(),
                "CrowdSec decisions skipped (see enforcer_crowdsec_decisions_total)"
            );
        }
        // Protected networks first: a decision inside one is refused whole.
        let (new, protected): (Vec<_>, Vec<_>) = {
            let c = self.containment.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            delta.new.into_iter().partition(|(net, _)| !c.is_protected(*net))
        };
        count("rejected", "protected", protected.len());
        let changes = if startup {
            in_force.replace(new)
        } else {
            let mut changes: Vec<Change> = delta.deleted.into_iter().flat_map(|id| in_force.remove(id)).collect();
            for (net, d) in new {
                changes.extend(in_force.add(net, d));
            }
            changes
        };
        let (received, changed) = (delta.received, changes.len());
        let parsed = asked.elapsed();
        self.apply(changes);
        if startup || changed >= CHUNK {
            tracing::info!(
                startup,
                received,
                changed,
                in_force = in_force.len(),
                bytes,
                answer_ms = answered.as_millis() as u64,
                parse_ms = (parsed - answered).as_millis() as u64,
                apply_ms = (asked.elapsed() - parsed).as_millis() as u64,
                "CrowdSec decisions applied"
            );
        }
        Ok(())
    }

    /// Writes changes to the trie, a chunk per hold of the lock.
    fn apply(&mut self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let (mut applied, mut released, mut full) = (0u64, 0u64, 0u64);
        for chunk in changes.chunks(CHUNK) {
            let mut c = self.containment.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Under the lock: a reload into a dry run releases everything under it too.
            if self.shared.dry_run.load(Ordering::Relaxed) {
                return;
            }
            for change in chunk {
                let result = match change {
                    Change::Hold(net, d) => {
                        let r = c.hold(*net, Source::Crowdsec, Some(&d.label()), d.until_unix_ms);
                        if r.is_ok() {
                            applied += 1;
                        } else {
                            full += 1;
                        }
                        r
                    }
                    Change::Release(net) => {
                        released += 1;
                        c.release(*net, Source::Crowdsec)
                    }
                };
                if let Err(e) = result
                    && full <= 1
                {
                    tracing::warn!(error = %format!("{e:#}"), "CrowdSec decision not applied");
                }
            }
        }
        let m = &self.metrics.crowdsec_decisions;
        m.get_or_create(&vec![("outcome", "applied"), ("why", "")]).inc_by(applied);
        m.get_or_create(&vec![("outcome", "released"), ("why", "")]).inc_by(released);
        if full > 0 {
            m.get_or_create(&vec![("outcome", "rejected"), ("why", "capacity")]).inc_by(full);
        }
    }

    /// Hands the rule the networks in force.
    fn publish(&self, in_force: &InForce) {
        let nets = in_force.nets();
        self.metrics.crowdsec_contained.set(nets.len() as i64);
        self.shared.publish(nets);
    }
}
