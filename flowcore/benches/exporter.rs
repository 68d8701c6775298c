//! FlowExporter throughput and footprint: `handle_dump` of a 1 M-entry conntrack table with 1 %
//! and with 100 % of the entries' counters changed since the previous dump, and heap bytes per
//! tracked connection (counting global allocator).
//!
//! `cargo bench -p flowcore --bench exporter -- --warm-up-time 1 --measurement-time 3`
//!
//! The table: 500 Pods of the local Node, each with 2000 connections to Pods of another Node
//! (an inter-Node workload; every entry is tracked). Time advances 1 ms per dump so no export
//! falls due: the figure is the dump path itself (lookup, identity check, counter update, timer
//! check, sweep).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use flowcore::exporter::{ExporterConfig, FlowExporter};
use flowcore::metadata::{MetadataUpdate, NodeInfo, PodInfo, PodPhase};
use flowcore::model::{ConntrackEntry, Counters, TcpState, Timestamp, Tuple};
use flowcore::policy::{LabelSelector, Labels, NetworkPolicy, Peer, PolicyTypes, Rule};

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as i64 - l.size() as i64, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: usize = 1_000_000;
const PODS: usize = 500;
const T0: Timestamp = Timestamp::from_secs(1_764_000_000);

fn v4(x: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(x))
}

fn exporter() -> FlowExporter {
    let mut ex = FlowExporter::new(ExporterConfig {
        node_name: "n1".into(),
        ..ExporterConfig::default()
    });
    for (name, addr, cidr) in [
        ("n1", 0xc0a8_0001, "10.0.0.0/16"),
        ("n2", 0xc0a8_0002, "10.1.0.0/16"),
    ] {
        ex.handle_metadata(
            T0,
            MetadataUpdate::Node(NodeInfo {
                name: name.into(),
                addresses: vec![v4(addr)],
                pod_cidrs: vec![cidr.parse().unwrap()],
            }),
        );
    }
    for p in 0..PODS as u32 {
        ex.handle_metadata(
            T0,
            MetadataUpdate::Pod(PodInfo {
                uid: format!("uid-{p}"),
                namespace: "bench".into(),
                name: format!("client-{p}"),
                node: "n1".into(),
                ips: vec![v4(0x0a00_0000 + 1 + p)],
                labels: Labels::new([("app", "client")]),
                phase: PodPhase::Running,
                ..PodInfo::default()
            }),
        );
    }
    ex
}

fn table() -> Vec<ConntrackEntry> {
    (0..N as u32)
        .map(|i| {
            let src = v4(0x0a00_0000 + 1 + i % PODS as u32);
            let dst = v4(0x0a01_0000 + 1 + (i * 7) % 4000);
            let sport = 10_000 + (i / PODS as u32) as u16;
            ConntrackEntry {
                orig: Tuple {
                    src,
                    dst,
                    src_port: sport,
                    dst_port: 8080,
                    proto: 6,
                },
                reply: Tuple {
                    src: dst,
                    dst: src,
                    src_port: 8080,
                    dst_port: sport,
                    proto: 6,
                },
                id: i + 1,
                start: Some(T0),
                tcp_state: Some(TcpState::Established),
                orig_counters: Some(Counters {
                    packets: 1,
                    bytes: 100,
                }),
                reply_counters: Some(Counters {
                    packets: 1,
                    bytes: 100,
                }),
                ..ConntrackEntry::default()
            }
        })
        .collect()
}

/// Deterministic Fisher–Yates (xorshift), so runs compare.
fn shuffle(v: &mut [ConntrackEntry]) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

fn bump(entries: &mut [ConntrackEntry], every: usize, round: usize) {
    for e in entries.iter_mut().skip(round % every).step_by(every) {
        if let Some(c) = e.orig_counters.as_mut() {
            c.packets += 1;
            c.bytes += 100;
        }
    }
}

fn dump(c: &mut Criterion) {
    let mut g = c.benchmark_group("handle_dump");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    for (name, every, shuffled) in [
        ("1M_entries_1pct_changed", 100, false),
        ("1M_entries_all_changed", 1, false),
        ("1M_entries_1pct_changed_shuffled", 100, true),
    ] {
        let mut entries = table();
        let mut ex = exporter();
        let mut now = T0 + Duration::from_secs(1);
        ex.handle_dump(now, &entries);
        if shuffled {
            // The kernel lists entries in its own hash order, not in the order the store met
            // them: visit the slab at random.
            shuffle(&mut entries);
        }
        assert_eq!(ex.stats().tracked, N);
        let mut round = 0;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    bump(&mut entries, every, round);
                    now = now + Duration::from_millis(1);
                    let t = Instant::now();
                    ex.handle_dump(now, black_box(&entries));
                    total += t.elapsed();
                }
                total
            })
        });
        assert_eq!(ex.stats().tracked, N);
        assert_eq!(ex.stats().records_polled, 0);
    }
    g.finish();
}

