//! The scale-out store: [`Store`] on ClickHouse, through [`ClickHouseClient`].
//!
//! Same answers as the SQLite store (`sqlite/read.rs` is the reference for every query's
//! semantics): dashboards read the per-minute rollups (`{table}_pod_pair_1m`, …, see
//! [`crate::clickhouse::schema`]), only [`Store::flows`] reads the record table. Rollup rows with
//! equal keys are summed by `sum() … GROUP BY` in every query (SummingMergeTree folds them only
//! when parts merge), so answers are exact at any time. Ties on bytes are broken by the group's
//! names (SQLite breaks them by its dictionary ids, so the order of equal-bytes rows may differ).
//!
//! The trait is blocking while the client is async: the store owns a one-worker tokio runtime
//! and each call hands its future to it and waits on a channel. That works from any thread —
//! the API's `spawn_blocking` pool, the ingest writer thread, even a task of another runtime
//! (where `block_on` would panic) — and keeps the HTTP connection pool on one runtime that
//! lives as long as the store. Records are encoded to RowBinary on the caller's thread.
//!
//! Retention: on servers with TTL (19.6+) the tables expire rows themselves; on older ones
//! (Debian's 18.16) [`Store::enforce_retention`] drops whole day partitions of the record table
//! and the rollups older than the day holding `now - retention`, so data is kept up to a day
//! longer than asked. Values from users are quoted with [`quote`]; the rest of the SQL is
//! fixed fragments and integers we computed.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fold::{self, *};
use super::query::*;
use super::store::{Batch, Store, StoreError};
use crate::clickhouse::rowbinary::{DecodeError, Reader};
use crate::clickhouse::schema::{self, FLOW_COLUMNS, ROLLUPS};
use crate::clickhouse::{ClickHouseClient, ClickHouseConfig, Error, quote};

pub struct ClickHouseStore {
    client: Arc<ClickHouseClient>,
    rt: Option<tokio::runtime::Runtime>,
    limits: QueryLimits,
}

impl std::fmt::Debug for ClickHouseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseStore")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Drop for ClickHouseStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside an async context; this does not.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Column names the queries use for the rollup key columns (the SQLite store's names), so the
/// query text reads like `sqlite/read.rs`.
fn short(col: &str) -> &str {
    match col {
        "sourcePodNamespace" => "src_ns",
        "sourcePodName" => "src_pod",
        "sourceNodeName" => "src_node",
        "destinationPodNamespace" => "dst_ns",
        "destinationPodName" => "dst_pod",
        "destinationNodeName" => "dst_node",
        "flowType" => "flow_type",
        "destinationServicePortName" => "service",
        "destinationClusterIP" => "cluster_ip",
        "podNamespace" => "ns",
        "podName" => "pod",
        "nodeName" => "node",
        "externalIP" => "ext_ip",
        "egressNetworkPolicyNamespace" => "eg_ns",
        "egressNetworkPolicyName" => "eg_name",
        "egressNetworkPolicyRuleAction" => "eg_action",
        "ingressNetworkPolicyNamespace" => "in_ns",
        "ingressNetworkPolicyName" => "in_name",
        "ingressNetworkPolicyRuleAction" => "in_action",
        c => c,
    }
}

/// The metric columns of a rendered rollup subquery.
const METRICS: &str = "packets, octets, rev_packets, rev_octets, records";
/// [`METRICS`] with the directions swapped, for a UNION ALL branch after the first (UNION ALL
/// matches by position and names come from the first branch). The aliases must not be metric
/// names: in ClickHouse an alias shadows the column of that name within the same SELECT.
const SWAP: &str = "rev_packets AS s_packets, rev_octets AS s_octets, packets AS s_rev_packets, \
                    octets AS s_rev_octets, records";

/// AND of clauses; `1` when empty.
#[derive(Default)]
struct Where(Vec<String>);

impl Where {
    fn push(&mut self, c: impl Into<String>) {
        self.0.push(c.into());
    }
    fn sql(&self) -> String {
        if self.0.is_empty() {
            "1".into()
        } else {
            self.0.join(" AND ")
        }
    }
}

fn pod_match(ns_col: &str, pod_col: &str, r: &NamedRef) -> String {
    match &r.namespace {
        Some(ns) => format!(
            "({ns_col} = {} AND {pod_col} = {})",
            quote(ns),
            quote(&r.name)
        ),
        None => format!("{pod_col} = {}", quote(&r.name)),
    }
}

fn any_of(w: &mut Where, cols: &[&str], v: &str) {
    if cols.is_empty() {
        return;
    }
    let c: Vec<String> = cols.iter().map(|c| format!("{c} = {}", quote(v))).collect();
    w.push(format!("({})", c.join(" OR ")));
}

fn dash_where(f: &DashFilter, d: &Dims) -> Where {
    let mut w = Where::default();
    if let Some(ns) = &f.namespace {
        any_of(&mut w, d.ns, ns);
    }
    if let Some(pod) = &f.pod
        && !d.pods.is_empty()
    {
        let cl: Vec<String> = d.pods.iter().map(|(n, p)| pod_match(n, p, pod)).collect();
        w.push(format!("({})", cl.join(" OR ")));
    }
    if let Some(node) = &f.node {
        any_of(&mut w, d.nodes, node);
    }
    w
}

