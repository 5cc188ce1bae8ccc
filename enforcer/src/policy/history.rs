//! What the rule remembers of a socket across snapshots: samples of what the peer acknowledged,
//! kept only while it holds more than its share, and the drain rate measured over them.
//!
//! Two estimates, both of the memory the peer holds (`Socket::held_by_peer`) over the rate it
//! acknowledged (a tiny window makes the kernel charge several times the bytes queued: memory,
//! not bytes, is what the peer holds):
//! - over `drain_window_ms` of samples: intervals without an ACK count as zero, and a socket
//!   that has not been over its share for the whole window gets no such estimate. A reader whose
//!   ACKs arrive in bursts (a client that reads 64 KiB every 100 ms, or 2 MiB every second) is
//!   judged on its real rate.
//! - a **trickle**, sooner: a peer that acknowledged something in every interval for
//!   [`TRICKLE_AFTER_MS`] at least, over its share all along, is judged on the most generous rate
//!   consistent with what was seen: as if a burst as large as the largest it showed (in one
//!   interval, or as its window) arrived at once now. A reader that pauses, or reads in bursts
//!   further apart than an interval, has an interval without an ACK and waits for the window; one
//!   that keeps up has a generous rate that drains it. Slow readers (slowhttptest `-X`) ACK a
//!   trickle in every interval: they are slow in seconds, not a drain window.
use std::collections::VecDeque;

use crate::model::socket::Socket;

/// A trickle is judged after about this long over the share, and two intervals at least.
pub const TRICKLE_AFTER_MS: u64 = 1500;

#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    at_ms: u64,
    bytes_acked: u64,
    send_queue: u64,
}

/// Kept while a socket holds more than its share.
#[derive(Debug, Clone)]
pub(super) struct OverShare {
    pub since_ms: u64,
    /// Oldest first; trimmed so that the first is the last one at or before the window's start.
    samples: VecDeque<Sample>,
    /// Where the trickle began (the first sample, or the last one that saw no ACK since the one
    /// before), and how many samples came since, each with an ACK.
    trickle_from: (Sample, u32),
    /// The most acknowledged between two samples, and the largest window the peer advertised:
    /// the largest burst it showed.
    largest_burst: u64,
}

impl OverShare {
    /// The drain estimate to judge `s` by: over the window when it has one, else as a trickle.
    pub fn drain_estimate_ms(&self, s: &Socket, now_ms: u64, window_ms: u64, interval_ms: u64) -> Option<u64> {
        self.window_estimate_ms(s, now_ms, window_ms).or_else(|| self.trickle_estimate_ms(s, now_ms, interval_ms))
    }

    /// As a trickle: the most generous rate the samples allow (see the module's comment).
    fn trickle_estimate_ms(&self, s: &Socket, now_ms: u64, interval_ms: u64) -> Option<u64> {
        let (first, intervals) = self.trickle_from;
        let span = now_ms.saturating_sub(first.at_ms);
        // Half an interval's slack: ticks come a little early or late.
        if intervals < 2 || span < TRICKLE_AFTER_MS.saturating_sub(interval_ms / 2) {
            return None;
        }
        let acked = s.bytes_acked.saturating_sub(first.bytes_acked);
        if acked >= first.send_queue {
            return None;
        }
        let generous = acked.saturating_add(self.largest_burst).max(1);
        Some((u128::from(s.held_by_peer()) * u128::from(span) / u128::from(generous)).min(u128::from(u64::MAX)) as u64)
    }

    fn window_estimate_ms(&self, s: &Socket, now_ms: u64, window_ms: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.since_ms) < window_ms {
            return None;
        }
        let base = self.samples.front()?;
        let acked = s.bytes_acked.saturating_sub(base.bytes_acked);
        // The peer drained the whole backlog the window started with: it keeps up, and whatever
        // is queued now was written since.
        if acked >= base.send_queue {
            return None;
        }
        let span = now_ms.saturating_sub(base.at_ms);
        if span == 0 {
            return None;
        }
        if acked == 0 {
            return Some(u64::MAX);
        }
        Some((u128::from(s.held_by_peer()) * u128::from(span) / u128::from(acked)).min(u128::from(u64::MAX)) as u64)
    }
}

/// What to keep of `s` for the next snapshot: its over-share samples, while it is over.
pub(super) fn remember(
    s: &Socket,
    before: Option<OverShare>,
    share: u64,
    now_ms: u64,
    window_ms: u64,
) -> Option<OverShare> {
    (s.held_by_peer() > share).then(|| {
        let now = Sample { at_ms: now_ms, bytes_acked: s.bytes_acked, send_queue: s.send_queue };
        let mut o = before.unwrap_or_else(|| OverShare {
            since_ms: now_ms,
            samples: VecDeque::new(),
            trickle_from: (now, 0),
            largest_burst: 0,
        });
        if let Some(last) = o.samples.back() {
            let step = s.bytes_acked.saturating_sub(last.bytes_acked);
            // An interval without an ACK: a pause or a gap between bursts, and a trickle, if it
            // is one, is watched afresh from here.
            o.trickle_from = match o.trickle_from {
                (first, n) if step > 0 => (first, n + 1),
                _ => (now, 0),
            };
            o.largest_burst = o.largest_burst.max(step);
        }
        o.largest_burst = o.largest_burst.max(s.peer_window);
        o.samples.push_back(now);
        let start = now_ms.saturating_sub(window_ms);
        while o.samples.get(1).is_some_and(|x| x.at_ms <= start) {
            o.samples.pop_front();
        }
        o
    })
}
