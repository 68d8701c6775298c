//! The queries. Dashboards read the per-minute rollups; only [`flows`] reads the record table.
//!
//! SQL is assembled from fixed fragments; every user-supplied value is a bound parameter.

use rusqlite::types::Value;
use rusqlite::{Connection, Row};

use crate::collector::query::*;

/// WHERE clauses with their bound values, in order.
#[derive(Default)]
struct Where {
    clauses: Vec<String>,
    params: Vec<Value>,
}

impl Where {
    fn push(&mut self, clause: impl Into<String>, params: impl IntoIterator<Item = Value>) {
        self.clauses.push(clause.into());
        self.params.extend(params);
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() {
            "1".into()
        } else {
            self.clauses.join(" AND ")
        }
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn int(v: u64) -> Value {
    Value::Integer(v.min(i64::MAX as u64) as i64)
}

/// `(ns_col = ? AND pod_col = ?)` or `pod_col = ?` for a reference without namespace.
fn pod_match(w: &mut Vec<String>, p: &mut Vec<Value>, ns_col: &str, pod_col: &str, r: &NamedRef) {
    match &r.namespace {
        Some(ns) => {
            w.push(format!("({ns_col} = ? AND {pod_col} = ?)"));
            p.push(text(ns));
        }
        None => w.push(format!("{pod_col} = ?")),
    }
    p.push(text(&r.name));
}

/// Which columns of a rollup the dashboard filters apply to.
struct Dims {
    ns: &'static [&'static str],
    pods: &'static [(&'static str, &'static str)],
    nodes: &'static [&'static str],
}

const POD_PAIR: Dims = Dims {
    ns: &["src_ns", "dst_ns"],
    pods: &[("src_ns", "src_pod"), ("dst_ns", "dst_pod")],
    nodes: &["src_node", "dst_node"],
};
const POD_SERVICE: Dims = Dims {
    ns: &["src_ns"],
    pods: &[("src_ns", "src_pod")],
    nodes: &["src_node"],
};
const POD_EXTERNAL: Dims = Dims {
    ns: &["ns"],
    pods: &[("ns", "pod")],
    nodes: &["node"],
};
const NODE_PAIR: Dims = Dims {
    ns: &[],
    pods: &[],
    nodes: &["src_node", "dst_node"],
};
const POLICY: Dims = Dims {
    ns: &["src_ns", "dst_ns"],
    pods: &[("src_ns", "src_pod"), ("dst_ns", "dst_pod")],
    nodes: &[],
};

fn any_of(w: &mut Where, cols: &[&str], v: &str) {
    if cols.is_empty() {
        return;
    }
    let c: Vec<String> = cols.iter().map(|c| format!("{c} = ?")).collect();
    w.push(
        format!("({})", c.join(" OR ")),
        cols.iter().map(|_| text(v)),
    );
}

/// The rows of rollup `table` covering `range`: per-minute rows for the partial hours at the
/// edges, hourly rows (`{table}_h`) for the whole hours between, so a day-long range reads
/// ~24 rows per group instead of ~1440. The bounds are integers we computed, so they are
/// written into the SQL rather than bound.
fn src(table: &str, range: &TimeRange) -> String {
    let (a, b) = range.minutes();
    let (h1, h2) = (a.div_ceil(3600) * 3600, b / 3600 * 3600);
    if h2 <= h1 {
        return format!("(SELECT * FROM {table} WHERE minute >= {a} AND minute < {b})");
    }
    format!(
        "(SELECT * FROM {table} WHERE minute >= {a} AND minute < {h1} \
         UNION ALL SELECT * FROM {table}_h WHERE minute >= {h1} AND minute < {h2} \
         UNION ALL SELECT * FROM {table} WHERE minute >= {h2} AND minute < {b})"
    )
}

