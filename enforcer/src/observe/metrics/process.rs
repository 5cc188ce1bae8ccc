//! The standard `process_*` metrics of the agent itself (CPU, memory, descriptors, start time),
//! read from `/proc/self` at each scrape.
use std::sync::atomic::AtomicU64;

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::{Registry, Unit},
};

#[derive(Default)]
pub struct Process {
    cpu_seconds: Counter<f64, AtomicU64>,
    /// What `cpu_seconds` was last brought up to.
    cpu_last: std::sync::Mutex<f64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time_seconds: Gauge,
}

impl Process {
    /// Registers the metrics without the `enforcer_` prefix, as every exporter names them.
    pub fn register(&self, r: &mut Registry) {
        r.register_with_unit("process_cpu", "User and system CPU time", Unit::Seconds, self.cpu_seconds.clone());
        r.register_with_unit("process_resident_memory", "Resident memory", Unit::Bytes, self.resident_bytes.clone());
        r.register_with_unit("process_virtual_memory", "Virtual memory", Unit::Bytes, self.virtual_bytes.clone());
        r.register("process_open_fds", "Open file descriptors", self.open_fds.clone());
        r.register("process_max_fds", "Limit on open file descriptors", self.max_fds.clone());
        r.register_with_unit(
            "process_start_time",
            "Start time since the Unix epoch",
            Unit::Seconds,
            self.start_time_seconds.clone(),
        );
    }

    /// Reads them now; a value that cannot be read keeps its last one.
    pub fn update(&self) {
        let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
        let page = rustix::param::page_size() as i64;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some(f) = stat_fields(&stat)
        {
            let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
            if let (Some(utime), Some(stime)) = (field(14), field(15)) {
                let now = (utime + stime) as f64 / hz;
                let mut last = self.cpu_last.lock().unwrap_or_else(|e| e.into_inner());
                self.cpu_seconds.inc_by((now - *last).max(0.0));
                *last = now.max(*last);
            }
            if let Some(vsize) = field(23) {
                self.virtual_bytes.set(vsize as i64);
            }
            if let Some(rss) = field(24) {
                self.resident_bytes.set(rss as i64 * page);
            }
            if let (Some(start), Some(boot)) = (field(22), boot_time()) {
                self.start_time_seconds.set((boot + start as f64 / hz) as i64);
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Some(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
            self.max_fds.set(limit.min(i64::MAX as u64) as i64);
        }
    }
}

/// The fields of a `/proc/PID/stat` line from field 3 (the state) on: the command name before
/// them is in parentheses and may hold spaces.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat.rsplit_once(')')?.1.split_whitespace().collect())
}

/// Boot time, seconds since the Unix epoch (`btime` in /proc/stat).
fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())
}
