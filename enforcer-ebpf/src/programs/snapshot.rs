//! The exact snapshot and the agent's scan. For each tracked connection they join the live
//! `tcp_sock` (queues, window, counters) with its record into a `SnapshotEntry`.
//!
//! - `enforcer_snapshot` writes every tracked connection (the CLI's `sockets`, through the
//!   pinned link);
//! - `enforcer_scan` is the agent's: it adds every connection up in `SCAN_SUMMARY` and writes
//!   out only what `SCAN_PARAMS` asks for (`ScanParams::emits`), so an interval with pressure
//!   well below the threshold reads a summary and nothing else.
//!
//! Each comes in two walks. `iter/bpf_sk_storage_map` walks the records map: the tracked
//! sockets of every network namespace and nothing else (no listener, no untracked socket, no
//! hash bucket of the TCP tables). Kernels that refuse map-element iterators (this project's
//! 6.18 VMs answer EPERM) get the `_tcp` variants, `iter/tcp`: every TCP socket of the reader's
//! namespace. There sock_ops leaves recording to the walks (`RECORD_AT_FIRST_SIGHT`): an
//! unrecorded connection of the watched cgroup gets its record (`RECORD_FIRST_SEEN`) from the
//! first walk that sees it, and any other socket costs a storage lookup and a cgroup check.
//!
//! Both reconcile the record: where `snd_una`/`rcv_nxt` moved since the last walk, progress is
//! dated to now, so a draining socket is never reported as stalled for longer than one read;
//! and the first scan to see a backlog notes when (`outstanding_since_ns`), which bounds its
//! stall from below the truth, never above.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_skc_to_tcp_sock;
use aya_log_ebpf::error;
use enforcer_common::{
    ENTRY_OUT_OF_ORDER, FAULT_SOCKOPS, OFFSET_ABSENT, RECORD_FIRST_SEEN, RemoteCount, ScanParams, ScanSummary,
    SnapshotEntry, SockRecord, is_connection, names, remote_key, scan_mode, stats,
};

use crate::{
    kernel::{Clock, load, off, reconcile, seq_write, watch},
    maps::{RELAYS, REMOTE_COUNTS, SCAN_PARAMS, SCAN_SUMMARY, count, count_rare, record},
    programs::adopt::adopt,
};

/// The target of this program's log lines in the agent's log.
const LOG: &str = names::PROG_SNAPSHOT;

const EOVERFLOW: i64 = 75;

