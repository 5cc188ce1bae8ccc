//! Sockets in another network namespace than the agent's (a container, a pod): tracked through
//! their cgroup, shown with their namespace, destroyed from inside it.

use std::{os::unix::fs::MetadataExt, time::Duration};

use enforcer_tests::{Agent, Cgroup, Netns, Peer, field, wait_for};

#[test]
fn an_attacker_in_another_namespace_is_destroyed_from_inside_it() {
    let (agent_ns, pod_ns, cg) = (Netns::new(), Netns::new(), Cgroup::new());
    let pod_inode = std::fs::metadata(format!("/run/netns/{}", pod_ns.name)).unwrap().ino();
    let agent = Agent::start(&agent_ns, &cg, &["--log-format", "json", "--interval", "250ms", "--threshold", "1MiB"]);

    // The "pod": a server in the cgroup and its attacker, both in the pod's namespace.
    let mut server = Peer::start(&pod_ns, Some(&cg));
    let listen = server.cmd("listen 127.0.0.1:9000");
    let mut attacker = Peer::start(&pod_ns, None);
    let reply = attacker.cmd(&format!("connect {listen} 4096"));
    let remote = reply.split(' ').nth(1).unwrap().to_owned();
    server.cmd("wait-accepted 1");
    assert!(server.num("write 0 2000000") > 0);

    // Seen from the agent's namespace, with the pod's namespace.
    let s = wait_for("the pod's socket in the snapshot", Duration::from_secs(10), || {
        agent.sockets().into_iter().find(|s| s["remote"] == remote.as_str())
    });
    assert_eq!(field(&s, "netns"), pod_inode, "{s}");
    assert_eq!(field(&s, "cgroup_id"), cg.id());
    // Namespaces that hold tracked sockets: the pod's only (the agent's own holds none).
    assert_eq!(field(&agent.status()["sockets"], "network_namespaces"), 1);

    wait_for("the attacker destroyed", Duration::from_secs(20), || {
        agent.events_of("destroyed").into_iter().find(|e| e["remote"] == remote.as_str())
    });
    assert_eq!(server.num("soerror 0"), 103, "the pod's server sees ECONNABORTED");
    assert_eq!(attacker.num("soerror 0"), 104, "the attacker gets an RST");
    assert!(agent.events_of("destroy_failed").is_empty());
}
