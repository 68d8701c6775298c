//! The per-Node flow exporter: conntrack entries in, flow records out, exactly.
//!
//! A sans-IO state machine in quinn-proto's shape. The driver feeds it
//! - [`FlowExporter::handle_dump`] with a *complete* conntrack table every poll interval,
//! - [`FlowExporter::handle_destroy`] with destroy events (final counters of short connections),
//! - [`FlowExporter::handle_entries`] with partial tables or NEW/UPDATE events, if any,
//! - [`FlowExporter::handle_metadata`] with informer events,
//! - [`FlowExporter::handle_timeout`] when [`FlowExporter::poll_timeout`] says so,
//!
//! and, after each of those calls, pulls [`FlowExporter::poll_record`] until `None` (records
//! become ready only inside `handle_*` and `ack`/`nack`), sending each record and answering
//! [`FlowExporter::ack`] (sent) or [`FlowExporter::nack`] (not sent; retried one timer tick
//! later). Every polled record must be answered: a connection with a record in flight is not
//! exported again, and an ended one is not forgotten, until then.
//!
//! Semantics (DESIGN.md "Record semantics"):
//! - A connection's identity is `(zone, original tuple)` plus conntrack id and start time; an
//!   entry with the same tuple but another id/start, or with counters that went down, is a new
//!   connection: the old one is ended first (end-of-flow record), so deltas are never negative
//!   and never merge two connections.
//! - Flow key: source from the original tuple, destination the real endpoint from the reply
//!   tuple; the Service from the original destination (ClusterIP:port, LoadBalancer IP:port,
//!   Node address:NodePort).
//! - Deltas are totals minus the totals of the last *acknowledged* record: a nacked record
//!   changes nothing, and the next record carries what it missed.
//! - A connection with unexported traffic is exported when it has been quiet for the idle
//!   timeout (reason 1) or when the active timeout has passed since its last export (reason 2);
//!   a connection that ends (TCP TIME_WAIT/CLOSE, missing from a complete dump, destroy event)
//!   gets one end-of-flow record (3) with its final counters and is forgotten once that is
//!   acknowledged; [`FlowExporter::shutdown`] ends every connection with reason 4; a full store
//!   evicts (second-chance clock) with reason 5, counted.
//! - Only connections with a Pod of this Node at one end are kept (a Pod-CIDR address of this
//!   Node counts, so informer lag loses nothing); the rest are counted and ignored.
//! - Records carry Pod/Node names of both ends when the index knows them (a cluster-wide index,
//!   unlike Antrea's local-only fill), the Service, and the ingress (destination Pod) and egress
//!   (source Pod) NetworkPolicy verdicts, all evaluated when the record is built, for the Pods
//!   that held the addresses when the connection started.
//!
//! After a connection ends, its conntrack identity is kept as a tombstone while the kernel still
//! lists it (TIME_WAIT lasts minutes; an evicted connection goes on) and through one more dump (a
//! destroy event racing behind the dump that missed it), so it is not counted again. A
//! late destroy's counters beyond the last dump are lost in that race (counted as a tombstoned
//! entry), never double counted.
//!
//! Timers: due exports are found in `handle_dump`'s pass over the table and by a scan in
//! `handle_timeout`, at most once per `timer_granularity`, so exports are late by at most that.

mod store;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use thiserror::Error;

use crate::metadata::{EndpointKind, MetadataIndex, MetadataUpdate, PodId, PolicyMatch};
use crate::model::{
    BiCounters, ConntrackEntry, FlowEndReason, FlowKey, FlowRecord, FlowType, Interner,
    PolicyFields, PolicyType, RuleAction, Sym, TcpState, Timestamp,
};
use crate::policy::Verdict;

use store::{Conn, NO_TCP, Store, flag, hash_key};

/// Policy verdicts already evaluated, by flow ends: `(source address, its Pod, destination
/// address, its Pod, protocol, destination port)` is everything NetworkPolicy evaluation reads
/// besides the Pods' labels, namespaces and ports, their namespaces' labels and the policies.
/// Evaluation is the most expensive part of building a record, and a connection's records (and
/// the connections of one Pod pair) share their verdicts.
///
/// Invalidated by [`FlowExporter::handle_metadata`]: a policy or namespace change clears it, and
/// so does a Pod update that changes what evaluation reads of the Pod. A new Pod gets a
/// [`PodId`] no entry names; deletes and expiry change nothing evaluation reads (an expired
/// Pod's id is never handed out again). Bounded: cleared when full.
#[derive(Debug, Default)]
struct VerdictCache {
    map: HashMap<VerdictKey, (PolicyMatch, PolicyMatch), foldhash::fast::FixedState>,
}

