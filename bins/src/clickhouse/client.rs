//! [`ClickHouseClient`]: schema on connect, batched RowBinary inserts, raw queries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flowcore::aggregator::AggregatedRecord;

use super::config::{ClickHouseConfig, ConfigError};
use super::rowbinary::{self, DecodeError};
use super::schema;

/// Records per RowBinary chunk handed to the HTTP body: big enough that per-chunk overhead
/// vanishes, small enough that encoding the next chunk overlaps the server parsing this one.
const CHUNK_RECORDS: usize = 8192;

/// What went wrong talking to ClickHouse. Every variant names the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The server answered with an error, or could not be reached. `message` is ClickHouse's
    /// own text (`Code: 60, e.displayText() = DB::Exception: Table … doesn't exist`) or the
    /// network error. (The `clickhouse` crate does not expose the HTTP status; ClickHouse's
    /// exception code in the message is the more precise of the two.)
    #[error("ClickHouse at {url}: {op} failed: {message}")]
    Server {
        url: String,
        op: String,
        message: String,
        #[source]
        source: clickhouse::error::Error,
    },
    #[error("ClickHouse at {url}: {op}: {source}")]
    Decode {
        url: String,
        op: String,
        #[source]
        source: DecodeError,
    },
}

/// A connection (pool) to one ClickHouse server's HTTP interface, with the flowlens schema
/// ensured. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct ClickHouseClient {
    cfg: ClickHouseConfig,
    client: clickhouse::Client,
    insert_sql: String,
    version: String,
    /// Next record id. Seeded from the table's max(id) + 1 at connect, so one writer's ids keep
    /// increasing across restarts; several writers into one table may share ids (ids only order
    /// records within a second and page through them).
    next_id: AtomicU64,
}

