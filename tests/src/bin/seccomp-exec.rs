//! Runs a program under the seccomp part of a systemd unit's sandbox, so a test can run the agent
//! the way `deploy/systemd/enforcer.service` would (PID 1 here is not systemd, so `systemd-run`
//! cannot). Configured by the environment, so it can stand in for the enforcer binary anywhere
//! the tests start one (through nsenter too):
//!
//! - `SECCOMP_EXEC`: the program to exec, with this process's arguments;
//! - `SECCOMP_ALLOW`: the allowed system call numbers, comma-separated (`SystemCallFilter=`
//!   expanded by the test with `systemd-analyze syscall-filter`); any other call fails with
//!   EPERM (`SystemCallErrorNumber=EPERM`);
//! - `SECCOMP_FAMILIES`: the socket families allowed (`RestrictAddressFamilies=`), others fail
//!   with EAFNOSUPPORT.
//!
//! `RestrictNamespaces=net` is applied as systemd 252 applies it: setns(2) only with
//! CLONE_NEWNET, unshare(2) and clone(2) with no namespace flag but CLONE_NEWNET, clone3(2)
//! answers ENOSYS (its flags are behind a pointer; libc then falls back to clone). Architectures
//! other than the native one are killed (`SystemCallArchitectures=native`), and no_new_privs is
//! set (`NoNewPrivileges=yes`, which a filter needs anyway).
use std::{ffi::CString, os::unix::ffi::OsStrExt};

// Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JSET_K: u16 = 0x45;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
// Offsets in struct seccomp_data: nr, arch, then args[6] (low 32 bits first on little endian).
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg(i: u32) -> u32 {
    16 + 8 * i
}

// Every namespace flag but CLONE_NEWNET (linux/sched.h).
const NS_FLAGS_BUT_NET: u32 = 0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x80;
const CLONE_NEWNET: u32 = 0x4000_0000;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

fn numbers(var: &str) -> Vec<u32> {
    let text = std::env::var(var).unwrap_or_else(|_| die(&format!("{var} is not set")));
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse().unwrap_or_else(|_| die(&format!("{var}: {s:?} is not a number"))))
        .collect()
}

fn die(msg: &str) -> ! {
    eprintln!("seccomp-exec: {msg}");
    std::process::exit(127)
}

fn filter(allow: &[u32], families: &[u32]) -> Vec<libc::sock_filter> {
    let errno = |e: i32| stmt(RET_K, RET_ERRNO | e as u32);
    let mut f = vec![
        stmt(LD_W_ABS, ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1),
        errno(libc::EPERM),
    ];
    // Each special case: if nr matches, look at an argument and return; else skip the block.
    let mut block = |nr: i64, body: Vec<libc::sock_filter>| {
        f.push(jump(JEQ_K, nr as u32, 0, body.len() as u8));
        f.extend(body);
    };
    block(
        libc::SYS_setns,
        vec![stmt(LD_W_ABS, arg(1)), jump(JEQ_K, CLONE_NEWNET, 0, 1), stmt(RET_K, RET_ALLOW), errno(libc::EPERM)],
    );
    for nr in [libc::SYS_unshare, libc::SYS_clone] {
        block(
            nr,
            vec![
                stmt(LD_W_ABS, arg(0)),
                jump(JSET_K, NS_FLAGS_BUT_NET, 0, 1),
                errno(libc::EPERM),
                stmt(RET_K, RET_ALLOW),
            ],
        );
    }
    block(libc::SYS_clone3, vec![errno(libc::ENOSYS)]);
    let mut socket = vec![stmt(LD_W_ABS, arg(0))];
    for fam in families {
        socket.push(jump(JEQ_K, *fam, 0, 1));
        socket.push(stmt(RET_K, RET_ALLOW));
    }
    socket.push(errno(libc::EAFNOSUPPORT));
    block(libc::SYS_socket, socket);
    // The blocks left the accumulator as it was only when they did not match: reload nr.
    f.push(stmt(LD_W_ABS, NR));
    for nr in allow {
        f.push(jump(JEQ_K, *nr, 0, 1));
        f.push(stmt(RET_K, RET_ALLOW));
    }
    f.push(errno(libc::EPERM));
    f
}

fn main() {
    let program = std::env::var_os("SECCOMP_EXEC").unwrap_or_else(|| die("SECCOMP_EXEC is not set"));
    let mut allow = numbers("SECCOMP_ALLOW");
    // The exec below is this helper's, not the service's; systemd's own exec happens before its
    // filter is on.
    allow.push(libc::SYS_execve as u32);
    let prog = filter(&allow, &numbers("SECCOMP_FAMILIES"));
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr().cast_mut() };
    let to_c = |s: &std::ffi::OsStr| CString::new(s.as_bytes()).unwrap_or_else(|_| die("an argument holds a NUL"));
    let argv_owned: Vec<CString> =
        std::iter::once(to_c(&program)).chain(std::env::args_os().skip(1).map(|a| to_c(&a))).collect();
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: plain syscalls on valid pointers that outlive them; execv only returns on error.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            die(&format!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error()));
        }
        if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &raw const fprog) != 0 {
            die(&format!("PR_SET_SECCOMP: {}", std::io::Error::last_os_error()));
        }
        libc::execv(argv[0], argv.as_ptr());
    }
    die(&format!("exec {}: {}", program.to_string_lossy(), std::io::Error::last_os_error()))
}
