//! Revisits (`agent::revisit`) against a walk of every socket each interval, over generated
//! socket sets: between walks the agent looks at the last walk's candidates alone, and a copy of
//! the rule judges them with the connection count the kernel bounds from below (the walk's, less
//! the recorded connections that ended) and, for the summed pressure, the candidates' part. When
//! that copy would act, the agent walks every socket and the rule decides on the walk; otherwise
//! the copy's memory becomes the rule's (every candidate keeps a sample each interval: judged on
//! walks alone, a socket that drained and refilled between two walks looked like a slow drain,
//! which a walk every interval did not see), less what it said of remotes (a connection that
//! started holding data since the walk is not revisited, and its progress would have kept its
//! remote from being stuck: a remote's streak restarts at the next walk). The kernel's TCP memory
//! may lag what sockets hold (`counter_lag`): up to that much can be held outside the candidates
//! unseen. 4,000 seeds pass by hand (`--release`); 600 run here. The property: in every interval, each socket the
//! agent destroys is one the rule condemns with a walk of every socket each interval (destroyed,
//! or held back by the budget only), so a revisit can delay a decision but never add one.
use std::collections::HashSet;

use enforcer_common::{ENTRY_OUT_OF_ORDER, is_connection};

use super::{
    Fairness, Judge, Kind, Plan, Population,
    episode::Change,
    property::{Rng, chosen, population, socket, step},
    quiet,
    testing::policy,
};
use crate::model::socket::Socket;

/// How often the agent walks every socket at least, in intervals (`WALK_AT_LEAST_EVERY`, 10 s of
/// 250 ms intervals).
const WALK_EVERY: u64 = 40;

/// Whether the agent's scan writes `s` out (`ScanParams::emits` in candidates mode).
fn emitted(s: &Socket) -> bool {
    is_connection(s.raw.state) && (s.raw.wmem_queued > 0 || s.raw.flags & ENTRY_OUT_OF_ORDER != 0)
}

/// What the last walk left for revisits.
struct Basis {
    at: u64,
    cookies: HashSet<u64>,
    connections: u64,
    ended: u64,
    /// Charged memory of every socket and of the candidates, at the walk.
    memory: u64,
    candidates: u64,
}

/// Every socket the rule names in a plan (to destroy, or held back by the budget).
fn condemned(plan: &Plan) -> HashSet<u64> {
    plan.cookies().collect()
}

fn would_act(plan: &Plan) -> bool {
    !plan.flagged.is_empty() || plan.episode != Change::None || plan.candidates() > 0
}

