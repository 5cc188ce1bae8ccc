//! Revisiting, where the walks visit every TCP socket (`iter/tcp`, about 1 µs each): while
//! pressure stays over half the threshold, an interval looks at the last walk's candidates alone
//! (`bpf::revisit`), and walks every socket only when something may have changed.
//!
//! A revisit never decides. A copy of the rule judges what it found, with a connection count and
//! a pressure that can only make it take less than an exact walk would: when even that judgement
//! would act (destroy, report, flag a remote, start or end an episode), the interval walks every
//! socket and the rule decides on that walk, as always. Otherwise nothing is carried out and the
//! copy's memory becomes the rule's: each candidate keeps its sample every interval, as with a
//! walk (judged on walks alone, a queue that drained and refilled between two walks would look
//! like a slow drain). What it said of remotes is forgotten: it did not see a connection that
//! started holding data since the walk, whose progress keeps its remote from being stuck. So
//! every decision is an exact walk's, and `policy::property_revisit` holds it, over generated
//! socket sets, to never destroying a socket that a walk of every socket each interval would
//! spare.
//!
//! The interval walks every socket instead when:
//! - the last walk is older than `WALK_AT_LEAST_EVERY` (a socket that started holding data
//!   since is only found by a walk);
//! - the kernel's TCP memory grew by more than the candidates' charged memory did, beyond what the
//!   kernel's counter may lag (`pressure::counter_lag`): a socket outside the candidates holds
//!   more than it did;
//! - a candidate was not found that did not end (more are missing than `stats::ENDED` counted
//!   since the walk): one the revisit cannot see;
//! - the fairness is per remote (the kernel counts per remote group only in a walk), a
//!   per-remote cap is set (it judges idle connections), or the kernel could not count the
//!   ends of recorded connections (`stats::ERR_ENDS`, kernels before 6.12).
use std::time::{Duration, Instant};

use enforcer_common::{SnapshotEntry, stats};

use super::{Agent, judged::Judged};
use crate::{
    bpf::revisit::Revisit,
    host::pressure,
    model::{fairness::Fairness, socket::Socket},
    policy::{Plan, Population, episode::Change},
};

/// The longest an interval over half the threshold goes without a walk of every socket: how
/// late a socket that starts holding data without the kernel's TCP memory showing it (under the
/// counter's lag) can be found. A walk costs ~1 µs per socket of the namespace; at 100,000 that
/// is 100–150 ms of CPU, every 10 s instead of every second.
const WALK_AT_LEAST_EVERY: Duration = Duration::from_secs(10);

/// What the last walk of every socket left for the revisits.
struct Basis {
    at: Instant,
    /// Tracked connections it counted.
    connections: u64,
    /// `stats::ENDED` read before it: every connection that ended after it was counted (or was
    /// never counted: ended before the walk reached it) is in the difference to a later reading.
    ended: u64,
    /// The kernel's TCP memory read right after it, and its candidates' charged memory.
    kernel_memory: u64,
    candidates_charged: u64,
    /// How many candidates it wrote out.
    candidates: usize,
}

/// The revisit and its basis.
pub(super) struct Revisits {
    revisit: Revisit,
    basis: Option<Basis>,
    entries: Vec<SnapshotEntry>,
}

impl Revisits {
    pub fn new(revisit: Revisit) -> Self {
        Self { revisit, basis: None, entries: Vec::new() }
    }

    /// After a walk that counted `connections` and wrote out `entries`: with `ended` (read
    /// before it began; `None` for a walk that is no basis) the basis of the next revisits.
    pub fn note_walk(&mut self, connections: u64, ended: Option<u64>, entries: &[SnapshotEntry]) {
        self.basis = None;
        let (Some(ended), Some(kernel_memory)) = (ended, pressure::kernel_tcp_memory()) else { return };
        match self.revisit.choose(entries) {
            Ok(true) => {
                self.basis = Some(Basis {
                    at: Instant::now(),
                    connections,
                    ended,
                    kernel_memory,
                    candidates_charged: charged(entries),
                    candidates: entries.len(),
                });
            }
            Ok(false) => {}
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "revisit keys not written; the next interval walks"),
        }
    }
}

