//! `iter/tcp`: the exact snapshot. Reading the pinned iterator runs this once per TCP socket of
//! the reader's network namespace; for each tracked one it writes a `SnapshotEntry` joining the
//! live `tcp_sock` (queues, window, counters) with the tracker's record.
//!
//! It also reconciles the record: where `snd_una`/`rcv_nxt` moved without `tcp_probe` seeing it
//! (segments in states other than ESTABLISHED go through `tcp_rcv_state_process`), progress is
//! dated to now, so a draining socket is never reported as stalled for longer than one snapshot.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::{bpf_get_socket_cookie, bpf_seq_write, bpf_skc_to_tcp_sock},
};
use aya_log_ebpf::{error, info, warn};
use enforcer_common::{AF_INET, AF_INET6, OFFSET_ABSENT, RECORD_ADOPTED, SnapshotEntry, SockRecord, names, stats};

use crate::{
    kernel::{LazyNow, ipv6, load, off, read_bytes, reconcile, watch},
    maps::{SOCKETS, count_rare, log_samples, sample_rare},
};

/// The target of this program's log lines in the agent's log.
const LOG: &str = names::PROG_SNAPSHOT;

const E2BIG: i32 = 7;
const EEXIST: i32 = 17;
const EOVERFLOW: i64 = 75;

/// States of a connection that can hold data worth watching (not listening, not half-open).
fn is_connection(state: u8) -> bool {
    // ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING.
    matches!(state, 1 | 4 | 5 | 8 | 9 | 11)
}

