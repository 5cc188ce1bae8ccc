//! Installs what building and testing need on a fresh machine, saying what it does, and stops
//! with a clear message naming what it could not get.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::run_cmd;

/// bpf-linker known to build against the Rust toolchain's own LLVM (../shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {}", crate::show(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", crate::show(cmd), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The toolchain that builds the eBPF object: nightly if installed, otherwise stable with
/// RUSTC_BOOTSTRAP (both ship an LLVM that bpf-linker accepts).
pub struct Toolchain {
    pub name: String,
    pub bootstrap: bool,
}

pub fn toolchain() -> Result<Toolchain> {
    if !quiet_ok(Command::new("rustup").arg("--version")) {
        bail!("rustup is not installed: enforcer's eBPF build needs rustup to add rust-src (https://rustup.rs)");
    }
    let tc = if quiet_ok(Command::new("rustc").args(["+nightly", "--version"])) {
        Toolchain { name: "nightly".into(), bootstrap: false }
    } else {
        eprintln!("xtask: no nightly toolchain; building the eBPF object with stable and RUSTC_BOOTSTRAP=1");
        Toolchain { name: "stable".into(), bootstrap: true }
    };
    component(&tc, "rust-src", "needed by -Z build-std; about a minute")
        .context("could not install rust-src: the eBPF object cannot be built without it")?;
    Ok(tc)
}

/// Installs a rustup component of `tc` unless it is there already (`why` says what for).
pub fn component(tc: &Toolchain, name: &str, why: &str) -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", &tc.name]))?;
    if installed.lines().any(|l| l.starts_with(name)) {
        return Ok(());
    }
    eprintln!("xtask: installing {name} for the {} toolchain ({why})", tc.name);
    run_cmd(Command::new("rustup").args(["component", "add", name, "--toolchain", &tc.name]))
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// Makes sure a working bpf-linker is on PATH (or in cargo's bin directory) and returns it.
pub fn bpf_linker(tc: &Toolchain) -> Result<PathBuf> {
    let in_cargo = cargo_home().join("bin/bpf-linker");
    for candidate in [PathBuf::from("bpf-linker"), in_cargo.clone()] {
        if quiet_ok(Command::new(&candidate).arg("--version")) {
            return Ok(candidate);
        }
    }
    // No usable prebuilt binary can be fetched here: build it against the toolchain's LLVM.
    let sysroot = PathBuf::from(output(Command::new("rustc").args([&format!("+{}", tc.name), "--print", "sysroot"]))?);
    let lib = sysroot.join("lib");
    let llvm = std::fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: cannot build bpf-linker against the {} toolchain's LLVM",
                lib.display(),
                tc.name
            )
        })?;
    let major = llvm.trim_start_matches("libLLVM.so.").split('.').next().unwrap_or_default().to_owned();
    // bpf-linker keeps an rpath to this directory, so it lives next to cargo's own files.
    let prefix = cargo_home().join("enforcer-llvm").join(&tc.name);
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib).with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&llvm), &link).with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} against the {} toolchain's LLVM {major} (about a minute)",
        tc.name
    );
    run_cmd(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION, "--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )
    .context("could not install bpf-linker (it links the eBPF object); see the cargo output above")?;
    if !quiet_ok(Command::new(&in_cargo).arg("--version")) {
        bail!("bpf-linker was installed at {} but does not run", in_cargo.display());
    }
    Ok(in_cargo)
}

/// Debian packages the integration tests use: `ip` (network namespaces), `nsenter`, `unshare`,
/// `promtool` (Prometheus's linter, run on a real scrape), and for `deploy`: `systemd-analyze`
/// (the unit's score and verify), `man` (verify looks the unit's man page up), the kernel's
/// system call numbers (the unit's filter, applied by the tests' `seccomp-exec`), `skopeo` and
/// `umoci` (the OCI image of `cargo xtask dist`, read as a runtime would), `tmux` (a
/// terminal for `top`), and the real programs of the real-software cases: `squid` (`proxy`),
/// `nginx`, `slowhttptest` and `curl` (`real_software`).
pub fn test_packages() -> Result<()> {
    packages(&[
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
        ("promtool", "prometheus"),
        ("systemd-analyze", "systemd"),
        ("man", "man-db"),
        ("skopeo", "skopeo"),
        ("umoci", "umoci"),
        ("tmux", "tmux"),
        ("squid", "squid"),
        ("nginx", "nginx"),
        ("slowhttptest", "slowhttptest"),
        ("curl", "curl"),
        ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "linux-libc-dev"),
    ])
}

/// A program on PATH or in /usr/sbin or /sbin (root's PATH may lack them); an absolute path
/// (a file a package brings that is no program) if it exists.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.starts_with('/') {
        return Some(PathBuf::from(name)).filter(|p| p.exists());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Installs the Debian package of each `(program, package)` whose program is missing.
pub fn packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> =
        wanted.iter().filter(|(bin, _)| find_program(bin).is_none()).map(|(_, pkg)| *pkg).collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

