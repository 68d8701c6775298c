//! The connection store: a slab of fixed-size [`Conn`]s plus an open-addressing index from the
//! conntrack identity `(zone, original tuple)` to a slot.
//!
//! Why not `HashMap<Key, Conn>`: the key (a 40-byte tuple) would be stored twice and SipHash
//! would dominate `handle_dump`. Here the index holds 8-byte buckets (slot + 32 hash bits, so most
//! probes never touch the slab) and the key lives once, inside the `Conn`. A tracked connection
//! costs `size_of::<Conn>()` (168 bytes) plus 8–16 bytes of index.
//!
//! Invariants: every indexed slot is occupied and its `(zone, orig)` hashes to the bucket's
//! probe chain; a slot is indexed iff it is occupied and not `ENDING` (an ending connection waits
//! for its final export's acknowledgement outside the index, so a reused 5-tuple can be tracked
//! meanwhile); linear probing with backward-shift deletion keeps chains gap-free.

use std::net::IpAddr;

use crate::model::{BiCounters, Timestamp, Tuple};

/// Connection flags.
pub(crate) mod flag {
    /// The slot holds a connection.
    pub const OCCUPIED: u8 = 1;
    /// In the ready queue.
    pub const QUEUED: u8 = 1 << 1;
    /// A record is polled and awaits ack/nack.
    pub const INFLIGHT: u8 = 1 << 2;
    /// Ended: only its final record remains; out of the index.
    pub const ENDING: u8 = 1 << 3;
    /// `start` came from conntrack (so it is part of the identity).
    pub const CT_START: u8 = 1 << 4;
    /// Never acknowledged: due for a first export even with zero counters.
    pub const FRESH: u8 = 1 << 5;
    /// Saw traffic since the eviction hand last passed (second chance).
    pub const RECENT: u8 = 1 << 7;
}

/// One tracked connection. Plain data, 168 bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Conn {
    pub orig: Tuple,
    /// The real destination (reply tuple's source) and its port.
    pub reply_src: IpAddr,
    pub reply_src_port: u16,
    pub zone: u16,
    pub ct_id: u32,
    /// Dump generation that last saw it.
    pub seen_epoch: u32,
    pub flags: u8,
    /// `TcpState as u8`, or `NO_TCP`.
    pub tcp_state: u8,
    pub flow_type: u8,
    /// `FlowEndReason as u8` of the queued / ending export; 0 none.
    pub reason: u8,
    /// Flow start (conntrack's, else first seen).
    pub start: Timestamp,
    /// Last time the counters moved (the record's flowEndSeconds); for an ending connection,
    /// when it ended.
    pub last_activity: Timestamp,
    /// When the last acknowledged export was polled (first seen before any).
    pub last_export: Timestamp,
    pub totals: BiCounters,
    /// Totals of the last acknowledged export.
    pub acked: BiCounters,
}

pub(crate) const NO_TCP: u8 = 0xFF;

impl Default for Conn {
    fn default() -> Conn {
        Conn {
            orig: Tuple::default(),
            reply_src: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            reply_src_port: 0,
            zone: 0,
            ct_id: 0,
            seen_epoch: 0,
            flags: 0,
            tcp_state: NO_TCP,
            flow_type: 0,
            reason: 0,
            start: Timestamp::ZERO,
            last_activity: Timestamp::ZERO,
            last_export: Timestamp::ZERO,
            totals: BiCounters::default(),
            acked: BiCounters::default(),
        }
    }
}

