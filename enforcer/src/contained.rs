//! Keys of the `CONTAINED` trie: a remote network as the kernel side looks it up. IPv4 is kept
//! IPv4-mapped (`::ffff:a.b.c.d`, prefix 96 + N), so one trie serves both families.
use std::net::{Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use enforcer_common::{ContainedAddr, V4_MAPPED_PREFIX, v4_mapped};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The trie key of `net`, with the host bits cleared (the trie ignores them, but would hand
/// them back when listed).
pub fn key(net: IpNet) -> Key<ContainedAddr> {
    match net.trunc() {
        IpNet::V4(n) => Key::new(V4_MAPPED_PREFIX + u32::from(n.prefix_len()), v4_mapped(words4(n.addr()))),
        IpNet::V6(n) => Key::new(u32::from(n.prefix_len()), words6(n.addr())),
    }
}

/// The network a trie key stands for: an IPv4-mapped prefix of /96 or longer is IPv4.
pub fn net(key: &Key<ContainedAddr>) -> Option<IpNet> {
    let (len, data) = (key.prefix_len(), key.data());
    let bytes: Vec<u8> = data.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
    match v6.to_ipv4_mapped() {
        Some(v4) if len >= V4_MAPPED_PREFIX => Ipv4Net::new(v4, (len - V4_MAPPED_PREFIX) as u8).ok().map(IpNet::V4),
        _ => Ipv6Net::new(v6, u8::try_from(len).ok()?).ok().map(IpNet::V6),
    }
}

/// An address as words whose bytes are in network order (how the kernel side keeps them).
fn words4(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn words6(addr: Ipv6Addr) -> ContainedAddr {
    let o = addr.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn ipv4_is_mapped_into_ipv6() {
        let k = key(n("10.1.2.3/24"));
        assert_eq!(k.prefix_len(), 120);
        let bytes: Vec<u8> = k.data().iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 0]);
        // What sock_ops looks up for a remote: `remote_ip4` is in network order.
        let host = key(IpNet::from(std::net::IpAddr::from([127, 0, 0, 5])));
        assert_eq!((host.prefix_len(), host.data()), (128, v4_mapped(u32::from_ne_bytes([127, 0, 0, 5]))));
    }

    #[test]
    fn keys_round_trip() {
        for s in ["10.1.2.0/24", "127.0.0.5/32", "0.0.0.0/0", "2001:db8::/32", "::1/128", "::/0"] {
            assert_eq!(net(&key(n(s))), Some(n(s)), "{s}");
        }
        // Host bits are cleared.
        assert_eq!(net(&key(n("10.1.2.3/24"))), Some(n("10.1.2.0/24")));
        // An IPv4-mapped IPv6 prefix is IPv4.
        assert_eq!(net(&key(n("::ffff:10.0.0.0/104"))), Some(n("10.0.0.0/8")));
    }
}
