//! The aggregator core: turns the two Node halves of each inter-Node flow into one complete
//! record, and passes intra-Node and external flows through with the same per-Node accounting.
//!
//! Sans-IO in quinn-proto's shape: [`Aggregator::handle_record`] (or `handle_half`) takes input
//! with `now`, [`Aggregator::poll_record`] yields aggregated records, [`Aggregator::poll_timeout`]
//! says when [`Aggregator::handle_timeout`] is next due.
//!
//! Invariants:
//! - Per-Node deltas are computed here from the totals each Node reports, against the totals this
//!   aggregator last exported for that Node: duplicates, re-sends and reordering cannot double
//!   count, and a stale half (totals or end time behind what that Node already reported) is
//!   ignored and counted.
//! - Every flow is exported: correlated as soon as both halves are in; after
//!   `correlation_timeout` without a partner, exported uncorrelated (counted); evicted flows (store
//!   full) are exported with flowEndReason 5 (counted). Nothing is dropped silently.
//! - End of flow is sticky: once a Node reports it, the flow ends when every Node it has heard
//!   from has ended (or the partner wait is over). The finished flow is kept as a tombstone for
//!   `inactive_timeout`, and at least as long as conntrack may still list it (150 s): a late half
//!   of it, or a restarted agent's re-export, is exported against what was already exported, with
//!   the flow's fields.
//! - A Node names a connection by its start second. A half joins the flow in flight only if it is
//!   the same connection: the same start as its Node's side, or a start within
//!   [`CLOCK_TOLERANCE_SECS`] of the other Node's. An older connection's late half on a reused
//!   5-tuple goes to its tombstone (or out on its own), never into the newer connection's record.
//! - Memory is bounded: `max_flows` flows in flight and as many tombstones; names by
//!   `max_name_bytes` (interned, reference-counted, freed with their last flow; see
//!   [`intern`]). When the flow table is full, a new flow evicts the flow nearest its deadline if
//!   that flow's exporter holds at least its fair share of the table, else a flow of the exporter
//!   holding the most: one exporter's burst evicts its own flows, not everyone's.

mod half;
mod intern;
mod record;
#[cfg(test)]
mod tests;
mod tombs;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::ipfix::DataRecord;
use crate::model::Timestamp;

pub use half::{
    CorrelationKey, DEFAULT_MAX_LABEL_BYTES, FlowHalf, FlowMeta, HalfError, MAX_LABEL,
    MAX_SERVICE_PORT_NAME, MAX_SUBDOMAIN, OCTETS, PACKETS, PolicyRef, REV_OCTETS, REV_PACKETS,
    Refusals,
};
pub use intern::{Interner, NameRefusal, Sym};
use intern::{MetaId, MetaTable};
pub use record::{AggregatedRecord, NodeCounters, PolicyInfo};
use tombs::{Tombs, Tombstone};

/// flowType values (DESIGN.md).
pub const FLOW_TYPE_INTRA_NODE: u8 = 1;
pub const FLOW_TYPE_INTER_NODE: u8 = 2;
/// flowEndReason values.
pub const END_IDLE: u8 = 1;
pub const END_ACTIVE: u8 = 2;
pub const END_OF_FLOW: u8 = 3;
pub const END_FORCED: u8 = 4;
pub const END_LACK_OF_RESOURCES: u8 = 5;

/// Timeouts and bounds, with Antrea's names where they match.
#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    /// `activeFlowRecordTimeout`: a flow with new data is exported at most this often.
    pub active_timeout: Duration,
    /// `inactiveFlowRecordTimeout`: a flow without updates for this long gets its last export
    /// and is forgotten.
    pub inactive_timeout: Duration,
    /// How long an inter-Node half waits for its partner before it is exported uncorrelated.
    pub correlation_timeout: Duration,
    /// In-flight flows at most (and as many tombstones); beyond it a flow is exported (reason
    /// 5) and evicted, chosen fairly among exporters (module docs).
    pub max_flows: usize,
    /// Text bytes of the interned names (Pods, Namespaces, Nodes, Services, policies, labels)
    /// at most; charged per exporter (see [`intern`]).
    pub max_name_bytes: usize,
    /// Longest Pod-labels JSON accepted; a longer one is refused (the field treated as absent).
    pub max_label_bytes: usize,
    /// `clusterId` put in every record.
    pub cluster_id: String,
    /// Seed of the flow-table hash. Random per process in production (flow keys come from the
    /// network, so a fixed seed would invite collision floods); fixed in the simulator so a
    /// seed reproduces a run.
    pub hash_seed: u64,
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            active_timeout: Duration::from_secs(60),
            inactive_timeout: Duration::from_secs(90),
            correlation_timeout: Duration::from_secs(10),
            max_flows: 1_000_000,
            max_name_bytes: 64 << 20,
            max_label_bytes: DEFAULT_MAX_LABEL_BYTES,
            cluster_id: String::new(),
            hash_seed: 0,
        }
    }
}

/// Who sent a half: the exporter's address and observation domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExporterId {
    pub addr: IpAddr,
    pub domain: u32,
}

/// Counters a user would alert on.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AggregatorStats {
    pub records_in: u64,
    /// Data records that are not flow records (no 5-tuple).
    pub records_invalid: u64,
    /// Halves behind what their Node already reported; ignored.
    pub records_stale: u64,
    /// Halves identical to what their Node already reported; nothing to do.
    pub records_duplicate: u64,
    pub flows_created: u64,
    /// Inter-Node flows whose two halves met.
    pub correlated: u64,
    /// Inter-Node flows exported without a partner after the correlation timeout.
    pub uncorrelated: u64,
    /// A new connection on a 5-tuple still in flight: the old one was ended first.
    pub reused: u64,
    /// Flows evicted because the store was full (exported with reason 5).
    pub evicted: u64,
    pub records_out: u64,
    pub flows_in_flight: u64,
    /// Uncorrelated flows whose missing end was filled in from the aggregator's own metadata.
    pub filled_from_metadata: u64,
    /// Distinct Kubernetes metadata sets shared by the flows in flight.
    pub metadata_entries: u64,
    /// Finished flows forgotten before their grace time because tombstones are bounded by
    /// `max_flows`: a late half or an agent's re-export of one of them counts from the agent's
    /// baseline (totals − deltas), which double counts a re-export from a restarted agent.
    pub tombstones_evicted: u64,
    /// Names in the table, and their text bytes.
    pub names: u64,
    pub name_bytes: u64,
    /// Names refused (the field treated as absent): longer than Kubernetes allows, or new while
    /// the table was over `max_name_bytes` and their exporter over its share.
    pub names_too_long: u64,
    pub names_over_budget: u64,
    /// `tcpState` values that are not kernel state names (treated as absent).
    pub tcp_states_invalid: u64,
    /// Flows and tombstones of the exporter charged the most name bytes, evicted to bring the
    /// name table back under `max_name_bytes` (flows exported first, reason 5).
    pub evicted_for_names: u64,
    /// Exporters (address, observation domain) the aggregator has heard from.
    pub exporters: u64,
}

