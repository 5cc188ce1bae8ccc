//! The receive side: memory a peer makes the kernel hold beyond a hole it never fills, against
//! data an application has simply not read yet. The scripted peer uploads to a real kernel
//! server; the agent reads the kernel's TCP memory. Run as root, one at a time.

use std::{
    collections::HashSet,
    thread,
    time::{Duration, Instant},
};

use enforcer_tests::{Peer, TUN_KERNEL_ADDR, TunConn, TunSetup as Setup, field, remotes, sockstat_tcp_mem, wait_for};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// Sends `bytes` on `c` as fast as the server's window lets it, for at most `limit`.
fn upload(s: &mut Setup, c: &TunConn, bytes: u64, limit: Duration) -> u64 {
    let (mut sent, start) = (0, Instant::now());
    while sent < bytes && start.elapsed() < limit {
        let n: u64 = s.tun.cmd(&format!("send {} {}", c.tun, (bytes - sent).min(MIB))).parse().unwrap();
        sent += n;
        if n == 0 {
            thread::sleep(Duration::from_millis(20));
        }
    }
    sent
}

/// Receive memory the agent sees on the sockets to `remotes`.
fn held(sockets: &[Value], remotes: &HashSet<String>) -> u64 {
    sockets
        .iter()
        .filter(|x| remotes.contains(x["remote"].as_str().unwrap_or("")))
        .map(|x| field(x, "recv_charged"))
        .sum()
}

#[test]
fn data_held_beyond_a_hole_goes_unread_data_and_downloads_stay() {
    let mut s = Setup::new();
    const LIMIT: u64 = 8 * MIB;
    let threshold = sockstat_tcp_mem() + LIMIT;
    let agent = s.agent(&["--pressure", "kernel", "--threshold", &threshold.to_string()]);
    // Innocents: an application that does not read what its client uploaded in order, and a
    // download the peer acknowledges as it comes.
    let unread = s.connect("10.77.0.40", 65535, Some(7));
    assert!(upload(&mut s, &unread, MIB, Duration::from_secs(2)) > 0);
    // The download is a kernel client's: the scripted peer is busy uploading for the attackers.
    let mut clients = Peer::start(&s.ns, None);
    let reply = clients.cmd(&format!("connect {TUN_KERNEL_ADDR}:9000 0 127.0.0.5"));
    let (client_id, download) = reply.split_once(' ').unwrap();
    let download = download.to_owned();
    s.accepted += 1;
    s.server.cmd(&format!("wait-accepted {}", s.accepted));
    let download_server = s.accepted - 1;
    s.server.cmd(&format!("write-loop {download_server}"));
    clients.cmd(&format!("read-loop {client_id} 65536 1"));
    // 12 uploaders, read by the server as they come, so that its receive buffers grow; then
    // each leaves a 1-byte hole and fills the server's window beyond it.
    let attackers: Vec<TunConn> = (10..22).map(|i| s.connect(&format!("10.77.0.{i}"), 65535, Some(7))).collect();
    for c in &attackers {
        s.server.cmd(&format!("read-loop {} 1048576 5", c.server));
    }
    for c in &attackers {
        upload(&mut s, c, 4 * MIB, Duration::from_millis(300));
    }
    // Each sends as much as the server's window takes beyond its hole, at once.
    for c in &attackers {
        s.tun.cmd(&format!("hole {} 1", c.tun));
    }
    for c in &attackers {
        s.tun.cmd(&format!("send {} {}", c.tun, 16 * MIB));
    }
    let filled = Instant::now();
    let attack: HashSet<String> = attackers.iter().map(|c| c.remote.clone()).collect();
    // The agent sees it: receive memory beyond a hole, far over the limit (still held, or in the
    // events of what it destroyed already: the first attackers sent nothing in order for seconds).
    let sockets = agent.sockets();
    let destroyed_held: u64 = agent.events_of("destroyed").iter().map(|e| field(e, "recv_charged")).sum();
    let seen = held(&sockets, &attack) + destroyed_held;
    eprintln!("attackers hold {} MiB beyond their holes ({} MiB destroyed already)", seen / MIB, destroyed_held / MIB);
    assert!(seen > LIMIT, "the attack holds only {seen} bytes");
    let beyond_a_hole = |x: &Value| attack.contains(x["remote"].as_str().unwrap_or("")) && x["out_of_order"] == true;
    assert!(destroyed_held > 0 || sockets.iter().any(beyond_a_hole), "no segment waits beyond a hole: {sockets:?}");
    wait_for("the attackers' receive memory back under the limit", Duration::from_secs(10), || {
        (held(&agent.sockets(), &attack) <= LIMIT).then_some(())
    });
    eprintln!("back under the limit {:?} after the attack was in place", filled.elapsed());
    let mut samples = Vec::new();
    for _ in 0..20 {
        samples.push(held(&agent.sockets(), &attack));
        thread::sleep(Duration::from_millis(250));
    }
    let under = samples.iter().filter(|&&b| b <= LIMIT).count();
    assert!(under * 10 >= samples.len() * 9, "the attack came back: {samples:?}");
    let destroyed = agent.events_of("destroyed");
    assert!(!destroyed.is_empty() && remotes(&destroyed).is_subset(&attack), "{destroyed:?}");
    // Over their share, as `out_of_order`; the last ones, once few are left holding under their
    // share while the episode goes on, by escalation.
    for e in &destroyed {
        assert!(["out_of_order", "stalled_under_share"].contains(&e["reason"].as_str().unwrap_or("")), "{e}");
        assert!(field(e, "recv_charged") > 0, "{e}");
    }
    assert!(destroyed.iter().any(|e| e["reason"] == "out_of_order"), "{destroyed:?}");
    // The application's unread data and the download are no peer's doing.
    for (remote, server) in [(&unread.remote, unread.server), (&download, download_server)] {
        assert!(agent.tracks_remote(remote), "{remote} is gone: {destroyed:?}");
        assert_eq!(s.server.num(&format!("soerror {server}")), 0);
    }
    let unread_now = agent.socket_to(&unread.remote).unwrap();
    assert!(field(&unread_now, "recv_charged") > 0 && unread_now["out_of_order"] == false, "{unread_now}");
}
