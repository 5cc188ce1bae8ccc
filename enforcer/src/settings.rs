//! The agent's settings: command-line flags over `--config` TOML over defaults, validated once.
use std::{collections::HashSet, path::PathBuf, time::Duration};

use anyhow::Context;
use ipnet::IpNet;
use serde::Serialize;
use thiserror::Error;

use crate::{
    cli::{FaultArg, PolicyArg, PressureArg, RunArgs, parse_cidr, parse_duration},
    policy::{self, Fairness, Kind, Protect},
    pressure, sys,
    units::{parse_fairness, parse_size},
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
/// SO_SNDBUF for a repeat offender's new connections (the kernel doubles it): 64 KiB a
/// connection instead of megabytes.
pub const DEFAULT_CONTAIN_SNDBUF: u64 = 32 << 10;

/// Several seconds, and never fewer than four snapshots: one interval's ACKs say nothing about
/// a reader whose ACKs come in bursts.
pub fn default_drain_window_ms(interval_ms: u64) -> u64 {
    (4 * interval_ms).max(5000)
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    #[serde(skip)]
    pub pin_dir: PathBuf,
    pub dry_run: bool,
    pub max_sockets: u32,
    pub interval_ms: u64,
    pub threshold: u64,
    pub pressure: &'static str,
    pub fairness: String,
    pub stall_ms: u64,
    pub max_drain_ms: u64,
    pub drain_window_ms: u64,
    pub repeat_kills: usize,
    pub repeat_window_ms: u64,
    pub contain_sndbuf: u64,
    pub policy: &'static str,
    pub max_kills: usize,
    pub max_kills_per_minute: usize,
    pub protect_ports: Vec<u16>,
    pub protect_remote_ports: Vec<u16>,
    pub protect_cidrs: Vec<String>,
    pub protect_cgroups: Vec<PathBuf>,
    pub max_per_remote: Option<usize>,
    pub idle_ms: u64,
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[serde(skip)]
    pub fault: u32,
    #[serde(skip)]
    pub source: pressure::Source,
    #[serde(skip)]
    pub rule: policy::Policy,
}

/// Values read from `--config`; each is checked with the flag's own parser.
#[derive(Default)]
struct File {
    cgroup: Option<PathBuf>,
    dry_run: Option<bool>,
    max_sockets: Option<u32>,
    interval: Option<Duration>,
    threshold: Option<u64>,
    pressure: Option<PressureArg>,
    fairness: Option<Fairness>,
    stall: Option<Duration>,
    max_drain: Option<Duration>,
    drain_window: Option<Duration>,
    repeat_kills: Option<usize>,
    repeat_window: Option<Duration>,
    contain_sndbuf: Option<u64>,
    policy: Option<PolicyArg>,
    max_kills: Option<usize>,
    max_kills_per_minute: Option<usize>,
    protect_port: Vec<u16>,
    protect_remote_port: Vec<u16>,
    protect_cidr: Vec<IpNet>,
    protect_cgroup: Vec<PathBuf>,
    max_per_remote: Option<usize>,
    idle: Option<Duration>,
    metrics_addr: Option<std::net::SocketAddr>,
}

fn read_file(path: &std::path::Path) -> Result<File, UsageError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| UsageError(format!("cannot read config {}: {e}", path.display())))?;
    parse_file(&text).map_err(|e| UsageError(format!("config {}: {e}", path.display())))
}

