//! Aggregator throughput in process: agent records decoded from IPFIX, correlated, and the
//! aggregated records encoded again — the aggregator's whole per-record path minus sockets.
//! Then heap bytes per in-flight flow.
//!
//! `cargo bench -p flowcore --bench aggregator`

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group};
use flowcore::aggregator::{Aggregator, AggregatorConfig, ExporterId};
use flowcore::ipfix::{Decoder, DecoderConfig, Encoder, EncoderConfig, Layout};
use flowcore::model::Timestamp;

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);

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
static A: Counting = Counting;

const T0: Timestamp = Timestamp::from_secs(1_764_000_000);
const PODS: usize = 2000;

/// Agent records (AgentV4 layout) for flows `range`: the source Node's half if `source`, else
/// the destination Node's, with realistic names.
fn agent_messages(range: std::ops::Range<u32>, source: bool, domain: u32) -> Vec<bytes::Bytes> {
    agent_messages_with(range, source, domain, false)
}

/// `distinct`: every flow its own Pod pair (a million pairs out of 1,000 × 1,000 names), so no
/// two flows share their metadata — what a hostile exporter can make the aggregator hold.
fn agent_messages_with(
    range: std::ops::Range<u32>,
    source: bool,
    domain: u32,
    distinct: bool,
) -> Vec<bytes::Bytes> {
    let mut enc = Encoder::new(EncoderConfig::stream(domain)).unwrap();
    enc.add_template(Layout::AgentV4.template_id(), Layout::AgentV4.fields())
        .unwrap();
    let names: Vec<String> = (0..PODS)
        .map(|p| format!("service-{:03}-7c9f8d6b5-{:05x}", p % 300, p * 7919))
        .collect();
    for i in range {
        let (sp, dp) = if distinct {
            (i as usize % 1000, 1000 + (i as usize / 1000) % 1000)
        } else {
            (i as usize % PODS, (i as usize * 31 + 7) % PODS)
        };
        // Every flow its own 5-tuple: the client address counts up.
        let src = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let dst = IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + dp as u32));
        let t = 100 + i as u64;
        let mut w = enc.record(T0, Layout::AgentV4.template_id()).unwrap();
        w.time(T0)
            .time(T0 + Duration::from_secs(5))
            .uint(2)
            .uint(10000 + (i % 50000) as u64)
            .uint(8080)
            .uint(6);
        w.uint(t)
            .uint(t * 100)
            .uint(t)
            .uint(t * 100)
            .ip(src)
            .ip(dst);
        w.uint(t).uint(t * 90).uint(t).uint(t * 90);
        let (s, d) = if source {
            (names[sp].as_str(), "")
        } else {
            ("", names[dp].as_str())
        };
        w.string(s)
            .string(if source { "shop" } else { "" })
            .string(if source { "node-a" } else { "" });
        w.string(d)
            .string(if source { "" } else { "shop" })
            .string(if source { "" } else { "node-b" });
        w.ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)).uint(0).string("");
        w.string(if source { "" } else { "allow-frontend" })
            .string(if source { "" } else { "shop" })
            .uint(1)
            .string("ingress-0")
            .uint(1);
        w.string(if source { "allow-egress" } else { "" })
            .string("shop")
            .uint(1)
            .string("egress-0")
            .uint(1);
        w.string("ESTABLISHED")
            .uint(2)
            .string(r#"{"app":"frontend"}"#)
            .string(r#"{"app":"catalog"}"#);
        w.finish().unwrap();
    }
    enc.flush(T0);
    std::iter::from_fn(|| enc.poll_transmit()).collect()
}

fn run(src: &[bytes::Bytes], dst: &[bytes::Bytes], out: &mut Encoder) -> u64 {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let (a, b) = (
        ExporterId {
            addr: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)),
            domain: 1,
        },
        ExporterId {
            addr: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2)),
            domain: 2,
        },
    );
    let mut dec_a = Decoder::new(DecoderConfig::default());
    let mut dec_b = Decoder::new(DecoderConfig::default());
    let mut n = 0;
    for i in 0..src.len().max(dst.len()) {
        if let Some(m) = src.get(i) {
            dec_a
                .decode(T0, m, |r| agg.handle_record(T0, a, &r).unwrap())
                .unwrap();
        }
        if let Some(m) = dst.get(i) {
            dec_b
                .decode(T0, m, |r| agg.handle_record(T0, b, &r).unwrap())
                .unwrap();
        }
        while let Some(r) = agg.poll_record() {
            r.write_ipfix(out, T0).unwrap();
            n += 1;
        }
        while let Some(m) = out.poll_transmit() {
            black_box(m);
        }
    }
    n
}

