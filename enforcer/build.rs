//! Embeds the eBPF object that `cargo xtask build-ebpf` built. The object is built in exactly
//! one place (xtask); this only finds it and tells cargo to rebuild when it changes.
//!
//! Without the object (a fresh clone), it embeds an empty stub instead, as aya-template does, so
//! `cargo check`, `cargo clippy` and the unit tests work before the eBPF toolchain is set up; the
//! agent built that way refuses to start with one line saying what to run.
use std::{env, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| manifest.join("..").join("target"));
    let object = target_dir.join("bpfel-unknown-none/release/enforcer");
    // Also while the object is missing: cargo then reruns this script on every build, so the
    // binary picks the object up as soon as it exists.
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("enforcer.bpf.o");
    if object.exists() {
        std::fs::copy(&object, &out).expect("copy the eBPF object into OUT_DIR");
    } else {
        std::fs::write(&out, []).expect("write the empty eBPF stub into OUT_DIR");
        // An object that reappears with an old mtime (a hard link cargo restores from its cache,
        // a move) would not look changed; adding it changes its directory.
        if let Some(dir) = object.parent() {
            println!("cargo:rerun-if-changed={}", dir.display());
        }
        println!(
            "cargo:warning=the eBPF object {} is missing: this enforcer embeds an empty stub and will not run; \
             build the object with `cargo xtask build-ebpf`, then rebuild",
            object.display()
        );
    }
}
