//! `flowlens-agent --config FILE`: the per-Node flow exporter. See `flowlens_bins::agent`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use flowlens_bins::config::{self, agent::AgentFile};

/// The flowlens agent: reads this Node's conntrack table, enriches connections with Kubernetes
/// metadata, and exports IPFIX flow records to the flowlens aggregator.
#[derive(Debug, Parser)]
#[command(
    name = "flowlens-agent",
    version,
    after_help = "The Node name comes from NODE_NAME (set it from the downward API, spec.nodeName).\nNeeds CAP_NET_ADMIN for conntrack.\nExample config: deploy/base/agent/flowlens-agent.conf.yaml"
)]
struct Cli {
    /// YAML config file (Antrea keys: flowCollectorAddr, flowPollInterval, activeFlowExportTimeout, …).
    #[arg(long)]
    config: PathBuf,
    /// Static Kubernetes metadata (YAML of Pods, Nodes, Services, …) instead of the API server.
    #[arg(long)]
    metadata: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    flowlens_bins::signals::exit("flowlens-agent", run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let file: AgentFile = config::load_yaml(&cli.config)?;
    let mut cfg = file
        .validate(std::env::var("NODE_NAME").ok().as_deref())
        .with_context(|| format!("in config file {}", cli.config.display()))?;
    let metadata_key = if cli.metadata.is_some() {
        "--metadata"
    } else {
        "metadataFile"
    };
    if cli.metadata.is_some() {
        cfg.metadata_file = cli.metadata;
    }
    // Files the config names are read now, so a bad path fails naming its key.
    cfg.check_files(metadata_key)
        .with_context(|| format!("in config file {}", cli.config.display()))?;
    let log = cfg.log.clone();
    flowlens_bins::signals::run_service("flowlens_agent", &log, cfg, flowlens_bins::agent::run::run)
}
