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
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowlens-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let file: AgentFile = config::load_yaml(&cli.config)?;
    let mut cfg = file
        .validate(std::env::var("NODE_NAME").ok().as_deref())
        .with_context(|| format!("in config file {}", cli.config.display()))?;
    if cli.metadata.is_some() {
        cfg.metadata_file = cli.metadata;
    }
    config::init_logging(&cfg.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ops = flowlens_bins::ops::Ops::new("flowlens_agent");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let http = tokio::spawn(flowlens_bins::ops::serve(
            cfg.metrics_addr,
            ops.router(),
            shutdown.clone().cancelled_owned(),
        ));
        let sig = shutdown.clone();
        tokio::spawn(async move {
            flowlens_bins::signals::wait().await;
            sig.cancel();
        });
        let res = flowlens_bins::agent::run::run(cfg, ops, shutdown.clone()).await;
        shutdown.cancel();
        let _ = http.await;
        res
    })
}
