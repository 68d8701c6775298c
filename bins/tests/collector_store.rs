//! SQLite store: filters narrow exactly as specified, rollups equal the sums over `flows`,
//! retention deletes old data by age and by size, and open errors name the path.

use std::collections::HashSet;
use std::time::Duration;

use flowcore::aggregator::AggregatedRecord;
use flowlens_bins::collector::query::*;
use flowlens_bins::collector::synth::Synth;
use flowlens_bins::collector::{SqliteConfig, SqliteStore, Store};

/// 2026-01-01T00:00:00Z.
const T0: u32 = 1_767_225_600;

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowlens-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn seeded(name: &str, n: usize, span: u32) -> (SqliteStore, Vec<AggregatedRecord>) {
    let store = SqliteStore::open(SqliteConfig::new(tmpdir(name))).unwrap();
    let recs = Synth::new(7, 5, 40).batch(n, T0, span);
    for chunk in recs.chunks(500) {
        store.insert(chunk, T0 as u64 + span as u64).unwrap();
    }
    (store, recs)
}

/// The bytes of every Node pair (up to 1000) under `f`.
fn node_pair_bytes(store: &SqliteStore, f: &DashFilter) -> u64 {
    let q = TopQuery {
        filter: f.clone(),
        by: TopBy::NodePair,
        limit: 1000,
    };
    store.top(&q).unwrap().iter().map(|t| t.bytes).sum()
}

fn all(filter: FlowFilter) -> FlowQuery {
    FlowQuery {
        filter,
        limit: 1_000_000,
        offset: 0,
    }
}

#[test]
fn filters_narrow_to_exactly_the_matching_records() {
    let (store, recs) = seeded("filters", 3000, 3600);
    let everything = store.flows(&all(FlowFilter::default())).unwrap();
    assert_eq!(everything.len(), recs.len());
    // Newest first.
    assert!(
        everything
            .windows(2)
            .all(|w| (w[0].flow_end_seconds, w[0].id) >= (w[1].flow_end_seconds, w[1].id))
    );

    let r0 = &recs[1234];
    let pod = |ns: &str, name: &str| {
        Some(NamedRef {
            namespace: Some(ns.into()),
            name: name.into(),
        })
    };
    type Pred = Box<dyn Fn(&AggregatedRecord) -> bool>;
    let (src_ip, dst_ip, src_pod, src_ns) = (
        r0.key.src,
        r0.key.dst,
        r0.src_pod.clone(),
        r0.src_namespace.clone(),
    );
    let cases: Vec<(&str, FlowFilter, Pred)> = vec![
        (
            "range",
            FlowFilter {
                range: Some(TimeRange::new(T0 as u64 + 600, T0 as u64 + 1200)),
                ..Default::default()
            },
            Box::new(|r| (T0 + 600..T0 + 1200).contains(&r.end_secs)),
        ),
        (
            "namespace",
            FlowFilter {
                namespace: Some("shop".into()),
                ..Default::default()
            },
            Box::new(|r| &*r.src_namespace == "shop" || &*r.dst_namespace == "shop"),
        ),
        (
            "pod with namespace",
            FlowFilter {
                pod: pod(&src_ns, &src_pod),
                ..Default::default()
            },
            Box::new(move |r| {
                (r.src_namespace == src_ns && r.src_pod == src_pod)
                    || (r.dst_namespace == src_ns && r.dst_pod == src_pod)
            }),
        ),
        (
            "node",
            FlowFilter {
                node: Some("node-2".into()),
                ..Default::default()
            },
            Box::new(|r| &*r.src_node == "node-2" || &*r.dst_node == "node-2"),
        ),
        (
            "service any port",
            FlowFilter {
                service: Some("shop/cart-svc".into()),
                ..Default::default()
            },
            Box::new(|r| r.service_port_name.starts_with("shop/cart-svc:")),
        ),
        (
            "policy by name",
            FlowFilter {
                policy: Some(NamedRef {
                    namespace: None,
                    name: "db-ingress".into(),
                }),
                ..Default::default()
            },
            Box::new(|r| &*r.ingress.name == "db-ingress" || &*r.egress.name == "db-ingress"),
        ),
        (
            "flowType",
            FlowFilter {
                flow_type: Some(3),
                ..Default::default()
            },
            Box::new(|r| r.flow_type == 3),
        ),
        (
            "srcIp",
            FlowFilter {
                src_ip: Some(src_ip),
                ..Default::default()
            },
            Box::new(move |r| r.key.src == src_ip),
        ),
        (
            "dstIp",
            FlowFilter {
                dst_ip: Some(dst_ip),
                ..Default::default()
            },
            Box::new(move |r| r.key.dst == dst_ip),
        ),
        (
            "dstPort",
            FlowFilter {
                dst_port: Some(5432),
                ..Default::default()
            },
            Box::new(|r| r.key.dst_port == 5432),
        ),
        (
            "srcPort",
            FlowFilter {
                src_port: Some(r0.key.src_port),
                ..Default::default()
            },
            {
                let p = r0.key.src_port;
                Box::new(move |r| r.key.src_port == p)
            },
        ),
        (
            "protocol",
            FlowFilter {
                protocol: Some(17),
                ..Default::default()
            },
            Box::new(|r| r.key.proto == 17),
        ),
        (
            "combined",
            FlowFilter {
                namespace: Some("payments".into()),
                flow_type: Some(2),
                dst_port: Some(80),
                ..Default::default()
            },
            Box::new(|r| {
                (&*r.src_namespace == "payments" || &*r.dst_namespace == "payments")
                    && r.flow_type == 2
                    && r.key.dst_port == 80
            }),
        ),
    ];
    for (name, filter, pred) in cases {
        let got = store.flows(&all(filter)).unwrap();
        let want = recs.iter().filter(|r| pred(r)).count();
        assert_eq!(got.len(), want, "filter {name}");
        assert!(got.len() < recs.len(), "filter {name} narrows nothing");
        assert!(
            !got.is_empty(),
            "filter {name} matched nothing: the seeded data should cover it"
        );
    }

    // Pages: limit/offset walk the same order without overlap.
    let q = |offset| FlowQuery {
        filter: FlowFilter::default(),
        limit: 100,
        offset,
    };
    let (a, b) = (store.flows(&q(0)).unwrap(), store.flows(&q(100)).unwrap());
    assert_eq!(a.len(), 100);
    let ids: HashSet<i64> = a.iter().chain(&b).map(|r| r.id).collect();
    assert_eq!(ids.len(), 200);
    assert_eq!(a[..], everything[..100]);
}

