//! The periodic retention pass and what it tells the operator: a log line per pass that
//! deleted something, and metrics of what went, by reason and by exporter.
//!
//! Per-exporter series exist only for exporters the store holds records of (plus one pass
//! after the last of them went, so a scrape sees the final deletion): their number is bounded
//! by the store's content, not by every address that ever sent.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::query::{RetentionReason, RetentionReport};
use super::store::Store;

/// How an exporter is named in logs and metrics: its address, or `unknown`.
pub fn exporter_label(address: &str) -> &str {
    if address.is_empty() {
        "unknown"
    } else {
        address
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeletedLabels {
    reason: &'static str,
    exporter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExporterLabels {
    exporter: String,
}

const REASONS: [RetentionReason; 2] = [RetentionReason::Age, RetentionReason::Size];

/// Retention's metrics, registered under the collector's prefix.
#[derive(Clone, Debug, Default)]
pub struct RetentionMetrics {
    deleted_records: Family<DeletedLabels, Counter>,
    deleted_rollup_rows: Counter,
    deleted_names: Counter,
    exporter_records: Family<ExporterLabels, Gauge>,
    /// Exporters with series, and those of them the store held no record of at the last pass.
    series: Arc<Mutex<(HashSet<String>, HashSet<String>)>>,
}

impl RetentionMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "store_retention_deleted_records",
            "Records retention deleted, by reason (age: older than retention; size: over maxStoreBytes, taken from the exporters holding the most first) and exporter (the IPFIX peer's address; unknown: records of no known exporter). Series exist while the store holds records of their exporter",
            self.deleted_records.clone(),
        );
        r.register(
            "store_retention_deleted_rollup_rows",
            "Per-minute and per-hour rollup rows retention deleted",
            self.deleted_rollup_rows.clone(),
        );
        r.register(
            "store_names_pruned",
            "Names (Pods, labels, policies, ...) deleted from the embedded store once no record or rollup row referred to them",
            self.deleted_names.clone(),
        );
        r.register(
            "store_exporter_records",
            "Records the store holds per exporter (embedded store; updated by each retention pass)",
            self.exporter_records.clone(),
        );
    }

    /// Counts what `r` deleted and follows the exporters it says the store holds.
    pub fn observe(&self, r: &RetentionReport) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let (known, absent) = &mut *series;
        for d in &r.deleted_by {
            let exporter = exporter_label(&d.exporter).to_owned();
            // Seen this pass, whatever the list of exporters held says.
            absent.remove(&exporter);
            self.deleted_records
                .get_or_create(&DeletedLabels {
                    reason: d.reason.as_str(),
                    exporter: exporter.clone(),
                })
                .inc_by(d.records);
            known.insert(exporter);
        }
        self.deleted_rollup_rows.inc_by(r.deleted_rollup_rows);
        self.deleted_names.inc_by(r.deleted_names);
        let Some(held) = &r.exporters else {
            return;
        };
        let present: HashSet<String> = held
            .iter()
            .map(|(e, n)| {
                let exporter = exporter_label(e).to_owned();
                self.exporter_records
                    .get_or_create(&ExporterLabels {
                        exporter: exporter.clone(),
                    })
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
                exporter
            })
            .collect();
        known.extend(present.iter().cloned());
        let gone: Vec<String> = known.difference(&present).cloned().collect();
        absent.retain(|e| gone.contains(e));
        for e in gone {
            // Absent at two passes in a row: forget its series.
            if !absent.insert(e.clone()) {
                for reason in REASONS {
                    self.deleted_records.remove(&DeletedLabels {
                        reason: reason.as_str(),
                        exporter: e.clone(),
                    });
                }
                self.exporter_records.remove(&ExporterLabels {
                    exporter: e.clone(),
                });
                absent.remove(&e);
                known.remove(&e);
            } else {
                self.exporter_records
                    .get_or_create(&ExporterLabels { exporter: e })
                    .set(0);
            }
        }
    }

    /// Exporters that have series now (for tests).
    pub fn exporters_with_series(&self) -> Vec<String> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = series.0.iter().cloned().collect();
        v.sort();
        v
    }
}

/// How often the collector gives the store's rebuildable caches back ([`Store::release_memory`]).
pub const RELEASE_EVERY: Duration = Duration::from_secs(30);

/// Calls [`Store::release_memory`] every [`RELEASE_EVERY`] (on a blocking thread: it waits for
/// a write in progress); the process-wide trimmer (`crate::memory`) then returns the pages.
pub fn spawn_release(store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
    crate::memory::spawn_every(RELEASE_EVERY, move || store.release_memory())
}

/// Runs [`Store::enforce_retention`] every `every` on the blocking pool, logging what it
/// deleted and counting it in `metrics`. Ends when the returned handle is aborted.
pub fn spawn_retention(
    store: Arc<dyn Store>,
    every: Duration,
    metrics: RetentionMetrics,
) -> tokio::task::JoinHandle<()> {
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
                Ok(Ok(r)) => {
                    if r.deleted_records + r.deleted_rollup_rows + r.deleted_names > 0 {
                        tracing::info!(
                            deleted_records = r.deleted_records,
                            deleted_rollup_rows = r.deleted_rollup_rows,
                            deleted_names = r.deleted_names,
                            cutoff_secs = r.cutoff_secs,
                            "store retention"
                        );
                    }
                    metrics.observe(&r);
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "store retention failed"),
                Err(e) => tracing::warn!(error = %e, "store retention task failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::query::ExporterDeleted;

    fn report(deleted: &[(&str, u64)], held: &[(&str, u64)]) -> RetentionReport {
        RetentionReport {
            deleted_records: deleted.iter().map(|d| d.1).sum(),
            deleted_by: deleted
                .iter()
                .map(|(e, n)| ExporterDeleted {
                    reason: RetentionReason::Size,
                    exporter: e.to_string(),
                    records: *n,
                })
                .collect(),
            exporters: Some(held.iter().map(|(e, n)| (e.to_string(), *n)).collect()),
            ..RetentionReport::default()
        }
    }

    fn text(m: &RetentionMetrics) -> String {
        let mut r = Registry::with_prefix("t");
        m.register(&mut r);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        s
    }

    #[test]
    fn exporter_series_last_while_the_store_holds_its_records() {
        let m = RetentionMetrics::default();
        m.observe(&report(&[("10.0.0.2", 5)], &[("10.0.0.2", 7), ("", 3)]));
        let t = text(&m);
        assert!(
            t.contains(
                r#"t_store_retention_deleted_records_total{reason="size",exporter="10.0.0.2"} 5"#
            ),
            "{t}"
        );
        assert!(
            t.contains(r#"t_store_exporter_records{exporter="unknown"} 3"#),
            "{t}"
        );
        // Its last records went: the series stay one more pass, at 0 held.
        m.observe(&report(&[("10.0.0.2", 7)], &[("", 3)]));
        let t = text(&m);
        assert!(
            t.contains(
                r#"t_store_retention_deleted_records_total{reason="size",exporter="10.0.0.2"} 12"#
            ),
            "{t}"
        );
        assert!(
            t.contains(r#"t_store_exporter_records{exporter="10.0.0.2"} 0"#),
            "{t}"
        );
        m.observe(&report(&[], &[("", 3)]));
        let t = text(&m);
        assert!(!t.contains("10.0.0.2"), "{t}");
        assert_eq!(m.exporters_with_series(), vec!["unknown".to_string()]);
        // Back again: new series.
        m.observe(&report(&[], &[("10.0.0.2", 1), ("", 3)]));
        assert_eq!(m.exporters_with_series(), vec!["10.0.0.2", "unknown"]);
    }
}
