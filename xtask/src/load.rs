//! `cargo xtask bench --only load`: 100,000 tracked sockets, in three phases with an agent each:
//! quiet (nothing over the threshold), 1,000 offenders to destroy among them, and 2,000
//! offenders held over the threshold by a dry run. Spread over several processes: the
//! per-process file limit here is 20,000.
//!
//! The clients are in a second namespace behind a veth pair, as a server's clients are on other
//! hosts: the agent's namespace holds the server's 100,000 sockets, not their client ends too
//! (an `iter/tcp` walk visits every socket of the namespace, tracked or not).
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use enforcer_tests::{Agent, Cgroup, Netns, Peer, field, wait_for};

const SERVERS: u16 = 6;
const PER_SERVER: usize = 16_700;
/// Destroyed in phase 2 (on server 0).
const OFFENDERS: usize = 1_000;
/// Held over the threshold in phase 3 (on server 1).
const HELD: usize = 2_000;
const INTERVAL_S: f64 = 1.0;
const STALL_S: f64 = 1.0;
/// Seconds of steady state the held phase's CPU figure is taken over: three of the walks of every
/// socket that revisits come between (one every 10 s), so the mean holds them.
const STEADY_S: u64 = 30;
/// The quiet phase's: while pressure is quiet the agent walks the sockets once a minute, so the
/// window holds one walk and the skipped intervals around it.
const QUIET_S: u64 = 65;
/// What each offender must hold at least: far over its share (64 KiB / 100,000). Over a veth
/// (MSS 1448) the kernel sizes a send buffer for about 48 KiB of queue, not the 128 KiB written.
const MIN_QUEUED: u64 = 16 << 10;
/// The server's address on the veth; the clients connect from `CLIENT`.
const SERVER: &str = "10.77.0.1";
const CLIENT: &str = "10.77.0.2";

/// A namespace for the clients, linked to `ns` by a veth pair (`SERVER` ↔ `CLIENT`).
fn client_namespace(ns: &Netns) -> Result<Netns> {
    let clients = Netns::new();
    let ip = |args: &[&str]| -> Result<()> {
        let status = std::process::Command::new("ip").args(args).status().context("running ip")?;
        if !status.success() {
            bail!("ip {} failed", args.join(" "));
        }
        Ok(())
    };
    ip(&["-n", &ns.name, "link", "add", "load0", "type", "veth", "peer", "name", "load1", "netns", &clients.name])?;
    ip(&["-n", &ns.name, "addr", "add", &format!("{SERVER}/24"), "dev", "load0"])?;
    ip(&["-n", &clients.name, "addr", "add", &format!("{CLIENT}/24"), "dev", "load1"])?;
    ip(&["-n", &ns.name, "link", "set", "load0", "up"])?;
    ip(&["-n", &clients.name, "link", "set", "load1", "up"])?;
    Ok(clients)
}

/// CPU per interval (mean, worst) and RSS of `agent` over `seconds`.
fn steady(agent: &Agent, seconds: u64) -> Result<Steady> {
    let pid = agent.pid().context("agent pid")?;
    let interval = Duration::from_secs_f64(INTERVAL_S);
    let (mean, worst) = crate::procstat::cpu_ms_mean_and_worst(pid, Duration::from_secs(seconds), interval);
    Ok(Steady { mean, worst, rss: crate::procstat::rss_mib(pid) })
}

/// What an agent costs in a steady phase.
pub struct Steady {
    /// Milliseconds of CPU per interval: the mean and the worst interval.
    pub mean: f64,
    pub worst: f64,
    pub rss: f64,
}

/// An agent on `cg`, once it tracks `total` sockets.
fn agent(ns: &Netns, cg: &Cgroup, extra: &[&str], total: u64) -> Result<Agent> {
    let mut args = vec!["--log-format", "json", "--interval", "1s", "--stall", "1s", "--policy", "heffner"];
    args.extend_from_slice(extra);
    let agent = Agent::start(ns, cg, &args);
    let n = wait_for("every socket to be tracked", Duration::from_secs(120), || {
        let n = field(&agent.status()["sockets"], "tracked");
        (n >= total).then_some(n)
    });
    if n != total {
        bail!("{n} sockets tracked, {total} expected");
    }
    Ok(agent)
}

pub struct Outcome {
    pub tracked: u64,
    pub quiet: Steady,
    pub destroyed: usize,
    pub others_destroyed: usize,
    pub seconds: f64,
    pub held: Steady,
    pub held_reported: usize,
    /// `sockets --json` and `sockets --json -p` in seconds: with the holders walk, and through
    /// /proc.
    pub attribution: ((f64, f64), (f64, f64)),
}