/// Counters of one exporter, for per-exporter drop metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExporterCounters {
    pub records_in: u64,
    /// Names of its records refused (too long, or over its share of the name budget), and
    /// `tcpState` values refused.
    pub names_refused: u64,
    /// Its flows evicted because the flow table was full or for name bytes.
    pub flows_evicted: u64,
    /// Flows it holds in flight now.
    pub flows: u64,
}

/// The exporters table: who sent halves, and what each holds (the fair shares).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ExporterState {
    pub(crate) id: ExporterId,
    counters: ExporterCounters,
}

/// One Node's view of a flow, and what of it was already exported.
#[derive(Clone, Copy, Debug)]
struct Side {
    start_secs: u32,
    totals: [u64; 4],
    exported: [u64; 4],
    end_secs: u32,
    exported_end_secs: u32,
    end_reason: u8,
    /// Index into `Aggregator::exporters`.
    exporter: u16,
    /// Which side this is (set by `Sides::set`); an enum, so `Option<Side>` needs no extra tag.
    which: Which,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Source,
    Destination,
}

impl Which {
    fn of(i: usize) -> Which {
        if i == SOURCE {
            Which::Source
        } else {
            Which::Destination
        }
    }
}

impl Side {
    fn ended(&self) -> bool {
        matches!(
            self.end_reason,
            END_OF_FLOW | END_FORCED | END_LACK_OF_RESOURCES
        )
    }
}

const SOURCE: usize = 0;
const DESTINATION: usize = 1;

/// A flow's per-Node views. Most flows in flight have one (intra-Node and external flows, and
/// inter-Node flows awaiting their partner), so the second lives in its own allocation and a
/// one-sided flow pays 8 bytes for it.
#[derive(Default)]
struct Sides {
    first: Option<Side>,
    second: Option<Box<Side>>,
}

impl Sides {
    fn get(&self, i: usize) -> Option<&Side> {
        match &self.first {
            Some(f) if f.which == Which::of(i) => Some(f),
            Some(_) => self.second.as_deref(),
            None => None,
        }
    }

