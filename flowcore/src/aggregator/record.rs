//! The aggregated record: what the aggregator exports, and its IPFIX encoding in the
//! `Layout::AggregatedV4/V6` field order.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::ipfix::{EncodeError, Encoder, Layout};
use crate::model::Timestamp;

use super::half::{CorrelationKey, MAX_SUBDOMAIN, OCTETS, PolicyRef, REV_OCTETS};
use super::intern::{Interner, NO_OWNER, Sym};
use super::{DESTINATION, ExporterState, Flow, SOURCE, Side};

/// One Node's counters in an aggregated record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeCounters {
    /// packets, octets, reverse packets, reverse octets.
    pub totals: [u64; 4],
    /// Since this aggregator's previous export of the flow.
    pub deltas: [u64; 4],
    /// bits/s over the interval between this Node's reports.
    pub throughput: u64,
    pub reverse_throughput: u64,
    pub end_secs: u32,
}

/// A policy reference with its strings resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PolicyInfo {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub kind: u8,
    pub rule: Arc<str>,
    pub action: u8,
}

/// A complete flow record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AggregatedRecord {
    pub key: CorrelationKey,
    pub start_secs: u32,
    pub end_secs: u32,
    pub end_reason: u8,
    pub flow_type: u8,
    /// The flow's counters: the source Node's when it reported, else the destination Node's.
    pub totals: [u64; 4],
    pub deltas: [u64; 4],
    pub throughput: u64,
    pub reverse_throughput: u64,
    pub from_source: Option<NodeCounters>,
    pub from_destination: Option<NodeCounters>,
    pub src_pod: Arc<str>,
    pub src_namespace: Arc<str>,
    pub src_node: Arc<str>,
    pub dst_pod: Arc<str>,
    pub dst_namespace: Arc<str>,
    pub dst_node: Arc<str>,
    pub cluster_ip: Option<IpAddr>,
    pub service_port: u16,
    pub service_port_name: Arc<str>,
    pub ingress: PolicyInfo,
    pub egress: PolicyInfo,
    pub tcp_state: Arc<str>,
    pub src_labels: Arc<str>,
    pub dst_labels: Arc<str>,
    /// Both halves of an inter-Node flow met (always true for other flow types). Not carried
    /// over IPFIX (no element exists for it); sinks that keep it (JSON, stores) show it.
    pub correlated: bool,
    pub original_exporter: Option<IpAddr>,
    pub original_domain: u32,
    pub cluster_id: Arc<str>,
}

fn counters(s: &Side, now_interval_secs: u64) -> NodeCounters {
    let deltas = [0, 1, 2, 3].map(|i| s.totals[i].saturating_sub(s.exported[i]));
    // Bits per second over the time this Node's report covers since the last export.
    let secs = (s.end_secs.saturating_sub(s.exported_end_secs) as u64)
        .max(now_interval_secs.min(1))
        .max(1);
    NodeCounters {
        totals: s.totals,
        deltas,
        throughput: deltas[OCTETS] * 8 / secs,
        reverse_throughput: deltas[REV_OCTETS] * 8 / secs,
        end_secs: s.end_secs,
    }
}

/// What resolving a flow's names takes.
pub(super) struct Names<'a> {
    pub strings: &'a Interner,
    pub cluster_id: Sym,
    /// The kernel's TCP state names by `TcpState as usize`.
    pub tcp: &'a [Sym; 10],
    pub exporters: &'a [ExporterState],
}