fn out_encoder() -> Encoder {
    let mut out = Encoder::new(EncoderConfig::stream(9)).unwrap();
    out.add_template(
        Layout::AggregatedV4.template_id(),
        Layout::AggregatedV4.fields(),
    )
    .unwrap();
    out
}

fn bench(c: &mut Criterion) {
    const FLOWS: u32 = 20_000;
    let src = agent_messages(0..FLOWS, true, 1);
    let dst = agent_messages(0..FLOWS, false, 2);
    let mut out = out_encoder();
    assert_eq!(
        run(&src, &dst, &mut out),
        FLOWS as u64,
        "every pair correlates"
    );
    let mut g = c.benchmark_group("aggregator");
    g.throughput(Throughput::Elements(2 * FLOWS as u64));
    g.sample_size(20);
    g.bench_function("decode_correlate_encode", |b| {
        b.iter(|| black_box(run(&src, &dst, &mut out)))
    });
    g.finish();

    // The production encode path alone: typed writes of an aggregated record (67 IEs).
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let mut dec = Decoder::new(DecoderConfig::default());
    let ex = ExporterId {
        addr: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)),
        domain: 1,
    };
    for m in &src[..2] {
        dec.decode(T0, m, |r| agg.handle_record(T0, ex, &r).unwrap())
            .unwrap();
    }
    agg.flush_all(T0);
    let rec = agg.poll_record().unwrap();
    let mut g = c.benchmark_group("aggregated_record");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("write_ipfix", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                rec.write_ipfix(&mut out, T0).unwrap();
                while let Some(m) = out.poll_transmit() {
                    black_box(m);
                }
            }
        })
    });
    g.finish();
}

/// Heap per in-flight flow: 1 M inter-Node flows whose partner has not arrived yet (one Node's
/// side each), then 1 M correlated flows (both sides, exported, in flight until their next
/// export) — the end-to-end bench's case.
fn memory_report() {
    const FLOWS: u32 = 1_000_000;
    let ex = |n: u8| ExporterId {
        addr: IpAddr::V4(Ipv4Addr::new(192, 168, 0, n)),
        domain: n as u32,
    };
    for (both, distinct) in [(false, false), (true, false), (true, true)] {
        let src = agent_messages_with(0..FLOWS, true, 1, distinct);
        let dst = if both {
            agent_messages_with(0..FLOWS, false, 2, distinct)
        } else {
            Vec::new()
        };
        let before = LIVE.load(Relaxed);
        let mut agg = Aggregator::new(AggregatorConfig {
            max_flows: 2_000_000,
            ..Default::default()
        });
        let mut dec_a = Decoder::new(DecoderConfig::default());
        let mut dec_b = Decoder::new(DecoderConfig::default());
        for (i, m) in src.iter().enumerate() {
            dec_a
                .decode(T0, m, |r| agg.handle_record(T0, ex(1), &r).unwrap())
                .unwrap();
            if let Some(m) = dst.get(i) {
                dec_b
                    .decode(T0, m, |r| agg.handle_record(T0, ex(2), &r).unwrap())
                    .unwrap();
            }
            while agg.poll_record().is_some() {}
        }
        let after = LIVE.load(Relaxed);
        println!(
            "aggregator memory ({}): {} flows in flight, {:.0} heap bytes per flow ({:.1} MiB)",
            match (both, distinct) {
                (true, false) => "correlated, both sides",
                (true, true) => "correlated, every flow its own Pod pair",
                _ => "awaiting the partner, one side",
            },
            agg.len(),
            (after - before) as f64 / agg.len() as f64,
            (after - before) as f64 / (1 << 20) as f64
        );
        if both {
            // Every flow finished: what its tombstone costs, then what is left once they expired
            // (everything but the tables' spare capacity: the aggregator gives a flood back).
            let n = agg.len();
            agg.flush_all(T0);
            while agg.poll_record().is_some() {}
            // The emptied flow table's slots are given back at the next tidy-up (every 5 s).
            agg.handle_timeout(T0 + Duration::from_secs(6));
            let tombs = LIVE.load(Relaxed);
            agg.handle_timeout(T0 + Duration::from_secs(86_400));
            let expired = LIVE.load(Relaxed);
            println!(
                "aggregator memory: {n} tombstones, {:.0} heap bytes each ({:.1} MiB); after they expire {:.1} MiB",
                (tombs - before) as f64 / n as f64,
                (tombs - before) as f64 / (1 << 20) as f64,
                (expired - before) as f64 / (1 << 20) as f64
            );
        }
        black_box(agg);
    }
}

criterion_group!(benches, bench);

fn main() {
    memory_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
