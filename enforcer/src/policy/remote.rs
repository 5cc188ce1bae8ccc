//! Evidence per remote (`Fairness::remote`: an address, a fairness prefix, an IPv6 /64), as well
//! as per connection. A remote can hold memory with connections none of which lives long enough
//! to be an offender: one that opens a zero-window connection every 100 ms and resets each
//! after 2.5 s holds 25 connections' worth all the time, each gone before `--stall`. What such a
//! remote cannot hide is that, taken together, its connections hold more than a remote's share
//! and none of them moves: a remote that does so for `--stall`, interval after interval, is
//! stuck, and the agent contains it (its new connections get a small send buffer).
//!
//! A remote's share is the threshold over the remotes that hold memory now. Progress is any of
//! its connections seen in two snapshots in a row whose peer acknowledged more (a connection that
//! drained its queue leaves the scan and says nothing): one progressing download behind a shared
//! address (NAT) keeps the address from being stuck, whatever else its neighbours do.
use std::collections::HashMap;

use ipnet::IpNet;

use crate::model::{fairness::Fairness, socket::Socket};

/// What is kept of a remote between snapshots, while it holds more than its share.
#[derive(Debug, Default)]
struct Held {
    /// Since when (the first snapshot of the streak) it has held more than its share without
    /// progress.
    stuck_since_ms: u64,
    /// Its connections' acknowledged bytes in the last snapshot, by cookie.
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
    /// each remote holding memory with its standing.
    pub fn update(
        &mut self,
        fairness: Fairness,
        sockets: &[Socket],
        threshold: u64,
        now_ms: u64,
    ) -> HashMap<IpNet, Standing> {
        let mut by_remote: HashMap<IpNet, Vec<&Socket>> = HashMap::new();
        for s in sockets.iter().filter(|s| s.charged > 0) {
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
            let progressed = before.as_ref().is_some_and(|h| {
                conns.iter().any(|s| h.acked.get(&s.cookie).is_some_and(|&acked| s.bytes_acked > acked))
            });
            let stuck_since_ms = match before {
                Some(h) if !progressed => h.stuck_since_ms,
                _ => now_ms,
            };
            let acked = conns.iter().map(|s| (s.cookie, s.bytes_acked)).collect();
            self.held.insert(remote, Held { stuck_since_ms, acked });
            out.insert(remote, Standing { charged, share, stuck_ms: now_ms - stuck_since_ms });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::sock;

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
            let standing = e.update(Fairness::Connection, &now, threshold, i * 250);
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
            let standing = e.update(Fairness::RemoteIp, &now, 8 << 20, i * 250);
            assert_eq!(standing[&"203.0.113.5/32".parse().expect("net")].stuck_ms, 0, "interval {i}");
        }
    }

    #[test]
    fn a_rotating_ipv6_host_is_one_remote() {
        let mut e = RemoteEvidence::default();
        let sockets: Vec<Socket> =
            (1..=20u64).map(|c| sock(c, &format!("[2001:db8::{c:x}]:1000"), 1 << 20, 1000, 0)).collect();
        let standing = e.update(Fairness::RemoteIp, &sockets, 8 << 20, 0);
        assert_eq!(standing.len(), 1);
        assert_eq!(standing[&"2001:db8::/64".parse().expect("net")].charged, 20 << 20);
    }
}