/// What the snapshot asks: everything, no summary.
const ALL: ScanParams = ScanParams { mode: scan_mode::ALL, count_remotes: 0, group_v4: 0, group_v6: 0, generation: 0 };

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_sk_storage_map")]
pub fn enforcer_snapshot(ctx: *mut c_void) -> i32 {
    // SAFETY: the context of an `iter/bpf_sk_storage_map` program.
    let rc = unsafe { from_records(ctx, &ALL, None) };
    report(ctx, rc);
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/bpf_sk_storage_map")]
pub fn enforcer_scan(ctx: *mut c_void) -> i32 {
    let (Some(params), Some(summary)) = (SCAN_PARAMS.get(0), SCAN_SUMMARY.get_ptr_mut(0)) else {
        return 0;
    };
    // SAFETY: the context of an `iter/bpf_sk_storage_map` program; the summary is an array
    // slot only the agent's scan writes, one read at a time.
    let rc = unsafe { from_records(ctx, params, Some(&mut *summary)) };
    report(ctx, rc);
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn enforcer_snapshot_tcp(ctx: *mut c_void) -> i32 {
    // SAFETY: the context of an `iter/tcp` program.
    let rc = unsafe { from_tcp(ctx, &ALL, None) };
    report(ctx, rc);
    0
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn enforcer_scan_tcp(ctx: *mut c_void) -> i32 {
    let (Some(params), Some(summary)) = (SCAN_PARAMS.get(0), SCAN_SUMMARY.get_ptr_mut(0)) else {
        return 0;
    };
    // SAFETY: the context of an `iter/tcp` program; the summary as in `enforcer_scan`.
    let rc = unsafe { from_tcp(ctx, params, Some(&mut *summary)) };
    report(ctx, rc);
    0
}

/// One element of the records map.
///
/// # Safety
/// `ctx` is `struct bpf_iter__bpf_sk_storage_map { meta; map; sk; value }`.
#[inline(always)]
unsafe fn from_records(ctx: *mut c_void, params: &ScanParams, summary: Option<&mut ScanSummary>) -> Result<(), i64> {
    let fields = ctx as *const *mut u8;
    // SAFETY: context fields 0 (meta), 2 (sk) and 3 (value).
    let (meta, sk, value) = unsafe { (*fields, *fields.add(2), *fields.add(3)) };
    if sk.is_null() || value.is_null() || meta.is_null() {
        // The end-of-iteration call.
        return Ok(());
    }
    // SAFETY: `sk` is a BTF `struct sock *`.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk.cast()) } as *const u8;
    if tp.is_null() {
        return Ok(());
    }
    // SAFETY: the value of a records-map element is a `SockRecord`, writable by iterators;
    // `meta` is this iteration's.
    unsafe { visit(tp, &mut *value.cast::<SockRecord>(), params, summary, |e| seq_write(meta, e)) }
}

/// One TCP socket of the reader's namespace: a connection of the watched cgroup that has no
/// record yet gets one; other sockets are skipped.
///
/// # Safety
/// `ctx` is `struct bpf_iter__tcp { meta; sk_common; uid }`.
#[inline(always)]
unsafe fn from_tcp(ctx: *mut c_void, params: &ScanParams, summary: Option<&mut ScanSummary>) -> Result<(), i64> {
    let fields = ctx as *const *mut u8;
    // SAFETY: context fields 0 (meta) and 1 (sk_common).
    let (meta, skc) = unsafe { (*fields, *fields.add(1)) };
    if skc.is_null() || meta.is_null() {
        return Ok(());
    }
    // NULL for time-wait and request sockets, which have no record.
    // SAFETY: `skc` is a BTF `struct sock_common *`.
    let tp = unsafe { bpf_skc_to_tcp_sock(skc.cast()) } as *const u8;
    if tp.is_null() {
        return Ok(());
    }
    // SAFETY: `tp` is a BTF `struct tcp_sock *`, which begins with a `struct sock`.
    let rec = match unsafe { record(tp as *mut c_void, None) } {
        Some(rec) => rec,
        // The injected fault stands for recording that fails: only adoption finds it.
        None if watch!(fault) & FAULT_SOCKOPS != 0 => return Ok(()),
        // SAFETY: as above; `ctx` is this iteration's.
        None => match unsafe { adopt(ctx, tp, &mut Clock::default(), RECORD_FIRST_SEEN) } {
            Some(rec) => {
                count(stats::TRACKED);
                rec
            }
            None => return Ok(()),
        },
    };
    // SAFETY: as above; `meta` is this iteration's.
    unsafe { visit(tp, rec, params, summary, |e| seq_write(meta, e)) }
}

// Inlined: as a BPF subprogram, `Ok(())` would pass an uninitialised register for the errno,
// which the verifier refuses.
#[inline(always)]
fn report(ctx: *mut c_void, rc: Result<(), i64>) {
    if let Err(e) = rc
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
}

/// One tracked socket `tp` with its record: reconciles the record, sums the socket into
/// `summary` and writes its entry with `write` if `params` asks for it. `Err(negative errno)`
/// when `write` (`bpf_seq_write` for a walk) could not write the entry.
///
/// What every visit needs (state, queue, sequence numbers, window) is loaded first; the rest of
/// an entry only for a socket written out. Most of a walk is idle connections that are not, and
/// each field left unread is a cache line of their `tcp_sock` a walk does not touch.
///
/// # Safety
/// `tp` is a BTF `struct tcp_sock *`.
#[inline(always)]
pub(crate) unsafe fn visit(
    tp: *const u8,
    rec: &mut SockRecord,
    params: &ScanParams,
    summary: Option<&mut ScanSummary>,
    write: impl FnOnce(&SnapshotEntry) -> i64,
) -> Result<(), i64> {
    // SAFETY (all loads): `tp` is a BTF `struct tcp_sock *`; offsets of fields of the named
    // type, found in BTF by the loader.
    let state: u8 = unsafe { load(tp, off!(sk_state)) };
    // A socket destroyed (by us, or reset) whose application has not closed it yet keeps its
    // storage; it holds nothing any more and is no connection to judge.
    if !is_connection(state) {
        return Ok(());
    }
    let wmem_queued: u32 = unsafe { load(tp, off!(sk_wmem_queued)) };
    // An atomic_t: never negative once the kernel's accounting settles.
    let rmem: i32 = unsafe { load(tp, off!(sk_rmem_alloc)) };
    let rmem_alloc = rmem.max(0) as u32;
    let charged = wmem_queued.saturating_add(rmem_alloc);
    let write_seq: u32 = unsafe { load(tp, off!(tp_write_seq)) };
    let snd_una: u32 = unsafe { load(tp, off!(tp_snd_una)) };
    let rcv_nxt: u32 = unsafe { load(tp, off!(tp_rcv_nxt)) };
    let snd_wnd: u32 = unsafe { load(tp, off!(tp_snd_wnd)) };

    let mut clock = Clock::default();
    reconcile(rec, snd_una, rcv_nxt, snd_wnd, &mut clock);
    if write_seq == snd_una {
        // Stored only if it changes: an idle connection's record is read, never dirtied.
        if rec.outstanding_since_ns != 0 {
            rec.outstanding_since_ns = 0;
        }
    } else if rec.outstanding_since_ns == 0 {
        rec.outstanding_since_ns = clock.now();
    }

    // The out-of-order queue's root pointer, compared only: NULL when no segment waits beyond a
    // hole. Read only when something was received and not freed.
    let out_of_order = rmem_alloc > 0 && unsafe { load::<u64>(tp, off!(tp_ofo_queue)) } != 0;
    let emit = params.emits(wmem_queued, out_of_order);
    if emit {
        let cookie: u64 = unsafe { load(tp, off!(sk_cookie)) };
        let mut e = SnapshotEntry {
            cookie,
            now_ns: clock.now(),
            write_seq,
            snd_una,
            snd_nxt: unsafe { load(tp, off!(tp_snd_nxt)) },
            rcv_nxt,
            copied_seq: unsafe { load(tp, off!(tp_copied_seq)) },
            snd_wnd,
            wmem_queued,
            rmem_alloc,
            flags: if out_of_order { ENTRY_OUT_OF_ORDER } else { 0 },
            total_retrans: unsafe { load(tp, off!(tp_total_retrans)) },
            // A constant after load: the verifier drops the branch the kernel does not need.
            total_rto: if off!(tp_total_rto) == OFFSET_ABSENT { 0 } else { unsafe { load(tp, off!(tp_total_rto)) } },
            bytes_acked: unsafe { load(tp, off!(tp_bytes_acked)) },
            bytes_received: unsafe { load(tp, off!(tp_bytes_received)) },
            state,
            // Signed in the kernel; an interface index is never negative.
            bound_dev_if: unsafe { load(tp, off!(skc_bound_dev_if)) },
            cgroup_id: unsafe { cgroup_id(tp) },
            netns: unsafe { netns(tp) },
            srtt_us: unsafe { load(tp, off!(tp_srtt_us)) },
            rttvar_us: unsafe { load(tp, off!(tp_rttvar_us)) },
            record: *rec,
            ..SnapshotEntry::default()
        };
        // A constant after load: without proxy mode the lookup is not even verified. Copied
        // field by field into the entry, not through a temporary: the entry already takes 208 of
        // the stack's 512 bytes.
        // SAFETY: a plain read of a map value.
        if watch!(proxy) != 0
            && let Some(r) = unsafe { RELAYS.get(cookie) }
        {
            e.relay.to = r.to;
            e.relay.at_ns = r.at_ns;
            e.relay.bytes = r.bytes;
        }
        match write(&e) {
            0 => {}
            // EOVERFLOW: the kernel's buffer for this read() is full; it drops this call's
            // output and runs it again for the same socket at the start of the next read().
            // Not an error, and not summed now: the next call sums it.
            e if e == -EOVERFLOW => return Ok(()),
            e => return Err(e),
        }
    }
    if let Some(s) = summary {
        s.sockets += 1;
        s.charged += u64::from(charged);
        s.send_queue += u64::from(write_seq.wrapping_sub(snd_una));
        s.emitted += u64::from(emit);
        if params.count_remotes != 0 {
            count_remote(params, s, rec);
        }
    }
    Ok(())
}

/// `sk->sk_cgrp_data.cgroup->kn->id`: the cgroup v2 id of the socket's owner; 0 if unknown.
///
/// # Safety
/// `tp` is a BTF `struct tcp_sock *`.
#[inline(always)]
unsafe fn cgroup_id(tp: *const u8) -> u64 {
    // SAFETY: offsets of the named fields, found in BTF by the loader; NULLs are checked.
    unsafe {
        let cgroup: *const u8 = load(tp, off!(sk_cgroup));
        if cgroup.is_null() {
            return 0;
        }
        let kn: *const u8 = load(cgroup, off!(cgroup_kn));
        if kn.is_null() { 0 } else { load(kn, off!(kn_id)) }
    }
}

/// `sk->__sk_common.skc_net.net->ns.inum`: which namespace a destroy must be sent from; 0 if
/// unknown.
///
/// # Safety
/// `tp` is a BTF `struct tcp_sock *`.
#[inline(always)]
unsafe fn netns(tp: *const u8) -> u32 {
    // SAFETY: as in `cgroup_id`.
    unsafe {
        let net: *const u8 = load(tp, off!(skc_net));
        if net.is_null() { 0 } else { load(net, off!(net_inum)) }
    }
}

/// Counts a connection against its remote group in `REMOTE_COUNTS`; the first of a group in
/// this scan also counts a remote in the summary.
#[inline(always)]
fn count_remote(params: &ScanParams, s: &mut ScanSummary, r: &SockRecord) {
    let key = remote_key(r.family, r.remote_addr, params.group_v4, params.group_v6);
    // SAFETY: null or a live value of the map; only the agent's scan writes it, one at a time.
    match REMOTE_COUNTS.get_ptr_mut(key).and_then(|c| unsafe { c.as_mut() }) {
        Some(c) if c.generation == params.generation => c.connections += 1,
        Some(c) => {
            // Left by an older scan: this scan's first connection of the group.
            c.generation = params.generation;
            c.connections = 1;
            s.remotes += 1;
        }
        None => {
            let fresh = RemoteCount { generation: params.generation, connections: 1 };
            // An LRU map makes room by evicting; should the update still fail, the group counts
            // as a remote with this one connection (the agent reads a missing count as 1).
            let _ = REMOTE_COUNTS.insert(key, fresh, 0);
            s.remotes += 1;
        }
    }
}