type VerdictKey = (IpAddr, Option<PodId>, IpAddr, Option<PodId>, u8, u16);

impl VerdictCache {
    const MAX: usize = 1 << 14;

    fn clear(&mut self) {
        self.map.clear();
    }

    fn get_or_eval(
        &mut self,
        meta: &mut MetadataIndex,
        key: VerdictKey,
    ) -> (PolicyMatch, PolicyMatch) {
        if let Some(v) = self.map.get(&key) {
            return *v;
        }
        let (src, src_pod, dst, dst_pod, proto, port) = key;
        let v = meta.evaluate_policies((src, src_pod), (dst, dst_pod), proto, port);
        if self.map.len() >= Self::MAX {
            self.map.clear();
        }
        self.map.insert(key, v);
        v
    }

    /// Drops what `update` may change, before it is applied to `meta`.
    fn invalidate(&mut self, meta: &MetadataIndex, update: &MetadataUpdate) {
        let keep = match update {
            MetadataUpdate::Pod(p) => meta.pod_by_uid(&p.uid).is_none_or(|e| {
                e.host_network == p.host_network
                    && e.labels == p.labels
                    && e.ports == p.ports
                    && meta.interner().resolve(e.namespace) == p.namespace
            }),
            MetadataUpdate::PodDeleted { .. }
            | MetadataUpdate::Node(_)
            | MetadataUpdate::NodeDeleted { .. }
            | MetadataUpdate::Service(_)
            | MetadataUpdate::ServiceDeleted { .. } => true,
            MetadataUpdate::Namespace(_)
            | MetadataUpdate::NamespaceDeleted { .. }
            | MetadataUpdate::Policy(_)
            | MetadataUpdate::PolicyDeleted { .. } => false,
        };
        if !keep {
            self.map.clear();
        }
    }
}

/// Exporter settings (Antrea's names where they match).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExporterConfig {
    /// This Node's name: connections with one of its Pods at an end are kept.
    pub node_name: String,
    /// `clusterId` on every record, if set.
    pub cluster_id: Option<String>,
    /// `activeFlowExportTimeout`.
    pub active_timeout: Duration,
    /// `idleFlowExportTimeout`.
    pub idle_timeout: Duration,
    /// How often timers are checked between dumps, and the retry delay after a nack.
    pub timer_granularity: Duration,
    /// Bound on live tracked connections (beyond it the store evicts, reason 5). Ended
    /// connections awaiting their final acknowledgement may take as many again; past that, new
    /// connections are refused and counted.
    pub max_connections: usize,
    /// How long a deleted Pod's IPs keep resolving to it.
    pub metadata_grace: Duration,
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            node_name: String::new(),
            cluster_id: None,
            active_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(15),
            timer_granularity: Duration::from_secs(1),
            max_connections: 1 << 20,
            metadata_grace: Duration::from_secs(300),
        }
    }
}

/// Handle of a polled record, to [`FlowExporter::ack`] or [`FlowExporter::nack`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExportId(pub u64);

/// A record to send, and the handle to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Export {
    pub id: ExportId,
    pub record: FlowRecord,
}

/// Answering a record the exporter has no record of.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AckError {
    #[error("unknown export id {0:?}: never polled, or already acked/nacked")]
    UnknownExport(ExportId),
}

/// Counters a user would alert on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExporterStats {
    /// Live tracked connections.
    pub tracked: usize,
    /// Ended connections whose final record is not acknowledged yet.
    pub ending: usize,
    /// Dump entries / destroy events skipped: no Pod of this Node at either end.
    pub ignored_entries: u64,
    /// Connections ever tracked.
    pub connections_seen: u64,
    /// A tracked tuple came back with another conntrack id/start or lower counters.
    pub reused_tuples: u64,
    /// Evicted for a full store (reason 5).
    pub evicted: u64,
    /// New connections not tracked: the store was full of connections that could not be evicted
    /// (records in flight / awaiting acknowledgement).
    pub refused_store_full: u64,
    /// Entries skipped because their connection already ended (TIME_WAIT tails, evicted).
    pub tombstoned_entries: u64,
    pub tombstones: usize,
    pub records_polled: u64,
    pub records_acked: u64,
    pub records_nacked: u64,
    /// Bytes of the connection store's allocations.
    pub store_heap_bytes: usize,
}

