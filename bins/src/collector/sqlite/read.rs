//! The queries. Dashboards read the per-minute rollups; only [`flows`] reads the record table.
//!
//! SQL is assembled from fixed fragments; every user-supplied value is a bound parameter.
//! Names are `dict` ids in every table: a filter compares with the id of its name (a scalar
//! subquery SQLite runs once; an unknown name is NULL and matches nothing), and answers map
//! the ids of the rows they return back to names through [`Names`].

use std::collections::HashMap;

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, Row};

use super::codec;
use crate::collector::fold::{self, *};
use crate::collector::query::*;

/// Why a dashboard query gave no answer: SQLite's error (an interrupt at the deadline among
/// them), or more groups than the query may hold.
#[derive(Debug)]
pub enum ReadError {
    Sqlite(rusqlite::Error),
    /// The fold passed `max_groups` (the bound it was given).
    TooManyGroups(usize),
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> Self {
        ReadError::Sqlite(e)
    }
}

pub type ReadResult<T> = Result<T, ReadError>;

/// The id of the bound name.
const ID: &str = "(SELECT id FROM dict WHERE s = ?)";

/// `dict` lookups for one answer, cached: a page or a top list repeats few names.
struct Names<'c> {
    c: &'c Connection,
    cache: HashMap<i64, String>,
}

impl<'c> Names<'c> {
    fn new(c: &'c Connection) -> Names<'c> {
        Names {
            c,
            cache: HashMap::new(),
        }
    }

    fn get(&mut self, id: i64) -> rusqlite::Result<String> {
        if id == 0 {
            return Ok(String::new());
        }
        if let Some(s) = self.cache.get(&id) {
            return Ok(s.clone());
        }
        let s: String = self
            .c
            .prepare_cached("SELECT s FROM dict WHERE id = ?1")?
            .query_row([id], |r| r.get(0))?;
        self.cache.insert(id, s.clone());
        Ok(s)
    }

    /// A key column as text: a `dict` id, an address BLOB, or a literal.
    fn label(&mut self, row: &Row<'_>, i: usize) -> rusqlite::Result<String> {
        Ok(match row.get_ref(i)? {
            ValueRef::Integer(id) => self.get(id)?,
            ValueRef::Blob(b) => codec::ip_from(b)
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
            _ => String::new(),
        })
    }
}

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
            w.push(format!("({ns_col} = {ID} AND {pod_col} = {ID})"));
            p.push(text(ns));
        }
        None => w.push(format!("{pod_col} = {ID}")),
    }
    p.push(text(&r.name));
}

fn any_of(w: &mut Where, cols: &[&str], v: &str) {
    if cols.is_empty() {
        return;
    }
    let c: Vec<String> = cols.iter().map(|c| format!("{c} = {ID}")).collect();
    w.push(
        format!("({})", c.join(" OR ")),
        cols.iter().map(|_| text(v)),
    );
}

/// The rows of rollup `table` covering `range`: per-minute rows for the partial hours at the
/// edges and for hours not yet closed (from `upto`, see [`hourly_upto`]), hourly rows
/// (`{table}_h`) for the closed whole hours between, so a day-long range reads ~24 rows per
/// group instead of ~1440. The bounds are integers we computed, so they are written into the
/// SQL rather than bound.
fn src(table: &str, range: &TimeRange, upto: u64) -> String {
    let (a, b) = range.minutes();
    let (h1, h2) = (
        a.div_ceil(3600).saturating_mul(3600),
        (b / 3600 * 3600).min(upto),
    );
    if h2 <= h1 {
        return format!("(SELECT * FROM {table} WHERE minute >= {a} AND minute < {b})");
    }
    format!(
        "(SELECT * FROM {table} WHERE minute >= {a} AND minute < {h1} \
         UNION ALL SELECT * FROM {table}_h WHERE minute >= {h1} AND minute < {h2} \
         UNION ALL SELECT * FROM {table} WHERE minute >= {h2} AND minute < {b})"
    )
}

