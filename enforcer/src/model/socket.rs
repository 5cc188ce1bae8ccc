//! The socket domain type: one tracked socket as the policy judges it and an operator reads it
//! (addresses, states, byte counts, durations), carrying the raw snapshot entry that a destroy
//! and the kill journal need.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use enforcer_common::{AF_INET, ENTRY_OUT_OF_ORDER, RECORD_ADOPTED, RECORD_FIRST_SEEN, RECORD_OUTBOUND, SnapshotEntry};
use serde::Serialize;

/// One tracked socket. Byte counts are bytes; durations milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Socket {
    pub cookie: u64,
    #[serde(serialize_with = "as_string")]
    pub local: SocketAddr,
    #[serde(serialize_with = "as_string")]
    pub remote: SocketAddr,
    pub state: &'static str,
    /// Queued and not yet acknowledged by the peer (SIOCOUTQ).
    pub send_queue: u64,
    /// Queued and not yet sent.
    pub unsent: u64,
    /// Received and not yet read by the application.
    pub recv_queue: u64,
    /// Memory the kernel charges the socket, both sides: queued skbs with their overhead
    /// (`sk_wmem_queued`; a peer with a tiny window makes it many times `send_queue`) and what it
    /// received (`sk_rmem_alloc`, out-of-order segments included).
    pub charged: u64,
    /// The receive side of `charged` (`sk_rmem_alloc`).
    pub recv_charged: u64,
    /// The kernel holds segments beyond a hole the peer has not filled: memory no read can free.
    pub out_of_order: bool,
    /// The peer's advertised window.
    pub peer_window: u64,
    /// How long the peer's window has been zero; 0 while open.
    pub zero_window_ms: u64,
    /// Time since `snd_una` last advanced while data is outstanding, and no longer than since a
    /// snapshot last saw nothing outstanding (a backlog is no older than its data); 0 when
    /// nothing is outstanding.
    pub stalled_ms: u64,
    /// Time since new data last arrived from the peer.
    pub rx_idle_ms: u64,
    /// Time since `snd_una` last advanced, whether or not data is outstanding.
    pub tx_idle_ms: u64,
    /// Since the connection's record was made: see `recorded`.
    pub age_ms: u64,
    /// Adoption made its record: the connection existed before the agent started, or recording
    /// it failed. Times count from the adoption. (`recorded` says the same and more.)
    pub adopted: bool,
    /// When enforcer made the record that `age_ms` and the first progress count from.
    pub recorded: Recorded,
    /// Who opened the connection, where sock_ops saw it established.
    pub opened: Opened,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub retransmits: u64,
    pub rtos: u64,
    /// The retransmission timeout the socket's measured RTT gives (`srtt/8 + rttvar`, at least
    /// the kernel's 200 ms; its initial 1 s before the first RTT sample), before any back-off:
    /// what a stall on a slow or lossy path is measured against.
    pub rto_ms: u64,
    pub cgroup_id: u64,
    /// Interface the socket is bound to (SO_BINDTODEVICE), 0 when none: a destroy must name it.
    pub bound_dev_if: u32,
    /// Inode of the socket's network namespace (`lsns -t net`, `ls -iL /proc/PID/ns/net`).
    pub netns: u64,
    /// Proxy mode: where this socket's bytes were relayed last; `None` when never (or proxy
    /// mode is off).
    pub relay: Option<Relay>,
    /// What the kernel wrote: the 4-tuple, cookie and bound interface a destroy names, and the
    /// record the kill journal keeps.
    #[serde(skip)]
    pub raw: SnapshotEntry,
}

/// Proxy mode: a socket's bytes, read by a thread that soon after wrote to another tracked
/// socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Relay {
    /// Cookie of the socket they were written to last.
    pub to: u64,
    /// Since then.
    pub last_ms: u64,
    /// Bytes relayed from this socket in all.
    pub bytes: u64,
}