/// Reads the five sums `group` selects.
fn traffic(r: &mut Reader<'_>) -> Result<Traffic, DecodeError> {
    Ok(Traffic {
        packets: r.u64()?,
        octets: r.u64()?,
        reverse_packets: r.u64()?,
        reverse_octets: r.u64()?,
        records: r.u64()?,
    })
}

/// ClickHouse exception codes of the bounds [`ClickHouseStore::settings`] sets.
const TOO_MANY_ROWS: u32 = 158;
const TIMEOUT_EXCEEDED: u32 = 159;
const MEMORY_LIMIT_EXCEEDED: u32 = 241;

/// The exception code in a ClickHouse error text (`Code: 159, e.displayText() = …`).
fn exception_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Time series over ranges longer than this use hourly points (as the SQLite store).
pub const SERIES_HOURLY_ABOVE_SECS: u64 = 6 * 3600;

impl ClickHouseStore {
    /// Connects (see [`ClickHouseClient::connect`]: schema created if `createSchema`) on the
    /// store's own runtime, with the default [`QueryLimits`].
    pub fn open(cfg: ClickHouseConfig) -> Result<ClickHouseStore, StoreError> {
        Self::open_with(cfg, QueryLimits::default())
    }

    /// [`Self::open`] with the collector's `query:` limits, sent with every SELECT as ClickHouse
    /// settings (see [`Self::settings`]).
    pub fn open_with(
        cfg: ClickHouseConfig,
        limits: QueryLimits,
    ) -> Result<ClickHouseStore, StoreError> {
        let url = cfg.url.clone();
        let open_err = |e: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: PathBuf::from(&url),
            source: e,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("clickhouse-store")
            .enable_all()
            .build()
            .map_err(|e| open_err(Box::new(e)))?;
        let client = block_on(&rt, &url, ClickHouseClient::connect(cfg))
            .map_err(|e| open_err(Box::new(e)))?;
        Ok(ClickHouseStore {
            client: Arc::new(client),
            rt: Some(rt),
            limits,
        })
    }

    pub fn client(&self) -> &Arc<ClickHouseClient> {
        &self.client
    }

