//! Restarts and concurrent agents against the real kernel. Run as root, one at a time.
#![allow(clippy::unwrap_used, reason = "tests panic with context")]

use std::{path::PathBuf, time::Duration};

use enforcer_tests::{Agent, Cgroup, Netns, Peer, enforcer_programs_loaded, field, unique, wait_for};

#[test]
fn sigkill_and_restart_leaks_nothing_and_enforcement_goes_on() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("enforcer-test"));
    // The first agent would wait 30 s before calling anything stalled.
    let mut first = Agent::start_at(&ns, &cg, pin_dir.clone(), &["--threshold", "1MiB", "--stall", "30s"]);
    let single = wait_for("the first agent's programs", Duration::from_secs(10), || {
        let n = enforcer_programs_loaded().len();
        (n >= 4).then_some(n)
    });
    let mut server = Peer::start(&ns, Some(&cg));
    let addr = server.cmd("listen 127.0.0.1:9000");
    let mut client = Peer::start(&ns, None);
    client.cmd(&format!("connect {addr} 4096"));
    server.cmd("wait-accepted 1");
    assert!(server.num("write 0 2000000") > 0);
    wait_for("the first agent to track the attacker", Duration::from_secs(10), || {
        (first.sockets().len() == 1).then_some(())
    });

    first.sigkill();
    assert!(pin_dir.join("snapshot").exists(), "a killed agent cannot remove its pins");

    // A new agent on the same pins: the stale ones go, the attacker is adopted and destroyed.
    let mut second =
        Agent::start_at(&ns, &cg, pin_dir.clone(), &["--log-format", "json", "--threshold", "1MiB", "--stall", "1s"]);
    assert!(second.log_text().contains("removing stale pins"), "{}", second.log_text());
    wait_for("the attacker to be destroyed after the restart", Duration::from_secs(20), || {
        (!second.events_of("destroyed").is_empty()).then_some(())
    });
    assert_eq!(server.num("soerror 0"), 103, "the server's socket should be aborted");
    // The first agent's programs are gone: nothing is attached twice.
    wait_for("exactly one agent's programs", Duration::from_secs(10), || {
        (enforcer_programs_loaded().len() == single).then_some(())
    });
    assert!(second.stop().success());
    assert!(!pin_dir.exists());
    wait_for("every program to be unloaded", Duration::from_secs(10), || {
        enforcer_programs_loaded().is_empty().then_some(())
    });
}

#[test]
fn a_second_agent_on_the_same_pins_is_refused() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let first = Agent::start(&ns, &cg, &[]);
    let out = Agent::spawn_raw(&ns, &cg, &first.pin_dir, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another enforcer agent") && err.contains("is running"), "{err}");
    // The first one is untouched.
    assert_eq!(field(&first.status()["agent"], "pid"), u64::from(first.pid().unwrap()));
}

#[test]
fn errors_in_kernel_programs_are_counted_and_tcp_carries_on() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &["--inject-fault", "sockops,tcp-probe"]);
    let mut server = Peer::start(&ns, Some(&cg));
    let addr = server.cmd("listen 127.0.0.1:9000");
    let mut client = Peer::start(&ns, None);
    client.cmd(&format!("connect {addr}"));
    server.cmd("wait-accepted 1");
    client.cmd("read-loop 0 65536 1");
    // The failing sock_ops leaves the socket to the snapshot, which adopts it; from then on
    // every segment makes the failing tcp_probe run.
    wait_for("the snapshot to adopt the connection", Duration::from_secs(10), || {
        (agent.sockets().len() == 1).then_some(())
    });
    for _ in 0..20 {
        assert!(server.num("write 0 100000") > 0);
        wait_for("the data to be acknowledged", Duration::from_secs(10), || (server.num("outq 0") == 0).then_some(()));
    }
    assert_eq!(server.num("soerror 0"), 0);
    let counters = &agent.status()["counters"];
    assert!(field(counters, "err_sockops") >= 1, "{counters}");
    assert!(field(counters, "err_tcp_probe") >= 1, "{counters}");
    assert_eq!(field(counters, "tracked"), 0, "{counters}");
}
