//! enforcer: destroys TCP connections that hold more than their fair share of memory without
//! making progress. The binary (`main.rs`) is a thin shell over these modules; the library
//! exists so the parsers and the policy can be fuzzed and tested on their own.
pub mod attached;
pub mod attribution;
pub mod backoff;
pub mod btf;
pub mod cli;
pub mod commands;
pub mod contained;
pub mod destroy;
pub mod filter;
pub mod iter_link;
pub mod journal;
pub mod kernel_log;
pub mod loader;
pub mod man;
pub mod metrics;
pub mod netns;
pub mod notify;
pub mod offsets;
pub mod pins;
pub mod policy;
pub mod pressure;
pub mod settings;
pub mod snapshot;
pub mod socket;
pub mod sys;
pub mod units;
