//! ClickHouse over its HTTP interface: the scale-out store behind the collector's API
//! (`collector::clickhouse`) and the aggregator's ClickHouse sink both sit on
//! [`ClickHouseClient`].
//!
//! ```no_run
//! # async fn demo(records: Vec<flowcore::aggregator::AggregatedRecord>) -> Result<(), flowlens_bins::clickhouse::Error> {
//! use flowlens_bins::clickhouse::{ClickHouseClient, ClickHouseConfig};
//! let cfg = ClickHouseConfig { url: "http://127.0.0.1:8123".into(), ..Default::default() };
//! // Validates the config, checks the server, creates database/tables/views if missing.
//! let ch = ClickHouseClient::connect(cfg).await?;
//! // One RowBinary INSERT for the whole slice; returns how many rows were written.
//! let n = ch.insert(&records, /* inserted_at, Unix seconds */ 1_767_225_600).await?;
//! # let _ = n; Ok(()) }
//! ```
//!
//! - [`ClickHouseConfig`] (serde, camelCase, unknown keys rejected; [`ClickHouseConfig::validate`]
//!   names the bad key): `url`, `database`, `user`, `password`, `table`, `batchRows`,
//!   `flushInterval`, `retention`, `timeout`, `createSchema`. `batchRows` and `flushInterval` are
//!   for callers that batch (the client sends whatever slice it is given as one INSERT).
//! - [`ClickHouseClient::connect`] → [`ClickHouseClient::insert`] (`&self`, share it in an
//!   `Arc`); [`ClickHouseClient::query`]/[`ClickHouseClient::execute`] for raw SQL.
//! - [`Error`] names the server URL, the operation and ClickHouse's message with its exception
//!   code (the `clickhouse` crate keeps the HTTP status to itself).
//! - [`schema`] holds the tables as Rust strings; `deploy/overlays/clickhouse/schema.sql` is
//!   generated from them.
//!
//! Transport: the official `clickhouse` crate (hyper, connection pool), with validation off
//! because Debian's server (18.16) predates RowBinaryWithNamesAndTypes, and without lz4 (inserts
//! are CPU-bound on a LAN; compressing costs more client CPU than it saves). Rows are encoded by
//! [`rowbinary`] straight from the records, so the crate only carries bytes.

pub mod client;
pub mod config;
pub mod rowbinary;
pub mod schema;

pub use client::{ClickHouseClient, Error, quote};
pub use config::{ClickHouseConfig, ConfigError};
