//! Guards and drivers for the integration tests. Every test makes its own network namespace,
//! child cgroup and pin directory, and every guard removes what it made when dropped, also when
//! the test panics. Nothing here touches the machine's own namespace or cgroups.
#![allow(clippy::unwrap_used, reason = "test helpers panic with context on purpose")]

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

mod setup;
mod tun;
pub use setup::{Conn, ECONNABORTED, ECONNRESET, Setup, charged, remotes, wait_destroyed};
pub use tun::{TUN_KERNEL_ADDR, TunConn, TunPeer, TunSetup, TunStats};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
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
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace with loopback up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
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
    /// `GET path` from inside this namespace (a thread joins it), returning the whole response.
    pub fn http_get(&self, addr: &str, path: &str) -> String {
        let (name, addr, path) = (self.name.clone(), addr.to_owned(), path.to_owned());
        thread::spawn(move || {
            use std::{io::Read, os::fd::AsRawFd};
            let ns = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
            // SAFETY: setns affects this short-lived thread only.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            let mut conn = std::net::TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
            let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            conn.write_all(request.as_bytes()).unwrap();
            let mut out = String::new();
            conn.read_to_string(&mut out).unwrap();
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

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Writes a line to stderr from a guard's `drop`, ignoring errors. `eprintln!` panics when stderr
/// is a closed pipe (`cargo test … | head`); a panic inside a drop that runs while the test is
/// already panicking aborts the process, and every guard not yet dropped (namespace, cgroup)
/// is left behind.
fn stderr_note(text: &str) {
    use std::io::Write;
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

/// A running `enforcer run` inside a test namespace, attached to a test cgroup.
pub struct Agent {
    child: Option<Child>,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    netns: String,
}

impl Agent {
    pub fn start(ns: &Netns, cg: &Cgroup, extra: &[&str]) -> Self {
        Self::start_at(ns, cg, PathBuf::from("/sys/fs/bpf").join(unique("enforcer-test")), extra)
    }

    /// Runs `enforcer run` with its command line, without waiting for it to come up.
    pub fn spawn_raw(ns: &Netns, cg: &Cgroup, pin_dir: &Path, extra: &[&str]) -> std::process::Output {
        ns.command(enforcer_bin())
            .arg("run")
            .arg("--cgroup")
            .arg(&cg.path)
            .arg("--pin-dir")
            .arg(pin_dir)
            .args(extra)
            .output()
            .unwrap()
    }

    /// Like `start`, with the pin directory given (to restart on the same pins).
    pub fn start_at(ns: &Netns, cg: &Cgroup, pin_dir: PathBuf, extra: &[&str]) -> Self {
        Self::launch(ns.command(enforcer_bin()), ns, cg, pin_dir, extra)
    }

    /// Like `start`, with `program` (a wrapper that execs the agent, e.g. `seccomp-exec`)
    /// started in its place with `env`.
    pub fn start_wrapped(ns: &Netns, cg: &Cgroup, program: &Path, env: &[(&str, String)], extra: &[&str]) -> Self {
        let mut cmd = ns.command(program);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        Self::launch(cmd, ns, cg, PathBuf::from("/sys/fs/bpf").join(unique("enforcer-test")), extra)
    }

    fn launch(mut cmd: Command, ns: &Netns, cg: &Cgroup, pin_dir: PathBuf, extra: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique("enforcer-agent")));
        let logfile = std::fs::File::create(&log).unwrap();
        // Snapshots every 200 ms unless the test sets its own interval.
        let interval: &[&str] = if extra.contains(&"--interval") { &[] } else { &["--interval", "200ms"] };
        let child = cmd
            .arg("run")
            .args(interval)
            .arg("--cgroup")
            .arg(&cg.path)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .args(extra)
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .spawn()
            .unwrap();
        let mut agent = Self { child: Some(child), pin_dir, log, netns: ns.name.clone() };
        // Its own start-up line, not pins: a killed predecessor may have left pins behind.
        wait_for("the agent to attach", Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(Child::try_wait) {
                panic!("agent exited with {status} during start-up:\n{}", agent.log_text());
            }
            agent.log_text().contains("enforcer attached").then_some(())
        });
        agent
    }

    /// The agent's process id (nsenter execs it, so it is the child's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an enforcer CLI command in the agent's namespace against its pins.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(enforcer_bin())
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .output()
            .unwrap()
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(out.status.success(), "enforcer {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("enforcer {args:?} printed bad JSON ({e})"))
    }

    /// `enforcer sockets --json`.
    pub fn sockets(&self) -> Vec<Value> {
        match self.cli_json(&["sockets", "--json"]) {
            Value::Array(v) => v,
            other => panic!("sockets --json is not an array: {other}"),
        }
    }

    /// The tracked socket whose local address is `local`.
    pub fn socket(&self, local: &str) -> Value {
        let all = self.sockets();
        all.iter()
            .find(|s| s["local"] == local)
            .cloned()
            .unwrap_or_else(|| panic!("no tracked socket with local address {local} in {all:?}"))
    }

    /// Decision events the agent logged (it must run with `--log-format json`).
    pub fn events(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("event").is_some())
            .collect()
    }

    /// Events of one kind (`destroyed`, `would_destroy`, `destroy_failed`).
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == kind).collect()
    }

    /// Whether a tracked socket has this remote address (`ip:port`).
    pub fn tracks_remote(&self, remote: &str) -> bool {
        self.sockets().iter().any(|s| s["remote"] == remote)
    }

    /// `enforcer status --json`.
    pub fn status(&self) -> Value {
        self.cli_json(&["status", "--json"])
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn sigkill(&mut self) {
        let mut child = self.child.take().expect("agent already stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Gracefully first, so the agent removes its own pins; then by force.
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever an agent that was killed left behind.
        if let Ok(entries) = std::fs::read_dir(&self.pin_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
            let _ = std::fs::remove_dir(&self.pin_dir);
        }
        if !thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            stderr_note(&format!("agent log:\n{}", self.log_text()));
        }
    }
}

