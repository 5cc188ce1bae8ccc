//! Layouts and names shared by the eBPF programs (`enforcer-ebpf`) and user space (`enforcer`).
//!
//! Every type is `#[repr(C)]` with explicit padding and no `bool`, so that it is plain old data
//! on both sides. Timestamps are `bpf_ktime_get_ns()` (CLOCK_MONOTONIC, nanoseconds); addresses
//! are kept in network byte order exactly as the kernel hands them over; ports in host order.
#![no_std]

/// Bumped whenever a layout below changes: a CLI must not read pins of an agent built with
/// another layout.
pub const LAYOUT_VERSION: u32 = 12;

/// Map, program and pin names. The pin directory holds one file per name in `PIN_*`.
pub mod names {
    /// The socket-local storage map of `SockRecord`s.
    pub const MAP_RECORDS: &str = "RECORDS";
    pub const MAP_RECORD_AT_FIRST_SIGHT: &str = "RECORD_AT_FIRST_SIGHT";
    pub const MAP_SCAN_PARAMS: &str = "SCAN_PARAMS";
    pub const MAP_SCAN_SUMMARY: &str = "SCAN_SUMMARY";
    pub const MAP_REMOTE_COUNTS: &str = "REMOTE_COUNTS";
    pub const MAP_STATS: &str = "STATS";
    pub const MAP_AGENT_INFO: &str = "AGENT_INFO";
    pub const MAP_AGENT_SETTINGS: &str = "AGENT_SETTINGS";
    pub const MAP_KILLS: &str = "KILLS";
    pub const MAP_KILL_COUNTERS: &str = "KILL_COUNTERS";
    pub const MAP_CONTAINED: &str = "CONTAINED";
    pub const GLOBAL_OFFSETS: &str = "KERNEL_OFFSETS";
    pub const GLOBAL_WATCH: &str = "WATCH";

    pub const PROG_SOCKOPS: &str = "enforcer_sockops";
    /// Every tracked socket, for the CLI (the pinned snapshot).
    pub const PROG_SNAPSHOT: &str = "enforcer_snapshot";
    /// The agent's scan: sums every tracked socket, emits the ones its rule could act on.
    pub const PROG_SCAN: &str = "enforcer_scan";
    /// The same over `iter/tcp`, per network namespace, for kernels that refuse map-element
    /// iterators.
    pub const PROG_SNAPSHOT_TCP: &str = "enforcer_snapshot_tcp";
    pub const PROG_SCAN_TCP: &str = "enforcer_scan_tcp";
    /// Gives connections that predate the agent a record (`iter/tcp`, run once per namespace).
    pub const PROG_ADOPT: &str = "enforcer_adopt";
    /// Which process holds each tracked socket (`iter/task_file`), for attribution.
    pub const PROG_HOLDERS: &str = "enforcer_holders";

    /// `iter/<this>` of the snapshot and the scan: they walk the records, not the TCP tables.
    pub const ITER_SK_STORAGE: &str = "bpf_sk_storage_map";
    /// `iter/<this>` of adoption: every TCP socket of the reader's network namespace.
    pub const ITER_TCP: &str = "tcp";
    /// `iter/<this>` of the holders walk: every open file of every process.
    pub const ITER_TASK_FILE: &str = "task_file";

    pub const PIN_SOCKETS: &str = "sockets";
    pub const PIN_STATS: &str = "stats";
    pub const PIN_INFO: &str = "info";
    pub const PIN_SETTINGS: &str = "settings";
    pub const PIN_KILLS: &str = "kills";
    pub const PIN_KILL_COUNTERS: &str = "kill_counters";
    pub const PIN_CONTAINED: &str = "contained";
    /// The pinned snapshot link: reading this file runs the snapshot (every namespace at once).
    pub const PIN_SNAPSHOT: &str = "snapshot";
    /// Instead of `snapshot` on kernels that refuse map-element iterators: reading this file
    /// runs the snapshot over the reader's network namespace.
    pub const PIN_SNAPSHOT_TCP: &str = "snapshot_tcp";
    /// The pinned holders link: reading it lists `Holder`s (`enforcer sockets -p`).
    pub const PIN_HOLDERS: &str = "holders";
    /// Every pin the agent makes, for cleaning up after an agent that died.
    pub const ALL_PINS: [&str; 10] = [
        PIN_SNAPSHOT,
        PIN_SNAPSHOT_TCP,
        PIN_HOLDERS,
        PIN_SOCKETS,
        PIN_STATS,
        PIN_INFO,
        PIN_SETTINGS,
        PIN_KILLS,
        PIN_KILL_COUNTERS,
        PIN_CONTAINED,
    ];
}

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

