//! `cargo xtask test`: everything, in the order that fails fastest.
use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal};

use crate::{dist, ebpf, is_root, root, run_cmd, setup, show};

/// The longest the integration tests may run on the host (they take about 3 minutes). Every wait
/// in them has a limit of its own; this is the last line, so that a hang fails CI instead of
/// holding it.
const LIMIT: Duration = Duration::from_secs(30 * 60);

pub fn run(args: &[String]) -> Result<()> {
    ebpf::build()?;
    // Unit tests: pure code, no kernel.
    run_cmd(Command::new("cargo").current_dir(root()).args([
        "test",
        "--workspace",
        "--exclude",
        "enforcer-ebpf",
        "--exclude",
        "enforcer-tests",
    ]))?;
    if !is_root() {
        bail!("the integration tests load BPF programs and create network namespaces: run `cargo xtask test` as root");
    }
    setup::test_packages()?;
    setup::test_python_tools()?;
    setup::test_crowdsec()?;
    // The binary users run, with the object embedded.
    run_cmd(Command::new("cargo").current_dir(root()).args(["build", "--release", "-p", "enforcer"]))?;
    let bin = root().join("target/release/enforcer");
    // The release artifacts, which the `deploy::dist` tests take apart.
    dist::run()?;
    // One at a time: the tests share the kernel (cgroups, bpffs, programs).
    run_within(
        Command::new("cargo")
            .current_dir(root())
            .args(["test", "-p", "enforcer-tests", "--tests", "--", "--test-threads=1"])
            .args(args)
            .env("ENFORCER_BIN", bin)
            .env("ENFORCER_PYTHON_TOOLS", setup::python_tools())
            .env("ENFORCER_CROWDSEC_ROOT", setup::crowdsec_root()),
        LIMIT,
    )
}

/// Like `run_cmd`, with a limit: past it, the command and everything it started are stopped
/// (SIGTERM, then SIGKILL) and the leg fails.
fn run_within(cmd: &mut Command, limit: Duration) -> Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let mut child = cmd.spawn().with_context(|| format!("starting {}", show(cmd)))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().context("waiting for the tests")? {
            if !status.success() {
                bail!("`{}` failed ({status})", show(cmd));
            }
            return Ok(());
        }
        if started.elapsed() > limit {
            break;
        }
        thread::sleep(Duration::from_secs(1));
    }
    let pid = child.id() as i32;
    for signal in [Signal::TERM, Signal::KILL] {
        // The deepest first: the test binary, then cargo, so nothing is left to its own.
        for p in descendants(pid).into_iter().rev().chain([pid]) {
            if let Some(p) = Pid::from_raw(p) {
                let _ = rustix::process::kill_process(p, signal);
            }
        }
        thread::sleep(Duration::from_secs(5));
    }
    let _ = child.wait();
    bail!(
        "the integration tests ran longer than {} and were stopped: the test that hung is the last `test …` line \
         above; the namespaces, cgroups and pins it made (enforcer-test-…, enf-test-…) may be left behind",
        humantime::format_duration(limit)
    )
}

/// The processes below `pid`, parents before their children, from /proc.
fn descendants(pid: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `PID (COMM) STATE PPID …`: COMM may hold spaces and parentheses.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, _) in parents.iter().filter(|(_, pp)| *pp == parent) {
            out.push(p);
            frontier.push(p);
        }
    }
    out
}
