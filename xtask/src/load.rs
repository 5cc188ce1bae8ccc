//! `cargo xtask bench --only load`: 100,000 tracked sockets, in three phases with an agent each:
//! quiet (nothing over the threshold), 1,000 offenders to destroy among them, and 2,000
//! offenders held over the threshold by a dry run. Spread over several processes: the
//! per-process file limit here is 20,000.
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use enforcer_tests::{Agent, Cgroup, Netns, Peer, field, wait_for};

use crate::root;

const SERVERS: u16 = 6;
const PER_SERVER: usize = 16_700;
/// Destroyed in phase 2 (on server 0).
const OFFENDERS: usize = 1_000;
/// Held over the threshold in phase 3 (on server 1).
const HELD: usize = 2_000;
const INTERVAL_S: f64 = 1.0;
const STALL_S: f64 = 1.0;
/// Seconds of steady state each CPU figure is taken over.
const STEADY_S: u64 = 10;
/// The quiet phase's: while pressure is quiet the agent walks the sockets once a minute, so the
/// window holds one walk and the skipped intervals around it.
const QUIET_S: u64 = 65;

fn cpu_ms(pid: u32) -> f64 {
    crate::procstat::cpu_time(pid).as_secs_f64() * 1000.0
}

/// CPU per interval and RSS of `agent` over `seconds`.
fn steady(agent: &Agent, seconds: u64) -> Result<(f64, f64)> {
    let pid = agent.pid().context("agent pid")?;
    let (cpu0, t) = (cpu_ms(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(seconds));
    let per_interval = (cpu_ms(pid) - cpu0) / (t.elapsed().as_secs_f64() / INTERVAL_S);
    Ok((per_interval, crate::procstat::rss_mib(pid)))
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
    pub quiet: (f64, f64),
    pub destroyed: usize,
    pub others_destroyed: usize,
    pub seconds: f64,
    pub held: (f64, f64),
    pub held_reported: usize,
}

pub fn run() -> Result<Outcome> {
    let peer = root().join("target/release/tcp-peer");
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for i in 0..SERVERS {
        let mut server = Peer::start_bin(&peer, &ns, Some(&cg));
        server.cmd(&format!("listen 127.0.0.1:{}", 9000 + i));
        let mut client = Peer::start_bin(&peer, &ns, None);
        client.cmd(&format!("connect-many 127.0.0.1:{} {PER_SERVER}", 9000 + i));
        server.cmd(&format!("wait-accepted {PER_SERVER}"));
        servers.push(server);
        clients.push(client);
    }
    let mut attackers = Peer::start_bin(&peer, &ns, None);
    attackers.cmd(&format!("connect-many 127.0.0.1:9000 {OFFENDERS} 4096"));
    servers[0].cmd(&format!("wait-accepted {}", PER_SERVER + OFFENDERS));
    attackers.cmd(&format!("connect-many 127.0.0.1:9001 {HELD} 4096"));
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
        if queued < OFFENDERS as u64 * 100_000 {
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
        if queued < HELD as u64 * 100_000 {
            bail!("only {queued} bytes could be queued to the held offenders");
        }
        wait_for("the dry run to report every held offender", Duration::from_secs(30), || {
            (a.events_of("would_destroy").len() >= HELD).then_some(())
        });
        let held = steady(&a, STEADY_S)?;
        (held, a.events_of("would_destroy").len())
    };
    Ok(Outcome { tracked: total, quiet, destroyed, others_destroyed, seconds, held, held_reported })
}

pub fn table() -> Result<()> {
    eprintln!(
        "xtask: load: {} idle connections, {OFFENDERS} offenders to destroy, {HELD} held over the threshold",
        SERVERS as usize * PER_SERVER
    );
    let o = run()?;
    println!();
    println!("| phase | tracked sockets | agent CPU per 1 s interval (mean) | agent RSS | outcome |");
    println!("|---|---|---|---|---|");
    println!(
        "| quiet: nothing queued, threshold 1 GiB | {} | {:.2} ms (over {QUIET_S} s: one walk) | {:.0} MiB | - |",
        o.tracked, o.quiet.0, o.quiet.1
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
        "| {HELD} offenders held over the threshold (dry run) | {} | {:.1} ms (over {STEADY_S} s) | {:.0} MiB | {} would_destroy events |",
        o.tracked - o.destroyed as u64,
        o.held.0,
        o.held.1,
        o.held_reported
    );
    Ok(())
}
