//! The subcommands that read a running agent's pins, one file each, with its flags and its
//! filter beside it. (`run` is the agent: `crate::agent`.)
pub mod kills;
pub mod sockets;
pub mod status;
pub mod top;

use std::path::PathBuf;

use clap::Args;

use crate::bpf::pins::DEFAULT_PIN_DIR;

#[derive(Debug, Clone, Args)]
pub struct PinDirArg {
    /// Directory on a bpf filesystem where the agent pins its maps.
    #[arg(long, env = "ENFORCER_PIN_DIR", default_value = DEFAULT_PIN_DIR, value_name = "DIR")]
    pub pin_dir: PathBuf,
}

/// Whether a filter of repeatable values passes: none given, or one matches.
fn any<T>(wanted: &[T], pass: impl Fn(&T) -> bool) -> bool {
    wanted.is_empty() || wanted.iter().any(pass)
}
