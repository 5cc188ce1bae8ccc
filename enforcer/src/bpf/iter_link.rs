//! BPF iterator links, made and read through bpf(2) directly: aya 0.14's `Iter::attach` cannot
//! make a map-element iterator (`iter/bpf_sk_storage_map` needs the map's fd in the link's
//! iterator info), and its links neither lend their fd nor make a fresh reader twice. The rest
//! of enforcer uses aya; this is the small piece it lacks, with the kernel's own struct layouts.
use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

// `enum bpf_cmd` and `enum bpf_attach_type` (include/uapi/linux/bpf.h).
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr` for `BPF_LINK_CREATE`: prog_fd, target_fd, attach_type, flags, then
/// iter_info (a pointer to `union bpf_iter_link_info`) and its length.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: u32,
}

/// `union bpf_iter_link_info`, the `map` member: the map whose elements the iterator walks.
#[repr(C)]
struct IterLinkInfo {
    map_fd: u32,
    _pad: u32,
}

/// `union bpf_attr` for `BPF_ITER_CREATE`.
#[repr(C)]
struct IterCreate {
    link_fd: u32,
    flags: u32,
}

/// `union bpf_attr` for `BPF_OBJ_PIN`.
#[repr(C)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

const _: () = assert!(std::mem::size_of::<LinkCreate>() == 32);
const _: () = assert!(std::mem::size_of::<IterLinkInfo>() == 8);
const _: () = assert!(std::mem::size_of::<IterCreate>() == 8);
const _: () = assert!(std::mem::size_of::<ObjPin>() == 24);

/// bpf(2) returning a new fd.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a `union bpf_attr` prefix of the command's layout, zero-padded, and
    // lives across the call; the kernel reads at most `size_of::<T>()` bytes of it.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), std::mem::size_of::<T>()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Reads an iterator to its end, appending to `out`. One read(2) that visits a million objects
/// without writing anything returns EAGAIN (the kernel's bound on one call: a walk that writes
/// out only a few sockets can hit it on a big host); the next read goes on from there, so
/// EAGAIN is read past. (Bounded all the same, in case a kernel answered it without progress.)
pub fn read_all(reader: &mut impl io::Read, out: &mut Vec<u8>) -> io::Result<()> {
    const MAX_RETRIES: u32 = 1000;
    for _ in 0..MAX_RETRIES {
        match reader.read_to_end(out) {
            Ok(_) => return Ok(()),
            // read_to_end keeps what it read before the error in `out`.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "the iterator answered EAGAIN 1000 times in a row"))
}

/// An iterator link: each [`IterLink::read`] runs the program afresh over what it iterates.
pub struct IterLink {
    fd: OwnedFd,
}

impl IterLink {
    /// A link of `prog` (an iterator program); with `map`, a map-element iterator over it.
    pub fn create(prog: BorrowedFd<'_>, map: Option<BorrowedFd<'_>>) -> io::Result<Self> {
        let info = map.map(|m| IterLinkInfo { map_fd: m.as_raw_fd() as u32, _pad: 0 });
        let mut attr =
            LinkCreate { prog_fd: prog.as_raw_fd() as u32, attach_type: BPF_TRACE_ITER, ..LinkCreate::default() };
        if let Some(info) = &info {
            attr.iter_info = std::ptr::from_ref(info) as u64;
            attr.iter_info_len = std::mem::size_of::<IterLinkInfo>() as u32;
        }
        Ok(Self { fd: bpf_fd(BPF_LINK_CREATE, &mut attr)? })
    }

    /// A fresh reader: the program runs as it is read. An `iter/tcp` reader walks the network
    /// namespace the caller is in when it makes the reader.
    pub fn reader(&self) -> io::Result<File> {
        let mut attr = IterCreate { link_fd: self.fd.as_raw_fd() as u32, flags: 0 };
        Ok(File::from(bpf_fd(BPF_ITER_CREATE, &mut attr)?))
    }

    /// Pins the link at `path` (on bpffs): whoever opens and reads that file runs the program.
    pub fn pin(&self, path: &Path) -> io::Result<()> {
        let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the pin path"))?;
        let mut attr = ObjPin {
            pathname: c.as_ptr() as u64,
            bpf_fd: self.fd.as_raw_fd() as u32,
            file_flags: 0,
            path_fd: 0,
            _pad: 0,
        };
        // SAFETY: as in `bpf_fd`; `c` outlives the call.
        let rc = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, std::ptr::from_mut(&mut attr), std::mem::size_of::<ObjPin>())
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsFd for IterLink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
