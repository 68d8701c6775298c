//! Batched insert: every record into `flows`, and the batch's per-minute and per-hour sums into
//! each rollup, in one transaction with cached prepared statements.
//!
//! Names become `dict` ids through an in-memory cache ([`Dict`]), so a record costs hash
//! lookups rather than text in every row and key. Rollups are summed in memory per batch with
//! integer keys and upserted once per key in key order, which walks each rollup B-tree front to
//! back. Each record keeps its exporter (`flows.exporter`), and `exporters` gains the batch's
//! count per exporter in the same transaction.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use flowcore::aggregator::AggregatedRecord;
use rusqlite::{Connection, OptionalExtension, Statement};

use super::codec::{self, RestIds};
use super::schema::{self, ROLLUPS};
use crate::collector::query::Traffic;
use crate::collector::store::Batch;

/// SQLite integers are i64; a counter past i64::MAX (only a corrupt peer sends one) is clamped
/// rather than failing the whole batch.
fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

const FLOW_TYPE_INTRA: u8 = 1;
const FLOW_TYPE_INTER: u8 = 2;
const FLOW_TYPE_TO_EXTERNAL: u8 = 3;
const FLOW_TYPE_FROM_EXTERNAL: u8 = 4;

/// The Fx hash (rustc's): a multiply and rotate per word. The maps it serves are keyed by
/// names and ids the writer itself bounds, and hashing is a visible share of the insert.
#[derive(Default, Clone, Copy)]
pub(super) struct Fx(u64);

