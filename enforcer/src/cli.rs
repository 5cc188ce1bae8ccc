//! Command-line interface. The help texts are the user's manual: keep them exact.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use enforcer_common::DEFAULT_MAX_SOCKETS;
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
namespace (e.g. `ip netns exec NS enforcer sockets`)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load and attach the eBPF programs, pin their maps, watch (root).
    ///
    /// Tracks every TCP connection established in --cgroup and its descendants from the moment
    /// the agent starts (connections that already exist are not tracked). On SIGINT/SIGTERM it
    /// detaches every program and removes its pins.
    Run(RunArgs),
    /// List tracked sockets from a fresh, exact snapshot.
    ///
    /// Columns: SEND-Q is what the peer has not acknowledged (as SIOCOUTQ), UNSENT what is
    /// queued but not yet sent, RECV-Q what the application has not read, PEER-WND the peer's
    /// advertised window, STALLED how long `snd_una` has not moved while data is outstanding.
    Sockets(SocketsArgs),
    /// Show the agent's settings, tracked sockets, map occupancy and error counters.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub struct PinDirArg {
    /// Directory on a bpf filesystem where the agent pins its maps.
    #[arg(long, env = "ENFORCER_PIN_DIR", default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// cgroup v2 directory whose sockets are tracked [default: the cgroup2 root from /proc/mounts].
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Most sockets tracked at once; beyond it new sockets are counted as `map_full`, not tracked.
    #[arg(long, default_value_t = DEFAULT_MAX_SOCKETS, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub max_sockets: u32,
    /// How often the agent takes a snapshot (e.g. 250ms, 1s).
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SortKey {
    /// Largest send queue first.
    SendQueue,
    /// Longest stalled first.
    Stalled,
    /// Oldest first.
    Age,
}

#[derive(Debug, Args)]
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
    /// Only sockets whose remote address is in CIDR (e.g. 10.0.0.0/8, 2001:db8::/32, 192.0.2.7).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub remote: Option<IpNet>,
    /// Only sockets whose local or remote port is P.
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pins: PinDirArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 250ms, 1s, 2m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A CIDR, or a bare address meaning just that address.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not an address or CIDR (examples: 10.0.0.0/8, ::1, 2001:db8::/32)"))
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
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