/// Hourly rollups are complete before this (0 when none is). Read once per query: it only
/// grows, and minute rows stay complete, so a value that is stale by the time the query runs
/// only makes it read more minute rows.
fn hourly_upto(c: &Connection) -> rusqlite::Result<u64> {
    Ok(super::insert::hourly_upto(c)?.unwrap_or(0))
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

/// An integer column read leniently: NULL is 0, negatives clamp to 0, and a REAL (SQLite's
/// SUM past the i64 range) is truncated.
fn loose_u64(row: &Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(match row.get_ref(i)? {
        rusqlite::types::ValueRef::Integer(v) => v.max(0) as u64,
        rusqlite::types::ValueRef::Real(v) => v.max(0.0) as u64,
        _ => 0,
    })
}

/// The metric columns of a rollup row, in the order [`group`] reads them.
const METRICS: &str = "packets, octets, rev_packets, rev_octets, records";

/// A group key column: a `dict` id, an address, or nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Part {
    None,
    Id(i64),
    Ip(std::net::IpAddr),
}

impl Part {
    fn read(row: &Row<'_>, i: usize) -> rusqlite::Result<Part> {
        Ok(match row.get_ref(i)? {
            ValueRef::Integer(0) => Part::None,
            ValueRef::Integer(id) => Part::Id(id),
            ValueRef::Blob(b) => codec::ip_from(b).map_or(Part::None, Part::Ip),
            _ => Part::None,
        })
    }

    fn text(&self, names: &mut Names<'_>) -> rusqlite::Result<String> {
        Ok(match self {
            Part::None => String::new(),
            Part::Id(id) => names.get(*id)?,
            Part::Ip(ip) => ip.to_string(),
        })
    }
}

fn add_row(t: &mut Traffic, row: &Row<'_>, i: usize) -> rusqlite::Result<()> {
    let g = |k: usize| loose_u64(row, i + k);
    t.packets = t.packets.saturating_add(g(0)?);
    t.octets = t.octets.saturating_add(g(1)?);
    t.reverse_packets = t.reverse_packets.saturating_add(g(2)?);
    t.reverse_octets = t.reverse_octets.saturating_add(g(3)?);
    t.records = t.records.saturating_add(g(4)?);
    Ok(())
}

/// Runs `sql`, which selects N key columns then [`METRICS`] per rollup row, and sums the rows
/// by key here: the largest `limit` groups by bytes, ties by key. A hash table in Rust rather
/// than SQLite's GROUP BY, which sorts every row first (~0.3 s for the 450 k hourly Pod →
/// external rows of a day at 10 M records; the scan alone takes 40 ms). Memory is bounded by
/// the groups in the range, which the rollup's cardinality bounds, and by `max_groups`: a store
/// with many distinct names would otherwise make this table as large as the rollup.
fn group<const N: usize>(
    c: &Connection,
    sql: &str,
    params: Vec<Value>,
    limit: u32,
    max_groups: usize,
) -> ReadResult<Vec<([Part; N], Traffic)>> {
    let mut st = c.prepare_cached(sql)?;
    let mut rows = st.query(rusqlite::params_from_iter(params))?;
    let mut sums: HashMap<[Part; N], Traffic> = HashMap::new();
    while let Some(row) = rows.next()? {
        let mut k = [Part::None; N];
        for (i, p) in k.iter_mut().enumerate() {
            *p = Part::read(row, i)?;
        }
        let held = sums.len();
        let t = match sums.entry(k) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                if held >= max_groups {
                    return Err(ReadError::TooManyGroups(max_groups));
                }
                v.insert(Traffic::default())
            }
        };
        add_row(t, row, N)?;
    }
    let mut out: Vec<([Part; N], Traffic)> = sums.into_iter().collect();
    let by_bytes = |a: &([Part; N], Traffic), b: &([Part; N], Traffic)| {
        b.1.bytes().cmp(&a.1.bytes()).then_with(|| a.0.cmp(&b.0))
    };
    let limit = limit as usize;
    if out.len() > limit && limit > 0 {
        out.select_nth_unstable_by(limit - 1, by_bytes);
        out.truncate(limit);
    }
    out.sort_unstable_by(by_bytes);
    out.truncate(limit);
    Ok(out)
}

