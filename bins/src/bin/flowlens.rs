//! `flowlens`: collector, demo, simulator, decoder and conntrack tools in one binary.

use clap::{Parser, Subcommand};
use flowlens_bins::{collector_cmd, conntrack_cmd, decode, demo, observe, registry_cmd, sim_cmd};

#[derive(Debug, Parser)]
#[command(
    name = "flowlens",
    version,
    about = "Network flow visibility for Kubernetes, for any CNI"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The whole pipeline on a simulated cluster, with live dashboards on a local port.
    Demo(demo::DemoArgs),
    /// Decode IPFIX from a pcap/pcapng capture or a raw IPFIX stream into JSON lines.
    Decode(decode::DecodeArgs),
    /// Read the live Linux conntrack table (needs CAP_NET_ADMIN).
    #[command(subcommand)]
    Conntrack(conntrack_cmd::ConntrackCmd),
    /// Receive aggregated IPFIX, store it, and serve the HTTP API and dashboards.
    Collector(collector_cmd::CollectorArgs),
    /// Query or follow flow records stored by a collector, as a table or JSON lines.
    Observe(Box<observe::ObserveArgs>),
    /// Print the information-element registry (Logstash definitions, JSON or CSV).
    Registry(registry_cmd::RegistryArgs),
    /// Deterministic simulated cluster runs with fault injection and invariant checks.
    Sim(sim_cmd::SimArgs),
    /// Feed a conntrack trace through one exporter core; records as JSON lines.
    Replay(sim_cmd::ReplayArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Demo(a) => demo::run(a),
        Cmd::Decode(a) => decode::run(a),
        Cmd::Conntrack(c) => c.run(),
        Cmd::Registry(a) => registry_cmd::run(a),
        Cmd::Collector(a) => collector_cmd::run(a),
        Cmd::Observe(a) => observe::run(*a),
        Cmd::Sim(a) => sim_cmd::run(a),
        Cmd::Replay(a) => sim_cmd::replay(a),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowlens: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
