//! The kernel field offsets the eBPF programs need, read from BTF at load time.
use anyhow::{Context, Result, bail};
use enforcer_common::KernelOffsets;

use super::btf::{Btf, BtfError};

/// The offset of a field this kernel does not have; the programs read 0 instead.
pub const ABSENT: u32 = enforcer_common::OFFSET_ABSENT;

/// The oldest kernel with every field enforcer cannot do without: `cgroup.ancestors`, which
/// the snapshot uses to tell a socket of the watched cgroup from others, is a 6.0 addition.
const OLDEST: &str = "6.0";

/// Finds every offset in `KernelOffsets`, checking each field's size so a kernel that changed a
/// type is refused instead of misread.
pub fn from_btf(btf: &Btf) -> Result<KernelOffsets> {
    let field = |structure: &str, path: &str, size: u32| -> Result<u32> {
        let m = btf.member(structure, path).with_context(|| {
            format!("looking up {structure}.{path} in kernel BTF (enforcer needs Linux {OLDEST} or newer)")
        })?;
        if m.size != size {
            bail!("{structure}.{path} is {} bytes in this kernel, enforcer expects {size}", m.size);
        }
        Ok(m.offset)
    };
    Ok(KernelOffsets {
        sk_cookie: field("sock_common", "skc_cookie", 8)?,
        sk_state: field("sock_common", "skc_state", 1)?,
        sk_wmem_queued: field("sock", "sk_wmem_queued", 4)?,
        sk_cgroup: field("sock", "sk_cgrp_data.cgroup", 8)?,
        cgroup_kn: field("cgroup", "kn", 8)?,
        kn_id: field("kernfs_node", "id", 8)?,
        tp_snd_una: field("tcp_sock", "snd_una", 4)?,
        tp_snd_nxt: field("tcp_sock", "snd_nxt", 4)?,
        tp_write_seq: field("tcp_sock", "write_seq", 4)?,
        tp_rcv_nxt: field("tcp_sock", "rcv_nxt", 4)?,
        tp_copied_seq: field("tcp_sock", "copied_seq", 4)?,
        tp_snd_wnd: field("tcp_sock", "snd_wnd", 4)?,
        tp_total_retrans: field("tcp_sock", "total_retrans", 4)?,
        // Only since Linux 6.7; older kernels report 0 RTOs.
        tp_total_rto: match btf.member("tcp_sock", "total_rto") {
            Err(BtfError::NoMember { .. }) => ABSENT,
            _ => field("tcp_sock", "total_rto", 2)?,
        },
        tp_bytes_acked: field("tcp_sock", "bytes_acked", 8)?,
        tp_bytes_received: field("tcp_sock", "bytes_received", 8)?,
        skc_family: field("sock_common", "skc_family", 2)?,
        skc_num: field("sock_common", "skc_num", 2)?,
        skc_dport: field("sock_common", "skc_dport", 2)?,
        skc_daddr: field("sock_common", "skc_daddr", 4)?,
        skc_rcv_saddr: field("sock_common", "skc_rcv_saddr", 4)?,
        skc_v6_daddr: field("sock_common", "skc_v6_daddr", 16)?,
        skc_v6_rcv_saddr: field("sock_common", "skc_v6_rcv_saddr", 16)?,
        skc_bound_dev_if: field("sock_common", "skc_bound_dev_if", 4)?,
        cgroup_level: field("cgroup", "level", 4)?,
        // A flexible array: no size of its own.
        cgroup_ancestors: field("cgroup", "ancestors", 0)?,
        skc_net: field("sock_common", "skc_net.net", 8)?,
        net_inum: field("net", "ns.inum", 4)?,
        socket_sk: field("socket", "sk", 8)?,
        task_tgid: field("task_struct", "tgid", 4)?,
        task_comm: field("task_struct", "comm", 16)?,
        tp_srtt_us: field("tcp_sock", "srtt_us", 4)?,
        tp_rttvar_us: field("tcp_sock", "rttvar_us", 4)?,
        sk_rmem_alloc: field("sock", "sk_backlog.rmem_alloc", 4)?,
        tp_ofo_queue: field("tcp_sock", "out_of_order_queue", 8)?,
    })
}

/// What this kernel lacks of the fields enforcer can do without, and what degrades: one line
/// for the agent's start-up log, `None` when it has them all.
pub fn lacking(offsets: &KernelOffsets) -> Option<String> {
    let optional = [(offsets.tp_total_rto, "tcp_sock.total_rto (Linux 6.7+): RTO counts read 0")];
    let absent: Vec<&str> = optional.iter().filter(|(off, _)| *off == ABSENT).map(|(_, what)| *what).collect();
    (!absent.is_empty()).then(|| format!("this kernel lacks {}", absent.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_total_rto_is_named_in_one_line() {
        let mut o = KernelOffsets::default();
        assert_eq!(lacking(&o), None);
        o.tp_total_rto = ABSENT;
        assert_eq!(
            lacking(&o).as_deref(),
            Some("this kernel lacks tcp_sock.total_rto (Linux 6.7+): RTO counts read 0")
        );
    }
}
