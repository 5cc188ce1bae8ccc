//! The endpoints and states operators filter by, as ss takes them: an address, a network or
//! both, with or without a port; a TCP state by its ss name.
use std::net::SocketAddr;

use ipnet::IpNet;

use super::{socket::state_name, units::parse_cidr};

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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
