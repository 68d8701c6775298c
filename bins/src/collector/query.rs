//! The query interface every store backend answers, and the shapes of its answers.
//!
//! Inputs are typed (parsed at the HTTP edge by `api::params`), so a backend trusts them: names
//! are plain strings, times are Unix seconds, and ranges are half-open `[start, end)`.
//! Answers derive `Serialize` with camelCase keys: they are what `/api/*` returns verbatim.

use std::net::IpAddr;

use serde::Serialize;

/// The bounds every store query runs under: the `query:` section of the collector config
/// (`crate::config::collector::QueryFile`). A query past one fails with
/// [`super::store::StoreError::Deadline`] or [`super::store::StoreError::TooLarge`], which tell
/// the user to narrow the time range or add filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryLimits {
    /// Wall time of one store call; SQLite is interrupted, ClickHouse gets
    /// `max_execution_time`.
    pub timeout: std::time::Duration,
    /// Groups (and, for time series, group × minute points) one query may fold in memory;
    /// ClickHouse gets it as `max_rows_to_group_by`.
    pub max_groups: usize,
    /// Store calls running at once (the API waits up to `timeout` for a free one, then answers
    /// 503 with Retry-After).
    pub max_concurrent: usize,
    /// ClickHouse's `max_memory_usage` per query, bytes (SQLite is bounded by `max_groups`).
    pub max_memory_bytes: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: std::time::Duration::from_secs(10),
            max_groups: 250_000,
            max_concurrent: 4,
            max_memory_bytes: 1 << 30,
        }
    }
}

/// Latest time a query may name, Unix seconds: 2100-01-01T00:00:00Z. Far beyond any record,
/// below ClickHouse's `DateTime` limit (2106), and small enough that no arithmetic on a range
/// (rounding to minutes and hours) can overflow.
pub const MAX_TIME_SECS: u64 = 4_102_444_800;

/// Half-open time range in Unix seconds, `[start, end)`, on the record's flowEndSeconds. The API
/// only builds ranges within `0..=MAX_TIME_SECS`; the arithmetic below saturates anyway so a
/// range built elsewhere cannot overflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub start: u64,
    pub end: u64,
}

impl TimeRange {
    pub fn new(start: u64, end: u64) -> TimeRange {
        TimeRange { start, end }
    }

    /// The range as whole minutes, for the per-minute rollups: every minute that overlaps
    /// `[start, end)`. Start of the first, start of the one after the last.
    pub fn minutes(&self) -> (u64, u64) {
        (
            self.start / 60 * 60,
            self.end.div_ceil(60).saturating_mul(60),
        )
    }

    /// Length in seconds, at least 1 (a divisor for averages).
    pub fn secs(&self) -> u64 {
        let (a, b) = self.minutes();
        b.saturating_sub(a).max(1)
    }
}

/// `ns/name`, or just a name, which then matches in every namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamedRef {
    pub namespace: Option<String>,
    pub name: String,
}

/// Filters on the flow-record table. Every set field must match (AND); a field that names an
/// endpoint (namespace, Pod, Node, IP) matches either end of the flow.
#[derive(Clone, Debug, Default)]
pub struct FlowFilter {
    pub range: Option<TimeRange>,
    pub namespace: Option<String>,
    pub pod: Option<NamedRef>,
    pub node: Option<String>,
    /// `ns/name` of the Service (any port) or `ns/name:port` (one port).
    pub service: Option<String>,
    /// Ingress or egress policy.
    pub policy: Option<NamedRef>,
    pub flow_type: Option<u8>,
    pub src_ip: Option<IpAddr>,
    pub dst_ip: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub protocol: Option<u8>,
    /// One end only: the source's / destination's namespace, Pod and Node (`srcNamespace`,
    /// `srcPod`, `srcNode`, `dst…` in the API). Independent of the either-end filters above.
    pub src_namespace: Option<String>,
    pub dst_namespace: Option<String>,
    pub src_pod: Option<NamedRef>,
    pub dst_pod: Option<NamedRef>,
    pub src_node: Option<String>,
    pub dst_node: Option<String>,
}

/// A page of flow records, newest first (by flowEndSeconds, then insertion order).
#[derive(Clone, Debug)]
pub struct FlowQuery {
    pub filter: FlowFilter,
    pub limit: u32,
    pub offset: u32,
}

