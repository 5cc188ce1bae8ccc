//! What the agent tells its programs at load time: which cgroup it watches, and test faults.

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
    /// 1 in proxy mode (`--proxy`): the walks write out where each socket's bytes were relayed.
    pub proxy: u32,
}

/// sock_ops takes its error path at establishment, and the walks do not record a connection
/// at first sight either: new connections are found only by adoption.
pub const FAULT_SOCKOPS: u32 = 1;
/// The loader skips the holders walk as if the kernel had refused it (attribution reads /proc).
pub const FAULT_HOLDERS: u32 = 2;
/// The loader skips the records walk as if the kernel had refused map-element iterators: the
/// walks go through `iter/tcp`, as on kernels without them (to compare the two on one kernel).
pub const FAULT_RECORDS: u32 = 4;

// One u64 and four u32.
const _: () = assert!(core::mem::size_of::<WatchConfig>() == 24);

user_pod!(WatchConfig);
