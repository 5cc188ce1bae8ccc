//! `enforcer run`: the agent. Every interval: snapshot, pressure, rule, destroy, account.
use std::{collections::HashMap, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use enforcer_common::{SnapshotEntry, stats};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunArgs,
    destroy::{Destroy, Netlink},
    kills::{self, KillEvent},
    loader::{LoadOptions, Loaded},
    metrics::{self, Metrics},
    netns,
    policy::{self, Seen},
    settings::{self, Settings},
    sys,
    view::Socket,
};

pub async fn run(args: RunArgs) -> Result<()> {
    sys::require_root("enforcer run")?;
    sys::require_btf()?;
    let settings = Settings::resolve(args)?;
    settings.source.check()?;
    sys::raise_memlock();
    // One netlink socket per network namespace, made on first use there; the agent's own now,
    // so a host without sock_diag fails at start rather than at the first decision.
    let mut destroyers: HashMap<u64, Netlink> = HashMap::from([(
        netns::own()?.inode,
        Netlink::open().context("opening a NETLINK_SOCK_DIAG socket (needed to destroy sockets)")?,
    )]);
    let loaded = Loaded::load(&LoadOptions {
        cgroup: &settings.cgroup,
        cgroup_id: settings.cgroup_id,
        cgroup_level: sys::cgroup2_level(&settings.cgroup)?,
        fault: settings.fault,
        pin_dir: &settings.pin_dir,
        max_sockets: settings.max_sockets,
        settings: &serde_json::to_string(&settings).context("serialising settings")?,
    })?;
    tracing::info!(
        cgroup = %settings.cgroup.display(), cgroup_id = settings.cgroup_id, pin_dir = %settings.pin_dir.display(),
        threshold = settings.threshold, pressure = settings.pressure, fairness = %settings.fairness,
        policy = settings.policy, dry_run = settings.dry_run,
        "enforcer attached{}", if settings.dry_run { " (dry run: nothing will be destroyed)" } else { "" }
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // Created once, so a signal that arrives while an interval runs is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(settings.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let metrics = Arc::new(Metrics::new());
    metrics.threshold.set(settings.threshold as i64);
    metrics.map_capacity.set(i64::from(settings.max_sockets));
    if let Some(addr) = settings.metrics_addr {
        metrics::serve(addr, metrics.clone()).await?;
    }
    let storm = StormGuard::new(settings.max_kills_per_minute);
    let mut agent = Agent { settings, loaded, prev: HashMap::new(), epoch: Instant::now(), prev_ms: 0, storm, metrics };
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sighup.recv() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick() => agent.interval(&mut destroyers),
        }
    }
    drop(agent);
    tracing::info!("enforcer detached; pins removed");
    Ok(())
}

struct Agent {
    settings: Settings,
    loaded: Loaded,
    /// What the previous snapshot saw, for progress rates and stall bounds.
    prev: HashMap<u64, Seen>,
    /// The agent's clock: `epoch` is its zero, `prev_ms` the previous snapshot.
    epoch: Instant,
    prev_ms: u64,
    storm: StormGuard,
    metrics: Arc<Metrics>,
}

/// Destroys a socket from inside its network namespace, through a netlink socket made there
/// (a netlink socket keeps the namespace it was created in).
fn destroy_in(
    destroyers: &mut HashMap<u64, Netlink>,
    ns: Option<&netns::Namespace>,
    entry: &SnapshotEntry,
) -> std::io::Result<()> {
    let ns = ns.ok_or_else(|| std::io::Error::other("its network namespace is no longer reachable"))?;
    let nl = match destroyers.entry(ns.inode) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(netns::run_in(ns, Netlink::open).map_err(|e| std::io::Error::other(format!("{e:#}")))??)
        }
    };
    nl.destroy(entry)
}

/// The per-minute cap on decisions (`--max-kills-per-minute`), over a sliding minute.
struct StormGuard {
    per_minute: usize,
    recent: std::collections::VecDeque<Instant>,
}

impl StormGuard {
    fn new(per_minute: usize) -> Self {
        Self { per_minute, recent: Default::default() }
    }

    /// How many of `wanted` decisions may go ahead at `now`; those are counted.
    fn allow(&mut self, now: Instant, wanted: usize) -> usize {
        while self.recent.front().is_some_and(|t| now.duration_since(*t) >= std::time::Duration::from_secs(60)) {
            self.recent.pop_front();
        }
        let allowed = wanted.min(self.per_minute.saturating_sub(self.recent.len()));
        self.recent.extend(std::iter::repeat_n(now, allowed));
        allowed
    }
}

