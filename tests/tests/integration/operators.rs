//! What an operator reads (issue 11): kills and sockets name the network namespace, the cgroup
//! path and the process of a socket; `sockets` and `kills` filter like ss and tcplife; `kills
//! --follow` streams decisions as JSON lines while they happen.

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use enforcer_tests::{Agent, Cgroup, Netns, Peer, Pod, Reaped, Setup, cgroup2_root, enforcer_bin, field, wait_for};
use serde_json::Value;

/// A cgroup's path as enforcer writes it: below the cgroup2 mount, from `/`.
fn cgroup_path(dir: &std::path::Path) -> String {
    format!("/{}", dir.strip_prefix(cgroup2_root()).unwrap().display())
}

#[test]
fn kills_and_sockets_name_namespace_cgroup_and_process() {
    names_namespace_cgroup_and_process(&[]);
}

/// The same where the kernel refuses the holders walk: attribution scans `/proc/PID/fd`.
#[test]
fn without_the_holders_walk_attribution_reads_proc() {
    names_namespace_cgroup_and_process(&["--inject-fault", "holders"]);
}

fn names_namespace_cgroup_and_process(extra: &[&str]) {
    let (agent_ns, pod_ns, cg) = (Netns::new(), Netns::new(), Cgroup::new());
    let agent = Agent::start_json(&agent_ns, &cg, &[&["--threshold", "1MiB"], extra].concat());
    // Which way attribution goes: the agent pins its holders walk for `sockets -p`, or not.
    let walks = extra.is_empty();
    assert_eq!(agent.pin_dir.join("holders").exists(), walks, "the holders pin");
    // A "pod": a server in the cgroup, in its own namespace, and an attacker next to it, with an
    // idle connection too.
    let Pod { mut server, mut attacker, listen, remote } = Pod::new(&pod_ns, &cg);
    let idle = attacker.cmd(&format!("connect {listen} 0")).split(' ').nth(1).unwrap().to_owned();
    server.cmd("wait-accepted 2");
    let (pod, path, pid) = (pod_ns.inode(), cgroup_path(&cg.path), u64::from(server.pid()));

    // sockets: every row names its cgroup's path; -p adds the holder.
    let rows = wait_for("both sockets tracked", Duration::from_secs(10), || {
        let rows = agent.sockets();
        (rows.len() == 2).then_some(rows)
    });
    for r in &rows {
        assert_eq!((field(r, "netns"), r["cgroup"].as_str()), (pod, Some(path.as_str())), "{r}");
        assert!(r["pid"].is_null(), "no process without -p: {r}");
    }
    let out = agent.cli(&["sockets", "--json", "-p"]);
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for r in &rows {
        assert_eq!((field(r, "pid"), r["comm"].as_str()), (pid, Some("tcp-peer")), "{r}");
    }
    let table = String::from_utf8(agent.cli(&["sockets", "-p"]).stdout).unwrap();
    assert!(table.contains(&path) && table.contains(&format!("{pid}/tcp-peer")), "{table}");

    assert!(server.num("write 0 2000000") > 0);
    let e = agent.wait_destroyed(&remote);
    // The log line: namespace, cgroup path, process, in fields and in the message.
    assert_eq!((field(&e, "netns"), field(&e, "cgroup_id")), (pod, cg.id()), "{e}");
    assert_eq!(
        (e["cgroup"].as_str(), field(&e, "pid"), e["comm"].as_str()),
        (Some(path.as_str()), pid, Some("tcp-peer"))
    );
    assert!(e["message"].as_str().unwrap().contains(&format!("tcp-peer pid {pid}, cgroup {path}")), "{e}");
    // The ring keeps the same.
    let kills: Vec<Value> = serde_json::from_slice(&agent.cli(&["kills", "--json"]).stdout).unwrap();
    let k = kills.iter().find(|k| k["remote"] == remote.as_str()).unwrap();
    assert_eq!((field(k, "netns"), field(k, "cgroup_id"), field(k, "pid")), (pod, cg.id(), pid), "{k}");
    assert_eq!((k["cgroup"].as_str(), k["comm"].as_str()), (Some(path.as_str()), Some("tcp-peer")), "{k}");
    let table = String::from_utf8(agent.cli(&["kills"]).stdout).unwrap();
    assert!(table.contains(&pod.to_string()) && table.contains(&format!("{pid}/tcp-peer")), "{table}");
    assert!(agent.tracks_remote(&idle));
}