impl Fx {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn write(&mut self, bytes: &[u8]) {
        let mut c = bytes.chunks_exact(8);
        for w in &mut c {
            self.add(u64::from_le_bytes(w.try_into().unwrap_or([0; 8])));
        }
        let mut last = [0u8; 8];
        last[..c.remainder().len()].copy_from_slice(c.remainder());
        self.add(u64::from_le_bytes(last) ^ bytes.len() as u64);
    }
    fn write_u8(&mut self, v: u8) {
        self.add(v as u64);
    }
    fn write_u32(&mut self, v: u32) {
        self.add(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }
    fn write_i64(&mut self, v: i64) {
        self.add(v as u64);
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;
pub(super) type FxSet<K> = HashSet<K, BuildHasherDefault<Fx>>;

/// Names cached beyond this many are dropped and re-read from `dict` as they recur, which
/// bounds the writer's memory however many names a cluster churns through.
const DICT_CACHE_MAX: usize = 1 << 20;
/// … and at most this many bytes (names up to 8 KiB of labels would otherwise make 1 Mi entries
/// 8 GiB).
const DICT_CACHE_MAX_BYTES: usize = 32 << 20;
/// A cache entry's cost beyond its text: the key's box header, the id, the table slot.
const DICT_ENTRY_OVERHEAD: usize = 48;

/// A rollup key: the minute, the integer key columns in table order, then the address column
/// for the two rollups that end with one (`cluster_ip`, `ext_ip`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key<const N: usize> {
    minute: u32,
    ints: [i64; N],
    ip: Option<IpAddr>,
}

fn key<const N: usize>(minute: u32, ints: [i64; N]) -> Key<N> {
    Key {
        minute,
        ints,
        ip: None,
    }
}

type Sums<const N: usize> = FxMap<Key<N>, Traffic>;

#[derive(Default)]
struct Rollups {
    /// Records summed, and the oldest and newest end time among them.
    records: usize,
    first_end: Option<u64>,
    last_end: Option<u64>,
    pod_pair: Sums<7>,
    pod_service: Sums<4>,
    pod_external: Sums<4>,
    node_pair: Sums<3>,
    policy: Sums<10>,
    pod: Sums<2>,
}

fn add<K: Hash + Eq>(m: &mut FxMap<K, Traffic>, k: K, t: &Traffic) {
    let e = m.entry(k).or_default();
    e.packets = e.packets.saturating_add(t.packets);
    e.octets = e.octets.saturating_add(t.octets);
    e.reverse_packets = e.reverse_packets.saturating_add(t.reverse_packets);
    e.reverse_octets = e.reverse_octets.saturating_add(t.reverse_octets);
    e.records += t.records;
}

/// The same sums keyed by the hour's start instead of the minute's, for minutes before
/// `upto` only.
fn by_hour<const N: usize>(m: &Sums<N>, upto: u64) -> Sums<N> {
    let mut out = Sums::default();
    for (k, t) in m.iter().filter(|(k, _)| (k.minute as u64) < upto) {
        let mut k = k.clone();
        k.minute = k.minute / 3600 * 3600;
        add(&mut out, k, t);
    }
    out
}

fn swapped(t: &Traffic) -> Traffic {
    Traffic {
        packets: t.reverse_packets,
        octets: t.reverse_octets,
        reverse_packets: t.packets,
        reverse_octets: t.octets,
        records: t.records,
    }
}

/// What a record adds to the rollups: from the record at insert, from its stored row when
/// recovering sums that a crash kept from being written (see [`recover`]).
struct Contribution {
    end_secs: u32,
    flow_type: u8,
    deltas: [u64; 4],
    src_ip: IpAddr,
    dst_ip: IpAddr,
    cluster_ip: Option<IpAddr>,
    in_action: u8,
    eg_action: u8,
}

impl Contribution {
    fn of(r: &AggregatedRecord) -> Contribution {
        Contribution {
            end_secs: r.end_secs,
            flow_type: r.flow_type,
            deltas: r.deltas,
            src_ip: r.key.src,
            dst_ip: r.key.dst,
            cluster_ip: r.cluster_ip,
            in_action: r.ingress.action,
            eg_action: r.egress.action,
        }
    }
}

/// A record's names as `dict` ids.
struct Ids {
    src_ns: i64,
    src_pod: i64,
    src_node: i64,
    dst_ns: i64,
    dst_pod: i64,
    dst_node: i64,
    service: i64,
    in_ns: i64,
    in_name: i64,
    eg_ns: i64,
    eg_name: i64,
}

impl Rollups {
    /// The hourly sums of the minutes before `upto` (the closed hours, see [`close_hours`]).
    fn hourly(&self, upto: u64) -> Rollups {
        Rollups {
            records: 0,
            first_end: None,
            last_end: None,
            pod_pair: by_hour(&self.pod_pair, upto),
            pod_service: by_hour(&self.pod_service, upto),
            pod_external: by_hour(&self.pod_external, upto),
            node_pair: by_hour(&self.node_pair, upto),
            policy: by_hour(&self.policy, upto),
            pod: by_hour(&self.pod, upto),
        }
    }

    /// Adds `other`'s sums to these.
    fn merge(&mut self, other: Rollups) {
        fn m<const N: usize>(a: &mut Sums<N>, b: Sums<N>) {
            for (k, t) in b {
                add(a, k, &t);
            }
        }
        self.records += other.records;
        self.first_end = self
            .first_end
            .min(other.first_end)
            .or(self.first_end)
            .or(other.first_end);
        self.last_end = self.last_end.max(other.last_end);
        m(&mut self.pod_pair, other.pod_pair);
        m(&mut self.pod_service, other.pod_service);
        m(&mut self.pod_external, other.pod_external);
        m(&mut self.node_pair, other.node_pair);
        m(&mut self.policy, other.policy);
        m(&mut self.pod, other.pod);
    }

    fn keys(&self) -> usize {
        self.pod_pair.len()
            + self.pod_service.len()
            + self.pod_external.len()
            + self.node_pair.len()
            + self.policy.len()
            + self.pod.len()
    }

    fn add(&mut self, r: &Contribution, d: &Ids) {
        let end = r.end_secs as u64;
        self.records += 1;
        self.first_end = Some(self.first_end.map_or(end, |f| f.min(end)));
        self.last_end = Some(self.last_end.map_or(end, |l| l.max(end)));
        let minute = r.end_secs / 60 * 60;
        let t = Traffic {
            packets: r.deltas[0],
            octets: r.deltas[1],
            reverse_packets: r.deltas[2],
            reverse_octets: r.deltas[3],
            records: 1,
        };
        let ft = r.flow_type as i64;
        if matches!(r.flow_type, FLOW_TYPE_INTRA | FLOW_TYPE_INTER) {
            let ints = [
                d.src_ns, d.src_pod, d.src_node, d.dst_ns, d.dst_pod, d.dst_node, ft,
            ];
            add(&mut self.pod_pair, key(minute, ints), &t);
            add(&mut self.pod, key(minute, [d.src_ns, d.src_pod]), &t);
            add(
                &mut self.pod,
                key(minute, [d.dst_ns, d.dst_pod]),
                &swapped(&t),
            );
        }
        if d.service != 0 {
            let mut k = key(minute, [d.src_ns, d.src_pod, d.src_node, d.service]);
            k.ip = r.cluster_ip;
            add(&mut self.pod_service, k, &t);
        }
        match r.flow_type {
            FLOW_TYPE_TO_EXTERNAL => {
                let mut k = key(minute, [ft, d.src_ns, d.src_pod, d.src_node]);
                k.ip = Some(r.dst_ip);
                add(&mut self.pod_external, k, &t);
                add(&mut self.pod, key(minute, [d.src_ns, d.src_pod]), &t);
            }
            FLOW_TYPE_FROM_EXTERNAL => {
                // Seen from the Pod, which is the destination here: swap directions.
                let mut k = key(minute, [ft, d.dst_ns, d.dst_pod, d.dst_node]);
                k.ip = Some(r.src_ip);
                add(&mut self.pod_external, k, &swapped(&t));
                add(
                    &mut self.pod,
                    key(minute, [d.dst_ns, d.dst_pod]),
                    &swapped(&t),
                );
            }
            _ => {}
        }
        add(
            &mut self.node_pair,
            key(minute, [d.src_node, d.dst_node, ft]),
            &t,
        );
        if d.in_name != 0 || d.eg_name != 0 {
            let ints = [
                d.eg_ns,
                d.eg_name,
                r.eg_action as i64,
                d.in_ns,
                d.in_name,
                r.in_action as i64,
                d.src_ns,
                d.src_pod,
                d.dst_ns,
                d.dst_pod,
            ];
            add(&mut self.policy, key(minute, ints), &t);
        }
    }
}

/// Names to `dict` ids: a cache in front of the table.
///
/// Retention deletes names nothing refers to any more (`super::retention`): it marks what is
/// referred to from a read snapshot while inserts go on, then deletes the rest. So that no
/// insert refers to a name it is about to delete, marking starts by emptying the cache and
/// noting in `touched` every id handed out from then on (each passes through the table once,
/// so this costs nothing per record); those are kept. The cache thus never holds an id that
/// was deleted.
#[derive(Default)]
pub struct Dict {
    cache: FxMap<Box<str>, i64>,
    /// Bytes of the names in `cache` plus [`DICT_ENTRY_OVERHEAD`] each.
    cache_bytes: usize,
    touched: Option<FxSet<i64>>,
}

impl Dict {
    /// The `dict` id of `s`, adding it if new.
    fn id(&mut self, tx: &Connection, s: &str) -> rusqlite::Result<i64> {
        if s.is_empty() {
            return Ok(0);
        }
        if let Some(&id) = self.cache.get(s) {
            return Ok(id);
        }
        let found = tx
            .prepare_cached("SELECT id FROM dict WHERE s = ?1")?
            .query_row([s], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => tx
                .prepare_cached("INSERT INTO dict (s) VALUES (?1) RETURNING id")?
                .query_row([s], |r| r.get(0))?,
        };
        if let Some(t) = &mut self.touched {
            t.insert(id);
        }
        let cost = s.len() + DICT_ENTRY_OVERHEAD;
        if self.cache.len() >= DICT_CACHE_MAX || self.cache_bytes + cost > DICT_CACHE_MAX_BYTES {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        self.cache.insert(s.into(), id);
        self.cache_bytes += cost;
        Ok(id)
    }

    /// Empties the cache and frees its table (it refills from the `dict` table).
    pub fn release(&mut self) {
        self.cache = FxMap::default();
        self.cache_bytes = 0;
    }

    /// Starts noting the ids handed out (see the type's comment).
    pub fn begin_mark(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
        self.touched = Some(FxSet::default());
    }

    /// Stops noting ids; returns those handed out since [`Self::begin_mark`].
    pub fn end_mark(&mut self) -> FxSet<i64> {
        self.touched.take().unwrap_or_default()
    }
}

/// The writer's state between batches: the name cache, reused buffers, and the rollup sums
/// of committed records not yet written (see [`insert_batch`]).
#[derive(Default)]
pub struct Scratch {
    pub dict: Dict,
    rest: Vec<u8>,
    pending: Rollups,
    /// The last `flows.id` that `pending` covers.
    pending_upto_id: i64,
    /// Pending sums were lost to a failed flush: re-read them from the records first.
    recover_due: bool,
    /// [`FLUSH_EVERY`] unless set (tests hold sums back to exercise [`recover`]).
    pub flush_every: Option<Duration>,
    last_flush: Option<Instant>,
}

impl Scratch {
    /// Forgets cached ids: after a failed transaction some may name rows that were rolled back.
    pub fn reset(&mut self) {
        self.dict.cache.clear();
    }
}

/// Rollup sums are written at most this long after their records' transaction, in the
/// transaction of a later batch. Until then they accumulate in memory across batches: a
/// collector taking hundreds of batches a minute writes each minute's keys about once a
/// second instead of once per batch. Queries flush first ([`flush`]), so they never miss any.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Or once this many keys or records wait, which bounds the writer's memory and what a crash
/// leaves for [`recover`] to re-read.
const FLUSH_KEYS: usize = 1 << 20;
const FLUSH_RECORDS: usize = 1 << 20;
/// Or once the pending records' end times span more than this.
const MAX_PENDING_SPAN_SECS: u64 = 180;

/// Stores `batch` in one transaction. The records always; the rollup sums of this batch and
/// of earlier ones still pending when a flush is due, in the same transaction, with
/// `meta.rolled_upto` (the last record id the rollups cover) — so rollups never count a
/// record twice or a record that was rolled back, and a crash loses no sums: [`recover`]
/// re-reads the records after `rolled_upto`.
pub fn insert_batch(
    conn: &mut Connection,
    batch: &Batch<'_>,
    scratch: &mut Scratch,
) -> rusqlite::Result<()> {
    let out = insert_tx(conn, batch, scratch);
    if out.is_err() {
        scratch.reset();
    }
    out
}

/// One exporter's share of a batch: its `dict` id, records, and the `flows.id` of the first.
struct Source {
    id: i64,
    records: i64,
    first_row: i64,
}

fn insert_tx(
    conn: &mut Connection,
    batch: &Batch<'_>,
    scratch: &mut Scratch,
) -> rusqlite::Result<()> {
    let received_at = batch.received_at;
    if scratch.recover_due {
        recover(conn)?;
        scratch.recover_due = false;
    }
    let tx = conn.transaction()?;
    let mut rollups = Rollups::default();
    let mut sources: Vec<Source> = Vec::new();
    {
        let mut st = tx.prepare_cached(&schema::insert_flow_sql())?;
        // Runs are an IPFIX message each: consecutive runs mostly share their exporter.
        let mut last: Option<(Option<IpAddr>, usize)> = None;
        for (run, r) in batch
            .runs()
            .iter()
            .flat_map(|run| run.records.iter().map(move |r| (run, r)))
        {
            let k = match last {
                Some((ip, k)) if ip == run.exporter => k,
                _ => {
                    let id = match run.exporter {
                        Some(ip) => scratch.dict.id(&tx, &ip.to_string())?,
                        None => 0,
                    };
                    let k = match sources.iter().position(|s| s.id == id) {
                        Some(k) => k,
                        None => {
                            sources.push(Source {
                                id,
                                records: 0,
                                first_row: 0,
                            });
                            sources.len() - 1
                        }
                    };
                    last = Some((run.exporter, k));
                    k
                }
            };
            let dict = &mut scratch.dict;
            let mut id = |s: &str| dict.id(&tx, s);
            let ids = Ids {
                src_ns: id(&r.src_namespace)?,
                src_pod: id(&r.src_pod)?,
                src_node: id(&r.src_node)?,
                dst_ns: id(&r.dst_namespace)?,
                dst_pod: id(&r.dst_pod)?,
                dst_node: id(&r.dst_node)?,
                service: id(&r.service_port_name)?,
                in_ns: id(&r.ingress.namespace)?,
                in_name: id(&r.ingress.name)?,
                eg_ns: id(&r.egress.namespace)?,
                eg_name: id(&r.egress.name)?,
            };
            let rest_ids = RestIds {
                in_rule: id(&r.ingress.rule)? as u64,
                eg_rule: id(&r.egress.rule)? as u64,
                tcp_state: id(&r.tcp_state)? as u64,
                src_labels: id(&r.src_labels)? as u64,
                dst_labels: id(&r.dst_labels)? as u64,
                cluster_id: id(&r.cluster_id)? as u64,
            };
            scratch.rest.clear();
            codec::encode(&mut scratch.rest, r, received_at, &rest_ids);
            let src = &mut sources[k];
            bind_flow(&mut st, r, &ids, src.id, &scratch.rest)?;
            st.raw_execute()?;
            if src.records == 0 {
                src.first_row = tx.last_insert_rowid();
            }
            src.records += 1;
            rollups.add(&Contribution::of(r), &ids);
        }
    }
    // Before any other INSERT changes it.
    let last_id = tx.last_insert_rowid();
    tx.execute(
        "UPDATE meta SET value = value + ?1 WHERE key = 'records'",
        [batch.len() as i64],
    )?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO exporters (id, records, low_id) VALUES (?1, ?2, ?3) \
             ON CONFLICT (id) DO UPDATE SET records = records + excluded.records",
        )?;
        for s in &sources {
            st.execute([s.id, s.records, s.first_row])?;
        }
    }
    let every = scratch.flush_every.unwrap_or(FLUSH_EVERY);
    let p = &scratch.pending;
    let first = match (p.first_end, rollups.first_end) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(0),
    };
    let span = p
        .last_end
        .max(rollups.last_end)
        .unwrap_or(0)
        .saturating_sub(first);
    // Sums only fold while their minutes recur: records spread over many minutes (a backlog
    // replayed, a bench filling days) gain nothing from waiting and cost a larger table.
    let due = scratch.last_flush.is_none_or(|t| t.elapsed() >= every)
        || span > MAX_PENDING_SPAN_SECS
        || scratch.pending.keys() + rollups.keys() >= FLUSH_KEYS
        || scratch.pending.records + rollups.records >= FLUSH_RECORDS;
    if due {
        // The pending sums stay pending until the commit succeeds.
        let mut all = std::mem::take(&mut scratch.pending);
        if all.records == 0 {
            all = rollups;
        } else {
            all.merge(rollups);
        }
        if let Err(e) = write_pending(&tx, &all, last_id).and_then(|()| tx.commit()) {
            // This batch rolled back; the earlier pending sums went with `all`, but their
            // records are committed after `rolled_upto`, so they are re-read instead.
            scratch.recover_due = true;
            return Err(e);
        }
        scratch.last_flush = Some(Instant::now());
        return Ok(());
    }
    tx.commit()?;
    scratch.pending.merge(rollups);
    scratch.pending_upto_id = last_id;
    Ok(())
}

