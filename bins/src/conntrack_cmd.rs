//! `flowlens conntrack …`: the live conntrack table through io-linux.

/// Subcommands of `flowlens conntrack`.
#[derive(Debug, clap::Subcommand)]
pub enum ConntrackCmd {
    /// Print the live conntrack table.
    Dump,
}

impl ConntrackCmd {
    pub fn run(self) -> anyhow::Result<()> {
        anyhow::bail!("flowlens conntrack is not built yet")
    }
}
