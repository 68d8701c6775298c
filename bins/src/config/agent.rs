//! `flowlens-agent --config FILE`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use flowcore::config::{CollectorAddr, Duration as GoDuration, Transport};

use super::{HttpFile, LogConfig, TlsFiles};
use crate::ops::HttpLimits;

/// The file as written. Defaults are Antrea's where the key is Antrea's.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AgentFile {
    /// `HOST:[PORT][:PROTO]`, PROTO tls|tcp|udp, IPv6 in brackets, port 4739 by default. Several
    /// addresses (or a name resolving to several, like a headless Service) shard flows across
    /// aggregator replicas.
    pub flow_collector_addr: String,
    /// How often conntrack is dumped; at least 1s.
    pub flow_poll_interval: GoDuration,
    pub active_flow_export_timeout: GoDuration,
    pub idle_flow_export_timeout: GoDuration,
    #[serde(rename = "enableTLSToFlowAggregator")]
    pub enable_tls_to_flow_aggregator: bool,
    /// Defaults to the `NODE_NAME` environment variable (the downward API).
    pub node_name: Option<String>,
    /// Client certificate, key and CA for TLS to the aggregator.
    pub tls: TlsFiles,
    /// A static metadata file instead of the Kubernetes API (outside a cluster, and tests).
    pub metadata_file: Option<PathBuf>,
    /// Watch only this Node's Pods (less memory on large clusters; the aggregator fills in the
    /// remote end) instead of all Pods.
    pub node_local_pods: bool,
    /// Only this conntrack zone (e.g. a CNI's zone); all zones when unset.
    pub conntrack_zone: Option<u16>,
    /// Connections tracked at most; beyond, the stalest is exported and evicted (counted).
    pub max_connections: usize,
    /// Messages waiting for the aggregator at most; beyond, they are dropped and counted (the
    /// exporter core re-sends their deltas, so nothing is lost but freshness).
    pub max_queued_messages: usize,
    /// On SIGTERM, how long the agent keeps sending the final records of its connections
    /// (reason 4) before it gives up on what is left, logs it and exits non-zero. Keep it under
    /// the Pod's `terminationGracePeriodSeconds`.
    pub shutdown_grace_period: GoDuration,
    /// `/metrics`, `/healthz`, `/readyz`.
    pub metrics_addr: String,
    /// Limits of the HTTP server on metricsAddr (see the collector's `http:`).
    pub http: HttpFile,
    pub log: LogConfig,
}

impl Default for AgentFile {
    fn default() -> Self {
        AgentFile {
            flow_collector_addr: "flow-aggregator.flow-aggregator.svc:4739".into(),
            flow_poll_interval: Duration::from_secs(5).into(),
            active_flow_export_timeout: Duration::from_secs(60).into(),
            idle_flow_export_timeout: Duration::from_secs(15).into(),
            enable_tls_to_flow_aggregator: true,
            node_name: None,
            tls: TlsFiles::default(),
            metadata_file: None,
            node_local_pods: false,
            conntrack_zone: None,
            max_connections: 1_000_000,
            max_queued_messages: 4096,
            shutdown_grace_period: Duration::from_secs(25).into(),
            metrics_addr: "0.0.0.0:9390".into(),
            http: HttpFile::default(),
            log: LogConfig::default(),
        }
    }
}

/// The validated configuration the agent runs with.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub collectors: Vec<CollectorAddr>,
    pub transport: Transport,
    pub poll_interval: Duration,
    pub active_timeout: Duration,
    pub idle_timeout: Duration,
    pub node_name: String,
    pub tls: TlsFiles,
    pub metadata_file: Option<PathBuf>,
    pub node_local_pods: bool,
    pub conntrack_zone: Option<u16>,
    pub max_connections: usize,
    pub max_queued_messages: usize,
    pub shutdown_grace: Duration,
    pub metrics_addr: SocketAddr,
    pub http: HttpLimits,
    pub log: LogConfig,
}

impl AgentConfig {
    /// Reads the files the config names as the agent will, each error naming its key: the TLS
    /// files (with TLS on) and the static metadata file. `metadata_key` is `metadataFile`, or
    /// `--metadata` when the command line gave the file.
    pub fn check_files(&self, metadata_key: &str) -> anyhow::Result<()> {
        if self.transport == Transport::Tls {
            self.tls.check()?;
        }
        if let Some(p) = &self.metadata_file {
            super::check_metadata_file(metadata_key, p)?;
        }
        Ok(())
    }
}

