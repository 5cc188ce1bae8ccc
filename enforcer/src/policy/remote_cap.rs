//! `--max-per-remote`: the connections of a crowded remote beyond the cap that moved no byte
//! for `--idle`, whatever the pressure.
use std::collections::HashMap;

use super::{Decision, Plan, Policy, Reason};
use crate::model::socket::Socket;

/// `--max-per-remote`: beyond N connections of one remote address, the ones idle for `--idle`
/// (no byte either way), oldest idle first. Applies whatever the pressure.
pub(super) fn remote_cap(p: &Policy, sockets: &[Socket], cap: usize, plan: &Plan) -> Vec<Decision> {
    let chosen: std::collections::HashSet<u64> =
        plan.sweep.iter().chain(&plan.offenders).map(|d| d.socket.cookie).collect();
    let mut by_remote: HashMap<std::net::IpAddr, Vec<&Socket>> = HashMap::new();
    for s in sockets {
        by_remote.entry(s.remote.ip()).or_default().push(s);
    }
    let mut remotes: Vec<_> = by_remote.into_iter().filter(|(_, v)| v.len() > cap).collect();
    remotes.sort_by_key(|(ip, _)| *ip);
    let idle = |s: &Socket| s.rx_idle_ms.min(s.tx_idle_ms);
    let mut out = Vec::new();
    for (_, conns) in remotes {
        // Connections the pressure rule already chose count toward the excess.
        let already = conns.iter().filter(|s| chosen.contains(&s.cookie)).count();
        let excess = (conns.len() - cap).saturating_sub(already);
        let mut idle_ones: Vec<&Socket> = conns
            .into_iter()
            .filter(|s| idle(s) >= p.idle_ms && !p.protect.covers(s) && !chosen.contains(&s.cookie))
            .collect();
        // Oldest idle first; among equals the older connection, then the lower cookie, so the
        // choice never depends on the snapshot's order.
        idle_ones.sort_by_key(|s| (std::cmp::Reverse(idle(s)), std::cmp::Reverse(s.age_ms), s.cookie));
        out.extend(idle_ones.into_iter().take(excess).map(|s| Decision {
            socket: s.clone(),
            reason: Reason::RemoteCap,
            fair_share: 0,
            drain_estimate_ms: None,
            offending_ms: idle(s),
            evidence: 0,
        }));
    }
    out
}
