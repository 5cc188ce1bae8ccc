//! Containment: a remote in the pinned `contained` trie gets a small send buffer on each new
//! connection, set by sock_ops at establishment, so a zero-window connection of it can only hold
//! a little. Run as root, one at a time (`cargo xtask test`).

use std::{thread, time::Duration};

use aya::maps::{LpmTrie, Map, MapData, lpm_trie::Key};
use enforcer_common::{ContainedAddr, Containment, names, v4_mapped};
use enforcer_tests::{Agent, Cgroup, Netns, Peer, field, ss};

/// What the agent would be asked to contain: 32 KiB, which the kernel doubles.
const SNDBUF: u32 = 32 * 1024;
const SNDBUF_EFFECTIVE: u64 = 2 * SNDBUF as u64;

/// The trie key sock_ops looks up for an IPv4 remote: `::ffff:a.b.c.d/128`.
fn host_key(ip: [u8; 4]) -> Key<ContainedAddr> {
    Key::new(128, v4_mapped(u32::from_ne_bytes(ip)))
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
    trie.insert(&host_key([127, 0, 0, 5]), Containment { sndbuf: SNDBUF, _pad: 0 }, 0).unwrap();
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
