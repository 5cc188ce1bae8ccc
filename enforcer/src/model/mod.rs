//! The domain's values, pure: the socket as the rule judges it and the operator reads it, the
//! units and value parsers operators type (sizes, durations, CIDRs, endpoints, states, fairness
//! modes) and the forms tables print. Imports only enforcer-common.
pub mod endpoint;
pub mod fairness;
pub mod prefixes;
pub mod socket;
pub mod units;
