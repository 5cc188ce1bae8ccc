//! The filters of `enforcer sockets` and `enforcer kills`, as ss, tcptop and tcplife have them:
//! what each flag accepts (the parsers clap calls) and whether a row passes. Pure: the commands
//! resolve what needs the system (a namespace path to its inode, a cgroup's path) first.
//!
//! Within one repeatable flag any value may match; across flags every one must.
use std::{net::SocketAddr, os::unix::fs::MetadataExt, path::Path};

use ipnet::IpNet;

use crate::{
    attribution::cgroup_within,
    cli::parse_cidr,
    journal::Kill,
    policy::Reason,
    socket::{Socket, state_name},
};

/// An address, a network or both, with or without a port: `10.0.0.1`, `10.0.0.0/8`,
/// `10.0.0.1:80`, `[::1]:443`, `10.0.0.0/8:80`, `:80`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub net: Option<IpNet>,
    pub port: Option<u16>,
}

impl Endpoint {
    pub fn matches(&self, addr: SocketAddr) -> bool {
        self.net.is_none_or(|n| n.contains(&addr.ip())) && self.port.is_none_or(|p| p == addr.port())
    }
}

/// Parses an [`Endpoint`].
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let bad = || format!("`{s}` is not ADDR, CIDR, ADDR:PORT or :PORT (examples: 10.0.0.1:80, [::1]:443, 10.0.0.0/8)");
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(Endpoint { net: Some(IpNet::from(a.ip())), port: Some(a.port()) });
    }
    // A network without a port: its own message (host bits set, prefix too long) says more.
    if s.rsplit_once('/').is_some_and(|(_, len)| !len.contains(':')) {
        return Ok(Endpoint { net: Some(parse_cidr(s)?), port: None });
    }
    // An address (`::1` too, before it is taken for a port).
    if let Ok(net) = parse_cidr(s) {
        return Ok(Endpoint { net: Some(net), port: None });
    }
    if let Some(port) = s.strip_prefix(':').or_else(|| s.strip_prefix("*:")) {
        return Ok(Endpoint { net: None, port: Some(port.parse().map_err(|_| bad())?) });
    }
    // A network with a port (`10.0.0.0/8:80`, `[2001:db8::/32]:443`).
    let (net, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let net = parse_cidr(net.trim_start_matches('[').trim_end_matches(']'))?;
    Ok(Endpoint { net: Some(net), port: Some(port.parse().map_err(|_| bad())?) })
}

/// A TCP state as ss names it (`established`, `fin-wait-1`, `close-wait`; `_` works for `-`),
/// as the kernel's number.
pub fn parse_state(s: &str) -> Result<u8, String> {
    let want = s.to_ascii_uppercase().replace('-', "_");
    // ss writes FIN-WAIT-1 where the kernel's header says FIN_WAIT1.
    let want = want.replace("WAIT_1", "WAIT1").replace("WAIT_2", "WAIT2");
    (1..=12).find(|&n| state_name(n) == want).ok_or_else(|| {
        format!(
            "`{s}` is not a TCP state: established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, time-wait, \
             close, close-wait, last-ack, closing"
        )
    })
}

/// A network namespace: its inode (`lsns -t net`), a path to one (`/run/netns/NAME`,
/// `/proc/PID/ns/net`) or a name under /run/netns, as its inode.
pub fn parse_netns(s: &str) -> Result<u64, String> {
    if let Ok(inode) = s.parse() {
        return Ok(inode);
    }
    let path = if s.contains('/') { Path::new(s).to_owned() } else { Path::new("/run/netns").join(s) };
    std::fs::metadata(&path).map(|m| m.ino()).map_err(|e| {
        format!("`{s}` is not a network namespace inode, path or /run/netns name ({}: {e})", path.display())
    })
}

/// A decision's reason as the kill log writes it (`slow_drain`; `-` works for `_`).
pub fn parse_reason(s: &str) -> Result<Reason, String> {
    let want = s.replace('-', "_");
    Reason::ALL.into_iter().find(|r| r.as_str() == want).ok_or_else(|| {
        let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        format!("`{s}` is not a reason: {}", names.join(", "))
    })
}

/// Which sockets `enforcer sockets` lists.
#[derive(Debug, Clone, Default)]
pub struct SocketFilter {
    /// `Some(true)`: IPv4 addresses only (an IPv4 peer of a dual-stack socket counts);
    /// `Some(false)`: IPv6 only.
    pub ipv4: Option<bool>,
    pub states: Vec<u8>,
    pub local: Vec<Endpoint>,
    pub remote: Vec<Endpoint>,
    pub sports: Vec<u16>,
    pub dports: Vec<u16>,
    /// Local or remote port.
    pub ports: Vec<u16>,
    /// A cgroup path below the cgroup2 mount: that cgroup and everything below it.
    pub cgroup: Option<String>,
    pub netns: Option<u64>,
}

fn any<T>(wanted: &[T], pass: impl Fn(&T) -> bool) -> bool {
    wanted.is_empty() || wanted.iter().any(pass)
}

