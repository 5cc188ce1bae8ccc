//! Network namespaces. The snapshot iterator and netlink `SOCK_DESTROY` both act in the network
//! namespace of the thread that uses them, while enforcer tracks a cgroup whatever namespace its
//! sockets live in (containers, pods). So the agent finds the namespaces of the watched cgroup's
//! processes and reads and destroys from inside each, on a short-lived thread that joins it.
//! This module knows namespaces only; the snapshot, the scan and the agent use it.
use std::{
    collections::HashSet,
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use rustix::thread::LinkNameSpaceType;

/// A network namespace and a path that opens it (`/proc/PID/ns/net` of a process in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The namespace's inode number, as `ls -L -i /proc/PID/ns/net` and `lsns` show it.
    pub inode: u64,
    pub handle: PathBuf,
}

const OWN: &str = "/proc/thread-self/ns/net";

impl Namespace {
    /// The caller's own namespace: reading there needs no thread, and must work.
    pub fn is_own(&self) -> bool {
        self.handle == Path::new(OWN)
    }
}

/// The caller's own namespace.
pub fn own() -> Result<Namespace> {
    let inode = std::fs::metadata(OWN).context("reading this thread's network namespace")?.ino();
    Ok(Namespace { inode, handle: PathBuf::from(OWN) })
}

/// The caller's namespace first, then every other namespace a process of `cgroup` (or a cgroup
/// below it) is in. Processes that vanish meanwhile are skipped. Sockets whose namespace has no
/// process left in the cgroup (orphans of a container that exited) cannot be reached.
pub fn of_cgroup(cgroup: &Path) -> Result<Vec<Namespace>> {
    let own = own()?;
    let mut seen = HashSet::from([own.inode]);
    let mut out = vec![own];
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(e.path());
            }
        }
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines() {
            let handle = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if let Ok(meta) = std::fs::metadata(&handle)
                && seen.insert(meta.ino())
            {
                out.push(Namespace { inode: meta.ino(), handle });
            }
        }
    }
    Ok(out)
}

/// Runs `f` inside namespace `ns`: directly for the caller's own, else on a thread that joins it
/// (a network namespace is per thread; the thread ends with `f`).
pub fn run_in<T: Send>(ns: &Namespace, f: impl FnOnce() -> T + Send) -> Result<T> {
    if ns.is_own() {
        return Ok(f());
    }
    let file = std::fs::File::open(&ns.handle).with_context(|| format!("opening {}", ns.handle.display()))?;
    if std::fs::metadata(&ns.handle).map(|m| m.ino()).ok() != Some(ns.inode) {
        bail!("{} no longer is network namespace {}", ns.handle.display(), ns.inode);
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            // setns(2) moves this short-lived thread only.
            rustix::thread::move_into_link_name_space(file.as_fd(), Some(LinkNameSpaceType::Network))
                .with_context(|| format!("entering network namespace {}", ns.inode))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| bail!("a thread in network namespace {} panicked", ns.inode))
    })
}

/// The namespaces of `cgroup`'s processes ([`of_cgroup`]), or the own one alone, with a warning,
/// if they cannot be listed.
pub fn of_cgroup_or_own(cgroup: &Path) -> Result<Vec<Namespace>> {
    match of_cgroup(cgroup) {
        Ok(n) => Ok(n),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "listing the cgroup's network namespaces; using the own one only");
            Ok(vec![own()?])
        }
    }
}

/// A network namespace: its inode (`lsns -t net`), a path to one (`/run/netns/NAME`,
/// `/proc/PID/ns/net`) or a name under /run/netns, as its inode.
pub fn parse_netns(s: &str) -> Result<u64, String> {
    if let Ok(inode) = s.parse() {
        return Ok(inode);
    }
    let path = if s.contains('/') { Path::new(s).to_owned() } else { Path::new("/run/netns").join(s) };
    std::fs::metadata(&path).map(|m| m.ino()).map_err(|e| {
        format!("`{s}` is not a network namespace inode, path or /run/netns name ({}: {e})", path.display())
    })
}
