//! `tcp:tcp_probe` (BTF tracepoint): every segment an established socket receives, zero-window
//! probe ACKs included, which sock_ops never sees. Keeps the record's progress times and the
//! zero-window start current.
//!
//! The tracepoint fires at the top of `tcp_rcv_established`, before the segment is processed,
//! so the socket still holds the old `snd_una`/`rcv_nxt` and `skb->data` is the TCP header; the
//! segment itself says what it acknowledges and which window it advertises. Hot path for every
//! socket of the machine: sockets we do not track cost one cookie read and one hash lookup.
use aya_ebpf::{helpers::generated::bpf_skc_to_tcp_sock, macros::btf_tracepoint, programs::BtfTracePointContext};
use enforcer_common::{FAULT_TCP_PROBE, stats};

use crate::{
    kernel::{load, now, off, read_bytes, seq_after, watch},
    maps::{SOCKETS, count},
};

const TH_ACK: u8 = 0x10;

#[btf_tracepoint(function = "tcp_probe")]
pub fn enforcer_tcp_probe(ctx: BtfTracePointContext) -> i32 {
    // SAFETY: tcp_probe's arguments are (struct sock *, const struct sk_buff *).
    if unsafe { try_enforcer_tcp_probe(&ctx) }.is_err() {
        count(stats::ERR_TCP_PROBE);
    }
    0
}

unsafe fn try_enforcer_tcp_probe(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let sk: *const u8 = ctx.arg(0);
    let skb: *const u8 = ctx.arg(1);
    // SAFETY: `sk` is a BTF `struct sock *`; the offset is `skc_cookie`'s.
    let cookie: u64 = unsafe { load(sk, off!(sk_cookie)) };
    if cookie == 0 {
        // No cookie was ever asked for: not a socket we track.
        return Ok(());
    }
    let Some(rec) = SOCKETS.get_ptr_mut(cookie) else {
        return Ok(());
    };
    if watch!(fault) & FAULT_TCP_PROBE != 0 {
        return Err(());
    }
    // SAFETY: `sk` is a full socket (tcp_rcv_established), so the cast succeeds; checked anyway.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut _) } as *const u8;
    if tp.is_null() {
        return Err(());
    }
    // SAFETY: `skb` is a BTF `struct sk_buff *`; offsets of `data` and `len`.
    let (data, len): (*const u8, u32) = unsafe { (load(skb, off!(skb_data)), load(skb, off!(skb_len))) };
    // seq, ack_seq, data offset, flags, window of the TCP header.
    let th: [u8; 16] = read_bytes(data).ok_or(())?;
    let seq = u32::from_be_bytes([th[4], th[5], th[6], th[7]]);
    let ack = u32::from_be_bytes([th[8], th[9], th[10], th[11]]);
    let header_len = ((th[12] >> 4) as u32) * 4;
    let flags = th[13];
    let window = u16::from_be_bytes([th[14], th[15]]);
    let data_len = len.saturating_sub(header_len);

    // SAFETY: `tp` is a BTF `struct tcp_sock *`; offsets of u32 fields.
    let (snd_una, snd_nxt, rcv_nxt): (u32, u32, u32) =
        unsafe { (load(tp, off!(tp_snd_una)), load(tp, off!(tp_snd_nxt)), load(tp, off!(tp_rcv_nxt))) };
    // SAFETY: a map value pointer from a successful lookup; racing writers only store times.
    let rec = unsafe { &mut *rec };
    // Writes only when something changed: a dirty cache line costs more than the compare.
    if flags & TH_ACK != 0 {
        // Progress only for an ACK of data we really sent: a peer must not fake progress by
        // acknowledging beyond snd_nxt (the kernel drops such ACKs too).
        if seq_after(ack, snd_una) && !seq_after(ack, snd_nxt) {
            rec.snd_una = ack;
            rec.tx_progress_ns = now();
        }
        // Zero is zero whatever the window scale.
        if window == 0 {
            if rec.zero_window_since_ns == 0 {
                rec.zero_window_since_ns = now();
            }
        } else if rec.zero_window_since_ns != 0 {
            rec.zero_window_since_ns = 0;
        }
    }
    // New in-order bytes from the peer.
    if data_len > 0 && !seq_after(seq, rcv_nxt) && seq_after(seq.wrapping_add(data_len), rcv_nxt) {
        rec.rcv_nxt = seq.wrapping_add(data_len);
        rec.rx_progress_ns = now();
    }
    Ok(())
}