/// Not a criterion measurement: one-off figures printed once (first dump, heap per connection).
fn footprint() {
    let entries = table();
    let before = LIVE.load(Relaxed);
    let mut ex = exporter();
    let meta_only = LIVE.load(Relaxed) - before;
    let t = Instant::now();
    ex.handle_dump(T0 + Duration::from_secs(1), &entries);
    let first = t.elapsed();
    let after = LIVE.load(Relaxed) - before;
    let per_conn = (after - meta_only) as f64 / N as f64;
    let st = ex.stats();
    println!(
        "exporter footprint: {N} tracked connections, first dump (all new) {:.0} ms = {:.2} M entries/s; \
         heap {} B total, {} B metadata; {per_conn:.1} B per tracked connection \
         (store {} B = {:.1} B/conn; size_of Conn = 168 B)",
        first.as_secs_f64() * 1e3,
        N as f64 / first.as_secs_f64() / 1e6,
        after,
        meta_only,
        st.store_heap_bytes,
        st.store_heap_bytes as f64 / N as f64,
    );
    // Steady state allocates nothing per dump.
    let mut entries = entries;
    bump(&mut entries, 1, 0);
    let before = LIVE.load(Relaxed);
    ex.handle_dump(T0 + Duration::from_secs(2), &entries);
    println!(
        "heap change over a steady-state dump: {} B",
        LIVE.load(Relaxed) - before
    );
    // CPU time rather than wall time: on a shared machine wall time measures the neighbours.
    for (name, every) in [
        ("1% changed", 100),
        ("all changed", 1),
        ("1% changed, shuffled", 100),
    ] {
        if name.ends_with("shuffled") {
            shuffle(&mut entries);
        }
        let (c0, w0) = (cpu_secs(), Instant::now());
        const DUMPS: usize = 10;
        for round in 0..DUMPS {
            bump(&mut entries, every, round);
            let now = T0 + Duration::from_secs(3) + Duration::from_millis(round as u64);
            ex.handle_dump(now, &entries);
        }
        let (cpu, wall) = (cpu_secs() - c0, w0.elapsed().as_secs_f64());
        println!(
            "handle_dump {name}: {:.2} M entries per CPU-second ({:.2} M/s wall), {DUMPS} dumps of {N}",
            (DUMPS * N) as f64 / cpu / 1e6,
            (DUMPS * N) as f64 / wall / 1e6,
        );
    }
    drop(black_box(ex));
}

/// This process's user + system CPU seconds (Linux `/proc/self/stat`, 100 Hz ticks); the bench
/// is single-threaded.
fn cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // After the parenthesised command name, utime and stime are the 12th and 13th fields.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// One export round: every connection idle-due at once, `handle_timeout` (scan + queue), then
/// `poll_record` + `ack` of all 1 M records (enrichment and policy evaluation included).
fn export_round(c: &mut Criterion) {
    let mut g = c.benchmark_group("export_round");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);
    let mut entries = table();
    let mut ex = exporter();
    ex.handle_metadata(T0, MetadataUpdate::Policy(egress_policy()));
    let mut now = T0 + Duration::from_secs(1);
    ex.handle_dump(now, &entries);
    let mut round = 0;
    g.bench_function("1M_records_timeout_poll_ack", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                bump(&mut entries, 1, round);
                now = now + Duration::from_secs(1);
                ex.handle_dump(now, &entries);
                now = now + Duration::from_secs(16);
                let t = Instant::now();
                ex.handle_timeout(now);
                let mut n = 0;
                while let Some(x) = ex.poll_record(now) {
                    black_box(&x.record);
                    let _ = ex.ack(x.id);
                    n += 1;
                }
                total += t.elapsed();
                assert_eq!(n, N);
            }
            total
        })
    });
    g.finish();
}

/// The client Pods may talk to Pods of their own namespace (egress isolated).
fn egress_policy() -> NetworkPolicy {
    NetworkPolicy {
        namespace: "bench".into(),
        name: "clients-egress".into(),
        pod_selector: LabelSelector::labels([("app", "client")]),
        ingress: vec![],
        egress: vec![Rule {
            peers: vec![Peer::Pods {
                pod_selector: Some(LabelSelector::all()),
                namespace_selector: None,
            }],
            ports: vec![],
        }],
        policy_types: PolicyTypes {
            ingress: false,
            egress: true,
        },
    }
}

criterion_group!(benches, dump, export_round);

fn main() {
    footprint();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
