//! The embedded store: one SQLite file in the collector's data directory, written by one
//! connection (SQLite has one writer at a time anyway) and read by a small pool, which WAL
//! mode lets run beside the writer without blocking it.
//!
//! Every read runs under the store's [`QueryLimits`]: a progress handler interrupts SQLite once
//! the deadline has passed (checked every [`PROGRESS_OPS`] virtual-machine steps, so also while
//! Rust folds the rows), and the folds in `read.rs` stop at `max_groups`.
//!
//! Each record keeps the exporter it came from, and retention by size is fair between
//! exporters (see `retention`).

mod codec;
mod insert;
mod read;
mod retention;
mod schema;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::query::*;
use super::retention::exporter_label;
use super::store::{Batch, Store, StoreError};

/// File name inside the data directory.
pub const DB_FILE: &str = "flows.sqlite";

/// Read connections kept open between queries; more are opened under load and closed after.
const POOLED_READERS: usize = 4;

/// SQLite virtual-machine steps between two deadline checks: a few microseconds of work, so a
/// query stops within well under a millisecond of its deadline and the clock read costs nothing.
pub const PROGRESS_OPS: i32 = 1000;

#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// Created if missing.
    pub dir: PathBuf,
    /// Records whose flowEndSeconds is older than this are deleted (whole minutes).
    pub max_age: Option<Duration>,
    /// Records are deleted until the data (not counting free pages) fits: the oldest of the
    /// exporters holding the most first (see `retention`).
    pub max_bytes: Option<u64>,
    /// Deadline and memory bound of every read.
    pub query: QueryLimits,
}

impl SqliteConfig {
    pub fn new(dir: impl Into<PathBuf>) -> SqliteConfig {
        SqliteConfig {
            dir: dir.into(),
            max_age: None,
            max_bytes: None,
            query: QueryLimits::default(),
        }
    }
}

pub struct SqliteStore {
    path: PathBuf,
    cfg: SqliteConfig,
    writer: Mutex<(Connection, insert::Scratch)>,
    readers: Mutex<Vec<Connection>>,
    /// Held through a retention pass (and a prune of names, which leaves `writer` while it
    /// reads): passes never overlap.
    retention: Mutex<RetentionState>,
}

