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
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowlens-aggregator: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let file: AggregatorFile = config::load_yaml(&cli.config)?;
    let mut cfg = file
        .validate()
        .with_context(|| format!("in config file {}", cli.config.display()))?;
    if cli.metadata.is_some() {
        cfg.metadata_file = cli.metadata;
    }
    config::init_logging(&cfg.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ops = flowlens_bins::ops::Ops::new("flowlens_aggregator");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let sig = shutdown.clone();
        tokio::spawn(async move {
            flowlens_bins::signals::wait().await;
            sig.cancel();
        });
        flowlens_bins::aggregator::run::run(cfg, ops, shutdown).await
    })
}
