//! One snapshot: every tracked socket in every network namespace of the watched cgroup's
//! processes, read through the pinned `iter/tcp` link from inside each namespace (`netns`).
//! The agent (`commands::run`) and the CLI (`pins::PinDir::snapshot`) both read it here.
use std::{collections::HashSet, path::Path};

use anyhow::Result;
use enforcer_common::SnapshotEntry;
use thiserror::Error;

use crate::{
    netns::{self, Namespace},
    socket::Socket,
};

#[derive(Debug, Error)]
pub enum SnapshotError {
    #[error("running the snapshot iterator {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {0} returned a partial record: agent and CLI versions differ")]
    Torn(std::path::PathBuf),
}

pub struct Snapshot {
    /// The namespaces it covers, the caller's own first.
    pub namespaces: Vec<Namespace>,
    pub sockets: Vec<Socket>,
}

impl Snapshot {
    /// Reads the iterator pinned at `pin` in the caller's namespace and in every namespace a
    /// process of `cgroup` (or a cgroup below it) is in. If the cgroup's namespaces cannot be
    /// listed, the caller's own is read alone.
    pub fn of_cgroup(pin: &Path, cgroup: &Path) -> Result<Self> {
        let namespaces = match netns::of_cgroup(cgroup) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "listing the cgroup's network namespaces; reading the own one only");
                vec![netns::own()?]
            }
        };
        Self::read(pin, namespaces)
    }

    /// Reads the iterator pinned at `pin` in each of `namespaces`. The caller's own namespace
    /// must work; another may have gone away meanwhile and is skipped.
    pub fn read(pin: &Path, namespaces: Vec<Namespace>) -> Result<Self> {
        let mut sockets = Vec::new();
        for ns in &namespaces {
            match netns::run_in(ns, || read_entries(pin)) {
                Ok(Ok(entries)) => sockets.extend(entries.iter().map(|e| Socket::new(e, ns.inode))),
                Ok(Err(e)) if ns.is_own() => return Err(e.into()),
                Err(e) if ns.is_own() => return Err(e),
                Ok(Err(e)) => tracing::debug!(netns = ns.inode, error = %e, "snapshot in namespace failed"),
                Err(e) => tracing::debug!(netns = ns.inode, error = %format!("{e:#}"), "namespace not entered"),
            }
        }
        Ok(Self { namespaces, sockets })
    }

    /// The namespace of inode `inode`, if this snapshot covered it.
    pub fn namespace(&self, inode: u64) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.inode == inode)
    }
}

/// Reads the pinned `iter/tcp` link at `path` in the caller's namespace: each open runs the
/// iterator afresh.
pub fn read_entries(path: &Path) -> Result<Vec<SnapshotEntry>, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Read { path: path.to_owned(), source })?;
    let size = std::mem::size_of::<SnapshotEntry>();
    if bytes.len() % size != 0 {
        return Err(SnapshotError::Torn(path.to_owned()));
    }
    // The kernel restarts the iteration at each read() of the seq_file, so a socket that came
    // or went between two reads can show up twice: keep one entry per cookie.
    let mut seen = HashSet::new();
    Ok(bytes
        .chunks_exact(size)
        .map(bytemuck::pod_read_unaligned::<SnapshotEntry>)
        .filter(|e| seen.insert(e.cookie))
        .collect())
}