/// What retention remembers between passes.
struct RetentionState {
    /// Records or rollup rows were deleted since the last prune of names (true at open: a
    /// crash may have come between the two).
    deleted_since_prune: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_err(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Open {
        path: path.to_owned(),
        source: Box::new(e),
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "written by schema version {found}, this flowlens reads version {expected}; move the data directory aside or use a matching flowlens"
)]
struct VersionMismatch {
    found: i64,
    expected: i64,
}

fn connect(path: &Path, writer: bool) -> Result<Connection, StoreError> {
    let flags = if writer {
        OpenFlags::default()
    } else {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    };
    let c = Connection::open_with_flags(path, flags).map_err(|e| open_err(path, e))?;
    // WAL: readers never block the writer. synchronous=NORMAL: a power cut may lose the last
    // transactions but never corrupts the file — the right trade for flow telemetry.
    let pragmas = if writer {
        "PRAGMA page_size = 8192; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA temp_store = MEMORY; PRAGMA cache_size = -262144; PRAGMA busy_timeout = 5000; \
         PRAGMA wal_autocheckpoint = 32768;"
    } else {
        "PRAGMA temp_store = MEMORY; PRAGMA cache_size = -65536; PRAGMA busy_timeout = 5000;"
    };
    c.execute_batch(pragmas).map_err(|e| open_err(path, e))?;
    Ok(c)
}

impl SqliteStore {
    pub fn open(cfg: SqliteConfig) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|e| open_err(&cfg.dir, e))?;
        let path = cfg.dir.join(DB_FILE);
        let c = connect(&path, true)?;
        // The version first: a store of another layout is refused before anything is added.
        let written: Option<i64> = c
            .query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .ok();
        let mut c = c;
        if let Some(found) = written.filter(|v| *v != schema::SCHEMA_VERSION) {
            let Some(sql) = schema::migrate_sql(found) else {
                return Err(open_err(
                    &path,
                    VersionMismatch {
                        found,
                        expected: schema::SCHEMA_VERSION,
                    },
                ));
            };
            migrate(&mut c, &sql).map_err(|e| open_err(&path, e))?;
            tracing::info!(
                path = %path.display(),
                from = found,
                to = schema::SCHEMA_VERSION,
                "store: schema migrated"
            );
        }
        c.execute_batch(&schema::ddl())
            .map_err(|e| open_err(&path, e))?;
        c.execute(
            "INSERT INTO meta (key, value) SELECT 'records', (SELECT COUNT(*) FROM flows) \
             WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'records')",
            [],
        )
        .map_err(|e| open_err(&path, e))?;
        let found: i64 = c
            .query_row(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = value RETURNING value",
                [schema::SCHEMA_VERSION],
                |r| r.get(0),
            )
            .map_err(|e| open_err(&path, e))?;
        if found != schema::SCHEMA_VERSION {
            return Err(open_err(
                &path,
                VersionMismatch {
                    found,
                    expected: schema::SCHEMA_VERSION,
                },
            ));
        }
        // Rollup sums a crash kept from being written are re-read from the records.
        let recovered = insert::recover(&mut c).map_err(|e| open_err(&path, e))?;
        if recovered > 0 {
            tracing::info!(records = recovered, "store: rollups recovered from records");
        }
        Ok(SqliteStore {
            path,
            cfg,
            writer: Mutex::new((c, insert::Scratch::default())),
            readers: Mutex::new(Vec::new()),
            retention: Mutex::new(RetentionState {
                deleted_since_prune: true,
            }),
        })
    }

    /// Records each exporter holds, by address ("" for the unknown exporter), the most first.
    pub fn exporters(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read("exporters", exporter_names)
    }

    /// Deletes the names (`dict` rows) no record or rollup row refers to any more, now
    /// (retention does it by itself when `dict` has doubled since the last time). Returns how
    /// many went. Reads the whole store, without holding up inserts but for the deletion.
    pub fn prune_names(&self) -> Result<u64, StoreError> {
        let mut state = self.retention.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.prune_names_locked()?;
        state.deleted_since_prune = false;
        Ok(n)
    }

    /// [`Self::prune_names`] with the retention lock held.
    fn prune_names_locked(&self) -> Result<u64, StoreError> {
        self.prune_names_with(|| {})
    }

    /// The prune, running `meanwhile` between reading what is in use and deleting the rest:
    /// where inserts that go on during a prune land (tests put one there).
    fn prune_names_with(&self, meanwhile: impl FnOnce()) -> Result<u64, StoreError> {
        let err = |e| self.err("pruning names", e);
        {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            w.1.dict.begin_mark();
        }
        // From here every id the writer hands out is noted, and kept.
        let marked = connect(&self.path, false).and_then(|c| {
            retention::unreferenced_names(&c).map_err(|e| self.err("pruning names", e))
        });
        meanwhile();
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // Nothing is interned while the writer is held, so what was handed out is complete.
        let (c, scratch) = &mut *w;
        let keep = scratch.dict.end_mark();
        let candidates = marked?;
        let n = retention::delete_names(c, &candidates, &keep).map_err(err)?;
        retention::name_count(c)
            .and_then(|left| retention::set_names_after_prune(c, left))
            .map_err(err)?;
        Ok(n)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How long rollup sums may wait in memory after their records commit (default 1 s).
    /// Queries flush first, so this only trades write work against what a crash leaves for
    /// the next open to re-read.
    pub fn set_rollup_flush_interval(&self, every: Duration) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.1.flush_every = Some(every);
    }

    /// Writes the rollup sums still held in memory (see `insert::FLUSH_EVERY`). Queries do
    /// this themselves; a caller that reads the file directly calls it first.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (c, scratch) = &mut *w;
        insert::flush(c, scratch).map_err(|e| self.err("rollup flush", e))
    }

    fn err(&self, op: &'static str, e: rusqlite::Error) -> StoreError {
        StoreError::Backend {
            location: self.path.display().to_string(),
            op,
            source: Box::new(e),
        }
    }

    fn read<T, E: Into<read::ReadError>>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Connection) -> Result<T, E>,
    ) -> Result<T, StoreError> {
        // A poisoned pool only means another query panicked; the connections are still fine.
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let c = match pooled {
            Some(c) => c,
            None => connect(&self.path, false)?,
        };
        let limits = self.cfg.query;
        let deadline = Instant::now() + limits.timeout;
        c.progress_handler(PROGRESS_OPS, Some(move || Instant::now() >= deadline));
        let out = f(&c).map_err(|e| match e.into() {
            read::ReadError::Sqlite(e)
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) =>
            {
                StoreError::Deadline {
                    op,
                    limit: limits.timeout.into(),
                }
            }
            read::ReadError::Sqlite(e) => self.err(op, e),
            read::ReadError::TooManyGroups(n) => StoreError::TooLarge {
                op,
                bound: format!("{n} groups (query.maxGroups)"),
            },
        });
        c.progress_handler(0, None::<fn() -> bool>);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOLED_READERS {
            pool.push(c);
        }
        out
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            // Not lost: the next open re-reads the records after `rolled_upto`.
            tracing::warn!(error = %e, "store: rollup flush at close failed");
        }
    }
}

