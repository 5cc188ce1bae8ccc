//! Restarts and concurrent agents against the real kernel. Run as root, one at a time.

use std::{path::PathBuf, process::Stdio, time::Duration};

use enforcer_tests::{
    Agent, Cgroup, ECONNABORTED, Netns, Reaped, Scratch, connected_pair, field,
    kernel::still_loaded,
    process::{COMMAND_LIMIT, wait_exit},
    unique, wait_for,
};

#[test]
fn sigkill_and_restart_leaks_nothing_and_enforcement_goes_on() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("enforcer-test"));
    // The first agent would wait 30 s before calling anything stalled.
    let mut first = Agent::start_at(&ns, &cg, pin_dir.clone(), &["--threshold", "1MiB", "--stall", "30s"]);
    // Its own programs, by id (another agent on this host has others).
    let first_programs = wait_for("the first agent's programs", Duration::from_secs(10), || {
        let held = first.programs();
        (held.len() >= 4).then_some(held)
    });
    let (mut server, _client) = connected_pair(&ns, &cg, "127.0.0.1:9000", 4096);
    assert!(server.num("write 0 2000000") > 0);
    wait_for("the first agent to track the attacker", Duration::from_secs(10), || {
        (first.sockets().len() == 1).then_some(())
    });

    first.sigkill();
    assert!(pin_dir.join("info").exists(), "a killed agent cannot remove its pins");

    // A new agent on the same pins: the stale ones go, the attacker is adopted and destroyed.
    let mut second =
        Agent::start_at(&ns, &cg, pin_dir.clone(), &["--log-format", "json", "--threshold", "1MiB", "--stall", "1s"]);
    assert!(second.log_text().contains("removing stale pins"), "{}", second.log_text());
    wait_for("the attacker to be destroyed after the restart", Duration::from_secs(20), || {
        (!second.events_of("destroyed").is_empty()).then_some(())
    });
    assert_eq!(server.num("soerror 0"), ECONNABORTED, "the server's socket should be aborted");
    // The first agent's programs are gone (its pinned links held them past the kill): nothing
    // is attached twice, and the second holds as many as the first did.
    wait_for("the first agent's programs to be unloaded", Duration::from_secs(10), || {
        still_loaded(&first_programs).is_empty().then_some(())
    });
    let second_programs = second.programs();
    assert_eq!(second_programs.len(), first_programs.len(), "{first_programs:?} then {second_programs:?}");
    assert!(second.stop().success());
    assert!(!pin_dir.exists());
    wait_for("every program of the second agent to be unloaded", Duration::from_secs(10), || {
        still_loaded(&second_programs).is_empty().then_some(())
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
    let agent = Agent::start(&ns, &cg, &["--inject-fault", "sockops"]);
    let (mut server, mut client) = connected_pair(&ns, &cg, "127.0.0.1:9000", 0);
    client.cmd("read-loop 0 65536 1");
    // The failing sock_ops leaves the socket unrecorded; the agent sees the error count grow
    // and runs adoption again, which records it; the walks keep its progress from then on.
    wait_for("adoption to record the connection", Duration::from_secs(10), || {
        (agent.sockets().len() == 1).then_some(())
    });
    for _ in 0..20 {
        assert!(server.num("write 0 100000") > 0);
        wait_for("the data to be acknowledged", Duration::from_secs(10), || (server.num("outq 0") == 0).then_some(()));
    }
    assert_eq!(server.num("soerror 0"), 0);
    let counters = &agent.status()["counters"];
    assert!(field(counters, "err_sockops") >= 1, "{counters}");
    assert_eq!(field(counters, "tracked"), 0, "{counters}");
}

#[test]
fn kernel_programs_log_into_the_agent_log() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &["--log-format", "json", "--inject-fault", "sockops"]);
    let (_server, mut client) = connected_pair(&ns, &cg, "127.0.0.1:9000", 0);
    // The kernel programs write through aya-log; the agent forwards each line into its own log,
    // with the program's name as target.
    let kernel_line = |program: &str| {
        agent
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["target"] == program)
    };
    let fault = wait_for("sock_ops's line about its injected fault", Duration::from_secs(10), || {
        kernel_line("enforcer_sockops")
    });
    assert_eq!(fault["level"], "WARN", "{fault}");
    assert!(fault["message"].as_str().unwrap().starts_with("injected fault (--inject-fault sockops)"), "{fault}");
    // The connection sock_ops failed to record is adopted, and adoption says so.
    let adopted = wait_for("adoption's line", Duration::from_secs(10), || kernel_line("enforcer_adopt"));
    let client_addr = client.cmd("addr 0").split(' ').next().unwrap().to_owned();
    assert_eq!(adopted["level"], "INFO", "{adopted}");
    assert!(adopted["message"].as_str().unwrap().contains(&format!("remote {client_addr}")), "{adopted}");
}

