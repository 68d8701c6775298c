//! ClickHouse store against a real server (Debian's clickhouse-server, 18.16 here): on the same
//! seeded records every query answers exactly what the SQLite store answers (the SQLite tests,
//! bins/tests/collector_store.rs, check those answers against the records themselves), filters
//! narrow to exactly the matching records, retention drops whole old days, and the blocking
//! store works from inside an async task.

mod clickhouse_fixture;

use std::time::Duration;

use flowcore::aggregator::AggregatedRecord;
use flowlens_bins::clickhouse::ClickHouseConfig;
use flowlens_bins::collector::clickhouse::ClickHouseStore;
use flowlens_bins::collector::query::*;
use flowlens_bins::collector::synth::Synth;
use flowlens_bins::collector::{QueryLimits, SqliteConfig, SqliteStore, Store, StoreError};
use serde_json::Value;

/// 2026-01-01T00:00:00Z.
const T0: u32 = 1_767_225_600;

fn ch_store(db: &str, retention: Duration) -> ClickHouseStore {
    let ch = clickhouse_fixture::shared();
    ch.sql(&format!("DROP DATABASE IF EXISTS {db}"));
    ClickHouseStore::open(ClickHouseConfig {
        url: ch.url(),
        database: db.into(),
        retention: retention.into(),
        ..Default::default()
    })
    .unwrap()
}

/// The same records in a fresh SQLite store and a fresh ClickHouse database.
fn seeded_pair(
    name: &str,
    n: usize,
    span: u32,
) -> (SqliteStore, ClickHouseStore, Vec<AggregatedRecord>) {
    let dir = std::env::temp_dir().join(format!("flowlens-chs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let sq = SqliteStore::open(SqliteConfig::new(dir)).unwrap();
    let ch = ch_store(name, Duration::from_secs(7 * 86400));
    let recs = Synth::new(7, 5, 40).batch(n, T0, span);
    for chunk in recs.chunks(500) {
        sq.insert(chunk, T0 as u64 + span as u64).unwrap();
        ch.insert(chunk, T0 as u64 + span as u64).unwrap();
    }
    (sq, ch, recs)
}

fn json(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).unwrap()
}

/// Orders every list by bytes, then by its text: the stores break ties on bytes differently
/// (SQLite by its dictionary ids, ClickHouse by name), and that order is not part of the answer.
fn canon(v: Value) -> Value {
    match v {
        Value::Array(a) => {
            let mut a: Vec<Value> = a.into_iter().map(canon).collect();
            if a.iter().all(|x| {
                x.get("bytes").is_some() || x.get("id").is_some() && x.get("side").is_some()
            }) {
                a.sort_by_cached_key(|x| {
                    (
                        std::cmp::Reverse(x["bytes"].as_u64().unwrap_or(0)),
                        x.to_string(),
                    )
                });
            }
            Value::Array(a)
        }
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, canon(v))).collect()),
        v => v,
    }
}

