//! The two walks on one kernel: the records map (`iter/bpf_sk_storage_map`, where the kernel
//! allows map-element iterators) and every TCP socket of a namespace (`iter/tcp`, forced with
//! `--inject-fault records`). They must list the same connections with the same queues; and,
//! run by hand, `walk_costs_per_tracked_and_untracked_socket` says what each costs per socket
//! (BENCHMARKS.md, "The records walk against iter/tcp").

use std::{collections::BTreeMap, io::Read, time::Duration};

use enforcer_common::SnapshotEntry;
use enforcer_tests::{Agent, Cgroup, Netns, Peer, agent_scrape, connected_many, field, kernel, sample, wait_for};

/// Every tracked connection as `sockets --json` lists it: (local, remote) → (state, send_queue).
fn listing(agent: &Agent) -> BTreeMap<(String, String), (String, u64)> {
    agent
        .sockets()
        .iter()
        .map(|s| {
            let text = |k: &str| s[k].as_str().unwrap_or_else(|| panic!("no {k} in {s}")).to_owned();
            ((text("local"), text("remote")), (text("state"), field(s, "send_queue")))
        })
        .collect()
}

/// The walk the agent's start line names, in either log format.
fn walk_of(agent: &Agent) -> &'static str {
    let log = agent.log_text();
    let attached = log.lines().find(|l| l.contains("enforcer attached")).unwrap_or_else(|| panic!("{log}"));
    if attached.contains("walk=\"records\"") || attached.contains("\"walk\":\"records\"") {
        "records"
    } else {
        assert!(attached.contains("walk=\"tcp\"") || attached.contains("\"walk\":\"tcp\""), "{attached}");
        "tcp"
    }
}

/// Both walks list the same connections, states and queues: idle ones, and one whose peer
/// closed its window on a queued response. With the fault injected the agent walks `iter/tcp`
/// whatever the kernel allows; without it, the records where the kernel allows them.
#[test]
fn both_walks_list_the_same_connections_and_queues() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let (mut server, _clients) = connected_many(&ns, &cg, "127.0.0.1:9000", 20, 4096);
    // A response its reader never takes: the window closes on a queue.
    assert!(server.num("write 0 262144") > 0);
    let queued = wait_for("the queue to settle", Duration::from_secs(10), || {
        let a = server.num("outq 0");
        std::thread::sleep(Duration::from_millis(200));
        (a > 0 && server.num("outq 0") == a).then_some(a)
    });

    let mut listings = Vec::new();
    for extra in [&[][..], &["--inject-fault", "records"][..]] {
        let mut agent = Agent::start(&ns, &cg, extra);
        let walk = walk_of(&agent);
        let all = wait_for("the 20 connections to be listed", Duration::from_secs(20), || {
            let all = listing(&agent);
            (all.len() == 20).then_some(all)
        });
        agent.stop();
        listings.push((walk, all));
    }
    let [(default_walk, by_default), (forced_walk, by_tcp)] = <[_; 2]>::try_from(listings).unwrap();
    eprintln!("walks compared: {default_walk} and {forced_walk}");
    assert_eq!(forced_walk, "tcp", "--inject-fault records must walk iter/tcp");
    let expected = if kernel::allows_sk_storage_iterators().is_ok() { "records" } else { "tcp" };
    assert_eq!(default_walk, expected);
    assert_eq!(by_default, by_tcp, "the {default_walk} walk and the tcp walk list different connections");
    let queues: Vec<u64> = by_tcp.values().map(|v| v.1).filter(|&q| q > 0).collect();
    assert_eq!(queues, [queued], "{by_tcp:?}");
}

