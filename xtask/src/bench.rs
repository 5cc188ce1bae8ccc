//! `cargo xtask bench`: enforcer's cost on the traffic it watches. Bare and agent-attached runs
//! alternate so the VM's drift hits both alike; the ratio of medians is reported, together with
//! each program's run-time statistics (`kernel.bpf_stats_enabled`).
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use enforcer_tests::{Agent, Cgroup, Netns};
use serde_json::Value;

use crate::{ebpf, is_root, root, run_cmd, setup};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Alternating rounds (each: one bare and one agent-attached run of every workload).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Connections per connect/request/close run.
    #[arg(long, default_value_t = 20_000)]
    connections: u64,
    /// Bytes per bulk run.
    #[arg(long, default_value_t = 4 << 30)]
    bulk_bytes: u64,
    /// Run only one part: `overhead` (cost on traffic), `attack` (time to destroy attackers) or
    /// `load` (50,000 tracked sockets).
    #[arg(long, value_parser = ["overhead", "attack", "load"])]
    only: Option<String>,
}

struct Sample {
    crr: f64,
    bulk: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn loadgen(ns: &Netns, cg: &Cgroup, args: &[String]) -> Result<Value> {
    let bin = root().join("target/release/loadgen");
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

fn workloads(ns: &Netns, cg: &Cgroup, a: &BenchArgs) -> Result<Sample> {
    let crr = loadgen(ns, cg, &["crr".into(), a.connections.to_string()])?;
    let bulk = loadgen(ns, cg, &["bulk".into(), a.bulk_bytes.to_string()])?;
    Ok(Sample {
        crr: crr["per_second"].as_f64().context("crr rate")?,
        bulk: bulk["bytes_per_second"].as_f64().context("bulk rate")?,
    })
}

/// A `loadgen serve` in the cgroup for the duration of one client run outside it.
fn served(ns: &Netns, cg: &Cgroup, serve: &str, client: &[String]) -> Result<Value> {
    let bin = root().join("target/release/loadgen");
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

/// The server side alone in the cgroup, as in production (the other end is remote).
fn server_side(ns: &Netns, cg: &Cgroup, a: &BenchArgs) -> Result<Sample> {
    let crr = served(ns, cg, "9100 crr", &["crr-client".into(), "127.0.0.1:9100".into(), a.connections.to_string()])?;
    let bulk =
        served(ns, cg, &format!("9101 bulk {}", a.bulk_bytes), &["bulk-client".into(), "127.0.0.1:9101".into()])?;
    Ok(Sample {
        crr: crr["per_second"].as_f64().context("crr rate")?,
        bulk: bulk["bytes_per_second"].as_f64().context("bulk rate")?,
    })
}

/// (name, run count, total ns) of enforcer's programs, from bpftool.
fn program_stats() -> Result<Vec<(String, u64, u64)>> {
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
    let only = a.only.as_deref();
    if only.is_none() || only == Some("overhead") {
        overhead(a)?;
    }
    if only.is_none() || only == Some("attack") {
        attack_table()?;
    }
    if only.is_none() || only == Some("load") {
        crate::load::table()?;
    }
    Ok(())
}

fn attack_table() -> Result<()> {
    eprintln!("xtask: attack: enforcer (2,000 zero-window attackers among 10,000 idle connections)");
    let e = crate::attack::enforcer()?;
    eprintln!("xtask: attack: the same rule with ss -tni and one ss -K per socket (stopped after 60 s)");
    let one = crate::attack::ss_script(1, std::time::Duration::from_secs(60))?;
    eprintln!("xtask: attack: the same rule with ss -tni and ss -K batched 200 sockets per call");
    let batched = crate::attack::ss_script(200, std::time::Duration::from_secs(120))?;
    println!();
    println!(
        "| 2,000 zero-window attackers among 10,000 idle | destroyed | attack start → last attacker destroyed | agent CPU per 250 ms interval |"
    );
    println!("|---|---|---|---|");
    println!(
        "| enforcer (`--interval 250ms --stall 1s --policy heffner --threshold 64KiB`) | {} | {:.2} s{} | {:.1} ms |",
        e.destroyed,
        e.seconds,
        if e.stopped { " (stopped at the limit)" } else { "" },
        e.cpu_ms_per_interval.unwrap_or(0.0)
    );
    println!(
        "| `ss -tni` every 1 s + one `ss -K` per offender | {} | {:.2} s{} | n/a |",
        one.destroyed,
        one.seconds,
        if one.stopped { " (stopped at the limit)" } else { "" }
    );
    println!(
        "| `ss -tni` every 1 s + `ss -K` with 200 offenders per call | {} | {:.2} s | n/a |",
        batched.destroyed, batched.seconds
    );
    Ok(())
}

fn overhead(a: &BenchArgs) -> Result<()> {
    let stats_knob = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let old_knob = std::fs::read_to_string(stats_knob).unwrap_or_else(|_| "0".into());
    let (mut bare, mut with) = (Vec::new(), Vec::new());
    let mut prog_totals: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let (mut bare_one, mut with_one) = (Vec::new(), Vec::new());
    for round in 0..a.rounds {
        let (ns, cg) = (Netns::new(), Cgroup::new());
        bare.push(workloads(&ns, &cg, a)?);
        bare_one.push(server_side(&ns, &cg, a)?);
        // The agent as an operator runs it: default interval, statistics off.
        let agent = Agent::start(&ns, &cg, &["--interval", "1s"]);
        with.push(workloads(&ns, &cg, a)?);
        with_one.push(server_side(&ns, &cg, a)?);
        drop(agent);
        let (b, w) = (&bare[round], &with[round]);
        let (b1, w1) = (&bare_one[round], &with_one[round]);
        eprintln!(
            "xtask: round {}: both ends: crr {:.0}/s bare, {:.0}/s with agent, bulk {:.2}/{:.2} GB/s; \
             server side: crr {:.0}/{:.0}/s, bulk {:.2}/{:.2} GB/s",
            round + 1,
            b.crr,
            w.crr,
            b.bulk / 1e9,
            w.bulk / 1e9,
            b1.crr,
            w1.crr,
            b1.bulk / 1e9,
            w1.bulk / 1e9
        );
    }
    // Per-program cost in a run of its own: the statistics themselves cost two clock reads a run.
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &["--interval", "1s"]);
    std::fs::write(stats_knob, "1").context("enabling BPF run-time statistics")?;
    let sample = workloads(&ns, &cg, a);
    let stats = program_stats();
    std::fs::write(stats_knob, old_knob.trim()).context("restoring bpf_stats_enabled")?;
    drop(agent);
    sample?;
    for (name, cnt, ns_total) in stats? {
        let e = prog_totals.entry(name).or_default();
        e.0 += cnt;
        e.1 += ns_total;
    }
    let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    println!("| workload | tracked | bare (median) | with agent (median) | ratio | target |");
    println!("|---|---|---|---|---|---|");
    for (label, b, w) in
        [("server side (one end on the host)", &bare_one, &with_one), ("both ends (worst case)", &bare, &with)]
    {
        let (crr_b, crr_w) = (m(b, |s| s.crr), m(w, |s| s.crr));
        let (bulk_b, bulk_w) = (m(b, |s| s.bulk), m(w, |s| s.bulk));
        println!(
            "| connect/request/close | {label} | {crr_b:.0} conn/s | {crr_w:.0} conn/s | {:.1} % | ≥ 97 % |",
            100.0 * crr_w / crr_b
        );
        println!(
            "| bulk throughput | {label} | {:.2} GB/s | {:.2} GB/s | {:.1} % | ≥ 98 % |",
            bulk_b / 1e9,
            bulk_w / 1e9,
            100.0 * bulk_w / bulk_b
        );
    }
    println!();
    println!("| program | runs | mean cost per run |");
    println!("|---|---|---|");
    for (name, (cnt, total)) in prog_totals {
        let mean = if cnt == 0 { 0.0 } else { total as f64 / cnt as f64 };
        println!("| {name} | {cnt} | {mean:.0} ns |");
    }
    Ok(())
}
