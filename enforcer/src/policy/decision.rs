//! What the rule says of a socket: a decision with its reason and evidence, or, for display,
//! its assessment.
use serde::Serialize;

use crate::model::socket::Socket;

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
    /// A stalled connection of a repeat offender.
    RepeatOffender,
    /// A stalled connection of a remote the fleet contains (a CrowdSec decision).
    ContainedByCrowdsec,
    /// Proxy mode, beyond `--max-per-remote` connections of its remote: it relays for nobody
    /// (the socket its bytes went to closed) and relayed nothing for `--orphan-after`.
    Orphan,
    /// Over its share on the receive side: segments wait beyond a hole the peer has not filled
    /// (no read can free them) and nothing arrived in order for `--stall`.
    OutOfOrder,
}

/// Each reason's code in the kill journal's ring (0 is "unknown") and its name in logs, JSON,
/// metrics and filters: one table, so they never disagree. Codes are what earlier agents wrote:
/// never renumber.
const REASONS: [(Reason, u8, &str); 8] = [
    (Reason::Stalled, 1, "stalled"),
    (Reason::SlowDrain, 2, "slow_drain"),
    (Reason::RemoteCap, 3, "remote_cap"),
    (Reason::StalledUnderShare, 4, "stalled_under_share"),
    (Reason::RepeatOffender, 5, "repeat_offender"),
    (Reason::Orphan, 6, "orphan"),
    (Reason::OutOfOrder, 7, "out_of_order"),
    (Reason::ContainedByCrowdsec, 8, "contained_by_crowdsec"),
];

impl Reason {
    pub const ALL: [Reason; 8] = [
        REASONS[0].0,
        REASONS[1].0,
        REASONS[2].0,
        REASONS[3].0,
        REASONS[4].0,
        REASONS[5].0,
        REASONS[6].0,
        REASONS[7].0,
    ];

    /// Whether it says the remote misbehaved (what makes repeat offenders): a connection the
    /// per-remote cap evicts is the host holding too much for one remote, not the remote
    /// holding memory.
    pub fn blames_the_remote(self) -> bool {
        !matches!(self, Self::RemoteCap | Self::Orphan)
    }

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

impl Decision {
    /// Whether destroying it counts against its remote (repeat offenders): not for a per-remote
    /// cap's reasons, and not for a stall with the peer's window open while the kernel's
    /// retransmissions timed out (a lossy path or an outage explains that as well as a peer that
    /// stopped acknowledging; the stall rule takes the socket, the remote is not blamed).
    pub fn blames_the_remote(&self) -> bool {
        let s = &self.socket;
        let path_explains = s.peer_window > 0 && s.rtos > 0;
        self.reason.blames_the_remote()
            && !(path_explains
                && matches!(
                    self.reason,
                    Reason::Stalled | Reason::StalledUnderShare | Reason::RepeatOffender | Reason::ContainedByCrowdsec
                ))
    }
}

impl std::str::FromStr for Reason {
    type Err = String;

    /// As the kill log writes it (`slow_drain`; `-` works for `_`).
    fn from_str(s: &str) -> Result<Self, String> {
        let want = s.replace('-', "_");
        Reason::ALL.into_iter().find(|r| r.as_str() == want).ok_or_else(|| {
            let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
            format!("`{s}` is not a reason: {}", names.join(", "))
        })
    }
}

/// What the rule makes of one socket, for display (`enforcer top`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Assessment {
    pub fair_share: u64,
    pub stalled_ms: u64,
    /// How long it must stall to be stalled (`--stall`, or longer on a slow path).
    pub stall_needed_ms: u64,
    /// How long nothing has arrived in order while segments wait beyond a hole; 0 without any.
    pub rx_stalled_ms: u64,
    /// How long that must last to be stuck on the receive side.
    pub rx_stall_needed_ms: u64,
    /// At the rate acknowledged over the drain window; None until the socket has been over its
    /// share for a whole window, or when the peer drained what the window started with.
    pub drain_estimate_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_keep_their_meaning() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::from_code(0), None);
        // Codes of rings written by earlier agents keep their meaning.
        assert_eq!((Reason::Stalled.code(), Reason::SlowDrain.code()), (1, 2));
    }

    #[test]
    fn reasons_parse_as_the_kill_log_writes_them() {
        assert_eq!("slow-drain".parse(), Ok(Reason::SlowDrain));
        assert_eq!("stalled_under_share".parse(), Ok(Reason::StalledUnderShare));
        assert!("bored".parse::<Reason>().is_err());
    }
}
