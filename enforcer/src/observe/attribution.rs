//! Who a socket belongs to, in an operator's words: its network namespace (inode), its cgroup's
//! path (which names the pod or service; the kernel gives only the id) and a process holding it
//! (pid and comm). The agent attributes each socket it decides on; `enforcer sockets` every row
//! (the process only with `-p`, as it costs a lookup per socket).
//!
//! - cgroup id → path: the id is the inode of the cgroup's directory on the cgroup2 mount, so
//!   one walk of the mount maps every id; kept, and walked again on a miss (at most once a
//!   second: a cgroup that is already gone must not cost a walk per socket).
//! - socket → process: the agent's holders walk (`iter/task_file`, pinned for the CLI) lists the
//!   process behind every descriptor of a tracked socket by cookie, in one read (with 102,200
//!   sockets, `sockets -p` takes 0.21 s more than without `-p` this way, 0.59 s more through
//!   `/proc`). Kept as an index and read again on a miss (at most once a second); after a read
//!   that failed, `/proc` answers for a second.
//! - Without that walk (no agent's pin, or a kernel that refuses it): netlink
//!   `SOCK_DIAG_BY_FAMILY` gives the socket's inode (from inside its namespace, by 4-tuple and
//!   cookie), and the `socket:[INODE]` link in `/proc/PID/fd` its holder. Only the processes of
//!   the socket's own cgroup are scanned first (a socket is charged to the cgroup of the process
//!   that made it, which usually still holds it); then every process. Each scan is kept as an
//!   inode index and reused while it answers.
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use enforcer_common::Holder;
use serde::Serialize;

use crate::{
    bpf::iter_link::{self, IterLink},
    host::{
        cgroup,
        netns::{self, Namespace},
        sock_diag::Netlink,
    },
    model::{socket::Socket, units::unfixed},
};

/// A cgroup walk or a process scan that missed is not repeated sooner than this.
const RESCAN_AFTER: Duration = Duration::from_secs(1);

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub comm: String,
}

/// What is known of a socket's owner.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// Inode of its network namespace (`lsns -t net`).
    pub netns: u64,
    pub cgroup_id: u64,
    /// The cgroup's path below the cgroup2 mount (`/system.slice/nginx.service`), if the
    /// cgroup still exists.
    pub cgroup: Option<String>,
    /// A process holding it (the lowest pid when several do), if one was found: none holds an
    /// orphan (closed by its application, still draining), and one in another cgroup may be
    /// missed.
    pub process: Option<Process>,
}

/// Cgroup ids to paths, from walks of the cgroup2 mount.
#[derive(Debug)]
pub struct CgroupPaths {
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    walked: Option<Instant>,
}

impl CgroupPaths {
    pub fn new() -> Self {
        // Without a cgroup2 mount no socket has a path; that is no reason to fail a listing.
        Self { root: cgroup::cgroup2_root().ok(), paths: HashMap::new(), walked: None }
    }

    /// The cgroup2 mount, when there is one.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The path of cgroup `id` below the mount (`/` for the root cgroup).
    pub fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.paths.get(&id) {
            return Some(p.clone());
        }
        if self.walked.is_some_and(|t| t.elapsed() < RESCAN_AFTER) {
            return None;
        }
        self.walk();
        self.paths.get(&id).cloned()
    }

    fn walk(&mut self) {
        self.walked = Some(Instant::now());
        let Some(root) = self.root.clone() else { return };
        self.paths.clear();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            let rel = dir.strip_prefix(&root).map(|r| format!("/{}", r.display())).unwrap_or_default();
            self.paths.insert(meta.ino(), rel);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            dirs.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }

    /// `path` as this module writes cgroup paths: below the mount, from `/`. Takes a path on
    /// the mount (`/sys/fs/cgroup/system.slice`) or one already below it (`/system.slice`).
    pub fn relative(&self, path: &Path) -> String {
        let below = self.root.as_deref().and_then(|root| path.strip_prefix(root).ok());
        let rel = below.unwrap_or(path).display().to_string();
        format!("/{}", rel.trim_matches('/'))
    }
}

