//! Reading the tracked sockets, by one of two walks ([`Walk`]) the loader chose:
//! - `Records`: the kernel walks the records map (`iter/bpf_sk_storage_map`), so one read sees
//!   the tracked connections of every network namespace at once, and nothing else;
//! - `Tcp`: where the kernel refuses map-element iterators, `iter/tcp` read from inside each
//!   network namespace of the watched cgroup (`netns`), which visits every TCP socket there.
//!
//! Two readers:
//! - [`Snapshot`]: every tracked connection, through the pinned link (the CLI);
//! - [`Scanner`]: the agent's scan. The kernel adds every connection up (`ScanSummary`, and the
//!   connections per remote when the rule needs them) and writes out only what the agent asks
//!   for: nothing while pressure is well below the threshold, the sockets that hold memory
//!   otherwise. Its buffers are reused, so a steady interval allocates nothing per socket.
use std::{
    collections::HashSet,
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use enforcer_common::{RemoteCount, RemoteKey, ScanParams, ScanSummary, SnapshotEntry, names, remote_key};
use thiserror::Error;

use crate::{
    iter_link::{self, IterLink},
    netns::{self, Namespace},
    pins::PinDir,
    socket::Socket,
};

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("running the snapshot iterator {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {0} returned a partial record: agent and CLI versions differ")]
    Torn(PathBuf),
}

/// How the snapshot and the scan reach the tracked sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// The records map, every namespace in one read (`iter/bpf_sk_storage_map`).
    Records,
    /// Each namespace's TCP sockets, read from inside it (`iter/tcp`).
    Tcp,
}

impl Walk {
    pub fn name(self) -> &'static str {
        match self {
            Self::Records => "records",
            Self::Tcp => "tcp",
        }
    }

    /// Where the loader pins this walk's snapshot link.
    pub fn pin(self) -> &'static str {
        match self {
            Self::Records => names::PIN_SNAPSHOT,
            Self::Tcp => names::PIN_SNAPSHOT_TCP,
        }
    }
}

/// Every tracked connection, of every network namespace of the watched cgroup.
pub struct Snapshot {
    /// The namespaces of the cgroup's processes, the caller's own first (where a socket's
    /// process and a destroy are looked for).
    pub namespaces: Vec<Namespace>,
    pub sockets: Vec<Socket>,
}

impl Snapshot {
    /// Reads the snapshot link the agent pinned in `dir` for the processes of `cgroup`: the
    /// records walk in one read, or the `iter/tcp` walk in each of their namespaces.
    pub fn read(dir: &Path, cgroup: &Path) -> Result<Self> {
        let namespaces = match netns::of_cgroup(cgroup) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "listing the cgroup's network namespaces; reading the own one only");
                vec![netns::own()?]
            }
        };
        let records = PinDir::path(dir, names::PIN_SNAPSHOT);
        let (walk, pin) = if records.exists() {
            (Walk::Records, records)
        } else {
            (Walk::Tcp, PinDir::path(dir, names::PIN_SNAPSHOT_TCP))
        };
        let mut bytes = Vec::new();
        read_walk(walk, &namespaces, &mut bytes, || File::open(&pin))
            .map_err(|source| SnapshotError::Read { path: pin.clone(), source })?;
        let mut entries = Vec::new();
        parse(&bytes, &mut entries, &mut HashSet::new()).map_err(|()| SnapshotError::Torn(pin.clone()))?;
        Ok(Self { namespaces, sockets: entries.iter().map(Socket::new).collect() })
    }

    /// The namespace of inode `inode`, if a process of the cgroup is in it.
    pub fn namespace(&self, inode: u64) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.inode == inode)
    }

    /// Bytes every tracked connection is charged, summed (the `tracked` pressure).
    pub fn charged(&self) -> u64 {
        self.sockets.iter().map(|s| s.charged).sum()
    }
}

/// Runs one walk into `out`: `open` makes a reader (each runs the iterator afresh), once for
/// the records walk, once inside each of `namespaces` for the `iter/tcp` walk. The caller's own
/// namespace must work; another may have gone away meanwhile and is skipped.
fn read_walk(
    walk: Walk,
    namespaces: &[Namespace],
    out: &mut Vec<u8>,
    open: impl Fn() -> std::io::Result<File> + Sync,
) -> std::io::Result<()> {
    out.clear();
    if walk == Walk::Records {
        return iter_link::read_all(&mut open()?, out);
    }
    for ns in namespaces {
        // An `iter/tcp` reader walks the namespace its maker was in; reading it can happen anywhere.
        match netns::run_in(ns, &open) {
            Ok(Ok(mut reader)) => match iter_link::read_all(&mut reader, out) {
                Ok(()) => {}
                Err(e) if ns.is_own() => return Err(e),
                Err(e) => tracing::debug!(netns = ns.inode, error = %e, "snapshot in namespace failed"),
            },
            Ok(Err(e)) if ns.is_own() => return Err(e),
            Ok(Err(e)) => tracing::debug!(netns = ns.inode, error = %e, "snapshot in namespace failed"),
            Err(e) => tracing::debug!(netns = ns.inode, error = %format!("{e:#}"), "namespace not entered"),
        }
    }
    Ok(())
}

