//! `iter/tcp`: the exact snapshot. Reading the pinned iterator runs this once per TCP socket of
//! the reader's network namespace; for each tracked one it writes a `SnapshotEntry` joining the
//! live `tcp_sock` (queues, window, counters) with the tracker's record.
//!
//! It also reconciles the record: where `snd_una`/`rcv_nxt` moved without `tcp_probe` seeing it
//! (segments in states other than ESTABLISHED go through `tcp_rcv_state_process`), progress is
//! dated to now, so a draining socket is never reported as stalled for longer than one snapshot.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_seq_write, bpf_skc_to_tcp_sock};
use enforcer_common::{SnapshotEntry, stats};

use crate::{
    kernel::{load, off},
    maps::{SOCKETS, count},
};

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn enforcer_snapshot(ctx: *mut c_void) -> i32 {
    // SAFETY: the context is `struct bpf_iter__tcp { meta; sk_common; uid }`.
    if unsafe { try_enforcer_snapshot(ctx) }.is_err() {
        count(stats::ERR_SNAPSHOT);
    }
    0
}

unsafe fn try_enforcer_snapshot(ctx: *mut c_void) -> Result<(), ()> {
    let ctx = ctx as *const *const u8;
    // SAFETY: context fields 0 (meta) and 1 (sk_common).
    let (meta, skc) = unsafe { (*ctx, *ctx.add(1)) };
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
    let Some(rec) = SOCKETS.get_ptr_mut(cookie) else {
        return Ok(());
    };
    // SAFETY: a map value pointer from a successful lookup.
    let rec = unsafe { &mut *rec };
    let now = crate::kernel::now();

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
        total_rto: unsafe { load(tp, off!(tp_total_rto)) },
        bytes_acked: unsafe { load(tp, off!(tp_bytes_acked)) },
        bytes_received: unsafe { load(tp, off!(tp_bytes_received)) },
        state: unsafe { load(tp, off!(sk_state)) },
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

    if e.snd_una != rec.snd_una {
        rec.snd_una = e.snd_una;
        rec.tx_progress_ns = now;
    }
    if e.rcv_nxt != rec.rcv_nxt {
        rec.rcv_nxt = e.rcv_nxt;
        rec.rx_progress_ns = now;
    }
    if e.snd_wnd != 0 {
        rec.zero_window_since_ns = 0;
    }
    e.record = *rec;

    // SAFETY: `meta->seq` is the seq_file of this iteration; `e` lives on our stack.
    let seq = unsafe { *(meta as *const *mut c_void) };
    let size = core::mem::size_of::<SnapshotEntry>() as u32;
    if unsafe { bpf_seq_write(seq.cast(), (&raw const e) as *mut c_void, size) } != 0 {
        return Err(());
    }
    Ok(())
}
