//! The ClickHouse tables, as the one source of truth: [`statements`] is what
//! [`ClickHouseClient::connect`](super::ClickHouseClient::connect) runs, and
//! `deploy/overlays/clickhouse/schema.sql` is [`schema_sql`] written out (a test keeps them equal).
//!
//! Layout: one MergeTree record table, partitioned by day of flowEndSeconds and ordered by time,
//! plus five per-minute SummingMergeTree rollups fed by materialized views — the same groupings as
//! the SQLite store's `r_*` tables, so every dashboard query reads a small table. Rollups hold
//! sums of the delta counters and a `records` count; read them with `sum() ... GROUP BY` since
//! rows with equal keys are only summed when parts merge.
//!
//! Kept to what ClickHouse 18.16 (Debian's) understands: no IPv4/IPv6 types (addresses are
//! text), no Nullable (a per-Node flag says whether that Node's counters are set), no TTL unless
//! the server has it (19.6+; see [`supports_ttl`]): without TTL, retention drops whole day
//! partitions (`ClickHouseStore::enforce_retention`). Rollups are partitioned by day too, so
//! both go with the same cutoff.

/// Columns of the record table in RowBinary order: `row::encode` writes exactly these, in this
/// order, and reads select them in this order. Names follow the IPFIX IEs (Antrea's
/// flow-visibility schema) so existing queries carry over.
pub const FLOW_COLUMNS: &[(&str, &str)] = &[
    // Assigned by the writer, increasing in insertion order: ties on flowEndSeconds sort by it.
    ("id", "UInt64"),
    // When the collector stored the record (not an IE).
    ("timeInserted", "DateTime"),
    ("flowStartSeconds", "DateTime"),
    ("flowEndSeconds", "DateTime"),
    // 1 idle timeout, 2 active timeout, 3 end of flow, 4 forced end, 5 lack of resources.
    ("flowEndReason", "UInt8"),
    // 1 IntraNode, 2 InterNode, 3 ToExternal, 4 FromExternal.
    ("flowType", "UInt8"),
    // sourceIPv4Address / sourceIPv6Address (and destination) in one column, as text.
    ("sourceIP", "String"),
    ("destinationIP", "String"),
    ("sourceTransportPort", "UInt16"),
    ("destinationTransportPort", "UInt16"),
    ("protocolIdentifier", "UInt8"),
    ("packetTotalCount", "UInt64"),
    ("octetTotalCount", "UInt64"),
    ("reversePacketTotalCount", "UInt64"),
    ("reverseOctetTotalCount", "UInt64"),
    ("packetDeltaCount", "UInt64"),
    ("octetDeltaCount", "UInt64"),
    ("reversePacketDeltaCount", "UInt64"),
    ("reverseOctetDeltaCount", "UInt64"),
    // bits/s over the interval between exports.
    ("throughput", "UInt64"),
    ("reverseThroughput", "UInt64"),
    ("sourcePodName", "String"),
    ("sourcePodNamespace", "String"),
    ("sourceNodeName", "String"),
    ("destinationPodName", "String"),
    ("destinationPodNamespace", "String"),
    ("destinationNodeName", "String"),
    // destinationClusterIPv4 / IPv6 as text; '' when the destination was not a Service.
    ("destinationClusterIP", "String"),
    ("destinationServicePort", "UInt16"),
    // namespace/name:portName
    ("destinationServicePortName", "String"),
    ("ingressNetworkPolicyName", "String"),
    ("ingressNetworkPolicyNamespace", "String"),
    ("ingressNetworkPolicyType", "UInt8"),
    ("ingressNetworkPolicyRuleName", "String"),
    // 1 allow, 2 drop, 3 reject; 0 none.
    ("ingressNetworkPolicyRuleAction", "UInt8"),
    ("egressNetworkPolicyName", "String"),
    ("egressNetworkPolicyNamespace", "String"),
    ("egressNetworkPolicyType", "UInt8"),
    ("egressNetworkPolicyRuleName", "String"),
    ("egressNetworkPolicyRuleAction", "UInt8"),
    // Kernel names: ESTABLISHED, TIME_WAIT, ...
    ("tcpState", "String"),
    // JSON objects.
    ("sourcePodLabels", "String"),
    ("destinationPodLabels", "String"),
    // 1 when both Nodes' records were joined; 0 when one side never came (not an IE).
    ("correlated", "UInt8"),
    // originalExporterIPv4Address / IPv6Address as text; '' when unknown.
    ("originalExporterAddress", "String"),
    ("originalObservationDomainId", "UInt32"),
    ("clusterId", "String"),
    // 1 when the source Node reported; its counters are 0 otherwise.
    ("fromSourceNode", "UInt8"),
    ("packetTotalCountFromSourceNode", "UInt64"),
    ("octetTotalCountFromSourceNode", "UInt64"),
    ("reversePacketTotalCountFromSourceNode", "UInt64"),
    ("reverseOctetTotalCountFromSourceNode", "UInt64"),
    ("packetDeltaCountFromSourceNode", "UInt64"),
    ("octetDeltaCountFromSourceNode", "UInt64"),
    ("reversePacketDeltaCountFromSourceNode", "UInt64"),
    ("reverseOctetDeltaCountFromSourceNode", "UInt64"),
    ("throughputFromSourceNode", "UInt64"),
    ("reverseThroughputFromSourceNode", "UInt64"),
    ("flowEndSecondsFromSourceNode", "DateTime"),
    ("fromDestinationNode", "UInt8"),
    ("packetTotalCountFromDestinationNode", "UInt64"),
    ("octetTotalCountFromDestinationNode", "UInt64"),
    ("reversePacketTotalCountFromDestinationNode", "UInt64"),
    ("reverseOctetTotalCountFromDestinationNode", "UInt64"),
    ("packetDeltaCountFromDestinationNode", "UInt64"),
    ("octetDeltaCountFromDestinationNode", "UInt64"),
    ("reversePacketDeltaCountFromDestinationNode", "UInt64"),
    ("reverseOctetDeltaCountFromDestinationNode", "UInt64"),
    ("throughputFromDestinationNode", "UInt64"),
    ("reverseThroughputFromDestinationNode", "UInt64"),
    ("flowEndSecondsFromDestinationNode", "DateTime"),
];