#[derive(Clone, Copy, Debug)]
struct InFlight {
    slot: u32,
    totals: BiCounters,
    reason: FlowEndReason,
    polled_at: Timestamp,
}

/// See the module docs.
#[derive(Debug)]
pub struct FlowExporter {
    cfg: ExporterConfig,
    local_node: Sym,
    cluster_id: Option<Sym>,
    meta: MetadataIndex,
    store: Store,
    epoch: u32,
    ready: VecDeque<u32>,
    retry: Vec<u32>,
    retry_at: Option<Timestamp>,
    inflight: HashMap<u64, InFlight>,
    next_id: u64,
    /// Fingerprints of ended connections the kernel may still list → last epoch seen.
    tombstones: HashMap<u64, u32>,
    /// Earliest time a timer may be due; `None`: nothing pending.
    next_check: Option<Timestamp>,
    hand: usize,
    verdicts: VerdictCache,
    stats: ExporterStats,
}

/// The entry's counters; a direction the entry does not report (accounting off) keeps `prev`,
/// so a missing attribute never reads as counters going down.
fn counters_or(e: &ConntrackEntry, prev: BiCounters) -> BiCounters {
    let (op, ob) = e
        .orig_counters
        .map_or((prev.packets, prev.octets), |c| (c.packets, c.bytes));
    let (rp, rb) = e
        .reply_counters
        .map_or((prev.reverse_packets, prev.reverse_octets), |c| {
            (c.packets, c.bytes)
        });
    BiCounters {
        packets: op,
        octets: ob,
        reverse_packets: rp,
        reverse_octets: rb,
    }
}

fn counters(e: &ConntrackEntry) -> BiCounters {
    let o = e.orig_counters.unwrap_or_default();
    let r = e.reply_counters.unwrap_or_default();
    BiCounters {
        packets: o.packets,
        octets: o.bytes,
        reverse_packets: r.packets,
        reverse_octets: r.bytes,
    }
}

/// Identity fingerprint for tombstones: tuple, zone, id and start.
fn fingerprint(e: &ConntrackEntry) -> u64 {
    let h = hash_key(e.zone, &e.orig);
    let id = (e.id as u64) << 32 ^ e.start.map_or(0, |s| s.as_nanos());
    let r = (h ^ id.rotate_left(17)) as u128 * 0x9e37_79b9_7f4a_7c15u128;
    (r as u64) ^ ((r >> 64) as u64) ^ h
}

/// [`fingerprint`] of the entry a tracked connection came from.
fn conn_fingerprint(c: &Conn) -> u64 {
    fingerprint(&ConntrackEntry {
        orig: c.orig,
        zone: c.zone,
        id: c.ct_id,
        start: c.has(flag::CT_START).then_some(c.start),
        ..ConntrackEntry::default()
    })
}

