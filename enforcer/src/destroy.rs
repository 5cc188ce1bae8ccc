//! Destroying a socket: netlink `SOCK_DESTROY` (what `ss -K` does; needs
//! CONFIG_INET_DIAG_DESTROY). The owner gets ECONNABORTED, the peer an RST. The request names
//! the 4-tuple *and* the cookie, so a socket that reused the 4-tuple is never hit. It reaches
//! only sockets in the caller's network namespace.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use enforcer_common::SockRecord;

/// The seam the agent destroys through (tests of the loop can count instead).
pub trait Destroy {
    fn destroy(&mut self, cookie: u64, rec: &SockRecord) -> io::Result<()>;
}

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const IPPROTO_TCP: u8 = 6;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_req_v2` with its `inet_diag_sockid`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagReq {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    hdr: NlMsgHdr,
    req: DiagReq,
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A reply that never comes must not hang the agent.
        let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
        // SAFETY: setsockopt reads the struct we pass, of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }
}

impl Destroy for Netlink {
    fn destroy(&mut self, cookie: u64, rec: &SockRecord) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let msg = Request {
            hdr: NlMsgHdr {
                len: std::mem::size_of::<Request>() as u32,
                ty: SOCK_DESTROY,
                flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
                seq: self.seq,
                pid: 0,
            },
            req: DiagReq {
                family: rec.family as u8,
                protocol: IPPROTO_TCP,
                states: u32::MAX,
                sport: rec.local_port.to_be(),
                dport: rec.remote_port.to_be(),
                src: rec.local_addr,
                dst: rec.remote_addr,
                cookie: [cookie as u32, (cookie >> 32) as u32],
                ..DiagReq::default()
            },
        };
        let fd = self.fd.as_raw_fd();
        // SAFETY: sending a fully initialised repr(C) message of the stated size.
        let sent = unsafe { libc::send(fd, (&raw const msg).cast(), std::mem::size_of::<Request>(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 512];
        loop {
            // SAFETY: receiving into a buffer we own, of the stated size.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let n = n as usize;
            if n < 20 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink reply"));
            }
            let ty = u16::from_ne_bytes([buf[4], buf[5]]);
            let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
            if ty != NLMSG_ERROR || seq != self.seq {
                continue;
            }
            let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) };
        }
    }
}
