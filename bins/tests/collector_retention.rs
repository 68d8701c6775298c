//! SQLite store, fairness between exporters: records keep the exporter that sent them, size
//! retention cuts the exporter holding the most first, per-exporter counts survive a restart,
//! a version 3 store is migrated in place, and names no record uses any more are deleted
//! without ever breaking a later insert or query.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use flowcore::aggregator::AggregatedRecord;
use flowlens_bins::collector::query::*;
use flowlens_bins::collector::synth::Synth;
use flowlens_bins::collector::{Batch, SqliteConfig, SqliteStore, Store};
use proptest::prelude::*;

/// 2026-01-01T00:00:00Z.
const T0: u32 = 1_767_225_600;
const A: &str = "127.0.0.1";
const B: &str = "127.0.0.2";

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("flowlens-ret-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn open(dir: &std::path::Path, max_bytes: Option<u64>) -> SqliteStore {
    SqliteStore::open(SqliteConfig {
        max_bytes,
        ..SqliteConfig::new(dir)
    })
    .unwrap()
}

fn ip(s: &str) -> Option<IpAddr> {
    (!s.is_empty()).then(|| s.parse().unwrap())
}

fn insert_from(store: &SqliteStore, exporter: &str, recs: &[AggregatedRecord]) {
    for chunk in recs.chunks(1000) {
        store
            .insert_batch(&Batch::of(ip(exporter), chunk, T0 as u64))
            .unwrap();
    }
}

fn everything() -> FlowQuery {
    FlowQuery {
        filter: FlowFilter::default(),
        limit: 10_000_000,
        offset: 0,
    }
}

fn whole_range() -> DashFilter {
    DashFilter::range(TimeRange::new(T0 as u64 - 86_400, T0 as u64 + 7 * 86_400))
}

/// Bytes of every Node pair, from the rollups.
fn rollup_bytes(store: &SqliteStore) -> u64 {
    let q = TopQuery {
        filter: whole_range(),
        by: TopBy::NodePair,
        limit: 10_000,
    };
    store.top(&q).unwrap().iter().map(|t| t.bytes).sum()
}

/// A second look at the file, past the store's own bookkeeping.
fn raw(store: &SqliteStore) -> rusqlite::Connection {
    store.flush().unwrap();
    rusqlite::Connection::open(store.path()).unwrap()
}

