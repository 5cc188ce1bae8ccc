//! The agent's scan leaves sockets out (`ScanParams::emits`) and skips whole intervals while
//! pressure is quiet; `enforcer top` judges full snapshots. This property test holds the two to
//! the same decisions, interval after interval, over generated socket sets for every fairness
//! mode and policy: what the kernel filters out could never have been chosen nor remembered.
use enforcer_common::{ScanParams, scan_mode};

use super::{
    Fairness, Judge, Kind, Plan, Population, Reason, Taken, quiet,
    testing::{policy, sock},
};
use crate::model::socket::Socket;

/// xorshift64*: deterministic, so a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const REMOTES: [&str; 7] =
    ["192.0.2.1", "192.0.2.7", "198.51.100.3", "203.0.113.9", "2001:db8::1", "2001:db8::2", "2001:db8:1::5"];

/// One generated socket; the raw entry holds what the kernel's filter reads.
fn socket(rng: &mut Rng, cookie: u64) -> Socket {
    let ip = REMOTES[rng.below(REMOTES.len() as u64) as usize];
    let remote = if ip.contains(':') { format!("[{ip}]:{}", 1000 + cookie) } else { format!("{ip}:{}", 1000 + cookie) };
    let mut s = sock(cookie, &remote, 0, 0, 0);
    s.age_ms = rng.below(600_000);
    s
}

/// One interval later: queues grow, drain or empty; stalls lengthen or end; peers go idle.
fn step(rng: &mut Rng, s: &mut Socket, dt: u64) {
    match rng.below(10) {
        0..=2 => s.charged = 0,
        3..=5 => s.charged = rng.below(4 << 20),
        6 => s.charged = s.charged.saturating_add(rng.below(1 << 20)),
        _ => {}
    }
    s.send_queue = s.charged;
    s.raw.wmem_queued = s.charged as u32;
    if rng.chance(50) {
        s.bytes_acked += rng.below(512 << 10);
    }
    s.stalled_ms = match (s.charged, rng.below(3)) {
        (0, _) => 0,
        (_, 0) => 0,
        _ => s.stalled_ms + dt,
    };
    s.tx_idle_ms = if rng.chance(30) { 0 } else { s.tx_idle_ms + dt };
    s.rx_idle_ms = if rng.chance(30) { 0 } else { s.rx_idle_ms + dt };
    s.age_ms += dt;
}

/// What a plan carries out with every destroy succeeding, in order.
fn chosen(plan: &Plan) -> Vec<(u64, Reason)> {
    plan.clone().carry_out(usize::MAX, |_| Taken::Done).acted.iter().map(|d| (d.socket.cookie, d.reason)).collect()
}

/// The agent's interval: nothing read while quiet (unless a per-remote cap needs every
/// socket), otherwise what the scan writes out, with the population the kernel counted over
/// every socket (per-remote counts for the groups written out, as `REMOTE_COUNTS` gives them).
fn agent_interval(j: &mut Judge, all: &[Socket], now: u64, pressure: u64) -> (Vec<(u64, Reason)>, Vec<ipnet::IpNet>) {
    let p = j.policy_mut().clone();
    let full = p.max_per_remote.is_some();
    if !full && quiet(pressure, p.threshold) {
        return (Vec::new(), j.rest(now));
    }
    let params = ScanParams {
        mode: if full { scan_mode::ALL } else { scan_mode::CANDIDATES },
        count_remotes: 1,
        group_v4: 0,
        group_v6: 0,
        generation: 0,
    };
    let emitted: Vec<Socket> = all.iter().filter(|s| params.emits(s.raw.wmem_queued)).cloned().collect();
    let counted = Population::of(p.fairness, all);
    let mut population = Population { connections: all.len() as u64, remotes: counted.remotes, ..Default::default() };
    for s in &emitted {
        let group = p.fairness.group(s.remote.ip());
        population.per_remote.insert(group, counted.per_remote.get(&group).copied().unwrap_or(1));
    }
    let plan = j.judge(&emitted, &population, now, pressure);
    (chosen(&plan), plan.released)
}

#[test]
fn filtered_scan_decides_like_the_full_snapshot() {
    let mut decided = 0;
    for seed in 1..=400u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut p = policy((1 + rng.below(16)) << 20);
        p.fairness = match rng.below(3) {
            0 => Fairness::Connection,
            1 => Fairness::RemoteIp,
            _ => Fairness::RemotePrefix { v4: 24, v6: 48 },
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
        let mut sockets: Vec<Socket> = (0..1 + rng.below(40))
            .map(|_| {
                next_cookie += 1;
                socket(&mut rng, next_cookie)
            })
            .collect();
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
            let tracked: u64 = sockets.iter().map(|s| s.charged).sum();
            // Pressure as `tracked` reads it, or from elsewhere (kernel, cgroup), quiet or not.
            let pressure = if rng.chance(50) { tracked } else { rng.below(threshold * 2) };
            let plan = full.judge_all(&sockets, now, pressure);
            let want = (chosen(&plan), plan.released.clone());
            let got = agent_interval(&mut agent, &sockets, now, pressure);
            assert_eq!(got, want, "seed {seed}, interval {i}, pressure {pressure} of {threshold}");
            decided += want.0.len();
            // Both record what they destroyed, as the agent does (repeat offenders).
            let gone: Vec<u64> = want.0.iter().map(|(c, _)| *c).collect();
            for s in sockets.iter().filter(|s| gone.contains(&s.cookie)) {
                for j in [&mut full, &mut agent] {
                    let d = super::Decision {
                        socket: s.clone(),
                        reason: Reason::Stalled,
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
}
