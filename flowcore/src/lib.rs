//! flowlens core: everything that decides, nothing that waits.
//!
//! This crate is sans-IO (see `DESIGN.md`): no sockets, files, threads, clocks or unseeded
//! randomness. Time enters as a [`model::Timestamp`] argument; outputs are polled. The agent,
//! the aggregator, the collector and the simulator all drive the same code.
//!
//! - [`config`]: typed configuration values (durations in Go syntax, collector addresses).
//! - [`model`]: shared value types (timestamps, flow keys, conntrack entries).
//! - [`ie`]: the information-element registry, single source of truth for IE names and types.
//! - [`ipfix`]: the IPFIX (RFC 7011) message encoder, decoder and stream framing.
//! - [`metadata`]: the Kubernetes metadata index (Pods, Nodes, Services, policies) by IP and time.
//! - [`policy`]: Kubernetes NetworkPolicy evaluation for a flow.
//! - [`exporter`]: the per-Node connection store and export state machine.
//! - [`aggregator`]: correlation of the two Nodes' halves of a flow, and per-Node accounting.

pub mod aggregator;
pub mod config;
pub mod exporter;
pub mod ie;
pub mod ipfix;
pub mod metadata;
pub mod model;
pub mod policy;
