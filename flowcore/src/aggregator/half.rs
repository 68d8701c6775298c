//! One Node's half of a flow, as an agent (flowlens or Antrea) exported it: parsed out of an IPFIX
//! data record by element id into a compact, owned form with interned strings.
//!
//! Counter deltas are read but the aggregator works from totals where the exporter sends them:
//! totals are monotonic per connection, so duplicates and re-sends cannot double count.

use std::net::IpAddr;

use crate::ie::{IeId, PEN_ANTREA, PEN_IANA, PEN_REVERSE};
use crate::ipfix::{DataRecord, FieldValue};
use crate::model::TcpState;

use super::intern::{Interner, NO_OWNER, NameRefusal, Sym};

/// Longest names Kubernetes allows: a DNS subdomain (Pod, Node, NetworkPolicy names) and a DNS
/// label (Namespace). A longer name cannot be real; it is refused, never interned.
pub const MAX_SUBDOMAIN: usize = 253;
pub const MAX_LABEL: usize = 63;
/// `namespace/service:port`: a DNS label, `/`, a DNS label, `:`, an IANA service name (15).
pub const MAX_SERVICE_PORT_NAME: usize = MAX_LABEL + 1 + MAX_LABEL + 1 + 15;
/// Pod labels as JSON: Kubernetes bounds a label's key (317 bytes) and value (63), not their
/// number; the aggregator bounds the whole text (`AggregatorConfig::max_label_bytes`).
pub const DEFAULT_MAX_LABEL_BYTES: usize = 8 << 10;

/// What parsing a record refused (each field so refused is treated as absent; the record's
/// counters still count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Names longer than Kubernetes allows for their field.
    pub too_long: u32,
    /// New names refused because the name table is over its bound and the exporter over its
    /// share.
    pub over_budget: u32,
    /// A `tcpState` that is not one of the kernel's names.
    pub bad_tcp_state: u32,
}

impl Refusals {
    pub fn any(&self) -> bool {
        *self != Refusals::default()
    }
}

/// The 5-tuple both Nodes of a flow report alike (destination after DNAT), which correlation
/// joins on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct CorrelationKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

/// A NetworkPolicy reference as carried in the record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyRef {
    pub name: Sym,
    pub namespace: Sym,
    pub kind: u8,
    pub rule: Sym,
    pub action: u8,
}

impl PolicyRef {
    fn is_empty(&self) -> bool {
        self.name.is_empty() && self.action == 0
    }
}

/// Counter index in `[u64; 4]` arrays.
pub const PACKETS: usize = 0;
pub const OCTETS: usize = 1;
pub const REV_PACKETS: usize = 2;
pub const REV_OCTETS: usize = 3;

/// Why a data record is not a flow half.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HalfError {
    #[error(
        "record of template {template_id} lacks {what}; a flow record needs source and destination addresses, ports and protocol"
    )]
    MissingKey {
        template_id: u16,
        what: &'static str,
    },
}

/// One agent's record of a flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowHalf {
    pub key: CorrelationKey,
    pub start_secs: u32,
    pub end_secs: u32,
    pub end_reason: u8,
    /// Totals as exported (packets, octets, reverse packets, reverse octets), when present.
    pub totals: Option<[u64; 4]>,
    pub deltas: [u64; 4],
    pub tcp_state: Option<TcpState>,
    pub meta: FlowMeta,
}

/// The Kubernetes side of a flow: what the two halves merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowMeta {
    pub flow_type: u8,
    pub src_pod: Sym,
    pub src_namespace: Sym,
    pub src_node: Sym,
    pub dst_pod: Sym,
    pub dst_namespace: Sym,
    pub dst_node: Sym,
    pub cluster_ip: Option<IpAddr>,
    pub service_port: u16,
    pub service_port_name: Sym,
    pub ingress: PolicyRef,
    pub egress: PolicyRef,
    pub src_labels: Sym,
    pub dst_labels: Sym,
}

/// Which member of `FlowHalf` an element fills. Kept as a `match` on element ids (a jump table,
/// no lookups per field); `slot_names_match_the_registry` ties every id here to its registry name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Start,
    End,
    EndReason,
    SrcPort,
    DstPort,
    Proto,
    Total(usize),
    Delta(usize),
    Src,
    Dst,
    SrcPod,
    SrcNs,
    SrcNode,
    DstPod,
    DstNs,
    DstNode,
    ClusterIp,
    SvcPort,
    SvcPortName,
    InName,
    InNs,
    InKind,
    InRule,
    InAction,
    EgName,
    EgNs,
    EgKind,
    EgRule,
    EgAction,
    TcpState,
    FlowType,
    SrcLabels,
    DstLabels,
}

