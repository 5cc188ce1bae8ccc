//! The maps shared by all programs. Capacities are set by the loader (`--max-sockets`).
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use enforcer_common::{
    AgentInfo, CONTAINED_CAPACITY, ContainedAddr, Containment, DEFAULT_MAX_SOCKETS, KILL_RING, KillRecord,
    SettingsChunk, SockRecord, kill_counters, stats,
};

/// Tracked sockets by cookie. Not preallocated: kernel memory grows with the sockets tracked,
/// not with the capacity.
#[map]
pub static SOCKETS: HashMap<u64, SockRecord> = HashMap::with_max_entries(DEFAULT_MAX_SOCKETS, BPF_F_NO_PREALLOC);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Written by user space only (who runs, with which settings); no program reads them. The
/// loader sizes `AGENT_SETTINGS` to the agent's settings.
#[map]
pub static AGENT_INFO: Array<AgentInfo> = Array::with_max_entries(1, 0);
#[map]
pub static AGENT_SETTINGS: Array<SettingsChunk> = Array::with_max_entries(1, 0);

/// The agent's recent decisions (a ring) and their counters; written by user space only, kept
/// here so they live and are pinned with the other maps.
#[map]
pub static KILLS: Array<KillRecord> = Array::with_max_entries(KILL_RING, 0);
#[map]
pub static KILL_COUNTERS: Array<u64> = Array::with_max_entries(kill_counters::COUNT, 0);

/// Remotes (addresses or prefixes) whose new connections get a small send buffer; written by
/// user space, read by sock_ops once per established connection. An LPM trie is never
/// preallocated (aya-ebpf adds `BPF_F_NO_PREALLOC`).
#[map]
pub static CONTAINED: LpmTrie<ContainedAddr, Containment> = LpmTrie::with_max_entries(CONTAINED_CAPACITY, 0);

/// Adds one to a `STATS` counter. Per-CPU, so no atomics on the hot path.
#[inline(always)]
pub fn count(slot: u32) {
    if let Some(v) = STATS.get_ptr_mut(slot) {
        // SAFETY: the pointer is to this CPU's slot of a live map value.
        unsafe { *v += 1 };
    }
}