/// A binary of this crate (`tcp-peer`, `tun-peer`, `loadgen`) that cargo builds next to the test binaries
/// (`target/<profile>/`).
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is missing: cargo builds it for the integration tests", bin.display());
    bin
}

fn peer_bin() -> PathBuf {
    sibling_bin("tcp-peer")
}

/// A `tcp-peer` process in a test namespace (and optionally a test cgroup), driven by commands.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts a peer; its sockets belong to `cgroup` when given (the tracked side).
    pub fn start(ns: &Netns, cgroup: Option<&Cgroup>) -> Self {
        Self::start_bin(&peer_bin(), ns, cgroup)
    }

    /// Like `start`, with an explicit path to `tcp-peer` (for callers outside the test binaries).
    pub fn start_bin(peer: &Path, ns: &Netns, cgroup: Option<&Cgroup>) -> Self {
        let peer = peer.display();
        let mut cmd = match cgroup {
            // Join the cgroup before exec, so every socket the peer creates is in it.
            Some(cg) => {
                let mut c = ns.command("sh");
                c.arg("-c").arg(format!("echo $$ > {}/cgroup.procs && exec {peer}", cg.path.display()));
                c
            }
            None => ns.command(peer.to_string()),
        };
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdin, stdout }
    }

    /// The peer's process id (nsenter and `sh -c … exec` keep it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one command and returns what follows `ok`; panics on `err`.
    pub fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut reply = String::new();
        self.stdout.read_line(&mut reply).unwrap();
        let reply = reply.trim_end();
        match reply.strip_prefix("ok") {
            Some(rest) => rest.trim().to_owned(),
            None => panic!("tcp-peer `{line}` answered `{reply}`"),
        }
    }

    pub fn num(&mut self, line: &str) -> u64 {
        let r = self.cmd(line);
        r.parse().unwrap_or_else(|_| panic!("`{line}` answered `{r}`, not a number"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One connection: a server in `cg` listening on `listen`, a client outside the cgroup connected
/// to it with receive buffer `rcvbuf` (0: default). The connection is id 0 on both peers.
pub fn connected_pair(ns: &Netns, cg: &Cgroup, listen: &str, rcvbuf: u32) -> (Peer, Peer) {
    let mut server = Peer::start(ns, Some(cg));
    let addr = server.cmd(&format!("listen {listen}"));
    let mut client = Peer::start(ns, None);
    client.cmd(&format!("connect {addr} {rcvbuf}"));
    server.cmd("wait-accepted 1");
    (server, client)
}

/// Names of loaded BPF programs that enforcer made (the kernel truncates names to 15 bytes).
pub fn enforcer_programs_loaded() -> Vec<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| p.name_as_str().map(str::to_owned))
        .filter(|n| n.starts_with("enforcer_"))
        .collect()
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
