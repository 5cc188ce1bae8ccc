//! Every decision the agent makes, said twice: as one log line (JSON fields in `--log-format
//! json`, `key=value` pairs in text) with its explanation, and as a record for the pinned ring
//! that `enforcer kills` reads.
use enforcer_common::KillRecord;

use super::attribution::Attribution;
use crate::{
    bpf::journal::Event,
    host::{sock_diag::errno_name, sys},
    model::units::{fixed, human_bytes, human_ms},
    policy::{
        Decision, Reason,
        episode::Change,
        repeat::{Flagged, Why},
    },
};

/// Why the rule chose it, in words.
fn why(d: &Decision) -> String {
    let s = &d.socket;
    let held = if s.recv_charged == 0 {
        format!("holds {} charged ({} queued)", human_bytes(s.charged), human_bytes(s.send_queue))
    } else {
        format!(
            "holds {} charged ({} queued to send, {} received{})",
            human_bytes(s.charged),
            human_bytes(s.send_queue),
            human_bytes(s.recv_charged),
            if s.out_of_order { " beyond a hole" } else { "" }
        )
    };
    match d.reason {
        Reason::Stalled => {
            format!("{held}, share {}, no progress for {}", human_bytes(d.fair_share), human_ms(s.stalled_ms))
        }
        Reason::SlowDrain => format!(
            "{held}, share {}, would take {} to drain at its rate over {}",
            human_bytes(d.fair_share),
            human_ms(d.drain_estimate_ms.unwrap_or(u64::MAX)),
            human_ms(d.offending_ms)
        ),
        Reason::RemoteCap => {
            format!("over the per-remote connection cap, idle for {}", human_ms(s.rx_idle_ms.min(s.tx_idle_ms)))
        }
        Reason::Orphan => format!(
            "over the per-remote connection cap, an orphan: relays for nobody (the connection its bytes \
             went to closed), nothing relayed for {}, {} relayed in all",
            human_ms(d.offending_ms),
            human_bytes(s.relay.map_or(0, |r| r.bytes))
        ),
        Reason::StalledUnderShare => format!(
            "{held}, under its share {} but no progress for {} while pressure stays over the threshold",
            human_bytes(d.fair_share),
            human_ms(d.offending_ms)
        ),
        Reason::RepeatOffender => {
            format!("{held}, a repeat offender's connection with no progress for {}", human_ms(d.offending_ms))
        }
        Reason::ContainedByCrowdsec => format!(
            "{held}, a connection of a remote the fleet contains (a CrowdSec decision) with no progress for {}",
            human_ms(d.offending_ms)
        ),
        Reason::OutOfOrder => format!(
            "{held}, share {}, segments wait beyond a hole the peer has not filled and nothing arrived in order for {}",
            human_bytes(d.fair_share),
            human_ms(d.offending_ms)
        ),
    }
}

/// One line a decision: JSON fields in `--log-format json`, `key=value` pairs in text. `who`
/// says whose socket it was (namespace, cgroup path, process), so two namespaces' kills can be
/// told apart by more than a port.
pub fn log(
    event: Event,
    d: &Decision,
    who: &Attribution,
    pressure: u64,
    threshold: u64,
    error: Option<&std::io::Error>,
) {
    let s = &d.socket;
    let why = why(d);
    let errno = error.and_then(std::io::Error::raw_os_error).map(errno_name);
    let (pid, comm) = (who.process.as_ref().map(|p| p.pid), who.process.as_ref().map(|p| p.comm.as_str()));
    let owner = match &who.process {
        Some(p) => format!(" ({} pid {}, cgroup {})", p.comm, p.pid, who.cgroup.as_deref().unwrap_or("?")),
        None => format!(" (cgroup {})", who.cgroup.as_deref().unwrap_or("?")),
    };
    macro_rules! emit {
        ($level:ident) => {
            tracing::$level!(
                event = event.as_str(), cookie = s.cookie, local = %s.local, remote = %s.remote,
                send_queue = s.send_queue, charged = s.charged, recv_charged = s.recv_charged, fair_share = d.fair_share,
                stalled_ms = s.stalled_ms, drain_estimate_ms = d.drain_estimate_ms,
                offending_ms = d.offending_ms, evidence = d.evidence, pressure, threshold,
                reason = d.reason.as_str(), error = error.map(|e| e.to_string()), errno,
                netns = who.netns, cgroup_id = who.cgroup_id, cgroup = who.cgroup.as_deref(), pid, comm,
                "{} {} -> {}{owner}: {why}", event.as_str(), s.local, s.remote
            )
        };
    }
    match event {
        Event::DestroyFailed => emit!(error),
        _ => emit!(warn),
    }
}