fn min_ts(a: Option<Timestamp>, b: Timestamp) -> Option<Timestamp> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl FlowExporter {
    pub fn new(mut cfg: ExporterConfig) -> FlowExporter {
        // A zero granularity would let a driver that loops on `poll_timeout` spin on scans.
        cfg.timer_granularity = cfg.timer_granularity.max(Duration::from_millis(1));
        let mut meta = MetadataIndex::new(cfg.metadata_grace);
        let local_node = meta.interner_mut().intern(&cfg.node_name);
        let cluster_id = cfg
            .cluster_id
            .as_deref()
            .map(|c| meta.interner_mut().intern(c));
        FlowExporter {
            cfg,
            local_node,
            cluster_id,
            meta,
            store: Store::default(),
            epoch: 0,
            ready: VecDeque::new(),
            retry: Vec::new(),
            retry_at: None,
            inflight: HashMap::new(),
            next_id: 1,
            tombstones: HashMap::new(),
            next_check: None,
            hand: 0,
            verdicts: VerdictCache::default(),
            stats: ExporterStats::default(),
        }
    }

    /// Like [`FlowExporter::new`], with room for `n` connections reserved up front.
    pub fn with_capacity(cfg: ExporterConfig, n: usize) -> FlowExporter {
        let mut e = FlowExporter::new(cfg);
        e.store = Store::with_capacity(n);
        e
    }

    pub fn config(&self) -> &ExporterConfig {
        &self.cfg
    }

    pub fn metadata(&self) -> &MetadataIndex {
        &self.meta
    }

    /// Resolves the [`Sym`]s of records.
    pub fn interner(&self) -> &Interner {
        self.meta.interner()
    }

    pub fn stats(&self) -> ExporterStats {
        ExporterStats {
            tracked: self.store.indexed(),
            ending: self.store.occupied() - self.store.indexed(),
            tombstones: self.tombstones.len(),
            store_heap_bytes: self.store.heap_bytes(),
            ..self.stats
        }
    }

    /// Applies an informer event. Connections keep the classification they got when first seen;
    /// records are enriched when built. The names of records polled before this call are only
    /// valid until it (encode each record as it is polled): the metadata's name table may be
    /// rebuilt here ([`MetadataIndex::compact`]).
    pub fn handle_metadata(&mut self, now: Timestamp, update: MetadataUpdate) {
        self.verdicts.invalidate(&self.meta, &update);
        self.meta.apply(now, update);
        let mut keep: Vec<&mut Sym> = vec![&mut self.local_node];
        if let Some(c) = &mut self.cluster_id {
            keep.push(c);
        }
        if self.meta.compact(&mut keep) {
            self.verdicts.clear();
        }
    }

    /// A complete conntrack table at `now`. Connections tracked but missing from it ended.
    pub fn handle_dump(&mut self, now: Timestamp, entries: &[ConntrackEntry]) {
        self.begin_dump(now);
        self.dump_chunk(now, entries);
        self.end_dump(now);
    }

    /// A complete dump delivered in chunks, so the caller need not hold the whole table:
    /// `begin_dump`, then `dump_chunk` for every part in any order, then `end_dump`, with no
    /// other input in between (the parts together are one instant's table, exactly as
    /// `handle_dump`). An interrupted dump may be re-sent from its start within the same
    /// `begin_dump` (seeing an entry twice is harmless); a dump that failed for good must not
    /// get `end_dump`, so nothing is ended for its absence.
    pub fn begin_dump(&mut self, now: Timestamp) {
        self.epoch = self.epoch.wrapping_add(1);
        self.flush_retry(now);
        self.next_check = None;
    }

    /// Part of the dump begun by [`Self::begin_dump`].
    pub fn dump_chunk(&mut self, now: Timestamp, entries: &[ConntrackEntry]) {
        self.observe_all(now, entries);
    }

    /// Completes the dump: a live connection it did not list has ended.
    pub fn end_dump(&mut self, now: Timestamp) {
        // Sweep: a live connection the dump did not list has ended. (Timers of the listed ones
        // were checked as they were seen, which also rebuilt `next_check`.)
        let epoch = self.epoch;
        for slot in 0..self.store.slots() {
            let Some(c) = self.store.get(slot) else {
                continue;
            };
            if !c.has(flag::OCCUPIED) || c.has(flag::ENDING) {
                continue;
            }
            if c.seen_epoch != epoch {
                // A destroy event for it may still be queued behind this dump: the tombstone
                // stops it from counting the connection again.
                let fp = conn_fingerprint(c);
                self.end(slot, now, FlowEndReason::EndOfFlow);
                self.tombstones.insert(fp, epoch);
            }
        }
        if !self.tombstones.is_empty() {
            // Kept through one dump that no longer lists the connection, for its destroy event
            // racing behind that dump.
            self.tombstones
                .retain(|_, seen| epoch.wrapping_sub(*seen) <= 1);
        }
        self.meta.expire(now);
    }

    /// Entries that are not a complete table (a partial dump, conntrack NEW/UPDATE events):
    /// tracked and updated like a dump's, but nothing is ended for being absent.
    pub fn handle_entries(&mut self, now: Timestamp, entries: &[ConntrackEntry]) {
        self.flush_retry(now);
        self.observe_all(now, entries);
    }

    /// A conntrack destroy event: the connection ended with these final counters.
    ///
    /// A destroy for another connection than the one tracked on the same tuple is for an older
    /// one (the kernel holds one connection per tuple and reports destroys in order; the tracked
    /// one was created after it): the tracked connection is left alone, and the destroyed one is
    /// reported once unless it was already (tombstone).
    pub fn handle_destroy(&mut self, now: Timestamp, e: &ConntrackEntry) {
        let at = e.stop.unwrap_or(now);
        let h = hash_key(e.zone, &e.orig);
        if let Some(slot) = self.store.find(h, e.zone, &e.orig)
            && let Some(c) = self.store.get_mut(slot)
        {
            let new = counters_or(e, c.totals);
            if Self::same_identity(c, e) && new.checked_sub(c.totals).is_some() {
                if new != c.totals {
                    c.totals = new;
                    c.last_activity = now;
                }
                if let Some(t) = e.tcp_state {
                    c.tcp_state = t as u8;
                }
                self.end(slot, at, FlowEndReason::EndOfFlow);
                self.tombstone(e);
                return;
            }
        }
        // Already reported; the destroy is the last the kernel says of it.
        if !self.tombstones.is_empty() && self.tombstones.remove(&fingerprint(e)).is_some() {
            self.stats.tombstoned_entries += 1;
            return;
        }
        // A connection born and gone between dumps: report it once. Not indexed: its tuple may
        // belong to a newer tracked connection already.
        if let Some(slot) = self.insert(now, e, false) {
            self.end(slot, at, FlowEndReason::EndOfFlow);
            self.tombstone(e);
        }
    }

    /// Checks timers; call at [`FlowExporter::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.flush_retry(now);
        self.meta.expire(now);
        if self.next_check.is_none_or(|t| now < t) {
            return;
        }
        self.next_check = None;
        for slot in 0..self.store.slots() {
            let Some(c) = self.store.get(slot) else {
                continue;
            };
            if c.has(flag::OCCUPIED) && !c.has(flag::ENDING) {
                self.consider(slot, now);
            }
        }
        // Scan at most once per granularity, however dense the deadlines.
        let floor = now + self.cfg.timer_granularity;
        self.next_check = self.next_check.map(|t| t.max(floor));
    }

    /// When [`FlowExporter::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        match (self.next_check, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next record to send, built at `now`. Answer it with `ack` or `nack`.
    pub fn poll_record(&mut self, now: Timestamp) -> Option<Export> {
        while let Some(slot) = self.ready.pop_front() {
            let Some(c) = self.store.get_mut(slot) else {
                continue;
            };
            c.flags &= !flag::QUEUED;
            if !c.has(flag::OCCUPIED) || c.has(flag::INFLIGHT) {
                continue;
            }
            let Some(reason) = FlowEndReason::from_u8(c.reason) else {
                continue;
            };
            let totals = c.totals;
            let Some(record) = self.build_record(slot, reason) else {
                continue;
            };
            if let Some(c) = self.store.get_mut(slot) {
                c.flags |= flag::INFLIGHT;
            }
            let id = self.next_id;
            self.next_id += 1;
            self.inflight.insert(
                id,
                InFlight {
                    slot,
                    totals,
                    reason,
                    polled_at: now,
                },
            );
            self.stats.records_polled += 1;
            return Some(Export {
                id: ExportId(id),
                record,
            });
        }
        None
    }

    /// The record was sent: its totals become the baseline of the next delta.
    pub fn ack(&mut self, id: ExportId) -> Result<(), AckError> {
        let f = self
            .inflight
            .remove(&id.0)
            .ok_or(AckError::UnknownExport(id))?;
        self.stats.records_acked += 1;
        let slot = f.slot;
        let Some(c) = self.store.get_mut(slot) else {
            return Ok(());
        };
        c.flags &= !(flag::INFLIGHT | flag::FRESH);
        c.acked = f.totals;
        c.last_export = f.polled_at;
        if f.reason.is_final() {
            self.store.release(slot);
        } else if c.has(flag::ENDING) {
            self.queue(slot);
        } else {
            self.consider(slot, f.polled_at);
        }
        Ok(())
    }

    /// The record was not sent: nothing changes, the connection is retried one
    /// `timer_granularity` after the record was polled.
    pub fn nack(&mut self, id: ExportId) -> Result<(), AckError> {
        let f = self
            .inflight
            .remove(&id.0)
            .ok_or(AckError::UnknownExport(id))?;
        self.stats.records_nacked += 1;
        if let Some(c) = self.store.get_mut(f.slot) {
            c.flags &= !flag::INFLIGHT;
            self.retry.push(f.slot);
            self.retry_at = min_ts(self.retry_at, f.polled_at + self.cfg.timer_granularity);
        }
        Ok(())
    }

    /// Ends every live connection with reason 4 (forced end); drain `poll_record` after.
    pub fn shutdown(&mut self, now: Timestamp) {
        for slot in 0..self.store.slots() {
            let Some(c) = self.store.get(slot) else {
                continue;
            };
            if c.has(flag::OCCUPIED) && !c.has(flag::ENDING) {
                self.end(slot, now, FlowEndReason::ForcedEnd);
            }
        }
        self.next_check = None;
    }

    /// Records polled and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    // --- internals -----------------------------------------------------------------------

    fn same_identity(c: &Conn, e: &ConntrackEntry) -> bool {
        let start_ok = match e.start {
            Some(s) => !c.has(flag::CT_START) || c.start == s,
            None => !c.has(flag::CT_START),
        };
        c.ct_id == e.id && start_ok
    }

    fn is_tombstoned(&mut self, e: &ConntrackEntry) -> bool {
        if self.tombstones.is_empty() {
            return false;
        }
        match self.tombstones.get_mut(&fingerprint(e)) {
            Some(seen) => {
                *seen = self.epoch;
                self.stats.tombstoned_entries += 1;
                true
            }
            None => false,
        }
    }

    fn tombstone(&mut self, e: &ConntrackEntry) {
        self.tombstones.insert(fingerprint(e), self.epoch);
    }

    /// Entries in batches: hash and prefetch a batch, then process it (see `Store::prefetch`).
    fn observe_all(&mut self, now: Timestamp, entries: &[ConntrackEntry]) {
        const BATCH: usize = 16;
        let mut hashes = [0u64; BATCH];
        for chunk in entries.chunks(BATCH) {
            for (h, e) in hashes.iter_mut().zip(chunk) {
                *h = hash_key(e.zone, &e.orig);
                self.store.prefetch(*h);
            }
            for (h, e) in hashes.iter().zip(chunk) {
                self.observe(now, e, *h);
            }
        }
    }

    /// One entry of a dump; `h` is `hash_key(e.zone, &e.orig)`.
    fn observe(&mut self, now: Timestamp, e: &ConntrackEntry, h: u64) {
        if let Some(slot) = self.store.find(h, e.zone, &e.orig) {
            let Some(c) = self.store.get_mut(slot) else {
                return;
            };
            let new = counters_or(e, c.totals);
            if Self::same_identity(c, e) && new.checked_sub(c.totals).is_some() {
                c.seen_epoch = self.epoch;
                if new != c.totals {
                    c.totals = new;
                    c.last_activity = now;
                    c.flags |= flag::RECENT;
                }
                if let Some(t) = e.tcp_state {
                    c.tcp_state = t as u8;
                    if t.is_closed() {
                        self.end(slot, e.stop.unwrap_or(now), FlowEndReason::EndOfFlow);
                        self.tombstone(e);
                        return;
                    }
                }
                self.consider(slot, now);
                return;
            }
            // Same tuple, another connection: finish the old one before counting the new, and
            // tombstone it against its destroy event still on the way.
            self.stats.reused_tuples += 1;
            let fp = conn_fingerprint(c);
            self.end(slot, now, FlowEndReason::EndOfFlow);
            self.tombstones.insert(fp, self.epoch);
        } else if self.is_tombstoned(e) {
            return;
        }
        if let Some(slot) = self.insert(now, e, true) {
            if e.tcp_state.is_some_and(TcpState::is_closed) {
                self.end(slot, e.stop.unwrap_or(now), FlowEndReason::EndOfFlow);
                self.tombstone(e);
            } else {
                self.consider(slot, now);
            }
        }
    }

    fn is_local(&self, k: EndpointKind) -> bool {
        match k {
            EndpointKind::Pod(id) => self
                .meta
                .pod(id)
                .is_some_and(|p| !p.host_network && p.node == Some(self.local_node)),
            EndpointKind::UnknownPod { node } => node == self.local_node,
            EndpointKind::Node { .. } | EndpointKind::External => false,
        }
    }

    /// flowType of a connection, `None` when neither end is a Pod of this Node.
    fn flow_type(&self, src: EndpointKind, dst: EndpointKind) -> Option<FlowType> {
        let (sl, dl) = (self.is_local(src), self.is_local(dst));
        let other = match (sl, dl) {
            (true, true) => return Some(FlowType::IntraNode),
            (false, false) => return None,
            (true, false) => dst,
            (false, true) => src,
        };
        Some(match other {
            EndpointKind::Pod(_) | EndpointKind::UnknownPod { .. } => FlowType::InterNode,
            // Host network: the Node's own address counts as this Node.
            EndpointKind::Node { node } if node == self.local_node => FlowType::IntraNode,
            EndpointKind::Node { .. } => FlowType::InterNode,
            EndpointKind::External if sl => FlowType::ToExternal,
            EndpointKind::External => FlowType::FromExternal,
        })
    }

    /// Starts tracking `e` if it concerns this Node and there is room.
    /// `index`: false for a connection that ends at once (from a destroy event).
    fn insert(&mut self, now: Timestamp, e: &ConntrackEntry, index: bool) -> Option<u32> {
        let start = e.start.unwrap_or(now);
        let src = self.meta.classify(e.orig.src, start);
        let dst = self.meta.classify(e.reply.src, start);
        let Some(ft) = self.flow_type(src, dst) else {
            self.stats.ignored_entries += 1;
            return None;
        };
        // Live connections are bounded by eviction; ended ones awaiting their final
        // acknowledgement (collector down) by refusing new ones at twice the bound.
        let max = self.cfg.max_connections;
        // (The hard bound first: evicting to then refuse would lose a connection for nothing.)
        if self.store.occupied() >= max.saturating_mul(2)
            || (self.store.indexed() >= max && !self.evict_one(now))
        {
            self.stats.refused_store_full += 1;
            return None;
        }
        let mut flags = flag::OCCUPIED | flag::FRESH | flag::RECENT;
        if e.start.is_some() {
            flags |= flag::CT_START;
        }
        let conn = Conn {
            orig: e.orig,
            reply_src: e.reply.src,
            reply_src_port: e.reply.src_port,
            zone: e.zone,
            ct_id: e.id,
            seen_epoch: self.epoch,
            flags,
            tcp_state: e.tcp_state.map_or(NO_TCP, |t| t as u8),
            flow_type: ft as u8,
            reason: 0,
            start,
            last_activity: now,
            last_export: now,
            totals: counters(e),
            acked: BiCounters::default(),
        };
        let slot = self.store.alloc(conn);
        if index {
            self.store.index(hash_key(e.zone, &e.orig), slot);
        }
        self.stats.connections_seen += 1;
        Some(slot)
    }

    /// Second-chance clock over the slab: evicts one live connection without a record in
    /// flight, preferring ones without recent traffic.
    fn evict_one(&mut self, now: Timestamp) -> bool {
        let n = self.store.slots() as usize;
        for _ in 0..2 * n {
            let slot = self.hand % n.max(1);
            self.hand = slot + 1;
            let Some(c) = self.store.get_mut(slot as u32) else {
                return false;
            };
            if !c.has(flag::OCCUPIED) || c.has(flag::ENDING) || c.has(flag::INFLIGHT) {
                continue;
            }
            if c.has(flag::RECENT) {
                c.flags &= !flag::RECENT;
                continue;
            }
            // The kernel keeps the connection: tombstone it so it is not tracked again as new.
            let fp = conn_fingerprint(c);
            self.end(slot as u32, now, FlowEndReason::LackOfResources);
            self.tombstones.insert(fp, self.epoch);
            self.stats.evicted += 1;
            return true;
        }
        false
    }

    /// Ends a live connection: out of the index, final record queued (after any in flight).
    fn end(&mut self, slot: u32, at: Timestamp, reason: FlowEndReason) {
        let Some(c) = self.store.get_mut(slot) else {
            return;
        };
        if c.has(flag::ENDING) {
            return;
        }
        c.flags |= flag::ENDING;
        c.reason = reason as u8;
        c.last_activity = at.max(c.last_activity);
        let h = hash_key(c.zone, &c.orig);
        let inflight = c.has(flag::INFLIGHT);
        self.store.unindex(h, slot);
        if !inflight {
            self.queue(slot);
        }
    }

    fn queue(&mut self, slot: u32) {
        if let Some(c) = self.store.get_mut(slot)
            && !c.has(flag::QUEUED)
        {
            c.flags |= flag::QUEUED;
            self.ready.push_back(slot);
        }
    }

    /// Queues a live connection whose export is due, else notes its deadline.
    fn consider(&mut self, slot: u32, now: Timestamp) {
        let Some(c) = self.store.get_mut(slot) else {
            return;
        };
        if c.has(flag::QUEUED) || c.has(flag::INFLIGHT) {
            return;
        }
        if c.totals == c.acked && !c.has(flag::FRESH) {
            return;
        }
        let idle_at = c.last_activity + self.cfg.idle_timeout;
        let active_at = c.last_export + self.cfg.active_timeout;
        if now >= idle_at {
            c.reason = FlowEndReason::IdleTimeout as u8;
        } else if now >= active_at {
            c.reason = FlowEndReason::ActiveTimeout as u8;
        } else {
            self.next_check = min_ts(self.next_check, idle_at.min(active_at));
            return;
        }
        self.queue(slot);
    }

    fn flush_retry(&mut self, now: Timestamp) {
        if self.retry_at.is_none_or(|t| now < t) {
            return;
        }
        self.retry_at = None;
        let retry = std::mem::take(&mut self.retry);
        for &slot in &retry {
            let Some(c) = self.store.get(slot) else {
                continue;
            };
            if !c.has(flag::OCCUPIED) || c.has(flag::INFLIGHT) {
                continue;
            }
            if c.has(flag::ENDING) {
                self.queue(slot);
            } else {
                self.consider(slot, now);
            }
        }
        self.retry = retry;
        self.retry.clear();
    }

    fn build_record(&mut self, slot: u32, reason: FlowEndReason) -> Option<FlowRecord> {
        let c = *self.store.get(slot)?;
        let key = FlowKey {
            src: c.orig.src,
            dst: c.reply_src,
            src_port: c.orig.src_port,
            dst_port: c.reply_src_port,
            proto: c.orig.proto,
        };
        let src_kind = self.meta.classify(key.src, c.start);
        let dst_kind = self.meta.classify(key.dst, c.start);
        let pod_of = |k: EndpointKind| match k {
            EndpointKind::Pod(id) => Some(id),
            _ => None,
        };
        let (src_pod, dst_pod) = (pod_of(src_kind), pod_of(dst_kind));
        // The address the client dialled, DNATed or not (a Service without endpoints is still
        // the Service the client asked for).
        let service = self.meta.service(c.orig.dst, c.orig.proto, c.orig.dst_port);
        let (ingress, egress) = self.verdicts.get_or_eval(
            &mut self.meta,
            (key.src, src_pod, key.dst, dst_pod, key.proto, key.dst_port),
        );
        let meta = &self.meta;
        let node_of = |k: EndpointKind| match k {
            EndpointKind::Pod(id) => meta.pod(id).and_then(|p| p.node),
            EndpointKind::UnknownPod { node } | EndpointKind::Node { node } => Some(node),
            EndpointKind::External => None,
        };
        let pod = |id: Option<PodId>| id.and_then(|id| meta.pod(id));
        let (sp, dp) = (pod(src_pod), pod(dst_pod));
        let deltas = c.totals.checked_sub(c.acked).unwrap_or_default();
        Some(FlowRecord {
            flow_start: c.start,
            flow_end: c.last_activity,
            flow_end_reason: reason,
            key,
            totals: c.totals,
            deltas,
            source_pod_namespace: sp.map(|p| p.namespace),
            source_pod_name: sp.map(|p| p.name),
            destination_pod_namespace: dp.map(|p| p.namespace),
            destination_pod_name: dp.map(|p| p.name),
            source_node_name: node_of(src_kind),
            destination_node_name: node_of(dst_kind),
            destination_cluster_ip: service.map(|s| s.address),
            destination_service_port: service.map(|s| s.port),
            destination_service_port_name: service.map(|s| s.port_name),
            ingress_policy: policy_fields(ingress),
            egress_policy: policy_fields(egress),
            tcp_state: TcpState::from_kernel(c.tcp_state),
            flow_type: FlowType::from_u8(c.flow_type).unwrap_or(FlowType::ToExternal),
            source_pod_labels: sp.map(|p| p.labels_json),
            destination_pod_labels: dp.map(|p| p.labels_json),
            cluster_id: self.cluster_id,
        })
    }
}

fn policy_fields(m: PolicyMatch) -> PolicyFields {
    match m.verdict {
        Verdict::NotIsolated => PolicyFields::default(),
        Verdict::WouldDeny => PolicyFields {
            action: Some(RuleAction::Drop),
            ..PolicyFields::default()
        },
        Verdict::Allowed { .. } => PolicyFields {
            name: m.policy.map(|p| p.1),
            namespace: m.policy.map(|p| p.0),
            policy_type: Some(PolicyType::K8sNetworkPolicy),
            rule_name: m.rule_name,
            action: Some(RuleAction::Allow),
        },
    }
}

#[cfg(test)]
mod tests;
