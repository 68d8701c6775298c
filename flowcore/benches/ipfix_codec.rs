//! IPFIX codec throughput and heap use.
//!
//! `cargo bench -p flowcore --bench ipfix_codec` prints criterion's records/s for encode and
//! decode of the agent layout (~40 IEs) and the aggregated layout (66 IEs) with realistic string
//! lengths, then a line per case with heap allocations and bytes per record in steady state,
//! measured with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use criterion::{Criterion, Throughput, criterion_group};
use flowcore::ipfix::example::write_example_record;
use flowcore::ipfix::{Decoder, DecoderConfig, Encoder, EncoderConfig, FieldValue, Layout};
use flowcore::model::Timestamp;

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(l.size() as u64, Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: AllocLayout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(n as u64, Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const BATCH: u64 = 1000;
const NOW: Timestamp = Timestamp::from_secs(1_764_000_000);

fn encoder(layout: Layout) -> Encoder {
    let mut enc = Encoder::new(EncoderConfig::stream(1)).unwrap();
    enc.add_template(layout.template_id(), layout.fields())
        .unwrap();
    enc
}

/// The field values of one example record, as an exporter holds them before encoding.
fn example_values(layout: Layout) -> Vec<FieldValue<'static>> {
    let msgs = messages(layout);
    let (tmpl, first) = (&msgs[0], &msgs[1]);
    let dec: &'static mut Decoder = Box::leak(Box::new(Decoder::new(DecoderConfig::default())));
    dec.decode(NOW, tmpl, |_| {}).unwrap();
    let mut vals = Vec::new();
    dec.decode(NOW, first, |r| {
        if vals.is_empty() {
            vals = r
                .fields()
                .map(|f| match f.value() {
                    FieldValue::String(b) => {
                        FieldValue::String(Box::leak(b.to_vec().into_boxed_slice()))
                    }
                    FieldValue::Octets(b) => {
                        FieldValue::Octets(Box::leak(b.to_vec().into_boxed_slice()))
                    }
                    v => leak_scalar(v),
                })
                .collect();
        }
    })
    .unwrap();
    vals
}

/// A scalar value borrows nothing; give it the `'static` lifetime.
fn leak_scalar(v: FieldValue<'_>) -> FieldValue<'static> {
    match v {
        FieldValue::Unsigned(x) => FieldValue::Unsigned(x),
        FieldValue::Signed(x) => FieldValue::Signed(x),
        FieldValue::Float(x) => FieldValue::Float(x),
        FieldValue::Bool(x) => FieldValue::Bool(x),
        FieldValue::Mac(x) => FieldValue::Mac(x),
        FieldValue::Ipv4(x) => FieldValue::Ipv4(x),
        FieldValue::Ipv6(x) => FieldValue::Ipv6(x),
        FieldValue::DateTimeSeconds(x) => FieldValue::DateTimeSeconds(x),
        FieldValue::DateTimeMillis(x) => FieldValue::DateTimeMillis(x),
        FieldValue::DateTimeMicros(x) => FieldValue::DateTimeMicros(x),
        FieldValue::DateTimeNanos(x) => FieldValue::DateTimeNanos(x),
        FieldValue::String(_) | FieldValue::Octets(_) => FieldValue::Octets(&[]),
    }
}

fn encode_batch(enc: &mut Encoder, layout: Layout, vals: &[FieldValue<'_>]) -> u64 {
    let mut bytes = 0;
    for _ in 0..BATCH {
        {
            let mut w = enc.record(NOW, layout.template_id()).unwrap();
            for v in vals {
                w.value(v);
            }
            w.finish().unwrap();
        }
        // Take finished messages as a transport would, so buffers are recycled.
        while let Some(m) = enc.poll_transmit() {
            bytes += m.len() as u64;
        }
    }
    enc.flush(NOW);
    while let Some(m) = enc.poll_transmit() {
        bytes += m.len() as u64;
    }
    bytes
}

fn messages(layout: Layout) -> Vec<bytes::Bytes> {
    let mut enc = encoder(layout);
    for i in 0..BATCH {
        write_example_record(&mut enc, NOW, layout, i).unwrap();
    }
    enc.flush(NOW);
    std::iter::from_fn(|| enc.poll_transmit()).collect()
}

/// Decodes and reads every field's value, as a collector converting records would.
fn decode_batch(dec: &mut Decoder, msgs: &[bytes::Bytes]) -> u64 {
    let mut acc = 0u64;
    for m in msgs {
        dec.decode(NOW, m, |r| {
            for f in r.fields() {
                acc = acc.wrapping_add(match f.value() {
                    FieldValue::Unsigned(v) => v,
                    FieldValue::String(s) => s.len() as u64,
                    FieldValue::Ipv4(a) => a.to_bits() as u64,
                    _ => 1,
                });
            }
        })
        .unwrap();
    }
    acc
}

fn bench(c: &mut Criterion) {
    for (name, layout) in [
        ("agent_v4", Layout::AgentV4),
        ("aggregated_v4", Layout::AggregatedV4),
        ("aggregated_v6", Layout::AggregatedV6),
    ] {
        let mut g = c.benchmark_group(format!("ipfix/{name}"));
        g.throughput(Throughput::Elements(BATCH));
        let mut enc = encoder(layout);
        let vals = example_values(layout);
        g.bench_function("encode", |b| {
            b.iter(|| black_box(encode_batch(&mut enc, layout, &vals)))
        });
        let msgs = messages(layout);
        let mut dec = Decoder::new(DecoderConfig::default());
        decode_batch(&mut dec, &msgs);
        g.bench_function("decode", |b| {
            b.iter(|| black_box(decode_batch(&mut dec, &msgs)))
        });
        g.finish();
    }
}

/// Heap use per record once warm: one pass to warm up, then count over 100 batches.
fn heap_report() {
    for (name, layout) in [
        ("agent_v4", Layout::AgentV4),
        ("aggregated_v4", Layout::AggregatedV4),
        ("aggregated_v6", Layout::AggregatedV6),
    ] {
        let mut enc = encoder(layout);
        let vals = example_values(layout);
        encode_batch(&mut enc, layout, &vals);
        let (a0, b0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
        let mut wire = 0;
        for _ in 0..100 {
            wire += encode_batch(&mut enc, layout, &vals);
        }
        let n = (100 * BATCH) as f64;
        let (a1, b1) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
        println!(
            "heap {name} encode: {:.4} allocations/record, {:.1} bytes/record ({:.0} wire bytes/record, {} messages)",
            (a1 - a0) as f64 / n,
            (b1 - b0) as f64 / n,
            wire as f64 / n,
            enc.stats().messages
        );
        let msgs = messages(layout);
        let mut dec = Decoder::new(DecoderConfig::default());
        decode_batch(&mut dec, &msgs);
        let (a0, b0) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
        for _ in 0..100 {
            black_box(decode_batch(&mut dec, &msgs));
        }
        let (a1, b1) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
        println!(
            "heap {name} decode: {:.4} allocations/record, {:.1} bytes/record",
            (a1 - a0) as f64 / n,
            (b1 - b0) as f64 / n
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    heap_report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
