//! `cargo xtask bench`: enforcer's cost on the traffic it watches. Bare and agent-attached runs
//! alternate so the VM's drift hits both alike; the median of each round's ratio is reported, with
//! each program's run-time statistics (`kernel.bpf_stats_enabled`).
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use enforcer_tests::{Agent, Cgroup, Netns};
use serde_json::Value;

use crate::{ebpf, is_root, root, run_cmd, setup, target_dir};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Rounds of each part. `overhead`: alternating rounds (each: one bare and one
    /// agent-attached run of every workload), then as many with the BPF run-time statistics on.
    /// `attack`: enforcer's runs (about 35 s each), then the `ss` scripts and two quiet runs
    /// once.
    #[arg(long, default_value_t = 9, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    rounds: usize,
    /// Connections per connect/request/close run.
    #[arg(long, default_value_t = 20_000)]
    connections: u64,
    /// Bytes per bulk run.
    #[arg(long, default_value_t = 4 << 30)]
    bulk_bytes: u64,
    /// Run only one part: `overhead` (cost on traffic), `attack` (time to destroy attackers),
    /// `load` (100,000 tracked sockets) or `proxy` (what `--proxy` costs relayed and unwatched
    /// traffic).
    #[arg(long, value_parser = ["overhead", "attack", "load", "proxy"])]
    only: Option<String>,
}

struct Sample {
    crr: f64,
    bulk: f64,
}

/// A binary of the release build (`CARGO_TARGET_DIR` honoured), refused if any source it is
/// built from (the crates' `src/` and the eBPF object) is newer: a figure must be the code's.
pub(crate) fn release_bin(name: &str) -> Result<std::path::PathBuf> {
    let bin = target_dir().join("release").join(name);
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .with_context(|| format!("{} is missing: the benchmark builds it first", bin.display()))?;
    let mut newest = None;
    for dir in ["enforcer/src", "enforcer-common/src", "enforcer-ebpf/src", "tests/src"] {
        newest_under(&root().join(dir), &mut newest);
    }
    if let Some((when, path)) = newest
        && when > built
    {
        bail!("{} is older than {}: rebuild before benchmarking", bin.display(), path.display());
    }
    Ok(bin)
}

