//! The revisit: between two walks of every socket, the agent looks at the last walk's candidates
//! alone, found by 4-tuple (`enforcer_revisit`, a program the agent runs with
//! `BPF_PROG_TEST_RUN` inside each network namespace, once per candidate).

/// Candidates one revisit can look at; with more, the agent walks every socket.
pub const REVISIT_CAPACITY: u32 = 8192;

/// `REVISIT_CURSOR`'s slot: the index of the next `REVISIT_KEYS` entry a run looks up (each run
/// takes one and moves it on).
pub const REVISIT_NEXT: u32 = 0;

/// A candidate to look up, as the last walk wrote it out.
#[repr(C)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevisitKey {
    /// The socket found by the 4-tuple must still be this one.
    pub cookie: u64,
    /// As `SockRecord` keeps them: IPv4 in word 0, every word in network byte order.
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    pub _pad: u16,
}

user_pod!(RevisitKey);
const _: () = assert!(core::mem::size_of::<RevisitKey>() == 48);
