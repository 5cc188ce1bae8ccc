//! `enforcer run`: the agent. Every interval: snapshot, pressure, decide, act.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Instant,
};

use anyhow::{Context, Result};
use enforcer_common::{names, scan_mode, stats};
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    attached,
    attribution::{Attributor, HolderWalk},
    backoff::Backoff,
    cli::RunArgs,
    contained::Containment,
    destroy::Netlink,
    journal::{self, Event, Journal},
    loader::{LoadOptions, Loaded},
    metrics::{self, Metrics},
    netns, notify,
    policy::{self, Decision, Fairness, Judge, Outcome, Plan, Population, Taken, repeat::Flagged, storm::StormGuard},
    pressure,
    settings::Settings,
    snapshot::{Scanner, Walk},
    socket::Socket,
    sys,
};

/// An interval walks the sockets at least this often, even while the kernel's own memory figures
/// show pressure is well below the threshold, so the tracked-sockets gauge is never older. (No
/// decision depends on it: a stall is dated from the first walk that sees the backlog.) A walk
/// costs about 1 µs per TCP socket of the watched namespaces with `iter/tcp` (BENCHMARKS.md).
const WALK_AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Adoption after failed records waits this long at most: while failures keep coming (memory
/// short), each adoption waits twice as long as the last, from one second, since each walks
/// every socket of the watched namespaces.
const ADOPT_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn run(args: RunArgs) -> Result<()> {
    sys::require_root("enforcer run")?;
    sys::require_btf()?;
    // Kept to resolve the settings again on SIGHUP: the same flags over the config file as it is then.
    let settings = Settings::resolve(args.clone())?;
    let source = settings.source();
    source.check()?;
    let protected = settings.protected_cgroup_ids()?;
    attached::refuse_second_agent(&settings.cgroup)?;
    sys::raise_memlock();
    // One netlink socket per network namespace, made on first use there; the agent's own now,
    // so a host without sock_diag fails at start rather than at the first decision.
    let destroyers: HashMap<u64, Netlink> = HashMap::from([(
        netns::own()?.inode,
        Netlink::open().context("opening a NETLINK_SOCK_DIAG socket (needed to destroy sockets)")?,
    )]);
    // Bound before anything is attached: a port in use fails the start with nothing to undo.
    let metrics = Arc::new(Metrics::new());
    if let Some(addr) = settings.metrics_addr {
        metrics::serve(addr, metrics.clone()).await?;
    }
    let mut loaded = Loaded::load(&LoadOptions {
        cgroup: &settings.cgroup,
        cgroup_id: settings.cgroup_id,
        cgroup_level: sys::cgroup2_level(&settings.cgroup)?,
        fault: settings.fault,
        pin_dir: &settings.pin_dir,
        settings: &serde_json::to_string(&settings).context("serialising settings")?,
    })?;
    let journal = Journal::new(loaded.take_map(names::MAP_KILLS)?, loaded.take_map(names::MAP_KILL_COUNTERS)?)?;
    let (scan_link, walk) = loaded.take_scan_link()?;
    let attribution = match loaded.take_holders_link() {
        Some(link) => Attributor::with_walk(HolderWalk::Link(link)),
        None => Attributor::new(),
    };
    let scanner = Scanner::new(
        scan_link,
        walk,
        loaded.take_map(names::MAP_SCAN_PARAMS)?,
        loaded.take_map(names::MAP_SCAN_SUMMARY)?,
        loaded.take_map(names::MAP_REMOTE_COUNTS)?,
    )?;
    // Connections established before sock_ops was attached get their records now; every later
    // one gets it from sock_ops or from the first walk to see it, whatever namespace it is in.
    for ns in namespaces_of(&settings.cgroup) {
        if let Err(e) = loaded.adopt_in(&ns) {
            tracing::warn!(netns = ns.inode, error = %format!("{e:#}"), "adoption failed: connections that predate the agent there stay untracked");
        }
    }
    let containment = Containment::new(loaded.take_map(names::MAP_CONTAINED)?)?;
    tracing::info!(
        cgroup = %settings.cgroup.display(), cgroup_id = settings.cgroup_id, pin_dir = %settings.pin_dir.display(),
        threshold = settings.threshold, pressure = source.name(), fairness = %settings.fairness,
        policy = settings.policy.name(), stall_ms = settings.stall_ms, drain_window_ms = settings.drain_window_ms,
        dry_run = settings.dry_run, walk = walk.name(),
        "enforcer attached{}", if settings.dry_run { " (dry run: nothing will be destroyed)" } else { "" }
    );

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // Created once, so a signal that arrives while an interval runs is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(settings.interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    metrics.threshold.set(settings.threshold as i64);
    metrics.dry_run.set(i64::from(settings.dry_run));
    let mut agent = Agent {
        judge: Judge::new(settings.policy(protected)),
        storm: StormGuard::new(settings.max_kills_per_minute),
        source,
        settings,
        loaded,
        scanner,
        last_pressure: None,
        last_walk: None,
        record_failures: 0,
        adoption: Backoff::new(std::time::Duration::from_secs(1), ADOPT_WAIT_MAX),
        journal,
        containment,
        epoch: Instant::now(),
        metrics,
        destroyers,
        reported: HashSet::new(),
        attribution,
        namespaces: None,
    };
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => if let Some(interval_ms) = agent.reload(&args) {
                ticker = tokio::time::interval(std::time::Duration::from_millis(interval_ms));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            },
            _ = ticker.tick() => agent.interval(),
        }
    }
    notify::notify("STOPPING=1");
    drop(agent);
    tracing::info!("enforcer detached; pins removed");
    Ok(())
}

