//! `enforcer run`: the agent. Every interval: snapshot, pressure, judge, act, account.
use std::{collections::HashMap, sync::Arc, time::Instant};

use anyhow::{Context, Result};
use enforcer_common::{SnapshotEntry, stats};
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunArgs,
    destroy::Netlink,
    kills::{self, KillEvent},
    loader::{LoadOptions, Loaded},
    metrics::{self, Metrics},
    netns,
    policy::{Decision, Judge, repeat::Flagged, storm::StormGuard},
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
    let destroyers: HashMap<u64, Netlink> = HashMap::from([(
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
        policy = settings.policy, stall_ms = settings.stall_ms, drain_window_ms = settings.drain_window_ms,
        dry_run = settings.dry_run,
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
    let mut agent = Agent {
        judge: Judge::new(settings.rule.clone()),
        storm: StormGuard::new(settings.max_kills_per_minute),
        settings,
        loaded,
        epoch: Instant::now(),
        metrics,
        destroyers,
    };
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sighup.recv() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick() => agent.interval(),
        }
    }
    drop(agent);
    tracing::info!("enforcer detached; pins removed");
    Ok(())
}

struct Agent {
    settings: Settings,
    loaded: Loaded,
    /// The rule and what it remembers across snapshots.
    judge: Judge,
    /// The agent's clock starts here.
    epoch: Instant,
    storm: StormGuard,
    metrics: Arc<Metrics>,
    /// One netlink socket per network namespace it destroys in, by namespace inode.
    destroyers: HashMap<u64, Netlink>,
}

/// One interval's snapshot across the watched cgroup's network namespaces.
struct Snapshot {
    namespaces: Vec<netns::Namespace>,
    entries: Vec<(u64, SnapshotEntry)>,
    sockets: Vec<Socket>,
}

impl Agent {
    fn interval(&mut self) {
        let started = Instant::now();
        let Some(snap) = self.snapshot() else { return };
        let scanned = started.elapsed();
        self.update_gauges(snap.sockets.len());
        let pressure = match self.settings.source.read(&snap.sockets) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "reading pressure failed; nothing enforced this interval");
                return;
            }
        };
        self.refresh_protected_cgroups();
        let now_ms = started.duration_since(self.epoch).as_millis() as u64;
        let plan = self.judge.judge(&snap.sockets, now_ms, pressure);
        for remote in &plan.released {
            self.release(*remote);
        }
        let decided = started.elapsed();
        let candidates = plan.candidates();
        let allowed = self.settings.max_kills.min(self.storm.available(started));
        let outcome = if candidates == 0 {
            Default::default()
        } else {
            let by_cookie: HashMap<u64, (u64, &SnapshotEntry)> =
                snap.entries.iter().map(|(ns, e)| (e.cookie, (*ns, e))).collect();
            let outcome = plan.execute(allowed, |d| self.act(&snap.namespaces, &by_cookie, d, pressure));
            self.storm.spend(started, outcome.acted.len());
            outcome
        };
        if outcome.held_back > 0 {
            // Name the cap that bit: the per-interval one when it was the smaller.
            let cap = if allowed == self.settings.max_kills { "--max-kills" } else { "--max-kills-per-minute" };
            tracing::warn!(
                held_back = outcome.held_back,
                max_kills = self.settings.max_kills,
                max_kills_per_minute = self.storm.per_minute,
                "kill-storm guard: {cap} held back sockets the rule chose this interval"
            );
        }
        for d in &outcome.acted {
            if let Some(flag) = self.judge.record_destroy(d, now_ms) {
                self.flag(&flag);
            }
        }
        let m = &self.metrics;
        m.pressure.set(pressure as i64);
        m.scan_seconds.observe(scanned.as_secs_f64());
        m.policy_seconds.observe((decided - scanned).as_secs_f64());
        m.offenders.set(candidates as i64);
        m.held_back.inc_by(outcome.held_back as u64);
        m.repeat_offenders_flagged.set(self.judge.repeat_offenders() as i64);
        // Netlink sockets of namespaces that are gone would keep them alive.
        self.destroyers.retain(|inode, _| snap.namespaces.iter().any(|n| n.inode == *inode));
        tracing::debug!(
            sockets = snap.sockets.len(),
            pressure,
            threshold = self.settings.threshold,
            candidates,
            acted = outcome.acted.len(),
            failed = outcome.failed,
            scan_us = scanned.as_micros() as u64,
            policy_us = (decided - scanned).as_micros() as u64,
            total_us = started.elapsed().as_micros() as u64,
            "interval"
        );
    }

    /// Every tracked socket in every network namespace of the watched cgroup's processes.
    fn snapshot(&self) -> Option<Snapshot> {
        let namespaces = match netns::of_cgroup(&self.settings.cgroup) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "listing the cgroup's network namespaces; using the agent's own");
                netns::own().map(|n| vec![n]).unwrap_or_default()
            }
        };
        match netns::snapshot(&self.loaded.snapshot_path(), &namespaces) {
            Ok(entries) => {
                let sockets = entries.iter().map(Socket::in_netns).collect();
                Some(Snapshot { namespaces, entries, sockets })
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "snapshot failed; nothing enforced this interval");
                None
            }
        }
    }

    /// A restarted service gets a new cgroup (a new id), and new children appear.
    fn refresh_protected_cgroups(&mut self) {
        if self.settings.protect_cgroups.is_empty() {
            return;
        }
        match settings::protected_cgroup_ids(&self.settings.protect_cgroups) {
            Ok(ids) => self.judge.policy_mut().protect.cgroups = ids,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "re-reading --protect-cgroup; keeping the previous set")
            }
        }
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

    /// Carries out one decision: destroys the socket (or, in a dry run, only says so), logs and
    /// records it. True when it freed the socket's memory (or would have, in a dry run).
    fn act(
        &mut self,
        namespaces: &[netns::Namespace],
        by_cookie: &HashMap<u64, (u64, &SnapshotEntry)>,
        d: &Decision,
        pressure: u64,
    ) -> bool {
        let Some(&(ns, entry)) = by_cookie.get(&d.socket.cookie) else { return false };
        let threshold = self.settings.threshold;
        let (event, err) = if self.settings.dry_run {
            (KillEvent::WouldDestroy, None)
        } else {
            let ns = namespaces.iter().find(|n| n.inode == ns);
            match destroy_in(&mut self.destroyers, ns, entry) {
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
        err.is_none()
    }

    /// A new repeat offender: say so, and have the kernel give its new connections a small
    /// send buffer (not in a dry run: a dry run changes nothing).
    fn flag(&mut self, f: &Flagged) {
        self.metrics.repeat_offenders.inc();
        let sndbuf = self.settings.contain_sndbuf;
        let contained = !self.settings.dry_run && sndbuf > 0;
        kills::log_repeat_offender(f, contained.then_some(sndbuf));
        if contained && let Err(e) = self.loaded.contain(f.remote, sndbuf as u32) {
            tracing::warn!(remote = %f.remote, error = %format!("{e:#}"), "could not contain the repeat offender");
        }
    }

    fn release(&mut self, remote: IpNet) {
        tracing::info!(remote = %remote, "repeat offender released: no destroy for a whole --repeat-window");
        if !self.settings.dry_run
            && self.settings.contain_sndbuf > 0
            && let Err(e) = self.loaded.release(remote)
        {
            tracing::warn!(remote = %remote, error = %format!("{e:#}"), "could not release the repeat offender");
        }
    }
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