    fn run_raw<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        let rt = self
            .rt
            .as_ref()
            .expect("the runtime lives as long as the store");
        block_on(rt, &self.client.config().url, fut)
    }

    fn err(&self, op: &'static str, e: Error) -> StoreError {
        StoreError::Backend {
            location: self.client.config().url.clone(),
            op,
            source: Box::new(e),
        }
    }

    /// Runs a SELECT under the query limits, returning its RowBinary answer.
    fn select(&self, op: &'static str, sql: String) -> Result<Bytes, StoreError> {
        self.select_until(op, sql, Instant::now() + self.limits.timeout)
    }

    /// [`Self::select`] for a call of several SELECTs that share one `deadline`.
    fn select_until(
        &self,
        op: &'static str,
        sql: String,
        deadline: Instant,
    ) -> Result<Bytes, StoreError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.deadline(op));
        }
        let settings = self.settings(left);
        let c = self.client.clone();
        self.run_raw(async move { c.query_with(&sql, op, &settings).await })
            .map_err(|e| self.query_err(op, e))
    }

    /// The server-side bounds of a SELECT with `left` to run: time (whole seconds, at least
    /// one), groups held by a GROUP BY, and memory, each failing the query rather than
    /// truncating its answer.
    fn settings(&self, left: Duration) -> Vec<(&'static str, String)> {
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        vec![
            ("max_execution_time", secs.max(1).to_string()),
            ("timeout_overflow_mode", "throw".into()),
            ("max_rows_to_group_by", self.limits.max_groups.to_string()),
            ("group_by_overflow_mode", "throw".into()),
            ("max_memory_usage", self.limits.max_memory_bytes.to_string()),
        ]
    }

    fn deadline(&self, op: &'static str) -> StoreError {
        StoreError::Deadline {
            op,
            limit: self.limits.timeout.into(),
        }
    }

    /// A failed SELECT: a bound the settings enforced (by ClickHouse's exception code), the
    /// client's own timeout, or anything else.
    fn query_err(&self, op: &'static str, e: Error) -> StoreError {
        if let Error::Server {
            message, source, ..
        } = &e
        {
            match exception_code(message) {
                Some(TIMEOUT_EXCEEDED) => return self.deadline(op),
                Some(TOO_MANY_ROWS) => {
                    return StoreError::TooLarge {
                        op,
                        bound: format!("{} groups (query.maxGroups)", self.limits.max_groups),
                    };
                }
                Some(MEMORY_LIMIT_EXCEEDED) => {
                    return StoreError::TooLarge {
                        op,
                        bound: format!(
                            "{} bytes of ClickHouse memory (query.maxMemoryBytes)",
                            self.limits.max_memory_bytes
                        ),
                    };
                }
                _ if matches!(source, clickhouse::error::Error::TimedOut) => {
                    return self.deadline(op);
                }
                _ => {}
            }
        }
        self.err(op, e)
    }

    fn execute(&self, op: &'static str, sql: String) -> Result<(), StoreError> {
        let c = self.client.clone();
        self.run_raw(async move { c.execute(&sql, op).await })
            .map_err(|e| self.err(op, e))
    }

    fn decode<T>(
        &self,
        op: &'static str,
        bytes: &Bytes,
        mut f: impl FnMut(&mut Reader<'_>) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut r = Reader::new(bytes);
        let mut out = Vec::new();
        while !r.is_empty() {
            out.push(f(&mut r).map_err(|e| self.err(op, self.client.decode_err(op, e)))?);
        }
        Ok(out)
    }

    fn table(&self) -> String {
        self.client.table()
    }

    /// The rows of rollup `idx` with time in `[a, b)`, key columns under their short names,
    /// metrics as [`METRICS`]; `hourly` reads the hourly twin (its `hour` as `minute`).
    fn rollup_table(&self, idx: usize, a: u64, b: u64, hourly: bool) -> String {
        let r = &ROLLUPS[idx];
        let keys: Vec<String> = r
            .keys
            .iter()
            .map(|(k, _)| {
                let s = short(k);
                if s == *k {
                    k.to_string()
                } else {
                    format!("{k} AS {s}")
                }
            })
            .collect();
        let (suffix, time) = if hourly {
            (schema::hourly(r.suffix), "hour")
        } else {
            (r.suffix.to_owned(), "minute")
        };
        let time_sel = if hourly { "hour AS minute" } else { "minute" };
        format!(
            "SELECT {time_sel}, {}, packets, octets, reversePackets AS rev_packets, \
             reverseOctets AS rev_octets, records FROM {}{suffix} \
             WHERE {time} >= toDateTime({a}) AND {time} < toDateTime({b})",
            keys.join(", "),
            self.table(),
        )
    }

    /// Per-minute rows of `[a, b)` (minute bounds) as a subquery.
    fn rollup(&self, idx: usize, a: u64, b: u64) -> String {
        format!("({})", self.rollup_table(idx, a, b, false))
    }

    /// The rows covering `range`: minute rows for the partial hours at the edges, hourly rows
    /// for the whole hours between (a day reads ~24 rows per group, not ~1440).
    fn src(&self, idx: usize, range: &TimeRange) -> String {
        let (a, b) = range.minutes();
        let (h1, h2) = (a.div_ceil(3600) * 3600, b / 3600 * 3600);
        if h2 <= h1 {
            return self.rollup(idx, a, b);
        }
        format!(
            "({} UNION ALL {} UNION ALL {})",
            self.rollup_table(idx, a, h1, false),
            self.rollup_table(idx, h1, h2, true),
            self.rollup_table(idx, h2, b, false)
        )
    }

    /// Node-pair rows (`minute, src_node, dst_node, flow_type, METRICS`), from the Pod rollups
    /// under a namespace or Pod filter (the Node-pair rollup has neither): see
    /// `sqlite/read.rs::node_pairs`.
    fn node_pairs(&self, f: &DashFilter, from: &dyn Fn(usize) -> String) -> String {
        if f.namespace.is_none() && f.pod.is_none() {
            return from(schema::NODE_PAIR);
        }
        let f = DashFilter {
            node: None,
            ..f.clone()
        };
        let (pp, pe) = (dash_where(&f, &POD_PAIR), dash_where(&f, &POD_EXTERNAL));
        format!(
            "(SELECT minute, src_node, dst_node, flow_type, {METRICS} FROM {} WHERE {} \
             UNION ALL SELECT minute, node AS src_node, '' AS dst_node, flow_type, {METRICS} \
             FROM {pe_from} WHERE flow_type = 3 AND {w} \
             UNION ALL SELECT minute, '' AS src_node, node AS dst_node, flow_type, {SWAP} \
             FROM {pe_from} WHERE flow_type = 4 AND {w})",
            from(schema::POD_PAIR),
            pp.sql(),
            pe_from = from(schema::POD_EXTERNAL),
            w = pe.sql(),
        )
    }

    /// Sums `rows` (a subquery with METRICS) by the four key expressions (Strings) and returns
    /// the largest `limit` groups by bytes, ties by key.
    fn group4(
        &self,
        op: &'static str,
        keys: [&str; 4],
        rows: &str,
        w: &Where,
        limit: u32,
    ) -> Result<Vec<([String; 4], Traffic)>, StoreError> {
        let sql = format!(
            "SELECT k0, k1, k2, k3, sum(packets), sum(octets), sum(rev_packets), \
             sum(rev_octets), sum(records) FROM (SELECT {} AS k0, {} AS k1, {} AS k2, {} AS k3, \
             {METRICS} FROM {rows} WHERE {}) GROUP BY k0, k1, k2, k3 \
             ORDER BY sum(octets) + sum(rev_octets) DESC, k0, k1, k2, k3 LIMIT {limit}",
            keys[0],
            keys[1],
            keys[2],
            keys[3],
            w.sql()
        );
        let b = self.select(op, sql)?;
        self.decode(op, &b, |r| {
            let k = [r.string()?, r.string()?, r.string()?, r.string()?];
            Ok((k, traffic(r)?))
        })
    }

    fn flow_where(f: &FlowFilter) -> Where {
        let mut w = Where::default();
        if let Some(r) = f.range {
            w.push(format!(
                "flowEndSeconds >= toDateTime({}) AND flowEndSeconds < toDateTime({})",
                r.start.min(u32::MAX as u64),
                r.end.min(u32::MAX as u64)
            ));
        }
        if let Some(ns) = &f.namespace {
            any_of(
                &mut w,
                &["sourcePodNamespace", "destinationPodNamespace"],
                ns,
            );
        }
        if let Some(p) = &f.pod {
            w.push(format!(
                "({} OR {})",
                pod_match("sourcePodNamespace", "sourcePodName", p),
                pod_match("destinationPodNamespace", "destinationPodName", p)
            ));
        }
        if let Some(n) = &f.node {
            any_of(&mut w, &["sourceNodeName", "destinationNodeName"], n);
        }
        if let Some(s) = &f.service {
            if s.contains(':') {
                w.push(format!("destinationServicePortName = {}", quote(s)));
            } else {
                w.push(format!(
                    "startsWith(destinationServicePortName, {})",
                    quote(&format!("{s}:"))
                ));
            }
        }
        if let Some(p) = &f.policy {
            w.push(format!(
                "({} OR {})",
                pod_match(
                    "ingressNetworkPolicyNamespace",
                    "ingressNetworkPolicyName",
                    p
                ),
                pod_match("egressNetworkPolicyNamespace", "egressNetworkPolicyName", p)
            ));
        }
        if let Some(t) = f.flow_type {
            w.push(format!("flowType = {t}"));
        }
        if let Some(ip) = &f.src_ip {
            w.push(format!("sourceIP = {}", quote(&ip.to_string())));
        }
        if let Some(ip) = &f.dst_ip {
            w.push(format!("destinationIP = {}", quote(&ip.to_string())));
        }
        if let Some(p) = f.src_port {
            w.push(format!("sourceTransportPort = {p}"));
        }
        if let Some(p) = f.dst_port {
            w.push(format!("destinationTransportPort = {p}"));
        }
        if let Some(p) = f.protocol {
            w.push(format!("protocolIdentifier = {p}"));
        }
        for (v, col) in [
            (&f.src_namespace, "sourcePodNamespace"),
            (&f.dst_namespace, "destinationPodNamespace"),
            (&f.src_node, "sourceNodeName"),
            (&f.dst_node, "destinationNodeName"),
        ] {
            if let Some(v) = v {
                w.push(format!("{col} = {}", quote(v)));
            }
        }
        for (r, ns, pod) in [
            (&f.src_pod, "sourcePodNamespace", "sourcePodName"),
            (&f.dst_pod, "destinationPodNamespace", "destinationPodName"),
        ] {
            if let Some(r) = r {
                w.push(pod_match(ns, pod, r));
            }
        }
        w
    }

    /// Every record and rollup table, `(name, is the record table)`.
    fn tables(&self) -> Vec<(String, bool)> {
        let t = &self.client.config().table;
        std::iter::once((t.clone(), true))
            .chain(ROLLUPS.iter().flat_map(|r| {
                [
                    (format!("{t}{}", r.suffix), false),
                    (format!("{t}{}", schema::hourly(r.suffix)), false),
                ]
            }))
            .collect()
    }

    fn tables_in(&self) -> String {
        let names: Vec<String> = self.tables().iter().map(|(t, _)| quote(t)).collect();
        format!(
            "database = {} AND table IN ({})",
            quote(&self.client.config().database),
            names.join(", ")
        )
    }
}