/// The Node-pair rows a dashboard reads, as a subquery with the `r_node_pair` columns, and
/// its bound values. `r_node_pair` has no namespace or Pod, so under a namespace or Pod filter
/// the rows come from the Pod rollups instead: Pod pairs as they are, Pod ↔ external with the
/// external end as Node id 0 and directions restored to source → destination. Together those
/// cover every record of flowType 1–4. `from` renders a rollup's rows for the range.
fn node_pairs(f: &DashFilter, from: &dyn Fn(&str) -> String) -> (String, Vec<Value>) {
    if f.namespace.is_none() && f.pod.is_none() {
        return (from("r_node_pair"), Vec::new());
    }
    // The Node filter applies to the result, as for `r_node_pair` itself.
    let f = DashFilter {
        node: None,
        ..f.clone()
    };
    let (pp, pe) = (dash_where(&f, &POD_PAIR), dash_where(&f, &POD_EXTERNAL));
    let sql = format!(
        "(SELECT minute, src_node, dst_node, flow_type, packets, octets, rev_packets, \
         rev_octets, records FROM {} WHERE {} \
         UNION ALL SELECT minute, node, 0, flow_type, packets, octets, rev_packets, rev_octets, \
         records FROM {pe_from} WHERE flow_type = 3 AND {w} \
         UNION ALL SELECT minute, 0, node, flow_type, rev_packets, rev_octets, packets, octets, \
         records FROM {pe_from} WHERE flow_type = 4 AND {w})",
        from("r_pod_pair"),
        pp.sql(),
        pe_from = from("r_pod_external"),
        w = pe.sql(),
    );
    let mut params = pp.params;
    params.extend(pe.params.iter().cloned());
    params.extend(pe.params);
    (sql, params)
}

