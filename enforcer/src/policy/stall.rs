//! When a socket is stalled: no forward progress for `--stall`, and for longer than its own path
//! explains. A satellite client or a lossy path recovers a lost segment in retransmission
//! timeouts of its own RTT, which on a 600 ms path with a bloated bottleneck queue add up to
//! seconds: such a client is judged on its own clock, a zero-window peer on `--stall`.
use super::Policy;
use crate::model::socket::Socket;

/// How many of the socket's own retransmission timeouts a stall must outlast when the peer's
/// window is open: a first RTO and a second, backed-off one (RTO + 2 × RTO) are what loss
/// recovery takes on any path before it can be called stuck.
const PATH_RTOS: u64 = 3;

/// ...and at most this many times `--stall`, so a path cannot hide a peer that never
/// acknowledges for longer.
const PATH_STALL_CAP: u64 = 4;

/// How long a socket must go without progress to be stalled: `--stall`, or, while the peer's
/// window is open (the kernel retransmits, the peer has not said it stopped reading), as long
/// as its own path's loss recovery takes, up to `PATH_STALL_CAP` × `--stall`. A zero window is
/// the peer's own choice, judged on `--stall` alone.
pub fn stall_needed_ms(p: &Policy, s: &Socket) -> u64 {
    if s.peer_window == 0 {
        return p.stall_ms;
    }
    p.stall_ms.max((PATH_RTOS * s.rto_ms).min(PATH_STALL_CAP * p.stall_ms))
}

/// How long a socket must receive nothing in order, while segments wait beyond a hole, to be
/// stuck on its receive side: `--stall`, or as long as loss recovery on its path takes (the peer
/// fills a hole with its own retransmissions, on its own clock), up to `PATH_STALL_CAP` ×
/// `--stall`.
pub fn rx_stall_needed_ms(p: &Policy, s: &Socket) -> u64 {
    p.stall_ms.max((PATH_RTOS * s.rto_ms).min(PATH_STALL_CAP * p.stall_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{policy, sock};

    #[test]
    fn a_slow_path_earns_a_longer_stall_a_closed_window_does_not() {
        let mut p = policy(8 << 20);
        p.stall_ms = 3000;
        let mut s = sock(1, "192.0.2.1:1", 1 << 20, 0, 0);
        s.peer_window = 65535;
        // Loopback: the kernel's 200 ms floor, --stall rules.
        assert_eq!(stall_needed_ms(&p, &s), 3000);
        // A satellite path whose queue inflated the RTT to 1.6 s: RTO 2.1 s, three of them.
        s.rto_ms = 2100;
        assert_eq!(stall_needed_ms(&p, &s), 6300);
        // ...at most 4 × --stall however slow.
        s.rto_ms = 60_000;
        assert_eq!(stall_needed_ms(&p, &s), 12_000);
        // A zero window is the peer's doing.
        s.peer_window = 0;
        assert_eq!(stall_needed_ms(&p, &s), 3000);
    }
}
