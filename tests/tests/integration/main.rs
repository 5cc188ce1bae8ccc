//! The integration tests against the real kernel, as one test binary with a module per topic
//! (as aya's `integration-test` crate does): one link of the dependency tree instead of one per
//! topic. Test names are `topic::name`, so `cargo xtask test -- tracking::` runs one topic.
//! Run as root, one at a time (`cargo xtask test`): the tests share the kernel.
//!
//! `deploy` checks the files that ship (unit, manifests, artifacts) and `fleet` runs a real
//! CrowdSec: both run on the host only; every other topic also runs in the VM legs (`cargo xtask test --kernel 6.1`).
#![allow(clippy::unwrap_used, reason = "tests panic with context")]

mod config_parity;
mod containers;
mod containment;
mod deploy;
mod enforcement;
mod fleet;
mod judgement;
mod lifecycle;
mod metrics;
mod operators;
mod paths;
mod proxy;
mod real_software;
mod receive;
mod reliability;
mod remotes;
mod scripted_peer;
mod shaped_peers;
mod top;
mod tracking;
mod walks;
mod wan;
