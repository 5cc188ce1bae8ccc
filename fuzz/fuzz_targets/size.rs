//! `--threshold` sizes: never panic; a parsed size of a plain number is that number.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(n) = enforcer::model::units::parse_size(s)
        && let Ok(plain) = s.trim().parse::<u64>()
    {
        assert_eq!(n, plain);
    }
});