    fn set(&mut self, i: usize, mut side: Side) {
        side.which = Which::of(i);
        match &mut self.first {
            None => self.first = Some(side),
            Some(f) if f.which == side.which => *f = side,
            Some(_) => match &mut self.second {
                Some(b) => **b = side,
                None => self.second = Some(Box::new(side)),
            },
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Side> {
        self.first.iter().chain(self.second.as_deref())
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Side> {
        self.first.iter_mut().chain(self.second.as_deref_mut())
    }

    fn both(&self) -> bool {
        self.second.is_some()
    }
}

/// How far apart (seconds) two Nodes may report the same connection's start: their clocks differ,
/// and each Node sees the connection begin when its first packet passes. Halves further apart are
/// taken for different connections on the same 5-tuple (correlating them would mix two
/// connections' counters in one record; each Node's counts are exact either way). Agents must
/// report conntrack's start timestamps (not first-seen times) for halves to correlate.
const CLOCK_TOLERANCE_SECS: u32 = 5;

/// How long after a connection ends a Node's conntrack may still list it: TCP TIME_WAIT and
/// assured UDP streams are kept 120 s (`nf_conntrack_tcp_timeout_time_wait`,
/// `nf_conntrack_udp_timeout_stream`), plus an agent's poll interval and the clocks' tolerance.
const CONNTRACK_LINGER: Duration = Duration::from_secs(150);

/// Where a half goes.
enum Target {
    /// Nothing new (a duplicate, or stale): counted, ignored.
    Ignore,
    /// An update of the flow in flight.
    Flow(u32),
    /// A late half of a finished flow (its tombstone): only what it adds is exported, at once.
    Late,
    /// A connection this aggregator does not know.
    New,
    /// An older connection than the one in flight on its 5-tuple, and no longer remembered:
    /// exported on its own, uncorrelated.
    Alone,
}

struct Flow {
    key: CorrelationKey,
    start_secs: u32,
    tcp_state: Option<crate::model::TcpState>,
    /// The exporter whose half created the flow; its share of the table counts the flow.
    owner: u16,
    /// Merged Kubernetes fields, shared with flows that have the same.
    meta: MetaId,
    flow_type: u8,
    sides: Sides,
    /// While awaiting the partner: when the flow was created (the correlation timeout counts from
    /// it; nothing was exported yet). Afterwards: when it was last exported, `ZERO` if never. One
    /// field for both saves 16 bytes per flow.
    since: Timestamp,
    updated: Timestamp,
    /// Deadline of the flow's live timer entry, and that entry's sequence number (0: none); the
    /// heap's other entries for this slot are stale.
    deadline: Timestamp,
    generation: u32,
    /// An inter-Node flow still expecting its other half.
    awaiting_partner: bool,
    dirty: bool,
}

impl Flow {
    fn last_export(&self) -> Option<Timestamp> {
        (!self.awaiting_partner && self.since != Timestamp::ZERO).then_some(self.since)
    }
    /// When the flow was created; only while awaiting the partner.
    fn created(&self) -> Timestamp {
        self.since
    }
    /// No longer awaiting the partner (it came, or will not).
    fn stop_awaiting(&mut self) {
        if self.awaiting_partner {
            self.awaiting_partner = false;
            self.since = Timestamp::ZERO;
        }
    }
    fn needs_partner(&self) -> bool {
        self.flow_type == FLOW_TYPE_INTER_NODE
    }
    fn correlated(&self) -> bool {
        self.sides.both()
    }
    /// Every Node we heard from has ended it, and we are not waiting for another.
    fn ended(&self) -> bool {
        let mut any = false;
        for s in self.sides.iter() {
            if !s.ended() {
                return false;
            }
            any = true;
        }
        any && !self.awaiting_partner
    }
}

/// The aggregation state machine.
pub struct Aggregator {
    cfg: AggregatorConfig,
    strings: Interner,
    cluster_id: Sym,
    flows: Vec<Option<Flow>>,
    free: Vec<u32>,
    /// Flow ids by key; the key itself lives only in the flow (a 4-byte slot per flow).
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::FixedState,
    /// At most 65,536 (a `u16` index; past that the last index is shared, which only affects
    /// `originalExporter*` fields and that exporter's counters). Exporters holding a flow.
    exporters: Vec<ExporterState>,
    exporter_ids: HashMap<ExporterId, u16, foldhash::fast::FixedState>,
    active_exporters: usize,
    /// Where the search for an evictable flow of one exporter resumes (a clock hand over the
    /// flow slots).
    hand: usize,
    /// The kernel's TCP state names, pinned in `strings`, by `TcpState as usize`.
    tcp_names: [Sym; 10],
    /// Per interned Node name, its observation domain (`side_of` runs per record).
    node_domains: Vec<u32>,
    /// (deadline, flow id, sequence), earliest first. Lazy deletion: rescheduling pushes a new
    /// entry and leaves the old one, which no longer matches its flow's `generation`; stale
    /// entries are skipped when they surface and purged when they outnumber the flows. The top
    /// entry is always live (see `prune_timers`), so `poll_timeout` is a peek.
    timers: BinaryHeap<Reverse<(Timestamp, u32, u32)>>,
    timer_seq: u32,
    out: VecDeque<AggregatedRecord>,
    metas: MetaTable,
    /// The aggregator's own view of the cluster, for filling in flows whose partner never came.
    metadata: Option<crate::metadata::MetadataIndex>,
    tombstones: Tombs,
    /// When `handle_timeout` next looks for memory to give back …
    next_tidy: Timestamp,
    /// … if anything was added or removed since it last did (a timer then, so that what the
    /// last expiry freed is given back without waiting for the next record).
    untidy: bool,
    /// Where the shutdown flush resumes.
    flush_cursor: usize,
    stats: AggregatorStats,
}

impl Aggregator {
    pub fn new(cfg: AggregatorConfig) -> Aggregator {
        let mut strings = Interner::with_max_bytes(cfg.max_name_bytes);
        let cluster_id = strings.intern(&cfg.cluster_id);
        strings.pin(cluster_id);
        let tcp_names = std::array::from_fn(|i| {
            let name = crate::model::TcpState::from_kernel(i as u8).map_or("", |t| t.name());
            let sym = strings.intern(name);
            strings.pin(sym);
            sym
        });
        let cfg_seed = cfg.hash_seed;
        let mut agg = Aggregator {
            hasher: foldhash::fast::FixedState::with_seed(cfg.hash_seed),
            metas: MetaTable::new(cfg.hash_seed),
            metadata: None,
            cfg,
            strings,
            cluster_id,
            flows: Vec::new(),
            free: Vec::new(),
            index: hashbrown::HashTable::new(),
            exporters: Vec::new(),
            exporter_ids: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(
                cfg_seed ^ 0x5eed,
            )),
            active_exporters: 0,
            hand: 0,
            tcp_names,
            node_domains: Vec::new(),
            timers: BinaryHeap::new(),
            timer_seq: 0,
            out: VecDeque::new(),
            tombstones: Tombs::new(cfg_seed),
            next_tidy: Timestamp::ZERO,
            untidy: false,
            flush_cursor: 0,
            stats: AggregatorStats::default(),
        };
        agg.stats.names = agg.strings.len() as u64;
        agg.stats.name_bytes = agg.strings.bytes() as u64;
        agg
    }

    pub fn stats(&self) -> &AggregatorStats {
        &self.stats
    }

    pub fn config(&self) -> &AggregatorConfig {
        &self.cfg
    }

    /// Interned strings (for callers building halves themselves).
    pub fn strings(&mut self) -> &mut Interner {
        &mut self.strings
    }

    /// Kubernetes metadata (from the aggregator's own informers or a static file), used to fill in
    /// the other end of flows exported without their partner.
    pub fn handle_metadata(&mut self, now: Timestamp, update: crate::metadata::MetadataUpdate) {
        self.metadata
            .get_or_insert_with(|| crate::metadata::MetadataIndex::new(Duration::from_secs(60)))
            .apply(now, update);
    }

    /// Every flow in flight as it would be exported now (nothing is marked exported), for queries
    /// of live flows. Deltas are since the last export.
    pub fn in_flight(&self, now: Timestamp) -> impl Iterator<Item = AggregatedRecord> + '_ {
        self.flows
            .iter()
            .flatten()
            .map(move |f| record::build(f, self.metas.get(f.meta), now, END_ACTIVE, &self.names()))
    }

    /// Flows in flight.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// What record building needs to resolve a flow's names.
    fn names(&self) -> record::Names<'_> {
        record::Names {
            strings: &self.strings,
            cluster_id: self.cluster_id,
            tcp: &self.tcp_names,
            exporters: &self.exporters,
        }
    }

    /// An agent's data record, as the collecting process decoded it. Names are charged to
    /// `exporter`; what is refused is counted, globally and for the exporter.
    pub fn handle_record(
        &mut self,
        now: Timestamp,
        exporter: ExporterId,
        rec: &DataRecord<'_>,
    ) -> Result<(), HalfError> {
        let owner = self.exporter_index(exporter);
        let mut refused = Refusals::default();
        let parsed = FlowHalf::parse(
            rec,
            &mut self.strings,
            owner,
            self.cfg.max_label_bytes,
            &mut refused,
        );
        if refused.any() {
            self.stats.names_too_long += refused.too_long as u64;
            self.stats.names_over_budget += refused.over_budget as u64;
            self.stats.tcp_states_invalid += refused.bad_tcp_state as u64;
            self.exporters[owner as usize].counters.names_refused +=
                (refused.too_long + refused.over_budget + refused.bad_tcp_state) as u64;
        }
        match parsed {
            Ok(h) => {
                self.handle_half_of(now, exporter, owner, h);
                Ok(())
            }
            Err(e) => {
                self.stats.records_in += 1;
                self.stats.records_invalid += 1;
                self.exporters[owner as usize].counters.records_in += 1;
                self.strings.sweep();
                Err(e)
            }
        }
    }

