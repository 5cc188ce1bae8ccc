//! `enforcer sockets`: a fresh snapshot, filtered like ss, as a table or JSON. Every row names
//! its namespace and cgroup path; with `-p`, the process holding it.
use std::{cmp::Reverse, io::Write, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use enforcer_common::names;
use serde::Serialize;

use super::{PinDirArg, any};
use crate::{
    bpf::{contained, pins::PinDir, snapshot::Snapshot},
    config::Settings,
    host::{netns::parse_netns, sys},
    model::{
        endpoint::{Endpoint, parse_endpoint, parse_state},
        socket::Socket,
        units::{human_bytes, human_ms},
    },
    observe::attribution::{Attribution, Attributor, HolderWalk, cgroup_within},
    policy::relay::{RelayIndex, RelayState},
};

#[derive(Debug, Args)]
#[command(after_long_help = SOCKETS_HELP)]
pub struct SocketsArgs {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Print a JSON array (byte counts in bytes, durations in milliseconds).
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value_t = SortKey::SendQueue)]
    pub sort: SortKey,
    /// Show at most N sockets (after sorting).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Show the process holding each socket (PID and comm), as `ss -p` does: a netlink lookup
    /// per socket and a scan of its cgroup's descriptors.
    #[arg(short = 'p', long)]
    pub processes: bool,
    /// Only IPv4 addresses (an IPv4 peer of a dual-stack socket counts).
    #[arg(short = '4', long, conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Only IPv6 addresses.
    #[arg(short = '6', long)]
    pub ipv6: bool,
    /// Only sockets in this TCP state, named as ss names them: established, fin-wait-1,
    /// close-wait… (repeatable).
    #[arg(long, value_name = "STATE", value_parser = parse_state)]
    pub state: Vec<u8>,
    /// Only sockets whose local end is ADDR, CIDR, ADDR:PORT or :PORT (repeatable).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_endpoint)]
    pub local: Vec<Endpoint>,
    /// Only sockets whose remote end is ADDR, CIDR (10.0.0.0/8, 2001:db8::/32), ADDR:PORT or
    /// :PORT (repeatable).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_endpoint)]
    pub remote: Vec<Endpoint>,
    /// Only sockets whose local (source) port is P (repeatable).
    #[arg(long, value_name = "P")]
    pub sport: Vec<u16>,
    /// Only sockets whose remote (destination) port is P (repeatable).
    #[arg(long, value_name = "P")]
    pub dport: Vec<u16>,
    /// Only sockets whose local or remote port is P (repeatable).
    #[arg(long, value_name = "P")]
    pub port: Vec<u16>,
    /// Only sockets of this cgroup or one below it: a directory on the cgroup2 mount
    /// (/sys/fs/cgroup/system.slice) or its path below the mount (/system.slice).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Only sockets of this network namespace: its inode (`lsns -t net`), a path
    /// (/run/netns/NAME, /proc/PID/ns/net) or a name under /run/netns.
    #[arg(long, value_name = "NETNS", value_parser = parse_netns)]
    pub netns: Option<u64>,
}

const SOCKETS_HELP: &str = "\
Filters: a socket is listed when it passes every filter given; a repeatable filter passes when
any of its values matches.

Examples:
  enforcer sockets --sort stalled --limit 20
  enforcer sockets -4 --state established --sport 443 --remote 203.0.113.0/24 --remote 198.51.100.7
  enforcer sockets --cgroup /system.slice/nginx.service -p --json
  enforcer sockets --netns /run/netns/blue --local 10.0.0.1:8080";

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SortKey {
    /// Largest send queue first.
    SendQueue,
    /// Most charged memory first.
    Charged,
    /// Longest stalled first.
    Stalled,
    /// Oldest record first (the age counts from when enforcer recorded the connection).
    Age,
}

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
    /// Proxy mode: `live` (relays for an open connection), `orphan` (relayed, for nobody now),
    /// `null` when never seen relaying.
    relay_state: Option<&'static str>,
    /// What contains its remote (a repeat offender, a CrowdSec decision), as `enforcer status`
    /// says it; `null` when nothing does. Connections older than the containment keep the
    /// buffers they had.
    contained: Option<&'a contained::Contained>,
}

