//! Lists the known core issues each seed of a scenario hits:
//! `cargo run --release -p sim --example known -- SCENARIO FIRST COUNT`.

use sim::{Scenario, SimConfig, run_seed};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let sc = Scenario::parse(a.first().map_or("default", String::as_str)).expect("scenario");
    let first: u64 = a.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let count: u64 = a.get(2).and_then(|s| s.parse().ok()).unwrap_or(10);
    for seed in first..first + count {
        let s = run_seed(&SimConfig::new(seed, sc));
        for (k, n) in &s.known_issues {
            println!("{sc} seed {seed}: {n} × {k}");
        }
    }
}
