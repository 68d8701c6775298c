//! The collector's storage and HTTP API: aggregated records go into a [`store::Store`]
//! (SQLite embedded by default), dashboards and `flowlens observe` read them back through
//! [`api::router`].
//!
//! Invariants: a batch is stored whole or not at all, rollups always equal the sums of the
//! records they cover (both are written in the same transaction and deleted by the same
//! minute cutoff), and nothing a client sends can make a query unbounded.

pub mod api;
pub mod clickhouse;
mod fold;
pub mod ingest;
pub mod query;
pub mod sqlite;
pub mod store;
pub mod synth;
pub mod ui;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use api::{QueryMetrics, router, router_with};
pub use ingest::{Ingest, IngestConfig};
pub use query::QueryLimits;
pub use sqlite::{SqliteConfig, SqliteStore};
pub use store::{Store, StoreError};

/// Runs [`Store::enforce_retention`] every `every` on the blocking pool, logging what it
/// deleted. Ends when the returned handle is aborted.
pub fn spawn_retention(store: Arc<dyn Store>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let s = store.clone();
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            match tokio::task::spawn_blocking(move || s.enforce_retention(now)).await {
                Ok(Ok(r)) if r.deleted_records + r.deleted_rollup_rows > 0 => tracing::info!(
                    deleted_records = r.deleted_records,
                    deleted_rollup_rows = r.deleted_rollup_rows,
                    cutoff_secs = r.cutoff_secs,
                    "store retention"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "store retention failed"),
                Err(e) => tracing::warn!(error = %e, "store retention task failed"),
            }
        }
    })
}
