//! A slow network path between two test namespaces, emulated in user space (this machine's
//! kernel has no `sch_netem`): a tun device in each namespace, and IPv4 packets forwarded
//! between them with, per direction, a one-way delay, random loss, a rate limit behind a
//! drop-tail bottleneck queue, and outages that drop everything in both directions.
//!
//! Usage: `path-emu [OPTIONS] SERVER_NS CLIENT_NS` (a name under /run/netns or a path to a
//! namespace file; never the machine's own namespace). Options, applied in order:
//!   --both SHAPE        shape both directions
//!   --down SHAPE        shape server -> client
//!   --up SHAPE          shape client -> server
//!   --outage LEN/EVERY  drop everything for the last LEN ms of every EVERY ms from the start
//!   --seed N            the loss draws' seed (default 1): the same packets, the same losses
//! SHAPE is `KEY=VALUE,…`: `delay` one-way ms (fractions allowed), `loss` percent of packets
//! dropped uniformly at random, `rate` bit/s of IP packets (0: unlimited), `queue` bytes the
//! bottleneck holds before it drops what arrives (default 256 KiB; only with a rate).
//!
//! It takes the first X from 0 with neither device name taken, makes `pemuXs` (10.88.X.1) in the
//! server's namespace and `pemuXc` (10.88.X.2) in the client's, each with a point-to-point route
//! to the other, and prints `ready 10.88.X.1 10.88.X.2`; several paths can share a namespace.
//! A packet that arrives during an outage or is drawn lost is dropped; one that finds the
//! bottleneck's backlog full is dropped; the others wait in a FIFO until their release time (the
//! end of their serialization at the rate, plus the delay) and keep their order. A packet whose
//! release falls in an outage is dropped too (the link is down). Other than IPv4 is dropped.
//!
//! Commands on stdin, one `ok …` or `err …` line each on stdout:
//!   stats        `ok down K=V… up K=V…`: `sent` packets and `bytes` delivered, `lost` drawn
//!                lost, `queue_dropped` at the bottleneck, `outage_dropped`, `max_backlog`
//!                bytes the bottleneck held at most
//!   outage MS    drop everything from now for MS ms
//! It runs until killed or its stdin closes (the driver is gone); the devices go with it.
use std::{
    collections::VecDeque,
    fs::File,
    io::{BufRead, Read, Write},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    process::Command,
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// The bottleneck's queue when a rate is given without one.
const DEFAULT_QUEUE: u64 = 256 * 1024;
/// The largest packet a tun hands over (its MTU is 1500; room for a bigger one set by hand).
const MAX_PACKET: usize = 65536;

fn main() {
    let config = match Config::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => fail(&e),
    };
    let (server, client, x) = match setup(&config) {
        Ok(t) => t,
        Err(e) => fail(&e),
    };
    let start = Instant::now();
    let outages = Arc::new(Outages { start, periodic: config.outage, until: Mutex::new(start) });
    let down = Arc::new(Direction::new(config.down, config.seed));
    let up = Arc::new(Direction::new(config.up, config.seed ^ 0x9e37_79b9_7f4a_7c15));
    for (from, to, dir) in [(&server, &client, &down), (&client, &server, &up)] {
        let (from, to) = match (from.try_clone(), to.try_clone()) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => fail(&format!("dup tun: {e}")),
        };
        let (d, o) = (dir.clone(), outages.clone());
        thread::spawn(move || arrive(&d, &o, from));
        let (d, o) = (dir.clone(), outages.clone());
        thread::spawn(move || deliver(&d, &o, to));
    }
    let mut out = std::io::stdout();
    if writeln!(out, "ready 10.88.{x}.1 10.88.{x}.2").and_then(|()| out.flush()).is_err() {
        return;
    }
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["stats"] => format!("ok down {} up {}", down.stats, up.stats),
            ["outage", ms] => match ms.parse::<u64>() {
                Ok(ms) => {
                    *lock(&outages.until) = Instant::now() + Duration::from_millis(ms);
                    "ok".to_owned()
                }
                Err(_) => format!("err bad duration {ms:?}"),
            },
            _ => format!("err unknown command {line:?}"),
        };
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    // Stdin closed: the driver is gone. Exiting closes the tuns, which removes the devices.
}