/// Makes a record for a connection of the watched cgroup that sock_ops never saw (it existed
/// before the agent attached). The rare path: it reads with `bpf_probe_read_kernel`, and logs
/// (sampled, `count_rare`) what it adopts or fails to.
unsafe fn adopt(ctx: *mut c_void, tp: *const u8, now: u64) -> Option<(u64, *mut SockRecord)> {
    if watch!(adopt) == 0 {
        return None;
    }
    // SAFETY (all loads): `tp` is a BTF `struct tcp_sock *`; offsets of the named fields.
    let state: u8 = unsafe { load(tp, off!(sk_state)) };
    if !is_connection(state) {
        return None;
    }
    // In the watched subtree when the socket's cgroup has the watched one as ancestor at its level.
    let cgroup: *const u8 = unsafe { load(tp, off!(sk_cgroup)) };
    if cgroup.is_null() {
        return None;
    }
    let level = i32::from_ne_bytes(read_bytes::<4>(unsafe { cgroup.add(off!(cgroup_level) as usize) })?);
    let want = watch!(cgroup_level);
    if level < want as i32 {
        return None;
    }
    let slot = off!(cgroup_ancestors) as usize + want as usize * 8;
    let ancestor = usize::from_ne_bytes(read_bytes::<8>(unsafe { cgroup.add(slot) })?) as *const u8;
    let kn = usize::from_ne_bytes(read_bytes::<8>(unsafe { ancestor.add(off!(cgroup_kn) as usize) })?) as *const u8;
    if u64::from_ne_bytes(read_bytes::<8>(unsafe { kn.add(off!(kn_id) as usize) })?) != watch!(cgroup_id) {
        return None;
    }
    let family: u16 = unsafe { load(tp, off!(skc_family)) };
    let (local_addr, remote_addr) = match family {
        AF_INET => unsafe { ([load(tp, off!(skc_rcv_saddr)), 0, 0, 0], [load(tp, off!(skc_daddr)), 0, 0, 0]) },
        AF_INET6 => {
            let words = |b: [u8; 16]| {
                let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
                [w(0), w(4), w(8), w(12)]
            };
            let local = read_bytes::<16>(unsafe { tp.add(off!(skc_v6_rcv_saddr) as usize) })?;
            let remote = read_bytes::<16>(unsafe { tp.add(off!(skc_v6_daddr) as usize) })?;
            (words(local), words(remote))
        }
        _ => return None,
    };
    let snd_wnd: u32 = unsafe { load(tp, off!(tp_snd_wnd)) };
    let record = SockRecord {
        local_addr,
        remote_addr,
        local_port: unsafe { load(tp, off!(skc_num)) },
        remote_port: u16::from_be(unsafe { load(tp, off!(skc_dport)) }),
        family,
        flags: RECORD_ADOPTED,
        created_ns: now,
        tx_progress_ns: now,
        rx_progress_ns: now,
        zero_window_since_ns: if snd_wnd == 0 { now } else { 0 },
        snd_una: unsafe { load(tp, off!(tp_snd_una)) },
        rcv_nxt: unsafe { load(tp, off!(tp_rcv_nxt)) },
        pending_ns: 0,
        pending_ack: 0,
        _pad1: 0,
    };
    // Assigns a cookie if the socket never had one; tcp_probe and tcp_destroy_sock read it.
    // SAFETY: `tp` is a socket pointer the helper accepts.
    let cookie = unsafe { bpf_get_socket_cookie(tp as *mut c_void) };
    // A full map leaves the socket untracked; not counted in `map_full`, which counts sockets
    // (sock_ops, once per connection), where this would count every snapshot again.
    if let Err(e) = SOCKETS.insert(cookie, record, BPF_NOEXIST as u64) {
        // EEXIST: sock_ops recorded it since the lookup; the next snapshot reads that record.
        if e != -EEXIST
            && let Some(n) = sample_rare(log_samples::ADOPT_FAILED)
        {
            if e == -E2BIG {
                warn!(
                    ctx,
                    target: LOG,
                    "socket map full (--max-sockets): a connection that predates the agent goes untracked \
                     (count on this CPU: {})",
                    n
                );
            } else {
                error!(
                    ctx,
                    target: LOG,
                    "adopting a connection that predates the agent failed (errno {}): it goes untracked \
                     (count on this CPU: {})",
                    -e,
                    n
                );
            }
        }
        return None;
    }
    if let Some(n) = count_rare(stats::ADOPTED) {
        let (port, remote_port) = (record.local_port, record.remote_port);
        if family == AF_INET {
            info!(
                ctx,
                target: LOG,
                "adopted a connection that predates the agent: local port {}, remote {:i}:{} (count on this CPU: {})",
                port,
                u32::from_be(remote_addr[0]),
                remote_port,
                n
            );
        } else {
            info!(
                ctx,
                target: LOG,
                "adopted a connection that predates the agent: local port {}, remote [{:i}]:{} (count on this CPU: {})",
                port,
                ipv6(remote_addr),
                remote_port,
                n
            );
        }
    }
    Some((cookie, SOCKETS.get_ptr_mut(cookie)?))
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn enforcer_snapshot(ctx: *mut c_void) -> i32 {
    // SAFETY: the context is `struct bpf_iter__tcp { meta; sk_common; uid }`.
    if let Err(e) = unsafe { try_enforcer_snapshot(ctx) }
        && let Some(n) = count_rare(stats::ERR_SNAPSHOT)
    {
        error!(
            ctx,
            target: LOG,
            "writing a socket into the snapshot failed (errno {}): the agent does not see it this interval \
             (count on this CPU: {})",
            -e,
            n
        );
    }
    0
}

/// `Err(negative errno)` of `bpf_seq_write` when the entry could not be written.
unsafe fn try_enforcer_snapshot(ctx: *mut c_void) -> Result<(), i64> {
    let fields = ctx as *const *const u8;
    // SAFETY: context fields 0 (meta) and 1 (sk_common).
    let (meta, skc) = unsafe { (*fields, *fields.add(1)) };
    if skc.is_null() || meta.is_null() {
        // The end-of-iteration call.
        return Ok(());
    }
    // NULL for time-wait and request sockets: they hold no send queue.
    // SAFETY: `skc` is a BTF `struct sock_common *`.
    let tp = unsafe { bpf_skc_to_tcp_sock(skc as *mut _) } as *const u8;
    if tp.is_null() {
        return Ok(());
    }
    // SAFETY: `tp` is a BTF `struct tcp_sock *`, which begins with sock and sock_common.
    let cookie: u64 = unsafe { load(tp, off!(sk_cookie)) };
    let now = crate::kernel::now();
    // Adoption may assign the socket its first cookie, so it hands the cookie back.
    let (cookie, rec) = match SOCKETS.get_ptr_mut(cookie) {
        Some(rec) => (cookie, rec),
        // SAFETY: as above.
        None => match unsafe { adopt(ctx, tp, now) } {
            Some(adopted) => adopted,
            None => return Ok(()),
        },
    };
    // SAFETY: a map value pointer from a successful lookup or insert.
    let rec = unsafe { &mut *rec };

    // SAFETY (all loads): offsets of fields of the named type, found in BTF by the loader.
    let mut e = SnapshotEntry {
        cookie,
        now_ns: now,
        write_seq: unsafe { load(tp, off!(tp_write_seq)) },
        snd_una: unsafe { load(tp, off!(tp_snd_una)) },
        snd_nxt: unsafe { load(tp, off!(tp_snd_nxt)) },
        rcv_nxt: unsafe { load(tp, off!(tp_rcv_nxt)) },
        copied_seq: unsafe { load(tp, off!(tp_copied_seq)) },
        snd_wnd: unsafe { load(tp, off!(tp_snd_wnd)) },
        wmem_queued: unsafe { load(tp, off!(sk_wmem_queued)) },
        total_retrans: unsafe { load(tp, off!(tp_total_retrans)) },
        // A constant after load: the verifier drops the branch the kernel does not need.
        total_rto: if off!(tp_total_rto) == OFFSET_ABSENT { 0 } else { unsafe { load(tp, off!(tp_total_rto)) } },
        bytes_acked: unsafe { load(tp, off!(tp_bytes_acked)) },
        bytes_received: unsafe { load(tp, off!(tp_bytes_received)) },
        state: unsafe { load(tp, off!(sk_state)) },
        // Signed in the kernel; an interface index is never negative.
        bound_dev_if: unsafe { load(tp, off!(skc_bound_dev_if)) },
        ..SnapshotEntry::default()
    };
    // sk->sk_cgrp_data.cgroup->kn->id: the cgroup v2 id of the socket's owner.
    let cgroup: *const u8 = unsafe { load(tp, off!(sk_cgroup)) };
    if !cgroup.is_null() {
        let kn: *const u8 = unsafe { load(cgroup, off!(cgroup_kn)) };
        if !kn.is_null() {
            e.cgroup_id = unsafe { load(kn, off!(kn_id)) };
        }
    }

    reconcile(rec, e.snd_una, e.rcv_nxt, e.snd_wnd, &mut LazyNow::at(now));
    e.record = *rec;

    // SAFETY: `meta->seq` is the seq_file of this iteration; `e` lives on our stack.
    let seq = unsafe { *(meta as *const *mut c_void) };
    let size = core::mem::size_of::<SnapshotEntry>() as u32;
    match unsafe { bpf_seq_write(seq.cast(), (&raw const e) as *mut c_void, size) } {
        0 => Ok(()),
        // EOVERFLOW: the kernel's buffer for this read() is full (a reader with reads over its
        // 32 KiB, such as `cat`); the kernel drops this call's output and runs it again for the
        // same socket at the start of the next read(). Not an error.
        e if e == -EOVERFLOW => Ok(()),
        e => Err(e),
    }
}