/// The newest modification under `dir`, with its path.
fn newest_under(dir: &Path, newest: &mut Option<(std::time::SystemTime, std::path::PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            newest_under(&path, newest);
        } else if let Ok(when) = e.metadata().and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(n, _)| when > *n)
        {
            *newest = Some((when, path));
        }
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn loadgen(ns: &Netns, cg: &Cgroup, args: &[String]) -> Result<Value> {
    let bin = release_bin("loadgen")?;
    let out = ns
        .command("sh")
        .arg("-c")
        .arg(format!("echo $$ > {}/cgroup.procs && exec {} {}", cg.path.display(), bin.display(), args.join(" ")))
        .output()
        .context("running loadgen")?;
    if !out.status.success() {
        bail!("loadgen {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("loadgen output")
}

/// A `loadgen serve` in the cgroup for the duration of one client run outside it.
fn served(ns: &Netns, cg: &Cgroup, serve: &str, client: &[String]) -> Result<Value> {
    let bin = release_bin("loadgen")?;
    let mut server = ns
        .command("sh")
        .arg("-c")
        .arg(format!("echo $$ > {}/cgroup.procs && exec {} serve {serve}", cg.path.display(), bin.display()))
        .spawn()
        .context("starting loadgen serve")?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = ns.command(&bin).args(client).output().context("running loadgen client");
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    if !out.status.success() {
        bail!("loadgen {client:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("loadgen output")
}

/// (name, run count, total ns) of enforcer's programs, from bpftool.
pub(crate) fn program_stats() -> Result<Vec<(String, u64, u64)>> {
    let out = Command::new("bpftool").args(["prog", "show", "--json"]).output().context("running bpftool")?;
    let progs: Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("enforcer_")))
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["run_cnt"].as_u64().unwrap_or(0),
                p["run_time_ns"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}

pub fn run(a: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!("the benchmark loads BPF programs and creates network namespaces: run it as root");
    }
    ebpf::build()?;
    setup::test_packages()?;
    if Command::new("bpftool").arg("version").output().is_err() {
        run_cmd(Command::new("apt-get").args(["install", "-y", "-qq", "bpftool"]))
            .context("bpftool (for BPF run-time statistics) could not be installed")?;
    }
    run_cmd(Command::new("cargo").current_dir(root()).args([
        "build",
        "--release",
        "-p",
        "enforcer",
        "-p",
        "enforcer-tests",
        "--bins",
    ]))?;
    // The agent the benchmarks start (enforcer_tests::enforcer_bin) is this build's, wherever
    // cargo put it, and no older than the sources.
    for peer in ["tcp-peer", "loadgen", "proxy-peer"] {
        release_bin(peer)?;
    }
    let agent = release_bin("enforcer")?;
    // SAFETY: single-threaded here, before any benchmark starts a thread.
    unsafe { std::env::set_var("ENFORCER_BIN", &agent) };
    let only = a.only.as_deref();
    if only.is_none() || only == Some("overhead") {
        overhead(a)?;
    }
    if only.is_none() || only == Some("attack") {
        attack_table(a.rounds)?;
    }
    if only.is_none() || only == Some("load") {
        crate::load::table()?;
    }
    if only.is_none() || only == Some("proxy") {
        crate::bench_proxy::table(a.rounds)?;
    }
    Ok(())
}

/// The attack bench: enforcer `rounds` times (a new namespace, agent and attack each; the phase
/// of the attack against the agent's intervals differs between rounds, and with it the time),
/// then the `ss` scripts once.
fn attack_table(rounds: usize) -> Result<()> {
    let mut runs = Vec::new();
    for round in 1..=rounds {
        eprintln!(
            "xtask: attack {round}/{rounds}: enforcer (2,000 zero-window attackers among 10,000 idle connections)"
        );
        let e = crate::attack::enforcer()?;
        if e.stopped {
            eprintln!("xtask: attack {round}/{rounds}: {} of 2,000 destroyed within the time limit", e.destroyed);
        }
        runs.push(e);
    }
    eprintln!("xtask: attack: the same rule with ss -tni and one ss -K per socket (stopped after 60 s)");
    let one = crate::attack::ss_script(1, std::time::Duration::from_secs(60))?;
    eprintln!("xtask: attack: the same rule with ss -tni and ss -K batched 200 sockets per call");
    let batched = crate::attack::ss_script(200, std::time::Duration::from_secs(120))?;
    // Median, then the lowest and highest round.
    let column = |f: &dyn Fn(&crate::attack::Outcome) -> f64, unit: &str| {
        spread(&runs.iter().map(f).collect::<Vec<_>>(), unit, 2)
    };
    println!();
    println!(
        "| 2,000 zero-window attackers among 10,000 idle | destroyed | attack start → last attacker destroyed | all queued → last destroyed | agent CPU per 250 ms interval |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| enforcer (`--interval 250ms --stall 1s --policy heffner --threshold 64KiB`), median of {rounds} | {} | {} | {} | {} |",
        match runs.iter().filter(|e| e.stopped).count() {
            0 => runs.iter().map(|e| e.destroyed).min().unwrap_or(0).to_string(),
            n => format!("{} ({n} rounds stopped at the limit)", runs.iter().map(|e| e.destroyed).min().unwrap_or(0)),
        },
        column(&|e| e.seconds, "s"),
        column(&|e| e.after_queued.unwrap_or(0.0), "s"),
        column(&|e| e.cpu_ms_per_interval.unwrap_or(0.0), "ms"),
    );
    for (threshold, what) in [("64MiB", "64 MiB"), ("64KiB", "64 KiB, as above")] {
        // 65 s: a window that holds the walk made at least once a minute.
        eprintln!("xtask: attack: the agent with nothing queued, threshold {what}");
        let ms = crate::attack::quiet(threshold, std::time::Duration::from_secs(65))?;
        println!("| the same 12,000 connections, nothing queued, threshold {what} (65 s) | - | - | - | {ms:.2} ms |");
    }
    println!(
        "| `ss -tni` every 1 s + one `ss -K` per offender | {} | {:.2} s{} | - | n/a |",
        one.destroyed,
        one.seconds,
        if one.stopped { " (stopped at the limit)" } else { "" }
    );
    println!(
        "| `ss -tni` every 1 s + `ss -K` with 200 offenders per call | {} | {:.2} s | - | n/a |",
        batched.destroyed, batched.seconds
    );
    Ok(())
}

/// Where the load runs against the watched cgroup.
#[derive(Clone, Copy)]
enum Placement {
    /// Both ends in the watched cgroup: both sockets tracked (the worst case).
    Both,
    /// The server alone in it, the client outside (one end on the host, as in production).
    Server,
    /// Both ends in a cgroup the agent does not watch: no program runs for them.
    Unwatched,
}

impl Placement {
    const ALL: [Self; 3] = [Self::Both, Self::Server, Self::Unwatched];

    fn label(self) -> &'static str {
        match self {
            Self::Both => "both ends tracked (worst case)",
            Self::Server => "server side tracked (one end on the host)",
            Self::Unwatched => "unwatched cgroup",
        }
    }

    /// N connect/request/close.
    fn crr(self, ns: &Netns, watched: &Cgroup, other: &Cgroup, a: &BenchArgs) -> Result<Value> {
        let n = a.connections.to_string();
        match self {
            Self::Both => loadgen(ns, watched, &["crr".into(), n]),
            Self::Unwatched => loadgen(ns, other, &["crr".into(), n]),
            // The server alone in the cgroup, as in production (the other end is remote).
            Self::Server => served(ns, watched, "9100 crr", &["crr-client".into(), "127.0.0.1:9100".into(), n]),
        }
    }

    /// One bulk transfer.
    fn bulk(self, ns: &Netns, watched: &Cgroup, other: &Cgroup, a: &BenchArgs) -> Result<Value> {
        let bytes = a.bulk_bytes.to_string();
        match self {
            Self::Both => loadgen(ns, watched, &["bulk".into(), bytes]),
            Self::Unwatched => loadgen(ns, other, &["bulk".into(), bytes]),
            Self::Server => {
                served(ns, watched, &format!("9101 bulk {bytes}"), &["bulk-client".into(), "127.0.0.1:9101".into()])
            }
        }
    }

    fn run(self, ns: &Netns, watched: &Cgroup, other: &Cgroup, a: &BenchArgs) -> Result<Sample> {
        Ok(Sample {
            crr: self.crr(ns, watched, other, a)?["per_second"].as_f64().context("crr rate")?,
            bulk: self.bulk(ns, watched, other, a)?["bytes_per_second"].as_f64().context("bulk rate")?,
        })
    }
}

/// Run count and total run time of every enforcer program, summed (bpftool).
fn totals() -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
    Ok(program_stats()?.into_iter().map(|(n, c, t)| (n, (c, t))).collect())
}

