//! Failing tests for bugs the simulator found in the aggregator core (flowcore::aggregator),
//! each pinned to a seed that hits it. Ignored until the core is fixed:
//! `cargo test -p sim --test core_bugs -- --ignored`. Each asserts that the run has no
//! occurrence of one known issue (the summary counts them; `flowlens sim --strict` fails on any).
//!
//! The common root: when the aggregator no longer holds a flow (inactive timeout, eviction,
//! restart) it takes the next record's *totals* as new (delta = totals), although the agent's
//! record says how much of it is new (its delta against what was acknowledged). Tombstones only
//! paper over it for one more inactive timeout, are keyed on the earliest Node's start second
//! (so clock skew defeats them), and accept an *older* connection's late half as a late half of
//! the newer connection on a reused 5-tuple. Proposed fix: for a flow (side) the aggregator does
//! not know, start its per-Node baseline at `totals - deltas` of the agent's record; keep the
//! start second per side in the tombstone and require equality for a late half.

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
#[ignore = "core bug: aggregator recounts the totals of a quiet flow it forgot"]
fn aggregator_recounts_a_forgotten_quiet_flow() {
    assert_no_issue(Scenario::Default, 1, "forgot a quiet flow");
}

/// Skew scenario, seed 1: the tombstone keeps the flow's earliest start second (the Node whose
/// clock is behind); the late end-of-flow half of the Node whose clock is ahead has a later start
/// second, is taken for a new connection and its totals counted again.
#[test]
#[ignore = "core bug: aggregator tombstone compares start seconds across Nodes"]
fn aggregator_tombstone_misses_skewed_late_half() {
    assert_no_issue(Scenario::Skew, 1, "not matched to its tombstone");
}

/// Partition scenario, seed 7: after a 5-tuple reuse, the old connection's half arrives late
/// (its Node was partitioned) and is joined to the newer connection: one aggregated record
/// carries counters of two different connections.
#[test]
#[ignore = "core bug: aggregator joins halves of two connections on a reused 5-tuple"]
fn aggregator_mixes_connections_on_reused_tuple() {
    assert_no_issue(Scenario::Partition, 7, "mixed record");
}

/// Default scenario, seed 0: the destination half of a flow the aggregator already finished
/// (source half exported, flow ended) is exported from the tombstone path without the Service
/// the source Node reported (the tombstone keeps no metadata).
#[test]
#[ignore = "core bug: late destination half loses the Service fields"]
fn aggregator_late_destination_half_loses_service() {
    assert_no_issue(Scenario::Default, 0, "without Service");
}

/// Restart scenario, seed 1: after an aggregator restart every flow it had exported is counted
/// again from zero (the agent's own deltas would have given the exact increment); after an agent
/// restart, its re-export of TIME_WAIT connections the aggregator forgot is counted again.
#[test]
#[ignore = "core bug: aggregator restart recounts totals (agent deltas ignored)"]
fn aggregator_restart_recounts_totals() {
    assert_no_issue(Scenario::Restart, 1, "after aggregator restart");
}

/// Capacity scenario, seed 0: with `max_flows` reached the aggregator evicts flows and bounds
/// tombstones by the same number; a later half of an evicted flow is counted again.
#[test]
#[ignore = "core bug: aggregator recounts flows it evicted"]
fn aggregator_recounts_evicted_flows() {
    assert_no_issue(Scenario::Capacity, 0, "evicted the flow");
}

/// Partition scenario, seed 9698 (found at 10,000 seeds, not yet explained): a UDP flow's
/// destination Node is partitioned when the connection is destroyed; its end-of-flow half
/// arrives 20 s later while the flow (source side ended, exported at 112.8 s) should still be in
/// flight, yet the aggregator opens a new, uncorrelated flow for it and counts its totals again.
/// Expected: the late half joins the flow (deltas 0); actual: deltas = totals (double count).
///
/// Lost-events scenario, seed 2658 (also found at 10,000 seeds), likely the same: the
/// destination's end-of-flow half finishes the flow at 180.7 s (record reason 3, both sides,
/// deltas 0) although the source side had only reported an idle export; the source's own
/// end-of-flow half at 182.8 s neither finds the flow nor is taken as a duplicate by the
/// tombstone, opens a new uncorrelated flow and is counted again.
#[test]
#[ignore = "unexplained double count of a late end-of-flow half, found at 10,000 seeds"]
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
