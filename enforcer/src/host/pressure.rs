//! Where "memory pressure" comes from (`--pressure`) and the default threshold.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// What pressure is (`--pressure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Memory the kernel charges the tracked sockets, both sides (`sk_wmem_queued` +
    /// `sk_rmem_alloc`).
    Tracked,
    /// The kernel's TCP memory (`/proc/net/sockstat`, `TCP: … mem PAGES`).
    Kernel,
    /// Socket memory of the watched cgroup (`memory.stat`, key `sock`).
    Cgroup,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Tracked, Source::Kernel, Source::Cgroup];

    /// As `--pressure` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tracked => "tracked",
            Self::Kernel => "kernel",
            Self::Cgroup => "cgroup",
        }
    }
}

/// Reads pressure from a [`Source`]; `cgroup` is the watched cgroup, whose `memory.stat` the
/// `cgroup` source reads.
#[derive(Debug, Clone)]
pub struct Meter {
    pub source: Source,
    pub cgroup: PathBuf,
}

impl Meter {
    pub fn name(&self) -> &'static str {
        self.source.name()
    }

    /// Checks once at start-up that the source can be read, so the agent fails early and clearly.
    pub fn check(&self) -> Result<()> {
        if self.source == Source::Cgroup && !self.cgroup.join("memory.stat").exists() {
            bail!(
                "--pressure cgroup needs the memory controller on cgroup v2, and {} has no memory.stat \
                 (enable it in the parent's cgroup.subtree_control, or use --pressure kernel)",
                self.cgroup.display()
            );
        }
        self.read(0).map(|_| ())
    }

    /// The pressure now; `tracked` is what every tracked connection is charged, summed (the
    /// scan's summary), which the `tracked` source returns as it is.
    pub fn read(&self, tracked: u64) -> Result<u64> {
        match self.source {
            Source::Tracked => Ok(tracked),
            Source::Kernel => {
                let text = std::fs::read_to_string("/proc/net/sockstat").context("reading /proc/net/sockstat")?;
                Ok(sockstat_tcp_pages(&text).context("no `TCP: … mem N` line in /proc/net/sockstat")? * page_size())
            }
            Source::Cgroup => {
                let path = self.cgroup.join("memory.stat");
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                memory_stat_sock(&text).with_context(|| format!("no `sock` key in {}", path.display()))
            }
        }
    }

    /// Pressure known without walking the sockets, or a bound above it. `kernel` and `cgroup`
    /// are read as they are. `tracked` is bounded by the kernel's TCP memory: every byte a TCP
    /// socket queues or receives (`sk_wmem_queued`, `sk_rmem_alloc`) is charged to `tcp_memory_allocated` (sockstat's `mem`,
    /// global, whatever the namespace), which lags behind by at most each CPU's reserve
    /// (`net.core.mem_pcpu_rsv` pages, 1 MiB where the sysctl is absent). `None` when the bound
    /// cannot be read: the caller walks the sockets.
    pub fn without_scan(&self) -> Option<u64> {
        match self.source {
            Source::Tracked => Some(kernel_tcp_memory()? + counter_lag()?),
            Source::Kernel | Source::Cgroup => self.read(0).ok(),
        }
    }
}

/// The kernel's TCP memory (sockstat's `mem`, every namespace), in bytes; `None` if unreadable.
pub fn kernel_tcp_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    Some(sockstat_tcp_pages(&text)? * page_size())
}

/// How far the kernel's TCP memory may lag behind what the sockets are charged: each CPU's
/// reserve (`net.core.mem_pcpu_rsv` pages, 1 MiB where the sysctl is absent); `None` if
/// unreadable.
pub fn counter_lag() -> Option<u64> {
    let reserve = std::fs::read_to_string("/proc/sys/net/core/mem_pcpu_rsv")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .map_or(1 << 20, |p| p * page_size());
    let cpus = possible_cpus(&std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?)?;
    Some(cpus * reserve)
}

/// CPUs in a kernel CPU list (`0-3,8-11`).
fn possible_cpus(list: &str) -> Option<u64> {
    list.trim().split(',').try_fold(0, |n, range| {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
        Some(n + b.checked_sub(a)? + 1)
    })
}

pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

fn sockstat_tcp_pages(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mem" {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn memory_stat_sock(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("sock ")?.trim().parse().ok())
}

/// The default threshold: the kernel's own TCP memory-pressure level (`tcp_mem`'s middle value,
/// in pages), where the kernel itself starts to economise.
pub fn default_threshold() -> Result<u64> {
    let path = Path::new("/proc/sys/net/ipv4/tcp_mem");
    let Ok(text) = std::fs::read_to_string(path) else {
        let pages = tcp_mem_from_meminfo().context("no tcp_mem in this network namespace (pass --threshold)")?;
        tracing::info!(pages, "tcp_mem is not visible in this network namespace; default threshold from MemTotal / 16");
        return Ok(pages * page_size());
    };
    let pressure: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("unexpected contents of {}: {text}", path.display()))?;
    Ok(pressure * page_size())
}

/// `tcp_mem` is global, but /proc/sys/net shows it only in the initial network namespace. Inside
/// another one, compute it the way the kernel sets it at boot (`tcp_init_mem`: a sixteenth of
/// the buffer pages), from MemTotal.
fn tcp_mem_from_meminfo() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok((kib * 1024 / page_size() / 16).max(128))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_files() {
        let sockstat = "sockets: used 160\nTCP: inuse 5 orphan 0 tw 2 alloc 9 mem 37\nUDP: inuse 1 mem 2\n";
        assert_eq!(sockstat_tcp_pages(sockstat), Some(37));
        assert_eq!(memory_stat_sock("anon 1\nsock 8192\nshmem 0\n"), Some(8192));
        assert_eq!(memory_stat_sock("anon 1\n"), None);
        assert_eq!(possible_cpus("0-1\n"), Some(2));
        assert_eq!(possible_cpus("0-3,8-11,16"), Some(9));
        assert_eq!(possible_cpus("3-1"), None);
    }
}