impl SocketFilter {
    /// Whether `s` passes; `cgroup` is its cgroup's path (`None`: unknown, which a
    /// `--cgroup` filter excludes).
    pub fn matches(&self, s: &Socket, cgroup: Option<&str>) -> bool {
        self.ipv4.is_none_or(|v4| s.local.ip().to_canonical().is_ipv4() == v4)
            && any(&self.states, |st| *st == s.raw.state)
            && any(&self.local, |e| e.matches(s.local))
            && any(&self.remote, |e| e.matches(s.remote))
            && any(&self.sports, |p| *p == s.local.port())
            && any(&self.dports, |p| *p == s.remote.port())
            && any(&self.ports, |p| *p == s.local.port() || *p == s.remote.port())
            && self.netns.is_none_or(|n| n == s.netns)
            && self.cgroup.as_deref().is_none_or(|dir| cgroup.is_some_and(|c| cgroup_within(c, dir)))
    }
}

/// Which decisions `enforcer kills` shows.
#[derive(Debug, Clone, Default)]
pub struct KillFilter {
    /// Decisions at or after this wall-clock time (ms since the epoch).
    pub since_unix_ms: Option<u64>,
    /// Event names (`destroyed`, `would_destroy`, `destroy_failed`).
    pub events: Vec<&'static str>,
    pub reasons: Vec<Reason>,
}

impl KillFilter {
    pub fn matches(&self, k: &Kill) -> bool {
        self.since_unix_ms.is_none_or(|t| k.unix_ms >= t)
            && any(&self.events, |e| *e == k.event)
            && any(&self.reasons, |r| r.as_str() == k.reason)
    }
}

#[cfg(test)]
mod tests {
    use enforcer_common::{AF_INET, SnapshotEntry};

    use super::*;

    fn socket(local: &str, remote: &str, state: u8) -> Socket {
        let (l, r): (SocketAddr, SocketAddr) = (local.parse().expect("local"), remote.parse().expect("remote"));
        let mut e = SnapshotEntry { state, netns: 7, ..SnapshotEntry::default() };
        e.record.family = AF_INET;
        let mut s = Socket::new(&e);
        (s.local, s.remote) = (l, r);
        s
    }

    #[test]
    fn endpoints_parse() {
        let e = |s| parse_endpoint(s).expect(s);
        assert_eq!(e("10.0.0.1:80").port, Some(80));
        assert_eq!(e("[::1]:443").net.map(|n| n.prefix_len()), Some(128));
        assert_eq!(e(":9000"), Endpoint { net: None, port: Some(9000) });
        assert_eq!(e("10.0.0.0/8"), Endpoint { net: parse_cidr("10.0.0.0/8").ok(), port: None });
        assert_eq!(e("10.0.0.0/8:80").port, Some(80));
        assert_eq!(e("2001:db8::1").port, None);
        assert_eq!(e("::1").net.map(|n| n.prefix_len()), Some(128));
        assert!(parse_endpoint("10.0.0.1:http").is_err());
        assert!(parse_endpoint("10.0.0.5/8").is_err_and(|m| m.contains("host bits")));
    }

    #[test]
    fn states_parse_as_ss_writes_them() {
        assert_eq!(parse_state("established"), Ok(1));
        assert_eq!(parse_state("FIN-WAIT-1"), Ok(4));
        assert_eq!(parse_state("close_wait"), Ok(8));
        assert!(parse_state("open").is_err());
        assert_eq!(parse_reason("slow-drain"), Ok(Reason::SlowDrain));
        assert!(parse_reason("bored").is_err());
    }

    #[test]
    fn sockets_pass_every_flag_and_any_value_of_one() {
        let s = socket("127.0.0.1:9000", "127.0.0.2:5555", 1);
        let pass = |f: SocketFilter, cg: Option<&str>| f.matches(&s, cg);
        assert!(pass(SocketFilter::default(), None));
        assert!(pass(SocketFilter { ipv4: Some(true), ..Default::default() }, None));
        assert!(!pass(SocketFilter { ipv4: Some(false), ..Default::default() }, None));
        assert!(pass(SocketFilter { sports: vec![1, 9000], ..Default::default() }, None));
        assert!(!pass(SocketFilter { sports: vec![5555], ..Default::default() }, None));
        assert!(pass(SocketFilter { dports: vec![5555], states: vec![1], ..Default::default() }, None));
        assert!(!pass(SocketFilter { dports: vec![5555], states: vec![8], ..Default::default() }, None));
        let remote = vec![parse_endpoint("127.0.0.3").expect("ep"), parse_endpoint("127.0.0.2/32").expect("ep")];
        assert!(pass(SocketFilter { remote, ..Default::default() }, None));
        let local = vec![parse_endpoint("127.0.0.1:9001").expect("ep")];
        assert!(!pass(SocketFilter { local, ..Default::default() }, None));
        assert!(pass(SocketFilter { netns: Some(7), ..Default::default() }, None));
        assert!(!pass(SocketFilter { netns: Some(8), ..Default::default() }, None));
        let cgroup = Some("/a".to_owned());
        assert!(pass(SocketFilter { cgroup: cgroup.clone(), ..Default::default() }, Some("/a/b")));
        assert!(!pass(SocketFilter { cgroup: cgroup.clone(), ..Default::default() }, Some("/ab")));
        assert!(!pass(SocketFilter { cgroup, ..Default::default() }, None));
    }
}
