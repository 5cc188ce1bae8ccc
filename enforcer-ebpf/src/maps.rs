//! The maps shared by all programs.
use core::ffi::c_void;

use aya_ebpf::{
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray},
};
use enforcer_common::{
    AgentInfo, CONTAINED_CAPACITY, CONTAINED_LABEL_CAPACITY, ContainedAddr, ContainedLabel, Containment, KILL_RING,
    KillRecord, LAST_RECV_CAPACITY, LastRecv, RELAYS_CAPACITY, REMOTE_COUNTS_CAPACITY, REVISIT_CAPACITY, RelayOut,
    RemoteCount, RemoteKey, RevisitKey, ScanParams, ScanSummary, SettingsChunk, SnapshotEntry, SockRecord,
    kill_counters, stats,
};

/// The tracked sockets' records, in socket-local storage: a record lives in its socket, so the
/// kernel frees it with the socket (no delete on any hot path, no tracepoint on destruction),
/// a lookup is a pointer walk from the socket rather than a hash, and there is no capacity to
/// fill. The snapshot walks this map (`iter/bpf_sk_storage_map`), visiting tracked sockets only.
#[btf_map]
pub static RECORDS: SkStorage<SockRecord> = SkStorage::new();

/// 1 where the walks visit every TCP socket (`iter/tcp`): sock_ops leaves the record to the first
/// walk that sees the connection (`RECORD_FIRST_SEEN`), so a connection that ends before any
/// walk, as most short ones do, never costs one. 0 (the default) where the walks visit the
/// records map, which would not show an unrecorded connection: sock_ops records each at
/// establishment. Written by the loader before sock_ops is attached; the default is the safe
/// side, where a missed write costs short connections their record, not the agent its view.
#[map]
pub static RECORD_AT_FIRST_SIGHT: Array<u32> = Array::with_max_entries(1, 0);

/// The record of `sk` (any socket pointer the helper accepts), `None` if it has none. With
/// `create`, makes one from `init` when it has none.
///
/// # Safety
/// `sk` must be a socket pointer the verifier accepts for `bpf_sk_storage_get` (a BTF `struct
/// sock *`, or a sock_ops context's full socket).
#[inline(always)]
pub unsafe fn record(sk: *mut c_void, init: Option<&SockRecord>) -> Option<&'static mut SockRecord> {
    let map = core::ptr::from_ref(&RECORDS).cast_mut().cast::<c_void>();
    let (value, flags) = match init {
        Some(r) => {
            (core::ptr::from_ref(r).cast_mut().cast::<c_void>(), aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE as u64)
        }
        None => (core::ptr::null_mut(), 0),
    };
    // SAFETY: `map` is the storage map above; the caller vouches for `sk`; `value` is null or
    // a record on the caller's stack that the helper copies.
    let rec = unsafe { bpf_sk_storage_get(map, sk, value, flags) }.cast::<SockRecord>();
    // SAFETY: the helper returns null or a pointer to the socket's record, which lives as
    // long as the socket (longer than this program run).
    unsafe { rec.as_mut() }
}

/// The agent's parameters for its own scan (`enforcer_scan`), written before each read.
#[map]
pub static SCAN_PARAMS: Array<ScanParams> = Array::with_max_entries(1, 0);
/// What the agent's scan adds up over every tracked socket, whether it emits the socket or not.
/// Zeroed by the agent before each read; one reader at a time (the pin directory's lock).
#[map]
pub static SCAN_SUMMARY: Array<ScanSummary> = Array::with_max_entries(1, 0);
/// Connections per remote group, counted by the scan when the rule needs them (fairness per
/// remote, a per-remote cap). Entries of older scans are recognised by their generation and
/// recycled, so the agent never clears it; LRU so that churn through many remotes cannot fill it.
#[map]
pub static REMOTE_COUNTS: LruHashMap<RemoteKey, RemoteCount> = LruHashMap::with_max_entries(REMOTE_COUNTS_CAPACITY, 0);

#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::COUNT, 0);

/// The revisit's candidates (the last walk's, grouped by namespace), written by the agent when
/// a walk of every socket chose them.
#[map]
pub static REVISIT_KEYS: Array<RevisitKey> = Array::with_max_entries(REVISIT_CAPACITY, 0);
/// What the revisit found, at its candidate's index: the entry as a walk would write it, or a
/// zero cookie for a candidate that is gone.
#[map]
pub static REVISIT_OUT: Array<SnapshotEntry> = Array::with_max_entries(REVISIT_CAPACITY, 0);
/// `REVISIT_NEXT`: the candidate the next run looks up. The agent sets it before each test run;
/// the runs of one test run follow each other on one CPU.
#[map]
pub static REVISIT_CURSOR: Array<u32> = Array::with_max_entries(1, 0);

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
/// Why fleet decisions contain their networks ("origin/scenario"), indexed by
/// `Containment::label`; written and read by user space only, pinned beside the trie.
#[map]
pub static CONTAINED_LABELS: Array<ContainedLabel> = Array::with_max_entries(CONTAINED_LABEL_CAPACITY, 0);

/// Proxy mode: where each tracked socket's bytes were relayed last, by cookie. A hash, not the
/// record, because the relay is seen when the bytes are written to the other socket, where the
/// reading socket's record cannot be reached; and it outlives that other socket, which is how an
/// upstream whose client left shows. LRU: sockets that relayed longest ago make room.
#[map]
pub static RELAYS: LruHashMap<u64, RelayOut> = LruHashMap::with_max_entries(RELAYS_CAPACITY, 0);

/// Proxy mode: each thread's last read from a tracked socket, which a write by the same thread
/// soon after relays.
#[map]
pub static LAST_RECV: LruHashMap<u32, LastRecv> = LruHashMap::with_max_entries(LAST_RECV_CAPACITY, 0);

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
