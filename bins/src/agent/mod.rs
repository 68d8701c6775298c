//! `flowlens-agent`: conntrack → flowcore exporter → IPFIX to the aggregator(s).

pub mod pipeline;
pub mod run;
