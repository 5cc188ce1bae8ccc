//! The agent under test: `enforcer run` in a test namespace, attached to a test cgroup, its log
//! in a file; its CLI against its pins; the BPF programs it holds.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    thread,
    time::Duration,
};

use serde_json::Value;

use crate::{
    Cgroup, Netns, enforcer_bin, kernel,
    process::{COMMAND_LIMIT, output_within, wait_exit},
    stderr_note, unique, wait_for,
};

/// How long the agent may take to come up, and to exit after SIGTERM.
const START_LIMIT: Duration = Duration::from_secs(20);
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// A running `enforcer run` inside a test namespace, attached to a test cgroup.
pub struct Agent {
    child: Option<Child>,
    pub pin_dir: PathBuf,
    pub log: PathBuf,
    netns: String,
}

impl Agent {
    pub fn start(ns: &Netns, cg: &Cgroup, extra: &[&str]) -> Self {
        Self::start_at(ns, cg, PathBuf::from("/sys/fs/bpf").join(unique("enforcer-test")), extra)
    }

    /// Like `start`, logging JSON lines (which `events` reads), every 250 ms unless `flags`
    /// give an interval.
    pub fn start_json(ns: &Netns, cg: &Cgroup, flags: &[&str]) -> Self {
        let mut all = vec!["--log-format", "json"];
        if !flags.contains(&"--interval") {
            all.extend(["--interval", "250ms"]);
        }
        all.extend_from_slice(flags);
        Self::start(ns, cg, &all)
    }

    /// Runs `enforcer run` with its command line, without waiting for it to come up: for an
    /// agent that must refuse to start (one that starts after all is stopped at `COMMAND_LIMIT`).
    pub fn spawn_raw(ns: &Netns, cg: &Cgroup, pin_dir: &Path, extra: &[&str]) -> std::process::Output {
        let mut cmd = ns.command(enforcer_bin());
        cmd.arg("run").arg("--cgroup").arg(&cg.path).arg("--pin-dir").arg(pin_dir).args(extra);
        output_within(&mut cmd, COMMAND_LIMIT)
    }

    /// Like `start`, with the pin directory given (to restart on the same pins).
    pub fn start_at(ns: &Netns, cg: &Cgroup, pin_dir: PathBuf, extra: &[&str]) -> Self {
        Self::launch(ns.command(enforcer_bin()), ns, cg, pin_dir, extra)
    }

    /// Like `start`, with `program` (a wrapper that execs the agent, e.g. `seccomp-exec`)
    /// started in its place with `env`.
    pub fn start_wrapped(ns: &Netns, cg: &Cgroup, program: &Path, env: &[(&str, String)], extra: &[&str]) -> Self {
        let mut cmd = ns.command(program);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        Self::launch(cmd, ns, cg, PathBuf::from("/sys/fs/bpf").join(unique("enforcer-test")), extra)
    }

    fn launch(mut cmd: Command, ns: &Netns, cg: &Cgroup, pin_dir: PathBuf, extra: &[&str]) -> Self {
        let log = std::env::temp_dir().join(format!("{}.log", unique("enforcer-agent")));
        let logfile = std::fs::File::create(&log).unwrap();
        // Snapshots every 200 ms unless the test sets its own interval.
        let interval: &[&str] = if extra.contains(&"--interval") { &[] } else { &["--interval", "200ms"] };
        let child = cmd
            .arg("run")
            .args(interval)
            .arg("--cgroup")
            .arg(&cg.path)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .args(extra)
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .spawn()
            .unwrap();
        let mut agent = Self { child: Some(child), pin_dir, log, netns: ns.name.clone() };
        // Its own start-up line, not pins: a killed predecessor may have left pins behind.
        wait_for("the agent to attach", START_LIMIT, || {
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(Child::try_wait) {
                panic!("agent exited with {status} during start-up:\n{}", agent.log_text());
            }
            agent.log_text().contains("enforcer attached").then_some(())
        });
        agent
    }

