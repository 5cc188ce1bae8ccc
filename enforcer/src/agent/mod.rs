//! `enforcer run`: the agent. It starts (settings, the kernel side, the maps each part owns),
//! then every interval senses ([`sense`]: the walk, pressure, the population), judges (the
//! pure rule in `policy`), acts ([`act`]: the episode, the kill caps, destroys, containment)
//! and reports ([`report`]: gauges, the interval's line). SIGHUP reloads ([`reload`]); SIGINT
//! and SIGTERM stop it, and dropping it detaches everything.
mod act;
mod adopt;
pub mod backoff;
mod judged;
mod reload;
mod report;
mod revisit;
mod sense;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use enforcer_common::names;
use tokio::signal::unix::{SignalKind, signal};

use self::{act::Act, adopt::Adoption, sense::Sense};
use crate::{
    bpf::{
        attached,
        contained::{Containment, Limits},
        journal::Journal,
        loader::{LoadOptions, Loaded},
        revisit::Revisit,
        scan::Scanner,
    },
    config::{Settings, flags::RunArgs},
    fleet::Fleet,
    host::{
        cgroup,
        netns::{self, Namespace},
        sock_diag::Netlink,
        sys,
    },
    observe::{
        attribution::{Attributor, HolderWalk},
        metrics::{self, Metrics},
        notify,
    },
    policy::{Judge, storm::StormGuard},
};

pub async fn run(args: RunArgs) -> Result<()> {
    sys::require_root("enforcer run")?;
    sys::require_btf()?;
    // Kept to resolve the settings again on SIGHUP: the same flags over the config file as it is then.
    let settings = Settings::resolve(args.clone())?;
    let mut agent = Agent::start(settings).await?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // Created once, so a signal that arrives while an interval runs is not lost.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut ticker = every(agent.settings.interval_ms);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => if let Some(interval_ms) = agent.reload(&args) {
                ticker = every(interval_ms);
            },
            _ = ticker.tick() => agent.interval(),
        }
    }
    notify::notify("STOPPING=1");
    drop(agent);
    tracing::info!("enforcer detached; pins removed");
    Ok(())
}

/// How contained networks' new connections are limited.
fn limits(s: &Settings) -> Limits {
    Limits {
        sndbuf: s.contain_sndbuf.min(i32::MAX as u64) as u32,
        user_timeout_ms: s.contain_user_timeout_ms.min(i32::MAX as u64) as u32,
    }
}

/// Every `interval_ms`; an interval that overran skips the ticks it missed.
fn every(interval_ms: u64) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticker
}

/// The agent: its settings, the kernel side it loaded, the rule with its memory, and the state
/// of each step of an interval.
struct Agent {
    settings: Settings,
    loaded: Loaded,
    /// The rule and what it remembers across snapshots.
    judge: Judge,
    /// The agent's clock starts here.
    epoch: Instant,
    metrics: Arc<Metrics>,
    namespaces: Namespaces,
    sense: Sense,
    act: Act,
    adoption: Adoption,
    /// The CrowdSec fleet this host is a member of (`--crowdsec-*`), if any.
    fleet: Option<Fleet>,
}

impl Agent {
    /// Checks the host, loads and attaches the kernel side, hands each map to its owner and
    /// adopts the connections that predate the agent.
    async fn start(settings: Settings) -> Result<Self> {
        let meter = settings.meter();
        meter.check()?;
        if settings.proxy && settings.max_per_remote.is_none() {
            // Allowed: `sockets` shows the relays. But every send and receive of the host pays
            // for proxy mode, and only the per-remote cap acts on it.
            tracing::warn!("--proxy without --max-per-remote: relays are learned and shown, and nothing acts on them");
        }
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
            cgroup_level: cgroup::cgroup2_level(&settings.cgroup)?,
            fault: settings.fault,
            proxy: settings.proxy,
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
        let revisits = match loaded.take_revisit() {
            Some(prog) => Some(revisit::Revisits::new(Revisit::new(
                prog,
                loaded.take_map(names::MAP_REVISIT_KEYS)?,
                loaded.take_map(names::MAP_REVISIT_OUT)?,
                loaded.take_map(names::MAP_REVISIT_CURSOR)?,
            )?)),
            None => None,
        };
        let mut namespaces = Namespaces::of(settings.cgroup.clone());
        // Connections established before sock_ops was attached get their records now; every later
        // one gets it from sock_ops or from the first walk to see it, whatever namespace it is in.
        for ns in namespaces.list() {
            if let Err(e) = loaded.adopt_in(ns) {
                tracing::warn!(netns = ns.inode, error = %format!("{e:#}"), "adoption failed: connections that predate the agent there stay untracked");
            }
        }
        namespaces.forget();
        let mut containment = Containment::new(
            loaded.take_map(names::MAP_CONTAINED)?,
            loaded.take_map(names::MAP_CONTAINED_LABELS)?,
            limits(&settings),
        )?;
        containment.exempt(&settings.protect_cidrs)?;
        let containment = Arc::new(Mutex::new(containment));
        let fleet = match &settings.crowdsec {
            Some(c) => Some(Fleet::start(c, containment.clone(), metrics.clone(), settings.dry_run, sys::hostname())?),
            None => None,
        };
        tracing::info!(
            cgroup = %settings.cgroup.display(), cgroup_id = settings.cgroup_id, pin_dir = %settings.pin_dir.display(),
            threshold = settings.threshold, pressure = meter.name(), fairness = %settings.fairness,
            policy = settings.policy.name(), stall_ms = settings.stall_ms, drain_window_ms = settings.drain_window_ms,
            dry_run = settings.dry_run, walk = walk.name(),
            "enforcer attached{}", if settings.dry_run { " (dry run: nothing will be destroyed)" } else { "" }
        );
        metrics.threshold.set(settings.threshold as i64);
        metrics.dry_run.set(i64::from(settings.dry_run));
        Ok(Self {
            judge: Judge::new(settings.policy(protected)),
            act: Act {
                journal,
                containment,
                storm: StormGuard::new(settings.max_kills_per_minute),
                destroyers,
                attribution,
                reported: HashSet::new(),
            },
            sense: Sense::new(scanner, meter, revisits),
            adoption: Adoption::new(),
            fleet,
            settings,
            loaded,
            epoch: Instant::now(),
            metrics,
            namespaces,
        })
    }