/// Start-up failed: say why on the line the driver waits for, and exit.
fn fail(e: &str) -> ! {
    println!("err {e}");
    std::process::exit(1);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one direction does to the packets it carries.
#[derive(Clone, Copy)]
struct Shape {
    delay: Duration,
    /// The probability a packet is lost, 0 to 1.
    loss: f64,
    /// Bit/s; 0: unlimited.
    rate: u64,
    /// Bytes the bottleneck holds (with a rate).
    queue: u64,
}

impl Shape {
    const NONE: Self = Self { delay: Duration::ZERO, loss: 0.0, rate: 0, queue: DEFAULT_QUEUE };

    /// Applies `key=value,…`.
    fn apply(&mut self, spec: &str) -> Result<(), String> {
        for kv in spec.split(',').filter(|s| !s.is_empty()) {
            let bad = || format!("bad shape {kv:?} in {spec:?}: want delay=MS, loss=PERCENT, rate=BIT/S, queue=BYTES");
            let (key, value) = kv.split_once('=').ok_or_else(bad)?;
            match key {
                "delay" => {
                    let ms: f64 = value.parse().map_err(|_| bad())?;
                    self.delay = Duration::try_from_secs_f64(ms / 1000.0).map_err(|_| bad())?;
                }
                "loss" => {
                    let pct: f64 = value.parse().map_err(|_| bad())?;
                    if !(0.0..=100.0).contains(&pct) {
                        return Err(bad());
                    }
                    self.loss = pct / 100.0;
                }
                "rate" => self.rate = value.parse().map_err(|_| bad())?,
                "queue" => self.queue = value.parse().map_err(|_| bad())?,
                _ => return Err(bad()),
            }
        }
        Ok(())
    }
}

struct Config {
    server: String,
    client: String,
    /// Server -> client.
    down: Shape,
    /// Client -> server.
    up: Shape,
    /// (length, period) of the periodic outages.
    outage: Option<(Duration, Duration)>,
    seed: u64,
}

impl Config {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let usage = "usage: path-emu [--both|--down|--up SHAPE] [--outage LEN/EVERY] [--seed N] SERVER_NS CLIENT_NS";
        let (mut down, mut up, mut outage, mut seed) = (Shape::NONE, Shape::NONE, None, 1);
        let mut names = Vec::new();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value; {usage}"));
            match arg.as_str() {
                "--both" => {
                    let v = value()?;
                    down.apply(&v)?;
                    up.apply(&v)?;
                }
                "--down" => down.apply(&value()?)?,
                "--up" => up.apply(&value()?)?,
                "--outage" => {
                    let v = value()?;
                    let bad = || format!("bad outage {v:?}: want LEN_MS/EVERY_MS, LEN < EVERY");
                    let (len, every) = v.split_once('/').ok_or_else(bad)?;
                    let (len, every): (u64, u64) = (len.parse().map_err(|_| bad())?, every.parse().map_err(|_| bad())?);
                    if len >= every {
                        return Err(bad());
                    }
                    outage = Some((Duration::from_millis(len), Duration::from_millis(every)));
                }
                "--seed" => seed = value()?.parse().map_err(|_| format!("bad seed; {usage}"))?,
                a if a.starts_with('-') => return Err(format!("unknown option {a}; {usage}")),
                _ => names.push(arg),
            }
        }
        let [server, client] = <[String; 2]>::try_from(names).map_err(|_| usage.to_owned())?;
        Ok(Self { server: ns_path(&server), client: ns_path(&client), down, up, outage, seed })
    }
}

fn ns_path(name: &str) -> String {
    if name.contains('/') { name.to_owned() } else { format!("/run/netns/{name}") }
}

