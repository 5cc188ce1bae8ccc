//! Developer commands: `cargo xtask build-ebpf`, `cargo xtask test`, `cargo xtask lint`,
//! `cargo xtask bench`, `cargo xtask dist`.
mod attack;
mod bench;
mod bench_proxy;
mod dist;
mod ebpf;
mod fuzz;
mod layers;
mod lint;
mod load;
mod procstat;
mod setup;
mod test;
mod vm;

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "enforcer's developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object, installing rust-src and bpf-linker first if they are missing.
    BuildEbpf,
    /// Run every test: unit tests, then the integration tests against the real kernel (root),
    /// one at a time. Arguments after `--` go to the integration test binary (e.g. a filter:
    /// `tracking::` runs one topic).
    Test {
        /// `host`: this machine's kernel. A version (`6.1`, `6.12`): the newest Debian
        /// linux-image-VERSION.*-cloud-amd64 (or a full package name), booted in QEMU with the
        /// kernel tests inside; unit tests and `deploy` run on the host leg only.
        #[arg(long, default_value = "host")]
        kernel: String,
        /// With --kernel VERSION: the topics (test modules) to run in the guest, comma-separated
        /// (default: every topic but the host-only `deploy`).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Check formatting (`cargo fmt --check`) and run clippy with warnings denied, on the host
    /// crates and on the eBPF crate for its target, installing clippy if the toolchain lacks it.
    Lint,
    /// Measure enforcer's cost (with and without the agent) and its time to destroy attackers;
    /// prints the tables BENCHMARKS.md holds.
    Bench(bench::BenchArgs),
    /// Fuzz the size, duration, CIDR, fairness and config parsers for a bounded time each.
    Fuzz(fuzz::FuzzArgs),
    /// Build the release artifacts in target/dist/: a tarball (static binary with the eBPF
    /// object, unit, example config, man pages, completions), a Debian package, an OCI image.
    Dist,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        Cmd::BuildEbpf => ebpf::build().map(|_| ()),
        Cmd::Test { kernel, only, args } if kernel == "host" => {
            if !only.is_empty() {
                bail!(
                    "--only chooses the topics of a --kernel run; on the host, give a filter after `--` (`tracking::`)"
                );
            }
            test::run(&args)
        }
        Cmd::Test { kernel, only, args } => vm::run(&kernel, &only, &args),
        Cmd::Lint => lint::run(),
        Cmd::Bench(args) => bench::run(&args),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Dist => dist::run(),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// Runs a command, echoing it, and fails with the command line if it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", show(cmd));
    let status = cmd.status().with_context(|| format!("starting {}", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}
