//! Driver for `tun-peer` (src/bin/tun-peer.rs): a user-space TCP peer on a tun device in a test
//! namespace, whose ACK numbers and windows the test scripts.

use crate::{
    Agent, Cgroup, Netns, Peer,
    peer::Driven,
    ss::{self, SsSocket},
};

/// The tun's own address: kernel servers listen here. The peer plays 10.77.0.2 and up.
pub const TUN_KERNEL_ADDR: &str = "10.77.0.1";

/// What `stats ID` reports about one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunStats {
    /// Bytes the peer acknowledged.
    pub acked: u64,
    /// Bytes the server sent that arrived in order.
    pub received: u64,
    /// Data segments seen, retransmissions included.
    pub segments: u64,
    /// `syn_sent`, `established`, `closed` (the server sent FIN) or `reset`.
    pub state: String,
}

/// A running `tun-peer` in a test namespace, its tun up on 10.77.0.1/24; killed on drop.
pub struct TunPeer {
    driven: Driven,
    /// The tun device's name.
    pub dev: String,
}

impl TunPeer {
    /// Starts the peer and waits until its tun is up with its address.
    pub fn start(ns: &Netns) -> Self {
        let mut driven = Driven::spawn("tun-peer", &mut ns.command(crate::sibling_bin("tun-peer")));
        // The first line says the tun is configured, or why not.
        let dev = driven.reply("(start-up)").unwrap_or_else(|e| panic!("tun-peer did not start: {e}"));
        Self { driven, dev }
    }

    /// Sends one command; `Ok` with what follows `ok`, `Err` with the whole `err …` line.
    pub fn try_cmd(&mut self, line: &str) -> Result<String, String> {
        self.driven.send(line);
        self.driven.reply(line)
    }

    /// Sends one command and returns what follows `ok`; panics on `err`.
    pub fn cmd(&mut self, line: &str) -> String {
        self.try_cmd(line).unwrap_or_else(|e| panic!("tun-peer `{line}` answered `{e}`"))
    }

    /// Connects from `src` to `dst` (`ip:port`), advertising `window` bytes with window scale
    /// `wscale` (`None`: no option, a raw 16-bit window). Returns the connection's ID and its
    /// address (the server socket's remote).
    pub fn connect(&mut self, src: &str, dst: &str, window: u32, wscale: Option<u8>) -> (usize, String) {
        let wscale = wscale.map_or("none".to_owned(), |s| s.to_string());
        let reply = self.cmd(&format!("connect {src} {dst} {window} {wscale}"));
        let (id, local) = reply.split_once(' ').unwrap_or_else(|| panic!("connect answered `{reply}`"));
        (id.parse().unwrap(), local.to_owned())
    }

    pub fn stats(&mut self, id: usize) -> TunStats {
        let reply = self.cmd(&format!("stats {id}"));
        let f: Vec<&str> = reply.split(' ').collect();
        let num = |i: usize| f[i].parse().unwrap_or_else(|_| panic!("stats answered `{reply}`"));
        assert_eq!(f.len(), 4, "stats answered `{reply}`");
        TunStats { acked: num(0), received: num(1), segments: num(2), state: f[3].to_owned() }
    }
}

/// One connection: its ID on the tun peer and on the server, and the peer's address (the server
/// socket's remote).
pub struct TunConn {
    pub tun: usize,
    pub server: usize,
    pub remote: String,
}

/// A `tcp-peer` server in a test cgroup listening on the tun's address, and the tun peer as its
/// clients, in one test namespace. Fields drop in order: processes first, the namespace last.
pub struct TunSetup {
    pub server: Peer,
    pub tun: TunPeer,
    pub cg: Cgroup,
    pub ns: Netns,
    pub accepted: usize,
}

impl TunSetup {
    /// An agent on the cgroup, in the namespace, logging JSON (250 ms interval unless given).
    pub fn agent(&self, flags: &[&str]) -> Agent {
        Agent::start_json(&self.ns, &self.cg, flags)
    }

    pub fn new() -> Self {
        let (ns, cg) = (Netns::new(), Cgroup::new());
        // The tun first: the server listens on its address.
        let tun = TunPeer::start(&ns);
        let mut server = Peer::start(&ns, Some(&cg));
        server.cmd(&format!("listen {TUN_KERNEL_ADDR}:9000"));
        Self { server, tun, cg, ns, accepted: 0 }
    }

    /// Connects the tun peer from `src`, advertising `window` bytes with scale `wscale`.
    pub fn connect(&mut self, src: &str, window: u32, wscale: Option<u8>) -> TunConn {
        let (tun, remote) = self.tun.connect(src, &format!("{TUN_KERNEL_ADDR}:9000"), window, wscale);
        self.accepted += 1;
        self.server.cmd(&format!("wait-accepted {}", self.accepted));
        TunConn { tun, server: self.accepted - 1, remote }
    }

    /// Lets the server queue `bytes` (SO_SNDBUFFORCE) and writes `bytes` without blocking;
    /// returns how much it queued.
    pub fn write(&mut self, c: &TunConn, sndbuf: u64, bytes: u64) -> u64 {
        self.server.cmd(&format!("sndbuf {} {sndbuf}", c.server));
        self.server.num(&format!("write {} {bytes}", c.server))
    }

    /// Bytes the server has sent or queued and not seen acknowledged (SIOCOUTQ).
    pub fn outq(&mut self, c: &TunConn) -> u64 {
        self.server.num(&format!("outq {}", c.server))
    }

    /// The server's established socket to `c` as `ss -tnmi` shows it; `None` if there is none.
    pub fn ss(&self, c: &TunConn) -> Option<SsSocket> {
        let mut all = ss::established(&self.ns, &["dst", &c.remote]);
        assert!(all.len() <= 1, "more than one socket to {}: {all:?}", c.remote);
        all.pop()
    }

    /// Like `ss`, for a socket that must be there.
    pub fn ss_established(&self, c: &TunConn) -> SsSocket {
        self.ss(c).unwrap_or_else(|| panic!("no established socket to {}", c.remote))
    }
}

impl Default for TunSetup {
    fn default() -> Self {
        Self::new()
    }
}
