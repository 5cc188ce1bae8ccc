//! Driver for `path-emu` (src/bin/path-emu.rs): a slow network path between a server's and a
//! client's test namespaces, emulated in user space because this machine's kernel has no
//! `sch_netem`. Each direction has its own delay, loss, rate and bottleneck queue; outages drop
//! everything both ways.
use std::time::Duration;

use crate::{Netns, peer::Driven};

/// What one direction of a path does to its packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// One-way delay, added after the packet's serialization at `rate_bps`.
    pub delay: Duration,
    /// Percent of packets dropped, uniformly at random (seeded: `PathSpec::seed`).
    pub loss_percent: f64,
    /// Bit/s of IP packets; 0: unlimited.
    pub rate_bps: u64,
    /// Bytes the bottleneck holds before it drops what arrives (drop-tail; with a rate only).
    pub queue_bytes: u64,
}

impl Shape {
    /// No delay, no loss, no limit.
    pub const NONE: Self = Self { delay: Duration::ZERO, loss_percent: 0.0, rate_bps: 0, queue_bytes: DEFAULT_QUEUE };

    fn arg(&self) -> String {
        format!(
            "delay={},loss={},rate={},queue={}",
            self.delay.as_secs_f64() * 1000.0,
            self.loss_percent,
            self.rate_bps,
            self.queue_bytes
        )
    }
}

impl Default for Shape {
    fn default() -> Self {
        Self::NONE
    }
}

/// The bottleneck's queue unless a spec says otherwise (also the emulator's default).
pub const DEFAULT_QUEUE: u64 = 256 * 1024;

/// Outages: the path drops everything, both ways, for the last `length` of every `every` from the
/// emulator's start (so a test gets `every - length` of working path first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outages {
    pub length: Duration,
    pub every: Duration,
}

/// A path: `down` is server to client, `up` client to server. The builders shape both
/// directions; set `down` or `up` for an asymmetric path. The presets are issue 22's paths, which
/// name their round-trip time: each direction delays half of it, and loses its percentage.
#[derive(Debug, Clone, PartialEq)]
pub struct PathSpec {
    pub down: Shape,
    pub up: Shape,
    pub outages: Option<Outages>,
    /// The loss draws' seed: the same packets in the same order are lost the same way.
    pub seed: u64,
}

impl Default for PathSpec {
    fn default() -> Self {
        Self::new()
    }
}

impl PathSpec {
    /// A path that only forwards.
    pub fn new() -> Self {
        Self { down: Shape::NONE, up: Shape::NONE, outages: None, seed: 1 }
    }

    /// A 40 ms round trip at 20 Mbit/s each way.
    pub fn wan_40ms_20mbit() -> Self {
        Self::new().rtt(Duration::from_millis(40)).rate(20_000_000)
    }

    /// A 150 ms round trip, 1 % loss each way, 4 Mbit/s.
    pub fn lossy_150ms() -> Self {
        Self::new().rtt(Duration::from_millis(150)).loss(1.0).rate(4_000_000)
    }

    /// A geostationary satellite: a 600 ms round trip, 0.5 % loss each way, 1 Mbit/s behind a
    /// 128 KiB bottleneck queue.
    pub fn satellite_600ms() -> Self {
        Self::new().rtt(Duration::from_millis(600)).loss(0.5).rate(1_000_000).queue(128 * 1024)
    }

    /// An 80 ms round trip that goes down for 1.5 s every 10 s (first at 8.5 s), no rate limit.
    pub fn outages_80ms() -> Self {
        Self::new().rtt(Duration::from_millis(80)).outages(Duration::from_millis(1500), Duration::from_secs(10))
    }

    /// A one-way delay of `rtt / 2` each way.
    pub fn rtt(self, rtt: Duration) -> Self {
        self.delay(rtt / 2)
    }

    /// A one-way delay of `delay` each way.
    pub fn delay(mut self, delay: Duration) -> Self {
        (self.down.delay, self.up.delay) = (delay, delay);
        self
    }

    /// `percent` of packets lost each way.
    pub fn loss(mut self, percent: f64) -> Self {
        (self.down.loss_percent, self.up.loss_percent) = (percent, percent);
        self
    }

    /// `bps` bit/s each way.
    pub fn rate(mut self, bps: u64) -> Self {
        (self.down.rate_bps, self.up.rate_bps) = (bps, bps);
        self
    }

    /// A bottleneck queue of `bytes` each way.
    pub fn queue(mut self, bytes: u64) -> Self {
        (self.down.queue_bytes, self.up.queue_bytes) = (bytes, bytes);
        self
    }