#[test]
fn stored_record_reads_back_field_for_field() {
    let (store, recs) = seeded("roundtrip", 50, 60);
    let rows = store.flows(&all(FlowFilter::default())).unwrap();
    // Same end second: ties go newest-inserted first, so match on id order.
    let mut rows = rows;
    rows.sort_by_key(|r| r.id);
    for (r, row) in recs.iter().zip(&rows) {
        assert_eq!(row.source_ip, r.key.src.to_string());
        assert_eq!(row.destination_ip, r.key.dst.to_string());
        assert_eq!(
            (row.source_transport_port, row.destination_transport_port),
            (r.key.src_port, r.key.dst_port)
        );
        assert_eq!(row.flow_end_seconds, r.end_secs as u64);
        assert_eq!(row.octet_delta_count, r.deltas[1]);
        assert_eq!(row.reverse_octet_total_count, r.totals[3]);
        assert_eq!(row.source_pod_name, &*r.src_pod);
        assert_eq!(row.destination_node_name, &*r.dst_node);
        assert_eq!(row.destination_service_port_name, &*r.service_port_name);
        assert_eq!(
            row.destination_cluster_ip,
            r.cluster_ip.map(|i| i.to_string())
        );
        assert_eq!(row.ingress_network_policy_name, &*r.ingress.name);
        assert_eq!(row.egress_network_policy_rule_action, r.egress.action);
        assert_eq!(row.source_pod_labels, &*r.src_labels);
        assert_eq!(
            row.from_source_node.map(|n| n.totals),
            r.from_source.map(|n| n.totals)
        );
        assert_eq!(
            row.from_destination_node.map(|n| n.flow_end_seconds),
            r.from_destination.map(|n| n.end_secs as u64)
        );
        assert_eq!(row.correlated, r.correlated);
        assert_eq!(row.cluster_id, &*r.cluster_id);
        assert_eq!(row.inserted_at, T0 as u64 + 60);
    }
}

