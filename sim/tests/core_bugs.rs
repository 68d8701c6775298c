//! Regression tests for bugs the simulator found in the aggregator core (flowcore::aggregator),
//! each pinned to a seed that hit it: `cargo test --release -p sim --test core_bugs`. Each asserts
//! that the run has no occurrence of one known issue (the summary counts them; `flowlens sim
//! --strict` fails on any), or no violation at all.
//!
//! Root causes (fixed in flowcore/src/aggregator, each with a unit or property test there):
//! - a flow (side) the aggregator did not know took the record's *totals* as new: it now starts
//!   at the agent's `totals − deltas` (forgotten quiet flows, evictions, restarts);
//! - tombstones compared start seconds across Nodes (clock skew): now per Node;
//! - a tombstone kept no Kubernetes fields: it now keeps the finished flow itself, so a late half
//!   is exported with the Service the source Node reported;
//! - a half was joined to the flow in flight on its 5-tuple whatever its start second: a half
//!   with an older start than its Node's side in flight, or a start far (beyond the clocks'
//!   tolerance) from the other Node's, belongs to another connection — the finished one
//!   (tombstone) when its start matches, else it is exported on its own.

use sim::{Scenario, SimConfig, run_seed};

fn assert_no_issue(scenario: Scenario, seed: u64, issue: &str) {
    let s = run_seed(&SimConfig::new(seed, scenario));
    assert!(s.violation.is_none(), "{:?}", s.violation);
    let hits: u64 = s
        .known_issues
        .iter()
        .filter(|(k, _)| k.contains(issue))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        hits, 0,
        "{scenario} seed {seed}: {hits} × {issue:?} (all: {:?}); history: flowlens sim --seed {seed} --scenario {scenario} --strict",
        s.known_issues
    );
}

/// Default scenario, seed 1 (no faults): a flow quiet for longer than the aggregator's inactive
/// timeout plus its tombstone (90 s + 90 s) — an idle UDP/TCP connection whose end-of-flow record
/// comes later — is recounted: the exporter's record carries delta 0, the aggregator exports its
/// totals again. Expected: per-Node deltas add up to the totals; actual: twice the totals.
#[test]
fn aggregator_recounts_a_forgotten_quiet_flow() {
    assert_no_issue(Scenario::Default, 1, "forgot a quiet flow");
}

/// Skew scenario, seed 1: the tombstone keeps the flow's earliest start second (the Node whose
/// clock is behind); the late end-of-flow half of the Node whose clock is ahead has a later start
/// second, is taken for a new connection and its totals counted again.
#[test]
fn aggregator_tombstone_misses_skewed_late_half() {
    assert_no_issue(Scenario::Skew, 1, "not matched to its tombstone");
}

/// Partition scenario, seed 7: after a 5-tuple reuse, the old connection's half arrives late
/// (its Node was partitioned) and is joined to the newer connection: one aggregated record
/// carries counters of two different connections.
#[test]
fn aggregator_mixes_connections_on_reused_tuple() {
    assert_no_issue(Scenario::Partition, 7, "mixed record");
}

/// Default scenario, seed 0: the destination half of a flow the aggregator already finished
/// (source half exported, flow ended) is exported from the tombstone path without the Service
/// the source Node reported (the tombstone keeps no metadata).
#[test]
fn aggregator_late_destination_half_loses_service() {
    assert_no_issue(Scenario::Default, 0, "without Service");
}

/// Restart scenario, seed 1: after an aggregator restart every flow it had exported was counted
/// again from zero (fixed: an unknown side starts at the agent's totals − deltas). The hits left
/// were agent re-exports after the aggregator's crash, which the checker now counts as their own
/// category (sim 9e59089); re-exports of TIME_WAIT entries while the aggregator still runs are
/// caught by tombstones that outlive conntrack's TIME_WAIT.
#[test]
fn aggregator_restart_recounts_totals() {
    assert_no_issue(Scenario::Restart, 1, "after aggregator restart");
}

/// Capacity scenario, seed 0: with `max_flows` reached the aggregator evicts flows and bounds
/// tombstones by the same number; a later half of an evicted flow is counted again.
#[test]
fn aggregator_recounts_evicted_flows() {
    assert_no_issue(Scenario::Capacity, 0, "evicted the flow");
}

/// Partition scenario, seed 9698, and lost-events seed 2658 (found at 10,000 seeds): the Node's
/// next connection on the 5-tuple reached the aggregator first and finished the old flow (reuse);
/// then the old connection's end-of-flow half arrived with an older start second than the side in
/// flight, was taken for the new connection and counted again. It now goes to the old flow's
/// tombstone (delta 0).
#[test]
fn late_end_of_flow_half_recounted_seeds_9698_2658() {
    for (sc, seed) in [(Scenario::Partition, 9698), (Scenario::LostEvents, 2658)] {
        let s = run_seed(&SimConfig::new(seed, sc));
        assert!(
            s.violation.is_none(),
            "{sc} seed {seed}: {:?}",
            s.violation.map(|v| v.what)
        );
    }
}