pub fn run(args: SocketsArgs) -> Result<()> {
    sys::require_root("enforcer sockets")?;
    let pins = PinDir::open(&args.pins.pin_dir)?;
    let settings: Settings = pins.settings()?;
    let snap = Snapshot::read(&pins, &settings.cgroup)?;
    // The agent's holders walk where it pinned one; /proc otherwise.
    let holders = pins.pin(names::PIN_HOLDERS);
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
    // Relays join the whole snapshot (a partner may be filtered out of the rows).
    let relays = settings.proxy.then(|| RelayIndex::of(&snap.sockets, settings.orphan_after_ms, settings.interval_ms));
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
        let index = contained::Index::of(contained::read(&pins)?);
        let rows: Vec<Row> = rows
            .into_iter()
            .map(|(socket, a)| Row {
                relay_state: relays.as_ref().and_then(|r| r.state(socket).name()),
                contained: index.lookup(socket.remote.ip()),
                socket,
                cgroup: a.cgroup,
                pid: a.process.as_ref().map(|p| p.pid),
                comm: a.process.map(|p| p.comm),
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &rows).context("writing JSON")?;
        writeln!(out)?;
    } else {
        print_table(&mut out, &rows, args.processes, relays.as_ref())?;
    }
    out.flush()?;
    Ok(())
}

/// Which sockets `enforcer sockets` lists.
#[derive(Debug, Clone, Default)]
pub struct SocketFilter {
    /// `Some(true)`: IPv4 addresses only (an IPv4 peer of a dual-stack socket counts);
    /// `Some(false)`: IPv6 only.
    pub ipv4: Option<bool>,
    pub states: Vec<u8>,
    pub local: Vec<Endpoint>,
    pub remote: Vec<Endpoint>,
    pub sports: Vec<u16>,
    pub dports: Vec<u16>,
    /// Local or remote port.
    pub ports: Vec<u16>,
    /// A cgroup path below the cgroup2 mount: that cgroup and everything below it.
    pub cgroup: Option<String>,
    pub netns: Option<u64>,
}

impl SocketFilter {
    /// Whether `s` passes; `cgroup` is its cgroup's path (`None`: unknown, which a
    /// `--cgroup` filter excludes).
    pub fn matches(&self, s: &Socket, cgroup: Option<&str>) -> bool {
        self.ipv4.is_none_or(|v4| s.local.ip().to_canonical().is_ipv4() == v4)
            && any(&self.states, |st| *st == s.raw.state)
            && any(&self.local, |e| e.matches(s.local))
            && any(&self.remote, |e| e.matches(s.remote))
            && any(&self.sports, |p| *p == s.local.port())
            && any(&self.dports, |p| *p == s.remote.port())
            && any(&self.ports, |p| *p == s.local.port() || *p == s.remote.port())
            && self.netns.is_none_or(|n| n == s.netns)
            && self.cgroup.as_deref().is_none_or(|dir| cgroup.is_some_and(|c| cgroup_within(c, dir)))
    }
}

/// The cgroup column: the path, or the id of a cgroup that is gone.
fn cgroup_cell(a: &Attribution) -> String {
    a.cgroup.clone().unwrap_or_else(|| a.cgroup_id.to_string())
}

/// The RELAY column: what a socket relays for and how much it relayed, or since when an orphan
/// relayed nothing.
fn relay_cell(relays: &RelayIndex, s: &Socket) -> String {
    match (relays.state(s), s.relay) {
        (RelayState::Orphan { since_ms }, _) => format!("orphan {}", human_ms(since_ms)),
        (RelayState::Live, Some(r)) => format!("live {}", human_bytes(r.bytes)),
        (RelayState::Live, None) => "live".to_owned(),
        (RelayState::Unknown, _) => "-".to_owned(),
    }
}