/// When a connection's record was made (`RECORD_*` flags), in `sockets --json` as
/// `"established"`, `"first_seen"` or `"adopted"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recorded {
    /// By sock_ops, at establishment: where the walks visit the records.
    Established,
    /// By the first walk to see the connection: where the walks visit every TCP socket, so a
    /// connection that ends before any walk never costs a record.
    FirstSeen,
    /// By adoption: the connection predates the agent, or recording it failed.
    Adopted,
}

impl Recorded {
    fn of(flags: u16) -> Self {
        if flags & RECORD_ADOPTED != 0 {
            Self::Adopted
        } else if flags & RECORD_FIRST_SEEN != 0 {
            Self::FirstSeen
        } else {
            Self::Established
        }
    }
}

/// Who opened a connection, in `sockets --json` as `"here"`, `"peer"` or `"unknown"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Opened {
    /// This host connected (a proxy's upstream).
    Here,
    /// The peer connected (a proxy's client).
    Peer,
    /// A walk made the record (adopted, or first seen): not known.
    Unknown,
}

impl Opened {
    fn of(flags: u16) -> Self {
        if flags & RECORD_OUTBOUND != 0 {
            Self::Here
        } else if flags & (RECORD_ADOPTED | RECORD_FIRST_SEEN) != 0 {
            Self::Unknown
        } else {
            Self::Peer
        }
    }
}

/// Serialises an address as `ss` writes it (`127.0.0.1:80`, `[::1]:443`).
pub fn as_string<S: serde::Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(addr)
}

/// The kernel's own RTO from its RTT estimate (`__tcp_set_rto`): `srtt_us` holds 8 × the
/// smoothed RTT; bounded as `tcp_bound_rto` does (200 ms to 120 s); 1 s (`TCP_TIMEOUT_INIT`)
/// before the first sample.
fn rto_ms(srtt_us: u32, rttvar_us: u32) -> u64 {
    if srtt_us == 0 {
        return 1000;
    }
    ((u64::from(srtt_us >> 3) + u64::from(rttvar_us)) / 1000).clamp(200, 120_000)
}

fn ms_since(now_ns: u64, then_ns: u64) -> u64 {
    now_ns.saturating_sub(then_ns) / 1_000_000
}

pub fn addr(family: u16, words: [u32; 4], port: u16) -> SocketAddr {
    let ip = if family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut b = [0u8; 16];
        for (chunk, w) in b.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        // A dual-stack socket's IPv4 peer (::ffff:a.b.c.d) reads as the IPv4 address it is.
        Ipv6Addr::from(b).to_canonical()
    };
    SocketAddr::new(ip, port)
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

impl Socket {
    /// What the peer makes the kernel hold for this socket, and the rule judges it by: the send
    /// side (what the peer has not acknowledged, with its overhead) and, while segments wait
    /// beyond a hole the peer has not filled, the receive side. Data received in order that the
    /// application has not read yet is the application's to free, never the peer's doing.
    pub fn held_by_peer(&self) -> u64 {
        if self.out_of_order { self.charged } else { self.charged.saturating_sub(self.recv_charged) }
    }

    pub fn new(e: &SnapshotEntry) -> Self {
        let r = &e.record;
        let send_queue = u64::from(e.send_queue());
        Self {
            cookie: e.cookie,
            local: addr(r.family, r.local_addr, r.local_port),
            remote: addr(r.family, r.remote_addr, r.remote_port),
            state: state_name(e.state),
            send_queue,
            unsent: e.unsent().into(),
            recv_queue: e.recv_queue().into(),
            charged: e.charged(),
            recv_charged: e.rmem_alloc.into(),
            out_of_order: e.flags & ENTRY_OUT_OF_ORDER != 0,
            peer_window: e.snd_wnd.into(),
            zero_window_ms: if r.zero_window_since_ns == 0 { 0 } else { ms_since(e.now_ns, r.zero_window_since_ns) },
            stalled_ms: if send_queue == 0 { 0 } else { ms_since(e.now_ns, e.stalled_since_ns()) },
            rx_idle_ms: ms_since(e.now_ns, r.rx_progress_ns),
            tx_idle_ms: ms_since(e.now_ns, r.tx_progress_ns),
            age_ms: ms_since(e.now_ns, r.created_ns),
            adopted: r.flags & RECORD_ADOPTED != 0,
            recorded: Recorded::of(r.flags),
            opened: Opened::of(r.flags),
            bytes_acked: e.bytes_acked,
            bytes_received: e.bytes_received,
            retransmits: e.total_retrans.into(),
            rtos: e.total_rto.into(),
            rto_ms: rto_ms(e.srtt_us, e.rttvar_us),
            cgroup_id: e.cgroup_id,
            bound_dev_if: e.bound_dev_if,
            netns: e.netns.into(),
            relay: (e.relay.to != 0).then(|| Relay {
                to: e.relay.to,
                last_ms: ms_since(e.now_ns, e.relay.at_ns),
                bytes: e.relay.bytes,
            }),
            raw: *e,
        }
    }
}