    /// An agent's record, already parsed, its names interned in [`Aggregator::strings`]. Names
    /// nothing references are freed after each record is handled: hand each half over before
    /// building the next.
    pub fn handle_half(&mut self, now: Timestamp, exporter: ExporterId, half: FlowHalf) {
        let owner = self.exporter_index(exporter);
        self.handle_half_of(now, exporter, owner, half);
    }

    fn handle_half_of(&mut self, now: Timestamp, id: ExporterId, exporter: u16, half: FlowHalf) {
        self.stats.records_in += 1;
        self.untidy = true;
        let side_idx = self.side_of(id, &half);
        self.exporters[exporter as usize].counters.records_in += 1;
        self.expire_tombstones(now);
        let fid = match self.target(now, side_idx, &half) {
            Target::Flow(fid) => fid,
            Target::New => self.create(now, exporter, &half),
            other => {
                match other {
                    Target::Late => self.late(now, side_idx, exporter, &half),
                    Target::Alone => self.alone(now, side_idx, exporter, &half),
                    _ => {}
                }
                // Resolving may have finished the flow in flight (reuse).
                self.prune_timers();
                self.settle(now);
                return;
            }
        };
        let flow = self.flows[fid as usize]
            .as_mut()
            .expect("indexed flows exist");
        apply(
            flow,
            &mut self.metas,
            &mut self.strings,
            side_idx,
            exporter,
            &half,
            now,
        );
        if flow.awaiting_partner && flow.correlated() {
            flow.stop_awaiting();
            self.stats.correlated += 1;
        }
        self.reschedule(fid, now);
        // Whatever is due now (a correlated pair, an ended flow) goes out without waiting.
        self.handle_timeout(now);
    }

    /// After a record: names nobody holds any more are freed, and a name table over its bound
    /// sheds the heaviest exporter's flows.
    fn settle(&mut self, now: Timestamp) {
        if self.strings.needs_relief() {
            // Unreferenced names first; only then flows.
            self.strings.sweep();
            if !self.strings.relieved() {
                self.relieve_names(now);
            }
        } else {
            self.strings.maybe_sweep();
        }
        self.stats.names = self.strings.len() as u64;
        self.stats.name_bytes = self.strings.bytes() as u64;
        self.stats.metadata_entries = self.metas.len() as u64;
    }

    /// Evicts tombstones, then flows, of the exporter charged the most name bytes, a bounded
    /// number per call, until the name table is back under its bound. The flows are exported
    /// first (reason 5) and leave no tombstone: what they held must go now.
    fn relieve_names(&mut self, now: Timestamp) {
        const PER_CALL: usize = 64;
        let Some(heavy) = self.strings.heaviest() else {
            return;
        };
        const SCAN: usize = 4096;
        let mut evicted = 0;
        // Tombstones of that exporter first, oldest first, in a bounded stretch of the queue.
        while evicted < PER_CALL && !self.strings.relieved() {
            let Some(old) = self.tombstones.remove_oldest_of(heavy, SCAN) else {
                break;
            };
            self.metas.release(old.meta, &mut self.strings);
            self.stats.tombstones_evicted += 1;
            self.stats.evicted_for_names += 1;
            evicted += 1;
            self.strings.sweep();
        }
        while evicted < PER_CALL && !self.strings.relieved() {
            let Some(fid) = self.find_flow_of(heavy) else {
                break;
            };
            self.stats.evicted_for_names += 1;
            self.count_eviction(fid);
            self.finish_as(fid, now, END_LACK_OF_RESOURCES, false);
            evicted += 1;
            self.strings.sweep();
        }
        if evicted == 0 {
            self.strings.give_up_relief();
        }
        self.prune_timers();
        self.tombstones.tidy();
    }

    /// A flow of exporter `owner` (the clock hand's next one), if it holds any.
    fn find_flow_of(&mut self, owner: u16) -> Option<u32> {
        if self.exporters.get(owner as usize)?.counters.flows == 0 || self.flows.is_empty() {
            return None;
        }
        let n = self.flows.len();
        for step in 0..n {
            let i = (self.hand + step) % n;
            if self.flows[i].as_ref().is_some_and(|f| f.owner == owner) {
                self.hand = (i + 1) % n;
                return Some(i as u32);
            }
        }
        None
    }

    /// Counts an eviction against the evicted flow's exporter.
    fn count_eviction(&mut self, fid: u32) {
        if let Some(f) = self.flows[fid as usize].as_ref() {
            self.exporters[f.owner as usize].counters.flows_evicted += 1;
        }
    }

    /// Which connection `half` (from side `side_idx`) belongs to: the flow in flight on its
    /// 5-tuple, the finished one (tombstone), or a new one. A Node names a connection by its
    /// start second, so a half is matched exactly against what the same Node reported; against
    /// the other Node (other clock) the nearest start within [`CLOCK_TOLERANCE_SECS`] wins.
    fn target(&mut self, now: Timestamp, side_idx: usize, half: &FlowHalf) -> Target {
        if let Some(fid) = self.find(&half.key) {
            let flow = self.flows[fid as usize]
                .as_ref()
                .expect("indexed flows exist");
            if let Some(&side) = flow.sides.get(side_idx) {
                match half.start_secs.cmp(&side.start_secs) {
                    std::cmp::Ordering::Equal => {
                        return if news(&mut self.stats, &side, half) {
                            Target::Flow(fid)
                        } else {
                            Target::Ignore
                        };
                    }
                    std::cmp::Ordering::Less => {
                        // An older connection than the one in flight: its flow was finished
                        // when the newer one began, so only its tombstone can take it.
                        return match self.tombstone_target(side_idx, half, None) {
                            Some(t) => t,
                            None => {
                                self.stats.records_stale += 1;
                                Target::Ignore
                            }
                        };
                    }
                    std::cmp::Ordering::Greater => {
                        // The same 5-tuple, a new connection: end the old one before the new
                        // begins.
                        self.stats.reused += 1;
                        self.finish(fid, now, END_OF_FLOW);
                    }
                }
            } else {
                let other = *flow.sides.iter().next().expect("a flow has a side");
                if let Some(t) = self.tombstone_target(side_idx, half, Some(&other)) {
                    return t;
                }
                if may_be_one(half, &other) {
                    return Target::Flow(fid);
                }
                if half.start_secs < other.start_secs {
                    // Over before the connection in flight began: an older one.
                    return Target::Alone;
                }
                self.stats.reused += 1;
                self.finish(fid, now, END_OF_FLOW);
            }
        }
        self.tombstone_target(side_idx, half, None)
            .unwrap_or(Target::New)
    }

