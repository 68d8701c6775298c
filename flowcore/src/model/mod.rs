//! Value types shared by every stage of the pipeline. Data flows one way
//! (conntrack → exporter → IPFIX → aggregator → sinks); whatever two stages both need lives here.

mod conntrack;
mod time;

pub use conntrack::{ConntrackEntry, ConntrackStatus, Counters, TcpState, Tuple};
pub use time::Timestamp;

mod record;
pub use record::*;
