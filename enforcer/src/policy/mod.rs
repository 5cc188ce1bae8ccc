//! The enforcement rule: (snapshot, what earlier snapshots saw, settings, pressure) -> ranked
//! decisions with reasons. No kernel, no clock, no I/O: the agent and `enforcer top` pass in
//! the time and the snapshot, and carry out the decisions themselves.
//!
//! The rule is John Heffner's (tcpm, 2006): when memory is over a threshold, kill the
//! connections that hold more than their fair share (threshold / connections) and made no
//! forward progress. Made to hold under real and adversarial traffic:
//! - memory is what the kernel *charges* (`sk_wmem_queued`, `sk_rmem_alloc`), not unacknowledged
//!   bytes: a peer with a tiny window makes the kernel cut the queue into tiny skbs and pay many
//!   times the SEND-Q. A socket is judged on what its peer makes the kernel hold (the send side,
//!   and the receive side while segments wait beyond a hole); data received in order and not
//!   read is the application's;
//! - a slow reader is judged on its drain rate over a window of several seconds, never one
//!   interval, so ACKs that arrive in bursts are not mistaken for a trickle ([`judge`]);
//! - offenders are ranked by evidence (byte-milliseconds over the share), worst first;
//! - a remote whose connections were destroyed again and again is a repeat offender: its new
//!   connections get no grace ([`repeat`]), and the kernel gives them a small send buffer;
//!   a remote the fleet contains (a CrowdSec decision, [`fleet`]) is judged the same way;
//! - when pressure stays over the threshold and nothing is over its share, stalled sockets
//!   become candidates regardless of share (never a progressing one);
//! - a destroy that failed frees nothing: the next candidate is taken ([`plan`]).
pub mod decision;
pub mod episode;
pub mod fleet;
pub mod history;
pub mod judge;
pub mod plan;
pub mod population;
#[cfg(test)]
mod property;
#[cfg(test)]
mod property_revisit;
pub mod relay;
pub mod remote;
pub mod remote_cap;
pub mod repeat;
pub mod stall;
pub mod storm;
#[cfg(test)]
pub(crate) mod testing;

use std::collections::HashSet;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use self::{
    decision::{Assessment, Decision, Reason},
    judge::Judge,
    plan::{Outcome, Plan, Taken},
    population::Population,
};
pub use crate::model::fairness::Fairness;
use crate::model::socket::Socket;

/// `--policy`: how many offenders go once pressure is over the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Destroy the worst offenders until the projected pressure is back at the low line.
    Budget,
    /// Destroy every offender, as the 2006 script did.
    Heffner,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Budget, Kind::Heffner];

    /// As `--policy` and the config file take it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::Heffner => "heffner",
        }
    }
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
    /// The low line (`--low-water`): an episode of pressure ends once pressure stayed at or
    /// under it for a while, and within an episode the budget aims for it ([`episode`]).
    pub low_water: u64,
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
    /// Proxy mode (`--proxy`, `--orphan-after`): beyond the cap, orphans that relayed nothing
    /// for this long go first, and a connection that relays for an open socket never goes.
    /// `None` without proxy mode.
    pub orphan_after_ms: Option<u64>,
    pub repeat: RepeatRule,
}

/// Intervals of an episode over the threshold after which stalled sockets under their share
/// become candidates: long enough that the fair-share rule had its chance, short enough that a
/// spread attack cannot hold memory for long.
pub const ESCALATE_AFTER_INTERVALS: u32 = 4;

/// `--low-water` by default, as a percentage of the threshold: where the kernel leaves its own
/// TCP memory pressure mode (`tcp_mem[0]`, 3/4 of `tcp_mem[1]`).
pub const DEFAULT_LOW_WATER_PERCENT: u64 = 75;

/// Pressure under this percentage of the threshold is quiet: nothing can be chosen for memory,
/// and the rule keeps no over-share history (a slow drain is measured from the moment pressure
/// reaches this line). The agent then reads a summary of the sockets, or nothing at all: pressure
/// would have to double within one interval to cross the threshold unseen.
pub const QUIET_BELOW_PERCENT: u64 = 50;

/// The low line at `percent` of `threshold`.
pub fn low_water(threshold: u64, percent: u64) -> u64 {
    (u128::from(threshold) * u128::from(percent) / 100) as u64
}

/// Whether `pressure` is quiet against `threshold` ([`QUIET_BELOW_PERCENT`]).
pub fn quiet(pressure: u64, threshold: u64) -> bool {
    pressure.saturating_mul(100) < threshold.saturating_mul(QUIET_BELOW_PERCENT)
}
