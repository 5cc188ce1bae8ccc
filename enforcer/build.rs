//! Embeds the eBPF object that `cargo xtask build-ebpf` built. The object is built in exactly
//! one place (xtask); this only finds it and tells cargo to rebuild when it changes.
use std::{env, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let target_dir =
        env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| manifest.join("..").join("target"));
    let object = target_dir.join("bpfel-unknown-none/release/enforcer");
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    if !object.exists() {
        panic!("\n\nThe eBPF object {} is missing.\nBuild it first with: cargo xtask build-ebpf\n\n", object.display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("enforcer.bpf.o");
    std::fs::copy(&object, &out).expect("copy the eBPF object into OUT_DIR");
}
