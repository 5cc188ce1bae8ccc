//! Made-up sockets and policies for the rule's unit tests.
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
        recv_charged: 0,
        out_of_order: false,
        peer_window: 0,
        zero_window_ms: 0,
        stalled_ms,
        rx_idle_ms: stalled_ms,
        tx_idle_ms: stalled_ms,
        age_ms: 600_000,
        adopted: false,
        recorded: crate::model::socket::Recorded::Established,
        opened: crate::model::socket::Opened::Peer,
        bytes_acked,
        bytes_received: 0,
        retransmits: 0,
        rtos: 0,
        rto_ms: 200,
        cgroup_id: 1,
        bound_dev_if: 0,
        netns: 0,
        relay: None,
        raw: Default::default(),
    }
}

pub fn policy(threshold: u64) -> Policy {
    Policy {
        threshold,
        low_water: low_water(threshold, DEFAULT_LOW_WATER_PERCENT),
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
        orphan_after_ms: None,
        repeat: RepeatRule { kills: 3, window_ms: 60_000 },
    }
}

/// Everything a plan would destroy if every destroy succeeded.
pub fn chosen(plan: &Plan) -> Vec<crate::policy::Decision> {
    plan.clone().carry_out(usize::MAX, |_| crate::policy::Taken::Done).acted
}

/// The cookies of `d`, sorted.
pub fn cookies(d: &[crate::policy::Decision]) -> Vec<u64> {
    let mut v: Vec<u64> = d.iter().map(|d| d.socket.cookie).collect();
    v.sort_unstable();
    v
}
