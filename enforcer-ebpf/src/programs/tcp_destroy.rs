//! `tcp:tcp_destroy_sock` (BTF tracepoint): the kernel frees a TCP socket; drop its record.
//!
//! Fires once per socket of the machine; untracked ones cost a failed delete.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use enforcer_common::stats;

use crate::{
    kernel::{load, off},
    maps::{SOCKETS, count},
};

#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn enforcer_tcp_destroy(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: tcp_destroy_sock's argument is (struct sock *).
    unsafe { try_enforcer_tcp_destroy(&ctx) };
    0
}

unsafe fn try_enforcer_tcp_destroy(ctx: &BtfTracePointContext) {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: `sk` is a BTF `struct sock *`; the offset is `skc_cookie`'s.
    let cookie: u64 = unsafe { load(sk, off!(sk_cookie)) };
    if cookie == 0 {
        return;
    }
    if SOCKETS.remove(cookie).is_ok() {
        count(stats::REMOVED);
    }
}
