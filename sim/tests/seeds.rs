//! CI seeds: every scenario over a range of seeds must hold every invariant.

use sim::{Scenario, SimConfig, run_seed};

fn run(scenario: Scenario, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let s = run_seed(&SimConfig::new(seed, scenario));
        if let Some(v) = &s.violation {
            panic!(
                "scenario {scenario} seed {seed}: step {} t={}ms: {}\n{}",
                v.step,
                v.time / 1_000_000,
                v.what,
                v.trace.join("\n")
            );
        }
    }
}

#[test]
fn smoke() {
    for sc in Scenario::ALL {
        let s = run_seed(&SimConfig::new(1, sc));
        println!(
            "{sc}: conns {} recs {} out {} checks {} short {:?} known {:?} faults {:?}",
            s.connections,
            s.exporter_records,
            s.aggregator_out,
            s.invariants_checked,
            s.shortfalls,
            s.known_issues,
            s.faults
        );
        if let Some(v) = &s.violation {
            println!(
                "VIOLATION step {} t={}ms: {}",
                v.step,
                v.time / 1_000_000,
                v.what
            );
            for l in v.trace.iter().rev().take(14).rev() {
                println!("   {l}");
            }
        }
    }
    run(Scenario::Default, 0..3);
}
