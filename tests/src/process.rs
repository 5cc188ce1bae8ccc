//! Child processes with deadlines and guards: a test that waits on a process fails with what it
//! waited for instead of hanging, and every process it started is stopped when it ends, also
//! when it panics.
use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

/// How long a one-shot command (the CLI, `ss`, an agent expected to refuse its start) may take.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// How long a stopped process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// SIGTERM, up to `GRACE` to exit, then SIGKILL; reaped either way.
pub fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + GRACE;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits up to `limit` for `child` to exit on its own; `None` if it is still running.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("waiting for pid {}: {e}", child.id())) {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to its end, as `Command::output` does, at most `limit`: past it, the process is
/// stopped and the test fails with the command and what it printed so far.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {shown}: {e}"));
    let (tx, rx) = mpsc::channel();
    for (i, mut pipe) in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .enumerate()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send((i, bytes));
        });
    }
    drop(tx);
    let start = Instant::now();
    let Some(status) = wait_exit(&mut child, limit) else {
        terminate(&mut child);
        let said: Vec<String> =
            rx.try_iter().map(|(_, b)| String::from_utf8_lossy(&b).into_owned()).filter(|s| !s.is_empty()).collect();
        panic!("{shown} did not finish within {limit:?}; it printed:\n{}", said.join("\n"));
    };
    // The pipes close when the process and whatever it left running close them.
    let mut out = Output { status, stdout: Vec::new(), stderr: Vec::new() };
    for _ in 0..2 {
        let left = limit.saturating_sub(start.elapsed()).max(Duration::from_secs(1));
        match rx.recv_timeout(left) {
            Ok((0, bytes)) => out.stdout = bytes,
            Ok((_, bytes)) => out.stderr = bytes,
            Err(_) => panic!("{shown} exited ({status}) but something it started still holds its output"),
        }
    }
    out
}

/// A child process stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

/// A pin directory on bpffs for an agent under test, with a name of its own; whatever is in it is
/// removed on drop (an agent that was killed, or that should have refused to start, leaves pins).
pub struct PinDir(pub PathBuf);

impl PinDir {
    /// A new name under /sys/fs/bpf; the directory is not created (the agent makes it).
    pub fn new() -> Self {
        Self(PathBuf::from("/sys/fs/bpf").join(crate::unique("enforcer-test")))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A scratch directory under the temp directory, removed with what it holds on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(crate::unique(prefix));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
