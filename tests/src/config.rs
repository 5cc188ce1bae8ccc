//! Config files for the agent: written to the temp directory, removed on drop, and checked by
//! the agent's own `check-config`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::{enforcer_bin, process::COMMAND_LIMIT, process::output_within, unique};

/// A config file in the temp directory, removed on drop.
pub struct ConfigFile(PathBuf);

impl ConfigFile {
    pub fn new(text: &str) -> Self {
        let file = Self(std::env::temp_dir().join(format!("{}.toml", unique("enforcer-config"))));
        file.write(text);
        file
    }

    /// Replaces the file whole, as editors and config management do: a reload never reads
    /// half a file.
    pub fn write(&self, text: &str) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &self.0).unwrap_or_else(|e| panic!("renaming to {}: {e}", self.0.display()));
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `enforcer check-config` on this file.
    pub fn check(&self) -> Output {
        check_config(&self.0)
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `enforcer check-config FILE`.
pub fn check_config(file: &Path) -> Output {
    output_within(Command::new(enforcer_bin()).arg("check-config").arg(file), COMMAND_LIMIT)
}
