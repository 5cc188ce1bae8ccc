//! Evidence per remote (`Fairness::remote`: an address, a fairness prefix, an IPv6 /64), as well
//! as per connection. A remote can hold memory with connections none of which lives long enough
//! to be an offender: one that opens a zero-window connection every 100 ms and resets each
//! after 2.5 s holds 25 connections' worth all the time, each gone before `--stall`. What such a
//! remote cannot hide is that, taken together, its connections hold more than a remote's share
//! and none of them moves: a remote that does so for `--stall`, interval after interval, while
//! none of its connections is stalled long enough to be judged on its own, is stuck, and the
//! agent contains it (its new connections get a small send buffer). Protected connections count
//! for nothing here, as everywhere.
//!
//! A remote's share is the threshold over the remotes that hold memory now (what its peers make
//! the kernel hold: `Socket::held_by_peer`). Progress is its connections moving bytes (being
//! acknowledged, or sending in order), together and over the streak so far, fast enough to drain
//! what the remote holds within `--max-drain` (a connection that drained its queue leaves the scan
//! and says nothing): a download behind a shared address (NAT) keeps the address from being stuck,
//! a trickle beside a churn does not. A remote with one connection holding memory is the
//! connection rules' alone, and a remote is given as long as its largest connection's path
//! explains (`stall_needed_ms`).
use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use super::{
    Policy,
    repeat::{Flagged, RepeatOffenders, Why},
    stall::stall_needed_ms,
};
use crate::model::{fairness::Fairness, socket::Socket};

/// What is kept of a remote between snapshots, while it holds more than its share.
#[derive(Debug, Default, Clone)]
struct Held {
    /// Since when (the first snapshot of the streak) it has held more than its share without
    /// progress.
    stuck_since_ms: u64,
    /// Its connections' bytes moved (acknowledged, and received in order) when the streak began
    /// (or when a connection was first seen in it), by cookie.
    base: HashMap<u64, u64>,
    /// The connections it had when the streak began.
    founders: HashSet<u64>,
}

/// The remotes over their share, and for how long without progress.
#[derive(Debug, Default, Clone)]
pub struct RemoteEvidence {
    held: HashMap<IpNet, Held>,
}

/// A remote's standing in one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Memory its connections are charged for what it did, in all (`Socket::held_by_peer`).
    pub charged: u64,
    /// The threshold over the remotes holding memory now.
    pub share: u64,
    /// How long it has held more than its share with none of its connections progressing; 0
    /// when it holds no more than its share or a connection of it progressed.
    pub stuck_ms: u64,
    /// What the connections it had when the streak began hold now.
    pub founders_hold: u64,
}

impl RemoteEvidence {
    /// Forgets everything: pressure went quiet, or an interval was not judged.
    pub fn clear(&mut self) {
        self.held.clear();
    }

    /// Updates the evidence with one snapshot taken at `now_ms` under `threshold`, and returns
    /// each remote holding memory with its standing. Its connections progress when they are
    /// acknowledged fast enough to drain what the remote holds within `drain_ms`.
    pub fn update<'a>(
        &mut self,
        fairness: Fairness,
        sockets: impl Iterator<Item = &'a Socket>,
        threshold: u64,
        drain_ms: u64,
        now_ms: u64,
    ) -> HashMap<IpNet, Standing> {
        let mut by_remote: HashMap<IpNet, Vec<&Socket>> = HashMap::new();
        for s in sockets.filter(|s| s.held_by_peer() > 0) {
            by_remote.entry(fairness.remote(s.remote.ip())).or_default().push(s);
        }
        let share = threshold / (by_remote.len() as u64).max(1);
        let mut prev = std::mem::take(&mut self.held);
        let mut out = HashMap::with_capacity(by_remote.len());
        for (remote, conns) in by_remote {
            let charged: u64 = conns.iter().map(|s| s.held_by_peer()).sum();
            if charged <= share {
                out.insert(remote, Standing { charged, share, stuck_ms: 0, founders_hold: 0 });
                continue;
            }
            let before = prev.remove(&remote);
            // Progress is acknowledging, over the whole streak, at a rate that would drain what
            // it holds within `drain_ms`: a connection that trickles (a decoy beside a churn) is
            // none, and a slow path whose ACKs come in bursts an RTT apart (a satellite link's
            // 1.2 s, longer than an interval) is judged on what it did since the streak began,
            // not on the last interval alone.
            let progressed = before.as_ref().is_some_and(|h| {
                let acked: u64 =
                    conns.iter().filter_map(|s| h.base.get(&s.cookie).map(|&a| moved(s).saturating_sub(a))).sum();
                let elapsed = now_ms.saturating_sub(h.stuck_since_ms).max(1);
                u128::from(acked) * u128::from(drain_ms) >= u128::from(charged) * u128::from(elapsed)
            });
            let held = match before {
                Some(mut h) if !progressed => {
                    // Connections new to the streak count from now.
                    for s in &conns {
                        h.base.entry(s.cookie).or_insert(moved(s));
                    }
                    h
                }
                _ => Held {
                    stuck_since_ms: now_ms,
                    base: conns.iter().map(|s| (s.cookie, moved(s))).collect(),
                    founders: conns.iter().map(|s| s.cookie).collect(),
                },
            };
            let stuck_since_ms = held.stuck_since_ms;
            let founders_hold =
                conns.iter().filter(|s| held.founders.contains(&s.cookie)).map(|s| s.held_by_peer()).sum();
            self.held.insert(remote, held);
            out.insert(remote, Standing { charged, share, stuck_ms: now_ms - stuck_since_ms, founders_hold });
        }
        out
    }
}

