//! The record layouts flowlens sends: which IEs, in which order. The agent's layout is the
//! reference's flow-record table plus the policy-rule, label and cluster fields of DESIGN.md; the
//! aggregator's adds the per-Node counters, throughputs and original-exporter fields. Both come in
//! an IPv4 and an IPv6 variant (the address IEs differ), each its own template.

use std::sync::OnceLock;

use super::template::FieldSpec;

/// Fields before the addresses, common to both families.
const AGENT_HEAD: &[&str] = &[
    "flowStartSeconds",
    "flowEndSeconds",
    "flowEndReason",
    "sourceTransportPort",
    "destinationTransportPort",
    "protocolIdentifier",
    "packetTotalCount",
    "octetTotalCount",
    "packetDeltaCount",
    "octetDeltaCount",
];

/// Fields after the addresses (cluster IP excluded: it is family-specific too).
const AGENT_TAIL: &[&str] = &[
    "reversePacketTotalCount",
    "reverseOctetTotalCount",
    "reversePacketDeltaCount",
    "reverseOctetDeltaCount",
    "sourcePodName",
    "sourcePodNamespace",
    "sourceNodeName",
    "destinationPodName",
    "destinationPodNamespace",
    "destinationNodeName",
    "destinationServicePort",
    "destinationServicePortName",
    "ingressNetworkPolicyName",
    "ingressNetworkPolicyNamespace",
    "ingressNetworkPolicyType",
    "ingressNetworkPolicyRuleName",
    "ingressNetworkPolicyRuleAction",
    "egressNetworkPolicyName",
    "egressNetworkPolicyNamespace",
    "egressNetworkPolicyType",
    "egressNetworkPolicyRuleName",
    "egressNetworkPolicyRuleAction",
    "tcpState",
    "flowType",
    "sourcePodLabels",
    "destinationPodLabels",
];

const V4: &[&str] = &[
    "sourceIPv4Address",
    "destinationIPv4Address",
    "destinationClusterIPv4",
];
const V6: &[&str] = &[
    "sourceIPv6Address",
    "destinationIPv6Address",
    "destinationClusterIPv6",
];

/// What the aggregator adds to the agent's fields.
const AGGREGATED_EXTRA: &[&str] = &[
    "packetTotalCountFromSourceNode",
    "octetTotalCountFromSourceNode",
    "packetDeltaCountFromSourceNode",
    "octetDeltaCountFromSourceNode",
    "reversePacketTotalCountFromSourceNode",
    "reverseOctetTotalCountFromSourceNode",
    "reversePacketDeltaCountFromSourceNode",
    "reverseOctetDeltaCountFromSourceNode",
    "packetTotalCountFromDestinationNode",
    "octetTotalCountFromDestinationNode",
    "packetDeltaCountFromDestinationNode",
    "octetDeltaCountFromDestinationNode",
    "reversePacketTotalCountFromDestinationNode",
    "reverseOctetTotalCountFromDestinationNode",
    "reversePacketDeltaCountFromDestinationNode",
    "reverseOctetDeltaCountFromDestinationNode",
    "throughput",
    "reverseThroughput",
    "throughputFromSourceNode",
    "throughputFromDestinationNode",
    "reverseThroughputFromSourceNode",
    "reverseThroughputFromDestinationNode",
    "flowEndSecondsFromSourceNode",
    "flowEndSecondsFromDestinationNode",
    "originalObservationDomainId",
    "clusterId",
];

/// Which record layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    AgentV4,
    AgentV6,
    AggregatedV4,
    AggregatedV6,
}

impl Layout {
    /// Template id flowlens uses for the layout.
    pub const fn template_id(self) -> u16 {
        match self {
            Layout::AgentV4 => 256,
            Layout::AgentV6 => 257,
            Layout::AggregatedV4 => 258,
            Layout::AggregatedV6 => 259,
        }
    }

    /// The IE names in order.
    pub fn names(self) -> Vec<&'static str> {
        let fam = match self {
            Layout::AgentV4 | Layout::AggregatedV4 => V4,
            Layout::AgentV6 | Layout::AggregatedV6 => V6,
        };
        let mut v: Vec<&'static str> = AGENT_HEAD
            .iter()
            .chain(&fam[..2])
            .chain(AGENT_TAIL)
            .copied()
            .collect();
        v.insert(
            v.iter()
                .position(|n| *n == "destinationServicePort")
                .unwrap_or(v.len()),
            fam[2],
        );
        if matches!(self, Layout::AggregatedV4 | Layout::AggregatedV6) {
            v.extend(AGGREGATED_EXTRA);
            // Both families: a Node's address need not be of the flow's family (dual stack).
            v.extend(["originalExporterIPv4Address", "originalExporterIPv6Address"]);
        }
        v
    }

    /// Field specifiers at default lengths (strings variable-length), built once.
    pub fn fields(self) -> &'static [FieldSpec] {
        static CACHE: [OnceLock<Vec<FieldSpec>>; 4] = [const { OnceLock::new() }; 4];
        CACHE[self as usize].get_or_init(|| {
            self.names()
                .into_iter()
                // Every name above is in the registry; the test below keeps it that way.
                .filter_map(FieldSpec::named)
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_name_is_registered() {
        for l in [
            Layout::AgentV4,
            Layout::AgentV6,
            Layout::AggregatedV4,
            Layout::AggregatedV6,
        ] {
            assert_eq!(l.fields().len(), l.names().len(), "{l:?}");
        }
        assert_eq!(Layout::AggregatedV4.names().len(), 67);
    }
}
