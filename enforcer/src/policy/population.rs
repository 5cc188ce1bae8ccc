//! What the fair shares divide the threshold among, and each socket's share.
use std::collections::HashMap;

use ipnet::IpNet;

use crate::model::{fairness::Fairness, socket::Socket};

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

    /// The population as the agent's scan counts it in the kernel: `connections` and distinct
    /// `remotes` over every tracked connection, and, for each socket written out (`sockets`),
    /// its group's connections as `count` reads them (the kernel's `REMOTE_COUNTS`); `count` is
    /// `None` when the scan counted no remotes.
    pub fn counted(
        fairness: Fairness,
        connections: u64,
        remotes: u64,
        sockets: &[Socket],
        count: Option<impl Fn(&Socket) -> u64>,
    ) -> Self {
        let per_remote = match count {
            Some(count) => sockets.iter().map(|s| (fairness.group(s.remote.ip()), count(s))).collect(),
            None => HashMap::new(),
        };
        Self { connections, remotes, per_remote }
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
mod tests {
    use super::*;
    use crate::policy::testing::sock;

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
