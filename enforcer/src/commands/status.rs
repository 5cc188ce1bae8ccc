//! `enforcer status`: what the running agent does and how its programs fare.
use std::io::Write;

use anyhow::{Context, Result};
use enforcer_common::{kill_counters, stats};
use serde_json::{Value, json};

use crate::{
    pins::PinDir,
    sys,
    view::{human_bytes, human_ms},
};

pub fn run(args: crate::cli::StatusArgs) -> Result<()> {
    sys::require_root("enforcer status")?;
    let pins = PinDir::open(&args.pins.pin_dir)?;
    let info = pins.info();
    let settings = pins.recorded_settings();
    let tagged = pins.snapshot()?;
    let namespaces: std::collections::HashSet<u64> = tagged.iter().map(|(ns, _)| *ns).collect();
    let snapshot: Vec<_> = tagged.into_iter().map(|(_, e)| e).collect();
    let send_queue: u64 = snapshot.iter().map(|e| u64::from(e.send_queue())).sum();
    let charged: u64 = snapshot.iter().map(|e| u64::from(e.wmem_queued)).sum();
    // Repeat offenders whose new connections the kernel gives a small send buffer.
    let contained = pins.contained()?;
    let recv_queue: u64 = snapshot.iter().map(|e| u64::from(e.recv_queue())).sum();
    let (records, capacity) = pins.occupancy()?;
    let counters = pins.stats()?;
    let kc = pins.kill_counters()?;
    let counter_map: serde_json::Map<String, Value> =
        stats::NAMES.iter().zip(counters).map(|(n, v)| ((*n).to_owned(), json!(v))).collect();

    let status = json!({
        "agent": { "pid": info.pid, "started_unix_ms": info.started_unix_ms },
        "settings": settings,
        "sockets": {
            // In every network namespace the agent reaches (see `enforcer sockets`), and how many
            // namespaces hold them.
            "tracked": snapshot.len(),
            "network_namespaces": namespaces.len(),
            "map_records": records,
            "map_capacity": capacity,
            "map_full": counters[stats::MAP_FULL as usize],
        },
        "queued": { "send_queue_bytes": send_queue, "charged_bytes": charged, "recv_queue_bytes": recv_queue },
        "contained": contained
            .iter()
            .map(|(net, sndbuf)| json!({ "remote": net.to_string(), "sndbuf": sndbuf }))
            .collect::<Vec<_>>(),
        "counters": counter_map,
        "kills": {
            "destroyed": kc[kill_counters::DESTROYED as usize],
            "would_destroy": kc[kill_counters::WOULD_DESTROY as usize],
            "destroy_failed": kc[kill_counters::DESTROY_FAILED as usize],
        },
    });
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &status).context("writing JSON")?;
        writeln!(out)?;
        return Ok(());
    }
    let errors: Vec<String> = stats::NAMES
        .iter()
        .zip(counters)
        .filter(|(n, _)| n.starts_with("err_"))
        .map(|(n, v)| format!("{} {v}", &n[4..]))
        .collect();
    let get = |k: &str| settings[k].as_u64().unwrap_or(0);
    let word = |k: &str| settings[k].as_str().unwrap_or("?").to_owned();
    writeln!(out, "agent      pid {}, watching {} (cgroup id {})", info.pid, word("cgroup"), get("cgroup_id"))?;
    writeln!(
        out,
        "rule       threshold {} ({} pressure), fairness {}, stall {}, max-drain {} over {}, policy {}{}",
        human_bytes(get("threshold")),
        word("pressure"),
        word("fairness"),
        human_ms(get("stall_ms")),
        human_ms(get("max_drain_ms")),
        human_ms(get("drain_window_ms")),
        word("policy"),
        if settings["dry_run"] == true { ", DRY RUN" } else { "" }
    )?;
    let plural = if namespaces.len() == 1 { "" } else { "s" };
    writeln!(out, "sockets    {} tracked, in {} network namespace{plural}", snapshot.len(), namespaces.len())?;
    writeln!(
        out,
        "map        {records} / {capacity} records, {} sockets not tracked (map full)",
        counters[stats::MAP_FULL as usize]
    )?;
    writeln!(
        out,
        "queued     {} send ({} charged), {} receive",
        human_bytes(send_queue),
        human_bytes(charged),
        human_bytes(recv_queue)
    )?;
    let repeat: Vec<String> =
        contained.iter().map(|(net, sndbuf)| format!("{net} ({})", human_bytes(u64::from(*sndbuf)))).collect();
    writeln!(
        out,
        "contained  {}",
        if repeat.is_empty() { "none (no repeat offender)".to_owned() } else { repeat.join(", ") }
    )?;
    writeln!(
        out,
        "lifetime   {} tracked, {} removed",
        counters[stats::TRACKED as usize],
        counters[stats::REMOVED as usize]
    )?;
    writeln!(
        out,
        "kills      {} destroyed, {} would destroy (dry run), {} failed",
        kc[kill_counters::DESTROYED as usize],
        kc[kill_counters::WOULD_DESTROY as usize],
        kc[kill_counters::DESTROY_FAILED as usize]
    )?;
    writeln!(out, "errors     {}", errors.join(", "))?;
    Ok(())
}
