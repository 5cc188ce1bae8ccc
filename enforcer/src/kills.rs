//! Enforcement decisions as events: the log line every decision emits, and the record kept in
//! the pinned ring for `enforcer kills`.
use std::net::SocketAddr;

use enforcer_common::{KillRecord, SockRecord};
use serde::Serialize;

use crate::{policy::Decision, view};

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

pub fn reason_code(r: crate::policy::Reason) -> u8 {
    use crate::policy::Reason::*;
    match r {
        Stalled => 1,
        SlowDrain => 2,
        RemoteCap => 3,
    }
}

fn reason_name(code: u8) -> &'static str {
    match code {
        1 => "stalled",
        2 => "slow_drain",
        3 => "remote_cap",
        _ => "unknown",
    }
}

/// One line a decision: JSON fields in `--log-format json`, `key=value` pairs in text.
pub fn log(event: KillEvent, d: &Decision, pressure: u64, threshold: u64, error: Option<&std::io::Error>) {
    let s = &d.socket;
    let drain = d.drain_estimate_ms;
    let why = match d.reason {
        crate::policy::Reason::Stalled => format!(
            "holds {} (share {}), no progress for {}",
            view::human_bytes(s.send_queue),
            view::human_bytes(d.fair_share),
            view::human_ms(s.stalled_ms)
        ),
        crate::policy::Reason::SlowDrain => format!(
            "holds {} (share {}), would take {} to drain",
            view::human_bytes(s.send_queue),
            view::human_bytes(d.fair_share),
            view::human_ms(drain.unwrap_or(u64::MAX))
        ),
        crate::policy::Reason::RemoteCap => {
            format!("over the per-remote connection cap, idle for {}", view::human_ms(s.rx_idle_ms.min(s.tx_idle_ms)))
        }
    };
    macro_rules! emit {
        ($level:ident) => {
            tracing::$level!(
                event = event.as_str(), cookie = s.cookie, local = %s.local, remote = %s.remote,
                send_queue = s.send_queue, fair_share = d.fair_share, stalled_ms = s.stalled_ms,
                drain_estimate_ms = drain, pressure, threshold, reason = d.reason.as_str(),
                error = error.map(|e| e.to_string()),
                "{} {} -> {}: {why}", event.as_str(), s.local, s.remote
            )
        };
    }
    match event {
        KillEvent::DestroyFailed => emit!(error),
        _ => emit!(warn),
    }
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
        reason: reason_code(d.reason),
        send_queue: d.socket.send_queue,
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
    pub fair_share: u64,
    pub stalled_ms: u64,
    pub drain_estimate_ms: Option<u64>,
    pub pressure: u64,
    pub threshold: u64,
    pub reason: &'static str,
    pub error: i32,
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
            fair_share: r.fair_share,
            stalled_ms: r.stalled_ms,
            drain_estimate_ms: (r.drain_estimate_ms != u64::MAX).then_some(r.drain_estimate_ms),
            pressure: r.pressure,
            threshold: r.threshold,
            reason: reason_name(r.reason),
            error: r.error,
        }
    }
}
