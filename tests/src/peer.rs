//! Driving the peers (`tcp-peer`, `tun-peer`): a command a line on stdin, one `ok …` or `err …`
//! line each on stdout. Every reply is awaited with a deadline; a peer that does not answer or
//! exits fails the test with the command and what the peer wrote to stderr.
use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use crate::{Cgroup, Netns, stderr_note};

/// How long a peer may take to answer one command. Generous: `connect-many 3000` under
/// emulation takes seconds; a peer that takes this long has lost its connection or hangs.
pub const REPLY_LIMIT: Duration = Duration::from_secs(60);

/// A peer process: its replies read by a thread (so a wait has a deadline), its stderr kept for
/// the failure message. Killed on drop.
pub(crate) struct Driven {
    what: &'static str,
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Driven {
    pub(crate) fn spawn(what: &'static str, cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, replies) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut pipe, kept) = (child.stderr.take().unwrap(), stderr.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                kept.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { what, child, stdin, replies, stderr }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn said(&self) -> String {
        let text = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if text.trim().is_empty() { String::new() } else { format!("; its stderr:\n{}", text.trim_end()) }
    }

    /// Sends `line`.
    pub(crate) fn send(&mut self, line: &str) {
        let sent = writeln!(self.stdin, "{line}").and_then(|()| self.stdin.flush());
        if let Err(e) = sent {
            let status = crate::process::wait_exit(&mut self.child, Duration::from_secs(5));
            panic!("{} took no command `{line}` ({e}; exit status {status:?}){}", self.what, self.said());
        }
    }

    /// The next reply, awaited for `REPLY_LIMIT`: `Ok` with what follows `ok`, `Err` with the
    /// whole `err …` line. `line` names what is awaited in a failure.
    pub(crate) fn reply(&mut self, line: &str) -> Result<String, String> {
        let reply = self.line(line);
        let reply = reply.trim_end();
        match reply.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => Err(reply.to_owned()),
        }
    }

    /// The next line the peer writes, as it is, awaited for `REPLY_LIMIT`. `line` names what is
    /// awaited in a failure.
    pub(crate) fn line(&mut self, line: &str) -> String {
        match self.replies.recv_timeout(REPLY_LIMIT) {
            Ok(reply) => reply,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{} did not answer `{line}` within {REPLY_LIMIT:?}{}", self.what, self.said())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = crate::process::wait_exit(&mut self.child, Duration::from_secs(5));
                panic!("{} exited (status {status:?}) instead of answering `{line}`{}", self.what, self.said())
            }
        }
    }
}

impl Drop for Driven {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let said = self.said();
            if !said.is_empty() {
                stderr_note(&format!("{} (pid {}){said}", self.what, self.child.id()));
            }
        }
    }
}

/// A binary of this crate (`tcp-peer`, `tun-peer`, `loadgen`) that cargo builds next to the test
/// binary (`target/<profile>/`). Not `CARGO_BIN_EXE_*`: that is the host's path, not the VM legs'.
pub fn sibling_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join(name);
    assert!(bin.exists(), "{} is missing: cargo builds it for the integration tests", bin.display());
    bin
}

/// A `tcp-peer` process in a test namespace (and optionally a test cgroup), driven by commands.
pub struct Peer(Driven);

impl Peer {
    /// Starts a peer; its sockets belong to `cgroup` when given (the tracked side).
    pub fn start(ns: &Netns, cgroup: Option<&Cgroup>) -> Self {
        Self::start_bin(&sibling_bin("tcp-peer"), ns, cgroup)
    }

    /// A peer in `cgroup` listening on `addr`, and the address it listens on.
    pub fn listening(ns: &Netns, cgroup: &Cgroup, addr: &str) -> (Self, String) {
        let mut peer = Self::start(ns, Some(cgroup));
        let local = peer.cmd(&format!("listen {addr}"));
        (peer, local)
    }

    /// Like `start`, with an explicit path to `tcp-peer` (for callers outside the test binary).
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
        Self(Driven::spawn("tcp-peer", &mut cmd))
    }

    /// The peer's process id (nsenter and `sh -c … exec` keep it).
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Sends one command and returns what follows `ok`; panics on `err`.
    pub fn cmd(&mut self, line: &str) -> String {
        self.0.send(line);
        self.0.reply(line).unwrap_or_else(|e| panic!("tcp-peer `{line}` answered `{e}`"))
    }

    pub fn num(&mut self, line: &str) -> u64 {
        let r = self.cmd(line);
        r.parse().unwrap_or_else(|_| panic!("`{line}` answered `{r}`, not a number"))
    }
}

/// One connection: a server in `cg` listening on `listen`, a client outside the cgroup connected
/// to it with receive buffer `rcvbuf` (0: default). The connection is id 0 on both peers.
pub fn connected_pair(ns: &Netns, cg: &Cgroup, listen: &str, rcvbuf: u32) -> (Peer, Peer) {
    let (mut server, addr) = Peer::listening(ns, cg, listen);
    let mut client = Peer::start(ns, None);
    client.cmd(&format!("connect {addr} {rcvbuf}"));
    server.cmd("wait-accepted 1");
    (server, client)
}

/// `n` connections: a server in `cg` listening on `listen`, clients outside the cgroup (one
/// peer) connected with receive buffer `rcvbuf` (0: default). IDs 0 to n-1 on both peers.
pub fn connected_many(ns: &Netns, cg: &Cgroup, listen: &str, n: usize, rcvbuf: u32) -> (Peer, Peer) {
    let (mut server, addr) = Peer::listening(ns, cg, listen);
    let mut clients = Peer::start(ns, None);
    clients.cmd(&format!("connect-many {addr} {n} {rcvbuf}"));
    server.cmd(&format!("wait-accepted {n}"));
    (server, clients)
}

/// A "pod": in its own network namespace, a server in the test cgroup listening on
/// 127.0.0.1:9000 and an attacker beside it (outside the cgroup) connected with a 4 KiB receive
/// buffer that it never reads: connection 0 on both.
pub struct Pod {
    pub server: Peer,
    pub attacker: Peer,
    /// The server's address.
    pub listen: String,
    /// The attacker's address: the server socket's remote.
    pub remote: String,
}

impl Pod {
    pub fn new(ns: &Netns, cg: &Cgroup) -> Self {
        let (mut server, listen) = Peer::listening(ns, cg, "127.0.0.1:9000");
        let mut attacker = Peer::start(ns, None);
        let reply = attacker.cmd(&format!("connect {listen} 4096"));
        let remote = reply.split(' ').nth(1).unwrap().to_owned();
        server.cmd("wait-accepted 1");
        Self { server, attacker, listen, remote }
    }
}
