//! Finished flows, remembered for a while ([`Tombstone`]) in a [`Tombs`] table: a late half, a
//! duplicate, or a restarted agent's re-export of a finished connection is recognised and counted
//! against what was already exported, never counted again.
//!
//! Layout, for a bound of a million: tombstones in a slab (`Vec`), found through a hash table of
//! 4-byte slot ids keyed by the 5-tuple, and expired in the order they were made through a queue
//! of `(expiry, slot)` (entries of tombstones removed early go stale and are skipped; they are
//! purged when they outnumber the live ones). A `HashMap` of keys to tombstones would cost twice
//! as much: its power-of-two table holds up to twice the entries' bytes.

use std::collections::VecDeque;
use std::hash::BuildHasher;

use crate::model::Timestamp;

use super::half::CorrelationKey;
use super::intern::MetaId;
use super::{DESTINATION, Flow, SOURCE, Side, Sides, Which};

/// What is remembered of a finished flow for `inactive_timeout`: the flow as last exported
/// (per-Node start seconds, totals, end state, and its Kubernetes fields), so that a late or
/// duplicated half neither starts it over and counts its bytes again, nor loses the fields the
/// other Node reported (the Service only the source Node sees).
///
/// Compact (168 bytes with its key; a `Flow` is 176 plus a boxed second side): everything in a finished flow
/// was exported, so each side's exported totals and end are its totals and end and are not
/// stored, and no timer state is. [`Tombstone::flow`] gives the flow back to apply a late half.
pub(super) struct Tombstone {
    pub(super) key: CorrelationKey,
    sides: [TombSide; 2],
    /// Bit `i`: side `i` is present.
    present: u8,
    flow_type: u8,
    tcp_state: Option<crate::model::TcpState>,
    pub(super) owner: u16,
    start_secs: u32,
    pub(super) meta: MetaId,
    /// When it was last exported.
    since: Timestamp,
    pub(super) expires: Timestamp,
}

/// One Node's side of a finished flow (all of it exported).
#[derive(Clone, Copy, Debug, Default)]
struct TombSide {
    start_secs: u32,
    end_secs: u32,
    totals: [u64; 4],
    end_reason: u8,
    exporter: u16,
}

impl Tombstone {
    /// `flow`, finished and fully exported, remembered until `expires` (its metadata reference
    /// moves into the tombstone).
    pub(super) fn of(flow: &Flow, expires: Timestamp) -> Tombstone {
        let mut t = Tombstone {
            key: flow.key,
            sides: [TombSide::default(); 2],
            present: 0,
            flow_type: flow.flow_type,
            tcp_state: flow.tcp_state,
            owner: flow.owner,
            start_secs: flow.start_secs,
            meta: flow.meta,
            since: flow.since,
            expires,
        };
        for s in flow.sides.iter() {
            debug_assert!(
                s.exported == s.totals && s.exported_end_secs == s.end_secs,
                "a tombstone's flow was wholly exported"
            );
            let i = s.which as usize;
            t.present |= 1 << i;
            t.sides[i] = TombSide {
                start_secs: s.start_secs,
                end_secs: s.end_secs,
                totals: s.totals,
                end_reason: s.end_reason,
                exporter: s.exporter,
            };
        }
        t
    }

    /// Side `i` as the flow had it.
    pub(super) fn side(&self, i: usize) -> Option<Side> {
        (self.present & (1 << i) != 0).then(|| {
            let s = &self.sides[i];
            Side {
                start_secs: s.start_secs,
                totals: s.totals,
                exported: s.totals,
                end_secs: s.end_secs,
                exported_end_secs: s.end_secs,
                end_reason: s.end_reason,
                exporter: s.exporter,
                which: Which::of(i),
            }
        })
    }

    /// Its first side (the source's if present).
    pub(super) fn any_side(&self) -> Option<Side> {
        self.side(SOURCE).or_else(|| self.side(DESTINATION))
    }

    /// The flow again (not in the flow table, no timer), to apply a late half to.
    pub(super) fn flow(&self, now: Timestamp) -> Flow {
        let mut sides = Sides::default();
        for i in [SOURCE, DESTINATION] {
            if let Some(s) = self.side(i) {
                sides.set(i, s);
            }
        }
        Flow {
            key: self.key,
            start_secs: self.start_secs,
            tcp_state: self.tcp_state,
            owner: self.owner,
            meta: self.meta,
            flow_type: self.flow_type,
            sides,
            since: self.since,
            updated: now,
            deadline: now,
            generation: 0,
            awaiting_partner: false,
            dirty: false,
        }
    }
}

/// The table (module docs).
pub(super) struct Tombs {
    slots: Vec<Option<Tombstone>>,
    free: Vec<u32>,
    index: hashbrown::HashTable<u32>,
    /// `(expires, slot)`, oldest first.
    order: VecDeque<(Timestamp, u32)>,
    hasher: foldhash::fast::FixedState,
}

