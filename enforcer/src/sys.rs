//! What the agent needs from the host: root, BTF, a cgroup v2 directory, a bpf filesystem.
//! Each check fails with one line that says what to do.
use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use crate::btf::VMLINUX;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where a bpf filesystem is mounted when none is.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root (it uses BPF maps and programs): run it with sudo");
    }
    Ok(())
}

pub fn require_btf() -> Result<()> {
    if !Path::new(VMLINUX).exists() {
        bail!("this kernel has no BTF ({VMLINUX} is missing): enforcer needs CONFIG_DEBUG_INFO_BTF=y");
    }
    Ok(())
}

fn fs_magic(path: &Path) -> Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes()).context("path contains a NUL byte")?;
    // SAFETY: statfs writes into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statfs {}", path.display()));
    }
    Ok(st.f_type as i64)
}

/// The first cgroup v2 mount in /proc/mounts (`/sys/fs/cgroup` on most systems,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .context("no cgroup v2 filesystem is mounted (see /proc/mounts): enforcer attaches to a cgroup v2 directory")
}

/// Checks that `path` is a cgroup v2 directory and returns its id (the directory's inode).
pub fn cgroup2_dir(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).with_context(|| format!("cgroup {} does not exist", path.display()))?;
    if !meta.is_dir() || fs_magic(path)? != CGROUP2_SUPER_MAGIC {
        bail!(
            "{} is not a cgroup v2 directory (the cgroup2 mount is {})",
            path.display(),
            cgroup2_root().map(|p| p.display().to_string()).unwrap_or_else(|_| "missing".into())
        );
    }
    Ok(meta.ino())
}

/// Depth of a cgroup directory below the cgroup2 root (the root is 0), as the kernel's
/// `cgroup.level` counts it when the agent runs in the initial cgroup namespace.
pub fn cgroup2_level(path: &Path) -> Result<u32> {
    let root = cgroup2_root()?;
    let path = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
    let rel = path
        .strip_prefix(&root)
        .with_context(|| format!("{} is not below the cgroup2 mount {}", path.display(), root.display()))?;
    Ok(rel.components().count() as u32)
}

/// Makes sure `dir`'s parent is on a bpf filesystem, mounting one at /sys/fs/bpf if that is
/// where it should be and nothing is mounted there.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if fs_magic(parent).ok() == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    if parent == Path::new(BPFFS_MOUNT) {
        let (src, fstype) = (c"bpf", c"bpf");
        let target = CString::new(BPFFS_MOUNT).context("mount point")?;
        // SAFETY: all pointers are valid C strings; no data argument.
        if unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mounting a bpf filesystem at {BPFFS_MOUNT}"));
        }
        tracing::info!(path = BPFFS_MOUNT, "mounted a bpf filesystem");
        return Ok(());
    }
    bail!("{} is not on a bpf filesystem: choose a --pin-dir under a bpffs mount such as {BPFFS_MOUNT}", dir.display())
}

/// Takes an `flock` on directory `dir`: `Some(lock)` held until dropped, or `None` if another
/// process holds it. The agent holds its pin directory this way for as long as it runs, so a
/// crashed agent's pins are recognisable whatever its pid became (reused, other namespace).
pub fn lock_dir(dir: &Path, exclusive: bool) -> Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        return Ok(Some(f));
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == std::io::ErrorKind::WouldBlock {
        return Ok(None);
    }
    Err(err).with_context(|| format!("locking {}", dir.display()))
}

/// Removes the limit on locked memory for kernels that still charge BPF maps against it
/// (before 5.11); harmless elsewhere.
pub fn raise_memlock() {
    let rlim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels that account BPF memory to cgroups");
    }
}
