//! The agent's settings: command-line flags ([`RunArgs`]) over the `--config` file ([`file`]) over
//! defaults, validated once into [`Settings`]. The agent records them in its pins; `status`
//! shows them and `top` rebuilds the agent's rule from them with the same [`Settings::policy`].
use std::{collections::HashSet, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    file,
    flags::{LogFormat, RunArgs},
};
use crate::{
    bpf::pins::DEFAULT_PIN_DIR,
    host::{cgroup, pressure, sys},
    model::fairness::Fairness,
    policy::{self, Kind, Protect},
};

/// A bad value in the flags or the config file: the process exits 2, like clap does.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub const DEFAULT_MAX_KILLS: usize = 1000;
pub const DEFAULT_MAX_KILLS_PER_MINUTE: usize = 10_000;
/// Longer than an ordinary client's pause (a reader whose application stops for up to 2 s):
/// see the README's measurements.
pub const DEFAULT_STALL: Duration = Duration::from_secs(3);
pub const DEFAULT_MAX_DRAIN: Duration = Duration::from_secs(30);
pub const DEFAULT_REPEAT_KILLS: usize = 3;
pub const DEFAULT_REPEAT_WINDOW_MS: u64 = 60_000;
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// Several pushes of a live ticker (every few seconds), and longer than a proxy takes to hand a
/// response from its upstream to its client.
pub const DEFAULT_ORPHAN_AFTER: Duration = Duration::from_secs(10);
/// SO_SNDBUF for a repeat offender's new connections (the kernel doubles it): 64 KiB a
/// connection instead of megabytes.
pub const DEFAULT_CONTAIN_SNDBUF: u64 = 32 << 10;
/// TCP_USER_TIMEOUT for the same connections: the send timeout nginx (`send_timeout`) and Apache
/// (`Timeout`) give every client by default, so a contained connection gets no more patience
/// from the kernel than a web server gives anyone, and a reader that pauses for less loses
/// nothing. It bounds a contained stall while no agent runs.
pub const DEFAULT_CONTAIN_USER_TIMEOUT: Duration = Duration::from_secs(60);

fn default_low_water() -> u64 {
    policy::DEFAULT_LOW_WATER_PERCENT
}

/// Several seconds, and never fewer than four snapshots: one interval's ACKs say nothing about
/// a reader whose ACKs come in bursts.
pub fn default_drain_window_ms(interval_ms: u64) -> u64 {
    (4 * interval_ms).max(5000)
}

/// Everything `enforcer run` was told, resolved and validated: durations in milliseconds, sizes
/// in bytes. Recorded as JSON in the pins, so the CLI reads the same type back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub pin_dir: PathBuf,
    /// Chosen at start, before the settings are resolved (see [`log_format`]).
    #[serde(default)]
    pub log_format: LogFormat,
    pub dry_run: bool,
    pub interval_ms: u64,
    pub threshold: u64,
    /// `--low-water`, a percentage of the threshold; absent in the settings an older agent
    /// pinned.
    #[serde(default = "default_low_water")]
    pub low_water_percent: u64,
    pub pressure: pressure::Source,
    #[serde(serialize_with = "as_text", deserialize_with = "from_text")]
    pub fairness: Fairness,
    pub stall_ms: u64,
    pub max_drain_ms: u64,
    pub drain_window_ms: u64,
    pub repeat_kills: usize,
    pub repeat_window_ms: u64,
    pub contain_sndbuf: u64,
    /// `TCP_USER_TIMEOUT` for contained connections, ms; 0: none. Absent in older records.
    #[serde(default)]
    pub contain_user_timeout_ms: u64,
    pub policy: Kind,
    pub max_kills: usize,
    pub max_kills_per_minute: usize,
    pub protect_ports: Vec<u16>,
    pub protect_remote_ports: Vec<u16>,
    pub protect_cidrs: Vec<IpNet>,
    pub protect_cgroups: Vec<PathBuf>,
    pub max_per_remote: Option<usize>,
    pub idle_ms: u64,
    /// Proxy mode: relays are learned, and the cap takes orphans first.
    #[serde(default)]
    pub proxy: bool,
    #[serde(default = "default_orphan_after_ms")]
    pub orphan_after_ms: u64,
    pub metrics_addr: Option<SocketAddr>,
    /// The fleet (`--crowdsec-*`), if any.
    #[serde(default)]
    pub crowdsec: Option<super::crowdsec::Crowdsec>,
    /// `FAULT_*` bits (tests only); not recorded.
    #[serde(skip)]
    pub fault: u32,
}