impl RemoteEvidence {
    /// One judgement's part for remotes, while pressure is over the threshold: updates the
    /// evidence with `sockets` (protected ones count for nothing) and flags, in `repeat`, each
    /// remote stuck for `--stall` whose memory hides in connections none of which stays stalled
    /// long enough to be judged on its own (a connection that does is left to the connection
    /// rules, and to repeat destroys). Returns the remotes this made repeat offenders.
    pub fn flag_stuck(
        &mut self,
        p: &Policy,
        sockets: &[Socket],
        repeat: &mut RepeatOffenders,
        now_ms: u64,
    ) -> Vec<Flagged> {
        let judged = sockets.iter().filter(|s| !p.protect.covers(s));
        let standings = self.update(p.fairness, judged, p.threshold, p.max_drain_ms, now_ms);
        // What each remote's connections say for it. A remote is stuck as a remote only when the
        // connections it had when the streak began hold no more than its share (what it holds
        // beyond is in connections that came since: a churn), and it has been stuck an interval
        // longer than any of them has been stalled (the walks date the two up to an interval
        // apart): no single connection explains it, so the connection rules cannot take it. It has two connections holding memory at least (one
        // is the connection rules' to judge), and is stuck for as long as the path of the
        // connection holding the most explains (`stall_needed_ms`: a satellite download's loss
        // recovery is not a remote holding memory, a zero-window churn gets `--stall`).
        let mut said: HashMap<IpNet, Said> = HashMap::new();
        for s in sockets.iter().filter(|s| !p.protect.covers(s) && s.held_by_peer() > 0) {
            let e = said.entry(p.fairness.remote(s.remote.ip())).or_default();
            e.holding += 1;
            let rx_stalled_ms = if s.out_of_order { s.rx_idle_ms } else { 0 };
            e.longest_stall_ms = e.longest_stall_ms.max(s.stalled_ms).max(rx_stalled_ms);
            if s.held_by_peer() > e.largest {
                (e.largest, e.needed_ms) = (s.held_by_peer(), stall_needed_ms(p, s));
            }
        }
        let mut stuck: Vec<_> = standings
            .into_iter()
            .filter(|(remote, s)| {
                said.get(remote).is_some_and(|c| {
                    c.holding >= 2
                        && s.founders_hold <= s.share
                        && s.stuck_ms >= p.stall_ms.max(c.needed_ms)
                        && s.stuck_ms > c.longest_stall_ms + p.interval_ms
                })
            })
            .collect();
        stuck.sort_by_key(|(remote, _)| *remote);
        stuck
            .into_iter()
            .filter_map(|(remote, s)| {
                repeat.stuck(remote, Why::Stuck { charged: s.charged, share: s.share, stuck_ms: s.stuck_ms }, now_ms)
            })
            .collect()
    }
}

/// A connection's progress both ways: bytes the peer acknowledged, and bytes it sent in order
/// (what fills a hole on the receive side).
fn moved(s: &Socket) -> u64 {
    s.bytes_acked.saturating_add(s.bytes_received)
}