impl Conn {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// The identity hash of `(zone, orig)`: a folded-multiply mix, fast and good enough for
/// kernel-chosen tuples (not attacker-chosen keys into a DoS-sensitive table: conntrack itself
/// bounds the population).
#[inline]
pub(crate) fn hash_key(zone: u16, t: &Tuple) -> u64 {
    #[inline]
    fn bits(ip: IpAddr) -> u128 {
        match ip {
            IpAddr::V4(a) => u32::from(a) as u128 | (1u128 << 127),
            IpAddr::V6(a) => u128::from(a),
        }
    }
    #[inline]
    fn mix(a: u64, b: u64) -> u64 {
        let r = (a as u128).wrapping_mul(b as u128);
        (r as u64) ^ ((r >> 64) as u64)
    }
    let s = bits(t.src);
    let d = bits(t.dst);
    let p = (t.src_port as u64)
        | (t.dst_port as u64) << 16
        | (t.proto as u64) << 32
        | (zone as u64) << 40;
    let h = mix(
        s as u64 ^ 0x243f_6a88_85a3_08d3,
        (s >> 64) as u64 ^ 0x1319_8a2e_0370_7344,
    ) ^ mix(
        d as u64 ^ 0xa409_3822_299f_31d0,
        (d >> 64) as u64 ^ 0x082e_fa98_ec4e_6c89,
    ) ^ mix(p ^ 0x4528_21e6_38d0_1377, 0xbe54_66cf_34e9_0c6c);
    mix(h, 0x9e37_79b9_7f4a_7c15)
}

/// Connections per slab chunk: growth allocates one chunk (168 KiB), never a doubling of the
/// whole slab, so the slab wastes at most one chunk instead of up to half its size.
const CHUNK_BITS: u32 = 10;
const CHUNK: usize = 1 << CHUNK_BITS;

/// Slab + index.
#[derive(Debug, Default)]
pub(crate) struct Store {
    chunks: Vec<Box<[Conn]>>,
    /// Slots handed out so far (occupied or free).
    slots: u32,
    free: Vec<u32>,
    /// `(hash >> 32) << 32 | (slot + 1)`; 0 = empty. Length is a power of two (or 0).
    buckets: Vec<u64>,
    indexed: usize,
    occupied: usize,
}

impl Store {
    pub fn with_capacity(n: usize) -> Store {
        let mut s = Store {
            chunks: Vec::with_capacity(n.div_ceil(CHUNK)),
            ..Store::default()
        };
        s.grow_index_for(n);
        s
    }

    /// Slots handed out so far; every slot below is valid for `get`.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    #[inline]
    pub fn get(&self, slot: u32) -> Option<&Conn> {
        if slot >= self.slots {
            return None;
        }
        self.chunks
            .get((slot >> CHUNK_BITS) as usize)?
            .get(slot as usize & (CHUNK - 1))
    }

    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        if slot >= self.slots {
            return None;
        }
        self.chunks
            .get_mut((slot >> CHUNK_BITS) as usize)?
            .get_mut(slot as usize & (CHUNK - 1))
    }

    /// Occupied slots (live + ending).
    pub fn occupied(&self) -> usize {
        self.occupied
    }

    /// Connections in the index (live).
    pub fn indexed(&self) -> usize {
        self.indexed
    }

    /// Bytes held by the store's own allocations.
    pub fn heap_bytes(&self) -> usize {
        self.chunks.len() * CHUNK * size_of::<Conn>()
            + self.chunks.capacity() * size_of::<Box<[Conn]>>()
            + self.free.capacity() * 4
            + self.buckets.capacity() * 8
    }

    #[inline]
    fn home(&self, hash: u64) -> usize {
        ((hash >> 32) as usize) & (self.buckets.len() - 1)
    }