/// Runs `fut` on `rt` and waits for it on this thread (which may be any thread, see the module
/// docs).
fn block_on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    url: &str,
    fut: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    // The task always sends unless the runtime shuts down, which only Drop does.
    rx.recv().unwrap_or_else(|_| {
        Err(Error::Server {
            url: url.to_owned(),
            op: "waiting for the store's runtime".into(),
            message: "the runtime stopped".into(),
            source: clickhouse::error::Error::Custom("runtime stopped".into()),
        })
    })
}

fn flow_row(r: &mut Reader<'_>) -> Result<FlowRow, DecodeError> {
    let opt = |s: String| if s.is_empty() { None } else { Some(s) };
    let node = |r: &mut Reader<'_>| -> Result<Option<NodeRow>, DecodeError> {
        let has = r.u8()? != 0;
        let mut v = [0u64; 10];
        for x in v.iter_mut() {
            *x = r.u64()?;
        }
        let end = r.u32()? as u64;
        Ok(has.then_some(NodeRow {
            totals: [v[0], v[1], v[2], v[3]],
            deltas: [v[4], v[5], v[6], v[7]],
            throughput: v[8],
            reverse_throughput: v[9],
            flow_end_seconds: end,
        }))
    };
    // In schema::FLOW_COLUMNS order.
    let id = r.u64()?;
    let inserted_at = r.u32()? as u64;
    let start = r.u32()? as u64;
    let end = r.u32()? as u64;
    let end_reason = r.u8()?;
    let flow_type = r.u8()?;
    let source_ip = r.string()?;
    let destination_ip = r.string()?;
    let sport = r.u16()?;
    let dport = r.u16()?;
    let proto = r.u8()?;
    let mut c = [0u64; 10];
    for x in c.iter_mut() {
        *x = r.u64()?;
    }
    Ok(FlowRow {
        id: id.min(i64::MAX as u64) as i64,
        inserted_at,
        flow_start_seconds: start,
        flow_end_seconds: end,
        flow_end_reason: end_reason,
        flow_type,
        source_ip,
        destination_ip,
        source_transport_port: sport,
        destination_transport_port: dport,
        protocol_identifier: proto,
        packet_total_count: c[0],
        octet_total_count: c[1],
        reverse_packet_total_count: c[2],
        reverse_octet_total_count: c[3],
        packet_delta_count: c[4],
        octet_delta_count: c[5],
        reverse_packet_delta_count: c[6],
        reverse_octet_delta_count: c[7],
        throughput: c[8],
        reverse_throughput: c[9],
        source_pod_name: r.string()?,
        source_pod_namespace: r.string()?,
        source_node_name: r.string()?,
        destination_pod_name: r.string()?,
        destination_pod_namespace: r.string()?,
        destination_node_name: r.string()?,
        destination_cluster_ip: opt(r.string()?),
        destination_service_port: r.u16()?,
        destination_service_port_name: r.string()?,
        ingress_network_policy_name: r.string()?,
        ingress_network_policy_namespace: r.string()?,
        ingress_network_policy_type: r.u8()?,
        ingress_network_policy_rule_name: r.string()?,
        ingress_network_policy_rule_action: r.u8()?,
        egress_network_policy_name: r.string()?,
        egress_network_policy_namespace: r.string()?,
        egress_network_policy_type: r.u8()?,
        egress_network_policy_rule_name: r.string()?,
        egress_network_policy_rule_action: r.u8()?,
        tcp_state: r.string()?,
        source_pod_labels: r.string()?,
        destination_pod_labels: r.string()?,
        correlated: r.u8()? != 0,
        original_exporter_address: opt(r.string()?),
        original_observation_domain_id: r.u32()?,
        cluster_id: r.string()?,
        from_source_node: node(r)?,
        from_destination_node: node(r)?,
        exporter_address: None,
    })
}

