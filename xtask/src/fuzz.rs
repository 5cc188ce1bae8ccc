//! `cargo xtask fuzz`: every fuzz target under `fuzz/` for a bounded time (cargo-fuzz,
//! libFuzzer). Installs cargo-fuzz if it is missing.
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::{ebpf, root, run_cmd};

pub const TARGETS: [&str; 3] = ["size", "duration_cidr_fairness", "config"];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

pub fn run(a: &FuzzArgs) -> Result<()> {
    // The enforcer library embeds the eBPF object, so it must exist.
    ebpf::build()?;
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        eprintln!("xtask: installing cargo-fuzz (a few minutes)");
        run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .context("could not install cargo-fuzz")?;
    }
    for target in TARGETS {
        run_cmd(
            Command::new("cargo")
                .current_dir(root().join("fuzz"))
                .args(["+nightly", "fuzz", "run", "--fuzz-dir", ".", target, "--"])
                .arg(format!("-max_total_time={}", a.seconds)),
        )
        .with_context(|| format!("fuzz target {target} found a failure (see fuzz/artifacts/{target})"))?;
    }
    eprintln!("xtask: {} fuzz targets ran {} s each without a failure", TARGETS.len(), a.seconds);
    Ok(())
}