    /// Starts the memory loads `find(hash, ..)` will need (home bucket, then the connection it
    /// names), without waiting for them: a dump processed in batches overlaps the cache misses of
    /// several entries instead of paying them one after another. Safe code: the loads are real
    /// reads kept alive by `black_box`.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if self.buckets.is_empty() {
            return;
        }
        let b = self.buckets[self.home(hash)];
        if b != 0 && b >> 32 == hash >> 32 {
            let slot = (b as u32).wrapping_sub(1);
            std::hint::black_box(self.get(slot).map(|c| c.zone));
        }
    }

    /// The slot of `(zone, orig)` if indexed.
    #[inline]
    pub fn find(&self, hash: u64, zone: u16, orig: &Tuple) -> Option<u32> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let tag = hash >> 32;
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i];
            if b == 0 {
                return None;
            }
            if b >> 32 == tag {
                let slot = (b as u32).wrapping_sub(1);
                if let Some(c) = self.get(slot)
                    && c.zone == zone
                    && c.orig == *orig
                {
                    return Some(slot);
                }
            }
            i = (i + 1) & mask;
        }
    }

    fn grow_index_for(&mut self, n: usize) {
        // Load ≤ 3/4 keeps linear-probe chains short.
        let want = (n.max(8) * 4).div_ceil(3).next_power_of_two();
        if want <= self.buckets.len() {
            return;
        }
        let old = std::mem::replace(&mut self.buckets, vec![0; want]);
        let mask = want - 1;
        for b in old.into_iter().filter(|&b| b != 0) {
            let mut i = ((b >> 32) as usize) & mask;
            while self.buckets[i] != 0 {
                i = (i + 1) & mask;
            }
            self.buckets[i] = b;
        }
    }

    /// Stores `conn` in a free slot (not indexed yet).
    pub fn alloc(&mut self, conn: Conn) -> u32 {
        self.occupied += 1;
        if let Some(slot) = self.free.pop()
            && let Some(c) = self.get_mut(slot)
        {
            *c = conn;
            return slot;
        }
        let slot = self.slots;
        if (slot as usize) >> CHUNK_BITS >= self.chunks.len() {
            self.chunks
                .push(vec![Conn::default(); CHUNK].into_boxed_slice());
        }
        self.slots += 1;
        if let Some(c) = self.get_mut(slot) {
            *c = conn;
        }
        slot
    }

    /// Adds `slot` (holding a key not yet indexed) to the index.
    pub fn index(&mut self, hash: u64, slot: u32) {
        self.grow_index_for(self.indexed + 1);
        let mask = self.buckets.len() - 1;
        let mut i = self.home(hash);
        while self.buckets[i] != 0 {
            i = (i + 1) & mask;
        }
        self.buckets[i] = (hash >> 32) << 32 | (slot as u64 + 1);
        self.indexed += 1;
    }

    /// Removes `slot` from the index (no-op if absent).
    pub fn unindex(&mut self, hash: u64, slot: u32) {
        if self.buckets.is_empty() {
            return;
        }
        let mask = self.buckets.len() - 1;
        let want = (hash >> 32) << 32 | (slot as u64 + 1);
        let mut i = self.home(hash);
        loop {
            let b = self.buckets[i];
            if b == 0 {
                return;
            }
            if b == want {
                break;
            }
            i = (i + 1) & mask;
        }
        // Backward-shift: pull later members of the chain into the hole when their home is not
        // cyclically inside (hole, j].
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let b = self.buckets[j];
            if b == 0 {
                break;
            }
            let home = ((b >> 32) as usize) & mask;
            let dist_j = j.wrapping_sub(home) & mask;
            let dist_hole = j.wrapping_sub(hole) & mask;
            if dist_j >= dist_hole {
                self.buckets[hole] = b;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.buckets[hole] = 0;
        self.indexed -= 1;
    }

    /// Frees an (unindexed) slot.
    pub fn release(&mut self, slot: u32) {
        if let Some(c) = self.get_mut(slot)
            && c.has(flag::OCCUPIED)
        {
            c.flags = 0;
            self.free.push(slot);
            self.occupied -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    fn tuple(n: u16) -> Tuple {
        Tuple {
            src: IpAddr::V4(Ipv4Addr::new(10, 0, (n >> 8) as u8, n as u8)),
            dst: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1)),
            src_port: n,
            dst_port: 80,
            proto: 6,
        }
    }

    #[test]
    fn conn_stays_small() {
        assert!(
            size_of::<Conn>() <= 168,
            "Conn is {} bytes",
            size_of::<Conn>()
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        /// The index agrees with a HashMap model under random inserts and removals.
        #[test]
        fn index_matches_model(ops in proptest::collection::vec((any::<bool>(), 0u16..64), 0..400)) {
            let mut s = Store::default();
            let mut model: HashMap<u16, u32> = HashMap::new();
            for (insert, n) in ops {
                let t = tuple(n);
                let h = hash_key(0, &t);
                if insert {
                    if let std::collections::hash_map::Entry::Vacant(v) = model.entry(n) {
                        let slot = s.alloc(Conn { orig: t, flags: flag::OCCUPIED, ..Conn::default() });
                        s.index(h, slot);
                        v.insert(slot);
                    }
                } else if let Some(slot) = model.remove(&n) {
                    s.unindex(h, slot);
                    s.release(slot);
                }
                for k in 0..64u16 {
                    let t = tuple(k);
                    prop_assert_eq!(s.find(hash_key(0, &t), 0, &t), model.get(&k).copied());
                }
                prop_assert_eq!(s.indexed(), model.len());
            }
        }
    }
}