/// Records per exporter address ("" unknown), counted in `flows` itself.
fn counted(store: &SqliteStore) -> BTreeMap<String, u64> {
    let c = raw(store);
    let mut st = c
        .prepare(
            "SELECT COALESCE((SELECT s FROM dict WHERE id = f.exporter AND f.exporter != 0), ''), \
             COUNT(*) FROM flows f GROUP BY f.exporter",
        )
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn ids_of(store: &SqliteStore, exporter: &str) -> Vec<i64> {
    let c = raw(store);
    let mut st = c
        .prepare(
            "SELECT id FROM flows WHERE exporter = (SELECT id FROM dict WHERE s = ?1) ORDER BY id",
        )
        .unwrap();
    st.query_map([exporter], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn held(store: &SqliteStore) -> BTreeMap<String, u64> {
    store.exporters().unwrap().into_iter().collect()
}

#[test]
fn a_flood_loses_its_own_oldest_records_and_no_one_elses() {
    let dir = tmpdir("flood");
    let store = open(&dir, None);
    // A sends 2000 records over the hour, B floods 40 000 over the same hour; their messages
    // arrive interleaved, so their records share pages.
    let a = Synth::new(1, 3, 20).batch(2000, T0, 3600);
    let b = Synth::new(2, 3, 20).batch(40_000, T0, 3600);
    for (ca, cb) in a.chunks(100).zip(b.chunks(2000)) {
        insert_from(&store, A, ca);
        insert_from(&store, B, cb);
    }
    let before = store.stats().unwrap();
    let (a_ids, b_ids) = (ids_of(&store, A), ids_of(&store, B));
    assert_eq!((a_ids.len(), b_ids.len()), (2000, 40_000));
    let rolled = rollup_bytes(&store);
    drop(store);

    let limit = before.bytes.unwrap() * 6 / 10;
    let store = open(&dir, Some(limit));
    let rep = store.enforce_retention(0).unwrap();
    let after = store.stats().unwrap();
    assert!(after.bytes.unwrap() <= limit, "{after:?} over {limit}");
    let kept_b = ids_of(&store, B);
    let cut = 40_000 - kept_b.len() as u64;
    assert!(cut > 0 && kept_b.len() > 2000, "{rep:?}");
    // Every record of A is there; B lost exactly its oldest.
    assert_eq!(ids_of(&store, A), a_ids);
    assert_eq!(kept_b, b_ids[cut as usize..]);
    assert_eq!(
        rep.deleted_by,
        vec![ExporterDeleted {
            reason: RetentionReason::Size,
            exporter: B.into(),
            records: cut,
        }]
    );
    assert_eq!(rep.deleted_records, cut);
    assert_eq!(after.records, 42_000 - cut);
    let want = BTreeMap::from([(A.to_string(), 2000), (B.to_string(), 40_000 - cut)]);
    assert_eq!(held(&store), want);
    assert_eq!(counted(&store), want);
    assert_eq!(
        rep.exporters,
        Some(vec![(B.to_string(), 40_000 - cut), (A.to_string(), 2000)])
    );
    // The API says who sent each record.
    let rows = store.flows(&everything()).unwrap();
    let from_a = rows
        .iter()
        .filter(|r| r.exporter_address.as_deref() == Some(A))
        .count();
    assert_eq!(from_a, 2000);
    // Rollups carry no exporter: a fair cut leaves them, so the dashboards keep B's traffic.
    assert_eq!(rollup_bytes(&store), rolled);
    // Fits now: nothing more to do.
    assert_eq!(store.enforce_retention(0).unwrap().deleted_records, 0);
}

#[test]
fn exporters_at_an_even_share_lose_their_oldest_minutes_alike() {
    let dir = tmpdir("even");
    let store = open(&dir, None);
    let a = Synth::new(3, 3, 20).batch(10_000, T0, 6 * 3600);
    let b = Synth::new(4, 3, 20).batch(10_000, T0, 6 * 3600);
    for (ca, cb) in a.chunks(500).zip(b.chunks(500)) {
        insert_from(&store, A, ca);
        insert_from(&store, B, cb);
    }
    let before = store.stats().unwrap();
    drop(store);
    let limit = before.bytes.unwrap() / 2;
    let store = open(&dir, Some(limit));
    let rep = store.enforce_retention(0).unwrap();
    let after = store.stats().unwrap();
    assert!(after.bytes.unwrap() <= limit, "{after:?} over {limit}");
    // Both lost records; the oldest minutes went, rollups with them.
    let h = held(&store);
    assert!(h[A] < 10_000 && h[B] < 10_000, "{h:?}");
    assert!(
        rep.deleted_rollup_rows > 0 && rep.cutoff_secs > T0 as u64,
        "{rep:?}"
    );
    assert!(after.oldest_end_secs.unwrap() >= T0 as u64 + 60);
    assert_eq!(h, counted(&store));
    assert_eq!(after.newest_end_secs, before.newest_end_secs);
}

#[test]
fn per_exporter_counts_survive_a_restart() {
    let dir = tmpdir("restart");
    let store = open(&dir, None);
    let mut synth = Synth::new(5, 3, 20);
    insert_from(&store, A, &synth.batch(700, T0, 600));
    insert_from(&store, B, &synth.batch(300, T0, 600));
    insert_from(&store, "", &synth.batch(50, T0, 600));
    // Several exporters in one transaction, as the ingest writer sends them.
    let (x, y) = (synth.batch(20, T0, 60), synth.batch(30, T0, 60));
    let mut batch = Batch::new(T0 as u64);
    batch.push(ip(A), &x);
    batch.push(ip("::1"), &y);
    batch.push(ip(A), &x);
    store.insert_batch(&batch).unwrap();
    let want = BTreeMap::from([
        (String::new(), 50),
        (A.to_string(), 740),
        (B.to_string(), 300),
        ("::1".to_string(), 30),
    ]);
    assert_eq!(held(&store), want);
    drop(store);
    let store = open(&dir, None);
    assert_eq!(held(&store), want);
    assert_eq!(counted(&store), want);
    assert_eq!(store.stats().unwrap().records, 1120);
    // And they go on counting from there.
    insert_from(&store, B, &synth.batch(5, T0, 60));
    assert_eq!(held(&store)[B], 305);
}

#[test]
fn a_version_3_store_is_migrated_in_place() {
    let dir = tmpdir("v3");
    let recs = Synth::new(6, 3, 20).batch(3000, T0, 3600);
    let store = open(&dir, None);
    store.insert(&recs, T0 as u64).unwrap();
    let rows_before = store.flows(&everything()).unwrap();
    let rolled = rollup_bytes(&store);
    let path = store.path().to_owned();
    drop(store);
    // Back to version 3's layout: no `exporter` column, no `exporters` table.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "ALTER TABLE flows DROP COLUMN exporter; DROP TABLE exporters; \
             UPDATE meta SET value = 3 WHERE key = 'schema_version';",
        )
        .unwrap();
        let cols: Vec<String> = c
            .prepare("SELECT name FROM pragma_table_info('flows')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(cols.len(), 20, "{cols:?}");
        assert!(!cols.contains(&"exporter".to_string()));
    }
    let store = open(&dir, None);
    // Every record reads back as before, from the unknown exporter.
    assert_eq!(store.flows(&everything()).unwrap(), rows_before);
    assert!(rows_before.iter().all(|r| r.exporter_address.is_none()));
    assert_eq!(rollup_bytes(&store), rolled);
    assert_eq!(held(&store), BTreeMap::from([(String::new(), 3000)]));
    let version: i64 = raw(&store)
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, 4);
    // New records keep their exporter; retention counts both.
    insert_from(&store, A, &Synth::new(7, 3, 20).batch(100, T0, 60));
    assert_eq!(
        counted(&store),
        BTreeMap::from([(String::new(), 3000), (A.to_string(), 100)])
    );
    drop(store);
    let store = open(&dir, None);
    assert_eq!(store.stats().unwrap().records, 3100);
    drop(store);
    // A layout it cannot migrate is refused, naming both versions.
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'", [])
            .unwrap();
    }
    let e = SqliteStore::open(SqliteConfig::new(&dir))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("schema version 2") && e.contains("reads version 4"),
        "{e}"
    );
}

