//! Pieces the bins benchmarks share, included by `#[path]`; each user takes a part. The store
//! benchmarks (`benches/store.rs` for SQLite, `examples/clickhouse_bench.rs` for ClickHouse): the
//! synthetic fill's start time and Pod names, `FLOWLENS_BENCH_*` settings, and the per-query
//! p50/p95 timing and its table. All: this thread's and a process's CPU time, this process's memory, a free port.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600;

/// `name` from the environment as a number, or `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nanoseconds this thread has run on a CPU (Linux `schedstat`; 0 elsewhere): unaffected by
/// other processes competing for the machine, which wall-clock figures are not.
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// (user, sys) CPU seconds of process `pid` (or `self`), from /proc/<pid>/stat (100 Hz ticks).
pub fn proc_cpu(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the comm field.
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (t(11), t(12))
}

/// A `/proc/self/status` figure in kB (`VmRSS`, `VmHWM`, …); 0 if absent.
pub fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A loopback TCP port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The synthetic cluster's app name for Pod `i` (see `Synth`).
pub fn app(i: usize) -> &'static str {
    [
        "frontend", "cart", "checkout", "db", "cache", "api", "worker", "metrics",
    ][(i / 4) % 8]
}

/// The header of `bench`'s table; `cpu` as given to `bench`.
pub fn print_header(cpu: bool) {
    print!(
        "{:<34} {:>9} {:>9} {:>9}",
        "query (ms)", "p50", "p95", "max"
    );
    if cpu {
        print!(" {:>9}", "cpu p95");
    }
    println!();
}

/// Runs `f` `runs` times (`f` gets the run's index and returns the rows it got); prints
/// wall-clock p50/p95/max and, if `cpu`, the p95 of the CPU time the query took on this thread
/// (for a store that queries on the caller's thread, like SQLite).
pub fn bench(name: &str, runs: usize, cpu: bool, mut f: impl FnMut(usize) -> usize) {
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    let mut cpu_ns: Vec<u64> = Vec::with_capacity(runs);
    let mut rows = 0;
    for i in 0..runs {
        let (t, c) = (Instant::now(), thread_cpu_ns());
        rows = f(i);
        times.push(t.elapsed());
        cpu_ns.push(thread_cpu_ns().saturating_sub(c));
    }
    times.sort();
    cpu_ns.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let idx = |q: f64| ((runs as f64 * q).ceil() as usize).clamp(1, runs) - 1;
    print!(
        "{name:<34} {:>9.1} {:>9.1} {:>9.1}",
        ms(times[idx(0.5)]),
        ms(times[idx(0.95)]),
        ms(times[runs - 1]),
    );
    if cpu {
        print!(" {:>9.1}", cpu_ns[idx(0.95)] as f64 / 1e6);
    }
    println!("   ({rows} rows)");
}
