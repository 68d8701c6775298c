//! Configuration files of the binaries. Keys match Antrea's where the meaning matches
//! (`flowCollectorAddr`, `flowPollInterval`, `activeFlowExportTimeout`, …) so a config can be
//! carried over; flowlens's own keys are camelCase too. Unknown keys are errors (a typo must not
//! silently fall back to a default), and every error names the file, the key and the accepted
//! form.
//!
//! Parsing is two steps: serde reads the YAML into `*File` structs (durations already typed by
//! `flowcore::config::Duration`), then `validate` turns them into the typed config the binary
//! runs with.

pub mod agent;
pub mod aggregator;
pub mod collecting;
pub mod collector;

use std::path::Path;

use anyhow::Context;
use flowcore::config::Duration as GoDuration;
use serde::de::DeserializeOwned;

/// Reads and parses a YAML config file.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    parse_yaml(&text).with_context(|| format!("in config file {}", path.display()))
}

/// Parses YAML text; an empty document is the all-defaults config.
pub fn parse_yaml<T: DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
}

/// TLS file locations shared by the binaries (PEM files, e.g. a mounted Secret).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    /// The CA that signs both ends' certificates.
    pub ca_cert: Option<std::path::PathBuf>,
    /// This process's certificate chain and key.
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// The transport's view (unset paths become empty, which fails loading with the path named;
    /// validation has already required them where TLS is on).
    pub fn transport(&self) -> crate::transport::tls::TlsFiles {
        crate::transport::tls::TlsFiles {
            ca: self.ca_cert.clone().unwrap_or_default(),
            cert: self.cert.clone().unwrap_or_default(),
            key: self.key.clone().unwrap_or_default(),
        }
    }
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `flowlens=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The levels a bare `log.level` directive may name.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

const LEVEL_FORM: &str = "a level (off, error, warn, info, debug, trace) or per-target \
                          directives such as `flowlens_bins=debug,info`";

impl LogConfig {
    /// Checks `level` the way [`init_logging`] will read it, so a typo fails start-up instead of
    /// being skipped with a warning. A bare word must be a level: tracing would take `infoo` as
    /// a target name and log nothing useful.
    pub fn validate(&self) -> anyhow::Result<()> {
        let level = self.level.trim();
        if level.is_empty() {
            anyhow::bail!("log.level is empty; expected {LEVEL_FORM}");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level) {
            anyhow::bail!(
                "log.level {level:?} is not a tracing filter ({e}); expected {LEVEL_FORM}"
            );
        }
        for d in level.split(',').map(str::trim) {
            if d.is_empty() {
                anyhow::bail!("log.level {level:?} has an empty directive; expected {LEVEL_FORM}");
            }
            let bare = !d.contains(['=', '[', '{', ':']);
            if bare && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
                anyhow::bail!(
                    "log.level {level:?}: {d:?} is not a level; expected {LEVEL_FORM} (a target \
                     needs its level: `{d}=debug`)"
                );
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl<'de> serde::Deserialize<'de> for LogFormat {
    /// By hand so that a typo names the key and both choices.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(serde::de::Error::custom(format!(
                "log.format {other:?} is not one of text, json"
            ))),
        }
    }
}

/// Starts tracing output as configured (`RUST_LOG` overrides the level). The level was
/// checked by [`LogConfig::validate`]; should it still not parse, `info` is used.
pub fn init_logging(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
}

/// The `http:` section of every binary's config: the limits of its HTTP server (the collector's
/// API and UI on `httpAddr`; the agent's and aggregator's `metricsAddr`). See
/// [`crate::ops::HttpLimits`] for what each bounds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct HttpFile {
    /// Time to send a request's headers (from accept, or from the previous response on a
    /// keep-alive connection, which this therefore also closes when idle). 10s.
    pub header_read_timeout: GoDuration,
    /// Time to produce a response. 30s.
    pub request_timeout: GoDuration,
    /// A response write making no progress this long closes the connection. 30s.
    pub write_timeout: GoDuration,
    /// Largest request body, bytes (413 beyond). 65536.
    pub max_body_bytes: u64,
    /// Connections open at once; more are closed at accept. 512.
    pub max_connections: usize,
    /// Requests handled at once (not the probes); more get 503 with Retry-After. 64.
    pub max_concurrent_requests: usize,
    /// How long requests in progress may finish at shutdown. 5s.
    pub shutdown_grace: GoDuration,
}

impl Default for HttpFile {
    fn default() -> Self {
        let d = crate::ops::HttpLimits::default();
        HttpFile {
            header_read_timeout: d.header_read_timeout.into(),
            request_timeout: d.request_timeout.into(),
            write_timeout: d.write_timeout.into(),
            max_body_bytes: d.max_body_bytes as u64,
            max_connections: d.max_connections,
            max_concurrent_requests: d.max_concurrent_requests,
            shutdown_grace: d.shutdown_grace.into(),
        }
    }
}

impl HttpFile {
    pub fn validate(&self) -> anyhow::Result<crate::ops::HttpLimits> {
        for (key, d) in [
            ("http.headerReadTimeout", self.header_read_timeout),
            ("http.requestTimeout", self.request_timeout),
            ("http.writeTimeout", self.write_timeout),
        ] {
            if d.0 < std::time::Duration::from_millis(100)
                || d.0 > std::time::Duration::from_secs(3600)
            {
                anyhow::bail!(
                    "{key} is {d}; it must be from 100ms to 1h (Go duration syntax, e.g. \"10s\")"
                );
            }
        }
        if self.shutdown_grace.0 > std::time::Duration::from_secs(600) {
            anyhow::bail!(
                "http.shutdownGrace is {}; it must be at most 10m (Go duration syntax, e.g. \"5s\")",
                self.shutdown_grace
            );
        }
        for (key, v, max) in [
            ("http.maxConnections", self.max_connections as u64, 100_000),
            (
                "http.maxConcurrentRequests",
                self.max_concurrent_requests as u64,
                100_000,
            ),
            ("http.maxBodyBytes", self.max_body_bytes, 1 << 30),
        ] {
            if v == 0 || v > max {
                anyhow::bail!("{key} is {v}; it must be from 1 to {max}");
            }
        }
        Ok(crate::ops::HttpLimits {
            header_read_timeout: self.header_read_timeout.into(),
            request_timeout: self.request_timeout.into(),
            write_timeout: self.write_timeout.into(),
            max_body_bytes: self.max_body_bytes as usize,
            max_connections: self.max_connections,
            max_concurrent_requests: self.max_concurrent_requests,
            shutdown_grace: self.shutdown_grace.into(),
        })
    }
}

/// A file a config key names must be readable: the error names the key, then the path and the
/// cause.
pub fn check_readable(key: &str, path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))
}

impl TlsFiles {
    /// Loads the certificates and key the way the transport will, each error naming its key
    /// (`tls.caCert`, `tls.cert`, `tls.key`). Unset paths are skipped (validation already
    /// required them where TLS is on).
    pub fn check(&self) -> anyhow::Result<()> {
        use crate::transport::tls::{load_certs, load_key};
        if let Some(p) = &self.ca_cert {
            load_certs(p).context("tls.caCert")?;
        }
        if let Some(p) = &self.cert {
            load_certs(p).context("tls.cert")?;
        }
        if let Some(p) = &self.key {
            load_key(p).context("tls.key")?;
        }
        Ok(())
    }
}

/// Reads a static metadata file as the agent and aggregator will, the error naming `key`
/// (`metadataFile`, or `--metadata` when the flag gave it).
pub fn check_metadata_file(key: &str, path: &Path) -> anyhow::Result<()> {
    io_k8s::static_metadata::load(path)
        .map(|_| ())
        .with_context(|| key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = parse_yaml::<agent::AgentFile>("flowPolInterval: 5s\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("flowPolInterval"), "{e}");
    }

    #[test]
    fn shipped_deploy_configs_load_with_the_binaries_loaders() {
        // Every config file under deploy/ that names a binary in its file name must load.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let mut n = 0;
        for entry in walk(&root) {
            let name = entry
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if !name.ends_with(".yaml") || !name.starts_with("flowlens-") || !name.contains(".conf")
            {
                continue;
            }
            let res = if name.starts_with("flowlens-agent") {
                load_yaml::<agent::AgentFile>(&entry)
                    .and_then(|f| f.validate(Some("node-a")).map(|_| ()))
            } else if name.starts_with("flowlens-aggregator") {
                load_yaml::<aggregator::AggregatorFile>(&entry)
                    .and_then(|f| f.validate().map(|_| ()))
            } else if name.starts_with("flowlens-collector") {
                load_yaml::<collector::CollectorFile>(&entry).and_then(|f| f.validate().map(|_| ()))
            } else {
                continue;
            };
            res.unwrap_or_else(|e| panic!("{}: {e:#}", entry.display()));
            n += 1;
        }
        eprintln!("{n} deploy config files loaded");
    }

    #[test]
    fn log_level_typos_fail_validation_naming_the_key_and_the_form() {
        for level in [
            "info",
            "debug,flowlens=trace",
            "warn",
            "flowlens_bins=debug,info",
            "OFF",
        ] {
            let c = LogConfig {
                level: level.into(),
                ..LogConfig::default()
            };
            c.validate().unwrap_or_else(|e| panic!("{level}: {e}"));
        }
        for (level, needle) in [
            ("infoo", "\"infoo\" is not a level"),
            ("debug,flowlens", "\"flowlens\" is not a level"),
            ("flowlens=verbose", "not a tracing filter"),
            ("", "log.level is empty"),
            ("info,,debug", "empty directive"),
        ] {
            let c = LogConfig {
                level: level.into(),
                ..LogConfig::default()
            };
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("log.level")
                    && e.contains(needle)
                    && e.contains("flowlens_bins=debug,info"),
                "{level:?}: {e}"
            );
        }
        // Through a binary's loader too.
        let e = parse_yaml::<collector::CollectorFile>("log:\n  level: infoo\n")
            .and_then(|f| f.validate().map(|_| ()))
            .unwrap_err();
        assert!(format!("{e:#}").contains("log.level \"infoo\""), "{e:#}");
    }

    #[test]
    fn log_format_typo_names_the_key_and_the_choices() {
        let e = parse_yaml::<aggregator::AggregatorFile>("log:\n  format: jsn\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("log.format \"jsn\" is not one of text, json"),
            "{e}"
        );
        let f: agent::AgentFile = parse_yaml("log:\n  format: json\n").unwrap();
        assert_eq!(f.log.format, LogFormat::Json);
    }

    #[test]
    fn http_limits_default_and_bad_values_name_the_key() {
        let f: HttpFile = parse_yaml("maxConnections: 100\nheaderReadTimeout: 2s\n").unwrap();
        let l = f.validate().unwrap();
        assert_eq!(l.max_connections, 100);
        assert_eq!(l.header_read_timeout, std::time::Duration::from_secs(2));
        assert_eq!(
            l.request_timeout,
            crate::ops::HttpLimits::default().request_timeout
        );
        for (yaml, needle) in [
            (
                "maxConnections: 0\n",
                "http.maxConnections is 0; it must be from 1 to 100000",
            ),
            ("maxConcurrentRequests: 0\n", "http.maxConcurrentRequests"),
            ("maxBodyBytes: 0\n", "http.maxBodyBytes"),
            ("headerReadTimeout: 1ms\n", "http.headerReadTimeout is 1ms"),
            ("requestTimeout: 2h\n", "http.requestTimeout"),
            ("writeTimeout: 0s\n", "http.writeTimeout"),
            ("shutdownGrace: 1h\n", "http.shutdownGrace"),
        ] {
            let e = parse_yaml::<HttpFile>(yaml)
                .and_then(|f| f.validate().map(|_| ()))
                .unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{yaml}: {e:#}");
        }
        let e = parse_yaml::<HttpFile>("maxConections: 5\n").unwrap_err();
        assert!(format!("{e:#}").contains("maxConections"), "{e:#}");
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("flowlens-cfg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn tls_file_errors_name_their_key() {
        let dir = temp("tls");
        let certs = crate::transport::tls::GeneratedCerts::in_dir(&dir);
        crate::transport::tls::ensure_certs(
            &dir,
            &["localhost".to_owned()],
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(86400),
            &Default::default(),
        )
        .unwrap();
        let good = certs.server();
        let ok = TlsFiles {
            ca_cert: Some(good.ca.clone()),
            cert: Some(good.cert.clone()),
            key: Some(good.key.clone()),
        };
        ok.check().unwrap();
        let missing = dir.join("missing.pem");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        for (files, key, path) in [
            (
                TlsFiles {
                    ca_cert: Some(missing.clone()),
                    ..ok.clone()
                },
                "tls.caCert",
                &missing,
            ),
            (
                TlsFiles {
                    cert: Some(not_pem.clone()),
                    ..ok.clone()
                },
                "tls.cert",
                &not_pem,
            ),
            (
                TlsFiles {
                    key: Some(missing.clone()),
                    ..ok.clone()
                },
                "tls.key",
                &missing,
            ),
            (
                TlsFiles {
                    key: Some(not_pem.clone()),
                    ..ok.clone()
                },
                "tls.key",
                &not_pem,
            ),
        ] {
            let e = format!("{:#}", files.check().unwrap_err());
            assert!(
                e.starts_with(&format!("{key}: ")) && e.contains(&path.display().to_string()),
                "{key}: {e}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn metadata_and_directory_errors_name_their_key() {
        let dir = temp("files");
        let missing = dir.join("metadata.yaml");
        let e = format!(
            "{:#}",
            check_metadata_file("metadataFile", &missing).unwrap_err()
        );
        assert!(
            e.starts_with("metadataFile: ") && e.contains("metadata.yaml"),
            "{e}"
        );
        std::fs::write(&missing, "kind: [\n").unwrap();
        let e = format!(
            "{:#}",
            check_metadata_file("--metadata", &missing).unwrap_err()
        );
        assert!(e.starts_with("--metadata: ") && e.contains("YAML"), "{e}");

        // A file where a directory must be: tlsDir and jsonLines.path cannot be created.
        let file = dir.join("plain");
        std::fs::write(&file, "x").unwrap();
        let agg = |yaml: String| {
            parse_yaml::<aggregator::AggregatorFile>(&yaml)
                .unwrap()
                .validate()
                .unwrap()
        };
        let e = agg(format!("tlsDir: {}\n", file.join("tls").display()))
            .check_files("metadataFile")
            .unwrap_err();
        assert!(format!("{e:#}").starts_with("tlsDir "), "{e:#}");
        let e = agg(format!(
            "aggregatorTransportProtocol: tcp\njsonLines:\n  path: {}\n",
            file.join("out/flows.jsonl").display()
        ))
        .check_files("metadataFile")
        .unwrap_err();
        assert!(format!("{e:#}").starts_with("jsonLines.path "), "{e:#}");
        let e = agg(format!(
            "aggregatorTransportProtocol: tcp\nmetadataFile: {}\n",
            dir.join("none.yaml").display()
        ))
        .check_files("metadataFile")
        .unwrap_err();
        assert!(format!("{e:#}").starts_with("metadataFile: "), "{e:#}");
        let a: agent::AgentFile = parse_yaml(&format!(
            "enableTLSToFlowAggregator: true\ntls:\n  caCert: {0}\n  cert: {0}\n  key: {0}\n",
            dir.join("nope.pem").display()
        ))
        .unwrap();
        let e = a
            .validate(Some("n"))
            .unwrap()
            .check_files("metadataFile")
            .unwrap_err();
        assert!(format!("{e:#}").starts_with("tls.caCert: "), "{e:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    out.extend(walk(&p));
                } else {
                    out.push(p);
                }
            }
        }
        out
    }
}
