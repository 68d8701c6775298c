//! The store interface: what the collector writes aggregated records into and what the HTTP
//! API reads from. SQLite (embedded, the default) and ClickHouse (scale-out) implement it.
//!
//! Methods are blocking: the API calls them from `spawn_blocking`, and the ingest path runs
//! them on its own thread, so a slow query never stalls the async reactor. Each backend bounds
//! its queries by its [`super::query::QueryLimits`] (time and groups held in memory) and says
//! so with [`StoreError::Deadline`] / [`StoreError::TooLarge`].

use std::net::IpAddr;
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

/// Records that came from one exporter, in the order received.
#[derive(Clone, Copy, Debug)]
pub struct Run<'a> {
    /// The address of the IPFIX peer whose session carried them, as the collecting process
    /// saw it — never the records' `originalExporter*` fields, which the peer writes itself.
    /// `None`: records that came another way (seeded by a tool or a test), stored as the
    /// unknown exporter.
    pub exporter: Option<IpAddr>,
    pub records: &'a [AggregatedRecord],
}

/// What [`Store::insert_batch`] writes in one transaction: runs of records, each with its
/// exporter (one exporter may have several runs; the writer coalesces many peers' messages).
#[derive(Clone, Debug, Default)]
pub struct Batch<'a> {
    /// Unix seconds the collector received the records.
    pub received_at: u64,
    runs: Vec<Run<'a>>,
}

impl<'a> Batch<'a> {
    pub fn new(received_at: u64) -> Batch<'a> {
        Batch {
            received_at,
            runs: Vec::new(),
        }
    }

    /// A batch of one run.
    pub fn of(
        exporter: Option<IpAddr>,
        records: &'a [AggregatedRecord],
        received_at: u64,
    ) -> Batch<'a> {
        let mut b = Batch::new(received_at);
        b.push(exporter, records);
        b
    }

    /// Appends a run (an empty one is left out).
    pub fn push(&mut self, exporter: Option<IpAddr>, records: &'a [AggregatedRecord]) {
        if !records.is_empty() {
            self.runs.push(Run { exporter, records });
        }
    }

    pub fn runs(&self) -> &[Run<'a>] {
        &self.runs
    }

    /// Records in all runs.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|r| r.records.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

pub trait Store: Send + Sync {
    /// Stores a batch atomically: the records (each with its exporter, where the store keeps
    /// it) and every rollup they add to, or none of them.
    fn insert_batch(&self, batch: &Batch<'_>) -> Result<(), StoreError>;

    /// [`Self::insert_batch`] for records of no known exporter (tools, tests, seeding).
    /// `received_at` (Unix seconds) is when the collector received them.
    fn insert(&self, records: &[AggregatedRecord], received_at: u64) -> Result<(), StoreError> {
        self.insert_batch(&Batch::of(None, records, received_at))
    }

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

    /// Frees the caches the store can rebuild (page caches, name caches), so that memory a
    /// burst filled goes back once it is over. The collector calls it every
    /// [`super::RELEASE_EVERY`].
    fn release_memory(&self) {}
}
