//! The abuse suite's measurements: every attack at the full size, printing the row of
//! the before/after table in `tests/ABUSE.md` and every figure, asserting nothing. Ignored by
//! default (minutes each); run one at a time against a build:
//!
//!     FLOWLENS_RELEASE_DIR=/path/to/target/release FLOWLENS_ABUSE_REPORT=/tmp/rows.md \
//!       cargo test --release -p tests --test abuse_measure -- --ignored --nocapture --test-threads=1
//!
//! `FLOWLENS_ABUSE_REPORT` (optional) collects the rows in a file.

use tests::abuse::Size::Full;
use tests::abuse::scenario::report;
use tests::abuse::scenarios as s;

macro_rules! measure {
    ($($name:ident => $scenario:expr;)*) => {$(
        #[test]
        #[ignore = "full-size measurement: minutes; see the module docs"]
        fn $name() {
            report(&$scenario.run());
        }
    )*};
}

measure! {
    measure_00_control => s::control(Full);
    measure_01_unique_names => s::unique_names(Full);
    measure_02_unique_valid_names => s::unique_valid_names(Full);
    measure_03_huge_labels => s::huge_labels(Full);
    measure_04_template_amplification => s::template_amplification(Full);
    measure_05_many_domains => s::many_domains(Full);
    measure_06_template_churn => s::template_churn(Full);
    measure_07_idle_connections => s::idle_connections(Full);
    measure_08_half_open_tls => s::half_open_tls(Full);
    measure_09_udp_session_table => s::udp_session_table(Full);
    measure_10_partial_message => s::partial_message(Full, false);
    measure_11_trickled_message => s::partial_message(Full, true);
    measure_12_malformed_flood => s::malformed_flood(Full);
    measure_13_flow_table_flood => s::flow_table_flood(Full);
    measure_14_agent_flood => s::agent_flood(Full);
    measure_15_collector_flood => s::collector_flood(Full);
    measure_16_collector_flood_retention => s::collector_flood_retention(Full);
    measure_17_concurrent_queries => s::concurrent_queries(Full);
    measure_18_slow_headers => s::slow_headers(Full);
    measure_19_unbounded_limit => s::unbounded_limit(Full);
    measure_20_huge_requests => s::huge_requests(Full);
    measure_21_time_range_overflow => s::time_range_overflow(Full);
}

/// Port-in-use is a start-up check, not a scenario: a row of its own.
#[test]
#[ignore = "measurement; see the module docs"]
fn measure_22_port_in_use() {
    for (aggregator, key) in [(true, "metricsAddr"), (false, "httpAddr")] {
        let r = s::port_in_use(aggregator);
        let f = r.failures(key);
        let row = format!(
            "| {} {key} already in use | – | – | – | {} | {} |",
            r.daemon,
            match r.exited {
                Some(st) => format!("exited at start ({st})"),
                None => "kept running".to_string(),
            },
            if f.is_empty() {
                format!("refused to start naming {key}")
            } else {
                f.join("; ").replace('|', "/")
            }
        );
        println!("{row}");
        if let Some(p) = std::env::var_os("FLOWLENS_ABUSE_REPORT") {
            use std::io::Write;
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
            {
                let _ = writeln!(file, "{row}");
            }
        }
    }
}
