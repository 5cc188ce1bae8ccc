//! Layouts and names shared by the eBPF programs (`enforcer-ebpf`) and user space (`enforcer`).
//!
//! Every type is `#[repr(C)]` with explicit padding and no `bool`, so that it is plain old data
//! on both sides. Timestamps are `bpf_ktime_get_ns()` (CLOCK_MONOTONIC, nanoseconds); addresses
//! are kept in network byte order exactly as the kernel hands them over; ports in host order.
#![no_std]

/// Bumped whenever a layout below changes: a CLI must not read pins of an agent built with
/// another layout.
pub const LAYOUT_VERSION: u32 = 18;

/// `aya::Pod` for each type (user space only), which must derive `bytemuck::Pod`: invoked beside
/// each type, with its size assert. Defined before the modules, which see it in textual scope.
macro_rules! user_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            const _: () = crate::derives_pod::<$t>();
            // SAFETY: aya::Pod asks what bytemuck::Pod asks: Copy, no padding, any bit pattern
            // valid. aya has no derive, but the type derives bytemuck::Pod (checked just above),
            // and that derive refuses a type that is not repr(C), has padding or has a field that
            // is not Pod.
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $t {}
        )+
    };
}

/// Compiles only for `bytemuck::Pod` types.
#[cfg(feature = "user")]
const fn derives_pod<T: bytemuck::Pod>() {}

pub mod agent;
pub mod contained;
pub mod holders;
pub mod kills;
pub mod names;
pub mod offsets;
pub mod record;
pub mod relay;
pub mod revisit;
pub mod scan;
pub mod snapshot;
pub mod stats;
pub mod watch;

pub use self::{
    agent::{AGENT_INFO_MAGIC, AgentInfo, SETTINGS_CHUNK, SettingsChunk},
    contained::{
        CONTAIN_EARNED_AFTER, CONTAINED_BY_CROWDSEC, CONTAINED_BY_REPEAT, CONTAINED_CAPACITY, CONTAINED_LABEL_CAPACITY,
        CONTAINED_LABEL_LEN, ContainedAddr, ContainedLabel, Containment, V4_MAPPED_PREFIX, v4_mapped,
    },
    holders::Holder,
    kills::{KILL_CGROUP_LEN, KILL_RING, KillRecord, kill_counters},
    offsets::{KernelOffsets, OFFSET_ABSENT},
    record::{AF_INET, AF_INET6, RECORD_ADOPTED, RECORD_FIRST_SEEN, RECORD_OUTBOUND, SockRecord},
    relay::{LAST_RECV_CAPACITY, LastRecv, RELAY_WINDOW_NS, RELAYS_CAPACITY, RelayOut},
    revisit::{REVISIT_CAPACITY, REVISIT_NEXT, RevisitKey},
    scan::{
        REMOTE_COUNTS_CAPACITY, RemoteCount, RemoteKey, ScanParams, ScanSummary, is_connection, remote_key, scan_mode,
    },
    snapshot::{ENTRY_OUT_OF_ORDER, SnapshotEntry},
    watch::{FAULT_HOLDERS, FAULT_RECORDS, FAULT_SOCKOPS, WatchConfig},
};
