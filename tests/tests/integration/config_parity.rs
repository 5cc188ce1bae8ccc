//! `check-config` refuses exactly what `run` refuses, every flag is a config key, and one
//! cgroup takes one agent (issue 11, item 7).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use enforcer_tests::{Agent, Cgroup, Netns, enforcer_bin, unique, wait_for};

/// A config file in the temp directory, removed on drop.
struct Config(PathBuf);

impl Config {
    fn new(text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.toml", unique("enforcer-config")));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }
}

impl Drop for Config {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A process killed and reaped on drop, and the pin directory it may have made removed.
struct Running(Child, PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Ok(entries) = std::fs::read_dir(&self.1) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.1);
    }
}

fn check_config(file: &Path) -> Output {
    Command::new(enforcer_bin()).arg("check-config").arg(file).output().unwrap()
}

/// `enforcer run --config FILE` in the test namespace, expected to refuse at once. Were it to
/// start, it would watch the file's cgroup (the test's) from the test namespace, and is stopped.
fn run_refused(ns: &Netns, file: &Path, pin_dir: &Path) -> Output {
    let child = ns
        .command(enforcer_bin())
        .arg("run")
        .arg("--config")
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child, pin_dir.to_owned());
    let status = wait_for("run to refuse the config", Duration::from_secs(10), || running.0.try_wait().unwrap());
    let mut err = Vec::new();
    std::io::Read::read_to_end(&mut running.0.stderr.take().unwrap(), &mut err).unwrap();
    Output { status, stdout: Vec::new(), stderr: err }
}

#[test]
fn check_config_refuses_what_run_refuses() {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("enforcer-test"));
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
        let file = Config::new(&text);
        let check = check_config(&file.0);
        let run = run_refused(&ns, &file.0, &pin_dir);
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
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("enforcer-test"));
    let file = Config::new(&format!(
        "cgroup = \"{}\"\npin-dir = \"{}\"\nlog-format = \"json\"\ninterval = \"200ms\"\n",
        cg.path.display(),
        pin_dir.display()
    ));
    let check = check_config(&file.0);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let log = std::env::temp_dir().join(format!("{}.log", unique("enforcer-agent")));
    let child = ns
        .command(enforcer_bin())
        .arg("run")
        .arg("--config")
        .arg(&file.0)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _running = Running(child, pin_dir.clone());
    let text = wait_for("the agent to attach", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("enforcer attached").then_some(text)
    });
    let _ = std::fs::remove_file(&log);
    // JSON lines, and pins where the file said.
    let attached = text.lines().find(|l| l.contains("enforcer attached")).unwrap();
    let v: serde_json::Value = serde_json::from_str(attached).unwrap_or_else(|e| panic!("not JSON ({e}): {attached}"));
    assert_eq!(v["pin_dir"].as_str(), Some(pin_dir.to_str().unwrap()), "{v}");
    assert!(pin_dir.join("info").exists());
    // The agent records the format it runs with.
    let status = ns.command(enforcer_bin()).args(["status", "--json", "--pin-dir"]).arg(&pin_dir).output().unwrap();
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
