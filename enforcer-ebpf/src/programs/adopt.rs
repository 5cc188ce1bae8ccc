//! `iter/tcp`: adoption. Gives a record to each connection of the watched cgroup that has none:
//! it was established before the agent attached, or recording it failed (or, where sock_ops
//! leaves records to the walks, no walk has seen it yet). The agent reads this iterator once per
//! network namespace at start (and for a namespace it sees for the first time), and again when
//! the kernel counted a failed record. A socket keeps the cgroup it was created in, so no other
//! connection can appear unrecorded where sock_ops records at establishment.
//!
//! `adopt` is also how the `iter/tcp` walks record a connection they see first, where sock_ops
//! leaves recording to them (`RECORD_AT_FIRST_SIGHT`).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_STATE_CB_FLAG,
    helpers::generated::{bpf_get_socket_cookie, bpf_getsockopt, bpf_setsockopt, bpf_skc_to_tcp_sock},
};
use aya_log_ebpf::{error, info};
use enforcer_common::{AF_INET, AF_INET6, RECORD_ADOPTED, SockRecord, is_connection, names, stats};

use crate::{
    kernel::{Clock, ipv6, load, off, read_bytes, watch},
    maps::{RECORD_AT_FIRST_SIGHT, count, count_rare, record},
};

/// The target of this program's log lines in the agent's log.
const LOG: &str = names::PROG_ADOPT;

/// Makes a record, with `flags` (`RECORD_*`) and dated by `clock`, for a connection of the watched
/// cgroup that a walk sees unrecorded. `None` for a socket that is no connection of the watched
/// cgroup, and for one whose record the kernel could not allocate (counted in `ERR_STORAGE`, which
/// makes the agent adopt again, and logged, sampled). Reads with `bpf_probe_read_kernel`.
///
/// # Safety
/// `ctx` is the iteration's context, `tp` a BTF `struct tcp_sock *`.
#[inline(always)]
pub unsafe fn adopt(ctx: *mut c_void, tp: *const u8, clock: &mut Clock, flags: u16) -> Option<&'static mut SockRecord> {
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
    // A BTF pointer: its fixed fields load directly, no helper. That settles every socket of a
    // cgroup above the watched one (the walks of `iter/tcp` visit the namespace's other
    // sockets each time, so their test is the one to keep cheap).
    let level: i32 = unsafe { load(cgroup, off!(cgroup_level)) };
    let want = watch!(cgroup_level);
    if level < want as i32 {
        return None;
    }
    // `ancestors[]` is a flexible array the verifier will not let a BTF load index.
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
    // Read only now: the walks call this for every unrecorded socket, most of them not ours.
    let now = clock.now();
    let fresh = SockRecord {
        local_addr,
        remote_addr,
        local_port: unsafe { load(tp, off!(skc_num)) },
        remote_port: u16::from_be(unsafe { load(tp, off!(skc_dport)) }),
        family,
        flags,
        created_ns: now,
        tx_progress_ns: now,
        rx_progress_ns: now,
        zero_window_since_ns: if snd_wnd == 0 { now } else { 0 },
        snd_una: unsafe { load(tp, off!(tp_snd_una)) },
        rcv_nxt: unsafe { load(tp, off!(tp_rcv_nxt)) },
        outstanding_since_ns: 0,
    };
    // Assigns a cookie if the socket never had one: a destroy names it.
    // SAFETY: `tp` is a socket pointer the helper accepts.
    unsafe { bpf_get_socket_cookie(tp as *mut c_void) };
    // Nothing else can record it between the caller's lookup and this: `iter/tcp` holds the
    // socket's lock around each visit (`lock_sock_fast`), which sock_ops' callbacks and the other
    // walks need too. (The helper would return NULL to the loser of such a race.)
    // SAFETY: `tp` is a BTF `struct tcp_sock *`, which begins with a `struct sock`.
    let rec = unsafe { record(tp as *mut c_void, Some(&fresh)) };
    if rec.is_some() && RECORD_AT_FIRST_SIGHT.get(0).is_some_and(|v| *v != 0) {
        // SAFETY: as above; the iteration holds the socket's lock.
        unsafe { ask_for_end(tp as *mut c_void) };
    }
    if rec.is_none() {
        // Counted with sock_ops' failures: the agent adopts again at its next interval. Besides
        // no memory, the kernel refuses (EAGAIN) while the socket's storage is being torn down,
        // as when the map of an agent that just exited is freed under a new agent's adoption.
        if let Some(n) = count_rare(stats::ERR_STORAGE) {
            error!(
                ctx,
                target: LOG,
                "could not record a connection (no memory, or its storage was being freed): adoption runs again \
                 next interval (count on this CPU: {})",
                n
            );
        }
    }
    rec
}

