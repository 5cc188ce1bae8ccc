//! The usual enforcement setup: a server in the test cgroup listening on 127.0.0.1:9000 and
//! :9001, clients outside the cgroup in the same test namespace, and an agent with a 250 ms
//! interval logging JSON.
use std::{collections::HashSet, time::Duration};

use serde_json::Value;

use crate::{Agent, Cgroup, Netns, Peer, wait_for};

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