/// Which cgroup the agent watches, for the snapshot to adopt connections that existed before it
/// started (sock_ops only sees connections established after attach). A frozen `.rodata` global.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchConfig {
    /// Cgroup v2 id of the attached cgroup.
    pub cgroup_id: u64,
    /// Its depth below the cgroup2 root (the root is 0): `cgroup.ancestors[level]` of a socket's
    /// cgroup is the attached one when the socket is in its subtree.
    pub cgroup_level: u32,
    /// 1 to adopt, 0 not to.
    pub adopt: u32,
    /// `FAULT_*` bits: make a program take its error path, to test that errors fail open.
    pub fault: u32,
    pub _pad: u32,
}

/// sock_ops takes its error path at establishment, and the walks do not record a connection
/// at first sight either: new connections are found only by adoption.
pub const FAULT_SOCKOPS: u32 = 1;
/// The loader skips the holders walk as if the kernel had refused it (attribution reads /proc).
pub const FAULT_HOLDERS: u32 = 2;

/// One socket in a snapshot: what the `iter/tcp` program writes per tracked socket.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub cookie: u64,
    /// When this entry was read (ns, same clock as the record).
    pub now_ns: u64,
    /// The tracker's record, after reconciliation with the values below.
    pub record: SockRecord,
    /// Cgroup v2 id (inode number of the cgroup directory) of the socket's owner.
    pub cgroup_id: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub write_seq: u32,
    pub snd_una: u32,
    pub snd_nxt: u32,
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    /// The peer's advertised window, scaled, in bytes.
    pub snd_wnd: u32,
    /// `sk_wmem_queued`: bytes of send-queue memory charged to the socket (with overhead).
    pub wmem_queued: u32,
    pub total_retrans: u32,
    pub total_rto: u16,
    /// `TCP_ESTABLISHED` = 1 … as in `include/net/tcp_states.h`.
    pub state: u8,
    pub _pad0: u8,
    /// `sk_bound_dev_if`: the interface index the socket is bound to (SO_BINDTODEVICE, or
    /// inherited from a bound listener), 0 if none. The kernel's lookup for SOCK_DESTROY only
    /// finds a bound socket when the request names this interface.
    pub bound_dev_if: u32,
    /// Inode of the socket's network namespace (`ls -iL /proc/PID/ns/net`).
    pub netns: u32,
    pub _pad2: u32,
}

impl SnapshotEntry {
    /// Bytes the application queued that the peer has not acknowledged (what SIOCOUTQ says).
    pub fn send_queue(&self) -> u32 {
        self.write_seq.wrapping_sub(self.snd_una)
    }
    /// Bytes queued but not yet sent.
    pub fn unsent(&self) -> u32 {
        self.write_seq.wrapping_sub(self.snd_nxt)
    }
    /// Bytes received that the application has not read (what SIOCINQ says, FIN aside).
    pub fn recv_queue(&self) -> u32 {
        self.rcv_nxt.wrapping_sub(self.copied_seq)
    }
    /// Since when the queue has been stalled (ns): the last progress, or the first time a scan
    /// saw this backlog, whichever is later. Meaningful while `send_queue() > 0`.
    pub fn stalled_since_ns(&self) -> u64 {
        self.record.tx_progress_ns.max(self.record.outstanding_since_ns)
    }
}

/// `ScanParams::mode`: what the agent's scan writes out. Every mode fills `ScanSummary`.
pub mod scan_mode {
    /// Nothing: pressure is well below the threshold, the summary is all the agent needs.
    pub const SUMMARY: u32 = 0;
    /// The sockets the rule could act on (see `ScanParams::emits`).
    pub const CANDIDATES: u32 = 1;
    /// Every socket (a per-remote cap judges idle sockets whatever they hold).
    pub const ALL: u32 = 2;
}

/// What the agent asks of its scan, written into `SCAN_PARAMS` before each read.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanParams {
    /// A `scan_mode` constant.
    pub mode: u32,
    /// 0: do not count connections per remote. Otherwise the scan counts each socket against
    /// its remote address masked to `group_v4` bits (IPv4, and IPv4-mapped IPv6) or `group_v6`
    /// bits (IPv6) in `REMOTE_COUNTS`, and each new remote in `ScanSummary::remotes`.
    pub count_remotes: u32,
    pub group_v4: u32,
    pub group_v6: u32,
    /// Tags this scan's `REMOTE_COUNTS` entries: an entry of another generation counts as 0,
    /// so the agent never has to clear the map.
    pub generation: u64,
}

