//! Containment of repeat offenders: the `CONTAINED` trie that sock_ops looks a new
//! connection's remote up in, to give it a small send buffer. The agent writes it
//! ([`Containment`]), `enforcer status` lists it ([`read`]). Keys are remote networks as the
//! kernel side looks them up: IPv4 is kept IPv4-mapped (`::ffff:a.b.c.d`, prefix 96 + N), so
//! one trie serves both families.
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail};
use aya::maps::{Map, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie};
use enforcer_common::{CONTAINED_CAPACITY, ContainedAddr, Containment as Value, V4_MAPPED_PREFIX, names, v4_mapped};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::pins::{PinDir, PinError};

/// The agent's end of the trie, taken from the loaded object.
pub struct Containment {
    trie: LpmTrie<MapData, ContainedAddr, Value>,
}

impl Containment {
    /// `map` is the loader's pinned `CONTAINED` trie.
    pub fn new(map: Map) -> Result<Self> {
        Ok(Self { trie: LpmTrie::try_from(map).context("the contained map")? })
    }

    /// Contains `net`: its connections established from now on get a send buffer of `sndbuf`
    /// bytes (`SO_SNDBUF`: the kernel doubles it and caps it at `net.core.wmem_max`), so each
    /// can hold only that much before the rule judges it. Connections that already exist keep
    /// theirs. Containing a network again replaces its buffer size.
    pub fn contain(&mut self, net: IpNet, sndbuf: u32) -> Result<()> {
        if sndbuf == 0 || sndbuf > i32::MAX as u32 {
            bail!("a send buffer for {net} must be between 1 and {} bytes, not {sndbuf}", i32::MAX);
        }
        self.trie
            .insert(&key(net), Value { sndbuf, _pad: 0 }, 0)
            .with_context(|| format!("containing {net} (at most {CONTAINED_CAPACITY} networks at once)"))
    }

    /// Ends the containment of `net` (as it was contained, not a network inside it). New
    /// connections get the kernel's usual send buffer again; existing ones keep what they have.
    /// Releasing a network that is not contained does nothing.
    pub fn release(&mut self, net: IpNet) -> Result<()> {
        match self.trie.remove(&key(net)) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.with_context(|| format!("releasing {net}")),
        }
    }
}

/// The networks a running agent contains, and the send buffer (bytes, as given to
/// `SO_SNDBUF`) their new connections get.
pub fn read(pins: &PinDir) -> Result<Vec<(IpNet, u32)>, PinError> {
    let (path, map) = pins.map(names::PIN_CONTAINED)?;
    let err = |source| PinError::Map { path: path.clone(), source };
    let trie: LpmTrie<_, ContainedAddr, Value> = map.try_into().map_err(err)?;
    let mut out = Vec::new();
    for item in trie.iter() {
        let (key, value) = item.map_err(err)?;
        // Only keys the agent wrote are there; one it cannot read back is skipped.
        if let Some(net) = net(&key) {
            out.push((net, value.sndbuf));
        }
    }
    Ok(out)
}

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
