//! Duration, CIDR and fairness flags: never panic; what parses is in range.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(d) = enforcer::model::units::parse_duration(s) {
        assert!(d >= std::time::Duration::from_millis(1));
    }
    if let Ok(net) = enforcer::model::units::parse_cidr(s) {
        assert!(net.prefix_len() <= net.max_prefix_len());
    }
    if let Ok(enforcer::model::fairness::Fairness::RemotePrefix { v4, v6 }) = enforcer::model::fairness::parse_fairness(s) {
        assert!(v4 <= 32 && v6 <= 128);
    }
});
