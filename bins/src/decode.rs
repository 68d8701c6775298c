//! `flowlens decode FILE`: IPFIX from a pcap/pcapng capture or a raw IPFIX stream to JSON lines.

use std::path::PathBuf;

/// Arguments of `flowlens decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// A pcap or pcapng capture (IPFIX over UDP or TCP, any port) or a raw IPFIX byte stream.
    pub file: PathBuf,
}

pub fn run(_args: DecodeArgs) -> anyhow::Result<()> {
    anyhow::bail!("flowlens decode is not built yet")
}
