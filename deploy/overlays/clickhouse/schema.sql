-- flowlens schema for ClickHouse: one row per aggregated flow record, columns named after the
-- IPFIX information elements (Antrea's flow-visibility names, so existing queries and Grafana
-- panels carry over), plus per-minute rollups maintained by materialized views so dashboards
-- read small tables. Run once by the ClickHouse image's /docker-entrypoint-initdb.d on an empty
-- volume; every statement is idempotent (IF NOT EXISTS).
--
-- Retention: raw records 7 days, rollups 90 days (TTL; ClickHouse drops expired parts in the
-- background). Change the INTERVALs to taste; ALTER TABLE ... MODIFY TTL on a live cluster.

CREATE DATABASE IF NOT EXISTS flowlens;

CREATE TABLE IF NOT EXISTS flowlens.flows
(
    -- When the collector stored the record (not an IE).
    timeInserted DateTime DEFAULT now(),
    flowStartSeconds DateTime,
    flowEndSeconds DateTime,
    flowEndSecondsFromSourceNode DateTime,
    flowEndSecondsFromDestinationNode DateTime,
    -- 1 idle timeout, 2 active timeout, 3 end of flow, 4 forced end, 5 lack of resources.
    flowEndReason UInt8,
    -- sourceIPv4Address / sourceIPv6Address (and destination) in one column, as text.
    sourceIP String,
    destinationIP String,
    sourceTransportPort UInt16,
    destinationTransportPort UInt16,
    protocolIdentifier UInt8,
    packetTotalCount UInt64,
    octetTotalCount UInt64,
    packetDeltaCount UInt64,
    octetDeltaCount UInt64,
    reversePacketTotalCount UInt64,
    reverseOctetTotalCount UInt64,
    reversePacketDeltaCount UInt64,
    reverseOctetDeltaCount UInt64,
    sourcePodName String,
    sourcePodNamespace String,
    sourceNodeName String,
    destinationPodName String,
    destinationPodNamespace String,
    destinationNodeName String,
    -- destinationClusterIPv4 / destinationClusterIPv6 in one column, as text.
    destinationClusterIP String,
    destinationServicePort UInt16,
    -- namespace/name:portName
    destinationServicePortName String,
    ingressNetworkPolicyName String,
    ingressNetworkPolicyNamespace String,
    ingressNetworkPolicyRuleName String,
    -- 1 allow, 2 drop, 3 reject; 0 none.
    ingressNetworkPolicyRuleAction UInt8,
    ingressNetworkPolicyType UInt8,
    egressNetworkPolicyName String,
    egressNetworkPolicyNamespace String,
    egressNetworkPolicyRuleName String,
    egressNetworkPolicyRuleAction UInt8,
    egressNetworkPolicyType UInt8,
    -- Kernel names: ESTABLISHED, TIME_WAIT, ...
    tcpState String,
    -- 1 IntraNode, 2 InterNode, 3 ToExternal, 4 FromExternal.
    flowType UInt8,
    -- JSON objects.
    sourcePodLabels String,
    destinationPodLabels String,
    -- bits/s over the interval between exports.
    throughput UInt64,
    reverseThroughput UInt64,
    -- Per-Node counters; 0 where that Node did not report (see correlated).
    packetTotalCountFromSourceNode UInt64,
    octetTotalCountFromSourceNode UInt64,
    packetDeltaCountFromSourceNode UInt64,
    octetDeltaCountFromSourceNode UInt64,
    reversePacketTotalCountFromSourceNode UInt64,
    reverseOctetTotalCountFromSourceNode UInt64,
    reversePacketDeltaCountFromSourceNode UInt64,
    reverseOctetDeltaCountFromSourceNode UInt64,
    packetTotalCountFromDestinationNode UInt64,
    octetTotalCountFromDestinationNode UInt64,
    packetDeltaCountFromDestinationNode UInt64,
    octetDeltaCountFromDestinationNode UInt64,
    reversePacketTotalCountFromDestinationNode UInt64,
    reverseOctetTotalCountFromDestinationNode UInt64,
    reversePacketDeltaCountFromDestinationNode UInt64,
    reverseOctetDeltaCountFromDestinationNode UInt64,
    throughputFromSourceNode UInt64,
    throughputFromDestinationNode UInt64,
    reverseThroughputFromSourceNode UInt64,
    reverseThroughputFromDestinationNode UInt64,
    clusterId String,
    -- 1 when both Nodes' records were joined; 0 when one side never came (flowlens, not an IE).
    correlated UInt8
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(flowEndSeconds)
ORDER BY (flowEndSeconds, sourcePodNamespace, sourcePodName)
TTL flowEndSeconds + INTERVAL 7 DAY
SETTINGS ttl_only_drop_parts = 1;

-- Rollups: per minute of flowEndSeconds, sums of the delta counters (deltas add up to the
-- bytes moved; totals would count a long flow once per export). SummingMergeTree adds rows with
-- the same key when parts merge, so read them with sum() ... GROUP BY.

-- Both ends Pods (flowType 1 and 2).
CREATE TABLE IF NOT EXISTS flowlens.flows_pod_pair_1m
(
    minute DateTime,
    sourcePodNamespace String,
    sourcePodName String,
    sourceNodeName String,
    destinationPodNamespace String,
    destinationPodName String,
    destinationNodeName String,
    flowType UInt8,
    packetDeltaCount UInt64,
    octetDeltaCount UInt64,
    reversePacketDeltaCount UInt64,
    reverseOctetDeltaCount UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, sourcePodNamespace, sourcePodName, sourceNodeName, destinationPodNamespace, destinationPodName, destinationNodeName, flowType)
TTL minute + INTERVAL 90 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_pod_pair_1m_mv TO flowlens.flows_pod_pair_1m AS
SELECT
    toStartOfMinute(flowEndSeconds) AS minute,
    sourcePodNamespace, sourcePodName, sourceNodeName,
    destinationPodNamespace, destinationPodName, destinationNodeName, flowType,
    sum(packetDeltaCount) AS packetDeltaCount,
    sum(octetDeltaCount) AS octetDeltaCount,
    sum(reversePacketDeltaCount) AS reversePacketDeltaCount,
    sum(reverseOctetDeltaCount) AS reverseOctetDeltaCount,
    count() AS records
FROM flowlens.flows
WHERE flowType IN (1, 2)
GROUP BY minute, sourcePodNamespace, sourcePodName, sourceNodeName,
    destinationPodNamespace, destinationPodName, destinationNodeName, flowType;

-- Pod to Service (destinationServicePortName set), by client Pod.
CREATE TABLE IF NOT EXISTS flowlens.flows_pod_service_1m
(
    minute DateTime,
    sourcePodNamespace String,
    sourcePodName String,
    sourceNodeName String,
    destinationServicePortName String,
    destinationClusterIP String,
    packetDeltaCount UInt64,
    octetDeltaCount UInt64,
    reversePacketDeltaCount UInt64,
    reverseOctetDeltaCount UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, sourcePodNamespace, sourcePodName, sourceNodeName, destinationServicePortName, destinationClusterIP)
TTL minute + INTERVAL 90 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_pod_service_1m_mv TO flowlens.flows_pod_service_1m AS
SELECT
    toStartOfMinute(flowEndSeconds) AS minute,
    sourcePodNamespace, sourcePodName, sourceNodeName,
    destinationServicePortName, destinationClusterIP,
    sum(packetDeltaCount) AS packetDeltaCount,
    sum(octetDeltaCount) AS octetDeltaCount,
    sum(reversePacketDeltaCount) AS reversePacketDeltaCount,
    sum(reverseOctetDeltaCount) AS reverseOctetDeltaCount,
    count() AS records
FROM flowlens.flows
WHERE destinationServicePortName != ''
GROUP BY minute, sourcePodNamespace, sourcePodName, sourceNodeName,
    destinationServicePortName, destinationClusterIP;

-- Pod to/from external addresses (flowType 3 and 4), seen from the Pod: octetDeltaCount is what
-- the Pod sent, reverseOctetDeltaCount what it received, whichever end opened the flow.
CREATE TABLE IF NOT EXISTS flowlens.flows_pod_external_1m
(
    minute DateTime,
    flowType UInt8,
    podNamespace String,
    podName String,
    nodeName String,
    externalIP String,
    packetDeltaCount UInt64,
    octetDeltaCount UInt64,
    reversePacketDeltaCount UInt64,
    reverseOctetDeltaCount UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, flowType, podNamespace, podName, nodeName, externalIP)
TTL minute + INTERVAL 90 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_pod_external_1m_mv TO flowlens.flows_pod_external_1m AS
SELECT
    minute, flowType, podNamespace, podName, nodeName, externalIP,
    sum(sentPackets) AS packetDeltaCount,
    sum(sentOctets) AS octetDeltaCount,
    sum(receivedPackets) AS reversePacketDeltaCount,
    sum(receivedOctets) AS reverseOctetDeltaCount,
    count() AS records
FROM
(
    SELECT
        toStartOfMinute(flowEndSeconds) AS minute,
        flowType,
        if(flowType = 3, sourcePodNamespace, destinationPodNamespace) AS podNamespace,
        if(flowType = 3, sourcePodName, destinationPodName) AS podName,
        if(flowType = 3, sourceNodeName, destinationNodeName) AS nodeName,
        if(flowType = 3, destinationIP, sourceIP) AS externalIP,
        if(flowType = 3, packetDeltaCount, reversePacketDeltaCount) AS sentPackets,
        if(flowType = 3, octetDeltaCount, reverseOctetDeltaCount) AS sentOctets,
        if(flowType = 3, reversePacketDeltaCount, packetDeltaCount) AS receivedPackets,
        if(flowType = 3, reverseOctetDeltaCount, octetDeltaCount) AS receivedOctets
    FROM flowlens.flows
    WHERE flowType IN (3, 4)
)
GROUP BY minute, flowType, podNamespace, podName, nodeName, externalIP;

-- Node to Node (every record; an external end has an empty Node name).
CREATE TABLE IF NOT EXISTS flowlens.flows_node_pair_1m
(
    minute DateTime,
    sourceNodeName String,
    destinationNodeName String,
    flowType UInt8,
    packetDeltaCount UInt64,
    octetDeltaCount UInt64,
    reversePacketDeltaCount UInt64,
    reverseOctetDeltaCount UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, sourceNodeName, destinationNodeName, flowType)
TTL minute + INTERVAL 90 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_node_pair_1m_mv TO flowlens.flows_node_pair_1m AS
SELECT
    toStartOfMinute(flowEndSeconds) AS minute,
    sourceNodeName, destinationNodeName, flowType,
    sum(packetDeltaCount) AS packetDeltaCount,
    sum(octetDeltaCount) AS octetDeltaCount,
    sum(reversePacketDeltaCount) AS reversePacketDeltaCount,
    sum(reverseOctetDeltaCount) AS reverseOctetDeltaCount,
    count() AS records
FROM flowlens.flows
GROUP BY minute, sourceNodeName, destinationNodeName, flowType;

-- Flows admitted (or dropped) by a NetworkPolicy, by policy pair and Pod pair.
CREATE TABLE IF NOT EXISTS flowlens.flows_policy_1m
(
    minute DateTime,
    egressNetworkPolicyNamespace String,
    egressNetworkPolicyName String,
    egressNetworkPolicyRuleAction UInt8,
    ingressNetworkPolicyNamespace String,
    ingressNetworkPolicyName String,
    ingressNetworkPolicyRuleAction UInt8,
    sourcePodNamespace String,
    sourcePodName String,
    destinationPodNamespace String,
    destinationPodName String,
    packetDeltaCount UInt64,
    octetDeltaCount UInt64,
    reversePacketDeltaCount UInt64,
    reverseOctetDeltaCount UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (minute, egressNetworkPolicyNamespace, egressNetworkPolicyName, egressNetworkPolicyRuleAction,
    ingressNetworkPolicyNamespace, ingressNetworkPolicyName, ingressNetworkPolicyRuleAction,
    sourcePodNamespace, sourcePodName, destinationPodNamespace, destinationPodName)
TTL minute + INTERVAL 90 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_policy_1m_mv TO flowlens.flows_policy_1m AS
SELECT
    toStartOfMinute(flowEndSeconds) AS minute,
    egressNetworkPolicyNamespace, egressNetworkPolicyName, egressNetworkPolicyRuleAction,
    ingressNetworkPolicyNamespace, ingressNetworkPolicyName, ingressNetworkPolicyRuleAction,
    sourcePodNamespace, sourcePodName, destinationPodNamespace, destinationPodName,
    sum(packetDeltaCount) AS packetDeltaCount,
    sum(octetDeltaCount) AS octetDeltaCount,
    sum(reversePacketDeltaCount) AS reversePacketDeltaCount,
    sum(reverseOctetDeltaCount) AS reverseOctetDeltaCount,
    count() AS records
FROM flowlens.flows
WHERE ingressNetworkPolicyName != '' OR egressNetworkPolicyName != ''
GROUP BY minute, egressNetworkPolicyNamespace, egressNetworkPolicyName, egressNetworkPolicyRuleAction,
    ingressNetworkPolicyNamespace, ingressNetworkPolicyName, ingressNetworkPolicyRuleAction,
    sourcePodNamespace, sourcePodName, destinationPodNamespace, destinationPodName;
