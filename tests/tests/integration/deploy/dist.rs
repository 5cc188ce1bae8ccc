//! What `cargo xtask dist` builds (`cargo xtask test` builds it first): each artifact taken apart
//! with the tool its users would use (tar, dpkg, skopeo, umoci), and the static binary run where
//! nothing else exists.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use enforcer_tests::{Scratch, enforcer_bin};

use super::{deploy, overlays, systemd::tool};

fn dist() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("dist")
}

fn version() -> String {
    let out = Command::new(enforcer_bin()).arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().strip_prefix("enforcer ").unwrap().to_owned()
}

fn artifact(name: &str) -> PathBuf {
    let p = dist().join(name);
    assert!(p.is_file(), "{} is missing: run `cargo xtask dist` (`cargo xtask test` does)", p.display());
    p
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The binary runs alone: chrooted into a directory that holds nothing else (no libc, no
/// loader), it prints its version. And it carries the eBPF object (an ELF for EM_BPF inside).
fn assert_static_agent(bin: &Path) {
    let jail = Scratch::new("enforcer-dist");
    std::fs::copy(bin, jail.0.join("enforcer")).unwrap();
    let out = run(Command::new("chroot").arg(&jail.0).arg("/enforcer").arg("--version"));
    assert_eq!(out.trim(), format!("enforcer {}", version()));
    let bytes = std::fs::read(bin).unwrap();
    // e_ident for a 64-bit little-endian ELF, then e_machine (offset 18) = 247, EM_BPF.
    let bpf_elf =
        bytes.windows(20).skip(1).any(|w| w.starts_with(b"\x7fELF\x02\x01\x01") && w[18] == 247 && w[19] == 0);
    assert!(bpf_elf, "{} does not embed the eBPF object: build it with `cargo xtask build-ebpf` first", bin.display());
}

#[test]
fn the_tarball_holds_the_static_agent_unit_config_man_pages_and_completions() {
    let name = format!("enforcer-{}-x86_64-linux", version());
    let tarball = artifact(&format!("{name}.tar.gz"));
    let listing = run(Command::new("tar").arg("-tzf").arg(&tarball));
    let files: BTreeSet<&str> =
        listing.lines().filter(|l| !l.ends_with('/')).map(|l| l.strip_prefix(&format!("{name}/")).unwrap()).collect();
    for f in [
        "enforcer",
        "enforcer.service",
        "enforcer.toml",
        "README.md",
        "man/enforcer.1",
        "man/enforcer-run.1",
        "man/enforcer-sockets.1",
        "completions/enforcer",
        "completions/_enforcer",
        "completions/enforcer.fish",
    ] {
        assert!(files.contains(f), "{f} is not in {}: {files:?}", tarball.display());
    }
    let dir = Scratch::new("enforcer-dist");
    run(Command::new("tar").arg("-xzf").arg(&tarball).arg("-C").arg(&dir.0));
    let top = dir.0.join(&name);
    assert_static_agent(&top.join("enforcer"));
    for (file, source) in [("enforcer.service", "systemd/enforcer.service"), ("enforcer.toml", "enforcer.toml")] {
        assert_eq!(
            std::fs::read_to_string(top.join(file)).unwrap(),
            deploy(source),
            "{file} differs from deploy/{source}"
        );
    }
    let run_page = std::fs::read_to_string(top.join("man/enforcer-run.1")).unwrap();
    assert!(run_page.contains("threshold"), "enforcer-run.1 lacks run's options");
}

#[test]
fn the_debian_package_installs_the_agent_its_unit_and_config() {
    tool("dpkg-deb", "dpkg");
    let deb = artifact(&format!("enforcer_{}_amd64.deb", version()));
    let field = |f: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f)).trim().to_owned();
    assert_eq!(field("Package"), "enforcer");
    assert_eq!(field("Version"), version());
    assert_eq!(field("Architecture"), "amd64");

    // Installed for real, by dpkg, over overlays of /etc, /usr and /var in a mount namespace of
    // the test's own: the host's files and package database are untouched.
    let analyze = tool("systemd-analyze", "systemd");
    tool("man", "man-db");
    let scratch = Scratch::new("enforcer-dist");
    let mut script = String::from("set -e\n");
    script += &overlays(scratch.path(), &["/etc", "/usr", "/var"]);
    script += &format!(
        "dpkg -i {deb} >/dev/null\n\
         echo version: $(/usr/bin/enforcer --version)\n\
         echo conffiles: $(cat /var/lib/dpkg/info/enforcer.conffiles)\n\
         echo man: $(man -w enforcer-run)\n\
         echo unit: $(grep ^ExecStart= /usr/lib/systemd/system/enforcer.service)\n\
         {analyze} verify enforcer.service\n\
         /usr/bin/enforcer check-config /etc/enforcer/enforcer.toml\n\
         dpkg -r enforcer >/dev/null\n\
         echo after remove: $(ls /usr/bin/enforcer 2>&1 >/dev/null | wc -l) $(ls /etc/enforcer/enforcer.toml)\n",
        deb = deb.display()
    );
    let out =
        Command::new("unshare").args(["--mount", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script}\n{stdout}{stderr}");
    assert_eq!(stderr.trim(), "", "dpkg or systemd-analyze verify complained:\n{stdout}");
    let line =
        |key: &str| stdout.lines().find_map(|l| l.strip_prefix(key)).unwrap_or_else(|| panic!("{key}\n{stdout}"));
    assert_eq!(line("version: "), format!("enforcer {}", version()));
    assert_eq!(line("conffiles: "), "/etc/enforcer/enforcer.toml", "the config is the operator's");
    assert_eq!(line("man: "), "/usr/share/man/man1/enforcer-run.1.gz");
    assert!(line("unit: ").starts_with("ExecStart=/usr/bin/enforcer "), "{stdout}");
    // Removed: the binary goes, the config (a conffile) stays until purge.
    assert_eq!(line("after remove: "), "1 /etc/enforcer/enforcer.toml");
}

#[test]
fn the_oci_image_is_the_static_agent_alone() {
    let skopeo = tool("skopeo", "skopeo");
    let umoci = tool("umoci", "umoci");
    let archive = artifact(&format!("enforcer-{}-oci.tar", version()));
    // skopeo reads the archive and checks every blob against its digest on the way.
    let copy = Scratch::new("enforcer-dist");
    run(Command::new(&skopeo)
        .args(["copy", "-q"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("dir:{}", copy.0.display())));
    let config: serde_json::Value = serde_json::from_str(&run(Command::new(&skopeo)
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", archive.display()))))
    .unwrap();
    assert_eq!(config["config"]["Entrypoint"], serde_json::json!(["/usr/bin/enforcer"]), "{config}");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(1), "one layer, no base: {config}");

    // umoci unpacks it as a runtime would: a rootfs that holds the binary and nothing else.
    let bundle = Scratch::new("enforcer-dist");
    let layout = dist().join("oci");
    let bundle_dir = bundle.0.join("bundle");
    run(Command::new(&umoci)
        .args(["unpack", "--image"])
        .arg(format!("{}:{}", layout.display(), version()))
        .arg(&bundle_dir));
    let rootfs = bundle_dir.join("rootfs");
    let listing = run(Command::new("find").arg(&rootfs).args(["-type", "f"]));
    assert_eq!(
        listing.trim(),
        rootfs.join("usr/bin/enforcer").display().to_string(),
        "the image holds more than the agent"
    );
    assert_static_agent(&rootfs.join("usr/bin/enforcer"));
    let runtime: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle_dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(runtime["process"]["args"][0], "/usr/bin/enforcer");
}