struct Agent {
    settings: Settings,
    source: pressure::Source,
    loaded: Loaded,
    scanner: Scanner,
    /// The pressure the last interval read, which chooses what the next scan writes out.
    last_pressure: Option<u64>,
    /// When the sockets were last walked.
    last_walk: Option<Instant>,
    /// Connections the kernel failed to give a record (sock_ops errors, no memory), as of the
    /// last adoption: when it grows, adoption runs again (backing off while failures keep coming).
    record_failures: u64,
    adoption: Backoff,
    journal: Journal,
    containment: Containment,
    /// The rule and what it remembers across snapshots.
    judge: Judge,
    /// The agent's clock starts here.
    epoch: Instant,
    storm: StormGuard,
    metrics: Arc<Metrics>,
    /// One netlink socket per network namespace it destroys in, by namespace inode.
    destroyers: HashMap<u64, Netlink>,
    /// Dry run: the sockets reported in this episode, kept while the rule keeps them among its
    /// candidates (carried out or held back by a cap). A dry run reports a socket once per
    /// episode (until the rule stops choosing it, say when pressure falls), so its log, ring
    /// and counters count sockets, not intervals, and real history stays in the ring.
    reported: HashSet<u64>,
    /// Names the namespace, cgroup path and process of each socket decided on.
    attribution: Attributor,
    /// The network namespaces of the cgroup's processes, listed once per interval: at its start
    /// for the `iter/tcp` walk, which reads inside each; on the first decision otherwise.
    namespaces: Option<Vec<netns::Namespace>>,
}

/// Time spent in each step of an interval, for the metrics and the debug line.
struct Timing {
    started: Instant,
    scanned: std::time::Duration,
    decided: std::time::Duration,
}

