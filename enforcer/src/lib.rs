//! enforcer: destroys TCP connections that hold more than their fair share of memory without
//! making progress. The binary (`main.rs`) is a thin shell over these modules; the library
//! exists so the parsers and the policy can be fuzzed and tested on their own.
//!
//! Layers, lowest first; a module imports only from layers below its own (ARCHITECTURE.md, and
//! `cargo xtask lint` checks it):
//! `model` → `policy` → `host` → `bpf` → `config` → `observe` → `fleet` → `agent` → `commands` →
//! `cli`.
pub mod model;

pub mod policy;

pub mod host;

pub mod bpf;

pub mod config;

pub mod observe;

pub mod fleet;

pub mod agent;

pub mod commands;

pub mod cli;
