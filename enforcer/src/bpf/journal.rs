//! The kill journal's ring: every enforcement decision as a record in the pinned `KILLS` ring,
//! with its counters in `KILL_COUNTERS`, that `enforcer kills` and `status` read. This module
//! owns the ring's layout: the agent writes it, the CLI reads it, both here. (What a record
//! says of a decision is made in `observe::decisions`.)
use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData};
use enforcer_common::{KILL_RING, KillRecord, kill_counters, names};

use super::pins::{PinDir, PinError};

/// What became of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Destroyed,
    /// A dry run's decision.
    WouldDestroy,
    DestroyFailed,
}

/// Each event's code in the ring, its name in logs and JSON, and its counter: one table, so
/// the three never disagree. Codes are what earlier agents wrote: never renumber.
const EVENTS: [(Event, u8, &str, u32); 3] = [
    (Event::Destroyed, 1, "destroyed", kill_counters::DESTROYED),
    (Event::WouldDestroy, 2, "would_destroy", kill_counters::WOULD_DESTROY),
    (Event::DestroyFailed, 3, "destroy_failed", kill_counters::DESTROY_FAILED),
];

impl Event {
    fn row(self) -> (Event, u8, &'static str, u32) {
        EVENTS.into_iter().find(|r| r.0 == self).unwrap_or(EVENTS[0])
    }

    pub fn as_str(self) -> &'static str {
        self.row().2
    }

    pub fn code(self) -> u8 {
        self.row().1
    }

    pub fn from_code(code: u8) -> Option<Self> {
        EVENTS.into_iter().find(|r| r.1 == code).map(|r| r.0)
    }

    fn counter(self) -> u32 {
        self.row().3
    }
}

/// The agent's end of the journal: the ring and its counters, taken from the loaded object.
pub struct Journal {
    ring: Array<MapData, KillRecord>,
    counters: Array<MapData, u64>,
}

impl Journal {
    /// The maps are the loader's pinned `KILLS` and `KILL_COUNTERS`.
    pub fn new(ring: Map, counters: Map) -> Result<Self> {
        Ok(Self {
            ring: Array::try_from(ring).context("the kills map")?,
            counters: Array::try_from(counters).context("the kill counters map")?,
        })
    }

    /// Keeps a decision in the ring and counts it.
    pub fn write(&mut self, rec: KillRecord) -> Result<()> {
        let next = self.counters.get(&kill_counters::NEXT, 0)?;
        let slot = Event::from_code(rec.event).unwrap_or(Event::DestroyFailed).counter();
        let count = self.counters.get(&slot, 0)?;
        self.counters.set(slot, count + 1, 0)?;
        self.counters.set(kill_counters::NEXT, next + 1, 0)?;
        self.ring.set((next % u64::from(KILL_RING)) as u32, rec, 0)?;
        Ok(())
    }
}

/// The kill counters of a running agent: destroyed, would_destroy, destroy_failed, total.
pub fn counters(pins: &PinDir) -> Result<[u64; kill_counters::COUNT as usize], PinError> {
    let (path, map) = pins.map(names::PIN_KILL_COUNTERS)?;
    let err = |source| PinError::Map { path: path.clone(), source };
    let array: Array<_, u64> = map.try_into().map_err(err)?;
    let mut out = [0u64; kill_counters::COUNT as usize];
    for (slot, v) in out.iter_mut().enumerate() {
        *v = array.get(&(slot as u32), 0).map_err(err)?;
    }
    Ok(out)
}

/// The decisions a running agent kept, newest first.
pub fn read(pins: &PinDir) -> Result<Vec<KillRecord>, PinError> {
    let total = counters(pins)?[kill_counters::NEXT as usize];
    let (path, map) = pins.map(names::PIN_KILLS)?;
    let err = |source| PinError::Map { path: path.clone(), source };
    let ring: Array<_, KillRecord> = map.try_into().map_err(err)?;
    let kept = total.min(u64::from(KILL_RING));
    (0..kept).map(|i| ring.get(&(((total - 1 - i) % u64::from(KILL_RING)) as u32), 0).map_err(err)).collect()
}

/// Reads a running agent's ring as it grows: each decision once, oldest first.
pub struct Follower {
    ring: Array<MapData, KillRecord>,
    counters: Array<MapData, u64>,
    /// The pins, for errors.
    paths: (std::path::PathBuf, std::path::PathBuf),
    /// Decisions ever recorded that this reader has passed.
    next: u64,
}

impl Follower {
    /// Starts at the oldest decision the ring still keeps.
    pub fn open(pins: &PinDir) -> Result<Self, PinError> {
        let (ring_path, map) = pins.map(names::PIN_KILLS)?;
        let ring = Array::try_from(map).map_err(|source| PinError::Map { path: ring_path.clone(), source })?;
        let (counters_path, map) = pins.map(names::PIN_KILL_COUNTERS)?;
        let counters = Array::try_from(map).map_err(|source| PinError::Map { path: counters_path.clone(), source })?;
        let mut f = Self { ring, counters, paths: (ring_path, counters_path), next: 0 };
        f.next = f.total()?.saturating_sub(u64::from(KILL_RING));
        Ok(f)
    }

    fn total(&self) -> Result<u64, PinError> {
        self.counters
            .get(&kill_counters::NEXT, 0)
            .map_err(|source| PinError::Map { path: self.paths.1.clone(), source })
    }

    /// The decisions recorded since the last call, oldest first, and how many were overwritten
    /// before they could be read (more than the ring holds arrived in between).
    pub fn poll(&mut self) -> Result<(Vec<KillRecord>, u64), PinError> {
        let total = self.total()?;
        let first = self.next.max(total.saturating_sub(u64::from(KILL_RING)));
        let lost = first - self.next;
        let out = (first..total)
            .map(|i| {
                self.ring
                    .get(&((i % u64::from(KILL_RING)) as u32), 0)
                    .map_err(|source| PinError::Map { path: self.paths.0.clone(), source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.next = total;
        Ok((out, lost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_round_trip_and_keep_their_meaning() {
        for (e, code, name, _) in EVENTS {
            assert_eq!((Event::from_code(code), e.as_str(), e.code()), (Some(e), name, code));
        }
        // Codes of rings written by earlier agents keep their meaning.
        assert_eq!((Event::Destroyed.code(), Event::DestroyFailed.code()), (1, 3));
    }
}
