//! Sockets in another network namespace than the agent's (a container, a pod): tracked through
//! their cgroup, shown with their namespace, destroyed from inside it.

use std::time::Duration;

use enforcer_tests::{Agent, Cgroup, ECONNABORTED, ECONNRESET, Netns, Pod, field, wait_for};

#[test]
fn an_attacker_in_another_namespace_is_destroyed_from_inside_it() {
    let (agent_ns, pod_ns, cg) = (Netns::new(), Netns::new(), Cgroup::new());
    let pod_inode = pod_ns.inode();
    let agent = Agent::start_json(&agent_ns, &cg, &["--threshold", "1MiB"]);

    // The "pod": a server in the cgroup and its attacker, both in the pod's namespace.
    let Pod { mut server, mut attacker, remote, .. } = Pod::new(&pod_ns, &cg);
    assert!(server.num("write 0 2000000") > 0);

    // Seen from the agent's namespace, with the pod's namespace.
    let s = wait_for("the pod's socket in the snapshot", Duration::from_secs(10), || agent.socket_to(&remote));
    assert_eq!(field(&s, "netns"), pod_inode, "{s}");
    assert_eq!(field(&s, "cgroup_id"), cg.id());
    // Namespaces that hold tracked sockets: the pod's only (the agent's own holds none).
    assert_eq!(field(&agent.status()["sockets"], "network_namespaces"), 1);

    agent.wait_destroyed(&remote);
    assert_eq!(server.num("soerror 0"), ECONNABORTED, "the pod's server sees ECONNABORTED");
    assert_eq!(attacker.num("soerror 0"), ECONNRESET, "the attacker gets an RST");
    assert!(agent.events_of("destroy_failed").is_empty());
}