/// Writes whatever rollup sums are pending (before a query reads the rollups, before
/// retention deletes from them, and when the store closes).
pub fn flush(conn: &mut Connection, scratch: &mut Scratch) -> rusqlite::Result<()> {
    if scratch.recover_due {
        recover(conn)?;
        scratch.recover_due = false;
    }
    if scratch.pending.records == 0 {
        return Ok(());
    }
    let tx = conn.transaction()?;
    write_pending(&tx, &scratch.pending, scratch.pending_upto_id)?;
    tx.commit()?;
    scratch.pending = Rollups::default();
    scratch.last_flush = Some(Instant::now());
    Ok(())
}

/// Sums the rollups of records after `meta.rolled_upto` that a crash (or a failed flush) left
/// out, and writes them. Called when the store opens, before anything else writes.
pub fn recover(conn: &mut Connection) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let upto: Option<i64> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'rolled_upto'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let upto = match upto {
        Some(u) => u,
        None => {
            // A new store: nothing to recover.
            let max: i64 =
                tx.query_row("SELECT COALESCE(MAX(id), 0) FROM flows", [], |r| r.get(0))?;
            set_rolled_upto(&tx, max)?;
            tx.commit()?;
            return Ok(0);
        }
    };
    let mut sums = Rollups::default();
    let mut last = upto;
    {
        let mut st = tx.prepare(
            "SELECT id, end_secs, flow_type, src_ip, dst_ip, src_ns, src_pod, src_node, dst_ns, \
             dst_pod, dst_node, service, in_ns, in_name, eg_ns, eg_name, rest FROM flows \
             WHERE id > ?1 ORDER BY id",
        )?;
        let mut rows = st.query([upto])?;
        while let Some(row) = rows.next()? {
            last = row.get(0)?;
            let ip = |i: usize| -> rusqlite::Result<IpAddr> {
                Ok(match row.get_ref(i)? {
                    rusqlite::types::ValueRef::Blob(b) => codec::ip_from(b),
                    _ => None,
                }
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)))
            };
            let rest = match row.get_ref(16)? {
                rusqlite::types::ValueRef::Blob(b) => codec::decode(b).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        16,
                        rusqlite::types::Type::Blob,
                        Box::new(e),
                    )
                })?,
                _ => codec::Rest::default(),
            };
            let c = Contribution {
                end_secs: row.get::<_, i64>(1)?.clamp(0, u32::MAX as i64) as u32,
                flow_type: row.get::<_, i64>(2)?.clamp(0, 255) as u8,
                deltas: rest.deltas,
                src_ip: ip(3)?,
                dst_ip: ip(4)?,
                cluster_ip: rest.cluster_ip,
                in_action: rest.ingress[2].min(255) as u8,
                eg_action: rest.egress[2].min(255) as u8,
            };
            let g = |i: usize| row.get::<_, i64>(i);
            let ids = Ids {
                src_ns: g(5)?,
                src_pod: g(6)?,
                src_node: g(7)?,
                dst_ns: g(8)?,
                dst_pod: g(9)?,
                dst_node: g(10)?,
                service: g(11)?,
                in_ns: g(12)?,
                in_name: g(13)?,
                eg_ns: g(14)?,
                eg_name: g(15)?,
            };
            sums.add(&c, &ids);
        }
    }
    let n = sums.records as u64;
    if n > 0 {
        write_pending(&tx, &sums, last)?;
    }
    tx.commit()?;
    Ok(n)
}

