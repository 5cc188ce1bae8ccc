//! The scripted TCP peer (`tun-peer`) against a real kernel server: ACK numbers and windows
//! shaped from user space, and what the server's send queue does about them. No agent: these
//! tests pin down the kernel behaviour the enforcement tests build on. Run as root, one at a time.

use std::{
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{ECONNRESET, TUN_KERNEL_ADDR, TunConn as Conn, TunSetup as Setup, ss::SsSocket, wait_for};

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
/// The server's send window (`snd_wnd:` of `ss -i`, which ss leaves out when it is 0).
fn snd_wnd(ss: &SsSocket) -> u64 {
    ss.info("snd_wnd").unwrap_or(0)
}

#[test]
fn handshake_and_ack_all_drain_the_queue() {
    let mut s = Setup::new();
    let c = s.connect("10.77.0.2", MIB as u32, Some(7));
    let ss = s.ss_established(&c);
    // The server saw our options: scale 7 (its send side), our MSS.
    assert!(ss.says("wscale:7,") && ss.says("mss:1460"), "{ss}");
    assert_eq!(s.write(&c, 4 * MIB, MIB), MIB);
    wait_for("the queue to drain", Duration::from_secs(20), || (s.outq(&c) == 0).then_some(()));
    let st = s.tun.stats(c.tun);
    println!("1 MiB drained: {st:?}");
    assert_eq!((st.acked, st.received, st.state.as_str()), (MIB, MIB, "established"));
    assert!(st.segments >= MIB / 1460, "{st:?}");

    // A request the other way lands in the server's receive queue (ss's first column).
    assert_eq!(s.tun.cmd(&format!("send {} 1000", c.tun)), "1000");
    wait_for("the request at the server", Duration::from_secs(5), || {
        (s.ss_established(&c).recv_q() == 1000).then_some(())
    });
    // Bad commands are answered, and the peer keeps to its subnet.
    assert!(s.tun.try_cmd("stats 99").is_err());
    assert!(s.tun.try_cmd(&format!("connect 192.0.2.1 {TUN_KERNEL_ADDR}:9000 1000 none")).is_err());
    assert!(s.tun.try_cmd(&format!("connect {TUN_KERNEL_ADDR} {TUN_KERNEL_ADDR}:9000 1000 none")).is_err());
    // An RST resets the server's socket.
    s.tun.cmd(&format!("rst {}", c.tun));
    wait_for("the reset", Duration::from_secs(5), || {
        (s.server.num(&format!("soerror {}", c.server)) == ECONNRESET).then_some(())
    });
    assert!(s.ss(&c).is_none());
}

#[test]
fn zero_window_holds_the_queue_and_probes_are_answered() {
    let mut s = Setup::new();
    let c = s.connect("10.77.0.3", 65535, None);
    s.tun.cmd(&format!("window {} 0", c.tun));
    // Write only once the server has the zero window, or it would send the first 64 KiB.
    wait_for("the server to see a zero window", Duration::from_secs(5), || {
        (snd_wnd(&s.ss_established(&c)) == 0).then_some(())
    });
    assert_eq!(s.write(&c, 4 * MIB, MIB), MIB);
    let written = Instant::now();
    // Zero-window probes go out every RTO (200 ms, backing off) and are answered: the
    // connection stays, nothing moves.
    while written.elapsed() < Duration::from_secs(2) {
        assert_eq!(s.outq(&c), MIB);
        assert!(s.ss(&c).is_some(), "the connection is no longer established");
        assert_eq!(s.server.num(&format!("soerror {}", c.server)), 0);
        thread::sleep(Duration::from_millis(200));
    }
    let ss = s.ss_established(&c);
    let st = s.tun.stats(c.tun);
    println!("zero window after 2 s: {st:?}, charged {} for outq {MIB}\n{ss}", ss.skmem("w"));
    assert_eq!((st.acked, st.received, st.state.as_str()), (0, 0, "established"));
    // The server probed (backoff) and heard back since the write: our answers to its probes.
    let (backoff, lastack) = (ss.info("backoff"), ss.info("lastack"));
    let since_write = written.elapsed().as_millis() as u64;
    assert!(backoff.is_some_and(|b| b >= 1), "no zero-window probes: {ss}");
    assert!(lastack.is_some_and(|l| l + 100 < since_write), "no ACK since the write {since_write} ms ago: {ss}");
}

#[test]
fn ack_bursts_drain_the_queue_at_the_scripted_rate() {
    const BURST: u64 = 40 * KIB;
    const EVERY: Duration = Duration::from_millis(900);
    let mut s = Setup::new();
    // A large initial congestion window on the tun's route: the server fills the peer's window
    // at once, so every burst finds a full burst of data to acknowledge.
    let route = ["route", "replace", "10.77.0.0/24", "dev", &s.tun.dev, "proto", "kernel", "scope", "link"];
    let out = s.ns.command("ip").args(route).args(["src", TUN_KERNEL_ADDR, "initcwnd", "1000"]).output().unwrap();
    assert!(out.status.success(), "ip route: {}", String::from_utf8_lossy(&out.stderr));

    let c = s.connect("10.77.0.4", MIB as u32, Some(7));
    s.tun.cmd(&format!("ack {} none", c.tun));
    assert_eq!(s.write(&c, 16 * MIB, 7 * MIB), 7 * MIB);
    wait_for("the server to fill the window", Duration::from_secs(10), || {
        (s.tun.stats(c.tun).received >= MIB / 2).then_some(())
    });
    assert_eq!(s.outq(&c), 7 * MIB, "nothing is acknowledged yet");

    let start = Instant::now();
    s.tun.cmd(&format!("ack {} burst {BURST} {}", c.tun, EVERY.as_millis()));
    wait_for("three bursts", Duration::from_secs(20), || (s.tun.stats(c.tun).acked >= 3 * BURST).then_some(()));
    // The peer's count and the server's queue, read within one burst period.
    let (acked, outq) = loop {
        let (before, outq, after) = (s.tun.stats(c.tun).acked, s.outq(&c), s.tun.stats(c.tun).acked);
        if before == after {
            break (after, outq);
        }
    };
    let elapsed = start.elapsed();
    let st = s.tun.stats(c.tun);
    println!("after {elapsed:?}: outq dropped {} = acked {acked}; peer {st:?}", 7 * MIB - outq);
    assert_eq!(7 * MIB - outq, acked, "the server's queue moves exactly with our ACKs");
    // Bursts only: at most one per period since the command, each at most BURST.
    let periods = (elapsed.as_millis() / EVERY.as_millis()) as u64;
    assert!(acked <= periods * BURST, "acked {acked} in {elapsed:?}: more than {periods} bursts");
    assert_eq!(acked % BURST, 0, "each burst acknowledges a whole burst: the server sent ahead");
    assert!(st.received - acked >= MIB / 2, "the server still holds data we received: {st:?}");
}

#[test]
fn tiny_windows_cut_the_queue_into_small_expensive_skbs() {
    let mut s = Setup::new();

    // A 128-byte window: data flows in 128-byte segments while we ACK, then the window closes.
    let c = s.connect("10.77.0.5", 128, None);
    assert_eq!(s.write(&c, 16 * MIB, 4096), 4096);
    wait_for("4 KiB in tiny segments", Duration::from_secs(10), || (s.outq(&c) == 0).then_some(()));
    assert!(s.tun.stats(c.tun).segments >= 4096 / 128);
    s.tun.cmd(&format!("window {} 0", c.tun));
    wait_for("the zero window", Duration::from_secs(5), || (snd_wnd(&s.ss_established(&c)) == 0).then_some(()));
    let written = s.write(&c, 16 * MIB, 2 * MIB);
    let ratio128 = charged_ratio(&mut s, &c, written, "128-byte window");

    // A 1-byte window, left open: the server probes it a byte at a time.
    let c = s.connect("10.77.0.6", 1, None);
    let written = s.write(&c, 16 * MIB, 2 * MIB);
    let ratio1 = charged_ratio(&mut s, &c, written, "1-byte window");

    assert!(ratio128 >= 3.0, "128-byte window: charged only {ratio128:.1}x the queue");
    assert!(ratio1 >= 3.0, "1-byte window: charged only {ratio1:.1}x the queue");
}

/// The memory charged to the server's socket (skmem `w`) over its unacknowledged bytes.
fn charged_ratio(s: &mut Setup, c: &Conn, written: u64, what: &str) -> f64 {
    assert!(written >= MIB / 4, "{what}: the server queued only {written} bytes");
    let outq = s.outq(c);
    let ss = s.ss_established(c);
    let w = ss.skmem("w");
    let ratio = w as f64 / outq as f64;
    println!("{what}: wrote {written}, outq {outq}, charged (skmem w) {w}: {ratio:.1}x\n{ss}");
    ratio
}
