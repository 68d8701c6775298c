//! Runs a range of seeds of a scenario without the `flowlens` binary:
//! `cargo run --release -p sim --example sweep -- SCENARIO|all FIRST COUNT [NODES PODS SECS]`.
//! Prints the first violation with its trace and exits non-zero.

use sim::{Scenario, SimConfig, run_seed};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: u64| a.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let scenarios = match a.first().map(String::as_str) {
        None | Some("all") => Scenario::ALL.to_vec(),
        Some(s) => vec![Scenario::parse(s).expect("scenario name")],
    };
    let (first, count) = (arg(1, 0), arg(2, 100));
    for sc in scenarios {
        let t = std::time::Instant::now();
        let (mut conns, mut events, mut known) = (0, 0, 0);
        for seed in first..first + count {
            let mut cfg = SimConfig::new(seed, sc);
            if a.len() > 3 {
                cfg.nodes = Some(arg(3, 4) as usize);
                cfg.pods = Some(arg(4, 40) as usize);
                cfg.duration = Some(arg(5, 300) * 1_000_000_000);
            }
            let s = run_seed(&cfg);
            conns += s.connections;
            events += s.conn_events;
            known += s.known_issues.iter().map(|k| k.1).sum::<u64>();
            if let Some(v) = &s.violation {
                println!(
                    "{sc} seed {seed}: step {} t={}ms: {}",
                    v.step,
                    v.time / 1_000_000,
                    v.what
                );
                for l in &v.trace {
                    println!("   {l}");
                }
                std::process::exit(1);
            }
        }
        let w = t.elapsed().as_secs_f64();
        println!(
            "{sc:<12} seeds {first}..{}: ok, {conns} connections, {events} connection-events, {known} known-issue hits, {w:.2}s wall, {:.0} events/s",
            first + count,
            events as f64 / w
        );
    }
}
