//! Example records in flowlens's layouts, with realistic content, for the shipped sample capture,
//! benchmarks and the simulator's smoke tests. Not used on any production path.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::ie::DataType;
use crate::model::Timestamp;

use super::{EncodeError, Encoder, Layout};

const PODS: &[(&str, &str, &str)] = &[
    ("frontend-7c9f8d6b5-x2k4p", "shop", "node-a"),
    ("catalog-5d8f9c7b6-qwz9r", "shop", "node-b"),
    ("orders-6b7d9f8c5-m3n4p", "shop", "node-b"),
    ("coredns-5d78c9869d-abcde", "kube-system", "node-a"),
];

/// Writes record `i` of `layout` with plausible values chosen by field name and type: a
/// realistic record (Pod names of typical length, labels, policies) for samples and benchmarks.
pub fn write_example_record(
    enc: &mut Encoder,
    now: Timestamp,
    layout: Layout,
    i: u64,
) -> Result<(), EncodeError> {
    let v6 = matches!(layout, Layout::AgentV6 | Layout::AggregatedV6);
    let (s, d) = (PODS[(i % 2) as usize], PODS[1 + (i % 3) as usize]);
    let ip = |host: u8| -> IpAddr {
        if v6 {
            Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, host as u16).into()
        } else {
            Ipv4Addr::new(10, 244, 0, host).into()
        }
    };
    let mut w = enc.record(now, layout.template_id())?;
    for f in layout.fields().iter() {
        let name = f.name.unwrap_or_default();
        match f.data_type {
            DataType::DateTimeSeconds if name == "flowStartSeconds" => {
                w.time(Timestamp::from_secs(now.as_secs().saturating_sub(120) + i))
            }
            DataType::DateTimeSeconds => w.time(now),
            DataType::Ipv4Address | DataType::Ipv6Address => match name {
                n if n.starts_with("source") => w.ip(ip(10 + (i % 2) as u8)),
                n if n.contains("Cluster") => w.ip(if v6 {
                    Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 20).into()
                } else {
                    Ipv4Addr::new(10, 96, 0, 20).into()
                }),
                n if n.starts_with("originalExporter") => {
                    w.ip(if f.data_type == DataType::Ipv6Address {
                        Ipv6Addr::new(0xfd00, 0x1, 0, 0, 0, 0, 0, 2).into()
                    } else {
                        Ipv4Addr::new(192, 168, 49, 2).into()
                    })
                }
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
    w.finish()
}