/// Records with names no other record has (a flood of unique labels and Pods).
fn unique_names(recs: &mut [AggregatedRecord], tag: &str) {
    for (k, r) in recs.iter_mut().enumerate() {
        r.src_labels = Arc::from(format!("{{\"flood\":\"{tag}-{k}\"}}"));
        r.ingress.rule = Arc::from(format!("rule-{tag}-{k}"));
    }
}

fn names_like(store: &SqliteStore, pattern: &str) -> u64 {
    raw(store)
        .query_row(
            "SELECT COUNT(*) FROM dict WHERE s LIKE ?1",
            [pattern],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64
}

#[test]
fn names_of_deleted_records_are_pruned_and_never_handed_out_again() {
    let dir = tmpdir("prune");
    let store = SqliteStore::open(SqliteConfig {
        max_age: Some(std::time::Duration::from_secs(3600)),
        ..SqliteConfig::new(&dir)
    })
    .unwrap();
    let mut synth = Synth::new(8, 3, 20);
    // B's flood is old, A's records recent.
    let mut flood = synth.batch(6000, T0, 600);
    unique_names(&mut flood, "b");
    insert_from(&store, B, &flood);
    let recent = synth.batch(500, T0 + 7200, 600);
    insert_from(&store, A, &recent);
    assert_eq!(names_like(&store, "%flood%"), 6000);
    let names_before = names_like(&store, "%");
    // Age retention takes the flood; `dict` has passed its floor, so its names go too.
    let rep = store.enforce_retention(T0 as u64 + 7200 + 600).unwrap();
    assert_eq!(rep.deleted_records, 6000);
    assert!(rep.deleted_names >= 12_000, "{rep:?}");
    assert_eq!(names_like(&store, "%flood%"), 0);
    assert_eq!(names_like(&store, "rule-b-%"), 0);
    // B's address went with its last record.
    assert_eq!(names_like(&store, B), 0);
    assert!(names_like(&store, "%") <= names_before - 12_000);
    assert_eq!(store.exporters().unwrap(), vec![(A.to_string(), 500)]);
    // Nothing more to prune.
    assert_eq!(store.prune_names().unwrap(), 0);
    // The same names again (the writer cached their old ids before the prune): new ids,
    // read back right.
    let mut again = flood[..50].to_vec();
    for r in &mut again {
        r.end_secs += 7200;
    }
    insert_from(&store, B, &again);
    let rows = store.flows(&everything()).unwrap();
    assert_eq!(rows.len(), 550);
    let mut labels: Vec<&str> = rows
        .iter()
        .filter(|r| r.exporter_address.as_deref() == Some(B))
        .map(|r| r.source_pod_labels.as_str())
        .collect();
    labels.sort_unstable();
    let mut want: Vec<&str> = again.iter().map(|r| &*r.src_labels).collect();
    want.sort_unstable();
    assert_eq!(labels, want);
    for by in [TopBy::PodPair, TopBy::Pod, TopBy::Service, TopBy::External] {
        store
            .top(&TopQuery {
                filter: whole_range(),
                by,
                limit: 100,
            })
            .unwrap();
    }
}

/// One step of a random history of the store.
#[derive(Clone, Debug)]
enum Op {
    /// `n` records from exporter `from` (0: unknown) ending in minute `minute`, with names of
    /// group `names` when set (no other records have those, but later inserts of the same
    /// group do: names come back after a prune took them).
    Insert {
        from: u8,
        n: u16,
        minute: u8,
        names: Option<u8>,
    },
    /// Retention by age, everything before minute `minute`.
    Age {
        minute: u8,
    },
    /// Retention by size down to `percent` of the store's size.
    Size {
        percent: u8,
    },
    Prune,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 1u16..300, 0u8..90, proptest::option::of(0u8..6))
            .prop_map(|(from, n, minute, names)| Op::Insert { from, n, minute, names }),
        2 => (0u8..90).prop_map(|minute| Op::Age { minute }),
        1 => (20u8..95).prop_map(|percent| Op::Size { percent }),
        2 => Just(Op::Prune),
        1 => Just(Op::Reopen),
    ]
}

