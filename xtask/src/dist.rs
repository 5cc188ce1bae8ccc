//! `cargo xtask dist`: the release artifacts, in `target/dist/`:
//!
//! - `enforcer-VERSION-x86_64-linux.tar.gz`: the static binary (musl, the eBPF object embedded),
//!   the systemd unit, the example config, the man pages and shell completions;
//! - `enforcer_VERSION_amd64.deb`: the same, installed where Debian puts them, the config a
//!   conffile;
//! - `enforcer-VERSION-oci.tar` (and the same layout unpacked in `oci/`): an OCI image with the
//!   static binary alone (FROM scratch: no base image, no registry), for the DaemonSet.
//!
//! Everything is written with fixed owners and times (the last commit's), so two runs on one
//! commit give the same bytes.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{ebpf, root, run_cmd, setup, target_dir};

/// The target whose binaries need no libc on the host.
const MUSL: &str = "x86_64-unknown-linux-musl";
const GNU: &str = "x86_64-unknown-linux-gnu";
/// Where the unit and the README install the binary; the package puts it in /usr/bin.
const LOCAL_BIN: &str = "/usr/local/bin/enforcer";

pub fn run() -> Result<()> {
    ebpf::build()?;
    let bin = static_binary()?;
    let version = version(&bin)?;
    let dist = target_dir().join("dist");
    if dist.exists() {
        fs::remove_dir_all(&dist).with_context(|| format!("removing {}", dist.display()))?;
    }
    fs::create_dir_all(&dist).with_context(|| format!("creating {}", dist.display()))?;
    let epoch = source_date_epoch();
    let pages = generated(&bin, &dist)?;
    let tarball = tarball(&bin, &version, &pages, &dist, epoch)?;
    let deb = deb(&bin, &version, &pages, &dist, epoch)?;
    let image = image(&bin, &version, &dist, epoch)?;
    fs::remove_dir_all(&pages.dir).with_context(|| format!("removing {}", pages.dir.display()))?;
    for artifact in [tarball, deb, image] {
        let size = fs::metadata(&artifact).map(|m| m.len()).unwrap_or(0);
        eprintln!("xtask: {} ({:.1} MiB)", artifact.display(), size as f64 / (1 << 20) as f64);
    }
    Ok(())
}

/// Builds the agent with no dynamic dependency: musl if rustup has (or can add) the target,
/// else glibc linked statically.
fn static_binary() -> Result<PathBuf> {
    let installed = setup::output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    let musl = installed.lines().any(|l| l == MUSL) || {
        eprintln!("xtask: adding the {MUSL} target (a static binary)");
        run_cmd(Command::new("rustup").args(["target", "add", MUSL])).is_ok()
    };
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root())
        .args(["build", "--release", "-p", "enforcer", "--target"])
        // Symbols are no use to an operator; the eBPF object inside keeps its own.
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    let target = if musl {
        MUSL
    } else {
        eprintln!("xtask: no {MUSL} target; linking glibc statically instead");
        cmd.env("RUSTFLAGS", "-C target-feature=+crt-static");
        GNU
    };
    run_cmd(cmd.arg(target)).context("building the static enforcer")?;
    Ok(target_dir().join(target).join("release/enforcer"))
}

fn version(bin: &Path) -> Result<String> {
    let out = setup::output(Command::new(bin).arg("--version"))?;
    out.strip_prefix("enforcer ").map(str::to_owned).with_context(|| format!("unexpected --version output: {out}"))
}

