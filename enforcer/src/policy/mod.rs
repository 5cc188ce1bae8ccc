//! The enforcement rule: (snapshot, what earlier snapshots saw, settings, pressure) -> ranked
//! decisions with reasons. No kernel, no clock, no I/O: the agent and `enforcer top` pass in
//! the time and the snapshot, and carry out the decisions themselves.
//!
//! The rule is John Heffner's (tcpm, 2006): when memory is over a threshold, kill the
//! connections that hold more than their fair share (threshold / connections) and made no
//! forward progress. Made to hold under real and adversarial traffic:
//! - memory is what the kernel *charges* for the send side (`sk_wmem_queued`), not unacknowledged
//!   bytes: a peer with a tiny window makes the kernel cut the queue into tiny skbs and pay many
//!   times the SEND-Q;
//! - a slow reader is judged on its drain rate over a window of several seconds, never one
//!   interval, so ACKs that arrive in bursts are not mistaken for a trickle ([`judge`]);
//! - offenders are ranked by evidence (byte-milliseconds over the share), worst first;
//! - a remote whose connections were destroyed again and again is a repeat offender: its new
//!   connections get no grace ([`repeat`]), and the kernel gives them a small send buffer;
//! - when pressure stays over the threshold and nothing is over its share, stalled sockets
//!   become candidates regardless of share (never a progressing one);
//! - a destroy that failed frees nothing: the next candidate is taken ([`plan`]).
pub mod judge;
pub mod plan;
#[cfg(test)]
mod property;
pub mod repeat;
pub mod storm;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use serde::Serialize;

pub use self::{
    judge::{Assessment, Judge},
    plan::{Outcome, Plan, Taken},
};
use crate::socket::Socket;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fairness {
    /// threshold / connections (the 2006 rule).
    Connection,
    /// threshold / remote addresses, then / that remote's connections.
    RemoteIp,
    /// Like `RemoteIp`, with remotes grouped by prefix.
    RemotePrefix { v4: u8, v6: u8 },
}

impl Fairness {
    /// The remote a connection counts against: its address, or its prefix under prefix fairness.
    pub fn group(self, ip: IpAddr) -> IpNet {
        let len = match (self, ip) {
            (Self::RemotePrefix { v4, .. }, IpAddr::V4(_)) => v4,
            (Self::RemotePrefix { v6, .. }, IpAddr::V6(_)) => v6,
            (_, IpAddr::V4(_)) => 32,
            (_, IpAddr::V6(_)) => 128,
        };
        IpNet::new(ip, len).map(|n| n.trunc()).unwrap_or_else(|_| IpNet::from(ip))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Destroy the worst offenders until the projected pressure is back at the threshold.
    Budget,
    /// Destroy every offender, as the 2006 script did.
    Heffner,
}

#[derive(Debug, Clone, Default)]
pub struct Protect {
    /// Local ports: the services this host serves.
    pub ports: Vec<u16>,
    /// Remote ports: the services this host connects to. Never matched against the local side,
    /// nor `ports` against the remote side: a peer chooses its own source port.
    pub remote_ports: Vec<u16>,
    pub cidrs: Vec<IpNet>,
    pub cgroups: HashSet<u64>,
}

impl Protect {
    pub fn covers(&self, s: &Socket) -> bool {
        self.ports.contains(&s.local.port())
            || self.remote_ports.contains(&s.remote.port())
            || self.cidrs.iter().any(|n| n.contains(&s.remote.ip()))
            || self.cgroups.contains(&s.cgroup_id)
    }
}

/// Repeat offenders (`--repeat-kills`, `--repeat-window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatRule {
    /// Destroys of one remote within `window_ms` that make it a repeat offender; 0: never.
    pub kills: usize,
    pub window_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub threshold: u64,
    pub stall_ms: u64,
    pub max_drain_ms: u64,
    /// The drain rate is measured over this long, and a socket must have been over its share
    /// and slow for all of it before it is a slow-drain offender.
    pub drain_window_ms: u64,
    /// The agent's interval: the grace a repeat offender's new connection gets.
    pub interval_ms: u64,
    pub fairness: Fairness,
    pub kind: Kind,
    pub max_kills: usize,
    pub protect: Protect,
    /// Per-remote cap on connections, enforced on idle ones (`--max-per-remote`, `--idle`).
    pub max_per_remote: Option<usize>,
    pub idle_ms: u64,
    pub repeat: RepeatRule,
}