#[cfg(test)]
mod tests {
    use enforcer_common::{AF_INET6, SockRecord};

    use super::*;

    #[test]
    fn converts_entry() {
        let e = SnapshotEntry {
            cookie: 7,
            now_ns: 10_000_000_000,
            record: SockRecord {
                local_addr: [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0],
                remote_addr: [u32::from_ne_bytes([10, 1, 2, 3]), 0, 0, 0],
                local_port: 8080,
                remote_port: 40000,
                family: AF_INET,
                created_ns: 4_000_000_000,
                tx_progress_ns: 7_500_000_000,
                rx_progress_ns: 9_000_000_000,
                zero_window_since_ns: 8_000_000_000,
                ..SockRecord::default()
            },
            write_seq: 5000,
            snd_una: 1000,
            snd_nxt: 3000,
            rcv_nxt: 100,
            copied_seq: 40,
            state: 1,
            ..SnapshotEntry::default()
        };
        let s = Socket::new(&e);
        assert_eq!(s.local.to_string(), "127.0.0.1:8080");
        assert_eq!(s.remote.to_string(), "10.1.2.3:40000");
        assert_eq!((s.send_queue, s.unsent, s.recv_queue), (4000, 2000, 60));
        assert_eq!((s.stalled_ms, s.zero_window_ms, s.age_ms, s.rx_idle_ms), (2500, 2000, 6000, 1000));
        assert_eq!(s.state, "ESTABLISHED");
    }

    #[test]
    fn nothing_outstanding_is_not_stalled() {
        let mut e = SnapshotEntry { now_ns: 5_000_000_000, write_seq: 9, snd_una: 9, ..SnapshotEntry::default() };
        e.record.family = AF_INET;
        assert_eq!(Socket::new(&e).stalled_ms, 0);
        assert_eq!(Socket::new(&e).tx_idle_ms, 5000);
    }

    #[test]
    fn a_stall_is_no_older_than_the_data() {
        // Last ACK ten minutes ago, this backlog first seen by a scan 300 ms ago: stalled for
        // 300 ms, not ten minutes.
        let mut e =
            SnapshotEntry { now_ns: 600_000_000_000, write_seq: 5000, snd_una: 1000, ..SnapshotEntry::default() };
        e.record.family = AF_INET;
        e.record.tx_progress_ns = 1;
        e.record.outstanding_since_ns = 599_700_000_000;
        assert_eq!(Socket::new(&e).stalled_ms, 300);
        assert_eq!(Socket::new(&e).tx_idle_ms, 599_999);
        // Progress since then dates the stall.
        e.record.tx_progress_ns = 599_900_000_000;
        assert_eq!(Socket::new(&e).stalled_ms, 100);
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let mut e = SnapshotEntry::default();
        e.record.family = AF_INET6;
        e.record.local_addr = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
        e.record.remote_addr = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), u32::from_ne_bytes([192, 0, 2, 1])];
        e.record.local_port = 443;
        let s = Socket::new(&e);
        assert_eq!(s.local.to_string(), "[::1]:443");
        assert_eq!(s.remote.to_string(), "192.0.2.1:0");
    }
}
