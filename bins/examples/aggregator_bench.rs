//! Aggregator end-to-end benchmark (issue 6):
//!
//!     export CARGO_TARGET_DIR=$HOME/.cache/flowlens-target
//!     cargo run --release -p bins --example aggregator_bench -- [--exporters 100] [--records 20000]
//!
//! One in-process aggregator (`flowlens_bins::aggregator::run::run`, the production main loop:
//! collecting process, decode, correlation) listening with `aggregatorTransportProtocol: tcp` on
//! 127.0.0.1, no sinks (no external collector, no JSON lines): records are received, decoded and
//! aggregated, and the aggregated records are polled and discarded.
//!
//! The exporters run in a child process (this program with `--sender`), so the two processes'
//! CPU is reported separately: E exporters = E/2 Node pairs; in each pair both Nodes send a record
//! for each of the same R inter-Node flows (the source Node's half and the destination Node's
//! half, each exporter with its Node's observation domain), so every flow correlates. Every
//! exporter's messages are encoded before the clock starts (agent layout, stream encoder,
//! `write_flow_record`, full-sized messages like an agent's export burst), then each exporter
//! connects over TCP and, on "go", writes its byte stream as fast as the socket takes it (one
//! thread per exporter, blocking writes).
//!
//! `--core-threads N`: the aggregator's `coreThreads` (flows split by key hash over N threads).
//!
//! `--ipfix`: the aggregator also exports every aggregated record as IPFIX over TCP (its
//! production IPFIX sink: encoder, replay buffer, exporter actor) to a collecting process
//! (`transport::collector`, decoding every message) in the child, which counts what arrives;
//! the run then also waits until every aggregated record was written and received.
//!
//! Measured: records_in of the aggregator's `/metrics` registry (read in process through
//! `Ops::render` every 20 ms) from the first record to the last, so records/s = records
//! aggregated per second; loss = records sent − records_in; CPU of both processes (utime+stime
//! of /proc/<pid>/stat) over the same interval.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bench_support::{free_port, proc_cpu, status_kb};
use flowcore::ipfix::flow_record::write_flow_record;
use flowcore::ipfix::{Encoder, EncoderConfig, Layout, node_observation_domain};
use flowcore::model::{
    BiCounters, FlowEndReason, FlowKey, FlowRecord, FlowType, Interner, PolicyFields, TcpState,
    Timestamp,
};
use flowlens_bins::clock;
use flowlens_bins::config::aggregator::AggregatorFile;
use flowlens_bins::ops::Ops;
use tokio_util::sync::CancellationToken;

