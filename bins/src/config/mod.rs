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
pub mod collector;

use std::path::Path;

use anyhow::Context;
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Starts tracing output as configured (`RUST_LOG` overrides the level).
pub fn init_logging(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.try_init(),
    };
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
