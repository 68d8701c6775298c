//! The collector's storage and HTTP API: aggregated records go into a [`store::Store`]
//! (SQLite embedded by default), dashboards and `flowlens observe` read them back through
//! [`api::router`].
//!
//! Invariants: a batch is stored whole or not at all; rollups always equal the sums of the
//! records they cover (both are written in the same transaction and deleted by the same
//! minute cutoff) — except records that size retention took from the exporters holding the
//! most, whose sums stay in the rollups, which carry no exporter, until their minutes go; and
//! nothing a client sends can make a query unbounded.

pub mod api;
pub mod clickhouse;
mod fold;
pub mod ingest;
pub mod query;
pub mod retention;
pub mod sqlite;
pub mod store;
pub mod synth;
pub mod ui;

pub use api::{QueryMetrics, router, router_with};
pub use ingest::{Ingest, IngestConfig};
pub use query::QueryLimits;
pub use retention::{RELEASE_EVERY, RetentionMetrics, spawn_release, spawn_retention};
pub use sqlite::{SqliteConfig, SqliteStore};
pub use store::{Batch, Run, Store, StoreError};
