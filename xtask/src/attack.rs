//! `cargo xtask bench --only attack`: time from attack start until every attacker is destroyed,
//! 2,000 zero-window attackers among 10,000 idle connections, enforcer against the same rule
//! done by hand with `ss -tni` and `ss -K`.
use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use enforcer_tests::{Agent, Cgroup, Netns, Peer};

const PORT: u16 = 9000;
const IDLE: usize = 10_000;
const ATTACKERS: usize = 2_000;
const QUEUED: u64 = 128 * 1024;
/// Below one attacker's queue, so the rule holds until the last attacker is gone (with a higher
/// threshold both tools rightly stop once the pressure is back under it).
const THRESHOLD: u64 = 64 << 10;

fn peer_bin() -> PathBuf {
    // Checked fresh by `bench::run` before any part runs.
    crate::target_dir().join("release/tcp-peer")
}

/// A namespace with IDLE idle connections and ATTACKERS zero-window ones to a server in `cg`;
/// the attackers' data is not queued yet. Server ids: idle 0.., attackers IDLE...
fn connections(ns: &Netns, cg: &Cgroup) -> (Peer, Peer, Peer) {
    let mut server = Peer::start_bin(&peer_bin(), ns, Some(cg));
    server.cmd(&format!("listen 127.0.0.1:{PORT}"));
    let mut idle = Peer::start_bin(&peer_bin(), ns, None);
    idle.cmd(&format!("connect-many 127.0.0.1:{PORT} {IDLE}"));
    server.cmd(&format!("wait-accepted {IDLE}"));
    let mut attackers = Peer::start_bin(&peer_bin(), ns, None);
    attackers.cmd(&format!("connect-many 127.0.0.1:{PORT} {ATTACKERS} 4096"));
    server.cmd(&format!("wait-accepted {}", IDLE + ATTACKERS));
    (server, idle, attackers)
}

fn attack(server: &mut Peer) -> Result<()> {
    let queued = server.num(&format!("write-range {IDLE} {ATTACKERS} {QUEUED}"));
    if queued < ATTACKERS as u64 * QUEUED * 9 / 10 {
        bail!("only {queued} bytes could be queued to the attackers");
    }
    Ok(())
}

pub struct Outcome {
    /// From the first write to the attackers until the last of them was destroyed.
    pub seconds: f64,
    /// From when every attacker's data was queued (the write returned: they all stall from
    /// there) until the last was destroyed. `None` for the `ss` scripts.
    pub after_queued: Option<f64>,
    /// The run hit its time limit before the rule was satisfied.
    pub stopped: bool,
    pub destroyed: usize,
    pub cpu_ms_per_interval: Option<f64>,
}

/// The agent's interval in this bench, in seconds.
const INTERVAL_S: f64 = 0.25;

/// The agent's CPU per 250 ms interval over `window`, with the bench's 12,000 connections and
/// nothing queued, against `threshold`.
pub fn quiet(threshold: &str, window: Duration) -> Result<f64> {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(&ns, &cg, &["--interval", "250ms", "--threshold", threshold]);
    let _connections = connections(&ns, &cg);
    let pid = agent.pid().context("agent pid")?;
    Ok(crate::procstat::cpu_ms_per_interval(pid, window, Duration::from_secs_f64(INTERVAL_S)))
}