pub fn run() -> Result<Outcome> {
    let peer = crate::target_dir().join("release/tcp-peer");
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let client_ns = client_namespace(&ns)?;
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for i in 0..SERVERS {
        let mut server = Peer::start_bin(&peer, &ns, Some(&cg));
        server.cmd(&format!("listen {SERVER}:{}", 9000 + i));
        let mut client = Peer::start_bin(&peer, &client_ns, None);
        client.cmd(&format!("connect-many {SERVER}:{} {PER_SERVER}", 9000 + i));
        server.cmd(&format!("wait-accepted {PER_SERVER}"));
        servers.push(server);
        clients.push(client);
    }
    let mut attackers = Peer::start_bin(&peer, &client_ns, None);
    attackers.cmd(&format!("connect-many {SERVER}:9000 {OFFENDERS} 4096"));
    servers[0].cmd(&format!("wait-accepted {}", PER_SERVER + OFFENDERS));
    attackers.cmd(&format!("connect-many {SERVER}:9001 {HELD} 4096"));
    servers[1].cmd(&format!("wait-accepted {}", PER_SERVER + HELD));
    let total = (SERVERS as usize * PER_SERVER + OFFENDERS + HELD) as u64;

    // 1. Quiet: nothing queued, a threshold far above.
    let quiet = {
        let a = agent(&ns, &cg, &["--threshold", "1GiB"], total)?;
        steady(&a, QUIET_S)?
    };

    // 2. 1,000 offenders among them, destroyed; nothing else.
    let (destroyed, others_destroyed, seconds) = {
        let a = agent(&ns, &cg, &["--threshold", "64KiB"], total)?;
        let t0 = SystemTime::now();
        let queued = servers[0].num(&format!("write-range {PER_SERVER} {OFFENDERS} 131072"));
        if queued < OFFENDERS as u64 * MIN_QUEUED {
            bail!("only {queued} bytes could be queued to the offenders");
        }
        let started = Instant::now();
        let events = loop {
            let events = a.events_of("destroyed");
            if events.len() >= OFFENDERS || started.elapsed() > Duration::from_secs(60) {
                break events;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let last = events
            .iter()
            .filter_map(|e| humantime::parse_rfc3339_weak(e["timestamp"].as_str()?.trim_end_matches('Z')).ok())
            .max()
            .context("no destroyed events")?;
        let others = events.iter().filter(|e| e["send_queue"].as_u64() == Some(0)).count();
        (events.len(), others, last.duration_since(t0).unwrap_or_default().as_secs_f64())
    };

    // 3. 2,000 offenders held over the threshold: a dry run judges them every interval.
    let (held, held_reported) = {
        let remaining = total - destroyed as u64;
        let a = agent(&ns, &cg, &["--threshold", "64KiB", "--dry-run"], remaining)?;
        let queued = servers[1].num(&format!("write-range {PER_SERVER} {HELD} 131072"));
        if queued < HELD as u64 * MIN_QUEUED {
            bail!("only {queued} bytes could be queued to the held offenders");
        }
        wait_for("the dry run to report every held offender", Duration::from_secs(30), || {
            (a.events_of("would_destroy").len() >= HELD).then_some(())
        });
        let held = steady(&a, STEADY_S)?;
        (held, a.events_of("would_destroy").len())
    };

    // 4. Attribution: every socket's holder, through the agent's holders walk and, with the
    // walk refused (an injected fault), through /proc/PID/fd.
    let remaining = total - destroyed as u64;
    let attribution = [&[][..], &["--inject-fault", "holders"][..]].map(|extra| -> Result<(f64, f64)> {
        let mut args = vec!["--threshold", "1GiB"];
        args.extend_from_slice(extra);
        let a = agent(&ns, &cg, &args, remaining)?;
        Ok((cli_seconds(&a, &["sockets", "--json"])?, cli_seconds(&a, &["sockets", "--json", "-p"])?))
    });
    let [walk, proc] = attribution;
    Ok(Outcome {
        tracked: total,
        quiet,
        destroyed,
        others_destroyed,
        seconds,
        held,
        held_reported,
        attribution: (walk?, proc?),
    })
}

/// Wall time of one `enforcer` CLI call against `agent`'s pins.
fn cli_seconds(agent: &Agent, args: &[&str]) -> Result<f64> {
    let t = Instant::now();
    let out = agent.cli(args);
    if !out.status.success() {
        bail!("enforcer {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

pub fn table() -> Result<()> {
    eprintln!(
        "xtask: load: {} idle connections, {OFFENDERS} offenders to destroy, {HELD} held over the threshold",
        SERVERS as usize * PER_SERVER
    );
    let o = run()?;
    println!();
    println!("| phase | tracked sockets | agent CPU per 1 s interval: mean, worst | agent RSS | outcome |");
    println!("|---|---|---|---|---|");
    println!(
        "| quiet: nothing queued, threshold 1 GiB | {} | {:.2} ms, {:.1} ms (over {QUIET_S} s: one walk) | {:.0} MiB | - |",
        o.tracked, o.quiet.mean, o.quiet.worst, o.quiet.rss
    );
    println!(
        "| {OFFENDERS} zero-window offenders, threshold 64 KiB | {} | - | - | {} / {OFFENDERS} destroyed, {} others; queued → last destroyed {:.2} s ({:.1} intervals after the 1 s stall) |",
        o.tracked,
        o.destroyed,
        o.others_destroyed,
        o.seconds,
        (o.seconds - STALL_S) / INTERVAL_S
    );
    println!(
        "| {HELD} offenders held over the threshold (dry run) | {} | {:.1} ms, {:.1} ms (over {STEADY_S} s) | {:.0} MiB | {} would_destroy events |",
        o.tracked - o.destroyed as u64,
        o.held.mean,
        o.held.worst,
        o.held.rss,
        o.held_reported
    );
    let ((walk, walk_p), (proc, proc_p)) = o.attribution;
    println!();
    println!(
        "| every socket's holder (`enforcer sockets --json -p`, {} sockets) | without -p | with -p | -p adds |",
        o.tracked - o.destroyed as u64
    );
    println!("|---|---|---|---|");
    println!("| holders walk (`iter/task_file`) | {walk:.2} s | {walk_p:.2} s | {:.2} s |", walk_p - walk);
    println!(
        "| walk refused (`--inject-fault holders`): sock_diag + `/proc/PID/fd` | {proc:.2} s | {proc_p:.2} s | {:.2} s |",
        proc_p - proc
    );
    Ok(())
}