    /// `Some` when the tombstone on `half`'s 5-tuple is its connection (or says it is stale):
    /// the same start second from the same Node, or, for a Node it never heard from, a start
    /// near the other Node's — nearer than `in_flight`'s, the other Node's side of the flow in
    /// flight, when there is one.
    fn tombstone_target(
        &mut self,
        side_idx: usize,
        half: &FlowHalf,
        in_flight: Option<&Side>,
    ) -> Option<Target> {
        let t = self.tombstones.get(&half.key)?;
        match t.side(side_idx) {
            Some(side) if side.start_secs == half.start_secs => {
                Some(if news(&mut self.stats, &side, half) {
                    Target::Late
                } else {
                    Target::Ignore
                })
            }
            Some(side) if half.start_secs < side.start_secs && in_flight.is_none() => {
                // Older than the finished connection this Node already reported.
                self.stats.records_stale += 1;
                Some(Target::Ignore)
            }
            Some(_) => None,
            None => {
                let other = t.any_side()?;
                let near = half.start_secs.abs_diff(other.start_secs);
                let nearer =
                    in_flight.is_none_or(|f| near < half.start_secs.abs_diff(f.start_secs));
                (nearer && may_be_one(half, &other)).then_some(Target::Late)
            }
        }
    }

    /// A late half of a finished flow: applied to its tombstone, and what it adds exported at once
    /// (with the fields the flow had), without waiting for a partner.
    fn late(&mut self, now: Timestamp, side_idx: usize, exporter: u16, half: &FlowHalf) {
        let Some(t) = self.tombstones.remove(&half.key) else {
            return;
        };
        let mut flow = t.flow(now);
        apply(
            &mut flow,
            &mut self.metas,
            &mut self.strings,
            side_idx,
            exporter,
            half,
            now,
        );
        let reason = end_reason(&flow).unwrap_or(END_ACTIVE);
        self.export_flow(&mut flow, now, reason);
        // Its Node still talks about it: remembered for another inactive timeout.
        let expires = now + self.tombstone_life();
        self.tombstones.insert(Tombstone::of(&flow, expires));
    }

    /// A half of an older connection than the one in flight on its 5-tuple, of which nothing is
    /// remembered: exported on its own (uncorrelated), counting from the agent's own baseline.
    fn alone(&mut self, now: Timestamp, side_idx: usize, exporter: u16, half: &FlowHalf) {
        let mut flow = self.new_flow(now, exporter, half);
        flow.stop_awaiting();
        apply(
            &mut flow,
            &mut self.metas,
            &mut self.strings,
            side_idx,
            exporter,
            half,
            now,
        );
        if flow.needs_partner() {
            self.stats.uncorrelated += 1;
        }
        let reason = end_reason(&flow).unwrap_or(END_ACTIVE);
        self.export_flow(&mut flow, now, reason);
        self.metas.release(flow.meta, &mut self.strings);
    }

    /// Which Node of the flow sent `half`. A flowlens agent's observation domain is derived from
    /// its Node name, which settles it even when the agent filled in both ends' Pods. Otherwise
    /// (Antrea's agents), as Antrea decides: a record naming the source Pod comes from the source
    /// Node, because those agents fill in only their own Node's Pods.
    fn side_of(&mut self, exporter: ExporterId, half: &FlowHalf) -> usize {
        if half.meta.flow_type != FLOW_TYPE_INTER_NODE {
            return SOURCE;
        }
        if self.node_domain(half.meta.src_node) == Some(exporter.domain) {
            SOURCE
        } else if self.node_domain(half.meta.dst_node) == Some(exporter.domain) {
            DESTINATION
        } else if half.is_from_source_node() {
            SOURCE
        } else {
            DESTINATION
        }
    }

    /// The observation domain a flowlens agent on Node `node` uses (memoized per name).
    fn node_domain(&mut self, node: Sym) -> Option<u32> {
        if node.is_empty() {
            return None;
        }
        let i = node.index();
        if self.node_domains.len() <= i {
            self.node_domains.resize(i + 1, 0);
        }
        if self.node_domains[i] == 0 {
            // Never 0: `node_observation_domain` maps to 1.. .
            self.node_domains[i] = crate::ipfix::node_observation_domain(self.strings.get(node));
        }
        Some(self.node_domains[i])
    }

    /// A small index for an exporter (Nodes are few; past 65,535 the last index is shared, which
    /// only affects `originalExporter*` fields and that index's counters). `u16::MAX` itself is
    /// never handed out: it marks names the aggregator brings itself.
    fn exporter_index(&mut self, e: ExporterId) -> u16 {
        if let Some(&i) = self.exporter_ids.get(&e) {
            return i;
        }
        const LAST: usize = u16::MAX as usize - 1;
        let i = self.exporters.len().min(LAST) as u16;
        if self.exporters.len() <= LAST {
            self.exporters.push(ExporterState {
                id: e,
                counters: ExporterCounters::default(),
            });
            // Only new entries are remembered by id: past the last index, a flood of new ids
            // must not grow this map.
            self.exporter_ids.insert(e, i);
        }
        self.stats.exporters = self.exporters.len() as u64;
        i
    }

