//! The enforcement rule, as a pure function: (snapshot, previous snapshot, settings, pressure)
//! -> decisions with reasons. No kernel, no clock, no I/O: everything it needs is passed in.
//!
//! The rule is John Heffner's (tcpm, 2006): when memory is over a threshold, kill the
//! connections that hold more than their fair share (threshold / connections) and made no
//! forward progress in the last second. Extended with fairness per remote, a slow-drain clause
//! for readers that ACK a trickle, protections, a kill budget, and a per-remote cap on idle
//! connections.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use serde::Serialize;

use crate::view::Socket;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fairness {
    /// threshold / connections (the 2006 rule).
    Connection,
    /// threshold / remote addresses, then / that remote's connections.
    RemoteIp,
    /// Like `RemoteIp`, with remotes grouped by prefix.
    RemotePrefix { v4: u8, v6: u8 },
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

#[derive(Debug, Clone)]
pub struct Policy {
    pub threshold: u64,
    pub stall_ms: u64,
    pub max_drain_ms: u64,
    pub fairness: Fairness,
    pub kind: Kind,
    pub max_kills: usize,
    pub protect: Protect,
    /// Per-remote cap on connections, enforced on idle ones (`--max-per-remote`, `--idle`).
    pub max_per_remote: Option<usize>,
    pub idle_ms: u64,
    /// What destroying a socket takes off the pressure: its send queue when pressure is the sum
    /// of send queues, its charged memory (`sk_wmem_queued`) when pressure is kernel memory.
    pub frees_wmem: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Over its share and `snd_una` has not moved for `--stall`.
    Stalled,
    /// Over its share and its queue would take longer than `--max-drain` at its recent rate.
    SlowDrain,
    /// Beyond `--max-per-remote` connections of its remote and idle for `--idle`.
    RemoteCap,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stalled => "stalled",
            Self::SlowDrain => "slow_drain",
            Self::RemoteCap => "remote_cap",
        }
    }
}

/// What was seen of a socket in the previous snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    pub bytes_acked: u64,
    pub send_queue: u64,
    /// Agent clock (ms) before which the current backlog did not exist: the last snapshot that
    /// saw nothing outstanding. None when the backlog predates every snapshot.
    pub queued_since_ms: Option<u64>,
}

/// The agent's clock at a snapshot and the time since the previous one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tick {
    pub now_ms: u64,
    pub elapsed_ms: u64,
}

/// What to remember of `s` for the next snapshot, given what was remembered at the previous one
/// (taken at `before_ms`).
pub fn next_seen(s: &Socket, before: Option<&Seen>, before_ms: u64) -> Seen {
    let queued_since_ms = match before {
        _ if s.send_queue == 0 => None,
        Some(b) if b.send_queue == 0 => Some(before_ms),
        Some(b) => b.queued_since_ms,
        None => None,
    };
    Seen { bytes_acked: s.bytes_acked, send_queue: s.send_queue, queued_since_ms }
}

