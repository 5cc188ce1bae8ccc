//! Loads the eBPF object, attaches its programs and pins what the CLI reads; nothing else (the
//! journal and the contained trie take their maps with [`Loaded::take_map`]). `Loaded` owns
//! it all: dropping it detaches every program and removes every pin it made, so an agent that
//! exits (or fails half-way through start-up) leaves nothing behind.
use std::{
    fs::File,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map},
    programs::{CgroupAttachMode, Iter, SockOps},
};
use enforcer_common::{LAST_RECV_CAPACITY, RELAYS_CAPACITY, WatchConfig, names, stats};

use super::{btf, iter_link::IterLink, kernel_log::KernelLog, offsets, pins, snapshot::Walk};
use crate::host::{netns, sys};

/// The object `cargo xtask build-ebpf` built, embedded by build.rs (empty when it was missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer.bpf.o"));

pub struct LoadOptions<'a> {
    pub cgroup: &'a Path,
    /// The cgroup's id and depth, for adopting connections that predate the agent.
    pub cgroup_id: u64,
    pub cgroup_level: u32,
    /// `FAULT_*` bits, for tests of failing open.
    pub fault: u32,
    /// Proxy mode: attach the relay programs; every connection is recorded at establishment.
    pub proxy: bool,
    pub pin_dir: &'a Path,
    /// JSON of the agent's settings, shown by `enforcer status`.
    pub settings: &'a str,
}

pub struct Loaded {
    /// Forwards the programs' log lines into the agent's log (`None` when it could not start).
    _kernel_log: Option<KernelLog>,
    /// The iterator links, declared before `ebpf` so they are released first. The snapshot's
    /// is pinned (the CLI reads it); the scan's is handed to the agent's `Scanner`.
    snapshot_link: Option<IterLink>,
    scan_link: Option<IterLink>,
    adopt_link: Option<IterLink>,
    /// Attribution's holders walk (pinned too, for `sockets -p`); `None` where the kernel
    /// refused it.
    holders_link: Option<IterLink>,
    /// The revisit program's fd, where the walks visit every socket and record at first sight.
    revisit: Option<OwnedFd>,
    /// Which walk the snapshot and scan links make.
    walk: Walk,
    /// The programs loaded, by name (`names::PROG_*`), for their statistics.
    programs: Vec<&'static str>,
    ebpf: Ebpf,
    pin_dir: PathBuf,
    pinned: Vec<PathBuf>,
    /// Wall clock at load, milliseconds since the Unix epoch (for `status`).
    started_unix_ms: u64,
    /// The pin directory's flock, held while the agent lives (declared last: released last).
    _lock: std::fs::File,
}

impl Loaded {
    pub fn load(opts: &LoadOptions<'_>) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!("this enforcer binary was built without its eBPF object: run `cargo xtask build-ebpf`, then rebuild");
        }
        let lock = pins::prepare_pin_dir(opts.pin_dir)?;
        let kernel_btf = btf::Btf::from_file(Path::new(sys::VMLINUX)).context("reading kernel BTF")?;
        let offsets = offsets::from_btf(&kernel_btf)?;
        if let Some(line) = offsets::lacking(&offsets) {
            tracing::warn!("{line}");
        }
        let aya_btf = aya::Btf::from_sys_fs().context("reading kernel BTF for program attach points")?;

