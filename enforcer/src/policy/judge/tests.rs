//! The rule's unit tests, case by case: the 2006 script, readers that must be kept, attackers
//! that must not keep memory, episodes, the receive side.
use super::*;
use crate::policy::{
    Fairness, Kind, Taken,
    testing::{chosen, policy, sock},
};

fn cookies(d: &[Decision]) -> Vec<u64> {
    let mut v: Vec<u64> = d.iter().map(|d| d.socket.cookie).collect();
    v.sort_unstable();
    v
}

/// The 2006 script, case by case: pressure over THRESH, SndUna unchanged for a second,
/// queue over THRESH / connections. Each row: (queue, stalled_ms, killed).
#[test]
fn reproduces_the_2006_rule() {
    const THRESH: u64 = 100 << 20;
    let rows: [(u64, u64, bool); 6] = [
        (30 << 20, 5_000, true), // over share, no progress: killed
        (30 << 20, 200, false),  // over share, progressing: kept
        (20 << 20, 500, false),  // under share (100 MiB / 4 = 25 MiB): kept
        (26 << 20, 1_000, true), // over share, exactly a second without progress
        (26 << 20, 999, false),  // a millisecond short of a second
        (0, 10_000, false),      // nothing queued
    ];
    for (queue, stalled, killed) in rows {
        let mut sockets = vec![sock(1, "192.0.2.1:1000", queue, stalled, 0)];
        // Three more connections so the share is THRESH / 4, all harmless.
        sockets.extend((2..=4).map(|c| sock(c, "192.0.2.2:1000", 1 << 20, 0, 0)));
        let mut p = policy(THRESH);
        p.kind = Kind::Heffner;
        let d = chosen(&Judge::new(p).judge_all(&sockets, 100_000, THRESH + 1));
        assert_eq!(cookies(&d) == [1], killed, "queue {queue} stalled {stalled}: {d:?}");
        if killed {
            assert_eq!(d[0].fair_share, THRESH / 4);
            assert_eq!(d[0].reason, Reason::Stalled);
        }
    }
}

#[test]
fn below_threshold_nothing_happens_however_stalled() {
    let sockets = vec![sock(1, "192.0.2.1:1", 50 << 20, 3_600_000, 0)];
    assert!(chosen(&Judge::new(policy(100 << 20)).judge_all(&sockets, 1000, 100 << 20)).is_empty());
}

#[test]
fn charged_memory_not_send_queue_decides() {
    // A tiny-window attacker: 0.5 MiB unacknowledged, 8 MiB charged. Its neighbour holds
    // 2 MiB in ordinary skbs. Threshold 8 MiB, 2 connections: share 4 MiB.
    let mut tiny = sock(1, "192.0.2.1:1", 8 << 20, 5000, 0);
    tiny.send_queue = 512 << 10;
    let normal = sock(2, "192.0.2.2:1", 2 << 20, 5000, 0);
    let d = chosen(&Judge::new(policy(8 << 20)).judge_all(&[tiny, normal], 1000, 10 << 20));
    assert_eq!(cookies(&d), [1]);
}

#[test]
fn data_beyond_a_hole_is_the_peers_doing_unread_data_is_the_applications() {
    // Receive memory only, 3.6 MiB each, nothing in order for 5 s. Threshold 8 MiB over 12
    // connections: a share of 680 KiB.
    let recv = |cookie, out_of_order, rx_idle_ms| {
        let mut s = sock(cookie, &format!("192.0.2.{cookie}:1"), 3_600_000, 0, 0);
        (s.send_queue, s.recv_charged, s.out_of_order, s.rx_idle_ms) = (0, 3_600_000, out_of_order, rx_idle_ms);
        s
    };
    let mut sockets = vec![
        recv(1, true, 5000),  // segments beyond a hole the peer never fills
        recv(2, false, 5000), // an application that does not read what arrived in order
        recv(3, true, 200),   // a hole a lossy path is filling
    ];
    sockets.extend((4..=12).map(|c| sock(c, "192.0.2.99:1", 1000, 0, 0)));
    let mut p = policy(8 << 20);
    p.kind = Kind::Heffner;
    let mut j = Judge::new(p);
    // Over the threshold for long enough to escalate: only the hole held for --stall goes.
    for i in 0..40 {
        let d = chosen(&j.judge_all(&sockets, i * 250, 12 << 20));
        assert_eq!(cookies(&d), [1], "interval {i}: {d:?}");
        assert_eq!(d[0].reason, Reason::OutOfOrder);
        assert_eq!(d[0].offending_ms, 5000);
    }
    // Unread data counts in the pressure, never in the peer's share or stall.
    assert_eq!(sockets[1].held_by_peer(), 0);
    assert_eq!(sockets[0].held_by_peer(), 3_600_000);
}

