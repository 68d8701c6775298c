//! `flowlens collector --config FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use flowcore::config::{Duration as GoDuration, Transport};

use super::{HttpFile, LogConfig, TlsFiles};
use crate::clickhouse::ClickHouseConfig;
use crate::collector::query::QueryLimits;
use crate::ops::HttpLimits;

/// Which store the collector reads (and, when ingesting, writes).
#[derive(Clone, Debug, PartialEq)]
pub enum StoreBackend {
    /// Embedded, in `CollectorConfig::data_dir`.
    Sqlite,
    ClickHouse(Box<ClickHouseConfig>),
}

/// The store settings of a collector config (kept apart from [`CollectorConfig`], which other
/// code builds field by field for the embedded default).
#[derive(Clone, Debug, PartialEq)]
pub struct StoreChoice {
    pub backend: StoreBackend,
    /// Listen for IPFIX and write into the store; `false` serves queries only.
    pub ingest: bool,
}

impl Default for StoreChoice {
    fn default() -> Self {
        StoreChoice {
            backend: StoreBackend::Sqlite,
            ingest: true,
        }
    }
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CollectorFile {
    /// Where aggregated IPFIX records come in.
    pub listen_addr: String,
    /// `tls`, `tcp` or `udp`.
    pub transport: String,
    pub tls: TlsFiles,
    /// The embedded store's directory.
    pub data_dir: PathBuf,
    /// Records older than this are deleted.
    pub retention: GoDuration,
    /// And the store is kept under this size (bytes): the oldest records of the exporters
    /// holding the most go first (see `collector::sqlite`'s retention).
    pub max_store_bytes: u64,
    /// The HTTP API and dashboards.
    pub http_addr: String,
    pub log: LogConfig,
    /// `sqlite` (embedded, in dataDir) or `clickhouse` (the `clickhouse` section).
    pub store: String,
    /// The ClickHouse server when `store: clickhouse`: url, database, user, password, table,
    /// batchRows, flushInterval, retention, timeout, createSchema (see
    /// `flowlens_bins::clickhouse::ClickHouseConfig`). `retention` and `maxStoreBytes` above
    /// apply to SQLite only.
    pub clickhouse: ClickHouseConfig,
    /// Receive IPFIX on listenAddr and write it to the store (default). `false`: query backend
    /// only — no IPFIX listener, the API and dashboards read what others (the aggregator's
    /// ClickHouse exporter) write.
    pub ingest: bool,
    /// Records received but not yet written to the store, at most this many bytes (their
    /// in-memory size, names counted once); beyond it the collector stops reading its IPFIX
    /// sessions until the store catches up (TCP pushes back on the exporters). Default 128 MiB.
    pub ingest_queue_bytes: u64,
    /// Limits of the HTTP server on httpAddr: headerReadTimeout, requestTimeout, writeTimeout,
    /// maxBodyBytes, maxConnections, maxConcurrentRequests, shutdownGrace.
    pub http: HttpFile,
    /// Bounds of every store query: timeout, maxGroups, maxConcurrent, maxMemoryBytes.
    pub query: QueryFile,
    /// Limits of the IPFIX listener on listenAddr: sessions, deadlines, queues, templates (the
    /// aggregator's keys).
    pub collecting_process: super::collecting::CollectingFile,
}

/// The `query:` section: what one dashboard or API query may cost. See [`QueryLimits`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct QueryFile {
    /// Wall time of one store query; past it the query is stopped (HTTP 503). 10s.
    pub timeout: GoDuration,
    /// Groups (Pod pairs, Services, …; for time series, series × points) one query may hold in
    /// memory; past it the query fails (HTTP 422) asking for a narrower range or filter. About
    /// 150-350 bytes each. 250000.
    pub max_groups: usize,
    /// Store queries running at once; others wait up to `timeout` for a slot, then get 503
    /// with Retry-After. 4.
    pub max_concurrent: usize,
    /// ClickHouse only: `max_memory_usage` of each query, bytes. 1073741824 (1 GiB).
    pub max_memory_bytes: u64,
}

impl Default for QueryFile {
    fn default() -> Self {
        let d = QueryLimits::default();
        QueryFile {
            timeout: d.timeout.into(),
            max_groups: d.max_groups,
            max_concurrent: d.max_concurrent,
            max_memory_bytes: d.max_memory_bytes,
        }
    }
}

impl QueryFile {
    pub fn validate(&self) -> anyhow::Result<QueryLimits> {
        let t: Duration = self.timeout.into();
        if t < Duration::from_millis(100) || t > Duration::from_secs(3600) {
            bail!(
                "query.timeout is {}; it must be from 100ms to 1h (Go duration syntax, e.g. \"10s\")",
                self.timeout
            );
        }
        if !(1..=100_000_000).contains(&self.max_groups) {
            bail!(
                "query.maxGroups is {}; it must be from 1 to 100000000",
                self.max_groups
            );
        }
        if !(1..=1024).contains(&self.max_concurrent) {
            bail!(
                "query.maxConcurrent is {}; it must be from 1 to 1024",
                self.max_concurrent
            );
        }
        if self.max_memory_bytes < 1 << 20 {
            bail!(
                "query.maxMemoryBytes is {}; it must be at least 1048576 (1 MiB)",
                self.max_memory_bytes
            );
        }
        Ok(QueryLimits {
            timeout: t,
            max_groups: self.max_groups,
            max_concurrent: self.max_concurrent,
            max_memory_bytes: self.max_memory_bytes,
        })
    }
}

