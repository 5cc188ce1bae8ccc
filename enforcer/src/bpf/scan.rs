//! The agent's scan. The kernel adds every connection up (`ScanSummary`, and the connections
//! per remote when the rule needs them) and writes out only what the agent asks for: nothing
//! while pressure is well below the threshold, the sockets that hold memory otherwise. It walks
//! as the snapshot does ([`Walk`]); its buffers are reused, so a steady interval allocates
//! nothing per socket.
use std::collections::HashSet;

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use enforcer_common::{RemoteCount, RemoteKey, ScanParams, ScanSummary, SnapshotEntry, remote_key};

use super::{
    iter_link::IterLink,
    snapshot::{Walk, parse, read_walk},
};
use crate::host::netns::Namespace;

/// The agent's scan: its link, the maps it talks to the program through, and its buffers.
pub struct Scanner {
    link: IterLink,
    walk: Walk,
    params: Array<MapData, ScanParams>,
    summary: Array<MapData, ScanSummary>,
    remote_counts: BpfHashMap<MapData, RemoteKey, RemoteCount>,
    generation: u64,
    bytes: Vec<u8>,
    entries: Vec<SnapshotEntry>,
    seen: HashSet<u64>,
    /// `group_v4`/`group_v6` of the last scan that counted remotes.
    groups: Option<(u32, u32)>,
}

impl Scanner {
    /// `link` runs the scan program of `walk`; the maps are the loader's `SCAN_PARAMS`,
    /// `SCAN_SUMMARY` and `REMOTE_COUNTS`.
    pub fn new(link: IterLink, walk: Walk, params: Map, summary: Map, remote_counts: Map) -> Result<Self> {
        Ok(Self {
            link,
            walk,
            params: params.try_into().context("SCAN_PARAMS is not an array of ScanParams")?,
            summary: summary.try_into().context("SCAN_SUMMARY is not an array of ScanSummary")?,
            remote_counts: remote_counts.try_into().context("REMOTE_COUNTS is not a hash of RemoteCount")?,
            generation: 0,
            bytes: Vec::new(),
            entries: Vec::new(),
            seen: HashSet::new(),
            groups: None,
        })
    }

    /// One scan in `mode` (a `scan_mode`): the summary over every tracked connection; the
    /// connections written out are then [`Scanner::entries`]. With `groups` (IPv4 and IPv6
    /// prefix lengths), it also counts connections per remote group ([`Scanner::remote_count`]).
    /// `namespaces` are those the `iter/tcp` walk reads in (the records walk needs none).
    pub fn scan(&mut self, mode: u32, groups: Option<(u32, u32)>, namespaces: &[Namespace]) -> Result<ScanSummary> {
        self.generation += 1;
        let (group_v4, group_v6) = groups.unwrap_or_default();
        let params = ScanParams {
            mode,
            count_remotes: u32::from(groups.is_some()),
            group_v4,
            group_v6,
            generation: self.generation,
        };
        self.params.set(0, params, 0).context("writing the scan's parameters")?;
        self.summary.set(0, ScanSummary::default(), 0).context("clearing the scan's summary")?;
        let link = &self.link;
        read_walk(self.walk, namespaces, &mut self.bytes, || link.reader()).context("running the scan iterator")?;
        parse(&self.bytes, &mut self.entries, &mut self.seen)
            .map_err(|()| anyhow::anyhow!("the scan returned a partial record"))?;
        let summary = self.summary.get(&0, 0).context("reading the scan's summary")?;
        self.groups = groups;
        Ok(summary)
    }

    pub fn walk(&self) -> Walk {
        self.walk
    }

    /// The connections the last scan wrote out.
    pub fn entries(&self) -> &[SnapshotEntry] {
        &self.entries
    }

    /// Connections of `e`'s remote group in the last scan that counted them (at least 1: the
    /// kernel could not keep a count when its map could not take the group).
    pub fn remote_count(&self, e: &SnapshotEntry) -> u64 {
        let Some((v4, v6)) = self.groups else { return 1 };
        let key = remote_key(e.record.family, e.record.remote_addr, v4, v6);
        match self.remote_counts.get(&key, 0) {
            Ok(c) if c.generation == self.generation => c.connections.max(1),
            _ => 1,
        }
    }
}