/// The last commit's time (or SOURCE_DATE_EPOCH), for every file's mtime.
fn source_date_epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| setup::output(Command::new("git").current_dir(root()).args(["log", "-1", "--format=%ct"])).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Man pages and completions, as the binary itself writes them.
struct Generated {
    dir: PathBuf,
    man: Vec<PathBuf>,
    /// (file name, where Debian looks for it)
    completions: Vec<(String, &'static str)>,
}

fn generated(bin: &Path, dist: &Path) -> Result<Generated> {
    let dir = dist.join("generated");
    let man_dir = dir.join("man");
    fs::create_dir_all(&man_dir)?;
    run_cmd(Command::new(bin).arg("man").arg("--dir").arg(&man_dir))?;
    let mut man: Vec<PathBuf> = fs::read_dir(&man_dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    man.sort();
    let comp_dir = dir.join("completions");
    fs::create_dir_all(&comp_dir)?;
    let mut completions = Vec::new();
    for (shell, file, debian_dir) in [
        ("bash", "enforcer", "usr/share/bash-completion/completions"),
        ("zsh", "_enforcer", "usr/share/zsh/vendor-completions"),
        ("fish", "enforcer.fish", "usr/share/fish/vendor_completions.d"),
    ] {
        let script = setup::output(Command::new(bin).args(["completions", shell]))?;
        fs::write(comp_dir.join(file), script + "\n")?;
        completions.push((file.to_owned(), debian_dir));
    }
    Ok(Generated { dir, man, completions })
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", to.display()))
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", to.display()))
}

/// A tar of `dir`'s contents (`names` below it) that depends only on them: sorted, root-owned,
/// one mtime.
fn tar(dir: &Path, names: &[&str], out: &Path, epoch: u64, gzip: bool) -> Result<()> {
    let mut cmd = Command::new("tar");
    cmd.args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--format=gnu"])
        .arg(format!("--mtime=@{epoch}"))
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .args(names);
    if gzip {
        // -n: no name or time in the gzip header.
        cmd.arg("--use-compress-program=gzip -9n");
    }
    run_cmd(&mut cmd)
}

fn tarball(bin: &Path, version: &str, pages: &Generated, dist: &Path, epoch: u64) -> Result<PathBuf> {
    let name = format!("enforcer-{version}-x86_64-linux");
    let top = dist.join("staging").join(&name);
    copy(bin, &top.join("enforcer"), 0o755)?;
    copy(&root().join("deploy/systemd/enforcer.service"), &top.join("enforcer.service"), 0o644)?;
    copy(&root().join("deploy/enforcer.toml"), &top.join("enforcer.toml"), 0o644)?;
    copy(&root().join("README.md"), &top.join("README.md"), 0o644)?;
    for page in &pages.man {
        copy(page, &top.join("man").join(page.file_name().unwrap_or_default()), 0o644)?;
    }
    for (file, _) in &pages.completions {
        copy(&pages.dir.join("completions").join(file), &top.join("completions").join(file), 0o644)?;
    }
    let out = dist.join(format!("{name}.tar.gz"));
    tar(&dist.join("staging"), &[&name], &out, epoch, true)?;
    fs::remove_dir_all(dist.join("staging"))?;
    Ok(out)
}

fn gzip_to(from: &Path, to: &Path) -> Result<()> {
    let out = Command::new("gzip").args(["-9n", "-c"]).arg(from).output().context("running gzip")?;
    if !out.status.success() {
        bail!("gzip {}: {}", from.display(), String::from_utf8_lossy(&out.stderr));
    }
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(to, out.stdout).with_context(|| format!("writing {}", to.display()))
}

fn deb(bin: &Path, version: &str, pages: &Generated, dist: &Path, epoch: u64) -> Result<PathBuf> {
    setup::packages(&[("dpkg-deb", "dpkg")])?;
    let pkg = dist.join("deb");
    copy(bin, &pkg.join("usr/bin/enforcer"), 0o755)?;
    // The unit as the README installs it, with the binary where the package puts it.
    let unit = fs::read_to_string(root().join("deploy/systemd/enforcer.service"))?;
    if !unit.contains(LOCAL_BIN) {
        bail!("deploy/systemd/enforcer.service no longer runs {LOCAL_BIN}: update the package's path rewrite");
    }
    write(&pkg.join("usr/lib/systemd/system/enforcer.service"), &unit.replace(LOCAL_BIN, "/usr/bin/enforcer"), 0o644)?;
    copy(&root().join("deploy/enforcer.toml"), &pkg.join("etc/enforcer/enforcer.toml"), 0o644)?;
    for page in &pages.man {
        let name = page.file_name().unwrap_or_default().to_string_lossy().into_owned();
        gzip_to(page, &pkg.join("usr/share/man/man1").join(format!("{name}.gz")))?;
    }
    for (file, debian_dir) in &pages.completions {
        copy(&pages.dir.join("completions").join(file), &pkg.join(debian_dir).join(file), 0o644)?;
    }
    copy(&root().join("README.md"), &pkg.join("usr/share/doc/enforcer/README.md"), 0o644)?;
    let installed_kib = du_kib(&pkg)?;
    write(
        &pkg.join("DEBIAN/control"),
        &format!(
            "Package: enforcer\nVersion: {version}\nArchitecture: amd64\nMaintainer: enforcer developers <enforcer@localhost>\n\
             Section: net\nPriority: optional\nInstalled-Size: {installed_kib}\n\
             Description: destroy TCP connections that hold memory without making progress\n \
             An eBPF agent: when TCP memory is under pressure it destroys the connections that\n \
             hold more than their fair share and make no forward progress (zero-window and\n \
             slow-read attacks), and nothing else. Static binary; needs Linux 6.0+ with BTF.\n"
        ),
        0o644,
    )?;
    // The config is the operator's: an upgrade asks before replacing an edited one.
    write(&pkg.join("DEBIAN/conffiles"), "/etc/enforcer/enforcer.toml\n", 0o644)?;
    // systemd learns of the unit; it is not enabled: the operator reviews the dry run first.
    let reload = "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n";
    write(&pkg.join("DEBIAN/postinst"), reload, 0o755)?;
    write(&pkg.join("DEBIAN/postrm"), reload, 0o755)?;
    write(
        &pkg.join("DEBIAN/prerm"),
        "#!/bin/sh\nset -e\nif [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then\n  \
         systemctl stop enforcer.service || true\nfi\n",
        0o755,
    )?;
    let out = dist.join(format!("enforcer_{version}_amd64.deb"));
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&pkg)
            .arg(&out)
            .env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )?;
    fs::remove_dir_all(&pkg)?;
    Ok(out)
}