impl ScanParams {
    /// Whether the scan writes out this socket. `CANDIDATES` keeps exactly the sockets the rule
    /// could decide on from their memory: every rule but the per-remote cap needs charged
    /// memory (a socket that holds nothing frees nothing), and a socket is over its share only
    /// when it holds something, so what is left out would never be chosen nor remembered
    /// (enforcer's property test `filtered_scan_decides_like_the_full_snapshot` holds it to that).
    ///
    /// It decides on `sk_wmem_queued` alone, so that a walk loads the rest of an entry (counters,
    /// cgroup, namespace) only for the sockets it writes out.
    pub fn emits(&self, wmem_queued: u32) -> bool {
        match self.mode {
            scan_mode::ALL => true,
            scan_mode::CANDIDATES => wmem_queued > 0,
            _ => false,
        }
    }
}

/// What the agent's scan adds up over every tracked connection, emitted or not.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Tracked connections (states that can hold data).
    pub sockets: u64,
    /// Their `sk_wmem_queued`, summed: the `tracked` pressure.
    pub charged: u64,
    /// Their unacknowledged bytes, summed.
    pub send_queue: u64,
    /// Sockets written out.
    pub emitted: u64,
    /// Distinct remote groups (when the scan counts remotes).
    pub remotes: u64,
}

/// A key of `REMOTE_COUNTS`: a remote address (IPv6 words, IPv4 mapped) masked to its group.
pub type RemoteKey = [u32; 4];

/// A value of `REMOTE_COUNTS`.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemoteCount {
    /// The `ScanParams::generation` that counted it.
    pub generation: u64,
    pub connections: u64,
}

/// Capacity of `REMOTE_COUNTS` (an LRU map: the oldest generations go first).
pub const REMOTE_COUNTS_CAPACITY: u32 = 262_144;

/// `addr` (as `SockRecord` keeps it, IPv4 in word 0 for `AF_INET`) as a `REMOTE_COUNTS` key:
/// IPv4 mapped into IPv6, masked to `v4` or `v6` leading bits.
pub fn remote_key(family: u16, addr: [u32; 4], v4: u32, v6: u32) -> RemoteKey {
    let (mut words, bits) = if family == AF_INET {
        (v4_mapped(addr[0]), V4_MAPPED_PREFIX + v4.min(32))
    } else if addr[0] == 0 && addr[1] == 0 && addr[2] == 0x0000_ffff_u32.to_be() {
        (addr, V4_MAPPED_PREFIX + v4.min(32))
    } else {
        (addr, v6.min(128))
    };
    let mut i = 0;
    while i < 4 {
        let keep = bits.saturating_sub(32 * i as u32).min(32);
        // Words hold bytes in network order: build the mask big-endian, store it native.
        let mask = if keep == 0 { 0 } else { (u32::MAX << (32 - keep)).to_be() };
        words[i] &= mask;
        i += 1;
    }
    words
}

/// A process holding a socket, as the holders walk writes it: one per open descriptor of a
/// socket with a cookie (every tracked socket has one; a socket shared by several processes
/// comes once for each).
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holder {
    /// The socket's cookie, as in its `SnapshotEntry`.
    pub cookie: u64,
    /// The process (thread group) id in the initial pid namespace, as `ps` on the host shows it.
    pub tgid: u32,
    pub _pad: u32,
    /// `task_struct.comm`, NUL-padded.
    pub comm: [u8; 16],
}

/// An offset in `KernelOffsets` for a field the running kernel does not have.
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// Byte offsets of the kernel fields the programs read, from `/sys/kernel/btf/vmlinux` at load
/// time (Rust eBPF has no CO-RE relocations). A frozen `.rodata` global, so the verifier sees
/// each one as a constant.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock_common.skc_cookie` (also valid from a `sock` or `tcp_sock` pointer).
    pub sk_cookie: u32,
    pub sk_state: u32,
    pub sk_wmem_queued: u32,
    /// `sock.sk_cgrp_data.cgroup`.
    pub sk_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    pub tp_snd_una: u32,
    pub tp_snd_nxt: u32,
    pub tp_write_seq: u32,
    pub tp_rcv_nxt: u32,
    pub tp_copied_seq: u32,
    pub tp_snd_wnd: u32,
    pub tp_total_retrans: u32,
    pub tp_total_rto: u32,
    pub tp_bytes_acked: u32,
    pub tp_bytes_received: u32,
    /// `sock_common` addressing, for adopting existing connections.
    pub skc_family: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `sock_common.skc_bound_dev_if`.
    pub skc_bound_dev_if: u32,
    /// `cgroup.level` and `cgroup.ancestors`.
    pub cgroup_level: u32,
    pub cgroup_ancestors: u32,
    /// `sock_common.skc_net.net` and `net.ns.inum`: a socket's network namespace.
    pub skc_net: u32,
    pub net_inum: u32,
    /// `socket.sk`, `task_struct.tgid` and `task_struct.comm`: who holds a socket.
    pub socket_sk: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub _pad: u32,
}

