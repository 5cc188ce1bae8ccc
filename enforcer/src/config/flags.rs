//! The flags of `enforcer run` and the keys of its config file, as one type ([`RunArgs`]), and
//! how clap reads the domain's own enums.
use std::{path::PathBuf, time::Duration};

use clap::{Args, ValueEnum, builder::PossibleValue};
use ipnet::IpNet;
use serde::Deserialize;

use super::values;
use crate::{
    host::pressure,
    model::{
        fairness::{Fairness, parse_fairness},
        units::{parse_cidr, parse_duration, parse_duration_or_off, parse_low_water, parse_size, parse_threshold},
    },
    policy::Kind,
};

/// `--log-format`: the agent's and the CLI's log on stderr.
#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What `enforcer run` is told: its flags, and, with the same names in kebab case, the keys of
/// its `--config` file ([`file::parse`]), so a setting is one field with one doc. Values are
/// optional here so that either can supply them: a flag given on the command line wins over
/// the file, the file over the default ([`Settings::resolve`](super::Settings::resolve)).
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
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
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Destroy nothing; log and record `would_destroy` for every decision, once per socket while
    /// the rule keeps choosing it.
    #[arg(long)]
    pub dry_run: bool,
    /// How often a snapshot is taken and the rule applied (e.g. 250ms, 1s) [default: 1s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(deserialize_with = "values::duration")]
    pub interval: Option<Duration>,
    /// Enforce only while pressure is above this size (16MiB, 100MB, bytes) [default: the
    /// kernel's TCP pressure level, tcp_mem[1] pages; inside a network namespace, where tcp_mem
    /// is not visible, MemTotal/16 as the kernel computes it at boot].
    #[arg(long, value_parser = parse_threshold, value_name = "SIZE")]
    #[serde(deserialize_with = "values::threshold")]
    pub threshold: Option<u64>,
    /// Pressure over --threshold starts an episode, which ends once pressure has stayed at or
    /// under this percentage of the threshold for --drain-window; within it the rule acts while
    /// pressure is over this line and destroys until the projection is back at it, so pressure
    /// that hovers at the threshold does not keep stalled offenders [default: 75%, where the
    /// kernel leaves its own TCP memory pressure: tcp_mem[0] is 3/4 of tcp_mem[1]].
    #[arg(long, value_parser = parse_low_water, value_name = "PERCENT")]
    #[serde(deserialize_with = "values::low_water")]
    pub low_water: Option<u64>,
    /// What pressure is: `tracked` (memory charged to the tracked sockets, both sides), `kernel` (TCP memory in
    /// /proc/net/sockstat), `cgroup` (socket memory in the cgroup's memory.stat) [default: tracked].
    #[arg(long, value_enum, value_name = "SOURCE")]
    pub pressure: Option<pressure::Source>,
    /// How to split the threshold into fair shares: `connection` (threshold / connections),
    /// `remote-ip` (per remote address, then per connection), `remote-prefix:N[,M]` (per IPv4 /N
    /// and IPv6 /M, default M 64) [default: connection].
    #[arg(long, value_parser = parse_fairness, value_name = "MODE")]
    #[serde(deserialize_with = "values::fairness")]
    pub fairness: Option<Fairness>,
    /// An offender made no forward progress (snd_una unchanged, data outstanding) for this long.
    /// Longer than an ordinary client's pause: a reader whose application stops reading for up
    /// to 2 s must not qualify [default: 3s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(deserialize_with = "values::duration")]
    pub stall: Option<Duration>,
    /// ...or its queue would take longer than this to drain at the rate the peer acknowledged
    /// over --drain-window. Within an episode it tightens, to half at the least, as pressure
    /// rises over the threshold (threshold / pressure) and as the episode ages (by half over
    /// this long), so a reader cannot hold memory by draining just within it [default: 30s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(deserialize_with = "values::duration")]
    pub max_drain: Option<Duration>,
    /// The drain rate is measured over this long, and a socket must have been over its share
    /// for all of it before it is a slow-drain offender: ACKs arrive in bursts, and one quiet
    /// interval says nothing [default: 5s or 4 intervals, whichever is longer].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(deserialize_with = "values::duration")]
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
    #[serde(deserialize_with = "values::duration")]
    pub repeat_window: Option<Duration>,
    /// SO_SNDBUF the kernel gives a repeat offender's new connections when they are
    /// established (the kernel doubles it; at most net.core.wmem_max). 0: leave send buffers
    /// alone [default: 32KiB].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    #[serde(deserialize_with = "values::size")]
    pub contain_sndbuf: Option<u64>,
    /// TCP_USER_TIMEOUT the kernel gives the same connections: data left unacknowledged this
    /// long, zero-window probes included, makes the kernel itself abort the connection, also
    /// while the agent is stopped or restarting. A connection that earns its send buffer back
    /// loses it. 0: none [default: 60s, the send timeout nginx and Apache give every client].
    #[arg(long, value_parser = parse_duration_or_off, value_name = "DURATION")]
    #[serde(deserialize_with = "values::duration_or_off")]
    pub contain_user_timeout: Option<Duration>,
    /// Fleets: the URL of a CrowdSec Local API (http://HOST:PORT) whose decisions this host
    /// enforces, as a bouncer: a decision's IP or range is contained (--contain-sndbuf,
    /// --contain-user-timeout) for the decision's duration, and while pressure is over the
    /// threshold its stalled connections go (reason contained_by_crowdsec). Needs
    /// --crowdsec-key-file [default: off].
    #[arg(long, value_name = "URL")]
    pub crowdsec_url: Option<String>,
    /// File holding the bouncer's API key (`cscli bouncers add NAME -o raw`); read at start,
    /// never logged or recorded (a new key needs a restart).
    #[arg(long, value_name = "FILE")]
    pub crowdsec_key_file: Option<PathBuf>,
    /// Decision types this host acts on (repeatable or comma-separated) [default: contain; add
    /// `ban` to contain what firewalls ban too].
    #[arg(long, value_name = "TYPE", value_delimiter = ',')]
    pub crowdsec_type: Vec<String>,
    /// How often the decision stream is polled [default: 10s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(deserialize_with = "values::duration")]
    pub crowdsec_poll: Option<Duration>,
    /// Share this host's repeat offenders with the fleet, as a CrowdSec machine: a file in
    /// CrowdSec's `local_api_credentials.yaml` form (url, login, password; `cscli machines add
    /// NAME --password P -f FILE`). Each flag is pushed as an alert of scenario
    /// enforcer/repeat-offender, which a profile turns into a `contain` decision
    /// (deploy/crowdsec/profiles.yaml) [default: off].
    #[arg(long, value_name = "FILE")]
    pub crowdsec_machine_credentials: Option<PathBuf>,
    /// `budget`: destroy the worst offenders until the projected pressure is at --low-water;
    /// `heffner`: destroy every offender, as the 2006 proposal did [default: budget].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub policy: Option<Kind>,
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
    #[serde(deserialize_with = "values::cidrs")]
    pub protect_cidr: Vec<IpNet>,
    /// Never destroy a socket owned by this cgroup directory or one below it (repeatable).
    #[arg(long, value_name = "PATH")]
    pub protect_cgroup: Vec<PathBuf>,
    /// Keep at most N connections per remote address: beyond N, destroy that remote's
    /// connections that moved no byte in either direction for --idle, oldest idle first. Applies
    /// whatever the pressure.
    #[arg(long, value_name = "N")]
    #[serde(deserialize_with = "values::positive")]
    pub max_per_remote: Option<usize>,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9465) at /metrics [default: off].
    #[arg(long, value_name = "ADDR")]
    #[serde(deserialize_with = "values::address")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Test only: make these kernel programs fail (sockops), or act as if the kernel refused
    /// them (holders, records: the walks go through iter/tcp), to show errors fail open.
    #[arg(long, hide = true, value_delimiter = ',', value_enum)]
    #[serde(skip)]
    pub inject_fault: Vec<Fault>,
    /// The global --log-format, when given (`main` copies it here); the file's `log-format` key.
    /// Applies at start (a reload cannot change it).
    #[arg(skip)]
    pub log_format: Option<LogFormat>,
    /// Proxy mode: learn which connections each process relays between (bytes read from one
    /// socket and written to another soon after, in the same thread), so that --max-per-remote
    /// takes the upstreams that relay for nobody (their client left) first and never one that
    /// relays for an open connection. Runs a program on every send and receive of the host
    /// (the sock_send_length and sock_recv_length tracepoints, Linux 6.3+, or fexit on
    /// tcp_sendmsg and tcp_recvmsg where the kernel allows it).
    #[arg(long)]
    pub proxy: bool,
    /// With --proxy: a connection whose relay partner closed is an orphan once it relayed
    /// nothing for this long [default: 10s].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(deserialize_with = "values::duration")]
    pub orphan_after: Option<Duration>,
    /// Idle time for --max-per-remote [default: 5m].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    #[serde(deserialize_with = "values::duration")]
    pub idle: Option<Duration>,
}

