//! Networks the fleet contains: decisions another host (or an operator) made, taken from
//! CrowdSec's Local API by the agent's bouncer (`crate::fleet`). The rule treats a remote in one
//! as it treats its own repeat offenders: while pressure is over the threshold, the remote's
//! stalled connections go whatever their share, after the same stall as anyone's (a reader
//! behind a contained address that pauses is judged on its own), reason `contained_by_crowdsec`.
//!
//! Immutable once built: the bouncer builds a new set after each poll and the agent hands the
//! rule an `Arc` of it, so a revisit's copy of the rule clones a pointer, not the set.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;

/// Why the fleet contains a network: the decision's origin (`crowdsec`, `cscli`, `CAPI`, …) and
/// scenario (`enforcer/repeat-offender`, `crowdsecurity/http-probing`, an operator's reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDecision {
    pub id: i64,
    pub origin: String,
    pub scenario: String,
    /// The decision's type as the Local API gave it (`contain`, or `ban` when the operator asks
    /// for those too).
    pub kind: String,
    /// When it expires, on the wall clock (Unix ms).
    pub until_unix_ms: u64,
}

impl FleetDecision {
    /// `origin/scenario`, as `enforcer status` and the log say it.
    pub fn label(&self) -> String {
        format!("{}/{}", self.origin, self.scenario)
    }
}

/// The networks the fleet contains, looked up by the longest prefix that holds an address.
#[derive(Debug, Clone, Default)]
pub struct FleetNets {
    /// By prefix length, longest first; IPv4 and IPv6 apart (`IpNet` keeps the family).
    by_len: BTreeMap<std::cmp::Reverse<(bool, u8)>, HashMap<IpNet, FleetDecision>>,
    len: usize,
}

impl FleetNets {
    pub fn new(decisions: impl IntoIterator<Item = (IpNet, FleetDecision)>) -> Self {
        let mut set = Self::default();
        for (net, d) in decisions {
            let net = net.trunc();
            let slot = set.by_len.entry(std::cmp::Reverse((net.addr().is_ipv6(), net.prefix_len()))).or_default();
            if slot.insert(net, d).is_none() {
                set.len += 1;
            }
        }
        set
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The decision whose network holds `ip` (an IPv4-mapped IPv6 address is IPv4), the
    /// longest prefix first.
    pub fn lookup(&self, ip: IpAddr) -> Option<(IpNet, &FleetDecision)> {
        if self.len == 0 {
            return None;
        }
        let ip = ip.to_canonical();
        for (std::cmp::Reverse((v6, len)), nets) in &self.by_len {
            if *v6 != ip.is_ipv6() {
                continue;
            }
            let Ok(net) = IpNet::new(ip, *len) else { continue };
            let net = net.trunc();
            if let Some(d) = nets.get(&net) {
                return Some((net, d));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: i64) -> FleetDecision {
        FleetDecision {
            id,
            origin: "cscli".into(),
            scenario: "manual".into(),
            kind: "contain".into(),
            until_unix_ms: u64::MAX,
        }
    }

    fn n(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_longest_prefix_answers_and_families_stay_apart() {
        let set = FleetNets::new([(n("10.0.0.0/8"), d(1)), (n("10.1.2.3/32"), d(2)), (n("2001:db8::/32"), d(3))]);
        assert_eq!(set.len(), 3);
        let id = |ip: &str| set.lookup(ip.parse().unwrap_or_else(|e| panic!("{e}"))).map(|(_, d)| d.id);
        assert_eq!(id("10.1.2.3"), Some(2));
        assert_eq!(id("10.9.9.9"), Some(1));
        // A dual-stack socket's IPv4 peer.
        assert_eq!(id("::ffff:10.1.2.3"), Some(2));
        assert_eq!(id("11.0.0.1"), None);
        assert_eq!(id("2001:db8::7"), Some(3));
        // ::a01:203 is not 10.1.2.3.
        assert_eq!(id("::a01:203"), None);
    }

    #[test]
    fn the_rule_judges_a_fleet_contained_remote_as_a_repeat_offender() {
        use crate::policy::{
            Judge, Reason,
            testing::{chosen, cookies, policy, sock},
        };
        let mut p = policy(8 << 20);
        p.stall_ms = 3000;
        let mut j = Judge::new(p);
        j.set_fleet(std::sync::Arc::new(FleetNets::new([(n("192.0.2.0/24"), d(1))])));
        // Under its share (128 KiB of 8 MiB between four): only a contained remote's stall counts.
        let s = |cookie, remote: &str, stalled_ms| sock(cookie, remote, 128 << 10, stalled_ms, 0);
        let sockets = [
            s(1, "192.0.2.7:1", 3_000),
            // Paused for less than --stall: a reader behind the contained range keeps its grace.
            s(2, "192.0.2.8:1", 2_000),
            s(3, "198.51.100.7:1", 3_000),
            s(4, "[::ffff:192.0.2.9]:1", 5_000),
        ];
        let d = chosen(&j.judge_all(&sockets, 10_000, 9 << 20));
        assert_eq!(cookies(&d), [1, 4]);
        assert!(d.iter().all(|d| d.reason == Reason::ContainedByCrowdsec));
        // Under the threshold, nothing.
        assert!(chosen(&j.judge_all(&sockets, 10_250, 1 << 20)).is_empty());
        // A decision gone: judged as anyone.
        j.set_fleet(Default::default());
        assert!(chosen(&j.judge_all(&sockets, 10_500, 9 << 20)).is_empty());
    }

    #[test]
    fn host_bits_are_cleared() {
        let set = FleetNets::new([(n("192.0.2.77/24"), d(1))]);
        assert_eq!(
            set.lookup("192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"))).map(|(net, _)| net),
            Some(n("192.0.2.0/24"))
        );
    }
}
