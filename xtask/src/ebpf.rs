//! The one place the eBPF object is built. `enforcer`'s build.rs embeds what this produces.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{root, run_cmd, setup};

pub const TARGET: &str = "bpfel-unknown-none";

pub fn object() -> PathBuf {
    crate::target_dir().join(TARGET).join("release/enforcer")
}

pub fn build() -> Result<PathBuf> {
    let tc = setup::toolchain()?;
    let linker = setup::bpf_linker(&tc)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root()).arg(format!("+{}", tc.name)).args([
        "build",
        "--release",
        "-p",
        "enforcer-ebpf",
        "--target",
        TARGET,
        "-Z",
        "build-std=core",
    ]);
    // rustc finds bpf-linker on PATH; make sure the one we checked is first.
    if let Some(dir) = linker.parent().filter(|d| !d.as_os_str().is_empty()) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path)))
            .context("building PATH")?;
        cmd.env("PATH", joined);
    }
    // BTF for the object (as aya-build gives it): the records map is socket-local storage, which
    // the kernel creates only with BTF for its key and value (a `#[btf_map]`).
    cmd.env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", "-Cdebuginfo=2 -Clink-arg=--btf");
    if tc.bootstrap {
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    run_cmd(&mut cmd).context("building the eBPF object")?;
    let obj = object();
    eprintln!("xtask: eBPF object at {}", obj.display());
    Ok(obj)
}
