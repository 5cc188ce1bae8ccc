//! `enforcer kills`: the agent's most recent decisions, newest first, filtered like tcplife;
//! or, with `--follow`, a stream of them as JSON lines.
use std::{io::Write, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    cli::KillsArgs,
    filter::KillFilter,
    journal::{self, Follower, Kill},
    pins::PinDir,
    sys,
    units::{human_bytes, human_ms},
};

/// How often `--follow` looks at the ring: well under the agent's usual interval.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub async fn run(args: KillsArgs) -> Result<()> {
    sys::require_root("enforcer kills")?;
    let pins = PinDir::open(&args.pins.pin_dir)?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let filter = KillFilter {
        since_unix_ms: args.since.map(|d| now_ms.saturating_sub(d.as_millis() as u64)),
        events: args.event.iter().map(|e| e.name()).collect(),
        reasons: args.reason,
    };
    if args.follow {
        return follow(&pins, &args.pins.pin_dir, &filter, args.limit).await;
    }
    let mut kills: Vec<Kill> = journal::read(&pins)?.iter().map(Kill::from).filter(|k| filter.matches(k)).collect();
    if let Some(n) = args.limit {
        kills.truncate(n);
    }
    // Buffered, as in `sockets`: stdout is line-buffered.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        serde_json::to_writer_pretty(&mut out, &kills).context("writing JSON")?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &kills)?;
    }
    out.flush()?;
    Ok(())
}

/// The kept decisions that pass (the newest `limit` of them), then each new one as it comes:
/// one JSON object a line, flushed at once, for `jq` and log shippers.
async fn follow(pins: &PinDir, dir: &std::path::Path, filter: &KillFilter, limit: Option<usize>) -> Result<()> {
    let mut reader = Follower::open(pins)?;
    let mut first = true;
    let mut ticker = tokio::time::interval(FOLLOW_POLL);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = ticker.tick() => {}
        }
        // The agent removes its pins when it stops; the maps we hold would never grow again.
        if PinDir::open(dir).is_err() {
            bail!("the agent stopped (its pins in {} are gone)", dir.display());
        }
        let (records, lost) = reader.poll()?;
        if lost > 0 {
            tracing::warn!(lost, "decisions came faster than they were read; the ring overwrote some");
        }
        let mut kills: Vec<Kill> = records.iter().map(Kill::from).filter(|k| filter.matches(k)).collect();
        if std::mem::take(&mut first)
            && let Some(n) = limit
        {
            kills.drain(..kills.len().saturating_sub(n));
        }
        let mut out = std::io::stdout().lock();
        for k in &kills {
            serde_json::to_writer(&mut out, k).context("writing JSON")?;
            // A reader that went away (`| head`) ends the stream.
            if writeln!(out).and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }
}

fn print_table(out: &mut impl Write, kills: &[Kill]) -> Result<()> {
    writeln!(
        out,
        "{:<24}  {:<14}  {:<22}  {:<22}  {:>9}  {:>9}  {:>9}  {:>8}  {:<19}  {:<7}  {:>10}  {:<20}  CGROUP",
        "TIME (UTC)",
        "EVENT",
        "LOCAL",
        "REMOTE",
        "CHARGED",
        "SEND-Q",
        "SHARE",
        "STALLED",
        "REASON",
        "ERRNO",
        "NETNS",
        "PROCESS"
    )?;
    for k in kills {
        let time =
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(k.unix_ms));
        let process = match (k.pid, &k.comm) {
            (Some(pid), Some(comm)) => format!("{pid}/{comm}"),
            _ => "-".to_owned(),
        };
        writeln!(
            out,
            "{:<24}  {:<14}  {:<22}  {:<22}  {:>9}  {:>9}  {:>9}  {:>8}  {:<19}  {:<7}  {:>10}  {:<20}  {}",
            time.to_string(),
            k.event,
            k.local.to_string(),
            k.remote.to_string(),
            human_bytes(k.charged),
            human_bytes(k.send_queue),
            human_bytes(k.fair_share),
            human_ms(k.stalled_ms),
            k.reason,
            if k.errno.is_empty() { "-" } else { k.errno },
            k.netns,
            process,
            k.cgroup.as_deref().unwrap_or("-"),
        )?;
    }
    if kills.is_empty() {
        writeln!(out, "(no decisions yet)")?;
    }
    Ok(())
}
