//! Containment: a remote in the pinned `contained` trie gets a small send buffer on each new
//! connection, set by sock_ops at establishment, so a zero-window connection of it can only hold
//! a little. Run as root, one at a time (`cargo xtask test`).

use std::{thread, time::Duration};

use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use enforcer_common::{CONTAINED_BY_REPEAT, ContainedAddr, Containment, names, v4_mapped};
use enforcer_tests::{Agent, Cgroup, ETIMEDOUT, Netns, Peer, TunSetup, field, ss, wait_for};

/// What the agent would be asked to contain: 32 KiB, which the kernel doubles.
const SNDBUF: u32 = 32 * 1024;
const SNDBUF_EFFECTIVE: u64 = 2 * SNDBUF as u64;

/// The trie key sock_ops looks up for an IPv4 remote: `::ffff:a.b.c.d/128`.
fn host_key(ip: [u8; 4]) -> Key<ContainedAddr> {
    Key::new(128, v4_mapped(u32::from_ne_bytes(ip)))
}

/// A trie entry as the agent writes a repeat offender's.
fn contained(user_timeout_ms: u32) -> Containment {
    Containment { sndbuf: SNDBUF, user_timeout_ms, sources: CONTAINED_BY_REPEAT, label: 0, until_unix_ms: 0 }
}

fn contained_map(agent: &Agent) -> LpmTrie<MapData, ContainedAddr, Containment> {
    let path = agent.pin_dir.join(names::PIN_CONTAINED);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    Map::from_map_data(data).unwrap().try_into().unwrap()
}

fn contained_count(agent: &Agent) -> u64 {
    field(&agent.status()["counters"], "contained")
}

#[test]
fn a_contained_remote_gets_a_small_send_buffer_on_new_connections() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    // Dry run: the flood below must stay in place to be measured.
    let agent = Agent::start(&ns, &cg, &["--dry-run"]);
    let mut trie = contained_map(&agent);
    trie.insert(&host_key([127, 0, 0, 5]), contained(0), 0).unwrap();
    let before = contained_count(&agent);

    let (mut server, listen) = Peer::listening(&ns, &cg, "127.0.0.1:9000");
    let mut clients = Peer::start(&ns, None);
    // Zero-window clients: a tiny receive buffer, never read. Server ids follow accept order.
    let mut remote = Vec::new();
    for (i, src) in ["127.0.0.5", "127.0.0.6"].into_iter().enumerate() {
        let reply = clients.cmd(&format!("connect {listen} 4096 {src}"));
        remote.push(reply.split(' ').nth(1).unwrap().to_owned());
        server.cmd(&format!("wait-accepted {}", i + 1));
    }
    let (contained, free) = (0, 1);

    assert_eq!(server.num(&format!("sndbuf {contained}")), SNDBUF_EFFECTIVE, "SO_SNDBUF of the contained remote");
    let normal = server.num(&format!("sndbuf {free}"));
    assert!(normal > SNDBUF_EFFECTIVE, "the other remote keeps the kernel's buffer, got {normal}");
    assert_eq!(contained_count(&agent), before + 1);

    // A flood on both: the contained socket holds at most about its buffer, the other megabytes.
    for id in [contained, free] {
        server.cmd(&format!("write-loop {id}"));
    }
    let mut most = (0, 0, 0);
    for _ in 0..10 {
        thread::sleep(Duration::from_millis(100));
        let outq = server.num(&format!("outq {contained}"));
        // The kernel's own reading: `w` charged to the send queue, `tb` the send buffer.
        let sock = ss::socket(&ns, &listen, &remote[0]);
        let (w, tb) = (sock.skmem("w"), sock.skmem("tb"));
        assert_eq!(tb, SNDBUF_EFFECTIVE, "ss tb of the contained socket");
        most = (most.0.max(outq), most.1.max(w), tb);
    }
    assert!(most.0 > 0, "the flood queued nothing");
    assert!(most.0 < 2 * SNDBUF_EFFECTIVE && most.1 < 2 * SNDBUF_EFFECTIVE, "contained socket held {most:?}");
    let free_outq = server.num(&format!("outq {free}"));
    assert!(free_outq > 8 * SNDBUF_EFFECTIVE, "the uncontained flood should hold megabytes, held {free_outq}");
    eprintln!(
        "contained: outq <= {} B, skmem w <= {} B, tb {} B; uncontained: outq {free_outq} B, SO_SNDBUF {normal} B",
        most.0, most.1, most.2
    );

    // A dual-stack listener sees the IPv4 remote as ::ffff:127.0.0.5: the same entry holds.
    let listen6 = server.cmd("listen [::]:9001");
    let port6 = listen6.rsplit(':').next().unwrap();
    clients.cmd(&format!("connect 127.0.0.1:{port6} 0 127.0.0.5"));
    server.cmd("wait-accepted 3");
    assert_eq!(server.num("sndbuf 2"), SNDBUF_EFFECTIVE, "SO_SNDBUF of the contained remote on an IPv6 socket");
    assert_eq!(contained_count(&agent), before + 2);

    // Released: the remote's next connection gets the kernel's buffer again.
    trie.remove(&host_key([127, 0, 0, 5])).unwrap();
    clients.cmd(&format!("connect {listen} 0 127.0.0.5"));
    server.cmd("wait-accepted 4");
    let after = server.num("sndbuf 3");
    assert!(after > SNDBUF_EFFECTIVE, "a released remote gets the kernel's buffer again, got {after}");
    assert_eq!(contained_count(&agent), before + 2);
}

