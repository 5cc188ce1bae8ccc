//! The tracker and snapshot against the real kernel: real sockets in a test namespace, a test
//! cgroup, the real agent. Run as root, one at a time (`cargo xtask test`).

use std::{process::Command, thread, time::Duration};

use enforcer_tests::{
    Agent, Cgroup, ConfigFile, Netns, Peer, agent_scrape, connected_many, connected_pair, field,
    kernel::{self, still_loaded},
    process::{COMMAND_LIMIT, output_within},
    sample, sibling_bin, wait_for,
};

/// A server in the cgroup that a client outside it connects to with a tiny receive buffer and
/// never reads: the server's queue grows, the window closes.
struct ZeroWindow {
    server: Peer,
    _client: Peer,
    local: String,
}

fn zero_window(ns: &Netns, cg: &Cgroup, listen: &str) -> ZeroWindow {
    let (mut server, client) = connected_pair(ns, cg, listen, 4096);
    let local = server.cmd("addr 0").split(' ').next().unwrap().to_owned();
    ZeroWindow { server, _client: client, local }
}

#[test]
fn zero_window_send_queue_matches_siocoutq() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &[]);
    let mut zw = zero_window(&ns, &cg, "127.0.0.1:9000");

    assert!(zw.server.num("write 0 65536") > 0);
    // Wait until the window is closed, then queue more: sock_ops data alone would go stale here.
    wait_for("the peer's window to close", Duration::from_secs(10), || {
        (field(&agent.socket(&zw.local), "peer_window") == 0).then_some(())
    });
    let more = zw.server.num("write 0 262144");
    assert!(more > 0, "nothing could be queued after the window closed");

    let outq = zw.server.num("outq 0");
    let first = agent.socket(&zw.local);
    assert_eq!(field(&first, "send_queue"), outq, "send_queue differs from SIOCOUTQ: {first}");
    assert!(outq >= 65536 + more - 4096, "queue {outq} smaller than what was written");
    assert_eq!(field(&first, "peer_window"), 0, "{first}");
    assert_eq!(first["state"], "ESTABLISHED");
    assert_eq!(field(&first, "cgroup_id"), cg.id());

    thread::sleep(Duration::from_millis(1200));
    let later = agent.socket(&zw.local);
    assert_eq!(field(&later, "send_queue"), zw.server.num("outq 0"));
    assert!(
        field(&later, "stalled_ms") >= field(&first, "stalled_ms") + 1000,
        "stalled_ms did not grow: {first} then {later}"
    );
    assert!(field(&later, "zero_window_ms") >= 1000, "{later}");
}

#[test]
fn flowing_connection_shows_progress() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &[]);
    let (mut server, mut client) = connected_pair(&ns, &cg, "127.0.0.1:9000", 0);
    server.cmd("write-loop 0");
    client.cmd("read-loop 0 65536 0");
    let local = server.cmd("addr 0").split(' ').next().unwrap().to_owned();

    let first = agent.socket(&local);
    thread::sleep(Duration::from_millis(1500));
    let later = agent.socket(&local);
    assert!(
        field(&later, "bytes_acked") > field(&first, "bytes_acked") + 1_000_000,
        "bytes acked did not grow: {first} then {later}"
    );
    // A reader that keeps up: snd_una moves all the time.
    assert!(field(&later, "stalled_ms") < 1000, "a flowing connection looks stalled: {later}");
    // And its window opens again and again. Read until a reading shows it open: the reader
    // empties its buffer between reads, so any one reading may catch the window shut for a
    // moment (seen once in a host run); never open would be a window read wrong.
    wait_for("a reading with the peer's window open", Duration::from_secs(10), || {
        let now = agent.socket(&local);
        assert!(field(&now, "stalled_ms") < 1000, "a flowing connection looks stalled: {now}");
        (field(&now, "peer_window") > 0).then_some(())
    });
}