/// Filters the dashboards apply to the rollups. Each applies where the rollup has the
/// dimension (a Node filter does not narrow the Pod → Service rollup, which has no Node).
#[derive(Clone, Debug, Default)]
pub struct DashFilter {
    pub range: TimeRange,
    pub namespace: Option<String>,
    pub pod: Option<NamedRef>,
    pub node: Option<String>,
}

impl DashFilter {
    pub fn range(range: TimeRange) -> DashFilter {
        DashFilter {
            range,
            namespace: None,
            pod: None,
            node: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TopBy {
    /// Source Pod → destination Pod (both ends Pods).
    PodPair,
    /// One Pod, the sum of what it sent and received (Pod-to-Pod and external traffic).
    Pod,
    /// Source Node → destination Node.
    NodePair,
    /// One Node, sent plus received.
    Node,
    /// Service (by `ns/name:port`), from every client Pod.
    Service,
    /// External IP, both directions.
    External,
}

#[derive(Clone, Debug)]
pub struct TopQuery {
    pub filter: DashFilter,
    pub by: TopBy,
    pub limit: u32,
}

/// Byte and packet sums over a rollup group. "forward" is source → destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    pub octets: u64,
    pub packets: u64,
    pub reverse_octets: u64,
    pub reverse_packets: u64,
    /// Records (exports) summed into the group: a long flow counts once per export.
    pub records: u64,
}

impl Traffic {
    pub fn bytes(&self) -> u64 {
        self.octets.saturating_add(self.reverse_octets)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopRow {
    /// Pod as `ns/name`, Node name, Service `ns/name:port`, or IP.
    pub src: String,
    /// The other end for pair groupings, absent for single-entity groupings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// octets + reverseOctets.
    pub bytes: u64,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SeriesBy {
    SrcPod,
    DstPod,
    Service,
    NodePair,
}

#[derive(Clone, Debug)]
pub struct SeriesQuery {
    pub filter: DashFilter,
    pub by: SeriesBy,
    /// At most this many series, the largest by bytes over the range.
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeSeries {
    /// Seconds per point.
    pub step: u64,
    pub series: Vec<Series>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    pub name: String,
    /// For Node pairs: flowType 1 intra-Node, 2 inter-Node, 3/4 external; else absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_type: Option<u8>,
    /// `[minuteStartSecs, bitsPerSecond, reverseBitsPerSecond]`; minutes without traffic are
    /// left out.
    pub points: Vec<[u64; 3]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SankeyBy {
    /// Source Pod → destination Pod.
    PodPair,
    /// Egress policy (of the source) → ingress policy (of the destination).
    Policy,
    /// Client Pod → Service.
    PodService,
    /// Pod → external IP.
    PodExternal,
}

#[derive(Clone, Debug)]
pub struct SankeyQuery {
    pub filter: DashFilter,
    pub by: SankeyBy,
    pub limit: u32,
}

/// Sankey graph. Node ids carry the side (`s:` source, `d:` destination) so a Pod that both
/// sends and receives appears twice and the graph has no cycles (ECharts requires that).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sankey {
    pub nodes: Vec<SankeyNode>,
    pub links: Vec<SankeyLink>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SankeyNode {
    pub id: String,
    pub name: String,
    /// "source" or "destination".
    pub side: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SankeyLink {
    pub source: String,
    pub target: String,
    pub bytes: u64,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeMatrix {
    /// Every Node that appears as a source or destination, sorted.
    pub nodes: Vec<String>,
    /// Non-empty cells only. Mbps is the average over the range, both directions.
    pub cells: Vec<NodeCell>,
    pub range_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCell {
    pub src: String,
    pub dst: String,
    pub mbps: f64,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
pub struct PolicyQuery {
    pub filter: DashFilter,
    pub ingress: Option<NamedRef>,
    pub egress: Option<NamedRef>,
    pub limit: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyName {
    pub namespace: String,
    pub name: String,
    /// 1 allow, 2 drop, 3 reject, 0 none.
    pub action: u8,
}

/// Traffic between a Pod pair under one egress → ingress policy pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFlow {
    pub egress: PolicyName,
    pub ingress: PolicyName,
    pub src_pod: String,
    pub dst_pod: String,
    pub bytes: u64,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreStats {
    pub backend: &'static str,
    /// Where the data lives (file path or server URL).
    pub location: String,
    pub records: u64,
    pub oldest_end_secs: Option<u64>,
    pub newest_end_secs: Option<u64>,
    /// Bytes in use by the store (excluding free pages), if the backend knows.
    pub bytes: Option<u64>,
    pub rollup_rows: u64,
}

/// What a retention pass removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionReport {
    pub deleted_records: u64,
    pub deleted_rollup_rows: u64,
    /// Everything older than this is gone (0 if nothing was deleted by minute; records taken
    /// from one exporter by size retention are not counted here).
    pub cutoff_secs: u64,
    /// `deleted_records` by reason and exporter, where the store knows them.
    pub deleted_by: Vec<ExporterDeleted>,
    /// Names (`dict` rows) no record or rollup row referred to any more, deleted.
    pub deleted_names: u64,
    /// Records each exporter holds after the pass, by address ("" for the unknown exporter),
    /// when the store keeps them (`None`: it does not).
    pub exporters: Option<Vec<(String, u64)>>,
}

/// Records one retention pass deleted from one exporter for one reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExporterDeleted {
    pub reason: RetentionReason,
    /// The exporter's address; "" when unknown.
    pub exporter: String,
    pub records: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RetentionReason {
    /// Older than `retention`.
    Age,
    /// The store was over `maxStoreBytes`.
    Size,
}

impl RetentionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RetentionReason::Age => "age",
            RetentionReason::Size => "size",
        }
    }
}

/// One stored flow record, flat, keys named after the IPFIX information elements so that
/// they read like `flowlens decode` output and Antrea's collector fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRow {
    pub id: i64,
    pub inserted_at: u64,
    pub flow_start_seconds: u64,
    pub flow_end_seconds: u64,
    pub flow_end_reason: u8,
    pub flow_type: u8,
    #[serde(rename = "sourceIPAddress")]
    pub source_ip: String,
    #[serde(rename = "destinationIPAddress")]
    pub destination_ip: String,
    pub source_transport_port: u16,
    pub destination_transport_port: u16,
    pub protocol_identifier: u8,
    pub packet_total_count: u64,
    pub octet_total_count: u64,
    pub reverse_packet_total_count: u64,
    pub reverse_octet_total_count: u64,
    pub packet_delta_count: u64,
    pub octet_delta_count: u64,
    pub reverse_packet_delta_count: u64,
    pub reverse_octet_delta_count: u64,
    pub throughput: u64,
    pub reverse_throughput: u64,
    /// Counters as the source / destination Node reported them (absent if it did not).
    pub from_source_node: Option<NodeRow>,
    pub from_destination_node: Option<NodeRow>,
    pub source_pod_name: String,
    pub source_pod_namespace: String,
    pub source_node_name: String,
    pub destination_pod_name: String,
    pub destination_pod_namespace: String,
    pub destination_node_name: String,
    #[serde(rename = "destinationClusterIP")]
    pub destination_cluster_ip: Option<String>,
    pub destination_service_port: u16,
    pub destination_service_port_name: String,
    pub ingress_network_policy_name: String,
    pub ingress_network_policy_namespace: String,
    pub ingress_network_policy_type: u8,
    pub ingress_network_policy_rule_name: String,
    pub ingress_network_policy_rule_action: u8,
    pub egress_network_policy_name: String,
    pub egress_network_policy_namespace: String,
    pub egress_network_policy_type: u8,
    pub egress_network_policy_rule_name: String,
    pub egress_network_policy_rule_action: u8,
    pub tcp_state: String,
    pub source_pod_labels: String,
    pub destination_pod_labels: String,
    pub correlated: bool,
    pub original_exporter_address: Option<String>,
    pub original_observation_domain_id: u32,
    pub cluster_id: String,
    /// The address of the IPFIX peer that sent the record to this collector (the aggregator),
    /// as the collector saw it; absent when unknown (records stored before flowlens kept it,
    /// seeded by tools, or in ClickHouse, which does not keep it).
    pub exporter_address: Option<String>,
}

/// One Node's counters within a [`FlowRow`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRow {
    /// packets, octets, reverse packets, reverse octets.
    pub totals: [u64; 4],
    pub deltas: [u64; 4],
    pub throughput: u64,
    pub reverse_throughput: u64,
    pub flow_end_seconds: u64,
}