#[test]
fn sockets_filters_include_and_exclude() {
    let mut s = Setup::new();
    let child = s.cg.child("child");
    let agent = s.agent(&[]);
    s.server.cmd("listen [::1]:9002");
    let a = s.connect(9000, 0, "127.0.0.1");
    let b = s.connect(9001, 0, "127.0.0.2");
    // IPv6, and a server in a cgroup below the watched one.
    s.clients.cmd("connect [::1]:9002 0");
    s.accepted += 1;
    s.server.cmd(&format!("wait-accepted {}", s.accepted));
    let mut below = Peer::start(&s.ns, Some(&child));
    below.cmd("listen 127.0.0.1:9003");
    s.clients.cmd("connect 127.0.0.1:9003 0");
    below.cmd("wait-accepted 1");
    // b's client closes: the server's end waits in CLOSE_WAIT.
    s.clients.cmd(&format!("close {}", b.client_id));
    wait_for("four sockets, one in CLOSE_WAIT", Duration::from_secs(10), || {
        let rows = agent.sockets();
        (rows.len() == 4 && rows.iter().any(|r| r["state"] == "CLOSE_WAIT")).then_some(())
    });

    let locals = |args: &[&str]| -> HashSet<String> {
        let rows = agent.cli_json(&[&["sockets", "--json"], args].concat());
        let rows = rows.as_array().unwrap();
        rows.iter().map(|r| r["local"].as_str().unwrap().rsplit(':').next().unwrap().to_owned()).collect()
    };
    let set = |ports: &[&str]| ports.iter().map(|p| (*p).to_owned()).collect::<HashSet<_>>();
    let ns = format!("/run/netns/{}", s.ns.name);
    let (child_path, a_port) = (child.path.display().to_string(), a.remote.rsplit(':').next().unwrap().to_owned());
    for (args, want) in [
        (vec![], set(&["9000", "9001", "9002", "9003"])),
        (vec!["-4"], set(&["9000", "9001", "9003"])),
        (vec!["-6"], set(&["9002"])),
        (vec!["--state", "close-wait"], set(&["9001"])),
        (vec!["--state", "established"], set(&["9000", "9002", "9003"])),
        (vec!["--sport", "9000", "--sport", "9003"], set(&["9000", "9003"])),
        (vec!["--dport", &a_port], set(&["9000"])),
        (vec!["--local", "127.0.0.1:9001"], set(&["9001"])),
        (vec!["--local", ":9002"], set(&["9002"])),
        (vec!["--remote", "127.0.0.2"], set(&["9001"])),
        (vec!["--remote", "127.0.0.2", "--remote", "::1"], set(&["9001", "9002"])),
        (vec!["--remote", &a.remote], set(&["9000"])),
        (vec!["--cgroup", &child_path], set(&["9003"])),
        (vec!["--cgroup", &cgroup_path(&child.path)], set(&["9003"])),
        (vec!["--cgroup", s.cg.path.to_str().unwrap()], set(&["9000", "9001", "9002", "9003"])),
        (vec!["--netns", &ns], set(&["9000", "9001", "9002", "9003"])),
        (vec!["--netns", "1"], set(&[])),
        (vec!["-4", "--sport", "9000", "--state", "close-wait"], set(&[])),
    ] {
        assert_eq!(locals(&args), want, "sockets {args:?}");
    }
    // A bad filter value is bad input: one line, exit 2.
    let out = agent.cli(&["sockets", "--state", "open"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = agent.cli(&["sockets", "--remote", "10.0.0.5/8"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("host bits"), "{out:?}");
}

#[test]
fn kills_filter_and_follow_streams_json_lines() {
    let mut s = Setup::new();
    let mut agent = s.agent(&["--threshold", "1MiB", "--stall", "1s"]);
    // Follow from before the first decision: every line must come from the stream.
    let mut follow = Reaped(
        s.ns.command(enforcer_bin())
            .args(["kills", "--follow", "--event", "destroyed", "--pin-dir"])
            .arg(&agent.pin_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, lines) = mpsc::channel::<Value>();
    let stdout = follow.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let next =
        |what: &str| lines.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no line for {what}"));

    let first = s.zero_window(9000, "127.0.0.1", 2 << 20);
    let k = next("the first attacker");
    assert_eq!((k["remote"].as_str(), k["event"].as_str()), (Some(first.remote.as_str()), Some("destroyed")), "{k}");
    assert_eq!(k["reason"], "stalled");
    // A second, later: a new line as it happens, and not the first one again.
    let second = s.zero_window(9001, "127.0.0.2", 2 << 20);
    let k = next("the second attacker");
    assert_eq!(k["remote"].as_str(), Some(second.remote.as_str()), "{k}");
    assert!(lines.recv_timeout(Duration::from_millis(800)).is_err(), "a decision was streamed twice");

    let remotes = |args: &[&str]| -> Vec<String> {
        let kills = agent.cli_json(&[&["kills", "--json"], args].concat());
        kills.as_array().unwrap().iter().map(|k| k["remote"].as_str().unwrap().to_owned()).collect()
    };
    let both = vec![second.remote.clone(), first.remote.clone()];
    assert_eq!(remotes(&[]), both);
    assert_eq!(remotes(&["--since", "1h", "--reason", "stalled", "--event", "destroyed"]), both);
    assert_eq!(remotes(&["--reason", "slow_drain", "--reason", "remote-cap"]), Vec::<String>::new());
    assert_eq!(remotes(&["--event", "would_destroy", "--event", "destroy_failed"]), Vec::<String>::new());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(remotes(&["--since", "1s"]), Vec::<String>::new());
    let bad = agent.cli(&["kills", "--reason", "bored"]);
    assert_eq!(bad.status.code(), Some(2));

    // The agent stops: the stream ends, saying why.
    agent.stop();
    let status = wait_for("kills --follow to end", Duration::from_secs(5), || follow.0.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut follow.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success() && err.contains("the agent stopped"), "{status}: {err}");
}