/// Joins the small RowBinary chunks of many runs (the ingest writer's runs are an IPFIX
/// message each, tens of records) into chunks of about [`COALESCE_BYTES`] for one INSERT.
fn coalesce(chunks: impl Iterator<Item = Bytes>) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    for c in chunks {
        if !buf.is_empty() && buf.len() + c.len() > COALESCE_BYTES {
            out.push(Bytes::from(std::mem::take(&mut buf)));
        }
        buf.extend_from_slice(&c);
    }
    if !buf.is_empty() {
        out.push(Bytes::from(buf));
    }
    out
}

const COALESCE_BYTES: usize = 4 << 20;

impl Store for ClickHouseStore {
    fn insert_batch(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        // The exporter of each run is not stored: the ClickHouse tables are shared with the
        // aggregator's ClickHouse exporter (which has no IPFIX peer to name) and have no column
        // for it, and their retention is by age only (TTL or whole days), which needs no
        // per-exporter counts.
        let chunks = match batch.runs() {
            [one] => self.client.encode(one.records, batch.received_at),
            runs => coalesce(
                runs.iter()
                    .flat_map(|r| self.client.encode(r.records, batch.received_at)),
            ),
        };
        let c = self.client.clone();
        self.run_raw(async move { c.insert_encoded(chunks).await })
            .map_err(|e| self.err("insert", e))
    }