pub fn top(c: &Connection, q: &TopQuery, max_groups: usize) -> ReadResult<Vec<TopRow>> {
    let r = &q.filter.range;
    let upto = hourly_upto(c)?;
    let (pp, pe, ps) = (
        src("r_pod_pair", r, upto),
        src("r_pod_external", r, upto),
        src("r_pod_service", r, upto),
    );
    let (np, np_params) = node_pairs(&q.filter, &|t| src(t, r, upto));
    // Single-entity groupings union both ends, swapping directions for the destination end so
    // `octets` is always what the entity sent.
    let swap = "rev_packets AS packets, rev_octets AS octets, packets AS rev_packets, \
                octets AS rev_octets, records";
    let keep = METRICS;
    let f = &q.filter;
    let unfiltered = f.namespace.is_none() && f.pod.is_none() && f.node.is_none();
    // Each selects the rows of the groups: (src ns, src name, dst ns, dst name), metrics.
    let (sql, params, pair) = match q.by {
        TopBy::PodPair => {
            let w = dash_where(f, &POD_PAIR);
            (
                format!(
                    "SELECT src_ns, src_pod, dst_ns, dst_pod, {METRICS} FROM {pp} WHERE {}",
                    w.sql()
                ),
                w.params,
                true,
            )
        }
        // Without filters, the per-Pod rollup holds exactly the union below, pre-summed.
        TopBy::Pod if unfiltered => (
            format!(
                "SELECT ns, pod, 0, 0, {METRICS} FROM {}",
                src("r_pod", r, upto)
            ),
            Vec::new(),
            false,
        ),
        TopBy::Pod => {
            let w = dash_where(f, &POD_PAIR);
            let we = dash_where(f, &POD_EXTERNAL);
            let mut params = w.params.clone();
            params.extend(w.params.iter().cloned());
            params.extend(we.params.iter().cloned());
            (
                format!(
                    "SELECT ns, pod, 0, 0, {METRICS} FROM ( \
                     SELECT src_ns AS ns, src_pod AS pod, {keep} FROM {pp} WHERE {w1} \
                     UNION ALL SELECT dst_ns, dst_pod, {swap} FROM {pp} WHERE {w1} \
                     UNION ALL SELECT ns, pod, {keep} FROM {pe} WHERE {w2})",
                    w1 = w.sql(),
                    w2 = we.sql()
                ),
                params,
                false,
            )
        }
        TopBy::NodePair => {
            let w = dash_where(f, &NODE_PAIR);
            let mut params = np_params;
            params.extend(w.params.iter().cloned());
            (
                format!(
                    "SELECT 0, src_node, 0, dst_node, {METRICS} FROM {np} WHERE {}",
                    w.sql()
                ),
                params,
                true,
            )
        }
        TopBy::Node => {
            let w = dash_where(f, &NODE_PAIR);
            let mut params = np_params.clone();
            params.extend(w.params.iter().cloned());
            params.extend(np_params);
            params.extend(w.params.iter().cloned());
            (
                format!(
                    "SELECT 0, node, 0, 0, {METRICS} FROM ( \
                     SELECT src_node AS node, {keep} FROM {np} WHERE {w1} AND src_node != 0 \
                     UNION ALL SELECT dst_node, {swap} FROM {np} WHERE {w1} AND dst_node != 0)",
                    w1 = w.sql()
                ),
                params,
                false,
            )
        }
        TopBy::Service => {
            let w = dash_where(f, &POD_SERVICE);
            (
                format!(
                    "SELECT 0, service, 0, 0, {METRICS} FROM {ps} WHERE {}",
                    w.sql()
                ),
                w.params,
                false,
            )
        }
        TopBy::External => {
            let w = dash_where(f, &POD_EXTERNAL);
            (
                format!(
                    "SELECT 0, ext_ip, 0, 0, {METRICS} FROM {pe} WHERE {}",
                    w.sql()
                ),
                w.params,
                false,
            )
        }
    };
    let mut names = Names::new(c);
    let mut out = Vec::new();
    for ([a, b, c2, d], traffic) in group::<4>(c, &sql, params, q.limit, max_groups)? {
        let src = pod_name(&a.text(&mut names)?, &b.text(&mut names)?);
        let dst = if pair {
            Some(pod_name(&c2.text(&mut names)?, &d.text(&mut names)?))
        } else {
            None
        };
        out.push(TopRow {
            src,
            dst,
            bytes: traffic.bytes(),
            traffic,
        });
    }
    Ok(out)
}

/// Time series over ranges longer than this use hourly points.
pub const SERIES_HOURLY_ABOVE_SECS: u64 = 6 * 3600;

