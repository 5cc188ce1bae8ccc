//! What an interval's sensing hands the rule.
use crate::{model::socket::Socket, policy::Population};

/// The sockets to judge, with the population they share the threshold with.
pub(super) struct Judged {
    pub population: Population,
    pub sockets: Vec<Socket>,
    /// From a revisit: the rule's judgement says only whether a walk must decide (`revisit`).
    pub revisited: bool,
}
