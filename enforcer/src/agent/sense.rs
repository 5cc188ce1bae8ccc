//! Sensing: which scan the last pressure calls for (none, a summary, the candidates, every
//! socket), the walk, the pressure, and the population the sockets share the threshold with.
use std::time::Instant;

use enforcer_common::{ScanSummary, scan_mode};

use super::{Agent, judged::Judged, revisit::Revisits};
use crate::{
    bpf::{scan::Scanner, snapshot::Walk},
    host::{netns::Namespace, pressure},
    model::socket::Socket,
    policy::{self, Population},
};

/// An interval walks the sockets at least this often, even while the kernel's own memory figures
/// show pressure is well below the threshold, so the tracked-sockets gauge is never older. (No
/// decision depends on it: a stall is dated from the first walk that sees the backlog.) A walk
/// costs about 1 µs per TCP socket of the watched namespaces with `iter/tcp` (BENCHMARKS.md).
const WALK_AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The scan and what the last one found.
pub(super) struct Sense {
    scanner: Scanner,
    /// Where the walks visit every TCP socket: the last walk's candidates, looked at alone
    /// between walks (`revisit`).
    pub revisits: Option<Revisits>,
    /// Where pressure is read.
    pub meter: pressure::Meter,
    /// The pressure the last interval read, which chooses what the next scan writes out.
    last_pressure: Option<u64>,
    /// When the sockets were last walked.
    last_walk: Option<Instant>,
}

impl Sense {
    pub fn new(scanner: Scanner, meter: pressure::Meter, revisits: Option<Revisits>) -> Self {
        Self { scanner, revisits, meter, last_pressure: None, last_walk: None }
    }
}

impl Agent {
    /// The scan, in the mode the last pressure calls for: the pressure, and — unless pressure
    /// is well below the threshold — the sockets to judge with the population they share the
    /// threshold with. `None` when the scan or the pressure could not be read. Over half the
    /// threshold an interval revisits the last walk's candidates where it can, unless `exact`.
    pub(super) fn sense(&mut self, exact: bool) -> Option<(u64, Option<Judged>)> {
        let s = &self.settings;
        // A per-remote cap judges idle connections, which hold nothing: it needs them all.
        let full = s.max_per_remote.is_some();
        let threshold = s.threshold;
        // While the last pressure was quiet, the scan reads a summary only; a summary that finds
        // pressure above the line is followed at once by a scan of the candidates.
        let low = |p: u64| policy::quiet(p, threshold);
        let mut mode = match self.sense.last_pressure {
            _ if full => scan_mode::ALL,
            Some(p) if low(p) => scan_mode::SUMMARY,
            _ => scan_mode::CANDIDATES,
        };
        // Pressure well below the threshold by the kernel's own figures, read without a walk:
        // nothing can be chosen, so nothing is walked.
        let recent = self.sense.last_walk.is_some_and(|t| t.elapsed() < WALK_AT_LEAST_EVERY);
        if !full
            && recent
            && let Some(bound) = self.sense.meter.without_scan()
            && low(bound)
        {
            self.metrics.scans.get_or_create(&vec![("kind", "skipped")]).inc();
            // `tracked` pressure is what the last walk read; the others are read as they are.
            let pressure = match self.sense.meter.source {
                pressure::Source::Tracked => self.sense.last_pressure.unwrap_or_default(),
                _ => bound,
            };
            return Some((pressure, None));
        }
        // A full scan's population is counted here; otherwise the kernel counts per remote group.
        let groups = if full { None } else { s.fairness.scan_groups() };
        loop {
            if mode == scan_mode::CANDIDATES
                && !exact
                && let Some((pressure, judged)) = self.revisited()
            {
                self.sense.last_pressure = Some(pressure);
                return Some((pressure, Some(judged)));
            }
            let summary = self.walk(mode, groups.filter(|_| mode != scan_mode::SUMMARY))?;
            let pressure = match self.sense.meter.read(summary.charged) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "reading pressure failed; nothing enforced this interval");
                    return None;
                }
            };
            self.sense.last_pressure = Some(pressure);
            if mode == scan_mode::SUMMARY {
                if low(pressure) {
                    return Some((pressure, None));
                }
                // Pressure rose past the line since the last interval: scan the candidates now.
                mode = scan_mode::CANDIDATES;
                continue;
            }
            let (population, sockets) = self.population(mode, groups, &summary);
            return Some((pressure, Some(Judged { population, sockets, revisited: false })));
        }
    }

    /// One walk in `mode` (in each namespace of the cgroup for the `iter/tcp` walk), counted in
    /// the metrics. `None` when it failed.
    fn walk(&mut self, mode: u32, groups: Option<(u32, u32)>) -> Option<ScanSummary> {
        let ended = self.ended();
        let namespaces: &[Namespace] = match self.sense.scanner.walk() {
            Walk::Records => &[],
            Walk::Tcp => self.namespaces.list(),
        };
        let summary = match self.sense.scanner.scan(mode, groups, namespaces) {
            Ok(summary) => summary,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "scan failed; nothing enforced this interval");
                return None;
            }
        };
        self.sense.last_walk = Some(Instant::now());
        let kind = match mode {
            scan_mode::SUMMARY => "summary",
            scan_mode::CANDIDATES => "candidates",
            _ => "all",
        };
        self.metrics.scans.get_or_create(&vec![("kind", kind)]).inc();
        // Only a walk that wrote out the candidates, no more, is a basis for revisits.
        let basis = if mode == scan_mode::CANDIDATES && groups.is_none() { ended } else { None };
        if let Some(r) = self.sense.revisits.as_mut() {
            r.note_walk(summary.sockets, basis, self.sense.scanner.entries());
        }
        self.metrics.tracked.set(summary.sockets as i64);
        self.metrics.scanned_out.set(summary.emitted as i64);
        Some(summary)
    }

    /// The sockets the walk wrote out, with the population they share the threshold with: the
    /// kernel's counts over every connection, or, when the walk wrote out every one, their own.
    fn population(&self, mode: u32, groups: Option<(u32, u32)>, summary: &ScanSummary) -> (Population, Vec<Socket>) {
        let fairness = self.settings.fairness;
        let scanner = &self.sense.scanner;
        let sockets: Vec<Socket> = scanner.entries().iter().map(Socket::new).collect();
        if mode == scan_mode::ALL {
            return (Population::of(fairness, &sockets), sockets);
        }
        let count = groups.map(|_| |s: &Socket| scanner.remote_count(&s.raw));
        (Population::counted(fairness, summary.sockets, summary.remotes, &sockets, count), sockets)
    }
}
