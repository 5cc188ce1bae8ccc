//! Boots a kernel and an initramfs in QEMU and streams the guest's console to our stdout, holding
//! back the marker lines the guest's `/init` prints for us (`ENFORCER-VM-…`).
use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Every line the guest's `/init` prints for xtask starts with this.
pub const MARK: &str = "ENFORCER-VM-";

/// Guest memory and CPUs: 2 GiB holds the initramfs (about 100 MB) and the tests' queues.
const MEMORY: &str = "2048";
const CPUS: &str = "2";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG (emulation)",
        }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }

    /// How long the guest may take to reach `/init`.
    fn boot_limit(self) -> Duration {
        match self {
            Accel::Kvm => Duration::from_secs(15),
            Accel::Tcg => Duration::from_secs(180),
        }
    }
}

/// What the guest reported.
#[derive(Default)]
pub struct Outcome {
    /// `uname -r` in the guest, once `/init` runs.
    pub booted: Option<String>,
    /// Each topic's name and the exit status of its run, in order.
    pub results: Vec<(String, i32)>,
    /// `/init` got to its end.
    pub done: bool,
    /// Summed from the harness's `test result:` lines.
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// Runs the guest under KVM when `/dev/kvm` can be opened and KVM gets it to `/init`, else under
/// TCG. `limit` bounds the whole run.
pub fn boot(vmlinuz: &Path, initrd: &Path, limit: Duration) -> Result<(Accel, Outcome)> {
    let kvm = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if kvm {
        match run(Accel::Kvm, vmlinuz, initrd, limit)? {
            Run::Booted(outcome) => return Ok((Accel::Kvm, outcome)),
            Run::NoBoot(why) => eprintln!("xtask: KVM did not boot the guest ({why}); running it under TCG instead"),
        }
    } else {
        eprintln!("xtask: /dev/kvm cannot be opened: running the guest under TCG (emulation, slower)");
    }
    match run(Accel::Tcg, vmlinuz, initrd, limit)? {
        Run::Booted(outcome) => Ok((Accel::Tcg, outcome)),
        Run::NoBoot(why) => bail!("the guest did not boot under TCG either: {why}"),
    }
}

enum Run {
    Booted(Outcome),
    /// The guest never reached `/init`, and why.
    NoBoot(String),
}

enum Event {
    Out(Vec<u8>),
    Err(String),
    OutClosed,
}

fn run(accel: Accel, vmlinuz: &Path, initrd: &Path, limit: Duration) -> Result<Run> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(accel.args())
        .args(["-smp", CPUS, "-m", MEMORY])
        // No display, no network card (and so no option ROM to find), the serial port on stdio.
        .args(["-display", "none", "-monitor", "none", "-serial", "stdio", "-nic", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1 and -no-reboot: a guest that panics ends QEMU instead of hanging.
        .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off random.trust_cpu=on"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("xtask: $ {}", crate::show(&cmd));
    let mut child = cmd.spawn().context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel();
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let out_tx = tx.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || out_tx.send(Event::Out(buf[..n].to_vec())).is_err() {
                break;
            }
        }
        let _ = out_tx.send(Event::OutClosed);
    });
    let stderr = child.stderr.take().context("qemu stderr")?;
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(Event::Err(line + "\n")).is_err() {
                break;
            }
        }
    });

    let started = Instant::now();
    let mut console = Console::default();
    let mut errors = String::new();
    let mut closed = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Event::Out(bytes)) => console.feed(&bytes),
            Ok(Event::Err(text)) => errors.push_str(&text),
            Ok(Event::OutClosed) => closed = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
        }
        // QEMU reports a KVM failure on stderr and then waits, paused, forever.
        if console.outcome.booted.is_none()
            && accel == Accel::Kvm
            && (errors.contains("KVM internal error") || errors.contains("failed to set MSR"))
        {
            stop(&mut child);
            return Ok(Run::NoBoot(first_line(&errors)));
        }
        if closed {
            let status = child.wait().context("waiting for qemu")?;
            // Whatever stderr still had.
            while let Ok(event) = rx.recv_timeout(Duration::from_secs(1)) {
                if let Event::Err(text) = event {
                    errors.push_str(&text);
                }
            }
            console.finish();
            if console.outcome.booted.is_none() {
                return Ok(Run::NoBoot(format!("qemu exited with {status}: {}", first_line(&errors))));
            }
            if !errors.trim().is_empty() && !console.outcome.done {
                eprintln!("xtask: qemu: {}", errors.trim());
            }
            return Ok(Run::Booted(console.outcome));
        }
        let elapsed = started.elapsed();
        if console.outcome.booted.is_none() && elapsed > accel.boot_limit() {
            stop(&mut child);
            let why = if errors.trim().is_empty() { "no output".to_owned() } else { first_line(&errors) };
            return Ok(Run::NoBoot(format!("not at /init after {:?}: {why}", accel.boot_limit())));
        }
        if elapsed > limit {
            stop(&mut child);
            console.finish();
            eprintln!("xtask: the guest ran longer than {limit:?}: stopped it");
            return Ok(Run::Booted(console.outcome));
        }
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn first_line(text: &str) -> String {
    text.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_owned()
}

/// Passes the console through as it arrives (a test's `test name ... ` shows before its `ok`),
/// except lines that start with `MARK`, which it parses.
#[derive(Default)]
struct Console {
    line: Vec<u8>,
    /// How much of `line` has been written out.
    shown: usize,
    outcome: Outcome,
}

impl Console {
    fn feed(&mut self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        for &b in bytes {
            match b {
                b'\r' => {}
                b'\n' => {
                    let line = String::from_utf8_lossy(&self.line).into_owned();
                    if let Some(marker) = line.strip_prefix(MARK) {
                        self.marker(marker);
                    } else {
                        let _ = out.write_all(&self.line[self.shown..]);
                        let _ = out.write_all(b"\n");
                        self.count(&line);
                    }
                    self.line.clear();
                    self.shown = 0;
                }
                _ => self.line.push(b),
            }
        }
        // What cannot become a marker any more is shown now.
        let could_be_marker = self.line.starts_with(MARK.as_bytes()) || MARK.as_bytes().starts_with(&self.line);
        if !could_be_marker {
            let _ = out.write_all(&self.line[self.shown..]);
            self.shown = self.line.len();
        }
        let _ = out.flush();
    }

    fn finish(&mut self) {
        if !self.line.is_empty() {
            self.feed(b"\n");
        }
    }

    fn marker(&mut self, m: &str) {
        let mut words = m.split_whitespace();
        match words.next() {
            Some("BOOT") => self.outcome.booted = Some(words.collect::<Vec<_>>().join(" ")),
            Some("RESULT") => {
                if let (Some(name), Some(status)) = (words.next(), words.next().and_then(|s| s.parse().ok())) {
                    self.outcome.results.push((name.to_owned(), status));
                }
            }
            Some("DONE") => self.outcome.done = true,
            _ => {}
        }
    }

    /// `test result: ok. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; …`
    fn count(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else { return };
        for part in rest.split(';') {
            let mut w = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (w.next(), w.next().and_then(|n| n.parse::<u64>().ok())) else { continue };
            match what {
                "passed" => self.outcome.passed += n,
                "failed" => self.outcome.failed += n,
                "ignored" => self.outcome.ignored += n,
                _ => {}
            }
        }
    }
}
