//! sock_ops on the watched cgroup: start tracking a socket when it becomes established (where
//! the walks need it, see `RECORD_AT_FIRST_SIGHT`), and give a new connection of a contained
//! remote its small send buffer and user timeout.
//!
//! The record costs more than the program: the kernel allocates socket storage at establishment
//! and frees it with the socket, outside any program's run time. A tracked connect/request/close
//! ran at 95–97 % of bare with it and at 100–101 % without it (BENCHMARKS.md). So where the walks
//! visit every TCP socket anyway, sock_ops leaves the record to the first walk that sees the
//! connection, and a short connection never has one.
//!
//! Nothing runs after establishment but two callbacks a few connections ask for: a contained
//! connection's RTT samples (`earn`), and the state changes of a connection a walk recorded at
//! first sight, whose end is counted (`stats::ENDED`, for the agent's revisits). Progress is
//! dated by the walks (the agent's scan and the snapshot), which reconcile the record with the
//! socket's `snd_una` and `rcv_nxt`. A
//! per-socket `BPF_SOCK_OPS_RTT_CB` dated each ACK exactly, but it cost about 225 ns per ACK of
//! new data (a cold storage lookup and a clock read; 37 % of a short connection's BPF time, and
//! the only BPF time of a bulk transfer), and bought at most one interval of precision on a
//! stall that the first walk to see a backlog dates anyway (BENCHMARKS.md). The kernel frees the
//! record with the socket.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB,
        BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB, SO_SNDBUF, SOL_SOCKET,
    },
    helpers::generated::{bpf_get_socket_cookie, bpf_getsockopt, bpf_setsockopt},
    macros::sock_ops,
    maps::lpm_trie::Key,
    programs::SockOpsContext,
};
use aya_log_ebpf::{error, warn};
use enforcer_common::{
    AF_INET, AF_INET6, CONTAIN_EARNED_AFTER, FAULT_SOCKOPS, RECORD_OUTBOUND, SockRecord, is_connection, names, stats,
    v4_mapped,
};

use crate::{
    kernel::{ipv6, watch},
    maps::{CONTAINED, RECORD_AT_FIRST_SIGHT, count, count_rare, record},
};

/// The target of this program's log lines in the agent's log.
const LOG: &str = names::PROG_SOCKOPS;

/// The kernel could not allocate the socket's record (or the context had no full socket).
const NO_STORAGE: i32 = 12; // ENOMEM
/// The error path `--inject-fault sockops` takes (kernel errors are positive errnos here).
const INJECTED: i32 = -1;

#[sock_ops]
pub fn enforcer_sockops(ctx: SockOpsContext) -> u32 {
    // Only the error paths log, and only sampled (`count_rare`): success logs nothing.
    match try_enforcer_sockops(&ctx) {
        Ok(()) => {}
        Err(NO_STORAGE) => {
            if let Some(n) = count_rare(stats::ERR_STORAGE) {
                warn!(
                    &ctx,
                    target: LOG,
                    "no memory for a new connection's record: it goes untracked (count on this CPU: {})",
                    n
                );
            }
        }
        Err(INJECTED) => {
            if let Some(n) = count_rare(stats::ERR_SOCKOPS) {
                warn!(
                    &ctx,
                    target: LOG,
                    "injected fault (--inject-fault sockops): a new connection goes untracked (count on this CPU: {})",
                    n
                );
            }
        }
        Err(e) => {
            if let Some(n) = count_rare(stats::ERR_SOCKOPS) {
                error!(
                    &ctx,
                    target: LOG,
                    "recording a new connection failed (errno {}): it goes untracked (count on this CPU: {})",
                    e,
                    n
                );
            }
        }
    }
    // Always "ok": enforcer never changes how TCP behaves.
    1
}