pub fn enforcer() -> Result<Outcome> {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(
        &ns,
        &cg,
        &[
            "--log-format",
            "json",
            "--interval",
            "250ms",
            "--stall",
            "1s",
            "--threshold",
            "64KiB",
            "--policy",
            "heffner",
            "--max-kills",
            "5000",
        ],
    );
    let (mut server, _idle, _attackers) = connections(&ns, &cg);
    let pid = agent.pid().context("agent pid")?;
    let cpu0 = crate::procstat::cpu_time(pid);
    let (t0, started) = (SystemTime::now(), Instant::now());
    attack(&mut server)?;
    let queued = SystemTime::now();
    let limit = Duration::from_secs(60);
    let events = loop {
        let events = agent.events_of("destroyed");
        if events.len() >= ATTACKERS || started.elapsed() > limit {
            break events;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = started.elapsed();
    let cpu_ms = crate::procstat::cpu_time(pid).saturating_sub(cpu0).as_secs_f64() * 1000.0;
    let last = events
        .iter()
        .filter_map(|e| humantime::parse_rfc3339_weak(e["timestamp"].as_str()?.trim_end_matches('Z')).ok())
        .max()
        .context("no destroyed events")?;
    if events.iter().any(|e| e["send_queue"].as_u64() == Some(0)) {
        bail!("an idle connection was destroyed");
    }
    Ok(Outcome {
        stopped: events.len() < ATTACKERS,
        seconds: last.duration_since(t0).unwrap_or_default().as_secs_f64(),
        after_queued: Some(last.duration_since(queued).unwrap_or_default().as_secs_f64()),
        destroyed: events.len(),
        cpu_ms_per_interval: Some(cpu_ms / (wall.as_secs_f64() / INTERVAL_S)),
    })
}

/// One line of `ss -Htni`: the peer, the send queue, bytes acked.
fn ss_poll(ns: &Netns) -> Result<Vec<(String, u64, u64)>> {
    let out = ns
        .command("ss")
        .args(["-Htni", "state", "established", &format!("( sport = :{PORT} )")])
        .output()
        .context("running ss")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut entries: Vec<(String, u64, u64)> = Vec::new();
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) && cols.len() >= 4 {
            // Recv-Q Send-Q Local Peer (state omitted by the filter).
            entries.push((cols[3].to_owned(), cols[1].parse().unwrap_or(0), 0));
        } else if let Some(last) = entries.last_mut() {
            last.2 = cols.iter().find_map(|c| c.strip_prefix("bytes_acked:")).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    Ok(entries)
}

/// The 2006 rule as an operator scripts it today: poll `ss` every second, kill with `ss -K`,
/// `batch` sockets per `ss -K` call (1: one call per socket). Ends when the pressure is back under
/// the threshold (the rule is satisfied) or after `limit`.
pub fn ss_script(batch: usize, limit: Duration) -> Result<Outcome> {
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let (mut server, _idle, _attackers) = connections(&ns, &cg);
    let started = Instant::now();
    attack(&mut server)?;
    let mut prev: HashMap<String, u64> = HashMap::new();
    let mut destroyed = 0;
    // When the last `ss -K` returned: the relief is dated from the destroy that brought it, as
    // enforcer's is from its last destroy, not from the next poll that sees it (up to 1 s later).
    let mut last_destroy = None;
    loop {
        let poll_start = Instant::now();
        let entries = ss_poll(&ns)?;
        let total: u64 = entries.iter().map(|e| e.1).sum();
        if total <= THRESHOLD || started.elapsed() > limit {
            break;
        }
        let share = THRESHOLD / entries.len().max(1) as u64;
        if total > THRESHOLD {
            let offenders: Vec<&String> = entries
                .iter()
                .filter(|(peer, send_q, acked)| *send_q > share && prev.get(peer) == Some(acked))
                .map(|(peer, _, _)| peer)
                .collect();
            // Each `ss -K` call walks the whole socket table, so batching matters a lot.
            for chunk in offenders.chunks(batch) {
                if started.elapsed() > limit {
                    break;
                }
                let filter = chunk.iter().map(|p| format!("dst {p}")).collect::<Vec<_>>().join(" or ");
                let out = ns
                    .command("ss")
                    .args(["-K", "-Htn", &format!("( {filter} ) and sport = :{PORT}")])
                    .output()
                    .context("running ss -K")?;
                destroyed += String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("ESTAB")).count();
                last_destroy = Some(Instant::now());
            }
        }
        prev = entries.into_iter().map(|(p, _, a)| (p, a)).collect();
        std::thread::sleep(Duration::from_secs(1).saturating_sub(poll_start.elapsed()));
    }
    let stopped = started.elapsed() > limit;
    let ended = if stopped { Instant::now() } else { last_destroy.unwrap_or_else(Instant::now) };
    Ok(Outcome {
        seconds: ended.duration_since(started).as_secs_f64(),
        after_queued: None,
        stopped,
        destroyed,
        cpu_ms_per_interval: None,
    })
}
