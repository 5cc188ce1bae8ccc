//! Command-line interface. The help texts are the user's manual: keep them exact.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::pins::DEFAULT_PIN_DIR;

#[derive(Debug, Parser)]
#[command(
    name = "enforcer",
    version,
    about = "Destroys TCP connections that hold more than their fair share of memory without making progress",
    long_about = "enforcer watches every TCP connection of a cgroup with eBPF: how much it has queued, \
when the peer last acknowledged data, whether the peer's window is closed. `enforcer run` is the \
agent (root); `enforcer sockets` and `enforcer status` read what a running agent pinned.\n\n\
Snapshots cover the network namespace of the process that asks: run the CLI in the agent's \
namespace (e.g. `nsenter --net=/run/netns/NS enforcer sockets`)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr [default: text; for `run`, the config file's `log-format` if set].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load and attach the eBPF programs, pin their maps, watch (root).
    ///
    /// Tracks every TCP connection of --cgroup and its descendants: existing ones from the start,
    /// new ones from establishment, or, where the kernel walks every TCP socket (walk=tcp), from
    /// the first walk that sees them (short connections never cost a record). On SIGINT/SIGTERM
    /// it detaches every program and removes its pins; after a crash, the next agent removes the
    /// stale pins.
    Run(RunArgs),
    /// List tracked sockets from a fresh, exact snapshot.
    ///
    /// Columns: SEND-Q is what the peer has not acknowledged (as SIOCOUTQ), CHARGED the
    /// send-side memory the kernel charges for it (sk_wmem_queued: what pressure and fair
    /// shares count, many times SEND-Q when a peer's window is tiny), UNSENT what is queued but
    /// not yet sent, RECV-Q what the application has not read, PEER-WND the peer's
    /// advertised window, STALLED how long `snd_una` has not moved while data is outstanding.
    Sockets(SocketsArgs),
    /// Show the agent's settings, tracked sockets, map occupancy, kill and error counters.
    Status(StatusArgs),
    /// List the agent's most recent decisions (destroyed, would_destroy, destroy_failed) with
    /// their reasons, newest first.
    Kills(KillsArgs),
    /// A live view, refreshed like `top`: pressure against threshold, then the sockets holding
    /// the most, with stalled time, drain estimate and whether the agent's rule picks them now.
    Top(TopArgs),
    /// Check a config file without running anything: prints nothing and exits 0 when `enforcer
    /// run --config FILE` would accept it, one line naming the bad key and exits 2 when not.
    ///
    /// Checks what `run` checks before it loads anything: every value, and that the cgroup and
    /// the protected cgroups exist, the pin directory is on a bpf filesystem (or under
    /// /sys/fs/bpf, where run mounts one) and the pressure source can be read. Flags and
    /// ENFORCER_PIN_DIR are not applied: it checks the file alone.
    CheckConfig {
        /// The TOML file (e.g. /etc/enforcer/enforcer.toml).
        file: PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `enforcer man > /usr/local/share/man/man1/enforcer.1`.
    Man {
        /// Write every page instead, enforcer.1 and one per command (enforcer-run.1 with all of
        /// run's options, ...), into this directory (the release tarball and package do).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Mount a bpf filesystem at /sys/fs/bpf unless one is there, and exit (root).
    ///
    /// `enforcer run` does the same at start, in its own mount namespace; the Kubernetes
    /// DaemonSet runs this in a privileged init container whose /sys/fs/bpf propagates to the
    /// node, so the agent container itself needs no privileged mode.
    MountBpffs,
}

#[derive(Debug, Clone, Args)]
pub struct PinDirArg {
    /// Directory on a bpf filesystem where the agent pins its maps.
    #[arg(long, env = "ENFORCER_PIN_DIR", default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
}

/// Flags of `enforcer run`. Policy flags are optional here so that `--config` can supply them:
/// a flag given on the command line wins over the file, the file over the default.
#[derive(Debug, Clone, Default, Args)]
#[command(after_long_help = RUN_HELP)]
pub struct RunArgs {
    /// cgroup v2 directory whose sockets are tracked [default: the cgroup2 root from /proc/mounts].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Directory on a bpf filesystem where the agent pins its maps (one agent per directory)
    /// [default: /sys/fs/bpf/enforcer].
    #[arg(long, env = "ENFORCER_PIN_DIR", value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// TOML file with the same keys as these flags (e.g. `threshold = "64MiB"`,
    /// `protect-port = [22]`); flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Destroy nothing; log and record `would_destroy` for every decision, once per socket while
    /// the rule keeps choosing it.
    #[arg(long)]
    pub dry_run: bool,
    /// How often a snapshot is taken and the rule applied (e.g. 250ms, 1s) [default: 1s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Option<Duration>,
    /// Enforce only while pressure is above this size (16MiB, 100MB, bytes) [default: the
    /// kernel's TCP pressure level, tcp_mem[1] pages; inside a network namespace, where tcp_mem
    /// is not visible, MemTotal/16 as the kernel computes it at boot].
    #[arg(long, value_parser = parse_threshold, value_name = "SIZE")]
    pub threshold: Option<u64>,
    /// What pressure is: `tracked` (sum of tracked send queues), `kernel` (TCP memory in
    /// /proc/net/sockstat), `cgroup` (socket memory in the cgroup's memory.stat) [default: tracked].
    #[arg(long, value_enum, value_name = "SOURCE")]
    pub pressure: Option<PressureArg>,
    /// How to split the threshold into fair shares: `connection` (threshold / connections),
    /// `remote-ip` (per remote address, then per connection), `remote-prefix:N[,M]` (per IPv4 /N
    /// and IPv6 /M, default M 64) [default: connection].
    #[arg(long, value_parser = crate::units::parse_fairness, value_name = "MODE")]
    pub fairness: Option<crate::policy::Fairness>,
    /// An offender made no forward progress (snd_una unchanged, data outstanding) for this long.
    /// Longer than an ordinary client's pause: a reader whose application stops reading for up
    /// to 2 s must not qualify [default: 3s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub stall: Option<Duration>,
    /// ...or its queue would take longer than this to drain at the rate the peer acknowledged
    /// over --drain-window [default: 30s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_drain: Option<Duration>,
    /// The drain rate is measured over this long, and a socket must have been over its share
    /// for all of it before it is a slow-drain offender: ACKs arrive in bursts, and one quiet
    /// interval says nothing [default: 5s or 4 intervals, whichever is longer].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub drain_window: Option<Duration>,
    /// A remote (an address, or a prefix under --fairness remote-prefix) whose connections were
    /// destroyed N times within --repeat-window is a repeat offender: its new connections get
    /// one interval of grace instead of --stall, and a small send buffer (--contain-sndbuf).
    /// 0 turns this off [default: 3].
    #[arg(long, value_name = "N")]
    pub repeat_kills: Option<usize>,
    /// See --repeat-kills; a repeat offender is released after a whole window without a
    /// destroy [default: 1m].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub repeat_window: Option<Duration>,
    /// SO_SNDBUF the kernel gives a repeat offender's new connections when they are
    /// established (the kernel doubles it; at most net.core.wmem_max). 0: leave send buffers
    /// alone [default: 32KiB].
    #[arg(long, value_parser = crate::units::parse_size, value_name = "SIZE")]
    pub contain_sndbuf: Option<u64>,
    /// `budget`: destroy the worst offenders until the projected pressure is at the threshold;
    /// `heffner`: destroy every offender, as the 2006 proposal did [default: budget].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub policy: Option<PolicyArg>,
    /// Destroy at most N sockets per interval [default: 1000].
    #[arg(long, value_name = "N")]
    pub max_kills: Option<usize>,
    /// ...and at most N in any minute; a log line says when either cap holds sockets back
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_kills_per_minute: Option<usize>,
    /// Never destroy a socket whose local port is P: a service of this host (repeatable).
    #[arg(long, value_name = "P")]
    pub protect_port: Vec<u16>,
    /// Never destroy a socket whose remote port is P: a service this host connects to
    /// (repeatable).
    #[arg(long, value_name = "P")]
    pub protect_remote_port: Vec<u16>,
    /// Never destroy a socket whose remote address is in CIDR (repeatable).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub protect_cidr: Vec<IpNet>,
    /// Never destroy a socket owned by this cgroup directory or one below it (repeatable).
    #[arg(long, value_name = "PATH")]
    pub protect_cgroup: Vec<PathBuf>,
    /// Keep at most N connections per remote address: beyond N, destroy that remote's
    /// connections that moved no byte in either direction for --idle, oldest idle first. Applies
    /// whatever the pressure.
    #[arg(long, value_name = "N")]
    pub max_per_remote: Option<usize>,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9465) at /metrics [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Test only: make these kernel programs fail (sockops), or act as if the kernel refused
    /// them (holders), to show errors fail open.
    #[arg(long, hide = true, value_delimiter = ',', value_enum)]
    pub inject_fault: Vec<FaultArg>,
    /// The global --log-format, when given (`main` copies it here: the config file may set it).
    #[arg(skip)]
    pub log_format: Option<LogFormat>,
    /// Idle time for --max-per-remote [default: 5m].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub idle: Option<Duration>,
}

const RUN_HELP: &str = "\
The rule, every --interval: if pressure > --threshold, an offender is a socket whose charged
send-side memory (sk_wmem_queued) is more than its fair share and that either made no forward
progress for --stall or, over the whole --drain-window, was acknowledged too slowly to drain
within --max-drain. Offenders are destroyed worst evidence first (bytes over the share times
how long they have offended) until the projected pressure is back at the threshold, at most
--max-kills per interval; a destroy that fails frees nothing, and the next offender is taken.
When pressure stays over the threshold for 4 intervals and the share rule finds too little,
sockets stalled for --stall become candidates whatever their share (reason
stalled_under_share); a socket that makes progress never does. A repeat offender's new
connections are judged after one interval (reason repeat_offender). Protected sockets are
never destroyed. Every decision is logged as one event line and kept for `enforcer kills`.

Sockets are destroyed with netlink SOCK_DESTROY, matched by 4-tuple and socket cookie (the
application sees ECONNABORTED, the peer an RST). Netlink acts in one network namespace, so the
agent reads and destroys from inside each namespace of the watched cgroup's processes
(containers); a namespace with no process left in the cgroup cannot be reached.

Examples:
  enforcer run --dry-run
  enforcer run --cgroup /sys/fs/cgroup/system.slice/nginx.service --threshold 256MiB --protect-port 22
  enforcer run --fairness remote-ip --max-per-remote 200 --idle 10m";

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PressureArg {
    Tracked,
    Kernel,
    Cgroup,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum FaultArg {
    Sockops,
    Holders,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyArg {
    Budget,
    Heffner,
}

impl PolicyArg {
    /// As `--policy` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::Heffner => "heffner",
        }
    }
}

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
    #[arg(long, value_name = "STATE", value_parser = crate::filter::parse_state)]
    pub state: Vec<u8>,
    /// Only sockets whose local end is ADDR, CIDR, ADDR:PORT or :PORT (repeatable).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = crate::filter::parse_endpoint)]
    pub local: Vec<crate::filter::Endpoint>,
    /// Only sockets whose remote end is ADDR, CIDR (10.0.0.0/8, 2001:db8::/32), ADDR:PORT or
    /// :PORT (repeatable).
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = crate::filter::parse_endpoint)]
    pub remote: Vec<crate::filter::Endpoint>,
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
    #[arg(long, value_name = "NETNS", value_parser = crate::filter::parse_netns)]
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

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

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
    pub event: Vec<EventArg>,
    /// Only decisions with this reason: stalled, slow_drain, stalled_under_share,
    /// repeat_offender, remote_cap (repeatable).
    #[arg(long, value_name = "REASON", value_parser = crate::filter::parse_reason)]
    pub reason: Vec<crate::policy::Reason>,
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

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum EventArg {
    #[value(name = "destroyed")]
    Destroyed,
    /// A dry run's decision.
    #[value(name = "would_destroy", alias = "would-destroy")]
    WouldDestroy,
    #[value(name = "destroy_failed", alias = "destroy-failed")]
    DestroyFailed,
}

