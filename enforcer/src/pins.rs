//! The pin directory: what the agent leaves in bpffs for the CLI (`sockets`, `status`) to read.
use std::path::{Path, PathBuf};

use enforcer_common::{
    AGENT_INFO_MAGIC, AgentInfo, ContainedAddr, Containment, KILL_RING, KillRecord, LAYOUT_VERSION, SnapshotEntry,
    kill_counters, names, stats,
};
use ipnet::IpNet;
use thiserror::Error;

use crate::sys;

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/enforcer";

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "no enforcer agent is running with pins in {0} (start one with `enforcer run`, or pass the agent's --pin-dir)"
    )]
    NotRunning(PathBuf),
    #[error("the agent that pinned {0} is no longer running; its pins are stale (a new `enforcer run` removes them)")]
    Stale(PathBuf),
    #[error(
        "{0} was pinned by another program or another enforcer layout (version {1}, this binary reads {LAYOUT_VERSION}): use the same enforcer version as the agent"
    )]
    Foreign(PathBuf, u32),
    #[error("reading pinned map {path}: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("running the snapshot iterator {path}: {source}")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {0} returned a partial record: agent and CLI versions differ")]
    Torn(PathBuf),
}

/// A pin directory written by a running agent.
pub struct PinDir {
    dir: PathBuf,
    /// Read once when opened.
    info: AgentInfo,
}

fn open_map(path: &Path) -> Result<aya::maps::Map, PinError> {
    let err = |source| PinError::Map { path: path.to_owned(), source };
    let data = aya::maps::MapData::from_pin(path).map_err(err)?;
    aya::maps::Map::from_map_data(data).map_err(err)
}

impl PinDir {
    pub fn path(dir: &Path, name: &str) -> PathBuf {
        dir.join(name)
    }

    /// Opens the pins of a live agent, or says why there is none.
    pub fn open(dir: &Path) -> Result<Self, PinError> {
        if !Self::path(dir, names::PIN_INFO).exists() {
            return Err(PinError::NotRunning(dir.to_owned()));
        }
        // A live agent holds the directory's lock; if we can take it, nobody does.
        if sys::lock_dir(dir, false).ok().flatten().is_some() {
            return Err(PinError::Stale(dir.to_owned()));
        }
        Ok(Self { dir: dir.to_owned(), info: read_info(dir)? })
    }

    /// The agent's info record, checked to be of this binary's layout when the pins were opened.
    pub fn info(&self) -> &AgentInfo {
        &self.info
    }

    /// The settings the agent recorded (JSON), `Null` if unreadable.
    pub fn recorded_settings(&self) -> serde_json::Value {
        serde_json::from_slice(&self.info.settings[..self.info.settings_len as usize]).unwrap_or_default()
    }

    /// A snapshot in every network namespace of the agent's cgroup (see `netns`), each socket
    /// with the inode of its namespace.
    pub fn snapshot(&self) -> anyhow::Result<Vec<(u64, SnapshotEntry)>> {
        let namespaces = match self.recorded_settings()["cgroup"].as_str() {
            Some(cgroup) => crate::netns::of_cgroup(Path::new(cgroup))?,
            None => vec![crate::netns::own()?],
        };
        crate::netns::snapshot(&Self::path(&self.dir, names::PIN_SNAPSHOT), &namespaces)
    }

    /// The per-program counters, summed over CPUs.
    pub fn stats(&self) -> Result<[u64; stats::COUNT as usize], PinError> {
        let path = Self::path(&self.dir, names::PIN_STATS);
        sum_stats(&open_map(&path)?).map_err(|source| PinError::Map { path, source })
    }

    /// The kill counters: destroyed, would_destroy, destroy_failed, total recorded.
    pub fn kill_counters(&self) -> Result<[u64; kill_counters::COUNT as usize], PinError> {
        let path = Self::path(&self.dir, names::PIN_KILL_COUNTERS);
        let map = open_map(&path)?;
        let err = |source| PinError::Map { path: path.clone(), source };
        let array: aya::maps::Array<_, u64> = map.try_into().map_err(err)?;
        let mut out = [0u64; kill_counters::COUNT as usize];
        for (slot, v) in out.iter_mut().enumerate() {
            *v = array.get(&(slot as u32), 0).map_err(err)?;
        }
        Ok(out)
    }

