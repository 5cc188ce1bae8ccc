//! Configuration: the flags of `enforcer run` and the keys of its `--config` file as one type
//! (`flags`: clap and serde), the file's parsing with errors that name the key (`file`), each
//! value read with its flag's parser (`values`), and the settings they resolve to
//! (`settings`), which the agent records in its pins and the CLI reads back. One setting is one
//! field. Imports `policy`, `bpf::pins`, `host`, `model`.
pub mod crowdsec;
pub mod file;
pub mod flags;
pub mod settings;
mod values;

pub use self::settings::{Settings, UsageError, check_config, check_config_text, log_format};
