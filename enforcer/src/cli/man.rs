//! `enforcer man`: a page for the command and one per subcommand. clap renders the options and
//! the help texts; this adds what clap cannot know: the config file's keys, exit status,
//! signals, environment and files.
use std::{io::Write, path::Path};

/// `run`'s options that are no config key: the file itself, help, and fault injection (tests).
const NOT_KEYS: [&str; 3] = ["config", "help", "inject-fault"];

/// The config file's keys: every long option of `run` but [`NOT_KEYS`].
pub fn config_keys(cli: &clap::Command) -> Vec<String> {
    cli.find_subcommand("run")
        .map(|run| {
            run.get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| !NOT_KEYS.contains(l))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Roff-escapes `text` (hyphens, leading dots and quotes).
fn roff(text: &str) -> String {
    text.replace('\\', "\\\\").replace('-', "\\-")
}

fn section(out: &mut String, title: &str, paragraphs: &[String]) {
    out.push_str(&format!(".SH \"{title}\"\n"));
    for p in paragraphs {
        out.push_str(".PP\n");
        out.push_str(&roff(p));
        out.push('\n');
    }
}

/// The sections clap does not render, for the page of subcommand `name` ("" for the top page).
fn extra(name: &str, keys: &[String]) -> String {
    let mut out = String::new();
    if matches!(name, "" | "run" | "check-config") {
        let mut p = vec![
            "`enforcer run --config FILE` reads a TOML file whose keys are run's long options without \
             the dashes; a flag given on the command line wins over the file. Sizes as with the flags \
             (\"64MiB\"), durations as text (\"1s\", \"10m\"), repeatable options as arrays \
             (protect-port = [22, 443]). An unknown key is refused with its line and column and the \
             nearest known key. `enforcer check-config FILE` checks a file exactly as run would."
                .to_owned(),
            format!("Keys: {}.", keys.join(", ")),
        ];
        if name == "run" {
            p.push(
                "SIGHUP reloads the file and applies it without detaching, except cgroup, pin-dir, \
                 metrics-addr, log-format, proxy and the crowdsec-* keys, which need a restart."
                    .to_owned(),
            );
            p.push(
                "Fleets: with crowdsec-url and crowdsec-key-file the agent is a CrowdSec bouncer: the \
                 Local API's decisions of crowdsec-type (contain) contain their IPs and ranges for the \
                 decision's duration (contain-sndbuf, contain-user-timeout; their stalled connections \
                 go while pressure is over the threshold, reason contained_by_crowdsec). With \
                 crowdsec-machine-credentials it is also a machine: each repeat offender is pushed as \
                 an alert of scenario enforcer/repeat-offender, which the profile in \
                 deploy/crowdsec/profiles.yaml turns into a contain decision for the whole fleet. The \
                 key and password are read from their files and never logged or recorded."
                    .to_owned(),
            );
        }
        section(&mut out, "CONFIGURATION", &p);
    }
    section(
        &mut out,
        "EXIT STATUS",
        &[
            "0: success (run: detached cleanly after SIGTERM or SIGINT).".to_owned(),
            "1: a runtime failure (no BPF, no BTF, the kernel refused a program, no agent running for \
             the CLI, an I/O error), said in one line on standard error."
                .to_owned(),
            "2: bad input: an unknown flag or key, a bad value in the flags or the config file, a \
             missing cgroup or pin directory not on a bpf filesystem."
                .to_owned(),
        ],
    );
    if matches!(name, "" | "run") {
        section(
            &mut out,
            "SIGNALS",
            &[
                "SIGHUP: resolve the settings again (flags over the config file as it is now) and apply \
                 them without detaching; a bad value refuses the whole reload, logged as `reload \
                 refused`, and the agent goes on as it was."
                    .to_owned(),
                "SIGTERM, SIGINT: detach every program, remove the pins and exit 0.".to_owned(),
                "Under systemd (Type=notify, NOTIFY_SOCKET set) the agent sends READY=1 once attached \
                 and a scan worked, RELOADING=1 and READY=1 around a reload, STOPPING=1 as it detaches."
                    .to_owned(),
            ],
        );
    }
    section(
        &mut out,
        "ENVIRONMENT",
        &["RUST_LOG: the log filter (tracing's EnvFilter syntax), info for run, warn for the CLI by default."
            .to_owned()],
    );
    section(
        &mut out,
        "FILES",
        &[
            "/etc/enforcer/enforcer.toml: the config file the packaged unit and DaemonSet use.".to_owned(),
            "/sys/fs/bpf/enforcer: the agent's pins (--pin-dir): the snapshot link, the settings, the \
             kill journal and the counters the CLI reads. Removed when the agent detaches; a new agent \
             removes stale ones."
                .to_owned(),
            "deploy/crowdsec/profiles.yaml, deploy/prometheus/enforcer-rules.yaml, \
             deploy/grafana/enforcer.json (in the source tree): the CrowdSec profile for enforcer's \
             alerts, alerting rules with their promtool tests, a Grafana dashboard."
                .to_owned(),
            "enforcer.service: the systemd unit (/usr/lib/systemd/system from the Debian package, \
             /etc/systemd/system after the README's steps)."
                .to_owned(),
        ],
    );
    out
}

/// The page of `cmd` (the top command, or a subcommand).
fn page(cmd: clap::Command, name: &str, keys: &[String], w: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(cmd).render(w)?;
    w.write_all(extra(name, keys).as_bytes())
}

/// The top page, to `w`.
pub fn render(cli: clap::Command, w: &mut dyn Write) -> std::io::Result<()> {
    let keys = config_keys(&cli);
    page(cli, "", &keys, w)
}

/// Every page into `dir`: enforcer.1 and enforcer-NAME.1 per subcommand.
pub fn write_all(cli: clap::Command, dir: &Path) -> std::io::Result<()> {
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let keys = config_keys(&cli);
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name().to_owned();
        let mut file = std::fs::File::create(dir.join(format!("enforcer-{name}.1")))?;
        // `build` gave each subcommand its display name, enforcer-NAME, which the page takes.
        page(sub.clone(), &name, &keys, &mut file)?;
    }
    let mut file = std::fs::File::create(dir.join("enforcer.1"))?;
    page(cli, "", &keys, &mut file)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_listed_key_is_a_key_of_the_config_file() {
        let keys = config_keys(&crate::cli::Cli::command());
        assert!(keys.len() > 20, "{keys:?}");
        for key in keys {
            // A wrong value may be refused, an unknown key must not be.
            if let Err(e) = crate::config::file::parse(&format!("{key} = 0\n")) {
                assert!(!e.contains("unknown"), "{key}: {e}");
            }
        }
    }

    #[test]
    fn pages_have_the_sections_clap_cannot_write() {
        let mut run = Vec::new();
        let cli = crate::cli::Cli::command();
        let keys = config_keys(&cli);
        let sub = cli.find_subcommand("run").expect("run").clone();
        page(sub, "run", &keys, &mut run).expect("render");
        let text = String::from_utf8(run).expect("utf8");
        for s in ["CONFIGURATION", "EXIT STATUS", "SIGNALS", "ENVIRONMENT", "FILES", "max\\-per\\-remote"] {
            assert!(text.contains(s), "{s} missing");
        }
    }
}
