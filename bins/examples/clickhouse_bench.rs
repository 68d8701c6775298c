//! ClickHouse benchmark: ingest rate of aggregated records into ClickHouse (RowBinary over HTTP,
//! the record table plus its five rollup views) and p50/p95 latency of every dashboard query
//! through the `Store` trait over the filled tables. Prints figures; asserts nothing.
//!
//! `cargo run --release -p bins --example clickhouse_bench` with, optionally:
//! - `FLOWLENS_BENCH_RECORDS` (10000000), `FLOWLENS_BENCH_BATCH` (100000 rows per INSERT),
//!   `FLOWLENS_BENCH_INFLIGHT` (2 INSERTs at once)
//! - `FLOWLENS_BENCH_NODES` (10), `FLOWLENS_BENCH_PODS` (500), `FLOWLENS_BENCH_HOURS` (24)
//! - `FLOWLENS_BENCH_RUNS` (20) runs per query
//! - `FLOWLENS_BENCH_URL`: use that server (database `flowlens_bench`, kept) instead of starting
//!   Debian's clickhouse-server on loopback the way the tests do (temp dir, removed on exit)
//!
//! Records are generated on their own thread ahead of the inserts; the figures say how much
//! CPU went to the server, to this process, and to generating.

#[path = "bench_support/mod.rs"]
mod bench_support;
#[path = "../tests/clickhouse_fixture/mod.rs"]
mod clickhouse_fixture;

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowlens_bins::clickhouse::{ClickHouseClient, ClickHouseConfig};
use flowlens_bins::collector::Store;
use flowlens_bins::collector::clickhouse::ClickHouseStore;
use flowlens_bins::collector::query::*;
use flowlens_bins::collector::synth::Synth;

use bench_support::{T0, app, bench, env, proc_cpu, thread_cpu_ns};