fn du_kib(dir: &Path) -> Result<u64> {
    let out = setup::output(Command::new("du").args(["-sk"]).arg(dir))?;
    out.split_whitespace().next().and_then(|n| n.parse().ok()).context("parsing du's output")
}

/// Writes `bytes` as a blob of an OCI layout and returns its descriptor's digest and size.
fn blob(layout: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let hex = format!("{:x}", Sha256::digest(bytes));
    let path = layout.join("blobs/sha256").join(&hex);
    fs::create_dir_all(path.parent().unwrap_or(layout))?;
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok((format!("sha256:{hex}"), bytes.len()))
}

fn image(bin: &Path, version: &str, dist: &Path, epoch: u64) -> Result<PathBuf> {
    // The one layer: /usr/bin/enforcer. The DaemonSet mounts the config, bpffs, cgroup and BTF.
    let rootfs = dist.join("rootfs");
    copy(bin, &rootfs.join("usr/bin/enforcer"), 0o755)?;
    let layer_tar = dist.join("layer.tar");
    tar(&rootfs, &["usr"], &layer_tar, epoch, false)?;
    let layer = fs::read(&layer_tar)?;
    let diff_id = format!("sha256:{:x}", Sha256::digest(&layer));
    let layer_gz = dist.join("layer.tar.gz");
    gzip_to(&layer_tar, &layer_gz)?;

    let layout = dist.join("oci");
    let (layer_digest, layer_size) = blob(&layout, &fs::read(&layer_gz)?)?;
    let created = humantime::format_rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch)).to_string();
    let config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/usr/bin/enforcer"],
            "Cmd": ["run", "--config", "/etc/enforcer/enforcer.toml"],
            "ExposedPorts": { "9465/tcp": {} },
            "Labels": {
                "org.opencontainers.image.title": "enforcer",
                "org.opencontainers.image.version": version,
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": created, "created_by": "cargo xtask dist: the static enforcer binary" }],
    });
    let (config_digest, config_size) = blob(&layout, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size }],
    });
    let (manifest_digest, manifest_size) = blob(&layout, &serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": { "architecture": "amd64", "os": "linux" },
            // The tag skopeo and podman read, and the name docker and containerd read.
            "annotations": {
                "org.opencontainers.image.ref.name": version,
                "io.containerd.image.name": format!("docker.io/library/enforcer:{version}"),
            },
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for tmp in [&layer_tar, &layer_gz] {
        fs::remove_file(tmp)?;
    }
    fs::remove_dir_all(&rootfs)?;
    // The layout as one file (skopeo's oci-archive:, podman load, docker load).
    let out = dist.join(format!("enforcer-{version}-oci.tar"));
    tar(&layout, &["blobs", "index.json", "oci-layout"], &out, epoch, false)?;
    Ok(out)
}
