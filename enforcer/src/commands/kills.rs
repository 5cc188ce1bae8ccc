//! `enforcer kills`: the agent's most recent decisions, newest first.
use std::io::Write;

use anyhow::{Context, Result};

use crate::{
    cli::KillsArgs,
    journal::{self, Kill},
    pins::PinDir,
    sys,
    units::{human_bytes, human_ms},
};

pub fn run(args: KillsArgs) -> Result<()> {
    sys::require_root("enforcer kills")?;
    let pins = PinDir::open(&args.pins.pin_dir)?;
    let mut kills: Vec<Kill> = journal::read(&pins)?.iter().map(Kill::from).collect();
    if let Some(n) = args.limit {
        kills.truncate(n);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &kills).context("writing JSON")?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24}  {:<14}  {:<22}  {:<22}  {:>9}  {:>9}  {:>9}  {:>8}  {:<19}  ERRNO",
        "TIME (UTC)", "EVENT", "LOCAL", "REMOTE", "CHARGED", "SEND-Q", "SHARE", "STALLED", "REASON"
    )?;
    for k in &kills {
        let time =
            humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(k.unix_ms));
        writeln!(
            out,
            "{:<24}  {:<14}  {:<22}  {:<22}  {:>9}  {:>9}  {:>9}  {:>8}  {:<19}  {}",
            time.to_string(),
            k.event,
            k.local.to_string(),
            k.remote.to_string(),
            human_bytes(k.charged),
            human_bytes(k.send_queue),
            human_bytes(k.fair_share),
            human_ms(k.stalled_ms),
            k.reason,
            k.errno
        )?;
    }
    if kills.is_empty() {
        writeln!(out, "(no decisions yet)")?;
    }
    Ok(())
}
