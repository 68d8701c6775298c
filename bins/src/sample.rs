//! A small, deterministic capture of flowlens IPFIX traffic: two agents and one aggregator, over
//! UDP and TCP (with a SYN and one segment out of order), IPv4 and IPv6 records. It is the README's
//! first command (`flowlens decode bins/samples/flows.pcap`) and a fixture for the decode tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use etherparse::PacketBuilder;
use flowcore::ie::DataType;
use flowcore::ipfix::{Encoder, EncoderConfig, Layout};
use flowcore::model::Timestamp;
use pcap_file::pcap::{PcapPacket, PcapWriter};

const T0: u64 = 1_764_000_000;

const PODS: &[(&str, &str, &str)] = &[
    ("frontend-7c9f8d6b5-x2k4p", "shop", "node-a"),
    ("catalog-5d8f9c7b6-qwz9r", "shop", "node-b"),
    ("orders-6b7d9f8c5-m3n4p", "shop", "node-b"),
    ("coredns-5d78c9869d-abcde", "kube-system", "node-a"),
];

/// Writes record `i` of `layout` with plausible values chosen by field name and type.
fn write_record(enc: &mut Encoder, now: Timestamp, layout: Layout, i: u64) {
    let v6 = matches!(layout, Layout::AgentV6 | Layout::AggregatedV6);
    let (s, d) = (PODS[(i % 2) as usize], PODS[1 + (i % 3) as usize]);
    let ip = |host: u8| -> IpAddr {
        if v6 {
            Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, host as u16).into()
        } else {
            Ipv4Addr::new(10, 244, 0, host).into()
        }
    };
    let Ok(mut w) = enc.record(now, layout.template_id()) else {
        return;
    };
    for f in layout.fields() {
        let name = f.name.unwrap_or_default();
        match f.data_type {
            DataType::DateTimeSeconds if name == "flowStartSeconds" => {
                w.time(Timestamp::from_secs(T0 - 120 + i))
            }
            DataType::DateTimeSeconds => w.time(now),
            DataType::Ipv4Address | DataType::Ipv6Address => match name {
                n if n.starts_with("source") => w.ip(ip(10 + (i % 2) as u8)),
                n if n.contains("Cluster") => w.ip(if v6 {
                    Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 20).into()
                } else {
                    Ipv4Addr::new(10, 96, 0, 20).into()
                }),
                n if n.starts_with("originalExporter") => w.ip(if v6 {
                    Ipv6Addr::new(0xfd00, 0x1, 0, 0, 0, 0, 0, 2).into()
                } else {
                    Ipv4Addr::new(192, 168, 49, 2).into()
                }),
                _ => w.ip(ip(20 + (i % 3) as u8)),
            },
            DataType::String => w.string(match name {
                "sourcePodName" => s.0,
                "sourcePodNamespace" | "destinationPodNamespace" => s.1,
                "sourceNodeName" => s.2,
                "destinationPodName" => d.0,
                "destinationNodeName" => d.2,
                "destinationServicePortName" => "shop/catalog:http",
                "ingressNetworkPolicyName" => "allow-frontend",
                "ingressNetworkPolicyNamespace" => "shop",
                "ingressNetworkPolicyRuleName" => "ingress-0",
                "tcpState" => "ESTABLISHED",
                "sourcePodLabels" => r#"{"app":"frontend"}"#,
                "destinationPodLabels" => r#"{"app":"catalog"}"#,
                "clusterId" => "demo-cluster",
                _ => "",
            }),
            _ => w.uint(match name {
                "flowEndReason" => 2,
                "sourceTransportPort" => 40000 + i,
                "destinationTransportPort" | "destinationServicePort" => 8080,
                "protocolIdentifier" => 6,
                "flowType" => 2,
                "ingressNetworkPolicyType" | "ingressNetworkPolicyRuleAction" => 1,
                "egressNetworkPolicyType" | "egressNetworkPolicyRuleAction" => 0,
                "originalObservationDomainId" => 0x0a0b,
                n if n.contains("Throughput") || n == "throughput" => 80_000 + 1000 * i,
                n if n.contains("Octet") || n.contains("octet") => 15_000 * (i + 1),
                n if n.contains("Packet") || n.contains("packet") => 12 * (i + 1),
                _ => 0,
            }),
        };
    }
    let _ = w.finish();
}

fn messages(cfg: EncoderConfig, layouts: &[Layout], n: u64) -> Vec<bytes::Bytes> {
    let mut enc = Encoder::new(cfg).expect("valid encoder config");
    for &l in layouts {
        enc.add_template(l.template_id(), &l.fields())
            .expect("layouts are valid templates");
    }
    let now = Timestamp::from_secs(T0);
    for i in 0..n {
        write_record(&mut enc, now, layouts[(i as usize) % layouts.len()], i);
    }
    enc.flush(now);
    std::iter::from_fn(|| enc.poll_transmit()).collect()
}

/// The capture, as pcap bytes (Ethernet link type).
pub fn capture() -> Vec<u8> {
    let mac_a = [2, 0, 0, 0, 0, 1];
    let mac_b = [2, 0, 0, 0, 0, 2];
    let mut frames: Vec<Vec<u8>> = Vec::new();
    // Agent on node-a: UDP, small datagrams.
    for m in messages(
        EncoderConfig::datagram(0x0a0a, 576, Duration::from_secs(60)),
        &[Layout::AgentV4, Layout::AgentV6],
        12,
    ) {
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
    let mut out = Vec::new();
    let mut w = PcapWriter::new(&mut out).expect("writing to a Vec");
    for (i, f) in frames.iter().enumerate() {
        let ts = Duration::from_millis(T0 * 1000 + 10 * i as u64);
        w.write_packet(&PcapPacket::new(ts, f.len() as u32, f))
            .expect("writing to a Vec");
    }
    drop(w);
    out
}
