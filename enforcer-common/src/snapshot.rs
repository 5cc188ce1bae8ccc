//! One socket in a snapshot or a scan, as the walks write it out.

use crate::{record::SockRecord, relay::RelayOut};

/// One socket in a snapshot: what the `iter/tcp` program writes per tracked socket.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub cookie: u64,
    /// When this entry was read (ns, same clock as the record).
    pub now_ns: u64,
    /// The tracker's record, after reconciliation with the values below.
    pub record: SockRecord,
    /// Cgroup v2 id (inode number of the cgroup directory) of the socket's owner.
    pub cgroup_id: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub write_seq: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    /// The peer's advertised window, scaled, in bytes.
    pub snd_wnd: u32,
    /// `sk_wmem_queued`: bytes of send-queue memory charged to the socket (with overhead).
    pub wmem_queued: u32,
    pub total_retrans: u32,
    pub total_rto: u16,
    /// `TCP_ESTABLISHED` = 1 … as in `include/net/tcp_states.h`.
    pub state: u8,
    /// `ENTRY_*` bits.
    pub flags: u8,
    /// `sk_bound_dev_if`: the interface index the socket is bound to (SO_BINDTODEVICE, or
    /// inherited from a bound listener), 0 if none. The kernel's lookup for SOCK_DESTROY only
    /// finds a bound socket when the request names this interface.
    pub bound_dev_if: u32,
    /// Inode of the socket's network namespace (`ls -iL /proc/PID/ns/net`).
    pub netns: u32,
    /// Smoothed RTT (µs × 8, as the kernel keeps it) and RTT variation (µs): what the socket's
    /// own retransmission timeout is made of. 0 before the first RTT sample.
    pub srtt_us: u32,
    pub rttvar_us: u32,
    /// `sk_rmem_alloc`: receive memory charged to the socket, in order or not.
    pub rmem_alloc: u32,
    /// Proxy mode: where this socket's bytes were relayed last (`RELAYS`); zero otherwise.
    pub relay: RelayOut,
}

/// The kernel holds out-of-order data for the socket: segments beyond a hole the peer has not
/// filled, which no read can free.
pub const ENTRY_OUT_OF_ORDER: u8 = 1;

impl SnapshotEntry {
    /// Memory the kernel charges the socket: its send side (`sk_wmem_queued`) and its receive
    /// side (`sk_rmem_alloc`).
    pub fn charged(&self) -> u64 {
        u64::from(self.wmem_queued) + u64::from(self.rmem_alloc)
    }

    /// Bytes the application queued that the peer has not acknowledged (what SIOCOUTQ says).
    pub fn send_queue(&self) -> u32 {
        self.write_seq.wrapping_sub(self.snd_una)
    }
    /// Bytes queued but not yet sent.
    pub fn unsent(&self) -> u32 {
        self.write_seq.wrapping_sub(self.snd_nxt)
    }
    /// Bytes received that the application has not read (what SIOCINQ says, FIN aside).
    pub fn recv_queue(&self) -> u32 {
        self.rcv_nxt.wrapping_sub(self.copied_seq)
    }
    /// Since when the queue has been stalled (ns): the last progress, or the first time a scan
    /// saw this backlog, whichever is later. Meaningful while `send_queue() > 0`.
    pub fn stalled_since_ns(&self) -> u64 {
        self.record.tx_progress_ns.max(self.record.outstanding_since_ns)
    }
}

// The verifier limits the eBPF stack to 512 bytes; the iterator builds one entry on it.
const _: () = assert!(core::mem::size_of::<SnapshotEntry>() == 208);

user_pod!(SnapshotEntry);