fn set_rolled_upto(c: &Connection, id: i64) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('rolled_upto', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([id])?;
    Ok(())
}

/// Writes `r` into the minute rollups, the hourly ones for closed hours, closes the hours
/// that are due, and records that the rollups now cover every record up to `upto_id`.
fn write_pending(tx: &Connection, r: &Rollups, upto_id: i64) -> rusqlite::Result<()> {
    write_rollups(tx, r, "")?;
    // Hourly rows of closed hours take late records directly; open hours get theirs when
    // they close.
    let upto = match hourly_upto(tx)? {
        Some(h) => h,
        None => set_hourly_upto(tx, r.first_end.unwrap_or(0) / 3600 * 3600)?,
    };
    write_rollups(tx, &r.hourly(upto), schema::HOURLY)?;
    if let Some(newest) = r.last_end {
        close_hours(
            tx,
            upto,
            newest.saturating_sub(CLOSE_AFTER_SECS) / 3600 * 3600,
        )?;
    }
    set_rolled_upto(tx, upto_id)
}

fn bind_flow(
    st: &mut Statement<'_>,
    r: &AggregatedRecord,
    d: &Ids,
    exporter: i64,
    rest: &[u8],
) -> rusqlite::Result<()> {
    let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
    let (na, nb) = (
        codec::ip_bytes(&r.key.src, &mut a),
        codec::ip_bytes(&r.key.dst, &mut b),
    );
    st.raw_bind_parameter(1, r.end_secs)?;
    st.raw_bind_parameter(2, r.flow_type)?;
    st.raw_bind_parameter(3, r.key.proto)?;
    st.raw_bind_parameter(4, r.key.src_port)?;
    st.raw_bind_parameter(5, r.key.dst_port)?;
    st.raw_bind_parameter(6, &a[..na])?;
    st.raw_bind_parameter(7, &b[..nb])?;
    let names = [
        d.src_ns, d.src_pod, d.src_node, d.dst_ns, d.dst_pod, d.dst_node, d.service, d.in_ns,
        d.in_name, d.eg_ns, d.eg_name,
    ];
    for (n, v) in names.into_iter().enumerate() {
        st.raw_bind_parameter(8 + n, v)?;
    }
    st.raw_bind_parameter(19, rest)?;
    st.raw_bind_parameter(20, exporter)?;
    debug_assert_eq!(20, schema::FLOW_COLUMNS.len());
    Ok(())
}