#[test]
fn only_the_cgroup_is_tracked_and_closed_sockets_leave() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &[]);
    // Tracked: connections accepted by a server in the cgroup.
    let (mut inside, in_addr) = Peer::listening(&ns, &cg, "127.0.0.1:9000");
    // Not tracked: a server and clients outside the cgroup, same namespace.
    let mut outside = Peer::start(&ns, None);
    let out_addr = outside.cmd("listen 127.0.0.1:9001");
    let mut clients = Peer::start(&ns, None);
    for _ in 0..3 {
        clients.cmd(&format!("connect {in_addr}"));
        clients.cmd(&format!("connect {out_addr}"));
    }
    inside.cmd("wait-accepted 3");
    outside.cmd("wait-accepted 3");

    let sockets = agent.sockets();
    assert_eq!(sockets.len(), 3, "expected exactly the 3 accepted sockets in the cgroup: {sockets:?}");
    assert!(sockets.iter().all(|s| s["local"] == "127.0.0.1:9000"), "{sockets:?}");
    assert!(sockets.iter().all(|s| field(s, "cgroup_id") == cg.id()), "{sockets:?}");
    assert_eq!(field(&agent.status()["sockets"], "tracked"), 3);

    // Close every connection from both ends: the kernel frees their records with them.
    for id in 0..3 {
        inside.cmd(&format!("close {id}"));
    }
    for id in 0..6 {
        clients.cmd(&format!("close {id}"));
    }
    wait_for("closed sockets to leave the snapshot", Duration::from_secs(10), || {
        let status = agent.status();
        (field(&status["sockets"], "tracked") == 0).then_some(())
    });
    assert!(agent.sockets().is_empty());
    let counters = &agent.status()["counters"];
    assert_eq!(field(counters, "tracked"), 3, "{counters}");
}

#[test]
fn ipv6_zero_window() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &[]);
    let mut zw = zero_window(&ns, &cg, "[::1]:9000");
    assert!(zw.server.num("write 0 200000") > 0);
    assert_eq!(zw.local, "[::1]:9000");
    wait_for("the peer's window to close", Duration::from_secs(10), || {
        (field(&agent.socket(&zw.local), "peer_window") == 0).then_some(())
    });
    let s = agent.socket(&zw.local);
    assert_eq!(field(&s, "send_queue"), zw.server.num("outq 0"), "{s}");
    assert!(s["remote"].as_str().unwrap().starts_with("[::1]:"), "{s}");
}

#[test]
fn the_agent_says_in_one_line_what_this_kernel_lacks() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &[]);
    let log = agent.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("this kernel lacks")).collect();
    // The kernel's own BTF as the oracle (a distribution may backport the field): a member
    // name is a NUL-terminated string there; `tcp_info.tcpi_total_rto` does not match.
    let btf = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    let has_total_rto = btf.windows(11).any(|w| w == b"\0total_rto\0");
    if has_total_rto {
        assert!(lines.is_empty(), "a kernel with tcp_sock.total_rto lacks nothing: {lines:?}");
    } else {
        assert_eq!(lines.len(), 1, "{log}");
        assert!(lines[0].contains("tcp_sock.total_rto") && lines[0].contains("RTO counts read 0"), "{log}");
    }
}

/// Whether the agent's walks visit the records (`true`) or every TCP socket (`false`), as the
/// kernel decides, not the agent: the records walk is a map-element iterator, which the test
/// tries to make itself (`kernel::allows_sk_storage_iterators`).
fn records_walk() -> bool {
    let allowed = kernel::allows_sk_storage_iterators();
    // Printed, so a kernel run shows which walk its kernel allows (`-- --nocapture`).
    eprintln!("map-element iterators on this kernel: {allowed:?}");
    allowed.is_ok()
}

