//! Enforcement decisions as events: the log line every decision emits, and the record kept in
//! the pinned ring for `enforcer kills`.
use std::net::SocketAddr;

use enforcer_common::{KillRecord, SockRecord};
use serde::Serialize;

use crate::{
    policy::{Decision, Reason, repeat::Flagged},
    view::{self, human_bytes, human_ms},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum KillEvent {
    Destroyed = 1,
    WouldDestroy = 2,
    DestroyFailed = 3,
}

impl KillEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Destroyed => "destroyed",
            Self::WouldDestroy => "would_destroy",
            Self::DestroyFailed => "destroy_failed",
        }
    }

    fn from_u8(v: u8) -> &'static str {
        match v {
            1 => "destroyed",
            2 => "would_destroy",
            3 => "destroy_failed",
            _ => "unknown",
        }
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

/// One line a decision: JSON fields in `--log-format json`, `key=value` pairs in text.
pub fn log(event: KillEvent, d: &Decision, pressure: u64, threshold: u64, error: Option<&std::io::Error>) {
    let s = &d.socket;
    let why = why(d);
    let errno = error.and_then(std::io::Error::raw_os_error).map(errno_name);
    macro_rules! emit {
        ($level:ident) => {
            tracing::$level!(
                event = event.as_str(), cookie = s.cookie, local = %s.local, remote = %s.remote,
                send_queue = s.send_queue, charged = s.charged, fair_share = d.fair_share,
                stalled_ms = s.stalled_ms, drain_estimate_ms = d.drain_estimate_ms,
                offending_ms = d.offending_ms, evidence = d.evidence, pressure, threshold,
                reason = d.reason.as_str(), error = error.map(|e| e.to_string()), errno,
                "{} {} -> {}: {why}", event.as_str(), s.local, s.remote
            )
        };
    }
    match event {
        KillEvent::DestroyFailed => emit!(error),
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

pub fn record(
    event: KillEvent,
    d: &Decision,
    raw: &SockRecord,
    pressure: u64,
    threshold: u64,
    errno: i32,
) -> KillRecord {
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
        event: event as u8,
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
}

fn as_string<S: serde::Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(addr)
}

impl From<&KillRecord> for Kill {
    fn from(r: &KillRecord) -> Self {
        Self {
            unix_ms: r.unix_ms,
            event: KillEvent::from_u8(r.event),
            cookie: r.cookie,
            local: view::addr(r.family, r.local_addr, r.local_port),
            remote: view::addr(r.family, r.remote_addr, r.remote_port),
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
        }
    }
}
