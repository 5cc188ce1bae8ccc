//! `cargo xtask bench --only proxy`: what proxy mode (`--proxy`) costs. Its programs run on every
//! recvmsg and sendmsg of the host, so two workloads: bytes relayed by a one-thread proxy in the
//! watched cgroup (the programs pair reads and writes and update `RELAYS`), and traffic of a
//! cgroup the agent does not watch (they look the socket up and return). Rounds alternate an
//! agent with and without `--proxy`; the BPF run time of the relay programs comes from runs of
//! their own with `kernel.bpf_stats_enabled`.
use std::{path::Path, process::Child};

use anyhow::{Context, Result, bail};
use enforcer_tests::{Agent, Cgroup, Netns};
use serde_json::Value;

use crate::bench::{median, program_stats, spread};

/// Bytes per relayed run, and the relay's read size in each: a proxy's usual reads (64 KiB), and
/// small ones (1 KiB) where the programs' cost per byte is highest.
const RELAYED: u64 = 1 << 30;
const CHUNKS: [usize; 2] = [65536, 1024];
/// Bytes of the unwatched bulk run, in loadgen's 128 KiB writes; connections of its crr run.
const UNWATCHED: u64 = 4 << 30;
const CRR: u64 = 20_000;

fn bin(name: &str) -> std::path::PathBuf {
    crate::target_dir().join("release").join(name)
}

/// `program` started in the namespace, in `cg` if given, its stdout piped.
fn spawn(ns: &Netns, cg: Option<&Cgroup>, program: &Path, args: &[String]) -> Result<Child> {
    let cg = cg.map_or(String::new(), |c| format!("echo $$ > {}/cgroup.procs && ", c.path.display()));
    let args: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    ns.command("sh")
        .arg("-c")
        .arg(format!("{cg}exec {} {}", program.display(), args.join(" ")))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

fn json_of(ns: &Netns, cg: Option<&Cgroup>, program: &Path, args: &[String]) -> Result<Value> {
    let child = spawn(ns, cg, program, args)?;
    let out = child.wait_with_output().context("waiting for the load")?;
    if !out.status.success() {
        bail!("{} {args:?} failed", program.display());
    }
    serde_json::from_slice(&out.stdout).context("the load's JSON")
}

/// Bytes per second relayed by `proxy-peer relay --chunk CHUNK` in the watched cgroup, from a
/// bulk server outside it to a reader outside it.
fn relayed(ns: &Netns, cg: &Cgroup, chunk: usize) -> Result<f64> {
    let mut server =
        spawn(ns, None, &bin("loadgen"), &["serve".into(), "9201".into(), "bulk".into(), RELAYED.to_string()])?;
    let mut relay = spawn(
        ns,
        Some(cg),
        &bin("proxy-peer"),
        &[
            "relay".into(),
            "--listen".into(),
            "127.0.0.1:9200".into(),
            "--upstream".into(),
            "127.0.0.1:9201".into(),
            "--chunk".into(),
            chunk.to_string(),
        ],
    )?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = json_of(ns, None, &bin("loadgen"), &["bulk-client".into(), "127.0.0.1:9200".into()]);
    for p in [&mut relay, &mut server] {
        let _ = p.kill();
        let _ = p.wait();
    }
    out?["bytes_per_second"].as_f64().context("bulk rate")
}

/// Bulk bytes per second and crr connections per second of a cgroup the agent does not watch.
fn unwatched(ns: &Netns, other: &Cgroup) -> Result<(f64, f64)> {
    let bulk = json_of(ns, Some(other), &bin("loadgen"), &["bulk".into(), UNWATCHED.to_string()])?;
    let crr = json_of(ns, Some(other), &bin("loadgen"), &["crr".into(), CRR.to_string()])?;
    Ok((bulk["bytes_per_second"].as_f64().context("bulk rate")?, crr["per_second"].as_f64().context("crr rate")?))
}

/// Run count and run time of the relay programs, summed.
fn relay_totals() -> Result<(u64, u64)> {
    Ok(program_stats()?
        .into_iter()
        .filter(|(n, _, _)| n.contains("relay"))
        .fold((0, 0), |(c, t), (_, c1, t1)| (c + c1, t + t1)))
}

/// The agent's flags with or without proxy mode (the cap is set either way, so both walk alike).
fn flags(proxy: bool) -> Vec<&'static str> {
    let mut f = vec!["--interval", "1s", "--max-per-remote", "100000", "--threshold", "4GiB"];
    if proxy {
        f.push("--proxy");
    }
    f
}

