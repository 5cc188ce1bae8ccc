//! Prometheus metrics (`--metrics-addr`): what the agent sees and does each interval, and what
//! its kernel programs count. Text exposition (OpenMetrics) on `GET /metrics`.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use enforcer_common::stats;
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Labels = Vec<(&'static str, &'static str)>;

pub struct Metrics {
    registry: Registry,
    /// Set after the first interval that took a snapshot: `/readyz` answers 200 from then on.
    pub ready: std::sync::atomic::AtomicBool,
    pub pressure: Gauge,
    pub threshold: Gauge,
    pub tracked: Gauge,
    pub offenders: Gauge,
    pub map_entries: Gauge,
    pub map_capacity: Gauge,
    /// Decisions by `event` (destroyed, would_destroy, destroy_failed) and `reason`.
    pub decisions: Family<Labels, Counter>,
    pub held_back: Counter,
    /// Remotes that became repeat offenders, and how many are flagged now.
    pub repeat_offenders: Counter,
    pub repeat_offenders_flagged: Gauge,
    pub scan_seconds: Histogram,
    pub policy_seconds: Histogram,
    /// Mirrors of the kernel programs' counters (`STATS`), by `counter`.
    kernel: Family<Labels, Counter>,
    /// Run count and run time of each program (needs `sysctl kernel.bpf_stats_enabled=1`).
    program_runs: Family<Labels, Counter>,
    program_run_seconds: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    last_kernel: std::sync::Mutex<Vec<u64>>,
    last_runs: std::sync::Mutex<std::collections::HashMap<&'static str, (u64, Duration)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("enforcer");
        let m = Self {
            pressure: Gauge::default(),
            threshold: Gauge::default(),
            tracked: Gauge::default(),
            offenders: Gauge::default(),
            map_entries: Gauge::default(),
            map_capacity: Gauge::default(),
            decisions: Family::default(),
            held_back: Counter::default(),
            repeat_offenders: Counter::default(),
            repeat_offenders_flagged: Gauge::default(),
            scan_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            policy_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 14)),
            kernel: Family::default(),
            program_runs: Family::default(),
            program_run_seconds: Family::default(),
            last_kernel: std::sync::Mutex::new(vec![0; stats::COUNT as usize]),
            last_runs: Default::default(),
            ready: Default::default(),
            registry: Registry::default(),
        };
        r.register_with_unit("pressure", "Current pressure (see --pressure)", Unit::Bytes, m.pressure.clone());
        r.register_with_unit("threshold", "Pressure above which the rule applies", Unit::Bytes, m.threshold.clone());
        r.register("tracked_sockets", "Tracked sockets in the agent's network namespace", m.tracked.clone());
        r.register("offenders", "Sockets chosen by the rule in the last interval", m.offenders.clone());
        r.register("socket_map_entries", "Records in the socket map", m.map_entries.clone());
        r.register("socket_map_capacity", "Capacity of the socket map (--max-sockets)", m.map_capacity.clone());
        r.register("decisions", "Enforcement decisions by event and reason", m.decisions.clone());
        r.register("held_back", "Decisions held back by --max-kills or --max-kills-per-minute", m.held_back.clone());
        r.register(
            "repeat_offenders",
            "Remotes that became repeat offenders (--repeat-kills destroys within --repeat-window)",
            m.repeat_offenders.clone(),
        );
        r.register(
            "repeat_offenders_flagged",
            "Remotes flagged as repeat offenders now",
            m.repeat_offenders_flagged.clone(),
        );
        r.register_with_unit("scan_duration", "Time to take a snapshot", Unit::Seconds, m.scan_seconds.clone());
        r.register_with_unit("policy_duration", "Time to apply the rule", Unit::Seconds, m.policy_seconds.clone());
        r.register(
            "kernel_events",
            "Counters of the kernel programs: tracked, map_full, removed, adopted, err_* (program errors)",
            m.kernel.clone(),
        );
        r.register("program_runs", "Runs of each eBPF program (kernel.bpf_stats_enabled=1)", m.program_runs.clone());
        r.register_with_unit(
            "program_run",
            "Run time of each eBPF program (kernel.bpf_stats_enabled=1)",
            Unit::Seconds,
            m.program_run_seconds.clone(),
        );
        Self { registry: r, ..m }
    }

    /// Brings the mirrors of the kernel counters up to date (counters only ever grow).
    pub fn kernel_counters(&self, now: &[u64]) {
        let mut last = self.last_kernel.lock().unwrap_or_else(|e| e.into_inner());
        for ((name, &v), prev) in stats::NAMES.iter().zip(now).zip(last.iter_mut()) {
            self.kernel.get_or_create(&vec![("counter", *name)]).inc_by(v.saturating_sub(*prev));
            *prev = v;
        }
    }

    /// Brings a program's run statistics up to date.
    pub fn program_stats(&self, program: &'static str, runs: u64, time: Duration) {
        let mut last = self.last_runs.lock().unwrap_or_else(|e| e.into_inner());
        let prev = last.entry(program).or_insert((0, Duration::ZERO));
        let labels = vec![("program", program)];
        self.program_runs.get_or_create(&labels).inc_by(runs.saturating_sub(prev.0));
        self.program_run_seconds.get_or_create(&labels).inc_by(time.saturating_sub(prev.1).as_secs_f64());
        *prev = (runs, time);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics`, `/healthz` (the agent is alive) and `/readyz` (it is attached and
/// has taken a snapshot) on `addr` until the agent exits.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<()> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening for metrics on {addr}"))?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    tokio::spawn(async move {
        let mut backoff = AcceptBackoff::default();
        loop {
            let mut conn = match listener.accept().await {
                Ok((conn, _)) => {
                    backoff.succeeded();
                    conn
                }
                // Out of descriptors (EMFILE, ENFILE) or memory: accepting again at once fails
                // again, so wait rather than spin.
                Err(e) => {
                    let (delay, report) = backoff.failed(Instant::now());
                    if let Some(failures) = report {
                        tracing::warn!(error = %e, failures, "metrics: accepting a connection failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                // The request head, which may come in pieces; nothing after it matters.
                let mut buf = Vec::with_capacity(1024);
                let read_head = async {
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                };
                if tokio::time::timeout(Duration::from_secs(5), read_head).await.is_err() {
                    return;
                }
                let request = String::from_utf8_lossy(&buf);
                let path = request.strip_prefix("GET ").and_then(|r| r.split(' ').next()).unwrap_or_default();
                let (status, ctype, body) = match path {
                    "/metrics" => {
                        ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode())
                    }
                    // Alive: this answer comes from the agent's own runtime.
                    "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
                    "/readyz" if metrics.ready.load(std::sync::atomic::Ordering::Relaxed) => {
                        ("200 OK", "text/plain", "ready\n".to_owned())
                    }
                    "/readyz" => ("503 Service Unavailable", "text/plain", "no snapshot yet\n".to_owned()),
                    _ => ("404 Not Found", "text/plain", "enforcer serves /metrics, /healthz and /readyz\n".to_owned()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(())
}

/// How the accept loop waits after failures: 100 ms, doubling up to 1 s, from the start again
/// after a success; and when to log, at most once a second however often it fails.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// The wait after the next failure (`None`: the first wait).
    next: Option<Duration>,
    last_report: Option<Instant>,
    /// Failures since the last report.
    unreported: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(1);
    const REPORT_EVERY: Duration = Duration::from_secs(1);

    /// A failure at `now`: how long to wait, and whether to log it (with the failures since the
    /// last log, this one included).
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let delay = self.next.unwrap_or(Self::FIRST);
        self.next = Some((delay * 2).min(Self::MAX));
        self.unreported += 1;
        let report = self.last_report.is_none_or(|t| now.duration_since(t) >= Self::REPORT_EVERY);
        if !report {
            return (delay, None);
        }
        self.last_report = Some(now);
        (delay, Some(std::mem::take(&mut self.unreported)))
    }

    fn succeeded(&mut self) {
        self.next = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second_and_logs_once_a_second() {
        let ms = Duration::from_millis;
        let start = Instant::now();
        let mut b = AcceptBackoff::default();
        // Fails again as soon as each wait is over.
        let mut now = start;
        let mut delays = Vec::new();
        let mut reports = Vec::new();
        for _ in 0..7 {
            let (delay, report) = b.failed(now);
            delays.push(delay);
            reports.push(report);
            now += delay;
        }
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000), ms(1000)]);
        // Logged at 0 ms, then at 1500 ms (after 100+200+400+800) with the four failures since,
        // then at 2500 ms and 3500 ms.
        assert_eq!(reports, [Some(1), None, None, None, Some(4), Some(1), Some(1)]);
        // A success starts the waits over; the log stays limited to once a second.
        b.succeeded();
        assert_eq!(b.failed(start + ms(3600)), (ms(100), None));
        assert_eq!(b.failed(start + ms(4500)), (ms(200), Some(2)));
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.pressure.set(5);
        m.decisions.get_or_create(&vec![("event", "destroyed"), ("reason", "stalled")]).inc();
        m.kernel_counters(&[3, 1, 2, 0, 0, 0, 0]);
        m.kernel_counters(&[5, 1, 2, 0, 0, 0, 0]);
        let text = m.encode();
        assert!(text.contains("enforcer_pressure_bytes 5"), "{text}");
        assert!(text.contains("enforcer_decisions_total{event=\"destroyed\",reason=\"stalled\"} 1"), "{text}");
        assert!(text.contains("enforcer_kernel_events_total{counter=\"tracked\"} 5"), "{text}");
        assert!(text.contains("# TYPE enforcer_scan_duration_seconds histogram"), "{text}");
    }
}
