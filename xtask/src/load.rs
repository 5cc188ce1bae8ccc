//! `cargo xtask bench --only load`: 50,000 tracked sockets with a few hundred offenders among
//! them. Spread over several processes: the per-process file limit here is 20,000.
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use enforcer_tests::{Agent, Cgroup, Netns, Peer, field, wait_for};

use crate::root;

const SERVERS: u16 = 3;
const PER_SERVER: usize = 16_700;
const OFFENDERS: usize = 300;
const INTERVAL_S: f64 = 1.0;
const STALL_S: f64 = 1.0;

pub struct Outcome {
    pub tracked: u64,
    pub destroyed: usize,
    pub others_destroyed: usize,
    pub seconds: f64,
    pub cpu_ms_per_interval: f64,
    pub rss_mib: f64,
}

fn cpu_ms(pid: u32) -> f64 {
    crate::procstat::cpu_time(pid).as_secs_f64() * 1000.0
}

pub fn run() -> Result<Outcome> {
    let peer = root().join("target/release/tcp-peer");
    let (ns, cg) = (Netns::new(), Cgroup::new());
    let agent = Agent::start(
        &ns,
        &cg,
        &["--log-format", "json", "--interval", "1s", "--stall", "1s", "--threshold", "64KiB", "--policy", "heffner"],
    );
    let pid = agent.pid().context("agent pid")?;
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
    let total = (SERVERS as usize * PER_SERVER + OFFENDERS) as u64;
    let tracked = wait_for("every socket to be tracked", Duration::from_secs(60), || {
        let n = field(&agent.status()["sockets"], "tracked");
        (n == total).then_some(n)
    });

    // Steady state: 50,000 sockets, nothing to do but look.
    let (cpu0, t) = (cpu_ms(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let cpu_ms_per_interval = (cpu_ms(pid) - cpu0) / (t.elapsed().as_secs_f64() / INTERVAL_S);
    let rss = crate::procstat::rss_mib(pid);

    let t0 = SystemTime::now();
    let queued = servers[0].num(&format!("write-range {PER_SERVER} {OFFENDERS} 131072"));
    if queued < OFFENDERS as u64 * 100_000 {
        bail!("only {queued} bytes could be queued to the offenders");
    }
    let started = Instant::now();
    let events = loop {
        let events = agent.events_of("destroyed");
        if events.len() >= OFFENDERS || started.elapsed() > Duration::from_secs(30) {
            break events;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let last = events
        .iter()
        .filter_map(|e| humantime::parse_rfc3339_weak(e["timestamp"].as_str()?.trim_end_matches('Z')).ok())
        .max()
        .context("no destroyed events")?;
    Ok(Outcome {
        tracked,
        destroyed: events.len(),
        others_destroyed: events.iter().filter(|e| e["send_queue"].as_u64() == Some(0)).count(),
        seconds: last.duration_since(t0).unwrap_or_default().as_secs_f64(),
        cpu_ms_per_interval,
        rss_mib: rss,
    })
}

pub fn table() -> Result<()> {
    eprintln!("xtask: load: 50,100 idle connections and {OFFENDERS} offenders");
    let o = run()?;
    println!();
    println!(
        "| tracked sockets | offenders destroyed | other sockets destroyed | attack start → last destroyed | intervals after the 1 s stall | agent CPU per 1 s interval (steady) | agent RSS |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} / {OFFENDERS} | {} | {:.2} s | {:.1} | {:.0} ms | {:.0} MiB |",
        o.tracked,
        o.destroyed,
        o.others_destroyed,
        o.seconds,
        (o.seconds - STALL_S) / INTERVAL_S,
        o.cpu_ms_per_interval,
        o.rss_mib
    );
    Ok(())
}