impl Store for SqliteStore {
    fn release_memory(&self) {
        // shrink_memory frees the unused pages of a connection's cache; the next statement
        // reads them from the file again (usually from the OS page cache). The writer's name
        // cache goes too: it refills from the dict table.
        {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let (c, scratch) = &mut *w;
            let _ = c.execute_batch("PRAGMA shrink_memory;");
            scratch.dict.release();
        }
        let pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        for c in pool.iter() {
            let _ = c.execute_batch("PRAGMA shrink_memory;");
        }
    }

    fn insert_batch(&self, batch: &Batch<'_>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (c, scratch) = &mut *w;
        insert::insert_batch(c, batch, scratch).map_err(|e| self.err("insert", e))
    }

    fn flows(&self, q: &FlowQuery) -> Result<Vec<FlowRow>, StoreError> {
        self.read("flows query", |c| read::flows(c, q))
    }

    fn top(&self, q: &TopQuery) -> Result<Vec<TopRow>, StoreError> {
        self.flush()?;
        self.read("top query", |c| read::top(c, q, self.cfg.query.max_groups))
    }

    fn timeseries(&self, q: &SeriesQuery) -> Result<TimeSeries, StoreError> {
        self.flush()?;
        self.read("timeseries query", |c| {
            read::timeseries(c, q, self.cfg.query.max_groups)
        })
    }

    fn sankey(&self, q: &SankeyQuery) -> Result<Sankey, StoreError> {
        self.flush()?;
        self.read("sankey query", |c| {
            read::sankey(c, q, self.cfg.query.max_groups)
        })
    }

    fn node_matrix(&self, q: &DashFilter) -> Result<NodeMatrix, StoreError> {
        self.flush()?;
        self.read("node matrix query", |c| {
            read::node_matrix(c, q, self.cfg.query.max_groups)
        })
    }

    fn policy_flows(&self, q: &PolicyQuery) -> Result<Vec<PolicyFlow>, StoreError> {
        self.flush()?;
        self.read("policy query", |c| {
            read::policy_flows(c, q, self.cfg.query.max_groups)
        })
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.flush()?;
        self.read("stats", |c| {
            let (records, oldest, newest) = read::record_span(c)?;
            Ok::<_, rusqlite::Error>(StoreStats {
                backend: "sqlite",
                location: self.path.display().to_string(),
                records,
                oldest_end_secs: oldest,
                newest_end_secs: newest,
                bytes: Some(retention::used_bytes(c)?),
                rollup_rows: read::rollup_rows(c)?,
            })
        })
    }