        let watch = WatchConfig {
            cgroup_id: opts.cgroup_id,
            cgroup_level: opts.cgroup_level,
            adopt: 1,
            fault: opts.fault,
            proxy: u32::from(opts.proxy),
        };
        let ebpf = EbpfLoader::new()
            .override_global(names::GLOBAL_OFFSETS, &offsets, true)
            .override_global(names::GLOBAL_WATCH, &watch, true)
            .map_max_entries(names::MAP_AGENT_SETTINGS, pins::settings_chunks(opts.settings))
            // Proxy mode's maps are preallocated: without it, one slot each instead of megabytes.
            .map_max_entries(names::MAP_RELAYS, if opts.proxy { RELAYS_CAPACITY } else { 1 })
            .map_max_entries(names::MAP_LAST_RECV, if opts.proxy { LAST_RECV_CAPACITY } else { 1 })
            .load(OBJECT)
            .context("loading the eBPF object (see `dmesg` and the verifier log above)")?;
        let mut loaded = Self {
            _kernel_log: None,
            snapshot_link: None,
            scan_link: None,
            adopt_link: None,
            holders_link: None,
            revisit: None,
            walk: Walk::Records,
            programs: Vec::new(),
            ebpf,
            pin_dir: opts.pin_dir.to_owned(),
            pinned: Vec::new(),
            started_unix_ms: sys::unix_ms(),
            _lock: lock,
        };
        // From here on, dropping `loaded` undoes whatever succeeded.
        loaded.pin_maps()?;
        loaded.record_settings(opts.settings)?;
        loaded.attach(opts, &aya_btf)?;
        // Once every program is loaded (see `KernelLog::start`).
        loaded._kernel_log = KernelLog::start(&mut loaded.ebpf);
        Ok(loaded)
    }

    fn pin_maps(&mut self) -> Result<()> {
        for (map, pin) in [
            (names::MAP_RECORDS, names::PIN_SOCKETS),
            (names::MAP_STATS, names::PIN_STATS),
            (names::MAP_AGENT_INFO, names::PIN_INFO),
            (names::MAP_AGENT_SETTINGS, names::PIN_SETTINGS),
            (names::MAP_KILLS, names::PIN_KILLS),
            (names::MAP_KILL_COUNTERS, names::PIN_KILL_COUNTERS),
            (names::MAP_CONTAINED, names::PIN_CONTAINED),
            (names::MAP_CONTAINED_LABELS, names::PIN_CONTAINED_LABELS),
        ] {
            let path = pins::PinDir::path(&self.pin_dir, pin);
            self.ebpf
                .map(map)
                .with_context(|| format!("eBPF object has no map {map}"))?
                .pin(&path)
                .with_context(|| format!("pinning map {map} at {}", path.display()))?;
            self.pinned.push(path);
        }
        Ok(())
    }

    /// Records the agent's settings (JSON) for the CLI: see [`pins::write_record`].
    pub fn record_settings(&mut self, settings: &str) -> Result<()> {
        pins::write_record(&mut self.ebpf, self.started_unix_ms, settings)
    }

    /// Attaches every program, in an order that leaves no connection unrecorded: the walks
    /// first (they say whether sock_ops must record at establishment), sock_ops last.
    fn attach(&mut self, opts: &LoadOptions<'_>, btf: &aya::Btf) -> Result<()> {
        let cgroup = opts.cgroup;
        let cgroup_fd = File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        self.adopt_link = Some(self.iterator(btf, names::PROG_ADOPT, names::ITER_TCP, None)?);
        self.attach_walks(btf, opts.fault)?;
        self.attach_holders(btf, opts.fault);
        if opts.proxy {
            self.attach_relays(btf)?;
        } else {
            self.record_at_first_sight()?;
            self.load_revisit();
        }
        self.attach_sockops(&cgroup_fd, cgroup)
    }

    /// The revisit: only where the walks visit every socket and record what they first see,
    /// which also asks sock_ops for each recorded connection's end. A refusal costs a log line:
    /// the agent then walks every socket each interval, as before.
    fn load_revisit(&mut self) {
        if self.walk != Walk::Tcp {
            return;
        }
        match super::revisit::load(program(&mut self.ebpf, names::PROG_REVISIT)) {
            Ok(fd) => {
                self.programs.push(names::PROG_REVISIT);
                self.revisit = Some(fd);
            }
            Err(e) => {
                tracing::info!(error = refusal(&e), "the revisit program did not load: every walk visits every socket")
            }
        }
    }

    /// Hands the revisit program over to the agent's `Scanner` (once); `None` where there is none.
    pub fn take_revisit(&mut self) -> Option<OwnedFd> {
        self.revisit.take()
    }

    /// Proxy mode: the programs that pair a thread's reads and writes into relays, on the
    /// `sock` tracepoints every recvmsg and sendmsg passes (Linux 6.3+), or where the kernel
    /// lacks them on fexit of `tcp_recvmsg` and `tcp_sendmsg`. They only see tracked sockets, and
    /// a short connection's relays happen before any walk: sock_ops records every connection at
    /// establishment (`record_at_first_sight` is not called).
    fn attach_relays(&mut self, btf: &aya::Btf) -> Result<()> {
        let tracepoints =
            [(names::PROG_RELAY_RECV, names::TP_SOCK_RECV), (names::PROG_RELAY_SEND, names::TP_SOCK_SEND)];
        let refused = match self.relay_pair(&tracepoints, btf) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        tracing::info!(
            error = refusal(&refused),
            "this kernel refused the sock_recv_length/sock_send_length tracepoints: proxy mode tries fexit on \
             tcp_recvmsg and tcp_sendmsg"
        );
        let functions = [
            (names::PROG_RELAY_RECV_FEXIT, names::FN_TCP_RECVMSG),
            (names::PROG_RELAY_SEND_FEXIT, names::FN_TCP_SENDMSG),
        ];
        self.relay_pair(&functions, btf).map_err(|e| {
            anyhow::anyhow!(
                "--proxy needs the sock_recv_length and sock_send_length tracepoints (Linux 6.3+) or fexit on \
                 tcp_recvmsg and tcp_sendmsg, and this kernel refused both ({}; {}): run without --proxy (the \
                 per-remote cap then takes idle connections only)",
                refusal(&refused),
                refusal(&e)
            )
        })
    }

    /// Loads and attaches both programs of a relay pair (a kernel can refuse either step: fexit's
    /// trampoline registers with ftrace only at attach); on any refusal, unloads both, which
    /// detaches what was attached, and says which step failed.
    fn relay_pair(&mut self, pair: &[(&'static str, &str); 2], btf: &aya::Btf) -> Result<()> {
        let attached = (|| -> Result<()> {
            for (name, target) in pair {
                match program(&mut self.ebpf, name)? {
                    aya::programs::Program::BtfTracePoint(p) => {
                        p.load(target, btf).with_context(|| format!("loading {name} for {target}"))?;
                        p.attach().map(drop)
                    }
                    aya::programs::Program::FExit(p) => {
                        p.load(target, btf).with_context(|| format!("loading {name} for {target}"))?;
                        p.attach().map(drop)
                    }
                    _ => bail!("{name} is no relay program"),
                }
                .with_context(|| format!("attaching {name} to {target}"))?;
            }
            Ok(())
        })();
        match attached {
            Ok(()) => {
                self.programs.extend(pair.iter().map(|(name, _)| *name));
                Ok(())
            }
            Err(e) => {
                for (name, _) in pair {
                    match program(&mut self.ebpf, name) {
                        Ok(aya::programs::Program::BtfTracePoint(p)) => drop(p.unload()),
                        Ok(aya::programs::Program::FExit(p)) => drop(p.unload()),
                        _ => {}
                    }
                }
                Err(e)
            }
        }
    }

    /// Loads the iterator program `name` for `iter/{iter}` (over `map` for a map-element
    /// iterator) and makes its link.
    fn iterator(
        &mut self,
        btf: &aya::Btf,
        name: &'static str,
        iter: &str,
        map: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<IterLink> {
        let prog: &mut Iter = program(&mut self.ebpf, name)?.try_into()?;
        prog.load(iter, btf).with_context(|| format!("loading the iter/{iter} program {name}"))?;
        self.programs.push(name);
        let fd = prog.fd().with_context(|| format!("{name} has no fd"))?;
        IterLink::create(fd.as_fd(), map).with_context(|| format!("creating the iterator link of {name}"))
    }

    /// The snapshot and the scan: they walk the records map where the kernel allows it, each
    /// namespace's sockets otherwise. The snapshot's link is pinned for the CLI.
    /// `--inject-fault records` takes the second way on any kernel.
    fn attach_walks(&mut self, btf: &aya::Btf, fault: u32) -> Result<()> {
        let records = self.ebpf.map(names::MAP_RECORDS).context("eBPF object has no records map")?;
        let Map::SkStorage(records) = records else { bail!("{} is not a socket storage map", names::MAP_RECORDS) };
        let records = records.fd().as_fd().try_clone_to_owned().context("duplicating the records map's fd")?;
        let by_records = if fault & enforcer_common::FAULT_RECORDS != 0 {
            Err(anyhow::anyhow!("injected fault (--inject-fault records)"))
        } else {
            self.iterator(btf, names::PROG_SNAPSHOT, names::ITER_SK_STORAGE, Some(records.as_fd())).and_then(
                |snapshot| {
                    Ok((snapshot, self.iterator(btf, names::PROG_SCAN, names::ITER_SK_STORAGE, Some(records.as_fd()))?))
                },
            )
        };
        let (walk, snapshot, scan) = match by_records {
            Ok((snapshot, scan)) => (Walk::Records, snapshot, scan),
            Err(e) => {
                // One line, once: the agent works the same, at a cost that grows with every
                // TCP socket of the watched namespaces rather than with the tracked ones.
                tracing::info!(
                    error = refusal(&e),
                    "this kernel refuses map-element iterators: the snapshot walks each network namespace's TCP \
                     sockets (iter/tcp) instead of the records"
                );
                let snapshot = self.iterator(btf, names::PROG_SNAPSHOT_TCP, names::ITER_TCP, None)?;
                (Walk::Tcp, snapshot, self.iterator(btf, names::PROG_SCAN_TCP, names::ITER_TCP, None)?)
            }
        };
        let path = pins::PinDir::path(&self.pin_dir, walk.pin());
        snapshot.pin(&path).with_context(|| format!("pinning the snapshot iterator at {}", path.display()))?;
        self.pinned.push(path);
        self.walk = walk;
        (self.snapshot_link, self.scan_link) = (Some(snapshot), Some(scan));
        Ok(())
    }

    /// Attribution's holders walk, pinned for `sockets -p`. Attribution works without it
    /// (reading /proc, slower): a kernel that refuses it costs a log line, not the agent.
    fn attach_holders(&mut self, btf: &aya::Btf, fault: u32) {
        let holders = if fault & enforcer_common::FAULT_HOLDERS != 0 {
            Err(anyhow::anyhow!("injected fault (--inject-fault holders)"))
        } else {
            self.iterator(btf, names::PROG_HOLDERS, names::ITER_TASK_FILE, None)
        };
        match holders {
            Ok(holders) => {
                let path = pins::PinDir::path(&self.pin_dir, names::PIN_HOLDERS);
                match holders.pin(&path) {
                    Ok(()) => self.pinned.push(path),
                    // The agent keeps its link; only `sockets -p` reads /proc instead.
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not pin the holders walk"),
                }
                self.holders_link = Some(holders);
            }
            Err(e) => {
                tracing::info!(
                    error = refusal(&e),
                    "the holders walk (iter/task_file) did not load: attribution reads /proc/PID/fd instead"
                );
            }
        }
    }

    /// A walk of the records sees only recorded connections, so sock_ops must record each at
    /// establishment; a walk of every socket records what it first sees, and sock_ops leaves it
    /// the record. Decided before sock_ops is attached, so no connection falls between the two
    /// (the agent's adoption, after this, finds those from before).
    fn record_at_first_sight(&mut self) -> Result<()> {
        if self.walk != Walk::Tcp {
            return Ok(());
        }
        let map = self.ebpf.map_mut(names::MAP_RECORD_AT_FIRST_SIGHT).context("eBPF object has no recording map")?;
        Array::<_, u32>::try_from(map)
            .context("the recording map is not an array")?
            .set(0, 1, 0)
            .context("telling sock_ops to leave records to the walks")
    }

    fn attach_sockops(&mut self, cgroup_fd: &File, cgroup: &Path) -> Result<()> {
        let prog: &mut SockOps = program(&mut self.ebpf, names::PROG_SOCKOPS)?.try_into()?;
        prog.load().context("loading the sock_ops program")?;
        self.programs.push(names::PROG_SOCKOPS);
        // Through a bpf_link (kernel 5.7+), which the kernel always attaches alongside other
        // programs; `Single` only means "no flags", which is all link_create accepts.
        prog.attach(cgroup_fd, CgroupAttachMode::Single)
            .with_context(|| format!("attaching sock_ops to cgroup {}", cgroup.display()))?;
        Ok(())
    }

    /// Hands the holders walk over to the agent's attribution (once); `None` where the kernel
    /// refused it.
    pub fn take_holders_link(&mut self) -> Option<IterLink> {
        self.holders_link.take()
    }

    /// Gives a record to every unrecorded connection of the watched cgroup in `ns`: those
    /// established before sock_ops was attached, and those whose record failed. Once per
    /// namespace is enough otherwise: later connections get theirs from sock_ops or from the
    /// first walk to see them.
    pub fn adopt_in(&self, ns: &netns::Namespace) -> Result<()> {
        let link = self.adopt_link.as_ref().context("adoption is not attached")?;
        // An iter/tcp reader walks the namespace its maker is in.
        netns::run_in(ns, || -> std::io::Result<()> {
            let mut sink = Vec::new();
            super::iter_link::read_all(&mut link.reader()?, &mut sink)
        })?
        .with_context(|| format!("adopting the connections of network namespace {}", ns.inode))
    }

    /// Hands the scan's link over to the agent's `Scanner` (once), with the walk it makes.
    pub fn take_scan_link(&mut self) -> Result<(IterLink, Walk)> {
        Ok((self.scan_link.take().context("the scan link was taken")?, self.walk))
    }

    /// The kernel programs' counters, summed over CPUs.
    pub fn stats(&self) -> Result<[u64; stats::COUNT as usize]> {
        let map = self.ebpf.map(names::MAP_STATS).context("no stats map")?;
        Ok(pins::sum_stats(map)?)
    }

    /// Run count and run time of each program it loaded (zero unless
    /// kernel.bpf_stats_enabled=1).
    pub fn program_stats(&self) -> Vec<(&'static str, u64, std::time::Duration)> {
        self.programs
            .iter()
            .filter_map(|&name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some((name, info.run_count(), info.run_time()))
            })
            .collect()
    }

    /// Hands a map over to the module that owns its layout (the journal, the contained trie).
    /// Its pin stays, and is removed with the others when `Loaded` is dropped.
    pub fn take_map(&mut self, name: &str) -> Result<aya::maps::Map> {
        self.ebpf.take_map(name).with_context(|| format!("eBPF object has no map {name} (or it was taken)"))
    }
}

/// Why the kernel refused a program, in one line: the error's first line without the verifier's
/// log, which follows it (what comes before the log says why).
fn refusal(e: &anyhow::Error) -> String {
    let why = format!("{e:#}");
    let first = why.lines().next().unwrap_or_default();
    first.split(". Verifier output").next().unwrap_or(first).to_owned()
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).with_context(|| format!("eBPF object has no program {name}"))
}

impl Drop for Loaded {
    fn drop(&mut self) {
        for path in self.pinned.drain(..) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove pin");
            }
        }
        // Only succeeds when empty: whatever else someone keeps there stays.
        let _ = std::fs::remove_dir(&self.pin_dir);
    }
}
