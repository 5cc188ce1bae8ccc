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

/// Occurrences of rare events that have no `STATS` counter (metrics would count them once per
/// snapshot, not once per socket), kept only to sample their log lines (`count_rare`).
#[map]
pub static LOG_SAMPLES: PerCpuArray<u64> = PerCpuArray::with_max_entries(log_samples::COUNT, 0);

pub mod log_samples {
    /// The snapshot found a connection to adopt and could not record it (a full map).
    pub const ADOPT_FAILED: u32 = 0;
    pub const COUNT: u32 = 1;
}

/// Adds one to a `STATS` counter. Per-CPU, so no atomics on the hot path.
#[inline(always)]
pub fn count(slot: u32) {
    if let Some(v) = STATS.get_ptr_mut(slot) {
        // SAFETY: the pointer is to this CPU's slot of a live map value.
        unsafe { *v += 1 };
    }
}

/// Adds one to the `STATS` counter of a rare event and says whether to log this occurrence:
/// `Some(count on this CPU)` for the 1st, 2nd, 4th, 8th… So a flood of one event (a full map
/// under a connection storm, an error on every segment) costs a few dozen log records over the
/// agent's life, not one each; the counter keeps the exact number. For rare events only (errors,
/// a full map, adoptions), never on a hot path's success branch.
#[inline(always)]
pub fn count_rare(slot: u32) -> Option<u64> {
    sample(&STATS, slot)
}

/// `count_rare` for an event without a `STATS` counter (`log_samples`).
#[inline(always)]
pub fn sample_rare(slot: u32) -> Option<u64> {
    sample(&LOG_SAMPLES, slot)
}

#[inline(always)]
fn sample(counters: &PerCpuArray<u64>, slot: u32) -> Option<u64> {
    let v = counters.get_ptr_mut(slot)?;
    // SAFETY: the pointer is to this CPU's slot of a live map value.
    let n = unsafe {
        *v += 1;
        *v
    };
    // A power of two (n is at least 1).
    (n & n.wrapping_sub(1) == 0).then_some(n)
}
