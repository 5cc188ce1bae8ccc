//! The usual enforcement setup: a server in the test cgroup listening on 127.0.0.1:9000 and
//! :9001, clients outside the cgroup in the same test namespace, and an agent with a 250 ms
//! interval logging JSON. For clients in namespaces of their own, behind emulated paths: a
//! `Server` in the test cgroup and a `PathClient` per path.
use std::{collections::HashSet, time::Duration};

use serde_json::Value;

use crate::{Agent, Cgroup, EmulatedPath, Netns, PathSpec, Peer, wait_for};

/// One connection: its id on the server peer and on the client peer, and the client's address
/// (the server socket's remote).
pub struct Conn {
    pub server_id: usize,
    pub client_id: usize,
    pub remote: String,
}

/// A server in the test cgroup and clients outside it, in one test namespace. Fields drop in
/// order: the processes first, then the cgroup, the namespace last.
pub struct Setup {
    pub server: Peer,
    pub clients: Peer,
    pub cg: Cgroup,
    pub ns: Netns,
    pub accepted: usize,
}

impl Setup {
    pub fn new() -> Self {
        let (ns, cg) = (Netns::new(), Cgroup::new());
        let mut server = Peer::start(&ns, Some(&cg));
        server.cmd("listen 127.0.0.1:9000");
        server.cmd("listen 127.0.0.1:9001");
        let clients = Peer::start(&ns, None);
        Self { ns, cg, server, clients, accepted: 0 }
    }

    /// An agent on the cgroup, in the namespace, logging JSON (250 ms interval unless given).
    pub fn agent(&self, flags: &[&str]) -> Agent {
        Agent::start_json(&self.ns, &self.cg, flags)
    }

    /// Connects a client (receive buffer `rcvbuf`, 0 for default; source address `src`).
    pub fn connect(&mut self, port: u16, rcvbuf: u32, src: &str) -> Conn {
        let reply = self.clients.cmd(&format!("connect 127.0.0.1:{port} {rcvbuf} {src}"));
        let mut words = reply.split(' ');
        let client_id = words.next().unwrap().parse().unwrap();
        let remote = words.next().unwrap().to_owned();
        self.accepted += 1;
        self.server.cmd(&format!("wait-accepted {}", self.accepted));
        Conn { server_id: self.accepted - 1, client_id, remote }
    }

    /// A zero-window attacker: a tiny receive buffer, never read, `bytes` queued at the server.
    pub fn zero_window(&mut self, port: u16, src: &str, bytes: u64) -> Conn {
        let c = self.connect(port, 4096, src);
        // A send buffer that holds `bytes` whatever the kernel's autotuning gives a new
        // connection (6.1 stops a nonblocking write at about 1.6 MB; 6.18 takes 2 MiB).
        self.server.cmd(&format!("sndbuf {} {bytes}", c.server_id));
        let wrote = self.server.num(&format!("write {} {bytes}", c.server_id));
        assert_eq!(wrote, bytes, "the server could not queue {bytes} bytes");
        c
    }

    /// A reader that keeps up with a server that writes as fast as it can.
    pub fn steady_reader(&mut self) -> Conn {
        let c = self.connect(9000, 0, "127.0.0.1");
        self.server.cmd(&format!("write-loop {}", c.server_id));
        self.clients.cmd(&format!("read-loop {} 65536 1", c.client_id));
        c
    }
}

pub fn remotes(events: &[Value]) -> HashSet<String> {
    events.iter().map(|e| e["remote"].as_str().unwrap().to_owned()).collect()
}

/// Waits until every one of `conns` was destroyed.
pub fn wait_destroyed(agent: &Agent, conns: &[&Conn]) {
    wait_for("the attackers to be destroyed", Duration::from_secs(20), || {
        let gone = remotes(&agent.events_of("destroyed"));
        conns.iter().all(|c| gone.contains(&c.remote)).then_some(())
    });
}

/// Send-side memory charged to the tracked sockets whose remote address starts with `prefix`
/// (`""`: all of them), from a fresh snapshot.
pub fn charged(agent: &Agent, prefix: &str) -> u64 {
    agent
        .sockets()
        .iter()
        .filter(|s| s["remote"].as_str().is_some_and(|r| r.starts_with(prefix)))
        .map(|s| crate::field(s, "charged"))
        .sum()
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

/// A server in a test cgroup that clients in other namespaces (over emulated paths) connect to,
/// one at a time, so that it numbers each connection as it accepted it.
pub struct Server {
    pub peer: Peer,
    accepted: usize,
}

impl Server {
    pub fn start(ns: &Netns, cg: &Cgroup) -> Self {
        Self { peer: Peer::start(ns, Some(cg)), accepted: 0 }
    }

    /// Listens on `addr`; returns the address it listens on.
    pub fn listen(&mut self, addr: &str) -> String {
        self.peer.cmd(&format!("listen {addr}"))
    }

    /// Connects `client` to `to` with receive buffer `rcvbuf` (0: default) and waits until this
    /// server accepted it.
    pub fn connect(&mut self, client: &mut Peer, to: &str, rcvbuf: u32) -> Conn {
        self.connect_from(client, to, rcvbuf, None)
    }

    /// Like `connect`, from source address `src` (a loopback address other than 127.0.0.1).
    pub fn connect_from(&mut self, client: &mut Peer, to: &str, rcvbuf: u32, src: Option<&str>) -> Conn {
        let reply = client.cmd(format!("connect {to} {rcvbuf} {}", src.unwrap_or_default()).trim_end());
        let mut words = reply.split(' ');
        let client_id = words.next().unwrap().parse().unwrap();
        let remote = words.next().unwrap().to_owned();
        self.accepted += 1;
        self.peer.cmd(&format!("wait-accepted {}", self.accepted));
        Conn { server_id: self.accepted - 1, client_id, remote }
    }

    /// A zero-window client: a tiny receive buffer, never read, `bytes` queued here.
    pub fn zero_window(&mut self, client: &mut Peer, to: &str, bytes: u64) -> Conn {
        self.zero_window_from(client, to, bytes, None)
    }

    /// Like `zero_window`, from source address `src`.
    pub fn zero_window_from(&mut self, client: &mut Peer, to: &str, bytes: u64, src: Option<&str>) -> Conn {
        let c = self.connect_from(client, to, 4096, src);
        self.peer.cmd(&format!("sndbuf {} {bytes}", c.server_id));
        assert_eq!(self.peer.num(&format!("write {} {bytes}", c.server_id)), bytes, "could not queue {bytes} bytes");
        c
    }

    /// The server writes as fast as it can on `c`, and its client reads with `read_loop`'s
    /// arguments (`BYTES MS [RUN_MS PAUSE_MS]`).
    pub fn stream(&mut self, client: &mut Peer, c: &Conn, read_loop: &str) {
        self.peer.cmd(&format!("write-loop {}", c.server_id));
        client.cmd(&format!("read-loop {} {read_loop}", c.client_id));
    }
}

/// A client namespace behind an emulated path of its own to the server's namespace, and a
/// `tcp-peer` in it. Fields drop in order: the peer, the path, the namespace.
pub struct PathClient {
    /// The server's port 9000 on this client's path.
    pub to: String,
    pub peer: Peer,
    pub path: EmulatedPath,
    _ns: Netns,
}

impl PathClient {
    pub fn new(server_ns: &Netns, spec: &PathSpec) -> Self {
        let ns = Netns::new();
        let path = EmulatedPath::start(server_ns, &ns, spec);
        Self { to: format!("{}:9000", path.server_addr()), peer: Peer::start(&ns, None), path, _ns: ns }
    }
}
