//! Networks the fleet contains: decisions another host (or an operator) made, taken from
//! CrowdSec's Local API by the agent's bouncer (the `fleet/` folder). The rule treats a remote
//! in one as it treats its own repeat offenders: while pressure is over the threshold, the remote's
//! stalled connections go whatever their share, after the same stall as anyone's (a reader
//! behind a contained address that pauses is judged on its own), reason `contained_by_crowdsec`.
//!
//! Immutable once built: the bouncer builds a new set after each poll and the agent hands the
//! rule an `Arc` of it, so a revisit's copy of the rule clones a pointer, not the set.
use std::sync::Arc;

use crate::model::prefixes::PrefixMap;

/// Why the fleet contains a network: the decision's origin (`crowdsec`, `cscli`, `CAPI`, …) and
/// scenario (`enforcer/repeat-offender`, `crowdsecurity/http-probing`, an operator's reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetDecision {
    pub id: i64,
    /// Shared: a fleet's decisions have a few origins, scenarios and types between them, and a
    /// stream can hold 100,000 decisions.
    pub origin: Arc<str>,
    pub scenario: Arc<str>,
    /// The decision's type as the Local API gave it (`contain`, or `ban` when the operator asks
    /// for those too).
    pub kind: Arc<str>,
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
pub type FleetNets = PrefixMap<FleetDecision>;

#[cfg(test)]
mod tests {
    use ipnet::IpNet;

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
}