/// Filters (not the time range, which [`src`] applies) of a dashboard query on a rollup.
fn dash_where(f: &DashFilter, d: &Dims) -> Where {
    let mut w = Where::default();
    if let Some(ns) = &f.namespace {
        any_of(&mut w, d.ns, ns);
    }
    if let Some(pod) = &f.pod
        && !d.pods.is_empty()
    {
        let (mut cl, mut ps) = (Vec::new(), Vec::new());
        for (ns, p) in d.pods {
            pod_match(&mut cl, &mut ps, ns, p, pod);
        }
        w.push(format!("({})", cl.join(" OR ")), ps);
    }
    if let Some(node) = &f.node {
        any_of(&mut w, d.nodes, node);
    }
    w
}

const SUMS: &str = "SUM(octets + rev_octets) AS bytes, SUM(octets), SUM(packets), \
                    SUM(rev_octets), SUM(rev_packets), SUM(records)";

/// An integer column read leniently: NULL is 0, negatives clamp to 0, and a REAL (SQLite's
/// SUM past the i64 range) is truncated.
fn loose_u64(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(match row.get_ref(i)? {
        rusqlite::types::ValueRef::Integer(v) => v.max(0) as u64,
        rusqlite::types::ValueRef::Real(v) => v.max(0.0) as u64,
        _ => 0,
    })
}

/// Reads the columns [`SUMS`] selects, starting at column `i`.
fn traffic(row: &Row<'_>, i: usize) -> rusqlite::Result<(u64, Traffic)> {
    let g = |k: usize| loose_u64(row, i + k);
    Ok((
        g(0)?,
        Traffic {
            octets: g(1)?,
            packets: g(2)?,
            reverse_octets: g(3)?,
            reverse_packets: g(4)?,
            records: g(5)?,
        },
    ))
}

fn pod_name(ns: &str, pod: &str) -> String {
    if ns.is_empty() {
        pod.to_owned()
    } else {
        format!("{ns}/{pod}")
    }
}