    /// The kept decisions, newest first.
    pub fn kills(&self) -> Result<Vec<KillRecord>, PinError> {
        let total = self.kill_counters()?[kill_counters::NEXT as usize];
        let path = Self::path(&self.dir, names::PIN_KILLS);
        let map = open_map(&path)?;
        let err = |source| PinError::Map { path: path.clone(), source };
        let ring: aya::maps::Array<_, KillRecord> = map.try_into().map_err(err)?;
        let kept = total.min(u64::from(KILL_RING));
        (0..kept).map(|i| ring.get(&(((total - 1 - i) % u64::from(KILL_RING)) as u32), 0).map_err(err)).collect()
    }

    /// The contained networks and the send buffer (bytes, as given to `SO_SNDBUF`) their new
    /// connections get.
    pub fn contained(&self) -> Result<Vec<(IpNet, u32)>, PinError> {
        let path = Self::path(&self.dir, names::PIN_CONTAINED);
        let map = open_map(&path)?;
        let err = |source| PinError::Map { path: path.clone(), source };
        let trie: aya::maps::LpmTrie<_, ContainedAddr, Containment> = map.try_into().map_err(err)?;
        let mut out = Vec::new();
        for item in trie.iter() {
            let (key, value) = item.map_err(err)?;
            // Only keys the agent wrote are there; one it cannot read back is skipped.
            if let Some(net) = crate::contained::net(&key) {
                out.push((net, value.sndbuf));
            }
        }
        Ok(out)
    }

    /// Records in the socket map (all namespaces) and its capacity.
    pub fn occupancy(&self) -> Result<(u64, u32), PinError> {
        let path = Self::path(&self.dir, names::PIN_SOCKETS);
        let err = |source| PinError::Map { path: path.clone(), source };
        let data = aya::maps::MapData::from_pin(&path).map_err(err)?;
        let capacity = data.info().map_err(err)?.max_entries();
        let map = aya::maps::Map::from_map_data(data).map_err(err)?;
        let hash: aya::maps::HashMap<_, u64, enforcer_common::SockRecord> = map.try_into().map_err(err)?;
        let used = hash.keys().filter(Result::is_ok).count() as u64;
        Ok((used, capacity))
    }
}

/// The `STATS` counters summed over CPUs, from the agent's own map or a pinned one.
pub fn sum_stats(map: &aya::maps::Map) -> Result<[u64; stats::COUNT as usize], aya::maps::MapError> {
    let array: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map)?;
    let mut out = [0u64; stats::COUNT as usize];
    for (slot, total) in out.iter_mut().enumerate() {
        *total = array.get(&(slot as u32), 0)?.iter().sum();
    }
    Ok(out)
}

/// Reads the agent's info record, checked to be of this binary's layout.
fn read_info(dir: &Path) -> Result<AgentInfo, PinError> {
    let path = PinDir::path(dir, names::PIN_INFO);
    let map = open_map(&path)?;
    let err = |source| PinError::Map { path: path.clone(), source };
    let array: aya::maps::Array<_, AgentInfo> = map.try_into().map_err(err)?;
    let info = array.get(&0, 0).map_err(err)?;
    if info.magic != AGENT_INFO_MAGIC || info.layout_version != LAYOUT_VERSION {
        return Err(PinError::Foreign(dir.to_owned(), info.layout_version));
    }
    Ok(info)
}

/// Reads a pinned `iter/tcp` link: each open runs the iterator afresh.
pub fn read_snapshot(path: &Path) -> Result<Vec<SnapshotEntry>, PinError> {
    let bytes = std::fs::read(path).map_err(|source| PinError::Snapshot { path: path.to_owned(), source })?;
    let size = std::mem::size_of::<SnapshotEntry>();
    if bytes.len() % size != 0 {
        return Err(PinError::Torn(path.to_owned()));
    }
    // The kernel restarts the iteration at each read() of the seq_file, so a socket that came
    // or went between two reads can show up twice: keep one entry per cookie.
    let mut seen = std::collections::HashSet::new();
    Ok(bytes
        .chunks_exact(size)
        .map(bytemuck::pod_read_unaligned::<SnapshotEntry>)
        .filter(|e| seen.insert(e.cookie))
        .collect())
}