/// Every rollup row equals the sum over the records it covers, and vice versa.
#[test]
fn rollups_equal_sums_over_flows() {
    let (store, recs) = seeded("rollups", 4000, 3 * 3600);
    // A range with partial hours at both ends reads minute rows at the edges and hour rows
    // between: the sum is still exact.
    let (a, b) = (T0 as u64 + 1800, T0 as u64 + 2 * 3600 + 1200);
    let want: u64 = recs
        .iter()
        .filter(|r| (a..b).contains(&(r.end_secs as u64)))
        .map(|r| r.deltas[1] + r.deltas[3])
        .sum();
    let f = DashFilter::range(TimeRange::new(a, b));
    assert_eq!(node_pair_bytes(&store, &f), want);
    let m = store.node_matrix(&f).unwrap();
    assert_eq!(m.range_secs, b - a);
    let pods = store
        .sankey(&SankeyQuery {
            filter: f,
            by: SankeyBy::PodPair,
            limit: 100_000,
        })
        .unwrap();
    let want_pp: u64 = recs
        .iter()
        .filter(|r| (a..b).contains(&(r.end_secs as u64)) && matches!(r.flow_type, 1 | 2))
        .map(|r| r.deltas[1] + r.deltas[3])
        .sum();
    assert_eq!(pods.links.iter().map(|l| l.bytes).sum::<u64>(), want_pp);
    // Each minute rollup, read back with names and addresses as text, equals the sums over the
    // inserted records computed here.
    store.flush().unwrap();
    let c = rusqlite::Connection::open(store.path()).unwrap();
    let name = |col: &str| format!("(SELECT s FROM dict WHERE id = {col})");
    let hex = |ip: &std::net::IpAddr| match ip {
        std::net::IpAddr::V4(a) => a.octets().iter().map(|b| format!("{b:02X}")).collect(),
        std::net::IpAddr::V6(a) => a
            .octets()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>(),
    };
    type Row = (u64, Vec<String>);
    type Want = std::collections::BTreeMap<Row, [u64; 5]>;
    let add = |w: &mut Want, r: &AggregatedRecord, keys: Vec<String>, swap: bool| {
        let d = r.deltas;
        let m = if swap {
            [d[2], d[3], d[0], d[1], 1]
        } else {
            [d[0], d[1], d[2], d[3], 1]
        };
        let e = w.entry((r.end_secs as u64 / 60 * 60, keys)).or_default();
        for (a, b) in e.iter_mut().zip(m) {
            *a += b;
        }
    };
    let s = |v: &std::sync::Arc<str>| v.to_string();
    // (table, key columns as SQL text expressions, the records' rows)
    let mut checks: Vec<(&str, Vec<String>, Want)> = Vec::new();
    let mut w = Want::new();
    for r in recs.iter().filter(|r| matches!(r.flow_type, 1 | 2)) {
        let k = vec![
            s(&r.src_namespace),
            s(&r.src_pod),
            s(&r.src_node),
            s(&r.dst_namespace),
            s(&r.dst_pod),
            s(&r.dst_node),
            r.flow_type.to_string(),
        ];
        add(&mut w, r, k, false);
    }
    let cols = [
        "src_ns", "src_pod", "src_node", "dst_ns", "dst_pod", "dst_node",
    ]
    .map(name);
    checks.push((
        "r_pod_pair",
        cols.into_iter().chain(["flow_type".into()]).collect(),
        w,
    ));
    let mut w = Want::new();
    for r in recs.iter().filter(|r| !r.service_port_name.is_empty()) {
        let ip = r.cluster_ip.as_ref().map(hex).unwrap_or_default();
        add(
            &mut w,
            r,
            vec![
                s(&r.src_namespace),
                s(&r.src_pod),
                s(&r.src_node),
                s(&r.service_port_name),
                ip,
            ],
            false,
        );
    }
    let cols = ["src_ns", "src_pod", "src_node", "service"].map(name);
    checks.push((
        "r_pod_service",
        cols.into_iter().chain(["hex(cluster_ip)".into()]).collect(),
        w,
    ));
    // A record's Pod end (namespace, Pod, Node): the source, or with `dst` the destination,
    // whose rows have the directions swapped.
    let end = |r: &AggregatedRecord, dst: bool| {
        if dst {
            [s(&r.dst_namespace), s(&r.dst_pod), s(&r.dst_node)]
        } else {
            [s(&r.src_namespace), s(&r.src_pod), s(&r.src_node)]
        }
    };
    let mut w = Want::new();
    for r in recs.iter().filter(|r| matches!(r.flow_type, 3 | 4)) {
        let dst = r.flow_type == 4;
        let ext = if dst { &r.key.src } else { &r.key.dst };
        let k = std::iter::once(r.flow_type.to_string())
            .chain(end(r, dst))
            .chain([hex(ext)])
            .collect();
        add(&mut w, r, k, dst);
    }
    let cols = ["ns", "pod", "node"].map(name);
    checks.push((
        "r_pod_external",
        ["flow_type".to_string()]
            .into_iter()
            .chain(cols)
            .chain(["hex(ext_ip)".into()])
            .collect(),
        w,
    ));
    let mut w = Want::new();
    for r in &recs {
        add(
            &mut w,
            r,
            vec![s(&r.src_node), s(&r.dst_node), r.flow_type.to_string()],
            false,
        );
    }
    checks.push((
        "r_node_pair",
        vec![name("src_node"), name("dst_node"), "flow_type".into()],
        w,
    ));
    let mut w = Want::new();
    for r in recs
        .iter()
        .filter(|r| !r.ingress.name.is_empty() || !r.egress.name.is_empty())
    {
        let k = vec![
            s(&r.egress.namespace),
            s(&r.egress.name),
            r.egress.action.to_string(),
            s(&r.ingress.namespace),
            s(&r.ingress.name),
            r.ingress.action.to_string(),
            s(&r.src_namespace),
            s(&r.src_pod),
            s(&r.dst_namespace),
            s(&r.dst_pod),
        ];
        add(&mut w, r, k, false);
    }
    let cols = vec![
        name("eg_ns"),
        name("eg_name"),
        "eg_action".into(),
        name("in_ns"),
        name("in_name"),
        "in_action".into(),
        name("src_ns"),
        name("src_pod"),
        name("dst_ns"),
        name("dst_pod"),
    ];
    checks.push(("r_policy", cols, w));
    // One row per Pod end: both ends of Pod pairs, the Pod end of external flows.
    let mut w = Want::new();
    for r in &recs {
        let ends: &[bool] = match r.flow_type {
            1 | 2 => &[false, true],
            3 => &[false],
            4 => &[true],
            _ => &[],
        };
        for &dst in ends {
            add(&mut w, r, end(r, dst)[..2].to_vec(), dst);
        }
    }
    checks.push(("r_pod", vec![name("ns"), name("pod")], w));
    for (table, cols, want) in checks {
        let sql = format!(
            "SELECT minute, {}, packets, octets, rev_packets, rev_octets, records FROM {table}",
            cols.iter()
                .map(|c| format!("CAST({c} AS TEXT)"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut st = c.prepare(&sql).unwrap();
        let got: Want = st
            .query_map([], |row| {
                let keys = (0..cols.len())
                    .map(|i| {
                        row.get::<_, Option<String>>(1 + i)
                            .map(Option::unwrap_or_default)
                    })
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut m = [0u64; 5];
                for (i, v) in m.iter_mut().enumerate() {
                    *v = row.get::<_, i64>(1 + cols.len() + i)? as u64;
                }
                Ok(((row.get::<_, i64>(0)? as u64, keys), m))
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(!want.is_empty(), "{table}: no records cover it");
        assert_eq!(got.len(), want.len(), "{table}: row count");
        for (k, v) in &want {
            assert_eq!(got.get(k), Some(v), "{table} {k:?}");
        }
    }
    // Hours close 10 minutes after their end: the first two of the three are closed.
    let upto: i64 = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'hourly_upto'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(upto, T0 as i64 + 2 * 3600);
    // Late records for a closed hour update both tiers, and every query still sums exactly.
    let late = Synth::new(8, 5, 40).batch(300, T0 + 100, 1000);
    store.insert(&late, T0 as u64 + 4 * 3600).unwrap();
    let day = DashFilter::range(TimeRange::new(T0 as u64, T0 as u64 + 3 * 3600));
    let all: u64 = recs
        .iter()
        .chain(&late)
        .map(|r| r.deltas[1] + r.deltas[3])
        .sum();
    for by in [TopBy::NodePair, TopBy::Node] {
        let got = store
            .top(&TopQuery {
                filter: day.clone(),
                by,
                limit: 1000,
            })
            .unwrap();
        let sum: u64 = got.iter().map(|t| t.bytes).sum();
        if by == TopBy::NodePair {
            assert_eq!(sum, all);
        } else {
            assert!(sum > all, "both Nodes of internal flows count");
        }
    }
    let ts = store
        .timeseries(&SeriesQuery {
            filter: day.clone(),
            by: SeriesBy::NodePair,
            limit: 1000,
        })
        .unwrap();
    assert_eq!(ts.step, 60, "3 h is below the hourly-points threshold");
    // Hourly points: closed hours from the hourly rows, the open one summed from minutes.
    let long = DashFilter::range(TimeRange::new(T0 as u64, T0 as u64 + 7 * 3600));
    let ts = store
        .timeseries(&SeriesQuery {
            filter: long,
            by: SeriesBy::NodePair,
            limit: 1000,
        })
        .unwrap();
    assert_eq!(ts.step, 3600);
    let mut want = std::collections::BTreeMap::<(String, u8, u64), u64>::new();
    for r in recs.iter().chain(&late) {
        let dst = if r.dst_node.is_empty() {
            "external"
        } else {
            &r.dst_node
        };
        let k = (
            format!("{} → {dst}", r.src_node),
            r.flow_type,
            r.end_secs as u64 / 3600 * 3600,
        );
        *want.entry(k).or_default() += r.deltas[1];
    }
    let mut got = std::collections::BTreeMap::new();
    for s in &ts.series {
        for p in &s.points {
            got.insert((s.name.clone(), s.flow_type.unwrap(), p[0]), p[1]);
        }
    }
    // Hourly points are bits/s over the hour (the answer's step), not over a minute.
    let want: std::collections::BTreeMap<_, _> =
        want.into_iter().map(|(k, o)| (k, o * 8 / 3600)).collect();
    assert_eq!(got, want);
    assert!(
        got.keys().any(|k| k.2 == T0 as u64 + 2 * 3600),
        "the open hour"
    );
    // Each hourly twin holds its minute rollup's sums per closed hour, late records included.
    let hourly = [
        ("r_pod_pair", "src_ns, src_pod, src_node, dst_ns, dst_pod, dst_node, flow_type"),
        ("r_pod_service", "src_ns, src_pod, src_node, service, cluster_ip"),
        ("r_pod_external", "flow_type, ns, pod, node, ext_ip"),
        ("r_node_pair", "src_node, dst_node, flow_type"),
        ("r_policy", "eg_ns, eg_name, eg_action, in_ns, in_name, in_action, src_ns, src_pod, dst_ns, dst_pod"),
        ("r_pod", "ns, pod"),
    ]
    .map(|(t, k)| {
        (
            format!("SELECT minute, {k}, packets, octets, rev_packets, rev_octets, records FROM {t}_h"),
            format!(
                "SELECT minute / 3600 * 3600 AS hour, {k}, SUM(packets), SUM(octets), SUM(rev_packets), \
                 SUM(rev_octets), SUM(records) FROM {t} WHERE minute < {upto} GROUP BY hour, {k}"
            ),
        )
    });
    for (rollup, flows) in hourly {
        let n: i64 = c
            .query_row(&format!("SELECT COUNT(*) FROM ({rollup})"), [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(n > 0, "empty rollup: {rollup}");
        for (a, b) in [(&rollup, &flows), (&flows, &rollup)] {
            let diff: i64 = c
                .query_row(&format!("SELECT COUNT(*) FROM ({a} EXCEPT {b})"), [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(diff, 0, "rows of\n  {a}\nnot in\n  {b}");
        }
    }
}

/// Rollup sums wait in memory for up to a second after their records commit; a store that
/// ends without writing them (a crash: here `forget`, which skips the flush in `Drop`)
/// re-reads those records when it opens again, so no sum is lost or counted twice.
#[test]
fn pending_rollups_survive_a_crash() {
    let dir = tmpdir("crash");
    let recs = Synth::new(9, 5, 40).batch(5000, T0, 120);
    let store = SqliteStore::open(SqliteConfig::new(&dir)).unwrap();
    // The first batch flushes (nothing was written yet); the rest wait (their end times
    // span 2 minutes, under the span that forces a flush).
    store.set_rollup_flush_interval(Duration::from_secs(86_400));
    for chunk in recs.chunks(500) {
        store.insert(chunk, T0 as u64).unwrap();
    }
    let c = rusqlite::Connection::open(store.path()).unwrap();
    let rolled: i64 = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'rolled_upto'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rolled, 500, "only the first batch's sums are written");
    drop(c);
    std::mem::forget(store);
    let store = SqliteStore::open(SqliteConfig::new(&dir)).unwrap();
    let f = DashFilter::range(TimeRange::new(T0 as u64, T0 as u64 + 3 * 3600));
    let want: u64 = recs.iter().map(|r| r.deltas[1] + r.deltas[3]).sum();
    assert_eq!(node_pair_bytes(&store, &f), want);
    // Closed normally: reopening recovers nothing more, and nothing counts twice.
    drop(store);
    let store = SqliteStore::open(SqliteConfig::new(&dir)).unwrap();
    assert_eq!(node_pair_bytes(&store, &f), want);
}

/// `r_node_pair` has no namespace or Pod; under those filters the Node views are summed from
/// the Pod rollups, and must equal the records with a matching Pod end.
#[test]
fn node_views_honour_namespace_and_pod_filters() {
    let (store, recs) = seeded("nodefilter", 3000, 3600);
    let range = TimeRange::new(T0 as u64, T0 as u64 + 3600);
    let bytes = |r: &AggregatedRecord| r.deltas[1] + r.deltas[3];
    for (f, pod_end) in [
        (
            DashFilter {
                namespace: Some("shop".into()),
                ..DashFilter::range(range)
            },
            &(|ns: &str, _: &str| ns == "shop") as &dyn Fn(&str, &str) -> bool,
        ),
        (
            DashFilter {
                pod: Some(NamedRef {
                    namespace: Some("shop".into()),
                    name: "cart-5".into(),
                }),
                ..DashFilter::range(range)
            },
            &|ns: &str, pod: &str| ns == "shop" && pod == "cart-5",
        ),
        (
            DashFilter {
                namespace: Some("payments".into()),
                node: Some("node-1".into()),
                ..DashFilter::range(range)
            },
            &|ns: &str, _: &str| ns == "payments",
        ),
    ] {
        let node_ok = |r: &AggregatedRecord| {
            f.node
                .as_deref()
                .is_none_or(|n| &*r.src_node == n || &*r.dst_node == n)
        };
        let matching = |r: &&AggregatedRecord| {
            let src = pod_end(&r.src_namespace, &r.src_pod);
            let dst = pod_end(&r.dst_namespace, &r.dst_pod);
            node_ok(r)
                && match r.flow_type {
                    1 | 2 => src || dst,
                    3 => src,
                    4 => dst,
                    _ => false,
                }
        };
        let want: u64 = recs.iter().filter(matching).map(bytes).sum();
        let all: u64 = recs.iter().map(bytes).sum();
        assert!(want > 0 && want < all, "{f:?}");
        assert_eq!(node_pair_bytes(&store, &f), want, "{f:?}");
        let want_internal: u64 = recs
            .iter()
            .filter(matching)
            .filter(|r| !r.src_node.is_empty() && !r.dst_node.is_empty())
            .map(bytes)
            .sum();
        let m = store.node_matrix(&f).unwrap();
        assert_eq!(m.cells.iter().map(|c| c.bytes).sum::<u64>(), want_internal);
        let nodes = store
            .top(&TopQuery {
                filter: f.clone(),
                by: TopBy::Node,
                limit: 1000,
            })
            .unwrap();
        // Each internal record counts at both its Nodes, an external one at its Pod's.
        let want_nodes: u64 = recs
            .iter()
            .filter(matching)
            .map(|r| {
                let ends = [&r.src_node, &r.dst_node]
                    .iter()
                    .filter(|n| !n.is_empty())
                    .count() as u64;
                bytes(r) * ends
            })
            .sum();
        if f.node.is_none() {
            assert_eq!(nodes.iter().map(|t| t.bytes).sum::<u64>(), want_nodes);
        }
        let ts = store
            .timeseries(&SeriesQuery {
                filter: f.clone(),
                by: SeriesBy::NodePair,
                limit: 100,
            })
            .unwrap();
        assert!(!ts.series.is_empty());
    }
}

#[test]
fn dashboard_queries_agree_with_the_records() {
    let (store, recs) = seeded("dash", 3000, 3600);
    let f = DashFilter::range(TimeRange::new(T0 as u64, T0 as u64 + 3600));
    let pod_bytes: u64 = recs
        .iter()
        .filter(|r| matches!(r.flow_type, 1 | 2))
        .map(|r| r.deltas[1] + r.deltas[3])
        .sum();
    let top = store
        .top(&TopQuery {
            filter: f.clone(),
            by: TopBy::PodPair,
            limit: 100_000,
        })
        .unwrap();
    assert_eq!(top.iter().map(|t| t.bytes).sum::<u64>(), pod_bytes);
    assert!(top.windows(2).all(|w| w[0].bytes >= w[1].bytes));

    let all_bytes: u64 = recs.iter().map(|r| r.deltas[1] + r.deltas[3]).sum();
    let pairs = store
        .top(&TopQuery {
            filter: f.clone(),
            by: TopBy::NodePair,
            limit: 1000,
        })
        .unwrap();
    assert_eq!(pairs.iter().map(|t| t.bytes).sum::<u64>(), all_bytes);

    // A Node filter narrows the Node-pair view to rows touching that Node.
    let f2 = DashFilter {
        node: Some("node-1".into()),
        ..f.clone()
    };
    let n1 = store
        .top(&TopQuery {
            filter: f2,
            by: TopBy::NodePair,
            limit: 1000,
        })
        .unwrap();
    assert!(!n1.is_empty() && n1.len() < pairs.len());
    assert!(
        n1.iter()
            .all(|t| t.src == "node-1" || t.dst.as_deref() == Some("node-1"))
    );

    let ts = store
        .timeseries(&SeriesQuery {
            filter: f.clone(),
            by: SeriesBy::NodePair,
            limit: 50,
        })
        .unwrap();
    let ts_bytes: u64 = ts
        .series
        .iter()
        .flat_map(|s| &s.points)
        .map(|p| (p[1] + p[2]) * 60 / 8)
        .sum();
    // Points are bits/s rounded down per minute: within a few bytes per point of the total.
    let points = ts.series.iter().map(|s| s.points.len() as u64).sum::<u64>();
    assert!(
        ts_bytes <= all_bytes && all_bytes - ts_bytes <= points * 16,
        "{ts_bytes} vs {all_bytes}"
    );

    let m = store.node_matrix(&f).unwrap();
    assert_eq!(m.nodes.len(), 5);
    let internal: u64 = recs
        .iter()
        .filter(|r| !r.src_node.is_empty() && !r.dst_node.is_empty())
        .map(|r| r.deltas[1] + r.deltas[3])
        .sum();
    assert_eq!(m.cells.iter().map(|c| c.bytes).sum::<u64>(), internal);

    let sk = store
        .sankey(&SankeyQuery {
            filter: f.clone(),
            by: SankeyBy::Policy,
            limit: 500,
        })
        .unwrap();
    let pol_bytes: u64 = recs
        .iter()
        .filter(|r| !r.ingress.name.is_empty() || !r.egress.name.is_empty())
        .map(|r| r.deltas[1] + r.deltas[3])
        .sum();
    assert_eq!(sk.links.iter().map(|l| l.bytes).sum::<u64>(), pol_bytes);
    assert!(
        sk.links
            .iter()
            .all(|l| l.source.starts_with("s:") && l.target.starts_with("d:"))
    );

    let pf = store
        .policy_flows(&PolicyQuery {
            filter: f.clone(),
            ingress: Some(NamedRef {
                namespace: Some("payments".into()),
                name: "db-ingress".into(),
            }),
            egress: None,
            limit: 1000,
        })
        .unwrap();
    assert!(!pf.is_empty());
    assert!(
        pf.iter()
            .all(|p| p.ingress.name == "db-ingress" && p.ingress.namespace == "payments")
    );
    let want: u64 = recs
        .iter()
        .filter(|r| &*r.ingress.name == "db-ingress" && &*r.ingress.namespace == "payments")
        .map(|r| r.deltas[1] + r.deltas[3])
        .sum();
    assert_eq!(pf.iter().map(|p| p.bytes).sum::<u64>(), want);

    // A range before the data is empty, not an error.
    let before = DashFilter::range(TimeRange::new(0, 60));
    assert!(
        store
            .top(&TopQuery {
                filter: before.clone(),
                by: TopBy::Pod,
                limit: 10
            })
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .sankey(&SankeyQuery {
                filter: before,
                by: SankeyBy::PodPair,
                limit: 10
            })
            .unwrap()
            .nodes
            .is_empty()
    );
}

#[test]
fn retention_by_age_deletes_whole_old_minutes_only() {
    let dir = tmpdir("ret-age");
    let cfg = SqliteConfig {
        max_age: Some(Duration::from_secs(3600)),
        ..SqliteConfig::new(&dir)
    };
    let store = SqliteStore::open(cfg).unwrap();
    let recs = Synth::new(3, 3, 20).batch(3000, T0, 3 * 3600);
    store.insert(&recs, T0 as u64).unwrap();
    let now = T0 as u64 + 3 * 3600 + 30;
    let rep = store.enforce_retention(now).unwrap();
    let cutoff = (now - 3600) / 60 * 60;
    assert_eq!(rep.cutoff_secs, cutoff);
    let kept = recs.iter().filter(|r| r.end_secs as u64 >= cutoff).count();
    assert_eq!(rep.deleted_records as usize, recs.len() - kept);
    assert!(rep.deleted_rollup_rows > 0);
    let st = store.stats().unwrap();
    assert_eq!(st.records as usize, kept);
    assert!(st.oldest_end_secs.unwrap() >= cutoff);
    // Rollups start at the same minute as the records.
    let top = store
        .top(&TopQuery {
            filter: DashFilter::range(TimeRange::new(0, cutoff)),
            by: TopBy::NodePair,
            limit: 10,
        })
        .unwrap();
    assert!(
        top.is_empty(),
        "rollups older than the cutoff survived: {top:?}"
    );
    // A second pass has nothing left to do.
    assert_eq!(store.enforce_retention(now).unwrap().deleted_records, 0);
}

#[test]
fn retention_by_size_deletes_oldest_until_it_fits() {
    let dir = tmpdir("ret-size");
    let store = SqliteStore::open(SqliteConfig::new(&dir)).unwrap();
    let recs = Synth::new(5, 5, 40).batch(20_000, T0, 6 * 3600);
    for c in recs.chunks(5000) {
        store.insert(c, T0 as u64).unwrap();
    }
    let before = store.stats().unwrap();
    let limit = before.bytes.unwrap() / 2;
    drop(store);
    let cfg = SqliteConfig {
        max_bytes: Some(limit),
        ..SqliteConfig::new(&dir)
    };
    let store = SqliteStore::open(cfg).unwrap();
    let rep = store.enforce_retention(0).unwrap();
    let after = store.stats().unwrap();
    assert!(after.bytes.unwrap() <= limit, "{after:?} over {limit}");
    assert!(
        rep.deleted_records > 0 && after.records > 0,
        "{rep:?} {after:?}"
    );
    assert_eq!(
        after.newest_end_secs, before.newest_end_secs,
        "the newest data must stay"
    );
    assert!(after.oldest_end_secs.unwrap() >= rep.cutoff_secs);
    assert_eq!(after.records + rep.deleted_records, before.records);
}

#[test]
fn open_errors_name_the_path() {
    let dir = tmpdir("open-err");
    std::fs::create_dir_all(&dir).unwrap();
    // A file where the data directory should be.
    let file = dir.join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let e = SqliteStore::open(SqliteConfig::new(&file))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not-a-dir"), "{e}");
    // A data file that is not SQLite.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("flows.sqlite"), vec![7u8; 8192]).unwrap();
    let e = SqliteStore::open(SqliteConfig::new(&bad))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("flows.sqlite") && e.contains("not a database"),
        "{e}"
    );
}

/// The periodic task the collector runs applies retention without being asked.
#[tokio::test]
async fn retention_runs_periodically() {
    let dir = tmpdir("ret-task");
    let cfg = SqliteConfig {
        max_age: Some(Duration::from_secs(3600)),
        ..SqliteConfig::new(&dir)
    };
    let store = std::sync::Arc::new(SqliteStore::open(cfg).unwrap());
    // Records from 2026-01-01: far older than an hour by the wall clock.
    store
        .insert(&Synth::new(1, 2, 4).batch(100, T0, 600), T0 as u64)
        .unwrap();
    let task = flowlens_bins::collector::spawn_retention(
        store.clone(),
        Duration::from_millis(20),
        Default::default(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.stats().unwrap().records > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "retention task never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
}
