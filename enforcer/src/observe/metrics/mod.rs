//! Prometheus metrics (`--metrics-addr`): what the agent sees and does each interval, what its
//! kernel programs count, and the process itself. Served by [`http`], in OpenMetrics or in the
//! classic text format ([`exposition`]).
mod exposition;
mod http;
mod process;

use std::time::Duration;

use enforcer_common::stats;
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::{Registry, Unit},
};

pub use self::{exposition::Format, http::serve};

type Labels = Vec<(&'static str, &'static str)>;

/// The `kind` labels of `enforcer_crowdsec_errors_total` and the `why` labels of rejected
/// decisions, each series made at start (the fleet's own types name them; its tests hold them
/// to these lists).
pub const CROWDSEC_ERROR_KINDS: [&str; 4] = ["unreachable", "auth", "status", "garbage"];
pub const CROWDSEC_REJECTED: [&str; 5] = ["malformed", "scope", "too_wide", "protected", "capacity"];

pub struct Metrics {
    registry: Registry,
    /// Set after the first interval that took a snapshot: `/readyz` answers 200 from then on.
    pub ready: std::sync::atomic::AtomicBool,
    pub pressure: Gauge,
    pub threshold: Gauge,
    pub tracked: Gauge,
    pub offenders: Gauge,
    /// Sockets the last scan wrote out for the rule (0 while pressure is well below the threshold).
    pub scanned_out: Gauge,
    /// Decisions by `event` (destroyed, would_destroy, destroy_failed) and `reason`.
    pub decisions: Family<Labels, Counter>,
    pub scans: Family<Labels, Counter>,
    pub held_back: Counter,
    /// Remotes that became repeat offenders, and how many are flagged now.
    pub repeat_offenders: Counter,
    pub repeat_offenders_flagged: Gauge,
    /// 1 while an episode of pressure lasts (over --threshold until settled under --low-water).
    pub episode: Gauge,
    pub scan_seconds: Histogram,
    pub policy_seconds: Histogram,
    /// 1 in a dry run.
    pub dry_run: Gauge,
    /// Networks contained now, by `source` (repeat_offender, crowdsec).
    pub contained: Family<Labels, Gauge>,
    /// The fleet (`--crowdsec-*`): decisions by `outcome` (received, applied, released,
    /// ignored, rejected) and `why` (for rejected and ignored).
    pub crowdsec_decisions: Family<Labels, Counter>,
    /// Failed calls to the Local API by `kind` (unreachable, auth, status, garbage).
    pub crowdsec_errors: Family<Labels, Counter>,
    /// 1 while the last poll of the decision stream answered.
    pub crowdsec_up: Gauge,
    /// Networks CrowdSec decisions contain now.
    pub crowdsec_contained: Gauge,
    /// Repeat offenders shared as alerts, by `outcome` (sent, dropped).
    pub crowdsec_alerts: Family<Labels, Counter>,
    /// Mirrors of the kernel programs' counters (`STATS`): events by `event`, errors by `error`.
    kernel: Family<Labels, Counter>,
    kernel_errors: Family<Labels, Counter>,
    process: process::Process,
    /// Run count and run time of each program (needs `sysctl kernel.bpf_stats_enabled=1`).
    program_runs: Family<Labels, Counter>,
    program_run_seconds: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    last_kernel: std::sync::Mutex<Vec<u64>>,
    last_runs: std::sync::Mutex<std::collections::HashMap<&'static str, (u64, Duration)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        let m = Self {
            pressure: Gauge::default(),
            threshold: Gauge::default(),
            tracked: Gauge::default(),
            offenders: Gauge::default(),
            scanned_out: Gauge::default(),
            decisions: Family::default(),
            scans: Family::default(),
            held_back: Counter::default(),
            repeat_offenders: Counter::default(),
            repeat_offenders_flagged: Gauge::default(),
            episode: Gauge::default(),
            scan_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            policy_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 14)),
            dry_run: Gauge::default(),
            contained: Family::default(),
            crowdsec_decisions: Family::default(),
            crowdsec_errors: Family::default(),
            crowdsec_up: Gauge::default(),
            crowdsec_contained: Gauge::default(),
            crowdsec_alerts: Family::default(),
            kernel: Family::default(),
            kernel_errors: Family::default(),
            process: process::Process::default(),
            program_runs: Family::default(),
            program_run_seconds: Family::default(),
            last_kernel: std::sync::Mutex::new(vec![0; stats::COUNT as usize]),
            last_runs: Default::default(),
            ready: Default::default(),
            registry: Registry::default(),
        };
        m.process.register(&mut root);
        let r = root.sub_registry_with_prefix("enforcer");
        r.register(
            "build",
            "The enforcer binary serving these metrics",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register("dry_run", "1 while the agent destroys nothing (--dry-run)", m.dry_run.clone());
        r.register_with_unit("pressure", "Current pressure (see --pressure)", Unit::Bytes, m.pressure.clone());
        r.register_with_unit("threshold", "Pressure above which the rule applies", Unit::Bytes, m.threshold.clone());
        r.register(
            "tracked_sockets",
            "Tracked connections in the last walk, in every network namespace (while pressure is quiet, walks are up to a minute apart)",
            m.tracked.clone(),
        );
        r.register("offenders", "Sockets chosen by the rule in the last interval", m.offenders.clone());
        r.register(
            "scanned_out_sockets",
            "Sockets the last scan wrote out for the rule: those holding memory (every one with --max-per-remote), none while pressure is under half the threshold",
            m.scanned_out.clone(),
        );
        r.register("decisions", "Enforcement decisions by event and reason", m.decisions.clone());
        r.register(
            "scans",
            "Intervals by what was read: skipped (the kernel's TCP memory bounds pressure under half the threshold), summary, candidates, all, revisit (the last walk's candidates alone, where walks visit every socket)",
            m.scans.clone(),
        );
        r.register("held_back", "Decisions held back by --max-kills or --max-kills-per-minute", m.held_back.clone());
        r.register(
            "repeat_offenders",
            "Remotes that became repeat offenders (--repeat-kills destroys within --repeat-window)",
            m.repeat_offenders.clone(),
        );
        r.register(
            "repeat_offenders_flagged",
            "Remotes flagged as repeat offenders now",
            m.repeat_offenders_flagged.clone(),
        );
        r.register(
            "contained_remotes",
            "Networks contained now, by source (repeat_offender, crowdsec)",
            m.contained.clone(),
        );
        r.register(
            "crowdsec_decisions",
            "CrowdSec decisions from the Local API by outcome (received, applied, released, ignored: a type not acted \
             on, rejected) and why (malformed, scope, too_wide, protected, capacity)",
            m.crowdsec_decisions.clone(),
        );
        r.register(
            "crowdsec_errors",
            "Failed calls to the CrowdSec Local API by kind (unreachable, auth, status, garbage)",
            m.crowdsec_errors.clone(),
        );
        r.register(
            "crowdsec_up",
            "1 while the last poll of the CrowdSec decision stream answered",
            m.crowdsec_up.clone(),
        );
        r.register("crowdsec_contained", "Networks CrowdSec decisions contain now", m.crowdsec_contained.clone());
        r.register(
            "crowdsec_alerts",
            "Repeat offenders shared with CrowdSec as alerts, by outcome (sent, dropped)",
            m.crowdsec_alerts.clone(),
        );
        r.register(
            "episode",
            "1 while an episode of pressure lasts: from over --threshold until it settled under --low-water",
            m.episode.clone(),
        );
        r.register_with_unit("scan_duration", "Time to take a snapshot", Unit::Seconds, m.scan_seconds.clone());
        r.register_with_unit("policy_duration", "Time to apply the rule", Unit::Seconds, m.policy_seconds.clone());
        r.register(
            "kernel_events",
            "Events the kernel programs counted: tracked (recorded at establishment, or at a walk's first sight \
             where the walks visit every TCP socket), adopted, contained",
            m.kernel.clone(),
        );
        r.register(
            "kernel_errors",
            "Errors the kernel programs failed open on: storage (the kernel gave no record; each try counts), sockops, snapshot, contain",
            m.kernel_errors.clone(),
        );
        r.register("program_runs", "Runs of each eBPF program (kernel.bpf_stats_enabled=1)", m.program_runs.clone());
        r.register_with_unit(
            "program_run",
            "Run time of each eBPF program (kernel.bpf_stats_enabled=1)",
            Unit::Seconds,
            m.program_run_seconds.clone(),
        );
        m.zero_series();
        Self { registry: root, ..m }
    }

    /// Every series a rule or dashboard may name exists from the start, at 0: a family with no
    /// series is not exported at all, and `increase()` needs the 0 before the first event.
    fn zero_series(&self) {
        use crate::{bpf::journal::Event, policy::Reason};
        for event in [Event::Destroyed, Event::WouldDestroy, Event::DestroyFailed] {
            for reason in Reason::ALL {
                drop(self.decisions.get_or_create(&vec![("event", event.as_str()), ("reason", reason.as_str())]));
            }
        }
        for kind in CROWDSEC_ERROR_KINDS {
            drop(self.crowdsec_errors.get_or_create(&vec![("kind", kind)]));
        }
        for (outcome, why) in [("received", ""), ("applied", ""), ("released", ""), ("ignored", "type")] {
            drop(self.crowdsec_decisions.get_or_create(&vec![("outcome", outcome), ("why", why)]));
        }
        for why in CROWDSEC_REJECTED {
            drop(self.crowdsec_decisions.get_or_create(&vec![("outcome", "rejected"), ("why", why)]));
        }
        for outcome in ["sent", "dropped"] {
            drop(self.crowdsec_alerts.get_or_create(&vec![("outcome", outcome)]));
        }
    }

    /// Brings the mirrors of the kernel counters up to date (counters only ever grow).
    pub fn kernel_counters(&self, now: &[u64]) {
        let mut last = self.last_kernel.lock().unwrap_or_else(|e| e.into_inner());
        for ((name, &v), prev) in stats::NAMES.iter().zip(now).zip(last.iter_mut()) {
            let counter = match name.strip_prefix("err_") {
                Some(error) => self.kernel_errors.get_or_create(&vec![("error", error)]),
                None => self.kernel.get_or_create(&vec![("event", *name)]),
            };
            counter.inc_by(v.saturating_sub(*prev));
            *prev = v;
        }
    }

    /// Brings a program's run statistics up to date.
    pub fn program_stats(&self, program: &'static str, runs: u64, time: Duration) {
        let mut last = self.last_runs.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.entry(program).or_insert((0, Duration::ZERO));
        let labels = vec![("program", program)];
        self.program_runs.get_or_create(&labels).inc_by(runs.saturating_sub(prev.0));
        self.program_run_seconds.get_or_create(&labels).inc_by(time.saturating_sub(prev.1).as_secs_f64());
        *prev = (runs, time);
    }

    /// The exposition of every metric in `format`, the process's own read now.
    pub fn encode(&self, format: Format) -> String {
        self.process.update();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        format.convert(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.pressure.set(5);
        m.decisions.get_or_create(&vec![("event", "destroyed"), ("reason", "stalled")]).inc();
        m.kernel_counters(&[3, 1, 2, 4, 0, 0, 0]);
        m.kernel_counters(&[5, 1, 4, 4, 0, 0, 0]);
        let text = m.encode(Format::OpenMetrics);
        assert!(text.contains("enforcer_pressure_bytes 5"), "{text}");
        assert!(text.contains(r#"enforcer_decisions_total{event="destroyed",reason="stalled"} 1"#), "{text}");
        assert!(text.contains(r#"enforcer_kernel_events_total{event="tracked"} 5"#), "{text}");
        assert!(text.contains(r#"enforcer_kernel_errors_total{error="sockops"} 4"#), "{text}");
        assert!(text.contains("# TYPE enforcer_scan_duration_seconds histogram"), "{text}");
        assert!(text.contains(r#"enforcer_build_info{version=""#), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