pub fn timeseries(c: &Connection, q: &SeriesQuery, max_groups: usize) -> ReadResult<TimeSeries> {
    // (table, dims, group columns rendered as the series name, extra group column)
    let (table, dims, ns, name, ft) = match q.by {
        SeriesBy::SrcPod => ("r_pod_pair", &POD_PAIR, "src_ns", "src_pod", None),
        SeriesBy::DstPod => ("r_pod_pair", &POD_PAIR, "dst_ns", "dst_pod", None),
        SeriesBy::Service => ("r_pod_service", &POD_SERVICE, "0", "service", None),
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
    let hourly = b.saturating_sub(a) > SERIES_HOURLY_ABOVE_SECS;
    let step = if hourly { 3600 } else { 60 };
    let upto = hourly_upto(c)?;
    let from = |t: &str| {
        if hourly {
            // Hourly rows of closed hours, minute rows summed into hours after.
            let (a, b) = (a / 3600 * 3600, b.div_ceil(3600).saturating_mul(3600));
            let mid = upto.clamp(a, b);
            let cols = super::schema::ROLLUPS
                .iter()
                .find(|(n, _)| *n == t)
                .map(|(_, k)| k.join(", "))
                .unwrap_or_default();
            format!(
                "(SELECT * FROM {t}{} WHERE minute >= {a} AND minute < {mid} \
                 UNION ALL SELECT minute / 3600 * 3600 AS minute, {cols}, {METRICS} FROM {t} \
                 WHERE minute >= {mid} AND minute < {b})",
                super::schema::HOURLY
            )
        } else {
            format!("(SELECT * FROM {t} WHERE minute >= {a} AND minute < {b})")
        }
    };
    let (table, from_params) = if q.by == SeriesBy::NodePair {
        node_pairs(&q.filter, &from)
    } else {
        (from(table), Vec::new())
    };
    // One scan of the range, summed here per group and per group and minute; then the
    // largest `limit` groups keep their points. The answer stays bounded by limit × minutes
    // whatever the cardinality, and the work by the rows in the range.
    let sql = format!(
        "SELECT {ns}, {name}, {ft_col}, minute, octets, rev_octets FROM {table} WHERE {w}",
        w = w.sql()
    );
    let mut params = from_params;
    params.extend(w.params);
    type Group = (u64, HashMap<i64, (u64, u64)>);
    let mut groups: HashMap<(i64, i64, i64), Group> = HashMap::new();
    // Groups plus their points: what this fold holds, bounded by `max_groups`.
    let mut held = 0usize;
    {
        let mut st = c.prepare_cached(&sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(params))?;
        while let Some(row) = rows.next()? {
            let key: (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
            let minute: i64 = row.get(3)?;
            let (o, ro) = (loose_u64(row, 4)?, loose_u64(row, 5)?);
            let g = groups.entry(key).or_insert_with(|| {
                held += 1;
                Group::default()
            });
            g.0 = g.0.saturating_add(o.saturating_add(ro));
            let p = g.1.entry(minute).or_insert_with(|| {
                held += 1;
                (0, 0)
            });
            p.0 = p.0.saturating_add(o);
            p.1 = p.1.saturating_add(ro);
            if held > max_groups {
                return Err(ReadError::TooManyGroups(max_groups));
            }
        }
    }
    let mut top: Vec<((i64, i64, i64), Group)> = groups.into_iter().collect();
    top.sort_unstable_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    top.truncate(q.limit as usize);
    let mut names = Names::new(c);
    let mut series: Vec<Series> = Vec::with_capacity(top.len());
    for (key, (_, points)) in top {
        let (x, y) = (names.get(key.0)?, names.get(key.1)?);
        let name = series_name(q.by, &x, &y);
        let mut points: Vec<[u64; 3]> = points
            .into_iter()
            .map(|(m, (o, ro))| {
                [
                    m.max(0) as u64,
                    o.saturating_mul(8) / step,
                    ro.saturating_mul(8) / step,
                ]
            })
            .collect();
        points.sort_unstable();
        series.push(Series {
            name,
            flow_type: ft.map(|_| key.2 as u8),
            points,
        });
    }
    sort_series(&mut series);
    Ok(TimeSeries { step, series })
}

pub fn sankey(c: &Connection, q: &SankeyQuery, max_groups: usize) -> ReadResult<Sankey> {
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
            "0, service",
        ),
        SankeyBy::PodExternal => ("r_pod_external", &POD_EXTERNAL, "ns, pod", "0, ext_ip"),
    };
    let w = dash_where(&q.filter, dims);
    let sql = format!(
        "SELECT {a}, {b}, {METRICS} FROM {} WHERE {}",
        src(table, &q.filter.range, hourly_upto(c)?),
        w.sql()
    );
    let policy = q.by == SankeyBy::Policy;
    let mut names = Names::new(c);
    let mut links = Vec::new();
    for ([a, b, c2, d], traffic) in group::<4>(c, &sql, w.params, q.limit, max_groups)? {
        let src = sankey_label(policy, &a.text(&mut names)?, &b.text(&mut names)?);
        let dst = sankey_label(policy, &c2.text(&mut names)?, &d.text(&mut names)?);
        links.push(sankey_link(&src, &dst, traffic));
    }
    Ok(fold::sankey(links))
}