fn parse_file(text: &str) -> Result<File, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_owned())?;
    let mut f = File::default();
    for (key, value) in &table {
        let bad = |what: &str| format!("key `{key}`: {what}");
        let string = || value.as_str().ok_or_else(|| bad("expected a string"));
        let int = || value.as_integer().filter(|&n| n >= 0).ok_or_else(|| bad("expected a non-negative integer"));
        let duration = || string().and_then(|s| parse_duration(s).map_err(|e| bad(&e)));
        // Plain bytes, or a size with its unit ("64MiB").
        let size = || match value {
            toml::Value::Integer(_) => int().map(|n| n as u64),
            _ => string().and_then(|s| parse_size(s).map_err(|e| bad(&e))),
        };
        let list = || value.as_array().ok_or_else(|| bad("expected a list"));
        match key.as_str() {
            "cgroup" => f.cgroup = Some(string()?.into()),
            "dry-run" => f.dry_run = Some(value.as_bool().ok_or_else(|| bad("expected true or false"))?),
            "max-sockets" => {
                f.max_sockets = Some(u32::try_from(int()?).ok().filter(|&n| n >= 1).ok_or_else(|| bad("out of range"))?)
            }
            "interval" => f.interval = Some(duration()?),
            "threshold" => f.threshold = Some(size()?),
            "pressure" => {
                f.pressure = Some(match string()? {
                    "tracked" => PressureArg::Tracked,
                    "kernel" => PressureArg::Kernel,
                    "cgroup" => PressureArg::Cgroup,
                    other => return Err(bad(&format!("`{other}` is not tracked, kernel or cgroup"))),
                })
            }
            "fairness" => f.fairness = Some(parse_fairness(string()?).map_err(|e| bad(&e))?),
            "stall" => f.stall = Some(duration()?),
            "max-drain" => f.max_drain = Some(duration()?),
            "drain-window" => f.drain_window = Some(duration()?),
            "repeat-kills" => f.repeat_kills = Some(int()? as usize),
            "repeat-window" => f.repeat_window = Some(duration()?),
            "contain-sndbuf" => f.contain_sndbuf = Some(size()?),
            "policy" => {
                f.policy = Some(match string()? {
                    "budget" => PolicyArg::Budget,
                    "heffner" => PolicyArg::Heffner,
                    other => return Err(bad(&format!("`{other}` is not budget or heffner"))),
                })
            }
            "max-kills" => f.max_kills = Some(int()? as usize),
            "max-kills-per-minute" => f.max_kills_per_minute = Some(int()? as usize),
            "protect-port" | "protect-remote-port" => {
                for v in list()? {
                    let p = v
                        .as_integer()
                        .and_then(|n| u16::try_from(n).ok())
                        .ok_or_else(|| bad("expected ports (0-65535)"))?;
                    if key == "protect-port" { f.protect_port.push(p) } else { f.protect_remote_port.push(p) }
                }
            }
            "protect-cidr" => {
                for v in list()? {
                    let s = v.as_str().ok_or_else(|| bad("expected strings"))?;
                    f.protect_cidr.push(parse_cidr(s).map_err(|e| bad(&e))?);
                }
            }
            "protect-cgroup" => {
                for v in list()? {
                    f.protect_cgroup.push(v.as_str().ok_or_else(|| bad("expected paths"))?.into());
                }
            }
            "max-per-remote" => {
                f.max_per_remote =
                    Some(int()? as usize).filter(|&n| n >= 1).ok_or_else(|| bad("must be at least 1"))?.into()
            }
            "idle" => f.idle = Some(duration()?),
            "metrics-addr" => {
                f.metrics_addr = Some(string()?.parse().map_err(|_| bad("expected ADDRESS:PORT, e.g. 127.0.0.1:9465"))?)
            }
            _ => return Err(format!("unknown key `{key}`")),
        }
    }
    Ok(f)
}

/// The agent's rule and pressure source, rebuilt from the settings it recorded in its pins
/// (`enforcer top` shows what the agent would decide, with the agent's own policy code).
pub fn rule_from_recorded(v: &serde_json::Value) -> anyhow::Result<(policy::Policy, pressure::Source)> {
    let num = |k: &str| v[k].as_u64().with_context(|| format!("recorded settings lack `{k}`"));
    let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
    let cgroup = PathBuf::from(v["cgroup"].as_str().context("recorded settings lack `cgroup`")?);
    let source = match v["pressure"].as_str() {
        Some("kernel") => pressure::Source::Kernel,
        Some("cgroup") => pressure::Source::Cgroup(cgroup),
        _ => pressure::Source::Tracked,
    };
    let protect_cgroups: Vec<PathBuf> =
        list("protect_cgroups").iter().filter_map(|p| p.as_str().map(PathBuf::from)).collect();
    let stall_ms = num("stall_ms")?;
    let interval_ms = num("interval_ms")?;
    let rule = policy::Policy {
        threshold: num("threshold")?,
        stall_ms,
        max_drain_ms: num("max_drain_ms")?,
        drain_window_ms: v["drain_window_ms"].as_u64().unwrap_or_else(|| default_drain_window_ms(interval_ms)),
        interval_ms,
        fairness: parse_fairness(v["fairness"].as_str().unwrap_or("connection")).map_err(anyhow::Error::msg)?,
        kind: if v["policy"] == "heffner" { Kind::Heffner } else { Kind::Budget },
        max_kills: num("max_kills")? as usize,
        protect: Protect {
            ports: list("protect_ports").iter().filter_map(|p| p.as_u64().map(|p| p as u16)).collect(),
            remote_ports: list("protect_remote_ports").iter().filter_map(|p| p.as_u64().map(|p| p as u16)).collect(),
            cidrs: list("protect_cidrs").iter().filter_map(|c| c.as_str()?.parse().ok()).collect(),
            cgroups: protected_cgroup_ids(&protect_cgroups).unwrap_or_default(),
        },
        max_per_remote: v["max_per_remote"].as_u64().map(|n| n as usize),
        idle_ms: num("idle_ms")?,
        repeat: policy::RepeatRule {
            kills: v["repeat_kills"].as_u64().map_or(DEFAULT_REPEAT_KILLS, |n| n as usize),
            window_ms: v["repeat_window_ms"].as_u64().unwrap_or(DEFAULT_REPEAT_WINDOW_MS),
        },
    };
    Ok((rule, source))
}