    fn enforce_retention(&self, now: u64) -> Result<RetentionReport, StoreError> {
        let mut state = self.retention.lock().unwrap_or_else(|p| p.into_inner());
        let mut tally = retention::Tally::default();
        let (mut report, prune) = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let (c, scratch) = &mut *w;
            // Pending sums would otherwise land after their minutes were deleted.
            insert::flush(c, scratch).map_err(|e| self.err("rollup flush", e))?;
            if let Some(age) = self.cfg.max_age {
                let cutoff = now.saturating_sub(age.as_secs()) / 60 * 60;
                retention::delete_before(c, cutoff, RetentionReason::Age, &mut tally)
                    .map_err(|e| self.err("retention by age", e))?;
            }
            if let Some(max) = self.cfg.max_bytes {
                retention::by_size(c, max, &mut tally)
                    .map_err(|e| self.err("retention by size", e))?;
            }
            let report = report(c, &tally).map_err(|e| self.err("retention report", e))?;
            if !tally.within_share.is_empty() {
                // Named before a prune can take the names of exporters that are gone.
                let mut hit = Vec::new();
                for (&id, &n) in &tally.within_share {
                    let name = name_of(c, id).map_err(|e| self.err("retention report", e))?;
                    hit.push(format!("{} ({n})", exporter_label(&name)));
                }
                hit.sort();
                let all: Vec<String> = report
                    .deleted_by
                    .iter()
                    .filter(|d| d.reason == RetentionReason::Size)
                    .map(|d| format!("{} ({})", exporter_label(&d.exporter), d.records))
                    .collect();
                tracing::warn!(
                    records = tally.within_share.values().sum::<u64>(),
                    from = hit.join(", "),
                    all = all.join(", "),
                    max_store_bytes = self.cfg.max_bytes.unwrap_or(0),
                    "store over maxStoreBytes: retention by size deleted records of exporters holding no more than an even share (all exporters were at the same level, or the store is too small for their share)"
                );
            }
            if tally.deleted_records() + tally.rollup_rows > 0 {
                state.deleted_since_prune = true;
            }
            let prune = state.deleted_since_prune
                && retention::name_count(c)
                    .and_then(|n| retention::prune_due(c, n))
                    .map_err(|e| self.err("retention", e))?;
            (report, prune)
        };
        if prune {
            let t = Instant::now();
            report.deleted_names = self.prune_names_locked()?;
            state.deleted_since_prune = false;
            tracing::info!(
                deleted_names = report.deleted_names,
                took_ms = t.elapsed().as_millis() as u64,
                "store: unused names pruned"
            );
        }
        Ok(report)
    }
}

/// Applies the schema change `sql` (from [`schema::migrate_sql`]) and what version 4 adds, in
/// one transaction: a crash leaves the store at the old version, to be migrated again.
fn migrate(c: &mut Connection, sql: &str) -> rusqlite::Result<()> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(sql)?;
    tx.execute_batch(&schema::ddl())?;
    // Every record written so far came from the unknown exporter. The count kept in `meta`
    // saves reading them (`records` is there since version 3; COUNT(*) if not).
    tx.execute(
        "INSERT INTO meta (key, value) SELECT 'records', (SELECT COUNT(*) FROM flows) \
         WHERE NOT EXISTS (SELECT 1 FROM meta WHERE key = 'records')",
        [],
    )?;
    tx.execute(
        "INSERT OR IGNORE INTO exporters (id, records, low_id) \
         SELECT 0, value, 0 FROM meta WHERE key = 'records' AND value > 0",
        [],
    )?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
        [schema::SCHEMA_VERSION],
    )?;
    tx.commit()
}

/// Exporters by address and records held, the most first.
fn exporter_names(c: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for h in retention::held(c)? {
        out.push((name_of(c, h.id)?, h.records));
    }
    Ok(out)
}

