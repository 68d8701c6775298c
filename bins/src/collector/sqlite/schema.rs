//! Table layout of the SQLite store.
//!
//! `flows` mirrors [`AggregatedRecord`](flowcore::aggregator::AggregatedRecord) column for
//! column (per-Node counters are NULL when that Node did not report). The `r_*` rollups hold
//! per-minute sums of the records' delta counters, keyed by the minute of flowEndSeconds:
//! deltas add up to the bytes moved, where totals would count a long flow once per export.
//! Every rollup's primary key starts with `minute`, so a dashboard's time range is one index
//! range scan over a small table.

/// Bumped when the layout changes; a store written by another version is refused rather than
/// misread.
pub const SCHEMA_VERSION: i64 = 1;

/// The `flows` columns in insert order (after `id`). `insert.rs` binds in exactly this order
/// and `read.rs` reads in exactly this order.
pub const FLOW_COLUMNS: &[&str] = &[
    "inserted_at",
    "start_secs",
    "end_secs",
    "end_reason",
    "flow_type",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "proto",
    "packets",
    "octets",
    "rev_packets",
    "rev_octets",
    "d_packets",
    "d_octets",
    "d_rev_packets",
    "d_rev_octets",
    "throughput",
    "rev_throughput",
    "src_pod",
    "src_ns",
    "src_node",
    "dst_pod",
    "dst_ns",
    "dst_node",
    "cluster_ip",
    "service_port",
    "service",
    "in_name",
    "in_ns",
    "in_kind",
    "in_rule",
    "in_action",
    "eg_name",
    "eg_ns",
    "eg_kind",
    "eg_rule",
    "eg_action",
    "tcp_state",
    "src_labels",
    "dst_labels",
    "correlated",
    "exporter",
    "domain",
    "cluster_id",
    // Source Node's counters, then the destination Node's: totals[4], deltas[4], throughput,
    // reverse throughput, end secs.
    "sn_packets",
    "sn_octets",
    "sn_rev_packets",
    "sn_rev_octets",
    "sn_d_packets",
    "sn_d_octets",
    "sn_d_rev_packets",
    "sn_d_rev_octets",
    "sn_throughput",
    "sn_rev_throughput",
    "sn_end_secs",
    "dn_packets",
    "dn_octets",
    "dn_rev_packets",
    "dn_rev_octets",
    "dn_d_packets",
    "dn_d_octets",
    "dn_d_rev_packets",
    "dn_d_rev_octets",
    "dn_throughput",
    "dn_rev_throughput",
    "dn_end_secs",
];

/// The rollup tables: name, key columns (after `minute`). Metric columns are the same in all.
pub const ROLLUPS: &[(&str, &[&str])] = &[
    // Both ends Pods (flowType 1 and 2).
    (
        "r_pod_pair",
        &[
            "src_ns",
            "src_pod",
            "src_node",
            "dst_ns",
            "dst_pod",
            "dst_node",
            "flow_type",
        ],
    ),
    // Records to a Service (destinationServicePortName set), by client Pod.
    (
        "r_pod_service",
        &["src_ns", "src_pod", "src_node", "service", "cluster_ip"],
    ),
    // flowType 3 and 4, seen from the Pod: `octets` are what the Pod sent, `rev_octets` what
    // it received, whichever end opened the flow.
    (
        "r_pod_external",
        &["flow_type", "ns", "pod", "node", "ext_ip"],
    ),
    // Every record; an external end has an empty Node name.
    ("r_node_pair", &["src_node", "dst_node", "flow_type"]),
    // Records with an ingress or egress policy.
    (
        "r_policy",
        &[
            "eg_ns",
            "eg_name",
            "eg_action",
            "in_ns",
            "in_name",
            "in_action",
            "src_ns",
            "src_pod",
            "dst_ns",
            "dst_pod",
        ],
    ),
];

/// Suffix of the hourly twin of each rollup table.
pub const HOURLY: &str = "_h";

pub const METRICS: &[&str] = &["packets", "octets", "rev_packets", "rev_octets", "records"];

pub fn ddl() -> String {
    let mut s = String::new();
    s.push_str("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);\n");
    s.push_str("CREATE TABLE IF NOT EXISTS flows (id INTEGER PRIMARY KEY");
    for c in FLOW_COLUMNS {
        s.push_str(", ");
        s.push_str(c);
    }
    s.push_str(");\n");
    // Indexes for the Flow Records filters that are selective enough to need one; the rest
    // (namespace, Node, Service, policy, ports) filter while walking `end_secs` backwards,
    // which finds a page of newest matches quickly unless the filter is very rare.
    // Each index costs insert throughput, so there are few.
    for (name, cols) in [
        ("flows_end", "end_secs"),
        ("flows_src_pod", "src_pod, end_secs"),
        ("flows_dst_pod", "dst_pod, end_secs"),
        ("flows_src_ip", "src_ip, end_secs"),
        ("flows_dst_ip", "dst_ip, end_secs"),
    ] {
        s.push_str(&format!(
            "CREATE INDEX IF NOT EXISTS {name} ON flows ({cols});\n"
        ));
    }
    // Each rollup comes twice: per minute (`table`) and per hour (`table_h`, its `minute`
    // column holding the hour's start), so long ranges read 60× fewer rows.
    let both = ROLLUPS
        .iter()
        .flat_map(|(t, k)| [(t.to_string(), *k), (format!("{t}{HOURLY}"), *k)]);
    for (table, keys) in both {
        s.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (minute INTEGER NOT NULL"
        ));
        for k in keys {
            s.push_str(&format!(", {k} NOT NULL"));
        }
        for m in METRICS {
            s.push_str(&format!(", {m} INTEGER NOT NULL"));
        }
        s.push_str(&format!(
            ", PRIMARY KEY (minute, {})) WITHOUT ROWID;\n",
            keys.join(", ")
        ));
    }
    s
}

/// `INSERT ... ON CONFLICT DO UPDATE` adding to the metrics of a rollup row.
pub fn upsert_sql(table: &str, keys: &[&str]) -> String {
    let cols: Vec<&str> = std::iter::once("minute")
        .chain(keys.iter().copied())
        .chain(METRICS.iter().copied())
        .collect();
    let qs = vec!["?"; cols.len()].join(", ");
    let sets: Vec<String> = METRICS
        .iter()
        .map(|m| format!("{m} = {m} + excluded.{m}"))
        .collect();
    format!(
        "INSERT INTO {table} ({}) VALUES ({qs}) ON CONFLICT (minute, {}) DO UPDATE SET {}",
        cols.join(", "),
        keys.join(", "),
        sets.join(", ")
    )
}

pub fn insert_flow_sql() -> String {
    format!(
        "INSERT INTO flows ({}) VALUES ({})",
        FLOW_COLUMNS.join(", "),
        vec!["?"; FLOW_COLUMNS.len()].join(", ")
    )
}
