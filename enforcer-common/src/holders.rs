//! The holders walk (`iter/task_file`): which process holds each tracked socket.

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

const _: () = assert!(core::mem::size_of::<Holder>() == 32);

user_pod!(Holder);
