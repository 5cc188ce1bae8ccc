//! Containment: the `CONTAINED` trie that sock_ops looks a new connection's remote up in, to
//! give it a small send buffer and a user timeout. Two sources contain networks, and either may
//! hold one the other holds too: this host's rule (repeat offenders) and the fleet (CrowdSec
//! decisions). The agent's one [`Containment`] writes the trie for both, an entry while any
//! source holds it; `enforcer status` lists it ([`read`]). Keys are remote networks as the
//! kernel side looks them up: IPv4 is kept IPv4-mapped (`::ffff:a.b.c.d`, prefix 96 + N), so
//! one trie serves both families. Protected networks are written as exemptions (send buffer 0):
//! the longest prefix wins, so a protected address inside a contained range stays free.
use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context, Result, bail};
use aya::maps::{Array, Map, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie};
use enforcer_common::{
    CONTAINED_BY_CROWDSEC, CONTAINED_BY_REPEAT, CONTAINED_CAPACITY, CONTAINED_LABEL_CAPACITY, CONTAINED_LABEL_LEN,
    ContainedAddr, ContainedLabel, Containment as Value, V4_MAPPED_PREFIX, names, v4_mapped,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::pins::{PinDir, PinError};
use crate::model::prefixes::{PrefixMap, canonical};

/// Who holds a network contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This host's rule: a repeat offender.
    Repeat,
    /// A CrowdSec decision, with its label ("origin/scenario") and end (Unix ms).
    Crowdsec,
}

impl Source {
    const ALL: [Source; 2] = [Source::Repeat, Source::Crowdsec];

