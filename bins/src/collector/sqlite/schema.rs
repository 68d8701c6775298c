//! Table layout of the SQLite store.
//!
//! Every name (namespace, Pod, Node, Service, policy, rule, labels, TCP state, cluster id) is
//! interned in `dict` and stored as its integer id: rows are small, keys compare as integers,
//! and a batch's rollup keys hash as integers. Id 0 is the empty string. Addresses are BLOBs
//! of 4 or 16 bytes (empty when absent). A name costs one row however often it recurs;
//! retention deletes the rows no record or rollup row refers to any more (see
//! `super::retention`), so a flood of unique names does not outlive its records.
//!
//! `flows` holds one row per record with the columns the Flow Records filters need and every
//! other field packed into `rest` (see [`super::codec`]). Its only index is `end_secs`: every
//! Flow Records page walks it newest first and filters as it goes, which a time range bounds.
//! `flows.exporter` is the `dict` id of the address of the IPFIX peer that sent the record (0:
//! unknown — records written before version 4, or by tools), and `exporters` counts each
//! exporter's records, updated in the transactions that insert and delete them, so size
//! retention picks the exporter holding the most without scanning `flows`.
//!
//! The `r_*` rollups hold per-minute sums of the records' delta counters, keyed by the minute
//! of flowEndSeconds: deltas add up to the bytes moved, where totals would count a long flow
//! once per export. Each has an hourly twin (`_h`, `minute` holding the hour's start), written
//! when the hour closes (`meta.hourly_upto`, see `insert::close_hours`); queries read hourly
//! rows for closed hours only. Every rollup's primary key starts with `minute`, so a
//! dashboard's time range is one range scan.

/// Bumped when the layout changes; a store written by another version is migrated when
/// [`migrate_sql`] knows how, refused otherwise rather than misread.
pub const SCHEMA_VERSION: i64 = 4;

/// The `flows` columns in insert order (after `id`). `insert.rs` binds in exactly this order
/// and `read.rs` reads in exactly this order. Names are `dict` ids; IPs BLOBs.
pub const FLOW_COLUMNS: &[&str] = &[
    "end_secs",
    "flow_type",
    "proto",
    "src_port",
    "dst_port",
    "src_ip",
    "dst_ip",
    "src_ns",
    "src_pod",
    "src_node",
    "dst_ns",
    "dst_pod",
    "dst_node",
    "service",
    "in_ns",
    "in_name",
    "eg_ns",
    "eg_name",
    "rest",
    // Last: version 4 added it with ALTER TABLE, which appends.
    "exporter",
];

/// How `flows.exporter` is declared, by a new store and by the migration from version 3 alike.
/// Rows of version 3 read as 0, the unknown exporter.
const EXPORTER_COLUMN: &str = "exporter INTEGER NOT NULL DEFAULT 0";

/// The SQL that brings a store written by schema version `from` to [`SCHEMA_VERSION`], run in
/// one transaction before [`ddl`], or `None` when there is no way.
pub fn migrate_sql(from: i64) -> Option<String> {
    match from {
        // Adding a column with a constant default rewrites no row: instant on any size.
        3 => Some(format!("ALTER TABLE flows ADD COLUMN {EXPORTER_COLUMN};\n")),
        _ => None,
    }
}

/// The rollup tables: name, key columns (after `minute`). Metric columns are the same in all.
/// Key columns are `dict` ids except `ext_ip` and `cluster_ip` (address BLOBs) and
/// `flow_type`/`*_action` (small integers).
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
    // Every record; an external end has Node id 0 (the empty name).
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
    // One Pod, what it sent (`octets`) and received: the Pod ends of `r_pod_pair` and
    // `r_pod_external` folded together, so unfiltered "top Pods" reads one row per Pod and
    // minute instead of one per Pod pair.
    ("r_pod", &["ns", "pod"]),
];

/// Rollup key columns that are not `dict` ids: addresses and small integers.
pub const NOT_NAMES: &[&str] = &[
    "flow_type",
    "cluster_ip",
    "ext_ip",
    "eg_action",
    "in_action",
];

/// Suffix of the hourly twin of each rollup table.
pub const HOURLY: &str = "_h";

pub const METRICS: &[&str] = &["packets", "octets", "rev_packets", "rev_octets", "records"];

pub fn ddl() -> String {
    let mut s = String::new();
    s.push_str("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);\n");
    s.push_str(
        "CREATE TABLE IF NOT EXISTS dict (id INTEGER PRIMARY KEY, s TEXT NOT NULL UNIQUE);\n\
         INSERT OR IGNORE INTO dict (id, s) VALUES (0, '');\n",
    );
    s.push_str("CREATE TABLE IF NOT EXISTS flows (id INTEGER PRIMARY KEY");
    for c in FLOW_COLUMNS {
        s.push_str(", ");
        s.push_str(if *c == "exporter" { EXPORTER_COLUMN } else { c });
    }
    s.push_str(");\n");
    // Per exporter (`dict` id of its address; 0 unknown): records held, and an id at or below
    // its oldest record's (`flows.id` grows with each insert), where size retention starts
    // looking for that oldest record. A row goes when its count reaches 0.
    s.push_str(
        "CREATE TABLE IF NOT EXISTS exporters (id INTEGER PRIMARY KEY, \
         records INTEGER NOT NULL, low_id INTEGER NOT NULL);\n",
    );
    // One index: each costs insert throughput (a Pod or IP index cost ~45 % of the insert
    // rate); filters walk this one backwards instead.
    s.push_str("CREATE INDEX IF NOT EXISTS flows_end ON flows (end_secs);\n");
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
