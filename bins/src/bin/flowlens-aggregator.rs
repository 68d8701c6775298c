//! `flowlens-aggregator --config FILE`: correlates the agents' flow records. See
//! `flowlens_bins::aggregator`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use flowlens_bins::config::{self, aggregator::AggregatorFile};

/// The flowlens aggregator: receives IPFIX from the agents (TCP, UDP or mutual TLS), joins the
/// two Nodes' records of each inter-Node flow, and exports complete records (IPFIX, JSON lines).
#[derive(Debug, Parser)]
#[command(
    name = "flowlens-aggregator",
    version,
    after_help = "With tlsDir set, a CA, server and client certificate are generated there on first start.\nExample config: deploy/base/aggregator/flowlens-aggregator.conf.yaml"
)]
struct Cli {
    /// YAML config file (Antrea keys: externalFlowCollectorAddr, aggregatorTransportProtocol, activeFlowRecordTimeout, …).
    #[arg(long)]
    config: PathBuf,
    /// Static Kubernetes metadata for filling in flows whose partner never came.
    #[arg(long)]
    metadata: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    flowlens_bins::signals::exit("flowlens-aggregator", run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let file: AggregatorFile = config::load_yaml(&cli.config)?;
    let mut cfg = file
        .validate()
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
    flowlens_bins::signals::run_service(
        "flowlens_aggregator",
        &log,
        cfg,
        flowlens_bins::aggregator::run::run,
    )
}
