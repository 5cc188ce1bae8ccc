//! `enforcer top`: a live view like bcc's tcptop. It runs the agent's own policy code on fresh
//! snapshots with the settings the agent recorded, so "chosen" means what the agent means.
//! This file builds each view ([`View`]) and prints it as JSON or plain text; `tui.rs` draws it
//! on a terminal.
mod tui;

use std::{
    cmp::Reverse,
    collections::HashMap,
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::PinDirArg;
use crate::{
    bpf::{contained, pins::PinDir, snapshot::Snapshot},
    config::Settings,
    host::{pressure, sys},
    model::{
        socket::Socket,
        units::{human_bytes, human_ms, parse_duration},
    },
    observe::attribution::Attributor,
    policy::{
        Judge, Taken,
        fleet::{FleetDecision, FleetNets},
    },
};

#[derive(Debug, Args)]
#[command(after_long_help = TOP_HELP)]
pub struct TopArgs {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Refresh every DURATION.
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
    /// Show at most N sockets [default: as many as the window fits; 20 when not a terminal].
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// The column to sort by at start (keys change it).
    #[arg(long, value_enum, default_value_t = TopSort::Charged)]
    pub sort: TopSort,
    /// Print one view as JSON and exit: pressure, threshold and every socket with its share,
    /// stall, drain estimate and whether the rule chooses it now.
    #[arg(long)]
    pub json: bool,
    /// Stop after N refreshes (default: until q, Esc or Ctrl-C); when stdout is not a terminal
    /// the views are printed one after another as plain text.
    #[arg(long, value_name = "N")]
    pub iterations: Option<u64>,
}

const TOP_HELP: &str = "\
Keys: q or Esc quits; c sorts by charged memory, s by send queue, t by stalled time, d by drain
estimate, a by age; the same key again reverses the order.

Examples:
  enforcer top
  enforcer top --sort stalled --interval 500ms
  enforcer top --json | jq '.sockets[] | select(.chosen != null)'";

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TopSort {
    /// Most charged memory first.
    Charged,
    /// Largest send queue first.
    SendQueue,
    /// Longest stalled first.
    Stalled,
    /// Longest drain estimate first.
    Drain,
    /// Oldest record first (the age counts from when enforcer recorded the connection).
    Age,
}

/// One socket of a view.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    #[serde(flatten)]
    pub socket: Socket,
    /// The cgroup's path below the cgroup2 mount, if it still exists.
    pub cgroup: Option<String>,
    pub fair_share: u64,
    /// What the rule counts (bounded by what the snapshots saw), in ms.
    pub judged_stalled_ms: u64,
    /// How long it must stall to count as stalled: `--stall`, or longer on a slow path.
    pub stall_needed_ms: u64,
    pub drain_estimate_ms: Option<u64>,
    /// The reason the rule would destroy it now, if it would.
    pub chosen: Option<&'static str>,
}

/// What `top` shows at one refresh.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub pressure: u64,
    pub threshold: u64,
    /// Where pressure is read (`tracked`, `kernel`, `cgroup`).
    pub source: &'static str,
    pub over: bool,
    pub dry_run: bool,
    pub sockets: Vec<Row>,
}

impl View {
    pub fn chosen(&self) -> usize {
        self.sockets.iter().filter(|r| r.chosen.is_some()).count()
    }

    /// Sorts the rows by `key`, largest first (smallest first when `reverse`).
    pub fn sort(&mut self, key: TopSort, reverse: bool) {
        let k = |r: &Row| match key {
            TopSort::Charged => r.socket.charged,
            TopSort::SendQueue => r.socket.send_queue,
            TopSort::Stalled => r.judged_stalled_ms,
            TopSort::Drain => r.drain_estimate_ms.unwrap_or(0),
            TopSort::Age => r.socket.age_ms,
        };
        self.sockets.sort_by_key(|r| Reverse(k(r)));
        if reverse {
            self.sockets.reverse();
        }
    }
}

/// Takes views from a running agent's pins, judging each with the agent's rule.
pub struct Observer {
    pins: PinDir,
    settings: Settings,
    meter: pressure::Meter,
    judge: Judge,
    epoch: Instant,
    who: Attributor,
}

/// The networks CrowdSec decisions contain, from the agent's trie.
fn fleet_nets(pins: &PinDir) -> Result<FleetNets> {
    Ok(FleetNets::new(contained::read(pins)?.into_iter().filter_map(|c| {
        let label = c.crowdsec?;
        let (origin, scenario) = label.split_once('/').unwrap_or(("", label.as_str()));
        let d = FleetDecision {
            id: 0,
            origin: origin.into(),
            scenario: scenario.into(),
            kind: "".into(),
            until_unix_ms: c.crowdsec_until_unix_ms.unwrap_or(0),
        };
        Some((c.remote, d))
    })))
}

impl Observer {
    pub fn open(args: &TopArgs) -> Result<Self> {
        let pins = PinDir::open(&args.pins.pin_dir)?;
        let settings: Settings = pins.settings()?;
        // A protected cgroup that is gone protects nothing.
        let judge = Judge::new(settings.policy(settings.protected_cgroup_ids().unwrap_or_default()));
        Ok(Self { meter: settings.meter(), settings, pins, judge, epoch: Instant::now(), who: Attributor::new() })
    }

