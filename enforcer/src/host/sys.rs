//! What the agent needs from the host: root, BTF, a bpf filesystem, locks, the clock.
//! Each check fails with one line that says what to do.
use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Component, Path},
};

use anyhow::{Context, Result, bail};

/// The kernel's own BTF: enforcer needs it (field offsets, attach points).
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

// Filesystem magic numbers (`linux/magic.h`) are 32-bit, whatever the width of `f_type`.
pub(super) const CGROUP2_SUPER_MAGIC: u32 = 0x6367_7270;
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Where a bpf filesystem is mounted when none is.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

pub fn require_root(what: &str) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
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

pub(super) fn fs_magic(path: &Path) -> Result<u32> {
    let st = rustix::fs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(st.f_type as u32)
}

/// Makes sure `dir`'s parent is on a bpf filesystem, mounting one at /sys/fs/bpf if that is
/// where it should be and nothing is mounted there.
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    check_bpffs(dir)?;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if fs_magic(parent).ok() != Some(BPF_FS_MAGIC) {
        rustix::mount::mount("bpf", BPFFS_MOUNT, "bpf", rustix::mount::MountFlags::empty(), None)
            .with_context(|| format!("mounting a bpf filesystem at {BPFFS_MOUNT}"))?;
        tracing::info!(path = BPFFS_MOUNT, "mounted a bpf filesystem");
    }
    Ok(())
}

/// Whether [`ensure_bpffs`] would accept `dir`, mounting nothing: its parent is on a bpf
/// filesystem, or is /sys/fs/bpf (where one would be mounted).
pub fn check_bpffs(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if parent == Path::new(BPFFS_MOUNT) || fs_magic(parent).ok() == Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    bail!(
        "pin directory {} is not on a bpf filesystem: choose a --pin-dir under a bpffs mount such as {BPFFS_MOUNT}",
        dir.display()
    )
}

/// Refuses a pin directory bpffs would refuse to create: it allows no '.' in a name (mkdir fails
/// with a bare EPERM). Only what would be created on the bpf filesystem counts: the path of the
/// mount itself may well contain a dot.
pub fn check_pin_dir_name(dir: &Path) -> Result<()> {
    let dir = std::path::absolute(dir).with_context(|| format!("resolving pin directory {}", dir.display()))?;
    // What exists of the path; the rest is to be created. (On bpffs, a name with a dot fails
    // even to be looked up, so it never "exists".)
    let Some(existing) = dir.ancestors().find(|a| a.exists()) else { return Ok(()) };
    // /sys/fs/bpf may be where `ensure_bpffs` is about to mount one.
    if existing != Path::new(BPFFS_MOUNT) && fs_magic(existing).ok() != Some(BPF_FS_MAGIC) {
        return Ok(());
    }
    if let Some(name) = dotted_name(dir.strip_prefix(existing).unwrap_or(&dir)) {
        bail!(
            "pin directory name `{}` contains '.', which bpffs does not allow in names: choose another --pin-dir",
            name.to_string_lossy()
        );
    }
    Ok(())
}

/// The first name in `path` that contains a '.' (`.` and `..` themselves are not names).
fn dotted_name(path: &Path) -> Option<&OsStr> {
    path.components().find_map(|c| match c {
        Component::Normal(name) if name.as_bytes().contains(&b'.') => Some(name),
        _ => None,
    })
}

/// Takes an `flock` on directory `dir`: `Some(lock)` held until dropped, or `None` if another
/// process holds it. The agent holds its pin directory this way for as long as it runs, so a
/// crashed agent's pins are recognisable whatever its pid became (reused, other namespace).
pub fn lock_dir(dir: &Path, exclusive: bool) -> Result<Option<std::fs::File>> {
    use rustix::{fs::FlockOperation, io::Errno};
    let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    let op = if exclusive { FlockOperation::NonBlockingLockExclusive } else { FlockOperation::NonBlockingLockShared };
    match rustix::fs::flock(&f, op) {
        Ok(()) => Ok(Some(f)),
        Err(Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("locking {}", dir.display())),
    }
}

/// Removes the limit on locked memory for kernels that still charge BPF maps against it
/// (before 5.11); harmless elsewhere.
pub fn raise_memlock() {
    use rustix::process::{Resource, Rlimit};
    // `None` is RLIM_INFINITY.
    let unlimited = Rlimit { current: None, maximum: None };
    if let Err(e) = rustix::process::setrlimit(Resource::Memlock, unlimited) {
        tracing::debug!(error = %e, "could not raise RLIMIT_MEMLOCK; fine on kernels that account BPF memory to cgroups");
    }
}

/// This host's name (for what it tells a fleet); "unknown" if the kernel will not say.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The wall clock in milliseconds since the Unix epoch (0 before 1970), for records an operator
/// reads; intervals and stalls use the monotonic clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_a_dot_is_found() {
        assert_eq!(dotted_name(Path::new("enforcer")), None);
        assert_eq!(dotted_name(Path::new("a.b")), Some(OsStr::new("a.b")));
        assert_eq!(dotted_name(Path::new("x/.hidden/y")), Some(OsStr::new(".hidden")));
        assert_eq!(dotted_name(Path::new("x/../y/./z")), None);
        assert_eq!(dotted_name(Path::new("")), None);
    }

    #[test]
    fn only_names_created_on_bpffs_count() {
        // Not a bpf filesystem: dots are the business of whatever fails later.
        let tmp = std::env::temp_dir().join("enforcer.test").join("pins.d");
        assert!(check_pin_dir_name(&tmp).is_ok());
        if Path::new(BPFFS_MOUNT).is_dir() {
            let err = check_pin_dir_name(Path::new("/sys/fs/bpf/a.b/enforcer")).expect_err("a.b");
            assert!(err.to_string().contains("`a.b` contains '.'"), "{err}");
            assert!(check_pin_dir_name(Path::new("/sys/fs/bpf/enforcer-test")).is_ok());
        }
    }
}
