//! `tcp:tcp_probe` (BTF tracepoint): every segment an established socket receives, zero-window
//! probe ACKs included, which sock_ops never sees. Keeps the record's progress times and the
//! zero-window start current.
//!
//! The tracepoint fires at the top of `tcp_rcv_established`, before the segment is processed
//! (and before checksum and window checks), so the socket holds what the kernel accepted from
//! earlier segments and `skb->data` is the TCP header. Only the kernel's own state counts as
//! progress; this segment's acknowledgement is kept as a candidate and dates the progress once
//! the kernel's `snd_una` confirms it, so a peer cannot fake progress with segments the kernel
//! drops. Hot path for every socket of the machine: a socket that never had a cookie (nobody
//! tracks it) costs one load; another untracked one a storage lookup that finds the socket has
//! no storage at all; a tracked one a pointer walk to its record, no hash.
use aya_ebpf::{helpers::generated::bpf_skc_to_tcp_sock, macros::btf_tracepoint, programs::BtfTracePointContext};
use aya_log_ebpf::{error, warn};
use enforcer_common::{FAULT_TCP_PROBE, names, stats};

use crate::{
    kernel::{LazyNow, load, off, read_bytes, reconcile, seq_after, watch},
    maps::{count_rare, record},
};

/// The target of this program's log lines in the agent's log.
const LOG: &str = names::PROG_TCP_PROBE;

const TH_ACK: u8 = 0x10;

/// Why a segment of a tracked socket was not accounted (its record keeps its old times).
enum Error {
    /// `--inject-fault tcp-probe`.
    Injected,
    /// `bpf_skc_to_tcp_sock` refused the socket.
    NotTcp,
    /// The segment's TCP header could not be read.
    Header,
}

#[btf_tracepoint(function = "tcp_probe")]
pub fn enforcer_tcp_probe(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: tcp_probe's arguments are (struct sock *, const struct sk_buff *).
    let Err(e) = (unsafe { try_enforcer_tcp_probe(&ctx) }) else {
        // The per-segment path: nothing is counted or logged on success.
        return 0;
    };
    // Sampled (`count_rare`): an error here can repeat on every segment.
    if let Some(n) = count_rare(stats::ERR_TCP_PROBE) {
        match e {
            Error::Injected => warn!(
                &ctx,
                target: LOG,
                "injected fault (--inject-fault tcp-probe): a segment goes unaccounted (count on this CPU: {})",
                n
            ),
            Error::NotTcp => error!(
                &ctx,
                target: LOG,
                "a tracked socket is not a tcp_sock: its segment goes unaccounted (count on this CPU: {})",
                n
            ),
            Error::Header => error!(
                &ctx,
                target: LOG,
                "could not read a segment's TCP header: its ACK goes unaccounted (count on this CPU: {})",
                n
            ),
        }
    }
    0
}

unsafe fn try_enforcer_tcp_probe(ctx: &BtfTracePointContext) -> Result<(), Error> {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    // SAFETY: `sk` is a BTF `struct sock *`; the offset is `skc_cookie`'s.
    let cookie: u64 = unsafe { load(sk, off!(sk_cookie)) };
    if cookie == 0 {
        // No cookie was ever asked for: not a socket we track (sock_ops and adoption ask).
        return Ok(());
    }
    // SAFETY: `sk` is a BTF `struct sock *`.
    let Some(rec) = (unsafe { record(sk as *mut _, None) }) else {
        return Ok(());
    };
    if watch!(fault) & FAULT_TCP_PROBE != 0 {
        return Err(Error::Injected);
    }
    // SAFETY: `sk` is a full socket (tcp_rcv_established), so the cast succeeds; checked anyway.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as *const u8;
    if tp.is_null() {
        return Err(Error::NotTcp);
    }
    // The socket's state before this segment: what the kernel accepted from earlier ones.
    // SAFETY: `tp` is a BTF `struct tcp_sock *`; offsets of u32 fields.
    let (snd_una, snd_nxt, rcv_nxt, snd_wnd): (u32, u32, u32, u32) = unsafe {
        (load(tp, off!(tp_snd_una)), load(tp, off!(tp_snd_nxt)), load(tp, off!(tp_rcv_nxt)), load(tp, off!(tp_snd_wnd)))
    };
    // SAFETY: as above.
    let write_seq: u32 = unsafe { load(tp, off!(tp_write_seq)) };
    let mut now = LazyNow::new();
    reconcile(rec, snd_una, rcv_nxt, snd_wnd, &mut now);

    // This segment's acknowledgement, a candidate until the kernel's snd_una confirms it. With
    // nothing in flight no acknowledgement can be one, and the header need not be read.
    if snd_nxt == snd_una {
        return Ok(());
    }
    // SAFETY: `skb` is a BTF `struct sk_buff *`; the offset of `data`, the TCP header here.
    let data: *const u8 = unsafe { load(skb, off!(skb_data)) };
    let th: [u8; 14] = read_bytes(data).ok_or(Error::Header)?;
    let ack = u32::from_be_bytes([th[8], th[9], th[10], th[11]]);
    if th[13] & TH_ACK != 0 && seq_after(ack, snd_una) && !seq_after(ack, snd_nxt) {
        rec.pending_ack = ack;
        rec.pending_drains = u32::from(ack == write_seq);
        rec.pending_ns = now.get();
    }
    Ok(())
}