pub fn table(rounds: usize) -> Result<()> {
    // Throughput, alternating which half goes first.
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); CHUNKS.len() + 2];
    for round in 0..rounds {
        let (ns, cg, other) = (Netns::new(), Cgroup::new(), Cgroup::new());
        let run = |proxy: bool| -> Result<Vec<f64>> {
            let agent = Agent::start(&ns, &cg, &flags(proxy));
            let mut v = CHUNKS.iter().map(|c| relayed(&ns, &cg, *c)).collect::<Result<Vec<_>>>()?;
            let (bulk, crr) = unwatched(&ns, &other)?;
            v.extend([bulk, crr]);
            drop(agent);
            Ok(v)
        };
        let proxy_first = round % 2 == 1;
        let first = run(proxy_first)?;
        let second = run(!proxy_first)?;
        let (with, without) = if proxy_first { (first, second) } else { (second, first) };
        for (i, (w, b)) in with.iter().zip(&without).enumerate() {
            ratios[i].push(w / b);
        }
        eprintln!(
            "xtask: proxy round {}: with/without --proxy {:?}",
            round + 1,
            with.iter().zip(&without).map(|(w, b)| w / b).collect::<Vec<_>>()
        );
    }
    // BPF time of the relay programs, in runs of their own with the statistics on.
    let knob = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let old = std::fs::read_to_string(knob).unwrap_or_else(|_| "0".into());
    std::fs::write(knob, "1").context("enabling BPF run-time statistics")?;
    let mut per_mib: Vec<Vec<f64>> = vec![Vec::new(); CHUNKS.len()];
    let mut per_call_relayed: Vec<Vec<f64>> = vec![Vec::new(); CHUNKS.len()];
    let (mut per_call_unwatched, mut per_unwatched_mib) = (Vec::new(), Vec::new());
    let measured = (|| -> Result<()> {
        for _ in 0..rounds {
            let (ns, cg, other) = (Netns::new(), Cgroup::new(), Cgroup::new());
            let agent = Agent::start(&ns, &cg, &flags(true));
            for (i, chunk) in CHUNKS.iter().enumerate() {
                let (c0, t0) = relay_totals()?;
                relayed(&ns, &cg, *chunk)?;
                let (c1, t1) = relay_totals()?;
                per_mib[i].push((t1 - t0) as f64 / (RELAYED as f64 / f64::from(1 << 20)));
                per_call_relayed[i].push((t1 - t0) as f64 / (c1 - c0).max(1) as f64);
            }
            let (c0, t0) = relay_totals()?;
            let bulk = json_of(&ns, Some(&other), &bin("loadgen"), &["bulk".into(), UNWATCHED.to_string()])?;
            let (c1, t1) = relay_totals()?;
            drop(bulk);
            per_call_unwatched.push((t1 - t0) as f64 / (c1 - c0).max(1) as f64);
            per_unwatched_mib.push((t1 - t0) as f64 / (UNWATCHED as f64 / f64::from(1 << 20)));
            drop(agent);
        }
        Ok(())
    })();
    std::fs::write(knob, old.trim()).context("restoring bpf_stats_enabled")?;
    measured?;

    let pct = |v: &[f64]| {
        let below = v.iter().filter(|x| **x < 1.0).count();
        format!("{:.1} % ({below} of {} below 1)", 100.0 * median(v.to_vec()), v.len())
    };
    println!(
        "| workload | with/without --proxy per round, median (rounds below 1) | relay programs' BPF time per MiB, median (low–high) | per run |"
    );
    println!("|---|---|---|---|");
    for (i, chunk) in CHUNKS.iter().enumerate() {
        println!(
            "| 1 GiB relayed by a one-thread proxy in the watched cgroup, {} KiB reads | {} | {} | {} |",
            chunk / 1024,
            pct(&ratios[i]),
            spread(&per_mib[i], "ns", 0),
            spread(&per_call_relayed[i], "ns", 0)
        );
    }
    let n = CHUNKS.len();
    println!(
        "| 4 GiB bulk in an unwatched cgroup (128 KiB writes) | {} | {} | {} |",
        pct(&ratios[n]),
        spread(&per_unwatched_mib, "ns", 0),
        spread(&per_call_unwatched, "ns", 0)
    );
    println!("| 20,000 connect/request/close in an unwatched cgroup | {} | - | - |", pct(&ratios[n + 1]));
    Ok(())
}