impl EventArg {
    /// As the kill log and `kills --json` write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Destroyed => "destroyed",
            Self::WouldDestroy => "would_destroy",
            Self::DestroyFailed => "destroy_failed",
        }
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim_start().starts_with('-') {
        return Err(format!("`{s}`: a duration cannot be negative"));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 250ms, 1s, 2m)"))?;
    if d < Duration::from_millis(1) {
        return Err("must be at least 1ms".into());
    }
    Ok(d)
}

/// A CIDR, or a bare address meaning just that address. Host bits must be clear: `10.0.0.5/8`
/// is more likely a typo than a way to write `10.0.0.0/8`.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net = s
        .parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not an address or CIDR (examples: 10.0.0.0/8, ::1, 2001:db8::/32)"))?;
    if net != net.trunc() {
        return Err(format!("`{s}` has host bits set: did you mean {}?", net.trunc()));
    }
    Ok(net)
}

/// A threshold: a size (see `units::parse_size`) of at least one byte.
pub fn parse_threshold(s: &str) -> Result<u64, String> {
    match crate::units::parse_size(s)? {
        0 => Err("a threshold of 0 would make every socket an offender: give a size such as 64MiB".into()),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_addresses() {
        assert_eq!(parse_cidr("10.0.0.0/8").map(|n| n.prefix_len()), Ok(8));
        assert_eq!(parse_cidr("::1").map(|n| n.prefix_len()), Ok(128));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
        assert_eq!(parse_cidr("10.0.0.5/8"), Err("`10.0.0.5/8` has host bits set: did you mean 10.0.0.0/8?".into()));
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err_and(|e| e.contains("negative")));
        assert!(parse_threshold("0").is_err() && parse_threshold("0MiB").is_err());
        assert_eq!(parse_threshold("1KiB"), Ok(1024));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
