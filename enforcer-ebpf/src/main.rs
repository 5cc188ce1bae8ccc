//! enforcer's kernel side: a record per connection from sock_ops, and the walks that read and
//! date it (`iter/bpf_sk_storage_map`, or `iter/tcp`). One file per hook under `programs/`.
//!
//! Every program fails open: an error is counted in `STATS` and the kernel carries on exactly
//! as without enforcer (sock_ops returns 1, the iterators return 0).
#![no_std]
#![no_main]

mod kernel;
mod maps;
mod programs;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies `no_std`.
    loop {}
}
