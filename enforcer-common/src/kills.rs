//! The kill journal's ring (`KILLS`) and its counters (`KILL_COUNTERS`).

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
    /// enforcer's `bpf::journal::Event` as u8 (its `EVENTS` table).
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

const _: () = assert!(core::mem::size_of::<KillRecord>() == 416);

user_pod!(KillRecord);