impl Agent {
    /// One interval: scan → pressure → decide → act. A step that fails skips the rest.
    fn interval(&mut self) {
        let started = Instant::now();
        self.namespaces = None;
        // Read once: adoption and the gauges both use them.
        let counters = self.loaded.stats();
        if let Ok(k) = &counters {
            self.adopt_unrecorded(k);
        }
        let Some((pressure, population)) = self.scan() else { return };
        if !self.metrics.ready.swap(true, std::sync::atomic::Ordering::Relaxed) {
            // Attached, and a scan works: ready for /readyz and for systemd.
            notify::notify("READY=1");
        }
        let scanned = started.elapsed();
        self.update_gauges(counters);
        let now_ms = started.duration_since(self.epoch).as_millis() as u64;
        let Some((population, sockets)) = population else {
            // Well below the threshold: nothing to judge.
            for remote in self.judge.rest(now_ms) {
                self.release(remote);
            }
            self.metrics.pressure.set(pressure as i64);
            self.metrics.offenders.set(0);
            self.metrics.scan_seconds.observe(scanned.as_secs_f64());
            tracing::debug!(
                pressure,
                threshold = self.settings.threshold,
                scan_us = scanned.as_micros() as u64,
                "interval (summary only)"
            );
            return;
        };
        let plan = self.decide(&sockets, &population, now_ms, pressure);
        let timing = Timing { started, scanned, decided: started.elapsed() };
        self.act(&sockets, plan, timing);
    }

