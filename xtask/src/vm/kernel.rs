//! One of Debian's kernels, fetched with apt and cached under `target/vm/kernels/`: its
//! `vmlinuz` and the few modules the tests need that Debian builds as modules.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{run_cmd, setup};

/// Modules the tests need, in load order, where the cloud kernels build them as modules:
/// `inet_diag` and `tcp_diag` answer netlink SOCK_DESTROY and `ss`; `tun` is tun-peer's device.
const MODULES: [&str; 3] = ["inet_diag", "tcp_diag", "tun"];

pub struct Kernel {
    pub vmlinuz: PathBuf,
    /// Uncompressed `.ko` files in load order (only those the kernel does not build in).
    pub modules: Vec<PathBuf>,
}

/// `6.1` → the newest `linux-image-6.1.*-cloud-amd64` apt knows; a full package name is taken
/// as it is.
pub fn package(version: &str) -> Result<String> {
    if version.starts_with("linux-image-") {
        return Ok(version.to_owned());
    }
    let newest = || -> Result<Option<String>> {
        let names = setup::output(Command::new("apt-cache").args(["pkgnames", &format!("linux-image-{version}.")]))?;
        Ok(names.lines().filter(|n| n.ends_with("-cloud-amd64")).max_by_key(|n| numbers(n)).map(str::to_owned))
    };
    if let Some(name) = newest()? {
        return Ok(name);
    }
    // A fresh machine may never have read its package lists.
    if crate::is_root() {
        run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        if let Some(name) = newest()? {
            return Ok(name);
        }
    }
    bail!(
        "apt knows no linux-image-{version}.*-cloud-amd64 package (`apt-cache pkgnames linux-image-{version}.`): \
         give a kernel version this machine's apt sources have, or a full package name"
    )
}

/// The numbers in a package name, for ordering `6.1.0-9` before `6.1.0-56`.
fn numbers(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// Downloads and unpacks `package` once; later calls find it in `cache`.
pub fn fetch(package: &str, cache: &Path) -> Result<Kernel> {
    let dir = cache.join("kernels").join(package);
    let done = dir.join("complete");
    if !done.exists() {
        unpack(package, cache, &dir)?;
        std::fs::write(&done, "").with_context(|| format!("writing {}", done.display()))?;
    }
    let modules = MODULES.iter().map(|m| dir.join(format!("{m}.ko"))).filter(|p| p.exists()).collect();
    Ok(Kernel { vmlinuz: dir.join("vmlinuz"), modules })
}

fn unpack(package: &str, cache: &Path, dir: &Path) -> Result<()> {
    let deb = setup::download_deb(package, &cache.join("debs"))?;
    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;

    let boot = tree.join("boot");
    let vmlinuz = list(&boot)?
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .with_context(|| format!("{package} has no boot/vmlinuz-*"))?;
    std::fs::copy(&vmlinuz, dir.join("vmlinuz")).context("copying vmlinuz")?;
    // The config, for a reader who wants to know what this kernel has.
    if let Some(config) =
        list(&boot)?.into_iter().find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("config-")))
    {
        std::fs::copy(config, dir.join("config")).context("copying the kernel config")?;
    }
    let mut found = Vec::new();
    walk(&tree.join("lib/modules"), &mut found)?;
    let usr = tree.join("usr/lib/modules");
    if usr.exists() {
        walk(&usr, &mut found)?;
    }
    for module in MODULES {
        let Some(file) = found.iter().find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(module))
                .is_some_and(|rest| matches!(rest, ".ko" | ".ko.xz" | ".ko.zst" | ".ko.gz"))
        }) else {
            // Built in, or not there at all: the tests will say which.
            continue;
        };
        let out = dir.join(format!("{module}.ko"));
        decompress(file, &out).with_context(|| format!("unpacking {}", file.display()))?;
    }
    std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    Ok(())
}

fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        v.push(e?.path());
    }
    Ok(v)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in list(dir)? {
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Debian compresses modules with xz since 6.x; busybox (which the image needs anyway) unpacks
/// it, so no other tool is required.
fn decompress(file: &Path, out: &Path) -> Result<()> {
    let name = file.to_string_lossy();
    let tool: &[&str] = if name.ends_with(".ko") {
        std::fs::copy(file, out)?;
        return Ok(());
    } else if name.ends_with(".xz") {
        &["busybox", "unxz", "-c"]
    } else if name.ends_with(".gz") {
        &["busybox", "gunzip", "-c"]
    } else {
        &["zstd", "-dc"]
    };
    let output =
        Command::new(tool[0]).args(&tool[1..]).arg(file).output().with_context(|| format!("running {}", tool[0]))?;
    if !output.status.success() {
        bail!("{} failed: {}", tool.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    std::fs::write(out, output.stdout).with_context(|| format!("writing {}", out.display()))
}
