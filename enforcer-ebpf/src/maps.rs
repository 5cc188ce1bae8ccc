//! The maps shared by all programs. Capacities are set by the loader (`--max-sockets`).
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use enforcer_common::{AgentInfo, DEFAULT_MAX_SOCKETS, SockRecord, stats};

/// Tracked sockets by cookie. Not preallocated: kernel memory grows with the sockets tracked,
/// not with the capacity.
#[map]
pub static SOCKETS: HashMap<u64, SockRecord> =
    HashMap::with_max_entries(DEFAULT_MAX_SOCKETS, BPF_F_NO_PREALLOC);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// Written by user space only (who runs, with which settings); no program reads it.
#[map]
pub static AGENT_INFO: Array<AgentInfo> = Array::with_max_entries(1, 0);

/// Adds one to a `STATS` counter. Per-CPU, so no atomics on the hot path.
#[inline(always)]
pub fn count(slot: u32) {
    if let Some(v) = STATS.get_ptr_mut(slot) {
        // SAFETY: the pointer is to this CPU's slot of a live map value.
        unsafe { *v += 1 };
    }
}
