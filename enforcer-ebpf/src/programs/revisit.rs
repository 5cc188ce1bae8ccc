//! Between two walks of every socket, the agent looks at the last walk's candidates alone: a
//! socket classifier it never attaches, run with `BPF_PROG_TEST_RUN` inside each network
//! namespace, once per candidate there (the test run's `repeat`). Each run finds its candidate
//! by 4-tuple (`bpf_sk_lookup_tcp`, a hash lookup in the namespace's established table), checks
//! it is still the same socket (its cookie), and visits it as a walk does: the record is
//! reconciled and the entry written to `REVISIT_OUT`. What a walk costs per socket of the
//! namespace, tracked or not (the hash walk, a socket lock each), a revisit costs per candidate.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::generated::{bpf_sk_lookup_tcp, bpf_sk_release, bpf_skc_to_tcp_sock},
    macros::classifier,
    programs::TcContext,
};
use enforcer_common::{AF_INET, AF_INET6, REVISIT_NEXT, RevisitKey, ScanParams, SnapshotEntry, scan_mode};

use crate::{
    kernel::{load, off},
    maps::{REVISIT_CURSOR, REVISIT_KEYS, REVISIT_OUT, record},
    programs::snapshot::visit,
};

/// Every revisited socket is written out, whatever it holds now: the agent judges the same set
/// an interval after the walk that chose it.
const EVERY: ScanParams =
    ScanParams { mode: scan_mode::ALL, count_remotes: 0, group_v4: 0, group_v6: 0, generation: 0 };

/// TC_ACT_OK: never attached, so what it returns goes nowhere.
const OK: i32 = 0;

#[classifier]
pub fn enforcer_revisit(ctx: TcContext) -> i32 {
    let Some(next) = REVISIT_CURSOR.get_ptr_mut(REVISIT_NEXT) else { return OK };
    // SAFETY: a live slot of an array map; the runs of one test run follow each other on one CPU.
    let i = unsafe {
        let i = *next;
        *next = i.wrapping_add(1);
        i
    };
    let (Some(key), Some(out)) = (REVISIT_KEYS.get(i), REVISIT_OUT.get_ptr_mut(i)) else { return OK };
    // SAFETY: a live slot of an array map, written by this run only.
    let out = unsafe { &mut *out };
    // Gone, unless found below.
    out.cookie = 0;
    if key.family != AF_INET && key.family != AF_INET6 {
        return OK;
    }
    let (mut tuple, size) = tuple_of(key);
    // As a segment from the remote would find it, in the namespace of the thread that runs the
    // test (the test run's skb is its loopback device's).
    // SAFETY: the context is this run's skb; `tuple` is `size` readable bytes on the stack.
    let sk = unsafe { bpf_sk_lookup_tcp(ctx.as_ptr(), &raw mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if sk.is_null() {
        return OK;
    }
    // SAFETY: a socket the lookup returned, released right after.
    unsafe {
        found(sk.cast(), key, out);
        bpf_sk_release(sk.cast());
    }
    OK
}

/// Whether an IPv6 address (as `SockRecord` keeps it) is an IPv4-mapped one (`::ffff:a.b.c.d`).
#[inline(always)]
fn mapped(a: &[u32; 4]) -> bool {
    a[0] == 0 && a[1] == 0 && a[2] == 0x0000_ffff_u32.to_be()
}

/// The candidate's 4-tuple as a segment from its remote carries it, and its size. A dual-stack
/// socket's IPv4 peer is found in the IPv4 table, where the kernel keeps it.
#[inline(always)]
fn tuple_of(key: &RevisitKey) -> (bpf_sock_tuple, u32) {
    // SAFETY: plain old data; every byte is written below or stays zero.
    let mut t: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let (sport, dport) = (key.remote_port.to_be(), key.local_port.to_be());
    if key.family == AF_INET6 && mapped(&key.remote_addr) && mapped(&key.local_addr) {
        t.__bindgen_anon_1.ipv4.saddr = key.remote_addr[3];
        t.__bindgen_anon_1.ipv4.daddr = key.local_addr[3];
        t.__bindgen_anon_1.ipv4.sport = sport;
        t.__bindgen_anon_1.ipv4.dport = dport;
        return (t, 12);
    }
    if key.family == AF_INET {
        t.__bindgen_anon_1.ipv4.saddr = key.remote_addr[0];
        t.__bindgen_anon_1.ipv4.daddr = key.local_addr[0];
        t.__bindgen_anon_1.ipv4.sport = sport;
        t.__bindgen_anon_1.ipv4.dport = dport;
    } else {
        t.__bindgen_anon_1.ipv6.saddr = key.remote_addr;
        t.__bindgen_anon_1.ipv6.daddr = key.local_addr;
        t.__bindgen_anon_1.ipv6.sport = sport;
        t.__bindgen_anon_1.ipv6.dport = dport;
    }
    (t, if key.family == AF_INET { 12 } else { 36 })
}

/// The socket the lookup found: when it is still the candidate, with its record, visited into
/// `out`. Never fails: a socket that is not is left out (zero cookie).
///
/// # Safety
/// `sk` is a referenced socket from `bpf_sk_lookup_tcp`.
#[inline(always)]
unsafe fn found(sk: *mut c_void, key: &RevisitKey, out: &mut SnapshotEntry) {
    // SAFETY: the helper takes any socket pointer; NULL for one that is not a TCP full socket.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) } as *const u8;
    if tp.is_null() {
        return;
    }
    // A new connection on the same 4-tuple is another socket.
    // SAFETY: `tp` is a BTF `struct tcp_sock *`; the offset of `sk_cookie`.
    let cookie: u64 = unsafe { load(tp, off!(sk_cookie)) };
    if cookie != key.cookie {
        return;
    }
    // SAFETY: `tp` is a BTF `struct tcp_sock *`, which begins with a `struct sock`.
    let Some(rec) = (unsafe { record(tp as *mut c_void, None) }) else { return };
    // SAFETY: as above.
    let _ = unsafe {
        visit(tp, rec, &EVERY, None, |e| {
            *out = *e;
            0
        })
    };
}