impl Agent {
    fn interval(&mut self, destroyers: &mut HashMap<u64, Netlink>) {
        let started = Instant::now();
        let namespaces = match netns::of_cgroup(&self.settings.cgroup) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "listing the cgroup's network namespaces; using the agent's own");
                netns::own().map(|n| vec![n]).unwrap_or_default()
            }
        };
        let entries = match netns::snapshot(&self.loaded.snapshot_path(), &namespaces) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "snapshot failed; nothing enforced this interval");
                return;
            }
        };
        let sockets: Vec<Socket> = entries.iter().map(Socket::in_netns).collect();
        let scanned = started.elapsed();
        self.update_gauges(sockets.len());
        let pressure = match self.settings.source.read(&sockets) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading pressure failed; nothing enforced this interval");
                return;
            }
        };
        if !self.settings.protect_cgroups.is_empty() {
            match settings::protected_cgroup_ids(&self.settings.protect_cgroups) {
                Ok(ids) => self.settings.rule.protect.cgroups = ids,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "re-reading --protect-cgroup; keeping the previous set")
                }
            }
        }
        let now_ms = started.duration_since(self.epoch).as_millis() as u64;
        let tick = policy::Tick { now_ms, elapsed_ms: now_ms - self.prev_ms };
        let verdict = policy::decide(&self.settings.rule, &sockets, &self.prev, tick, pressure);
        let decided = started.elapsed();
        let m = &self.metrics;
        m.pressure.set(pressure as i64);
        m.scan_seconds.observe(scanned.as_secs_f64());
        m.policy_seconds.observe((decided - scanned).as_secs_f64());
        m.offenders.set(verdict.decisions.len() as i64);
        m.held_back.inc_by(verdict.capped as u64);
        let mut decisions = verdict.decisions;
        if verdict.capped > 0 {
            tracing::warn!(
                held_back = verdict.capped,
                max_kills = self.settings.max_kills,
                "kill-storm guard: --max-kills held back sockets the rule chose this interval"
            );
        }
        let allowed = self.storm.allow(started, decisions.len());
        if allowed < decisions.len() {
            tracing::warn!(
                held_back = decisions.len() - allowed,
                max_kills_per_minute = self.storm.per_minute,
                "kill-storm guard: --max-kills-per-minute held back sockets the rule chose this interval"
            );
            self.metrics.held_back.inc_by((decisions.len() - allowed) as u64);
            decisions.truncate(allowed);
        }
        if !decisions.is_empty() {
            let by_cookie: HashMap<u64, &SnapshotEntry> = entries.iter().map(|(_, e)| (e.cookie, e)).collect();
            for d in &decisions {
                let Some(entry) = by_cookie.get(&d.socket.cookie) else { continue };
                let ns = namespaces.iter().find(|n| n.inode == d.socket.netns);
                self.act(destroyers, ns, d, entry, pressure);
            }
        }
        // Netlink sockets of namespaces that are gone would keep them alive.
        destroyers.retain(|inode, _| namespaces.iter().any(|n| n.inode == *inode));
        self.prev =
            sockets.iter().map(|s| (s.cookie, policy::next_seen(s, self.prev.get(&s.cookie), self.prev_ms))).collect();
        self.prev_ms = now_ms;
        tracing::debug!(
            sockets = sockets.len(),
            pressure,
            threshold = self.settings.threshold,
            decisions = decisions.len(),
            scan_us = scanned.as_micros() as u64,
            policy_us = (decided - scanned).as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "interval"
        );
    }

    /// Gauges and kernel counters, every interval.
    fn update_gauges(&self, tracked: usize) {
        let m = &self.metrics;
        m.tracked.set(tracked as i64);
        match self.loaded.stats() {
            Ok(k) => {
                m.kernel_counters(&k);
                // Inserts (sock_ops and adoption) minus removals: the records in the map.
                let entries = (k[stats::TRACKED as usize] + k[stats::ADOPTED as usize])
                    .saturating_sub(k[stats::REMOVED as usize]);
                m.map_entries.set(entries as i64);
            }
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "reading kernel counters"),
        }
        for (name, runs, time) in self.loaded.program_stats() {
            m.program_stats(name, runs, time);
        }
    }

    fn act(
        &mut self,
        destroyers: &mut HashMap<u64, Netlink>,
        ns: Option<&netns::Namespace>,
        d: &policy::Decision,
        entry: &SnapshotEntry,
        pressure: u64,
    ) {
        let threshold = self.settings.threshold;
        let (event, err) = if self.settings.dry_run {
            (KillEvent::WouldDestroy, None)
        } else {
            match destroy_in(destroyers, ns, entry) {
                Ok(()) => (KillEvent::Destroyed, None),
                Err(e) => (KillEvent::DestroyFailed, Some(e)),
            }
        };
        kills::log(event, d, pressure, threshold, err.as_ref());
        self.metrics.decisions.get_or_create(&vec![("event", event.as_str()), ("reason", d.reason.as_str())]).inc();
        let errno = err.as_ref().and_then(std::io::Error::raw_os_error).unwrap_or(0);
        if let Err(e) = self.loaded.record_kill(kills::record(event, d, &entry.record, pressure, threshold, errno)) {
            tracing::warn!(error = %format!("{e:#}"), "could not record the decision in the pinned ring");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn storm_guard_caps_a_sliding_minute() {
        let mut g = StormGuard::new(10);
        let t0 = Instant::now();
        assert_eq!(g.allow(t0, 7), 7);
        assert_eq!(g.allow(t0 + Duration::from_secs(30), 7), 3);
        assert_eq!(g.allow(t0 + Duration::from_secs(59), 1), 0);
        // The first seven leave the window a minute after they were counted.
        assert_eq!(g.allow(t0 + Duration::from_secs(60), 9), 7);
        assert_eq!(g.allow(t0 + Duration::from_secs(90), 1), 1);
    }
}
