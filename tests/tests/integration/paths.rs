//! The path emulator (`path-emu`, driven by `EmulatedPath`) against real kernel TCP: delay, rate,
//! loss and outages do what the spec says, so that tests of enforcer on slow paths stand on an
//! emulator that is not a no-op. No agent. The bands are generous (a noisy 2-vCPU VM, and QEMU
//! in the VM legs): they tell a shaped path from an unshaped one, not one millisecond from the
//! next.

use std::{
    io::Read,
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{EmulatedPath, Netns, PathSpec, Peer, Shape, ss};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// How far a measured delay or rate may be from the configured one.
const BAND: f64 = 0.3;
/// How long a connect or a transfer may take before the test fails instead of hanging.
const IO_LIMIT: Duration = Duration::from_secs(30);

/// Whether `measured` is within `BAND` of `want`.
fn near(measured: f64, want: f64) -> bool {
    (measured - want).abs() <= want * BAND
}

/// A server namespace and a client namespace joined by a path, and a `tcp-peer` in the server's
/// listening on the path at port 9000. Fields drop in order: processes, then namespaces.
struct Bench {
    server: Peer,
    path: EmulatedPath,
    client_ns: Netns,
    server_ns: Netns,
    accepted: usize,
}

impl Bench {
    fn new(spec: &PathSpec) -> Self {
        let (server_ns, client_ns) = (Netns::new(), Netns::new());
        let path = EmulatedPath::start(&server_ns, &client_ns, spec);
        let mut server = Peer::start(&server_ns, None);
        server.cmd(&format!("listen {}:9000", path.server_addr()));
        Self { server, path, client_ns, server_ns, accepted: 0 }
    }

    fn listen(&self) -> SocketAddr {
        format!("{}:9000", self.path.server_addr()).parse().unwrap()
    }

    /// How long a connect from the client namespace takes (SYN to SYN-ACK: one round trip).
    fn connect_time(&mut self) -> Duration {
        let to = self.listen();
        let took = self
            .client_ns
            .spawn(move || {
                let start = Instant::now();
                let c = TcpStream::connect_timeout(&to, IO_LIMIT).unwrap_or_else(|e| panic!("connect {to}: {e}"));
                (start.elapsed(), c)
            })
            .join()
            .unwrap()
            .0;
        self.accepted += 1;
        self.server.cmd(&format!("wait-accepted {}", self.accepted));
        took
    }

    /// A download of `bytes` from the server: the client connects, the server queues it all at
    /// once, the client reads it.
    fn download(&mut self, bytes: u64) -> Download {
        let (to, received) = (self.listen(), Arc::new(AtomicU64::new(0)));
        let counter = received.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let done = self.client_ns.spawn(move || {
            let mut c = TcpStream::connect_timeout(&to, IO_LIMIT).unwrap_or_else(|e| panic!("connect {to}: {e}"));
            c.set_read_timeout(Some(IO_LIMIT)).unwrap();
            tx.send(c.local_addr().unwrap()).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            while counter.load(Ordering::Relaxed) < bytes {
                let n = c.read(&mut buf).unwrap_or_else(|e| panic!("reading the download: {e}"));
                assert!(n > 0, "the server closed after {} of {bytes} bytes", counter.load(Ordering::Relaxed));
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
            c
        });
        let local = rx.recv_timeout(IO_LIMIT).expect("the client connected");
        let id = self.accepted;
        self.accepted += 1;
        self.server.cmd(&format!("wait-accepted {}", self.accepted));
        self.server.cmd(&format!("sndbuf {id} {}", 4 * bytes));
        let written = self.server.num(&format!("write {id} {bytes}"));
        assert_eq!(written, bytes, "the server queued only part of the download");
        Download { received, done: Some(done), local: local.to_string(), bytes }
    }
}

struct Download {
    received: Arc<AtomicU64>,
    /// The client's thread; it returns the connection, kept open, once it read everything.
    done: Option<thread::JoinHandle<TcpStream>>,
    /// The client's address: the server socket's remote.
    local: String,
    bytes: u64,
}

impl Download {
    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until the client has at least `bytes`; returns when it had them.
    fn wait_for(&self, bytes: u64) -> Instant {
        let start = Instant::now();
        while self.received() < bytes {
            assert!(start.elapsed() < IO_LIMIT, "after {IO_LIMIT:?}, {} of {bytes} bytes arrived", self.received());
            thread::sleep(Duration::from_millis(1));
        }
        Instant::now()
    }

    /// Waits for the whole download; the connection stays open.
    fn finish(&mut self) -> TcpStream {
        self.wait_for(self.bytes);
        self.done.take().expect("finished once").join().expect("the client's thread panicked")
    }
}

/// The median of `n` connect times.
fn median_connect(bench: &mut Bench, n: usize) -> Duration {
    let mut all: Vec<Duration> = (0..n).map(|_| bench.connect_time()).collect();
    all.sort();
    eprintln!("connect times: {all:?}");
    all[n / 2]
}

#[test]
fn a_connect_takes_both_one_way_delays() {
    // Asymmetric: 70 ms down, 30 ms up; a round trip is 100 ms.
    let spec = PathSpec {
        down: Shape { delay: Duration::from_millis(70), ..Shape::NONE },
        up: Shape { delay: Duration::from_millis(30), ..Shape::NONE },
        ..PathSpec::new()
    };
    let mut bench = Bench::new(&spec);
    let rtt = median_connect(&mut bench, 5);
    assert!(near(rtt.as_secs_f64() * 1000.0, 100.0), "a connect took {rtt:?}, want 100 ms");

    // The kernel's own estimate agrees, on a connection that carried data.
    let mut d = bench.download(64 * KIB);
    let _conn = d.finish();
    let s = ss::established(&bench.server_ns, &["dst", &d.local]);
    let srtt = s.first().and_then(ss::SsSocket::rtt_ms).unwrap_or_else(|| panic!("no rtt in {s:?}"));
    eprintln!("server's srtt {srtt} ms");
    assert!(near(srtt, 100.0), "the server's srtt is {srtt} ms, want 100");
}

#[test]
fn issue_22_paths_run_side_by_side_each_with_its_round_trip() {
    // One server namespace, four clients on four paths at once, as the enforcer tests need.
    let server_ns = Netns::new();
    let presets = [
        (PathSpec::wan_40ms_20mbit(), 40.0),
        (PathSpec::lossy_150ms(), 150.0),
        (PathSpec::satellite_600ms(), 600.0),
        (PathSpec::outages_80ms(), 80.0),
    ];
    let clients: Vec<Netns> = presets.iter().map(|_| Netns::new()).collect();
    let paths: Vec<EmulatedPath> =
        presets.iter().zip(&clients).map(|((spec, _), ns)| EmulatedPath::start(&server_ns, ns, spec)).collect();
    let mut addrs: Vec<&str> = paths.iter().map(EmulatedPath::server_addr).collect();
    addrs.sort_unstable();
    addrs.dedup();
    assert_eq!(addrs.len(), paths.len(), "paths sharing a namespace share an address: {addrs:?}");

    let mut server = Peer::start(&server_ns, None);
    for p in &paths {
        server.cmd(&format!("listen {}:9000", p.server_addr()));
    }
    // Loss may take a SYN: the median of three. The outage preset is up for its first 8.5 s.
    let measured: Vec<f64> = paths
        .iter()
        .zip(&clients)
        .map(|(p, ns)| {
            let to: SocketAddr = format!("{}:9000", p.server_addr()).parse().unwrap();
            let mut all: Vec<f64> = (0..3)
                .map(|_| {
                    ns.spawn(move || {
                        let start = Instant::now();
                        let c = TcpStream::connect_timeout(&to, IO_LIMIT).unwrap_or_else(|e| panic!("{to}: {e}"));
                        drop(c);
                        start.elapsed().as_secs_f64() * 1000.0
                    })
                    .join()
                    .unwrap()
                })
                .collect();
            all.sort_by(f64::total_cmp);
            all[1]
        })
        .collect();
    for ((_, want), got) in presets.iter().zip(&measured) {
        eprintln!("round trip {got:.1} ms, want {want} ms");
    }
    for ((spec, want), got) in presets.iter().zip(&measured) {
        assert!(near(*got, *want), "{spec:?}: a connect took {got:.1} ms, want {want} ms");
    }
}

#[test]
fn a_download_runs_at_the_rate() {
    let rate = 10_000_000u64;
    let mut bench = Bench::new(&PathSpec::new().rtt(Duration::from_millis(20)).rate(rate));
    let mut d = bench.download(3 * MIB);
    // Past slow start, over 2.25 MiB (about 2 s at 10 Mbit/s).
    let (from, to) = (512 * KIB, 11 * MIB / 4);
    let (t0, t1) = (d.wait_for(from), d.wait_for(to));
    let _conn = d.finish();
    let goodput = (to - from) as f64 * 8.0 / (t1 - t0).as_secs_f64();
    let stats = bench.path.stats();
    eprintln!("goodput {:.2} Mbit/s at {} Mbit/s; {stats:?}", goodput / 1e6, rate / 1_000_000);
    // TCP payload is 1448 of each 1500 bytes the rate counts.
    assert!(near(goodput, rate as f64 * 1448.0 / 1500.0), "goodput {goodput:.0} bit/s through a {rate} bit/s path");
    assert!(stats.down.max_backlog <= Shape::NONE.queue_bytes, "{stats:?}");
}

#[test]
fn a_full_bottleneck_drops_and_tcp_retransmits() {
    // A 16 KiB queue at 4 Mbit/s: slow start's second burst overflows it. Without loss draws,
    // every drop is the queue's.
    let queue = 16 * KIB;
    let spec = PathSpec::new().rtt(Duration::from_millis(100)).rate(4_000_000).queue(queue);
    let mut bench = Bench::new(&spec);
    let mut d = bench.download(256 * KIB);
    let _conn = d.finish();
    let stats = bench.path.stats();
    let retrans = ss::established(&bench.server_ns, &["dst", &d.local]).first().map(ss::SsSocket::retrans_total);
    eprintln!("{stats:?}; server retransmitted {retrans:?}");
    assert!(stats.down.queue_dropped > 0, "the queue never overflowed: {stats:?}");
    assert!(stats.down.max_backlog <= queue && stats.down.max_backlog > queue - 3 * KIB, "{stats:?}");
    assert!(retrans.unwrap_or(0) > 0, "no retransmissions after the queue dropped");
}

#[test]
fn loss_shows_as_retransmissions() {
    let percent = 2.0;
    let spec = PathSpec::new().rtt(Duration::from_millis(20)).rate(20_000_000).loss(percent);
    let mut bench = Bench::new(&spec);
    let mut d = bench.download(2 * MIB);
    let _conn = d.finish();
    let stats = bench.path.stats();
    let s = ss::established(&bench.server_ns, &["dst", &d.local]);
    let retrans = s.first().map(ss::SsSocket::retrans_total).unwrap_or_else(|| panic!("no socket in {s:?}"));
    let measured = stats.down.lost as f64 * 100.0 / stats.down.arrived() as f64;
    eprintln!(
        "lost {measured:.2} % of {} packets down (want {percent} %); retransmitted {retrans}",
        stats.down.arrived()
    );
    // About 1500 packets: a 2 % draw is 30 ± 6.
    assert!((1.0..3.5).contains(&measured), "{measured:.2} % lost, want {percent} %: {stats:?}");
    assert!(stats.up.lost > 0, "no ACK was lost: {stats:?}");
    // Each lost data segment is sent again (a lost ACK mostly is not missed).
    assert!(retrans >= stats.down.lost / 2, "{retrans} retransmissions for {} segments lost", stats.down.lost);
}

#[test]
fn an_outage_stalls_a_transfer_and_it_resumes() {
    // Down for the last second of every three: a download running from the start stalls at 2 s.
    let spec = PathSpec::new()
        .rtt(Duration::from_millis(40))
        .rate(10_000_000)
        .outages(Duration::from_secs(1), Duration::from_secs(3));
    let mut bench = Bench::new(&spec);
    let started = Instant::now();
    let mut d = bench.download(3 * MIB);
    // The longest time the client saw no progress, and when it began.
    let (mut last, mut seen) = (Instant::now(), d.received());
    let (mut longest, mut stalled_at) = (Duration::ZERO, Duration::ZERO);
    while d.received() < d.bytes {
        assert!(started.elapsed() < IO_LIMIT, "after {IO_LIMIT:?}, {} of {} bytes arrived", d.received(), d.bytes);
        thread::sleep(Duration::from_millis(5));
        let (now, got) = (Instant::now(), d.received());
        if got != seen {
            (last, seen) = (now, got);
        } else if now - last > longest {
            (longest, stalled_at) = (now - last, last - started);
        }
    }
    let _conn = d.finish();
    let stats = bench.path.stats();
    eprintln!("stalled {longest:?} from {stalled_at:?}, done after {:?}; {stats:?}", started.elapsed());
    // The outage is 1 s; TCP's retransmission timer, backing off, may add two more.
    assert!(longest >= Duration::from_millis(800) && longest < Duration::from_secs(4), "stalled {longest:?}");
    assert!(
        stalled_at > Duration::from_millis(1500) && stalled_at < Duration::from_millis(2500),
        "the stall began at {stalled_at:?}, the outage at 2 s"
    );
    assert!(stats.down.outage_dropped + stats.up.outage_dropped > 0, "{stats:?}");
}

#[test]
fn an_outage_on_demand_loses_a_syn_and_the_retry_gets_through() {
    let mut bench = Bench::new(&PathSpec::new().rtt(Duration::from_millis(40)));
    let before = bench.connect_time();
    // The SYN is lost; the kernel sends it again after 1 s, when the path is back.
    bench.path.outage(Duration::from_millis(700));
    let took = bench.connect_time();
    let stats = bench.path.stats();
    eprintln!("a connect took {before:?}, into a 700 ms outage {took:?}; {stats:?}");
    assert!(before < Duration::from_millis(500), "took {before:?} before the outage");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "took {took:?}");
    // The SYN, and whatever the first connection's close sent then.
    assert!(stats.up.outage_dropped >= 1, "no SYN lost: {stats:?}");
}
