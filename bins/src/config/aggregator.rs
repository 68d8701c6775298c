//! `flowlens-aggregator --config FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use flowcore::config::{CollectorAddr, Duration as GoDuration, Transport};

use super::{HttpFile, LogConfig, TlsFiles};
use crate::ops::HttpLimits;

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AggregatorFile {
    /// Where the agents' records come in.
    pub listen_addr: String,
    /// `tls`, `tcp` or `udp` (Antrea's key). Must match the agents' `enableTLSToFlowAggregator`.
    pub aggregator_transport_protocol: String,
    /// DNS name (or IP) the agents dial; it goes into the generated server certificate.
    pub flow_aggregator_address: String,
    /// IPFIX to a further collector, `HOST:[PORT][:PROTO]`; optional.
    pub external_flow_collector_addr: Option<String>,
    /// IPFIX bytes held for the external collector until written: what is produced while it is
    /// unreachable is sent once it is back, up to this bound (then the oldest is dropped and
    /// counted).
    pub external_flow_collector_replay_bytes: u64,
    /// Aggregated records queued per sink at most (IPFIX, JSON lines, ClickHouse) before the
    /// sink's input drops and counts them.
    pub sink_queue_records: usize,
    /// Antrea's older key for the active timeout; used when `activeFlowRecordTimeout` is unset.
    pub flow_export_interval: Option<GoDuration>,
    pub active_flow_record_timeout: Option<GoDuration>,
    pub inactive_flow_record_timeout: GoDuration,
    /// How long an inter-Node record waits for the other Node's before it goes out uncorrelated.
    pub correlation_timeout: GoDuration,
    /// In-flight flows at most, and as many finished flows remembered (tombstones). When full,
    /// a new flow evicts (exports with reason 5) a flow of the exporter holding the most. A flow
    /// and its tombstone take up to ~700 bytes when a peer makes every flow's metadata distinct
    /// (`cargo bench -p flowcore --bench aggregator`), so the default 500,000 keeps the core
    /// under ~350 MiB whatever the agents send.
    pub max_flows: usize,
    /// Bytes of interned names (Pods, Namespaces, Nodes, Services, policies, labels; text plus
    /// 64 bytes each) at most, charged to the exporter that sent each name; over it, names of
    /// the exporter over its share are refused (counted) and its flows evicted.
    pub max_name_bytes: u64,
    /// Longest `sourcePodLabels`/`destinationPodLabels` JSON accepted; longer is refused
    /// (counted, the field left empty).
    pub max_label_bytes: usize,
    pub cluster_id: String,
    /// Server certificate, key and the CA that client certificates must chain to. With
    /// `tlsDir`, missing files are generated there on first start (and rotated before expiry).
    pub tls: TlsFiles,
    pub tls_dir: Option<PathBuf>,
    /// JSON lines output; optional.
    pub json_lines: Option<JsonLinesFile>,
    /// Aggregated records into ClickHouse (the collector's keys: url, database, user, password,
    /// table, batchRows, flushInterval, retention, timeout, createSchema); optional.
    pub clickhouse: Option<crate::clickhouse::ClickHouseConfig>,
    /// Rows the ClickHouse sink holds at most while it batches or the server is down; past it
    /// the oldest are dropped and counted. At least `clickhouse.batchRows`.
    pub clickhouse_buffer_rows: usize,
    /// Threads running the correlation core; flows are split among them by a hash of the flow
    /// key (both halves of a flow meet on one thread), each with `maxFlows / coreThreads`.
    pub core_threads: usize,
    /// Static metadata to fill records whose partner never came (instead of the Kubernetes API).
    pub metadata_file: Option<PathBuf>,
    /// On SIGTERM, how long the aggregator may take to read what the agents already sent, export
    /// every flow in flight (reason 4) and have every sink write it; what is left then is counted,
    /// logged, and makes the exit status non-zero. Keep it under the Pod's
    /// `terminationGracePeriodSeconds`.
    pub shutdown_grace_period: GoDuration,
    /// `/metrics`, `/healthz`, `/readyz`, and `/api/flows` (in-flight flows, for `flowlens observe`).
    pub metrics_addr: String,
    /// Limits of the HTTP server on metricsAddr (see the collector's `http:`).
    pub http: HttpFile,
    /// Limits of the IPFIX listener on listenAddr: sessions, deadlines, queues, templates.
    pub collecting_process: super::collecting::CollectingFile,
    pub log: LogConfig,
}

