//! Store benchmark: ingest rate into SQLite and p50/p95 latency of every dashboard query over
//! the filled store. A plain binary (not criterion): the figures wanted are a throughput over
//! minutes of filling and tail latencies, which criterion does not report.
//!
//! `cargo bench -p bins --bench store` with, optionally:
//! - `FLOWLENS_BENCH_RECORDS` (default 10000000), `FLOWLENS_BENCH_BATCH` (default 5000)
//! - `FLOWLENS_BENCH_NODES` (10), `FLOWLENS_BENCH_PODS` (500), `FLOWLENS_BENCH_HOURS` (24):
//!   the records' end times spread evenly over that many hours
//! - `FLOWLENS_BENCH_DIR` (a fresh temp dir; kept when given, so queries can be re-run with
//!   `FLOWLENS_BENCH_RECORDS=0`)
//! - `FLOWLENS_BENCH_RUNS` (20): runs per query; `FLOWLENS_BENCH_QUERIES=0` skips the queries
//! - `FLOWLENS_BENCH_EXPORTERS` (2): records come in runs of 64 (an IPFIX message's worth)
//!   from this many exporters, exporter k sending k+1 runs in every n(n+1)/2, as the collector
//!   writes them; 0 inserts them with no exporter, as tools do
//! - `FLOWLENS_BENCH_RETENTION` (1): at the end, time a prune of names, retention by size down
//!   to 90 % of the store (fair between the exporters), and a prune after it; 0 skips it

#[path = "../examples/bench_support/mod.rs"]
mod bench_support;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use flowlens_bins::collector::query::*;
use flowlens_bins::collector::synth::Synth;
use flowlens_bins::collector::{Batch, SqliteConfig, SqliteStore, Store};