/// Feeds snapshots every `step` ms; `at(t)` gives the socket at time t.
fn run_for(j: &mut Judge, until: u64, step: u64, pressure: u64, at: impl Fn(u64) -> Vec<Socket>) -> Vec<(u64, Plan)> {
    (0..=until / step).map(|i| i * step).map(|t| (t, j.judge_all(&at(t), t, pressure))).collect()
}

#[test]
fn bursty_readers_are_not_slow() {
    // 7.7 MB queued; the reader takes 64 KiB every 100 ms (640 KB/s, drains in ~12 s), so
    // each 250 ms interval sees 128 or 192 KiB acknowledged, some none at all. And a
    // rate-limited download: 2 MiB every ~1 s. Neither is ever a slow-drain offender.
    for (burst, every_ms) in [(64u64 << 10, 100u64), (2 << 20, 1000)] {
        let mut j = Judge::new(policy(1 << 20));
        let plans = run_for(&mut j, 30_000, 250, 100 << 20, |t| {
            let acked = (t / every_ms) * burst;
            vec![sock(1, "192.0.2.1:1", 7_700_000, 0, acked)]
        });
        for (t, plan) in plans {
            assert!(chosen(&plan).is_empty(), "{burst}B every {every_ms}ms destroyed at {t}ms: {plan:?}");
            // Either a rate under --max-drain, or none: the reader drained the whole backlog
            // the window started with.
            let d = plan.assessments[0].drain_estimate_ms;
            assert!(d.is_none_or(|d| d < 30_000), "estimate {d:?} at {t}ms");
        }
    }
}

#[test]
fn a_trickle_is_slow_in_seconds_a_pause_or_a_burst_is_not() {
    // A slow reader (slowhttptest -X): 8 KiB every 200 ms, 4 MB queued, at 250 ms and 1 s
    // intervals: an ACK in every interval, far too slow. Slow before a drain window.
    for interval in [250, 1000] {
        let mut p = policy(1 << 20);
        p.interval_ms = interval;
        let mut j = Judge::new(p);
        let plans = run_for(&mut j, 8000, interval, 100 << 20, |t| {
            vec![sock(1, "192.0.2.1:1", 4_000_000, t % 200, (t / 200) * 8192)]
        });
        let (t, d) = plans.iter().find(|(_, p)| !chosen(p).is_empty()).map(|(t, p)| (*t, chosen(p))).expect("slow");
        assert_eq!(d[0].reason, Reason::SlowDrain);
        assert!(t <= 2000, "interval {interval}: slow only at {t}ms");
        assert!(d[0].offending_ms <= 2000, "{d:?}");
    }
    // A reader that keeps up but pauses for 2 s just as it goes over its share, and one that
    // reads 256 KiB every 600 ms: intervals without an ACK, so no trickle; over the window
    // both keep up.
    let pausing = |t: u64| if t < 2100 { 64 << 10 } else { (64 << 10) * (1 + (t - 2100) / 100) };
    let bursty = |t: u64| (t / 600) * (256 << 10);
    for (name, acked) in [("pausing", &pausing as &dyn Fn(u64) -> u64), ("bursty", &bursty)] {
        for interval in [250, 1000] {
            let mut p = policy(1 << 20);
            p.interval_ms = interval;
            let mut j = Judge::new(p);
            let plans =
                run_for(&mut j, 30_000, interval, 100 << 20, |t| vec![sock(1, "192.0.2.1:1", 4_000_000, 0, acked(t))]);
            for (t, plan) in plans {
                assert!(chosen(&plan).is_empty(), "{name} at {interval}ms destroyed at {t}ms: {plan:?}");
            }
        }
    }
}

