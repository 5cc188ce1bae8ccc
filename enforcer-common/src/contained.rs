//! The `CONTAINED` trie: remotes whose new connections get a small send buffer.

/// Capacity of the `CONTAINED` trie (remotes or prefixes contained at once).
pub const CONTAINED_CAPACITY: u32 = 4096;

/// The address part of a `CONTAINED` key (the trie's key is a prefix length in bits followed by
/// this): an IPv6 address as four words whose bytes are in network order, like
/// `SockRecord::remote_addr`. An IPv4 address is stored IPv4-mapped (`::ffff:a.b.c.d`, prefix
/// 96 + N), so one trie serves both families and dual-stack sockets alike.
pub type ContainedAddr = [u32; 4];

/// Bits of the IPv4-mapped prefix `::ffff:0:0/96`.
pub const V4_MAPPED_PREFIX: u32 = 96;

/// `ContainedAddr` of an IPv4 address given in network byte order (as `SockRecord` keeps it).
pub const fn v4_mapped(addr: u32) -> ContainedAddr {
    [0, 0, 0x0000_ffff_u32.to_be(), addr]
}

/// A contained connection earns a full send buffer back once its peer has acknowledged this
/// much: a few of the contained buffers' worth (32 KiB, doubled by the kernel), which a peer that
/// reads does within a few round trips, and one that never acknowledges never does.
pub const CONTAIN_EARNED_AFTER: u64 = 256 << 10;

/// The value of a `CONTAINED` entry: how a remote's new connections are limited.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Containment {
    /// Bytes passed to `SO_SNDBUF` when a connection of the remote is established. The kernel
    /// doubles it (for its own overhead), caps it at `net.core.wmem_max` and stops autotuning
    /// the socket's send buffer.
    pub sndbuf: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Containment>() == 8);
const _: () = assert!(core::mem::size_of::<ContainedAddr>() == 16);

user_pod!(Containment);