pub fn node_matrix(c: &Connection, f: &DashFilter, max_groups: usize) -> ReadResult<NodeMatrix> {
    let w = dash_where(f, &NODE_PAIR);
    let upto = hourly_upto(c)?;
    let (np, mut params) = node_pairs(f, &|t| src(t, &f.range, upto));
    params.extend(w.params.iter().cloned());
    let sql = format!(
        "SELECT src_node, dst_node, SUM(octets + rev_octets) FROM {np} WHERE {} \
         AND src_node != 0 AND dst_node != 0 GROUP BY src_node, dst_node",
        w.sql()
    );
    let secs = f.range.secs();
    let mut names = Names::new(c);
    let mut st = c.prepare_cached(&sql)?;
    let mut rows = st.query(rusqlite::params_from_iter(params))?;
    let mut cells = Vec::new();
    while let Some(row) = rows.next()? {
        if cells.len() >= max_groups {
            return Err(ReadError::TooManyGroups(max_groups));
        }
        let (src, dst) = (names.label(row, 0)?, names.label(row, 1)?);
        cells.push(node_cell(src, dst, loose_u64(row, 2)?, secs));
    }
    // By name, as before ids: ids follow first sight, not the alphabet.
    cells.sort_by(|a, b| (&a.src, &a.dst).cmp(&(&b.src, &b.dst)));
    Ok(fold::node_matrix(cells, secs))
}

pub fn policy_flows(
    c: &Connection,
    q: &PolicyQuery,
    max_groups: usize,
) -> ReadResult<Vec<PolicyFlow>> {
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
         dst_pod, {METRICS} FROM {} WHERE {}",
        src("r_policy", &q.filter.range, hourly_upto(c)?),
        w.sql()
    );
    // Actions are small integers, not `dict` ids.
    let action = |p: &Part| match p {
        Part::Id(v) => (*v).clamp(0, 255) as u8,
        _ => 0,
    };
    let mut names = Names::new(c);
    let mut out = Vec::new();
    for (k, traffic) in group::<10>(c, &sql, w.params, q.limit, max_groups)? {
        out.push(PolicyFlow {
            egress: PolicyName {
                namespace: k[0].text(&mut names)?,
                name: k[1].text(&mut names)?,
                action: action(&k[2]),
            },
            ingress: PolicyName {
                namespace: k[3].text(&mut names)?,
                name: k[4].text(&mut names)?,
                action: action(&k[5]),
            },
            src_pod: pod_name(&k[6].text(&mut names)?, &k[7].text(&mut names)?),
            dst_pod: pod_name(&k[8].text(&mut names)?, &k[9].text(&mut names)?),
            bytes: traffic.bytes(),
            traffic,
        });
    }
    Ok(out)
}

