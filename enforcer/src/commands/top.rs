//! `enforcer top`: a live view like bcc's tcptop. It runs the agent's own policy code on fresh
//! snapshots with the settings the agent recorded, so "offender" means what the agent means.
use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    time::Instant,
};

use anyhow::Result;

use crate::{
    cli::TopArgs,
    pins::PinDir,
    policy::{self, Seen, Tick},
    settings, sys,
    view::{Socket, human_bytes, human_ms},
};

pub async fn run(args: TopArgs) -> Result<()> {
    sys::require_root("enforcer top")?;
    let pins = PinDir::open(&args.pins.pin_dir)?;
    let recorded = pins.recorded_settings();
    let (rule, source) = settings::rule_from_recorded(&recorded)?;
    let tty = std::io::stdout().is_terminal();
    let epoch = Instant::now();
    let (mut prev, mut prev_ms): (HashMap<u64, Seen>, u64) = (HashMap::new(), 0);
    let mut ticker = tokio::time::interval(args.interval);
    for round in 0.. {
        if args.iterations.is_some_and(|n| round >= n) {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {}
        }
        let sockets: Vec<Socket> = pins.snapshot()?.iter().map(Socket::in_netns).collect();
        let pressure = source.read(&sockets)?;
        let now_ms = epoch.elapsed().as_millis() as u64;
        let tick = Tick { now_ms, elapsed_ms: now_ms - prev_ms };
        let verdict = policy::decide(&rule, &sockets, &prev, tick, pressure);
        let shares = policy::fair_shares(rule.fairness, &sockets, rule.threshold);
        let chosen: HashMap<u64, &'static str> =
            verdict.decisions.iter().map(|d| (d.socket.cookie, d.reason.as_str())).collect();

        let mut rows: Vec<(usize, &Socket)> = sockets.iter().enumerate().collect();
        rows.sort_by_key(|(_, s)| std::cmp::Reverse(s.send_queue));
        let mut out = std::io::stdout().lock();
        if tty {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        let state = if pressure > rule.threshold { "OVER" } else { "under" };
        writeln!(
            out,
            "enforcer top  pressure {} {state} threshold {} ({})  {} sockets, {} chosen now{}",
            human_bytes(pressure),
            human_bytes(rule.threshold),
            source.name(),
            sockets.len(),
            chosen.len(),
            if recorded["dry_run"] == true { " (agent in dry run)" } else { "" }
        )?;
        writeln!(
            out,
            "{:<22}  {:<22}  {:>9}  {:>9}  {:>8}  {:>9}  {:<10}",
            "LOCAL", "REMOTE", "SEND-Q", "SHARE", "STALLED", "DRAIN", "CHOSEN"
        )?;
        for (i, s) in rows.into_iter().take(args.limit) {
            let seen = prev.get(&s.cookie);
            let drain = policy::drain_estimate_ms(s, seen, tick.elapsed_ms).map(human_ms).unwrap_or_else(|| "-".into());
            writeln!(
                out,
                "{:<22}  {:<22}  {:>9}  {:>9}  {:>8}  {:>9}  {:<10}",
                s.local.to_string(),
                s.remote.to_string(),
                human_bytes(s.send_queue),
                human_bytes(shares.get(i).copied().unwrap_or(0)),
                human_ms(policy::stalled_ms(s, seen, tick)),
                drain,
                chosen.get(&s.cookie).copied().unwrap_or("")
            )?;
        }
        if !tty {
            writeln!(out)?;
        }
        out.flush()?;
        prev = sockets.iter().map(|s| (s.cookie, policy::next_seen(s, prev.get(&s.cookie), prev_ms))).collect();
        prev_ms = now_ms;
    }
    Ok(())
}
