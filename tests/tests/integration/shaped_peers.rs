//! Judgement against peers only a scripted TCP stack can be: ACKs shaped to arrive in bursts
//! just under --stall, and windows so small that the kernel charges many times the queue. The
//! peer is `tun-peer` (a user-space TCP endpoint on a tun device in the test namespace); the
//! server is a real kernel socket in the test cgroup; the agent is the real agent.

use std::time::{Duration, Instant};

use enforcer_tests::{Agent, TunConn, TunSetup, agent_scrape, charged, field, sample, sockstat_tcp_mem, wait_for};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// The default `--drain-window` and `--stall`.
const DRAIN_WINDOW_MS: u64 = 5000;
const STALL_MS: u64 = 3000;

/// How long a test waits for the agent to act: generous, for a slow machine. How soon it acts is
/// measured by the benchmarks (`cargo xtask bench`), not asserted here.
const ACT_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn an_ack_shaping_peer_is_destroyed_after_one_drain_window() {
    let mut s = TunSetup::new();
    let agent = s.agent(&["--threshold", "4MiB"]);
    // 7 MiB queued; the peer acknowledges 40 KiB every 0.9 s: never stalled for --stall (3 s),
    // drains in ~160 s.
    let c = s.connect("10.77.0.4", MIB as u32, Some(7));
    s.tun.cmd(&format!("ack {} none", c.tun));
    assert_eq!(s.write(&c, 16 * MIB, 7 * MIB), 7 * MIB);
    let start = Instant::now();
    s.tun.cmd(&format!("ack {} burst {} 900", c.tun, 40 * KIB));
    let e = wait_for("the ACK shaper to be destroyed", ACT_LIMIT, || agent.events_of("destroyed").into_iter().next());
    eprintln!("destroyed {:?} after the bursts began: {e}", start.elapsed());
    assert_eq!(e["remote"], c.remote.as_str(), "{e}");
    assert_eq!(e["reason"], "slow_drain", "{e}");
    assert!(field(&e, "drain_estimate_ms") > 100_000, "{e}");
    // Judged by its rate over a whole drain window, while it kept acknowledging: over its share
    // for at least the window, never stalled for --stall.
    assert!(field(&e, "offending_ms") >= DRAIN_WINDOW_MS, "destroyed before one drain window: {e}");
    assert!(field(&e, "stalled_ms") < STALL_MS, "{e}");
    assert!(s.tun.stats(c.tun).acked >= 3 * 40 * KIB, "the peer did acknowledge in bursts");
    wait_for("the peer to see the reset", Duration::from_secs(5), || {
        (s.tun.stats(c.tun).state == "reset").then_some(())
    });
}

/// Waits until the tracked sockets are charged no more than `threshold` (the agent destroyed
/// enough of them).
fn back_at_threshold(agent: &Agent, threshold: u64) {
    let start = Instant::now();
    wait_for("charged memory back at the threshold", ACT_LIMIT, || (charged(agent, "") <= threshold).then_some(()));
    eprintln!("back at the threshold {:?} after the queues were written", start.elapsed());
}

/// A connection whose peer advertised 128 bytes, took 4 KiB in 128-byte segments, then closed
/// its window; `bytes` queued behind it.
fn tiny_then_zero(s: &mut TunSetup, src: &str, bytes: u64) -> TunConn {
    let c = s.connect(src, 128, None);
    assert_eq!(s.write(&c, 16 * MIB, 4096), 4096);
    wait_for("4 KiB in tiny segments", Duration::from_secs(10), || (s.outq(&c) == 0).then_some(()));
    s.tun.cmd(&format!("window {} 0", c.tun));
    assert_eq!(s.write(&c, 16 * MIB, bytes), bytes);
    c
}

#[test]
fn tiny_window_peers_are_judged_by_the_memory_they_cost() {
    // Six peers that closed a 128-byte window: 512 KiB queued each, under a share of 8 MiB / 6
    // by SEND-Q, yet each is charged megabytes. The old rule, counting SEND-Q, saw 3 MiB.
    let mut s = TunSetup::new();
    let threshold = 8 * MIB;
    let agent = s.agent(&["--threshold", "8MiB", "--stall", "1s"]);
    let conns: Vec<TunConn> =
        (0..6).map(|i| tiny_then_zero(&mut s, &format!("10.77.0.{}", 10 + i), 512 * KIB)).collect();
    let sockets = agent.sockets();
    let queued: u64 = sockets.iter().map(|x| field(x, "send_queue")).sum();
    let held: u64 = sockets.iter().map(|x| field(x, "charged")).sum();
    eprintln!("queued {queued}, charged {held}");
    assert!(queued < threshold && held > 2 * threshold, "queued {queued}, charged {held}");
    back_at_threshold(&agent, threshold);
    let destroyed = agent.events_of("destroyed");
    assert!(!destroyed.is_empty() && destroyed.iter().all(|e| e["reason"] == "stalled"), "{destroyed:?}");
    for e in &destroyed {
        assert!(field(e, "stalled_ms") >= 1000, "destroyed before --stall: {e}");
        assert!(field(e, "send_queue") <= field(e, "fair_share"), "judged by SEND-Q after all: {e}");
        assert!(field(e, "charged") > field(e, "fair_share"), "{e}");
        assert!(conns.iter().any(|c| e["remote"] == c.remote.as_str()));
    }
}