    /// The agent's process id (nsenter execs it, so it is the child's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs an enforcer CLI command in the agent's namespace against its pins.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(enforcer_bin())
            .args(args)
            .arg("--pin-dir")
            .arg(&self.pin_dir);
        output_within(&mut cmd, COMMAND_LIMIT)
    }

    /// A CLI command's JSON output (`--json` among `args`); it must succeed.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(out.status.success(), "enforcer {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("enforcer {args:?} printed bad JSON ({e})"))
    }

    /// `enforcer sockets --json`.
    pub fn sockets(&self) -> Vec<Value> {
        match self.cli_json(&["sockets", "--json"]) {
            Value::Array(v) => v,
            other => panic!("sockets --json is not an array: {other}"),
        }
    }

    /// The tracked socket whose local address is `local`.
    pub fn socket(&self, local: &str) -> Value {
        let all = self.sockets();
        all.iter()
            .find(|s| s["local"] == local)
            .cloned()
            .unwrap_or_else(|| panic!("no tracked socket with local address {local} in {all:?}"))
    }

    /// The tracked socket whose remote address is `remote` (`ip:port`), if there is one.
    pub fn socket_to(&self, remote: &str) -> Option<Value> {
        self.sockets().into_iter().find(|s| s["remote"] == remote)
    }

    /// Whether a tracked socket has this remote address (`ip:port`).
    pub fn tracks_remote(&self, remote: &str) -> bool {
        self.socket_to(remote).is_some()
    }

    /// Decision events the agent logged (it must run with `--log-format json`): decisions and
    /// repeat offenders, not the episodes of pressure ([`Self::episodes`]).
    pub fn events(&self) -> Vec<Value> {
        self.all_events().filter(|v| !v["event"].as_str().is_some_and(|e| e.starts_with("episode_"))).collect()
    }

    /// `episode_started` and `episode_ended` lines.
    pub fn episodes(&self) -> Vec<Value> {
        self.all_events().filter(|v| v["event"].as_str().is_some_and(|e| e.starts_with("episode_"))).collect()
    }

    fn all_events(&self) -> impl Iterator<Item = Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("event").is_some())
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// Events of one kind (`destroyed`, `would_destroy`, `destroy_failed`).
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == kind).collect()
    }

    /// Waits for the `destroyed` event of the socket whose remote is `remote`, and returns it.
    pub fn wait_destroyed(&self, remote: &str) -> Value {
        wait_for(&format!("{remote} to be destroyed"), Duration::from_secs(20), || {
            self.events_of("destroyed").into_iter().find(|e| e["remote"] == remote)
        })
    }

    /// `enforcer status --json`.
    pub fn status(&self) -> Value {
        self.cli_json(&["status", "--json"])
    }

    /// The enforcer programs this agent holds (its own, not another agent's on the same host),
    /// by id, with their names (the kernel keeps 15 bytes of a name).
    pub fn programs(&self) -> BTreeMap<u32, String> {
        let pid = self.pid().expect("the agent is stopped");
        kernel::programs_held_by(pid).into_iter().filter(|(_, n)| n.starts_with("enforcer_")).collect()
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn sigkill(&mut self) {
        let mut child = self.child.take().expect("agent already stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then wait for a clean exit (at most `STOP_LIMIT`).
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("agent already stopped");
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = wait_exit(child, STOP_LIMIT)
            .unwrap_or_else(|| panic!("the agent did not exit within {STOP_LIMIT:?} of SIGTERM:\n{}", self.log_text()));
        self.child = None;
        status
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Gracefully first, so the agent removes its own pins; then by force.
            crate::process::terminate(&mut child);
        }
        // Whatever an agent that was killed left behind.
        drop(crate::PinDir(self.pin_dir.clone()));
        // A failing test shows the log (the harness prints it with the failure), then it goes too.
        if thread::panicking() {
            stderr_note(&format!("agent log:\n{}", self.log_text()));
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