fn try_enforcer_sockops(ctx: &SockOpsContext) -> Result<(), i32> {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_RTT_CB {
        // Only a contained connection asks for this callback (`contain`).
        earn(ctx);
        return Ok(());
    }
    if op == BPF_SOCK_OPS_STATE_CB {
        // Only a connection a walk recorded asks for this one (`adopt::ask_for_end`): its end
        // is counted, once, when it leaves the states the walks count.
        let (old, new) = (ctx.arg(0) as u8, ctx.arg(1) as u8);
        if is_connection(old) && !is_connection(new) {
            count(stats::ENDED);
        }
        return Ok(());
    }
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return Ok(());
    }
    if watch!(fault) & FAULT_SOCKOPS != 0 {
        return Err(INJECTED);
    }
    // Every context field is read once, unconditionally and volatile: the verifier refuses a
    // context pointer that the compiler offset in one branch and dereferenced after a merge.
    let ops = ctx.ops;
    // SAFETY: plain reads of context fields at constant offsets.
    let (family, ip4, ip6, ports, seqs) = unsafe {
        use core::ptr::read_volatile as rv;
        (
            rv(&raw const (*ops).family) as u16,
            [rv(&raw const (*ops).local_ip4), rv(&raw const (*ops).remote_ip4)],
            [
                [
                    rv(&raw const (*ops).local_ip6[0]),
                    rv(&raw const (*ops).local_ip6[1]),
                    rv(&raw const (*ops).local_ip6[2]),
                    rv(&raw const (*ops).local_ip6[3]),
                ],
                [
                    rv(&raw const (*ops).remote_ip6[0]),
                    rv(&raw const (*ops).remote_ip6[1]),
                    rv(&raw const (*ops).remote_ip6[2]),
                    rv(&raw const (*ops).remote_ip6[3]),
                ],
            ],
            [rv(&raw const (*ops).local_port), rv(&raw const (*ops).remote_port)],
            [rv(&raw const (*ops).snd_una), rv(&raw const (*ops).rcv_nxt)],
        )
    };
    // SAFETY: the context's full socket (established callbacks always have one), or null.
    let sk = unsafe { rv_sk(ops) };
    let (local_addr, remote_addr) = match family {
        AF_INET => ([ip4[0], 0, 0, 0], [ip4[1], 0, 0, 0]),
        AF_INET6 => (ip6[0], ip6[1]),
        _ => return Ok(()),
    };
    // Assigns the socket its cookie: a destroy names it, the holders walk lists it.
    // SAFETY: the helper takes the sock_ops context the kernel passed in.
    unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if RECORD_AT_FIRST_SIGHT.get(0).is_some_and(|v| *v != 0) {
        // The first walk to see the connection records it.
        contain(ctx, family, remote_addr);
        return Ok(());
    }
    let now = crate::kernel::now();
    let fresh = SockRecord {
        local_addr,
        remote_addr,
        local_port: ports[0] as u16,
        // Network order in the upper 16 bits (`bpf_sock_ops.remote_port`).
        remote_port: u32::from_be(ports[1]) as u16,
        family,
        flags: if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB { RECORD_OUTBOUND } else { 0 },
        created_ns: now,
        tx_progress_ns: now,
        rx_progress_ns: now,
        zero_window_since_ns: 0,
        snd_una: seqs[0],
        rcv_nxt: seqs[1],
        outstanding_since_ns: 0,
    };
    let recorded = if sk.is_null() {
        Err(NO_STORAGE)
    } else {
        // SAFETY: a full socket from the sock_ops context.
        match unsafe { record(sk, Some(&fresh)) } {
            Some(_) => {
                count(stats::TRACKED);
                Ok(())
            }
            None => Err(NO_STORAGE),
        }
    };
    // Also when the record failed: a remote must not escape containment that way.
    contain(ctx, family, remote_addr);
    recorded
}

/// `ctx->sk`: the context's full socket, null when there is none.
///
/// # Safety
/// `ops` is the program's context.
#[inline(always)]
unsafe fn rv_sk(ops: *mut aya_ebpf::bindings::bpf_sock_ops) -> *mut core::ffi::c_void {
    // SAFETY: a plain read of a context field at a constant offset.
    unsafe { core::ptr::read_volatile(&raw const (*ops).__bindgen_anon_2.sk) }.cast()
}