/// Live heap bytes (a counting global allocator), for bytes per in-flight flow.
struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        LIVE.fetch_sub(l.size() as i64, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as i64 - l.size() as i64, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn node(e: usize) -> String {
    format!("node-{e:03}")
}

/// Exporter `e`'s byte stream: R records, one per flow of its pair, as its Node sees them.
fn encode_exporter(e: usize, records: u32) -> (Vec<u8>, u64) {
    let pair = (e / 2) as u8;
    let (src_node, dst_node) = (node(e & !1), node(e | 1));
    let me = node(e);
    let mut names = Interner::new();
    let ns = names.intern("bench");
    let sn = names.intern(&src_node);
    let dn = names.intern(&dst_node);
    let labels_c = names.intern(r#"{"app":"client"}"#);
    let labels_s = names.intern(r#"{"app":"server"}"#);
    let client: Vec<_> = (0..100)
        .map(|p| names.intern(&format!("client-7c9f8d6b5-{p:05}")))
        .collect();
    let server: Vec<_> = (0..50)
        .map(|p| names.intern(&format!("server-5d8f9c7b6-{p:05}")))
        .collect();
    let now = clock::now();
    let mut enc = Encoder::new(EncoderConfig::stream(node_observation_domain(&me))).unwrap();
    for l in [Layout::AgentV4, Layout::AgentV6] {
        enc.add_template(l.template_id(), l.fields()).unwrap();
    }
    let mut out = Vec::new();
    for j in 0..records {
        let (cp, sp) = ((j % 100) as usize, (j % 50) as usize);
        let totals = BiCounters {
            packets: 10 + u64::from(j % 7),
            octets: 15_000 + u64::from(j % 1000),
            reverse_packets: 12,
            reverse_octets: 60_000,
        };
        let rec = FlowRecord {
            flow_start: Timestamp::from_secs(now.as_secs() - 60),
            flow_end: now,
            flow_end_reason: FlowEndReason::ActiveTimeout,
            key: FlowKey {
                src: IpAddr::V4(Ipv4Addr::new(10, pair, 0, 1 + cp as u8)),
                dst: IpAddr::V4(Ipv4Addr::new(10, pair, 128, 1 + sp as u8)),
                src_port: 10_000 + (j / 100) as u16,
                dst_port: 8080,
                proto: 6,
            },
            totals,
            deltas: totals,
            source_pod_namespace: Some(ns),
            source_pod_name: Some(client[cp]),
            destination_pod_namespace: Some(ns),
            destination_pod_name: Some(server[sp]),
            source_node_name: Some(sn),
            destination_node_name: Some(dn),
            destination_cluster_ip: None,
            destination_service_port: None,
            destination_service_port_name: None,
            ingress_policy: PolicyFields::default(),
            egress_policy: PolicyFields::default(),
            tcp_state: Some(TcpState::Established),
            flow_type: FlowType::InterNode,
            source_pod_labels: Some(labels_c),
            destination_pod_labels: Some(labels_s),
            cluster_id: None,
        };
        write_flow_record(&mut enc, now, &rec, &names).unwrap();
        while let Some(m) = enc.poll_transmit() {
            out.extend_from_slice(&m);
        }
    }
    enc.flush(now);
    while let Some(m) = enc.poll_transmit() {
        out.extend_from_slice(&m);
    }
    (out, u64::from(records))
}

/// The child's IPFIX collector for `--ipfix`: counts the records of every decoded message.
fn collect(addr: String, count: Arc<std::sync::atomic::AtomicU64>) {
    use flowlens_bins::transport::collector::{Collector, CollectorConfig, queue};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cfg = CollectorConfig {
            tcp: Some(addr.parse().unwrap()),
            ..CollectorConfig::default()
        };
        let (tx, mut rx) = queue(&cfg.limits);
        let c = Collector::bind(cfg, Default::default(), tx).await.unwrap();
        tokio::spawn(c.run(CancellationToken::new()));
        while let Some(m) = rx.recv().await {
            count.fetch_add(m.len() as u64, Relaxed);
        }
    });
}

/// The child: encode, connect, say "ready", wait for "go", send, report, hold the sockets open
/// until stdin closes.
fn sender(addr: &str, exporters: usize, records: u32, collect_on: Option<String>) {
    let collected = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(a) = collect_on {
        let c = collected.clone();
        std::thread::spawn(move || collect(a, c));
    }
    let t = Instant::now();
    let streams: Vec<(Vec<u8>, u64)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|w| {
                s.spawn(move || {
                    (0..exporters)
                        .filter(|e| e % 2 == w)
                        .map(|e| (e, encode_exporter(e, records)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort_by_key(|(e, _)| *e);
        all.into_iter().map(|(_, s)| s).collect()
    });
    let bytes: usize = streams.iter().map(|s| s.0.len()).sum();
    let sent: u64 = streams.iter().map(|s| s.1).sum();
    eprintln!(
        "sender: encoded {sent} records, {bytes} bytes ({:.0} B/record) in {:.1} s",
        bytes as f64 / sent as f64,
        t.elapsed().as_secs_f64()
    );
    let socks: Vec<TcpStream> = (0..exporters)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    println!("ready {sent} {bytes}");
    std::io::stdout().flush().unwrap();
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "go");
    let me = std::process::id().to_string();
    let c0 = proc_cpu(&me);
    let t = Instant::now();
    let barrier = Arc::new(std::sync::Barrier::new(exporters));
    let walls: Vec<f64> = std::thread::scope(|s| {
        let hs: Vec<_> = socks
            .iter()
            .zip(&streams)
            .map(|(sock, (buf, _))| {
                let b = barrier.clone();
                s.spawn(move || {
                    b.wait();
                    let mut w = sock;
                    for chunk in buf.chunks(64 << 10) {
                        w.write_all(chunk).unwrap();
                    }
                    t.elapsed().as_secs_f64()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let c1 = proc_cpu(&me);
    let last = walls.iter().cloned().fold(0.0, f64::max);
    let first = walls.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "sent {sent} {bytes} {last:.3} {first:.3} {:.2} {:.2}",
        c1.0 - c0.0,
        c1.1 - c0.1
    );
    std::io::stdout().flush().unwrap();
    // Keep the sessions open until the parent is done counting; "count" asks for the records
    // the IPFIX collector received.
    let mut rest = String::new();
    while stdin.read_line(&mut rest).is_ok_and(|n| n > 0) {
        if rest.trim() == "count" {
            println!("collected {}", collected.load(Relaxed));
            std::io::stdout().flush().unwrap();
        }
        rest.clear();
    }
    drop(socks);
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut exporters = 100usize;
    let mut records = 20_000u32;
    let mut send_to = None;
    let mut ipfix = false;
    let mut core_threads = 1usize;
    let mut collect_on = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().expect("a value").clone();
        match a.as_str() {
            "--exporters" => exporters = val().parse().expect("a number"),
            "--records" => records = val().parse().expect("a number"),
            "--sender" => send_to = Some(val()),
            "--ipfix" => ipfix = true,
            "--core-threads" => core_threads = val().parse().expect("a number"),
            "--collect-on" => collect_on = Some(val()),
            x => panic!("unknown argument {x}"),
        }
    }
    assert!(
        exporters >= 2 && exporters.is_multiple_of(2),
        "an even number of exporters"
    );
    if let Some(addr) = send_to {
        sender(&addr, exporters, records, collect_on);
        return;
    }

    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let total = exporters as u64 * u64::from(records);
    let collector_addr = format!("127.0.0.1:{}", free_port());
    let cfg = AggregatorFile {
        listen_addr: addr.clone(),
        external_flow_collector_addr: ipfix.then(|| format!("{collector_addr}:tcp")),
        core_threads,
        aggregator_transport_protocol: "tcp".into(),
        metrics_addr: "127.0.0.1:0".into(),
        max_flows: (total as usize).max(1_000_000),
        ..AggregatorFile::default()
    }
    .validate()
    .unwrap();
    println!(
        "# aggregator_bench: {exporters} exporters × {records} records = {total} records ({} flows, each sent by 2 exporters); TCP 127.0.0.1:{port}; {core_threads} core thread(s); sinks: {}; load before: {}",
        total / 2,
        if ipfix {
            "IPFIX over TCP to a collector in the sender process"
        } else {
            "none"
        },
        loadavg()
    );
    let ops = Ops::new("flowlens_aggregator");
    let shutdown = CancellationToken::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let agg = {
        let (ops, shutdown) = (ops.clone(), shutdown.clone());
        std::thread::spawn(move || {
            rt.block_on(flowlens_bins::aggregator::run::run(cfg, ops, shutdown))
        })
    };
    // Listening?
    let t = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "aggregator did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut child_args = vec![
        "--sender".to_string(),
        addr.clone(),
        "--exporters".into(),
        exporters.to_string(),
        "--records".into(),
        records.to_string(),
    ];
    if ipfix {
        child_args.extend(["--collect-on".into(), collector_addr.clone()]);
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(&child_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let child_pid = child.id().to_string();
    let mut cout = BufReader::new(child.stdout.take().unwrap());
    let mut cin = child.stdin.take().unwrap();
    let mut line = String::new();
    cout.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready"), "sender: {line}");
    let rss_before = status_kb("VmRSS");
    let heap_before = LIVE.load(Relaxed);
    let me = std::process::id().to_string();
    let base_in = metric(&ops.render(), "flowlens_aggregator_records_in_total");

    let (ca, cc) = (proc_cpu(&me), proc_cpu(&child_pid));
    let t0 = Instant::now();
    writeln!(cin, "go").unwrap();
    cin.flush().unwrap();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut last_change = Instant::now();
    let mut last = base_in;
    let (mut t_end, mut ca_end, mut cc_end) = (0.0, ca, cc);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let n = metric(&ops.render(), "flowlens_aggregator_records_in_total") - base_in;
        let el = t0.elapsed().as_secs_f64();
        samples.push((el, n));
        if n != last {
            last = n;
            last_change = Instant::now();
            t_end = el;
            ca_end = proc_cpu(&me);
            cc_end = proc_cpu(&child_pid);
        }
        if n >= total || last_change.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let received = last;
    line.clear();
    cout.read_line(&mut line).unwrap();
    let sent: Vec<&str> = line.split_whitespace().collect();
    if ipfix {
        // Every aggregated record written by the IPFIX sink, and received by the collector.
        let out = metric(&ops.render(), "flowlens_aggregator_records_out_total");
        let t_out = Instant::now();
        let mut written = 0;
        while t_out.elapsed() < Duration::from_secs(60) {
            written = metric(
                &ops.render(),
                "flowlens_aggregator_sink_records_out_total{sink=\"ipfix\"}",
            );
            if written >= out {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (wall, ca_out) = (t0.elapsed().as_secs_f64(), proc_cpu(&me));
        let mut collected = 0;
        for _ in 0..3000 {
            writeln!(cin, "count").unwrap();
            cin.flush().unwrap();
            let mut l = String::new();
            cout.read_line(&mut l).unwrap();
            collected = l
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if collected >= written {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        println!(
            "ipfix sink: records_out {out}, written {written}, received by the collector {collected}, last written {wall:.2} s after go (records in + out: aggregator CPU user {:.2} + sys {:.2} s); dropped {}",
            ca_out.0 - ca.0,
            ca_out.1 - ca.1,
            metric(&ops.render(), "flowlens_aggregator_sink_dropped_total"),
        );
    }
    let first_in = samples.iter().find(|s| s.1 > 0).map_or(0.0, |s| s.0 - 0.02);
    let dur = t_end - first_in.max(0.0);
    let (agg_u, agg_s) = (ca_end.0 - ca.0, ca_end.1 - ca.1);
    let (snd_u, snd_s) = (cc_end.0 - cc.0, cc_end.1 - cc.1);
    let text = ops.render();
    // Let the collector's queues drain to the core before counting the heap.
    std::thread::sleep(Duration::from_millis(300));
    let heap_after = LIVE.load(Relaxed);
    let in_flight = metric(&ops.render(), "flowlens_aggregator_flows_in_flight");
    println!(
        "aggregator live heap: {} MiB before go, {} MiB with {in_flight} flows in flight = {:.0} B per in-flight flow (heap growth / flows)",
        heap_before >> 20,
        heap_after >> 20,
        (heap_after - heap_before) as f64 / in_flight.max(1) as f64
    );
    println!(
        "records sent {total}, records_in {received}, loss {} ({:.4} %); first record in at {first_in:.2} s, last at {t_end:.2} s after go",
        total as i64 - received as i64,
        100.0 * (total as f64 - received as f64) / total as f64
    );
    println!(
        "throughput: {:.0} records/s (records_in over {dur:.2} s from first to last); over the whole run from go: {:.0} records/s",
        received as f64 / dur,
        received as f64 / t_end
    );
    println!(
        "aggregator process CPU: user {agg_u:.2} s + sys {agg_s:.2} s = {:.2} s ({:.0} records per aggregator CPU-second); sender process CPU: user {snd_u:.2} + sys {snd_s:.2} s; sender: {}",
        agg_u + agg_s,
        received as f64 / (agg_u + agg_s),
        sent.join(" ")
    );
    println!(
        "correlated {}, uncorrelated {}, records_out {}, dropped {}, flows_in_flight {}; aggregator VmRSS {} MiB before go, {} MiB after, VmHWM {} MiB; load after: {}",
        metric(&text, "flowlens_aggregator_correlated_total"),
        metric(&text, "flowlens_aggregator_uncorrelated_total"),
        metric(&text, "flowlens_aggregator_records_out_total"),
        metric(&text, "flowlens_aggregator_records_dropped_total"),
        metric(&text, "flowlens_aggregator_flows_in_flight"),
        rss_before / 1024,
        status_kb("VmRSS") / 1024,
        status_kb("VmHWM") / 1024,
        loadavg(),
    );
    for l in text
        .lines()
        .filter(|l| l.starts_with("flowlens_aggregator_ipfix_collect") && !l.ends_with(" 0"))
    {
        println!("  {l}");
    }
    let per_sec: Vec<String> = samples
        .windows(2)
        .step_by(25)
        .map(|w| format!("{:.1}s:{}", w[0].0, w[0].1))
        .collect();
    println!("records_in samples (every ~0.5 s): {}", per_sec.join(" "));
    drop(cin);
    let _ = child.wait();
    shutdown.cancel();
    let _ = agg.join();
}
