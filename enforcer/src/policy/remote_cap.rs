//! `--max-per-remote`: a limit of connections per remote address that applies whatever the
//! pressure and takes only connections that serve nobody, so it never blocks anyone.
//!
//! Beyond N connections of one remote, in this order:
//! - proxy mode (`--proxy`): its orphans (`relay.rs`: connections whose bytes went to a
//!   connection that has closed since, receiving more for nobody), once they relayed nothing for
//!   `--orphan-after` and two judgements in a row found them orphans; longest orphaned first;
//! - connections that moved no byte in either direction for `--idle`, oldest idle first.
//!
//! A connection that relays for an open one (proxy mode: live in this judgement or the last) is
//! never taken, however idle: a remote over its cap with nothing else to take keeps its live
//! connections.
use std::{
    cmp::Reverse,
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use super::{
    Decision, Plan, Policy, Reason,
    relay::{RelayIndex, RelayMemory, RelayState},
};
use crate::model::socket::Socket;

/// The cap's decisions: for each remote over `cap`, what it can take to bring it back to `cap`.
/// `memory` is what the last judgement found of relays, and becomes this one's.
pub(super) fn remote_cap(
    p: &Policy,
    sockets: &[Socket],
    cap: usize,
    plan: &Plan,
    memory: &mut RelayMemory,
) -> Vec<Decision> {
    let chosen: HashSet<u64> = plan.sweep.iter().chain(&plan.offenders).map(|d| d.socket.cookie).collect();
    let mut by_remote: HashMap<IpAddr, Vec<&Socket>> = HashMap::new();
    for s in sockets {
        by_remote.entry(s.remote.ip()).or_default().push(s);
    }
    let mut remotes: Vec<_> = by_remote.into_iter().filter(|(_, v)| v.len() > cap).collect();
    remotes.sort_by_key(|(ip, _)| *ip);
    let relays = p.orphan_after_ms.map(|t| RelayIndex::of(sockets, t, p.interval_ms));
    let state = |s: &Socket| relays.as_ref().map_or(RelayState::Unknown, |r| r.state(s));
    let now = RelayMemory {
        live: sockets.iter().filter(|s| state(s) == RelayState::Live).map(|s| s.cookie).collect(),
        orphans: sockets.iter().filter(|s| matches!(state(s), RelayState::Orphan { .. })).map(|s| s.cookie).collect(),
    };
    let before = std::mem::replace(memory, now);
    let idle = |s: &Socket| s.rx_idle_ms.min(s.tx_idle_ms);
    let mut out = Vec::new();
    for (_, conns) in remotes {
        // Connections the pressure rule already chose count toward the excess.
        let already = conns.iter().filter(|s| chosen.contains(&s.cookie)).count();
        let excess = (conns.len() - cap).saturating_sub(already);
        let mut takeable: Vec<(Reason, u64, &Socket)> = conns
            .into_iter()
            .filter(|s| !p.protect.covers(s) && !chosen.contains(&s.cookie))
            .filter(|s| !memory.live.contains(&s.cookie) && !before.live.contains(&s.cookie))
            .filter_map(|s| match state(s) {
                RelayState::Live => None,
                RelayState::Orphan { since_ms }
                    if p.orphan_after_ms.is_some_and(|t| since_ms >= t) && before.orphans.contains(&s.cookie) =>
                {
                    Some((Reason::Orphan, since_ms, s))
                }
                _ if idle(s) >= p.idle_ms => Some((Reason::RemoteCap, idle(s), s)),
                _ => None,
            })
            .collect();
        // Orphans first; then longest orphaned or idle; among equals the older connection, then
        // the lower cookie, so the choice never depends on the snapshot's order.
        takeable.sort_by_key(|(reason, ms, s)| (*reason != Reason::Orphan, Reverse(*ms), Reverse(s.age_ms), s.cookie));
        out.extend(takeable.into_iter().take(excess).map(|(reason, ms, s)| Decision {
            socket: s.clone(),
            reason,
            fair_share: 0,
            drain_estimate_ms: None,
            offending_ms: ms,
            evidence: 0,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::{
        model::socket::{Opened, Relay, Socket},
        policy::{
            Decision, Judge, Reason, Taken,
            testing::{policy, sock},
        },
    };

    /// What the second of two judgements a interval apart takes (an orphan needs both).
    fn chosen(sockets: &[Socket], p: crate::policy::Policy) -> Vec<Decision> {
        let mut j = Judge::new(p);
        j.judge_all(sockets, 1000, 0);
        j.judge_all(sockets, 1250, 0).carry_out(usize::MAX, |_| Taken::Done).acted
    }

    fn cookies(d: &[Decision]) -> Vec<u64> {
        let mut v: Vec<u64> = d.iter().map(|d| d.socket.cookie).collect();
        v.sort_unstable();
        v
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
        let d = chosen(&sockets, p);
        assert_eq!(cookies(&d), [3, 4, 5]);
        assert!(d.iter().all(|d| d.reason == Reason::RemoteCap));
    }

    /// A proxy's upstream `cookie` to the ticker 203.0.113.1, receiving a push every 2 s, whose
    /// bytes last went to client `to`, `last_ms` ago; and that client (port 3128, protected).
    fn upstream(cookie: u64, to: u64, last_ms: u64) -> Socket {
        let mut s = sock(cookie, "203.0.113.1:80", 0, 0, 0);
        (s.rx_idle_ms, s.tx_idle_ms, s.age_ms, s.opened) = (500, 900_000, 1_000_000 - cookie, Opened::Here);
        s.relay = Some(Relay { to, last_ms, bytes: 4096 });
        s
    }

    fn client(cookie: u64, to: u64) -> Socket {
        let mut s = sock(cookie, "10.0.0.9:40000", 0, 0, 0);
        s.local = "10.0.0.1:3128".parse().expect("addr");
        s.relay = Some(Relay { to, last_ms: 60_000, bytes: 300 });
        s
    }

    fn proxy_policy() -> crate::policy::Policy {
        let mut p = policy(u64::MAX);
        (p.max_per_remote, p.idle_ms, p.orphan_after_ms) = (Some(2), 10_000, Some(10_000));
        p.protect.ports.push(3128);
        p
    }

    #[test]
    fn orphans_go_first_longest_orphaned_first_and_live_streams_never() {
        // Upstreams 1-3 stream to open clients 101-103; 4-7 were relaying to clients that left,
        // 7 only 5 s ago (not yet an orphan); 8 never relayed and idles.
        let mut sockets: Vec<Socket> = (1..=3).map(|c| upstream(c, 100 + c, 1500)).collect();
        sockets.extend((101..=103).map(|c| client(c, c - 100)));
        sockets.extend([upstream(4, 104, 30_000), upstream(5, 105, 90_000), upstream(6, 106, 12_000)]);
        sockets.push(upstream(7, 107, 5_000));
        let mut quiet = sock(8, "203.0.113.1:80", 0, 0, 0);
        (quiet.rx_idle_ms, quiet.tx_idle_ms) = (600_000, 600_000);
        sockets.push(quiet);
        // 8 upstreams to one address, cap 2: 6 too many, 4 takeable (3 orphans, 1 idle).
        let d = chosen(&sockets, proxy_policy());
        let order: Vec<(u64, Reason)> = d.iter().map(|d| (d.socket.cookie, d.reason)).collect();
        assert_eq!(
            order,
            [(5, Reason::Orphan), (4, Reason::Orphan), (6, Reason::Orphan), (8, Reason::RemoteCap)],
            "live streams (1-3) and the recent orphan (7) stay"
        );
        // Without proxy mode the cap sees none of that: the pushes keep every upstream busy.
        let mut p = proxy_policy();
        p.orphan_after_ms = None;
        assert_eq!(cookies(&chosen(&sockets, p)), [8]);
    }

    #[test]
    fn a_silent_long_poll_with_its_client_open_is_never_taken() {
        // Client 101's request went to upstream 1, which has sent nothing for 10 minutes.
        let mut longpoll = sock(1, "203.0.113.1:80", 0, 0, 0);
        (longpoll.rx_idle_ms, longpoll.tx_idle_ms, longpoll.opened) = (600_000, 600_000, Opened::Here);
        let mut sockets = vec![longpoll, client(101, 1)];
        sockets.extend((2..=4).map(|c| {
            let mut s = sock(c, "203.0.113.1:80", 0, 0, 0);
            (s.rx_idle_ms, s.tx_idle_ms) = (300_000, 300_000);
            s
        }));
        assert_eq!(cookies(&chosen(&sockets, proxy_policy())), [2, 3], "idle 2-4 go, oldest connection first");
        // The client closed: the long-poll is idle like the others, and idle longest.
        sockets.remove(1);
        assert_eq!(cookies(&chosen(&sockets, proxy_policy())), [1, 2]);
    }

    #[test]
    fn cap_evictions_never_make_a_repeat_offender() {
        let mut p = proxy_policy();
        p.repeat.kills = 1;
        let mut judge = Judge::new(p);
        let sockets: Vec<Socket> = (1..=6).map(|c| upstream(c, 100 + c, 60_000)).collect();
        judge.judge_all(&sockets, 1000, 0);
        let acted = judge.judge_all(&sockets, 1250, 0).carry_out(usize::MAX, |_| Taken::Done).acted;
        assert_eq!(acted.len(), 4);
        for d in &acted {
            assert_eq!(judge.record_destroy(d, 1000), None, "{:?}", d.reason);
        }
        assert_eq!(judge.repeat_offenders(), 0);
    }

    #[test]
    fn an_orphan_is_taken_only_when_two_judgements_in_a_row_agree() {
        // Live upstream 1 streams to client 101; the walk misses the client once.
        let (up, cl) = (upstream(1, 101, 500), client(101, 1));
        let others: Vec<Socket> = (2..=4).map(|c| upstream(c, 200 + c, 30_000)).collect();
        let mut j = Judge::new(proxy_policy());
        let all: Vec<Socket> = [up.clone(), cl.clone()].into_iter().chain(others.clone()).collect();
        let missed: Vec<Socket> = std::iter::once(up.clone()).chain(others.clone()).collect();
        let take = |j: &mut Judge, s: &[Socket], t| j.judge_all(s, t, 0).carry_out(usize::MAX, |_| Taken::Done).acted;
        assert!(take(&mut j, &all, 1000).is_empty(), "the first look at orphans takes none");
        let d = take(&mut j, &missed, 1250);
        assert!(d.iter().all(|d| d.socket.cookie != 1), "live a moment ago: kept");
        assert_eq!(d.len(), 2, "orphans 2-4 seen twice, cap 2: {d:?}");
    }
}