#[test]
fn revisits_never_destroy_what_walks_every_interval_would_not() {
    let (mut walked, mut revisited, mut destroyed) = (0u64, 0u64, 0usize);
    for seed in 1..=600u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut p = policy((1 + rng.below(16)) << 20);
        p.fairness = Fairness::Connection;
        p.kind = if rng.chance(50) { Kind::Budget } else { Kind::Heffner };
        p.drain_window_ms = 1000 + rng.below(4) * 500;
        p.max_drain_ms = 2000 + rng.below(20_000);
        p.repeat.kills = usize::MAX;
        let threshold = p.threshold;
        // The summed pressure (`tracked`) or one read without a walk (`kernel`, `cgroup`).
        let summed = rng.chance(50);
        // How far the kernel's TCP memory may lag behind what sockets hold (`counter_lag`): a
        // socket outside the candidates may hold that much unseen.
        let lag = if rng.chance(50) { 0 } else { rng.below(threshold / 2) };
        // Half the worlds are held: most sockets keep what they hold from one interval to the next.
        let calm = rng.chance(50);
        let (mut exact, mut agent) = (Judge::new(p.clone()), Judge::new(p));
        let mut basis: Option<Basis> = None;
        let mut ended = 0u64;
        let mut next_cookie = 1;
        let mut sockets = population(&mut rng, &mut next_cookie);
        let dt = 250;
        for i in 0..80u64 {
            let now = 10_000 + i * dt;
            for s in &mut sockets {
                let was = is_connection(s.raw.state);
                if calm && !rng.chance(10) {
                    // Held: nothing moves, time passes.
                    s.stalled_ms += if s.send_queue > 0 { dt } else { 0 };
                    (s.tx_idle_ms, s.rx_idle_ms, s.age_ms) = (s.tx_idle_ms + dt, s.rx_idle_ms + dt, s.age_ms + dt);
                    continue;
                }
                step(&mut rng, s, dt);
                ended += u64::from(was && !is_connection(s.raw.state));
            }
            if rng.chance(if calm { 3 } else { 20 }) && !sockets.is_empty() {
                let s = sockets.swap_remove(rng.below(sockets.len() as u64) as usize);
                ended += u64::from(is_connection(s.raw.state));
            }
            if rng.chance(if calm { 3 } else { 20 }) {
                next_cookie += 1;
                sockets.push(socket(&mut rng, next_cookie));
            }
            let live: Vec<&Socket> = sockets.iter().filter(|s| is_connection(s.raw.state)).collect();
            let memory: u64 = live.iter().map(|s| s.charged).sum();
            let pressure = if summed { memory } else { rng.below(threshold * 2) };
            let walk = |j: &mut Judge| {
                let out: Vec<Socket> = sockets.iter().filter(|s| emitted(s)).cloned().collect();
                let population =
                    Population::counted(Fairness::Connection, live.len() as u64, 0, &out, None::<fn(&Socket) -> u64>);
                (j.judge(&out, &population, now, pressure), out)
            };
            // A walk of every socket, every interval.
            let want = if quiet(pressure, threshold) {
                exact.rest(now, pressure);
                None
            } else {
                Some(walk(&mut exact).0)
            };
            // The agent: a revisit where it can, a walk where it must.
            let got = if quiet(pressure, threshold) {
                agent.rest(now, pressure);
                basis = None;
                None
            } else {
                let revisit = basis.as_ref().filter(|b| i - b.at < WALK_EVERY).and_then(|b| {
                    let found: Vec<Socket> = sockets
                        .iter()
                        .filter(|s| b.cookies.contains(&s.cookie) && is_connection(s.raw.state))
                        .cloned()
                        .collect();
                    let charged: u64 = found.iter().map(|s| s.charged).sum();
                    // Memory outside the candidates grew: walk.
                    let outside_grew =
                        memory as i128 - b.memory as i128 - (charged as i128 - b.candidates as i128) > lag as i128;
                    (!outside_grew).then(|| {
                        let connections = b.connections.saturating_sub(ended - b.ended).max(found.len() as u64);
                        let population = Population::counted(
                            Fairness::Connection,
                            connections,
                            0,
                            &found,
                            None::<fn(&Socket) -> u64>,
                        );
                        let pressure = if summed { charged } else { pressure };
                        let mut copy = agent.clone();
                        let plan = copy.judge(&found, &population, now, pressure);
                        copy.forget_remotes();
                        (copy, plan)
                    })
                });
                match revisit {
                    Some((copy, probe)) if !would_act(&probe) => {
                        revisited += 1;
                        agent = copy;
                        None
                    }
                    _ => {
                        walked += 1;
                        let (plan, out) = walk(&mut agent);
                        basis = Some(Basis {
                            at: i,
                            cookies: out.iter().map(|s| s.cookie).collect(),
                            connections: live.len() as u64,
                            ended,
                            memory,
                            candidates: out.iter().map(|s| s.charged).sum(),
                        });
                        Some(plan)
                    }
                }
            };
            let Some(got) = got else { continue };
            let taken: Vec<u64> = chosen(&got).iter().map(|(c, _)| *c).collect();
            destroyed += taken.len();
            let allowed = want.as_ref().map(condemned).unwrap_or_default();
            for c in &taken {
                assert!(
                    allowed.contains(c),
                    "seed {seed}, interval {i}: the agent destroys {c}, which a walk every interval spares \
                     (it condemns {allowed:?}); pressure {pressure} of {threshold}"
                );
            }
        }
    }
    // The generator must reach both paths and the rule, or the property says nothing.
    assert!(revisited > 2000 && walked > 2000, "{revisited} revisits, {walked} walks");
    assert!(destroyed > 500, "only {destroyed} destroys in all");
}