pub fn top(c: &Connection, q: &TopQuery) -> rusqlite::Result<Vec<TopRow>> {
    let r = &q.filter.range;
    let (pp, pe, np, ps) = (
        src("r_pod_pair", r),
        src("r_pod_external", r),
        src("r_node_pair", r),
        src("r_pod_service", r),
    );
    // Single-entity groupings union both ends, swapping directions for the destination end so
    // `octets` is always what the entity sent.
    let swap = "rev_packets AS packets, rev_octets AS octets, packets AS rev_packets, \
                octets AS rev_octets, records";
    let keep = "packets, octets, rev_packets, rev_octets, records";
    let (sql, params, pair) = match q.by {
        TopBy::PodPair => {
            let w = dash_where(&q.filter, &POD_PAIR);
            (
                format!(
                    "SELECT src_ns, src_pod, dst_ns, dst_pod, {SUMS} FROM {pp} WHERE {} \
                     GROUP BY src_ns, src_pod, dst_ns, dst_pod ORDER BY bytes DESC LIMIT ?",
                    w.sql()
                ),
                w.params,
                true,
            )
        }
        TopBy::Pod => {
            let w = dash_where(&q.filter, &POD_PAIR);
            let we = dash_where(&q.filter, &POD_EXTERNAL);
            let mut params = w.params.clone();
            params.extend(w.params.iter().cloned());
            params.extend(we.params.iter().cloned());
            (
                format!(
                    "SELECT ns, pod, '', '', {SUMS} FROM ( \
                     SELECT src_ns AS ns, src_pod AS pod, {keep} FROM {pp} WHERE {w1} \
                     UNION ALL SELECT dst_ns, dst_pod, {swap} FROM {pp} WHERE {w1} \
                     UNION ALL SELECT ns, pod, {keep} FROM {pe} WHERE {w2}) \
                     GROUP BY ns, pod ORDER BY bytes DESC LIMIT ?",
                    w1 = w.sql(),
                    w2 = we.sql()
                ),
                params,
                false,
            )
        }
        TopBy::NodePair => {
            let w = dash_where(&q.filter, &NODE_PAIR);
            (
                format!(
                    "SELECT '', src_node, '', dst_node, {SUMS} FROM {np} WHERE {} \
                     GROUP BY src_node, dst_node ORDER BY bytes DESC LIMIT ?",
                    w.sql()
                ),
                w.params,
                true,
            )
        }
        TopBy::Node => {
            let w = dash_where(&q.filter, &NODE_PAIR);
            let mut params = w.params.clone();
            params.extend(w.params.iter().cloned());
            (
                format!(
                    "SELECT '', node, '', '', {SUMS} FROM ( \
                     SELECT src_node AS node, {keep} FROM {np} WHERE {w1} AND src_node != '' \
                     UNION ALL SELECT dst_node, {swap} FROM {np} WHERE {w1} AND dst_node != '') \
                     GROUP BY node ORDER BY bytes DESC LIMIT ?",
                    w1 = w.sql()
                ),
                params,
                false,
            )
        }
        TopBy::Service => {
            let w = dash_where(&q.filter, &POD_SERVICE);
            (
                format!(
                    "SELECT '', service, '', '', {SUMS} FROM {ps} WHERE {} \
                     GROUP BY service ORDER BY bytes DESC LIMIT ?",
                    w.sql()
                ),
                w.params,
                false,
            )
        }
        TopBy::External => {
            let w = dash_where(&q.filter, &POD_EXTERNAL);
            (
                format!(
                    "SELECT '', ext_ip, '', '', {SUMS} FROM {pe} WHERE {} \
                     GROUP BY ext_ip ORDER BY bytes DESC LIMIT ?",
                    w.sql()
                ),
                w.params,
                false,
            )
        }
    };
    let mut params = params;
    params.push(int(q.limit as u64));
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(params), |row| {
        let (bytes, traffic) = traffic(row, 4)?;
        let src = pod_name(&row.get::<_, String>(0)?, &row.get::<_, String>(1)?);
        let dst = pair.then(|| {
            pod_name(
                &row.get::<_, String>(2).unwrap_or_default(),
                &row.get::<_, String>(3).unwrap_or_default(),
            )
        });
        Ok(TopRow {
            src,
            dst,
            bytes,
            traffic,
        })
    })?;
    rows.collect()
}

/// Time series over ranges longer than this use hourly points.
pub const SERIES_HOURLY_ABOVE_SECS: u64 = 6 * 3600;