fn default_orphan_after_ms() -> u64 {
    ms(DEFAULT_ORPHAN_AFTER)
}

fn as_text<S: serde::Serializer>(f: &Fairness, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(f)
}

fn from_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Fairness, D::Error> {
    String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
}

/// Checks config text the way `--config` does; for fuzzing and tools. Errors name the key.
pub fn check_config_text(text: &str) -> Result<(), String> {
    file::parse(text).map(|_| ())
}

/// `enforcer check-config FILE`: the settings `enforcer run --config FILE` would start with, or
/// what it would refuse, found the way `run` finds it (nothing loaded, nothing attached).
/// Every refusal is a [`UsageError`]; only an unreadable file is not.
pub fn check_config(path: &std::path::Path) -> anyhow::Result<Settings> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let args = RunArgs { config: Some(path.to_owned()), ..RunArgs::default() };
    let settings = Settings::resolve(args).map_err(|e| match e.downcast::<UsageError>() {
        Ok(u) => u.into(),
        Err(e) => usage(format!("config {}: {e:#}", path.display())),
    })?;
    settings.meter().check().map_err(|e| usage(format!("config {}: {e:#}", path.display())))?;
    Ok(settings)
}

/// The log format `enforcer run` starts with: the flag's, else the config file's (read
/// leniently: a bad file is reported once the settings are resolved), else text.
pub fn log_format(flag: Option<LogFormat>, config: Option<&std::path::Path>) -> LogFormat {
    flag.or_else(|| {
        let text = std::fs::read_to_string(config?).ok()?;
        file::parse(&text).ok()?.log_format
    })
    .unwrap_or_default()
}

/// Repeatable flags replace the file's list rather than adding to it: flags win.
fn pick<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() { file } else { flag }
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

