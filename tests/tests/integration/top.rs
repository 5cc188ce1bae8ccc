//! `enforcer top` on a real terminal: tmux runs it in a pane against an agent in a test
//! namespace; the test reads the screen, presses sort keys and `q`, and checks the terminal
//! was given back (main screen, cooked mode).

use std::{process::Command, time::Duration};

use enforcer_tests::{Scratch, Setup, enforcer_bin, unique, wait_for};

/// A tmux server of its own (`-L NAME`), killed on drop with everything it runs.
struct Tmux {
    name: String,
    dir: Scratch,
}

impl Tmux {
    fn new() -> Self {
        Self { name: unique("enforcer-top"), dir: Scratch::new("enforcer-top") }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-L").arg(&self.name).args(args).output().unwrap();
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(name)).ok()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").arg("-L").arg(&self.name).arg("kill-server").output();
    }
}

/// The line of `screen` that shows remote `remote`.
fn line_of(screen: &str, remote: &str) -> usize {
    screen.lines().position(|l| l.contains(remote)).unwrap_or_else(|| panic!("{remote} not on screen:\n{screen}"))
}

#[test]
fn top_runs_on_a_terminal_sorts_and_quits_cleanly() {
    let mut s = Setup::new();
    let agent = s.agent(&[]);
    let big = s.zero_window(9000, "127.0.0.1", 1 << 20);
    let idle = s.connect(9001, 0, "127.0.0.2");
    wait_for("both sockets tracked", Duration::from_secs(10), || (agent.sockets().len() == 2).then_some(()));

    let tmux = Tmux::new();
    // After top exits, the shell records its status and the terminal's mode, then waits to
    // be killed with the server.
    let script = format!(
        "nsenter --net=/run/netns/{ns} -- {bin} top --pin-dir {pins} --interval 300ms; echo $? > {dir}/status; \
         stty -a > {dir}/stty; sleep 600",
        ns = s.ns.name,
        bin = enforcer_bin().display(),
        pins = agent.pin_dir.display(),
        dir = tmux.dir.path().display()
    );
    tmux.run(&["new-session", "-d", "-s", "top", "-x", "160", "-y", "30", "sh", "-c", &script]);

    let screen = wait_for("top to show both sockets", Duration::from_secs(10), || {
        let screen = tmux.screen();
        (screen.contains(&big.remote) && screen.contains(&idle.remote)).then_some(screen)
    });
    assert!(screen.contains("enforcer top  pressure") && screen.contains("2 sockets"), "{screen}");
    assert!(screen.contains("CHARGED▼") && screen.contains("q quit"), "{screen}");
    assert_eq!(tmux.run(&["display", "-p", "-t", "top", "#{alternate_on}"]).trim(), "1", "not on the alternate screen");
    // Sorted by charged memory: the backlog first.
    assert!(line_of(&screen, &big.remote) < line_of(&screen, &idle.remote), "{screen}");

    // A sort key moves the mark; the same key again reverses the order.
    tmux.run(&["send-keys", "-t", "top", "s"]);
    wait_for("the send-queue sort", Duration::from_secs(5), || tmux.screen().contains("SEND-Q▼").then_some(()));
    tmux.run(&["send-keys", "-t", "top", "s"]);
    let screen = wait_for("the reversed sort", Duration::from_secs(5), || {
        let screen = tmux.screen();
        screen.contains("SEND-Q▲").then_some(screen)
    });
    assert!(line_of(&screen, &idle.remote) < line_of(&screen, &big.remote), "{screen}");

    tmux.run(&["send-keys", "-t", "top", "q"]);
    // The shell creates the file before it writes to it: wait for what it wrote.
    let status =
        wait_for("top's exit status", Duration::from_secs(5), || tmux.file("status").filter(|t| !t.is_empty()));
    assert_eq!(status.trim(), "0", "top exited with {status}");
    // The terminal is back: main screen, cooked mode with echo, and the table gone from view.
    assert_eq!(tmux.run(&["display", "-p", "-t", "top", "#{alternate_on}"]).trim(), "0");
    let stty = wait_for("stty's report", Duration::from_secs(5), || tmux.file("stty").filter(|t| !t.is_empty()));
    let flags: Vec<&str> = stty.split_whitespace().collect();
    assert!(flags.contains(&"icanon") && flags.contains(&"echo"), "raw mode left on: {stty}");
    assert!(!tmux.screen().contains("q quit"), "{}", tmux.screen());
}

#[test]
fn top_json_is_one_view() {
    let mut s = Setup::new();
    let agent = s.agent(&[]);
    let c = s.connect(9000, 0, "127.0.0.1");
    wait_for("the socket tracked", Duration::from_secs(10), || agent.tracks_remote(&c.remote).then_some(()));
    let out = agent.cli(&["top", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["pressure"].is_u64() && v["threshold"].is_u64() && v["over"] == false, "{v}");
    let rows = v["sockets"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["remote"].as_str(), Some(c.remote.as_str()));
    assert!(rows[0]["chosen"].is_null() && rows[0]["fair_share"].is_u64(), "{v}");
    assert!(rows[0]["cgroup"].as_str().is_some_and(|p| p.starts_with('/')), "{v}");
}
