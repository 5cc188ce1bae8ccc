//! `check-config` refuses exactly what `run` refuses, every flag is a config key, and one
//! cgroup takes one agent (issue 11, item 7).

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use enforcer_tests::{
    Agent, Cgroup, ConfigFile, Netns, PinDir, Reaped, Scratch, enforcer_bin,
    process::{COMMAND_LIMIT, output_within},
    unique, wait_for,
};

/// `enforcer run --config FILE` in the test namespace, expected to refuse at once. Were it to
/// start, it would watch the file's cgroup (the test's) from the test namespace, and is stopped.
fn run_refused(ns: &Netns, file: &Path) -> Output {
    let child = ns
        .command(enforcer_bin())
        .arg("run")
        .arg("--config")
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Reaped(child);
    let status = wait_for("run to refuse the config", Duration::from_secs(10), || running.0.try_wait().unwrap());
    let mut err = Vec::new();
    std::io::Read::read_to_end(&mut running.0.stderr.take().unwrap(), &mut err).unwrap();
    Output { status, stdout: Vec::new(), stderr: err }
}

#[test]
fn check_config_refuses_what_run_refuses() {
    let (ns, cg, pin_guard) = (Netns::new(), Cgroup::new(), PinDir::new());
    let pin_dir = pin_guard.path();
    let (cgroup, pins) = (cg.path.display().to_string(), pin_dir.display().to_string());
    let missing = cg.path.with_file_name(unique("enforcer-test-missing")).display().to_string();
    let not_bpffs = std::env::temp_dir().join(unique("enforcer-pins")).display().to_string();
    for (text, says) in [
        (format!("cgroup = \"{missing}\"\npin-dir = \"{pins}\""), "does not exist"),
        (format!("cgroup = \"{cgroup}\"\npin-dir = \"{pins}\"\nprotect-cgroup = [\"{missing}\"]"), "protect-cgroup"),
        (format!("cgroup = \"{cgroup}\"\npin-dir = \"{not_bpffs}\""), "not on a bpf filesystem"),
        (format!("cgroup = \"{cgroup}\"\npin-dir = \"/sys/fs/bpf/{}.d\"", unique("enforcer-test")), "'.'"),
        (format!("cgroup = \"{cgroup}\"\npin-dir = \"{pins}\"\nlog-format = \"yaml\""), "log-format"),
        (format!("cgroup = \"{cgroup}\"\npin_dir = \"{pins}\""), "did you mean `pin-dir`?"),
    ] {
        let file = ConfigFile::new(&text);
        let check = file.check();
        let run = run_refused(&ns, file.path());
        let (check_err, run_err) = (String::from_utf8_lossy(&check.stderr), String::from_utf8_lossy(&run.stderr));
        assert_eq!(check.status.code(), Some(2), "check-config accepted or failed otherwise:\n{text}\n{check_err}");
        assert_eq!(run.status.code(), Some(2), "run accepted or failed otherwise:\n{text}\n{run_err}");
        assert!(
            check_err.contains(says) && run_err.contains(says),
            "{text}\ncheck-config: {check_err}\nrun: {run_err}"
        );
        assert_eq!(check_err.lines().count(), 1, "{check_err}");
        assert!(!pin_dir.exists(), "a refused run pinned something");
    }
}

#[test]
fn pin_dir_and_log_format_are_config_keys() {
    let (ns, cg, pin_guard) = (Netns::new(), Cgroup::new(), PinDir::new());
    let pin_dir = pin_guard.path();
    let file = ConfigFile::new(&format!(
        "cgroup = \"{}\"\npin-dir = \"{}\"\nlog-format = \"json\"\ninterval = \"200ms\"\n",
        cg.path.display(),
        pin_dir.display()
    ));
    let check = file.check();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let scratch = Scratch::new("enforcer-agent");
    let log = scratch.path().join("agent.log");
    let child = ns
        .command(enforcer_bin())
        .arg("run")
        .arg("--config")
        .arg(file.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _running = Reaped(child);
    let text = wait_for("the agent to attach", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("enforcer attached").then_some(text)
    });
    // JSON lines, and pins where the file said.
    let attached = text.lines().find(|l| l.contains("enforcer attached")).unwrap();
    let v: serde_json::Value = serde_json::from_str(attached).unwrap_or_else(|e| panic!("not JSON ({e}): {attached}"));
    assert_eq!(v["pin_dir"].as_str(), Some(pin_dir.to_str().unwrap()), "{v}");
    assert!(pin_dir.join("info").exists());
    // The agent records the format it runs with.
    let status =
        output_within(ns.command(enforcer_bin()).args(["status", "--json", "--pin-dir"]).arg(pin_dir), COMMAND_LIMIT);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["settings"]["log_format"], "json", "{status}");
}

#[test]
fn a_second_agent_on_the_same_cgroup_is_refused() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let mut first = Agent::start(&ns, &cg, &[]);
    let pid = first.pid().unwrap();
    // Another pin directory: the first agent's lock is not in its way.
    let other = PathBuf::from("/sys/fs/bpf").join(unique("enforcer-test"));
    let out = Agent::spawn_raw(&ns, &cg, &other, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("another enforcer agent (pid {pid}) is running on cgroup")), "{err}");
    assert!(!other.exists(), "the refused agent pinned something");
    // A cgroup below is another cgroup: allowed. (Only the same one is refused.)
    let child = cg.child("child");
    drop(Agent::start_at(&ns, &child, other.clone(), &[]));
    // Once the first is gone, a new one starts.
    first.stop();
    drop(Agent::start_at(&ns, &cg, other, &[]));
    drop(child);
}