    fn flows(&self, q: &FlowQuery) -> Result<Vec<FlowRow>, StoreError> {
        const OP: &str = "flows query";
        let w = Self::flow_where(&q.filter);
        let t = self.table();
        // Two steps: the page's keys from the filter columns only, then the full rows of just
        // those keys (a time-bounded primary-key range): reading every column of every match
        // to sort them would cost ~70 columns × all matches.
        // 18.16 sorts every match to find the newest page, so look in growing windows back
        // from the newest record first (1 h, 8 h, 64 h, then everything): a page of common
        // matches is found in the first, reading a sliver of the table.
        let deadline = Instant::now() + self.limits.timeout;
        let newest = self.select_until(
            OP,
            format!("SELECT toUInt32(max(flowEndSeconds)) FROM {t}"),
            deadline,
        )?;
        let newest = self.decode(OP, &newest, |r| r.u32())?.pop().unwrap_or(0) as u64;
        let want = q.offset as usize + q.limit as usize;
        let start = q.filter.range.map_or(0, |r| r.start);
        let mut keys = Vec::new();
        for back in [3600u64, 8 * 3600, 64 * 3600, u64::MAX] {
            let lo = newest.saturating_add(1).saturating_sub(back);
            let bounded = back != u64::MAX && lo > start;
            let window = if bounded {
                format!(" AND flowEndSeconds >= toDateTime({lo})")
            } else {
                String::new()
            };
            let b = self.select_until(
                OP,
                format!(
                    "SELECT id, toUInt32(flowEndSeconds) FROM {t} WHERE {}{window} \
                     ORDER BY flowEndSeconds DESC, id DESC LIMIT {want}",
                    w.sql(),
                ),
                deadline,
            )?;
            keys = self.decode(OP, &b, |r| Ok((r.u64()?, r.u32()?)))?;
            if !bounded || keys.len() >= want {
                break;
            }
        }
        let keys: Vec<(u64, u32)> = keys.into_iter().skip(q.offset as usize).collect();
        let (Some(lo), Some(hi)) = (
            keys.iter().map(|k| k.1).min(),
            keys.iter().map(|k| k.1).max(),
        ) else {
            return Ok(Vec::new());
        };
        let ids: Vec<String> = keys.iter().map(|k| k.0.to_string()).collect();
        let cols: Vec<&str> = FLOW_COLUMNS.iter().map(|(n, _)| *n).collect();
        let rows = self.select_until(
            OP,
            format!(
                "SELECT {} FROM {t} WHERE flowEndSeconds >= toDateTime({lo}) \
                 AND flowEndSeconds <= toDateTime({hi}) AND id IN ({}) AND {} \
                 ORDER BY flowEndSeconds DESC, id DESC",
                cols.join(", "),
                ids.join(", "),
                w.sql()
            ),
            deadline,
        )?;
        let rows = self.decode(OP, &rows, flow_row)?;
        // Several writers may share an id: keep exactly the page's (id, end) keys, once each.
        let mut want: HashSet<(u64, u64)> = keys.iter().map(|k| (k.0, k.1 as u64)).collect();
        Ok(rows
            .into_iter()
            .filter(|r| want.remove(&(r.id as u64, r.flow_end_seconds)))
            .collect())
    }

    fn top(&self, q: &TopQuery) -> Result<Vec<TopRow>, StoreError> {
        const OP: &str = "top query";
        let f = &q.filter;
        let from = |i: usize| self.src(i, &f.range);
        let (pp, pe, ps) = (
            from(schema::POD_PAIR),
            from(schema::POD_EXTERNAL),
            from(schema::POD_SERVICE),
        );
        let np = self.node_pairs(f, &from);
        let none = Where::default();
        let (keys, rows, w, pair): ([&str; 4], String, Where, bool) = match q.by {
            TopBy::PodPair => (
                ["src_ns", "src_pod", "dst_ns", "dst_pod"],
                pp,
                dash_where(f, &POD_PAIR),
                true,
            ),
            TopBy::Pod => {
                let (w, we) = (dash_where(f, &POD_PAIR), dash_where(f, &POD_EXTERNAL));
                (
                    ["ns", "pod", "''", "''"],
                    format!(
                        "(SELECT src_ns AS ns, src_pod AS pod, {METRICS} FROM {pp} WHERE {w1} \
                         UNION ALL SELECT dst_ns AS ns, dst_pod AS pod, {SWAP} FROM {pp} \
                         WHERE {w1} UNION ALL SELECT ns, pod, {METRICS} FROM {pe} WHERE {w2})",
                        w1 = w.sql(),
                        w2 = we.sql()
                    ),
                    none,
                    false,
                )
            }
            TopBy::NodePair => (
                ["''", "src_node", "''", "dst_node"],
                np,
                dash_where(f, &NODE_PAIR),
                true,
            ),
            TopBy::Node => {
                let w = dash_where(f, &NODE_PAIR);
                (
                    ["''", "node", "''", "''"],
                    format!(
                        "(SELECT src_node AS node, {METRICS} FROM {np} WHERE {w1} \
                         AND src_node != '' UNION ALL SELECT dst_node AS node, {SWAP} \
                         FROM {np} WHERE {w1} AND dst_node != '')",
                        w1 = w.sql()
                    ),
                    none,
                    false,
                )
            }
            TopBy::Service => (
                ["''", "service", "''", "''"],
                ps,
                dash_where(f, &POD_SERVICE),
                false,
            ),
            TopBy::External => (
                ["''", "ext_ip", "''", "''"],
                pe,
                dash_where(f, &POD_EXTERNAL),
                false,
            ),
        };
        Ok(self
            .group4(OP, keys, &rows, &w, q.limit)?
            .into_iter()
            .map(|([a, b, c, d], traffic)| TopRow {
                src: pod_name(&a, &b),
                dst: pair.then(|| pod_name(&c, &d)),
                bytes: traffic.bytes(),
                traffic,
            })
            .collect())
    }

