//! The agent's scan leaves sockets out (`ScanParams::emits`), counts the population in the
//! kernel (connections, and per remote group by `remote_key`) and skips whole intervals while
//! pressure is quiet; `enforcer top` judges full snapshots and counts them itself
//! (`Population::of`). This property test holds the two to the same decisions (destroys,
//! remotes released, remotes flagged as stuck on their remote-level evidence), interval after
//! interval, over generated socket sets for every fairness mode (prefix lengths varied, IPv4
//! peers of dual-stack sockets among them), socket state and policy: what the kernel filters out
//! could never have been chosen nor remembered, and the kernel groups remotes as the rule does.
//! The kernel's side is emulated with the kernel's own code (`is_connection`, `emits`,
//! `remote_key`, shared with the eBPF crate) and the agent's with its own (`scan_groups`,
//! `Population::counted`).
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use enforcer_common::{
    AF_INET, AF_INET6, ENTRY_OUT_OF_ORDER, RemoteKey, ScanParams, is_connection, remote_key, scan_mode,
};

use super::{
    Fairness, Judge, Kind, Plan, Population, Reason, Taken, quiet,
    testing::{policy, sock},
};
use crate::model::socket::{Socket, state_name};

/// xorshift64*: deterministic, so a failure names its seed.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(super) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Peers: two IPv4 addresses in one /24, two IPv6 in one /64, and an IPv4 peer of a dual-stack
/// socket (`::ffff:192.0.2.1`, the same remote as `192.0.2.1` to the rule).
const REMOTES: [&str; 8] = [
    "192.0.2.1",
    "192.0.2.7",
    "198.51.100.3",
    "203.0.113.9",
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8:1::5",
    "::ffff:192.0.2.1",
];

/// TCP states a tracked socket can be in, the connections (that can hold data) first: a
/// destroyed socket its application has not closed is `CLOSE`, a listener or a half-open one
/// is seen by the `iter/tcp` walk.
const STATES: [u8; 10] = [1, 4, 5, 8, 9, 11, 7, 10, 2, 3];

/// One generated socket; the raw entry holds what the kernel's scan reads (state, remote
/// address as the record keeps it).
/// Up to 40 generated sockets, their cookies counted on from `next_cookie`.
pub(super) fn population(rng: &mut Rng, next_cookie: &mut u64) -> Vec<Socket> {
    (0..1 + rng.below(40))
        .map(|_| {
            *next_cookie += 1;
            socket(rng, *next_cookie)
        })
        .collect()
}