#[test]
fn a_reader_gaming_max_drain_is_slow_once_the_bar_rises() {
    // Four readers acknowledging 410 KB/s each while the application refills their 7.5 MB
    // queues: 18 s to drain, under --max-drain (30 s), for as long as they like. A reader
    // that keeps up (640 KB/s, 12 s) is never slow.
    let run = |pressure: u64, rate: u64| {
        let mut j = Judge::new(policy(8 << 20));
        let plans = run_for(&mut j, 40_000, 250, pressure, |t| {
            (1..=4).map(|c| sock(c, &format!("192.0.2.{c}:1"), 7_500_000, 0, t * rate / 1000)).collect()
        });
        plans.iter().find(|(_, p)| !chosen(p).is_empty()).map(|(t, p)| (*t, chosen(p)[0].reason))
    };
    // Pressure over twice the threshold: the bar is 15 s at once.
    let (t, reason) = run(30 << 20, 410_000).expect("never slow");
    assert!(t <= 5000 && reason == Reason::SlowDrain, "{t} {reason:?}");
    // Just over the threshold: the bar falls as the episode ages, to 18 s within 24 s.
    let (t, _) = run(9 << 20, 410_000).expect("never slow");
    assert!((5000..=30_000).contains(&t), "{t}");
    // A reader that keeps up, however long the episode and high the pressure.
    assert_eq!(run(30 << 20, 640_000), None);
}

#[test]
fn ack_shaping_is_slow_after_one_window() {
    // 40 KiB every 900 ms with 7 MB queued: drains in ~160 s. Intervals without an ACK used
    // to give no estimate at all.
    let mut j = Judge::new(policy(1 << 20));
    let plans = run_for(&mut j, 8000, 250, 100 << 20, |t| {
        vec![sock(1, "192.0.2.1:1", 7_000_000, (t % 900).min(899), (t / 900) * 40_960)]
    });
    let first = plans.iter().find(|(_, p)| !chosen(p).is_empty()).map(|(t, p)| (*t, chosen(p)));
    let (t, d) = first.expect("the ACK shaper is never chosen");
    assert_eq!(t, 5000, "chosen as soon as a whole window shows it slow");
    assert_eq!(d[0].reason, Reason::SlowDrain);
    assert!(d[0].drain_estimate_ms.is_some_and(|ms| ms > 100_000), "{d:?}");
    assert!(d[0].offending_ms >= 5000);
}

#[test]
fn a_backlog_the_peer_drained_is_not_slow() {
    // The application wrote in bursts the peer acknowledged in full: its rate is the
    // application's, not the peer's.
    let mut j = Judge::new(policy(1 << 20));
    let plans =
        run_for(&mut j, 10_000, 250, 100 << 20, |t| vec![sock(1, "192.0.2.1:1", 4 << 20, 0, (t / 5000) * (5 << 20))]);
    assert!(plans.iter().all(|(_, p)| chosen(p).is_empty()));
}

#[test]
fn evidence_ranks_a_long_stall_before_a_short_pause() {
    // A rate-limited download paused for 1.2 s holding 2.3 MB, and 17 slow-read attackers
    // holding 1.6 MB each, stalled for 30 s. The budget needs only a few of them.
    let mut sockets = vec![sock(1, "192.0.2.1:1", 2_300_000, 1200, 0)];
    sockets.extend((2..=18).map(|c| sock(c, &format!("192.0.2.{c}:1"), 1_600_000, 30_000, 0)));
    let threshold = 16 << 20;
    let plan = Judge::new(policy(threshold)).judge_all(&sockets, 100_000, threshold + (3 << 20));
    let d = chosen(&plan);
    assert!(!d.is_empty());
    assert!(!cookies(&d).contains(&1), "the paused download went first: {d:?}");
}