    fn bit(self) -> u32 {
        match self {
            Self::Repeat => CONTAINED_BY_REPEAT,
            Self::Crowdsec => CONTAINED_BY_CROWDSEC,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a contained network's new connections are limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `SO_SNDBUF` (the kernel doubles it); 0 leaves send buffers alone.
    pub sndbuf: u32,
    /// `TCP_USER_TIMEOUT` in ms; 0: none.
    pub user_timeout_ms: u32,
}

/// The agent's end of the trie and its labels, taken from the loaded object, with what it wrote.
pub struct Containment {
    trie: LpmTrie<MapData, ContainedAddr, Value>,
    labels: Array<MapData, ContainedLabel>,
    limits: Limits,
    /// What the trie holds as the agent wrote it: the contained networks (sources not 0).
    held: HashMap<IpNet, Value>,
    /// Protected networks written as exemptions.
    exempt: Vec<IpNet>,
    /// Label text → index in `CONTAINED_LABELS` (0 is "no label").
    label_ids: HashMap<String, u32>,
    /// How many networks each source holds (`Source::index`), kept as they change: the gauges
    /// read it every interval, and a fleet holds 100,000.
    counts: [usize; 2],
}

impl Containment {
    /// `trie` and `labels` are the loader's pinned `CONTAINED` and `CONTAINED_LABELS`.
    pub fn new(trie: Map, labels: Map, limits: Limits) -> Result<Self> {
        check(limits)?;
        Ok(Self {
            trie: LpmTrie::try_from(trie).context("the contained map")?,
            labels: Array::try_from(labels).context("the contained labels map")?,
            limits,
            held: HashMap::new(),
            exempt: Vec::new(),
            label_ids: HashMap::new(),
            counts: [0; 2],
        })
    }

    /// New limits (a reload): networks contained from now on get them; those contained already
    /// keep theirs until written again.
    pub fn set_limits(&mut self, limits: Limits) -> Result<()> {
        check(limits)?;
        self.limits = limits;
        Ok(())
    }

    /// Protected networks: never contained, whatever contains a wider network around them.
    /// Replaces the exemptions written before.
    pub fn exempt(&mut self, protected: &[IpNet]) -> Result<()> {
        // The new ones first, each kept once written, so no protected network is ever without
        // its exemption; then the old ones that are no longer protected go.
        let old = std::mem::take(&mut self.exempt);
        for net in protected.iter().map(|n| canonical(*n)) {
            if !self.held.contains_key(&net)
                && !old.contains(&net)
                && let Err(e) = self.write(net, Value::default())
            {
                // The old exemptions are all still written: keep knowing them.
                let missing: Vec<IpNet> = old.into_iter().filter(|o| !self.exempt.contains(o)).collect();
                self.exempt.extend(missing);
                return Err(e);
            }
            self.exempt.push(net);
        }
        for net in old {
            if !self.exempt.contains(&net) && !self.held.contains_key(&net) {
                self.remove(net)?;
            }
        }
        Ok(())
    }

    /// Whether `net` lies inside a protected network (a decision for it is refused).
    pub fn is_protected(&self, net: IpNet) -> bool {
        let net = canonical(net);
        self.exempt.iter().any(|p| p.contains(&net))
    }

    /// `source` contains `net`: its connections established from now on get the limits, so each
    /// can hold only that much before the rule judges it. Connections that already exist keep
    /// theirs. CrowdSec gives the label and end of the decision that speaks for the network.
    pub fn hold(&mut self, net: IpNet, source: Source, label: Option<&str>, until_unix_ms: u64) -> Result<()> {
        let net = canonical(net);
        let label = match label {
            Some(text) => self.label(text)?,
            None => 0,
        };
        let mut v = self.held.get(&net).copied().unwrap_or_default();
        v.sndbuf = self.limits.sndbuf;
        v.user_timeout_ms = self.limits.user_timeout_ms;
        v.sources |= source.bit();
        if source == Source::Crowdsec {
            v.label = label;
            v.until_unix_ms = until_unix_ms;
        }
        let before = self.held.get(&net).copied();
        if before == Some(v) {
            // A startup answer repeats what is held: no system call.
            return Ok(());
        }
        self.write(net, v)?;
        self.held.insert(net, v);
        self.recount(before.map_or(0, |b| b.sources), v.sources);
        Ok(())
    }

    /// `source` no longer contains `net` (as it was contained, not a network inside it). Once no
    /// source does, new connections get the kernel's usual buffers again; existing ones keep what
    /// they have. Releasing what the source does not hold does nothing.
    pub fn release(&mut self, net: IpNet, source: Source) -> Result<()> {
        let net = canonical(net);
        let Some(mut v) = self.held.get(&net).copied() else { return Ok(()) };
        let before = v.sources;
        v.sources &= !source.bit();
        if source == Source::Crowdsec {
            (v.label, v.until_unix_ms) = (0, 0);
        }
        if v.sources != 0 {
            self.write(net, v)?;
            self.held.insert(net, v);
            self.recount(before, v.sources);
        } else {
            // The kernel first: an entry it still has stays known, so a later release can reach it.
            if self.exempt.contains(&net) {
                self.write(net, Value::default())?;
            } else {
                self.remove(net)?;
            }
            self.held.remove(&net);
            self.recount(before, 0);
        }
        Ok(())
    }

    /// How many networks `source` holds now.
    pub fn count(&self, source: Source) -> usize {
        self.counts[source.index()]
    }

    fn recount(&mut self, before: u32, after: u32) {
        for s in Source::ALL {
            match (before & s.bit() != 0, after & s.bit() != 0) {
                (false, true) => self.counts[s.index()] += 1,
                (true, false) => self.counts[s.index()] = self.counts[s.index()].saturating_sub(1),
                _ => {}
            }
        }
    }

    /// The networks `source` holds now.
    pub fn held_by(&self, source: Source) -> impl Iterator<Item = IpNet> + '_ {
        self.held.iter().filter(move |(_, v)| v.sources & source.bit() != 0).map(|(n, _)| *n)
    }

    fn write(&mut self, net: IpNet, v: Value) -> Result<()> {
        self.trie
            .insert(&key(net), v, 0)
            .with_context(|| format!("containing {net} (at most {CONTAINED_CAPACITY} networks at once)"))
    }

    fn remove(&mut self, net: IpNet) -> Result<()> {
        match self.trie.remove(&key(net)) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other.with_context(|| format!("releasing {net}")),
        }
    }