/// `after - before` per program.
fn delta(
    before: &std::collections::BTreeMap<String, (u64, u64)>,
    after: &std::collections::BTreeMap<String, (u64, u64)>,
) -> std::collections::BTreeMap<String, (u64, u64)> {
    after
        .iter()
        .map(|(n, (c, t))| {
            let (c0, t0) = before.get(n).copied().unwrap_or_default();
            (n.clone(), (c - c0, t - t0))
        })
        .collect()
}

/// BPF time the traffic cost: every program but the agent's own per-interval ones.
fn traffic_ns(d: &std::collections::BTreeMap<String, (u64, u64)>) -> u64 {
    d.iter()
        .filter(|(n, _)| !n.contains("snapshot") && !n.contains("scan") && !n.contains("adopt"))
        .map(|(_, (_, t))| t)
        .sum()
}

/// Median, lowest and highest of `v` as `median (low–high)` with `unit`.
pub(crate) fn spread(v: &[f64], unit: &str, decimals: usize) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => format!("{:.decimals$} {unit} ({lo:.decimals$}–{hi:.decimals$})", v[v.len() / 2]),
        _ => "n/a".into(),
    }
}

fn overhead(a: &BenchArgs) -> Result<()> {
    let stats_knob = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let old_knob = std::fs::read_to_string(stats_knob).unwrap_or_else(|_| "0".into());
    let mut bare: Vec<Vec<Sample>> = Placement::ALL.iter().map(|_| Vec::new()).collect();
    let mut with: Vec<Vec<Sample>> = Placement::ALL.iter().map(|_| Vec::new()).collect();
    for round in 0..a.rounds {
        let (ns, cg, other) = (Netns::new(), Cgroup::new(), Cgroup::new());
        // Bare first in even rounds, with the agent first in odd ones: a run leaves 20,000
        // connections in TIME_WAIT in the namespace, which slow the next runs, and the VM drifts;
        // in a fixed order both count against whichever comes second (the unwatched placement,
        // where no program runs, read 98.6 % that way).
        let mut measure = |agent_on: bool| -> Result<()> {
            // The agent as an operator runs it: default interval, statistics off.
            let agent = agent_on.then(|| Agent::start(&ns, &cg, &["--interval", "1s"]));
            let into = if agent_on { &mut with } else { &mut bare };
            for (i, p) in Placement::ALL.iter().enumerate() {
                into[i].push(p.run(&ns, &cg, &other, a)?);
            }
            drop(agent);
            Ok(())
        };
        let agent_first = round % 2 == 1;
        measure(agent_first)?;
        measure(!agent_first)?;
        for (i, p) in Placement::ALL.iter().enumerate() {
            let (b, w) = (&bare[i][round], &with[i][round]);
            eprintln!(
                "xtask: round {}: {}: crr {:.0}/{:.0} per s, bulk {:.2}/{:.2} GB/s (bare/with agent)",
                round + 1,
                p.label(),
                b.crr,
                w.crr,
                b.bulk / 1e9,
                w.bulk / 1e9
            );
        }
    }

    // BPF time, in runs of their own (the statistics add two clock reads to every run): per
    // connect/request/close (every program, summed, over the connections), and per MiB of the
    // bulk run (every program; none runs per segment or per ACK since the RTT callback went).
    let mut per_conn: Vec<Vec<f64>> = Placement::ALL.iter().map(|_| Vec::new()).collect();
    let mut per_segment: Vec<Vec<f64>> = Placement::ALL.iter().map(|_| Vec::new()).collect();
    let mut by_program: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    std::fs::write(stats_knob, "1").context("enabling BPF run-time statistics")?;
    let measured = (|| -> Result<()> {
        for _ in 0..a.rounds {
            let (ns, cg, other) = (Netns::new(), Cgroup::new(), Cgroup::new());
            let agent = Agent::start(&ns, &cg, &["--interval", "1s"]);
            for (i, p) in Placement::ALL.iter().enumerate() {
                let t0 = totals()?;
                p.crr(&ns, &cg, &other, a)?;
                let d = delta(&t0, &totals()?);
                per_conn[i].push(traffic_ns(&d) as f64 / a.connections as f64);
                for (n, (c, t)) in d {
                    let e = by_program.entry(format!("{n} ({})", p.label())).or_default();
                    e.0 += c;
                    e.1 += t;
                }
                let t0 = totals()?;
                p.bulk(&ns, &cg, &other, a)?;
                let d = delta(&t0, &totals()?);
                per_segment[i].push(traffic_ns(&d) as f64 / (a.bulk_bytes as f64 / f64::from(1 << 20)));
            }
            drop(agent);
        }
        Ok(())
    })();
    std::fs::write(stats_knob, old_knob.trim()).context("restoring bpf_stats_enabled")?;
    measured?;

    let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    // Each round's with/bare ratio: the two runs of a round are next to each other in time, so
    // the ratio cancels the drift between rounds that a ratio of medians keeps.
    let paired = |b: &[Sample], w: &[Sample], f: fn(&Sample) -> f64| {
        let r: Vec<f64> = b.iter().zip(w).map(|(b, w)| f(w) / f(b)).collect();
        let below = r.iter().filter(|x| **x < 1.0).count();
        format!("{:.1} % ({below} of {} below 1)", 100.0 * median(r), b.len())
    };
    println!(
        "| workload | placement | bare (median) | with agent (median) | with/bare per round, median (rounds below 1) | target |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, p) in Placement::ALL.iter().enumerate() {
        let (b, w) = (&bare[i], &with[i]);
        let (crr_b, crr_w) = (m(b, |s| s.crr), m(w, |s| s.crr));
        let (bulk_b, bulk_w) = (m(b, |s| s.bulk), m(w, |s| s.bulk));
        println!(
            "| connect/request/close | {} | {crr_b:.0} conn/s | {crr_w:.0} conn/s | {} | ≥ 99 % |",
            p.label(),
            paired(b, w, |s| s.crr)
        );
        println!(
            "| bulk throughput | {} | {:.2} GB/s | {:.2} GB/s | {} | ≥ 99.5 % |",
            p.label(),
            bulk_b / 1e9,
            bulk_w / 1e9,
            paired(b, w, |s| s.bulk)
        );
    }
    println!();
    println!(
        "| placement | BPF time per connect/request/close, median (low–high) | target | BPF time per MiB of bulk transfer, median (low–high) | target |"
    );
    println!("|---|---|---|---|---|");
    for (i, p) in Placement::ALL.iter().enumerate() {
        let (conn_target, seg_target) = match p {
            Placement::Both => ("≤ 1600 ns", "-"),
            Placement::Server => ("≤ 800 ns", "-"),
            Placement::Unwatched => ("≤ 50 ns", "0 (nothing runs)"),
        };
        println!(
            "| {} | {} | {conn_target} | {} | {seg_target} |",
            p.label(),
            spread(&per_conn[i], "ns", 0),
            spread(&per_segment[i], "ns", 0)
        );
    }
    println!();
    println!("| program (placement) | runs | mean cost per run |");
    println!("|---|---|---|");
    for (name, (cnt, total)) in by_program {
        if cnt > 0 {
            println!("| {name} | {cnt} | {:.0} ns |", total as f64 / cnt as f64);
        }
    }
    Ok(())
}
