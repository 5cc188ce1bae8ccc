//! `cargo xtask lint`: what CI checks besides the tests. The agent crate's layers (`layers.rs`:
//! no import cycle, none upward, no long module), formatting (rustfmt.toml), then clippy with
//! warnings denied: the workspace's host crates, and the eBPF crate on its own target with the
//! toolchain that builds it.
use std::process::Command;

use anyhow::{Context, Result};

use crate::{ebpf, layers, root, run_cmd, setup};

pub fn run() -> Result<()> {
    layers::check(&root().join("enforcer/src"))?;
    host_component(&["fmt", "--version"], "rustfmt")?;
    host_component(&["clippy", "--version"], "clippy")?;
    run_cmd(Command::new("cargo").current_dir(root()).args(["fmt", "--all", "--check"]))
        .context("the code is not formatted as rustfmt.toml says: run `cargo fmt --all`")?;
    // Every host crate with all its targets (tests, binaries); the eBPF crate builds only for
    // its own target (it is out of default-members too).
    run_cmd(Command::new("cargo").current_dir(root()).args([
        "clippy",
        "--workspace",
        "--exclude",
        "enforcer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate as `cargo xtask build-ebpf` builds it: same toolchain, same target.
    let tc = setup::toolchain()?;
    setup::component(&tc, "clippy", "to lint the eBPF crate")
        .with_context(|| format!("could not install clippy for the {} toolchain", tc.name))?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root().join("enforcer-ebpf")).arg(format!("+{}", tc.name)).args([
        "clippy",
        "--release",
        "--target",
        ebpf::TARGET,
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]);
    if tc.bootstrap {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    run_cmd(&mut cmd)
}

/// Installs a component of the toolchain that plain `cargo` runs here, unless `cargo probe…`
/// shows it is there.
fn host_component(probe: &[&str], name: &str) -> Result<()> {
    let present = Command::new("cargo").current_dir(root()).args(probe).output().is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing {name} for the default toolchain");
    run_cmd(Command::new("rustup").current_dir(root()).args(["component", "add", name]))
        .with_context(|| format!("could not install {name}: `cargo xtask lint` needs it"))
}
