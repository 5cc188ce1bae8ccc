//! The kill journal: every enforcement decision as one log line, and as a record in the pinned
//! ring (`KILLS`, with its counters in `KILL_COUNTERS`) that `enforcer kills` and `status` read.
//! This module owns the ring's layout: the agent writes it, the CLI reads it, both here.
use std::net::SocketAddr;

use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData};
use enforcer_common::{KILL_RING, KillRecord, kill_counters, names};
use serde::Serialize;

use crate::{
    attribution::{self, Attribution},
    pins::{PinDir, PinError},
    policy::{Decision, Reason, repeat::Flagged},
    socket,
    units::{human_bytes, human_ms},
};

/// What became of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Destroyed,
    /// A dry run's decision.
    WouldDestroy,
    DestroyFailed,
}

/// Each event's code in the ring, its name in logs and JSON, and its counter: one table, so
/// the three never disagree. Codes are what earlier agents wrote: never renumber.
const EVENTS: [(Event, u8, &str, u32); 3] = [
    (Event::Destroyed, 1, "destroyed", kill_counters::DESTROYED),
    (Event::WouldDestroy, 2, "would_destroy", kill_counters::WOULD_DESTROY),
    (Event::DestroyFailed, 3, "destroy_failed", kill_counters::DESTROY_FAILED),
];

impl Event {
    fn row(self) -> (Event, u8, &'static str, u32) {
        EVENTS.into_iter().find(|r| r.0 == self).unwrap_or(EVENTS[0])
    }

    pub fn as_str(self) -> &'static str {
        self.row().2
    }

    pub fn code(self) -> u8 {
        self.row().1
    }

    pub fn from_code(code: u8) -> Option<Self> {
        EVENTS.into_iter().find(|r| r.1 == code).map(|r| r.0)
    }

    fn counter(self) -> u32 {
        self.row().3
    }
}

/// The agent's end of the journal: the ring and its counters, taken from the loaded object.
pub struct Journal {
    ring: Array<MapData, KillRecord>,
    counters: Array<MapData, u64>,
}

impl Journal {
    /// The maps are the loader's pinned `KILLS` and `KILL_COUNTERS`.
    pub fn new(ring: Map, counters: Map) -> Result<Self> {
        Ok(Self {
            ring: Array::try_from(ring).context("the kills map")?,
            counters: Array::try_from(counters).context("the kill counters map")?,
        })
    }

    /// Keeps a decision in the ring and counts it.
    pub fn write(&mut self, rec: KillRecord) -> Result<()> {
        let next = self.counters.get(&kill_counters::NEXT, 0)?;
        let slot = Event::from_code(rec.event).unwrap_or(Event::DestroyFailed).counter();
        let count = self.counters.get(&slot, 0)?;
        self.counters.set(slot, count + 1, 0)?;
        self.counters.set(kill_counters::NEXT, next + 1, 0)?;
        self.ring.set((next % u64::from(KILL_RING)) as u32, rec, 0)?;
        Ok(())
    }
}

/// The kill counters of a running agent: destroyed, would_destroy, destroy_failed, total.
pub fn counters(pins: &PinDir) -> Result<[u64; kill_counters::COUNT as usize], PinError> {
    let (path, map) = pins.map(names::PIN_KILL_COUNTERS)?;
    let err = |source| PinError::Map { path: path.clone(), source };
    let array: Array<_, u64> = map.try_into().map_err(err)?;
    let mut out = [0u64; kill_counters::COUNT as usize];
    for (slot, v) in out.iter_mut().enumerate() {
        *v = array.get(&(slot as u32), 0).map_err(err)?;
    }
    Ok(out)
}

/// The decisions a running agent kept, newest first.
pub fn read(pins: &PinDir) -> Result<Vec<KillRecord>, PinError> {
    let total = counters(pins)?[kill_counters::NEXT as usize];
    let (path, map) = pins.map(names::PIN_KILLS)?;
    let err = |source| PinError::Map { path: path.clone(), source };
    let ring: Array<_, KillRecord> = map.try_into().map_err(err)?;
    let kept = total.min(u64::from(KILL_RING));
    (0..kept).map(|i| ring.get(&(((total - 1 - i) % u64::from(KILL_RING)) as u32), 0).map_err(err)).collect()
}

/// Reads a running agent's ring as it grows: each decision once, oldest first.
pub struct Follower {
    ring: Array<MapData, KillRecord>,
    counters: Array<MapData, u64>,
    /// The pins, for errors.
    paths: (std::path::PathBuf, std::path::PathBuf),
    /// Decisions ever recorded that this reader has passed.
    next: u64,
}

impl Follower {
    /// Starts at the oldest decision the ring still keeps.
    pub fn open(pins: &PinDir) -> Result<Self, PinError> {
        let (ring_path, map) = pins.map(names::PIN_KILLS)?;
        let ring = Array::try_from(map).map_err(|source| PinError::Map { path: ring_path.clone(), source })?;
        let (counters_path, map) = pins.map(names::PIN_KILL_COUNTERS)?;
        let counters = Array::try_from(map).map_err(|source| PinError::Map { path: counters_path.clone(), source })?;
        let mut f = Self { ring, counters, paths: (ring_path, counters_path), next: 0 };
        f.next = f.total()?.saturating_sub(u64::from(KILL_RING));
        Ok(f)
    }

    fn total(&self) -> Result<u64, PinError> {
        self.counters
            .get(&kill_counters::NEXT, 0)
            .map_err(|source| PinError::Map { path: self.paths.1.clone(), source })
    }

