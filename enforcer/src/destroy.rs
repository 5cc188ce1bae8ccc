//! Destroying a socket: netlink `SOCK_DESTROY` (what `ss -K` does; needs
//! CONFIG_INET_DIAG_DESTROY). The owner gets ECONNABORTED, the peer an RST. The request names
//! the 4-tuple *and* the cookie, so a socket that reused the 4-tuple is never hit. It reaches
//! only sockets in the caller's network namespace.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use enforcer_common::SnapshotEntry;

/// The seam the agent destroys through (tests of the loop can count instead).
pub trait Destroy {
    /// Destroys the socket a snapshot saw: its 4-tuple, cookie and bound interface.
    fn destroy(&mut self, entry: &SnapshotEntry) -> io::Result<()>;
}

/// `SOCK_DESTROY` from `linux/sock_diag.h` (libc has no sock_diag constants).
const SOCK_DESTROY: u16 = 21;
const IPPROTO_TCP: u8 = 6;

/// `struct inet_diag_req_v2` with its `inet_diag_sockid` (`linux/inet_diag.h`; not in libc).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DiagReq {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    /// Network byte order.
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    /// The kernel looks the socket up on this interface: a socket bound to a device
    /// (SO_BINDTODEVICE) is only found with its own index, an unbound one only with 0.
    ifindex: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    hdr: libc::nlmsghdr,
    req: DiagReq,
}

// The wire layouts the kernel expects (`nlmsghdr` is 16 bytes and 4-aligned, so the request
// follows it with no padding).
const _: () = assert!(std::mem::size_of::<DiagReq>() == 56);
const _: () = assert!(std::mem::size_of::<libc::nlmsghdr>() == 16);
const _: () = assert!(std::mem::size_of::<Request>() == 16 + 56);
const _: () = assert!(std::mem::size_of::<libc::nlmsgerr>() == 4 + 16);

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
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
    fn destroy(&mut self, entry: &SnapshotEntry) -> io::Result<()> {
        let rec = &entry.record;
        self.seq = self.seq.wrapping_add(1);
        let msg = Request {
            hdr: libc::nlmsghdr {
                nlmsg_len: std::mem::size_of::<Request>() as u32,
                nlmsg_type: SOCK_DESTROY,
                nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
                nlmsg_seq: self.seq,
                nlmsg_pid: 0,
            },
            req: DiagReq {
                family: rec.family as u8,
                protocol: IPPROTO_TCP,
                states: u32::MAX,
                sport: rec.local_port.to_be(),
                dport: rec.remote_port.to_be(),
                src: rec.local_addr,
                dst: rec.remote_addr,
                ifindex: entry.bound_dev_if,
                cookie: [entry.cookie as u32, (entry.cookie >> 32) as u32],
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
            if let Some(errno) = ack_errno(&buf[..n as usize], self.seq)? {
                return if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) };
            }
        }
    }
}

/// The error code of the `NLMSG_ERROR` acknowledging request `seq` in one datagram (0: success,
/// else a negative errno); `None` if the datagram holds no such acknowledgement.
fn ack_errno(mut buf: &[u8], seq: u32) -> io::Result<Option<i32>> {
    const HDR: usize = std::mem::size_of::<libc::nlmsghdr>();
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short netlink reply");
    while buf.len() >= HDR {
        // SAFETY: at least HDR bytes; nlmsghdr is plain integers, read unaligned.
        let hdr: libc::nlmsghdr = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        let len = hdr.nlmsg_len as usize;
        if len < HDR || len > buf.len() {
            return Err(short());
        }
        if hdr.nlmsg_type == libc::NLMSG_ERROR as u16 && hdr.nlmsg_seq == seq {
            if len < HDR + std::mem::size_of::<i32>() {
                return Err(short());
            }
            // SAFETY: `nlmsgerr.error` (an i32) follows the header, within `len`.
            let err: i32 = unsafe { std::ptr::read_unaligned(buf[HDR..].as_ptr().cast()) };
            return Ok(Some(err));
        }
        // Messages are 4-aligned (NLMSG_ALIGN).
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(ty: u16, seq: u32, error: i32) -> Vec<u8> {
        let err = libc::nlmsgerr {
            error,
            // SAFETY: an all-zero nlmsghdr is valid.
            msg: unsafe { std::mem::zeroed() },
        };
        let hdr = libc::nlmsghdr {
            nlmsg_len: (16 + std::mem::size_of::<libc::nlmsgerr>()) as u32,
            nlmsg_type: ty,
            nlmsg_flags: 0,
            nlmsg_seq: seq,
            nlmsg_pid: 0,
        };
        let mut out = Vec::new();
        // SAFETY: viewing plain-integer structs as bytes.
        unsafe {
            out.extend_from_slice(std::slice::from_raw_parts((&raw const hdr).cast::<u8>(), 16));
            out.extend_from_slice(std::slice::from_raw_parts((&raw const err).cast::<u8>(), 20));
        }
        out
    }

    #[test]
    fn finds_the_ack_of_this_request() {
        let error = libc::NLMSG_ERROR as u16;
        assert_eq!(ack_errno(&message(error, 7, 0), 7).ok().flatten(), Some(0));
        assert_eq!(ack_errno(&message(error, 7, -libc::ENOENT), 7).ok().flatten(), Some(-libc::ENOENT));
        // Another request's ack, or another message type, is skipped.
        assert_eq!(ack_errno(&message(error, 6, 0), 7).ok().flatten(), None);
        let mut two = message(libc::NLMSG_DONE as u16, 7, 0);
        two.extend(message(error, 7, -libc::EPERM));
        assert_eq!(ack_errno(&two, 7).ok().flatten(), Some(-libc::EPERM));
        // A header whose length runs past the datagram is an error, not a loop.
        assert!(ack_errno(&message(error, 7, 0)[..20], 7).is_err());
    }
}