#[test]
fn escalates_to_stalled_sockets_under_their_share_after_a_streak() {
    // 10 stalled peers on 10 addresses, each under its per-remote share, and one
    // progressing reader over its share: nothing qualifies by share.
    let mut sockets: Vec<Socket> = (1..=10).map(|c| sock(c, &format!("192.0.2.{c}:1"), 700 << 10, 5000, 0)).collect();
    sockets.push(sock(11, "192.0.2.99:1", 6 << 20, 0, 0));
    let mut p = policy(8 << 20);
    p.fairness = Fairness::RemoteIp;
    // Not before the drain window (5 s, 20 intervals) had its chance: a slow reader over its
    // share would have been found by then.
    let after = (p.drain_window_ms / p.interval_ms) as u32;
    let mut j = Judge::new(p);
    let pressure = 13 << 20;
    for i in 0..after - 1 {
        // The reader acknowledges 2 MiB an interval: it drains, it is no slow reader.
        sockets[10].bytes_acked += 2 << 20;
        assert!(chosen(&j.judge_all(&sockets, u64::from(i) * 250, pressure)).is_empty(), "interval {i}");
    }
    sockets[10].bytes_acked += 2 << 20;
    let d = chosen(&j.judge_all(&sockets, u64::from(after) * 250, pressure));
    assert!(!d.is_empty() && d.iter().all(|d| d.reason == Reason::StalledUnderShare), "{d:?}");
    assert!(!cookies(&d).contains(&11), "a progressing socket is never a candidate");
    // As many as bring the pressure back to the low line (6 MiB): 7 MiB over it, 700 KiB
    // each, more than there are.
    assert_eq!(d.len(), 10);
    // Pressure at the threshold, still over the low line: the episode goes on, and the
    // stalled sockets are still taken (the reader's queue moving pressure across the
    // threshold does not reset the rule).
    let t = u64::from(after) * 250;
    let d = chosen(&j.judge_all(&sockets, t + 250, 8 << 20));
    assert_eq!(d.len(), 3, "2 MiB over the low line: {d:?}");
    // Under the low line for the drain window: the episode ends, and a new one must earn
    // its escalation again.
    for i in 0..after {
        sockets[10].bytes_acked += 2 << 20;
        assert!(chosen(&j.judge_all(&sockets, t + 500 + u64::from(i) * 250, 6 << 20)).is_empty());
    }
    assert!(j.episode().is_none());
    sockets[10].bytes_acked += 2 << 20;
    assert!(chosen(&j.judge_all(&sockets, t + 500 + u64::from(after) * 250, pressure)).is_empty());
    assert!(j.episode().is_some());
}

#[test]
fn an_episode_keeps_taking_stalled_offenders_while_pressure_hovers() {
    // Two stalled offenders over their share; pressure crosses the threshold, then hovers
    // just under it. Before episodes the second one was kept for as long as pressure stayed
    // at the threshold.
    let mut sockets = vec![sock(1, "192.0.2.1:1", 5 << 20, 5000, 0), sock(2, "192.0.2.2:1", 4 << 20, 5000, 0)];
    // Six harmless connections: a share of 1 MiB.
    sockets.extend((3..=8).map(|c| sock(c, "192.0.2.9:1", 1000, 0, 0)));
    let mut p = policy(8 << 20);
    p.kind = Kind::Budget;
    let mut j = Judge::new(p);
    // 9 MiB: 1 MiB over the threshold, 3 MiB over the low line: the worst goes.
    assert_eq!(cookies(&chosen(&j.judge_all(&sockets, 0, 9 << 20))), [1]);
    // The application refilled the others: pressure at the threshold, over the low line.
    let rest = &sockets[1..];
    assert_eq!(cookies(&chosen(&j.judge_all(rest, 250, 8 << 20))), [2]);
    // Under the low line nothing goes, episode or not.
    assert!(chosen(&j.judge_all(rest, 500, 6 << 20)).is_empty());
    // Without an episode, pressure at the threshold is no pressure.
    assert!(chosen(&Judge::new(policy(8 << 20)).judge_all(rest, 250, 8 << 20)).is_empty());
    // Progressing sockets are never taken however long the episode.
    let progressing = vec![sock(3, "192.0.2.3:1", 8 << 20, 0, 0)];
    for i in 0..100 {
        assert!(chosen(&j.judge_all(&progressing, 750 + i * 250, 7 << 20)).is_empty());
    }
}