/// Opens both namespaces, refusing the machine's own, and makes and configures a tun in each:
/// `(server tun, client tun, X)`.
fn setup(config: &Config) -> Result<(File, File, u8), String> {
    let open = |path: &str| File::open(path).map_err(|e| format!("{path}: {e}"));
    let (server, client) = (open(&config.server)?, open(&config.client)?);
    let id = |f: &File, what: &str| f.metadata().map(|m| (m.dev(), m.ino())).map_err(|e| format!("{what}: {e}"));
    let (s, c) = (id(&server, &config.server)?, id(&client, &config.client)?);
    if s == c {
        return Err("the server and the client are in the same namespace: a path needs two".to_owned());
    }
    // Our own namespace is where the driver runs; pid 1's is the machine's (when we may see it:
    // not from inside a container).
    for own in ["/proc/self/ns/net", "/proc/1/ns/net"] {
        let Ok(file) = File::open(own) else { continue };
        if [s, c].contains(&id(&file, own)?) {
            return Err(format!("{own} is the machine's own namespace: refusing to add devices to it"));
        }
    }
    for x in 0..=u8::MAX {
        let Some(server_tun) = in_namespace(&server, || open_tun(&format!("pemu{x}s")))? else { continue };
        let Some(client_tun) = in_namespace(&client, || open_tun(&format!("pemu{x}c")))? else { continue };
        in_namespace(&server, || configure(&format!("pemu{x}s"), &format!("10.88.{x}.1"), &format!("10.88.{x}.2")))?;
        in_namespace(&client, || configure(&format!("pemu{x}c"), &format!("10.88.{x}.2"), &format!("10.88.{x}.1")))?;
        return Ok((server_tun, client_tun, x));
    }
    Err("every pemuXs/pemuXc name from 0 to 255 is taken".to_owned())
}

/// Runs `f` on a thread that joined the namespace `ns`: a tun opened there, and a command it
/// starts, belong to that namespace.
fn in_namespace<T: Send>(ns: &File, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns changes the namespace of this thread only, which ends with `f`.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err("a set-up thread panicked".to_owned()))
    })
}

/// `struct ifreq` as TUNSETIFF uses it: the name, then the flags (the union's first member).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// A layer 3 tun named `name` (IP packets as they are, no packet info header) in this thread's
/// namespace; `None` if the name is taken there.
fn open_tun(name: &str) -> Result<Option<File>, String> {
    let tun = File::options().read(true).write(true).open("/dev/net/tun").map_err(|e| format!("/dev/net/tun: {e}"))?;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: (libc::IFF_TUN | libc::IFF_NO_PI) as i16, _rest: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `req` has the size and layout of.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &raw mut req) } != 0 {
        let e = std::io::Error::last_os_error();
        // EBUSY: another process's tun; EINVAL: a device of another kind.
        return match e.raw_os_error() {
            Some(libc::EBUSY | libc::EINVAL) => Ok(None),
            _ => Err(format!("TUNSETIFF {name}: {e}")),
        };
    }
    Ok(Some(tun))
}

/// Gives `dev` the address `local` with a route to `peer` through it, and brings it up.
fn configure(dev: &str, local: &str, peer: &str) -> Result<(), String> {
    ip(&["addr", "add", local, "peer", peer, "dev", dev])?;
    ip(&["link", "set", dev, "txqueuelen", "1000", "up"])
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// When the path is down: the last `length` of every period from the start, and until the time
/// an `outage` command set.
struct Outages {
    start: Instant,
    /// (length, period).
    periodic: Option<(Duration, Duration)>,
    until: Mutex<Instant>,
}

impl Outages {
    fn down_at(&self, t: Instant) -> bool {
        let periodic = self.periodic.is_some_and(|(length, every)| {
            let into = t.saturating_duration_since(self.start).as_nanos() % every.as_nanos();
            into >= (every - length).as_nanos()
        });
        periodic || t < *lock(&self.until)
    }
}

/// What a direction counted; `Display` is the `stats` reply's half.
#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    queue_dropped: AtomicU64,
    outage_dropped: AtomicU64,
    max_backlog: AtomicU64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        write!(
            f,
            "sent={} bytes={} lost={} queue_dropped={} outage_dropped={} max_backlog={}",
            get(&self.sent),
            get(&self.bytes),
            get(&self.lost),
            get(&self.queue_dropped),
            get(&self.outage_dropped),
            get(&self.max_backlog)
        )
    }
}