/// The sums every rollup holds (after its key columns).
/// Sums of the records' delta counters (packetDeltaCount, octetDeltaCount, and the reverse
/// ones) and how many records were summed.
pub const ROLLUP_METRICS: &[&str] = &[
    "packets",
    "octets",
    "reversePackets",
    "reverseOctets",
    "records",
];

/// One rollup: table suffix, key columns after `minute` (name, type), the expressions the view
/// selects for them from the record table (same order), the metric expressions (same order as
/// [`ROLLUP_METRICS`], before `sum`), and the view's WHERE.
pub struct Rollup {
    pub suffix: &'static str,
    pub keys: &'static [(&'static str, &'static str)],
    pub key_exprs: &'static [&'static str],
    pub metric_exprs: [&'static str; 4],
    pub filter: Option<&'static str>,
    pub comment: &'static str,
}

const S: &str = "String";
const U8: &str = "UInt8";
const PLAIN: [&str; 4] = [
    "packetDeltaCount",
    "octetDeltaCount",
    "reversePacketDeltaCount",
    "reverseOctetDeltaCount",
];

pub const ROLLUPS: &[Rollup] = &[
    Rollup {
        suffix: "_pod_pair_1m",
        comment: "Both ends Pods (flowType 1 and 2).",
        keys: &[
            ("sourcePodNamespace", S),
            ("sourcePodName", S),
            ("sourceNodeName", S),
            ("destinationPodNamespace", S),
            ("destinationPodName", S),
            ("destinationNodeName", S),
            ("flowType", U8),
        ],
        key_exprs: &[
            "sourcePodNamespace",
            "sourcePodName",
            "sourceNodeName",
            "destinationPodNamespace",
            "destinationPodName",
            "destinationNodeName",
            "flowType",
        ],
        metric_exprs: PLAIN,
        filter: Some("flowType IN (1, 2)"),
    },
    Rollup {
        suffix: "_pod_service_1m",
        comment: "Pod to Service (destinationServicePortName set), by client Pod.",
        keys: &[
            ("sourcePodNamespace", S),
            ("sourcePodName", S),
            ("sourceNodeName", S),
            ("destinationServicePortName", S),
            ("destinationClusterIP", S),
        ],
        key_exprs: &[
            "sourcePodNamespace",
            "sourcePodName",
            "sourceNodeName",
            "destinationServicePortName",
            "destinationClusterIP",
        ],
        metric_exprs: PLAIN,
        filter: Some("destinationServicePortName != ''"),
    },
    Rollup {
        suffix: "_pod_external_1m",
        comment: "Pod to/from external addresses (flowType 3 and 4), seen from the Pod: \
                  octetDeltaCount is what the Pod sent, reverseOctetDeltaCount what it received, \
                  whichever end opened the flow.",
        keys: &[
            ("flowType", U8),
            ("podNamespace", S),
            ("podName", S),
            ("nodeName", S),
            ("externalIP", S),
        ],
        key_exprs: &[
            "flowType",
            "if(flowType = 3, sourcePodNamespace, destinationPodNamespace)",
            "if(flowType = 3, sourcePodName, destinationPodName)",
            "if(flowType = 3, sourceNodeName, destinationNodeName)",
            "if(flowType = 3, destinationIP, sourceIP)",
        ],
        metric_exprs: [
            "if(flowType = 3, packetDeltaCount, reversePacketDeltaCount)",
            "if(flowType = 3, octetDeltaCount, reverseOctetDeltaCount)",
            "if(flowType = 3, reversePacketDeltaCount, packetDeltaCount)",
            "if(flowType = 3, reverseOctetDeltaCount, octetDeltaCount)",
        ],
        filter: Some("flowType IN (3, 4)"),
    },
    Rollup {
        suffix: "_node_pair_1m",
        comment: "Node to Node (every record; an external end has an empty Node name).",
        keys: &[
            ("sourceNodeName", S),
            ("destinationNodeName", S),
            ("flowType", U8),
        ],
        key_exprs: &["sourceNodeName", "destinationNodeName", "flowType"],
        metric_exprs: PLAIN,
        filter: None,
    },
    Rollup {
        suffix: "_policy_1m",
        comment: "Flows admitted (or dropped) by a NetworkPolicy, by policy pair and Pod pair.",
        keys: &[
            ("egressNetworkPolicyNamespace", S),
            ("egressNetworkPolicyName", S),
            ("egressNetworkPolicyRuleAction", U8),
            ("ingressNetworkPolicyNamespace", S),
            ("ingressNetworkPolicyName", S),
            ("ingressNetworkPolicyRuleAction", U8),
            ("sourcePodNamespace", S),
            ("sourcePodName", S),
            ("destinationPodNamespace", S),
            ("destinationPodName", S),
        ],
        key_exprs: &[
            "egressNetworkPolicyNamespace",
            "egressNetworkPolicyName",
            "egressNetworkPolicyRuleAction",
            "ingressNetworkPolicyNamespace",
            "ingressNetworkPolicyName",
            "ingressNetworkPolicyRuleAction",
            "sourcePodNamespace",
            "sourcePodName",
            "destinationPodNamespace",
            "destinationPodName",
        ],
        metric_exprs: PLAIN,
        filter: Some("ingressNetworkPolicyName != '' OR egressNetworkPolicyName != ''"),
    },
];

