//! One agent per cgroup. Two agents watching the same cgroup (with different pin directories,
//! so their locks do not meet) would judge the same sockets twice and destroy on each other's
//! count. The kernel knows who is attached: `BPF_PROG_QUERY` lists the sock_ops programs on the
//! cgroup, and an enforcer program among them is another agent, whatever its pin directory,
//! version or namespace. bpf_links go with their process, so a crashed agent leaves none.
//!
//! Two agents starting at the same instant can both pass; this stops the operator's mistake,
//! not a race. Imports nothing of ours but the program names.
use std::{os::fd::AsRawFd, path::Path};

use anyhow::{Context, Result, bail};
use enforcer_common::names;

/// `BPF_PROG_QUERY` and `BPF_CGROUP_SOCK_OPS` from `linux/bpf.h` (libc has neither).
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_CGROUP_SOCK_OPS: u32 = 3;
/// Programs listed at most: a cgroup with more sock_ops programs than this is not ours to judge.
const MAX_PROGS: usize = 64;

/// The query part of `union bpf_attr`. Fields newer than the running kernel stay zero, which
/// the kernel accepts.
#[repr(C, align(8))]
#[derive(Default)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

const _: () = assert!(std::mem::size_of::<ProgQuery>() == 64);

/// Ids of the sock_ops programs attached to `cgroup` itself (not inherited from a parent).
fn sock_ops_programs(cgroup: &Path) -> Result<Vec<u32>> {
    let dir = std::fs::File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    let mut ids = [0u32; MAX_PROGS];
    let mut attr = ProgQuery {
        target_fd: dir.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_SOCK_OPS,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: MAX_PROGS as u32,
        ..ProgQuery::default()
    };
    // SAFETY: `attr` is a valid BPF_PROG_QUERY attribute of the size passed; the kernel writes
    // at most `prog_cnt` ids into `ids`, which outlives the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut attr as *mut ProgQuery, std::mem::size_of::<ProgQuery>())
    };
    // ENOSPC: more than MAX_PROGS attached; the first MAX_PROGS are there all the same.
    if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSPC) {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("listing the sock_ops programs on cgroup {}", cgroup.display()));
    }
    Ok(ids[..(attr.prog_cnt as usize).min(MAX_PROGS)].to_vec())
}

/// Refuses to start when an enforcer agent already watches `cgroup`.
pub fn refuse_second_agent(cgroup: &Path) -> Result<()> {
    let ids = sock_ops_programs(cgroup)?;
    if ids.is_empty() {
        return Ok(());
    }
    // The kernel keeps 15 bytes of a program's name.
    let ours = &names::PROG_SOCKOPS[..names::PROG_SOCKOPS.len().min(15)];
    let other = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| ids.contains(&p.id()) && p.name_as_str().is_some_and(|n| n.starts_with(ours)));
    if let Some(p) = other {
        let pid = holder(p.id()).map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"));
        bail!(
            "another enforcer agent ({pid}) is running on cgroup {} (its sock_ops program, id {}, is attached \
             there): one cgroup takes one agent, whatever its --pin-dir; stop that one first",
            cgroup.display(),
            p.id()
        );
    }
    Ok(())
}

/// The process holding a bpf_link to program `prog_id`: its descriptor's fdinfo names the
/// program (`prog_id:\tN`).
fn holder(prog_id: u32) -> Option<u32> {
    let want = format!("prog_id:\t{prog_id}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|proc| {
        let pid: u32 = proc.file_name().to_str()?.parse().ok()?;
        std::fs::read_dir(proc.path().join("fd")).ok()?.flatten().find_map(|fd| {
            let link = std::fs::read_link(fd.path()).ok()?;
            if link.to_str() != Some("anon_inode:bpf_link") {
                return None;
            }
            let info = std::fs::read_to_string(proc.path().join("fdinfo").join(fd.file_name())).ok()?;
            info.lines().any(|l| l == want).then_some(pid)
        })
    })
}