use bench_support::{T0, app, bench, env, thread_cpu_ns};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need either.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let records = env("FLOWLENS_BENCH_RECORDS", 10_000_000);
    let batch = env("FLOWLENS_BENCH_BATCH", 5000).max(1) as usize;
    let nodes = env("FLOWLENS_BENCH_NODES", 10) as usize;
    let pods = env("FLOWLENS_BENCH_PODS", 500) as usize;
    let hours = env("FLOWLENS_BENCH_HOURS", 24).max(1);
    let runs = env("FLOWLENS_BENCH_RUNS", 20).max(1) as usize;
    let exporters = env("FLOWLENS_BENCH_EXPORTERS", 2).min(200) as usize;
    let ips: Vec<IpAddr> = (0..exporters)
        .map(|k| IpAddr::V4(Ipv4Addr::new(10, 255, 0, k as u8 + 1)))
        .collect();
    // Run k of every n(n+1)/2 goes to exporter j where k falls in j's share (j+1 runs).
    let shares: Vec<usize> = (0..exporters)
        .flat_map(|j| std::iter::repeat_n(j, j + 1))
        .collect();
    let dir = match std::env::var("FLOWLENS_BENCH_DIR") {
        Ok(d) => d.into(),
        Err(_) => {
            let d = std::env::temp_dir().join(format!("flowlens-bench-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            d
        }
    };
    let store = SqliteStore::open(SqliteConfig::new(&dir)).expect("open store");
    let span = hours * 3600;
    println!(
        "store bench: {records} records in batches of {batch}, {nodes} Nodes, {pods} Pods, over {hours} h, from {exporters} exporters, at {}",
        store.path().display()
    );

    let mut synth = Synth::new(1, nodes, pods);
    let mut insert_time = Duration::ZERO;
    // The store inserts on this thread, so this thread's CPU time is the insert's cost.
    let mut insert_cpu_ns = 0u64;
    let wall = Instant::now();
    let mut done = 0u64;
    let mut last_report = Instant::now();
    while done < records {
        let n = batch.min((records - done) as usize);
        // End times advance with the fill, like a live collector's.
        let start = T0 + done * span / records;
        let step = (n as u64 * span / records).max(1);
        let recs = synth.batch(n, start as u32, step as u32);
        let (t, cpu) = (Instant::now(), thread_cpu_ns());
        if exporters == 0 {
            store.insert(&recs, start + step).expect("insert");
        } else {
            let mut b = Batch::new(start + step);
            for (k, run) in recs.chunks(64).enumerate() {
                b.push(Some(ips[shares[k % shares.len()]]), run);
            }
            store.insert_batch(&b).expect("insert");
        }
        insert_time += t.elapsed();
        insert_cpu_ns += thread_cpu_ns().saturating_sub(cpu);
        done += n as u64;
        if last_report.elapsed() > Duration::from_secs(15) {
            println!(
                "  {done} records, {:.0} records/s in insert",
                done as f64 / insert_time.as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    // Rollup sums still in memory are part of the ingest cost.
    let (t, cpu) = (Instant::now(), thread_cpu_ns());
    store.flush().expect("flush");
    insert_time += t.elapsed();
    insert_cpu_ns += thread_cpu_ns().saturating_sub(cpu);
    if records > 0 {
        println!(
            "ingest: {records} records in {:.1} s of insert ({:.1} s wall incl. generating): {:.0} records/s",
            insert_time.as_secs_f64(),
            wall.elapsed().as_secs_f64(),
            records as f64 / insert_time.as_secs_f64()
        );
        if insert_cpu_ns > 0 {
            println!(
                "ingest CPU: {:.1} s on the inserting thread: {:.0} records per CPU-second",
                insert_cpu_ns as f64 / 1e9,
                records as f64 / (insert_cpu_ns as f64 / 1e9)
            );
        }
    }
    let t = Instant::now();
    let st = store.stats().expect("stats");
    println!(
        "store: {} records, {} rollup rows, {:.0} MiB in use (stats took {} ms)",
        st.records,
        st.rollup_rows,
        st.bytes.unwrap_or(0) as f64 / (1 << 20) as f64,
        t.elapsed().as_millis()
    );
    if let Some(newest) = st.newest_end_secs
        && env("FLOWLENS_BENCH_QUERIES", 1) != 0
    {
        queries(&store, newest, span, runs, nodes, pods);
    }
    if env("FLOWLENS_BENCH_RETENTION", 1) != 0
        && let (Some(oldest), Some(newest)) = (st.oldest_end_secs, st.newest_end_secs)
    {
        retention(store, &dir, oldest, newest);
    }
}

/// Times what retention costs on the filled store: a prune of names that finds nothing to
/// free (the whole-store read it always does), retention by age of the oldest tenth of the
/// time span, size retention down to 90 % of what is left (fair between the exporters), and a
/// prune after.
fn retention(store: SqliteStore, dir: &std::path::Path, oldest: u64, newest: u64) {
    println!("-- retention");
    let t = Instant::now();
    let n = store.prune_names().expect("prune");
    println!(
        "prune names, nothing to free: {n} names deleted in {} ms",
        t.elapsed().as_millis()
    );
    drop(store);
    let keep = (newest - oldest) * 9 / 10;
    let store = SqliteStore::open(SqliteConfig {
        max_age: Some(Duration::from_secs(keep)),
        ..SqliteConfig::new(dir)
    })
    .expect("open store");
    let t = Instant::now();
    let r = store.enforce_retention(newest).expect("retention");
    println!(
        "retention by age, oldest tenth: {} records, {} rollup rows, in {} ms",
        r.deleted_records,
        r.deleted_rollup_rows,
        t.elapsed().as_millis()
    );
    let bytes = store.stats().expect("stats").bytes.unwrap_or(0);
    drop(store);
    let store = SqliteStore::open(SqliteConfig {
        max_bytes: Some(bytes / 10 * 9),
        ..SqliteConfig::new(dir)
    })
    .expect("open store");
    let t = Instant::now();
    let r = store.enforce_retention(0).expect("retention");
    let by: Vec<String> = r
        .deleted_by
        .iter()
        .map(|d| format!("{} {}", d.exporter, d.records))
        .collect();
    println!(
        "retention by size to 90 %: {} records ({}), {} rollup rows, in {} ms; exporters now hold {:?}",
        r.deleted_records,
        by.join(", "),
        r.deleted_rollup_rows,
        t.elapsed().as_millis(),
        r.exporters.unwrap_or_default()
    );
    let t = Instant::now();
    let n = store.prune_names().expect("prune");
    println!(
        "prune names after it: {n} names deleted in {} ms",
        t.elapsed().as_millis()
    );
}

fn queries(store: &SqliteStore, newest: u64, span: u64, runs: usize, nodes: usize, pods: usize) {
    let hour = TimeRange::new(newest + 1 - 3600, newest + 1);
    let day = TimeRange::new(newest + 1 - span.min(86_400), newest + 1);
    let pod = |i: usize| NamedRef {
        namespace: None,
        name: format!("{}-{i}", app(i)),
    };
    // SQLite queries on the caller's thread, so its CPU time is the query's.
    bench_support::print_header(true);
    for (label, range) in [("last 1 h", hour), ("last 24 h", day)] {
        println!("-- dashboards, {label}");
        let f = DashFilter::range(range);
        let tops = [
            ("top podPair", TopBy::PodPair),
            ("top pod", TopBy::Pod),
            ("top nodePair", TopBy::NodePair),
            ("top node", TopBy::Node),
            ("top service", TopBy::Service),
            ("top external", TopBy::External),
        ];
        for (name, by) in tops {
            bench(name, runs, true, |_| {
                store
                    .top(&TopQuery {
                        filter: f.clone(),
                        by,
                        limit: 10,
                    })
                    .unwrap()
                    .len()
            });
        }
        for (name, by) in [
            ("timeseries srcPod", SeriesBy::SrcPod),
            ("timeseries dstPod", SeriesBy::DstPod),
            ("timeseries service", SeriesBy::Service),
            ("timeseries nodePair", SeriesBy::NodePair),
        ] {
            bench(name, runs, true, |_| {
                store
                    .timeseries(&SeriesQuery {
                        filter: f.clone(),
                        by,
                        limit: 10,
                    })
                    .unwrap()
                    .series
                    .len()
            });
        }
        for (name, by) in [
            ("sankey podPair", SankeyBy::PodPair),
            ("sankey policy", SankeyBy::Policy),
            ("sankey podService", SankeyBy::PodService),
            ("sankey podExternal", SankeyBy::PodExternal),
        ] {
            bench(name, runs, true, |_| {
                store
                    .sankey(&SankeyQuery {
                        filter: f.clone(),
                        by,
                        limit: 50,
                    })
                    .unwrap()
                    .links
                    .len()
            });
        }
        bench("node matrix", runs, true, |_| {
            store.node_matrix(&f).unwrap().cells.len()
        });
        bench("policies", runs, true, |_| {
            let q = PolicyQuery {
                filter: f.clone(),
                ingress: None,
                egress: None,
                limit: 100,
            };
            store.policy_flows(&q).unwrap().len()
        });
        bench("timeseries srcPod, pod filter", runs, true, |i| {
            let f = DashFilter {
                pod: Some(pod(i * 7 % pods)),
                ..f.clone()
            };
            store
                .timeseries(&SeriesQuery {
                    filter: f,
                    by: SeriesBy::SrcPod,
                    limit: 10,
                })
                .unwrap()
                .series
                .len()
        });
    }
    println!("-- flow records (page of 100, newest first)");
    let fq = |filter: FlowFilter| FlowQuery {
        filter,
        limit: 100,
        offset: 0,
    };
    bench("flows, no filter", runs, true, |_| {
        store.flows(&fq(FlowFilter::default())).unwrap().len()
    });
    bench("flows, last 1 h", runs, true, |_| {
        store
            .flows(&fq(FlowFilter {
                range: Some(hour),
                ..Default::default()
            }))
            .unwrap()
            .len()
    });
    bench("flows, namespace", runs, true, |_| {
        store
            .flows(&fq(FlowFilter {
                namespace: Some("payments".into()),
                ..Default::default()
            }))
            .unwrap()
            .len()
    });
    bench("flows, pod", runs, true, |i| {
        store
            .flows(&fq(FlowFilter {
                pod: Some(pod(i * 13 % pods)),
                ..Default::default()
            }))
            .unwrap()
            .len()
    });
    bench("flows, srcIp", runs, true, |i| {
        let ip = format!(
            "10.{}.0.{}",
            (i * 13 % pods) % nodes,
            (i * 13 % pods) % 250 + 2
        )
        .parse()
        .ok();
        store
            .flows(&fq(FlowFilter {
                src_ip: ip,
                ..Default::default()
            }))
            .unwrap()
            .len()
    });
    bench("flows, dstPort + 1 h", runs, true, |_| {
        store
            .flows(&fq(FlowFilter {
                dst_port: Some(5432),
                range: Some(hour),
                ..Default::default()
            }))
            .unwrap()
            .len()
    });
    bench("flows, rare (flowType 4 + node)", runs, true, |_| {
        let f = FlowFilter {
            flow_type: Some(4),
            node: Some("node-3".into()),
            ..Default::default()
        };
        store.flows(&fq(f)).unwrap().len()
    });
    bench("flows, page 50 (offset 5000)", runs, true, |_| {
        store
            .flows(&FlowQuery {
                filter: FlowFilter::default(),
                limit: 100,
                offset: 5000,
            })
            .unwrap()
            .len()
    });
}