#[test]
fn one_byte_window_peers_are_destroyed_as_slow() {
    // Three peers advertising a 1-byte window without scaling: the server sends a byte per
    // probe and the peer acknowledges it, so they are never stalled; 256 KiB queued each is
    // charged ~18x. A byte per probe in every interval is a trickle: slow after 1.5 s, before
    // a drain window (3 s here) has passed.
    let mut s = TunSetup::new();
    let threshold = 8 * MIB;
    let agent = s.agent(&["--threshold", "8MiB", "--drain-window", "3s"]);
    for i in 0..3 {
        let c = s.connect(&format!("10.77.0.{}", 20 + i), 1, None);
        assert_eq!(s.write(&c, 16 * MIB, 256 * KIB), 256 * KIB);
    }
    let held = charged(&agent, "");
    eprintln!("charged {held}");
    assert!(held > threshold, "{held}");
    back_at_threshold(&agent, threshold);
    let destroyed = agent.events_of("destroyed");
    assert!(!destroyed.is_empty() && destroyed.iter().all(|e| e["reason"] == "slow_drain"), "{destroyed:?}");
    // Watched for 1.5 s at least (less half an interval of tick slack); as a trickle, before the
    // window (a probe backed off past an interval restarts a trickle, and the window judges it
    // then).
    let watched: Vec<u64> = destroyed.iter().map(|e| field(e, "offending_ms")).collect();
    eprintln!("watched for {watched:?} ms");
    assert!(watched.iter().all(|&ms| ms >= 1375) && watched.iter().any(|&ms| ms < 3000), "{destroyed:?}");
}

/// A peer on a slow path: after a twelve-second idle spell, its first ACK of a new response
/// comes 300 ms late (and the kernel's retransmission timer, backed off meanwhile, adds to it). While it was idle the agent skipped its walks (pressure quiet by the
/// kernel's own figures), so no scan saw its queue empty lately; the backlog must still be
/// dated from the first scan that saw it, not from the last ACK twelve seconds earlier. The
/// zero-window peer that pushes pressure over the threshold at the same moment is destroyed.
#[test]
fn a_slow_path_peer_after_an_idle_spell_is_not_taken_as_stalled() {
    // The kernel's TCP memory is the machine's, and `--pressure kernel` reads it: it must be low
    // enough that 16 MiB keeps the idle spell quiet (under half) and the slow peer's 12 MiB over
    // its share (a half). Earlier tests' sockets may still be going away.
    let baseline = wait_for("the kernel's TCP memory to settle under 4 MiB", Duration::from_secs(60), || {
        let mem = sockstat_tcp_mem();
        (mem <= 4 * MIB).then_some(mem)
    });
    eprintln!("TCP memory before the test: {baseline} bytes");
    let threshold = 16 * MIB;
    let mut s = TunSetup::new();
    let addr = "127.0.0.1:9468";
    let agent = s.agent(&[
        "--pressure",
        "kernel",
        "--policy",
        "heffner",
        "--threshold",
        &threshold.to_string(),
        "--stall",
        "1s",
        "--metrics-addr",
        addr,
    ]);
    let slow = s.connect("10.77.0.4", MIB as u32, Some(7));
    assert_eq!(s.write(&slow, 16 * MIB, 1000), 1000);
    wait_for("the first response acknowledged", Duration::from_secs(5), || (s.outq(&slow) == 0).then_some(()));
    let attacker = s.connect("10.77.0.5", MIB as u32, Some(7));
    s.tun.cmd(&format!("window {} 0", attacker.tun));
    // The idle spell (the scenario: twelve seconds without a byte), over which the agent skips
    // its walks; its own count says it did.
    std::thread::sleep(Duration::from_secs(12));
    wait_for("the agent to have skipped walks through the idle spell", Duration::from_secs(30), || {
        let skipped = sample(&agent_scrape(&s.ns, addr), "enforcer_scans_total{kind=\"skipped\"}").unwrap_or(0.0);
        (skipped > 10.0).then_some(())
    });

    // At once: a 12 MiB response to the slow peer, over its share (threshold / 2 connections),
    // acknowledged only after 300 ms; the attacker's queue takes pressure over the threshold.
    s.tun.cmd(&format!("ack {} none", slow.tun));
    assert_eq!(s.write(&slow, 32 * MIB, 12 * MIB), 12 * MIB);
    assert_eq!(s.write(&attacker, 2 * threshold, threshold), threshold);
    std::thread::sleep(Duration::from_millis(300));
    s.tun.cmd(&format!("ack {} all", slow.tun));

    let e = wait_for("the attacker to be destroyed", ACT_LIMIT, || agent.events_of("destroyed").into_iter().next());
    assert_eq!(e["remote"], attacker.remote.as_str(), "{e}");
    let destroyed = || agent.events_of("destroyed").iter().map(|e| e.to_string()).collect::<Vec<_>>();
    wait_for("the slow peer to take its response", Duration::from_secs(20), || {
        let d = destroyed();
        assert_eq!(d.len(), 1, "the slow peer was destroyed too: {d:?}");
        (s.outq(&slow) == 0).then_some(())
    });
    assert_ne!(s.tun.stats(slow.tun).state, "reset");
}