struct Packet {
    data: Vec<u8>,
    release: Instant,
}

/// The bottleneck: when it finishes serializing what it accepted, and the loss draws.
struct Link {
    busy_until: Instant,
    rng: u64,
}

/// One direction: its shape, its bottleneck, and the FIFO of packets waiting for release.
struct Direction {
    shape: Shape,
    link: Mutex<Link>,
    fifo: Mutex<VecDeque<Packet>>,
    queued: Condvar,
    stats: Stats,
}

impl Direction {
    fn new(shape: Shape, seed: u64) -> Self {
        Self {
            shape,
            link: Mutex::new(Link { busy_until: Instant::now(), rng: seed }),
            fifo: Mutex::new(VecDeque::new()),
            queued: Condvar::new(),
            stats: Stats::default(),
        }
    }

    /// When a packet of `len` bytes arriving at `now` is delivered, or `None` if it is dropped.
    fn admit(&self, len: usize, now: Instant) -> Option<Instant> {
        let shape = self.shape;
        let mut link = lock(&self.link);
        if shape.loss > 0.0 && uniform(&mut link.rng) < shape.loss {
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if shape.rate == 0 {
            return Some(now + shape.delay);
        }
        // What the link has yet to serialize, in bytes: the time it stays busy, at the rate.
        let busy = link.busy_until.saturating_duration_since(now);
        let backlog = (busy.as_secs_f64() * shape.rate as f64 / 8.0) as u64;
        let after = backlog + len as u64;
        if after > shape.queue {
            self.stats.queue_dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.stats.max_backlog.fetch_max(after, Ordering::Relaxed);
        let serialize = Duration::from_secs_f64(len as f64 * 8.0 / shape.rate as f64);
        link.busy_until = link.busy_until.max(now) + serialize;
        Some(link.busy_until + shape.delay)
    }
}

/// A uniform draw in [0, 1) (splitmix64): the same seed, the same draws.
fn uniform(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Reads what the kernel sends into the tun `from` and queues it in `dir` at its release time.
fn arrive(dir: &Direction, outages: &Outages, mut from: File) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => fail(&format!("reading a tun: {e}")),
        };
        let now = Instant::now();
        if n == 0 || buf[0] >> 4 != 4 {
            continue;
        }
        if outages.down_at(now) {
            dir.stats.outage_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Some(release) = dir.admit(n, now) {
            lock(&dir.fifo).push_back(Packet { data: buf[..n].to_vec(), release });
            dir.queued.notify_one();
        }
    }
}

/// Writes the packets of `dir` into the tun `to` at their release times, in order.
fn deliver(dir: &Direction, outages: &Outages, mut to: File) {
    loop {
        let packet = {
            let mut fifo = lock(&dir.fifo);
            loop {
                let now = Instant::now();
                match fifo.front() {
                    None => fifo = dir.queued.wait(fifo).unwrap_or_else(PoisonError::into_inner),
                    Some(p) if p.release <= now => break fifo.pop_front(),
                    Some(p) => {
                        let wait = p.release - now;
                        fifo = dir.queued.wait_timeout(fifo, wait).unwrap_or_else(PoisonError::into_inner).0;
                    }
                }
            }
        };
        let Some(packet) = packet else { continue };
        if outages.down_at(Instant::now()) {
            dir.stats.outage_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // A packet the kernel refuses (a device going away at exit) is one lost.
        if to.write(&packet.data).is_ok() {
            dir.stats.sent.fetch_add(1, Ordering::Relaxed);
            dir.stats.bytes.fetch_add(packet.data.len() as u64, Ordering::Relaxed);
        }
    }
}