/// CPU seconds (user + system) of a process.
fn cpu_secs(pid: &str) -> f64 {
    let (user, sys) = proc_cpu(pid);
    user + sys
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let records = env("FLOWLENS_BENCH_RECORDS", 10_000_000);
    let batch = env("FLOWLENS_BENCH_BATCH", 100_000).max(1) as usize;
    let inflight = env("FLOWLENS_BENCH_INFLIGHT", 2).max(1) as usize;
    let nodes = env("FLOWLENS_BENCH_NODES", 10) as usize;
    let pods = env("FLOWLENS_BENCH_PODS", 500) as usize;
    let hours = env("FLOWLENS_BENCH_HOURS", 24).max(1);
    let runs = env("FLOWLENS_BENCH_RUNS", 20).max(1) as usize;
    let (server, url) = match std::env::var("FLOWLENS_BENCH_URL") {
        Ok(u) => (None, u),
        Err(_) => {
            let s = clickhouse_fixture::ClickHouse::start(true);
            let u = s.url();
            (Some(s), u)
        }
    };
    let server_pid = server.as_ref().map(|s| s.server_pid().to_string());
    if let Some(s) = &server
        && records > 0
    {
        s.sql("DROP DATABASE IF EXISTS flowlens_bench");
    }
    let cfg = ClickHouseConfig {
        url: url.clone(),
        database: "flowlens_bench".into(),
        batch_rows: batch.min(1_000_000),
        timeout: Duration::from_secs(600).into(),
        retention: Duration::from_secs(365 * 86400).into(),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = Arc::new(
        rt.block_on(ClickHouseClient::connect(cfg.clone()))
            .expect("connect"),
    );
    if env("FLOWLENS_BENCH_NO_VIEWS", 0) == 1 {
        // Experiment: the record table alone (dashboards would then have no rollups).
        for r in flowlens_bins::clickhouse::schema::ROLLUPS {
            rt.block_on(client.execute(
                &format!("DROP TABLE IF EXISTS flowlens_bench.flows{}_mv", r.suffix),
                "dropping a view",
            ))
            .unwrap();
        }
    }
    let span = hours * 3600;
    println!(
        "clickhouse bench: {records} records in INSERTs of {batch} ({inflight} in flight), {nodes} Nodes, {pods} Pods, over {hours} h, server {} at {url}",
        client.server_version()
    );

    // Generator thread: batches ahead of the inserts, bounded.
    let (tx, rx) = tokio::sync::mpsc::channel::<(Vec<flowcore::aggregator::AggregatedRecord>, u64)>(
        inflight + 1,
    );
    let gen_thread = std::thread::spawn(move || {
        let mut synth = Synth::new(1, nodes, pods);
        let mut done = 0u64;
        let cpu0 = thread_cpu_ns();
        while done < records {
            let n = batch.min((records - done) as usize);
            let start = T0 + done * span / records;
            let step = (n as u64 * span / records).max(1);
            let recs = synth.batch(n, start as u32, step as u32);
            if tx.blocking_send((recs, start + step)).is_err() {
                break;
            }
            done += n as u64;
        }
        thread_cpu_ns().saturating_sub(cpu0) as f64 / 1e9
    });
    let (srv0, me0) = (
        server_pid.as_deref().map_or(0.0, cpu_secs),
        cpu_secs("self"),
    );
    let wall = Instant::now();
    let inserted = rt.block_on(async {
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut tasks = Vec::new();
        for _ in 0..inflight {
            let (rx, client) = (rx.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some((recs, at)) = next else { break };
                    n += client.insert(&recs, at).await.expect("insert") as u64;
                }
                n
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    let secs = wall.elapsed().as_secs_f64();
    let gen_cpu = gen_thread.join().unwrap();
    let (srv1, me1) = (
        server_pid.as_deref().map_or(0.0, cpu_secs),
        cpu_secs("self"),
    );
    if records > 0 {
        println!(
            "ingest: {inserted} records in {secs:.1} s: {:.0} records/s (wall, generation overlapped)",
            inserted as f64 / secs
        );
        println!(
            "ingest CPU: server {:.1} s, this process {:.1} s of which generating records {gen_cpu:.1} s \
             (client encode+send {:.1} s: {:.0} records per client CPU-second; {:.0} per server CPU-second)",
            srv1 - srv0,
            me1 - me0,
            (me1 - me0 - gen_cpu).max(0.0),
            inserted as f64 / (me1 - me0 - gen_cpu).max(1e-9),
            inserted as f64 / (srv1 - srv0).max(1e-9),
        );
    }
    drop(rt);

    let store = ClickHouseStore::open(cfg).expect("open store");
    let t = Instant::now();
    let st = store.stats().expect("stats");
    println!(
        "store: {} records, {} rollup rows, {:.0} MiB on disk (stats took {} ms)",
        st.records,
        st.rollup_rows,
        st.bytes.unwrap_or(0) as f64 / (1 << 20) as f64,
        t.elapsed().as_millis()
    );
    let Some(newest) = st.newest_end_secs else {
        return;
    };
    let hour = TimeRange::new(newest + 1 - 3600, newest + 1);
    let day = TimeRange::new(newest + 1 - span.min(86_400), newest + 1);
    let pod = |i: usize| NamedRef {
        namespace: None,
        name: format!("{}-{i}", app(i)),
    };
    bench_support::print_header(false);
    for (label, range) in [("last 1 h", hour), ("last 24 h", day)] {
        println!("-- {label}");
        let f = DashFilter::range(range);
        for (name, by) in [
            ("top podPair", TopBy::PodPair),
            ("top pod", TopBy::Pod),
            ("top nodePair", TopBy::NodePair),
            ("top node", TopBy::Node),
            ("top service", TopBy::Service),
            ("top external", TopBy::External),
        ] {
            bench(name, runs, false, |_| {
                store
                    .top(&TopQuery {
                        filter: f.clone(),
                        by,
                        limit: 20,
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
            bench(name, runs, false, |_| {
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
            bench(name, runs, false, |_| {
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
        bench("node matrix", runs, false, |_| {
            store.node_matrix(&f).unwrap().cells.len()
        });
        bench("policies", runs, false, |_| {
            store
                .policy_flows(&PolicyQuery {
                    filter: f.clone(),
                    ingress: None,
                    egress: None,
                    limit: 100,
                })
                .unwrap()
                .len()
        });
        bench("timeseries srcPod, pod filter", runs, false, |i| {
            store
                .timeseries(&SeriesQuery {
                    filter: DashFilter {
                        pod: Some(pod(i * 7 % pods)),
                        ..f.clone()
                    },
                    by: SeriesBy::SrcPod,
                    limit: 10,
                })
                .unwrap()
                .series
                .len()
        });
        bench("top nodePair, namespace filter", runs, false, |_| {
            store
                .top(&TopQuery {
                    filter: DashFilter {
                        namespace: Some("payments".into()),
                        ..f.clone()
                    },
                    by: TopBy::NodePair,
                    limit: 20,
                })
                .unwrap()
                .len()
        });
    }
    println!("-- flow records (page of 100, newest first)");
    let fq = |filter: FlowFilter| FlowQuery {
        filter,
        limit: 100,
        offset: 0,
    };
    let cases: Vec<(&str, FlowFilter)> = vec![
        ("flows, no filter", FlowFilter::default()),
        (
            "flows, last 1 h",
            FlowFilter {
                range: Some(hour),
                ..Default::default()
            },
        ),
        (
            "flows, namespace",
            FlowFilter {
                namespace: Some("payments".into()),
                ..Default::default()
            },
        ),
        (
            "flows, pod",
            FlowFilter {
                pod: Some(pod(13)),
                ..Default::default()
            },
        ),
        (
            "flows, srcIp",
            FlowFilter {
                src_ip: "10.3.0.15".parse().ok(),
                ..Default::default()
            },
        ),
        (
            "flows, dstPort + 1 h",
            FlowFilter {
                dst_port: Some(5432),
                range: Some(hour),
                ..Default::default()
            },
        ),
        (
            "flows, rare (flowType 4 + node)",
            FlowFilter {
                flow_type: Some(4),
                node: Some("node-3".into()),
                ..Default::default()
            },
        ),
    ];
    for (name, f) in cases {
        bench(name, runs, false, |_| {
            store.flows(&fq(f.clone())).unwrap().len()
        });
    }
    bench("flows, page 50 (offset 5000)", runs, false, |_| {
        store
            .flows(&FlowQuery {
                filter: FlowFilter::default(),
                limit: 100,
                offset: 5000,
            })
            .unwrap()
            .len()
    });
    drop(store);
    drop(server);
}