/// Index into [`ROLLUPS`].
pub const POD_PAIR: usize = 0;
pub const POD_SERVICE: usize = 1;
pub const POD_EXTERNAL: usize = 2;
pub const NODE_PAIR: usize = 3;
pub const POLICY: usize = 4;

/// The hourly twin of a rollup: `_pod_pair_1m` → `_pod_pair_1h`. Its time column is `hour`;
/// its own view fills it from the record table. Long dashboard ranges read whole hours from it.
pub fn hourly(suffix: &str) -> String {
    format!("{}_1h", suffix.trim_end_matches("_1m"))
}

/// ClickHouse has `TTL` on MergeTree tables from 19.6 on. `version` is `SELECT version()`.
pub fn supports_ttl(version: &str) -> bool {
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor) >= (19, 6)
}

/// The DDL statements, in order, each idempotent (`IF NOT EXISTS`). `ttl_days`: add TTL clauses
/// (only for servers where [`supports_ttl`]).
pub fn statements(database: &str, table: &str, ttl_days: Option<u64>) -> Vec<String> {
    let mut out = vec![format!("CREATE DATABASE IF NOT EXISTS {database}")];
    let mut s = format!("CREATE TABLE IF NOT EXISTS {database}.{table}\n(\n");
    let cols: Vec<String> = FLOW_COLUMNS
        .iter()
        .map(|(n, t)| format!("    {n} {t}"))
        .collect();
    s.push_str(&cols.join(",\n"));
    s.push_str(
        "\n)\nENGINE = MergeTree\nPARTITION BY toYYYYMMDD(flowEndSeconds)\n\
         ORDER BY (flowEndSeconds, id)",
    );
    if let Some(d) = ttl_days {
        s.push_str(&format!(
            "\nTTL flowEndSeconds + INTERVAL {d} DAY\nSETTINGS ttl_only_drop_parts = 1"
        ));
    }
    out.push(s);
    for r in ROLLUPS {
        let keys: Vec<&str> = r.keys.iter().map(|(k, _)| *k).collect();
        // The minute table and its hourly twin differ only in name, time column and bucket
        // function. 18.16 does not run the views of a view's target table, so the hourly view
        // reads the record table too rather than cascading from the minute table.
        let minute = format!("{database}.{table}{}", r.suffix);
        let hour = format!("{database}.{table}{}", hourly(r.suffix));
        for (t, time, bucket) in [
            (minute, "minute", "toStartOfMinute"),
            (hour, "hour", "toStartOfHour"),
        ] {
            let mut s = format!("CREATE TABLE IF NOT EXISTS {t}\n(\n    {time} DateTime");
            for (k, ty) in r.keys {
                s.push_str(&format!(",\n    {k} {ty}"));
            }
            for m in ROLLUP_METRICS {
                s.push_str(&format!(",\n    {m} UInt64"));
            }
            s.push_str(&format!(
                "\n)\nENGINE = SummingMergeTree\nPARTITION BY toYYYYMMDD({time})\n\
                 ORDER BY ({time}, {})",
                keys.join(", ")
            ));
            if let Some(d) = ttl_days {
                s.push_str(&format!("\nTTL {time} + INTERVAL {d} DAY"));
            }
            out.push(s);
            // One level, no subquery: 18.16 prunes a subquery's columns wrongly inside a view
            // ("Unknown identifier"). Metric columns are named apart from the record columns, so
            // `sum(if(.., octetDeltaCount, ..)) AS octets` never refers to its own alias.
            let mut v = format!(
                "CREATE MATERIALIZED VIEW IF NOT EXISTS {t}_mv TO {t} AS\nSELECT\n    \
                 {bucket}(flowEndSeconds) AS {time}"
            );
            for ((k, _), e) in r.keys.iter().zip(r.key_exprs) {
                if e == k {
                    v.push_str(&format!(",\n    {k}"));
                } else {
                    v.push_str(&format!(",\n    {e} AS {k}"));
                }
            }
            for (m, e) in ROLLUP_METRICS.iter().zip(r.metric_exprs) {
                v.push_str(&format!(",\n    sum({e}) AS {m}"));
            }
            v.push_str(&format!(
                ",\n    count() AS records\nFROM {database}.{table}"
            ));
            if let Some(f) = r.filter {
                v.push_str(&format!("\nWHERE {f}"));
            }
            v.push_str(&format!("\nGROUP BY {time}, {}", keys.join(", ")));
            out.push(v);
        }
    }
    out
}

