//! Reading the tracked sockets, by one of two walks ([`Walk`]) the loader chose:
//! - `Records`: the kernel walks the records map (`iter/bpf_sk_storage_map`), so one read sees
//!   the tracked connections of every network namespace at once, and nothing else;
//! - `Tcp`: where the kernel refuses map-element iterators, `iter/tcp` read from inside each
//!   network namespace of the watched cgroup (`netns`), which visits every TCP socket there.
//!
//! Two readers: [`Snapshot`] here, every tracked connection through the pinned link (the
//! CLI), and the agent's [`Scanner`](super::scan::Scanner), which walks the same way.
use std::{
    collections::HashSet,
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::Result;
use enforcer_common::{SnapshotEntry, names};
use thiserror::Error;

use super::{iter_link, pins::PinDir};
use crate::{
    host::netns::{self, Namespace},
    model::socket::Socket,
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
    /// Reads the snapshot link the agent pinned in `pins` for the processes of `cgroup`: the
    /// records walk in one read, or the `iter/tcp` walk in each of their namespaces.
    pub fn read(pins: &PinDir, cgroup: &Path) -> Result<Self> {
        let namespaces = netns::of_cgroup_or_own(cgroup)?;
        let records = pins.pin(names::PIN_SNAPSHOT);
        let (walk, pin) =
            if records.exists() { (Walk::Records, records) } else { (Walk::Tcp, pins.pin(names::PIN_SNAPSHOT_TCP)) };
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
pub(super) fn read_walk(
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
pub(super) fn parse(bytes: &[u8], out: &mut Vec<SnapshotEntry>, seen: &mut HashSet<u64>) -> Result<(), ()> {
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