    /// Every exporter heard from, with its counters.
    pub fn exporters(&self) -> impl Iterator<Item = (ExporterId, &ExporterCounters)> + '_ {
        self.exporters.iter().map(|e| (e.id, &e.counters))
    }

    fn find(&self, key: &CorrelationKey) -> Option<u32> {
        let flows = &self.flows;
        let h = std::hash::BuildHasher::hash_one(&self.hasher, key);
        self.index
            .find(h, |&id| {
                flows[id as usize].as_ref().is_some_and(|f| f.key == *key)
            })
            .copied()
    }

    fn new_flow(&mut self, now: Timestamp, owner: u16, half: &FlowHalf) -> Flow {
        self.stats.flows_created += 1;
        let awaiting = half.meta.flow_type == FLOW_TYPE_INTER_NODE;
        Flow {
            key: half.key,
            start_secs: half.start_secs,
            tcp_state: half.tcp_state,
            owner,
            meta: self.metas.acquire(half.meta, &mut self.strings),
            flow_type: half.meta.flow_type,
            sides: Sides::default(),
            // Creation time while awaiting the partner, else "never exported".
            since: if awaiting { now } else { Timestamp::ZERO },
            updated: now,
            deadline: now,
            generation: 0,
            awaiting_partner: awaiting,
            dirty: false,
        }
    }

    fn create(&mut self, now: Timestamp, owner: u16, half: &FlowHalf) -> u32 {
        if self.index.len() >= self.cfg.max_flows {
            self.evict(now, owner);
        }
        let flow = self.new_flow(now, owner, half);
        self.hold(owner, 1);
        let fid = match self.free.pop() {
            Some(i) => {
                self.flows[i as usize] = Some(flow);
                i
            }
            None => {
                self.flows.push(Some(flow));
                (self.flows.len() - 1) as u32
            }
        };
        let (flows, hasher) = (&self.flows, &self.hasher);
        let h = std::hash::BuildHasher::hash_one(hasher, half.key);
        self.index.insert_unique(h, fid, |&id| {
            flows[id as usize]
                .as_ref()
                .map_or(0, |f| std::hash::BuildHasher::hash_one(hasher, f.key))
        });
        self.stats.flows_in_flight = self.index.len() as u64;
        self.stats.metadata_entries = self.metas.len() as u64;
        fid
    }

    /// Makes room for a flow of exporter `owner`: evicts the flow whose deadline is nearest (the
    /// one that would be exported next anyway) when its exporter holds at least its fair share of
    /// the table; otherwise a flow of the exporter holding the most, so that a burst from one
    /// exporter evicts its own flows rather than everyone's.
    fn evict(&mut self, now: Timestamp, owner: u16) {
        self.prune_timers();
        let Some(&Reverse((_, top, _))) = self.timers.peek() else {
            return;
        };
        let holders =
            self.active_exporters + usize::from(self.exporters[owner as usize].counters.flows == 0);
        let fair = (self.cfg.max_flows / holders.max(1)) as u64;
        let top_owner = self.flows[top as usize].as_ref().map_or(owner, |f| f.owner);
        let victim = if self.exporters[top_owner as usize].counters.flows >= fair {
            Some(top)
        } else {
            let heaviest = self
                .exporters
                .iter()
                .enumerate()
                .max_by_key(|(_, e)| e.counters.flows)
                .map(|(i, _)| i as u16);
            heaviest.and_then(|h| self.find_flow_of(h)).or(Some(top))
        };
        if let Some(fid) = victim {
            self.stats.evicted += 1;
            self.count_eviction(fid);
            self.finish(fid, now, END_LACK_OF_RESOURCES);
        }
    }

    /// Flows exporter `owner` holds went up (`+1`) or down (`-1`).
    fn hold(&mut self, owner: u16, change: i64) {
        let e = &mut self.exporters[owner as usize].counters;
        let before = e.flows;
        e.flows = (e.flows as i64 + change).max(0) as u64;
        match (before, e.flows) {
            (0, n) if n > 0 => self.active_exporters += 1,
            (b, 0) if b > 0 => self.active_exporters -= 1,
            _ => {}
        }
    }

    fn live_timer(&self, fid: u32, generation: u32) -> bool {
        self.flows
            .get(fid as usize)
            .and_then(|f| f.as_ref())
            .is_some_and(|f| f.generation == generation)
    }

    /// Drops stale entries from the top of the timer heap, so that its top is live.
    fn prune_timers(&mut self) {
        while let Some(&Reverse((_, fid, generation))) = self.timers.peek() {
            if self.live_timer(fid, generation) {
                break;
            }
            self.timers.pop();
        }
    }

    fn reschedule(&mut self, fid: u32, now: Timestamp) {
        let cfg = &self.cfg;
        let flow = self.flows[fid as usize]
            .as_mut()
            .expect("indexed flows exist");
        let mut d = flow.updated + cfg.inactive_timeout;
        if flow.awaiting_partner {
            d = d.min(flow.created() + cfg.correlation_timeout);
        }
        if flow.ended() {
            d = now;
        } else if flow.dirty {
            match flow.last_export() {
                None if !flow.awaiting_partner => d = now,
                None => {}
                Some(t) => d = d.min(t + cfg.active_timeout),
            }
        }
        if flow.generation != 0 && flow.deadline == d {
            return;
        }
        self.timer_seq = self.timer_seq.wrapping_add(1).max(1);
        flow.generation = self.timer_seq;
        flow.deadline = d;
        self.timers.push(Reverse((d, fid, flow.generation)));
        if self.timers.len() > 2 * self.index.len() + 1024 {
            let flows = &self.flows;
            self.timers.retain(|&Reverse((_, fid, g))| {
                flows
                    .get(fid as usize)
                    .and_then(|f| f.as_ref())
                    .is_some_and(|f| f.generation == g)
            });
        }
    }

    /// When `handle_timeout` is next due: a flow's export or a tombstone's expiry.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let flow = self.timers.peek().map(|&Reverse((t, ..))| t);
        let tomb = self.tombstones.next_expiry();
        let tidy = self.untidy.then_some(self.next_tidy);
        flow.into_iter().chain(tomb).chain(tidy).min()
    }

    /// Exports what is due at `now`, forgets expired tombstones, and gives back the memory a
    /// flood took once it is gone.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.expire_tombstones(now) {
            self.untidy = true;
        }
        if now >= self.next_tidy {
            // Unreferenced names go, and tables shrink after a flood; every few seconds is soon
            // enough.
            self.next_tidy = now + Duration::from_secs(5);
            self.strings.sweep();
            self.compact();
            self.untidy = false;
        }
        while let Some(&Reverse((t, fid, generation))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            self.untidy = true;
            let Some(flow) = self.flows.get_mut(fid as usize).and_then(|f| f.as_mut()) else {
                continue;
            };
            if flow.generation != generation {
                continue;
            }
            // The entry is consumed: the flow has no live timer until rescheduled.
            flow.generation = 0;
            if flow.awaiting_partner && now >= flow.created() + self.cfg.correlation_timeout {
                flow.stop_awaiting();
                self.stats.uncorrelated += 1;
            }
            if let Some(reason) = end_reason(flow) {
                self.finish(fid, now, reason);
                continue;
            }
            if now >= flow.updated + self.cfg.inactive_timeout {
                self.finish(fid, now, END_IDLE);
                continue;
            }
            let due = match flow.last_export() {
                None => !flow.awaiting_partner,
                Some(last) => now >= last + self.cfg.active_timeout,
            };
            if flow.dirty && due {
                self.export(fid, now, END_ACTIVE);
            }
            self.reschedule(fid, now);
        }
        self.prune_timers();
        self.settle(now);
    }

    /// Ends every flow in flight with a last record, `END_FORCED`, if it has anything not yet
    /// exported (or was never exported), and forgets them, remembering each as a tombstone.
    pub fn flush_all(&mut self, now: Timestamp) {
        self.flush_cursor = 0;
        while self.flush(now, usize::MAX, true) {}
    }

    /// Shutdown: ends up to `max` flows in flight like [`Self::flush_all`], without tombstones
    /// (the process is going), so a shutdown streams a large table out in bounded batches (drain
    /// [`Self::poll_record`] between calls). Returns whether flows are left.
    pub fn flush_some(&mut self, now: Timestamp, max: usize) -> bool {
        self.flush(now, max, false)
    }

    fn flush(&mut self, now: Timestamp, max: usize, tombstones: bool) -> bool {
        // In id order from where the last call stopped (a pass, not a rescan per batch), so the
        // output order does not depend on hashing; once round if flows were added behind.
        let mut n = 0;
        let len = self.flows.len();
        let start = self.flush_cursor;
        for step in 0..len {
            if n == max {
                break;
            }
            let fid = (start + step) % len;
            if self.flows[fid].is_some() {
                self.finish_as(fid as u32, now, END_FORCED, tombstones);
                n += 1;
            }
            self.flush_cursor = (fid + 1) % len;
        }
        self.prune_timers();
        self.settle(now);
        !self.index.is_empty()
    }

    /// Last export of a flow (if it has anything not yet exported, or was never exported), then
    /// forget it, remembering it as a tombstone.
    fn finish(&mut self, fid: u32, now: Timestamp, reason: u8) {
        self.finish_as(fid, now, reason, true);
    }

    /// [`Self::finish`], with or without the tombstone.
    fn finish_as(&mut self, fid: u32, now: Timestamp, reason: u8, tombstone: bool) {
        let Some(flow) = self.flows[fid as usize].as_mut() else {
            return;
        };
        // A flow with nothing new since its last export gets no last record, also at a forced
        // end: a restart of this aggregator ends no connection (the agents go on exporting it
        // to the replacement), and a zero-delta record per flow held would double a rollout's
        // traffic and the store's rows.
        if flow.dirty || flow.last_export().is_none() {
            if flow.awaiting_partner {
                // The partner will not come now: exported uncorrelated (and filled in).
                flow.stop_awaiting();
                self.stats.uncorrelated += 1;
            }
            self.export(fid, now, reason);
        }
        let Some(flow) = self.flows[fid as usize].take() else {
            return;
        };
        let h = std::hash::BuildHasher::hash_one(&self.hasher, flow.key);
        if let Ok(e) = self.index.find_entry(h, |&id| id == fid) {
            e.remove();
        }
        self.free.push(fid);
        self.hold(flow.owner, -1);
        self.stats.flows_in_flight = self.index.len() as u64;
        if !tombstone {
            self.metas.release(flow.meta, &mut self.strings);
            return;
        }
        let expires = now + self.tombstone_life();
        // The tombstone keeps the flow's metadata reference until it expires.
        if let Some(old) = self.tombstones.insert(Tombstone::of(&flow, expires)) {
            self.metas.release(old.meta, &mut self.strings);
        }
        if self.tombstones.len() > self.cfg.max_flows {
            self.expire_tombstones(now);
        }
        self.stats.metadata_entries = self.metas.len() as u64;
    }

    /// Gives back what a flood left: when the flow slots, the metadata table or the tombstones
    /// hold four times what is live, they are renumbered densely (flows, their index and timers)
    /// or shrunk. Rare (after the table emptied), O(live) when it runs.
    fn compact(&mut self) {
        let live = self.index.len();
        if self.flows.len() > 4 * live + 4096 {
            let mut flows = Vec::with_capacity(live + live / 4);
            for f in self.flows.drain(..).flatten() {
                flows.push(Some(f));
            }
            self.flows = flows;
            self.free = Vec::new();
            self.hand = 0;
            let (flows, hasher) = (&self.flows, &self.hasher);
            let hash = |f: &Flow| std::hash::BuildHasher::hash_one(hasher, f.key);
            self.index = hashbrown::HashTable::with_capacity(live);
            for (fid, f) in flows.iter().enumerate() {
                let f = f.as_ref().expect("dense");
                self.index.insert_unique(hash(f), fid as u32, |&id| {
                    hash(flows[id as usize].as_ref().expect("dense"))
                });
            }
            self.timers = flows
                .iter()
                .enumerate()
                .filter_map(|(fid, f)| {
                    let f = f.as_ref()?;
                    (f.generation != 0).then_some(Reverse((f.deadline, fid as u32, f.generation)))
                })
                .collect();
        }
        if let Some(remap) = self.metas.compact(self.flows.len() + self.tombstones.len()) {
            for f in self.flows.iter_mut().flatten() {
                f.meta = remap(f.meta);
            }
            for t in self.tombstones.values_mut() {
                t.meta = remap(t.meta);
            }
        }
        self.tombstones.tidy();
        if self.out.capacity() > 4 * self.out.len() + 4096 {
            self.out.shrink_to_fit();
        }
        self.strings.shrink();
    }

    /// How long a finished flow is remembered: an inactive timeout, and at least as long as a
    /// Node's conntrack can still list the connection — a restarted agent exports what it lists
    /// again, from zero (its predecessor's acknowledgements are gone).
    fn tombstone_life(&self) -> Duration {
        self.cfg.inactive_timeout.max(CONNTRACK_LINGER)
    }

    /// Forgets finished flows whose grace time is over (all of them past `now`, or, when over the
    /// bound, the oldest until back under it).
    /// Whether any went.
    fn expire_tombstones(&mut self, now: Timestamp) -> bool {
        let max = self.cfg.max_flows;
        let mut any = false;
        while let Some((t, old)) = self.tombstones.pop_oldest(|t, len| t <= now || len > max) {
            any = true;
            if let Some(old) = old {
                if t > now {
                    self.stats.tombstones_evicted += 1;
                }
                self.metas.release(old.meta, &mut self.strings);
                self.stats.metadata_entries = self.metas.len() as u64;
            }
        }
        any
    }

    fn export(&mut self, fid: u32, now: Timestamp, reason: u8) {
        let mut flow = self.flows[fid as usize]
            .take()
            .expect("exported flows exist");
        self.export_flow(&mut flow, now, reason);
        self.flows[fid as usize] = Some(flow);
    }

    /// Puts out `flow` as it is now and marks everything in it exported.
    fn export_flow(&mut self, flow: &mut Flow, now: Timestamp, reason: u8) {
        if flow.needs_partner()
            && !flow.correlated()
            && !flow.awaiting_partner
            && let Some(md) = &self.metadata
        {
            let mut m = *self.metas.get(flow.meta);
            if fill_from_metadata(&mut m, flow.key, flow.start_secs, md, &mut self.strings) {
                self.stats.filled_from_metadata += 1;
                self.metas.update(&mut flow.meta, m, &mut self.strings);
            }
        }
        let rec = record::build(flow, self.metas.get(flow.meta), now, reason, &self.names());
        for s in flow.sides.iter_mut() {
            s.exported = s.totals;
            s.exported_end_secs = s.end_secs;
        }
        debug_assert!(
            !flow.awaiting_partner,
            "exported while awaiting the partner"
        );
        flow.since = now;
        flow.dirty = false;
        self.stats.records_out += 1;
        self.out.push_back(rec);
    }

    /// The next aggregated record.
    pub fn poll_record(&mut self) -> Option<AggregatedRecord> {
        self.out.pop_front()
    }
}