impl AgentFile {
    /// Checks every key; `env_node_name` is `NODE_NAME` from the environment.
    pub fn validate(self, env_node_name: Option<&str>) -> anyhow::Result<AgentConfig> {
        let collectors = self
            .flow_collector_addr
            .split(',')
            .map(|a| {
                a.trim()
                    .parse::<CollectorAddr>()
                    .context("flowCollectorAddr")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut transport = None;
        for c in &collectors {
            let t = c
                .agent_transport(self.enable_tls_to_flow_aggregator)
                .context("flowCollectorAddr")?;
            if transport.is_some_and(|x| x != t) {
                bail!(
                    "flowCollectorAddr: all addresses must use the same protocol (tls, tcp or udp)"
                );
            }
            transport = Some(t);
        }
        let poll: Duration = self.flow_poll_interval.into();
        if poll < Duration::from_secs(1) {
            bail!(
                "flowPollInterval is {}; it must be at least 1s (Go duration syntax, e.g. \"5s\")",
                self.flow_poll_interval
            );
        }
        let active: Duration = self.active_flow_export_timeout.into();
        let idle: Duration = self.idle_flow_export_timeout.into();
        for (key, d) in [
            ("activeFlowExportTimeout", active),
            ("idleFlowExportTimeout", idle),
        ] {
            if d < poll {
                bail!(
                    "{key} ({}) is shorter than flowPollInterval ({}); exports cannot be more frequent than polls",
                    GoDuration(d),
                    self.flow_poll_interval
                );
            }
        }
        let node_name = match (self.node_name, env_node_name) {
            (Some(n), _) if !n.is_empty() => n,
            (_, Some(n)) if !n.is_empty() => n.to_string(),
            _ => bail!(
                "the Node name is unknown: set the NODE_NAME environment variable (downward API: spec.nodeName) or nodeName in the config"
            ),
        };
        if transport == Some(Transport::Tls)
            && (self.tls.ca_cert.is_none() || self.tls.cert.is_none() || self.tls.key.is_none())
        {
            bail!(
                "TLS to the aggregator is on (enableTLSToFlowAggregator or :tls) but tls.caCert, tls.cert and tls.key are not all set; point them at the PEM files of the aggregator's CA and this agent's client certificate"
            );
        }
        if self.max_connections == 0 || self.max_queued_messages == 0 {
            bail!("maxConnections and maxQueuedMessages must be at least 1");
        }
        let metrics_addr = self.metrics_addr.parse().with_context(|| {
            format!(
                "metricsAddr {:?} is not an IP:port such as 0.0.0.0:9390",
                self.metrics_addr
            )
        })?;
        self.log.validate()?;
        Ok(AgentConfig {
            collectors,
            transport: transport.unwrap_or(Transport::Tcp),
            poll_interval: poll,
            active_timeout: active,
            idle_timeout: idle,
            node_name,
            tls: self.tls,
            metadata_file: self.metadata_file,
            node_local_pods: self.node_local_pods,
            conntrack_zone: self.conntrack_zone,
            max_connections: self.max_connections,
            max_queued_messages: self.max_queued_messages,
            shutdown_grace: self.shutdown_grace_period.into(),
            metrics_addr,
            http: self.http.validate()?,
            log: self.log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_yaml;
    use super::*;

    #[test]
    fn antrea_keys_and_defaults() {
        let f: AgentFile = parse_yaml(
            "flowCollectorAddr: \"10.96.0.9:4739:tcp\"\nflowPollInterval: 2s\nactiveFlowExportTimeout: 1m\nenableTLSToFlowAggregator: false\n",
        )
        .unwrap();
        let c = f.validate(Some("node-a")).unwrap();
        assert_eq!(c.transport, Transport::Tcp);
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        assert_eq!(c.active_timeout, Duration::from_secs(60));
        assert_eq!(c.idle_timeout, Duration::from_secs(15));
        assert_eq!(c.node_name, "node-a");
    }

    #[test]
    fn bad_values_name_the_key_and_the_form() {
        let cases = [
            (
                "flowPollInterval: 500ms\nenableTLSToFlowAggregator: false\n",
                "at least 1s",
            ),
            ("flowPollInterval: 5 seconds\n", "flowPollInterval"),
            (
                "flowCollectorAddr: \"fd00::1:4739\"\nenableTLSToFlowAggregator: false\n",
                "brackets",
            ),
            ("flowCollectorAddr: \"agg:4739:udp\"\n", "UDP"),
            ("flowCollectorAddr: \"agg:4739:tls\"\n", "tls.caCert"),
        ];
        for (yaml, want) in cases {
            let e = parse_yaml::<AgentFile>(yaml)
                .and_then(|f| f.validate(Some("n")).map(|_| ()))
                .unwrap_err();
            let msg = format!("{e:#}");
            assert!(
                msg.to_lowercase().contains(&want.to_lowercase()),
                "{yaml:?}: {msg}"
            );
        }
        let e = parse_yaml::<AgentFile>("enableTLSToFlowAggregator: false\n")
            .unwrap()
            .validate(None)
            .unwrap_err();
        assert!(e.to_string().contains("NODE_NAME"), "{e}");
    }
}