fn name_of(c: &Connection, id: i64) -> rusqlite::Result<String> {
    if id == 0 {
        return Ok(String::new());
    }
    Ok(c.prepare_cached("SELECT s FROM dict WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .unwrap_or_default())
}

/// The report of a pass, exporters by address (read before names are pruned).
fn report(c: &Connection, t: &retention::Tally) -> rusqlite::Result<RetentionReport> {
    let mut names: HashMap<i64, String> = HashMap::new();
    let mut deleted_by = Vec::new();
    for (&(reason, id), &records) in &t.records {
        let exporter = match names.get(&id) {
            Some(n) => n.clone(),
            None => names.entry(id).or_insert(name_of(c, id)?).clone(),
        };
        deleted_by.push(ExporterDeleted {
            reason,
            exporter,
            records,
        });
    }
    deleted_by.sort_by(|a, b| (a.reason, &a.exporter).cmp(&(b.reason, &b.exporter)));
    Ok(RetentionReport {
        deleted_records: t.deleted_records(),
        deleted_rollup_rows: t.rollup_rows,
        cutoff_secs: t.cutoff,
        deleted_by,
        deleted_names: 0,
        exporters: Some(exporter_names(c)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::synth::Synth;

    /// A name nothing refers to when the prune reads the store, used again by an insert before
    /// the prune deletes: kept, and the record reads back with it.
    #[test]
    fn a_name_used_again_while_a_prune_reads_is_kept() {
        let dir =
            std::env::temp_dir().join(format!("flowlens-sqlite-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(SqliteConfig {
            max_age: Some(Duration::from_secs(3600)),
            ..SqliteConfig::new(&dir)
        })
        .unwrap();
        let t0 = 1_767_225_600u32;
        let mut old = Synth::new(1, 2, 4).batch(10, t0, 60);
        for r in &mut old {
            r.src_labels = "gone-then-back".into();
        }
        store.insert(&old, t0 as u64).unwrap();
        let exporter: std::net::IpAddr = "127.0.0.9".parse().unwrap();
        let mut new = Synth::new(2, 2, 4).batch(10, t0 + 7200, 60);
        new[3].src_labels = "gone-then-back".into();
        // Retention takes the old records; the name stays in `dict` until a prune.
        let now = t0 as u64 + 7200;
        assert_eq!(store.enforce_retention(now).unwrap().deleted_records, 10);
        let deleted = store
            .prune_names_with(|| {
                store
                    .insert_batch(&Batch::of(Some(exporter), &new, now))
                    .unwrap();
            })
            .unwrap();
        assert!(deleted > 0, "the old records' other names go");
        let rows = store
            .flows(&FlowQuery {
                filter: FlowFilter::default(),
                limit: 100,
                offset: 0,
            })
            .unwrap();
        assert_eq!(rows.len(), 10);
        assert_eq!(
            rows.iter()
                .filter(|r| r.source_pod_labels == "gone-then-back")
                .count(),
            1
        );
        assert!(
            rows.iter()
                .all(|r| r.exporter_address.as_deref() == Some("127.0.0.9"))
        );
        // Nothing else was left behind, and nothing in use went.
        assert_eq!(store.prune_names().unwrap(), 0);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_read_past_its_deadline_is_interrupted() {
        let dir =
            std::env::temp_dir().join(format!("flowlens-sqlite-deadline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SqliteStore::open(SqliteConfig {
            query: QueryLimits {
                timeout: Duration::from_millis(200),
                ..QueryLimits::default()
            },
            ..SqliteConfig::new(&dir)
        })
        .unwrap();
        // Counts for ever unless stopped.
        let t0 = Instant::now();
        let e = store
            .read("endless query", |c| {
                c.query_row(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
                     SELECT count(*) FROM n",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .unwrap_err();
        let took = t0.elapsed();
        assert!(
            matches!(
                e,
                StoreError::Deadline {
                    op: "endless query",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "stopped after {took:?}"
        );
        assert!(e.to_string().contains("query.timeout (200ms)"), "{e}");
        // The connection went back to the pool without its handler and still works.
        let n = store
            .read("count", |c| {
                c.query_row("SELECT 41 + 1", [], |r| r.get::<_, i64>(0))
            })
            .unwrap();
        assert_eq!(n, 42);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