/// Installs Debian packages with apt-get, or says why it cannot.
fn apt_install(missing: &[&str]) -> Result<()> {
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("these Debian packages are needed, and apt-get is not here to install them: {}", missing.join(" "));
    }
    if !crate::is_root() {
        bail!("these Debian packages are needed; install them as root: apt-get install {}", missing.join(" "));
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    // Debian starts a daemon's service when its package is installed: squid on the host's port
    // 3128, nginx on its port 80. The tests run their own, in a namespace; none may start here.
    let _no_services = NoServiceStarts::arm()?;
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("could not install {}", missing.join(" ")))
}

/// `/usr/sbin/policy-rc.d` answering 101 ("action forbidden") while it lives, as Debian's own
/// container images ship it: `invoke-rc.d` then starts no service a package installs. Left alone
/// when the host already has one (removed on drop only if made here).
struct NoServiceStarts(Option<&'static Path>);

impl NoServiceStarts {
    fn arm() -> Result<Self> {
        let path = Path::new("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(Self(None));
        }
        std::fs::write(
            path,
            "#!/bin/sh\n# enforcer's xtask: no service starts while it installs test packages.\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        Ok(Self(Some(path)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where the `fleet` tests find CrowdSec: Debian's `crowdsec` package unpacked under the target
/// directory (`usr/bin/crowdsec`, `usr/bin/cscli`, `etc/crowdsec/`).
pub fn crowdsec_root() -> PathBuf {
    crate::target_dir().join("tools/crowdsec")
}

/// Unpacks Debian's `crowdsec` into [`crowdsec_root`] unless it is there. Not `apt-get install`:
/// its post-install script registers with CrowdSec's Central API, which fails offline, and
/// would start a Local API on the host's port 8080. The tests run their own, in a namespace.
pub fn test_crowdsec() -> Result<()> {
    let root = crowdsec_root();
    if root.join("usr/bin/crowdsec").is_file() && root.join("usr/bin/cscli").is_file() {
        return Ok(());
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        bail!("the fleet tests need Debian's crowdsec package, and apt-get is not here to fetch it");
    }
    packages(&[("dpkg-deb", "dpkg")])?;
    let debs = crate::target_dir().join("tools/debs");
    eprintln!("xtask: fetching Debian's crowdsec package (unpacked, not installed) into {}", root.display());
    let deb = match download_deb("crowdsec", &debs) {
        Ok(deb) => deb,
        Err(_) => {
            // A fresh machine may never have read its package lists.
            run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
            download_deb("crowdsec", &debs)?
        }
    };
    let unpacking = root.with_extension("partial");
    let _ = std::fs::remove_dir_all(&unpacking);
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacking))?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&unpacking, &root).with_context(|| format!("moving {} into place", unpacking.display()))?;
    Ok(())
}

/// The `.deb` of `package` in `debs`, downloaded there (not installed) unless it is there
/// already: kernels for the VM legs, crowdsec for the fleet tests.
pub fn download_deb(package: &str, debs: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(debs).with_context(|| format!("creating {}", debs.display()))?;
    if let Some(deb) = find_deb(debs, package)? {
        return Ok(deb);
    }
    eprintln!("xtask: downloading {package}");
    run_cmd(
        Command::new("apt-get")
            .current_dir(debs)
            // Root downloads into a directory the `_apt` user cannot write: say so once, here.
            .args(["-q", "-o", "APT::Sandbox::User=root", "download", package]),
    )
    .with_context(|| format!("could not download {package}"))?;
    find_deb(debs, package)?.with_context(|| format!("apt-get download left no {package}_*.deb"))
}

fn find_deb(debs: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for e in std::fs::read_dir(debs).with_context(|| format!("listing {}", debs.display()))? {
        let path = e?.path();
        if path.file_name().map(|n| n.to_string_lossy()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// kubernetes-validate, pinned: the Kubernetes JSON schemas ship inside the package, so the
/// manifests are validated offline (the `deploy` tests).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// Where Python tools the tests run are installed: a virtualenv under the target directory,
/// so nothing lands in the system's Python.
pub fn python_tools() -> PathBuf {
    crate::target_dir().join("tools/venv")
}

/// Installs the PyPI tools the tests run into `python_tools()` unless they are there.
pub fn test_python_tools() -> Result<()> {
    let venv = python_tools();
    if venv.join("bin/kubernetes-validate").is_file() {
        return Ok(());
    }
    packages(&[("python3", "python3")])?;
    // Debian splits ensurepip (which venv needs to bootstrap pip) out of python3.
    if !quiet_ok(Command::new("python3").args(["-c", "import ensurepip"])) {
        apt_install(&["python3-venv"])?;
    }
    eprintln!("xtask: installing {KUBERNETES_VALIDATE} from PyPI into {} (the Kubernetes schemas)", venv.display());
    run_cmd(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("could not make a Python virtualenv (Debian: apt-get install python3-venv)")?;
    run_cmd(Command::new(venv.join("bin/pip")).args(["install", "--quiet", KUBERNETES_VALIDATE]))
        .with_context(|| format!("could not install {KUBERNETES_VALIDATE} from PyPI"))
}
