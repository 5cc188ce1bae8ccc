//! Configuration: the flags of `enforcer run` (`flags`, clap), the `--config` file (`file`,
//! serde), and the settings they resolve to (`settings`), which the agent records in its pins
//! and the CLI reads back. One setting is one flag, one key, one field. Imports `policy`,
//! `bpf::pins`, `host`, `model`.
pub mod file;
pub mod flags;
pub mod settings;

pub use self::settings::{Settings, UsageError, check_config, check_config_text, log_format};