pub(super) fn build(
    flow: &Flow,
    m: &super::FlowMeta,
    now: Timestamp,
    reason: u8,
    names: &Names<'_>,
) -> AggregatedRecord {
    let (strings, cluster_id, exporters) = (names.strings, names.cluster_id, names.exporters);
    let interval = flow
        .last_export()
        .map_or(1, |t| now.saturating_since(t).as_secs());
    let src = flow.sides.get(SOURCE).map(|s| counters(s, interval));
    let dst = flow.sides.get(DESTINATION).map(|s| counters(s, interval));
    let main = src.or(dst).unwrap_or_default();
    let lead = flow
        .sides
        .get(SOURCE)
        .or(flow.sides.get(DESTINATION))
        .and_then(|l| exporters.get(l.exporter as usize))
        .map(|e| e.id);
    let s = |sym: Sym| strings.get(sym).clone();
    let p = |r: &PolicyRef| PolicyInfo {
        name: s(r.name),
        namespace: s(r.namespace),
        kind: r.kind,
        rule: s(r.rule),
        action: r.action,
    };
    AggregatedRecord {
        key: flow.key,
        start_secs: flow.start_secs,
        end_secs: flow
            .sides
            .iter()
            .map(|s| s.end_secs)
            .max()
            .unwrap_or(flow.start_secs),
        end_reason: reason,
        flow_type: flow.flow_type,
        totals: main.totals,
        deltas: main.deltas,
        throughput: main.throughput,
        reverse_throughput: main.reverse_throughput,
        from_source: src,
        from_destination: dst,
        src_pod: s(m.src_pod),
        src_namespace: s(m.src_namespace),
        src_node: s(m.src_node),
        dst_pod: s(m.dst_pod),
        dst_namespace: s(m.dst_namespace),
        dst_node: s(m.dst_node),
        cluster_ip: m.cluster_ip,
        service_port: m.service_port,
        service_port_name: s(m.service_port_name),
        ingress: p(&m.ingress),
        egress: p(&m.egress),
        tcp_state: s(flow.tcp_state.map_or(Sym::EMPTY, |t| names.tcp[t as usize])),
        src_labels: s(m.src_labels),
        dst_labels: s(m.dst_labels),
        correlated: !flow.needs_partner() || flow.correlated(),
        original_exporter: lead.map(|l| l.addr),
        original_domain: lead.map_or(0, |l| l.domain),
        cluster_id: s(cluster_id),
    }
}

impl AggregatedRecord {
    /// The layout this record is sent in (by the flow's address family).
    pub fn layout(&self) -> Layout {
        if self.key.src.is_ipv4() {
            Layout::AggregatedV4
        } else {
            Layout::AggregatedV6
        }
    }

