//! The systemd unit, checked by systemd's own tools: `systemd-analyze security` (the exposure
//! score), `systemd-analyze verify` after the README's install steps, and the agent run for real
//! under the unit's system call filter (`seccomp-exec`: PID 1 here is not systemd).
use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use enforcer_tests::{
    Agent, Cgroup, ECONNABORTED, Netns, PinDir, Pod, Scratch, enforcer_bin,
    process::{COMMAND_LIMIT, output_within},
    wait_for,
};

use super::{deploy, overlays};

const UNIT: &str = "systemd/enforcer.service";
/// Issue 11, item 8: the unit's exposure was 5.8 before it was hardened.
const MAX_EXPOSURE: f64 = 4.5;

/// A program the test needs, or a failure that says which package brings it.
pub(super) fn tool(name: &str, package: &str) -> String {
    let found =
        ["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file());
    let p = found.unwrap_or_else(|| {
        panic!("{name} is not installed: install the Debian package {package} (`cargo xtask test` does)")
    });
    p.to_string_lossy().into_owned()
}

/// Every value of `key=` in the unit, in order (systemd joins repeated list settings).
fn values(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_owned).collect()
}

#[test]
fn the_unit_is_hardened_and_systemd_scores_it_at_most_4_5() {
    let unit = deploy(UNIT);
    for (key, value) in [
        ("ProtectControlGroups", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictNamespaces", "net"),
        ("RestrictSUIDSGID", "yes"),
        ("UMask", "0077"),
        ("SystemCallErrorNumber", "EPERM"),
    ] {
        assert_eq!(values(&unit, key), [value], "{key}");
    }
    assert!(!values(&unit, "SystemCallFilter").is_empty(), "the unit has no system call filter");

    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(UNIT);
    let out = Command::new(tool("systemd-analyze", "systemd"))
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for enforcer.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}{}", String::from_utf8_lossy(&out.stderr)));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= MAX_EXPOSURE, "exposure {score} > {MAX_EXPOSURE}:\n{text}");
}

/// The shell lines of the README's `### Install` block, as root runs them on this machine: `sudo`
/// dropped, the build (done already) and systemctl (PID 1 is not systemd) left out, the binary
/// the one under test.
fn readme_install_steps() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let block: Vec<&str> = readme
        .split("### Install\n")
        .nth(1)
        .expect("the README has an ### Install section")
        .lines()
        .skip_while(|l| !l.starts_with("    "))
        .take_while(|l| l.starts_with("    "))
        .map(str::trim)
        .collect();
    assert!(block.iter().any(|l| l.contains("enforcer.service")), "the install block installs the unit: {block:?}");
    let bin = enforcer_bin().to_string_lossy().into_owned();
    block
        .iter()
        .filter(|l| !l.starts_with("cargo ") && !l.contains("systemctl "))
        .map(|l| l.replace("sudo ", "").replace("target/release/enforcer", &bin))
        .collect()
}

#[test]
fn systemd_analyze_verify_is_clean_after_the_readme_install_steps() {
    let analyze = tool("systemd-analyze", "systemd");
    // verify runs `man enforcer` for the unit's Documentation=.
    tool("man", "man-db");
    let steps = readme_install_steps();
    // The steps write to /etc and /usr/local: in a mount namespace of its own, over overlays
    // whose upper layers are thrown away, so the host's /etc and /usr/local are untouched.
    let scratch = Scratch::new("enforcer-install");
    let mut script = String::from("set -e\n");
    script += &overlays(scratch.path(), &["/etc", "/usr/local"]);
    for step in &steps {
        script += step;
        script.push('\n');
    }
    script += &format!("{analyze} verify /etc/systemd/system/enforcer.service\n");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "install steps or verify failed:\n{script}\n{said}");
    assert_eq!(said.trim(), "", "systemd-analyze verify is not clean:\n{script}");
}

/// The system calls `SystemCallFilter=` allows, by number, as systemd expands its groups.
fn allowed_syscalls(filter: &[String]) -> BTreeSet<u32> {
    let analyze = tool("systemd-analyze", "systemd");
    fn expand(analyze: &str, item: &str, out: &mut BTreeSet<String>) {
        if !item.starts_with('@') {
            out.insert(item.to_owned());
            return;
        }
        let listing = Command::new(analyze).args(["syscall-filter", "--no-pager", item]).output().unwrap();
        assert!(listing.status.success(), "systemd-analyze syscall-filter {item}");
        for line in String::from_utf8_lossy(&listing.stdout).lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line == item {
                continue;
            }
            expand(analyze, line, out);
        }
    }
    let mut names = BTreeSet::new();
    for item in filter.iter().flat_map(|v| v.split_whitespace()) {
        assert!(!item.starts_with('~'), "expected an allow list, not {item}");
        expand(&analyze, item, &mut names);
    }
    // Numbers from the kernel headers (linux-libc-dev). A name they lack is left out: stricter
    // than systemd, never looser.
    let header = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
    let text = std::fs::read_to_string(header)
        .unwrap_or_else(|e| panic!("{header}: {e}: install the Debian package linux-libc-dev"));
    text.lines()
        .filter_map(|l| l.strip_prefix("#define __NR_"))
        .filter_map(|l| l.split_once(' '))
        .filter(|(name, _)| names.contains(*name))
        .map(|(_, nr)| nr.trim().parse().unwrap())
        .collect()
}

