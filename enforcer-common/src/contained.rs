//! The `CONTAINED` trie: remotes whose new connections get a small send buffer.

/// Capacity of the `CONTAINED` trie (remotes or prefixes contained at once): room for a fleet's
/// decision stream (CrowdSec's community lists run to tens of thousands). A trie allocates an
/// entry when it is inserted, so an empty one costs nothing.
pub const CONTAINED_CAPACITY: u32 = 262_144;

/// Capacity of `CONTAINED_LABELS`: the distinct "origin/scenario" texts of fleet decisions in
/// force at once (a fleet has a few dozen scenarios); beyond it a decision's label is 0.
pub const CONTAINED_LABEL_CAPACITY: u32 = 1024;
/// Bytes of one label's text, NUL-padded.
pub const CONTAINED_LABEL_LEN: usize = 128;

/// `Containment::sources` bits: who contains the network. Both may.
/// This host's rule flagged it a repeat offender.
pub const CONTAINED_BY_REPEAT: u32 = 1;
/// A CrowdSec decision the agent took from its Local API.
pub const CONTAINED_BY_CROWDSEC: u32 = 2;

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

/// The value of a `CONTAINED` entry: how a remote's new connections are limited, and why.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Containment {
    /// Bytes passed to `SO_SNDBUF` when a connection of the remote is established. The kernel
    /// doubles it (for its own overhead), caps it at `net.core.wmem_max` and stops autotuning
    /// the socket's send buffer. 0: not contained, a protected network inside a contained one
    /// (the longest prefix wins, so the exemption holds whatever the wider entry says).
    pub sndbuf: u32,
    /// `TCP_USER_TIMEOUT` (ms) given to the same connections: data left unacknowledged this
    /// long, zero-window probes included, makes the kernel abort the connection itself, also
    /// while no agent runs. 0: none.
    pub user_timeout_ms: u32,
    /// `CONTAINED_BY_*` bits.
    pub sources: u32,
    /// For a CrowdSec decision: its index in `CONTAINED_LABELS` ("origin/scenario"); 0: none.
    pub label: u32,
    /// Wall-clock time (Unix ms) the latest-ending CrowdSec decision expires; 0: none.
    pub until_unix_ms: u64,
}

const _: () = assert!(core::mem::size_of::<Containment>() == 24);

/// An entry of `CONTAINED_LABELS`: text, NUL-padded. Only user space reads and writes it; it is
/// pinned beside the trie so that `enforcer status` can say why a network is contained.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContainedLabel {
    pub text: [u8; CONTAINED_LABEL_LEN],
}

const _: () = assert!(core::mem::size_of::<ContainedLabel>() == CONTAINED_LABEL_LEN);
const _: () = assert!(core::mem::size_of::<ContainedAddr>() == 16);

user_pod!(Containment, ContainedLabel);
