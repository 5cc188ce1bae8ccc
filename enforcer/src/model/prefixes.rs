//! Networks looked up by the longest prefix that holds an address, as the kernel's LPM trie
//! looks a remote up: the rule's set of fleet decisions and the CLI's view of the contained trie
//! both answer "what contains this remote?" the way sock_ops does.
use std::{collections::HashMap, net::IpAddr};

use ipnet::IpNet;

/// `net` as the kernel's trie keeps it: host bits cleared, an IPv4-mapped IPv6 network of /96 or
/// longer as its IPv4 network (they are one key there).
pub fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(v4.into(), n.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
    .trunc()
}

/// Whether an IPv6 network wider than /96 holds IPv4-mapped addresses: in the kernel's trie it
/// would hold every IPv4 peer of that part of the space.
pub fn covers_mapped_v4(net: IpNet) -> bool {
    match net {
        IpNet::V6(n) => n.prefix_len() < 96 && n.contains(&std::net::Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)),
        IpNet::V4(_) => false,
    }
}

/// Values by network; a lookup tries the prefix lengths present, longest first.
#[derive(Debug, Clone)]
pub struct PrefixMap<T> {
    /// By (IPv6, prefix length), longest first.
    by_len: Vec<((bool, u8), HashMap<IpNet, T>)>,
    len: usize,
}

impl<T> Default for PrefixMap<T> {
    fn default() -> Self {
        Self { by_len: Vec::new(), len: 0 }
    }
}

impl<T> PrefixMap<T> {
    /// Host bits are cleared; of two values for one network, the last stays.
    pub fn new(items: impl IntoIterator<Item = (IpNet, T)>) -> Self {
        let mut by_len: HashMap<(bool, u8), HashMap<IpNet, T>> = HashMap::new();
        for (net, v) in items {
            let net = canonical(net);
            by_len.entry((net.addr().is_ipv6(), net.prefix_len())).or_default().insert(net, v);
        }
        let len = by_len.values().map(HashMap::len).sum();
        let mut by_len: Vec<_> = by_len.into_iter().collect();
        by_len.sort_by_key(|((_, prefix), _)| std::cmp::Reverse(*prefix));
        Self { by_len, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The longest network holding `ip` (an IPv4-mapped IPv6 address is IPv4) and its value.
    pub fn lookup(&self, ip: IpAddr) -> Option<(IpNet, &T)> {
        if self.len == 0 {
            return None;
        }
        let ip = ip.to_canonical();
        self.by_len.iter().filter(|((v6, _), _)| *v6 == ip.is_ipv6()).find_map(|((_, prefix), nets)| {
            let net = IpNet::new(ip, *prefix).ok()?.trunc();
            nets.get(&net).map(|v| (net, v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn the_longest_prefix_answers_and_families_stay_apart() {
        let m = PrefixMap::new([(n("10.0.0.0/8"), 1), (n("10.1.2.3/32"), 2), (n("2001:db8::/32"), 3)]);
        assert_eq!(m.len(), 3);
        let id = |s: &str| m.lookup(ip(s)).map(|(_, v)| *v);
        assert_eq!(id("10.1.2.3"), Some(2));
        assert_eq!(id("10.9.9.9"), Some(1));
        // A dual-stack socket's IPv4 peer.
        assert_eq!(id("::ffff:10.1.2.3"), Some(2));
        assert_eq!(id("11.0.0.1"), None);
        assert_eq!(id("2001:db8::7"), Some(3));
        // ::a01:203 is not 10.1.2.3.
        assert_eq!(id("::a01:203"), None);
        // Host bits are cleared; an IPv4-mapped network is IPv4.
        assert_eq!(canonical(n("::ffff:10.1.2.3/120")), n("10.1.2.0/24"));
        assert!(covers_mapped_v4(n("::/16")) && covers_mapped_v4(n("::ffff:0:0/95")));
        assert!(!covers_mapped_v4(n("2001:db8::/32")) && !covers_mapped_v4(n("::ffff:0:0/96")));
        let m = PrefixMap::new([(n("192.0.2.77/24"), ())]);
        assert_eq!(m.lookup(ip("192.0.2.1")).map(|(net, _)| net), Some(n("192.0.2.0/24")));
    }
}
