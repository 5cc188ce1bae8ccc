//! Guards and drivers for the integration tests (tests/integration/, one binary, a module per
//! topic). Every test makes its own network namespace, child cgroup and pin directory, and every
//! guard removes what it made when dropped, also when the test panics. Every wait has a limit
//! and says what it waited for. Nothing here touches the machine's own namespace or cgroups.
#![allow(clippy::unwrap_used, reason = "test helpers panic with context on purpose")]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

mod agent;
mod config;
pub mod crowdsec;
pub mod kernel;
mod path;
mod peer;
pub mod process;
mod setup;
pub mod ss;
mod tun;
pub use agent::Agent;
pub use config::{ConfigFile, check_config};
pub use path::{DirectionStats, EmulatedPath, Outages, PathSpec, PathStats, Shape};
pub use peer::{Peer, Pod, REPLY_LIMIT, connected_many, connected_pair, sibling_bin};
pub use process::{PinDir, Reaped, Scratch};
pub use setup::{Conn, PathClient, Server, Setup, charged, remotes, wait_destroyed};
pub use tun::{TUN_KERNEL_ADDR, TunConn, TunPeer, TunSetup, TunStats};

/// What the application's socket reports (SO_ERROR) when the agent destroyed it.
pub const ECONNABORTED: u64 = libc::ECONNABORTED as u64;
/// What the peer's socket reports after the RST a destroy sends.
pub const ECONNRESET: u64 = libc::ECONNRESET as u64;
/// What an application sees when the kernel gives up on a connection (`TCP_USER_TIMEOUT`).
pub const ETIMEDOUT: u64 = libc::ETIMEDOUT as u64;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
/// The source tree (the shipped files the tests read: `deploy/`).
pub fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The enforcer binary under test (`cargo xtask test` sets ENFORCER_BIN to the release build).
pub fn enforcer_bin() -> PathBuf {
    let bin = std::env::var_os("ENFORCER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/enforcer"));
    assert!(bin.exists(), "{} is missing: run the tests with `cargo xtask test`", bin.display());
    bin
}

/// Polls `cond` until it returns `Some`, or panics with `what` after `limit`. For waiting on the
/// kernel, not for asserting how fast it is.
pub fn wait_for<T>(what: &str, limit: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn run_ok(cmd: &mut Command) {
    let out = process::output_within(cmd, process::COMMAND_LIMIT);
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace with loopback up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        sweep_dead_namespaces();
        let name = unique("enf-test");
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    /// `nsenter` into this namespace only: `ip netns exec` would also remount /sys and hide the
    /// cgroup and bpf filesystems.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name)).arg("--").arg(program);
        c
    }
}

impl Netns {
    /// The namespace's inode: what enforcer shows as a socket's `netns`.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let path = format!("/run/netns/{}", self.name);
        std::fs::metadata(&path).unwrap_or_else(|e| panic!("{path}: {e}")).ino()
    }

    /// Runs `f` on a new thread that joined this namespace: the sockets it opens are this
    /// namespace's.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
        use std::os::fd::AsRawFd;
        let path = format!("/run/netns/{}", self.name);
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        thread::spawn(move || {
            // SAFETY: setns affects this thread only, which ends with `f`.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            drop(ns);
            f()
        })
    }

    /// `GET path` from inside this namespace (a thread joins it), returning the whole response.
    pub fn http_get(&self, addr: &str, path: &str) -> String {
        let (addr, path) = (addr.to_owned(), path.to_owned());
        self.spawn(move || {
            use std::io::Read;
            let to: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| panic!("address {addr}: {e}"));
            let mut conn =
                std::net::TcpStream::connect_timeout(&to, HTTP_LIMIT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            // A server that accepts and never answers fails the test instead of hanging it.
            conn.set_read_timeout(Some(HTTP_LIMIT)).unwrap();
            conn.set_write_timeout(Some(HTTP_LIMIT)).unwrap();
            let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            conn.write_all(request.as_bytes()).unwrap();
            let mut out = String::new();
            conn.read_to_string(&mut out).unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
            out
        })
        .join()
        .unwrap()
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

/// Deletes, once per test process, the namespaces of earlier test processes that are gone
/// (`enf-test-PID-N` whose PID no longer runs): a process killed by a signal (a CI run stopped
/// mid-test) never runs its guards' drops. Only names this crate makes, only of dead processes.
fn sweep_dead_namespaces() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/run/netns") else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix("enf-test-").and_then(|r| r.split('-').next()) else { continue };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                stderr_note(&format!("removing {name}, left by test process {pid}, which is gone"));
                drop(Netns { name });
            }
        }
    });
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Destroy what is left first, this namespace's sockets only: a socket its process left
        // behind (an orphan still sending to a peer that is gone) keeps its queue charged to the
        // kernel's TCP memory, global to the machine, for minutes of retries, and it keeps the
        // namespace alive after `ip netns del`. A later test that sizes its threshold from that
        // memory would read another test's leftovers (57 MB of them in the 6.12 guest).
        let _ = self
            .command("ss")
            .args(["-K", "-t", "-a"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// How long an HTTP request to the agent may take (connect, and each read and write).
const HTTP_LIMIT: Duration = Duration::from_secs(30);

/// Writes a line to stderr from a guard's `drop`, ignoring errors. `eprintln!` panics when stderr
/// is a closed pipe (`cargo test … | head`); a panic inside a drop that runs while the test is
/// already panicking aborts the process, and every guard not yet dropped (namespace, cgroup)
/// is left behind.
pub(crate) fn stderr_note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// The cgroup v2 mount point, from /proc/mounts.
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("no cgroup2 mount")
}

/// A child cgroup of the cgroup2 root; its processes are killed and it is removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Self {
        let path = cgroup2_root().join(unique("enforcer-test"));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    /// A cgroup below this one, removed on drop like any other (declare it after its parent,
    /// so it goes first).
    pub fn child(&self, name: &str) -> Self {
        let path = self.path.join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }

    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).unwrap().ino()
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        stderr_note(&format!("warning: could not remove cgroup {}", self.path.display()));
    }
}

/// The agent's Prometheus endpoint at `addr`, scraped from inside `ns`.
pub fn agent_scrape(ns: &Netns, addr: &str) -> String {
    ns.http_get(addr, "/metrics")
}

/// The value of one sample line (`name{labels} value`) in a scrape.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A JSON number field as u64, with context on failure.
pub fn field(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or_else(|| panic!("field {name} missing or not a number in {v}"))
}

/// The kernel's TCP memory in bytes: `/proc/net/sockstat`'s `TCP: … mem PAGES` (global, whatever
/// the namespace).
pub fn sockstat_tcp_mem() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").expect("reading /proc/net/sockstat");
    let pages: u64 = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|p| p.parse().ok())
        .expect("a `TCP: … mem N` line");
    pages * page_size()
}

/// The kernel's page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running kernel.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}
