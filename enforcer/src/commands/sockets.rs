//! `enforcer sockets`: a fresh snapshot, filtered like ss, as a table or JSON. Every row names
//! its namespace and cgroup path; with `-p`, the process holding it.
use std::{cmp::Reverse, io::Write};

use anyhow::{Context, Result};
use enforcer_common::names;
use serde::Serialize;

use crate::{
    attribution::{Attribution, Attributor, HolderWalk},
    cli::{SocketsArgs, SortKey},
    filter::SocketFilter,
    pins::PinDir,
    socket::Socket,
    sys,
    units::{human_bytes, human_ms},
};

/// One row: the socket and whose it is.
#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    socket: &'a Socket,
    /// The cgroup's path below the cgroup2 mount; `null` if it is gone.
    cgroup: Option<String>,
    /// With `-p`: a process holding the socket; `null` when none was found or not asked.
    pid: Option<u32>,
    comm: Option<String>,
}

pub fn run(args: SocketsArgs) -> Result<()> {
    sys::require_root("enforcer sockets")?;
    let pins = PinDir::open(&args.pins.pin_dir)?;
    let snap = pins.snapshot()?;
    // The agent's holders walk where it pinned one; /proc otherwise.
    let holders = PinDir::path(&args.pins.pin_dir, names::PIN_HOLDERS);
    let mut who = if holders.exists() { Attributor::with_walk(HolderWalk::Pin(holders)) } else { Attributor::new() };
    let filter = SocketFilter {
        ipv4: if args.ipv4 {
            Some(true)
        } else if args.ipv6 {
            Some(false)
        } else {
            None
        },
        states: args.state,
        local: args.local,
        remote: args.remote,
        sports: args.sport,
        dports: args.dport,
        ports: args.port,
        cgroup: args.cgroup.as_deref().map(|c| who.cgroups.relative(c)),
        netns: args.netns,
    };
    let mut rows: Vec<(&Socket, Attribution)> = snap
        .sockets
        .iter()
        .map(|s| (s, who.place(s)))
        .filter(|(s, a)| filter.matches(s, a.cgroup.as_deref()))
        .collect();
    match args.sort {
        SortKey::SendQueue => rows.sort_by_key(|(s, _)| Reverse(s.send_queue)),
        SortKey::Charged => rows.sort_by_key(|(s, _)| Reverse(s.charged)),
        SortKey::Stalled => rows.sort_by_key(|(s, _)| Reverse(s.stalled_ms)),
        SortKey::Age => rows.sort_by_key(|(s, _)| Reverse(s.age_ms)),
    }
    if let Some(n) = args.limit {
        rows.truncate(n);
    }
    // After filtering and the limit: a lookup per socket listed, not per socket tracked.
    if args.processes {
        for (s, a) in &mut rows {
            *a = who.attribute(s, snap.namespace(s.netns));
        }
    }
    // Buffered: stdout is line-buffered, and pretty JSON is ~40 lines a socket (a write(2)
    // each made `sockets --json` take 2.5 s at 100,000 sockets).
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let rows: Vec<Row> = rows
            .into_iter()
            .map(|(socket, a)| Row {
                socket,
                cgroup: a.cgroup,
                pid: a.process.as_ref().map(|p| p.pid),
                comm: a.process.map(|p| p.comm),
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &rows).context("writing JSON")?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &rows, args.processes)?;
    }
    out.flush()?;
    Ok(())
}

/// The cgroup column: the path, or the id of a cgroup that is gone.
fn cgroup_cell(a: &Attribution) -> String {
    a.cgroup.clone().unwrap_or_else(|| a.cgroup_id.to_string())
}

fn print_table(out: &mut impl Write, rows: &[(&Socket, Attribution)], processes: bool) -> Result<()> {
    let width = |f: &dyn Fn(&Socket, &Attribution) -> String, min: usize| {
        rows.iter().map(|(s, a)| f(s, a).len()).max().unwrap_or(0).max(min)
    };
    let lw = width(&|s, _| s.local.to_string(), 5);
    let rw = width(&|s, _| s.remote.to_string(), 6);
    let cw = width(&|_, a| cgroup_cell(a), 6);
    let process =
        |a: &Attribution| a.process.as_ref().map_or_else(|| "-".to_owned(), |p| format!("{}/{}", p.pid, p.comm));
    let process_head = if processes { "PROCESS" } else { "" };
    let head = format!(
        "{:<lw$}  {:<rw$}  {:<11}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}  {:>7}  {:>10}  {:<cw$}  {process_head}",
        "LOCAL",
        "REMOTE",
        "STATE",
        "SEND-Q",
        "CHARGED",
        "UNSENT",
        "RECV-Q",
        "PEER-WND",
        "STALLED",
        "AGE",
        "RETRANS",
        "NETNS",
        "CGROUP",
    );
    writeln!(out, "{}", head.trim_end())?;
    for (s, a) in rows {
        let process = if processes { process(a) } else { String::new() };
        let line = format!(
            "{:<lw$}  {:<rw$}  {:<11}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}  {:>7}  {:>10}  {:<cw$}  {process}",
            s.local.to_string(),
            s.remote.to_string(),
            s.state,
            human_bytes(s.send_queue),
            human_bytes(s.charged),
            human_bytes(s.unsent),
            human_bytes(s.recv_queue),
            human_bytes(s.peer_window),
            human_ms(s.stalled_ms),
            human_ms(s.age_ms),
            s.retransmits,
            s.netns,
            cgroup_cell(a),
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    if rows.is_empty() {
        writeln!(out, "(no tracked sockets)")?;
    }
    Ok(())
}
