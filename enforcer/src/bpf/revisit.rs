//! The revisit: between two walks of every socket, the last walk's candidates alone, each found
//! by its 4-tuple in its namespace (`enforcer_revisit`, a socket classifier that is never
//! attached: the agent runs it with `BPF_PROG_TEST_RUN` from a thread inside each namespace,
//! once per candidate there). What an `iter/tcp` walk costs per socket of the namespace, the
//! revisit costs per candidate.
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData};
use enforcer_common::{REVISIT_CAPACITY, REVISIT_NEXT, RevisitKey, SnapshotEntry};

use crate::host::netns::{self, Namespace};

/// Loads the revisit program (`PROG_REVISIT`) and hands back its fd.
pub(super) fn load(prog: Result<&mut aya::programs::Program>) -> Result<OwnedFd> {
    let prog: &mut aya::programs::SchedClassifier = prog?.try_into()?;
    prog.load().context("loading the revisit program")?;
    let fd = prog.fd().context("the revisit program has no fd")?;
    fd.as_fd().try_clone_to_owned().context("duplicating the revisit program's fd")
}

/// The revisit's program and maps, and the candidates they hold.
pub struct Revisit {
    prog: OwnedFd,
    keys: Array<MapData, RevisitKey>,
    out: Array<MapData, SnapshotEntry>,
    cursor: Array<MapData, u32>,
    /// The candidates in `keys`, by namespace: (namespace inode, first index, how many).
    groups: Vec<(u64, u32, u32)>,
}

impl Revisit {
    /// `prog` from `Loaded::take_revisit`; the maps are `REVISIT_KEYS`, `REVISIT_OUT` and
    /// `REVISIT_CURSOR`.
    pub fn new(prog: OwnedFd, keys: Map, out: Map, cursor: Map) -> Result<Self> {
        Ok(Self {
            prog,
            keys: keys.try_into().context("REVISIT_KEYS is not an array of RevisitKey")?,
            out: out.try_into().context("REVISIT_OUT is not an array of SnapshotEntry")?,
            cursor: cursor.try_into().context("REVISIT_CURSOR is not an array of u32")?,
            groups: Vec::new(),
        })
    }

    /// Takes `candidates` (what a walk of every socket wrote out) as the next revisits' set.
    /// `Ok(false)`, and no set, when there are more than the maps hold.
    pub fn choose(&mut self, candidates: &[SnapshotEntry]) -> Result<bool> {
        self.groups.clear();
        if candidates.len() > REVISIT_CAPACITY as usize {
            return Ok(false);
        }
        let mut order: Vec<&SnapshotEntry> = candidates.iter().collect();
        order.sort_by_key(|e| e.netns);
        for (i, e) in order.iter().enumerate() {
            let r = &e.record;
            let key = RevisitKey {
                cookie: e.cookie,
                local_addr: r.local_addr,
                remote_addr: r.remote_addr,
                local_port: r.local_port,
                remote_port: r.remote_port,
                family: r.family,
                _pad: 0,
            };
            let i = i as u32;
            self.keys.set(i, key, 0).context("writing a revisit key")?;
            match self.groups.last_mut() {
                Some((ns, _, n)) if *ns == u64::from(e.netns) => *n += 1,
                _ => self.groups.push((u64::from(e.netns), i, 1)),
            }
        }
        Ok(true)
    }

    /// Looks every candidate up in its namespace (one of `namespaces`; a candidate of a
    /// namespace not listed is gone) and puts what is still there into `out`, as a walk writes
    /// it out.
    pub fn run(&mut self, namespaces: &[Namespace], out: &mut Vec<SnapshotEntry>) -> Result<()> {
        out.clear();
        for &(inode, first, count) in &self.groups {
            let Some(ns) = namespaces.iter().find(|n| n.inode == inode) else { continue };
            self.cursor.set(REVISIT_NEXT, first, 0).context("setting the revisit's cursor")?;
            let prog = self.prog.as_fd();
            netns::run_in(ns, || test_run(prog, count))?
                .with_context(|| format!("running the revisit in network namespace {inode}"))?;
            for i in first..first + count {
                let e = self.out.get(&i, 0).context("reading what the revisit found")?;
                if e.cookie != 0 {
                    out.push(e);
                }
            }
        }
        Ok(())
    }
}

/// `BPF_PROG_TEST_RUN` of the classifier `prog`, `repeat` times, on a minimal frame: the kernel
/// gives it the calling thread's namespace's loopback device, so its socket lookups are there.
fn test_run(prog: BorrowedFd<'_>, repeat: u32) -> std::io::Result<()> {
    /// `union bpf_attr`'s `test` member.
    #[repr(C)]
    #[derive(Default)]
    struct TestRun {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // An Ethernet header (IPv4 type) the kernel parses, and nothing the program reads.
    let mut frame = [0u8; 64];
    frame[12] = 0x08;
    let mut attr = TestRun {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_mut_ptr() as u64,
        repeat,
        ..TestRun::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `frame` outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &raw mut attr, std::mem::size_of::<TestRun>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}
