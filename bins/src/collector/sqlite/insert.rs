//! Batched insert: every record into `flows`, and the batch's per-minute sums into each rollup,
//! in one transaction with cached prepared statements.
//!
//! Rollups are summed in memory first: a batch of thousands of records from a cluster's
//! steady traffic folds into far fewer rollup rows, so the upserts cost little next to the
//! record inserts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use flowcore::aggregator::{AggregatedRecord, NodeCounters};
use rusqlite::{Connection, Statement};

use super::schema::{self, ROLLUPS};
use crate::collector::query::Traffic;

/// SQLite integers are i64; a counter past i64::MAX (only a corrupt peer sends one) is clamped
/// rather than failing the whole batch.
fn i(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

const FLOW_TYPE_INTRA: u8 = 1;
const FLOW_TYPE_INTER: u8 = 2;
const FLOW_TYPE_TO_EXTERNAL: u8 = 3;
const FLOW_TYPE_FROM_EXTERNAL: u8 = 4;

type S = Arc<str>;

// Rollup keys in the column order of `schema::ROLLUPS`, minute first.
type PodPairKey = (u32, S, S, S, S, S, S, u8);
type PodServiceKey = (u32, S, S, S, S, Option<IpAddr>);
type PodExternalKey = (u32, u8, S, S, S, IpAddr);
type NodePairKey = (u32, S, S, u8);
type PolicyKey = (u32, S, S, u8, S, S, u8, S, S, S, S);

#[derive(Default)]
struct Rollups {
    pod_pair: HashMap<PodPairKey, Traffic>,
    pod_service: HashMap<PodServiceKey, Traffic>,
    pod_external: HashMap<PodExternalKey, Traffic>,
    node_pair: HashMap<NodePairKey, Traffic>,
    policy: HashMap<PolicyKey, Traffic>,
}

fn add<K: Hash + Eq>(m: &mut HashMap<K, Traffic>, k: K, t: &Traffic) {
    let e = m.entry(k).or_default();
    e.packets = e.packets.saturating_add(t.packets);
    e.octets = e.octets.saturating_add(t.octets);
    e.reverse_packets = e.reverse_packets.saturating_add(t.reverse_packets);
    e.reverse_octets = e.reverse_octets.saturating_add(t.reverse_octets);
    e.records += t.records;
}

/// The same sums keyed by hour instead of minute (`hour` rewrites the key's first element).
fn by_hour<K: Hash + Eq>(m: &HashMap<K, Traffic>, hour: impl Fn(&K) -> K) -> HashMap<K, Traffic> {
    let mut out = HashMap::with_capacity(m.len());
    for (k, t) in m {
        add(&mut out, hour(k), t);
    }
    out
}

fn hour(m: u32) -> u32 {
    m / 3600 * 3600
}

impl Rollups {
    fn hourly(&self) -> Rollups {
        Rollups {
            pod_pair: by_hour(&self.pod_pair, |k| {
                let mut k = k.clone();
                k.0 = hour(k.0);
                k
            }),
            pod_service: by_hour(&self.pod_service, |k| {
                let mut k = k.clone();
                k.0 = hour(k.0);
                k
            }),
            pod_external: by_hour(&self.pod_external, |k| {
                let mut k = k.clone();
                k.0 = hour(k.0);
                k
            }),
            node_pair: by_hour(&self.node_pair, |k| {
                let mut k = k.clone();
                k.0 = hour(k.0);
                k
            }),
            policy: by_hour(&self.policy, |k| {
                let mut k = k.clone();
                k.0 = hour(k.0);
                k
            }),
        }
    }

    fn add(&mut self, r: &AggregatedRecord) {
        let minute = r.end_secs / 60 * 60;
        let t = Traffic {
            packets: r.deltas[0],
            octets: r.deltas[1],
            reverse_packets: r.deltas[2],
            reverse_octets: r.deltas[3],
            records: 1,
        };
        let c = |s: &S| s.clone();
        if matches!(r.flow_type, FLOW_TYPE_INTRA | FLOW_TYPE_INTER) {
            let k = (
                minute,
                c(&r.src_namespace),
                c(&r.src_pod),
                c(&r.src_node),
                c(&r.dst_namespace),
                c(&r.dst_pod),
                c(&r.dst_node),
                r.flow_type,
            );
            add(&mut self.pod_pair, k, &t);
        }
        if !r.service_port_name.is_empty() {
            let k = (
                minute,
                c(&r.src_namespace),
                c(&r.src_pod),
                c(&r.src_node),
                c(&r.service_port_name),
                r.cluster_ip,
            );
            add(&mut self.pod_service, k, &t);
        }
        match r.flow_type {
            FLOW_TYPE_TO_EXTERNAL => {
                let k = (
                    minute,
                    r.flow_type,
                    c(&r.src_namespace),
                    c(&r.src_pod),
                    c(&r.src_node),
                    r.key.dst,
                );
                add(&mut self.pod_external, k, &t);
            }
            FLOW_TYPE_FROM_EXTERNAL => {
                // Seen from the Pod, which is the destination here: swap directions.
                let swapped = Traffic {
                    packets: t.reverse_packets,
                    octets: t.reverse_octets,
                    reverse_packets: t.packets,
                    reverse_octets: t.octets,
                    records: 1,
                };
                let k = (
                    minute,
                    r.flow_type,
                    c(&r.dst_namespace),
                    c(&r.dst_pod),
                    c(&r.dst_node),
                    r.key.src,
                );
                add(&mut self.pod_external, k, &swapped);
            }
            _ => {}
        }
        add(
            &mut self.node_pair,
            (minute, c(&r.src_node), c(&r.dst_node), r.flow_type),
            &t,
        );
        if !r.ingress.name.is_empty() || !r.egress.name.is_empty() {
            let k = (
                minute,
                c(&r.egress.namespace),
                c(&r.egress.name),
                r.egress.action,
                c(&r.ingress.namespace),
                c(&r.ingress.name),
                r.ingress.action,
                c(&r.src_namespace),
                c(&r.src_pod),
                c(&r.dst_namespace),
                c(&r.dst_pod),
            );
            add(&mut self.policy, k, &t);
        }
    }
}

/// Binds `t`'s metrics at parameter `n..n+5`.
fn bind_metrics(st: &mut Statement<'_>, n: usize, t: &Traffic) -> rusqlite::Result<()> {
    st.raw_bind_parameter(n, i(t.packets))?;
    st.raw_bind_parameter(n + 1, i(t.octets))?;
    st.raw_bind_parameter(n + 2, i(t.reverse_packets))?;
    st.raw_bind_parameter(n + 3, i(t.reverse_octets))?;
    st.raw_bind_parameter(n + 4, i(t.records))
}

/// Reused per batch so the hot loop formats addresses without allocating.
#[derive(Default)]
pub struct Scratch {
    a: String,
    b: String,
}

fn ip_text<'a>(buf: &'a mut String, ip: &IpAddr) -> &'a str {
    buf.clear();
    let _ = write!(buf, "{ip}");
    buf
}