#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JsonLinesFile {
    pub path: PathBuf,
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "default_max_files")]
    pub max_files: usize,
}

fn default_max_bytes() -> u64 {
    100 << 20
}
fn default_max_files() -> usize {
    5
}

impl Default for AggregatorFile {
    fn default() -> Self {
        AggregatorFile {
            listen_addr: "0.0.0.0:4739".into(),
            aggregator_transport_protocol: "tls".into(),
            flow_aggregator_address: "flow-aggregator.flow-aggregator.svc".into(),
            external_flow_collector_addr: None,
            external_flow_collector_replay_bytes: 64 << 20,
            sink_queue_records: 65_536,
            flow_export_interval: None,
            active_flow_record_timeout: None,
            inactive_flow_record_timeout: Duration::from_secs(90).into(),
            correlation_timeout: Duration::from_secs(15).into(),
            max_flows: 500_000,
            max_name_bytes: 64 << 20,
            max_label_bytes: flowcore::aggregator::DEFAULT_MAX_LABEL_BYTES,
            cluster_id: String::new(),
            tls: TlsFiles::default(),
            tls_dir: None,
            json_lines: None,
            clickhouse: None,
            clickhouse_buffer_rows: 200_000,
            core_threads: 1,
            metadata_file: None,
            shutdown_grace_period: Duration::from_secs(25).into(),
            metrics_addr: "0.0.0.0:9391".into(),
            http: HttpFile::default(),
            collecting_process: Default::default(),
            log: LogConfig::default(),
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct AggregatorConfig {
    pub listen_addr: SocketAddr,
    pub transport: Transport,
    pub server_name: String,
    pub external: Option<CollectorAddr>,
    pub active_timeout: Duration,
    pub inactive_timeout: Duration,
    pub correlation_timeout: Duration,
    pub max_flows: usize,
    pub max_name_bytes: usize,
    pub max_label_bytes: usize,
    pub cluster_id: String,
    pub tls: TlsFiles,
    pub tls_dir: Option<PathBuf>,
    pub json_lines: Option<JsonLinesFile>,
    pub metadata_file: Option<PathBuf>,
    pub metrics_addr: SocketAddr,
    /// The IPFIX listener's limits (`collectingProcess:`).
    pub collecting: super::collecting::Collecting,
    pub log: LogConfig,
}

/// The sinks' settings, beside [`AggregatorConfig`] so code that builds that struct directly
/// (the demo) gets the defaults.
#[derive(Clone, Debug)]
pub struct SinkSettings {
    /// IPFIX bytes held for the external collector until written (`externalFlowCollectorReplayBytes`).
    pub replay_bytes: usize,
    /// Records queued per sink at most (`sinkQueueRecords`).
    pub queue_records: usize,
    /// The ClickHouse sink (`clickhouse`) and the rows it may hold (`clickhouseBufferRows`).
    pub clickhouse: Option<(crate::clickhouse::ClickHouseConfig, usize)>,
    /// Threads running the core (`coreThreads`).
    pub core_threads: usize,
    /// The shutdown flush's time limit (`shutdownGracePeriod`).
    pub shutdown_grace: Duration,
}

impl Default for SinkSettings {
    fn default() -> Self {
        SinkSettings {
            replay_bytes: 64 << 20,
            queue_records: 65_536,
            clickhouse: None,
            core_threads: 1,
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

/// Everything `flowlens-aggregator` runs with: the base configuration (reachable through
/// `Deref`), the sinks' settings and the HTTP server's limits.
#[derive(Clone, Debug)]
pub struct AggregatorSetup {
    pub base: AggregatorConfig,
    pub sinks: SinkSettings,
    /// The server on metricsAddr (`http:`).
    pub http: HttpLimits,
}

impl From<AggregatorConfig> for AggregatorSetup {
    fn from(base: AggregatorConfig) -> Self {
        AggregatorSetup {
            base,
            sinks: SinkSettings::default(),
            http: HttpLimits::default(),
        }
    }
}

impl AggregatorSetup {
    /// Reads the files the config names as the aggregator will, each error naming its key: the
    /// TLS files (with TLS and no tlsDir), tlsDir (created if missing), jsonLines.path's
    /// directory, and the static metadata file (`metadata_key`: `metadataFile`, or `--metadata`
    /// when the command line gave it).
    pub fn check_files(&self, metadata_key: &str) -> anyhow::Result<()> {
        if self.transport == Transport::Tls {
            match &self.tls_dir {
                Some(d) => std::fs::create_dir_all(d)
                    .map_err(|e| anyhow::anyhow!("tlsDir {}: {e}", d.display()))?,
                None => self.tls.check()?,
            }
        }
        if let Some(j) = &self.json_lines
            && let Some(dir) = j.path.parent().filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "jsonLines.path {}: directory {}: {e}",
                    j.path.display(),
                    dir.display()
                )
            })?;
        }
        if let Some(p) = &self.metadata_file {
            super::check_metadata_file(metadata_key, p)?;
        }
        Ok(())
    }
}

impl std::ops::Deref for AggregatorSetup {
    type Target = AggregatorConfig;
    fn deref(&self) -> &AggregatorConfig {
        &self.base
    }
}

impl std::ops::DerefMut for AggregatorSetup {
    fn deref_mut(&mut self) -> &mut AggregatorConfig {
        &mut self.base
    }
}

impl AggregatorFile {
    pub fn validate(self) -> anyhow::Result<AggregatorSetup> {
        let listen_addr = self.listen_addr.parse().with_context(|| {
            format!(
                "listenAddr {:?} is not an IP:port such as 0.0.0.0:4739",
                self.listen_addr
            )
        })?;
        let transport: Transport = self
            .aggregator_transport_protocol
            .parse()
            .map_err(|e| anyhow::anyhow!("aggregatorTransportProtocol: {e}"))?;
        let external = self
            .external_flow_collector_addr
            .as_deref()
            .map(|a| {
                a.parse::<CollectorAddr>()
                    .context("externalFlowCollectorAddr")
            })
            .transpose()?;
        let active: Duration = self
            .active_flow_record_timeout
            .or(self.flow_export_interval)
            .map_or(Duration::from_secs(60), Into::into);
        if active < Duration::from_secs(1) {
            bail!("activeFlowRecordTimeout (or flowExportInterval) must be at least 1s");
        }
        let inactive: Duration = self.inactive_flow_record_timeout.into();
        let correlation: Duration = self.correlation_timeout.into();
        if inactive < correlation {
            bail!(
                "inactiveFlowRecordTimeout ({}) is shorter than correlationTimeout ({}); a flow would be forgotten before its partner may arrive",
                self.inactive_flow_record_timeout,
                self.correlation_timeout
            );
        }
        if transport == Transport::Tls
            && self.tls_dir.is_none()
            && (self.tls.ca_cert.is_none() || self.tls.cert.is_none() || self.tls.key.is_none())
        {
            bail!(
                "aggregatorTransportProtocol is tls but neither tlsDir (generate certificates there) nor tls.caCert, tls.cert and tls.key are set"
            );
        }
        if !(1..=64).contains(&self.core_threads) {
            bail!("coreThreads must be 1 to 64; it is {}", self.core_threads);
        }
        if self.sink_queue_records == 0 {
            bail!("sinkQueueRecords must be at least 1");
        }
        if self.external_flow_collector_replay_bytes < 65_536 {
            bail!(
                "externalFlowCollectorReplayBytes must be at least 65536 (one IPFIX message); it is {}",
                self.external_flow_collector_replay_bytes
            );
        }
        if self.max_flows == 0 {
            bail!("maxFlows must be at least 1");
        }
        if self.max_name_bytes < 1 << 20 {
            bail!(
                "maxNameBytes must be at least 1048576 (1 MiB); it is {}",
                self.max_name_bytes
            );
        }
        if !(256..=1 << 20).contains(&self.max_label_bytes) {
            bail!(
                "maxLabelBytes must be 256 to 1048576; it is {}",
                self.max_label_bytes
            );
        }
        let metrics_addr = self.metrics_addr.parse().with_context(|| {
            format!(
                "metricsAddr {:?} is not an IP:port such as 0.0.0.0:9391",
                self.metrics_addr
            )
        })?;
        if let Some(ch) = &self.clickhouse {
            ch.validate()?;
            if self.clickhouse_buffer_rows < ch.batch_rows {
                bail!(
                    "clickhouseBufferRows ({}) is below clickhouse.batchRows ({}); a batch could never fill",
                    self.clickhouse_buffer_rows,
                    ch.batch_rows
                );
            }
        }
        let sinks = SinkSettings {
            replay_bytes: usize::try_from(self.external_flow_collector_replay_bytes)
                .unwrap_or(usize::MAX),
            queue_records: self.sink_queue_records,
            clickhouse: self.clickhouse.map(|c| (c, self.clickhouse_buffer_rows)),
            core_threads: self.core_threads,
            shutdown_grace: self.shutdown_grace_period.into(),
        };
        self.log.validate()?;
        let http = self.http.validate()?;
        let collecting = self.collecting_process.validate()?;
        let base = AggregatorConfig {
            listen_addr,
            transport,
            server_name: self.flow_aggregator_address,
            external,
            active_timeout: active,
            inactive_timeout: inactive,
            correlation_timeout: correlation,
            max_flows: self.max_flows,
            max_name_bytes: usize::try_from(self.max_name_bytes).unwrap_or(usize::MAX),
            max_label_bytes: self.max_label_bytes,
            cluster_id: self.cluster_id,
            tls: self.tls,
            tls_dir: self.tls_dir,
            json_lines: self.json_lines,
            metadata_file: self.metadata_file,
            metrics_addr,
            collecting,
            log: self.log,
        };
        Ok(AggregatorSetup { base, sinks, http })
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_yaml;
    use super::*;

    #[test]
    fn antrea_keys_carry_over() {
        let c = parse_yaml::<AggregatorFile>(
            "externalFlowCollectorAddr: \"192.168.86.86:4739:tcp\"\nflowExportInterval: 30s\naggregatorTransportProtocol: tcp\n",
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(c.active_timeout, Duration::from_secs(30));
        assert_eq!(c.transport, Transport::Tcp);
        assert_eq!(c.external.as_ref().unwrap().port, 4739);
        assert_eq!(c.sinks.replay_bytes, 64 << 20);
    }

    #[test]
    fn errors_name_the_key() {
        for (yaml, want) in [
            (
                "aggregatorTransportProtocol: quic\n",
                "aggregatorTransportProtocol",
            ),
            ("aggregatorTransportProtocol: tls\n", "tlsDir"),
            (
                "aggregatorTransportProtocol: tcp\ninactiveFlowRecordTimeout: 5s\n",
                "correlationTimeout",
            ),
            (
                "aggregatorTransportProtocol: tcp\nlistenAddr: \":4739\"\n",
                "listenAddr",
            ),
            (
                "aggregatorTransportProtocol: tcp\nexternalFlowCollectorReplayBytes: 1000\n",
                "externalFlowCollectorReplayBytes",
            ),
            (
                "aggregatorTransportProtocol: tcp\nsinkQueueRecords: 0\n",
                "sinkQueueRecords",
            ),
            (
                "aggregatorTransportProtocol: tcp\nmaxNameBytes: 1000\n",
                "maxNameBytes",
            ),
            (
                "aggregatorTransportProtocol: tcp\nmaxLabelBytes: 10\n",
                "maxLabelBytes",
            ),
            (
                "aggregatorTransportProtocol: tcp\nclickhouse:\n  url: https://ch:8123\n",
                "clickhouse.url",
            ),
            (
                "aggregatorTransportProtocol: tcp\nclickhouse:\n  batchRows: 1000\nclickhouseBufferRows: 10\n",
                "clickhouseBufferRows",
            ),
        ] {
            let e = parse_yaml::<AggregatorFile>(yaml)
                .and_then(|f| f.validate().map(|_| ()))
                .unwrap_err();
            assert!(format!("{e:#}").contains(want), "{yaml:?}: {e:#}");
        }
    }
}