pub fn timeseries(c: &Connection, q: &SeriesQuery) -> rusqlite::Result<TimeSeries> {
    // (table, dims, group columns rendered as the series name, extra group column)
    let (table, dims, ns, name, ft) = match q.by {
        SeriesBy::SrcPod => ("r_pod_pair", &POD_PAIR, "src_ns", "src_pod", None),
        SeriesBy::DstPod => ("r_pod_pair", &POD_PAIR, "dst_ns", "dst_pod", None),
        SeriesBy::Service => ("r_pod_service", &POD_SERVICE, "''", "service", None),
        SeriesBy::NodePair => (
            "r_node_pair",
            &NODE_PAIR,
            "src_node",
            "dst_node",
            Some("flow_type"),
        ),
    };
    let w = dash_where(&q.filter, dims);
    let ft_col = ft.unwrap_or("0");
    // Long ranges get hourly points from the hourly rollup: a day is 24 points per series,
    // not 1440, and the query reads 60× fewer rows. The range widens to whole hours.
    let (a, b) = q.filter.range.minutes();
    let (step, from) = if b - a > SERIES_HOURLY_ABOVE_SECS {
        let (a, b) = (a / 3600 * 3600, b.div_ceil(3600) * 3600);
        (
            3600,
            format!("(SELECT * FROM {table}_h WHERE minute >= {a} AND minute < {b})"),
        )
    } else {
        (
            60,
            format!("(SELECT * FROM {table} WHERE minute >= {a} AND minute < {b})"),
        )
    };
    let table = from;
    // The top groups over the whole range first, then their minutes: the answer stays bounded
    // by limit × minutes whatever the cardinality. `IN (top)` rather than a join, so SQLite
    // scans the range once against an index of the top groups instead of once per group.
    let sql = format!(
        "WITH top AS (SELECT {ns} AS a, {name} AS b, {ft_col} AS f FROM {table} WHERE {w} \
         GROUP BY a, b, f ORDER BY SUM(octets + rev_octets) DESC LIMIT ?) \
         SELECT {ns}, {name}, {ft_col}, minute, SUM(octets), SUM(rev_octets) FROM {table} \
         WHERE {w} AND ({ns}, {name}, {ft_col}) IN (SELECT a, b, f FROM top) \
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        w = w.sql()
    );
    let mut params = w.params.clone();
    params.push(int(q.limit as u64));
    params.extend(w.params);
    let mut st = c.prepare_cached(&sql)?;
    let mut rows = st.query(rusqlite::params_from_iter(params))?;
    let mut series: Vec<Series> = Vec::new();
    let mut last: Option<(String, String, i64)> = None;
    while let Some(row) = rows.next()? {
        let a: String = row.get(0)?;
        let b: String = row.get(1)?;
        let f: i64 = row.get(2)?;
        let minute: i64 = row.get(3)?;
        let (o, ro) = (loose_u64(row, 4)?, loose_u64(row, 5)?);
        let key = (a, b, f);
        if last.as_ref() != Some(&key) {
            let name = match q.by {
                SeriesBy::NodePair => format!("{} → {}", key.0, node_or_external(&key.1)),
                _ => pod_name(&key.0, &key.1),
            };
            series.push(Series {
                name,
                flow_type: ft.map(|_| key.2 as u8),
                points: Vec::new(),
            });
            last = Some(key);
        }
        if let Some(s) = series.last_mut() {
            s.points
                .push([minute.max(0) as u64, o * 8 / 60, ro * 8 / 60]);
        }
    }
    // Largest first, as the UI's legend lists them.
    let total = |s: &Series| s.points.iter().map(|p| p[1] + p[2]).sum::<u64>();
    series.sort_by(|x, y| total(y).cmp(&total(x)).then_with(|| x.name.cmp(&y.name)));
    Ok(TimeSeries { step, series })
}

fn node_or_external(n: &str) -> &str {
    if n.is_empty() { "external" } else { n }
}

pub fn sankey(c: &Connection, q: &SankeyQuery) -> rusqlite::Result<Sankey> {
    let (table, dims, a, b) = match q.by {
        SankeyBy::PodPair => (
            "r_pod_pair",
            &POD_PAIR,
            "src_ns, src_pod",
            "dst_ns, dst_pod",
        ),
        SankeyBy::Policy => ("r_policy", &POLICY, "eg_ns, eg_name", "in_ns, in_name"),
        SankeyBy::PodService => (
            "r_pod_service",
            &POD_SERVICE,
            "src_ns, src_pod",
            "'', service",
        ),
        SankeyBy::PodExternal => ("r_pod_external", &POD_EXTERNAL, "ns, pod", "'', ext_ip"),
    };
    let w = dash_where(&q.filter, dims);
    let sql = format!(
        "SELECT {a}, {b}, {SUMS} FROM {} WHERE {} GROUP BY {a}, {b} \
         ORDER BY bytes DESC LIMIT ?",
        src(table, &q.filter.range),
        w.sql()
    );
    let mut params = w.params;
    params.push(int(q.limit as u64));
    let mut st = c.prepare_cached(&sql)?;
    let policy = q.by == SankeyBy::Policy;
    let label = |ns: String, n: String| {
        if policy && n.is_empty() {
            "(no policy)".to_owned()
        } else {
            pod_name(&ns, &n)
        }
    };
    let mut links = Vec::new();
    let mut rows = st.query(rusqlite::params_from_iter(params))?;
    while let Some(row) = rows.next()? {
        let src = label(row.get(0)?, row.get(1)?);
        let dst = label(row.get(2)?, row.get(3)?);
        let (bytes, traffic) = traffic(row, 4)?;
        links.push(SankeyLink {
            source: format!("s:{src}"),
            target: format!("d:{dst}"),
            bytes,
            traffic,
        });
    }
    let mut nodes: Vec<SankeyNode> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for l in &links {
        for (id, side) in [(&l.source, "source"), (&l.target, "destination")] {
            if seen.insert(id.clone()) {
                nodes.push(SankeyNode {
                    id: id.clone(),
                    name: id[2..].to_owned(),
                    side,
                });
            }
        }
    }
    Ok(Sankey { nodes, links })
}

