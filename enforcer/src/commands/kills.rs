//! `enforcer kills`: the agent's most recent decisions, newest first, filtered like tcplife;
//! or, with `--follow`, a stream of them as JSON lines.
use std::{io::Write, net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum, builder::PossibleValue};
use enforcer_common::KillRecord;
use serde::Serialize;

use super::{PinDirArg, any};
use crate::{
    bpf::{
        journal::{self, Event, Follower},
        pins::PinDir,
    },
    host::{sock_diag::errno_name, sys},
    model::{
        socket,
        units::{human_bytes, human_ms, parse_duration, unfixed},
    },
    policy::Reason,
};

#[derive(Debug, Args)]
#[command(after_long_help = KILLS_HELP)]
pub struct KillsArgs {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Show at most N decisions.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only decisions of the last DURATION (e.g. 10m, 2h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Only these events (repeatable).
    #[arg(long, value_enum, value_name = "EVENT")]
    pub event: Vec<Event>,
    /// Only decisions with this reason: stalled, slow_drain, stalled_under_share,
    /// repeat_offender, remote_cap (repeatable).
    #[arg(long, value_name = "REASON", value_parser = str::parse::<Reason>)]
    pub reason: Vec<Reason>,
    /// Print the kept decisions that pass the filters, oldest first, then every new one as the
    /// agent makes it: one JSON object per line, until interrupted or the agent stops.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

const KILLS_HELP: &str = "\
Each decision names the socket (4-tuple), its network namespace (inode), its cgroup's path and
the process that held it when it was judged (pid and comm; none for a socket its application
had already closed).

Examples:
  enforcer kills --since 1h --event destroyed
  enforcer kills --reason stalled --reason slow_drain --json
  enforcer kills --follow | jq -c 'select(.cgroup | startswith(\"/kubepods\"))'";

/// `--event`: the journal's own names (`would-destroy` works for `would_destroy`).
impl ValueEnum for Event {
    fn value_variants<'a>() -> &'a [Self] {
        &[Event::Destroyed, Event::WouldDestroy, Event::DestroyFailed]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let value = PossibleValue::new(self.as_str());
        Some(match self {
            Event::Destroyed => value,
            Event::WouldDestroy => value.help("A dry run's decision").alias("would-destroy"),
            Event::DestroyFailed => value.alias("destroy-failed"),
        })
    }
}

/// How often `--follow` looks at the ring: well under the agent's usual interval.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub async fn run(args: KillsArgs) -> Result<()> {
    sys::require_root("enforcer kills")?;
    let pins = PinDir::open(&args.pins.pin_dir)?;
    let now_ms = sys::unix_ms();
    let filter = KillFilter {
        since_unix_ms: args.since.map(|d| now_ms.saturating_sub(d.as_millis() as u64)),
        events: args.event,
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

/// A kept decision as `enforcer kills` shows it.
#[derive(Debug, Serialize)]
pub struct Kill {
    pub unix_ms: u64,
    pub event: &'static str,
    pub cookie: u64,
    #[serde(serialize_with = "socket::as_string")]
    pub local: SocketAddr,
    #[serde(serialize_with = "socket::as_string")]
    pub remote: SocketAddr,
    pub send_queue: u64,
    pub charged: u64,
    pub fair_share: u64,
    pub stalled_ms: u64,
    pub drain_estimate_ms: Option<u64>,
    pub pressure: u64,
    pub threshold: u64,
    pub reason: &'static str,
    pub error: i32,
    /// `ENOENT` and the like; empty when the destroy worked.
    pub errno: &'static str,
    /// Inode of the socket's network namespace.
    pub netns: u64,
    pub cgroup_id: u64,
    /// The cgroup's path below the cgroup2 mount, `None` if it was gone when judged.
    pub cgroup: Option<String>,
    /// A process holding the socket when it was judged, if one was found.
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

impl From<&KillRecord> for Kill {
    fn from(r: &KillRecord) -> Self {
        Self {
            unix_ms: r.unix_ms,
            event: Event::from_code(r.event).map_or("unknown", Event::as_str),
            cookie: r.cookie,
            local: socket::addr(r.family, r.local_addr, r.local_port),
            remote: socket::addr(r.family, r.remote_addr, r.remote_port),
            send_queue: r.send_queue,
            charged: r.charged,
            fair_share: r.fair_share,
            stalled_ms: r.stalled_ms,
            drain_estimate_ms: (r.drain_estimate_ms != u64::MAX).then_some(r.drain_estimate_ms),
            pressure: r.pressure,
            threshold: r.threshold,
            reason: Reason::from_code(r.reason).map_or("unknown", Reason::as_str),
            error: r.error,
            errno: errno_name(r.error),
            netns: r.netns,
            cgroup_id: r.cgroup_id,
            cgroup: Some(unfixed(&r.cgroup)).filter(|c| !c.is_empty()),
            pid: (r.pid != 0).then_some(r.pid),
            comm: (r.pid != 0).then(|| unfixed(&r.comm)),
        }
    }
}

/// Which decisions `enforcer kills` shows.
#[derive(Debug, Clone, Default)]
pub struct KillFilter {
    /// Decisions at or after this wall-clock time (ms since the epoch).
    pub since_unix_ms: Option<u64>,
    pub events: Vec<Event>,
    pub reasons: Vec<Reason>,
}

impl KillFilter {
    pub fn matches(&self, k: &Kill) -> bool {
        self.since_unix_ms.is_none_or(|t| k.unix_ms >= t)
            && any(&self.events, |e| e.as_str() == k.event)
            && any(&self.reasons, |r| r.as_str() == k.reason)
    }
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