    /// Writes the record into `enc`, whose templates must include [`Self::layout`]'s.
    pub fn write_ipfix(&self, enc: &mut Encoder, now: Timestamp) -> Result<(), EncodeError> {
        let layout = self.layout();
        let v4 = layout == Layout::AggregatedV4;
        // An address of the other family than the flow's (should not happen) goes out as zero.
        let fam = |a: Option<IpAddr>| match (a, v4) {
            (Some(a @ IpAddr::V4(_)), true) | (Some(a @ IpAddr::V6(_)), false) => a,
            (_, true) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (_, false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let mut w = enc.record(now, layout.template_id())?;
        w.time(Timestamp::from_secs(self.start_secs as u64))
            .time(Timestamp::from_secs(self.end_secs as u64))
            .uint(self.end_reason as u64)
            .uint(self.key.src_port as u64)
            .uint(self.key.dst_port as u64)
            .uint(self.key.proto as u64)
            .uint(self.totals[0])
            .uint(self.totals[1])
            .uint(self.deltas[0])
            .uint(self.deltas[1])
            .ip(fam(Some(self.key.src)))
            .ip(fam(Some(self.key.dst)))
            .uint(self.totals[2])
            .uint(self.totals[3])
            .uint(self.deltas[2])
            .uint(self.deltas[3])
            .string(&self.src_pod)
            .string(&self.src_namespace)
            .string(&self.src_node)
            .string(&self.dst_pod)
            .string(&self.dst_namespace)
            .string(&self.dst_node)
            .ip(fam(self.cluster_ip))
            .uint(self.service_port as u64)
            .string(&self.service_port_name);
        for p in [&self.ingress, &self.egress] {
            w.string(&p.name)
                .string(&p.namespace)
                .uint(p.kind as u64)
                .string(&p.rule)
                .uint(p.action as u64);
        }
        w.string(&self.tcp_state)
            .uint(self.flow_type as u64)
            .string(&self.src_labels)
            .string(&self.dst_labels);
        let (s, d) = (
            self.from_source.unwrap_or_default(),
            self.from_destination.unwrap_or_default(),
        );
        for c in [&s, &d] {
            w.uint(c.totals[0])
                .uint(c.totals[1])
                .uint(c.deltas[0])
                .uint(c.deltas[1]);
            w.uint(c.totals[2])
                .uint(c.totals[3])
                .uint(c.deltas[2])
                .uint(c.deltas[3]);
        }
        w.uint(self.throughput)
            .uint(self.reverse_throughput)
            .uint(s.throughput)
            .uint(d.throughput)
            .uint(s.reverse_throughput)
            .uint(d.reverse_throughput)
            .time(Timestamp::from_secs(s.end_secs as u64))
            .time(Timestamp::from_secs(d.end_secs as u64))
            .uint(self.original_domain as u64)
            .string(&self.cluster_id)
            .ip(match self.original_exporter {
                Some(a @ IpAddr::V4(_)) => a,
                _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            })
            .ip(match self.original_exporter {
                Some(a @ IpAddr::V6(_)) => a,
                _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            });
        w.finish()
    }
}

impl AggregatedRecord {
    /// Parses an aggregated record as [`Self::write_ipfix`] sends it (or as Antrea's Flow
    /// Aggregator does: the same elements). Elements it lacks stay empty/zero; `correlated` is
    /// inferred (both Nodes' counters present, or not an inter-Node flow).
    pub fn from_ipfix(
        rec: &crate::ipfix::DataRecord<'_>,
        strings: &mut Interner,
    ) -> Result<AggregatedRecord, super::HalfError> {
        use crate::ie::{PEN_ANTREA, PEN_IANA};
        use crate::ipfix::FieldValue;
        let h = super::FlowHalf::from_record(rec, strings)?;
        let mut src = NodeCounters::default();
        let mut dst = NodeCounters::default();
        let (mut has_src, mut has_dst) = (false, false);
        let (mut thr, mut rthr, mut domain) = (0, 0, 0);
        let mut exporter = None;
        let mut cluster_id = Sym::EMPTY;
        for f in rec.fields() {
            let v = f.value();
            let n = v.as_u64().unwrap_or(0);
            match (f.spec.ie.pen, f.spec.ie.id) {
                (PEN_ANTREA, id @ 120..=127) => {
                    has_src |= n != 0;
                    set_counter(&mut src, id - 120, n);
                }
                (PEN_ANTREA, id @ 128..=135) => {
                    has_dst |= n != 0;
                    set_counter(&mut dst, id - 128, n);
                }
                (PEN_ANTREA, 145) => thr = n,
                (PEN_ANTREA, 146) => rthr = n,
                (PEN_ANTREA, 147) => src.throughput = n,
                (PEN_ANTREA, 148) => dst.throughput = n,
                (PEN_ANTREA, 149) => src.reverse_throughput = n,
                (PEN_ANTREA, 150) => dst.reverse_throughput = n,
                (PEN_ANTREA, 151) => src.end_secs = n as u32,
                (PEN_ANTREA, 152) => dst.end_secs = n as u32,
                (PEN_ANTREA, 158) => {
                    if let FieldValue::String(b) = v {
                        cluster_id = strings
                            .intern_wire(b, NO_OWNER, MAX_SUBDOMAIN)
                            .unwrap_or(Sym::EMPTY);
                    }
                }
                (PEN_IANA, 405) => domain = n as u32,
                (PEN_IANA, 403 | 404) => {
                    exporter = match v {
                        FieldValue::Ipv4(a) if !a.is_unspecified() => Some(IpAddr::V4(a)),
                        FieldValue::Ipv6(a) if !a.is_unspecified() => Some(IpAddr::V6(a)),
                        _ => exporter,
                    }
                }
                _ => {}
            }
        }
        let tcp_state = h.tcp_state.map_or(Sym::EMPTY, |t| strings.intern(t.name()));
        let s = |sym: Sym| strings.get(sym).clone();
        let p = |r: &PolicyRef| PolicyInfo {
            name: s(r.name),
            namespace: s(r.namespace),
            kind: r.kind,
            rule: s(r.rule),
            action: r.action,
        };
        let inter = h.meta.flow_type == super::FLOW_TYPE_INTER_NODE;
        Ok(AggregatedRecord {
            key: h.key,
            start_secs: h.start_secs,
            end_secs: h.end_secs,
            end_reason: h.end_reason,
            flow_type: h.meta.flow_type,
            totals: h.totals.unwrap_or_default(),
            deltas: h.deltas,
            throughput: thr,
            reverse_throughput: rthr,
            from_source: has_src.then_some(src),
            from_destination: has_dst.then_some(dst),
            src_pod: s(h.meta.src_pod),
            src_namespace: s(h.meta.src_namespace),
            src_node: s(h.meta.src_node),
            dst_pod: s(h.meta.dst_pod),
            dst_namespace: s(h.meta.dst_namespace),
            dst_node: s(h.meta.dst_node),
            cluster_ip: h.meta.cluster_ip,
            service_port: h.meta.service_port,
            service_port_name: s(h.meta.service_port_name),
            ingress: p(&h.meta.ingress),
            egress: p(&h.meta.egress),
            tcp_state: s(tcp_state),
            src_labels: s(h.meta.src_labels),
            dst_labels: s(h.meta.dst_labels),
            correlated: !inter || (has_src && has_dst),
            original_exporter: exporter,
            original_domain: domain,
            cluster_id: s(cluster_id),
        })
    }
}

/// Per-Node counter element `offset` (0–7 within 120–127 or 128–135): packet/octet total/delta,
/// then the reverse four.
fn set_counter(c: &mut NodeCounters, offset: u16, n: u64) {
    let (dir, kind) = ((offset / 4) as usize, offset % 4);
    match kind {
        0 => c.totals[2 * dir] = n,
        1 => c.totals[2 * dir + 1] = n,
        2 => c.deltas[2 * dir] = n,
        _ => c.deltas[2 * dir + 1] = n,
    }
}

impl AggregatedRecord {
    /// Calls `f(ie_name, value)` for every element of the record in [`Layout::AggregatedV4/V6`]
    /// order (the address elements of the flow's family; both original-exporter elements). JSON
    /// sinks and stores key their fields by these registry names, as `flowlens decode` does.
    pub fn visit<'a>(&'a self, mut f: impl FnMut(&'static str, crate::model::IeValue<'a>)) {
        use crate::model::IeValue::*;
        let v4 = self.key.src.is_ipv4();
        f("flowStartSeconds", DateTimeSeconds(self.start_secs as u64));
        f("flowEndSeconds", DateTimeSeconds(self.end_secs as u64));
        f("flowEndReason", Unsigned8(self.end_reason));
        f("sourceTransportPort", Unsigned16(self.key.src_port));
        f("destinationTransportPort", Unsigned16(self.key.dst_port));
        f("protocolIdentifier", Unsigned8(self.key.proto));
        f("packetTotalCount", Unsigned64(self.totals[0]));
        f("octetTotalCount", Unsigned64(self.totals[1]));
        f("packetDeltaCount", Unsigned64(self.deltas[0]));
        f("octetDeltaCount", Unsigned64(self.deltas[1]));
        f(
            if v4 {
                "sourceIPv4Address"
            } else {
                "sourceIPv6Address"
            },
            Ip(self.key.src),
        );
        f(
            if v4 {
                "destinationIPv4Address"
            } else {
                "destinationIPv6Address"
            },
            Ip(self.key.dst),
        );
        f("reversePacketTotalCount", Unsigned64(self.totals[2]));
        f("reverseOctetTotalCount", Unsigned64(self.totals[3]));
        f("reversePacketDeltaCount", Unsigned64(self.deltas[2]));
        f("reverseOctetDeltaCount", Unsigned64(self.deltas[3]));
        f("sourcePodName", String(&self.src_pod));
        f("sourcePodNamespace", String(&self.src_namespace));
        f("sourceNodeName", String(&self.src_node));
        f("destinationPodName", String(&self.dst_pod));
        f("destinationPodNamespace", String(&self.dst_namespace));
        f("destinationNodeName", String(&self.dst_node));
        if let Some(ip) = self.cluster_ip {
            f(
                if ip.is_ipv4() {
                    "destinationClusterIPv4"
                } else {
                    "destinationClusterIPv6"
                },
                Ip(ip),
            );
        }
        f("destinationServicePort", Unsigned16(self.service_port));
        f(
            "destinationServicePortName",
            String(&self.service_port_name),
        );
        for (dir, p) in [("ingress", &self.ingress), ("egress", &self.egress)] {
            let (name, ns, kind, rule, action) = if dir == "ingress" {
                (
                    "ingressNetworkPolicyName",
                    "ingressNetworkPolicyNamespace",
                    "ingressNetworkPolicyType",
                    "ingressNetworkPolicyRuleName",
                    "ingressNetworkPolicyRuleAction",
                )
            } else {
                (
                    "egressNetworkPolicyName",
                    "egressNetworkPolicyNamespace",
                    "egressNetworkPolicyType",
                    "egressNetworkPolicyRuleName",
                    "egressNetworkPolicyRuleAction",
                )
            };
            f(name, String(&p.name));
            f(ns, String(&p.namespace));
            f(kind, Unsigned8(p.kind));
            f(rule, String(&p.rule));
            f(action, Unsigned8(p.action));
        }
        f("tcpState", String(&self.tcp_state));
        f("flowType", Unsigned8(self.flow_type));
        f("sourcePodLabels", String(&self.src_labels));
        f("destinationPodLabels", String(&self.dst_labels));
        const SRC: [&str; 8] = [
            "packetTotalCountFromSourceNode",
            "octetTotalCountFromSourceNode",
            "packetDeltaCountFromSourceNode",
            "octetDeltaCountFromSourceNode",
            "reversePacketTotalCountFromSourceNode",
            "reverseOctetTotalCountFromSourceNode",
            "reversePacketDeltaCountFromSourceNode",
            "reverseOctetDeltaCountFromSourceNode",
        ];
        const DST: [&str; 8] = [
            "packetTotalCountFromDestinationNode",
            "octetTotalCountFromDestinationNode",
            "packetDeltaCountFromDestinationNode",
            "octetDeltaCountFromDestinationNode",
            "reversePacketTotalCountFromDestinationNode",
            "reverseOctetTotalCountFromDestinationNode",
            "reversePacketDeltaCountFromDestinationNode",
            "reverseOctetDeltaCountFromDestinationNode",
        ];
        let (s, d) = (
            self.from_source.unwrap_or_default(),
            self.from_destination.unwrap_or_default(),
        );
        for (names, c) in [(SRC, &s), (DST, &d)] {
            let vals = [
                c.totals[0],
                c.totals[1],
                c.deltas[0],
                c.deltas[1],
                c.totals[2],
                c.totals[3],
                c.deltas[2],
                c.deltas[3],
            ];
            for (n, v) in names.into_iter().zip(vals) {
                f(n, Unsigned64(v));
            }
        }
        f("throughput", Unsigned64(self.throughput));
        f("reverseThroughput", Unsigned64(self.reverse_throughput));
        f("throughputFromSourceNode", Unsigned64(s.throughput));
        f("throughputFromDestinationNode", Unsigned64(d.throughput));
        f(
            "reverseThroughputFromSourceNode",
            Unsigned64(s.reverse_throughput),
        );
        f(
            "reverseThroughputFromDestinationNode",
            Unsigned64(d.reverse_throughput),
        );
        f(
            "flowEndSecondsFromSourceNode",
            DateTimeSeconds(s.end_secs as u64),
        );
        f(
            "flowEndSecondsFromDestinationNode",
            DateTimeSeconds(d.end_secs as u64),
        );
        f(
            "originalObservationDomainId",
            Unsigned64(self.original_domain as u64),
        );
        f("clusterId", String(&self.cluster_id));
        if let Some(ip) = self.original_exporter {
            f(
                if ip.is_ipv4() {
                    "originalExporterIPv4Address"
                } else {
                    "originalExporterIPv6Address"
                },
                Ip(ip),
            );
        }
    }
}
