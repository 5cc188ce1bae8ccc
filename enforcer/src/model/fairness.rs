//! How the threshold is split into fair shares (`--fairness`): per connection, per remote
//! address, or per remote prefix, with the form operators type and read.
use std::net::IpAddr;

use ipnet::IpNet;

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

    /// The remote a connection belongs to as a whole, for what the rule knows of remotes (their
    /// memory and progress, repeat offenders, containment): its fairness group, with IPv6 never
    /// finer than the /64 one host owns, so rotating through a /64's addresses gains nothing.
    pub fn remote(self, ip: IpAddr) -> IpNet {
        let group = self.group(ip);
        match group {
            IpNet::V6(v6) if v6.prefix_len() > 64 => IpNet::new(ip, 64).map(|n| n.trunc()).unwrap_or(group),
            _ => group,
        }
    }

    /// The prefix lengths (IPv4, IPv6) the kernel's scan groups remotes by to count connections
    /// per group ([`group`](Self::group) in the kernel's terms); `None` when the shares do not
    /// depend on remotes.
    pub fn scan_groups(self) -> Option<(u32, u32)> {
        match self {
            Self::Connection => None,
            Self::RemoteIp => Some((32, 128)),
            Self::RemotePrefix { v4, v6 } => Some((u32::from(v4), u32::from(v6))),
        }
    }
}

impl std::str::FromStr for Fairness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_fairness(s)
    }
}

/// As `--fairness` takes it.
impl std::fmt::Display for Fairness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connection => f.write_str("connection"),
            Self::RemoteIp => f.write_str("remote-ip"),
            Self::RemotePrefix { v4, v6 } => write!(f, "remote-prefix:{v4},{v6}"),
        }
    }
}

/// `connection`, `remote-ip`, `remote-prefix:N` (IPv4 /N, IPv6 /64) or `remote-prefix:N,M`.
pub fn parse_fairness(s: &str) -> Result<Fairness, String> {
    let bad = || format!("`{s}` is not a fairness mode (connection, remote-ip, remote-prefix:24, remote-prefix:24,48)");
    match s {
        "connection" => Ok(Fairness::Connection),
        "remote-ip" => Ok(Fairness::RemoteIp),
        _ => {
            let spec = s.strip_prefix("remote-prefix:").ok_or_else(bad)?;
            let (v4, v6) = match spec.split_once(',') {
                Some((a, b)) => (a.parse::<u8>().map_err(|_| bad())?, b.parse::<u8>().map_err(|_| bad())?),
                None => (spec.parse::<u8>().map_err(|_| bad())?, 64),
            };
            if v4 > 32 || v6 > 128 {
                return Err(format!("`{s}`: prefix lengths are at most 32 (IPv4) and 128 (IPv6)"));
            }
            Ok(Fairness::RemotePrefix { v4, v6 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(parse_fairness("connection"), Ok(Fairness::Connection));
        assert_eq!(parse_fairness("remote-ip"), Ok(Fairness::RemoteIp));
        assert_eq!(parse_fairness("remote-prefix:24"), Ok(Fairness::RemotePrefix { v4: 24, v6: 64 }));
        assert_eq!(parse_fairness("remote-prefix:16,48"), Ok(Fairness::RemotePrefix { v4: 16, v6: 48 }));
        assert!(parse_fairness("remote-prefix:33").is_err());
        assert!(parse_fairness("per-user").is_err());
        let remote = |f: Fairness, ip: &str| f.remote(ip.parse().expect("ip")).to_string();
        assert_eq!(remote(Fairness::Connection, "2001:db8::1:2"), "2001:db8::/64");
        assert_eq!(remote(Fairness::RemoteIp, "192.0.2.7"), "192.0.2.7/32");
        assert_eq!(remote(Fairness::RemotePrefix { v4: 24, v6: 48 }, "2001:db8:0:5::1"), "2001:db8::/48");
        assert_eq!(remote(Fairness::RemotePrefix { v4: 24, v6: 128 }, "2001:db8::1"), "2001:db8::/64");
        for f in [Fairness::Connection, Fairness::RemoteIp, Fairness::RemotePrefix { v4: 16, v6: 48 }] {
            assert_eq!(parse_fairness(&f.to_string()), Ok(f));
        }
    }
}