/// A user timeout short enough for a test; the default is 60 s.
const USER_TIMEOUT_MS: u32 = 2000;

#[test]
fn the_kernel_aborts_a_contained_stall_within_its_user_timeout_with_no_agent_running() {
    let mut s = TunSetup::new();
    let mut agent = s.agent(&["--dry-run"]);
    let mut trie = contained_map(&agent);
    for ip in [[10, 77, 0, 2], [10, 77, 0, 3]] {
        trie.insert(&host_key(ip), contained(USER_TIMEOUT_MS), 0).unwrap();
    }
    // A zero-window peer and a peer that never acknowledges, both contained; a zero-window peer
    // that is not. The zero windows are advertised from the handshake on: a later shrink to zero
    // with nothing new acknowledged is not taken by every kernel (6.1 keeps the old window).
    let zero = s.connect("10.77.0.2", 0, None);
    let silent = s.connect("10.77.0.3", 65535, Some(7));
    let free = s.connect("10.77.0.4", 0, None);
    let timeout = |s: &mut TunSetup, id: usize| s.server.num(&format!("usertimeout {id}"));
    assert_eq!(timeout(&mut s, zero.server), u64::from(USER_TIMEOUT_MS), "TCP_USER_TIMEOUT of a contained connection");
    assert_eq!(timeout(&mut s, silent.server), u64::from(USER_TIMEOUT_MS));
    assert_eq!(timeout(&mut s, free.server), 0, "an uncontained connection keeps the kernel's retries");

    // No agent from here on: what follows is the kernel's alone.
    drop(trie);
    assert!(agent.stop().success());
    s.tun.cmd(&format!("ack {} none", silent.tun));
    for c in [&zero, &free] {
        assert_eq!(s.ss_established(c).info("snd_wnd").unwrap_or(0), 0, "the server's send window");
    }
    for c in [&zero, &silent, &free] {
        assert!(s.write(c, 1 << 20, 256 << 10) > 0);
    }
    let written = std::time::Instant::now();
    let mut aborted = Vec::new();
    for (name, c) in [("zero-window probes unanswered by a window", &zero), ("never acknowledged", &silent)] {
        wait_for(&format!("the kernel to abort the contained connection ({name})"), Duration::from_secs(30), || {
            (s.server.num(&format!("soerror {}", c.server)) == ETIMEDOUT).then_some(())
        });
        aborted.push(format!("{name}: {} ms", written.elapsed().as_millis()));
        assert!(s.ss(c).is_none(), "an aborted connection is gone");
    }
    eprintln!("user timeout {USER_TIMEOUT_MS} ms; aborted after writing: {}", aborted.join(", "));
    // The uncontained zero-window connection is probed on, as the kernel does for anyone.
    assert_eq!(s.server.num(&format!("soerror {}", free.server)), 0);
    assert!(s.ss(&free).is_some());
}
