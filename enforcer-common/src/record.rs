//! The tracker's record of one socket, in the socket's own storage (`RECORDS`).

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The tracker's record of one socket, in the socket's own storage (`RECORDS`).
///
/// Made by the sock_ops program at establishment, or by the first walk to see the connection
/// (`RECORD_FIRST_SEEN`, `RECORD_ADOPTED`); reconciled with the exact kernel state by the
/// snapshot and the scan, which date each change they see; freed by the kernel with the socket.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockRecord {
    /// IPv4 in `[0]`, IPv6 in all four words; network byte order.
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    /// `AF_INET` or `AF_INET6` (an IPv4 peer of a dual-stack socket is `::ffff:a.b.c.d`).
    pub family: u16,
    /// `RECORD_*` bits.
    pub flags: u16,
    /// When the record was made (ns): at establishment, or when a walk first saw the
    /// connection (`RECORD_ADOPTED`, `RECORD_FIRST_SEEN`).
    pub created_ns: u64,
    /// Last time `snd_una` advanced (ns): forward progress of what we send.
    pub tx_progress_ns: u64,
    /// Last time new in-order data arrived from the peer (ns).
    pub rx_progress_ns: u64,
    /// Since when the peer has advertised a zero window (ns); 0 while it is open.
    pub zero_window_since_ns: u64,
    /// `snd_una` as of `tx_progress_ns`.
    pub snd_una: u32,
    /// `rcv_nxt` as of `rx_progress_ns`.
    pub rcv_nxt: u32,
    /// When a scan first saw the current backlog outstanding (ns); 0 while none is known to be:
    /// a scan saw nothing outstanding, or an acknowledgement drained the queue since. A stall is
    /// counted from the later of this and the last progress, so data queued while nobody looked
    /// (after an idle spell, or while the agent skipped its walks) is never taken as older than
    /// the first look at it: a stall can be underestimated by one interval, never overestimated.
    pub outstanding_since_ns: u64,
}

/// The record was made by the snapshot for a connection that already existed when the agent
/// started; its creation time and first progress are the adoption time.
pub const RECORD_ADOPTED: u16 = 1;
/// The record was made by the first walk (the agent's scan or the CLI's snapshot) to see the
/// connection, not at its establishment: where the walks visit every TCP socket, sock_ops leaves
/// recording to them, so connections that end before any walk never cost a record. Its creation
/// time and first progress are that walk's.
pub const RECORD_FIRST_SEEN: u16 = 2;
/// This host opened the connection (sock_ops saw it established actively); without it, the peer
/// did, or, for a record a walk made, nobody knows.
pub const RECORD_OUTBOUND: u16 = 4;

const _: () = assert!(core::mem::size_of::<SockRecord>() == 88);

user_pod!(SockRecord);