/// Checks config text the way `--config` does; for fuzzing and tools. Errors name the key.
pub fn check_config_text(text: &str) -> Result<(), String> {
    parse_file(text).map(|_| ())
}

/// Cgroup ids of every protected directory and every cgroup below them. Resolved again every
/// interval: a restarted service gets a new cgroup (a new id), and new children appear.
pub fn protected_cgroup_ids(dirs: &[PathBuf]) -> anyhow::Result<HashSet<u64>> {
    let mut ids = HashSet::new();
    for dir in dirs {
        ids.extend(cgroup_tree_ids(dir).with_context(|| dir.display().to_string())?);
    }
    Ok(ids)
}

/// Cgroup ids of `dir` and every cgroup below it.
fn cgroup_tree_ids(dir: &std::path::Path) -> anyhow::Result<Vec<u64>> {
    let mut ids = vec![sys::cgroup2_dir(dir)?];
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            ids.extend(cgroup_tree_ids(&entry.path())?);
        }
    }
    Ok(ids)
}

/// Repeatable flags replace the file's list rather than adding to it: flags win.
fn pick<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() { file } else { flag }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Settings {
    pub fn resolve(args: RunArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };
        let from_file = args.cgroup.is_none() && file.cgroup.is_some();
        let cgroup = match args.cgroup.or(file.cgroup) {
            Some(p) => p,
            None => sys::cgroup2_root()?,
        };
        let cgroup_id = sys::cgroup2_dir(&cgroup)
            .map_err(|e| if from_file { UsageError(format!("config key `cgroup`: {e:#}")).into() } else { e })?;
        let threshold = match args.threshold.or(file.threshold) {
            Some(t) => t,
            None => pressure::default_threshold()?,
        };
        let source = match args.pressure.or(file.pressure).unwrap_or(PressureArg::Tracked) {
            PressureArg::Tracked => pressure::Source::Tracked,
            PressureArg::Kernel => pressure::Source::Kernel,
            PressureArg::Cgroup => pressure::Source::Cgroup(cgroup.clone()),
        };
        let fairness = args.fairness.or(file.fairness).unwrap_or(Fairness::Connection);
        let kind = match args.policy.or(file.policy).unwrap_or(PolicyArg::Budget) {
            PolicyArg::Budget => Kind::Budget,
            PolicyArg::Heffner => Kind::Heffner,
        };
        let stall = args.stall.or(file.stall).unwrap_or(DEFAULT_STALL);
        let max_drain = args.max_drain.or(file.max_drain).unwrap_or(DEFAULT_MAX_DRAIN);
        let interval_ms = ms(args.interval.or(file.interval).unwrap_or(Duration::from_secs(1)));
        let drain_window_ms =
            args.drain_window.or(file.drain_window).map(ms).unwrap_or_else(|| default_drain_window_ms(interval_ms));
        if drain_window_ms < interval_ms {
            return Err(UsageError(format!(
                "--drain-window ({drain_window_ms}ms) must be at least one --interval ({interval_ms}ms): a rate \
                 needs two snapshots"
            ))
            .into());
        }
        let repeat = policy::RepeatRule {
            kills: args.repeat_kills.or(file.repeat_kills).unwrap_or(DEFAULT_REPEAT_KILLS),
            window_ms: args.repeat_window.or(file.repeat_window).map(ms).unwrap_or(DEFAULT_REPEAT_WINDOW_MS),
        };
        let contain_sndbuf = args.contain_sndbuf.or(file.contain_sndbuf).unwrap_or(DEFAULT_CONTAIN_SNDBUF);
        // SO_SNDBUF takes an int.
        if contain_sndbuf > i32::MAX as u64 {
            return Err(UsageError(format!("--contain-sndbuf {contain_sndbuf} is out of range (under 2GiB)")).into());
        }
        let idle = args.idle.or(file.idle).unwrap_or(Duration::from_secs(300));
        let max_kills = args.max_kills.or(file.max_kills).unwrap_or(DEFAULT_MAX_KILLS);
        let protect_ports: Vec<u16> = pick(args.protect_port, file.protect_port);
        let protect_remote_ports: Vec<u16> = pick(args.protect_remote_port, file.protect_remote_port);
        let protect_cidrs: Vec<IpNet> = pick(args.protect_cidr, file.protect_cidr);
        let which = if args.protect_cgroup.is_empty() { "config key `protect-cgroup`" } else { "--protect-cgroup" };
        let protect_cgroups: Vec<PathBuf> = pick(args.protect_cgroup, file.protect_cgroup);
        let cgroup_ids = protected_cgroup_ids(&protect_cgroups).map_err(|e| UsageError(format!("{which}: {e:#}")))?;
        let max_per_remote = args.max_per_remote.or(file.max_per_remote);
        if max_per_remote == Some(0) {
            return Err(UsageError("--max-per-remote must be at least 1".into()).into());
        }
        let rule = policy::Policy {
            threshold,
            stall_ms: ms(stall),
            max_drain_ms: ms(max_drain),
            drain_window_ms,
            interval_ms,
            fairness,
            kind,
            max_kills,
            protect: Protect {
                ports: protect_ports.clone(),
                remote_ports: protect_remote_ports.clone(),
                cidrs: protect_cidrs.clone(),
                cgroups: cgroup_ids,
            },
            max_per_remote,
            idle_ms: ms(idle),
            repeat,
        };
        Ok(Self {
            cgroup,
            cgroup_id,
            pin_dir: args.pins.pin_dir,
            dry_run: args.dry_run || file.dry_run.unwrap_or(false),
            max_sockets: args.max_sockets.or(file.max_sockets).unwrap_or(enforcer_common::DEFAULT_MAX_SOCKETS),
            interval_ms,
            threshold,
            pressure: source.name(),
            fairness: match fairness {
                Fairness::Connection => "connection".into(),
                Fairness::RemoteIp => "remote-ip".into(),
                Fairness::RemotePrefix { v4, v6 } => format!("remote-prefix:{v4},{v6}"),
            },
            stall_ms: ms(stall),
            max_drain_ms: ms(max_drain),
            drain_window_ms,
            repeat_kills: repeat.kills,
            repeat_window_ms: repeat.window_ms,
            contain_sndbuf,
            policy: match kind {
                Kind::Budget => "budget",
                Kind::Heffner => "heffner",
            },
            max_kills,
            max_kills_per_minute: args
                .max_kills_per_minute
                .or(file.max_kills_per_minute)
                .unwrap_or(DEFAULT_MAX_KILLS_PER_MINUTE),
            protect_ports,
            protect_remote_ports,
            protect_cidrs: protect_cidrs.iter().map(ToString::to_string).collect(),
            protect_cgroups,
            max_per_remote,
            idle_ms: ms(idle),
            metrics_addr: args.metrics_addr.or(file.metrics_addr),
            fault: args.inject_fault.iter().fold(0, |bits, f| {
                bits | match f {
                    FaultArg::Sockops => enforcer_common::FAULT_SOCKOPS,
                    FaultArg::TcpProbe => enforcer_common::FAULT_TCP_PROBE,
                }
            }),
            source,
            rule,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_parse_and_errors_name_the_key() {
        let f = parse_file(
            "threshold = \"64MiB\"\nstall = \"2s\"\nprotect-port = [22, 2024]\nprotect-cidr = [\"10.0.0.0/8\"]\n\
             fairness = \"remote-prefix:24\"\npolicy = \"heffner\"\ndry-run = true\nmax-kills = 5\n",
        )
        .expect("valid config");
        assert_eq!(f.threshold, Some(64 << 20));
        assert_eq!(f.stall, Some(Duration::from_secs(2)));
        assert_eq!(f.protect_port, [22, 2024]);
        assert_eq!(f.policy, Some(PolicyArg::Heffner));
        assert_eq!(parse_file("threshold = 1000").map(|f| f.threshold).ok(), Some(Some(1000)));
        for (text, key) in [
            ("threshold = \"lots\"", "threshold"),
            ("stall = \"0s\"", "stall"),
            ("protect-port = [70000]", "protect-port"),
            ("max-kills = -1", "max-kills"),
            ("fairness = \"per-user\"", "fairness"),
            ("thresold = 5", "thresold"),
        ] {
            let err = parse_file(text).err().unwrap_or_else(|| panic!("{text} parsed"));
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
        assert!(parse_file("not toml [").is_err());
    }
}
