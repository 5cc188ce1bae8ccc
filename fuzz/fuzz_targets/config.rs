//! `--config` TOML: never panic; every error names what is wrong in one line.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Err(e) = enforcer::config::check_config_text(s) {
        assert!(!e.is_empty());
    }
});
