//! `enforcer run`: the agent. In this version it observes: it keeps the tracker current and
//! logs what it sees; it destroys nothing.
use anyhow::{Context, Result};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::RunArgs,
    loader::{LoadOptions, Loaded},
    pins, sys,
};

pub async fn run(args: RunArgs) -> Result<()> {
    sys::require_root("enforcer run")?;
    sys::require_btf()?;
    let cgroup = match args.cgroup {
        Some(p) => p,
        None => sys::cgroup2_root()?,
    };
    let cgroup_id = sys::cgroup2_dir(&cgroup)?;
    sys::raise_memlock();
    let pin_dir = &args.pins.pin_dir;
    let settings = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "cgroup": cgroup,
        "cgroup_id": cgroup_id,
        "pin_dir": pin_dir,
        "max_sockets": args.max_sockets,
        "interval_ms": args.interval.as_millis() as u64,
    })
    .to_string();

    let loaded = Loaded::load(&LoadOptions {
        cgroup: &cgroup,
        pin_dir,
        max_sockets: args.max_sockets,
        settings: &settings,
    })?;
    tracing::info!(cgroup = %cgroup.display(), cgroup_id, pin_dir = %pin_dir.display(),
        max_sockets = args.max_sockets, "enforcer attached; observing");

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = ticker.tick() => observe(&loaded),
        }
    }
    drop(loaded);
    tracing::info!("enforcer detached; pins removed");
    Ok(())
}

/// One snapshot per interval: it reconciles every record with the kernel (so progress the
/// tracepoint could not see is dated) and tells the operator what is queued.
fn observe(loaded: &Loaded) {
    match pins::read_snapshot(&loaded.snapshot_path()) {
        Ok(entries) => {
            let queued: u64 = entries.iter().map(|e| u64::from(e.send_queue())).sum();
            tracing::debug!(sockets = entries.len(), send_queue_bytes = queued, "snapshot");
        }
        Err(e) => tracing::warn!(error = %e, "snapshot failed"),
    }
}
