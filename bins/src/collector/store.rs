//! The store interface: what the collector writes aggregated records into and what the HTTP
//! API reads from. SQLite (embedded, the default) and ClickHouse (scale-out) implement it.
//!
//! Methods are blocking: the API calls them from `spawn_blocking`, and the ingest path runs
//! them on its own thread, so a slow query never stalls the async reactor. Each backend bounds
//! its queries by its [`super::query::QueryLimits`] (time and groups held in memory) and says
//! so with [`StoreError::Deadline`] / [`StoreError::TooLarge`].

use std::path::PathBuf;

use flowcore::aggregator::AggregatedRecord;

use super::query::{
    DashFilter, FlowQuery, FlowRow, NodeMatrix, PolicyFlow, PolicyQuery, RetentionReport, Sankey,
    SankeyQuery, SeriesQuery, StoreStats, TimeSeries, TopQuery, TopRow,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("store {location}: {op} failed: {source}")]
    Backend {
        location: String,
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The query ran past `query.timeout` and was stopped.
    #[error(
        "the {op} ran longer than query.timeout ({limit}) and was stopped; narrow the time range or add filters (namespace, pod, node)"
    )]
    Deadline {
        op: &'static str,
        limit: flowcore::config::Duration,
    },
    /// The query would hold more in memory than its bound (`bound` names it).
    #[error(
        "the {op} matches more than {bound}; narrow the time range or add filters (namespace, pod, node)"
    )]
    TooLarge { op: &'static str, bound: String },
}

pub trait Store: Send + Sync {
    /// Stores a batch atomically: the records and every rollup they add to, or none of them.
    /// `received_at` (Unix seconds) is when the collector received the batch.
    fn insert(&self, batch: &[AggregatedRecord], received_at: u64) -> Result<(), StoreError>;

    /// Flow records, newest first, from the record table (the Flow Records dashboard).
    fn flows(&self, q: &FlowQuery) -> Result<Vec<FlowRow>, StoreError>;

    /// The largest talkers by bytes (both directions) over the range.
    fn top(&self, q: &TopQuery) -> Result<Vec<TopRow>, StoreError>;

    /// Per-minute throughput, one series per group.
    fn timeseries(&self, q: &SeriesQuery) -> Result<TimeSeries, StoreError>;

    fn sankey(&self, q: &SankeyQuery) -> Result<Sankey, StoreError>;

    /// Average Mbps per (source Node, destination Node) over the range.
    fn node_matrix(&self, q: &DashFilter) -> Result<NodeMatrix, StoreError>;

    /// Pod pairs per egress → ingress policy pair, largest first.
    fn policy_flows(&self, q: &PolicyQuery) -> Result<Vec<PolicyFlow>, StoreError>;

    fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Applies the store's retention settings as of `now` (Unix seconds). The collector calls
    /// it periodically (see [`super::spawn_retention`]).
    fn enforce_retention(&self, now: u64) -> Result<RetentionReport, StoreError>;
}
