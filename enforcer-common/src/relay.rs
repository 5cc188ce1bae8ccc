//! Proxy mode (`--proxy`): which tracked sockets a process relays between. A thread that reads
//! from one tracked socket and soon after writes to another relays the first one's bytes to
//! the second (event-loop proxies read and write in the same thread): the request from a
//! client to its upstream, the response from the upstream to its client.

/// How soon after a read a write in the same thread counts as relaying what was read.
pub const RELAY_WINDOW_NS: u64 = 50_000_000;

/// Capacity of `RELAYS` (an LRU map: sockets that relayed longest ago go first).
pub const RELAYS_CAPACITY: u32 = 65_536;

/// Where a socket's bytes went last, in `RELAYS` by the socket's cookie; kept after the socket
/// they went to closed, which is what shows that an upstream relays for nobody any more.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayOut {
    /// Cookie of the socket the bytes were written to last; 0: none (not relayed).
    pub to: u64,
    /// When (ns, the records' clock).
    pub at_ns: u64,
    /// Bytes written to another socket soon after bytes were read from this one, in all.
    pub bytes: u64,
}

/// Capacity of `LAST_RECV` (an LRU map by thread: threads that read longest ago make room).
pub const LAST_RECV_CAPACITY: u32 = 16_384;

/// A thread's last read from a tracked socket, in `LAST_RECV` by thread id: a write by the same
/// thread within `RELAY_WINDOW_NS` relays it. By thread, not by CPU: a thread that is preempted
/// or moves to another CPU between its read and its write, as a busy proxy's threads do, keeps
/// its pairing.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastRecv {
    pub cookie: u64,
    pub at_ns: u64,
}

const _: () = assert!(core::mem::size_of::<RelayOut>() == 24);
const _: () = assert!(core::mem::size_of::<LastRecv>() == 16);

user_pod!(RelayOut, LastRecv);
