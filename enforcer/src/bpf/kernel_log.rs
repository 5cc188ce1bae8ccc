//! The kernel programs' log lines (aya-log's ring buffer, written with `aya-log-ebpf`) forwarded
//! into the agent's `tracing` log, in its text or JSON format, each with the program's name as
//! its target (`enforcer_sockops`, …). The programs log only rare events (errors on their
//! fail-open paths, a full map, adoptions, injected faults), sampled in the kernel.
use std::panic::AssertUnwindSafe;

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
};
use tracing_log::LogTracer;

/// A task of the agent's runtime reading the log ring; stops when dropped. (aya-log 0.3 only
/// decodes records: reading the ring when it becomes readable is ours to do.)
pub struct KernelLog {
    task: JoinHandle<()>,
}

impl KernelLog {
    /// Starts forwarding. Logging is never worth failing start-up for: when it cannot start (an
    /// object without the log ring, no tokio runtime), it warns and returns `None`.
    ///
    /// Call it once every program is loaded: it takes the ring out of `ebpf`, and should it
    /// fail after that, the ring's file descriptor is closed, which a program not yet loaded
    /// would still refer to.
    pub fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no async runtime: the kernel programs' log lines are not forwarded");
            return None;
        };
        let logger = match EbpfLogger::init_with_logger(ebpf, LogTracer::new()) {
            Ok(logger) => logger,
            Err(e) => {
                tracing::warn!(error = %e, "the kernel programs' log lines are not forwarded");
                return None;
            }
        };
        // The agent's runtime has its I/O driver enabled (`#[tokio::main]`), which this needs.
        let _entered = runtime.enter();
        // SAFETY: the logger owns the ring's file descriptor (a `RingBuf<MapData>`) for as long as
        // it lives, and always returns that one.
        let ring = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
            Ok(ring) => ring,
            Err(e) => {
                tracing::warn!(error = %e, "cannot poll the kernel log ring: its lines are not forwarded");
                return None;
            }
        };
        Some(Self { task: runtime.spawn(forward(ring)) })
    }
}

async fn forward(mut ring: AsyncFd<EbpfLogger<LogTracer>>) {
    loop {
        let mut ready = match ring.readable_mut().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::warn!(error = %e, "polling the kernel log ring failed: its lines are no longer forwarded");
                return;
            }
        };
        // aya-log panics on a record it cannot decode: stop forwarding rather than lose the task
        // silently.
        if std::panic::catch_unwind(AssertUnwindSafe(|| ready.get_inner_mut().flush())).is_err() {
            tracing::warn!("a kernel log record could not be decoded: kernel log lines are no longer forwarded");
            return;
        }
        ready.clear_ready();
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}