/// How long the socket has been stalled. The tracker dates a stall from the last ACK that moved
/// `snd_una`; a backlog that appeared after some snapshot saw nothing outstanding cannot have
/// been stalled for longer than since that snapshot.
pub fn stalled_ms(s: &Socket, seen: Option<&Seen>, tick: Tick) -> u64 {
    match seen {
        Some(x) if x.send_queue == 0 => s.stalled_ms.min(tick.elapsed_ms),
        Some(Seen { queued_since_ms: Some(t), .. }) => s.stalled_ms.min(tick.now_ms.saturating_sub(*t)),
        _ => s.stalled_ms,
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub socket: Socket,
    pub reason: Reason,
    pub fair_share: u64,
    /// None: no measurable progress since the previous snapshot (or no previous snapshot).
    pub drain_estimate_ms: Option<u64>,
}

/// The fair share of every socket, in snapshot order.
pub fn fair_shares(fairness: Fairness, sockets: &[Socket], threshold: u64) -> Vec<u64> {
    if sockets.is_empty() {
        return Vec::new();
    }
    let group = |ip: IpAddr| -> IpAddr {
        match (fairness, ip) {
            (Fairness::RemotePrefix { v4, .. }, IpAddr::V4(_)) => IpNet::new(ip, v4).map(|n| n.network()).unwrap_or(ip),
            (Fairness::RemotePrefix { v6, .. }, IpAddr::V6(_)) => IpNet::new(ip, v6).map(|n| n.network()).unwrap_or(ip),
            _ => ip,
        }
    };
    match fairness {
        Fairness::Connection => vec![threshold / sockets.len() as u64; sockets.len()],
        Fairness::RemoteIp | Fairness::RemotePrefix { .. } => {
            let mut per_group: HashMap<IpAddr, u64> = HashMap::new();
            for s in sockets {
                *per_group.entry(group(s.remote.ip())).or_default() += 1;
            }
            let per_remote = threshold / per_group.len() as u64;
            sockets.iter().map(|s| per_remote / per_group[&group(s.remote.ip())]).collect()
        }
    }
}

/// Milliseconds the send queue would take to drain at the rate acked since the previous snapshot.
/// Only a backlog the peer failed to drain says anything about the peer: when the previous
/// snapshot's queue was empty or fully acknowledged since, the rate was the application's.
pub fn drain_estimate_ms(s: &Socket, seen: Option<&Seen>, elapsed_ms: u64) -> Option<u64> {
    let seen = seen?;
    let acked = s.bytes_acked.checked_sub(seen.bytes_acked)?;
    if acked == 0 || elapsed_ms == 0 || acked >= seen.send_queue {
        return None;
    }
    Some(((s.send_queue as u128 * elapsed_ms as u128) / acked as u128).min(u64::MAX as u128) as u64)
}

/// What one interval decided.
#[derive(Debug, Default)]
pub struct Verdict {
    pub decisions: Vec<Decision>,
    /// Sockets the rule chose but `max_kills` held back this interval.
    pub capped: usize,
}

pub fn decide(p: &Policy, sockets: &[Socket], prev: &HashMap<u64, Seen>, tick: Tick, pressure: u64) -> Verdict {
    let mut out = Vec::new();
    let mut capped = 0;
    if pressure > p.threshold {
        let shares = fair_shares(p.fairness, sockets, p.threshold);
        let mut offenders: Vec<Decision> = sockets
            .iter()
            .zip(&shares)
            .filter(|(s, share)| s.send_queue > **share && !p.protect.covers(s))
            .filter_map(|(s, &share)| {
                let seen = prev.get(&s.cookie);
                let drain = drain_estimate_ms(s, seen, tick.elapsed_ms);
                let stalled = stalled_ms(s, seen, tick);
                let reason = if stalled >= p.stall_ms {
                    Reason::Stalled
                } else if drain.is_some_and(|d| d > p.max_drain_ms) {
                    Reason::SlowDrain
                } else {
                    return None;
                };
                let socket = Socket { stalled_ms: stalled, ..s.clone() };
                Some(Decision { socket, reason, fair_share: share, drain_estimate_ms: drain })
            })
            .collect();
        // Worst first: most bytes over the share, then slowest to drain (no progress = slowest).
        offenders.sort_by(|a, b| {
            let over = |d: &Decision| d.socket.send_queue - d.fair_share;
            over(b).cmp(&over(a)).then_with(|| {
                let drain = |d: &Decision| d.drain_estimate_ms.unwrap_or(u64::MAX);
                drain(b).cmp(&drain(a))
            })
        });
        let mut projected = pressure;
        for d in offenders {
            if p.kind == Kind::Budget && projected <= p.threshold {
                break;
            }
            if out.len() >= p.max_kills {
                capped += 1;
                continue;
            }
            let freed = if p.frees_wmem { d.socket.wmem_queued.max(d.socket.send_queue) } else { d.socket.send_queue };
            projected = projected.saturating_sub(freed);
            out.push(d);
        }
    }
    if let Some(cap) = p.max_per_remote {
        let chosen: HashSet<u64> = out.iter().map(|d| d.socket.cookie).collect();
        let mut by_remote: HashMap<IpAddr, Vec<&Socket>> = HashMap::new();
        for s in sockets {
            by_remote.entry(s.remote.ip()).or_default().push(s);
        }
        let mut remotes: Vec<_> = by_remote.into_iter().filter(|(_, v)| v.len() > cap).collect();
        remotes.sort_by_key(|(ip, _)| *ip);
        for (_, conns) in remotes {
            // Connections already chosen for the pressure rule count toward the excess.
            let already = conns.iter().filter(|s| chosen.contains(&s.cookie)).count();
            let excess = (conns.len() - cap).saturating_sub(already);
            let idle = |s: &Socket| s.rx_idle_ms.min(s.tx_idle_ms);
            let mut idle_ones: Vec<&Socket> = conns
                .into_iter()
                .filter(|s| idle(s) >= p.idle_ms && !p.protect.covers(s) && !chosen.contains(&s.cookie))
                .collect();
            // Oldest idle first; among equals the older connection, then the lower cookie, so
            // the choice never depends on the snapshot's order.
            idle_ones.sort_by_key(|s| (std::cmp::Reverse(idle(s)), std::cmp::Reverse(s.age_ms), s.cookie));
            for s in idle_ones.into_iter().take(excess) {
                if out.len() >= p.max_kills {
                    capped += 1;
                    continue;
                }
                out.push(Decision {
                    socket: s.clone(),
                    reason: Reason::RemoteCap,
                    fair_share: 0,
                    drain_estimate_ms: None,
                });
            }
        }
    }
    Verdict { decisions: out, capped }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn sock(cookie: u64, remote: &str, send_queue: u64, stalled_ms: u64, bytes_acked: u64) -> Socket {
        Socket {
            cookie,
            local: "10.0.0.1:80".parse().expect("addr"),
            remote: remote.parse::<SocketAddr>().expect("addr"),
            state: "ESTABLISHED",
            send_queue,
            unsent: 0,
            recv_queue: 0,
            wmem_queued: send_queue,
            peer_window: 0,
            zero_window_ms: 0,
            stalled_ms,
            rx_idle_ms: stalled_ms,
            tx_idle_ms: stalled_ms,
            age_ms: 60_000,
            adopted: false,
            bytes_acked,
            bytes_received: 0,
            retransmits: 0,
            rtos: 0,
            cgroup_id: 1,
            netns: 0,
        }
    }

    fn run(p: &Policy, sockets: &[Socket], prev: &HashMap<u64, Seen>, elapsed_ms: u64, pressure: u64) -> Vec<Decision> {
        decide(p, sockets, prev, Tick { now_ms: 100_000, elapsed_ms }, pressure).decisions
    }

    fn policy(threshold: u64) -> Policy {
        Policy {
            threshold,
            stall_ms: 1000,
            max_drain_ms: 30_000,
            fairness: Fairness::Connection,
            kind: Kind::Budget,
            max_kills: 1000,
            protect: Protect::default(),
            max_per_remote: None,
            idle_ms: 60_000,
            frees_wmem: false,
        }
    }

    fn cookies(d: &[Decision]) -> Vec<u64> {
        let mut v: Vec<u64> = d.iter().map(|d| d.socket.cookie).collect();
        v.sort_unstable();
        v
    }

    /// The 2006 script, case by case: pressure over THRESH, SndUna unchanged since the last
    /// sample, queue over THRESH / connections. Each row: (queue, stalled_ms, killed).
    #[test]
    fn reproduces_the_2006_rule() {
        const THRESH: u64 = 100 << 20;
        let rows: [(u64, u64, bool); 6] = [
            (30 << 20, 5_000, true),  // over share, no progress: killed
            (30 << 20, 200, false),   // over share, progressing: kept
            (20 << 20, 5_000, false), // under share (100 MiB / 4 = 25 MiB): kept
            (26 << 20, 1_000, true),  // over share, exactly a second without progress
            (26 << 20, 999, false),   // a millisecond short of a second
            (0, 10_000, false),       // nothing queued
        ];
        for (queue, stalled, killed) in rows {
            let mut sockets = vec![sock(1, "192.0.2.1:1000", queue, stalled, 0)];
            // Three more connections so the share is THRESH / 4, all harmless.
            for c in 2..=4 {
                sockets.push(sock(c, "192.0.2.2:1000", 1 << 20, 0, 0));
            }
            let mut p = policy(THRESH);
            p.kind = Kind::Heffner;
            let pressure = THRESH + 1;
            let d = run(&p, &sockets, &HashMap::new(), 1000, pressure);
            assert_eq!(cookies(&d) == [1], killed, "queue {queue} stalled {stalled}: {d:?}");
            if killed {
                assert_eq!(d[0].fair_share, THRESH / 4);
                assert_eq!(d[0].reason, Reason::Stalled);
            }
        }
    }

    #[test]
    fn below_threshold_nothing_happens_however_stalled() {
        let sockets = vec![sock(1, "192.0.2.1:1", 50 << 20, 3_600_000, 0)];
        assert!(run(&policy(100 << 20), &sockets, &HashMap::new(), 1000, 100 << 20).is_empty());
    }

    #[test]
    fn slow_drain_is_caught_and_steady_readers_are_not() {
        // 4 MiB queued; the slow one acked 5 KiB in the last second (drain ≈ 800 s), the steady
        // one 6 MiB (drain < 1 s). Neither is stalled.
        let sockets = vec![
            sock(1, "192.0.2.1:1", 4 << 20, 200, 1_000_000 + 5 * 1024),
            sock(2, "192.0.2.2:1", 4 << 20, 0, 1_000_000 + (6 << 20)),
        ];
        let seen = Seen { bytes_acked: 1_000_000, send_queue: 4 << 20, queued_since_ms: None };
        let prev: HashMap<u64, Seen> = [(1, seen), (2, seen)].into();
        let d = run(&policy(1 << 20), &sockets, &prev, 1000, 8 << 20);
        assert_eq!(cookies(&d), [1]);
        assert_eq!(d[0].reason, Reason::SlowDrain);
        assert!(d[0].drain_estimate_ms.is_some_and(|ms| ms > 700_000), "{d:?}");
        // Without a previous sample there is no rate and no slow-drain verdict.
        assert!(run(&policy(1 << 20), &sockets, &HashMap::new(), 1000, 8 << 20).is_empty());
    }

    #[test]
    fn budget_stops_at_threshold_worst_first() {
        let sockets = vec![
            sock(1, "192.0.2.1:1", 3 << 20, 5000, 0),
            sock(2, "192.0.2.2:1", 5 << 20, 5000, 0),
            sock(3, "192.0.2.3:1", 4 << 20, 5000, 0),
        ];
        // Pressure 12 MiB, threshold 8 MiB: killing the 5 MiB one is enough.
        let d = run(&policy(8 << 20), &sockets, &HashMap::new(), 1000, 12 << 20);
        assert_eq!(cookies(&d), [2]);
        let mut p = policy(8 << 20);
        p.kind = Kind::Heffner;
        assert_eq!(cookies(&run(&p, &sockets, &HashMap::new(), 1000, 12 << 20)), [1, 2, 3]);
        p.max_kills = 2;
        let v = decide(&p, &sockets, &HashMap::new(), Tick { now_ms: 100_000, elapsed_ms: 1000 }, 12 << 20);
        assert_eq!(cookies(&v.decisions), [2, 3]);
        assert_eq!(v.capped, 1, "the third offender is held back by max_kills");
    }

    #[test]
    fn protected_sockets_are_never_chosen() {
        let mut sockets =
            vec![sock(1, "192.0.2.1:1", 50 << 20, 5000, 0), sock(2, "198.51.100.7:443", 50 << 20, 5000, 0)];
        sockets.push(sock(3, "203.0.113.9:2", 50 << 20, 5000, 0));
        sockets[2].cgroup_id = 42;
        let mut p = policy(1 << 20);
        p.kind = Kind::Heffner;
        p.protect.cidrs.push("192.0.2.0/24".parse().expect("cidr"));
        p.protect.remote_ports.push(443);
        p.protect.cgroups.insert(42);
        assert!(run(&p, &sockets, &HashMap::new(), 1000, 200 << 20).is_empty());
    }

    #[test]
    fn a_peer_cannot_borrow_protection_with_its_source_port() {
        // Connected to our port 80 from source port 22: --protect-port 22 protects our sshd,
        // not whoever picks 22 as a source port.
        let s = sock(1, "192.0.2.1:22", 50 << 20, 5000, 0);
        let mut p = policy(1 << 20);
        p.protect.ports.push(22);
        assert_eq!(cookies(&run(&p, std::slice::from_ref(&s), &HashMap::new(), 1000, 100 << 20)), [1]);
        p.protect.ports.push(80);
        assert!(run(&p, &[s], &HashMap::new(), 1000, 100 << 20).is_empty());
    }

    #[test]
    fn remote_fairness_gives_one_share_per_remote() {
        // One remote with 10 connections, another with 1; threshold 4 MiB split in two.
        let mut sockets: Vec<Socket> = (1..=10).map(|c| sock(c, "192.0.2.1:1", 500 << 10, 5000, 0)).collect();
        sockets.push(sock(11, "192.0.2.2:1", 500 << 10, 5000, 0));
        let shares = fair_shares(Fairness::RemoteIp, &sockets, 4 << 20);
        assert_eq!(shares[0], (2 << 20) / 10);
        assert_eq!(shares[10], 2 << 20);
        let mut p = policy(4 << 20);
        p.kind = Kind::Heffner;
        p.fairness = Fairness::RemoteIp;
        assert_eq!(cookies(&run(&p, &sockets, &HashMap::new(), 1000, 5 << 20)), (1..=10).collect::<Vec<_>>());
        // Per connection, the lone remote's connection is over its share too.
        p.fairness = Fairness::Connection;
        assert!(cookies(&run(&p, &sockets, &HashMap::new(), 1000, 5 << 20)).contains(&11));
    }

    #[test]
    fn prefix_fairness_groups_remotes() {
        let sockets = vec![
            sock(1, "192.0.2.1:1", 0, 0, 0),
            sock(2, "192.0.2.200:1", 0, 0, 0),
            sock(3, "[2001:db8::1]:1", 0, 0, 0),
        ];
        let shares = fair_shares(Fairness::RemotePrefix { v4: 24, v6: 64 }, &sockets, 1200);
        assert_eq!(shares, [300, 300, 600]);
    }

    #[test]
    fn remote_cap_evicts_oldest_idle_beyond_n_of_crowded_remote_only() {
        let mut sockets: Vec<Socket> = (1..=6).map(|c| sock(c, "192.0.2.1:1", 0, 0, 0)).collect();
        for (i, s) in sockets.iter_mut().enumerate() {
            s.rx_idle_ms = 100_000 + i as u64 * 1000; // cookie 6 idle longest
            s.tx_idle_ms = s.rx_idle_ms;
        }
        sockets[5].rx_idle_ms = 10; // cookie 6 just received data: not idle
        sockets.extend((7..=8).map(|c| {
            let mut s = sock(c, "192.0.2.2:1", 0, 0, 0);
            (s.rx_idle_ms, s.tx_idle_ms) = (500_000, 500_000);
            s
        }));
        let mut p = policy(u64::MAX);
        p.max_per_remote = Some(3);
        p.idle_ms = 60_000;
        let d = run(&p, &sockets, &HashMap::new(), 1000, 0);
        assert_eq!(cookies(&d), [3, 4, 5]);
        assert!(d.iter().all(|d| d.reason == Reason::RemoteCap));
    }

    #[test]
    fn drain_estimate() {
        let s = sock(1, "192.0.2.1:1", 1000, 0, 600);
        let seen = |bytes_acked| Seen { bytes_acked, send_queue: 1000, queued_since_ms: None };
        assert_eq!(drain_estimate_ms(&s, Some(&seen(500)), 1000), Some(10_000));
        assert_eq!(drain_estimate_ms(&s, Some(&seen(600)), 1000), None);
        assert_eq!(drain_estimate_ms(&s, None, 1000), None);
        // The previous backlog was fully acknowledged: the application, not the peer, set the
        // rate (1 KB sent, then 4 MB written).
        let big = sock(1, "192.0.2.1:1", 4 << 20, 0, 1600);
        let before = Seen { bytes_acked: 600, send_queue: 1000, queued_since_ms: None };
        assert_eq!(drain_estimate_ms(&big, Some(&before), 1000), None);
    }

    #[test]
    fn a_stall_is_no_older_than_the_data() {
        // Idle for ten minutes with nothing outstanding, then data queued to a closed window:
        // stalled since the last empty snapshot at most, however long ago the last ACK was.
        let mut s = sock(1, "192.0.2.1:1", 0, 0, 0);
        s.stalled_ms = 600_000;
        let mut seen = next_seen(&s, None, 0); // t=0: nothing outstanding
        s.send_queue = 50 << 20;
        let tick = |now_ms| Tick { now_ms, elapsed_ms: 250 };
        assert_eq!(stalled_ms(&s, Some(&seen), tick(250)), 250);
        for now in [250, 500, 750] {
            seen = next_seen(&s, Some(&seen), now - 250);
            assert_eq!(stalled_ms(&s, Some(&seen), tick(now + 250)), now + 250, "at {now}");
        }
        let prev: HashMap<u64, Seen> = [(1, seen)].into();
        assert!(decide(&policy(1 << 20), &[s.clone()], &prev, tick(900), 60 << 20).decisions.is_empty());
        assert_eq!(decide(&policy(1 << 20), &[s], &prev, tick(1000), 60 << 20).decisions.len(), 1);
    }
}
