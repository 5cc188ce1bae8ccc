//! A real CrowdSec Local API for the `fleet` tests: Debian's `crowdsec` binaries (unpacked by
//! `cargo xtask test` into `ENFORCER_CROWDSEC_ROOT`), run with `-no-cs` inside a test namespace,
//! with its own config, SQLite database and profiles under a scratch directory; `cscli` against
//! the same config registers bouncers and machines and adds and deletes decisions. Stopped and
//! removed on drop.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{
    Netns,
    process::{COMMAND_LIMIT, output_within, terminate},
    root, unique, wait_for,
};

/// How long the Local API may take to answer after it starts (it migrates its database first).
const START_LIMIT: Duration = Duration::from_secs(60);

/// Where `cargo xtask test` unpacked Debian's `crowdsec`.
fn crowdsec_root() -> PathBuf {
    let root = std::env::var_os("ENFORCER_CROWDSEC_ROOT")
        .map(PathBuf::from)
        .expect("ENFORCER_CROWDSEC_ROOT is not set: run the tests with `cargo xtask test`, which unpacks crowdsec");
    assert!(root.join("usr/bin/crowdsec").is_file(), "no crowdsec under {}", root.display());
    root
}

/// A running Local API in a test namespace.
pub struct Lapi {
    child: Option<Child>,
    ns: String,
    pub dir: PathBuf,
    config: PathBuf,
    /// `http://ADDR:PORT`, reachable from inside the namespace.
    pub url: String,
    bin: PathBuf,
}

impl Lapi {
    /// Writes a config under a scratch directory and starts the Local API on `listen`
    /// (`127.0.0.1:PORT`) in `ns`, with the profiles enforcer ships (`deploy/crowdsec/`).
    pub fn start(ns: &Netns, listen: &str) -> Self {
        let dir = std::env::temp_dir().join(unique("enforcer-crowdsec"));
        for sub in ["data", "log", "hub", "acquis.d", "notifications"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let bin = crowdsec_root();
        let d = dir.display();
        let config = dir.join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "common:\n  daemonize: false\n  log_media: file\n  log_level: info\n  log_dir: {d}/log/\n  \
                 working_dir: {d}/\nconfig_paths:\n  config_dir: {d}/\n  data_dir: {d}/data/\n  simulation_path: \
                 {d}/simulation.yaml\n  hub_dir: {d}/hub/\n  index_path: {d}/hub/.index.json\n  notification_dir: \
                 {d}/notifications/\n  plugin_dir: {plugins}/\ncrowdsec_service:\n  acquisition_path: {d}/acquis.yaml\n  \
                 acquisition_dir: {d}/acquis.d\n  parser_routines: 1\ncscli:\n  output: human\n  color: \"no\"\n\
                 db_config:\n  log_level: info\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  use_wal: true\n\
                 plugin_config:\n  user: nobody\n  group: nogroup\napi:\n  client:\n    insecure_skip_verify: false\n    \
                 credentials_path: {d}/local_api_credentials.yaml\n  server:\n    log_level: info\n    listen_uri: \
                 {listen}\n    profiles_path: {d}/profiles.yaml\n    console_path: {d}/console.yaml\n    trusted_ips:\n      \
                 - 127.0.0.1\nprometheus:\n  enabled: false\n  level: full\n  listen_addr: 127.0.0.1\n  listen_port: 16060\n",
                plugins = bin.join("usr/lib/crowdsec/plugins").display(),
            ),
        )
        .unwrap();
        std::fs::write(dir.join("simulation.yaml"), "simulation: off\n").unwrap();
        // What an operator installs: enforcer's profile first, then CrowdSec's default.
        let shipped = std::fs::read_to_string(root().join("deploy/crowdsec/profiles.yaml")).unwrap();
        std::fs::write(dir.join("profiles.yaml"), shipped).unwrap();
        let mut lapi = Self { child: None, ns: ns.name.clone(), dir, config, url: format!("http://{listen}"), bin };
        // `cscli decisions` goes through the Local API as a machine: the operator's.
        let creds = lapi.dir.join("local_api_credentials.yaml").to_string_lossy().into_owned();
        lapi.cscli(&["machines", "add", "operator", "--auto", "--force", "-f", &creds, "--url", &lapi.url]);
        lapi.resume();
        lapi
    }

    fn ns_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns)).arg("--").arg(program);
        c
    }

    /// Starts the Local API (again, after `kill`) and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the Local API is running");
        let log = std::fs::File::create(self.dir.join("lapi.out")).unwrap();
        let child = self
            .ns_command(self.bin.join("usr/bin/crowdsec"))
            .arg("-c")
            .arg(&self.config)
            .arg("-no-cs")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting crowdsec -no-cs");
        self.child = Some(child);
        let health = format!("{}/health", self.url);
        wait_for("the CrowdSec Local API to answer", START_LIMIT, || {
            let out = output_within(self.ns_command("curl").args(["-sf", "-o", "/dev/null", &health]), COMMAND_LIMIT);
            out.status.success().then_some(())
        });
    }

    /// Kills the Local API (SIGKILL: as a crash or a lost host would), keeping its database.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `cscli -c CONFIG ARGS`, which must succeed; its stdout.
    pub fn cscli(&self, args: &[&str]) -> String {
        let out = self.try_cscli(args);
        assert!(
            out.status.success(),
            "cscli {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_cscli(&self, args: &[&str]) -> Output {
        let mut cmd = self.ns_command(self.bin.join("usr/bin/cscli"));
        cmd.arg("-c").arg(&self.config).arg("--error").args(args).stdin(Stdio::null());
        output_within(&mut cmd, COMMAND_LIMIT)
    }

    /// Registers a bouncer; the file holding its key (as an operator would write it).
    pub fn bouncer_key_file(&self, name: &str) -> PathBuf {
        let key = self.cscli(&["bouncers", "add", name, "-o", "raw"]);
        let path = self.dir.join(format!("{name}.key"));
        std::fs::write(&path, key.trim()).unwrap();
        path
    }

    /// Registers a machine; its credentials file (`local_api_credentials.yaml` form).
    pub fn machine_credentials(&self, name: &str) -> PathBuf {
        let path = self.dir.join(format!("{name}.yaml"));
        let p = path.to_string_lossy().into_owned();
        self.cscli(&["machines", "add", name, "--password", "enforcer-test-password", "-f", &p, "--force"]);
        path
    }

    /// `cscli decisions list -o json`: the alerts with their decisions (`[]` when none).
    pub fn alerts(&self) -> Vec<Value> {
        let out = self.cscli(&["decisions", "list", "-o", "json"]);
        match serde_json::from_str(out.trim()) {
            Ok(Value::Array(a)) => a,
            _ => Vec::new(),
        }
    }

    /// The decisions in force for `value` (an IP), of any alert.
    pub fn decisions_for(&self, value: &str) -> Vec<Value> {
        self.alerts()
            .iter()
            .flat_map(|a| a["decisions"].as_array().cloned().unwrap_or_default())
            .filter(|d| d["value"] == value)
            .collect()
    }

    /// The Local API's own log, for a failing test.
    pub fn log_text(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir.join("lapi.out")).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(self.dir.join("log/crowdsec_api.log")).unwrap_or_default());
        text
    }

    pub fn config(&self) -> &Path {
        &self.config
    }
}

impl Drop for Lapi {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        if std::thread::panicking() {
            crate::stderr_note(&format!("CrowdSec Local API log:\n{}", self.log_text()));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