#[test]
fn pins_are_root_only_and_a_foreign_layout_is_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &[]);
    let dir = std::fs::metadata(&agent.pin_dir).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    for e in std::fs::read_dir(&agent.pin_dir).unwrap() {
        let m = e.unwrap().metadata().unwrap();
        assert_eq!((m.mode() & 0o077, m.uid()), (0, 0), "a pin readable by others");
    }
    // A CLI of another layout reading these pins: simulate by changing the layout version the
    // agent recorded, and expect one clear line instead of garbage.
    let info = aya::maps::MapData::from_pin(agent.pin_dir.join("info")).unwrap();
    let mut info: aya::maps::Array<_, enforcer_common::AgentInfo> =
        aya::maps::Array::try_from(aya::maps::Map::Array(info)).unwrap();
    let mut v = info.get(&0, 0).unwrap();
    v.layout_version += 100;
    info.set(0, v, 0).unwrap();
    let out = agent.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another enforcer layout") && err.trim().lines().count() == 1, "{err}");
}

/// Runs `enforcer run` in a private mount namespace prepared by `setup` (shell commands), and
/// stops it (SIGTERM) once it says it attached; or lets it fail. Its exit status and log.
fn run_in_mount_ns(ns: &Netns, cg: &Cgroup, setup: &str, pin_dir: &str) -> (std::process::ExitStatus, String) {
    let scratch = Scratch::new("enforcer-agent");
    let log = scratch.path().join("agent.log");
    // `unshare` without --fork, `exec` and nsenter without --fork: the child is the agent.
    let child = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "{setup} && exec nsenter --net=/run/netns/{} {} run --cgroup {} --pin-dir {pin_dir} --interval 100ms --threshold 1GiB",
            ns.name,
            enforcer_tests::enforcer_bin().display(),
            cg.path.display()
        ))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut agent = Reaped(child);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    // Its start-up line, not a fixed time: attached (then stopped), or exited on its own.
    let exited =
        wait_for("the agent to attach or exit", Duration::from_secs(20), || match agent.0.try_wait().unwrap() {
            Some(status) => Some(Some(status)),
            None => text().contains("enforcer attached").then_some(None),
        });
    let status = exited.unwrap_or_else(|| {
        // SAFETY: signalling our own child by pid; it has not been reaped.
        unsafe { libc::kill(agent.0.id() as i32, libc::SIGTERM) };
        wait_exit(&mut agent.0, COMMAND_LIMIT)
            .unwrap_or_else(|| panic!("the agent did not exit within {COMMAND_LIMIT:?} of SIGTERM:\n{}", text()))
    });
    (status, text())
}

#[test]
fn bpffs_unmounted_is_mounted_and_read_only_is_one_clear_line() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let pin_dir = format!("/sys/fs/bpf/{}", unique("enforcer-test"));
    // Only in this private mount namespace: the host's bpffs is not touched.
    let (status, err) = run_in_mount_ns(&ns, &cg, "(umount /sys/fs/bpf 2>/dev/null; true)", &pin_dir);
    assert!(status.success(), "{err}");
    assert!(err.contains("mounted a bpf filesystem") && err.contains("enforcer detached"), "{err}");

    let (status, err) = run_in_mount_ns(&ns, &cg, "mount -o remount,bind,ro /sys/fs/bpf", &pin_dir);
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("Read-only file system") && err.trim().lines().count() == 1, "{err}");
    assert!(!std::path::Path::new(&pin_dir).exists());
}