/// The walk the agent chose is the one the kernel allows (the test's own probe), its start line
/// says which, the pin matches it, and the records walk is given up only with one line saying
/// the kernel refused map-element iterators.
#[test]
fn the_agent_says_which_walk_it_makes() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &[]);
    let log = agent.log_text();
    let attached = log.lines().find(|l| l.contains("enforcer attached")).unwrap_or_else(|| panic!("{log}"));
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("refuses map-element iterators")).collect();
    eprintln!("walk on this kernel: {attached}");
    let records = records_walk();
    assert_eq!(attached.contains("walk=\"records\""), records, "the agent's walk is not the kernel's: {log}");
    if records {
        assert!(refused.is_empty(), "{log}");
        assert!(agent.pin_dir.join("snapshot").exists() && !agent.pin_dir.join("snapshot_tcp").exists());
    } else {
        assert!(attached.contains("walk=\"tcp\""), "{log}");
        assert_eq!(refused.len(), 1, "{log}");
        assert!(agent.pin_dir.join("snapshot_tcp").exists() && !agent.pin_dir.join("snapshot").exists());
    }
}

#[test]
fn agent_exit_leaves_nothing_behind() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let mut agent = Agent::start(&ns, &cg, &[]);
    // Its own programs, by id: another agent on this host (or one leaked) has others.
    let loaded = agent.programs();
    assert!(loaded.len() >= 4, "expected the agent's programs to be loaded: {loaded:?}");
    let pin_dir = agent.pin_dir.clone();
    let status = agent.stop();
    assert!(status.success(), "agent exited with {status}:\n{}", agent.log_text());
    assert!(!pin_dir.exists(), "pin directory {} left behind", pin_dir.display());
    // A program that is attached anywhere is loaded; none of its stays. The kernel frees
    // tracepoint programs after an RCU grace period, so give it a moment.
    wait_for("the agent's programs to be unloaded", Duration::from_secs(10), || {
        still_loaded(&loaded).is_empty().then_some(())
    });
}