/// CPU time of the calling thread in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`: the scheduler's own
/// count, where `getrusage` rounds to ticks in a guest).
fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime writes the struct we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) }, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Reads the snapshot `agent` pinned `reads` times from inside `ns` (where `iter/tcp` walks):
/// the entries each read returned, and the median CPU time of a read in nanoseconds.
fn read_pin(agent: &Agent, ns: &Netns, reads: usize) -> (usize, u64) {
    let pin = ["snapshot", "snapshot_tcp"].map(|p| agent.pin_dir.join(p)).into_iter().find(|p| p.exists()).unwrap();
    ns.spawn(move || {
        let mut bytes = Vec::new();
        let mut times = Vec::new();
        let mut entries = 0;
        for _ in 0..reads {
            bytes.clear();
            let before = thread_cpu_ns();
            std::fs::File::open(&pin).unwrap().read_to_end(&mut bytes).unwrap();
            times.push(thread_cpu_ns() - before);
            entries = bytes.len() / size_of::<SnapshotEntry>();
        }
        times.sort_unstable();
        (entries, times[times.len() / 2])
    })
    .join()
    .unwrap()
}

/// Not a test: a measurement, run by hand on each kernel (`cargo xtask test --kernel 6.12 --only
/// walks -- --ignored --nocapture`, or on the host `cargo xtask test -- walks:: --ignored
/// --nocapture`). For each walk, the median CPU time of reading the snapshot with no connection,
/// with N connections whose clients are outside the cgroup (N tracked, N untracked), and with
/// both ends inside (2N tracked); solved for the cost per tracked and per untracked socket.
/// It asserts only what each read returned: every tracked connection, once.
#[test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
fn walk_costs_per_tracked_and_untracked_socket() {
    const N: usize = 2_000;
    const READS: usize = 25;
    let walks: &[&[&str]] = if kernel::allows_sk_storage_iterators().is_ok() {
        &[&[], &["--inject-fault", "records"]]
    } else {
        &[&["--inject-fault", "records"]]
    };
    for extra in walks {
        let mut costs = Vec::new();
        // (clients in the cgroup, connections): tracked = N or 2N, untracked = N or 0.
        for (inside, n) in [(false, 0), (false, N), (true, N)] {
            let (ns, cg) = (Netns::new(), Cgroup::new());
            let (mut server, listen) = Peer::listening(&ns, &cg, "127.0.0.1:9000");
            let mut clients = Peer::start(&ns, inside.then_some(&cg));
            if n > 0 {
                clients.cmd(&format!("connect-many {listen} {n} 0"));
                server.cmd(&format!("wait-accepted {n}"));
            }
            let tracked = if inside { 2 * n } else { n };
            let mut agent = Agent::start(&ns, &cg, &[&["--threshold", "1GiB"], *extra].concat());
            let walk = walk_of(&agent);
            wait_for("every connection to be tracked", Duration::from_secs(60), || {
                (field(&agent.status()["sockets"], "tracked") == tracked as u64).then_some(())
            });
            let (entries, ns_per_read) = read_pin(&agent, &ns, READS);
            assert_eq!(entries, tracked, "the {walk} walk returned {entries} of {tracked} tracked connections");
            eprintln!(
                "walk {walk}: {tracked} tracked, {} untracked: {ns_per_read} ns per read",
                if inside { 0 } else { n }
            );
            costs.push((walk, ns_per_read as f64));
            agent.stop();
        }
        let (walk, empty) = costs[0];
        let outside = costs[1].1 - empty;
        let inside = costs[2].1 - empty;
        // outside = N·t + N·u, inside = 2N·t: per tracked t, per untracked u.
        let t = inside / (2 * N) as f64;
        let u = outside / N as f64 - t;
        println!(
            "walk {walk}: {empty:.0} ns per read with no connection; {t:.0} ns per tracked socket, {u:.0} ns per \
             untracked socket ({N} connections, median of {READS} reads)"
        );
    }
}

