//! flowlens's VOPR: a deterministic cluster simulator driving the flowcore state machines in
//! virtual time, with seeded faults and invariant checks.
//!
//! One seed reproduces a whole run bit for bit: the cluster ([`cluster`]), its connections
//! ([`conn`]), the faults ([`scenario`]), the network, and therefore every record. The run
//! ([`run`]) feeds one `FlowExporter` per Node with conntrack dumps and destroy events, carries
//! its records over IPFIX through a modelled TCP or UDP transport into the `Aggregator`, and
//! checks after every step that nothing was lost, invented or double counted that a counted fault
//! does not explain ([`check`]).
//!
//! Nothing here reads a clock or unseeded randomness, and no hash map is iterated.

pub mod check;
pub mod cluster;
pub mod conn;
pub mod rng;
pub mod run;
pub mod scenario;
pub mod trace;

pub use check::Violation;
pub use run::{FaultCounts, Sim, SimConfig, Summary};
pub use scenario::Scenario;

/// Runs one seed; on a violation, runs it again tracing the offending connection so the
/// violation carries its history.
pub fn run_seed(cfg: &SimConfig) -> Summary {
    let s = Sim::new(cfg.clone()).run();
    match &s.violation {
        Some(v) if v.conn.is_some() && cfg.trace_conn.is_none() => {
            let mut c = cfg.clone();
            c.trace_conn = v.conn;
            let traced = Sim::new(c).run();
            let mut s = s;
            if let (Some(v), Some(tv)) = (&mut s.violation, traced.violation) {
                v.trace = tv.trace;
                v.replay = traced.conn_trace;
            }
            s
        }
        _ => s,
    }
}