pub(super) fn socket(rng: &mut Rng, cookie: u64) -> Socket {
    let ip: IpAddr = REMOTES[rng.below(REMOTES.len() as u64) as usize].parse().expect("remote");
    let mut s = sock(cookie, &SocketAddr::new(ip.to_canonical(), (1000 + cookie) as u16).to_string(), 0, 0, 0);
    (s.raw.record.family, s.raw.record.remote_addr) = match ip {
        IpAddr::V4(v4) => (AF_INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
        IpAddr::V6(v6) => {
            let b = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
            (AF_INET6, [word(0), word(4), word(8), word(12)])
        }
    };
    set_state(&mut s, if rng.chance(80) { 1 } else { STATES[rng.below(STATES.len() as u64) as usize] });
    s.age_ms = rng.below(600_000);
    s
}

fn set_state(s: &mut Socket, state: u8) {
    s.raw.state = state;
    s.state = state_name(state);
}

/// One interval later: queues grow, drain or empty; stalls lengthen or end; peers go idle.
pub(super) fn step(rng: &mut Rng, s: &mut Socket, dt: u64) {
    match rng.below(10) {
        0..=2 => s.charged = 0,
        3..=5 => s.charged = rng.below(4 << 20),
        6 => s.charged = s.charged.saturating_add(rng.below(1 << 20)),
        _ => {}
    }
    // Some of it received: in order (the application's to read) or behind a hole.
    s.recv_charged = if rng.chance(30) { rng.below(s.charged + 1) } else { 0 };
    s.out_of_order = s.recv_charged > 0 && rng.chance(50);
    s.send_queue = s.charged - s.recv_charged;
    s.raw.wmem_queued = s.send_queue as u32;
    s.raw.rmem_alloc = s.recv_charged as u32;
    s.raw.flags = if s.out_of_order { ENTRY_OUT_OF_ORDER } else { 0 };
    if rng.chance(50) {
        s.bytes_acked += rng.below(512 << 10);
    }
    s.stalled_ms = match (s.send_queue, rng.below(3)) {
        (0, _) => 0,
        (_, 0) => 0,
        _ => s.stalled_ms + dt,
    };
    s.tx_idle_ms = if rng.chance(30) { 0 } else { s.tx_idle_ms + dt };
    s.rx_idle_ms = if rng.chance(30) { 0 } else { s.rx_idle_ms + dt };
    s.age_ms += dt;
    if rng.chance(5) {
        set_state(s, STATES[rng.below(STATES.len() as u64) as usize]);
    }
}

/// What a plan carries out with every destroy succeeding, in order.
pub(super) fn chosen(plan: &Plan) -> Vec<(u64, Reason)> {
    plan.clone().carry_out(usize::MAX, |_| Taken::Done).acted.iter().map(|d| (d.socket.cookie, d.reason)).collect()
}

/// The agent's interval: nothing read while quiet (unless a per-remote cap needs every
/// socket); otherwise the scan as the kernel makes it (connections counted, and per remote
/// group when the fairness needs it; candidates written out) and the population as the agent
/// assembles it from those counts.
fn agent_interval(j: &mut Judge, all: &[Socket], now: u64, pressure: u64) -> Judged {
    let p = j.policy_mut().clone();
    let full = p.max_per_remote.is_some();
    if !full && quiet(pressure, p.threshold) {
        return (Vec::new(), j.rest(now, pressure).0, Vec::new());
    }
    let groups = if full { None } else { p.fairness.scan_groups() };
    let (group_v4, group_v6) = groups.unwrap_or_default();
    let params = ScanParams {
        mode: if full { scan_mode::ALL } else { scan_mode::CANDIDATES },
        count_remotes: u32::from(groups.is_some()),
        group_v4,
        group_v6,
        generation: 1,
    };
    let key = |s: &Socket| remote_key(s.raw.record.family, s.raw.record.remote_addr, group_v4, group_v6);
    // The kernel's scan: every connection counted, the candidates written out.
    let (mut connections, mut counts, mut emitted) = (0, HashMap::<RemoteKey, u64>::new(), Vec::new());
    for s in all.iter().filter(|s| is_connection(s.raw.state)) {
        connections += 1;
        if params.count_remotes != 0 {
            *counts.entry(key(s)).or_default() += 1;
        }
        if params.emits(s.raw.wmem_queued, s.raw.flags & ENTRY_OUT_OF_ORDER != 0) {
            emitted.push(s.clone());
        }
    }
    let population = if full {
        Population::of(p.fairness, &emitted)
    } else {
        let count = groups.map(|_| |s: &Socket| counts.get(&key(s)).copied().unwrap_or(1));
        Population::counted(p.fairness, connections, counts.len() as u64, &emitted, count)
    };
    judged(&j.judge(&emitted, &population, now, pressure))
}

/// What a judgement decided: destroys, remotes released, remotes flagged as stuck.
type Judged = (Vec<(u64, Reason)>, Vec<ipnet::IpNet>, Vec<ipnet::IpNet>);

fn judged(plan: &Plan) -> Judged {
    (chosen(plan), plan.released.clone(), plan.flagged.iter().map(|f| f.remote).collect())
}

#[test]
fn filtered_scan_decides_like_the_full_snapshot() {
    let (mut decided, mut flagged) = (0, 0);
    for seed in 1..=400u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut p = policy((1 + rng.below(16)) << 20);
        p.fairness = match rng.below(3) {
            0 => Fairness::Connection,
            1 => Fairness::RemoteIp,
            _ => Fairness::RemotePrefix {
                v4: [8, 16, 24, 31, 32][rng.below(5) as usize],
                v6: [32, 48, 64, 127, 128][rng.below(5) as usize],
            },
        };
        p.kind = if rng.chance(50) { Kind::Budget } else { Kind::Heffner };
        p.drain_window_ms = 1000 + rng.below(4) * 500;
        p.max_drain_ms = 2000 + rng.below(20_000);
        if rng.chance(30) {
            p.max_per_remote = Some(1 + rng.below(4) as usize);
            p.idle_ms = rng.below(3000);
        }
        p.repeat.kills = 1 + rng.below(3) as usize;
        let threshold = p.threshold;
        let (mut full, mut agent) = (Judge::new(p.clone()), Judge::new(p));
        let mut next_cookie = 1;
        let mut sockets = population(&mut rng, &mut next_cookie);
        let dt = 250;
        for i in 0..60u64 {
            let now = 10_000 + i * dt;
            for s in &mut sockets {
                step(&mut rng, s, dt);
            }
            // Connections close and open.
            if rng.chance(20) && !sockets.is_empty() {
                sockets.swap_remove(rng.below(sockets.len() as u64) as usize);
            }
            if rng.chance(20) {
                next_cookie += 1;
                sockets.push(socket(&mut rng, next_cookie));
            }
            // What the CLI's snapshot writes out: every connection.
            let snapshot: Vec<Socket> = sockets.iter().filter(|s| is_connection(s.raw.state)).cloned().collect();
            let tracked: u64 = snapshot.iter().map(|s| s.charged).sum();
            // Pressure as `tracked` reads it, or from elsewhere (kernel, cgroup), quiet or not.
            let pressure = if rng.chance(50) { tracked } else { rng.below(threshold * 2) };
            let want = judged(&full.judge_all(&snapshot, now, pressure));
            let got = agent_interval(&mut agent, &sockets, now, pressure);
            assert_eq!(got, want, "seed {seed}, interval {i}, pressure {pressure} of {threshold}");
            decided += want.0.len();
            flagged += want.2.len();
            // Both record what they destroyed, as the agent does (repeat offenders).
            let gone: Vec<u64> = want.0.iter().map(|(c, _)| *c).collect();
            for (s, (_, reason)) in
                sockets.iter().filter_map(|s| want.0.iter().find(|(c, _)| *c == s.cookie).map(|w| (s, w)))
            {
                for j in [&mut full, &mut agent] {
                    let d = super::Decision {
                        socket: s.clone(),
                        reason: *reason,
                        fair_share: 0,
                        drain_estimate_ms: None,
                        offending_ms: 0,
                        evidence: 0,
                    };
                    j.record_destroy(&d, now);
                }
            }
            sockets.retain(|s| !gone.contains(&s.cookie));
        }
    }
    // The generator must reach the rule, or the property says nothing.
    assert!(decided > 1000, "only {decided} decisions in all");
    assert!(flagged > 20, "only {flagged} remotes flagged as stuck in all");
}