fn assert_same(what: &str, sq: Value, ch: Value) {
    let (sq, ch) = (canon(sq), canon(ch));
    if sq != ch {
        let (a, b) = (
            serde_json::to_string_pretty(&sq).unwrap(),
            serde_json::to_string_pretty(&ch).unwrap(),
        );
        let first = a
            .lines()
            .zip(b.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(0);
        let ctx = |s: &str| {
            s.lines()
                .skip(first.saturating_sub(8))
                .take(16)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "{what}: ClickHouse differs from SQLite near line {first}:\n--- sqlite\n{}\n--- clickhouse\n{}",
            ctx(&a),
            ctx(&b)
        );
    }
}

fn named(ns: Option<&str>, name: &str) -> Option<NamedRef> {
    Some(NamedRef {
        namespace: ns.map(Into::into),
        name: name.into(),
    })
}

#[test]
fn every_query_answers_as_sqlite_does() {
    let (sq, ch, recs) = seeded_pair("agree", 4000, 3 * 3600);
    let r0 = &recs[1234];
    let flow_filters: Vec<(&str, FlowFilter)> = vec![
        ("all", FlowFilter::default()),
        (
            "range",
            FlowFilter {
                range: Some(TimeRange::new(T0 as u64 + 600, T0 as u64 + 1200)),
                ..Default::default()
            },
        ),
        (
            "namespace",
            FlowFilter {
                namespace: Some("shop".into()),
                ..Default::default()
            },
        ),
        (
            "pod",
            FlowFilter {
                pod: named(Some(&r0.src_namespace), &r0.src_pod),
                ..Default::default()
            },
        ),
        (
            "pod no ns",
            FlowFilter {
                pod: named(None, &r0.dst_pod),
                ..Default::default()
            },
        ),
        (
            "node",
            FlowFilter {
                node: Some("node-2".into()),
                ..Default::default()
            },
        ),
        (
            "service",
            FlowFilter {
                service: Some("shop/cart-svc".into()),
                ..Default::default()
            },
        ),
        (
            "service port",
            FlowFilter {
                service: Some(r0.service_port_name.to_string()),
                ..Default::default()
            },
        ),
        (
            "policy",
            FlowFilter {
                policy: named(None, "db-ingress"),
                ..Default::default()
            },
        ),
        (
            "flowType",
            FlowFilter {
                flow_type: Some(3),
                ..Default::default()
            },
        ),
        (
            "srcIp",
            FlowFilter {
                src_ip: Some(r0.key.src),
                ..Default::default()
            },
        ),
        (
            "dstIp",
            FlowFilter {
                dst_ip: Some(r0.key.dst),
                ..Default::default()
            },
        ),
        (
            "srcPort",
            FlowFilter {
                src_port: Some(r0.key.src_port),
                ..Default::default()
            },
        ),
        (
            "dstPort",
            FlowFilter {
                dst_port: Some(5432),
                ..Default::default()
            },
        ),
        (
            "protocol",
            FlowFilter {
                protocol: Some(17),
                ..Default::default()
            },
        ),
        (
            "srcNamespace",
            FlowFilter {
                src_namespace: Some("payments".into()),
                ..Default::default()
            },
        ),
        (
            "dstNamespace",
            FlowFilter {
                dst_namespace: Some("shop".into()),
                ..Default::default()
            },
        ),
        (
            "srcPod",
            FlowFilter {
                src_pod: named(Some(&r0.src_namespace), &r0.src_pod),
                ..Default::default()
            },
        ),
        (
            "dstPod",
            FlowFilter {
                dst_pod: named(None, &r0.dst_pod),
                ..Default::default()
            },
        ),
        (
            "srcNode",
            FlowFilter {
                src_node: Some("node-1".into()),
                ..Default::default()
            },
        ),
        (
            "dstNode",
            FlowFilter {
                dst_node: Some("node-3".into()),
                ..Default::default()
            },
        ),
        (
            "quote in a name matches nothing",
            FlowFilter {
                namespace: Some("sh'op\\".into()),
                ..Default::default()
            },
        ),
        (
            "combined",
            FlowFilter {
                namespace: Some("payments".into()),
                flow_type: Some(2),
                dst_port: Some(80),
                ..Default::default()
            },
        ),
    ];
    for (name, filter) in flow_filters {
        for (limit, offset) in [(1000u32, 0u32), (50, 0), (50, 70)] {
            let q = FlowQuery {
                filter: filter.clone(),
                limit,
                offset,
            };
            let (a, b) = (sq.flows(&q).unwrap(), ch.flows(&q).unwrap());
            assert_same(
                &format!("flows {name} limit {limit} offset {offset}"),
                json(&a),
                json(&b),
            );
        }
    }

    let (t0, t1) = (T0 as u64, T0 as u64 + 3 * 3600);
    let dash = |range: (u64, u64), ns: Option<&str>, pod: Option<NamedRef>, node: Option<&str>| {
        DashFilter {
            range: TimeRange::new(range.0, range.1),
            namespace: ns.map(Into::into),
            pod,
            node: node.map(Into::into),
        }
    };
    let filters = [
        dash((t0, t1), None, None, None),
        // Partial hours at both ends.
        dash((t0 + 1800, t0 + 2 * 3600 + 1234), None, None, None),
        dash((t0, t1), Some("payments"), None, None),
        dash(
            (t0, t1),
            None,
            named(Some(&r0.src_namespace), &r0.src_pod),
            None,
        ),
        dash((t0, t1), None, named(None, &r0.dst_pod), Some("node-1")),
        dash((t0, t1), None, None, Some("node-2")),
        dash((0, 60), None, None, None),
    ];
    for f in &filters {
        for by in [
            TopBy::PodPair,
            TopBy::Pod,
            TopBy::NodePair,
            TopBy::Node,
            TopBy::Service,
            TopBy::External,
        ] {
            for limit in [5, 10_000] {
                let q = TopQuery {
                    filter: f.clone(),
                    by,
                    limit,
                };
                assert_same(
                    &format!("top {by:?} {limit} {f:?}"),
                    json(sq.top(&q).unwrap()),
                    json(ch.top(&q).unwrap()),
                );
            }
        }
        for by in [
            SeriesBy::SrcPod,
            SeriesBy::DstPod,
            SeriesBy::Service,
            SeriesBy::NodePair,
        ] {
            let q = SeriesQuery {
                filter: f.clone(),
                by,
                limit: 5,
            };
            assert_same(
                &format!("timeseries {by:?} {f:?}"),
                json(sq.timeseries(&q).unwrap()),
                json(ch.timeseries(&q).unwrap()),
            );
        }
        for by in [
            SankeyBy::PodPair,
            SankeyBy::Policy,
            SankeyBy::PodService,
            SankeyBy::PodExternal,
        ] {
            for limit in [6, 10_000] {
                let q = SankeyQuery {
                    filter: f.clone(),
                    by,
                    limit,
                };
                assert_same(
                    &format!("sankey {by:?} {limit} {f:?}"),
                    json(sq.sankey(&q).unwrap()),
                    json(ch.sankey(&q).unwrap()),
                );
            }
        }
        assert_same(
            &format!("node matrix {f:?}"),
            json(sq.node_matrix(f).unwrap()),
            json(ch.node_matrix(f).unwrap()),
        );
        for (ingress, egress) in [
            (None, None),
            (named(Some("payments"), "db-ingress"), None),
            (None, named(None, "frontend-egress")),
        ] {
            let q = PolicyQuery {
                filter: f.clone(),
                ingress,
                egress,
                limit: 1000,
            };
            assert_same(
                &format!("policies {q:?}"),
                json(sq.policy_flows(&q).unwrap()),
                json(ch.policy_flows(&q).unwrap()),
            );
        }
    }

    let (a, b) = (sq.stats().unwrap(), ch.stats().unwrap());
    assert_eq!(b.backend, "clickhouse");
    assert_eq!(
        (a.records, a.oldest_end_secs, a.newest_end_secs),
        (b.records, b.oldest_end_secs, b.newest_end_secs)
    );
    assert!(b.bytes.unwrap() > 0 && b.rollup_rows > 0, "{b:?}");
}

/// The Flow Records filters against the records themselves (as collector_store.rs does for
/// SQLite), so the comparison above is not two stores agreeing on a wrong answer.
#[test]
fn filters_narrow_to_exactly_the_matching_records() {
    let ch = ch_store("narrow", Duration::from_secs(7 * 86400));
    let recs = Synth::new(11, 4, 30).batch(3000, T0, 3600);
    ch.insert(&recs, T0 as u64).unwrap();
    let all = |filter: FlowFilter| FlowQuery {
        filter,
        limit: 1_000_000,
        offset: 0,
    };
    let everything = ch.flows(&all(FlowFilter::default())).unwrap();
    assert_eq!(everything.len(), recs.len());
    assert!(
        everything
            .windows(2)
            .all(|w| (w[0].flow_end_seconds, w[0].id) > (w[1].flow_end_seconds, w[1].id))
    );
    type Pred = Box<dyn Fn(&AggregatedRecord) -> bool>;
    let cases: Vec<(FlowFilter, Pred)> = vec![
        (
            FlowFilter {
                namespace: Some("shop".into()),
                ..Default::default()
            },
            Box::new(|r| &*r.src_namespace == "shop" || &*r.dst_namespace == "shop"),
        ),
        (
            FlowFilter {
                service: Some("shop/cart-svc".into()),
                ..Default::default()
            },
            Box::new(|r| r.service_port_name.starts_with("shop/cart-svc:")),
        ),
        (
            FlowFilter {
                flow_type: Some(4),
                protocol: Some(6),
                ..Default::default()
            },
            Box::new(|r| r.flow_type == 4 && r.key.proto == 6),
        ),
        (
            FlowFilter {
                src_node: Some("node-1".into()),
                dst_node: Some("node-2".into()),
                ..Default::default()
            },
            Box::new(|r| &*r.src_node == "node-1" && &*r.dst_node == "node-2"),
        ),
    ];
    for (f, pred) in cases {
        let got = ch.flows(&all(f.clone())).unwrap();
        let want = recs.iter().filter(|r| pred(r)).count();
        assert!(want > 0 && want < recs.len(), "{f:?}");
        assert_eq!(got.len(), want, "{f:?}");
    }
    // Rollup sums equal the records' deltas.
    let f = DashFilter::range(TimeRange::new(T0 as u64, T0 as u64 + 3600));
    let bytes: u64 = recs.iter().map(|r| r.deltas[1] + r.deltas[3]).sum();
    let top = ch
        .top(&TopQuery {
            filter: f,
            by: TopBy::NodePair,
            limit: 1000,
        })
        .unwrap();
    assert_eq!(top.iter().map(|t| t.bytes).sum::<u64>(), bytes);
}

#[test]
fn retention_drops_whole_days_before_the_cutoff_day() {
    let ch = ch_store("retention", Duration::from_secs(86400));
    // Four days of records, one batch.
    let recs = Synth::new(3, 3, 20).batch(4000, T0, 4 * 86400);
    ch.insert(&recs, T0 as u64).unwrap();
    let now = T0 as u64 + 4 * 86400 - 3600; // late on day 4: the cutoff falls on day 3
    let cutoff_day = T0 as u64 + 2 * 86400;
    let rep = ch.enforce_retention(now).unwrap();
    let kept = recs
        .iter()
        .filter(|r| r.end_secs as u64 >= cutoff_day)
        .count();
    assert_eq!(rep.cutoff_secs, cutoff_day);
    assert_eq!(rep.deleted_records as usize, recs.len() - kept);
    assert!(rep.deleted_rollup_rows > 0);
    let st = ch.stats().unwrap();
    assert_eq!(st.records as usize, kept);
    assert!(st.oldest_end_secs.unwrap() >= cutoff_day);
    let old = ch
        .top(&TopQuery {
            filter: DashFilter::range(TimeRange::new(0, cutoff_day)),
            by: TopBy::NodePair,
            limit: 10,
        })
        .unwrap();
    assert!(
        old.is_empty(),
        "rollups before the cutoff survived: {old:?}"
    );
    assert_eq!(ch.enforce_retention(now).unwrap().deleted_records, 0);
}

/// The store is blocking; called (and dropped) inside a tokio task it must neither panic nor
/// deadlock, as the collector's async code may do.
#[tokio::test]
async fn works_inside_an_async_task_and_drops_cleanly() {
    let ch = ch_store("async_ctx", Duration::from_secs(86400));
    ch.insert(&Synth::new(1, 2, 4).batch(100, T0, 600), T0 as u64)
        .unwrap();
    assert_eq!(ch.stats().unwrap().records, 100);
    drop(ch);
}

#[test]
fn open_errors_name_the_server() {
    let url = format!("http://127.0.0.1:{}", clickhouse_fixture::free_port());
    let e = ClickHouseStore::open(ClickHouseConfig {
        url: url.clone(),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains(&url) && e.contains("refused"), "{e}");
}

/// The query limits reach the server as settings, and the server's refusals come back as the
/// store's bound errors naming the config key.
#[test]
fn queries_past_their_bounds_fail_naming_the_bound() {
    let ch = clickhouse_fixture::shared();
    ch.sql("DROP DATABASE IF EXISTS chs_bounds");
    let cfg = ClickHouseConfig {
        url: ch.url(),
        database: "chs_bounds".into(),
        ..Default::default()
    };
    let limits = QueryLimits {
        max_groups: 2,
        ..QueryLimits::default()
    };
    let store = ClickHouseStore::open_with(cfg, limits).unwrap();
    store
        .insert(&Synth::new(7, 5, 40).batch(500, T0, 600), T0 as u64 + 600)
        .unwrap();
    let range = TimeRange::new(T0 as u64, T0 as u64 + 600);
    let e = store
        .top(&TopQuery {
            filter: DashFilter::range(range),
            by: TopBy::PodPair,
            limit: 1,
        })
        .unwrap_err();
    assert!(
        matches!(e, StoreError::TooLarge { .. })
            && e.to_string()
                .contains("more than 2 groups (query.maxGroups)"),
        "{e}"
    );
    // A record page groups nothing and still answers.
    let page = store
        .flows(&FlowQuery {
            filter: FlowFilter::default(),
            limit: 5,
            offset: 0,
        })
        .unwrap();
    assert_eq!(page.len(), 5);
    // The server stops a query at max_execution_time with the code the store maps to Deadline.
    let client = store.client().clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(client.query_with(
            "SELECT sleep(2)",
            "sleeping",
            &[("max_execution_time", "1".into())],
        ))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Code: 159"), "{e}");
}