/// Charged memory of entries, summed.
fn charged(entries: &[SnapshotEntry]) -> u64 {
    entries.iter().map(|e| u64::from(e.wmem_queued) + u64::from(e.rmem_alloc)).sum()
}

impl Agent {
    /// `stats::ENDED` now; `None` where ends cannot be counted (`stats::ERR_ENDS`) or the counters
    /// cannot be read.
    pub(super) fn ended(&self) -> Option<u64> {
        let k = self.loaded.stats().ok()?;
        (k[stats::ERR_ENDS as usize] == 0).then_some(k[stats::ENDED as usize])
    }

    /// A revisit of the last walk's candidates, when nothing calls for a walk of every socket:
    /// the pressure (a lower bound where it is summed from the walk) and what to judge.
    pub(super) fn revisited(&mut self) -> Option<(u64, Judged)> {
        let s = &self.settings;
        if s.fairness != Fairness::Connection || s.max_per_remote.is_some() {
            return None;
        }
        let ended = self.ended()?;
        let r = self.sense.revisits.as_mut()?;
        let basis = r.basis.as_ref().filter(|b| b.at.elapsed() < WALK_AT_LEAST_EVERY)?;
        let namespaces = self.namespaces.list();
        if let Err(e) = r.revisit.run(namespaces, &mut r.entries) {
            tracing::debug!(error = %format!("{e:#}"), "revisit failed; this interval walks");
            return None;
        }
        // A candidate not found that did not end (a namespace no longer reached, a socket the
        // lookup cannot find) is one the rule no longer sees: walk.
        let ended_since = ended.saturating_sub(basis.ended);
        if (basis.candidates.saturating_sub(r.entries.len()) as u64) > ended_since {
            return None;
        }
        let now = charged(&r.entries);
        // Memory outside the candidates grew: something else may hold data now.
        let kernel = pressure::kernel_tcp_memory()?;
        let grown = i128::from(kernel) - i128::from(basis.kernel_memory);
        let explained = i128::from(now) - i128::from(basis.candidates_charged);
        if grown - explained > i128::from(pressure::counter_lag()?) {
            return None;
        }
        // Every connection counted at the walk that ended since is subtracted; one opened since
        // is not added: the count can only be lower than the truth, each share only larger.
        let connections = basis.connections.saturating_sub(ended_since).max(r.entries.len() as u64);
        let sockets: Vec<Socket> = r.entries.iter().map(Socket::new).collect();
        let count = r.entries.len();
        // The sources read without a walk are exact; the summed one has only the candidates' part.
        let pressure = match self.sense.meter.source {
            pressure::Source::Tracked => now,
            _ => self.sense.meter.read(now).ok()?,
        };
        self.metrics.scans.get_or_create(&vec![("kind", "revisit")]).inc();
        self.metrics.tracked.set(connections as i64);
        self.metrics.scanned_out.set(count as i64);
        let population =
            Population::counted(self.settings.fairness, connections, 0, &sockets, None::<fn(&Socket) -> u64>);
        Some((pressure, Judged { population, sockets, revisited: true }))
    }

    /// Whether carrying out `plan` (a revisit's judgement) would do anything: then a walk of
    /// every socket decides instead.
    pub(super) fn would_act(&self, plan: &Plan) -> bool {
        if !plan.flagged.is_empty() || plan.episode != Change::None {
            return true;
        }
        if self.settings.dry_run {
            // Reports a socket not reported yet in this episode, or lets one go.
            let named: std::collections::HashSet<u64> = plan.cookies().collect();
            named != self.act.reported
        } else {
            plan.candidates() > 0
        }
    }
}