fn families(unit: &str) -> String {
    let numbers = |f: &str| match f {
        "AF_UNIX" => libc::AF_UNIX,
        "AF_INET" => libc::AF_INET,
        "AF_INET6" => libc::AF_INET6,
        "AF_NETLINK" => libc::AF_NETLINK,
        other => panic!("add {other} to this table"),
    };
    let all = values(unit, "RestrictAddressFamilies");
    all.iter().flat_map(|v| v.split_whitespace()).map(|f| numbers(f).to_string()).collect::<Vec<_>>().join(",")
}

fn filter_env(allow: &BTreeSet<u32>, unit: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SECCOMP_EXEC", enforcer_bin().to_string_lossy().into_owned()),
        ("SECCOMP_ALLOW", allow.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
        ("SECCOMP_FAMILIES", families(unit)),
    ]
}

/// The agent under the unit's seccomp settings (SystemCallFilter, SystemCallErrorNumber,
/// RestrictNamespaces=net, RestrictAddressFamilies, NoNewPrivileges) does all it does in
/// service: attaches, serves metrics, enters a pod's network namespace to snapshot and destroy
/// there, reloads on SIGHUP, detaches on SIGTERM. And the filter bites: without bpf(2) the agent
/// cannot start. The mount-namespace settings (ProtectSystem, ProtectKernelTunables,
/// ProtectControlGroups, PrivateDevices) are not applied here.
#[test]
fn the_agent_works_under_the_units_system_call_filter() {
    let unit = deploy(UNIT);
    assert_eq!(values(&unit, "SystemCallErrorNumber"), ["EPERM"], "seccomp-exec answers EPERM as the unit does");
    let allow = allowed_syscalls(&values(&unit, "SystemCallFilter"));
    let wrapper = Path::new(env!("CARGO_BIN_EXE_seccomp-exec"));

    let (agent_ns, pod_ns, cg) = (Netns::new(), Netns::new(), Cgroup::new());
    let flags =
        ["--log-format", "json", "--interval", "250ms", "--threshold", "1MiB", "--metrics-addr", "127.0.0.1:9465"];
    let mut agent = Agent::start_wrapped(&agent_ns, &cg, wrapper, &filter_env(&allow, &unit), &flags);
    let pid = agent.pid().unwrap();
    wait_for("/readyz to answer 200", Duration::from_secs(10), || {
        agent_ns.http_get("127.0.0.1:9465", "/readyz").starts_with("HTTP/1.1 200").then_some(())
    });

    // A zero-window attacker in another namespace: destroyed from inside it (setns, netlink).
    let mut pod = Pod::new(&pod_ns, &cg);
    assert!(pod.server.num("write 0 2000000") > 0);
    agent.wait_destroyed(&pod.remote);
    assert_eq!(pod.server.num("soerror 0"), ECONNABORTED, "the pod's server sees ECONNABORTED");

    // SAFETY: signalling the agent, our own child.
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    wait_for("the reload", Duration::from_secs(10), || agent.log_text().contains("settings reloaded").then_some(()));
    let status = agent.stop();
    let log = agent.log_text();
    assert!(status.success(), "the agent exited with {status} under the filter:\n{log}");
    assert!(log.contains("pins removed"), "{log}");
    // The kernel's own EPERM for map-element iterators (this VM's kernel refuses them, filter or
    // not) is said in its own line; any other EPERM would be the filter's.
    let refused = log.lines().filter(|l| !l.contains("refuses map-element iterators"));
    assert!(!refused.clone().any(|l| l.contains("Operation not permitted")), "a call the filter refused:\n{log}");

    // The control: the same filter without bpf(2) stops the agent at start.
    let bpf = libc::SYS_bpf as u32;
    let without_bpf: BTreeSet<u32> = allow.iter().copied().filter(|nr| *nr != bpf).collect();
    let pin_dir = PinDir::new();
    let out = output_within(
        agent_ns
            .command(wrapper)
            .envs(filter_env(&without_bpf, &unit))
            .args(["run", "--cgroup"])
            .arg(&cg.path)
            .arg("--pin-dir")
            .arg(pin_dir.path()),
        COMMAND_LIMIT,
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Operation not permitted") || stderr.contains("EPERM"), "{stderr}");
}