const RUN_HELP: &str = "\
The rule, every --interval: pressure > --threshold starts an episode, which lasts until
pressure stayed at or under --low-water for --drain-window. While pressure in an episode is over
the low line, an offender is a socket holding more than its fair share for its peer (the
memory charged to its send side, sk_wmem_queued, and its receive side while segments wait
beyond a hole) and that either made no forward progress for --stall or, over the whole
--drain-window, was acknowledged too slowly to drain within --max-drain. Offenders are destroyed
worst evidence first (bytes over the share times how long they have offended) until the
projected pressure is back at the low line, at most --max-kills per interval; a destroy that
fails frees nothing, and the next offender is taken.
When an episode has spent --drain-window over the threshold and the share rule finds too little,
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

/// `--inject-fault` (tests only).
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Fault {
    Sockops,
    Holders,
    Records,
}

impl Fault {
    /// Its `FAULT_*` bit, as the kernel side reads it.
    pub fn bit(self) -> u32 {
        match self {
            Self::Sockops => enforcer_common::FAULT_SOCKOPS,
            Self::Holders => enforcer_common::FAULT_HOLDERS,
            Self::Records => enforcer_common::FAULT_RECORDS,
        }
    }
}

/// `--policy` takes the rule's own names.
impl ValueEnum for Kind {
    fn value_variants<'a>() -> &'a [Self] {
        &Kind::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

/// `--pressure` takes the sources' own names.
impl ValueEnum for pressure::Source {
    fn value_variants<'a>() -> &'a [Self] {
        &pressure::Source::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}