/// The line that names a new repeat offender, so an operator can block it upstream.
pub fn log_repeat_offender(f: &Flagged, contained: Option<u64>) {
    let (why, kills, window_ms, charged, share, stuck_ms) = match f.why {
        Why::Destroys { kills, window_ms } => (
            format!("{kills} connections destroyed within {}", human_ms(window_ms)),
            Some(kills),
            Some(window_ms),
            None,
            None,
            None,
        ),
        Why::Stuck { charged, share, stuck_ms } => (
            format!(
                "its connections held {} against a remote's share of {} with none progressing for {}",
                human_bytes(charged),
                human_bytes(share),
                human_ms(stuck_ms)
            ),
            None,
            None,
            Some(charged),
            Some(share),
            Some(stuck_ms),
        ),
    };
    tracing::warn!(
        event = "repeat_offender", remote = %f.remote, kills, window_ms, charged, share, stuck_ms,
        contain_sndbuf = contained,
        "repeat_offender {}: {why}; {}",
        f.remote,
        match contained {
            Some(b) => format!(
                "its new connections get a {} send buffer until they progress, and its stalled ones go whatever their share",
                human_bytes(b)
            ),
            None => "its stalled connections go whatever their share".to_owned(),
        }
    );
}

/// An episode of pressure that started or ended, as one line.
pub fn log_episode(change: &Change, pressure: u64, threshold: u64, low_water: u64) {
    match *change {
        Change::None => {}
        Change::Started => tracing::warn!(
            event = "episode_started",
            pressure,
            threshold,
            low_water,
            "episode_started: pressure {} is over the threshold {}; the rule acts until it is back under {}",
            human_bytes(pressure),
            human_bytes(threshold),
            human_bytes(low_water)
        ),
        Change::Ended { episode: e, ended_ms } => {
            let lasted_ms = ended_ms.saturating_sub(e.started_ms);
            tracing::info!(
                event = "episode_ended",
                pressure,
                threshold,
                low_water,
                lasted_ms,
                over_intervals = e.over,
                peak = e.peak,
                decisions = e.decisions,
                "episode_ended after {}: pressure stayed under {}; peak {}, {} decisions",
                human_ms(lasted_ms),
                human_bytes(low_water),
                human_bytes(e.peak),
                e.decisions
            );
        }
    }
}

/// The ring's record of a decision, for `Journal::write`.
pub fn record(event: Event, d: &Decision, who: &Attribution, pressure: u64, threshold: u64, errno: i32) -> KillRecord {
    let raw = &d.socket.raw.record;
    KillRecord {
        unix_ms: sys::unix_ms(),
        cookie: d.socket.cookie,
        local_addr: raw.local_addr,
        remote_addr: raw.remote_addr,
        local_port: raw.local_port,
        remote_port: raw.remote_port,
        family: raw.family,
        event: event.code(),
        reason: d.reason.code(),
        send_queue: d.socket.send_queue,
        charged: d.socket.charged,
        fair_share: d.fair_share,
        stalled_ms: d.socket.stalled_ms,
        drain_estimate_ms: d.drain_estimate_ms.unwrap_or(u64::MAX),
        pressure,
        threshold,
        error: errno,
        _pad: 0,
        netns: who.netns,
        cgroup_id: who.cgroup_id,
        pid: who.process.as_ref().map_or(0, |p| p.pid),
        _pad2: 0,
        comm: fixed(who.process.as_ref().map_or("", |p| p.comm.as_str())),
        cgroup: fixed(who.cgroup.as_deref().unwrap_or("")),
    }
}
