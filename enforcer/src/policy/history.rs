//! What the rule remembers of a socket across snapshots: samples of what the peer acknowledged,
//! kept only while it holds more than its share, and the drain rate measured over them.
//!
//! The drain rate is measured over `drain_window_ms` of those samples: intervals without an ACK
//! count as zero, and a socket that has not been over its share for the whole window gets no
//! slow-drain verdict at all. A reader whose ACKs arrive in bursts (a client that reads 64 KiB
//! every 100 ms, or 2 MiB every second) is judged on its real rate.
use std::collections::VecDeque;

use crate::model::socket::Socket;

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
}

impl OverShare {
    pub fn drain_estimate_ms(&self, s: &Socket, now_ms: u64, window_ms: u64) -> Option<u64> {
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
        Some((u128::from(s.send_queue) * u128::from(span) / u128::from(acked)).min(u128::from(u64::MAX)) as u64)
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
    (s.charged > share).then(|| {
        let mut o = before.unwrap_or_else(|| OverShare { since_ms: now_ms, samples: VecDeque::new() });
        o.samples.push_back(Sample { at_ms: now_ms, bytes_acked: s.bytes_acked, send_queue: s.send_queue });
        let start = now_ms.saturating_sub(window_ms);
        while o.samples.get(1).is_some_and(|x| x.at_ms <= start) {
            o.samples.pop_front();
        }
        o
    })
}
