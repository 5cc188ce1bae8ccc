//! The kill-storm guard: at most `--max-kills-per-minute` decisions over any sliding minute,
//! beside the per-interval `--max-kills`. A rule gone wrong (or a threshold set far too low)
//! cannot empty a host of connections in one go.
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

pub struct StormGuard {
    pub per_minute: usize,
    recent: VecDeque<Instant>,
}

impl StormGuard {
    pub fn new(per_minute: usize) -> Self {
        Self { per_minute, recent: VecDeque::new() }
    }

    /// How many decisions may still go ahead at `now`.
    pub fn available(&mut self, now: Instant) -> usize {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
            self.recent.pop_front();
        }
        self.per_minute.saturating_sub(self.recent.len())
    }

    /// Counts `n` decisions taken at `now`.
    pub fn spend(&mut self, now: Instant, n: usize) {
        self.recent.extend(std::iter::repeat_n(now, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_a_sliding_minute() {
        let mut g = StormGuard::new(10);
        let t0 = Instant::now();
        let mut allow = |t, wanted: usize| {
            let n = wanted.min(g.available(t));
            g.spend(t, n);
            n
        };
        assert_eq!(allow(t0, 7), 7);
        assert_eq!(allow(t0 + Duration::from_secs(30), 7), 3);
        assert_eq!(allow(t0 + Duration::from_secs(59), 1), 0);
        // The first seven leave the window a minute after they were counted.
        assert_eq!(allow(t0 + Duration::from_secs(60), 9), 7);
        assert_eq!(allow(t0 + Duration::from_secs(90), 1), 1);
    }
}