fn slot(ie: IeId) -> Option<Slot> {
    use Slot::*;
    Some(match (ie.pen, ie.id) {
        (PEN_IANA, 150) => Start,
        (PEN_IANA, 151) => End,
        (PEN_IANA, 136) => EndReason,
        (PEN_IANA, 7) => SrcPort,
        (PEN_IANA, 11) => DstPort,
        (PEN_IANA, 4) => Proto,
        (PEN_IANA, 86) => Total(PACKETS),
        (PEN_IANA, 85) => Total(OCTETS),
        (PEN_IANA, 2) => Delta(PACKETS),
        (PEN_IANA, 1) => Delta(OCTETS),
        (PEN_REVERSE, 86) => Total(REV_PACKETS),
        (PEN_REVERSE, 85) => Total(REV_OCTETS),
        (PEN_REVERSE, 2) => Delta(REV_PACKETS),
        (PEN_REVERSE, 1) => Delta(REV_OCTETS),
        (PEN_IANA, 8 | 27) => Src,
        (PEN_IANA, 12 | 28) => Dst,
        (PEN_ANTREA, 101) => SrcPod,
        (PEN_ANTREA, 100) => SrcNs,
        (PEN_ANTREA, 104) => SrcNode,
        (PEN_ANTREA, 103) => DstPod,
        (PEN_ANTREA, 102) => DstNs,
        (PEN_ANTREA, 105) => DstNode,
        (PEN_ANTREA, 106 | 107) => ClusterIp,
        (PEN_ANTREA, 108) => SvcPort,
        (PEN_ANTREA, 109) => SvcPortName,
        (PEN_ANTREA, 110) => InName,
        (PEN_ANTREA, 111) => InNs,
        (PEN_ANTREA, 115) => InKind,
        (PEN_ANTREA, 141) => InRule,
        (PEN_ANTREA, 139) => InAction,
        (PEN_ANTREA, 112) => EgName,
        (PEN_ANTREA, 113) => EgNs,
        (PEN_ANTREA, 118) => EgKind,
        (PEN_ANTREA, 142) => EgRule,
        (PEN_ANTREA, 140) => EgAction,
        (PEN_ANTREA, 136) => TcpState,
        (PEN_ANTREA, 137) => FlowType,
        (PEN_ANTREA, 143) => SrcLabels,
        (PEN_ANTREA, 144) => DstLabels,
        _ => return None,
    })
}

impl FlowHalf {
    /// Parses an agent's data record (names uncharged, label text up to the default bound;
    /// refusals are not reported). Unknown elements are ignored; the 5-tuple is required.
    pub fn from_record(
        rec: &DataRecord<'_>,
        strings: &mut Interner,
    ) -> Result<FlowHalf, HalfError> {
        let mut refused = Refusals::default();
        Self::parse(
            rec,
            strings,
            NO_OWNER,
            DEFAULT_MAX_LABEL_BYTES,
            &mut refused,
        )
    }