    fn timeseries(&self, q: &SeriesQuery) -> Result<TimeSeries, StoreError> {
        const OP: &str = "timeseries query";
        let (idx, dims, ns, name, ft) = match q.by {
            SeriesBy::SrcPod => (schema::POD_PAIR, &POD_PAIR, "src_ns", "src_pod", None),
            SeriesBy::DstPod => (schema::POD_PAIR, &POD_PAIR, "dst_ns", "dst_pod", None),
            SeriesBy::Service => (schema::POD_SERVICE, &POD_SERVICE, "''", "service", None),
            SeriesBy::NodePair => (
                schema::NODE_PAIR,
                &NODE_PAIR,
                "src_node",
                "dst_node",
                Some("flow_type"),
            ),
        };
        let w = dash_where(&q.filter, dims);
        let (a, b) = q.filter.range.minutes();
        let hourly = b - a > SERIES_HOURLY_ABOVE_SECS;
        let (step, a, b) = if hourly {
            (3600, a / 3600 * 3600, b.div_ceil(3600) * 3600)
        } else {
            (60, a, b)
        };
        let from = |i: usize| format!("({})", self.rollup_table(i, a, b, hourly));
        let rows = if q.by == SeriesBy::NodePair {
            self.node_pairs(&q.filter, &from)
        } else {
            from(idx)
        };
        let ft_col = ft.unwrap_or("toUInt8(0)");
        let bucket = "minute";
        // The top groups over the range, then their points; bounded by limit × points.
        let sql = format!(
            "SELECT ka, kb, kf, toUInt32(t), sum(octets), sum(rev_octets) FROM \
             (SELECT {ns} AS ka, {name} AS kb, toUInt8({ft_col}) AS kf, {bucket} AS t, octets, \
             rev_octets FROM {rows} WHERE {w}) \
             WHERE (ka, kb, kf) IN (SELECT ka, kb, kf FROM (SELECT {ns} AS ka, {name} AS kb, \
             toUInt8({ft_col}) AS kf, octets, rev_octets FROM {rows} WHERE {w}) \
             GROUP BY ka, kb, kf ORDER BY sum(octets) + sum(rev_octets) DESC, ka, kb, kf \
             LIMIT {limit}) \
             GROUP BY ka, kb, kf, t ORDER BY ka, kb, kf, t",
            w = w.sql(),
            limit = q.limit
        );
        let b = self.select(OP, sql)?;
        let rows = self.decode(OP, &b, |r| {
            Ok((
                (r.string()?, r.string()?, r.u8()?),
                r.u32()? as u64,
                r.u64()?,
                r.u64()?,
            ))
        })?;
        let mut series: Vec<Series> = Vec::new();
        let mut last = None;
        for (key, t, o, ro) in rows {
            if last.as_ref() != Some(&key) {
                series.push(Series {
                    name: series_name(q.by, &key.0, &key.1),
                    flow_type: ft.map(|_| key.2),
                    points: Vec::new(),
                });
                last = Some(key);
            }
            if let Some(s) = series.last_mut() {
                s.points
                    .push([t, o.saturating_mul(8) / step, ro.saturating_mul(8) / step]);
            }
        }
        sort_series(&mut series);
        Ok(TimeSeries { step, series })
    }

    fn sankey(&self, q: &SankeyQuery) -> Result<Sankey, StoreError> {
        const OP: &str = "sankey query";
        let (idx, dims, keys) = match q.by {
            SankeyBy::PodPair => (
                schema::POD_PAIR,
                &POD_PAIR,
                ["src_ns", "src_pod", "dst_ns", "dst_pod"],
            ),
            SankeyBy::Policy => (
                schema::POLICY,
                &POLICY,
                ["eg_ns", "eg_name", "in_ns", "in_name"],
            ),
            SankeyBy::PodService => (
                schema::POD_SERVICE,
                &POD_SERVICE,
                ["src_ns", "src_pod", "''", "service"],
            ),
            SankeyBy::PodExternal => (
                schema::POD_EXTERNAL,
                &POD_EXTERNAL,
                ["ns", "pod", "''", "ext_ip"],
            ),
        };
        let w = dash_where(&q.filter, dims);
        let rows = self.src(idx, &q.filter.range);
        let policy = q.by == SankeyBy::Policy;
        let links = self
            .group4(OP, keys, &rows, &w, q.limit)?
            .into_iter()
            .map(|([a, b, c, d], traffic)| {
                let (src, dst) = (sankey_label(policy, &a, &b), sankey_label(policy, &c, &d));
                sankey_link(&src, &dst, traffic)
            })
            .collect();
        Ok(fold::sankey(links))
    }

    fn node_matrix(&self, f: &DashFilter) -> Result<NodeMatrix, StoreError> {
        const OP: &str = "node matrix query";
        let w = dash_where(f, &NODE_PAIR);
        let np = self.node_pairs(f, &|i| self.src(i, &f.range));
        let sql = format!(
            "SELECT src_node, dst_node, sum(octets + rev_octets) FROM {np} WHERE {} \
             AND src_node != '' AND dst_node != '' GROUP BY src_node, dst_node \
             ORDER BY src_node, dst_node",
            w.sql()
        );
        let secs = f.range.secs();
        let b = self.select(OP, sql)?;
        let cells = self.decode(OP, &b, |r| {
            Ok(node_cell(r.string()?, r.string()?, r.u64()?, secs))
        })?;
        Ok(fold::node_matrix(cells, secs))
    }