    /// One interval: sense → judge → act, and report. A step that fails skips the rest.
    fn interval(&mut self) {
        let started = Instant::now();
        self.namespaces.forget();
        if let Some(nets) = self.fleet.as_mut().and_then(Fleet::nets) {
            self.judge.set_fleet(nets);
        }
        // Read once: adoption and the gauges both use them.
        let counters = self.loaded.stats();
        if let Ok(k) = &counters {
            self.adopt_unrecorded(k);
        }
        let Some((mut pressure, judged)) = self.sense(false) else { return };
        if !self.metrics.ready.swap(true, std::sync::atomic::Ordering::Relaxed) {
            // Attached, and a scan works: ready for /readyz and for systemd.
            notify::notify("READY=1");
        }
        let scanned = started.elapsed();
        self.update_gauges(counters);
        let now_ms = started.duration_since(self.epoch).as_millis() as u64;
        let Some(mut judged) = judged else {
            // Well below the threshold: nothing to judge.
            let (released, episode) = self.judge.rest(now_ms, pressure);
            for remote in released {
                self.release(remote);
            }
            self.report_episode(&episode, pressure);
            self.report_quiet(pressure, scanned);
            return;
        };
        self.refresh_protected_cgroups();
        let plan = if judged.revisited {
            let mut probe = self.judge.clone();
            let plan = probe.judge(&judged.sockets, &judged.population, now_ms, pressure);
            if self.would_act(&plan) {
                // Decisions are an exact walk's: walk every socket now, and judge that.
                let Some((exact_pressure, Some(exact))) = self.sense(true) else { return };
                (pressure, judged) = (exact_pressure, exact);
                self.judge.judge(&judged.sockets, &judged.population, now_ms, pressure)
            } else {
                // Nothing to carry out: the copy's memory is the rule's (each candidate keeps a
                // sample every interval, as with a walk), less what it said of remotes, which saw
                // the candidates only.
                probe.forget_remotes();
                self.judge = probe;
                plan
            }
        } else {
            self.judge.judge(&judged.sockets, &judged.population, now_ms, pressure)
        };
        self.report_episode(&plan.episode, pressure);
        for remote in &plan.released {
            self.release(*remote);
        }
        // Stuck remotes, flagged by the judgement itself (destroys flag theirs as they happen).
        for flag in &plan.flagged {
            self.flag(flag);
        }
        let timing = report::Timing { started, scanned, decided: started.elapsed() };
        let acted = self.act(plan, started);
        self.report_interval(judged.sockets.len(), &acted, &timing);
    }
}

/// The network namespaces of the watched cgroup's processes (the agent's own first), listed at
/// most once per interval: at its start for the `iter/tcp` walk, which reads inside each; on
/// the first decision otherwise.
struct Namespaces {
    cgroup: PathBuf,
    listed: Option<Vec<Namespace>>,
}

impl Namespaces {
    fn of(cgroup: PathBuf) -> Self {
        Self { cgroup, listed: None }
    }

    /// The agent's own namespace, then every one a process of the cgroup is in; the own one
    /// alone if the cgroup's cannot be listed.
    fn list(&mut self) -> &[Namespace] {
        self.listed.get_or_insert_with(|| netns::of_cgroup_or_own(&self.cgroup).unwrap_or_default())
    }

    /// What this interval listed, if it did.
    fn listed(&self) -> Option<&[Namespace]> {
        self.listed.as_deref()
    }

    /// Processes come and go: the next interval lists them again.
    fn forget(&mut self) {
        self.listed = None;
    }
}