#[test]
fn settings_of_any_length_are_recorded_whole() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    // 600 protected networks: about 12 KiB of settings, three times the old 4 KiB limit.
    let cidrs: Vec<String> = (0..600).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
    let args: Vec<&str> = cidrs.iter().flat_map(|c| ["--protect-cidr", c.as_str()]).collect();
    let agent = Agent::start(&ns, &cg, &[&["--threshold", "1MiB"], args.as_slice()].concat());
    let status = agent.status();
    // Who runs, since when, and the pressure against the threshold.
    assert_eq!(status["agent"]["version"], env!("CARGO_PKG_VERSION"), "{status}");
    assert!(status["agent"]["uptime_ms"].as_u64().is_some(), "{status}");
    assert_eq!(status["pressure"]["threshold"], 1 << 20, "{status}");
    assert_eq!(status["pressure"]["over"], false, "{status}");
    let text = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).into_owned();
    assert!(text.contains(&format!("enforcer {}", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("of 1.0MiB (tracked): under the threshold"), "{text}");
    assert!(text.contains("networks 10.0.0.0/24 10.0.1.0/24"), "{text}");
    let settings = &status["settings"];
    let recorded: Vec<&str> =
        settings["protect_cidrs"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(recorded, cidrs, "the CLI reads back every protected network");
    // `top` rebuilds the agent's rule from them.
    let out = agent.cli(&["top", "--iterations", "1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn cli_errors_are_one_clear_line() {
    let ns = Netns::new();
    let run = |args: &[&str]| output_within(ns.command(enforcer_tests::enforcer_bin()).args(args), COMMAND_LIMIT);
    let out = run(&["sockets", "--pin-dir", "/sys/fs/bpf/enforcer-test-none"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no enforcer agent is running"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Not root: the same one clear line.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(enforcer_tests::enforcer_bin())
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"), "{}", String::from_utf8_lossy(&out.stderr));

    let out = run(&["sockets", "--sort", "sideways"]);
    assert_eq!(out.status.code(), Some(2), "a bad flag value exits 2");
    let out = run(&["run", "--cgroup", "/nonexistent-cgroup", "--pin-dir", "/sys/fs/bpf/enforcer-test-none"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = run(&["run", "--cgroup", "/tmp", "--pin-dir", "/sys/fs/bpf/enforcer-test-none"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a cgroup v2 directory"));
    let out = run(&["run", "--threshold", "lots"]);
    assert_eq!(out.status.code(), Some(2));
    // bpffs refuses names with a dot: say so, rather than a bare "Operation not permitted".
    let cg = Cgroup::new();
    let out = run(&[
        "run",
        "--cgroup",
        cg.path.to_str().unwrap(),
        "--threshold",
        "1MiB",
        "--pin-dir",
        "/sys/fs/bpf/enforcer.test",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    // Bad input, refused when the settings are resolved (as `check-config` refuses it): exit 2.
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("contains '.'") && err.trim().lines().count() == 1, "{err}");
    assert!(!std::path::Path::new("/sys/fs/bpf/enforcer.test").exists());
    drop(cg);

    // A bad config value: exit 2, one line naming the key; nothing is loaded.
    let cg = Cgroup::new();
    let config = ConfigFile::new("threshold = \"64MiB\"\nstall = \"soon\"\n");
    let out = run(&[
        "run",
        "--config",
        config.path().to_str().unwrap(),
        "--cgroup",
        cg.path.to_str().unwrap(),
        "--pin-dir",
        "/sys/fs/bpf/enforcer-test-none",
    ]);
    drop(config);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`stall`") && err.trim().lines().count() == 1, "{err}");
    assert!(!std::path::Path::new("/sys/fs/bpf/enforcer-test-none").exists());
}

/// Records live in socket storage: no capacity to fill. Far more connections than the old
/// fixed map's test size are all tracked, and every one of them works.
#[test]
fn every_connection_is_tracked_however_many() {
    const N: usize = 3000;
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &[]);
    let (mut server, _clients) = connected_many(&ns, &cg, "127.0.0.1:9000", N, 0);
    assert_eq!(agent.sockets().len(), N);
    let status = agent.status();
    assert_eq!(field(&status["sockets"], "tracked"), N as u64, "{status}");
    assert_eq!(field(&status["sockets"], "untracked_no_memory"), 0, "{status}");
    for id in [0, N / 2, N - 1] {
        assert_eq!(server.num(&format!("write {id} 1000")), 1000);
        assert_eq!(server.num(&format!("soerror {id}")), 0);
    }
}

/// A record costs a short connection more than the programs do (BENCHMARKS.md). Where the walks
/// visit every TCP socket (`iter/tcp`), sock_ops leaves the record to the first walk that sees
/// the connection: connections that end while the agent skips its walks never get one, and a
/// live one is recorded by the first look at it. Where the walks visit the records, sock_ops
/// records each at establishment.
#[test]
fn short_connections_get_a_record_only_where_the_walks_need_one() {
    const N: u64 = 300;
    let (ns, cg) = (Netns::new(), Cgroup::new());
    // Far above the kernel's TCP memory: after its first interval, the agent skips its walks.
    let metrics = "127.0.0.1:9468";
    let agent = Agent::start(&ns, &cg, &["--threshold", "4GiB", "--metrics-addr", metrics]);
    wait_for("an interval that skips the walk", Duration::from_secs(5), || {
        (sample(&agent_scrape(&ns, metrics), "enforcer_scans_total{kind=\"skipped\"}")? >= 1.0).then_some(())
    });
    // Which walk: the kernel's answer, checked against the agent's pin.
    let tcp_walk = !records_walk();
    assert_eq!(agent.pin_dir.join(enforcer_common::names::PIN_SNAPSHOT_TCP).exists(), tcp_walk);
    // Both ends in the cgroup: two tracked sockets per connection.
    // Found like the peers: `CARGO_BIN_EXE_*` is the host's path, not the VM legs'.
    let loadgen = sibling_bin("loadgen");
    let script = format!("echo $$ > {}/cgroup.procs && exec {} crr {N}", cg.path.display(), loadgen.display());
    let out = ns.command("sh").arg("-c").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let counters = &agent.status()["counters"];
    assert_eq!(field(counters, "tracked"), if tcp_walk { 0 } else { 2 * N }, "{counters}");

    // A connection that lives (its server side in the cgroup): the CLI's walk is the first to see it when the agent's are skipped.
    let (_server, _client) = connected_pair(&ns, &cg, "127.0.0.1:9000", 0);
    let all = agent.sockets();
    assert_eq!(all.len(), 1, "{all:?}");
    let recorded = if tcp_walk { "first_seen" } else { "established" };
    assert!(all.iter().all(|s| s["recorded"] == recorded && s["adopted"] == false), "{all:?}");
    let counters = &agent.status()["counters"];
    assert_eq!(field(counters, "tracked"), if tcp_walk { 1 } else { 2 * N + 1 }, "{counters}");
    assert_eq!(field(counters, "err_storage"), 0, "{counters}");
}

#[test]
fn connections_from_before_the_agent_are_adopted() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    // Established before any agent runs: sock_ops never sees them.
    let mut zw = zero_window(&ns, &cg, "127.0.0.1:9000");
    assert!(zw.server.num("write 0 300000") > 0);
    let mut outsider = Peer::start(&ns, None);
    let out_addr = outsider.cmd("listen 127.0.0.1:9001");
    zw.server.cmd(&format!("connect {out_addr}"));

    let agent = Agent::start(&ns, &cg, &[]);
    let s = wait_for("the snapshot to adopt the connection", Duration::from_secs(10), || {
        agent.sockets().into_iter().find(|s| s["local"] == zw.local.as_str())
    });
    assert_eq!(s["adopted"], true, "{s}");
    assert_eq!(s["recorded"], "adopted", "{s}");
    assert_eq!(field(&s, "send_queue"), zw.server.num("outq 0"), "{s}");
    assert_eq!(field(&s, "cgroup_id"), cg.id());
    // The server's own client connection is in the cgroup too; the outsider's side is not.
    let all = agent.sockets();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|s| field(s, "cgroup_id") == cg.id()), "{all:?}");
}

#[test]
fn a_snapshot_larger_than_the_kernel_buffer_counts_no_errors() {
    // 400 entries of 176 bytes (`SnapshotEntry`): more than the iterator's 32 KiB seq buffer holds. A reader with
    // large reads (`cat`, here `dd bs=1M`) makes the kernel split the snapshot where the buffer
    // fills, and show the socket that did not fit again at the next read: no error.
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &[]);
    let (_server, _clients) = connected_many(&ns, &cg, "127.0.0.1:9000", 400, 0);
    wait_for("every connection in the snapshot", Duration::from_secs(10), || {
        (agent.sockets().len() == 400).then_some(())
    });
    // The records walk where the kernel allows map-element iterators, `iter/tcp` otherwise.
    let snapshot = agent.pin_dir.join(if records_walk() { "snapshot" } else { "snapshot_tcp" });
    assert!(snapshot.exists(), "no pinned snapshot link {}", snapshot.display());
    // Counted by `wc`, not read off dd's summary: busybox's dd (the VM legs) prints no bytes.
    let out = ns
        .command("sh")
        .arg("-c")
        .arg(format!("dd if={} bs=1M 2>/dev/null | wc -c", snapshot.display()))
        .output()
        .unwrap();
    let bytes = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(bytes, (400 * size_of::<enforcer_common::SnapshotEntry>()).to_string());
    let counters = &agent.status()["counters"];
    assert_eq!(field(counters, "tracked"), 400, "{counters}");
    assert_eq!(field(counters, "err_snapshot"), 0, "{counters}");
}
