//! Fuzzes the IPFIX decoder and stream framing: any bytes, as one datagram and as a TCP stream
//! split at an input-chosen point, must give records or typed errors — never a panic, a hang or
//! an unbounded allocation. Run: `cd flowcore/fuzz && cargo fuzz run decode -- -max_total_time=600`.
#![no_main]

use flowcore::ipfix::{Decoder, DecoderConfig, StreamDeframer};
use flowcore::model::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Timestamp::from_secs(1_764_000_000);
    let mut dec = Decoder::new(DecoderConfig { max_templates: 64, ..Default::default() });
    let mut sink = 0u64;
    let _ = dec.decode(now, data, |r| {
        for f in r.fields() {
            sink = sink.wrapping_add(format!("{:?}", f.value()).len() as u64);
        }
    });
    // The same bytes as a stream of messages, split in two chunks.
    let split = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    let mut d = StreamDeframer::new();
    let mut stream_dec = Decoder::new(DecoderConfig::default());
    for chunk in [&data[..split], &data[split..]] {
        d.push(chunk);
        while let Ok(Some(m)) = d.next_message() {
            let _ = stream_dec.decode(now, m, |r| {
                for f in r.fields() {
                    let _ = f.value();
                }
            });
        }
    }
    std::hint::black_box(sink);
});