#[test]
fn budget_stops_at_threshold_worst_first() {
    let sockets = vec![
        sock(1, "192.0.2.1:1", 3 << 20, 5000, 0),
        sock(2, "192.0.2.2:1", 5 << 20, 5000, 0),
        sock(3, "192.0.2.3:1", 4 << 20, 5000, 0),
    ];
    // Pressure 12 MiB, aiming for the low line at 6 MiB: the 5 MiB and the 4 MiB ones.
    assert_eq!(cookies(&chosen(&Judge::new(policy(8 << 20)).judge_all(&sockets, 1000, 12 << 20))), [2, 3]);
    // A low line at the threshold: destroying the 5 MiB one is enough.
    let mut p = policy(8 << 20);
    p.low_water = p.threshold;
    assert_eq!(cookies(&chosen(&Judge::new(p.clone()).judge_all(&sockets, 1000, 12 << 20))), [2]);
    p.kind = Kind::Heffner;
    assert_eq!(cookies(&chosen(&Judge::new(p.clone()).judge_all(&sockets, 1000, 12 << 20))), [1, 2, 3]);
    let out = Judge::new(p).judge_all(&sockets, 1000, 12 << 20).carry_out(2, |_| Taken::Done);
    assert_eq!(cookies(&out.acted), [2, 3]);
    assert_eq!(out.held_back, 1, "the third offender is held back by the cap");
}

#[test]
fn protected_sockets_are_never_chosen() {
    let mut sockets = vec![sock(1, "192.0.2.1:1", 50 << 20, 5000, 0), sock(2, "198.51.100.7:443", 50 << 20, 5000, 0)];
    sockets.push(sock(3, "203.0.113.9:2", 50 << 20, 5000, 0));
    sockets[2].cgroup_id = 42;
    let mut p = policy(1 << 20);
    p.kind = Kind::Heffner;
    p.protect.cidrs.push("192.0.2.0/24".parse().expect("cidr"));
    p.protect.remote_ports.push(443);
    p.protect.cgroups.insert(42);
    let mut j = Judge::new(p);
    // Not by the share rule, not by escalation, not as repeat offenders.
    for i in 0..10 {
        assert!(chosen(&j.judge_all(&sockets, i * 250, 200 << 20)).is_empty());
    }
}

#[test]
fn a_peer_cannot_borrow_protection_with_its_source_port() {
    // Connected to our port 80 from source port 22: --protect-port 22 protects our sshd,
    // not whoever picks 22 as a source port.
    let s = sock(1, "192.0.2.1:22", 50 << 20, 5000, 0);
    let mut p = policy(1 << 20);
    p.protect.ports.push(22);
    assert_eq!(cookies(&chosen(&Judge::new(p.clone()).judge_all(std::slice::from_ref(&s), 1000, 100 << 20))), [1]);
    p.protect.ports.push(80);
    assert!(chosen(&Judge::new(p).judge_all(&[s], 1000, 100 << 20)).is_empty());
}

#[test]
fn remote_fairness_decides_per_remote() {
    let mut sockets: Vec<Socket> = (1..=10).map(|c| sock(c, "192.0.2.1:1", 500 << 10, 5000, 0)).collect();
    sockets.push(sock(11, "192.0.2.2:1", 500 << 10, 5000, 0));
    let mut p = policy(4 << 20);
    p.kind = Kind::Heffner;
    p.fairness = Fairness::RemoteIp;
    assert_eq!(
        cookies(&chosen(&Judge::new(p.clone()).judge_all(&sockets, 1000, 5 << 20))),
        (1..=10).collect::<Vec<_>>()
    );
    p.fairness = Fairness::Connection;
    assert!(cookies(&chosen(&Judge::new(p).judge_all(&sockets, 1000, 5 << 20))).contains(&11));
}