    /// Parses an agent's data record from exporter `owner` (an index the names are charged to),
    /// refusing names longer than Kubernetes allows (label text longer than `max_label_bytes`)
    /// or over the name budget, and counting what it refused in `refused`.
    pub fn parse(
        rec: &DataRecord<'_>,
        strings: &mut Interner,
        owner: u16,
        max_label_bytes: usize,
        refused: &mut Refusals,
    ) -> Result<FlowHalf, HalfError> {
        let mut src = None;
        let mut dst = None;
        let (mut sport, mut dport, mut proto) = (None, None, None);
        let mut h = FlowHalf {
            key: CorrelationKey {
                src: IpAddr::from([0u8; 4]),
                dst: IpAddr::from([0u8; 4]),
                src_port: 0,
                dst_port: 0,
                proto: 0,
            },
            start_secs: 0,
            end_secs: 0,
            end_reason: 0,
            totals: None,
            deltas: [0; 4],
            tcp_state: None,
            meta: FlowMeta::default(),
        };
        for f in rec.fields() {
            let Some(s) = slot(f.spec.ie) else { continue };
            let v = f.value();
            let uint = || v.as_u64().unwrap_or(0);
            let ip = || match v {
                FieldValue::Ipv4(a) => Some(IpAddr::V4(a)),
                FieldValue::Ipv6(a) => Some(IpAddr::V6(a)),
                _ => None,
            };
            let mut text = |strings: &mut Interner, max_len: usize| match v {
                FieldValue::String(b) | FieldValue::Octets(b) => {
                    match strings.intern_wire(b, owner, max_len) {
                        Ok(s) => s,
                        Err(NameRefusal::TooLong) => {
                            refused.too_long += 1;
                            Sym::EMPTY
                        }
                        Err(NameRefusal::OverBudget) => {
                            refused.over_budget += 1;
                            Sym::EMPTY
                        }
                    }
                }
                _ => Sym::EMPTY,
            };
            use Slot::*;
            match s {
                Start => h.start_secs = uint() as u32,
                End => h.end_secs = uint() as u32,
                EndReason => h.end_reason = uint() as u8,
                SrcPort => sport = Some(uint() as u16),
                DstPort => dport = Some(uint() as u16),
                Proto => proto = Some(uint() as u8),
                Total(i) => h.totals.get_or_insert([0; 4])[i] = uint(),
                Delta(i) => h.deltas[i] = uint(),
                Src => src = ip(),
                Dst => dst = ip(),
                ClusterIp => h.meta.cluster_ip = ip().filter(|a| !a.is_unspecified()),
                SvcPort => h.meta.service_port = uint() as u16,
                InKind => h.meta.ingress.kind = uint() as u8,
                InAction => h.meta.ingress.action = uint() as u8,
                EgKind => h.meta.egress.kind = uint() as u8,
                EgAction => h.meta.egress.action = uint() as u8,
                FlowType => h.meta.flow_type = uint() as u8,
                SrcPod => h.meta.src_pod = text(strings, MAX_SUBDOMAIN),
                SrcNs => h.meta.src_namespace = text(strings, MAX_LABEL),
                SrcNode => h.meta.src_node = text(strings, MAX_SUBDOMAIN),
                DstPod => h.meta.dst_pod = text(strings, MAX_SUBDOMAIN),
                DstNs => h.meta.dst_namespace = text(strings, MAX_LABEL),
                DstNode => h.meta.dst_node = text(strings, MAX_SUBDOMAIN),
                SvcPortName => h.meta.service_port_name = text(strings, MAX_SERVICE_PORT_NAME),
                InName => h.meta.ingress.name = text(strings, MAX_SUBDOMAIN),
                InNs => h.meta.ingress.namespace = text(strings, MAX_LABEL),
                InRule => h.meta.ingress.rule = text(strings, MAX_SUBDOMAIN),
                EgName => h.meta.egress.name = text(strings, MAX_SUBDOMAIN),
                EgNs => h.meta.egress.namespace = text(strings, MAX_LABEL),
                EgRule => h.meta.egress.rule = text(strings, MAX_SUBDOMAIN),
                TcpState => {
                    h.tcp_state = match v {
                        FieldValue::String(b) | FieldValue::Octets(b) if !b.is_empty() => {
                            let t = crate::model::TcpState::from_name_bytes(b);
                            if t.is_none() {
                                refused.bad_tcp_state += 1;
                            }
                            t
                        }
                        _ => None,
                    }
                }
                SrcLabels => h.meta.src_labels = text(strings, max_label_bytes),
                DstLabels => h.meta.dst_labels = text(strings, max_label_bytes),
            }
        }
        let missing = |what| HalfError::MissingKey {
            template_id: rec.template_id(),
            what,
        };
        h.key = CorrelationKey {
            src: src.ok_or(missing("a source address"))?,
            dst: dst.ok_or(missing("a destination address"))?,
            src_port: sport.ok_or(missing("sourceTransportPort"))?,
            dst_port: dport.ok_or(missing("destinationTransportPort"))?,
            proto: proto.ok_or(missing("protocolIdentifier"))?,
        };
        Ok(h)
    }

    /// Whether this half was exported by the source Pod's Node. Like Antrea's agents, an agent
    /// fills only its own Node's Pods into an inter-Node record, so a half naming the source Pod
    /// comes from the source Node.
    pub fn is_from_source_node(&self) -> bool {
        !self.meta.src_pod.is_empty()
    }
}

