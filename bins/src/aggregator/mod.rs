//! `flowlens-aggregator`: the collecting process → flowcore's aggregator core → sinks (IPFIX to a
//! further collector, JSON lines), with `/api/flows` for the flows in flight.

pub mod run;