impl Default for CollectorFile {
    fn default() -> Self {
        CollectorFile {
            listen_addr: "0.0.0.0:4739".into(),
            transport: "tcp".into(),
            tls: TlsFiles::default(),
            data_dir: "/var/lib/flowlens".into(),
            retention: Duration::from_secs(7 * 24 * 3600).into(),
            max_store_bytes: 20 << 30,
            http_addr: "0.0.0.0:8080".into(),
            log: LogConfig::default(),
            store: "sqlite".into(),
            clickhouse: ClickHouseConfig::default(),
            ingest: true,
            ingest_queue_bytes: 128 << 20,
            http: HttpFile::default(),
            query: QueryFile::default(),
            collecting_process: Default::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CollectorConfig {
    pub listen_addr: SocketAddr,
    pub transport: Transport,
    pub tls: TlsFiles,
    pub data_dir: PathBuf,
    pub retention: Duration,
    pub max_store_bytes: u64,
    /// `ingestQueueBytes`.
    pub ingest_queue_bytes: usize,
    pub http_addr: SocketAddr,
    pub log: LogConfig,
    /// The HTTP server's limits (`http:`).
    pub http: HttpLimits,
    /// Every store query's bounds (`query:`).
    pub query: QueryLimits,
    /// The IPFIX listener's limits (`collectingProcess:`).
    pub collecting: super::collecting::Collecting,
}

impl CollectorFile {
    /// [`Self::validate`] plus the store settings (`store`, `clickhouse`, `ingest`).
    pub fn validate_with_store(self) -> anyhow::Result<(CollectorConfig, StoreChoice)> {
        let backend = match self.store.as_str() {
            "sqlite" => StoreBackend::Sqlite,
            "clickhouse" => {
                self.clickhouse.validate()?;
                StoreBackend::ClickHouse(Box::new(self.clickhouse.clone()))
            }
            other => bail!("store {other:?} is not one of sqlite, clickhouse"),
        };
        let ingest = self.ingest;
        Ok((self.validate()?, StoreChoice { backend, ingest }))
    }

    pub fn validate(self) -> anyhow::Result<CollectorConfig> {
        let listen_addr = self.listen_addr.parse().with_context(|| {
            format!(
                "listenAddr {:?} is not an IP:port such as 0.0.0.0:4739",
                self.listen_addr
            )
        })?;
        let transport: Transport = self
            .transport
            .parse()
            .map_err(|e| anyhow::anyhow!("transport: {e}"))?;
        if transport == Transport::Tls
            && (self.tls.ca_cert.is_none() || self.tls.cert.is_none() || self.tls.key.is_none())
        {
            bail!("transport is tls but tls.caCert, tls.cert and tls.key are not all set");
        }
        let http_addr = self.http_addr.parse().with_context(|| {
            format!(
                "httpAddr {:?} is not an IP:port such as 0.0.0.0:8080",
                self.http_addr
            )
        })?;
        self.log.validate()?;
        let ingest_queue_bytes = match usize::try_from(self.ingest_queue_bytes) {
            Ok(n) if (1 << 20..=u32::MAX as usize).contains(&n) => n,
            _ => bail!(
                "ingestQueueBytes {} is out of range: give 1048576 (1 MiB) to 4294967295 bytes",
                self.ingest_queue_bytes
            ),
        };
        Ok(CollectorConfig {
            listen_addr,
            transport,
            tls: self.tls,
            data_dir: self.data_dir,
            retention: self.retention.into(),
            max_store_bytes: self.max_store_bytes,
            ingest_queue_bytes,
            http_addr,
            log: self.log,
            http: self.http.validate()?,
            query: self.query.validate()?,
            collecting: self.collecting_process.validate()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<(CollectorConfig, StoreChoice)> {
        let f: CollectorFile = serde_saphyr::from_str(yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
        f.validate_with_store()
    }

    #[test]
    fn store_defaults_to_embedded_sqlite_with_ingest() {
        let (_, s) = parse("httpAddr: 127.0.0.1:8080\n").unwrap();
        assert_eq!(s, StoreChoice::default());
    }

    #[test]
    fn clickhouse_store_and_query_only_mode() {
        let (_, s) = parse(
            "store: clickhouse\ningest: false\nclickhouse:\n  url: http://ch:8123\n  database: k8s\n",
        )
        .unwrap();
        assert!(!s.ingest);
        let StoreBackend::ClickHouse(c) = s.backend else {
            panic!("{s:?}")
        };
        assert_eq!(
            (c.url.as_str(), c.database.as_str()),
            ("http://ch:8123", "k8s")
        );
    }

    #[test]
    fn bad_store_values_name_the_key() {
        for (yaml, needle) in [
            (
                "store: duckdb\n",
                "store \"duckdb\" is not one of sqlite, clickhouse",
            ),
            (
                "store: clickhouse\nclickhouse:\n  url: https://ch:8443\n",
                "clickhouse.url: https is not supported",
            ),
            (
                "store: clickhouse\nclickhouse:\n  batchRows: 0\n",
                "clickhouse.batchRows",
            ),
            ("clickhouse:\n  hots: x\n", "unknown field"),
            ("ingest: maybe\n", "ingest"),
        ] {
            let e = format!("{:#}", parse(yaml).unwrap_err());
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
