//! Command-line interface: the commands and their help texts, which are the user's manual (keep
//! them exact); each command's flags live beside it (`commands::*`, `config::flags` for `run`),
//! and `man` renders them all as man pages.
pub mod man;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{
    commands::{kills::KillsArgs, sockets::SocketsArgs, status::StatusArgs, top::TopArgs},
    config::flags::{LogFormat, RunArgs},
};

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load and attach the eBPF programs, pin their maps, watch (root).
    ///
    /// Tracks every TCP connection of --cgroup and its descendants: existing ones from the start,
    /// new ones from establishment, or, where the kernel walks every TCP socket (walk=tcp), from
    /// the first walk that sees them (short connections never cost a record). On SIGINT/SIGTERM
    /// it detaches every program and removes its pins; after a crash, the next agent removes the
    /// stale pins.
    Run(Box<RunArgs>),
    /// List tracked sockets from a fresh, exact snapshot.
    ///
    /// Columns: SEND-Q is what the peer has not acknowledged (as SIOCOUTQ), CHARGED the memory
    /// the kernel charges the socket, both sides (sk_wmem_queued + sk_rmem_alloc: what pressure
    /// counts; the send side is many times SEND-Q when a peer's window is tiny), RECV-MEM its
    /// receive side (`ooo`: segments wait beyond a hole the peer has not filled, memory no read
    /// can free), UNSENT what is queued but
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