    /// The scan, in the mode the last pressure calls for: the pressure, and — unless pressure
    /// is well below the threshold — the sockets to judge with the population they share the
    /// threshold with. `None` when the scan or the pressure could not be read.
    #[expect(clippy::type_complexity, reason = "one private call site")]
    fn scan(&mut self) -> Option<(u64, Option<(Population, Vec<Socket>)>)> {
        let s = &self.settings;
        // A per-remote cap judges idle connections, which hold nothing: it needs them all.
        let full = s.max_per_remote.is_some();
        // While the last pressure was quiet, the scan reads a summary only; a summary that finds
        // pressure above the line is followed at once by a scan of the candidates.
        let low = |p: u64| policy::quiet(p, s.threshold);
        let mut mode = match self.last_pressure {
            _ if full => scan_mode::ALL,
            Some(p) if low(p) => scan_mode::SUMMARY,
            _ => scan_mode::CANDIDATES,
        };
        // Pressure well below the threshold by the kernel's own figures, read without a walk:
        // nothing can be chosen, so nothing is walked.
        let recent = self.last_walk.is_some_and(|t| t.elapsed() < WALK_AT_LEAST_EVERY);
        if !full
            && recent
            && let Some(bound) = self.source.without_scan()
            && low(bound)
        {
            self.metrics.scans.get_or_create(&vec![("kind", "skipped")]).inc();
            // `tracked` pressure is what the last walk read; the others are read as they are.
            let pressure = match self.source {
                pressure::Source::Tracked => self.last_pressure.unwrap_or_default(),
                _ => bound,
            };
            return Some((pressure, None));
        }
        let groups = match s.fairness {
            Fairness::Connection => None,
            _ if full => None,
            Fairness::RemoteIp => Some((32, 128)),
            Fairness::RemotePrefix { v4, v6 } => Some((u32::from(v4), u32::from(v6))),
        };
        loop {
            let summary = self.walk(mode, groups.filter(|_| mode != scan_mode::SUMMARY))?;
            let pressure = match self.source.read(summary.charged) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "reading pressure failed; nothing enforced this interval");
                    return None;
                }
            };
            self.last_pressure = Some(pressure);
            if mode == scan_mode::SUMMARY {
                if policy::quiet(pressure, self.settings.threshold) {
                    return Some((pressure, None));
                }
                // Pressure rose past the line since the last interval: scan the candidates now.
                mode = scan_mode::CANDIDATES;
                continue;
            }
            return Some((pressure, Some(self.population(mode, groups, &summary))));
        }
    }

    /// One walk in `mode` (in each namespace of the cgroup for the `iter/tcp` walk), counted in
    /// the metrics. `None` when it failed.
    fn walk(&mut self, mode: u32, groups: Option<(u32, u32)>) -> Option<enforcer_common::ScanSummary> {
        let namespaces: &[netns::Namespace] = match self.scanner.walk() {
            Walk::Records => &[],
            Walk::Tcp => self.namespaces.get_or_insert_with(|| namespaces_of(&self.settings.cgroup)),
        };
        let summary = match self.scanner.scan(mode, groups, namespaces) {
            Ok(summary) => summary,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "scan failed; nothing enforced this interval");
                return None;
            }
        };
        self.last_walk = Some(Instant::now());
        let kind = match mode {
            scan_mode::SUMMARY => "summary",
            scan_mode::CANDIDATES => "candidates",
            _ => "all",
        };
        self.metrics.scans.get_or_create(&vec![("kind", kind)]).inc();
        self.metrics.tracked.set(summary.sockets as i64);
        self.metrics.scanned_out.set(summary.emitted as i64);
        Some(summary)
    }

    /// The sockets the walk wrote out, with the population they share the threshold with: the
    /// kernel's counts over every connection, or, when the walk wrote out every one, their own.
    fn population(
        &self,
        mode: u32,
        groups: Option<(u32, u32)>,
        summary: &enforcer_common::ScanSummary,
    ) -> (Population, Vec<Socket>) {
        let fairness = self.settings.fairness;
        let sockets: Vec<Socket> = self.scanner.entries().iter().map(Socket::new).collect();
        if mode == scan_mode::ALL {
            return (Population::of(fairness, &sockets), sockets);
        }
        let mut per_remote = std::collections::HashMap::new();
        if groups.is_some() {
            for (sock, e) in sockets.iter().zip(self.scanner.entries()) {
                per_remote.insert(fairness.group(sock.remote.ip()), self.scanner.remote_count(e));
            }
        }
        (Population { connections: summary.sockets, remotes: summary.remotes, per_remote }, sockets)
    }

    /// Judges the sockets; releases the repeat offenders the judgement let go.
    fn decide(&mut self, sockets: &[Socket], population: &Population, now_ms: u64, pressure: u64) -> Plan {
        self.refresh_protected_cgroups();
        let plan = self.judge.judge(sockets, population, now_ms, pressure);
        for remote in &plan.released {
            self.release(*remote);
        }
        plan
    }

    /// Carries the plan out within the kill caps, remembers what was destroyed, and accounts.
    fn act(&mut self, sockets: &[Socket], plan: Plan, t: Timing) {
        let (pressure, candidates) = (plan.pressure, plan.candidates());
        let allowed = self.settings.max_kills.min(self.storm.available(t.started));
        // In a dry run, sockets chosen again that were reported earlier in the episode: taken as
        // gone, as a real run would have destroyed them, so they are not reported again and do
        // not use up the caps; the next candidates are reported as a real run would destroy them.
        let still: HashSet<u64> = if self.settings.dry_run { plan.cookies().collect() } else { HashSet::new() };
        let outcome = if candidates == 0 {
            Outcome::default()
        } else {
            let outcome = plan.carry_out(allowed, |d| {
                if self.settings.dry_run && self.reported.contains(&d.socket.cookie) {
                    Taken::Gone
                } else if self.carry_out(d, pressure) {
                    Taken::Done
                } else {
                    Taken::Failed
                }
            });
            self.storm.spend(t.started, outcome.acted.len());
            outcome
        };
        if self.settings.dry_run {
            // A socket leaves the episode when the rule no longer names it at all, not when a
            // cap held it back for an interval.
            self.reported.retain(|c| still.contains(c));
            self.reported.extend(outcome.acted.iter().map(|d| d.socket.cookie));
        }
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
        // Flagged as of now, after the walk, not as of the interval's start: every connection this
        // walk saw was opened before the flag and keeps the ordinary grace (`--stall`), also one
        // whose record the walk itself made at first sight, dated after the interval started.
        // +1: an age is whole milliseconds, rounded down.
        let flagged_ms = self.epoch.elapsed().as_millis() as u64 + 1;
        for d in &outcome.acted {
            if let Some(flag) = self.judge.record_destroy(d, flagged_ms) {
                self.flag(&flag);
            }
        }
        let m = &self.metrics;
        m.pressure.set(pressure as i64);
        m.scan_seconds.observe(t.scanned.as_secs_f64());
        m.policy_seconds.observe((t.decided - t.scanned).as_secs_f64());
        m.offenders.set(candidates as i64);
        m.held_back.inc_by(outcome.held_back as u64);
        m.repeat_offenders_flagged.set(self.judge.repeat_offenders() as i64);
        // Netlink sockets of namespaces that are gone would keep them alive.
        if let Some(listed) = &self.namespaces {
            self.destroyers.retain(|inode, _| listed.iter().any(|n| n.inode == *inode));
            self.attribution.retain_namespaces(|inode| listed.iter().any(|n| n.inode == inode));
        }
        tracing::debug!(
            sockets = sockets.len(),
            pressure,
            threshold = self.settings.threshold,
            candidates,
            acted = outcome.acted.len(),
            failed = outcome.failed,
            scan_us = t.scanned.as_micros() as u64,
            policy_us = (t.decided - t.scanned).as_micros() as u64,
            total_us = t.started.elapsed().as_micros() as u64,
            "interval"
        );
    }

    /// SIGHUP: the settings resolved again from the same flags and the config file as it is
    /// now, applied without detaching (policy, protections, threshold, caps, dry run). What the
    /// kernel side was loaded with (cgroup, pin directory, map size) or the metrics listener
    /// needs a restart: such a reload, or one with a bad value, is refused whole and the agent
    /// goes on as it was. Returns the new interval when it changed.
    fn reload(&mut self, args: &RunArgs) -> Option<u64> {
        notify::notify("RELOADING=1");
        let applied = self.try_reload(args);
        notify::notify("READY=1");
        match applied {
            Ok(interval) => interval,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reload refused; the agent goes on with the settings it had");
                None
            }
        }
    }

    fn try_reload(&mut self, args: &RunArgs) -> Result<Option<u64>> {
        let new = Settings::resolve(args.clone())?;
        let fixed = self.settings.needs_restart(&new);
        if !fixed.is_empty() {
            anyhow::bail!("{} cannot change without a restart", fixed.join(", "));
        }
        let source = new.source();
        source.check()?;
        let protected = new.protected_cgroup_ids()?;
        if let Err(e) = self.loaded.record_settings(&serde_json::to_string(&new).context("serialising settings")?) {
            tracing::warn!(error = %format!("{e:#}"), "the reloaded settings apply, but `enforcer status` shows the old ones");
        }
        self.judge.set_policy(new.policy(protected));
        self.storm.per_minute = new.max_kills_per_minute;
        self.source = source;
        self.metrics.threshold.set(new.threshold as i64);
        self.metrics.dry_run.set(i64::from(new.dry_run));
        if new.dry_run != self.settings.dry_run {
            self.reported.clear();
        }
        let interval = (new.interval_ms != self.settings.interval_ms).then_some(new.interval_ms);
        tracing::info!(
            threshold = new.threshold, pressure = self.source.name(), fairness = %new.fairness,
            policy = new.policy.name(), stall_ms = new.stall_ms, interval_ms = new.interval_ms, dry_run = new.dry_run,
            "settings reloaded{}", if new.dry_run { " (dry run: nothing will be destroyed)" } else { "" }
        );
        self.settings = new;
        Ok(interval)
    }

    /// A restarted service gets a new cgroup (a new id), and new children appear.
    fn refresh_protected_cgroups(&mut self) {
        if self.settings.protect_cgroups.is_empty() {
            return;
        }
        match self.settings.protected_cgroup_ids() {
            Ok(ids) => self.judge.policy_mut().protect.cgroups = ids,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "re-reading --protect-cgroup; keeping the previous set")
            }
        }
    }

    /// Every connection gets its record from sock_ops or from the first walk to see it; when
    /// that failed (an error, no memory for the record), or adoption could not record one (no
    /// memory, or its storage was being freed: an agent that just exited leaves its records to
    /// be freed while the next one adopts), the connection is found by running adoption again
    /// in each namespace, the walk the agent otherwise makes once, at start.
    fn adopt_unrecorded(&mut self, k: &[u64]) {
        let failures = k[stats::ERR_SOCKOPS as usize] + k[stats::ERR_STORAGE as usize];
        if failures <= self.record_failures {
            // None since the last adoption: the next failure is adopted at once.
            self.adoption.reset();
            return;
        }
        if !self.adoption.due(Instant::now()) {
            return;
        }
        self.record_failures = failures;
        let listed = self.namespaces.get_or_insert_with(|| namespaces_of(&self.settings.cgroup));
        for ns in listed.iter() {
            if let Err(e) = self.loaded.adopt_in(ns) {
                tracing::debug!(netns = ns.inode, error = %format!("{e:#}"), "adoption after a failed record");
            }
        }
    }

    /// Kernel counters and program statistics, every interval.
    fn update_gauges(&self, counters: Result<[u64; stats::COUNT as usize]>) {
        let m = &self.metrics;
        match counters {
            Ok(k) => m.kernel_counters(&k),
            Err(e) => tracing::debug!(error = %format!("{e:#}"), "reading kernel counters"),
        }
        for (name, runs, time) in self.loaded.program_stats() {
            m.program_stats(name, runs, time);
        }
    }

    /// Carries out one decision: destroys the socket (or, in a dry run, only says so), logs and
    /// journals it. True when it freed the socket's memory (or would have, in a dry run).
    fn carry_out(&mut self, d: &Decision, pressure: u64) -> bool {
        let threshold = self.settings.threshold;
        // A destroy must be sent from inside the socket's namespace, reached through a process
        // of the cgroup that is in it; the process holding the socket is looked for there.
        let listed = self.namespaces.get_or_insert_with(|| namespaces_of(&self.settings.cgroup));
        let ns = listed.iter().find(|n| n.inode == d.socket.netns);
        // Before the destroy: netlink finds a destroyed socket no more.
        let who = self.attribution.attribute(&d.socket, ns);
        let (event, err) = if self.settings.dry_run {
            (Event::WouldDestroy, None)
        } else {
            match destroy_in(&mut self.destroyers, ns, &d.socket) {
                Ok(()) => (Event::Destroyed, None),
                Err(e) => (Event::DestroyFailed, Some(e)),
            }
        };
        journal::log(event, d, &who, pressure, threshold, err.as_ref());
        self.metrics.decisions.get_or_create(&vec![("event", event.as_str()), ("reason", d.reason.as_str())]).inc();
        let errno = err.as_ref().and_then(std::io::Error::raw_os_error).unwrap_or(0);
        if let Err(e) = self.journal.write(journal::record(event, d, &who, pressure, threshold, errno)) {
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
        journal::log_repeat_offender(f, contained.then_some(sndbuf));
        if contained && let Err(e) = self.containment.contain(f.remote, sndbuf as u32) {
            tracing::warn!(remote = %f.remote, error = %format!("{e:#}"), "could not contain the repeat offender");
        }
    }

    fn release(&mut self, remote: IpNet) {
        tracing::info!(remote = %remote, "repeat offender released: no destroy for a whole --repeat-window");
        // Whatever the mode now: a reload into a dry run must not leave a containment behind.
        if let Err(e) = self.containment.release(remote) {
            tracing::warn!(remote = %remote, error = %format!("{e:#}"), "could not release the repeat offender");
        }
    }
}

/// The agent's own network namespace, then every one a process of `cgroup` is in; the own one
/// alone if the cgroup's cannot be listed.
fn namespaces_of(cgroup: &std::path::Path) -> Vec<netns::Namespace> {
    match netns::of_cgroup(cgroup) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "listing the cgroup's network namespaces; using the own one only");
            netns::own().into_iter().collect()
        }
    }
}

/// Destroys a socket from inside its network namespace, through a netlink socket made there
/// (a netlink socket keeps the namespace it was created in).
fn destroy_in(
    destroyers: &mut HashMap<u64, Netlink>,
    ns: Option<&netns::Namespace>,
    socket: &Socket,
) -> std::io::Result<()> {
    let ns = ns.ok_or_else(|| std::io::Error::other("its network namespace is no longer reachable"))?;
    let nl = match destroyers.entry(ns.inode) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(netns::run_in(ns, Netlink::open).map_err(|e| std::io::Error::other(format!("{e:#}")))??)
        }
    };
    nl.destroy(&socket.raw)
}
