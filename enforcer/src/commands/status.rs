//! `enforcer status`: what the running agent does and how its programs fare.
use std::io::Write;

use anyhow::{Context, Result};
use clap::Args;
use enforcer_common::{kill_counters, stats};
use serde_json::{Value, json};

use super::PinDirArg;
use crate::{
    bpf::{contained, journal, pins::PinDir, snapshot::Snapshot},
    config::Settings,
    host::sys,
    model::units::{human_bytes, human_ms},
};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: StatusArgs) -> Result<()> {
    sys::require_root("enforcer status")?;
    let pins = PinDir::open(&args.pins.pin_dir)?;
    let info = pins.info();
    let settings: &Settings = &pins.settings()?;
    let snapshot = Snapshot::read(&pins, &settings.cgroup)?;
    let charged = snapshot.charged();
    let snapshot = snapshot.sockets;
    let namespaces: std::collections::HashSet<u64> = snapshot.iter().map(|s| s.netns).collect();
    let send_queue: u64 = snapshot.iter().map(|s| s.send_queue).sum();
    // Repeat offenders whose new connections the kernel gives a small send buffer.
    let contained = contained::read(&pins)?;
    let recv_queue: u64 = snapshot.iter().map(|s| s.recv_queue).sum();
    let recv_charged: u64 = snapshot.iter().map(|s| s.recv_charged).sum();
    let out_of_order: u64 = snapshot.iter().filter(|s| s.out_of_order).map(|s| s.recv_charged).sum();
    let counters = pins.stats()?;
    let kc = journal::counters(&pins)?;
    let counter_map: serde_json::Map<String, Value> =
        stats::NAMES.iter().zip(counters).map(|(n, v)| ((*n).to_owned(), json!(v))).collect();
    let source = settings.meter();
    let pressure = source.read(charged).ok();
    let now_ms = sys::unix_ms();
    let uptime_ms = now_ms.saturating_sub(info.started_unix_ms);

    let status = json!({
        "agent": {
            "pid": info.pid,
            "version": pins.version(),
            "started_unix_ms": info.started_unix_ms,
            "uptime_ms": uptime_ms,
        },
        // As the agent reads it (`null` if it cannot be read from here).
        "pressure": {
            "bytes": pressure,
            "threshold": settings.threshold,
            "source": source.name(),
            "over": pressure.map(|p| p > settings.threshold),
        },
        "settings": settings,
        "sockets": {
            // In every network namespace the agent reaches (see `enforcer sockets`), and how many
            // namespaces hold them.
            "tracked": snapshot.len(),
            "network_namespaces": namespaces.len(),
            // Records live in their sockets: no capacity. A connection goes untracked only when
            // the kernel cannot allocate its record; this counts every failed try since the agent
            // started (adoption tries again), not the connections untracked now.
            "untracked_no_memory": counters[stats::ERR_STORAGE as usize],
        },
        "queued": {
            "send_queue_bytes": send_queue,
            "charged_bytes": charged,
            "recv_queue_bytes": recv_queue,
            "recv_charged_bytes": recv_charged,
            "out_of_order_bytes": out_of_order,
        },
        // Who is contained and why: this host's repeat offenders, CrowdSec decisions (with
        // their origin/scenario and end), or both.
        "contained": contained,
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
    let s = settings;
    writeln!(
        out,
        "agent      pid {}, enforcer {}, up {}, watching {} (cgroup id {})",
        info.pid,
        pins.version(),
        human_ms(uptime_ms),
        s.cgroup.display(),
        s.cgroup_id
    )?;
    writeln!(
        out,
        "pressure   {} of {} ({}){}",
        pressure.map_or_else(|| "unknown".to_owned(), human_bytes),
        human_bytes(s.threshold),
        source.name(),
        match pressure {
            Some(p) if p > s.threshold => ": OVER the threshold, the rule applies",
            Some(_) => ": under the threshold",
            None => "",
        }
    )?;
    writeln!(
        out,
        "rule       threshold {} ({} pressure), fairness {}, stall {}, max-drain {} over {}, policy {}{}",
        human_bytes(s.threshold),
        source.name(),
        s.fairness,
        human_ms(s.stall_ms),
        human_ms(s.max_drain_ms),
        human_ms(s.drain_window_ms),
        s.policy.name(),
        if s.dry_run { ", DRY RUN" } else { "" }
    )?;
    let list = |items: Vec<String>| if items.is_empty() { "-".to_owned() } else { items.join(" ") };
    writeln!(
        out,
        "protected  local ports {}; remote ports {}; networks {}; cgroups {}",
        list(s.protect_ports.iter().map(u16::to_string).collect()),
        list(s.protect_remote_ports.iter().map(u16::to_string).collect()),
        list(s.protect_cidrs.iter().map(ToString::to_string).collect()),
        list(s.protect_cgroups.iter().map(|p| p.display().to_string()).collect()),
    )?;
    let plural = if namespaces.len() == 1 { "" } else { "s" };
    writeln!(out, "sockets    {} tracked, in {} network namespace{plural}", snapshot.len(), namespaces.len())?;
    writeln!(
        out,
        "queued     {} send, {} receive; {} charged, {} of it receive ({} beyond holes)",
        human_bytes(send_queue),
        human_bytes(recv_queue),
        human_bytes(charged),
        human_bytes(recv_charged),
        human_bytes(out_of_order)
    )?;
    write_contained(&mut out, &contained, now_ms)?;
    writeln!(
        out,
        "lifetime   {} tracked as they came (at establishment, or at a walk's first sight), {} adopted",
        counters[stats::TRACKED as usize],
        counters[stats::ADOPTED as usize]
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

/// Lines shown of each source's contained networks (`--json` lists them all).
const SHOWN: usize = 10;

/// The contained networks in text: repeat offenders, then CrowdSec decisions, a few of each.
fn write_contained(out: &mut impl Write, contained: &[contained::Contained], now_ms: u64) -> Result<()> {
    if contained.is_empty() {
        writeln!(out, "contained  none (no repeat offender, no CrowdSec decision)")?;
        return Ok(());
    }
    let limits = |c: &contained::Contained| {
        let timeout = if c.user_timeout_ms == 0 {
            String::new()
        } else {
            format!(", user timeout {}", human_ms(u64::from(c.user_timeout_ms)))
        };
        format!("sndbuf {}{timeout}", human_bytes(u64::from(c.sndbuf)))
    };
    let repeat: Vec<&contained::Contained> = contained.iter().filter(|c| c.repeat_offender).collect();
    let fleet: Vec<&contained::Contained> = contained.iter().filter(|c| c.crowdsec.is_some()).collect();
    writeln!(out, "contained  {} repeat offenders, {} networks by CrowdSec decisions", repeat.len(), fleet.len())?;
    for c in repeat.iter().take(SHOWN) {
        writeln!(out, "           {} repeat offender ({})", c.remote, limits(c))?;
    }
    for c in fleet.iter().take(SHOWN) {
        let ends = c
            .crowdsec_until_unix_ms
            .map_or_else(String::new, |u| format!(", ends in {}", human_ms(u.saturating_sub(now_ms))));
        let label = c.crowdsec.as_deref().filter(|l| !l.is_empty()).unwrap_or("a decision");
        writeln!(out, "           {} CrowdSec {label} ({}{ends})", c.remote, limits(c))?;
    }
    let more = repeat.len().saturating_sub(SHOWN) + fleet.len().saturating_sub(SHOWN);
    if more > 0 {
        writeln!(out, "           and {more} more (enforcer status --json lists them all)")?;
    }
    Ok(())
}