pub fn node_matrix(c: &Connection, f: &DashFilter) -> rusqlite::Result<NodeMatrix> {
    let w = dash_where(f, &NODE_PAIR);
    let sql = format!(
        "SELECT src_node, dst_node, SUM(octets + rev_octets) FROM {} WHERE {} \
         AND src_node != '' AND dst_node != '' GROUP BY src_node, dst_node \
         ORDER BY src_node, dst_node",
        src("r_node_pair", &f.range),
        w.sql()
    );
    let secs = f.range.secs();
    let mut st = c.prepare_cached(&sql)?;
    let cells = st
        .query_map(rusqlite::params_from_iter(w.params), |row| {
            let bytes = loose_u64(row, 2)?;
            Ok(NodeCell {
                src: row.get(0)?,
                dst: row.get(1)?,
                // Rounded to 1 kbps so responses are stable to compare.
                mbps: ((bytes as f64 * 8.0 / secs as f64 / 1e6) * 1000.0).round() / 1000.0,
                bytes,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut nodes: Vec<String> = cells
        .iter()
        .flat_map(|c| [c.src.clone(), c.dst.clone()])
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(NodeMatrix {
        nodes,
        cells,
        range_secs: secs,
    })
}

pub fn policy_flows(c: &Connection, q: &PolicyQuery) -> rusqlite::Result<Vec<PolicyFlow>> {
    let mut w = dash_where(&q.filter, &POLICY);
    for (r, ns, name) in [
        (&q.ingress, "in_ns", "in_name"),
        (&q.egress, "eg_ns", "eg_name"),
    ] {
        if let Some(r) = r {
            let (mut cl, mut ps) = (Vec::new(), Vec::new());
            pod_match(&mut cl, &mut ps, ns, name, r);
            w.push(cl.join(""), ps);
        }
    }
    let sql = format!(
        "SELECT eg_ns, eg_name, eg_action, in_ns, in_name, in_action, src_ns, src_pod, dst_ns, \
         dst_pod, {SUMS} FROM {} WHERE {} GROUP BY eg_ns, eg_name, eg_action, in_ns, \
         in_name, in_action, src_ns, src_pod, dst_ns, dst_pod ORDER BY bytes DESC LIMIT ?",
        src("r_policy", &q.filter.range),
        w.sql()
    );
    let mut params = w.params;
    params.push(int(q.limit as u64));
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(params), |row| {
        let (bytes, traffic) = traffic(row, 10)?;
        Ok(PolicyFlow {
            egress: PolicyName {
                namespace: row.get(0)?,
                name: row.get(1)?,
                action: row.get(2)?,
            },
            ingress: PolicyName {
                namespace: row.get(3)?,
                name: row.get(4)?,
                action: row.get(5)?,
            },
            src_pod: pod_name(&row.get::<_, String>(6)?, &row.get::<_, String>(7)?),
            dst_pod: pod_name(&row.get::<_, String>(8)?, &row.get::<_, String>(9)?),
            bytes,
            traffic,
        })
    })?;
    rows.collect()
}

pub fn flows(c: &Connection, q: &FlowQuery) -> rusqlite::Result<Vec<FlowRow>> {
    let f = &q.filter;
    let mut w = Where::default();
    if let Some(r) = f.range {
        w.push("end_secs >= ? AND end_secs < ?", [int(r.start), int(r.end)]);
    }
    if let Some(ns) = &f.namespace {
        any_of(&mut w, &["src_ns", "dst_ns"], ns);
    }
    if let Some(p) = &f.pod {
        let (mut cl, mut ps) = (Vec::new(), Vec::new());
        pod_match(&mut cl, &mut ps, "src_ns", "src_pod", p);
        pod_match(&mut cl, &mut ps, "dst_ns", "dst_pod", p);
        w.push(format!("({})", cl.join(" OR ")), ps);
    }
    if let Some(n) = &f.node {
        any_of(&mut w, &["src_node", "dst_node"], n);
    }
    if let Some(s) = &f.service {
        if s.contains(':') {
            w.push("service = ?", [text(s)]);
        } else {
            // Any port of the Service: names are `ns/name:port`. substr avoids LIKE's
            // wildcards in user input.
            w.push(
                "substr(service, 1, ?) = ?",
                [int(s.len() as u64 + 1), text(&format!("{s}:"))],
            );
        }
    }
    if let Some(p) = &f.policy {
        let (mut cl, mut ps) = (Vec::new(), Vec::new());
        pod_match(&mut cl, &mut ps, "in_ns", "in_name", p);
        pod_match(&mut cl, &mut ps, "eg_ns", "eg_name", p);
        w.push(format!("({})", cl.join(" OR ")), ps);
    }
    if let Some(t) = f.flow_type {
        w.push("flow_type = ?", [int(t as u64)]);
    }
    if let Some(ip) = f.src_ip {
        w.push("src_ip = ?", [text(&ip.to_string())]);
    }
    if let Some(ip) = f.dst_ip {
        w.push("dst_ip = ?", [text(&ip.to_string())]);
    }
    if let Some(p) = f.src_port {
        w.push("src_port = ?", [int(p as u64)]);
    }
    if let Some(p) = f.dst_port {
        w.push("dst_port = ?", [int(p as u64)]);
    }
    if let Some(p) = f.protocol {
        w.push("proto = ?", [int(p as u64)]);
    }
    for (v, col) in [
        (&f.src_namespace, "src_ns"),
        (&f.dst_namespace, "dst_ns"),
        (&f.src_node, "src_node"),
        (&f.dst_node, "dst_node"),
    ] {
        if let Some(v) = v {
            w.push(format!("{col} = ?"), [text(v)]);
        }
    }
    for (r, ns, pod) in [
        (&f.src_pod, "src_ns", "src_pod"),
        (&f.dst_pod, "dst_ns", "dst_pod"),
    ] {
        if let Some(r) = r {
            let (mut cl, mut ps) = (Vec::new(), Vec::new());
            pod_match(&mut cl, &mut ps, ns, pod, r);
            w.push(cl.join(""), ps);
        }
    }
    let sql = format!(
        "SELECT id, {} FROM flows WHERE {} ORDER BY end_secs DESC, id DESC LIMIT ? OFFSET ?",
        super::schema::FLOW_COLUMNS.join(", "),
        w.sql()
    );
    let mut params = w.params;
    params.push(int(q.limit as u64));
    params.push(int(q.offset as u64));
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(rusqlite::params_from_iter(params), flow_row)?;
    rows.collect()
}

fn flow_row(row: &Row<'_>) -> rusqlite::Result<FlowRow> {
    let g = |i: usize| -> rusqlite::Result<u64> { loose_u64(row, i) };
    let mut c = [0u64; 10];
    for (k, v) in c.iter_mut().enumerate() {
        *v = g(11 + k)?;
    }
    let s = |i: usize| -> rusqlite::Result<String> {
        Ok(row.get::<_, Option<String>>(i)?.unwrap_or_default())
    };
    let node = |base: usize| -> rusqlite::Result<Option<NodeRow>> {
        if row.get::<_, Option<i64>>(base)?.is_none() {
            return Ok(None);
        }
        let mut v = [0u64; 11];
        for (k, x) in v.iter_mut().enumerate() {
            *x = g(base + k)?;
        }
        Ok(Some(NodeRow {
            totals: [v[0], v[1], v[2], v[3]],
            deltas: [v[4], v[5], v[6], v[7]],
            throughput: v[8],
            reverse_throughput: v[9],
            flow_end_seconds: v[10],
        }))
    };
    // Indexes are 1 + the position in FLOW_COLUMNS (column 0 is id).
    Ok(FlowRow {
        id: row.get(0)?,
        inserted_at: g(1)?,
        flow_start_seconds: g(2)?,
        flow_end_seconds: g(3)?,
        flow_end_reason: g(4)? as u8,
        flow_type: g(5)? as u8,
        source_ip: s(6)?,
        destination_ip: s(7)?,
        source_transport_port: g(8)? as u16,
        destination_transport_port: g(9)? as u16,
        protocol_identifier: g(10)? as u8,
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
        source_pod_name: s(21)?,
        source_pod_namespace: s(22)?,
        source_node_name: s(23)?,
        destination_pod_name: s(24)?,
        destination_pod_namespace: s(25)?,
        destination_node_name: s(26)?,
        destination_cluster_ip: row.get(27)?,
        destination_service_port: g(28)? as u16,
        destination_service_port_name: s(29)?,
        ingress_network_policy_name: s(30)?,
        ingress_network_policy_namespace: s(31)?,
        ingress_network_policy_type: g(32)? as u8,
        ingress_network_policy_rule_name: s(33)?,
        ingress_network_policy_rule_action: g(34)? as u8,
        egress_network_policy_name: s(35)?,
        egress_network_policy_namespace: s(36)?,
        egress_network_policy_type: g(37)? as u8,
        egress_network_policy_rule_name: s(38)?,
        egress_network_policy_rule_action: g(39)? as u8,
        tcp_state: s(40)?,
        source_pod_labels: s(41)?,
        destination_pod_labels: s(42)?,
        correlated: g(43)? != 0,
        original_exporter_address: row.get(44)?,
        original_observation_domain_id: g(45)? as u32,
        cluster_id: s(46)?,
        from_source_node: node(47)?,
        from_destination_node: node(58)?,
    })
}

/// `(records, oldest end, newest end)`.
pub fn record_span(c: &Connection) -> rusqlite::Result<(u64, Option<u64>, Option<u64>)> {
    c.query_row(
        // The count is kept in `meta` by insert and retention: COUNT(*) walks a whole index
        // (~0.5 s per 2 M records). MIN and MAX are one index probe each.
        "SELECT (SELECT value FROM meta WHERE key = 'records'), \
         (SELECT MIN(end_secs) FROM flows), (SELECT MAX(end_secs) FROM flows)",
        [],
        |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?.unwrap_or(0).max(0) as u64,
                r.get::<_, Option<i64>>(1)?.map(|v| v.max(0) as u64),
                r.get::<_, Option<i64>>(2)?.map(|v| v.max(0) as u64),
            ))
        },
    )
}

pub fn rollup_rows(c: &Connection) -> rusqlite::Result<u64> {
    let mut n = 0;
    for (t, _) in super::schema::ROLLUPS {
        let q = format!(
            "SELECT (SELECT COUNT(*) FROM {t}) + (SELECT COUNT(*) FROM {t}{})",
            super::schema::HOURLY
        );
        n += c.query_row(&q, [], |r| r.get::<_, i64>(0))?.max(0) as u64;
    }
    Ok(n)
}