/// Counters in the per-CPU `STATS` array, one slot each.
pub mod stats {
    /// Connections recorded as they came: by sock_ops at establishment, or, where sock_ops
    /// leaves it to the walks (`RECORD_FIRST_SEEN`), by the first walk to see them.
    pub const TRACKED: u32 = 0;
    /// Records the kernel could not allocate, by sock_ops or by a walk (no memory; or, for a walk,
    /// a socket whose storage was being freed). Each makes the agent adopt again.
    pub const ERR_STORAGE: u32 = 1;
    /// Errors in the sock_ops program (other than a record that could not be allocated).
    pub const ERR_SOCKOPS: u32 = 2;
    /// Errors in the snapshot or the scan (a socket that could not be written out).
    pub const ERR_SNAPSHOT: u32 = 3;
    /// Connections adoption gave a record (they predate the agent, or recording them failed).
    pub const ADOPTED: u32 = 4;
    /// New connections of a contained remote whose send buffer sock_ops made small.
    pub const CONTAINED: u32 = 5;
    /// Connections of a contained remote whose send buffer could not be set (they carry on
    /// uncontained).
    pub const ERR_CONTAIN: u32 = 6;
    pub const COUNT: u32 = 7;

    /// Names for display, indexed by slot.
    pub const NAMES: [&str; COUNT as usize] =
        ["tracked", "err_storage", "err_sockops", "err_snapshot", "adopted", "contained", "err_contain"];
}

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

pub const AGENT_INFO_MAGIC: u32 = 0x656e_6663; // "enfc"

/// Written once by the agent into the single slot of `AGENT_INFO`: who pinned this directory,
/// so `enforcer status` can show it and detect a stale or foreign pin.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentInfo {
    pub magic: u32,
    pub layout_version: u32,
    pub pid: u32,
    /// Bytes of JSON settings in `AGENT_SETTINGS`, chunk after chunk.
    pub settings_len: u32,
    /// Wall clock at start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The agent's version (`CARGO_PKG_VERSION`), NUL-padded.
    pub version: [u8; 24],
}

/// Bytes of one slot of `AGENT_SETTINGS`. The agent sizes that array at load time to hold its
/// settings whatever their length (many `--protect-cidr`s make them long).
pub const SETTINGS_CHUNK: usize = 4096;

/// One slot of `AGENT_SETTINGS`: a piece of the agent's settings as JSON.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug)]
pub struct SettingsChunk {
    pub bytes: [u8; SETTINGS_CHUNK],
}

/// Slots in the `KILLS` ring: the most recent decisions, kept for `enforcer kills`.
pub const KILL_RING: u32 = 1024;

/// Slots of the `KILL_COUNTERS` array (written by the agent only).
pub mod kill_counters {
    pub const DESTROYED: u32 = 0;
    pub const WOULD_DESTROY: u32 = 1;
    pub const DESTROY_FAILED: u32 = 2;
    /// Total decisions ever recorded; the next one goes to slot `NEXT % KILL_RING`.
    pub const NEXT: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// One enforcement decision, as kept in the `KILLS` ring.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillRecord {
    /// Wall clock, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub cookie: u64,
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    /// enforcer's `journal::Event` as u8 (its `EVENTS` table).
    pub event: u8,
    /// The decision's `Reason` code (enforcer's `policy::Reason::code`).
    pub reason: u8,
    pub send_queue: u64,
    /// Send-side memory charged to the socket (`sk_wmem_queued`), what the share counts.
    pub charged: u64,
    pub fair_share: u64,
    pub stalled_ms: u64,
    /// `u64::MAX` when the socket made no measurable progress.
    pub drain_estimate_ms: u64,
    pub pressure: u64,
    pub threshold: u64,
    /// errno of a failed destroy, else 0.
    pub error: i32,
    pub _pad: u32,
    /// Inode of the socket's network namespace.
    pub netns: u64,
    /// Cgroup v2 id of the socket's owner.
    pub cgroup_id: u64,
    /// A process holding the socket when it was judged, 0 when none was found.
    pub pid: u32,
    pub _pad2: u32,
    /// That process's `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// The cgroup's path below the cgroup2 mount (`/system.slice/nginx.service`), NUL-padded;
    /// a longer path keeps its end (which names the pod or service) behind a leading `...`.
    pub cgroup: [u8; KILL_CGROUP_LEN],
}

