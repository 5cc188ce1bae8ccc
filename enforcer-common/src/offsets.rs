//! Kernel field offsets, found in BTF at load time and frozen into the programs.

/// An offset in `KernelOffsets` for a field the running kernel does not have.
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// Byte offsets of the kernel fields the programs read, from `/sys/kernel/btf/vmlinux` at load
/// time (Rust eBPF has no CO-RE relocations). A frozen `.rodata` global, so the verifier sees
/// each one as a constant.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock_common.skc_cookie` (also valid from a `sock` or `tcp_sock` pointer).
    pub sk_cookie: u32,
    pub sk_state: u32,
    pub sk_wmem_queued: u32,
    /// `sock.sk_cgrp_data.cgroup`.
    pub sk_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    pub tp_snd_una: u32,
    pub tp_snd_nxt: u32,
    pub tp_write_seq: u32,
    pub tp_rcv_nxt: u32,
    pub tp_copied_seq: u32,
    pub tp_snd_wnd: u32,
    pub tp_total_retrans: u32,
    pub tp_total_rto: u32,
    pub tp_bytes_acked: u32,
    pub tp_bytes_received: u32,
    /// `sock_common` addressing, for adopting existing connections.
    pub skc_family: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `sock_common.skc_bound_dev_if`.
    pub skc_bound_dev_if: u32,
    /// `cgroup.level` and `cgroup.ancestors`.
    pub cgroup_level: u32,
    pub cgroup_ancestors: u32,
    /// `sock_common.skc_net.net` and `net.ns.inum`: a socket's network namespace.
    pub skc_net: u32,
    pub net_inum: u32,
    /// `socket.sk`, `task_struct.tgid` and `task_struct.comm`: who holds a socket.
    pub socket_sk: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    /// `tcp_sock.srtt_us` (smoothed RTT, µs × 8) and `tcp_sock.rttvar_us` (µs): the RTO the
    /// socket's own path gives, which a stall is measured against.
    pub tp_srtt_us: u32,
    pub tp_rttvar_us: u32,
    /// `sock.sk_backlog.rmem_alloc` (`sk_rmem_alloc`): receive memory charged to the socket, the
    /// out-of-order queue included.
    pub sk_rmem_alloc: u32,
    /// `tcp_sock.out_of_order_queue` (an `rb_root`: its first word is NULL when empty).
    pub tp_ofo_queue: u32,
}

// 35 offsets of 4 bytes.
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 35 * 4);

user_pod!(KernelOffsets);