/// Decodes `bytes` into `out`, one entry per cookie: a socket can be read twice when the
/// records map changed between two read()s of one iteration.
fn parse(bytes: &[u8], out: &mut Vec<SnapshotEntry>, seen: &mut HashSet<u64>) -> Result<(), ()> {
    let size = std::mem::size_of::<SnapshotEntry>();
    if !bytes.len().is_multiple_of(size) {
        return Err(());
    }
    out.clear();
    seen.clear();
    out.extend(
        bytes.chunks_exact(size).map(bytemuck::pod_read_unaligned::<SnapshotEntry>).filter(|e| seen.insert(e.cookie)),
    );
    Ok(())
}

/// The agent's scan: its link, the maps it talks to the program through, and its buffers.
pub struct Scanner {
    link: IterLink,
    walk: Walk,
    params: Array<MapData, ScanParams>,
    summary: Array<MapData, ScanSummary>,
    remote_counts: BpfHashMap<MapData, RemoteKey, RemoteCount>,
    generation: u64,
    bytes: Vec<u8>,
    entries: Vec<SnapshotEntry>,
    seen: HashSet<u64>,
    /// `group_v4`/`group_v6` of the last scan that counted remotes.
    groups: Option<(u32, u32)>,
}

impl Scanner {
    /// `link` runs the scan program of `walk`; the maps are the loader's `SCAN_PARAMS`,
    /// `SCAN_SUMMARY` and `REMOTE_COUNTS`.
    pub fn new(link: IterLink, walk: Walk, params: Map, summary: Map, remote_counts: Map) -> Result<Self> {
        Ok(Self {
            link,
            walk,
            params: params.try_into().context("SCAN_PARAMS is not an array of ScanParams")?,
            summary: summary.try_into().context("SCAN_SUMMARY is not an array of ScanSummary")?,
            remote_counts: remote_counts.try_into().context("REMOTE_COUNTS is not a hash of RemoteCount")?,
            generation: 0,
            bytes: Vec::new(),
            entries: Vec::new(),
            seen: HashSet::new(),
            groups: None,
        })
    }

    /// One scan in `mode` (a `scan_mode`): the summary over every tracked connection; the
    /// connections written out are then [`Scanner::entries`]. With `groups` (IPv4 and IPv6
    /// prefix lengths), it also counts connections per remote group ([`Scanner::remote_count`]).
    /// `namespaces` are those the `iter/tcp` walk reads in (the records walk needs none).
    pub fn scan(&mut self, mode: u32, groups: Option<(u32, u32)>, namespaces: &[Namespace]) -> Result<ScanSummary> {
        self.generation += 1;
        let (group_v4, group_v6) = groups.unwrap_or_default();
        let params = ScanParams {
            mode,
            count_remotes: u32::from(groups.is_some()),
            group_v4,
            group_v6,
            generation: self.generation,
        };
        self.params.set(0, params, 0).context("writing the scan's parameters")?;
        self.summary.set(0, ScanSummary::default(), 0).context("clearing the scan's summary")?;
        let link = &self.link;
        read_walk(self.walk, namespaces, &mut self.bytes, || link.reader()).context("running the scan iterator")?;
        parse(&self.bytes, &mut self.entries, &mut self.seen)
            .map_err(|()| anyhow::anyhow!("the scan returned a partial record"))?;
        let summary = self.summary.get(&0, 0).context("reading the scan's summary")?;
        self.groups = groups;
        Ok(summary)
    }

    pub fn walk(&self) -> Walk {
        self.walk
    }

    /// The connections the last scan wrote out.
    pub fn entries(&self) -> &[SnapshotEntry] {
        &self.entries
    }

    /// Connections of `e`'s remote group in the last scan that counted them (at least 1: the
    /// kernel could not keep a count when its map could not take the group).
    pub fn remote_count(&self, e: &SnapshotEntry) -> u64 {
        let Some((v4, v6)) = self.groups else { return 1 };
        let key = remote_key(e.record.family, e.record.remote_addr, v4, v6);
        match self.remote_counts.get(&key, 0) {
            Ok(c) if c.generation == self.generation => c.connections.max(1),
            _ => 1,
        }
    }
}
