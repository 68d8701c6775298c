//! `clickhouse:` in the collector's and the aggregator's config files.

use std::time::Duration;

use flowcore::config::Duration as GoDuration;

/// Where and how flowlens writes to (and reads from) ClickHouse. Every key is optional; the
/// defaults reach a server on the same host with the stock `default` user.
///
/// ```yaml
/// clickhouse:
///   url: http://clickhouse:8123      # the HTTP interface (https is not supported)
///   database: flowlens
///   user: default
///   password: ""
///   passwordFile: /etc/flowlens/clickhouse/password   # instead of password
///   table: flows                     # rollups are flows_pod_pair_1m, flows_node_pair_1m, …
///   batchRows: 100000                # rows per INSERT
///   flushInterval: 1s                # a partial batch waits at most this long
///   retention: 168h                  # records and rollups older than this are dropped
///   timeout: 30s                     # per request
///   createSchema: true               # CREATE … IF NOT EXISTS on connect
/// ```
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// `http://HOST:PORT` of the server's HTTP interface.
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
    /// Read the password from this file (trailing newline dropped), e.g. a mounted Secret.
    pub password_file: Option<std::path::PathBuf>,
    /// The record table; rollup tables and views are named after it.
    pub table: String,
    /// Rows per INSERT (1 to 1,000,000). ClickHouse wants few large inserts: each makes a part.
    pub batch_rows: usize,
    /// A partial batch is sent after this long (sinks that batch use it).
    pub flush_interval: GoDuration,
    /// How long records and rollups are kept (at least 1h). On servers with TTL (19.6+) it is
    /// the tables' TTL; on older ones flowlens drops whole day partitions past it.
    pub retention: GoDuration,
    /// Per HTTP request.
    pub timeout: GoDuration,
    /// Create the database, tables and views if missing. Off for a read-only user.
    pub create_schema: bool,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "flowlens".into(),
            user: "default".into(),
            password: String::new(),
            password_file: None,
            table: "flows".into(),
            batch_rows: 100_000,
            flush_interval: Duration::from_secs(1).into(),
            retention: Duration::from_secs(7 * 24 * 3600).into(),
            timeout: Duration::from_secs(30).into(),
            create_schema: true,
        }
    }
}

/// A bad `clickhouse` setting: names the key and the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("clickhouse.{key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

fn bad(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        message: message.into(),
    }
}

/// ClickHouse identifiers we splice into SQL: letters, digits and `_`, not starting with a digit.
fn identifier(key: &'static str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.as_bytes()[0].is_ascii_digit()
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(bad(
            key,
            format!("{v:?} is not a plain identifier (letters, digits and _, up to 64)"),
        ))
    }
}

impl ClickHouseConfig {
    /// Checks every key; called by `ClickHouseClient::connect` and by config loading.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rest = self.url.strip_prefix("http://").ok_or_else(|| {
            if self.url.starts_with("https://") {
                bad(
                    "url",
                    "https is not supported; use http://HOST:PORT (e.g. through a TLS sidecar)",
                )
            } else {
                bad(
                    "url",
                    format!(
                        "{:?} is not an http://HOST:PORT URL such as http://127.0.0.1:8123",
                        self.url
                    ),
                )
            }
        })?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains(['/', '?', '#', ' ', '@']) {
            return Err(bad(
                "url",
                format!(
                    "{:?} must be http://HOST[:PORT] with no path, query or credentials (use user/password)",
                    self.url
                ),
            ));
        }
        identifier("database", &self.database)?;
        identifier("table", &self.table)?;
        if self.user.is_empty() {
            return Err(bad(
                "user",
                "must not be empty (the stock user is `default`)",
            ));
        }
        if self.password_file.is_some() && !self.password.is_empty() {
            return Err(bad(
                "passwordFile",
                "set password or passwordFile, not both",
            ));
        }
        if !(1..=1_000_000).contains(&self.batch_rows) {
            return Err(bad(
                "batchRows",
                format!("{} is out of range 1 to 1000000", self.batch_rows),
            ));
        }
        if Duration::from(self.flush_interval) < Duration::from_millis(10) {
            return Err(bad("flushInterval", "must be at least 10ms"));
        }
        if Duration::from(self.retention) < Duration::from_secs(3600) {
            return Err(bad("retention", "must be at least 1h"));
        }
        if Duration::from(self.timeout) < Duration::from_millis(100) {
            return Err(bad("timeout", "must be at least 100ms"));
        }
        Ok(())
    }

    /// The password: `password`, or the contents of `passwordFile`.
    pub fn resolved_password(&self) -> Result<String, ConfigError> {
        match &self.password_file {
            None => Ok(self.password.clone()),
            Some(p) => std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| bad("passwordFile", format!("cannot read {}: {e}", p.display()))),
        }
    }

    /// Retention in whole days, rounded up (TTL and partitions work in days).
    pub fn retention_days(&self) -> u64 {
        Duration::from(self.retention).as_secs().div_ceil(86_400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<ClickHouseConfig, String> {
        let c: ClickHouseConfig = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn defaults_and_camel_case_keys() {
        let c =
            parse("url: http://ch:8123\nbatchRows: 5000\nflushInterval: 250ms\nretention: 48h\n")
                .unwrap();
        assert_eq!(c.url, "http://ch:8123");
        assert_eq!(c.batch_rows, 5000);
        assert_eq!(Duration::from(c.flush_interval), Duration::from_millis(250));
        assert_eq!(c.retention_days(), 2);
        assert_eq!(c.database, "flowlens");
        assert!(c.create_schema);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (yaml, needle) in [
            (
                "url: https://ch:8443",
                "clickhouse.url: https is not supported",
            ),
            (
                "url: ch:8123",
                "clickhouse.url: \"ch:8123\" is not an http://HOST:PORT",
            ),
            ("url: http://ch:8123/db", "no path"),
            (
                "database: \"flow-lens\"",
                "clickhouse.database: \"flow-lens\" is not a plain identifier",
            ),
            ("table: \"x; DROP\"", "clickhouse.table"),
            ("batchRows: 0", "clickhouse.batchRows: 0 is out of range"),
            ("retention: 5m", "clickhouse.retention: must be at least 1h"),
            ("flushInterval: 1ns", "clickhouse.flushInterval"),
            ("user: \"\"", "clickhouse.user"),
            ("batchrows: 5", "unknown field"),
            ("timeout: soon", "invalid duration"),
            (
                "password: x\npasswordFile: /p",
                "clickhouse.passwordFile: set password or",
            ),
        ] {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
