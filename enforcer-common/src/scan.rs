//! The agent's scan: what it asks of the walk (`SCAN_PARAMS`), what the walk adds up
//! (`SCAN_SUMMARY`) and the connections it counts per remote (`REMOTE_COUNTS`).

use crate::{
    contained::{V4_MAPPED_PREFIX, v4_mapped},
    record::AF_INET,
};

/// `ScanParams::mode`: what the agent's scan writes out. Every mode fills `ScanSummary`.
pub mod scan_mode {
    /// Nothing: pressure is well below the threshold, the summary is all the agent needs.
    pub const SUMMARY: u32 = 0;
    /// The sockets the rule could act on (see `ScanParams::emits`).
    pub const CANDIDATES: u32 = 1;
    /// Every socket (a per-remote cap judges idle sockets whatever they hold).
    pub const ALL: u32 = 2;
}

/// Whether a socket in TCP state `state` (`TCP_ESTABLISHED` = 1 … as in
/// `include/net/tcp_states.h`) is a connection the walks count, write out and adopt: one that
/// can hold data worth watching (not listening, not half-open, not closed).
pub fn is_connection(state: u8) -> bool {
    // ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING.
    matches!(state, 1 | 4 | 5 | 8 | 9 | 11)
}

/// What the agent asks of its scan, written into `SCAN_PARAMS` before each read.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanParams {
    /// A `scan_mode` constant.
    pub mode: u32,
    /// 0: do not count connections per remote. Otherwise the scan counts each socket against
    /// its remote address masked to `group_v4` bits (IPv4, and IPv4-mapped IPv6) or `group_v6`
    /// bits (IPv6) in `REMOTE_COUNTS`, and each new remote in `ScanSummary::remotes`.
    pub count_remotes: u32,
    pub group_v4: u32,
    pub group_v6: u32,
    /// Tags this scan's `REMOTE_COUNTS` entries: an entry of another generation counts as 0,
    /// so the agent never has to clear the map.
    pub generation: u64,
}

impl ScanParams {
    /// Whether the scan writes out this socket. `CANDIDATES` keeps exactly the sockets the rule
    /// could decide on from their memory: every rule but the per-remote cap needs charged
    /// memory (a socket that holds nothing frees nothing), and a socket is over its share only
    /// when it holds something, so what is left out would never be chosen nor remembered
    /// (enforcer's property test `filtered_scan_decides_like_the_full_snapshot` holds it to that).
    ///
    /// It decides on what the peer makes the kernel hold: send-side memory (`sk_wmem_queued`),
    /// or segments beyond a hole on the receive side. Data received in order and not read is
    /// never the peer's doing, so a socket holding only that is never chosen, and is summed in
    /// the pressure without being written out. The rest of an entry (counters, cgroup,
    /// namespace) is loaded only for the sockets written out.
    pub fn emits(&self, wmem_queued: u32, out_of_order: bool) -> bool {
        match self.mode {
            scan_mode::ALL => true,
            scan_mode::CANDIDATES => wmem_queued > 0 || out_of_order,
            _ => false,
        }
    }
}

/// What the agent's scan adds up over every tracked connection, emitted or not.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Tracked connections (states that can hold data).
    pub sockets: u64,
    /// Their charged memory (`sk_wmem_queued` + `sk_rmem_alloc`), summed: the `tracked` pressure.
    pub charged: u64,
    /// Their unacknowledged bytes, summed.
    pub send_queue: u64,
    /// Sockets written out.
    pub emitted: u64,
    /// Distinct remote groups (when the scan counts remotes).
    pub remotes: u64,
}

/// A key of `REMOTE_COUNTS`: a remote address (IPv6 words, IPv4 mapped) masked to its group.
pub type RemoteKey = [u32; 4];

/// A value of `REMOTE_COUNTS`.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteCount {
    /// The `ScanParams::generation` that counted it.
    pub generation: u64,
    pub connections: u64,
}

/// Capacity of `REMOTE_COUNTS` (an LRU map: the oldest generations go first).
pub const REMOTE_COUNTS_CAPACITY: u32 = 262_144;

/// `addr` (as `SockRecord` keeps it, IPv4 in word 0 for `AF_INET`) as a `REMOTE_COUNTS` key:
/// IPv4 mapped into IPv6, masked to `v4` or `v6` leading bits.
pub fn remote_key(family: u16, addr: [u32; 4], v4: u32, v6: u32) -> RemoteKey {
    let (mut words, bits) = if family == AF_INET {
        (v4_mapped(addr[0]), V4_MAPPED_PREFIX + v4.min(32))
    } else if addr[0] == 0 && addr[1] == 0 && addr[2] == 0x0000_ffff_u32.to_be() {
        (addr, V4_MAPPED_PREFIX + v4.min(32))
    } else {
        (addr, v6.min(128))
    };
    let mut i = 0;
    while i < 4 {
        let keep = bits.saturating_sub(32 * i as u32).min(32);
        // Words hold bytes in network order: build the mask big-endian, store it native.
        let mask = if keep == 0 { 0 } else { (u32::MAX << (32 - keep)).to_be() };
        words[i] &= mask;
        i += 1;
    }
    words
}

const _: () = assert!(core::mem::size_of::<ScanParams>() == 24);
const _: () = assert!(core::mem::size_of::<ScanSummary>() == 40);
const _: () = assert!(core::mem::size_of::<RemoteCount>() == 16);

user_pod!(ScanParams, ScanSummary, RemoteCount);