impl Settings {
    /// Flags over the `--config` file over defaults. Bad values are [`UsageError`]s.
    pub fn resolve(args: RunArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| usage(format!("cannot read config {}: {e}", path.display())))?;
                file::parse(&text).map_err(|e| usage(format!("config {}: {e}", path.display())))?
            }
            None => RunArgs::default(),
        };
        let crowdsec = super::crowdsec::resolve(&args, &file)?;
        let from_file = args.cgroup.is_none() && file.cgroup.is_some();
        let cgroup = match args.cgroup.or(file.cgroup) {
            Some(p) => p,
            None => cgroup::cgroup2_root()?,
        };
        let cgroup_id = cgroup::cgroup2_dir(&cgroup)
            .map_err(|e| if from_file { usage(format!("config key `cgroup`: {e:#}")) } else { e })?;
        let threshold = match args.threshold.or(file.threshold) {
            Some(t) => t,
            None => pressure::default_threshold()?,
        };
        let interval_ms = ms(args.interval.or(file.interval).unwrap_or(Duration::from_secs(1)));
        let drain_window_ms =
            args.drain_window.or(file.drain_window).map(ms).unwrap_or_else(|| default_drain_window_ms(interval_ms));
        if drain_window_ms < interval_ms {
            return Err(usage(format!(
                "--drain-window ({drain_window_ms}ms) must be at least one --interval ({interval_ms}ms): a rate \
                 needs two snapshots"
            )));
        }
        let contain_sndbuf = args.contain_sndbuf.or(file.contain_sndbuf).unwrap_or(DEFAULT_CONTAIN_SNDBUF);
        // SO_SNDBUF takes an int.
        if contain_sndbuf > i32::MAX as u64 {
            return Err(usage(format!("--contain-sndbuf {contain_sndbuf} is out of range (under 2GiB)")));
        }
        let contain_user_timeout_ms =
            ms(args.contain_user_timeout.or(file.contain_user_timeout).unwrap_or(DEFAULT_CONTAIN_USER_TIMEOUT));
        if contain_user_timeout_ms > i32::MAX as u64 {
            return Err(usage(format!("--contain-user-timeout {contain_user_timeout_ms}ms is out of range")));
        }
        let max_per_remote = args.max_per_remote.or(file.max_per_remote);
        if max_per_remote == Some(0) {
            return Err(usage("--max-per-remote must be at least 1".into()));
        }
        if max_per_remote.is_none() && (args.idle.is_some() || file.idle.is_some()) {
            let (idle, cap) = if args.idle.is_some() {
                ("--idle", "--max-per-remote")
            } else {
                ("config key `idle`", "`max-per-remote`")
            };
            return Err(usage(format!(
                "{idle} applies only with {cap} (it says when a connection over the per-remote cap is idle)"
            )));
        }
        let proxy = args.proxy || file.proxy;
        if !proxy && (args.orphan_after.is_some() || file.orphan_after.is_some()) {
            let which = if args.orphan_after.is_some() { "--orphan-after" } else { "config key `orphan-after`" };
            return Err(usage(format!(
                "{which} applies only with --proxy (it says when a relay's connection is an orphan)"
            )));
        }
        let pin_dir = match args.pin_dir.or(file.pin_dir) {
            Some(dir) => dir,
            None => PathBuf::from(DEFAULT_PIN_DIR),
        };
        // Checked here rather than when pinning, so `check-config` refuses what `run` refuses.
        sys::check_pin_dir_name(&pin_dir)
            .and_then(|()| sys::check_bpffs(&pin_dir))
            .map_err(|e| usage(format!("{e:#}")))?;
        let which = if args.protect_cgroup.is_empty() { "config key `protect-cgroup`" } else { "--protect-cgroup" };
        let protect_cgroups = pick(args.protect_cgroup, file.protect_cgroup);
        // Checked now, so a typo fails at start rather than protecting nothing.
        cgroup::tree_ids_of_all(&protect_cgroups).map_err(|e| usage(format!("{which}: {e:#}")))?;
        Ok(Self {
            cgroup,
            cgroup_id,
            pin_dir,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            dry_run: args.dry_run || file.dry_run,
            interval_ms,
            threshold,
            low_water_percent: args.low_water.or(file.low_water).unwrap_or(policy::DEFAULT_LOW_WATER_PERCENT),
            pressure: args.pressure.or(file.pressure).unwrap_or(pressure::Source::Tracked),
            fairness: args.fairness.or(file.fairness).unwrap_or(Fairness::Connection),
            stall_ms: ms(args.stall.or(file.stall).unwrap_or(DEFAULT_STALL)),
            max_drain_ms: ms(args.max_drain.or(file.max_drain).unwrap_or(DEFAULT_MAX_DRAIN)),
            drain_window_ms,
            repeat_kills: args.repeat_kills.or(file.repeat_kills).unwrap_or(DEFAULT_REPEAT_KILLS),
            repeat_window_ms: args.repeat_window.or(file.repeat_window).map(ms).unwrap_or(DEFAULT_REPEAT_WINDOW_MS),
            contain_sndbuf,
            contain_user_timeout_ms,
            policy: args.policy.or(file.policy).unwrap_or(Kind::Budget),
            max_kills: args.max_kills.or(file.max_kills).unwrap_or(DEFAULT_MAX_KILLS),
            max_kills_per_minute: args
                .max_kills_per_minute
                .or(file.max_kills_per_minute)
                .unwrap_or(DEFAULT_MAX_KILLS_PER_MINUTE),
            protect_ports: pick(args.protect_port, file.protect_port),
            protect_remote_ports: pick(args.protect_remote_port, file.protect_remote_port),
            protect_cidrs: pick(args.protect_cidr, file.protect_cidr),
            protect_cgroups,
            max_per_remote,
            idle_ms: ms(args.idle.or(file.idle).unwrap_or(DEFAULT_IDLE)),
            proxy,
            orphan_after_ms: ms(args.orphan_after.or(file.orphan_after).unwrap_or(DEFAULT_ORPHAN_AFTER)),
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            crowdsec,
            fault: args.inject_fault.iter().fold(0, |bits, f| bits | f.bit()),
        })
    }

    /// What differs from `new` that a reload cannot change: the kernel side was loaded,
    /// attached and pinned with it, or the metrics listener bound to it. Empty when `new` can
    /// be applied in place.
    pub fn needs_restart(&self, new: &Settings) -> Vec<&'static str> {
        [
            ("cgroup", self.cgroup != new.cgroup || self.cgroup_id != new.cgroup_id),
            ("pin-dir", self.pin_dir != new.pin_dir),
            ("log-format", self.log_format != new.log_format),
            ("metrics-addr", self.metrics_addr != new.metrics_addr),
            // Its programs are attached at start, and records are then made at establishment.
            ("proxy", self.proxy != new.proxy),
            // The fleet's threads are started once, with their credentials.
            ("crowdsec", self.crowdsec != new.crowdsec),
        ]
        .into_iter()
        .filter_map(|(name, differs)| differs.then_some(name))
        .collect()
    }

    /// Where and how pressure is read.
    pub fn meter(&self) -> pressure::Meter {
        pressure::Meter { source: self.pressure, cgroup: self.cgroup.clone() }
    }

    /// The ids of the `--protect-cgroup` directories and the cgroups below them, now: resolved
    /// again every interval, as a restarted service gets a new cgroup (a new id), and new
    /// children appear.
    pub fn protected_cgroup_ids(&self) -> anyhow::Result<HashSet<u64>> {
        cgroup::tree_ids_of_all(&self.protect_cgroups)
    }

    /// The rule these settings describe: the one place it is built, for `run` and `top` alike.
    /// `protected_cgroups` is [`Self::protected_cgroup_ids`], resolved by the caller (it does
    /// I/O, and changes as services restart).
    pub fn policy(&self, protected_cgroups: HashSet<u64>) -> policy::Policy {
        policy::Policy {
            threshold: self.threshold,
            low_water: policy::low_water(self.threshold, self.low_water_percent),
            stall_ms: self.stall_ms,
            max_drain_ms: self.max_drain_ms,
            drain_window_ms: self.drain_window_ms,
            interval_ms: self.interval_ms,
            fairness: self.fairness,
            kind: self.policy,
            max_kills: self.max_kills,
            protect: Protect {
                ports: self.protect_ports.clone(),
                remote_ports: self.protect_remote_ports.clone(),
                cidrs: self.protect_cidrs.clone(),
                cgroups: protected_cgroups,
            },
            max_per_remote: self.max_per_remote,
            idle_ms: self.idle_ms,
            orphan_after_ms: self.proxy.then_some(self.orphan_after_ms),
            repeat: policy::RepeatRule { kills: self.repeat_kills, window_ms: self.repeat_window_ms },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_their_record() {
        let s = Settings {
            cgroup: "/sys/fs/cgroup/x".into(),
            cgroup_id: 7,
            pin_dir: "/sys/fs/bpf/enforcer".into(),
            log_format: LogFormat::Json,
            dry_run: true,
            interval_ms: 250,
            threshold: 1 << 20,
            low_water_percent: 80,
            pressure: pressure::Source::Cgroup,
            fairness: Fairness::RemotePrefix { v4: 24, v6: 48 },
            stall_ms: 3000,
            max_drain_ms: 30_000,
            drain_window_ms: 5000,
            repeat_kills: 3,
            repeat_window_ms: 60_000,
            contain_sndbuf: 32 << 10,
            contain_user_timeout_ms: 60_000,
            policy: Kind::Heffner,
            max_kills: 5,
            max_kills_per_minute: 50,
            protect_ports: vec![22],
            protect_remote_ports: vec![5432],
            protect_cidrs: vec!["10.0.0.0/8".parse().expect("cidr")],
            protect_cgroups: vec!["/sys/fs/cgroup/ssh".into()],
            max_per_remote: Some(100),
            idle_ms: 300_000,
            proxy: true,
            orphan_after_ms: 10_000,
            metrics_addr: Some("127.0.0.1:9465".parse().expect("addr")),
            crowdsec: Some(super::super::crowdsec::Crowdsec {
                url: Some("http://127.0.0.1:8080".into()),
                key_file: Some("/etc/enforcer/crowdsec.key".into()),
                types: vec!["contain".into()],
                poll_ms: 10_000,
                machine_credentials: None,
            }),
            fault: 0,
        };
        let json = serde_json::to_string(&s).expect("serialise");
        // What `status --json` shows: operator words, not Rust names.
        assert!(json.contains(r#""fairness":"remote-prefix:24,48""#), "{json}");
        assert!(json.contains(r#""pressure":"cgroup""#) && json.contains(r#""policy":"heffner""#), "{json}");
        assert!(json.contains(r#""protect_cidrs":["10.0.0.0/8"]"#), "{json}");
        let back: Settings = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, s);
        assert_eq!(back.policy(HashSet::new()).fairness, s.fairness);
    }
}