/// Consecutive intervals over the threshold after which stalled sockets under their share
/// become candidates: long enough that the fair-share rule had its chance, short enough that a
/// spread attack cannot hold memory for long.
pub const ESCALATE_AFTER_INTERVALS: u32 = 4;

/// Pressure under this percentage of the threshold is quiet: nothing can be chosen for memory,
/// and the rule keeps no over-share history (a slow drain is measured from the moment pressure
/// reaches this line). The agent then reads a summary of the sockets, or nothing at all: pressure
/// would have to double within one interval to cross the threshold unseen.
pub const QUIET_BELOW_PERCENT: u64 = 50;

/// Whether `pressure` is quiet against `threshold` ([`QUIET_BELOW_PERCENT`]).
pub fn quiet(pressure: u64, threshold: u64) -> bool {
    pressure.saturating_mul(100) < threshold.saturating_mul(QUIET_BELOW_PERCENT)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Over its share and `snd_una` has not moved for `--stall`.
    Stalled,
    /// Over its share and slow for the whole drain window: its queue would take longer than
    /// `--max-drain` at the rate it was acknowledged over that window.
    SlowDrain,
    /// Beyond `--max-per-remote` connections of its remote and idle for `--idle`.
    RemoteCap,
    /// Pressure stayed over the threshold with no socket over its share: no progress for
    /// `--stall`, whatever its share.
    StalledUnderShare,
    /// A new connection of a repeat offender, stalled for an interval.
    RepeatOffender,
}

/// Each reason's code in the kill journal's ring (0 is "unknown") and its name in logs, JSON,
/// metrics and filters: one table, so they never disagree. Codes are what earlier agents wrote:
/// never renumber.
const REASONS: [(Reason, u8, &str); 5] = [
    (Reason::Stalled, 1, "stalled"),
    (Reason::SlowDrain, 2, "slow_drain"),
    (Reason::RemoteCap, 3, "remote_cap"),
    (Reason::StalledUnderShare, 4, "stalled_under_share"),
    (Reason::RepeatOffender, 5, "repeat_offender"),
];

impl Reason {
    pub const ALL: [Reason; 5] = [REASONS[0].0, REASONS[1].0, REASONS[2].0, REASONS[3].0, REASONS[4].0];

    fn row(self) -> (Reason, u8, &'static str) {
        REASONS.into_iter().find(|r| r.0 == self).unwrap_or(REASONS[0])
    }

    pub fn as_str(self) -> &'static str {
        self.row().2
    }

    /// The code the kill journal stores.
    pub fn code(self) -> u8 {
        self.row().1
    }

    pub fn from_code(code: u8) -> Option<Self> {
        REASONS.into_iter().find(|r| r.1 == code).map(|r| r.0)
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub socket: Socket,
    pub reason: Reason,
    pub fair_share: u64,
    /// At the rate acknowledged over the drain window; None when not measured.
    pub drain_estimate_ms: Option<u64>,
    /// How long it has offended: its stall, or how long it has been over its share and slow.
    pub offending_ms: u64,
    /// What ranks it: bytes held over its share × `offending_ms` (saturating).
    pub evidence: u64,
}

/// What the fair shares divide the threshold among: every tracked connection, also those the
/// scan did not write out (they hold nothing, but they count). The agent's scan counts them in
/// the kernel; a full snapshot counts them here ([`Population::of`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Population {
    pub connections: u64,
    /// Distinct remote groups (`Fairness::group`); used by the per-remote modes only.
    pub remotes: u64,
    /// Connections per remote group, for at least every group of the sockets judged; a group
    /// missing here counts as one connection.
    pub per_remote: HashMap<IpNet, u64>,
}