pub fn insert_batch(
    conn: &mut Connection,
    batch: &[AggregatedRecord],
    received_at: u64,
    scratch: &mut Scratch,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut rollups = Rollups::default();
    {
        let mut st = tx.prepare_cached(&schema::insert_flow_sql())?;
        for r in batch {
            bind_flow(&mut st, r, received_at, scratch)?;
            st.raw_execute()?;
            rollups.add(r);
        }
    }
    write_rollups(&tx, &rollups, scratch, "")?;
    write_rollups(&tx, &rollups.hourly(), scratch, schema::HOURLY)?;
    tx.execute(
        "UPDATE meta SET value = value + ?1 WHERE key = 'records'",
        [batch.len() as i64],
    )?;
    tx.commit()
}

fn bind_flow(
    st: &mut Statement<'_>,
    r: &AggregatedRecord,
    received_at: u64,
    scratch: &mut Scratch,
) -> rusqlite::Result<()> {
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    st.raw_bind_parameter(next(), i(received_at))?;
    st.raw_bind_parameter(next(), r.start_secs)?;
    st.raw_bind_parameter(next(), r.end_secs)?;
    st.raw_bind_parameter(next(), r.end_reason)?;
    st.raw_bind_parameter(next(), r.flow_type)?;
    st.raw_bind_parameter(next(), ip_text(&mut scratch.a, &r.key.src))?;
    st.raw_bind_parameter(next(), ip_text(&mut scratch.b, &r.key.dst))?;
    st.raw_bind_parameter(next(), r.key.src_port)?;
    st.raw_bind_parameter(next(), r.key.dst_port)?;
    st.raw_bind_parameter(next(), r.key.proto)?;
    for v in r.totals.iter().chain(&r.deltas) {
        st.raw_bind_parameter(next(), i(*v))?;
    }
    st.raw_bind_parameter(next(), i(r.throughput))?;
    st.raw_bind_parameter(next(), i(r.reverse_throughput))?;
    for s in [
        &r.src_pod,
        &r.src_namespace,
        &r.src_node,
        &r.dst_pod,
        &r.dst_namespace,
        &r.dst_node,
    ] {
        st.raw_bind_parameter(next(), &**s)?;
    }
    st.raw_bind_parameter(next(), r.cluster_ip.map(|ip| ip.to_string()))?;
    st.raw_bind_parameter(next(), r.service_port)?;
    st.raw_bind_parameter(next(), &*r.service_port_name)?;
    for p in [&r.ingress, &r.egress] {
        st.raw_bind_parameter(next(), &*p.name)?;
        st.raw_bind_parameter(next(), &*p.namespace)?;
        st.raw_bind_parameter(next(), p.kind)?;
        st.raw_bind_parameter(next(), &*p.rule)?;
        st.raw_bind_parameter(next(), p.action)?;
    }
    st.raw_bind_parameter(next(), &*r.tcp_state)?;
    st.raw_bind_parameter(next(), &*r.src_labels)?;
    st.raw_bind_parameter(next(), &*r.dst_labels)?;
    st.raw_bind_parameter(next(), r.correlated)?;
    st.raw_bind_parameter(next(), r.original_exporter.map(|ip| ip.to_string()))?;
    st.raw_bind_parameter(next(), r.original_domain)?;
    st.raw_bind_parameter(next(), &*r.cluster_id)?;
    for c in [&r.from_source, &r.from_destination] {
        bind_node(st, &mut next, c.as_ref())?;
    }
    debug_assert_eq!(next() - 1, schema::FLOW_COLUMNS.len());
    Ok(())
}

