//! `flowlens-agent`: conntrack → flowcore exporter → IPFIX to the aggregator(s).

pub mod export_path;
pub mod pipeline;
pub mod run;
