//! Episodes of pressure: pressure crossing the threshold opens one, and it ends only once
//! pressure has stayed at or under the low line (`--low-water`) for a while.
//!
//! Within an episode the rule keeps acting while pressure is over the low line, the budget aims
//! for that line rather than the threshold, and escalation counts the judgements the episode
//! spent over the threshold, not an unbroken streak: pressure that hovers at the threshold (a
//! reader's queue moving it across, interval by interval) no longer resets the rule and leaves
//! stalled attackers holding memory until the attack ends. The kernel does the same with its own
//! TCP memory pressure: it enters at `tcp_mem[1]` and leaves under `tcp_mem[0]`, which it sets
//! to 3/4 of `tcp_mem[1]` (`tcp_init_mem`).

/// An episode of pressure, as far as it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Episode {
    /// When pressure first went over the threshold (the judge's clock).
    pub started_ms: u64,
    /// Judgements with pressure over the threshold, in a row or not.
    pub over: u32,
    /// The highest pressure a judgement saw.
    pub peak: u64,
    /// Decisions carried out in it (destroys, or a dry run's reports).
    pub decisions: u64,
    /// Judgements in a row with pressure at or under the low line.
    calm: u32,
}

/// What one judgement did to the episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Pressure went over the threshold: an episode starts.
    Started,
    /// Pressure stayed at or under the low line long enough: this episode ended (`ended_ms`).
    Ended {
        episode: Episode,
        ended_ms: u64,
    },
}

/// The current episode, if any.
#[derive(Debug, Clone, Default)]
pub struct Episodes {
    current: Option<Episode>,
}

impl Episodes {
    /// One judgement's `pressure` against `threshold` and the `low` line; an episode ends after
    /// `settle` judgements in a row at or under `low`.
    pub fn step(&mut self, pressure: u64, threshold: u64, low: u64, settle: u32, now_ms: u64) -> Change {
        let over = pressure > threshold;
        let Some(e) = &mut self.current else {
            if !over {
                return Change::None;
            }
            self.current = Some(Episode { started_ms: now_ms, over: 1, peak: pressure, decisions: 0, calm: 0 });
            return Change::Started;
        };
        e.over += u32::from(over);
        e.peak = e.peak.max(pressure);
        e.calm = if pressure <= low { e.calm + 1 } else { 0 };
        if e.calm < settle {
            return Change::None;
        }
        let episode = *e;
        self.current = None;
        Change::Ended { episode, ended_ms: now_ms }
    }

    pub fn current(&self) -> Option<&Episode> {
        self.current.as_ref()
    }

    /// A decision carried out: counted against the episode it happened in.
    pub fn count_decision(&mut self) {
        if let Some(e) = &mut self.current {
            e.decisions += 1;
        }
    }
}

/// `--max-drain` as it stands within an episode: scaled down as pressure rises over the threshold
/// (threshold / pressure) and as the episode ages (by half over `--max-drain` of it), whichever
/// is lower, to half of `--max-drain` at the least. Envoy's overload manager scales its timeouts
/// the same way. An attacker that keeps its queues draining just within `--max-drain` while the
/// application refills them holds memory for as long as it likes; under sustained pressure it
/// must drain twice as fast. Half, not less: a reader that keeps up (640 KB/s with 7.7 MB queued
/// drains in 12 s) is no attacker, and a progressing socket under its share is never taken.
pub fn max_drain_now(max_drain_ms: u64, threshold: u64, pressure: u64, age_ms: u64) -> u64 {
    let by_pressure = u128::from(max_drain_ms) * u128::from(threshold) / u128::from(pressure.max(1));
    let by_age = u128::from(max_drain_ms).saturating_sub(u128::from(age_ms.min(max_drain_ms)) / 2);
    (by_pressure.min(by_age).min(u128::from(max_drain_ms)) as u64).max(max_drain_ms / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_rises_with_pressure_and_age_to_half() {
        // Not over the threshold, a new episode: --max-drain.
        assert_eq!(max_drain_now(30_000, 100, 100, 0), 30_000);
        // Pressure 1.5 × the threshold: 20 s; twice and more: 15 s.
        assert_eq!(max_drain_now(30_000, 100, 150, 0), 20_000);
        assert_eq!(max_drain_now(30_000, 100, 1000, 0), 15_000);
        // An episode 10 s old: 25 s; one as old as --max-drain or older: 15 s.
        assert_eq!(max_drain_now(30_000, 100, 101, 10_000), 25_000);
        assert_eq!(max_drain_now(30_000, 100, 101, 3_600_000), 15_000);
    }

    #[test]
    fn an_episode_lasts_until_pressure_settles_under_the_low_line() {
        let mut e = Episodes::default();
        let step = |e: &mut Episodes, p: u64, t: u64| e.step(p, 100, 75, 3, t);
        assert_eq!(step(&mut e, 90, 0), Change::None, "under the threshold: no episode");
        assert_eq!(step(&mut e, 101, 250), Change::Started);
        // Hovering between the lines, under and over the threshold: one episode.
        for (i, p) in [99, 101, 80, 100, 76].into_iter().enumerate() {
            assert_eq!(step(&mut e, p, 500 + 250 * i as u64), Change::None);
        }
        let ep = *e.current().expect("the episode");
        assert_eq!((ep.started_ms, ep.over, ep.peak), (250, 2, 101));
        // Two judgements at the line, one over it: not settled.
        for (i, p) in [75, 40, 76, 75, 75].into_iter().enumerate() {
            assert_eq!(step(&mut e, p, 2000 + 250 * i as u64), Change::None);
        }
        e.count_decision();
        match step(&mut e, 10, 3250) {
            Change::Ended { episode, ended_ms } => {
                assert_eq!((episode.started_ms, episode.over, episode.decisions, ended_ms), (250, 2, 1, 3250));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.current().is_none());
        assert_eq!(step(&mut e, 101, 3500), Change::Started, "a new episode");
        assert_eq!(e.current().map(|e| e.decisions), Some(0));
    }
}