    pub fn outages(mut self, length: Duration, every: Duration) -> Self {
        assert!(length < every, "an outage of {length:?} every {every:?} never ends");
        self.outages = Some(Outages { length, every });
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// `path-emu`'s options for this spec.
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--down".to_owned(), self.down.arg(), "--up".to_owned(), self.up.arg()];
        if let Some(o) = self.outages {
            args.push("--outage".to_owned());
            args.push(format!("{}/{}", o.length.as_millis(), o.every.as_millis()));
        }
        args.extend(["--seed".to_owned(), self.seed.to_string()]);
        args
    }
}

/// What one direction counted since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets delivered, and their bytes.
    pub sent: u64,
    pub bytes: u64,
    /// Packets drawn lost.
    pub lost: u64,
    /// Packets dropped at the full bottleneck queue.
    pub queue_dropped: u64,
    /// Packets dropped because the path was down.
    pub outage_dropped: u64,
    /// The most bytes the bottleneck held.
    pub max_backlog: u64,
}

impl DirectionStats {
    /// Packets that arrived at the path, whatever became of them.
    pub fn arrived(&self) -> u64 {
        self.sent + self.lost + self.queue_dropped + self.outage_dropped
    }

    fn parse(words: &[&str]) -> Self {
        let mut s = Self::default();
        for w in words {
            let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("path-emu stats: `{w}`"));
            let v: u64 = v.parse().unwrap_or_else(|_| panic!("path-emu stats: `{w}`"));
            match k {
                "sent" => s.sent = v,
                "bytes" => s.bytes = v,
                "lost" => s.lost = v,
                "queue_dropped" => s.queue_dropped = v,
                "outage_dropped" => s.outage_dropped = v,
                "max_backlog" => s.max_backlog = v,
                _ => panic!("path-emu stats: unknown `{w}`"),
            }
        }
        s
    }
}

/// What a path counted: `down` server to client, `up` client to server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathStats {
    pub down: DirectionStats,
    pub up: DirectionStats,
}

/// A running `path-emu` between two test namespaces: a tun in each, the server's at
/// `server_addr()`, the client's at `client_addr()`, each routed to the other. Killed on drop,
/// which removes both devices. Several paths may share a namespace (each has its own subnet).
pub struct EmulatedPath {
    driven: Driven,
    server_addr: String,
    client_addr: String,
}

impl EmulatedPath {
    /// Starts the emulator and waits until both tuns are up with their addresses.
    pub fn start(server: &Netns, client: &Netns, spec: &PathSpec) -> Self {
        let mut cmd = std::process::Command::new(crate::sibling_bin("path-emu"));
        cmd.args(spec.args()).arg(&server.name).arg(&client.name);
        let mut driven = Driven::spawn("path-emu", &mut cmd);
        let line = driven.line("(start-up)");
        let addrs: Vec<&str> = line.strip_prefix("ready ").map(|a| a.split_whitespace().collect()).unwrap_or_default();
        let [server_addr, client_addr] = addrs[..] else { panic!("path-emu did not start ({cmd:?}): {line}") };
        let (server_addr, client_addr) = (server_addr.to_owned(), client_addr.to_owned());
        Self { driven, server_addr, client_addr }
    }

    /// The server's side: its namespace's address on this path (listen here).
    pub fn server_addr(&self) -> &str {
        &self.server_addr
    }

    /// The client's side: the address its connections come from (the server socket's remote).
    pub fn client_addr(&self) -> &str {
        &self.client_addr
    }

    /// What the path did so far.
    pub fn stats(&mut self) -> PathStats {
        let reply = self.cmd("stats");
        let words: Vec<&str> = reply.split_whitespace().collect();
        let up = words.iter().position(|w| *w == "up").unwrap_or_else(|| panic!("path-emu stats: `{reply}`"));
        assert_eq!(words.first(), Some(&"down"), "path-emu stats: `{reply}`");
        PathStats { down: DirectionStats::parse(&words[1..up]), up: DirectionStats::parse(&words[up + 1..]) }
    }

    /// Takes the path down, both ways, from now for `length` (besides any periodic outages).
    pub fn outage(&mut self, length: Duration) {
        self.cmd(&format!("outage {}", length.as_millis()));
    }

    fn cmd(&mut self, line: &str) -> String {
        self.driven.send(line);
        self.driven.reply(line).unwrap_or_else(|e| panic!("path-emu `{line}` answered `{e}`"))
    }
}
