//! The embedded store: one SQLite file in the collector's data directory, written by one
//! connection (SQLite has one writer at a time anyway) and read by a small pool, which WAL
//! mode lets run beside the writer without blocking it.
//!
//! Every read runs under the store's [`QueryLimits`]: a progress handler interrupts SQLite once
//! the deadline has passed (checked every [`PROGRESS_OPS`] virtual-machine steps, so also while
//! Rust folds the rows), and the folds in `read.rs` stop at `max_groups`.

mod codec;
mod insert;
mod read;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use flowcore::aggregator::AggregatedRecord;
use rusqlite::{Connection, OpenFlags};

use super::query::*;
use super::store::{Store, StoreError};

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
    /// Oldest minutes are deleted until the data (not counting free pages) fits.
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
        if let Some(found) = written.filter(|v| *v != schema::SCHEMA_VERSION) {
            return Err(open_err(
                &path,
                VersionMismatch {
                    found,
                    expected: schema::SCHEMA_VERSION,
                },
            ));
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
        let mut c = c;
        let recovered = insert::recover(&mut c).map_err(|e| open_err(&path, e))?;
        if recovered > 0 {
            tracing::info!(records = recovered, "store: rollups recovered from records");
        }
        Ok(SqliteStore {
            path,
            cfg,
            writer: Mutex::new((c, insert::Scratch::default())),
            readers: Mutex::new(Vec::new()),
        })
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

    /// Bytes of the database file in use (pages not on the free list).
    fn used_bytes(c: &Connection) -> rusqlite::Result<u64> {
        let q = |p: &str| c.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0));
        let used = q("page_count")? - q("freelist_count")?;
        Ok((used.max(0) as u64) * q("page_size")?.max(0) as u64)
    }

    /// Deletes every record and rollup row before `cutoff` (a minute boundary).
    fn delete_before(c: &mut Connection, cutoff: u64) -> rusqlite::Result<(u64, u64)> {
        let tx = c.transaction()?;
        let cut = cutoff.min(i64::MAX as u64) as i64;
        let records = tx.execute("DELETE FROM flows WHERE end_secs < ?1", [cut])? as u64;
        let mut rollup = 0;
        for (t, _) in schema::ROLLUPS {
            rollup += tx.execute(&format!("DELETE FROM {t} WHERE minute < ?1"), [cut])? as u64;
            // An hour row goes once its whole hour is before the cutoff; the hour holding the
            // cutoff keeps its sums until then (queries read it only for whole hours).
            rollup += tx.execute(
                &format!(
                    "DELETE FROM {t}{} WHERE minute + 3600 <= ?1",
                    schema::HOURLY
                ),
                [cut],
            )? as u64;
        }
        tx.execute(
            "UPDATE meta SET value = value - ?1 WHERE key = 'records'",
            [records as i64],
        )?;
        tx.commit()?;
        Ok((records, rollup))
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
    fn insert(&self, batch: &[AggregatedRecord], received_at: u64) -> Result<(), StoreError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (c, scratch) = &mut *w;
        insert::insert_batch(c, batch, received_at, scratch).map_err(|e| self.err("insert", e))
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
                bytes: Some(Self::used_bytes(c)?),
                rollup_rows: read::rollup_rows(c)?,
            })
        })
    }

    fn enforce_retention(&self, now: u64) -> Result<RetentionReport, StoreError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (c, scratch) = &mut *w;
        // Pending sums would otherwise land after their minutes were deleted.
        insert::flush(c, scratch).map_err(|e| self.err("rollup flush", e))?;
        let mut report = RetentionReport::default();
        let apply = |c: &mut Connection, cutoff: u64, report: &mut RetentionReport| {
            let (r, u) = Self::delete_before(c, cutoff)?;
            report.deleted_records += r;
            report.deleted_rollup_rows += u;
            report.cutoff_secs = report.cutoff_secs.max(cutoff);
            rusqlite::Result::Ok(())
        };
        if let Some(age) = self.cfg.max_age {
            let cutoff = now.saturating_sub(age.as_secs()) / 60 * 60;
            apply(c, cutoff, &mut report).map_err(|e| self.err("retention by age", e))?;
        }
        if let Some(max) = self.cfg.max_bytes {
            // Each round deletes the oldest share of the time span proportional to the excess
            // (at least one minute), so a large excess takes a few rounds, not one per minute.
            for _ in 0..16 {
                let step = || -> rusqlite::Result<Option<u64>> {
                    let used = Self::used_bytes(c)?;
                    if used <= max {
                        return Ok(None);
                    }
                    let (_, oldest, newest) = read::record_span(c)?;
                    let (Some(old), Some(new)) = (oldest, newest) else {
                        // Only rollups left: drop their oldest minute.
                        let m: Option<i64> =
                            c.query_row("SELECT MIN(minute) FROM r_node_pair", [], |r| r.get(0))?;
                        return Ok(m.map(|m| m.max(0) as u64 + 60));
                    };
                    let span = new - old + 60;
                    let share = (used - max) as f64 / used as f64;
                    let cut = old + ((span as f64 * share).ceil() as u64).max(60);
                    Ok(Some(cut.div_ceil(60) * 60))
                };
                match step().map_err(|e| self.err("retention by size", e))? {
                    Some(cutoff) => apply(c, cutoff, &mut report)
                        .map_err(|e| self.err("retention by size", e))?,
                    None => break,
                }
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