impl Default for CgroupPaths {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether cgroup path `path` is `dir` or below it (whole components: `/a/b` is not below `/a/bc`).
pub fn cgroup_within(path: &str, dir: &str) -> bool {
    let dir = dir.trim_end_matches('/');
    dir.is_empty() || path == dir || path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// Sockets to their holders, from one scan of processes' descriptors (keyed by socket inode)
/// or one holders walk (keyed by cookie).
struct HolderIndex {
    built: Instant,
    holders: HashMap<u64, Process>,
}

impl HolderIndex {
    fn new() -> Self {
        Self { built: Instant::now(), holders: HashMap::new() }
    }

    /// Notes `pid` as a holder of socket `key`; the lowest pid wins when several hold it.
    fn add(&mut self, key: u64, pid: u32, comm: impl FnOnce() -> String) {
        if self.holders.get(&key).is_some_and(|p| p.pid <= pid) {
            return;
        }
        self.holders.insert(key, Process { pid, comm: comm() });
    }

    /// By socket inode, from the `socket:[INODE]` links in `/proc/PID/fd` of `pids`.
    fn from_fds(pids: impl Iterator<Item = u32>) -> Self {
        let mut index = Self::new();
        for pid in pids {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
            let mut comm = None;
            for fd in fds.flatten() {
                let Ok(link) = std::fs::read_link(fd.path()) else { continue };
                let Some(inode) = socket_inode(&link) else { continue };
                let comm = comm.get_or_insert_with(|| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim_end().to_owned()
                });
                index.add(inode, pid, || comm.clone());
            }
        }
        index
    }

    /// By cookie, from what the holders walk wrote.
    fn from_walk(bytes: &[u8]) -> Self {
        let mut index = Self::new();
        for chunk in bytes.chunks_exact(std::mem::size_of::<Holder>()) {
            let h: Holder = bytemuck::pod_read_unaligned(chunk);
            index.add(h.cookie, h.tgid, || unfixed(&h.comm));
        }
        index
    }

    fn fresh(&self) -> bool {
        self.built.elapsed() < RESCAN_AFTER
    }
}

/// Where the holders walk is read from.
pub enum HolderWalk {
    /// The agent's own link.
    Link(IterLink),
    /// The agent's pin, read by the CLI.
    Pin(PathBuf),
}

impl HolderWalk {
    fn read(&self) -> std::io::Result<Vec<u8>> {
        let mut reader = match self {
            Self::Link(link) => link.reader()?,
            Self::Pin(path) => std::fs::File::open(path)?,
        };
        let mut bytes = Vec::new();
        iter_link::read_all(&mut reader, &mut bytes)?;
        Ok(bytes)
    }
}

/// The inode in a `socket:[INODE]` descriptor link.
fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

fn cgroup_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Attributes sockets, keeping what it learnt (cgroup paths, holders walks or descriptor scans,
/// one netlink socket per namespace) from one call to the next.
#[derive(Default)]
pub struct Attributor {
    pub cgroups: CgroupPaths,
    /// The holders walk, when there is one; and what its last read found.
    walk: Option<HolderWalk>,
    by_cookie: Option<HolderIndex>,
    /// When a read of the walk last failed (then /proc is scanned until `RESCAN_AFTER`).
    walk_failed: Option<Instant>,
    /// Per namespace inode: a netlink socket made inside it (it keeps that namespace).
    diag: HashMap<u64, Netlink>,
    /// Scans of one cgroup's processes, by cgroup id; 0 is every process.
    fds: HashMap<u64, HolderIndex>,
}

impl Attributor {
    /// Finds processes by scanning `/proc` (see the module's documentation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Finds processes with the holders walk, and by scanning `/proc` if reading it fails.
    pub fn with_walk(walk: HolderWalk) -> Self {
        Self { walk: Some(walk), ..Self::default() }
    }

    /// Namespace and cgroup: cheap (a walk of the cgroup mount now and then).
    pub fn place(&mut self, s: &Socket) -> Attribution {
        Attribution { netns: s.netns, cgroup_id: s.cgroup_id, cgroup: self.cgroups.path(s.cgroup_id), process: None }
    }

    /// Namespace, cgroup and a process holding `s`, which lives in namespace `ns` (from the
    /// snapshot that saw it; `None` if gone). Must run before a destroy: a destroyed socket is
    /// unhashed and netlink no longer finds it.
    pub fn attribute(&mut self, s: &Socket, ns: Option<&Namespace>) -> Attribution {
        let mut a = self.place(s);
        a.process = ns.and_then(|ns| self.process(s, ns, a.cgroup.as_deref()));
        a
    }

    fn process(&mut self, s: &Socket, ns: &Namespace, cgroup: Option<&str>) -> Option<Process> {
        // When the walk cannot be read, this lookup goes through /proc (see `by_walk`).
        if self.walk.is_some()
            && let Ok(found) = self.by_walk(s.raw.cookie)
        {
            return found;
        }
        let inode = match self.inode(s, ns) {
            Ok(Some(inode)) if inode != 0 => u64::from(inode),
            Ok(_) => return None,
            Err(e) => {
                tracing::debug!(netns = ns.inode, error = %format!("{e:#}"), "looking up a socket's inode");
                return None;
            }
        };
        let own = cgroup.and_then(|c| self.cgroups.root().map(|r| r.join(c.trim_start_matches('/'))));
        if let Some(dir) = own
            && let Some(p) = self.holder(s.cgroup_id, inode, || cgroup_pids(&dir))
        {
            return Some(p);
        }
        self.holder(0, inode, all_pids)
    }

    /// The holder of the socket with `cookie`, from the holders walk (read again, once per
    /// `RESCAN_AFTER`, on a miss); `Ok(None)` when it has none (or there is no walk), `Err`
    /// when the walk could not be read (in the last `RESCAN_AFTER`).
    fn by_walk(&mut self, cookie: u64) -> std::io::Result<Option<Process>> {
        let Some(walk) = &self.walk else { return Ok(None) };
        if let Some(index) = &self.by_cookie {
            if let Some(p) = index.holders.get(&cookie) {
                return Ok(Some(p.clone()));
            }
            if index.fresh() {
                return Ok(None);
            }
        }
        // After a failed read, /proc answers until the walk is tried again.
        if self.walk_failed.is_some_and(|t| t.elapsed() < RESCAN_AFTER) {
            return Err(std::io::Error::other("the last read failed"));
        }
        let bytes = match walk.read() {
            Ok(bytes) => bytes,
            Err(e) => {
                if self.walk_failed.is_none() {
                    tracing::warn!(error = %e, "reading the holders walk failed; attribution scans /proc meanwhile");
                }
                self.walk_failed = Some(Instant::now());
                return Err(e);
            }
        };
        let index = HolderIndex::from_walk(&bytes);
        self.walk_failed = None;
        let found = index.holders.get(&cookie).cloned();
        self.by_cookie = Some(index);
        Ok(found)
    }

    /// The holder of `inode` in scan `key`, scanning again (once per `RESCAN_AFTER`) on a miss.
    fn holder(&mut self, key: u64, inode: u64, pids: impl FnOnce() -> Vec<u32>) -> Option<Process> {
        if let Some(index) = self.fds.get(&key) {
            if let Some(p) = index.holders.get(&inode) {
                return Some(p.clone());
            }
            if index.fresh() {
                return None;
            }
        }
        let index = HolderIndex::from_fds(pids().into_iter());
        let found = index.holders.get(&inode).cloned();
        self.fds.insert(key, index);
        found
    }

    fn inode(&mut self, s: &Socket, ns: &Namespace) -> anyhow::Result<Option<u32>> {
        let nl = match self.diag.entry(ns.inode) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(netns::run_in(ns, Netlink::open)??),
        };
        Ok(nl.inode(&s.raw)?)
    }

    /// Forgets what belongs to namespaces and cgroups no longer in use, so a long-running
    /// agent holds no netlink socket of a namespace that is gone (it would keep it alive).
    pub fn retain_namespaces(&mut self, alive: impl Fn(u64) -> bool) {
        self.diag.retain(|inode, _| alive(*inode));
        self.fds.retain(|_, index| index.fresh());
        if self.by_cookie.as_ref().is_some_and(|index| !index.fresh()) {
            self.by_cookie = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::units::fixed;

    #[test]
    fn cgroup_prefixes_match_whole_components() {
        assert!(cgroup_within("/a/b", "/a"));
        assert!(cgroup_within("/a", "/a/"));
        assert!(cgroup_within("/anything", "/"));
        assert!(!cgroup_within("/a/bc", "/a/b"));
        assert!(!cgroup_within("/b", "/a"));
    }

    #[test]
    fn a_holders_walk_names_the_lowest_pid_of_each_socket() {
        let holder = |cookie, tgid, comm: &str| Holder { cookie, tgid, _pad: 0, comm: fixed(comm) };
        let walk = [holder(7, 300, "worker"), holder(7, 200, "nginx"), holder(7, 250, "other"), holder(9, 5, "sshd")];
        let mut bytes: Vec<u8> = walk.iter().flat_map(|h| bytemuck::bytes_of(h).to_vec()).collect();
        // A short read's tail is no holder.
        bytes.extend_from_slice(&[1, 2, 3]);
        let index = HolderIndex::from_walk(&bytes);
        assert_eq!(index.holders.len(), 2);
        assert_eq!(index.holders[&7], Process { pid: 200, comm: "nginx".into() });
        assert_eq!(index.holders[&9], Process { pid: 5, comm: "sshd".into() });
    }

    #[test]
    fn reads_socket_links() {
        assert_eq!(socket_inode(Path::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(Path::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[test]
    fn relative_cgroup_paths() {
        let c = CgroupPaths { root: Some("/sys/fs/cgroup".into()), paths: HashMap::new(), walked: None };
        assert_eq!(c.relative(Path::new("/sys/fs/cgroup/system.slice/x.service")), "/system.slice/x.service");
        assert_eq!(c.relative(Path::new("/system.slice/")), "/system.slice");
        assert_eq!(c.relative(Path::new("/sys/fs/cgroup")), "/");
    }
}
