//! Retrying something costly while it keeps failing: at once the first time, then each retry
//! after twice the last wait, from `first` up to `max`, until a try leaves nothing to retry.
//! Pure. Imports nothing of ours.
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// What the next try waits for after the last one; zero: it need not wait.
    wait: Duration,
    last: Option<Instant>,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { first, max, wait: Duration::ZERO, last: None }
    }

    /// Whether to try at `now`; a `true` counts as a try.
    pub fn due(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < self.wait) {
            return false;
        }
        self.last = Some(now);
        self.wait = (self.wait * 2).clamp(self.first, self.max);
        true
    }

    /// Nothing is left to retry: the next failure is tried at once.
    pub fn reset(&mut self) {
        self.wait = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_while_tries_keep_failing_and_reset_once_one_succeeds() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut b = Backoff::new(s(1), s(4));
        assert!(b.due(t0), "the first try is at once");
        assert!(!b.due(t0 + Duration::from_millis(999)));
        assert!(b.due(t0 + s(1)));
        // Then 2 s, then 4 s, and no longer than that.
        assert!(!b.due(t0 + s(2)));
        assert!(b.due(t0 + s(3)));
        assert!(!b.due(t0 + s(6)));
        assert!(b.due(t0 + s(7)));
        assert!(!b.due(t0 + s(10)));
        assert!(b.due(t0 + s(11)));
        assert!(b.due(t0 + s(15)));
        b.reset();
        assert!(b.due(t0 + s(15)), "after a success the next failure is tried at once");
        assert!(!b.due(t0 + s(15)));
    }
}
