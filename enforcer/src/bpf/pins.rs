//! The pin directory: what the agent leaves in bpffs for the CLI (`sockets`, `status`) to read.
//! This module owns the agent's record there, both ways: who runs (`AGENT_INFO`: pid, version,
//! start, layout version) and the settings it runs with (`AGENT_SETTINGS`: JSON, chunk by
//! chunk), written by the agent ([`write_record`]) and read by the CLI ([`PinDir::open`]). The
//! snapshot, the journal and the contained trie read their own maps through [`PinDir::map`]
//! and [`PinDir::pin`].
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use aya::{Ebpf, maps::Array};
use enforcer_common::{AGENT_INFO_MAGIC, AgentInfo, LAYOUT_VERSION, SETTINGS_CHUNK, SettingsChunk, names, stats};
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::{host::sys, model::units::unfixed};

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
    #[error("the settings the agent recorded in {0} do not parse ({1}): use the same enforcer version as the agent")]
    Settings(PathBuf, #[source] serde_json::Error),
    #[error("reading pinned map {path}: {source}")]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
}

/// A pin directory written by a running agent.
pub struct PinDir {
    dir: PathBuf,
    /// Read once when opened.
    info: AgentInfo,
    /// The agent's settings as it recorded them (JSON), read once when opened.
    settings: Vec<u8>,
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

    /// The path of pin `name` (a `names::PIN_*`) in this directory.
    pub fn pin(&self, name: &str) -> PathBuf {
        Self::path(&self.dir, name)
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
        let info = read_info(dir)?;
        let settings = read_settings(dir, &info)?;
        Ok(Self { dir: dir.to_owned(), info, settings })
    }

    /// The agent's info record, checked to be of this binary's layout when the pins were opened.
    pub fn info(&self) -> &AgentInfo {
        &self.info
    }

    /// The running agent's version.
    pub fn version(&self) -> String {
        unfixed(&self.info.version)
    }

    /// The settings the agent runs with, as the type that recorded them (`config::Settings`).
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, PinError> {
        serde_json::from_slice(&self.settings).map_err(|e| PinError::Settings(self.pin(names::PIN_SETTINGS), e))
    }

    /// The pinned map `pin` (a `names::PIN_*`) and its path, for the modules that own its layout.
    pub fn map(&self, pin: &str) -> Result<(PathBuf, aya::maps::Map), PinError> {
        let path = Self::path(&self.dir, pin);
        let map = open_map(&path)?;
        Ok((path, map))
    }

    /// The per-program counters, summed over CPUs.
    pub fn stats(&self) -> Result<[u64; stats::COUNT as usize], PinError> {
        let path = Self::path(&self.dir, names::PIN_STATS);
        sum_stats(&open_map(&path)?).map_err(|source| PinError::Map { path, source })
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

/// Who runs, in `AGENT_INFO`, and the settings as JSON, chunk by chunk, in `AGENT_SETTINGS`
/// (sized at load time to hold them twice over, so reloaded settings fit too). The chunks go
/// first and the length last, so a reader sees the old settings or the new ones.
pub fn write_record(ebpf: &mut Ebpf, started_unix_ms: u64, settings: &str) -> Result<()> {
    let info = AgentInfo {
        magic: AGENT_INFO_MAGIC,
        layout_version: LAYOUT_VERSION,
        pid: std::process::id(),
        settings_len: u32::try_from(settings.len()).context("the agent's settings are over 4 GiB")?,
        started_unix_ms,
        version: version_bytes(),
    };
    let map = ebpf.map_mut(names::MAP_AGENT_SETTINGS).context("eBPF object has no settings map")?;
    let mut chunks: Array<_, SettingsChunk> = Array::try_from(map)?;
    if settings.len().div_ceil(SETTINGS_CHUNK) > chunks.len() as usize {
        bail!("the settings ({} bytes) no longer fit in the pinned settings map: restart the agent", settings.len());
    }
    for (i, piece) in settings.as_bytes().chunks(SETTINGS_CHUNK).enumerate() {
        let mut chunk = SettingsChunk { bytes: [0; SETTINGS_CHUNK] };
        chunk.bytes[..piece.len()].copy_from_slice(piece);
        chunks.set(i as u32, chunk, 0).context("writing the agent's settings")?;
    }
    let map = ebpf.map_mut(names::MAP_AGENT_INFO).context("eBPF object has no info map")?;
    let mut array: Array<_, AgentInfo> = Array::try_from(map)?;
    array.set(0, info, 0).context("writing agent info")?;
    Ok(())
}

/// Reads the settings the agent recorded as JSON, chunk after chunk (parsed by the caller).
fn read_settings(dir: &Path, info: &AgentInfo) -> Result<Vec<u8>, PinError> {
    let path = PinDir::path(dir, names::PIN_SETTINGS);
    let map = open_map(&path)?;
    let err = |source| PinError::Map { path: path.clone(), source };
    let chunks: aya::maps::Array<_, SettingsChunk> = map.try_into().map_err(err)?;
    let len = info.settings_len as usize;
    let mut json = Vec::with_capacity(len);
    for i in 0..len.div_ceil(SETTINGS_CHUNK) {
        let chunk = chunks.get(&(i as u32), 0).map_err(err)?;
        json.extend_from_slice(&chunk.bytes[..(len - json.len()).min(SETTINGS_CHUNK)]);
    }
    Ok(json)
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

/// This binary's version as `AgentInfo` keeps it (cut to fit, NUL-padded).
fn version_bytes() -> [u8; 24] {
    let mut out = [0u8; 24];
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    let n = v.len().min(out.len());
    out[..n].copy_from_slice(&v[..n]);
    out
}

/// Slots of `AGENT_SETTINGS` for settings of this length: twice what they need, for a reload.
pub(super) fn settings_chunks(settings: &str) -> u32 {
    (2 * settings.len().div_ceil(SETTINGS_CHUNK)).max(2) as u32
}

/// Creates and locks the pin directory; refuses one a live agent holds and clears the pins of
/// an agent that died (of any version: nobody holds the lock).
pub fn prepare_pin_dir(dir: &Path) -> Result<std::fs::File> {
    sys::check_pin_dir_name(dir)?;
    sys::ensure_bpffs(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating pin directory {}", dir.display()))?;
    // Root only: the maps say which connections exist and who owns them. (Pinned objects are
    // 0600 already.)
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("restricting pin directory {} to root", dir.display()))?;
    let Some(lock) = sys::lock_dir(dir, true)? else {
        let pid = PinDir::open(dir).map(|p| p.info().pid.to_string());
        bail!(
            "another enforcer agent (pid {}) is running with pins in {}: stop it or choose another --pin-dir",
            pid.unwrap_or_else(|_| "unknown".into()),
            dir.display()
        )
    };
    let stale: Vec<PathBuf> = names::ALL_PINS.iter().map(|n| PinDir::path(dir, n)).filter(|p| p.exists()).collect();
    if !stale.is_empty() {
        tracing::warn!(dir = %dir.display(), "removing stale pins of an agent that is no longer running");
        for p in stale {
            std::fs::remove_file(&p).with_context(|| format!("removing stale pin {}", p.display()))?;
        }
    }
    Ok(lock)
}