/// Not a test: a measurement, run by hand (`cargo xtask test -- walks::record_cost --ignored
/// --nocapture`). Where the walks visit every socket, a connection's record is made by the first
/// walk that sees it (`RECORD_AT_FIRST_SIGHT`), so the record's cost is paid there, not in the
/// connection's own path: the CPU time of a read of the snapshot that records N new connections,
/// less that of the read after it (the same sockets, recorded), over N. Three batches.
#[test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
fn record_cost_per_socket_a_walk_records() {
    const N: usize = 2_000;
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let (mut server, listen) = Peer::listening(&ns, &cg, "127.0.0.1:9000");
    let mut clients = Peer::start(&ns, None);
    // Far over what the machine's TCP memory is: after its first interval the agent skips its
    // walks (for a minute), so the connections below stay unrecorded until this test reads.
    let agent = Agent::start(&ns, &cg, &["--threshold", "1GiB", "--inject-fault", "records"]);
    std::thread::sleep(Duration::from_secs(2));
    let mut per_socket = Vec::new();
    for batch in 1..=3 {
        clients.cmd(&format!("connect-many {listen} {N} 0"));
        server.cmd(&format!("wait-accepted {}", batch * N));
        let (first, recording) = read_pin(&agent, &ns, 1);
        let (again, recorded) = read_pin(&agent, &ns, 1);
        assert_eq!((first, again), (batch * N, batch * N), "every connection, once each read");
        per_socket.push((recording as f64 - recorded as f64) / N as f64);
        eprintln!("batch {batch}: the read that records {N}: {recording} ns; the next: {recorded} ns");
    }
    per_socket.sort_by(f64::total_cmp);
    println!(
        "a record made by a walk: {:.0} ns per socket (median of 3 batches of {N}; {per_socket:?})",
        per_socket[1]
    );
}

/// Where the walks visit every TCP socket, offenders held over the threshold are revisited alone
/// between walks, and every decision is still an exact walk's: a dry run reports each held
/// offender once, no idle connection, and a new offender is found by a later walk. Where the
/// walks visit the records, nothing is revisited.
#[test]
fn held_offenders_are_revisited_and_decisions_come_from_walks() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let (mut server, _clients) = connected_many(&ns, &cg, "127.0.0.1:9000", 200, 4096);
    let addr = "127.0.0.1:9471";
    let agent = Agent::start_json(
        &ns,
        &cg,
        &["--dry-run", "--threshold", "64KiB", "--stall", "1s", "--policy", "heffner", "--metrics-addr", addr],
    );
    // Twenty readers that never read: each holds far more than its share. Five more behind a
    // dual-stack listener, whose IPv4 peers the socket knows as `::ffff:127.0.0.1`.
    assert!(server.num("write-range 0 20 262144") > 20 * 16384);
    let mut dual = Peer::start(&ns, Some(&cg));
    let port = dual.cmd("listen [::]:9001").rsplit(':').next().unwrap().to_owned();
    let mut dual_clients = Peer::start(&ns, None);
    dual_clients.cmd(&format!("connect-many 127.0.0.1:{port} 5 4096"));
    dual.cmd("wait-accepted 5");
    assert!(dual.num("write-range 0 5 262144") > 5 * 16384);
    let reported = || agent.events_of("would_destroy");
    wait_for("the 25 held offenders to be reported", Duration::from_secs(30), || {
        (reported().len() >= 25).then_some(())
    });
    let scans = |kind: &str| {
        sample(&agent_scrape(&ns, addr), &format!("enforcer_scans_total{{kind=\"{kind}\"}}")).unwrap_or(0.0)
    };
    // Revisits go on with all of them held: a candidate a revisit could not find would leave its
    // memory unexplained, and every interval would walk.
    let revisits = if walk_of(&agent) == "tcp" {
        let from = scans("revisit");
        wait_for("revisits", Duration::from_secs(30), || (scans("revisit") >= from + 8.0).then_some(scans("revisit")))
    } else {
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(scans("revisit"), 0.0, "the records walk has nothing to revisit");
        0.0
    };
    eprintln!("revisits: {revisits}, walks of the candidates: {}", scans("candidates"));
    // One report each, all of them offenders: a dry run reports a socket once per episode.
    let held: Vec<u64> = reported().iter().map(|e| field(e, "send_queue")).collect();
    assert_eq!(held.len(), 25, "{:?}", reported());
    assert!(held.iter().all(|&q| q > 0), "an idle connection was reported: {held:?}");

    // A new offender, whose few hundred KiB the kernel's memory counter may not show: a later walk
    // of every socket finds it.
    assert!(server.num("write 100 262144") > 16384);
    wait_for("the new offender to be reported", Duration::from_secs(40), || (reported().len() >= 26).then_some(()));
    let all = reported();
    assert_eq!(all.len(), 26, "{all:?}");
    assert!(all.iter().all(|e| field(e, "send_queue") > 0), "{all:?}");
}