impl std::fmt::Debug for ClickHouseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseClient")
            .field("url", &self.cfg.url)
            .field("table", &self.table())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl ClickHouseClient {
    /// Validates `cfg`, checks the server answers (`SELECT version()`), creates the database,
    /// tables and views if `createSchema` (with TTL where the server supports it), and reads the
    /// next record id.
    pub async fn connect(cfg: ClickHouseConfig) -> Result<ClickHouseClient, Error> {
        cfg.validate()?;
        let mut client = clickhouse::Client::default()
            .with_url(cfg.url.trim_end_matches('/'))
            .with_user(&cfg.user)
            .with_validation(false);
        let password = cfg.resolved_password()?;
        if !password.is_empty() {
            client = client.with_password(password);
        }
        let table = format!("{}.{}", cfg.database, cfg.table);
        let cols: Vec<&str> = schema::FLOW_COLUMNS.iter().map(|(n, _)| *n).collect();
        let mut me = ClickHouseClient {
            insert_sql: format!("INSERT INTO {table} ({}) FORMAT RowBinary", cols.join(", ")),
            client,
            cfg,
            version: String::new(),
            next_id: AtomicU64::new(1),
        };
        let v = me
            .query("SELECT version()", "reading the server version")
            .await?;
        me.version = rowbinary::Reader::new(&v)
            .string()
            .map_err(|e| me.decode_err("reading the server version", e))?;
        if me.cfg.create_schema {
            let ttl = schema::supports_ttl(&me.version).then(|| me.cfg.retention_days());
            for st in schema::statements(&me.cfg.database, &me.cfg.table, ttl) {
                let what = st.lines().next().unwrap_or_default().to_owned();
                me.execute(&st, &format!("creating the schema ({what})"))
                    .await?;
            }
        }
        let max = me
            .query(
                &format!("SELECT max(id) FROM {table}"),
                &format!("reading the last id of {table}"),
            )
            .await?;
        let max = rowbinary::Reader::new(&max)
            .u64()
            .map_err(|e| me.decode_err("reading the last id", e))?;
        me.next_id = AtomicU64::new(max + 1);
        Ok(me)
    }

    pub fn config(&self) -> &ClickHouseConfig {
        &self.cfg
    }

    /// `database.table` of the record table.
    pub fn table(&self) -> String {
        format!("{}.{}", self.cfg.database, self.cfg.table)
    }

    /// What `SELECT version()` said, e.g. `18.16.1`.
    pub fn server_version(&self) -> &str {
        &self.version
    }

    /// Inserts `records` (with `inserted_at`, Unix seconds, as timeInserted) in one RowBinary
    /// INSERT and returns how many were written. Up to `max_insert_block_size` rows (1,048,576 by
    /// default) the record table gets them all or none; the rollup views are filled by the server
    /// in the same request, after the records' part is committed, so a concurrent reader may see
    /// the records a moment before their rollup rows (and a failing view leaves records without
    /// rollups; the error is returned).
    pub async fn insert(
        &self,
        records: &[AggregatedRecord],
        inserted_at: u64,
    ) -> Result<usize, Error> {
        if records.is_empty() {
            return Ok(0);
        }
        let first = self.reserve_ids(records.len());
        let mut ins = self.insert_request();
        let mut buf = Vec::new();
        for (k, chunk) in records.chunks(CHUNK_RECORDS).enumerate() {
            buf = Vec::with_capacity(buf.capacity().max(chunk.len() * 512));
            let base = first + (k * CHUNK_RECORDS) as u64;
            for (i, r) in chunk.iter().enumerate() {
                rowbinary::encode_record(&mut buf, r, base + i as u64, inserted_at);
            }
            ins.send(Bytes::from(std::mem::take(&mut buf)))
                .await
                .map_err(|e| self.server_err("inserting records", e))?;
        }
        ins.end()
            .await
            .map_err(|e| self.server_err("inserting records", e))?;
        Ok(records.len())
    }

    /// Encodes `records` into RowBinary chunks ready for [`Self::insert_encoded`], so callers
    /// that must not hold borrowed records across an await (a sync store) can encode first.
    pub fn encode(&self, records: &[AggregatedRecord], inserted_at: u64) -> Vec<Bytes> {
        let first = self.reserve_ids(records.len());
        records
            .chunks(CHUNK_RECORDS)
            .enumerate()
            .map(|(k, chunk)| {
                let mut buf = Vec::with_capacity(chunk.len() * 512);
                let base = first + (k * CHUNK_RECORDS) as u64;
                for (i, r) in chunk.iter().enumerate() {
                    rowbinary::encode_record(&mut buf, r, base + i as u64, inserted_at);
                }
                Bytes::from(buf)
            })
            .collect()
    }

    /// Sends chunks made by [`Self::encode`] as one INSERT.
    pub async fn insert_encoded(&self, chunks: Vec<Bytes>) -> Result<(), Error> {
        if chunks.is_empty() {
            return Ok(());
        }
        let mut ins = self.insert_request();
        for c in chunks {
            ins.send(c)
                .await
                .map_err(|e| self.server_err("inserting records", e))?;
        }
        ins.end()
            .await
            .map_err(|e| self.server_err("inserting records", e))
    }

    fn reserve_ids(&self, n: usize) -> u64 {
        self.next_id.fetch_add(n as u64, Ordering::Relaxed)
    }

    fn insert_request(&self) -> clickhouse::insert_formatted::InsertFormatted {
        let t = Some(Duration::from(self.cfg.timeout));
        self.client
            .insert_formatted_with(self.insert_sql.clone())
            .with_timeouts(t, t)
    }

    /// Runs a statement that returns nothing (DDL, ALTER).
    pub async fn execute(&self, sql: &str, op: &str) -> Result<(), Error> {
        let fut = self.client.query_raw(sql).execute();
        match tokio::time::timeout(self.cfg.timeout.into(), fut).await {
            Ok(r) => r.map_err(|e| self.server_err(op, e)),
            Err(_) => Err(self.server_err(op, clickhouse::error::Error::TimedOut)),
        }
    }

    /// Runs a SELECT and returns its RowBinary answer, read with [`rowbinary::Reader`]. `sql`
    /// is sent verbatim (no `?` placeholders): callers quote values with [`quote`].
    pub async fn query(&self, sql: &str, op: &str) -> Result<Bytes, Error> {
        self.query_with(sql, op, &[]).await
    }

    /// [`Self::query`] with ClickHouse settings for this query only (sent as URL parameters,
    /// which every server version reads), e.g. `max_execution_time`.
    pub async fn query_with(
        &self,
        sql: &str,
        op: &str,
        settings: &[(&str, String)],
    ) -> Result<Bytes, Error> {
        let mut q = self.client.query_raw(sql);
        for (k, v) in settings {
            q = q.with_setting(*k, v.as_str());
        }
        let fut = async { q.fetch_bytes("RowBinary")?.collect().await };
        match tokio::time::timeout(self.cfg.timeout.into(), fut).await {
            Ok(r) => r.map_err(|e| self.server_err(op, e)),
            Err(_) => Err(self.server_err(op, clickhouse::error::Error::TimedOut)),
        }
    }

    pub fn server_err(&self, op: &str, e: clickhouse::error::Error) -> Error {
        let message = match &e {
            clickhouse::error::Error::BadResponse(m) => m.clone(),
            e => {
                // Network errors nest the useful part (connection refused, …) in sources.
                let mut s = e.to_string();
                let mut src = std::error::Error::source(e);
                while let Some(x) = src {
                    s.push_str(": ");
                    s.push_str(&x.to_string());
                    src = x.source();
                }
                s
            }
        };
        Error::Server {
            url: self.cfg.url.clone(),
            op: op.to_owned(),
            message,
            source: e,
        }
    }

    pub fn decode_err(&self, op: &str, e: DecodeError) -> Error {
        Error::Decode {
            url: self.cfg.url.clone(),
            op: op.to_owned(),
            source: e,
        }
    }
}

/// A ClickHouse string literal: `'` and `\` escaped, so any user text is inert.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quote_escapes_quotes_and_backslashes() {
        assert_eq!(quote("a'b\\c"), r"'a\'b\\c'");
        assert_eq!(quote(""), "''");
    }
}
