//! Judgement under real traffic: who must not be destroyed (bursty and rate-limited readers)
//! and who must not keep memory (spread and churning attackers). Real sockets in a test
//! namespace, the real agent. Run as root, one at a time (`cargo xtask test`).

use std::{
    collections::HashSet,
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{Conn, Setup, charged, field, remotes, wait_for};

/// A reader that takes `bytes` every `every_ms` from a server that writes as fast as it can.
fn reader(s: &mut Setup, src: &str, bytes: usize, every_ms: u64) -> Conn {
    let c = s.connect(9000, 0, src);
    s.server.cmd(&format!("write-loop {}", c.server_id));
    s.clients.cmd(&format!("read-loop {} {bytes} {every_ms}", c.client_id));
    c
}

#[test]
fn bursty_and_rate_limited_readers_are_not_destroyed() {
    for interval in ["250ms", "1s"] {
        let mut s = Setup::new();
        // Pressure held over the threshold by peers nobody may destroy: zero-window peers of
        // the protected port 9001.
        let threshold: u64 = 4 << 20;
        let agent = s.agent(&["--interval", interval, "--threshold", "4MiB", "--protect-port", "9001"]);
        for _ in 0..3 {
            s.zero_window(9001, "127.0.0.2", 2 << 20);
        }
        // 64 KiB every 100 ms (640 KB/s, ACKs in bursts), and a rate-limited download that
        // takes 2 MiB at once, then sleeps a second.
        let steady = reader(&mut s, "127.0.0.3", 64 << 10, 100);
        let limited = reader(&mut s, "127.0.0.4", 2 << 20, 1000);
        // A drain window, a stall and more: long enough for either rule to have fired.
        let start = Instant::now();
        let mut over_share = HashSet::new();
        let mut longest_stall = std::collections::HashMap::new();
        while start.elapsed() < Duration::from_secs(12) {
            let sockets = agent.sockets();
            let share = threshold / sockets.len() as u64;
            for x in &sockets {
                let remote = x["remote"].as_str().unwrap().to_owned();
                if field(x, "charged") > share {
                    over_share.insert(remote.clone());
                }
                let stall = longest_stall.entry(remote).or_insert(0);
                *stall = field(x, "stalled_ms").max(*stall);
            }
            thread::sleep(Duration::from_millis(200));
        }
        eprintln!(
            "interval {interval}: longest stall seen: steady reader {}ms, rate-limited reader {}ms",
            longest_stall[&steady.remote], longest_stall[&limited.remote]
        );
        assert!(agent.events().is_empty(), "interval {interval}: {:?}", agent.events());
        for c in [&steady, &limited] {
            assert!(over_share.contains(&c.remote), "interval {interval}: {} never held over its share", c.remote);
            assert!(agent.tracks_remote(&c.remote), "interval {interval}: {} is gone", c.remote);
            assert_eq!(s.server.num(&format!("soerror {}", c.server_id)), 0);
        }
        assert!(charged(&agent, "") > threshold, "the test needs pressure over the threshold");
    }
}

#[test]
fn slow_readers_are_recognised_in_seconds_bursty_readers_are_not() {
    let mut s = Setup::new();
    let agent = s.agent(&["--interval", "250ms", "--threshold", "4MiB"]);
    // Readers that take 8 KiB every 200 ms through a small receive buffer (slowhttptest -X sets
    // one), from a server that lets each queue 2 MiB and writes as fast as it can: an ACK in
    // every interval, each queue draining in a minute. (With a large receive buffer the kernel
    // opens the window only once half of it is free: no ACK for seconds, a stall.)
    let slow: Vec<Conn> = (10..16)
        .map(|i| {
            let c = s.connect(9000, 4096, &format!("127.0.0.{i}"));
            s.server.cmd(&format!("sndbuf {} {}", c.server_id, 2 << 20));
            s.server.cmd(&format!("write-loop {}", c.server_id));
            s.clients.cmd(&format!("read-loop {} {} 200", c.client_id, 8 << 10));
            c
        })
        .collect();
    let steady = reader(&mut s, "127.0.0.3", 64 << 10, 100);
    let limited = reader(&mut s, "127.0.0.4", 2 << 20, 1000);
    let slow_remotes: HashSet<String> = slow.iter().map(|c| c.remote.clone()).collect();
    wait_for("every slow reader destroyed", Duration::from_secs(30), || {
        remotes(&agent.events_of("destroyed")).is_superset(&slow_remotes).then_some(())
    });
    // Two more seconds for anything else to follow.
    thread::sleep(Duration::from_secs(2));
    let destroyed = agent.events_of("destroyed");
    assert_eq!(remotes(&destroyed), slow_remotes, "{destroyed:?}");
    // How long each was watched over its share before the rule called it slow: a trickle is
    // slow in seconds, not a drain window (5 s).
    let watched: Vec<u64> = destroyed.iter().map(|e| field(e, "offending_ms")).collect();
    eprintln!("slow readers watched for {watched:?} ms before they were destroyed");
    for e in &destroyed {
        assert_eq!(e["reason"], "slow_drain", "{e}");
        assert!(field(e, "offending_ms") <= 2000, "recognised only after {}ms: {e}", field(e, "offending_ms"));
    }
    for c in [&steady, &limited] {
        assert!(agent.tracks_remote(&c.remote), "{} is gone", c.remote);
        assert_eq!(s.server.num(&format!("soerror {}", c.server_id)), 0);
    }
}

#[test]
fn readers_draining_just_within_max_drain_while_refilled_go_as_the_bar_rises() {
    let mut s = Setup::new();
    let threshold: u64 = 8 << 20;
    let agent = s.agent(&["--threshold", "8MiB"]);
    // Four readers acknowledging ~350 KB/s each while the server keeps 7.5 MB queued for each
    // (SO_SNDBUFFORCE 3.75 MB, which the kernel doubles): about 21 s to drain, under --max-drain
    // (30 s), for as long as they like; together over three times the threshold.
    let gamers: Vec<Conn> = (30..34)
        .map(|i| {
            let c = s.connect(9000, 0, &format!("127.0.0.{i}"));
            s.server.cmd(&format!("sndbuf {} 3750000", c.server_id));
            s.server.cmd(&format!("write-loop {}", c.server_id));
            s.clients.cmd(&format!("read-loop {} 35000 100", c.client_id));
            c
        })
        .collect();
    let gamer_remotes: HashSet<String> = gamers.iter().map(|c| c.remote.clone()).collect();
    wait_for("pressure over the threshold", Duration::from_secs(15), || {
        (charged(&agent, "") > threshold).then_some(())
    });
    let over = Instant::now();
    // Within an episode --max-drain tightens with pressure and age: pressure is back at the
    // threshold within 30 s. (The last reader left holds under its share, the whole threshold:
    // it is no offender however slow.)
    wait_for("pressure back at the threshold", Duration::from_secs(30), || {
        (!agent.events_of("destroyed").is_empty() && charged(&agent, "") <= threshold).then_some(())
    });
    eprintln!("back at the threshold {:?} after it went over", over.elapsed());
    let destroyed = agent.events_of("destroyed");
    assert!(remotes(&destroyed).is_subset(&gamer_remotes), "{destroyed:?}");
    let estimates: Vec<u64> = destroyed.iter().map(|e| field(e, "drain_estimate_ms")).collect();
    eprintln!("their drain estimates: {estimates:?} ms");
    assert!(destroyed.iter().all(|e| e["reason"] == "slow_drain"), "{destroyed:?}");
    // Under --max-drain itself: the risen bar, not the old one, took them.
    assert!(estimates.iter().any(|&ms| ms < 30_000), "{destroyed:?}");
}

#[test]
fn stalled_peers_spread_under_their_shares_are_destroyed_and_the_reader_is_not() {
    let mut s = Setup::new();
    // 11 remotes under remote-ip fairness: a 6 MiB threshold gives each 572 KiB.
    let threshold: u64 = 6 << 20;
    let agent = s.agent(&["--threshold", "6MiB", "--fairness", "remote-ip"]);
    // A reader that makes progress, holding megabytes (over its share, draining in seconds).
    let progressing = reader(&mut s, "127.0.0.99", 64 << 10, 100);
    // 320 KiB each: the kernel charges a 4 KiB-window peer's queue 1.4x on 6.18 (458 KB) and
    // 1.6x on 6.1 (526 KB), both under the share; 384 KiB came within 4 % of it on 6.18.
    let stalled: Vec<Conn> = (10..20).map(|i| s.zero_window(9000, &format!("127.0.0.{i}"), 320 << 10)).collect();
    for c in &stalled {
        let x = agent.socket_to(&c.remote).unwrap();
        assert!(field(&x, "charged") < threshold / 11, "a stalled peer is over its share: {x}");
    }
    wait_for("pressure over the threshold", Duration::from_secs(15), || {
        (charged(&agent, "") > threshold).then_some(())
    });
    let over = Instant::now();
    wait_for("pressure back at the threshold", Duration::from_secs(10), || {
        (!agent.events_of("destroyed").is_empty() && charged(&agent, "") <= threshold).then_some(())
    });
    eprintln!("back at the threshold {:?} after it was seen over", over.elapsed());
    let destroyed = agent.events_of("destroyed");
    let stalled_remotes: HashSet<String> = stalled.iter().map(|c| c.remote.clone()).collect();
    assert!(remotes(&destroyed).is_subset(&stalled_remotes), "{destroyed:?}");
    assert!(destroyed.iter().all(|e| e["reason"] == "stalled_under_share"), "{destroyed:?}");
    // The episode goes on while pressure is over the low line (75 %), and the budget aims for
    // that line: the reader's queue moving pressure across the threshold does not bring it back
    // over. (Aiming for the threshold, interval by interval, left stalled peers holding memory
    // with pressure over the threshold in about half the samples, for as long as the attack
    // lasted.)
    let mut samples = Vec::new();
    for _ in 0..25 {
        samples.push(charged(&agent, ""));
        thread::sleep(Duration::from_millis(200));
    }
    let under = samples.iter().filter(|&&p| p <= threshold).count();
    eprintln!("at or under the threshold in {under} of {} samples after: {samples:?}", samples.len());
    assert!(under * 10 >= samples.len() * 9, "pressure did not stay at the threshold: {samples:?}");
    let destroyed = agent.events_of("destroyed");
    assert!(remotes(&destroyed).is_subset(&stalled_remotes), "{destroyed:?}");
    assert!(agent.tracks_remote(&progressing.remote));
    assert_eq!(s.server.num(&format!("soerror {}", progressing.server_id)), 0);
    // The log says when the episode started.
    assert!(agent.episodes().iter().any(|e| e["event"] == "episode_started"), "{}", agent.log_text());
}

#[test]
fn a_remote_that_churns_zero_window_connections_is_held_at_the_threshold() {
    const CHURN: u64 = 400;
    let mut s = Setup::new();
    let threshold: u64 = 8 << 20;
    let agent = s.agent(&["--threshold", "8MiB", "--stall", "1s"]);
    // Every connection asks for a large response and never reads; a new one every 50 ms for
    // 20 s, all from one address.
    s.server.cmd("listen-write 127.0.0.1:9003 4194304");
    s.clients.cmd(&format!("connect-every 127.0.0.1:9003 50 {CHURN} 4096 127.0.0.7"));
    // Destroying its connections one by one cannot hold such a remote: the agent flags it
    // (its log line) and contains it (the pinned trie, read by `status`).
    wait_for("the remote flagged as a repeat offender", Duration::from_secs(30), || {
        let log = agent.log_text();
        (log.contains("\"event\":\"repeat_offender\"") && log.contains("127.0.0.7/32")).then_some(())
    });
    wait_for("the remote contained", Duration::from_secs(10), || {
        let status = agent.status();
        let contained = status["contained"].as_array().cloned().unwrap_or_default();
        contained.iter().any(|c| c["remote"] == "127.0.0.7/32" && c["sndbuf"] == 32768).then_some(())
    });
    // The connections it opened before the flag, each holding megabytes, go after --stall:
    // the remote is back at the threshold.
    wait_for("the remote's connections from before the flag swept", Duration::from_secs(30), || {
        (charged(&agent, "127.0.0.7:") <= threshold).then_some(())
    });
    // From then on it stays near the threshold while it goes on churning: each new connection
    // holds a small buffer, and a stalled one goes after one interval once the pressure is
    // over. Over the threshold only by what it opens between two of the agent's looks, never by
    // megabytes per connection (uncontained, 400 connections would hold a gigabyte). Sampled
    // until the churn ends; how far over, and how often, is printed, not asserted: that is how
    // fast the agent is (the benchmarks).
    let mut samples = Vec::new();
    let churning = Instant::now();
    while s.clients.num("count") < CHURN {
        assert!(churning.elapsed() < Duration::from_secs(60), "the churn did not end: {samples:?}");
        samples.push(charged(&agent, "127.0.0.7:"));
        thread::sleep(Duration::from_millis(200));
    }
    let over = samples.iter().filter(|&&held| held > threshold).count();
    eprintln!("over the threshold in {over} of {} samples after the sweep: {samples:?}", samples.len());
    assert!(samples.len() >= 5, "the churn ended before the agent contained the remote: {samples:?}");
    assert!(samples.iter().all(|&held| held <= 2 * threshold), "the contained remote ran away: {samples:?}");
    // Every connection it opened was accepted; the last, opened long after the flag, got the
    // contained send buffer (the kernel's reading: 32 KiB, doubled), and the remote ends at or
    // under the threshold.
    s.server.cmd(&format!("wait-accepted {CHURN}"));
    assert_eq!(s.server.num(&format!("sndbuf {}", CHURN - 1)), 2 * 32768, "the last connection was not contained");
    wait_for("the remote at or under the threshold after the churn", Duration::from_secs(20), || {
        (charged(&agent, "127.0.0.7:") <= threshold).then_some(())
    });
}