    fn policy_flows(&self, q: &PolicyQuery) -> Result<Vec<PolicyFlow>, StoreError> {
        const OP: &str = "policy query";
        let mut w = dash_where(&q.filter, &POLICY);
        if let Some(r) = &q.ingress {
            w.push(pod_match("in_ns", "in_name", r));
        }
        if let Some(r) = &q.egress {
            w.push(pod_match("eg_ns", "eg_name", r));
        }
        let keys = "eg_ns, eg_name, eg_action, in_ns, in_name, in_action, src_ns, src_pod, \
                    dst_ns, dst_pod";
        let sql = format!(
            "SELECT {keys}, sum(packets), sum(octets), sum(rev_packets), sum(rev_octets), \
             sum(records) FROM {} WHERE {} GROUP BY {keys} \
             ORDER BY sum(octets) + sum(rev_octets) DESC, {keys} LIMIT {}",
            self.src(schema::POLICY, &q.filter.range),
            w.sql(),
            q.limit
        );
        let b = self.select(OP, sql)?;
        self.decode(OP, &b, |r| {
            let egress = PolicyName {
                namespace: r.string()?,
                name: r.string()?,
                action: r.u8()?,
            };
            let ingress = PolicyName {
                namespace: r.string()?,
                name: r.string()?,
                action: r.u8()?,
            };
            let src_pod = pod_name(&r.string()?, &r.string()?);
            let dst_pod = pod_name(&r.string()?, &r.string()?);
            let traffic = traffic(r)?;
            Ok(PolicyFlow {
                egress,
                ingress,
                src_pod,
                dst_pod,
                bytes: traffic.bytes(),
                traffic,
            })
        })
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        const OP: &str = "stats";
        let t = self.table();
        let rollups: Vec<String> = self
            .tables()
            .into_iter()
            .filter(|(_, rec)| !rec)
            .map(|(n, _)| quote(&n))
            .collect();
        let sql = format!(
            "SELECT count(), toUInt32(min(flowEndSeconds)), toUInt32(max(flowEndSeconds)), \
             (SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND {in_}), \
             (SELECT sum(rows) FROM system.parts WHERE active AND database = {db} \
             AND table IN ({r})) FROM {t}",
            in_ = self.tables_in(),
            db = quote(&self.client.config().database),
            r = rollups.join(", ")
        );
        let b = self.select(OP, sql)?;
        let mut v = self.decode(OP, &b, |r| {
            Ok((r.u64()?, r.u32()?, r.u32()?, r.u64()?, r.u64()?))
        })?;
        let (records, lo, hi, bytes, rollup_rows) = v.pop().unwrap_or_default();
        Ok(StoreStats {
            backend: "clickhouse",
            location: format!("{}/{}", self.client.config().url, t),
            records,
            oldest_end_secs: (records > 0).then_some(lo as u64),
            newest_end_secs: (records > 0).then_some(hi as u64),
            bytes: Some(bytes),
            rollup_rows,
        })
    }

    fn enforce_retention(&self, now: u64) -> Result<RetentionReport, StoreError> {
        const OP: &str = "retention";
        let keep = std::time::Duration::from(self.client.config().retention).as_secs();
        let cutoff = now.saturating_sub(keep).min(u32::MAX as u64);
        // Whole days before the one holding the cutoff, in the server's time zone (the one
        // toYYYYMMDD partitioned by).
        let sql = format!(
            "SELECT table, partition, sum(rows), \
             toUInt32(toStartOfDay(toDateTime({cutoff}))) FROM system.parts \
             WHERE active AND {} AND toUInt32(partition) < toYYYYMMDD(toDateTime({cutoff})) \
             GROUP BY table, partition ORDER BY table, partition",
            self.tables_in()
        );
        let b = self.select(OP, sql)?;
        let parts = self.decode(OP, &b, |r| {
            Ok((r.string()?, r.string()?, r.u64()?, r.u32()?))
        })?;
        let record_table = &self.client.config().table;
        let db = &self.client.config().database;
        let mut report = RetentionReport::default();
        for (table, partition, rows, day) in parts {
            // Partition ids of toYYYYMMDD are digits; anything else is not ours to drop.
            if !partition.bytes().all(|c| c.is_ascii_digit()) {
                continue;
            }
            self.execute(
                OP,
                format!("ALTER TABLE {db}.{table} DROP PARTITION {partition}"),
            )?;
            if &table == record_table {
                report.deleted_records += rows;
            } else {
                report.deleted_rollup_rows += rows;
            }
            report.cutoff_secs = report.cutoff_secs.max(day as u64);
        }
        // No exporter is stored here (see `insert_batch`): all under the unknown one.
        if report.deleted_records > 0 {
            report.deleted_by.push(ExporterDeleted {
                reason: RetentionReason::Age,
                exporter: String::new(),
                records: report.deleted_records,
            });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_codes_are_read_from_server_messages() {
        for (msg, code) in [
            (
                "Code: 159, e.displayText() = DB::Exception: Timeout exceeded: elapsed 1.0 seconds, maximum: 1",
                Some(TIMEOUT_EXCEEDED),
            ),
            (
                "bad response: Code: 158. DB::Exception: Limit for rows to GROUP BY exceeded",
                Some(TOO_MANY_ROWS),
            ),
            (
                "Code: 241, e.what() = DB::Exception: Memory limit",
                Some(MEMORY_LIMIT_EXCEEDED),
            ),
            ("connection refused", None),
            ("Code: ", None),
        ] {
            assert_eq!(exception_code(msg), code, "{msg}");
        }
    }
}