    /// The index of a label's text, written on first use; 0 (none) once the table is full.
    fn label(&mut self, text: &str) -> Result<u32> {
        if let Some(id) = self.label_ids.get(text) {
            return Ok(*id);
        }
        let id = self.label_ids.len() as u32 + 1;
        if id >= CONTAINED_LABEL_CAPACITY {
            return Ok(0);
        }
        let mut label = ContainedLabel { text: [0; CONTAINED_LABEL_LEN] };
        let bytes = truncated(text, CONTAINED_LABEL_LEN);
        label.text[..bytes.len()].copy_from_slice(bytes);
        self.labels.set(id, label, 0).context("writing a containment label")?;
        self.label_ids.insert(text.to_owned(), id);
        Ok(id)
    }
}

fn check(limits: Limits) -> Result<()> {
    if limits.sndbuf > i32::MAX as u32 || limits.user_timeout_ms > i32::MAX as u32 {
        bail!("a contained send buffer and user timeout must be under 2^31, not {limits:?}");
    }
    Ok(())
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncated(text: &str, max: usize) -> &[u8] {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

/// A contained network as a running agent recorded it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Contained {
    pub remote: IpNet,
    /// `SO_SNDBUF` its new connections get.
    pub sndbuf: u32,
    /// `TCP_USER_TIMEOUT` (ms) they get; 0: none.
    pub user_timeout_ms: u32,
    /// This host's rule flagged it a repeat offender.
    pub repeat_offender: bool,
    /// A CrowdSec decision contains it: "origin/scenario" (empty when the label table was full).
    pub crowdsec: Option<String>,
    /// When the CrowdSec decision ends (Unix ms).
    pub crowdsec_until_unix_ms: Option<u64>,
}

/// Contained networks looked up by the longest prefix holding an address, as sock_ops does.
pub struct Index(PrefixMap<Contained>);

impl Index {
    pub fn of(list: Vec<Contained>) -> Self {
        Self(PrefixMap::new(list.into_iter().map(|c| (c.remote, c))))
    }

    /// What contains `ip` (an IPv4-mapped address is IPv4), if anything.
    pub fn lookup(&self, ip: std::net::IpAddr) -> Option<&Contained> {
        self.0.lookup(ip).map(|(_, c)| c)
    }
}

/// The networks a running agent contains (exemptions left out).
pub fn read(pins: &PinDir) -> Result<Vec<Contained>, PinError> {
    let (path, map) = pins.map(names::PIN_CONTAINED)?;
    let err = |source| PinError::Map { path: path.clone(), source };
    let trie: LpmTrie<_, ContainedAddr, Value> = map.try_into().map_err(err)?;
    let labels = read_labels(pins)?;
    let mut out = Vec::new();
    for item in trie.iter() {
        let (key, v) = item.map_err(err)?;
        // Only keys the agent wrote are there; one it cannot read back is skipped.
        if let Some(net) = net(&key)
            && v.sources != 0
        {
            let crowdsec = v.sources & CONTAINED_BY_CROWDSEC != 0;
            out.push(Contained {
                remote: net,
                sndbuf: v.sndbuf,
                user_timeout_ms: v.user_timeout_ms,
                repeat_offender: v.sources & CONTAINED_BY_REPEAT != 0,
                crowdsec: crowdsec.then(|| labels.get(&v.label).cloned().unwrap_or_default()),
                crowdsec_until_unix_ms: crowdsec.then_some(v.until_unix_ms),
            });
        }
    }
    out.sort_by_key(|c| c.remote);
    Ok(out)
}

/// The labels the agent wrote, by index.
fn read_labels(pins: &PinDir) -> Result<HashMap<u32, String>, PinError> {
    let (path, map) = pins.map(names::PIN_CONTAINED_LABELS)?;
    let err = |source| PinError::Map { path: path.clone(), source };
    let labels: Array<_, ContainedLabel> = map.try_into().map_err(err)?;
    let mut out = HashMap::new();
    for id in 1..labels.len() {
        let l = labels.get(&id, 0).map_err(err)?;
        let end = l.text.iter().position(|b| *b == 0).unwrap_or(CONTAINED_LABEL_LEN);
        if end == 0 {
            break;
        }
        out.insert(id, String::from_utf8_lossy(&l.text[..end]).into_owned());
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