/// Fills the Pod, Namespace and Node of whichever end `m` lacks from `md`, for the Pods that held
/// the addresses when the flow started. Returns whether anything was filled.
fn fill_from_metadata(
    m: &mut FlowMeta,
    key: CorrelationKey,
    start_secs: u32,
    md: &crate::metadata::MetadataIndex,
    strings: &mut Interner,
) -> bool {
    let at = Timestamp::from_secs(start_secs as u64);
    let mut filled = false;
    let mut lookup = |ip, pod: &mut Sym, ns: &mut Sym, node: &mut Sym| {
        if !pod.is_empty() {
            return;
        }
        let Some(p) = md.pod_at(ip, at).and_then(|id| md.pod(id)) else {
            return;
        };
        let names = md.interner();
        *pod = strings.intern(names.resolve(p.name));
        *ns = strings.intern(names.resolve(p.namespace));
        if let Some(n) = p.node {
            *node = strings.intern(names.resolve(n));
        }
        filled = true;
    };
    lookup(
        key.src,
        &mut m.src_pod,
        &mut m.src_namespace,
        &mut m.src_node,
    );
    lookup(
        key.dst,
        &mut m.dst_pod,
        &mut m.dst_namespace,
        &mut m.dst_node,
    );
    filled
}

fn sub(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    [0, 1, 2, 3].map(|i| a[i].saturating_sub(b[i]))
}