impl Population {
    /// Counts a full snapshot.
    pub fn of(fairness: Fairness, sockets: &[Socket]) -> Self {
        let mut per_remote: HashMap<IpNet, u64> = HashMap::new();
        if fairness != Fairness::Connection {
            for s in sockets {
                *per_remote.entry(fairness.group(s.remote.ip())).or_default() += 1;
            }
        }
        Self { connections: sockets.len() as u64, remotes: per_remote.len() as u64, per_remote }
    }

    /// The fair share of `s` of memory `threshold`.
    pub fn share(&self, fairness: Fairness, threshold: u64, s: &Socket) -> u64 {
        match fairness {
            Fairness::Connection => threshold / self.connections.max(1),
            Fairness::RemoteIp | Fairness::RemotePrefix { .. } => {
                let n = self.per_remote.get(&fairness.group(s.remote.ip())).copied().unwrap_or(1);
                threshold / self.remotes.max(1) / n.max(1)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use std::net::SocketAddr;

    use super::*;

    /// A socket holding `charged` bytes (send queue the same), stalled for `stalled_ms`.
    pub fn sock(cookie: u64, remote: &str, charged: u64, stalled_ms: u64, bytes_acked: u64) -> Socket {
        Socket {
            cookie,
            local: "10.0.0.1:80".parse().expect("addr"),
            remote: remote.parse::<SocketAddr>().expect("addr"),
            state: "ESTABLISHED",
            send_queue: charged,
            unsent: 0,
            recv_queue: 0,
            charged,
            peer_window: 0,
            zero_window_ms: 0,
            stalled_ms,
            rx_idle_ms: stalled_ms,
            tx_idle_ms: stalled_ms,
            age_ms: 600_000,
            adopted: false,
            recorded: crate::socket::Recorded::Established,
            bytes_acked,
            bytes_received: 0,
            retransmits: 0,
            rtos: 0,
            cgroup_id: 1,
            bound_dev_if: 0,
            netns: 0,
            raw: Default::default(),
        }
    }

    pub fn policy(threshold: u64) -> Policy {
        Policy {
            threshold,
            stall_ms: 1000,
            max_drain_ms: 30_000,
            drain_window_ms: 5000,
            interval_ms: 250,
            fairness: Fairness::Connection,
            kind: Kind::Budget,
            max_kills: 1000,
            protect: Protect::default(),
            max_per_remote: None,
            idle_ms: 60_000,
            repeat: RepeatRule { kills: 3, window_ms: 60_000 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::sock, *};

    fn shares(fairness: Fairness, sockets: &[Socket], threshold: u64) -> Vec<u64> {
        let p = Population::of(fairness, sockets);
        sockets.iter().map(|s| p.share(fairness, threshold, s)).collect()
    }

    #[test]
    fn remote_fairness_gives_one_share_per_remote() {
        // One remote with 10 connections, another with 1; threshold 4 MiB split in two.
        let mut sockets: Vec<Socket> = (1..=10).map(|c| sock(c, "192.0.2.1:1", 500 << 10, 5000, 0)).collect();
        sockets.push(sock(11, "192.0.2.2:1", 500 << 10, 5000, 0));
        let shares = shares(Fairness::RemoteIp, &sockets, 4 << 20);
        assert_eq!(shares[0], (2 << 20) / 10);
        assert_eq!(shares[10], 2 << 20);
    }

    #[test]
    fn prefix_fairness_groups_remotes() {
        let sockets = vec![
            sock(1, "192.0.2.1:1", 0, 0, 0),
            sock(2, "192.0.2.200:1", 0, 0, 0),
            sock(3, "[2001:db8::1]:1", 0, 0, 0),
        ];
        assert_eq!(shares(Fairness::RemotePrefix { v4: 24, v6: 64 }, &sockets, 1200), [300, 300, 600]);
        let f = Fairness::RemotePrefix { v4: 24, v6: 64 };
        assert_eq!(f.group("192.0.2.200".parse().expect("ip")).to_string(), "192.0.2.0/24");
        assert_eq!(Fairness::RemoteIp.group("192.0.2.200".parse().expect("ip")).to_string(), "192.0.2.200/32");
    }
}
