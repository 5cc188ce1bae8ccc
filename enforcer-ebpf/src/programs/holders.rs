//! Who holds each tracked socket: `iter/task_file` visits every open file of every process (of
//! the reader's pid namespace; threads sharing a descriptor table once), and writes a `Holder`
//! for each descriptor of a socket that has a cookie (every tracked one does). The agent reads
//! it to name the process behind a decision instead of reading `/proc/PID/fd` links.
//!
//! Orphans (closed by their application, still draining) are in no descriptor table: they have
//! no holder, as before.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_sock_from_file;
use enforcer_common::Holder;

use crate::kernel::{load, off, read_bytes, seq_write};

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn enforcer_holders(ctx: *mut c_void) -> i32 {
    // SAFETY: the context of an `iter/task_file` program.
    unsafe { try_holders(ctx) };
    0
}

/// One open file.
///
/// # Safety
/// `ctx` is `struct bpf_iter__task_file { meta; task; u32 fd; file }`.
#[inline(always)]
unsafe fn try_holders(ctx: *mut c_void) {
    let fields = ctx as *const *mut u8;
    // SAFETY: context fields 0 (meta), 1 (task) and 3 (file; the fd and its padding are 2).
    let (meta, task, file) = unsafe { (*fields, *fields.add(1), *fields.add(3)) };
    if meta.is_null() || task.is_null() || file.is_null() {
        // The end-of-iteration call.
        return;
    }
    // NULL unless the file is a socket.
    // SAFETY: `file` is a BTF `struct file *`.
    let sock = unsafe { bpf_sock_from_file(file.cast()) } as *const u8;
    if sock.is_null() {
        return;
    }
    // SAFETY: `sock` is a BTF `struct socket *`; the offset of its `sk`, found in BTF.
    let sk: *const u8 = unsafe { load(sock, off!(socket_sk)) };
    if sk.is_null() {
        return;
    }
    // The verifier takes `sk` as untrusted (read through a pointer it cannot vouch for), so it
    // cannot be passed to the storage helper to ask whether it is tracked. A cookie tells
    // instead: a tracked socket always has one (sock_ops and adoption assign it), and a socket
    // that never had one is nothing the agent could ask about.
    // SAFETY: the offset of `skc_cookie`, found in BTF; the load is fault-safe.
    let cookie: u64 = unsafe { load(sk, off!(sk_cookie)) };
    if cookie == 0 {
        return;
    }
    // SAFETY: address arithmetic only; the helper checks the address it reads.
    let Some(comm) = read_bytes::<16>(unsafe { task.add(off!(task_comm) as usize) }) else { return };
    let h = Holder {
        cookie,
        // SAFETY: the offset of `task_struct.tgid`, found in BTF by the loader.
        tgid: unsafe { load(task, off!(task_tgid)) },
        _pad: 0,
        comm,
    };
    // A full buffer (EOVERFLOW) runs this call again at the next read(); any other failure
    // loses one holder, and attribution then names no process for that socket.
    // SAFETY: `meta` is this iteration's.
    unsafe { seq_write(meta, &h) };
}