impl Tombs {
    /// `seed` keys the 5-tuple hash (5-tuples come off the wire).
    pub(super) fn new(seed: u64) -> Tombs {
        Tombs {
            slots: Vec::new(),
            free: Vec::new(),
            index: hashbrown::HashTable::new(),
            order: VecDeque::new(),
            hasher: foldhash::fast::FixedState::with_seed(seed),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Slots held, live or free (what a flood left until [`Self::tidy`]).
    #[cfg(test)]
    pub(super) fn slots(&self) -> usize {
        self.slots.len()
    }

    fn find(&self, key: &CorrelationKey) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(key), |&i| {
                slots[i as usize].as_ref().is_some_and(|t| t.key == *key)
            })
            .copied()
    }

    pub(super) fn get(&self, key: &CorrelationKey) -> Option<&Tombstone> {
        let i = self.find(key)?;
        self.slots[i as usize].as_ref()
    }

    pub(super) fn remove(&mut self, key: &CorrelationKey) -> Option<Tombstone> {
        let i = self.find(key)?;
        self.take(i)
    }

    fn take(&mut self, i: u32) -> Option<Tombstone> {
        let t = self.slots[i as usize].take()?;
        let h = self.hasher.hash_one(t.key);
        if let Ok(e) = self.index.find_entry(h, |&x| x == i) {
            e.remove();
        }
        self.free.push(i);
        Some(t)
    }

    /// Remembers `t`; returns the tombstone it replaces on the same 5-tuple.
    pub(super) fn insert(&mut self, t: Tombstone) -> Option<Tombstone> {
        let old = self.remove(&t.key);
        let expires = t.expires;
        let h = self.hasher.hash_one(t.key);
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(t);
                i
            }
            None => {
                self.slots.push(Some(t));
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(h, i, |&x| {
            slots[x as usize]
                .as_ref()
                .map_or(0, |t| hasher.hash_one(t.key))
        });
        self.order.push_back((expires, i));
        old
    }

    /// When the oldest tombstone expires (possibly a stale entry: an early wake-up).
    pub(super) fn next_expiry(&self) -> Option<Timestamp> {
        self.order.front().map(|&(t, _)| t)
    }

    /// The oldest entry of the expiry order while `take(expires, tombstones left)` says so:
    /// its tombstone (if the entry is still live) with its expiry.
    pub(super) fn pop_oldest(
        &mut self,
        take: impl Fn(Timestamp, usize) -> bool,
    ) -> Option<(Timestamp, Option<Tombstone>)> {
        let &(t, i) = self.order.front()?;
        if !take(t, self.len()) {
            return None;
        }
        self.order.pop_front();
        let live = self.slots[i as usize]
            .as_ref()
            .is_some_and(|x| x.expires == t);
        Some((t, if live { self.take(i) } else { None }))
    }

    /// The oldest tombstone of exporter `owner` among the first `scan` entries of the expiry
    /// order, removed.
    pub(super) fn remove_oldest_of(&mut self, owner: u16, scan: usize) -> Option<Tombstone> {
        let found = self.order.iter().take(scan).find_map(|&(t, i)| {
            self.slots[i as usize]
                .as_ref()
                .is_some_and(|x| x.expires == t && x.owner == owner)
                .then_some(i)
        })?;
        self.take(found)
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Tombstone> {
        self.slots.iter_mut().flatten()
    }

    /// Drops stale order entries once they are the majority, and gives back the memory a flood
    /// left (the slab is renumbered when it is four times what is live).
    pub(super) fn tidy(&mut self) {
        let live = self.len();
        if self.order.len() > 2 * live + 1024 {
            let slots = &self.slots;
            self.order
                .retain(|&(t, i)| slots[i as usize].as_ref().is_some_and(|x| x.expires == t));
        }
        if self.slots.len() > 4 * live + 4096 {
            let mut remap = vec![u32::MAX; self.slots.len()];
            let mut slots = Vec::with_capacity(live + live / 4);
            for (i, t) in self.slots.drain(..).enumerate() {
                if let Some(t) = t {
                    remap[i] = slots.len() as u32;
                    slots.push(Some(t));
                }
            }
            self.slots = slots;
            self.free = Vec::new();
            self.order.retain(|&(_, i)| remap[i as usize] != u32::MAX);
            for e in self.order.iter_mut() {
                e.1 = remap[e.1 as usize];
            }
            let (slots, hasher) = (&self.slots, &self.hasher);
            let hash = |i: u32| {
                slots[i as usize]
                    .as_ref()
                    .map_or(0, |t| hasher.hash_one(t.key))
            };
            self.index = hashbrown::HashTable::with_capacity(live);
            for i in 0..slots.len() as u32 {
                self.index.insert_unique(hash(i), i, |&x| hash(x));
            }
            // Stale entries can now name renumbered slots of other tombstones; their expiry
            // differs, so they are still skipped.
        }
        if self.order.capacity() > 4 * self.order.len() + 4096 {
            self.order.shrink_to_fit();
        }
    }
}