fn bind_node(
    st: &mut Statement<'_>,
    next: &mut impl FnMut() -> usize,
    c: Option<&NodeCounters>,
) -> rusqlite::Result<()> {
    let Some(c) = c else {
        for _ in 0..11 {
            st.raw_bind_parameter(next(), rusqlite::types::Null)?;
        }
        return Ok(());
    };
    for v in c.totals.iter().chain(&c.deltas) {
        st.raw_bind_parameter(next(), i(*v))?;
    }
    st.raw_bind_parameter(next(), i(c.throughput))?;
    st.raw_bind_parameter(next(), i(c.reverse_throughput))?;
    st.raw_bind_parameter(next(), c.end_secs)
}

fn write_rollups(
    tx: &Connection,
    r: &Rollups,
    scratch: &mut Scratch,
    suffix: &str,
) -> rusqlite::Result<()> {
    let sql =
        |idx: usize| schema::upsert_sql(&format!("{}{suffix}", ROLLUPS[idx].0), ROLLUPS[idx].1);
    let mut st = tx.prepare_cached(&sql(0))?;
    for ((m, a, b, c, d, e, f, ft), t) in &r.pod_pair {
        st.raw_bind_parameter(1, m)?;
        for (n, s) in [a, b, c, d, e, f].into_iter().enumerate() {
            st.raw_bind_parameter(2 + n, &**s)?;
        }
        st.raw_bind_parameter(8, ft)?;
        bind_metrics(&mut st, 9, t)?;
        st.raw_execute()?;
    }
    let mut st = tx.prepare_cached(&sql(1))?;
    for ((m, a, b, c, svc, ip), t) in &r.pod_service {
        st.raw_bind_parameter(1, m)?;
        for (n, s) in [a, b, c, svc].into_iter().enumerate() {
            st.raw_bind_parameter(2 + n, &**s)?;
        }
        // Part of the key, so never NULL (NULLs are distinct in a key): '' when absent.
        let ip = match ip {
            Some(ip) => ip_text(&mut scratch.a, ip),
            None => "",
        };
        st.raw_bind_parameter(6, ip)?;
        bind_metrics(&mut st, 7, t)?;
        st.raw_execute()?;
    }
    let mut st = tx.prepare_cached(&sql(2))?;
    for ((m, ft, ns, pod, node, ip), t) in &r.pod_external {
        st.raw_bind_parameter(1, m)?;
        st.raw_bind_parameter(2, ft)?;
        st.raw_bind_parameter(3, &**ns)?;
        st.raw_bind_parameter(4, &**pod)?;
        st.raw_bind_parameter(5, &**node)?;
        st.raw_bind_parameter(6, ip_text(&mut scratch.a, ip))?;
        bind_metrics(&mut st, 7, t)?;
        st.raw_execute()?;
    }
    let mut st = tx.prepare_cached(&sql(3))?;
    for ((m, a, b, ft), t) in &r.node_pair {
        st.raw_bind_parameter(1, m)?;
        st.raw_bind_parameter(2, &**a)?;
        st.raw_bind_parameter(3, &**b)?;
        st.raw_bind_parameter(4, ft)?;
        bind_metrics(&mut st, 5, t)?;
        st.raw_execute()?;
    }
    let mut st = tx.prepare_cached(&sql(4))?;
    for ((m, egns, egn, ega, inns, inn, ina, sns, sp, dns, dp), t) in &r.policy {
        st.raw_bind_parameter(1, m)?;
        st.raw_bind_parameter(2, &**egns)?;
        st.raw_bind_parameter(3, &**egn)?;
        st.raw_bind_parameter(4, ega)?;
        st.raw_bind_parameter(5, &**inns)?;
        st.raw_bind_parameter(6, &**inn)?;
        st.raw_bind_parameter(7, ina)?;
        for (n, s) in [sns, sp, dns, dp].into_iter().enumerate() {
            st.raw_bind_parameter(8 + n, &**s)?;
        }
        bind_metrics(&mut st, 12, t)?;
        st.raw_execute()?;
    }
    Ok(())
}
