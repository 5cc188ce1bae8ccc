//! cgroup v2: the mount, a directory's id and depth, the ids of a tree of cgroups.
use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use super::sys::{CGROUP2_SUPER_MAGIC, fs_magic};

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

/// Cgroup ids of every directory in `dirs` and every cgroup below them. A restarted service
/// gets a new cgroup (a new id), and new children appear: callers resolve them again.
pub fn tree_ids_of_all(dirs: &[PathBuf]) -> anyhow::Result<HashSet<u64>> {
    let mut ids = HashSet::new();
    for dir in dirs {
        ids.extend(tree_ids(dir).with_context(|| dir.display().to_string())?);
    }
    Ok(ids)
}

/// Cgroup ids of `dir` and every cgroup below it.
pub fn tree_ids(dir: &std::path::Path) -> anyhow::Result<Vec<u64>> {
    let mut ids = vec![cgroup2_dir(dir)?];
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            ids.extend(tree_ids(&entry.path())?);
        }
    }
    Ok(ids)
}
