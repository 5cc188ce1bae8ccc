//! Adoption after a failed record: a connection the kernel could not give a record (a sock_ops
//! error, no memory) is found by running adoption again in each namespace, the walk the agent
//! otherwise makes once, at start; backing off while failures keep coming.
use std::time::{Duration, Instant};

use enforcer_common::stats;

use super::{Agent, backoff::Backoff};

/// Adoption after failed records waits this long at most: while failures keep coming (memory
/// short), each adoption waits twice as long as the last, from one second, since each walks
/// every socket of the watched namespaces.
const ADOPT_WAIT_MAX: Duration = Duration::from_secs(60);

pub(super) struct Adoption {
    /// Connections the kernel failed to give a record (sock_ops errors, no memory), as of the
    /// last adoption: when it grows, adoption runs again.
    record_failures: u64,
    backoff: Backoff,
}

impl Adoption {
    pub fn new() -> Self {
        Self { record_failures: 0, backoff: Backoff::new(Duration::from_secs(1), ADOPT_WAIT_MAX) }
    }
}

impl Agent {
    /// Every connection gets its record from sock_ops or from the first walk to see it; when
    /// that failed (an error, no memory for the record), or adoption could not record one (no
    /// memory, or its storage was being freed: an agent that just exited leaves its records to
    /// be freed while the next one adopts), the connection is found by running adoption again
    /// in each namespace. `k` are the kernel counters.
    pub(super) fn adopt_unrecorded(&mut self, k: &[u64]) {
        let failures = k[stats::ERR_SOCKOPS as usize] + k[stats::ERR_STORAGE as usize];
        let a = &mut self.adoption;
        if failures <= a.record_failures {
            // None since the last adoption: the next failure is adopted at once.
            a.backoff.reset();
            return;
        }
        if !a.backoff.due(Instant::now()) {
            return;
        }
        a.record_failures = failures;
        for ns in self.namespaces.list() {
            if let Err(e) = self.loaded.adopt_in(ns) {
                tracing::debug!(netns = ns.inode, error = %format!("{e:#}"), "adoption after a failed record");
            }
        }
    }
}
