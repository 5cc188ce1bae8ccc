//! Proxy mode: what a socket relays for, joined over one snapshot. The kernel says, for each
//! tracked socket, which socket its bytes were last written to and when (`Socket::relay`). From
//! that, a connection is:
//! - **live** while it streams to an open connection or from one (bytes went to or came from one
//!   within `--orphan-after`), or, for a connection this host opened (an upstream), while a
//!   request from an open connection is still unanswered (that connection's bytes were last written into
//!   it, after its own last went out: a long-poll, however quiet);
//! - an **orphan** once the connection its bytes last went to has closed and it received more
//!   since (which goes nowhere): whatever it still receives is read for nobody;
//! - otherwise neither, and the per-remote cap's idle rule judges it as without `--proxy`.
//!
//! A relay the kernel paired wrongly (a thread that reads one connection and writes an unrelated
//! one soon after) can keep an orphan from looking like one, never the other way round: the
//! orphan needs the very connection its bytes went to closed, and bytes received after.
use std::collections::{HashMap, HashSet};

use crate::model::socket::{Opened, Socket};

/// What a socket does for the sockets it relays with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Streams to an open connection, or awaits a response for one.
    Live,
    /// Its bytes went to a connection that has closed since, and it received more after:
    /// `since_ms` since its bytes were last relayed.
    Orphan { since_ms: u64 },
    /// Neither (not a proxy's socket, relays long ago, or proxy mode is off).
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
    /// For each socket an open socket's bytes were last written into: since the most recent
    /// such write.
    fed: HashMap<u64, u64>,
    /// `--orphan-after`: how long a relay keeps a stream live, and how long an orphan relayed
    /// nothing before the cap takes it.
    orphan_after_ms: u64,
    /// The agent's interval: the walks date a socket's receipt up to one late.
    interval_ms: u64,
}

impl RelayIndex {
    /// `sockets` must be every tracked socket: one missing looks closed (the cap takes an orphan
    /// only when two judgements in a row agree, `RelayMemory`).
    pub fn of(sockets: &[Socket], orphan_after_ms: u64, interval_ms: u64) -> Self {
        let mut fed: HashMap<u64, u64> = HashMap::new();
        for r in sockets.iter().filter_map(|s| s.relay) {
            let e = fed.entry(r.to).or_insert(r.last_ms);
            *e = (*e).min(r.last_ms);
        }
        Self { open: sockets.iter().map(|s| s.cookie).collect(), fed, orphan_after_ms, interval_ms }
    }

    pub fn state(&self, s: &Socket) -> RelayState {
        let fed = self.fed.get(&s.cookie).copied();
        // Receiving a stream: an open connection's bytes were written into it lately.
        if fed.is_some_and(|ms| ms < self.orphan_after_ms) {
            return RelayState::Live;
        }
        // An upstream with a request of an open connection unanswered: fed after its own bytes
        // last went out (or never went out). A client's connection is fed by its response, which
        // answers nothing, so only a connection this host opened (or one whose opener is not
        // known) awaits.
        if s.opened != Opened::Peer
            && let Some(fed_ms) = fed
            && s.relay.is_none_or(|r| fed_ms <= r.last_ms)
        {
            return RelayState::Live;
        }
        let Some(r) = s.relay else { return RelayState::Unknown };
        if self.open.contains(&r.to) {
            return if r.last_ms < self.orphan_after_ms { RelayState::Live } else { RelayState::Unknown };
        }
        // Bytes arrived after the last relay (the walk that dated them came at least an interval
        // after it), and went nowhere.
        if s.rx_idle_ms.saturating_add(self.interval_ms) < r.last_ms {
            RelayState::Orphan { since_ms: r.last_ms }
        } else {
            RelayState::Unknown
        }
    }
}

/// What the cap saw of relays in the last judgement: a socket is taken as an orphan only when two
/// judgements in a row found it one, and never when the last one found it live (a walk can miss
/// a socket, which then looks closed for an interval).
#[derive(Debug, Default, Clone)]
pub struct RelayMemory {
    pub live: HashSet<u64>,
    pub orphans: HashSet<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::socket::Relay, policy::testing::sock};

    fn relaying(cookie: u64, opened: Opened, to: u64, last_ms: u64, rx_idle_ms: u64) -> Socket {
        let mut s = sock(cookie, "192.0.2.1:80", 0, 0, 0);
        (s.opened, s.rx_idle_ms) = (opened, rx_idle_ms);
        s.relay = Some(Relay { to, last_ms, bytes: 100 });
        s
    }

    fn index(sockets: &[Socket]) -> RelayIndex {
        RelayIndex::of(sockets, 10_000, 250)
    }

    #[test]
    fn a_stream_is_live_while_its_client_is_open_and_an_orphan_once_it_left_and_more_came() {
        // Client 1's request went to upstream 2 a minute ago, whose pushes go to client 1.
        let client = relaying(1, Opened::Peer, 2, 60_000, 500);
        let upstream = relaying(2, Opened::Here, 1, 500, 500);
        let both = index(&[client.clone(), upstream.clone()]);
        assert_eq!(both.state(&upstream), RelayState::Live);
        assert_eq!(both.state(&client), RelayState::Live);
        // The client left; a push came 2 s after the last relay: it goes nowhere.
        let orphan = relaying(2, Opened::Here, 1, 3_000, 1_000);
        assert_eq!(index(std::slice::from_ref(&orphan)).state(&orphan), RelayState::Orphan { since_ms: 3_000 });
        // Nothing came since the last relay (an idle pooled upstream, or a response in fan-out
        // whose last client left): no orphan, the idle rule judges it.
        let pooled = relaying(2, Opened::Here, 1, 3_000, 3_100);
        assert_eq!(index(std::slice::from_ref(&pooled)).state(&pooled), RelayState::Unknown);
    }

    #[test]
    fn an_unanswered_request_keeps_an_upstream_live_however_quiet() {
        // A long-poll: client 1's request went to upstream 2, which has sent nothing yet.
        let (client, upstream) = (relaying(1, Opened::Peer, 2, 90_000, 90_000), sock(2, "198.51.100.1:80", 0, 0, 0));
        let mut upstream = upstream;
        upstream.opened = Opened::Here;
        assert_eq!(index(&[client.clone(), upstream.clone()]).state(&upstream), RelayState::Live);
        // A pooled upstream reused for a new long-poll: the request came after its last response.
        let reused = relaying(2, Opened::Here, 7, 200_000, 200_000);
        assert_eq!(index(&[client.clone(), reused.clone()]).state(&reused), RelayState::Live);
        // The client left: nothing awaits.
        assert_eq!(index(std::slice::from_ref(&upstream)).state(&upstream), RelayState::Unknown);
    }

    #[test]
    fn idle_connections_are_not_live_forever() {
        // A client's keep-alive connection after its response, and the pooled upstream that
        // served it, both open: live while the relay is recent, then for the idle rule.
        let client = relaying(1, Opened::Peer, 2, 30_000, 20_000);
        let upstream = relaying(2, Opened::Here, 1, 20_000, 20_000);
        let both = index(&[client.clone(), upstream.clone()]);
        assert_eq!(both.state(&client), RelayState::Unknown, "a response answers no request of the client's");
        assert_eq!(both.state(&upstream), RelayState::Unknown);
    }
}
