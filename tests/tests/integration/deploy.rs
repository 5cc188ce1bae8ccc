//! The service files and Kubernetes manifests are checked against what the agent needs: flags
//! it knows, mounts it reads and writes, capabilities, the metrics port, a config it accepts.

use std::{path::Path, process::Command};

use enforcer_tests::{ConfigFile, enforcer_bin};
use yaml_rust2::{Yaml, YamlLoader};

mod dist;
mod kubernetes;
mod monitoring;
mod systemd;

/// The capabilities the agent uses (see deploy/systemd/enforcer.service for why each).
const CAPS: [&str; 5] = ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];

fn deploy(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml(path: &str) -> Yaml {
    YamlLoader::load_from_str(&deploy(path)).unwrap().remove(0)
}

fn check_config(text: &str) {
    let out = ConfigFile::new(text).check();
    assert!(out.status.success(), "config rejected: {}", String::from_utf8_lossy(&out.stderr));
}

/// Shell lines that mount an overlay over each of `dirs` (in a mount namespace of the caller's
/// own), its upper and work directories in `scratch`: what the script writes there is thrown
/// away with `scratch`, and the host's directories are untouched.
fn overlays(scratch: &Path, dirs: &[&str]) -> String {
    let mut script = String::new();
    for (i, dir) in dirs.iter().enumerate() {
        let (up, work) = (scratch.join(format!("{i}.up")), scratch.join(format!("{i}.work")));
        script += &format!(
            "mkdir -p {up} {work}\nmount -t overlay overlay -o lowerdir={dir},upperdir={up},workdir={work} {dir}\n",
            up = up.display(),
            work = work.display()
        );
    }
    script
}

/// Every `--flag` in `args` is one `enforcer run` knows.
fn check_flags(args: &[&str]) {
    let help = Command::new(enforcer_bin()).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(&format!("{flag} ")), "enforcer run does not know {flag}");
    }
}

#[test]
fn the_example_config_and_the_systemd_unit_fit_the_agent() {
    check_config(&deploy("enforcer.toml"));
    let unit = deploy("systemd/enforcer.service");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    check_flags(&args);
    assert!(exec.contains("--config /etc/enforcer/enforcer.toml"), "{exec}");
    // The agent speaks sd_notify and reloads on SIGHUP (the `lifecycle` tests).
    assert!(unit.lines().any(|l| l == "Type=notify"), "{unit}");
    assert!(unit.lines().any(|l| l == "ExecReload=/bin/kill -HUP $MAINPID"), "{unit}");
    let bounding = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).unwrap();
    for cap in CAPS {
        assert!(bounding.split_whitespace().any(|c| c == format!("CAP_{cap}")), "unit lacks CAP_{cap}");
    }
    assert!(unit.contains("ReadWritePaths=/sys/fs/bpf"), "the pins need a writable bpffs");
    assert!(unit.contains("ProtectSystem=strict"));
}

#[test]
fn the_kubernetes_manifests_fit_the_agent() {
    let cm = yaml("kubernetes/configmap.yaml");
    let ds = yaml("kubernetes/daemonset.yaml");
    assert_eq!(ds["kind"].as_str(), Some("DaemonSet"));
    let config = cm["data"]["enforcer.toml"].as_str().expect("the ConfigMap holds enforcer.toml");
    check_config(config);

    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "the agent enters pods' network namespaces via /proc");
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"].as_vec().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    check_flags(&args);
    let arg = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]).unwrap();

    // Mounts: what the agent reads and where it pins.
    let mounts: Vec<(&str, bool)> = c["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| (m["mountPath"].as_str().unwrap(), m["readOnly"].as_bool().unwrap_or(false)))
        .collect();
    let mounted = |path: &str| mounts.iter().find(|(p, _)| path.starts_with(p)).copied();
    assert_eq!(mounted(arg("--pin-dir")), Some(("/sys/fs/bpf", false)), "the pin directory must be a writable bpffs");
    assert!(mounted(arg("--cgroup")).is_some(), "the cgroup directory must be mounted");
    assert!(mounted("/sys/kernel/btf/vmlinux").is_some(), "the agent reads kernel BTF");
    assert!(mounted(arg("--config")).is_some_and(|(_, ro)| ro), "the config comes read-only from the ConfigMap");
    let volumes = pod["volumes"].as_vec().unwrap();
    assert!(
        volumes.iter().any(|v| v["configMap"]["name"].as_str() == cm["metadata"]["name"].as_str()),
        "the config volume is the ConfigMap"
    );

    // The CrowdSec key comes from a Secret (optional: no fleet, no Secret), read-only, and the
    // ConfigMap's fleet keys point into it.
    let secret = volumes.iter().find(|v| v["secret"]["secretName"].as_str() == Some("enforcer-crowdsec")).unwrap();
    assert_eq!(secret["secret"]["optional"].as_bool(), Some(true));
    let secret_mount = c["volumeMounts"].as_vec().unwrap().iter().find(|m| m["name"] == secret["name"]).unwrap();
    assert_eq!(secret_mount["readOnly"].as_bool(), Some(true));
    let key_file = config.lines().find_map(|l| l.strip_prefix("# crowdsec-key-file = ")).unwrap();
    assert!(key_file.trim_matches('"').starts_with(secret_mount["mountPath"].as_str().unwrap()), "{key_file}");

    // Capabilities: exactly what the agent uses, nothing else.
    let sc = &c["securityContext"];
    let add: Vec<&str> = sc["capabilities"]["add"].as_vec().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(add, CAPS);
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert_eq!(sc["privileged"].as_bool(), Some(false));

    // Prometheus finds the port the agent serves.
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"));
    let port = ann["prometheus.io/port"].as_str().unwrap();
    assert_eq!(c["ports"][0]["containerPort"].as_i64().map(|p| p.to_string()).as_deref(), Some(port));
    // Probes on the agent's own health endpoints, on that port.
    assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert_eq!(c["readinessProbe"]["httpGet"]["port"].as_str(), c["ports"][0]["name"].as_str());
    let metrics_addr = config.lines().find_map(|l| l.strip_prefix("metrics-addr = ")).unwrap();
    assert!(metrics_addr.trim_matches('"').ends_with(&format!(":{port}")), "{metrics_addr}");
}