fn ip_value(ip: &std::net::IpAddr) -> Value {
    let mut b = [0u8; 16];
    let n = codec::ip_bytes(ip, &mut b);
    Value::Blob(b[..n].to_vec())
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
            w.push(format!("service = {ID}"), [text(s)]);
        } else {
            // Any port of the Service: names are `ns/name:port`. substr avoids LIKE's
            // wildcards in user input.
            w.push(
                "service IN (SELECT id FROM dict WHERE substr(s, 1, ?) = ?)",
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
    if let Some(ip) = &f.src_ip {
        w.push("src_ip = ?", [ip_value(ip)]);
    }
    if let Some(ip) = &f.dst_ip {
        w.push("dst_ip = ?", [ip_value(ip)]);
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
            w.push(format!("{col} = {ID}"), [text(v)]);
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
    // Newest first walks the `end_secs` index backwards and stops at the page: the filters
    // above are checked row by row on the way, bounded by the time range when one is given.
    let sql = format!(
        "SELECT id, {} FROM flows INDEXED BY flows_end WHERE {} \
         ORDER BY end_secs DESC, id DESC LIMIT ? OFFSET ?",
        super::schema::FLOW_COLUMNS.join(", "),
        w.sql()
    );
    let mut params = w.params;
    params.push(int(q.limit as u64));
    params.push(int(q.offset as u64));
    let mut names = Names::new(c);
    let mut st = c.prepare_cached(&sql)?;
    let mut rows = st.query(rusqlite::params_from_iter(params))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(flow_row(row, &mut names)?);
    }
    Ok(out)
}

fn flow_row(row: &Row<'_>, names: &mut Names<'_>) -> rusqlite::Result<FlowRow> {
    let g = |i: usize| -> rusqlite::Result<u64> { loose_u64(row, i) };
    let ip = |i: usize| -> rusqlite::Result<String> {
        Ok(match row.get_ref(i)? {
            ValueRef::Blob(b) => codec::ip_from(b)
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            _ => String::new(),
        })
    };
    let rest = match row.get_ref(19)? {
        ValueRef::Blob(b) => codec::decode(b).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(19, rusqlite::types::Type::Blob, Box::new(e))
        })?,
        _ => codec::Rest::default(),
    };
    let mut name = |id: u64| names.get(id.min(i64::MAX as u64) as i64);
    let node = |v: Option<[u64; 11]>| {
        v.map(|v| NodeRow {
            totals: [v[0], v[1], v[2], v[3]],
            deltas: [v[4], v[5], v[6], v[7]],
            throughput: v[8],
            reverse_throughput: v[9],
            flow_end_seconds: v[10],
        })
    };
    // Indexes are 1 + the position in FLOW_COLUMNS (column 0 is id).
    let [t0, t1, t2, t3] = rest.totals;
    let [d0, d1, d2, d3] = rest.deltas;
    Ok(FlowRow {
        id: row.get(0)?,
        inserted_at: rest.inserted_at,
        flow_start_seconds: rest.start_secs,
        flow_end_seconds: g(1)?,
        flow_end_reason: rest.end_reason as u8,
        flow_type: g(2)? as u8,
        source_ip: ip(6)?,
        destination_ip: ip(7)?,
        source_transport_port: g(4)? as u16,
        destination_transport_port: g(5)? as u16,
        protocol_identifier: g(3)? as u8,
        packet_total_count: t0,
        octet_total_count: t1,
        reverse_packet_total_count: t2,
        reverse_octet_total_count: t3,
        packet_delta_count: d0,
        octet_delta_count: d1,
        reverse_packet_delta_count: d2,
        reverse_octet_delta_count: d3,
        throughput: rest.throughput,
        reverse_throughput: rest.reverse_throughput,
        source_pod_namespace: name(g(8)?)?,
        source_pod_name: name(g(9)?)?,
        source_node_name: name(g(10)?)?,
        destination_pod_namespace: name(g(11)?)?,
        destination_pod_name: name(g(12)?)?,
        destination_node_name: name(g(13)?)?,
        destination_cluster_ip: rest.cluster_ip.map(|ip| ip.to_string()),
        destination_service_port: rest.service_port as u16,
        destination_service_port_name: name(g(14)?)?,
        ingress_network_policy_namespace: name(g(15)?)?,
        ingress_network_policy_name: name(g(16)?)?,
        ingress_network_policy_type: rest.ingress[0] as u8,
        ingress_network_policy_rule_name: name(rest.ingress[1])?,
        ingress_network_policy_rule_action: rest.ingress[2] as u8,
        egress_network_policy_namespace: name(g(17)?)?,
        egress_network_policy_name: name(g(18)?)?,
        egress_network_policy_type: rest.egress[0] as u8,
        egress_network_policy_rule_name: name(rest.egress[1])?,
        egress_network_policy_rule_action: rest.egress[2] as u8,
        tcp_state: name(rest.tcp_state)?,
        source_pod_labels: name(rest.src_labels)?,
        destination_pod_labels: name(rest.dst_labels)?,
        correlated: rest.correlated,
        original_exporter_address: rest.exporter.map(|ip| ip.to_string()),
        original_observation_domain_id: rest.domain as u32,
        cluster_id: name(rest.cluster_id)?,
        from_source_node: node(rest.from_source),
        from_destination_node: node(rest.from_destination),
        exporter_address: match g(20)? {
            0 => None,
            id => Some(name(id)?),
        },
    })
}

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