/// Gives a new connection of a contained remote the remote's small send buffer, before the
/// application can queue anything on it, and the remote's `TCP_USER_TIMEOUT`. One trie lookup
/// per established connection; nothing runs per segment. Fails open: a connection whose buffer
/// cannot be set carries on as it is.
///
/// The kernel's `SO_SNDBUF` doubles the value, caps it at `net.core.wmem_max` and locks the
/// buffer (`SOCK_SNDBUF_LOCK`), so `tcp_init_buffer_space`, which runs right after this
/// callback, and later autotuning leave it alone.
#[inline(always)]
fn contain(ctx: &SockOpsContext, family: u16, remote: [u32; 4]) {
    let addr = if family == AF_INET { v4_mapped(remote[0]) } else { remote };
    let Some(c) = CONTAINED.get(Key::new(128, addr)) else {
        return;
    };
    let (sndbuf, user_timeout_ms) = (c.sndbuf, c.user_timeout_ms);
    if sndbuf == 0 {
        // A protected network inside a contained one.
        return;
    }
    // A copy on the stack for the helper, which reads `optlen` bytes of it.
    let mut sndbuf = sndbuf as i32;
    // SAFETY: the sock_ops context of an established (full, locked) socket; a 4-byte option
    // value that lives on our stack.
    let rc =
        unsafe { bpf_setsockopt(ctx.ops.cast(), SOL_SOCKET as i32, SO_SNDBUF as i32, (&raw mut sndbuf).cast(), 4) };
    if rc != 0 {
        if let Some(n) = count_rare(stats::ERR_CONTAIN) {
            warn!(
                ctx,
                target: LOG,
                "could not give a connection of contained remote {:i} its small send buffer (errno {}): it carries \
                 on uncontained (count on this CPU: {})",
                ipv6(addr),
                -rc,
                n
            );
        }
        // Uncontained, and without the RTT callback that would take a user timeout back.
        return;
    }
    count(stats::CONTAINED);
    // Its buffer is earned back by progress (`earn`): an innocent behind a contained address
    // pays a slow start, an attacker that never acknowledges keeps the small buffer. This
    // connection alone gets a callback per RTT sample; nobody else pays.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
    if user_timeout_ms == 0 {
        return;
    }
    // An application's own shorter timeout (a listener's is inherited) stands.
    let mut current: i32 = 0;
    // SAFETY: as above; a 4-byte option value on our stack.
    let got = unsafe { bpf_getsockopt(ctx.ops.cast(), SOL_TCP, TCP_USER_TIMEOUT, (&raw mut current).cast(), 4) };
    let mut timeout = user_timeout_ms.min(i32::MAX as u32) as i32;
    if got == 0 && current > 0 && current <= timeout {
        return;
    }
    // SAFETY: as above.
    let rc = unsafe { bpf_setsockopt(ctx.ops.cast(), SOL_TCP, TCP_USER_TIMEOUT, (&raw mut timeout).cast(), 4) };
    if rc != 0
        && let Some(n) = count_rare(stats::ERR_CONTAIN)
    {
        warn!(
            ctx,
            target: LOG,
            "could not give a connection of contained remote {:i} its TCP_USER_TIMEOUT (errno {}): only the agent \
             can end its stall (count on this CPU: {})",
            ipv6(addr),
            -rc,
            n
        );
    }
}

/// `SOL_TCP` (`IPPROTO_TCP`) and `TCP_USER_TIMEOUT` (linux/tcp.h), which `bpf_setsockopt`
/// accepts since Linux 6.0.
const SOL_TCP: i32 = 6;
const TCP_USER_TIMEOUT: i32 = 18;

/// A contained connection's RTT sample: once its peer has acknowledged `CONTAIN_EARNED_AFTER`
/// bytes, it gets a send buffer as large as `net.core.wmem_max` allows (the kernel caps the
/// value there; the buffer stays locked, where an uncontained one would be autotuned), loses the
/// user timeout `contain` gave it (a reader that proved itself may pause like anyone), and asks
/// for no more callbacks. Fails open: a buffer that cannot be set stays small.
#[inline(always)]
fn earn(ctx: &SockOpsContext) {
    let ops = ctx.ops;
    // SAFETY: plain reads of context fields at constant offsets, all unconditional (see
    // `try_enforcer_sockops`).
    let (acked, family, ip4, ip6) = unsafe {
        use core::ptr::read_volatile as rv;
        (
            rv(&raw const (*ops).bytes_acked),
            rv(&raw const (*ops).family) as u16,
            rv(&raw const (*ops).remote_ip4),
            [
                rv(&raw const (*ops).remote_ip6[0]),
                rv(&raw const (*ops).remote_ip6[1]),
                rv(&raw const (*ops).remote_ip6[2]),
                rv(&raw const (*ops).remote_ip6[3]),
            ],
        )
    };
    if acked < CONTAIN_EARNED_AFTER {
        return;
    }
    let mut sndbuf = i32::MAX;
    // SAFETY: the sock_ops context of a full socket (RTT samples come with one); a 4-byte option
    // value on our stack.
    let rc =
        unsafe { bpf_setsockopt(ctx.ops.cast(), SOL_SOCKET as i32, SO_SNDBUF as i32, (&raw mut sndbuf).cast(), 4) };
    if rc == 0 {
        count(stats::EARNED);
    }
    // The timeout `contain` gave it, if the remote is still contained with it (an application's
    // own value is left alone; one given by a containment since released stays).
    let addr = if family == AF_INET { v4_mapped(ip4) } else { ip6 };
    if let Some(c) = CONTAINED.get(Key::new(128, addr)) {
        let given = c.user_timeout_ms.min(i32::MAX as u32) as i32;
        let mut current: i32 = 0;
        // SAFETY: as above.
        let got = unsafe { bpf_getsockopt(ctx.ops.cast(), SOL_TCP, TCP_USER_TIMEOUT, (&raw mut current).cast(), 4) };
        if got == 0 && given != 0 && current == given {
            let mut none: i32 = 0;
            // SAFETY: as above.
            let _ = unsafe { bpf_setsockopt(ctx.ops.cast(), SOL_TCP, TCP_USER_TIMEOUT, (&raw mut none).cast(), 4) };
        }
    }
    // No more RTT samples; a walk's request for the connection's end stays.
    let _ = ctx.set_cb_flags((ctx.cb_flags() & !BPF_SOCK_OPS_RTT_CB_FLAG) as i32);
}