/// `TCP_BPF_SOCK_OPS_CB_FLAGS` (Linux 6.12+): a socket's sock_ops callbacks, read and set by
/// `bpf_{g,s}etsockopt` outside sock_ops.
const TCP_BPF_SOCK_OPS_CB_FLAGS: i32 = 1008;
/// `SOL_TCP` (`IPPROTO_TCP`).
const SOL_TCP: i32 = 6;

/// Asks sock_ops for the state changes of a connection a walk has just recorded, so that its end
/// is counted (`stats::ENDED`): between two walks of every socket, the agent's count of
/// connections less those ended is a lower bound, which can only make a fair share larger. Keeps
/// the callbacks already asked for (a contained connection's RTT samples). Where sock_ops
/// records at establishment, the walks visit the records and need no count; here a kernel
/// without the option (6.11 and older) counts `ERR_ENDS`, and the agent then walks every socket.
///
/// # Safety
/// `sk` is a BTF `struct sock *` the iteration holds locked.
#[inline(always)]
unsafe fn ask_for_end(sk: *mut c_void) {
    let mut flags: i32 = 0;
    // SAFETY: a locked full socket; a 4-byte value on our stack.
    let mut rc = unsafe { bpf_getsockopt(sk, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, (&raw mut flags).cast(), 4) };
    if rc == 0 {
        let mut wanted = flags | BPF_SOCK_OPS_STATE_CB_FLAG as i32;
        // SAFETY: as above.
        rc = unsafe { bpf_setsockopt(sk, SOL_TCP, TCP_BPF_SOCK_OPS_CB_FLAGS, (&raw mut wanted).cast(), 4) };
    }
    if rc != 0 {
        count(stats::ERR_ENDS);
    }
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn enforcer_adopt(ctx: *mut c_void) -> i32 {
    let fields = ctx as *const *const u8;
    // SAFETY: the context is `struct bpf_iter__tcp { meta; sk_common; uid }`.
    let skc = unsafe { *fields.add(1) };
    if skc.is_null() {
        // The end-of-iteration call.
        return 0;
    }
    // NULL for time-wait and request sockets: they hold no send queue.
    // SAFETY: `skc` is a BTF `struct sock_common *`.
    let tp = unsafe { bpf_skc_to_tcp_sock(skc as *mut _) } as *const u8;
    if tp.is_null() {
        return 0;
    }
    // Already recorded (by sock_ops, or an earlier adoption).
    // SAFETY: `tp` is a BTF `struct tcp_sock *`, which begins with a `struct sock`.
    if unsafe { record(tp as *mut c_void, None) }.is_some() {
        return 0;
    }
    // SAFETY: as above.
    if let Some(rec) = unsafe { adopt(ctx, tp, &mut Clock::default(), RECORD_ADOPTED) }
        && let Some(n) = count_rare(stats::ADOPTED)
    {
        log_adopted(ctx, rec, n);
    }
    // Writes nothing: the snapshot reads the records.
    0
}

/// The sampled line about an adoption (`count_rare`): the nth on this CPU.
#[inline(always)]
fn log_adopted(ctx: *mut c_void, rec: &SockRecord, n: u64) {
    let (port, remote_port, remote_addr) = (rec.local_port, rec.remote_port, rec.remote_addr);
    if rec.family == AF_INET {
        info!(
            ctx,
            target: LOG,
            "adopted a connection that had no record: local port {}, remote {:i}:{} (count on this CPU: {})",
            port,
            u32::from_be(remote_addr[0]),
            remote_port,
            n
        );
    } else {
        info!(
            ctx,
            target: LOG,
            "adopted a connection that had no record: local port {}, remote [{:i}]:{} (count on this CPU: {})",
            port,
            ipv6(remote_addr),
            remote_port,
            n
        );
    }
}
