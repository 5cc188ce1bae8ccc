//! Proxy mode (`--proxy`): which tracked sockets a process relays between, from the `sock`
//! tracepoints that fire in the caller's thread after every recvmsg and sendmsg (Linux 6.3+),
//! or, where a kernel lacks them, fexit on `tcp_recvmsg` and `tcp_sendmsg` (the loader tries
//! the tracepoints first: fexit needs the kernel's function tracing, which some refuse).
//!
//! A read from a tracked socket is remembered by thread (`LAST_RECV`); a write by the same thread
//! to another tracked socket within `RELAY_WINDOW_NS` relays it: `RELAYS` then
//! says where the read socket's bytes went, when, and how many in all. Event-loop proxies
//! (squid, nginx, haproxy, envoy) read and write in the same thread: a client's request is read
//! and written to its upstream, the upstream's response read and written to the client.
//!
//! Cost: every recvmsg and sendmsg of every socket runs these programs once proxy mode is on.
//! An untracked socket costs a socket-storage lookup and returns; a tracked read a clock read
//! and a hash update; a tracked write a hash lookup; only a relay updates `RELAYS`
//! (BENCHMARKS.md).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, fexit},
    programs::{BtfTracePointContext, FExitContext},
};
use enforcer_common::{LastRecv, RELAY_WINDOW_NS, RelayOut};

use crate::{
    kernel::{load, now, off},
    maps::{LAST_RECV, RELAYS, record},
};

/// `MSG_PEEK`: a read that leaves the bytes queued relays nothing; nor does `MSG_ERRQUEUE` (a
/// zerocopy completion or a timestamp, no data of the peer's).
const MSG_PEEK: i32 = 2;
const MSG_ERRQUEUE: i32 = 0x2000;

/// `sock_recv_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn enforcer_relay_recv(ctx: BtfTracePointContext) -> i32 {
    // Nothing to count: a read that is not remembered only loses a pairing.
    try_recv(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

/// `sock_send_length(struct sock *sk, int ret, int flags)`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn enforcer_relay_send(ctx: BtfTracePointContext) -> i32 {
    try_send(ctx.arg(0), ctx.arg(1));
    0
}

/// `int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len)`:
/// its return value follows its five arguments.
#[fexit(function = "tcp_recvmsg")]
pub fn enforcer_relay_recv_fexit(ctx: FExitContext) -> i32 {
    try_recv(ctx.arg(0), ctx.arg(5), ctx.arg(3));
    0
}

/// `int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)`.
#[fexit(function = "tcp_sendmsg")]
pub fn enforcer_relay_send_fexit(ctx: FExitContext) -> i32 {
    try_send(ctx.arg(0), ctx.arg(3));
    0
}

/// A read of `ret` bytes from `sk` (a trusted BTF `struct sock *`) with `flags`.
#[inline(always)]
fn try_recv(sk: *mut c_void, ret: i32, flags: i32) -> Option<()> {
    if ret <= 0 || flags & (MSG_PEEK | MSG_ERRQUEUE) != 0 {
        return None;
    }
    // Tracked sockets only: the gate every other socket of the host stops at.
    // SAFETY: a tp_btf or fexit argument is a trusted BTF `struct sock *`, which the helper
    // accepts.
    unsafe { record(sk, None) }?;
    // SAFETY: `sk` is a BTF socket pointer; `sk_cookie` an offset in it, found in BTF.
    let cookie: u64 = unsafe { load(sk as *const u8, off!(sk_cookie)) };
    let (tid, last) = (bpf_get_current_pid_tgid() as u32, LastRecv { cookie, at_ns: now() });
    match LAST_RECV.get_ptr_mut(tid) {
        // SAFETY: a live value of the map, this thread's: only this thread writes it.
        Some(slot) => unsafe { *slot = last },
        // An LRU map makes room by evicting; should the update still fail, this read pairs
        // with nothing, which loses a relay, never makes a false one.
        None => {
            let _ = LAST_RECV.insert(tid, last, 0);
        }
    }
    Some(())
}

/// A write of `ret` bytes to `sk` (as in `try_recv`).
#[inline(always)]
fn try_send(sk: *mut c_void, ret: i32) -> Option<()> {
    if ret <= 0 {
        return None;
    }
    // Only to a tracked socket, and the gate every other socket of the host stops at: a write to
    // a pipe, a log socket or a UDP query is no relay.
    // SAFETY: as in `try_recv`.
    unsafe { record(sk, None) }?;
    // Most tracked writes stop here: their thread did not read a tracked socket lately.
    // SAFETY: a copy of a live map value.
    let last = unsafe { LAST_RECV.get(bpf_get_current_pid_tgid() as u32) }.copied()?;
    // SAFETY: as in `try_recv`.
    let cookie: u64 = unsafe { load(sk as *const u8, off!(sk_cookie)) };
    // A reply on the socket it read from relays nothing.
    if cookie == last.cookie {
        return None;
    }
    let at_ns = now();
    if at_ns.saturating_sub(last.at_ns) > RELAY_WINDOW_NS {
        return None;
    }
    match RELAYS.get_ptr_mut(last.cookie) {
        // SAFETY: a live value of the map. Two CPUs relaying the same socket at once may lose
        // one update of the byte count; the time and the partner are right either way.
        Some(r) => unsafe {
            (*r).to = cookie;
            (*r).at_ns = at_ns;
            (*r).bytes += ret as u64;
        },
        None => {
            let fresh = RelayOut { to: cookie, at_ns, bytes: ret as u64 };
            // An LRU map makes room by evicting; should the update still fail, the next relay
            // tries again.
            let _ = RELAYS.insert(last.cookie, fresh, 0);
        }
    }
    Some(())
}
