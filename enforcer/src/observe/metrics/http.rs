//! The HTTP side of `--metrics-addr`: `/metrics` (OpenMetrics, or the classic text format
//! 0.0.4 for a scraper that does not ask for OpenMetrics), `/healthz` and `/readyz`.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Format, Metrics};

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
                        let format = Format::negotiate(&request);
                        ("200 OK", format.content_type(), metrics.encode(format))
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
}
