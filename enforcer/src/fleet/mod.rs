//! Fleets: enforcer as a member of a CrowdSec installation, both ways (`--crowdsec-*`).
//! - [`bouncer`]: this host enforces the fleet's `contain` decisions (an IP or a range) by
//!   containing the networks in the kernel, and hands the rule the set ([`Fleet::nets`]), which
//!   judges their stalled connections as repeat offenders' (`contained_by_crowdsec`).
//! - [`machine`]: this host's repeat offenders go to the Local API as alerts (scenario
//!   `enforcer/repeat-offender`, with the evidence), which a CrowdSec profile turns into a
//!   `contain` decision for every host (`deploy/crowdsec/profiles.yaml`).
//!
//! Each runs on its own thread with blocking calls and timeouts ([`lapi`]); an interval never
//! waits for the Local API. Imports `observe`, `config`, `bpf`, `host`, `policy`, `model`.
mod bouncer;
pub mod lapi;
mod machine;
pub mod stream;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU64, Ordering},
    mpsc,
};

use anyhow::{Context, Result};

use self::{bouncer::Bouncer, lapi::Lapi, machine::Machine};
use crate::{
    bpf::contained::{Containment, Source},
    config::crowdsec::{self, Crowdsec, MachineCredentials},
    observe::metrics::Metrics,
    policy::{fleet::FleetNets, repeat::Flagged},
};

/// What the bouncer and the agent share: the latest set and a generation to notice a new one;
/// the dry run (a reload may change it), and a request for every decision again.
#[derive(Default)]
pub struct Shared {
    nets: Mutex<Arc<FleetNets>>,
    generation: AtomicU64,
    /// Decisions are taken and judged with, not written to the trie. Changed under the
    /// containment's lock, which the bouncer holds while it writes.
    dry_run: AtomicBool,
    /// Ask the Local API for every decision at the next poll (a dry run ended).
    resync: AtomicBool,
}

impl Shared {
    fn publish(&self, nets: FleetNets) {
        *self.nets.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(nets);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// The agent's end of the fleet. Dropping it stops the threads (after the call under way).
pub struct Fleet {
    shared: Arc<Shared>,
    seen: u64,
    machine: Option<mpsc::SyncSender<Flagged>>,
    metrics: Arc<Metrics>,
    /// One per thread: dropping them disconnects each thread's receiver, which stops it.
    _stop: Vec<mpsc::Sender<()>>,
}

impl Fleet {
    /// Starts the bouncer (with `--crowdsec-url`) and the machine (with
    /// `--crowdsec-machine-credentials`). Credentials are read from their files now.
    pub fn start(
        settings: &Crowdsec,
        containment: Arc<Mutex<Containment>>,
        metrics: Arc<Metrics>,
        dry_run: bool,
        host: String,
    ) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        shared.dry_run.store(dry_run, Ordering::Relaxed);
        let mut stops = Vec::new();
        if let (Some(url), Some(key_file)) = (&settings.url, &settings.key_file) {
            let key = crowdsec::read_key(key_file).map_err(anyhow::Error::msg)?;
            let bouncer = Bouncer {
                lapi: Lapi::new(url),
                key,
                settings: settings.clone(),
                containment,
                shared: shared.clone(),
                metrics: metrics.clone(),
            };
            let (tx, stop) = mpsc::channel::<()>();
            stops.push(tx);
            std::thread::Builder::new()
                .name("crowdsec-bouncer".into())
                .spawn(move || bouncer.run(stop))
                .context("starting the CrowdSec bouncer's thread")?;
            tracing::info!(url = %url, types = ?settings.types, poll_ms = settings.poll_ms, "CrowdSec bouncer started");
        }
        let machine = match &settings.machine_credentials {
            Some(path) => {
                let creds = MachineCredentials::read(path).map_err(anyhow::Error::msg)?;
                let (tx, rx) = mpsc::sync_channel(machine::QUEUE);
                let url = creds.url.clone();
                let m = Machine::new(creds, metrics.clone(), host);
                let (stop_tx, stop) = mpsc::channel::<()>();
                stops.push(stop_tx);
                std::thread::Builder::new()
                    .name("crowdsec-machine".into())
                    .spawn(move || m.run(rx, stop))
                    .context("starting the CrowdSec machine's thread")?;
                tracing::info!(url = %url, "CrowdSec machine started: repeat offenders are shared as alerts");
                Some(tx)
            }
            None => None,
        };
        Ok(Self { shared, seen: 0, machine, metrics, _stop: stops })
    }

    /// The set of contained networks, if the bouncer published a new one since the last call.
    pub fn nets(&mut self) -> Option<Arc<FleetNets>> {
        let now = self.shared.generation.load(Ordering::Acquire);
        if now == self.seen {
            return None;
        }
        self.seen = now;
        Some(self.shared.nets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    /// A reload changed the dry run: into one, what CrowdSec contains is released (a dry run
    /// changes nothing); out of one, every decision is asked for again and written.
    pub fn set_dry_run(&self, dry_run: bool, containment: &Mutex<Containment>) {
        let mut c = containment.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.shared.dry_run.swap(dry_run, Ordering::Relaxed) == dry_run {
            return;
        }
        if dry_run {
            let held: Vec<_> = c.held_by(Source::Crowdsec).collect();
            for net in held {
                if let Err(e) = c.release(net, Source::Crowdsec) {
                    tracing::warn!(remote = %net, error = %format!("{e:#}"), "could not release a CrowdSec decision");
                }
            }
        } else {
            self.shared.resync.store(true, Ordering::Relaxed);
        }
    }

    /// Shares a repeat offender with the fleet (if this host is a machine); never blocks: with
    /// the queue full, the flag is dropped and counted.
    pub fn share(&self, flag: &Flagged) {
        let Some(tx) = &self.machine else { return };
        if tx.try_send(flag.clone()).is_err() {
            self.metrics.crowdsec_alerts.get_or_create(&vec![("outcome", "dropped")]).inc();
        }
    }
}