impl FlowMeta {
    /// Every name this metadata refers to (references are counted per entry of the
    /// aggregator's metadata table).
    pub(crate) fn syms(&self) -> [Sym; 15] {
        [
            self.src_pod,
            self.src_namespace,
            self.src_node,
            self.dst_pod,
            self.dst_namespace,
            self.dst_node,
            self.service_port_name,
            self.ingress.name,
            self.ingress.namespace,
            self.ingress.rule,
            self.egress.name,
            self.egress.namespace,
            self.egress.rule,
            self.src_labels,
            self.dst_labels,
        ]
    }

    /// Copies into `self` the Kubernetes fields `other` knows and `self` does not.
    pub(crate) fn merge(&mut self, other: &FlowMeta) {
        fn fill(a: &mut Sym, b: Sym) {
            if a.is_empty() {
                *a = b;
            }
        }
        fill(&mut self.src_pod, other.src_pod);
        fill(&mut self.src_namespace, other.src_namespace);
        fill(&mut self.src_node, other.src_node);
        fill(&mut self.dst_pod, other.dst_pod);
        fill(&mut self.dst_namespace, other.dst_namespace);
        fill(&mut self.dst_node, other.dst_node);
        fill(&mut self.service_port_name, other.service_port_name);
        fill(&mut self.src_labels, other.src_labels);
        fill(&mut self.dst_labels, other.dst_labels);
        if self.cluster_ip.is_none() {
            self.cluster_ip = other.cluster_ip;
            self.service_port = other.service_port;
        }
        if self.ingress.is_empty() {
            self.ingress = other.ingress;
        }
        if self.egress.is_empty() {
            self.egress = other.egress;
        }
        if self.flow_type == 0 {
            self.flow_type = other.flow_type;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_match_the_registry() {
        let names = [
            ("flowStartSeconds", Slot::Start),
            ("flowEndSeconds", Slot::End),
            ("flowEndReason", Slot::EndReason),
            ("sourceTransportPort", Slot::SrcPort),
            ("destinationTransportPort", Slot::DstPort),
            ("protocolIdentifier", Slot::Proto),
            ("packetTotalCount", Slot::Total(PACKETS)),
            ("octetTotalCount", Slot::Total(OCTETS)),
            ("packetDeltaCount", Slot::Delta(PACKETS)),
            ("octetDeltaCount", Slot::Delta(OCTETS)),
            ("reversePacketTotalCount", Slot::Total(REV_PACKETS)),
            ("reverseOctetTotalCount", Slot::Total(REV_OCTETS)),
            ("reversePacketDeltaCount", Slot::Delta(REV_PACKETS)),
            ("reverseOctetDeltaCount", Slot::Delta(REV_OCTETS)),
            ("sourceIPv4Address", Slot::Src),
            ("sourceIPv6Address", Slot::Src),
            ("destinationIPv4Address", Slot::Dst),
            ("destinationIPv6Address", Slot::Dst),
            ("sourcePodName", Slot::SrcPod),
            ("sourcePodNamespace", Slot::SrcNs),
            ("sourceNodeName", Slot::SrcNode),
            ("destinationPodName", Slot::DstPod),
            ("destinationPodNamespace", Slot::DstNs),
            ("destinationNodeName", Slot::DstNode),
            ("destinationClusterIPv4", Slot::ClusterIp),
            ("destinationClusterIPv6", Slot::ClusterIp),
            ("destinationServicePort", Slot::SvcPort),
            ("destinationServicePortName", Slot::SvcPortName),
            ("ingressNetworkPolicyName", Slot::InName),
            ("ingressNetworkPolicyNamespace", Slot::InNs),
            ("ingressNetworkPolicyType", Slot::InKind),
            ("ingressNetworkPolicyRuleName", Slot::InRule),
            ("ingressNetworkPolicyRuleAction", Slot::InAction),
            ("egressNetworkPolicyName", Slot::EgName),
            ("egressNetworkPolicyNamespace", Slot::EgNs),
            ("egressNetworkPolicyType", Slot::EgKind),
            ("egressNetworkPolicyRuleName", Slot::EgRule),
            ("egressNetworkPolicyRuleAction", Slot::EgAction),
            ("tcpState", Slot::TcpState),
            ("flowType", Slot::FlowType),
            ("sourcePodLabels", Slot::SrcLabels),
            ("destinationPodLabels", Slot::DstLabels),
        ];
        for (name, want) in names {
            let e = crate::ie::by_name(name).unwrap_or_else(|| panic!("{name} not registered"));
            assert_eq!(slot(e.ie_id()), Some(want), "{name}");
        }
    }
}
