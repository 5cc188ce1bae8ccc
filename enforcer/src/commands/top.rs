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
    policy::Judge,
    socket::Socket,
    sys,
    units::{human_bytes, human_ms},
};

pub async fn run(args: TopArgs) -> Result<()> {
    sys::require_root("enforcer top")?;
    let pins = PinDir::open(&args.pins.pin_dir)?;
    let settings = pins.settings();
    let source = settings.source();
    // A protected cgroup that is gone protects nothing.
    let rule = settings.policy(settings.protected_cgroup_ids().unwrap_or_default());
    let threshold = rule.threshold;
    let mut judge = Judge::new(rule);
    let tty = std::io::stdout().is_terminal();
    let epoch = Instant::now();
    let mut ticker = tokio::time::interval(args.interval);
    for round in 0.. {
        if args.iterations.is_some_and(|n| round >= n) {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {}
        }
        let sockets = pins.snapshot()?.sockets;
        let pressure = source.read(&sockets)?;
        let now_ms = epoch.elapsed().as_millis() as u64;
        let plan = judge.judge(&sockets, now_ms, pressure);
        let assessments = plan.assessments.clone();
        // What the agent would do with these sockets: every destroy succeeding.
        let chosen: HashMap<u64, &'static str> =
            plan.execute(usize::MAX, |_| true).acted.iter().map(|d| (d.socket.cookie, d.reason.as_str())).collect();

        let mut rows: Vec<(usize, &Socket)> = sockets.iter().enumerate().collect();
        rows.sort_by_key(|(_, s)| std::cmp::Reverse(s.charged));
        let mut out = std::io::stdout().lock();
        if tty {
            write!(out, "\x1b[2J\x1b[H")?;
        }
        let state = if pressure > threshold { "OVER" } else { "under" };
        writeln!(
            out,
            "enforcer top  pressure {} {state} threshold {} ({})  {} sockets, {} chosen now{}",
            human_bytes(pressure),
            human_bytes(threshold),
            source.name(),
            sockets.len(),
            chosen.len(),
            if settings.dry_run { " (agent in dry run)" } else { "" }
        )?;
        writeln!(
            out,
            "{:<22}  {:<22}  {:>9}  {:>9}  {:>9}  {:>8}  {:>9}  {:<19}",
            "LOCAL", "REMOTE", "CHARGED", "SEND-Q", "SHARE", "STALLED", "DRAIN", "CHOSEN"
        )?;
        for (i, s) in rows.into_iter().take(args.limit) {
            let a = assessments.get(i).copied().unwrap_or_default();
            writeln!(
                out,
                "{:<22}  {:<22}  {:>9}  {:>9}  {:>9}  {:>8}  {:>9}  {:<19}",
                s.local.to_string(),
                s.remote.to_string(),
                human_bytes(s.charged),
                human_bytes(s.send_queue),
                human_bytes(a.fair_share),
                human_ms(a.stalled_ms),
                a.drain_estimate_ms.map(human_ms).unwrap_or_else(|| "-".into()),
                chosen.get(&s.cookie).copied().unwrap_or("")
            )?;
        }
        if !tty {
            writeln!(out)?;
        }
        out.flush()?;
    }
    Ok(())
}
