//! Destroying a socket: netlink `SOCK_DESTROY` (what `ss -K` does; needs
//! CONFIG_INET_DIAG_DESTROY). The owner gets ECONNABORTED, the peer an RST. The request names
//! the 4-tuple *and* the cookie, so a socket that reused the 4-tuple is never hit. It reaches
//! only sockets in the caller's network namespace. The same request, sent as
//! `SOCK_DIAG_BY_FAMILY`, looks a socket up instead: its inode, which names it in `/proc/PID/fd`
//! (`attribution` uses that to find the process holding it).
use std::{io, os::fd::OwnedFd, time::Duration};

use enforcer_common::SnapshotEntry;
use rustix::{
    io::Errno,
    net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink, sockopt},
};

/// `SOCK_DESTROY` from `linux/sock_diag.h` (libc has no sock_diag constants).
const SOCK_DESTROY: u16 = 21;
/// `SOCK_DIAG_BY_FAMILY`: without `NLM_F_DUMP`, the exact lookup of one socket.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// Where `inet_diag_msg.idiag_inode` sits in a reply: after the header, family/state/timer/
/// retrans (4), the sockid (48), expires, rqueue, wqueue and uid (4 each).
const REPLY_INODE: usize = HDR + 68;
const IPPROTO_TCP: u8 = 6;

/// `struct inet_diag_req_v2` with its `inet_diag_sockid` (`linux/inet_diag.h`; not in libc).
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
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

/// Length of `nlmsghdr` on the wire.
const HDR: usize = 16;
/// The request: a header, then the `DiagReq` (the header is a multiple of 4 bytes, NLMSG_ALIGN,
/// so nothing pads between them).
const REQUEST: usize = HDR + std::mem::size_of::<DiagReq>();

// The wire layouts the kernel expects.
const _: () = assert!(std::mem::size_of::<DiagReq>() == 56);
const _: () = assert!(std::mem::size_of::<libc::nlmsghdr>() == HDR);
// Where `header_bytes` and `read_header` put each field.
const _: () = {
    use std::mem::offset_of;
    assert!(offset_of!(libc::nlmsghdr, nlmsg_len) == 0);
    assert!(offset_of!(libc::nlmsghdr, nlmsg_type) == 4);
    assert!(offset_of!(libc::nlmsghdr, nlmsg_flags) == 6);
    assert!(offset_of!(libc::nlmsghdr, nlmsg_seq) == 8);
    assert!(offset_of!(libc::nlmsghdr, nlmsg_pid) == 12);
};
const _: () = assert!(HDR.is_multiple_of(4));
const _: () = assert!(std::mem::size_of::<libc::nlmsgerr>() == 4 + HDR);

/// `hdr` as the kernel reads it (native byte order, fields in declaration order).
fn header_bytes(hdr: &libc::nlmsghdr) -> [u8; HDR] {
    let mut out = [0u8; HDR];
    out[0..4].copy_from_slice(&hdr.nlmsg_len.to_ne_bytes());
    out[4..6].copy_from_slice(&hdr.nlmsg_type.to_ne_bytes());
    out[6..8].copy_from_slice(&hdr.nlmsg_flags.to_ne_bytes());
    out[8..12].copy_from_slice(&hdr.nlmsg_seq.to_ne_bytes());
    out[12..16].copy_from_slice(&hdr.nlmsg_pid.to_ne_bytes());
    out
}