/// `deploy/overlays/clickhouse/schema.sql`: the statements for database `flowlens`, table
/// `flows`, with a 7-day TTL (the image the overlay runs is recent), and comments.
pub fn schema_sql() -> String {
    let mut s = String::from(
        "-- flowlens schema for ClickHouse: one row per aggregated flow record, columns named after the\n\
         -- IPFIX information elements (Antrea's flow-visibility names, so existing queries and Grafana\n\
         -- panels carry over), plus per-minute rollups maintained by materialized views so dashboards\n\
         -- read small tables. Run once by the ClickHouse image's /docker-entrypoint-initdb.d on an empty\n\
         -- volume; every statement is idempotent (IF NOT EXISTS).\n\
         --\n\
         -- GENERATED from bins/src/clickhouse/schema.rs (the collector and the aggregator create the\n\
         -- same tables on connect); `cargo test -p bins --lib clickhouse::schema` checks this file.\n\
         --\n\
         -- Retention: 7 days for records and rollups alike (TTL; ClickHouse drops expired parts in the\n\
         -- background). Servers older than 19.6 have no TTL: there flowlens drops whole day partitions.\n\
         -- Rollups hold sums of the delta counters per minute (packets, octets, reversePackets,\n\
         -- reverseOctets) and the count of records: read them with sum() ... GROUP BY.\n",
    );
    for (i, st) in statements("flowlens", "flows", Some(7)).iter().enumerate() {
        if i >= 2 && (i - 2) % 4 == 0 {
            s.push_str(&format!("\n-- {}\n", ROLLUPS[(i - 2) / 4].comment));
        } else if i >= 2 && (i - 2) % 4 == 2 {
            s.push_str("\n-- The same per hour.\n");
        } else {
            s.push('\n');
        }
        s.push_str(st);
        s.push_str(";\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_schema_file_is_generated_from_these_statements() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/overlays/clickhouse/schema.sql"
        );
        let want = schema_sql();
        if std::env::var_os("FLOWLENS_WRITE_SCHEMA").is_some() {
            std::fs::write(path, &want).unwrap();
        }
        let got = std::fs::read_to_string(path).unwrap();
        assert!(
            got == want,
            "{path} differs from schema::schema_sql(); regenerate with \
             FLOWLENS_WRITE_SCHEMA=1 cargo test -p bins --lib clickhouse::schema"
        );
    }

    #[test]
    fn ttl_only_from_19_6() {
        assert!(!supports_ttl("18.16.1"));
        assert!(!supports_ttl("19.5.3.8"));
        assert!(supports_ttl("19.6.2"));
        assert!(supports_ttl("24.8.1.1"));
        assert!(!supports_ttl("garbage"));
        let s = statements("db", "t", None).join(";");
        assert!(!s.contains("TTL"));
        assert!(statements("db", "t", Some(3))[1].contains("INTERVAL 3 DAY"));
    }
}