/// Upserts `sums` into `table` in key order. `ip` says whether the table's last key column
/// is an address.
fn upsert<const N: usize>(
    tx: &Connection,
    table: usize,
    suffix: &str,
    sums: &Sums<N>,
) -> rusqlite::Result<()> {
    let (name, keys) = ROLLUPS[table];
    debug_assert!(keys.len() == N || keys.len() == N + 1);
    let with_ip = keys.len() == N + 1;
    let mut st = tx.prepare_cached(&schema::upsert_sql(&format!("{name}{suffix}"), keys))?;
    let mut rows: Vec<(&Key<N>, &Traffic)> = sums.iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut buf = [0u8; 16];
    for (k, t) in rows {
        st.raw_bind_parameter(1, k.minute)?;
        for (n, v) in k.ints.iter().enumerate() {
            st.raw_bind_parameter(2 + n, v)?;
        }
        let mut n = 2 + N;
        if with_ip {
            // Part of the key, so never NULL (NULLs are distinct in a key): empty when absent.
            let len = k.ip.map_or(0, |ip| codec::ip_bytes(&ip, &mut buf));
            st.raw_bind_parameter(n, &buf[..len])?;
            n += 1;
        }
        st.raw_bind_parameter(n, i(t.packets))?;
        st.raw_bind_parameter(n + 1, i(t.octets))?;
        st.raw_bind_parameter(n + 2, i(t.reverse_packets))?;
        st.raw_bind_parameter(n + 3, i(t.reverse_octets))?;
        st.raw_bind_parameter(n + 4, i(t.records))?;
        st.raw_execute()?;
    }
    Ok(())
}