const EXPORTERS: [&str; 3] = ["", "10.1.0.1", "fd00::7"];

/// Every stored record reads back with the names and exporter it was stored with (records are
/// tagged by a unique flowStartSeconds), the counts agree, and every dashboard resolves its
/// names.
fn check(store: &SqliteStore, sent: &HashMap<u64, (AggregatedRecord, &str)>) {
    let rows = store.flows(&everything()).unwrap();
    let mut by_exporter: BTreeMap<String, u64> = BTreeMap::new();
    for row in &rows {
        let (r, from) = &sent[&row.flow_start_seconds];
        let got = [
            row.source_pod_name.as_str(),
            &row.source_pod_namespace,
            &row.source_node_name,
            &row.destination_pod_name,
            &row.destination_pod_namespace,
            &row.destination_node_name,
            &row.destination_service_port_name,
            &row.ingress_network_policy_name,
            &row.ingress_network_policy_rule_name,
            &row.egress_network_policy_name,
            &row.tcp_state,
            &row.source_pod_labels,
            &row.destination_pod_labels,
            &row.cluster_id,
        ];
        let want = [
            &*r.src_pod,
            &r.src_namespace,
            &r.src_node,
            &r.dst_pod,
            &r.dst_namespace,
            &r.dst_node,
            &r.service_port_name,
            &r.ingress.name,
            &r.ingress.rule,
            &r.egress.name,
            &r.tcp_state,
            &r.src_labels,
            &r.dst_labels,
            &r.cluster_id,
        ];
        assert_eq!(got, want, "record {}", row.flow_start_seconds);
        assert_eq!(row.exporter_address.as_deref(), ip(from).map(|_| *from));
        *by_exporter.entry(from.to_string()).or_default() += 1;
    }
    assert_eq!(held(store), by_exporter);
    assert_eq!(store.stats().unwrap().records, rows.len() as u64);
    let f = whole_range();
    for by in [
        TopBy::PodPair,
        TopBy::Pod,
        TopBy::NodePair,
        TopBy::Node,
        TopBy::Service,
        TopBy::External,
    ] {
        store
            .top(&TopQuery {
                filter: f.clone(),
                by,
                limit: 1000,
            })
            .unwrap();
    }
    for by in [
        SankeyBy::PodPair,
        SankeyBy::Policy,
        SankeyBy::PodService,
        SankeyBy::PodExternal,
    ] {
        store
            .sankey(&SankeyQuery {
                filter: f.clone(),
                by,
                limit: 1000,
            })
            .unwrap();
    }
    store
        .policy_flows(&PolicyQuery {
            filter: f.clone(),
            ingress: None,
            egress: None,
            limit: 1000,
        })
        .unwrap();
    store.node_matrix(&f).unwrap();
}

