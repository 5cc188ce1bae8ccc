//! Counters in the per-CPU `STATS` array, one slot each: what the programs did and the errors
//! they failed open on.
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
/// Contained connections that earned a full send buffer back by progress.
pub const EARNED: u32 = 7;
/// Recorded connections that ended (left the states `is_connection` counts), seen by sock_ops'
/// state callback, which a walk asks for when it records a connection at first sight. Between
/// two walks of every socket, the last walk's count less these is a lower bound of the
/// connections the fair shares divide the threshold among.
pub const ENDED: u32 = 8;
/// Recorded connections whose end could not be asked for (a kernel without
/// `TCP_BPF_SOCK_OPS_CB_FLAGS`, 6.10 and older): the agent then walks every socket each time.
pub const ERR_ENDS: u32 = 9;
pub const COUNT: u32 = 10;

/// Names for display, indexed by slot.
pub const NAMES: [&str; COUNT as usize] = [
    "tracked",
    "err_storage",
    "err_sockops",
    "err_snapshot",
    "adopted",
    "contained",
    "err_contain",
    "earned",
    "ended",
    "err_ends",
];