/// An hour closes this long after its end (as seen in records' end times): records for it
/// arriving later still count, through the slower path of updating both tiers.
pub const CLOSE_AFTER_SECS: u64 = 600;

/// `meta.hourly_upto`: the hourly rollups are complete for every hour before it; later hours
/// live in the minute rollups only, and queries read them there.
pub fn hourly_upto(c: &Connection) -> rusqlite::Result<Option<u64>> {
    c.prepare_cached("SELECT value FROM meta WHERE key = 'hourly_upto'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()
        .map(|v| v.map(|v| v.max(0) as u64))
}

fn set_hourly_upto(c: &Connection, v: u64) -> rusqlite::Result<u64> {
    c.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('hourly_upto', ?1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([i(v)])?;
    Ok(v)
}

/// Writes the hourly rows of every hour in `[from, to)` that has minute rows, summed from
/// them, and moves `hourly_upto` to `to`. Once per hour of data instead of an hourly upsert
/// per key and batch: a third fewer rollup writes at insert, and one sequential read.
fn close_hours(tx: &Connection, from: u64, to: u64) -> rusqlite::Result<()> {
    if to <= from {
        return Ok(());
    }
    let mut hour = from;
    loop {
        // The next hour with data (every record has a Node-pair row), so a gap in the data or
        // a bogus far-future end time costs one probe, not one per empty hour.
        let next: Option<i64> = tx
            .prepare_cached(
                "SELECT MIN(minute) FROM r_node_pair WHERE minute >= ?1 AND minute < ?2",
            )?
            .query_row([i(hour), i(to)], |r| r.get(0))?;
        let Some(m) = next else { break };
        let h = m.max(0) as u64 / 3600 * 3600;
        let end = h + 3600;
        close::<7>(tx, 0, h, end)?;
        close::<4>(tx, 1, h, end)?;
        close::<4>(tx, 2, h, end)?;
        close::<3>(tx, 3, h, end)?;
        close::<10>(tx, 4, h, end)?;
        close::<2>(tx, 5, h, end)?;
        hour = end;
    }
    set_hourly_upto(tx, to)?;
    Ok(())
}

/// Sums rollup `table`'s minute rows in `[from, to)` (one hour) into its hourly twin.
fn close<const N: usize>(
    tx: &Connection,
    table: usize,
    from: u64,
    to: u64,
) -> rusqlite::Result<()> {
    let (name, keys) = ROLLUPS[table];
    let with_ip = keys.len() == N + 1;
    let sql = format!(
        "SELECT minute, {}, {} FROM {name} WHERE minute >= ?1 AND minute < ?2",
        keys.join(", "),
        schema::METRICS.join(", ")
    );
    let mut sums: Sums<N> = Sums::default();
    let mut st = tx.prepare_cached(&sql)?;
    let mut rows = st.query([i(from), i(to)])?;
    let m = 1 + keys.len();
    while let Some(row) = rows.next()? {
        let mut k = Key {
            minute: (row.get::<_, i64>(0)?.max(0) as u64 / 3600 * 3600) as u32,
            ints: [0; N],
            ip: None,
        };
        for (n, v) in k.ints.iter_mut().enumerate() {
            *v = row.get(1 + n)?;
        }
        if with_ip {
            k.ip = match row.get_ref(1 + N)? {
                rusqlite::types::ValueRef::Blob(b) => codec::ip_from(b),
                _ => None,
            };
        }
        let g = |n: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(m + n)?.max(0) as u64) };
        let t = Traffic {
            packets: g(0)?,
            octets: g(1)?,
            reverse_packets: g(2)?,
            reverse_octets: g(3)?,
            records: g(4)?,
        };
        add(&mut sums, k, &t);
    }
    upsert(tx, table, schema::HOURLY, &sums)
}

fn write_rollups(tx: &Connection, r: &Rollups, suffix: &str) -> rusqlite::Result<()> {
    upsert(tx, 0, suffix, &r.pod_pair)?;
    upsert(tx, 1, suffix, &r.pod_service)?;
    upsert(tx, 2, suffix, &r.pod_external)?;
    upsert(tx, 3, suffix, &r.node_pair)?;
    upsert(tx, 4, suffix, &r.policy)?;
    upsert(tx, 5, suffix, &r.pod)
}
