//! A small, deterministic capture of flowlens IPFIX traffic: two agents and one aggregator, over
//! UDP and TCP (with a SYN and one segment out of order), IPv4 and IPv6 records. It is the README's
//! first command (`flowlens decode bins/samples/flows.pcap`) and a fixture for the decode tests.

use std::time::Duration;

use etherparse::PacketBuilder;
use flowcore::ipfix::{Encoder, EncoderConfig, Layout};
use flowcore::model::Timestamp;
use pcap_file::pcap::{PcapPacket, PcapWriter};

const T0: u64 = 1_764_000_000;

use flowcore::ipfix::example::write_example_record;

fn messages(cfg: EncoderConfig, layouts: &[Layout], n: u64) -> Vec<bytes::Bytes> {
    let mut enc = Encoder::new(cfg).expect("valid encoder config");
    for &l in layouts {
        enc.add_template(l.template_id(), l.fields())
            .expect("layouts are valid templates");
    }
    let now = Timestamp::from_secs(T0);
    for i in 0..n {
        write_example_record(&mut enc, now, layouts[(i as usize) % layouts.len()], i)
            .expect("example records fit their layout");
    }
    enc.flush(now);
    std::iter::from_fn(|| enc.poll_transmit()).collect()
}

/// The agents' messages of the capture (IPFIX over UDP from node-a), in order.
pub fn agent_messages() -> Vec<bytes::Bytes> {
    messages(
        EncoderConfig::datagram(0x0a0a, 576, Duration::from_secs(60)),
        &[Layout::AgentV4, Layout::AgentV6],
        12,
    )
}

/// The capture, as pcap bytes (Ethernet link type).
pub fn capture() -> Vec<u8> {
    let mac_a = [2, 0, 0, 0, 0, 1];
    let mac_b = [2, 0, 0, 0, 0, 2];
    let mut frames: Vec<Vec<u8>> = Vec::new();
    // Agent on node-a: UDP, small datagrams.
    for m in agent_messages() {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2(mac_a, mac_b)
            .ipv4([192, 168, 49, 2], [192, 168, 49, 9], 64)
            .udp(50123, 4739);
        b.write(&mut f, &m).expect("writing to a Vec");
        frames.push(f);
    }
    // Aggregator: TCP with SYN, then the stream in segments, the second and third swapped.
    let stream: Vec<u8> = messages(
        EncoderConfig::stream(0x0b0b),
        &[Layout::AggregatedV4, Layout::AggregatedV6],
        6,
    )
    .concat();
    let isn = 1_000_000u32;
    let mut syn = Vec::new();
    PacketBuilder::ethernet2(mac_b, mac_a)
        .ipv4([192, 168, 49, 9], [192, 168, 49, 20], 64)
        .tcp(41000, 4739, isn, 64240)
        .syn()
        .write(&mut syn, &[])
        .expect("writing to a Vec");
    frames.push(syn);
    let mut segs: Vec<Vec<u8>> = Vec::new();
    let mut off = 0usize;
    for chunk in stream.chunks(700) {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(mac_b, mac_a)
            .ipv4([192, 168, 49, 9], [192, 168, 49, 20], 64)
            .tcp(41000, 4739, isn.wrapping_add(1 + off as u32), 64240)
            .ack(1)
            .write(&mut f, chunk)
            .expect("writing to a Vec");
        off += chunk.len();
        segs.push(f);
    }
    if segs.len() > 2 {
        segs.swap(1, 2);
    }
    frames.extend(segs);
    let mut w = PcapWriter::new(Vec::new()).expect("writing to a Vec");
    for (i, f) in frames.iter().enumerate() {
        let ts = Duration::from_millis(T0 * 1000 + 10 * i as u64);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f))
            .expect("writing to a Vec");
    }
    w.into_writer()
}