    /// A fresh snapshot, judged.
    pub fn view(&mut self) -> Result<View> {
        let snapshot = Snapshot::read(&self.pins, &self.settings.cgroup)?;
        let pressure = self.meter.read(snapshot.charged())?;
        let sockets = snapshot.sockets;
        // What the fleet contains, as the agent's rule sees it (the agent's trie says which).
        self.judge.set_fleet(std::sync::Arc::new(fleet_nets(&self.pins)?));
        let plan = self.judge.judge_all(&sockets, self.epoch.elapsed().as_millis() as u64, pressure);
        let assessments = plan.assessments.clone();
        // What the agent would do with these sockets: every destroy succeeding.
        let chosen: HashMap<u64, &'static str> = plan
            .carry_out(usize::MAX, |_| Taken::Done)
            .acted
            .iter()
            .map(|d| (d.socket.cookie, d.reason.as_str()))
            .collect();
        let threshold = self.settings.threshold;
        let rows = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                let a = assessments.get(i).copied().unwrap_or_default();
                Row {
                    cgroup: self.who.place(&socket).cgroup,
                    fair_share: a.fair_share,
                    judged_stalled_ms: a.stalled_ms,
                    stall_needed_ms: a.stall_needed_ms,
                    drain_estimate_ms: a.drain_estimate_ms,
                    chosen: chosen.get(&socket.cookie).copied(),
                    socket,
                }
            })
            .collect();
        Ok(View {
            pressure,
            threshold,
            source: self.meter.name(),
            over: pressure > threshold,
            dry_run: self.settings.dry_run,
            sockets: rows,
        })
    }
}

pub async fn run(args: TopArgs) -> Result<()> {
    sys::require_root("enforcer top")?;
    let mut observer = Observer::open(&args)?;
    if args.json {
        let mut view = observer.view()?;
        view.sort(args.sort, false);
        view.sockets.truncate(args.limit.unwrap_or(usize::MAX));
        // Buffered, as in `sockets`: stdout is line-buffered.
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut out, &view).context("writing JSON")?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        return tui::run(&mut observer, &args);
    }
    plain(&mut observer, &args).await
}

/// Views one after another as plain text, for a pipe or a file.
async fn plain(observer: &mut Observer, args: &TopArgs) -> Result<()> {
    let mut ticker = tokio::time::interval(args.interval);
    for round in 0.. {
        if args.iterations.is_some_and(|n| round >= n) {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = ticker.tick() => {}
        }
        let mut view = observer.view()?;
        view.sort(args.sort, false);
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", headline(&view))?;
        // CHOSEN last, as before the CGROUP column came: scripts read it at the end of a row.
        let rows: Vec<[String; 9]> = view.sockets.iter().take(args.limit.unwrap_or(20)).map(cells).collect();
        let cw = rows.iter().map(|c| c[8].len()).max().unwrap_or(0).max(6);
        writeln!(
            out,
            "{:<22}  {:<22}  {:>9}  {:>9}  {:>9}  {:>8}  {:>9}  {:<cw$}  CHOSEN",
            "LOCAL", "REMOTE", "CHARGED", "SEND-Q", "SHARE", "STALLED", "DRAIN", "CGROUP"
        )?;
        for c in &rows {
            let line = format!(
                "{:<22}  {:<22}  {:>9}  {:>9}  {:>9}  {:>8}  {:>9}  {:<cw$}  {}",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[8], c[7]
            );
            writeln!(out, "{}", line.trim_end())?;
        }
        writeln!(out)?;
        out.flush()?;
    }
    Ok(())
}

/// The line above the table.
pub fn headline(v: &View) -> String {
    format!(
        "enforcer top  pressure {} {} threshold {} ({})  {} sockets, {} chosen now{}",
        human_bytes(v.pressure),
        if v.over { "OVER" } else { "under" },
        human_bytes(v.threshold),
        v.source,
        v.sockets.len(),
        v.chosen(),
        if v.dry_run { " (agent in dry run)" } else { "" }
    )
}

/// A row's cells, in the order of [`COLUMNS`].
pub fn cells(r: &Row) -> [String; 9] {
    let s = &r.socket;
    [
        s.local.to_string(),
        s.remote.to_string(),
        human_bytes(s.charged),
        human_bytes(s.send_queue),
        human_bytes(r.fair_share),
        human_ms(r.judged_stalled_ms),
        r.drain_estimate_ms.map(human_ms).unwrap_or_else(|| "-".into()),
        r.chosen.unwrap_or("").to_owned(),
        r.cgroup.clone().unwrap_or_else(|| s.cgroup_id.to_string()),
    ]
}

/// Column titles, and the key that sorts by each (if any).
pub const COLUMNS: [(&str, Option<TopSort>); 9] = [
    ("LOCAL", None),
    ("REMOTE", None),
    ("CHARGED", Some(TopSort::Charged)),
    ("SEND-Q", Some(TopSort::SendQueue)),
    ("SHARE", None),
    ("STALLED", Some(TopSort::Stalled)),
    ("DRAIN", Some(TopSort::Drain)),
    ("CHOSEN", None),
    ("CGROUP", None),
];
