-- flowlens schema for ClickHouse: one row per aggregated flow record, columns named after the
-- IPFIX information elements (Antrea's flow-visibility names, so existing queries and Grafana
-- panels carry over), plus per-minute rollups maintained by materialized views so dashboards
-- read small tables. Run once by the ClickHouse image's /docker-entrypoint-initdb.d on an empty
-- volume; every statement is idempotent (IF NOT EXISTS).
--
-- GENERATED from bins/src/clickhouse/schema.rs (the collector and the aggregator create the
-- same tables on connect); `cargo test -p bins --lib clickhouse::schema` checks this file.
--
-- Retention: 7 days for records and rollups alike (TTL; ClickHouse drops expired parts in the
-- background). Servers older than 19.6 have no TTL: there flowlens drops whole day partitions.
-- Rollups hold sums of the delta counters per minute (packets, octets, reversePackets,
-- reverseOctets) and the count of records: read them with sum() ... GROUP BY.

CREATE DATABASE IF NOT EXISTS flowlens;

CREATE TABLE IF NOT EXISTS flowlens.flows
(
    id UInt64,
    timeInserted DateTime,
    flowStartSeconds DateTime,
    flowEndSeconds DateTime,
    flowEndReason UInt8,
    flowType UInt8,
    sourceIP String,
    destinationIP String,
    sourceTransportPort UInt16,
    destinationTransportPort UInt16,
    protocolIdentifier UInt8,
    packetTotalCount UInt64,
    octetTotalCount UInt64,
    reversePacketTotalCount UInt64,
    reverseOctetTotalCount UInt64,
    packetDeltaCount UInt64,
    octetDeltaCount UInt64,
    reversePacketDeltaCount UInt64,
    reverseOctetDeltaCount UInt64,
    throughput UInt64,
    reverseThroughput UInt64,
    sourcePodName String,
    sourcePodNamespace String,
    sourceNodeName String,
    destinationPodName String,
    destinationPodNamespace String,
    destinationNodeName String,
    destinationClusterIP String,
    destinationServicePort UInt16,
    destinationServicePortName String,
    ingressNetworkPolicyName String,
    ingressNetworkPolicyNamespace String,
    ingressNetworkPolicyType UInt8,
    ingressNetworkPolicyRuleName String,
    ingressNetworkPolicyRuleAction UInt8,
    egressNetworkPolicyName String,
    egressNetworkPolicyNamespace String,
    egressNetworkPolicyType UInt8,
    egressNetworkPolicyRuleName String,
    egressNetworkPolicyRuleAction UInt8,
    tcpState String,
    sourcePodLabels String,
    destinationPodLabels String,
    correlated UInt8,
    originalExporterAddress String,
    originalObservationDomainId UInt32,
    clusterId String,
    fromSourceNode UInt8,
    packetTotalCountFromSourceNode UInt64,
    octetTotalCountFromSourceNode UInt64,
    reversePacketTotalCountFromSourceNode UInt64,
    reverseOctetTotalCountFromSourceNode UInt64,
    packetDeltaCountFromSourceNode UInt64,
    octetDeltaCountFromSourceNode UInt64,
    reversePacketDeltaCountFromSourceNode UInt64,
    reverseOctetDeltaCountFromSourceNode UInt64,
    throughputFromSourceNode UInt64,
    reverseThroughputFromSourceNode UInt64,
    flowEndSecondsFromSourceNode DateTime,
    fromDestinationNode UInt8,
    packetTotalCountFromDestinationNode UInt64,
    octetTotalCountFromDestinationNode UInt64,
    reversePacketTotalCountFromDestinationNode UInt64,
    reverseOctetTotalCountFromDestinationNode UInt64,
    packetDeltaCountFromDestinationNode UInt64,
    octetDeltaCountFromDestinationNode UInt64,
    reversePacketDeltaCountFromDestinationNode UInt64,
    reverseOctetDeltaCountFromDestinationNode UInt64,
    throughputFromDestinationNode UInt64,
    reverseThroughputFromDestinationNode UInt64,
    flowEndSecondsFromDestinationNode DateTime
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(flowEndSeconds)
ORDER BY (flowEndSeconds, id)
TTL flowEndSeconds + INTERVAL 7 DAY
SETTINGS ttl_only_drop_parts = 1;

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
    packets UInt64,
    octets UInt64,
    reversePackets UInt64,
    reverseOctets UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (minute, sourcePodNamespace, sourcePodName, sourceNodeName, destinationPodNamespace, destinationPodName, destinationNodeName, flowType)
TTL minute + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_pod_pair_1m_mv TO flowlens.flows_pod_pair_1m AS
SELECT
    toStartOfMinute(flowEndSeconds) AS minute,
    sourcePodNamespace,
    sourcePodName,
    sourceNodeName,
    destinationPodNamespace,
    destinationPodName,
    destinationNodeName,
    flowType,
    sum(packetDeltaCount) AS packets,
    sum(octetDeltaCount) AS octets,
    sum(reversePacketDeltaCount) AS reversePackets,
    sum(reverseOctetDeltaCount) AS reverseOctets,
    count() AS records
FROM flowlens.flows
WHERE flowType IN (1, 2)
GROUP BY minute, sourcePodNamespace, sourcePodName, sourceNodeName, destinationPodNamespace, destinationPodName, destinationNodeName, flowType;

-- The same per hour.
CREATE TABLE IF NOT EXISTS flowlens.flows_pod_pair_1h
(
    hour DateTime,
    sourcePodNamespace String,
    sourcePodName String,
    sourceNodeName String,
    destinationPodNamespace String,
    destinationPodName String,
    destinationNodeName String,
    flowType UInt8,
    packets UInt64,
    octets UInt64,
    reversePackets UInt64,
    reverseOctets UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(hour)
ORDER BY (hour, sourcePodNamespace, sourcePodName, sourceNodeName, destinationPodNamespace, destinationPodName, destinationNodeName, flowType)
TTL hour + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_pod_pair_1h_mv TO flowlens.flows_pod_pair_1h AS
SELECT
    toStartOfHour(flowEndSeconds) AS hour,
    sourcePodNamespace,
    sourcePodName,
    sourceNodeName,
    destinationPodNamespace,
    destinationPodName,
    destinationNodeName,
    flowType,
    sum(packetDeltaCount) AS packets,
    sum(octetDeltaCount) AS octets,
    sum(reversePacketDeltaCount) AS reversePackets,
    sum(reverseOctetDeltaCount) AS reverseOctets,
    count() AS records
FROM flowlens.flows
WHERE flowType IN (1, 2)
GROUP BY hour, sourcePodNamespace, sourcePodName, sourceNodeName, destinationPodNamespace, destinationPodName, destinationNodeName, flowType;

-- Pod to Service (destinationServicePortName set), by client Pod.
CREATE TABLE IF NOT EXISTS flowlens.flows_pod_service_1m
(
    minute DateTime,
    sourcePodNamespace String,
    sourcePodName String,
    sourceNodeName String,
    destinationServicePortName String,
    destinationClusterIP String,
    packets UInt64,
    octets UInt64,
    reversePackets UInt64,
    reverseOctets UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (minute, sourcePodNamespace, sourcePodName, sourceNodeName, destinationServicePortName, destinationClusterIP)
TTL minute + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_pod_service_1m_mv TO flowlens.flows_pod_service_1m AS
SELECT
    toStartOfMinute(flowEndSeconds) AS minute,
    sourcePodNamespace,
    sourcePodName,
    sourceNodeName,
    destinationServicePortName,
    destinationClusterIP,
    sum(packetDeltaCount) AS packets,
    sum(octetDeltaCount) AS octets,
    sum(reversePacketDeltaCount) AS reversePackets,
    sum(reverseOctetDeltaCount) AS reverseOctets,
    count() AS records
FROM flowlens.flows
WHERE destinationServicePortName != ''
GROUP BY minute, sourcePodNamespace, sourcePodName, sourceNodeName, destinationServicePortName, destinationClusterIP;

-- The same per hour.
CREATE TABLE IF NOT EXISTS flowlens.flows_pod_service_1h
(
    hour DateTime,
    sourcePodNamespace String,
    sourcePodName String,
    sourceNodeName String,
    destinationServicePortName String,
    destinationClusterIP String,
    packets UInt64,
    octets UInt64,
    reversePackets UInt64,
    reverseOctets UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(hour)
ORDER BY (hour, sourcePodNamespace, sourcePodName, sourceNodeName, destinationServicePortName, destinationClusterIP)
TTL hour + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_pod_service_1h_mv TO flowlens.flows_pod_service_1h AS
SELECT
    toStartOfHour(flowEndSeconds) AS hour,
    sourcePodNamespace,
    sourcePodName,
    sourceNodeName,
    destinationServicePortName,
    destinationClusterIP,
    sum(packetDeltaCount) AS packets,
    sum(octetDeltaCount) AS octets,
    sum(reversePacketDeltaCount) AS reversePackets,
    sum(reverseOctetDeltaCount) AS reverseOctets,
    count() AS records
FROM flowlens.flows
WHERE destinationServicePortName != ''
GROUP BY hour, sourcePodNamespace, sourcePodName, sourceNodeName, destinationServicePortName, destinationClusterIP;

-- Pod to/from external addresses (flowType 3 and 4), seen from the Pod: octetDeltaCount is what the Pod sent, reverseOctetDeltaCount what it received, whichever end opened the flow.
CREATE TABLE IF NOT EXISTS flowlens.flows_pod_external_1m
(
    minute DateTime,
    flowType UInt8,
    podNamespace String,
    podName String,
    nodeName String,
    externalIP String,
    packets UInt64,
    octets UInt64,
    reversePackets UInt64,
    reverseOctets UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (minute, flowType, podNamespace, podName, nodeName, externalIP)
TTL minute + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_pod_external_1m_mv TO flowlens.flows_pod_external_1m AS
SELECT
    toStartOfMinute(flowEndSeconds) AS minute,
    flowType,
    if(flowType = 3, sourcePodNamespace, destinationPodNamespace) AS podNamespace,
    if(flowType = 3, sourcePodName, destinationPodName) AS podName,
    if(flowType = 3, sourceNodeName, destinationNodeName) AS nodeName,
    if(flowType = 3, destinationIP, sourceIP) AS externalIP,
    sum(if(flowType = 3, packetDeltaCount, reversePacketDeltaCount)) AS packets,
    sum(if(flowType = 3, octetDeltaCount, reverseOctetDeltaCount)) AS octets,
    sum(if(flowType = 3, reversePacketDeltaCount, packetDeltaCount)) AS reversePackets,
    sum(if(flowType = 3, reverseOctetDeltaCount, octetDeltaCount)) AS reverseOctets,
    count() AS records
FROM flowlens.flows
WHERE flowType IN (3, 4)
GROUP BY minute, flowType, podNamespace, podName, nodeName, externalIP;

-- The same per hour.
CREATE TABLE IF NOT EXISTS flowlens.flows_pod_external_1h
(
    hour DateTime,
    flowType UInt8,
    podNamespace String,
    podName String,
    nodeName String,
    externalIP String,
    packets UInt64,
    octets UInt64,
    reversePackets UInt64,
    reverseOctets UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(hour)
ORDER BY (hour, flowType, podNamespace, podName, nodeName, externalIP)
TTL hour + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_pod_external_1h_mv TO flowlens.flows_pod_external_1h AS
SELECT
    toStartOfHour(flowEndSeconds) AS hour,
    flowType,
    if(flowType = 3, sourcePodNamespace, destinationPodNamespace) AS podNamespace,
    if(flowType = 3, sourcePodName, destinationPodName) AS podName,
    if(flowType = 3, sourceNodeName, destinationNodeName) AS nodeName,
    if(flowType = 3, destinationIP, sourceIP) AS externalIP,
    sum(if(flowType = 3, packetDeltaCount, reversePacketDeltaCount)) AS packets,
    sum(if(flowType = 3, octetDeltaCount, reverseOctetDeltaCount)) AS octets,
    sum(if(flowType = 3, reversePacketDeltaCount, packetDeltaCount)) AS reversePackets,
    sum(if(flowType = 3, reverseOctetDeltaCount, octetDeltaCount)) AS reverseOctets,
    count() AS records
FROM flowlens.flows
WHERE flowType IN (3, 4)
GROUP BY hour, flowType, podNamespace, podName, nodeName, externalIP;

-- Node to Node (every record; an external end has an empty Node name).
CREATE TABLE IF NOT EXISTS flowlens.flows_node_pair_1m
(
    minute DateTime,
    sourceNodeName String,
    destinationNodeName String,
    flowType UInt8,
    packets UInt64,
    octets UInt64,
    reversePackets UInt64,
    reverseOctets UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (minute, sourceNodeName, destinationNodeName, flowType)
TTL minute + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_node_pair_1m_mv TO flowlens.flows_node_pair_1m AS
SELECT
    toStartOfMinute(flowEndSeconds) AS minute,
    sourceNodeName,
    destinationNodeName,
    flowType,
    sum(packetDeltaCount) AS packets,
    sum(octetDeltaCount) AS octets,
    sum(reversePacketDeltaCount) AS reversePackets,
    sum(reverseOctetDeltaCount) AS reverseOctets,
    count() AS records
FROM flowlens.flows
GROUP BY minute, sourceNodeName, destinationNodeName, flowType;

-- The same per hour.
CREATE TABLE IF NOT EXISTS flowlens.flows_node_pair_1h
(
    hour DateTime,
    sourceNodeName String,
    destinationNodeName String,
    flowType UInt8,
    packets UInt64,
    octets UInt64,
    reversePackets UInt64,
    reverseOctets UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(hour)
ORDER BY (hour, sourceNodeName, destinationNodeName, flowType)
TTL hour + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_node_pair_1h_mv TO flowlens.flows_node_pair_1h AS
SELECT
    toStartOfHour(flowEndSeconds) AS hour,
    sourceNodeName,
    destinationNodeName,
    flowType,
    sum(packetDeltaCount) AS packets,
    sum(octetDeltaCount) AS octets,
    sum(reversePacketDeltaCount) AS reversePackets,
    sum(reverseOctetDeltaCount) AS reverseOctets,
    count() AS records
FROM flowlens.flows
GROUP BY hour, sourceNodeName, destinationNodeName, flowType;

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
    packets UInt64,
    octets UInt64,
    reversePackets UInt64,
    reverseOctets UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(minute)
ORDER BY (minute, egressNetworkPolicyNamespace, egressNetworkPolicyName, egressNetworkPolicyRuleAction, ingressNetworkPolicyNamespace, ingressNetworkPolicyName, ingressNetworkPolicyRuleAction, sourcePodNamespace, sourcePodName, destinationPodNamespace, destinationPodName)
TTL minute + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_policy_1m_mv TO flowlens.flows_policy_1m AS
SELECT
    toStartOfMinute(flowEndSeconds) AS minute,
    egressNetworkPolicyNamespace,
    egressNetworkPolicyName,
    egressNetworkPolicyRuleAction,
    ingressNetworkPolicyNamespace,
    ingressNetworkPolicyName,
    ingressNetworkPolicyRuleAction,
    sourcePodNamespace,
    sourcePodName,
    destinationPodNamespace,
    destinationPodName,
    sum(packetDeltaCount) AS packets,
    sum(octetDeltaCount) AS octets,
    sum(reversePacketDeltaCount) AS reversePackets,
    sum(reverseOctetDeltaCount) AS reverseOctets,
    count() AS records
FROM flowlens.flows
WHERE ingressNetworkPolicyName != '' OR egressNetworkPolicyName != ''
GROUP BY minute, egressNetworkPolicyNamespace, egressNetworkPolicyName, egressNetworkPolicyRuleAction, ingressNetworkPolicyNamespace, ingressNetworkPolicyName, ingressNetworkPolicyRuleAction, sourcePodNamespace, sourcePodName, destinationPodNamespace, destinationPodName;

-- The same per hour.
CREATE TABLE IF NOT EXISTS flowlens.flows_policy_1h
(
    hour DateTime,
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
    packets UInt64,
    octets UInt64,
    reversePackets UInt64,
    reverseOctets UInt64,
    records UInt64
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMMDD(hour)
ORDER BY (hour, egressNetworkPolicyNamespace, egressNetworkPolicyName, egressNetworkPolicyRuleAction, ingressNetworkPolicyNamespace, ingressNetworkPolicyName, ingressNetworkPolicyRuleAction, sourcePodNamespace, sourcePodName, destinationPodNamespace, destinationPodName)
TTL hour + INTERVAL 7 DAY;

CREATE MATERIALIZED VIEW IF NOT EXISTS flowlens.flows_policy_1h_mv TO flowlens.flows_policy_1h AS
SELECT
    toStartOfHour(flowEndSeconds) AS hour,
    egressNetworkPolicyNamespace,
    egressNetworkPolicyName,
    egressNetworkPolicyRuleAction,
    ingressNetworkPolicyNamespace,
    ingressNetworkPolicyName,
    ingressNetworkPolicyRuleAction,
    sourcePodNamespace,
    sourcePodName,
    destinationPodNamespace,
    destinationPodName,
    sum(packetDeltaCount) AS packets,
    sum(octetDeltaCount) AS octets,
    sum(reversePacketDeltaCount) AS reversePackets,
    sum(reverseOctetDeltaCount) AS reverseOctets,
    count() AS records
FROM flowlens.flows
WHERE ingressNetworkPolicyName != '' OR egressNetworkPolicyName != ''
GROUP BY hour, egressNetworkPolicyNamespace, egressNetworkPolicyName, egressNetworkPolicyRuleAction, ingressNetworkPolicyNamespace, ingressNetworkPolicyName, ingressNetworkPolicyRuleAction, sourcePodNamespace, sourcePodName, destinationPodNamespace, destinationPodName;
