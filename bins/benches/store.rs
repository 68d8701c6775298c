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

use std::time::{Duration, Instant};

use flowlens_bins::collector::query::*;
use flowlens_bins::collector::synth::Synth;
use flowlens_bins::collector::{SqliteConfig, SqliteStore, Store};

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600;

/// Nanoseconds this thread has run on a CPU (Linux `schedstat`; 0 elsewhere). The store
/// inserts on the calling thread, so this is its CPU cost, unaffected by other processes
/// competing for the machine, which the wall-clock rate is not.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

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
        "store bench: {records} records in batches of {batch}, {nodes} Nodes, {pods} Pods, over {hours} h, at {}",
        store.path().display()
    );

    let mut synth = Synth::new(1, nodes, pods);
    let mut insert_time = Duration::ZERO;
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
        store.insert(&recs, start + step).expect("insert");
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
    let Some(newest) = st.newest_end_secs else {
        return;
    };
    if env("FLOWLENS_BENCH_QUERIES", 1) == 0 {
        return;
    }

    let hour = TimeRange::new(newest + 1 - 3600, newest + 1);
    let day = TimeRange::new(newest + 1 - span.min(86_400), newest + 1);
    let pod = |i: usize| NamedRef {
        namespace: None,
        name: format!("{}-{i}", app(i)),
    };
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "query (ms)", "p50", "p95", "max", "cpu p95"
    );
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
            bench(name, runs, |_| {
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
            bench(name, runs, |_| {
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
            bench(name, runs, |_| {
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
        bench("node matrix", runs, |_| {
            store.node_matrix(&f).unwrap().cells.len()
        });
        bench("policies", runs, |_| {
            let q = PolicyQuery {
                filter: f.clone(),
                ingress: None,
                egress: None,
                limit: 100,
            };
            store.policy_flows(&q).unwrap().len()
        });
        bench("timeseries srcPod, pod filter", runs, |i| {
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
    bench("flows, no filter", runs, |_| {
        store.flows(&fq(FlowFilter::default())).unwrap().len()
    });
    bench("flows, last 1 h", runs, |_| {
        store
            .flows(&fq(FlowFilter {
                range: Some(hour),
                ..Default::default()
            }))
            .unwrap()
            .len()
    });
    bench("flows, namespace", runs, |_| {
        store
            .flows(&fq(FlowFilter {
                namespace: Some("payments".into()),
                ..Default::default()
            }))
            .unwrap()
            .len()
    });
    bench("flows, pod", runs, |i| {
        store
            .flows(&fq(FlowFilter {
                pod: Some(pod(i * 13 % pods)),
                ..Default::default()
            }))
            .unwrap()
            .len()
    });
    bench("flows, srcIp", runs, |i| {
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
    bench("flows, dstPort + 1 h", runs, |_| {
        store
            .flows(&fq(FlowFilter {
                dst_port: Some(5432),
                range: Some(hour),
                ..Default::default()
            }))
            .unwrap()
            .len()
    });
    bench("flows, rare (flowType 4 + node)", runs, |_| {
        let f = FlowFilter {
            flow_type: Some(4),
            node: Some("node-3".into()),
            ..Default::default()
        };
        store.flows(&fq(f)).unwrap().len()
    });
    bench("flows, page 50 (offset 5000)", runs, |_| {
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

/// The synthetic cluster's app name for Pod `i` (see `Synth`).
fn app(i: usize) -> &'static str {
    [
        "frontend", "cart", "checkout", "db", "cache", "api", "worker", "metrics",
    ][(i / 4) % 8]
}

/// Runs `f` `runs` times; prints wall-clock p50/p95/max and the p95 of the CPU time the query
/// took on this thread (SQLite runs on the caller's thread), which other processes competing
/// for the machine do not inflate.
fn bench(name: &str, runs: usize, mut f: impl FnMut(usize) -> usize) {
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut cpu: Vec<u64> = Vec::with_capacity(runs);
    let mut rows = 0;
    for i in 0..runs {
        let (t, c) = (Instant::now(), thread_cpu_ns());
        rows = f(i);
        times.push(t.elapsed());
        cpu.push(thread_cpu_ns().saturating_sub(c));
    }
    times.sort();
    cpu.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let idx = |q: f64| ((runs as f64 * q).ceil() as usize).clamp(1, runs) - 1;
    println!(
        "{name:<34} {:>9.1} {:>9.1} {:>9.1} {:>9.1}   ({rows} rows)",
        ms(times[idx(0.5)]),
        ms(times[idx(0.95)]),
        ms(times[runs - 1]),
        cpu[idx(0.95)] as f64 / 1e6,
    );
}
