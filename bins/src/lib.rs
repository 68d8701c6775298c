//! The pieces behind the flowlens binaries. Each subcommand of `flowlens` lives in its own module
//! so the command-line binary stays a thin dispatcher.

pub mod agent;
pub mod aggregator;
pub mod clickhouse;
pub mod clock;
pub mod collector;
pub mod collector_cmd;
pub mod config;
pub mod conntrack_cmd;
pub mod decode;
pub mod demo;
pub mod memory;
pub mod observe;
pub mod ops;
pub mod ratelog;
pub mod registry_cmd;
pub mod sample;
pub mod signals;
pub mod sim_cmd;
pub mod sinks;
pub mod transport;