/// The header at the start of `buf`, if it holds one.
fn read_header(buf: &[u8]) -> Option<libc::nlmsghdr> {
    let b: &[u8; HDR] = buf.get(..HDR)?.try_into().ok()?;
    let u32_at = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    Some(libc::nlmsghdr {
        nlmsg_len: u32_at(0),
        nlmsg_type: u16_at(4),
        nlmsg_flags: u16_at(6),
        nlmsg_seq: u32_at(8),
        nlmsg_pid: u32_at(12),
    })
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )?;
        // A reply that never comes must not hang the agent.
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(Duration::from_secs(1)))?;
        Ok(Self { fd, seq: 0 })
    }

    /// Destroys the socket a snapshot saw: its 4-tuple, cookie and bound interface.
    pub fn destroy(&mut self, entry: &SnapshotEntry) -> io::Result<()> {
        self.send(entry, SOCK_DESTROY, libc::NLM_F_ACK as u16)?;
        let mut buf = [0u8; 512];
        loop {
            let n = self.recv(&mut buf)?;
            if let Some(errno) = ack_errno(&buf[..n], self.seq)? {
                return if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-errno)) };
            }
        }
    }

    /// The inode of the socket a snapshot saw (`socket:[INODE]` in `/proc/PID/fd`), `None` when
    /// the kernel no longer finds it (closed, or already destroyed and unhashed). 0 is an
    /// orphan: no file holds it any more.
    pub fn inode(&mut self, entry: &SnapshotEntry) -> io::Result<Option<u32>> {
        self.send(entry, SOCK_DIAG_BY_FAMILY, 0)?;
        let mut buf = [0u8; 512];
        loop {
            let n = self.recv(&mut buf)?;
            let reply = &buf[..n];
            if let Some(hdr) = read_header(reply)
                && hdr.nlmsg_type == SOCK_DIAG_BY_FAMILY
                && hdr.nlmsg_seq == self.seq
            {
                let b = reply
                    .get(REPLY_INODE..REPLY_INODE + 4)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply"))?;
                return Ok(Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])));
            }
            match ack_errno(reply, self.seq)? {
                Some(0) | None => {}
                Some(errno) if -errno == libc::ENOENT || -errno == libc::ESTALE => return Ok(None),
                Some(errno) => return Err(io::Error::from_raw_os_error(-errno)),
            }
        }
    }

    /// Sends the request that names `entry` exactly, as message `kind`.
    fn send(&mut self, entry: &SnapshotEntry, kind: u16, flags: u16) -> io::Result<()> {
        let rec = &entry.record;
        self.seq = self.seq.wrapping_add(1);
        let hdr = libc::nlmsghdr {
            nlmsg_len: REQUEST as u32,
            nlmsg_type: kind,
            nlmsg_flags: libc::NLM_F_REQUEST as u16 | flags,
            nlmsg_seq: self.seq,
            nlmsg_pid: 0,
        };
        let req = DiagReq {
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
        };
        let mut msg = [0u8; REQUEST];
        msg[..HDR].copy_from_slice(&header_bytes(&hdr));
        msg[HDR..].copy_from_slice(bytemuck::bytes_of(&req));
        rustix::net::send(&self.fd, &msg, SendFlags::empty())?;
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::net::recv(&self.fd, &mut *buf, RecvFlags::empty()) {
                Ok((n, _)) => return Ok(n),
                // A signal while waiting is no answer; the timeout still bounds each wait.
                Err(Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The error code of the `NLMSG_ERROR` acknowledging request `seq` in one datagram (0: success,
/// else a negative errno); `None` if the datagram holds no such acknowledgement.
fn ack_errno(mut buf: &[u8], seq: u32) -> io::Result<Option<i32>> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short netlink reply");
    while let Some(hdr) = read_header(buf) {
        let len = hdr.nlmsg_len as usize;
        if len < HDR || len > buf.len() {
            return Err(short());
        }
        if hdr.nlmsg_type == libc::NLMSG_ERROR as u16 && hdr.nlmsg_seq == seq {
            // `nlmsgerr.error`, an i32, follows the header.
            let err = buf[..len].get(HDR..HDR + 4).ok_or_else(short)?;
            return Ok(Some(i32::from_ne_bytes([err[0], err[1], err[2], err[3]])));
        }
        // Messages are 4-aligned (NLMSG_ALIGN).
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(None)
}

/// The symbolic name of an errno a destroy can fail with (`ENOENT`), for logs and JSON.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EBUSY => "EBUSY",
        libc::EAGAIN => "EAGAIN",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        0 => "",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `nlmsgerr` message: header, error, then the header of the request it answers.
    fn message(ty: u16, seq: u32, error: i32) -> Vec<u8> {
        let hdr = libc::nlmsghdr {
            nlmsg_len: (HDR + std::mem::size_of::<libc::nlmsgerr>()) as u32,
            nlmsg_type: ty,
            nlmsg_flags: 0,
            nlmsg_seq: seq,
            nlmsg_pid: 0,
        };
        let request = libc::nlmsghdr { nlmsg_len: 0, nlmsg_type: 0, nlmsg_flags: 0, nlmsg_seq: 0, nlmsg_pid: 0 };
        let mut out = header_bytes(&hdr).to_vec();
        out.extend_from_slice(&error.to_ne_bytes());
        out.extend_from_slice(&header_bytes(&request));
        out
    }

    #[test]
    fn header_bytes_round_trip() {
        let hdr = libc::nlmsghdr { nlmsg_len: 72, nlmsg_type: 21, nlmsg_flags: 5, nlmsg_seq: 9, nlmsg_pid: 3 };
        let back = read_header(&header_bytes(&hdr)).expect("a whole header");
        assert_eq!(
            (back.nlmsg_len, back.nlmsg_type, back.nlmsg_flags, back.nlmsg_seq, back.nlmsg_pid),
            (72, 21, 5, 9, 3)
        );
        assert!(read_header(&[0; HDR - 1]).is_none());
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
