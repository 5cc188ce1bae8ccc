//! Judging remotes as well as connections (issue 22): a remote whose connections each end before
//! `--stall` (self-closing churn, one /64 rotating its addresses) is still held at the threshold;
//! a flagged address keeps its innocents; a capped kill budget goes to memory first. Real sockets
//! in test namespaces, the real agent. Run as root, one at a time (`cargo xtask test`).

use std::{
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{
    Agent, Cgroup, ConfigFile, Conn, Netns, PathClient, PathSpec, Peer, Server, Setup, charged, field, remotes,
    wait_for,
};

const MIB: u64 = 1 << 20;

/// The threshold: 8 MiB.
const THRESHOLD: u64 = 8 * MIB;

/// How long a test waits for the agent to flag or sweep: generous, for a slow machine.
const ACT_LIMIT: Duration = Duration::from_secs(60);

/// Samples of what the remotes starting with `prefix` are charged, one every `every`, while
/// `going` says the attack goes on (at most `limit`).
fn held_samples(
    agent: &Agent,
    prefix: &str,
    every: Duration,
    limit: Duration,
    mut going: impl FnMut() -> bool,
) -> Vec<u64> {
    let (start, mut samples) = (Instant::now(), Vec::new());
    while going() {
        assert!(start.elapsed() < limit, "the attack did not end within {limit:?}: {samples:?}");
        samples.push(charged(agent, prefix));
        thread::sleep(every);
    }
    samples
}

/// How many of `samples` are at or under the threshold, and their mean.
fn under_and_mean(samples: &[u64]) -> (usize, u64) {
    let under = samples.iter().filter(|&&held| held <= THRESHOLD).count();
    (under, samples.iter().sum::<u64>() / samples.len().max(1) as u64)
}

/// What the agent did, for the failure message and the log: decisions by reason, repeat
/// offenders, who is contained, the counters.
fn what_the_agent_did(agent: &Agent) -> String {
    let mut reasons = std::collections::BTreeMap::<String, usize>::new();
    for e in agent.events() {
        *reasons
            .entry(format!("{}/{}", e["event"].as_str().unwrap_or("?"), e["reason"].as_str().unwrap_or("-")))
            .or_default() += 1;
    }
    let flags: Vec<String> =
        agent.log_text().lines().filter(|l| l.contains("\"event\":\"repeat_offender\"")).map(str::to_owned).collect();
    let status = agent.status();
    format!(
        "events {reasons:?}; repeat offenders {flags:?}; contained {}; counters {}",
        status["contained"], status["counters"]
    )
}

#[test]
fn a_remote_that_resets_its_connections_before_the_stall_is_held_at_the_threshold() {
    // The evasion: one address opens a zero-window connection every 100 ms and resets
    // each itself after 2.5 s, before --stall (3 s); the server queues about 1 MiB on each. Left
    // alone it holds 25 of them, 3x the threshold, and no connection of it is ever an offender.
    const EVERY_MS: u64 = 100;
    const HOLD_MS: u64 = 2500;
    const COUNT: u64 = 300;
    let mut s = Setup::new();
    // The agent's defaults (interval 1 s, stall 3 s) but the threshold.
    let agent = s.agent(&["--threshold", "8MiB", "--interval", "1s"]);
    // An idle keep-alive beside it, from another address: a small response, read, then nothing.
    let idle = s.connect(9000, 0, "127.0.0.8");
    s.clients.cmd(&format!("read-loop {} 65536 0", idle.client_id));
    assert_eq!(s.server.num(&format!("write {} 252", idle.server_id)), 252);

    let mut churn_server = Peer::start(&s.ns, Some(&s.cg));
    churn_server.cmd(&format!("listen-write 127.0.0.1:9003 {MIB}"));
    let start = Instant::now();
    s.clients.cmd(&format!("connect-every 127.0.0.1:9003 {EVERY_MS} {COUNT} 4096 127.0.0.7 {HOLD_MS}"));
    // The first 8 s: what one connection holds, and that the remote is over the threshold
    // before the agent acts (or the test would measure nothing).
    let early = held_samples(&agent, "127.0.0.7:", Duration::from_millis(250), ACT_LIMIT, || {
        start.elapsed() < Duration::from_secs(8)
    });
    // From 8 s on, until the last connection is made.
    let samples =
        held_samples(&agent, "127.0.0.7:", Duration::from_millis(250), ACT_LIMIT, || s.clients.num("count") < COUNT);
    let (under, mean) = under_and_mean(&samples);
    let did = what_the_agent_did(&agent);
    eprintln!(
        "before 8 s: {early:?}\nfrom 8 s: at or under the threshold in {under} of {} samples, mean {mean} B \
         (threshold {THRESHOLD}): {samples:?}\n{did}",
        samples.len()
    );
    assert!(early.iter().any(|&held| held > THRESHOLD), "the churn never held over the threshold: {early:?}");
    assert!(samples.len() >= 20, "too few samples from 8 s on: {samples:?}");
    assert!(4 * under >= 3 * samples.len(), "at or under the threshold in {under} of {} samples; {did}", samples.len());
    assert!(mean <= THRESHOLD, "held {mean} B on average from 8 s on; {did}");
    // The idle connection beside it: no decision, still open.
    let on_idle: Vec<_> = agent.events().into_iter().filter(|e| e["remote"] == idle.remote.as_str()).collect();
    assert!(on_idle.is_empty(), "the idle connection got a decision: {on_idle:?}");
    assert!(agent.tracks_remote(&idle.remote), "the idle connection is gone");
    assert_eq!(s.server.num(&format!("soerror {}", idle.server_id)), 0);
}

/// The shipped config (deploy/enforcer.toml), enforcing: its dry run off, the rest as it is.
fn shipped_config() -> (ConfigFile, String) {
    let text = include_str!("../../../deploy/enforcer.toml");
    assert!(
        text.contains("\ndry-run = true\n"),
        "deploy/enforcer.toml no longer starts in a dry run: update this test"
    );
    let interval = text
        .lines()
        .find_map(|l| l.strip_prefix("interval = \"")?.strip_suffix('"'))
        .expect("deploy/enforcer.toml sets an interval")
        .to_owned();
    (ConfigFile::new(&text.replace("\ndry-run = true\n", "\ndry-run = false\n")), interval)
}

/// One /64 (`prefix`, as `2001:db8:N`) opening a zero-window connection every 50 ms, each from
/// a new address of it, with about 1 MiB queued on each, against the shipped config and `flags`:
/// how many samples after the warm-up were at or under the threshold, of how many.
fn rotating_slash_64(prefix: &str, flags: &[&str]) -> (usize, usize) {
    const EVERY_MS: u64 = 50;
    let mut s = Setup::new();
    let ip = |args: &str| {
        let out = enforcer_tests::process::output_within(
            std::process::Command::new("ip").arg("-n").arg(&s.ns.name).args(args.split(' ')),
            enforcer_tests::process::COMMAND_LIMIT,
        );
        assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // The server's address, and the attacker's whole /64 routed to this namespace (AnyIP; the
    // peer binds each address with IPV6_FREEBIND).
    ip("-6 addr add 2001:db8::1/128 dev lo nodad");
    ip(&format!("-6 route add local {prefix}::/64 dev lo"));
    let (config, interval) = shipped_config();
    let config_path = config.path().display().to_string();
    // The file's interval unless `flags` give one (the test library's agent has its own).
    let mut all = vec!["--config", &config_path, "--threshold", "8MiB"];
    if !flags.contains(&"--interval") {
        all.extend(["--interval", &interval]);
    }
    all.extend_from_slice(flags);
    let agent = Agent::start_json(&s.ns, &s.cg, &all);
    let settings = agent.status()["settings"].clone();
    let (stall, interval) = (field(&settings, "stall_ms"), field(&settings, "interval_ms"));
    assert_eq!(settings["fairness"], "remote-ip", "{settings}");

    // Warm-up: the /64 is stuck (over its share, nothing progressing) for --stall and flagged at
    // the next interval; the connections it opened before that, uncontained, are swept once
    // they are stalled for --stall, the last of them an interval or two later.
    let warm_up = Duration::from_millis(2 * stall + 3 * interval + 1000);
    // Then 15 s of samples.
    let count = (warm_up.as_millis() as u64 + 15_000) / EVERY_MS;
    let mut churn_server = Peer::start(&s.ns, Some(&s.cg));
    churn_server.cmd(&format!("listen-write [2001:db8::1]:9003 {MIB}"));
    let start = Instant::now();
    s.clients.cmd(&format!("connect-every [2001:db8::1]:9003 {EVERY_MS} {count} 4096 {prefix}::10 0 rotate"));
    let remote = format!("[{prefix}:");
    let early = held_samples(&agent, &remote, Duration::from_millis(250), ACT_LIMIT, || start.elapsed() < warm_up);
    let samples =
        held_samples(&agent, &remote, Duration::from_millis(250), ACT_LIMIT, || s.clients.num("count") < count);
    let (under, mean) = under_and_mean(&samples);
    let did = what_the_agent_did(&agent);
    eprintln!(
        "{flags:?} (stall {stall} ms, interval {interval} ms), warm-up {warm_up:?}: {early:?}\nafter it: at or under the \
         threshold in {under} of {} samples, mean {mean} B (threshold {THRESHOLD}): {samples:?}\n{did}",
        samples.len()
    );
    assert!(early.iter().any(|&held| held > THRESHOLD), "the rotation never held over the threshold: {early:?}");
    assert!(samples.len() >= 20, "too few samples after the warm-up: {samples:?}");
    // The agent flagged the /64, not one address of it.
    let flagged = format!("\"event\":\"repeat_offender\",\"remote\":\"{prefix}::/64\"");
    assert!(agent.log_text().contains(&flagged), "the /64 was never flagged; {did}");
    (under, samples.len())
}

#[test]
fn one_slash_64_rotating_its_addresses_is_held_at_the_threshold_by_the_shipped_config() {
    // The evasion: with the shipped fairness (remote-ip), one connection at a time was
    // destroyed and the /64 never flagged: 24 MiB held, over the threshold in every sample.
    // As shipped (its interval, stall and policy), and as the issue measured it (250 ms, 1 s,
    // heffner).
    let legs = [
        ("2001:db8:1", rotating_slash_64("2001:db8:1", &[])),
        (
            "2001:db8:2",
            rotating_slash_64("2001:db8:2", &["--interval", "250ms", "--stall", "1s", "--policy", "heffner"]),
        ),
    ];
    for (prefix, (under, of)) in legs {
        assert!(10 * under >= 9 * of, "{prefix}::/64: at or under the threshold in {under} of {of} samples");
    }
}

#[test]
fn a_capped_budget_goes_to_the_large_offender_before_a_flagged_remotes_cheap_churn() {
    let mut s = Setup::new();
    let agent = s.agent(&["--threshold", "8MiB", "--max-kills", "2", "--max-kills-per-minute", "20"]);
    // Make 127.0.0.7 a repeat offender: five zero-window connections holding 20 MiB queued,
    // destroyed two an interval until the rest is under the threshold: three destroys at least.
    for _ in 0..5 {
        s.zero_window(9000, "127.0.0.7", 4 * MIB);
    }
    wait_for("127.0.0.7 flagged as a repeat offender", ACT_LIMIT, || {
        let log = agent.log_text();
        (log.contains("\"event\":\"repeat_offender\"") && log.contains("127.0.0.7/32")).then_some(())
    });
    wait_for("127.0.0.7's first connections swept", ACT_LIMIT, || {
        (charged(&agent, "127.0.0.7:") <= THRESHOLD).then_some(())
    });
    // Its churn: a cheap zero-window connection every 250 ms (contained: 64 KiB each), each
    // swept once stalled, competing for the budget.
    // (A server of its own, so the setup's server numbers its connections as it made them.)
    let mut churn_server = Peer::start(&s.ns, Some(&s.cg));
    churn_server.cmd(&format!("listen-write 127.0.0.1:9003 {MIB}"));
    s.clients.cmd("connect-every 127.0.0.1:9003 250 400 4096 127.0.0.7");
    // Long enough that its connections are stalled when the large offender comes.
    thread::sleep(Duration::from_secs(5));
    // A second remote: 16 MiB in two zero-window connections.
    let large = [s.zero_window(9000, "127.0.0.9", 8 * MIB), s.zero_window(9000, "127.0.0.9", 8 * MIB)];
    let queued = Instant::now();
    // The bound: back at the threshold within 10 s, the large offender destroyed.
    let took =
        wait_for("the large offender destroyed and pressure back at the threshold", Duration::from_secs(10), || {
            let gone = remotes(&agent.events_of("destroyed"));
            (large.iter().all(|c| gone.contains(&c.remote)) && charged(&agent, "") <= THRESHOLD)
                .then(|| queued.elapsed())
        });
    let did = what_the_agent_did(&agent);
    eprintln!("the large offender destroyed and pressure at the threshold {took:?} after it queued; {did}");
    let on_large: Vec<_> = agent
        .events_of("destroyed")
        .into_iter()
        .filter(|e| e["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.9:")))
        .collect();
    // Stalled over its share, or swept once it was stuck itself: either way on its own evidence.
    assert!(on_large.iter().all(|e| e["reason"] == "stalled" || e["reason"] == "repeat_offender"), "{on_large:?}");
}

#[test]
fn a_flagged_address_keeps_its_paused_reader_and_its_downloads_earn_their_buffer() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    // Pressure held over the threshold all along by peers nobody may destroy: zero-window peers
    // of the protected port 9001 on loopback.
    let agent = Agent::start_json(&ns, &cg, &["--threshold", "8MiB", "--protect-port", "9001"]);
    let mut server = Server::start(&ns, &cg);
    server.listen("127.0.0.1:9001");
    let mut local = Peer::start(&ns, None);
    for _ in 0..3 {
        server.zero_window(&mut local, "127.0.0.1:9001", 4 * MIB);
    }
    // Two client addresses, each behind an equal 50 ms path of its own.
    let spec = PathSpec::new().rtt(Duration::from_millis(50));
    let (mut flagged, mut control) = (PathClient::new(&ns, &spec), PathClient::new(&ns, &spec));
    for c in [&flagged, &control] {
        server.listen(&c.to);
    }
    let flagged_addr = flagged.path.client_addr().to_owned();

    // Zero-window attackers from the flagged address make it a repeat offender.
    let attackers: Vec<Conn> = (0..3).map(|_| server.zero_window(&mut flagged.peer, &flagged.to, 4 * MIB)).collect();
    wait_for("the attackers' address flagged as a repeat offender", ACT_LIMIT, || {
        let log = agent.log_text();
        log.contains(&format!("\"event\":\"repeat_offender\",\"remote\":\"{flagged_addr}/32\"")).then_some(())
    });
    wait_for("the attackers destroyed", ACT_LIMIT, || {
        let gone = remotes(&agent.events_of("destroyed"));
        attackers.iter().all(|c| gone.contains(&c.remote)).then_some(())
    });
    let is_contained = |agent: &Agent| {
        let status = agent.status();
        status["contained"].as_array().unwrap().iter().any(|c| c["remote"] == format!("{flagged_addr}/32"))
    };
    assert!(is_contained(&agent), "the flagged address is not contained: {}", what_the_agent_did(&agent));

    // A bulk download from the flagged address (contained: it starts with a small send buffer)
    // and one from the control's, side by side over equal paths, under pressure.
    let counters = |agent: &Agent| agent.status()["counters"].clone();
    let before = counters(&agent);
    let bulk = server.connect(&mut flagged.peer, &flagged.to, 0);
    let reference = server.connect(&mut control.peer, &control.to, 0);
    assert_eq!(
        field(&counters(&agent), "contained"),
        field(&before, "contained") + 1,
        "the bulk download was not contained"
    );
    server.stream(&mut flagged.peer, &bulk, "65536 0");
    server.stream(&mut control.peer, &reference, "65536 0");
    thread::sleep(Duration::from_secs(10));
    let (got, reference_got) = (
        flagged.peer.num(&format!("received {}", bulk.client_id)),
        control.peer.num(&format!("received {}", reference.client_id)),
    );
    let earned = field(&counters(&agent), "earned") - field(&before, "earned");
    let (sndbuf, reference_sndbuf) = (
        server.peer.num(&format!("sndbuf {}", bulk.server_id)),
        server.peer.num(&format!("sndbuf {}", reference.server_id)),
    );
    eprintln!(
        "in 10 s: contained {got} B ({:.2} MB/s, SO_SNDBUF {sndbuf}), control {reference_got} B ({:.2} MB/s, SO_SNDBUF \
         {reference_sndbuf}): {:.0} %; earned {earned}",
        got as f64 / 10e6,
        reference_got as f64 / 10e6,
        100.0 * got as f64 / reference_got as f64
    );
    assert!(charged(&agent, "") > THRESHOLD, "the test needs pressure over the threshold");
    assert!(reference_got > 0, "the control received nothing");
    assert_eq!(earned, 1, "the contained download did not earn its buffer back");
    assert!(sndbuf > 2 * 32 * 1024, "the contained download's SO_SNDBUF is {sndbuf}");
    // The buffer it earns is the most SO_SNDBUF may give (twice net.core.wmem_max). Where that is
    // less than the control's autotuned buffer (Debian's default wmem_max, 212,992, on the 6.1
    // guest: 416 KiB against 4 MiB), the kernel, not enforcer, caps the download on a long path:
    // the throughputs are not comparable, and the buffer must be the cap.
    if sndbuf >= reference_sndbuf {
        assert!(2 * got >= reference_got, "the contained download got {got} B, the control {reference_got} B");
    } else {
        let wmem_max: u64 = std::fs::read_to_string("/proc/sys/net/core/wmem_max").unwrap().trim().parse().unwrap();
        assert_eq!(sndbuf, 2 * wmem_max, "earned less than the kernel allows");
    }
    for c in [&bulk, &reference] {
        server.peer.cmd(&format!("close {}", c.server_id));
    }

    // A reader from the flagged address that pauses 2 s every 5 s, a modest receive buffer so
    // that a pause closes its window: over three pauses, no decision.
    let reader = server.connect(&mut flagged.peer, &flagged.to, 256 * 1024);
    server.stream(&mut flagged.peer, &reader, "65536 0 3000 2000");
    let start = Instant::now();
    let mut longest = 0;
    while start.elapsed() < Duration::from_secs(16) {
        if let Some(x) = agent.socket_to(&reader.remote) {
            longest = longest.max(field(&x, "stalled_ms"));
        }
        thread::sleep(Duration::from_millis(200));
    }
    eprintln!("the reader's longest stall seen: {longest} ms; {}", what_the_agent_did(&agent));
    let on_reader: Vec<_> = agent.events().into_iter().filter(|e| e["remote"] == reader.remote.as_str()).collect();
    assert!(on_reader.is_empty(), "the paused reader got a decision: {on_reader:?}");
    assert!(agent.tracks_remote(&reader.remote), "the paused reader is gone");
    assert_eq!(server.peer.num(&format!("soerror {}", reader.server_id)), 0);
    // It was judged while its address was flagged, and its pauses were stalls.
    assert!(is_contained(&agent), "the flag lapsed before the reader was judged");
    assert!(longest >= 1000, "the reader's pauses never stalled it (longest {longest} ms)");
    assert!(charged(&agent, "") > THRESHOLD, "the test needs pressure over the threshold");
}
