//! Failing tests for bugs the simulator found in the cores (flowcore::aggregator), run with
//! `strict` so the known issues fail the run. Ignored until the cores are fixed:
//! `cargo test -p sim --test core_bugs -- --ignored`.
//!
//! The common root: when the aggregator no longer holds a flow (inactive timeout, eviction,
//! restart) it takes the next record's *totals* as new (delta = totals), although the agent's
//! record says how much of it is new (its delta against what was acknowledged). Tombstones only
//! paper over it for one more inactive timeout, are keyed on the earliest Node's start second
//! (so clock skew defeats them), and accept an *older* connection's late half as a late half of
//! the newer connection on a reused 5-tuple.

use sim::{Scenario, SimConfig, run_seed};

fn strict(scenario: Scenario, seed: u64) {
    let mut cfg = SimConfig::new(seed, scenario);
    cfg.strict = true;
    let s = run_seed(&cfg);
    if let Some(v) = &s.violation {
        panic!(
            "{scenario} seed {seed}: {}\nknown issues: {:?}\n{}",
            v.what,
            s.known_issues,
            v.trace.join("\n")
        );
    }
}

/// Default scenario, seed 1: an intra-Node UDP flow quiet for > 180 s (exported once at 90 s,
/// forgotten by the aggregator at 180 s, tombstone gone at 270 s) gets its end-of-flow record at
/// 302 s with delta 0 from the exporter; the aggregator exports its totals again as deltas.
/// Expected: per-Node deltas of the flow add up to its totals (3050 packets); actual: 6100.
#[test]
#[ignore = "core bug: aggregator recounts totals of a flow it forgot (inactive timeout)"]
fn aggregator_recounts_a_forgotten_quiet_flow() {
    strict(Scenario::Default, 1);
}

/// Skew scenario, seed 1: the destination Node's clock is ahead, so its late end-of-flow half
/// has a later start second than the tombstone (which keeps the source Node's), is taken for a
/// new connection and its totals counted again.
#[test]
#[ignore = "core bug: aggregator tombstone compares start seconds across Nodes"]
fn aggregator_tombstone_misses_skewed_late_half() {
    strict(Scenario::Skew, 1);
}

/// Partition scenario, seed 11: after a 5-tuple reuse, the old connection's source half arrives
/// late (partition) and is joined to the *newer* connection's tombstone: one record carries the
/// source counters of one connection and the destination counters of another, and the late
/// destination half of a finished flow comes out without its Service.
#[test]
#[ignore = "core bug: aggregator joins halves of two connections on a reused 5-tuple"]
fn aggregator_mixes_connections_on_reused_tuple() {
    strict(Scenario::Partition, 11);
}

/// Restart scenario, seed 1: after an aggregator restart every flow it had exported is counted
/// again from zero (the agent's own deltas would have given the exact increment).
#[test]
#[ignore = "core bug: aggregator restart recounts totals (agent deltas ignored)"]
fn aggregator_restart_recounts_totals() {
    strict(Scenario::Restart, 1);
}
