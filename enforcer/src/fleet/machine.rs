//! The machine: a thread that pushes this host's repeat offenders to the Local API as alerts
//! (scenario `enforcer/repeat-offender`, the evidence in the alert's meta), without decisions:
//! the Local API's profiles decide (`deploy/crowdsec/profiles.yaml` gives a `contain` decision
//! whose duration grows each time the remote is flagged again). Alerts wait in a bounded queue
//! while the Local API is away, and go when it is back.
use std::{
    collections::VecDeque,
    sync::{Arc, mpsc},
    time::{Duration, Instant, SystemTime},
};

use serde_json::{Value, json};

use super::lapi::{Lapi, LapiError};
use crate::{
    config::crowdsec::MachineCredentials,
    model::units::human_ms,
    observe::metrics::Metrics,
    policy::repeat::{Flagged, Why},
};

/// The scenario of enforcer's alerts, which the shipped profile matches.
pub const SCENARIO: &str = "enforcer/repeat-offender";
/// Flags waiting for the Local API, at most; the oldest go first when it is full.
pub const QUEUE: usize = 1024;
/// Alerts per call.
const BATCH: usize = 100;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(60);

pub(super) struct Machine {
    lapi: Lapi,
    creds: MachineCredentials,
    token: Option<String>,
    metrics: Arc<Metrics>,
    /// This host's name, in each alert.
    host: String,
}

impl Machine {
    pub fn new(creds: MachineCredentials, metrics: Arc<Metrics>, host: String) -> Self {
        Self { lapi: Lapi::new(&creds.url), creds, token: None, metrics, host }
    }

    /// Runs until `stop` is dropped (or the agent's sender).
    pub fn run(mut self, flags: mpsc::Receiver<Flagged>, stop: mpsc::Receiver<()>) {
        let mut queue: VecDeque<(Flagged, SystemTime)> = VecDeque::new();
        let (mut failures, mut next_try) = (0u32, Instant::now());
        loop {
            if !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                return;
            }
            match flags.recv_timeout(Duration::from_millis(200)) {
                Ok(f) => {
                    if queue.len() == QUEUE {
                        queue.pop_front();
                        self.count("dropped");
                    }
                    queue.push_back((f, SystemTime::now()));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            if queue.is_empty() || Instant::now() < next_try {
                continue;
            }
            let n = queue.len().min(BATCH);
            let alerts: Vec<Value> = queue.iter().take(n).map(|(f, at)| self.alert(f, *at)).collect();
            match self.send(&Value::Array(alerts)) {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(url = self.lapi.url(), failures, "CrowdSec Local API: alerts go through again");
                    }
                    queue.drain(..n);
                    for _ in 0..n {
                        self.count("sent");
                    }
                    failures = 0;
                }
                Err(e) => {
                    self.metrics.crowdsec_errors.get_or_create(&vec![("kind", e.kind())]).inc();
                    if failures == 0 {
                        tracing::warn!(
                            url = self.lapi.url(), error = %e, queued = queue.len(),
                            "CrowdSec Local API: repeat offenders cannot be shared ({e}); they wait (at most {QUEUE}) \
                             and go when it answers (said once until then)"
                        );
                    }
                    failures = failures.saturating_add(1);
                    next_try =
                        Instant::now() + FIRST_RETRY.saturating_mul(1 << (failures - 1).min(16)).min(LONGEST_RETRY);
                }
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics.crowdsec_alerts.get_or_create(&vec![("outcome", outcome)]).inc();
    }

    /// Posts alerts, logging in first (again, if the token expired).
    fn send(&mut self, alerts: &Value) -> Result<(), LapiError> {
        for attempt in 0..2 {
            let token = match &self.token {
                Some(t) => t.clone(),
                None => {
                    let t = self.lapi.login(&self.creds.login, &self.creds.password, &[SCENARIO])?;
                    self.token = Some(t.clone());
                    t
                }
            };
            match self.lapi.alerts(&token, alerts) {
                Err(LapiError::Auth(_)) if attempt == 0 => self.token = None,
                other => return other.map(|_| ()),
            }
        }
        Err(LapiError::Auth(401))
    }

    /// One alert: the remote as its source, the evidence as meta, no decision (profiles decide).
    fn alert(&self, f: &Flagged, at: SystemTime) -> Value {
        let time = humantime::format_rfc3339_millis(at).to_string();
        let (scope, value) = if f.remote.prefix_len() == f.remote.max_prefix_len() {
            ("Ip", f.remote.addr().to_string())
        } else {
            ("Range", f.remote.to_string())
        };
        let mut source = json!({ "scope": scope, "value": value });
        if scope == "Ip" {
            source["ip"] = json!(value);
        } else {
            source["range"] = json!(value);
        }
        let (events, evidence) = match f.why {
            Why::Destroys { kills, window_ms } => {
                (kills, vec![("destroys", kills.to_string()), ("window", human_ms(window_ms))])
            }
            Why::Stuck { charged, share, stuck_ms } => (
                1,
                vec![
                    ("charged_bytes", charged.to_string()),
                    ("share_bytes", share.to_string()),
                    ("stuck", human_ms(stuck_ms)),
                ],
            ),
        };
        let mut meta: Vec<Value> = vec![json!({"key": "enforcer_host", "value": self.host})];
        meta.extend(evidence.iter().map(|(k, v)| json!({ "key": k, "value": v })));
        let why = evidence.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ");
        json!({
            "scenario": SCENARIO,
            "scenario_hash": "",
            "scenario_version": env!("CARGO_PKG_VERSION"),
            "message": format!("enforcer on {}: {} is a repeat offender ({why})", self.host, f.remote),
            "events_count": events,
            "capacity": 0,
            "leakspeed": "0s",
            "simulated": false,
            "remediation": true,
            "start_at": time,
            "stop_at": time,
            "source": source,
            "events": [{ "timestamp": time, "meta": meta }],
            "meta": meta,
        })
    }
}
