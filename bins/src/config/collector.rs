//! `flowlens collector --config FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use flowcore::config::{Duration as GoDuration, Transport};

use super::{LogConfig, TlsFiles};

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
    /// And the store is kept under this size (bytes).
    pub max_store_bytes: u64,
    /// The HTTP API and dashboards.
    pub http_addr: String,
    pub log: LogConfig,
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
    pub http_addr: SocketAddr,
    pub log: LogConfig,
}

impl CollectorFile {
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
        Ok(CollectorConfig {
            listen_addr,
            transport,
            tls: self.tls,
            data_dir: self.data_dir,
            retention: self.retention.into(),
            max_store_bytes: self.max_store_bytes,
            http_addr,
            log: self.log,
        })
    }
}
