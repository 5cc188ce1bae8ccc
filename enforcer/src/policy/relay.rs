//! Proxy mode: what a socket relays for, joined over one snapshot. The kernel says, for each
//! tracked socket, which socket its bytes were last written to (`Socket::relay`); a socket
//! relays for someone while that socket is open, or while an open socket's bytes were last
//! written into it (a request awaiting, or streaming, its response).
use std::collections::HashSet;

use crate::model::socket::Socket;

/// What a socket does for the sockets it relays with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Relays with a socket that is still open: its bytes last went to an open socket, or an
    /// open socket's bytes last came into it. However quiet (a long-poll that pushes nothing),
    /// it is never an orphan.
    Live,
    /// It relayed, and the socket its bytes went to has closed, and no open socket's bytes
    /// come into it: whatever it still receives goes nowhere. `since_ms`: since its bytes were
    /// last relayed.
    Orphan { since_ms: u64 },
    /// Never seen relaying (not a proxy's socket, or proxy mode is off).
    Unknown,
}

impl RelayState {
    /// As `sockets --json` and the table name it.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Self::Live => Some("live"),
            Self::Orphan { .. } => Some("orphan"),
            Self::Unknown => None,
        }
    }
}

/// The relays of one snapshot, for [`RelayIndex::state`].
#[derive(Debug, Default)]
pub struct RelayIndex {
    open: HashSet<u64>,
    /// Sockets an open socket's bytes were last written into.
    fed: HashSet<u64>,
}

impl RelayIndex {
    /// `sockets` must be every tracked socket: one missing looks closed.
    pub fn of(sockets: &[Socket]) -> Self {
        Self {
            open: sockets.iter().map(|s| s.cookie).collect(),
            fed: sockets.iter().filter_map(|s| s.relay.map(|r| r.to)).collect(),
        }
    }

    pub fn state(&self, s: &Socket) -> RelayState {
        if self.fed.contains(&s.cookie) {
            return RelayState::Live;
        }
        match s.relay {
            Some(r) if self.open.contains(&r.to) => RelayState::Live,
            Some(r) => RelayState::Orphan { since_ms: r.last_ms },
            None => RelayState::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::socket::Relay, policy::testing::sock};

    fn relaying(cookie: u64, to: u64, last_ms: u64) -> Socket {
        let mut s = sock(cookie, "192.0.2.1:80", 0, 0, 0);
        s.relay = Some(Relay { to, last_ms, bytes: 100 });
        s
    }

    #[test]
    fn a_relay_is_live_while_its_partner_is_open_and_an_orphan_after() {
        // Client 1's request went to upstream 2, whose pushes go to client 1.
        let (client, upstream) = (relaying(1, 2, 2000), relaying(2, 1, 500));
        let both = RelayIndex::of(&[client.clone(), upstream.clone()]);
        assert_eq!(both.state(&upstream), RelayState::Live);
        assert_eq!(both.state(&client), RelayState::Live);
        // The client left: the upstream's pushes go nowhere.
        let alone = RelayIndex::of(std::slice::from_ref(&upstream));
        assert_eq!(alone.state(&upstream), RelayState::Orphan { since_ms: 500 });
    }

    #[test]
    fn a_request_awaiting_its_response_is_live() {
        // A long-poll: client 1's request went to upstream 2, which has sent nothing yet.
        let (client, upstream) = (relaying(1, 2, 90_000), sock(2, "198.51.100.1:80", 0, 0, 0));
        let index = RelayIndex::of(&[client, upstream.clone()]);
        assert_eq!(index.state(&upstream), RelayState::Live);
        assert_eq!(RelayIndex::of(std::slice::from_ref(&upstream)).state(&upstream), RelayState::Unknown);
    }
}
