//! `cargo xtask test`: everything, in the order that fails fastest.
use std::process::Command;

use anyhow::{Result, bail};

use crate::{dist, ebpf, is_root, root, run_cmd, setup};

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
    // The binary users run, with the object embedded.
    run_cmd(Command::new("cargo").current_dir(root()).args(["build", "--release", "-p", "enforcer"]))?;
    let bin = root().join("target/release/enforcer");
    // The release artifacts, which tests/tests/deploy/dist.rs takes apart.
    dist::run()?;
    // One at a time: the tests share the kernel (cgroups, bpffs, programs).
    run_cmd(
        Command::new("cargo")
            .current_dir(root())
            .args(["test", "-p", "enforcer-tests", "--tests", "--", "--test-threads=1"])
            .args(args)
            .env("ENFORCER_BIN", bin)
            .env("ENFORCER_PYTHON_TOOLS", setup::python_tools()),
    )
}