/// Bytes of `KillRecord::cgroup`: a Kubernetes pod's container scope fits (and bytemuck has
/// `Pod` for arrays of this length).
pub const KILL_CGROUP_LEN: usize = 256;

// Arrays over 32 elements have no `Default`.
impl Default for KillRecord {
    fn default() -> Self {
        Self {
            unix_ms: 0,
            cookie: 0,
            local_addr: [0; 4],
            remote_addr: [0; 4],
            local_port: 0,
            remote_port: 0,
            family: 0,
            event: 0,
            reason: 0,
            send_queue: 0,
            charged: 0,
            fair_share: 0,
            stalled_ms: 0,
            drain_estimate_ms: 0,
            pressure: 0,
            threshold: 0,
            error: 0,
            _pad: 0,
            netns: 0,
            cgroup_id: 0,
            pid: 0,
            _pad2: 0,
            comm: [0; 16],
            cgroup: [0; KILL_CGROUP_LEN],
        }
    }
}

// The verifier limits the eBPF stack to 512 bytes; the iterator builds one entry on it.
const _: () = assert!(core::mem::size_of::<SnapshotEntry>() == 176);
const _: () = assert!(core::mem::size_of::<SockRecord>() == 88);
const _: () = assert!(core::mem::size_of::<ScanParams>() == 24);
const _: () = assert!(core::mem::size_of::<ScanSummary>() == 40);
const _: () = assert!(core::mem::size_of::<RemoteCount>() == 16);
const _: () = assert!(core::mem::size_of::<AgentInfo>() == 48);
const _: () = assert!(core::mem::size_of::<SettingsChunk>() == SETTINGS_CHUNK);
const _: () = assert!(core::mem::size_of::<KillRecord>() == 416);
const _: () = assert!(core::mem::size_of::<Containment>() == 8);
const _: () = assert!(core::mem::size_of::<ContainedAddr>() == 16);
// One u64 and four u32.
const _: () = assert!(core::mem::size_of::<WatchConfig>() == 24);
// 31 offsets of 4 bytes and a pad.
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 32 * 4);
const _: () = assert!(core::mem::size_of::<Holder>() == 32);

#[cfg(feature = "user")]
mod user {
    use super::*;

    /// Compiles only for `bytemuck::Pod` types.
    const fn derives_pod<T: bytemuck::Pod>() {}
    const _: () = {
        derives_pod::<SockRecord>();
        derives_pod::<SnapshotEntry>();
        derives_pod::<KernelOffsets>();
        derives_pod::<WatchConfig>();
        derives_pod::<AgentInfo>();
        derives_pod::<SettingsChunk>();
        derives_pod::<KillRecord>();
        derives_pod::<Containment>();
        derives_pod::<ScanParams>();
        derives_pod::<ScanSummary>();
        derives_pod::<RemoteCount>();
        derives_pod::<Holder>();
    };

    // SAFETY: aya::Pod asks what bytemuck::Pod asks: Copy, no padding, any bit pattern valid.
    // aya has no derive, but each type derives bytemuck::Pod (checked just above), and that
    // derive refuses a type that is not repr(C), has padding or has a field that is not Pod.
    unsafe impl aya::Pod for SockRecord {}
    unsafe impl aya::Pod for SnapshotEntry {}
    unsafe impl aya::Pod for KernelOffsets {}
    unsafe impl aya::Pod for WatchConfig {}
    unsafe impl aya::Pod for AgentInfo {}
    unsafe impl aya::Pod for SettingsChunk {}
    unsafe impl aya::Pod for KillRecord {}
    unsafe impl aya::Pod for Containment {}
    unsafe impl aya::Pod for ScanParams {}
    unsafe impl aya::Pod for ScanSummary {}
    unsafe impl aya::Pod for RemoteCount {}
    unsafe impl aya::Pod for Holder {}
}