fn print_table(
    out: &mut impl Write,
    rows: &[(&Socket, Attribution)],
    processes: bool,
    relays: Option<&RelayIndex>,
) -> Result<()> {
    let width = |f: &dyn Fn(&Socket, &Attribution) -> String, min: usize| {
        rows.iter().map(|(s, a)| f(s, a).len()).max().unwrap_or(0).max(min)
    };
    let lw = width(&|s, _| s.local.to_string(), 5);
    let rw = width(&|s, _| s.remote.to_string(), 6);
    let cw = width(&|_, a| cgroup_cell(a), 6);
    let process =
        |a: &Attribution| a.process.as_ref().map_or_else(|| "-".to_owned(), |p| format!("{}/{}", p.pid, p.comm));
    let process_head = if processes { "PROCESS" } else { "" };
    // Proxy mode only: the column would be `-` everywhere else.
    let relay = |s: &Socket| relays.map_or_else(String::new, |r| format!("{:<15}  ", relay_cell(r, s)));
    let relay_head = if relays.is_some() { format!("{:<15}  ", "RELAY") } else { String::new() };
    let head = format!(
        "{:<lw$}  {:<rw$}  {:<11}  {:>9}  {:>9}  {:>12}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}  {:>7}  {:>10}  {relay_head}{:<cw$}  {process_head}",
        "LOCAL",
        "REMOTE",
        "STATE",
        "SEND-Q",
        "CHARGED",
        "RECV-MEM",
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
            "{:<lw$}  {:<rw$}  {:<11}  {:>9}  {:>9}  {:>12}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}  {:>7}  {:>10}  {}{:<cw$}  {process}",
            s.local.to_string(),
            s.remote.to_string(),
            s.state,
            human_bytes(s.send_queue),
            human_bytes(s.charged),
            recv_cell(s),
            human_bytes(s.unsent),
            human_bytes(s.recv_queue),
            human_bytes(s.peer_window),
            human_ms(s.stalled_ms),
            human_ms(s.age_ms),
            s.retransmits,
            s.netns,
            relay(s),
            cgroup_cell(a),
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    if rows.is_empty() {
        writeln!(out, "(no tracked sockets)")?;
    }
    Ok(())
}

/// Receive memory, marked `ooo` while segments wait beyond a hole.
fn recv_cell(s: &Socket) -> String {
    if s.out_of_order { format!("{} ooo", human_bytes(s.recv_charged)) } else { human_bytes(s.recv_charged) }
}

#[cfg(test)]
mod tests {
    use enforcer_common::{AF_INET, SnapshotEntry};
    use std::net::SocketAddr;

    use super::*;

    fn socket(local: &str, remote: &str, state: u8) -> Socket {
        let (l, r): (SocketAddr, SocketAddr) = (local.parse().expect("local"), remote.parse().expect("remote"));
        let mut e = SnapshotEntry { state, netns: 7, ..SnapshotEntry::default() };
        e.record.family = AF_INET;
        let mut s = Socket::new(&e);
        (s.local, s.remote) = (l, r);
        s
    }

    #[test]
    fn sockets_pass_every_flag_and_any_value_of_one() {
        let s = socket("127.0.0.1:9000", "127.0.0.2:5555", 1);
        let pass = |f: SocketFilter, cg: Option<&str>| f.matches(&s, cg);
        assert!(pass(SocketFilter::default(), None));
        assert!(pass(SocketFilter { ipv4: Some(true), ..Default::default() }, None));
        assert!(!pass(SocketFilter { ipv4: Some(false), ..Default::default() }, None));
        assert!(pass(SocketFilter { sports: vec![1, 9000], ..Default::default() }, None));
        assert!(!pass(SocketFilter { sports: vec![5555], ..Default::default() }, None));
        assert!(pass(SocketFilter { dports: vec![5555], states: vec![1], ..Default::default() }, None));
        assert!(!pass(SocketFilter { dports: vec![5555], states: vec![8], ..Default::default() }, None));
        let remote = vec![parse_endpoint("127.0.0.3").expect("ep"), parse_endpoint("127.0.0.2/32").expect("ep")];
        assert!(pass(SocketFilter { remote, ..Default::default() }, None));
        let local = vec![parse_endpoint("127.0.0.1:9001").expect("ep")];
        assert!(!pass(SocketFilter { local, ..Default::default() }, None));
        assert!(pass(SocketFilter { netns: Some(7), ..Default::default() }, None));
        assert!(!pass(SocketFilter { netns: Some(8), ..Default::default() }, None));
        let cgroup = Some("/a".to_owned());
        assert!(pass(SocketFilter { cgroup: cgroup.clone(), ..Default::default() }, Some("/a/b")));
        assert!(!pass(SocketFilter { cgroup: cgroup.clone(), ..Default::default() }, Some("/ab")));
        assert!(!pass(SocketFilter { cgroup, ..Default::default() }, None));
    }
}
