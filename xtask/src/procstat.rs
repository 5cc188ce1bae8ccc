//! What a process costs, read from `/proc`: one parser for every benchmark.
use std::time::Duration;

/// User plus system CPU time of process `pid` so far; zero if it cannot be read.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks = cpu_ticks(&stat).unwrap_or(0);
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

/// utime + stime (fields 14 and 15, in clock ticks) of a `/proc/PID/stat` line. The command
/// name (field 2) is in parentheses and may hold spaces and ')' itself, so fields are counted
/// from the last ')'. Every field is kept, whether or not it is a number: dropping the state
/// letter or a negative `tpgid` (-1 without a controlling terminal) shifts the columns.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state): field N is at index N - 3.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Milliseconds of CPU process `pid` spends per `interval` while this thread sleeps `window`.
pub fn cpu_ms_per_interval(pid: u32, window: Duration, interval: Duration) -> f64 {
    let (cpu, t) = (cpu_time(pid), std::time::Instant::now());
    std::thread::sleep(window);
    let ms = cpu_time(pid).saturating_sub(cpu).as_secs_f64() * 1000.0;
    ms / (t.elapsed().as_secs_f64() / interval.as_secs_f64())
}

/// CPU time of every thread of process `pid` so far, from the scheduler's own count
/// (`/proc/PID/task/*/schedstat`, nanoseconds) where `stat` rounds to clock ticks; zero if it
/// cannot be read. A thread that exited meanwhile no longer counts.
pub fn cpu_time_exact(pid: u32) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Duration::ZERO };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Duration::from_nanos(ns)
}

/// The mean and the worst milliseconds of CPU process `pid` spends per `interval` over `window`
/// (sampled each interval): a walk every minute shows in the worst, not in a mean whose value
/// depends on the window's length.
pub fn cpu_ms_mean_and_worst(pid: u32, window: Duration, interval: Duration) -> (f64, f64) {
    let start = std::time::Instant::now();
    let first = cpu_time_exact(pid);
    let (mut last, mut worst) = (first, 0f64);
    while start.elapsed() < window {
        std::thread::sleep(interval);
        let now = cpu_time_exact(pid);
        worst = worst.max(now.saturating_sub(last).as_secs_f64() * 1000.0);
        last = now;
    }
    let mean =
        last.saturating_sub(first).as_secs_f64() * 1000.0 / (start.elapsed().as_secs_f64() / interval.as_secs_f64());
    (mean, worst)
}

/// Resident set size of process `pid` in MiB; zero if it cannot be read.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_whatever_the_other_fields() {
        // A daemon: no controlling terminal (tty_nr 0, tpgid -1), a name with a space and ')'.
        let stat = "4242 (enf orc)er) S 1 4242 4242 0 -1 4194560 2048 0 0 0 173 29 0 0 20 0 3 0 \
                    1000 100000000 3000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(cpu_ticks(stat), Some(173 + 29));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        // Burn a little CPU so the count is not zero, then compare with what /proc says.
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time(std::process::id()) > Duration::ZERO);
        assert!(rss_mib(std::process::id()) > 0.0);
    }
}