    /// The decisions recorded since the last call, oldest first, and how many were overwritten
    /// before they could be read (more than the ring holds arrived in between).
    pub fn poll(&mut self) -> Result<(Vec<KillRecord>, u64), PinError> {
        let total = self.total()?;
        let first = self.next.max(total.saturating_sub(u64::from(KILL_RING)));
        let lost = first - self.next;
        let out = (first..total)
            .map(|i| {
                self.ring
                    .get(&((i % u64::from(KILL_RING)) as u32), 0)
                    .map_err(|source| PinError::Map { path: self.paths.0.clone(), source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.next = total;
        Ok((out, lost))
    }
}

/// The symbolic name of an errno a destroy can fail with (`ENOENT`), for logs and JSON.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::ENOENT => "ENOENT",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EBUSY => "EBUSY",
        libc::EAGAIN => "EAGAIN",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        0 => "",
        _ => "other",
    }
}

fn why(d: &Decision) -> String {
    let s = &d.socket;
    let held = format!("holds {} charged ({} queued)", human_bytes(s.charged), human_bytes(s.send_queue));
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
        Reason::StalledUnderShare => format!(
            "{held}, under its share {} but no progress for {} while pressure stays over the threshold",
            human_bytes(d.fair_share),
            human_ms(s.stalled_ms)
        ),
        Reason::RepeatOffender => {
            format!("{held}, a repeat offender's connection with no progress for {}", human_ms(s.stalled_ms))
        }
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
                send_queue = s.send_queue, charged = s.charged, fair_share = d.fair_share,
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
    tracing::warn!(
        event = "repeat_offender", remote = %f.remote, kills = f.kills, window_ms = f.window_ms,
        contain_sndbuf = contained,
        "repeat_offender {}: {} connections destroyed within {}; its new connections get {}",
        f.remote, f.kills, human_ms(f.window_ms),
        match contained {
            Some(b) => format!("one interval of grace and a {} send buffer", human_bytes(b)),
            None => "one interval of grace".to_owned(),
        }
    );
}

/// The ring's record of a decision.
pub fn record(event: Event, d: &Decision, who: &Attribution, pressure: u64, threshold: u64, errno: i32) -> KillRecord {
    let raw = &d.socket.raw.record;
    KillRecord {
        unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_millis() as u64)
            .unwrap_or(0),
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
        comm: attribution::fixed(who.process.as_ref().map_or("", |p| p.comm.as_str())),
        cgroup: attribution::fixed(who.cgroup.as_deref().unwrap_or("")),
    }
}

/// A kept decision as `enforcer kills` shows it.
#[derive(Debug, Serialize)]
pub struct Kill {
    pub unix_ms: u64,
    pub event: &'static str,
    pub cookie: u64,
    #[serde(serialize_with = "as_string")]
    pub local: SocketAddr,
    #[serde(serialize_with = "as_string")]
    pub remote: SocketAddr,
    pub send_queue: u64,
    pub charged: u64,
    pub fair_share: u64,
    pub stalled_ms: u64,
    pub drain_estimate_ms: Option<u64>,
    pub pressure: u64,
    pub threshold: u64,
    pub reason: &'static str,
    pub error: i32,
    /// `ENOENT` and the like; empty when the destroy worked.
    pub errno: &'static str,
    /// Inode of the socket's network namespace.
    pub netns: u64,
    pub cgroup_id: u64,
    /// The cgroup's path below the cgroup2 mount, `None` if it was gone when judged.
    pub cgroup: Option<String>,
    /// A process holding the socket when it was judged, if one was found.
    pub pid: Option<u32>,
    pub comm: Option<String>,
}

fn as_string<S: serde::Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(addr)
}

impl From<&KillRecord> for Kill {
    fn from(r: &KillRecord) -> Self {
        Self {
            unix_ms: r.unix_ms,
            event: Event::from_code(r.event).map_or("unknown", Event::as_str),
            cookie: r.cookie,
            local: socket::addr(r.family, r.local_addr, r.local_port),
            remote: socket::addr(r.family, r.remote_addr, r.remote_port),
            send_queue: r.send_queue,
            charged: r.charged,
            fair_share: r.fair_share,
            stalled_ms: r.stalled_ms,
            drain_estimate_ms: (r.drain_estimate_ms != u64::MAX).then_some(r.drain_estimate_ms),
            pressure: r.pressure,
            threshold: r.threshold,
            reason: Reason::from_code(r.reason).map_or("unknown", Reason::as_str),
            error: r.error,
            errno: errno_name(r.error),
            netns: r.netns,
            cgroup_id: r.cgroup_id,
            cgroup: Some(attribution::unfixed(&r.cgroup)).filter(|c| !c.is_empty()),
            pid: (r.pid != 0).then_some(r.pid),
            comm: (r.pid != 0).then(|| attribution::unfixed(&r.comm)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_keep_their_meaning() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_code(r.code()), Some(r));
        }
        assert_eq!(Reason::from_code(0), None);
        for (e, code, name, _) in EVENTS {
            assert_eq!((Event::from_code(code), e.as_str(), e.code()), (Some(e), name, code));
        }
        // Codes of rings written by earlier agents keep their meaning.
        assert_eq!((Reason::Stalled.code(), Reason::SlowDrain.code()), (1, 2));
        assert_eq!((Event::Destroyed.code(), Event::DestroyFailed.code()), (1, 3));
    }
}