fn add(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    [
        a[0].saturating_add(b[0]),
        a[1].saturating_add(b[1]),
        a[2].saturating_add(b[2]),
        a[3].saturating_add(b[3]),
    ]
}

/// The flow's end reason once it has ended (every Node heard from ended it, no partner awaited).
fn end_reason(flow: &Flow) -> Option<u8> {
    flow.ended().then(|| {
        flow.sides
            .iter()
            .map(|s| s.end_reason)
            .max()
            .unwrap_or(END_OF_FLOW)
    })
}

/// Whether `half` and the other Node's `side` can be one connection: both Nodes saw it begin at
/// about the same time, within the clocks' tolerance. Connections reusing a 5-tuple follow each
/// other (the next begins after the last is closed), so their starts differ by more.
fn may_be_one(half: &FlowHalf, side: &Side) -> bool {
    half.start_secs.abs_diff(side.start_secs) <= CLOCK_TOLERANCE_SECS
}

/// Applies `half` (side `side_idx`) to `flow`: the Node's totals, end state and fields. A Node
/// the flow has not heard from starts at what its agent says it already delivered
/// (totals − deltas): that was exported before — by this aggregator's previous incarnation, or it
/// is 0 for a new connection — so only the record's delta is new. Counting from 0 would re-count
/// everything after a restart.
fn apply(
    flow: &mut Flow,
    metas: &mut MetaTable,
    strings: &mut Interner,
    side_idx: usize,
    exporter: u16,
    half: &FlowHalf,
    now: Timestamp,
) {
    let prev = flow.sides.get(side_idx).copied();
    let totals = half
        .totals
        .unwrap_or_else(|| add(prev.map_or([0; 4], |s| s.totals), half.deltas));
    flow.sides.set(
        side_idx,
        Side {
            start_secs: half.start_secs,
            totals,
            exported: prev.map_or_else(|| sub(totals, half.deltas), |s| s.exported),
            end_secs: half.end_secs,
            exported_end_secs: prev.map_or(half.start_secs, |s| s.exported_end_secs),
            end_reason: half.end_reason,
            exporter,
            which: Which::of(side_idx),
        },
    );
    if half.tcp_state.is_some() {
        flow.tcp_state = half.tcp_state;
    }
    let current = *metas.get(flow.meta);
    let merged = if side_idx == SOURCE {
        // The source Node saw the Service (DNAT) and the egress policy; its view leads.
        let mut m = half.meta;
        m.merge(&current);
        m
    } else {
        let mut m = current;
        m.merge(&half.meta);
        m
    };
    metas.update(&mut flow.meta, merged, strings);
    flow.start_secs = flow
        .sides
        .iter()
        .map(|s| s.start_secs)
        .min()
        .unwrap_or(half.start_secs);
    flow.updated = now;
    flow.dirty = true;
}

/// Whether `half` tells anything beyond what `side` (the same Node, same connection) holds;
/// counts it as stale or duplicate if not.
fn news(stats: &mut AggregatorStats, side: &Side, half: &FlowHalf) -> bool {
    let totals = half.totals.unwrap_or_else(|| add(side.totals, half.deltas));
    if totals.iter().zip(side.totals).any(|(a, b)| *a < b) || half.end_secs < side.end_secs {
        stats.records_stale += 1;
        return false;
    }
    if totals == side.totals && half.end_secs == side.end_secs && half.end_reason == side.end_reason
    {
        stats.records_duplicate += 1;
        return false;
    }
    true
}
