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
//! A remote's share is the threshold over the remotes that hold memory now. Progress is its
//! connections seen in two snapshots in a row being acknowledged, together, fast enough to drain
//! what the remote holds within `--max-drain` (a connection that drained its queue leaves the scan
//! and says nothing): a download behind a shared address (NAT) keeps the address from being stuck,
//! a trickle beside a churn does not.
use std::collections::HashMap;

use ipnet::IpNet;

use super::{
    Policy,
    repeat::{Flagged, RepeatOffenders, Why},
};
use crate::model::{fairness::Fairness, socket::Socket};

/// What is kept of a remote between snapshots, while it holds more than its share.
#[derive(Debug, Default)]
struct Held {
    /// Since when (the first snapshot of the streak) it has held more than its share without
    /// progress.
    stuck_since_ms: u64,
    /// When the last snapshot was taken, and its connections' acknowledged bytes then, by cookie.
    at_ms: u64,
    acked: HashMap<u64, u64>,
}

/// The remotes over their share, and for how long without progress.
#[derive(Debug, Default)]
pub struct RemoteEvidence {
    held: HashMap<IpNet, Held>,
}

/// A remote's standing in one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Memory its connections are charged, in all.
    pub charged: u64,
    /// The threshold over the remotes holding memory now.
    pub share: u64,
    /// How long it has held more than its share with none of its connections progressing; 0
    /// when it holds no more than its share or a connection of it progressed.
    pub stuck_ms: u64,
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
        for s in sockets.filter(|s| s.charged > 0) {
            by_remote.entry(fairness.remote(s.remote.ip())).or_default().push(s);
        }
        let share = threshold / (by_remote.len() as u64).max(1);
        let mut prev = std::mem::take(&mut self.held);
        let mut out = HashMap::with_capacity(by_remote.len());
        for (remote, conns) in by_remote {
            let charged: u64 = conns.iter().map(|s| s.charged).sum();
            if charged <= share {
                out.insert(remote, Standing { charged, share, stuck_ms: 0 });
                continue;
            }
            let before = prev.remove(&remote);
            // Progress is acknowledging at a rate that would drain what it holds within
            // `drain_ms`: a connection that trickles (a decoy beside a churn) is none.
            let progressed = before.as_ref().is_some_and(|h| {
                let acked: u64 =
                    conns.iter().filter_map(|s| h.acked.get(&s.cookie).map(|&a| s.bytes_acked.saturating_sub(a))).sum();
                let elapsed = now_ms.saturating_sub(h.at_ms).max(1);
                u128::from(acked) * u128::from(drain_ms) >= u128::from(charged) * u128::from(elapsed)
            });
            let stuck_since_ms = match before {
                Some(h) if !progressed => h.stuck_since_ms,
                _ => now_ms,
            };
            let acked = conns.iter().map(|s| (s.cookie, s.bytes_acked)).collect();
            self.held.insert(remote, Held { stuck_since_ms, at_ms: now_ms, acked });
            out.insert(remote, Standing { charged, share, stuck_ms: now_ms - stuck_since_ms });
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
        // The longest stall of each remote's connections: a remote is stuck as a remote only when
        // it has been stuck an interval longer than any of its connections has been stalled (the
        // walks date the two up to an interval apart): no single connection explains it, so the
        // connection rules cannot take it.
        let mut longest: HashMap<IpNet, u64> = HashMap::new();
        for s in sockets.iter().filter(|s| !p.protect.covers(s) && s.charged > 0) {
            let e = longest.entry(p.fairness.remote(s.remote.ip())).or_default();
            *e = (*e).max(s.stalled_ms);
        }
        let mut stuck: Vec<_> = standings
            .into_iter()
            .filter(|(remote, s)| {
                s.stuck_ms >= p.stall_ms && s.stuck_ms > longest.get(remote).copied().unwrap_or(0) + p.interval_ms
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
}