/// What a remote's connections say for it in one snapshot ([`RemoteEvidence::flag_stuck`]).
#[derive(Debug, Default)]
struct Said {
    /// Connections holding memory.
    holding: usize,
    longest_stall_ms: u64,
    /// The most one of them holds, and the stall its path needs.
    largest: u64,
    needed_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        Judge,
        testing::{policy, sock},
    };

    /// `n` connections of `remote` holding 1 MiB each, none of them progressing, cookies from
    /// `first`.
    fn churn(remote: &str, first: u64, n: u64) -> Vec<Socket> {
        (first..first + n).map(|c| sock(c, &format!("{remote}:{}", 1000 + c), 1 << 20, 2000, 4096)).collect()
    }

    #[test]
    fn a_remote_whose_short_connections_hold_memory_without_progress_is_stuck() {
        let mut e = RemoteEvidence::default();
        let threshold = 8 << 20;
        // Every 250 ms the connections are new ones (each lives 2.5 s in the real attack): no
        // connection is seen long, the remote as a whole holds 25 MiB throughout.
        let mut stuck = Vec::new();
        for i in 0..16u64 {
            let mut now = churn("192.0.2.66", 1 + i * 3, 25);
            now.push(sock(9000, "198.51.100.1:443", 64 << 10, 0, i * 1_000_000));
            let standing = e.update(Fairness::Connection, now.iter(), threshold, 30_000, i * 250);
            stuck.push(standing[&"192.0.2.66/32".parse().expect("net")].stuck_ms);
        }
        assert_eq!(stuck[0], 0);
        assert_eq!(*stuck.last().expect("samples"), 15 * 250);
    }

    #[test]
    fn one_progressing_connection_keeps_a_shared_address_from_being_stuck() {
        let mut e = RemoteEvidence::default();
        let mut acked = 0;
        for i in 0..16u64 {
            // A NAT address: an attacker's stalled connections and a download that progresses.
            let mut now = churn("203.0.113.5", 1, 10);
            acked += 256 << 10;
            now.push(sock(100, "203.0.113.5:5000", 2 << 20, 0, acked));
            let standing = e.update(Fairness::RemoteIp, now.iter(), 8 << 20, 30_000, i * 250);
            assert_eq!(standing[&"203.0.113.5/32".parse().expect("net")].stuck_ms, 0, "interval {i}");
        }
    }

    #[test]
    fn a_rotating_ipv6_host_is_one_remote() {
        let mut e = RemoteEvidence::default();
        let sockets: Vec<Socket> =
            (1..=20u64).map(|c| sock(c, &format!("[2001:db8::{c:x}]:1000"), 1 << 20, 1000, 0)).collect();
        let standing = e.update(Fairness::RemoteIp, sockets.iter(), 8 << 20, 30_000, 0);
        assert_eq!(standing.len(), 1);
        assert_eq!(standing[&"2001:db8::/64".parse().expect("net")].charged, 20 << 20);
    }

    #[test]
    fn a_remote_whose_short_connections_hold_memory_is_flagged_and_a_plain_attacker_is_not() {
        let mut p = policy(8 << 20);
        (p.stall_ms, p.interval_ms) = (3000, 1000);
        let mut j = Judge::new(p.clone());
        // Every second new zero-window connections of one address, each gone before --stall
        // (the client resets it after 2.5 s): 25 of them hold 25 MiB. And a reader elsewhere.
        let mut flags = Vec::new();
        for i in 0..6u64 {
            let mut sockets: Vec<Socket> = (0..25)
                .map(|k| sock(i * 100 + k, &format!("192.0.2.66:{}", 1000 + k), 1 << 20, 500 + 80 * k, 4096))
                .collect();
            sockets.push(sock(9000, "198.51.100.1:443", 64 << 10, 0, i << 20));
            let plan = j.judge_all(&sockets, i * 1000, 26 << 20);
            assert!(crate::policy::testing::chosen(&plan).is_empty(), "no connection of it lives to be an offender");
            flags.extend(plan.flagged);
        }
        assert_eq!(flags.len(), 1, "{flags:?}");
        assert_eq!(flags[0].remote.to_string(), "192.0.2.66/32");
        // Stuck from the first look; flagged once that is an interval longer than any of its
        // connections stalled (2.5 s at most here).
        assert!(matches!(flags[0].why, Why::Stuck { stuck_ms: 4000, .. }), "{flags:?}");
        // One connection stalled for good: the stall rule takes it, and its remote is not
        // flagged for it (that is what repeat destroys are for).
        let mut j = Judge::new(p.clone());
        for i in 0..6u64 {
            let s = sock(1, "192.0.2.7:1", 9 << 20, i * 1000, 0);
            assert!(j.judge_all(&[s], i * 1000, 9 << 20).flagged.is_empty(), "second {i}");
        }
        // Protected connections are no evidence either.
        p.protect.ports.push(80);
        let mut j = Judge::new(p);
        for i in 0..6u64 {
            let sockets: Vec<Socket> = (0..25).map(|k| sock(i * 100 + k, "192.0.2.66:1", 1 << 20, 500, 4096)).collect();
            assert!(j.judge_all(&sockets, i * 1000, 26 << 20).flagged.is_empty());
        }
    }

    #[test]
    fn a_slow_path_whose_acks_come_an_rtt_apart_is_not_stuck() {
        // Two satellite downloads behind one address (1.2 s RTT, 250 ms snapshots): 1 MiB each
        // queued, and 150 KB acknowledged every fifth snapshot, nothing in between. Over the
        // streak that drains 2 MiB in 17 s, within --max-drain.
        let mut e = RemoteEvidence::default();
        for i in 0..40u64 {
            let acked = (i / 5) * 150_000;
            let now = [sock(1, "192.0.2.8:1000", 1 << 20, 0, acked), sock(2, "192.0.2.8:1001", 1 << 20, 0, acked)];
            let standing = e.update(Fairness::RemoteIp, now.iter(), 1 << 20, 30_000, i * 250);
            assert!(standing[&"192.0.2.8/32".parse().expect("net")].stuck_ms < 1250, "snapshot {i}");
        }
    }

    #[test]
    fn a_remote_gets_the_stall_its_largest_connections_path_needs_and_needs_two_connections() {
        let mut p = policy(8 << 20);
        (p.stall_ms, p.interval_ms) = (3000, 1000);
        // Every second, new connections of one remote: none lives long, and none progresses.
        let flagged_at = |p: &Policy, n: u64, window: u64, rto_ms: u64| {
            let mut j = Judge::new(p.clone());
            (0..14u64).find(|&i| {
                let sockets: Vec<Socket> = (0..n)
                    .map(|k| {
                        let mut s = sock(i * 100 + k, &format!("192.0.2.66:{}", 1000 + k), 20 << 20, 500, 4096);
                        (s.peer_window, s.rto_ms) = (window, rto_ms);
                        s
                    })
                    .collect();
                !j.judge_all(&sockets, i * 1000, 30 << 20).flagged.is_empty()
            })
        };
        // Zero windows: --stall (and an interval more than the longest stall, 500 ms).
        assert_eq!(flagged_at(&p, 2, 0, 200), Some(3));
        // An open window on a 2 s RTO path: loss recovery explains 6 s.
        assert_eq!(flagged_at(&p, 2, 65535, 2000), Some(6));
        // One connection holding it all is the connection rules' to judge.
        assert_eq!(flagged_at(&p, 1, 0, 200), None);
    }

    #[test]
    fn a_remote_whose_connections_are_stalled_long_enough_is_left_to_the_connection_rules() {
        // Two zero-window connections of one address, their stalls dated by a walk 400 ms after
        // the remote's streak began (a slow walk under load, as on 6.1 under emulation): from 3 s
        // the remote reads stuck an interval longer than either has stalled, yet the two it had
        // from the start hold it all, and the connection rule takes them once stalled for
        // --stall. No flag: a flag is for memory that churning connections hold.
        let mut p = policy(8 << 20);
        (p.stall_ms, p.interval_ms) = (3000, 250);
        let mut j = Judge::new(p);
        for t in (0..=3400u64).step_by(200) {
            let stalled = t.saturating_sub(400);
            let sockets: Vec<Socket> =
                (1..=2).map(|c| sock(c, &format!("192.0.2.66:{c}"), 5 << 20, stalled, 4096)).collect();
            let plan = j.judge_all(&sockets, 10_000 + t, 16 << 20);
            assert!(plan.flagged.is_empty(), "flagged at {t} ms: {:?}", plan.flagged);
            if stalled >= 3000 {
                let d = crate::policy::testing::chosen(&plan);
                assert!(d.len() == 2 && d.iter().all(|d| d.reason == crate::policy::Reason::Stalled), "{d:?}");
            }
        }
    }
}
