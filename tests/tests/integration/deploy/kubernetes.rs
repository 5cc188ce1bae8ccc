//! The Kubernetes manifests beyond what the agent needs (deploy.rs): valid against the
//! Kubernetes schemas, and what an operator expects of a node agent.
use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use enforcer_tests::enforcer_bin;
use yaml_rust2::{Yaml, YamlLoader};

use super::deploy;

/// kubernetes-validate, from the virtualenv `cargo xtask test` installs it into.
fn kubernetes_validate() -> PathBuf {
    let venv = std::env::var_os("ENFORCER_PYTHON_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/venv"));
    let bin = venv.join("bin/kubernetes-validate");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo xtask test` installs kubernetes-validate from PyPI (pip install kubernetes-validate==1.37.0 \
         into that virtualenv); if it could not, it said why",
        bin.display()
    );
    bin
}

#[test]
fn the_manifests_are_valid_against_the_kubernetes_schemas() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "--no-warn"])
        .arg(dir.join("configmap.yaml"))
        .arg(dir.join("daemonset.yaml"))
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubernetes-validate --strict failed:\n{said}");
    // Every document was checked (an unknown kind would be skipped with a warning).
    for resource in ["configmap/enforcer", "daemonset/enforcer", "service/enforcer-metrics"] {
        assert!(said.contains(&format!("passed for resource {resource} ")), "{resource} not validated:\n{said}");
    }
}

fn documents(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&deploy(path)).unwrap()
}

fn sha256(data: &str) -> String {
    let mut child =
        Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(data.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

#[test]
fn the_daemonset_is_what_an_operator_expects_of_a_node_agent() {
    let docs = documents("kubernetes/daemonset.yaml");
    let ds = docs.iter().find(|d| d["kind"].as_str() == Some("DaemonSet")).unwrap();
    let template = &ds["spec"]["template"];
    let pod = &template["spec"];
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false), "the agent talks to no API server");
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));

    // A ConfigMap change changes the template, so the pods roll.
    let cm = &documents("kubernetes/configmap.yaml")[0];
    let want = sha256(cm["data"]["enforcer.toml"].as_str().unwrap());
    assert_eq!(
        template["metadata"]["annotations"]["checksum/config"].as_str(),
        Some(want.as_str()),
        "set the DaemonSet's checksum/config annotation to the sha256 of the ConfigMap's enforcer.toml"
    );

    // bpffs: the node's directory (created if missing); the init container mounts bpffs there
    // with Bidirectional propagation (privileged, as Kubernetes requires for it), the agent
    // receives it (HostToContainer) and stays unprivileged.
    let volume = pod["volumes"].as_vec().unwrap().iter().find(|v| v["name"].as_str() == Some("bpffs")).unwrap();
    assert_eq!(volume["hostPath"]["path"].as_str(), Some("/sys/fs/bpf"));
    assert_eq!(volume["hostPath"]["type"].as_str(), Some("DirectoryOrCreate"));
    let bpffs_mount = |c: &Yaml| {
        c["volumeMounts"].as_vec().unwrap().iter().find(|m| m["name"].as_str() == Some("bpffs")).cloned().unwrap()
    };
    let init = &pod["initContainers"][0];
    assert_eq!(init["args"][0].as_str(), Some("mount-bpffs"));
    assert_eq!(init["image"], pod["containers"][0]["image"], "one image for both");
    assert_eq!(bpffs_mount(init)["mountPropagation"].as_str(), Some("Bidirectional"));
    assert_eq!(init["securityContext"]["privileged"].as_bool(), Some(true), "Bidirectional needs privileged");
    let agent = &pod["containers"][0];
    assert_eq!(bpffs_mount(agent)["mountPropagation"].as_str(), Some("HostToContainer"));
    assert_eq!(agent["securityContext"]["privileged"].as_bool(), Some(false));

    for c in [init, agent] {
        let name = c["name"].as_str().unwrap();
        assert_eq!(c["terminationMessagePolicy"].as_str(), Some("FallbackToLogsOnError"), "{name}");
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(c["resources"][kind][resource].as_str().is_some(), "{name} has no {kind}.{resource}");
            }
        }
    }

    // Prometheus: a headless Service over the pods' metrics port.
    let svc = docs.iter().find(|d| d["kind"].as_str() == Some("Service")).expect("a Service for Prometheus");
    assert_eq!(svc["spec"]["selector"], template["metadata"]["labels"]);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], agent["ports"][0]["name"]);
    assert_eq!(svc["spec"]["ports"][0]["port"], agent["ports"][0]["containerPort"]);
}

/// What the init container runs: bpffs at /sys/fs/bpf when something else is there (a tmpfs,
/// in a mount namespace of this test's own), nothing when bpffs is there already.
#[test]
fn mount_bpffs_mounts_one_where_there_is_none() {
    let bin = enforcer_bin();
    let script = format!(
        "set -e; mount -t tmpfs none /sys/fs/bpf; stat -f -c %T /sys/fs/bpf; {bin} mount-bpffs; stat -f -c %T /sys/fs/bpf; \
         grep -c ' /sys/fs/bpf bpf ' /proc/self/mounts; {bin} mount-bpffs; grep -c ' /sys/fs/bpf bpf ' /proc/self/mounts",
        bin = bin.display()
    );
    let out =
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // tmpfs, then bpf; the second run finds it and mounts nothing more.
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(words[..2], ["tmpfs", "bpf_fs"], "{stdout}");
    assert_eq!(words[2], words[3], "the second run mounted again: {stdout}");
}