fn run(ops: &[Op], case: usize) {
    let dir = tmpdir(&format!("prop-{case}"));
    let cfg = |max_bytes| SqliteConfig {
        max_age: Some(std::time::Duration::from_secs(3600)),
        max_bytes,
        ..SqliteConfig::new(&dir)
    };
    let mut store = SqliteStore::open(cfg(None)).unwrap();
    let mut synth = Synth::new(case as u64, 3, 12);
    let mut sent: HashMap<u64, (AggregatedRecord, &str)> = HashMap::new();
    let mut tag = 0u32;
    for op in ops {
        match *op {
            Op::Insert {
                from,
                n,
                minute,
                names,
            } => {
                let end = T0 + minute as u32 * 60;
                let mut recs = synth.batch(n as usize, end, 59);
                if let Some(g) = names {
                    for (k, r) in recs.iter_mut().enumerate() {
                        r.src_labels = Arc::from(format!("u-{g}-{}", k % 5));
                        r.dst_pod = Arc::from(format!("pod-{g}-{}", k % 3));
                        r.ingress.rule = Arc::from(format!("rule-{g}"));
                    }
                }
                for r in &mut recs {
                    tag += 1;
                    r.start_secs = tag;
                    sent.insert(tag as u64, (r.clone(), EXPORTERS[from as usize]));
                }
                let exporter = EXPORTERS[from as usize];
                store
                    .insert_batch(&Batch::of(ip(exporter), &recs, T0 as u64))
                    .unwrap();
            }
            Op::Age { minute } => {
                let now = T0 as u64 + 3600 + minute as u64 * 60;
                store.enforce_retention(now).unwrap();
            }
            Op::Size { percent } => {
                let bytes = store.stats().unwrap().bytes.unwrap();
                drop(store);
                let s = SqliteStore::open(cfg(Some(bytes * percent as u64 / 100))).unwrap();
                s.enforce_retention(0).unwrap();
                drop(s);
                store = SqliteStore::open(cfg(None)).unwrap();
            }
            Op::Prune => {
                store.prune_names().unwrap();
                // What is left is all in use.
                assert_eq!(store.prune_names().unwrap(), 0);
                let rows = store.flows(&everything()).unwrap();
                let mut live: Vec<&str> = rows
                    .iter()
                    .map(|r| r.source_pod_labels.as_str())
                    .filter(|l| l.starts_with("u-"))
                    .collect();
                live.sort_unstable();
                live.dedup();
                assert_eq!(names_like(&store, "u-%"), live.len() as u64);
            }
            Op::Reopen => {
                drop(store);
                store = SqliteStore::open(cfg(None)).unwrap();
            }
        }
        check(&store, &sent);
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn any_history_of_inserts_retention_and_prunes_reads_back_whole(
        ops in proptest::collection::vec(op(), 1..14),
    ) {
        static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        run(&ops, CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    }
}
