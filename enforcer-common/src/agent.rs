//! The agent's record in its pins: who runs (`AGENT_INFO`) and its settings (`AGENT_SETTINGS`).

pub const AGENT_INFO_MAGIC: u32 = 0x656e_6663; // "enfc"

/// Written once by the agent into the single slot of `AGENT_INFO`: who pinned this directory,
/// so `enforcer status` can show it and detect a stale or foreign pin.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentInfo {
    pub magic: u32,
    pub layout_version: u32,
    pub pid: u32,
    /// Bytes of JSON settings in `AGENT_SETTINGS`, chunk after chunk.
    pub settings_len: u32,
    /// Wall clock at start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The agent's version (`CARGO_PKG_VERSION`), NUL-padded.
    pub version: [u8; 24],
}

/// Bytes of one slot of `AGENT_SETTINGS`. The agent sizes that array at load time to hold its
/// settings whatever their length (many `--protect-cidr`s make them long).
pub const SETTINGS_CHUNK: usize = 4096;

/// One slot of `AGENT_SETTINGS`: a piece of the agent's settings as JSON.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug)]
pub struct SettingsChunk {
    pub bytes: [u8; SETTINGS_CHUNK],
}

const _: () = assert!(core::mem::size_of::<AgentInfo>() == 48);
const _: () = assert!(core::mem::size_of::<SettingsChunk>() == SETTINGS_CHUNK);

user_pod!(AgentInfo, SettingsChunk);
