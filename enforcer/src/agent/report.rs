//! Reporting an interval: the kernel counters and program statistics as gauges, the interval's
//! metrics, and its debug line.
use std::time::{Duration, Instant};

use anyhow::Result;
use enforcer_common::stats;

use super::{Agent, act::Acted};
use crate::{
    bpf::contained::Source,
    observe::decisions,
    policy::{self, episode::Change},
};

/// Time spent in each step of an interval, for the metrics and the debug line.
pub(super) struct Timing {
    pub started: Instant,
    pub scanned: Duration,
    pub decided: Duration,
}

impl Agent {
    /// Kernel counters and program statistics, every interval.
    pub(super) fn update_gauges(&self, counters: Result<[u64; stats::COUNT as usize]>) {
        let m = &self.metrics;
        match counters {
            Ok(k) => m.kernel_counters(&k),
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "reading kernel counters"),
        }
        for (name, runs, time) in self.loaded.program_stats() {
            m.program_stats(name, runs, time);
        }
        // Every interval, quiet ones too: decisions come and go whatever the pressure.
        let c = self.act.containment.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        m.contained.get_or_create(&vec![("source", "repeat_offender")]).set(c.count(Source::Repeat) as i64);
        m.contained.get_or_create(&vec![("source", "crowdsec")]).set(c.count(Source::Crowdsec) as i64);
    }

    /// An episode of pressure that started or ended.
    pub(super) fn report_episode(&self, change: &Change, pressure: u64) {
        let s = &self.settings;
        decisions::log_episode(change, pressure, s.threshold, policy::low_water(s.threshold, s.low_water_percent));
        self.metrics.episode.set(i64::from(self.judge.episode().is_some()));
    }

    /// An interval whose pressure was well below the threshold: nothing judged.
    pub(super) fn report_quiet(&self, pressure: u64, scanned: Duration) {
        self.metrics.pressure.set(pressure as i64);
        self.metrics.offenders.set(0);
        self.metrics.scan_seconds.observe(scanned.as_secs_f64());
        tracing::debug!(
            pressure,
            threshold = self.settings.threshold,
            scan_us = scanned.as_micros() as u64,
            "interval (summary only)"
        );
    }

    /// An interval that judged `sockets` sockets and acted.
    pub(super) fn report_interval(&self, sockets: usize, acted: &Acted, t: &Timing) {
        let (pressure, outcome) = (acted.pressure, &acted.outcome);
        let m = &self.metrics;
        m.pressure.set(pressure as i64);
        m.scan_seconds.observe(t.scanned.as_secs_f64());
        m.policy_seconds.observe((t.decided - t.scanned).as_secs_f64());
        m.offenders.set(acted.candidates as i64);
        m.held_back.inc_by(outcome.held_back as u64);
        m.repeat_offenders_flagged.set(self.judge.repeat_offenders() as i64);
        tracing::debug!(
            sockets,
            pressure,
            threshold = acted.threshold,
            candidates = acted.candidates,
            acted = outcome.acted.len(),
            failed = outcome.failed,
            scan_us = t.scanned.as_micros() as u64,
            policy_us = (t.decided - t.scanned).as_micros() as u64,
            total_us = t.started.elapsed().as_micros() as u64,
            "interval"
        );
    }
}
