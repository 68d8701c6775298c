//! `flowlens sim`: deterministic simulated runs with invariant checks (see the `sim` crate), and
//! `flowlens replay`: a conntrack trace through one exporter core, records as JSON lines.
//!
//! Output is deterministic for a given command line (runs are collected and printed in seed
//! order whatever `--jobs` is); only the wall-clock figures differ between invocations.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sim::{Scenario, SimConfig, Summary, run_seed};

fn scenarios_help() -> String {
    let mut s = String::from("Scenarios:\n");
    for sc in Scenario::ALL {
        s.push_str(&format!("  {:<12} {}\n", sc.name(), sc.about()));
    }
    s.push_str(
        "  all          every scenario above\n\n\
         Examples:\n  flowlens sim --seed 42\n  flowlens sim --seed 0 --seeds 10000 --scenario default\n  \
         flowlens sim --seed 7 --scenario chaos --nodes 20 --pods 2000 --duration 10m",
    );
    s
}

/// Arguments of `flowlens sim`.
#[derive(Debug, clap::Args)]
#[command(after_help = scenarios_help())]
pub struct SimArgs {
    /// First seed; one seed reproduces a run bit for bit.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How many consecutive seeds to run, from `--seed`.
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Scenario name (see below), or `all`.
    #[arg(long, default_value = "default")]
    pub scenario: String,
    /// Nodes in the cluster (default: drawn from the seed, 2–5).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Pods in the cluster (default: drawn from the seed, 3–8 per Node).
    #[arg(long)]
    pub pods: Option<usize>,
    /// Virtual time of traffic, Go syntax (`90s`, `10m`); the run then settles.
    #[arg(long, default_value = "5m", value_parser = parse_go_duration)]
    pub duration: Duration,
    /// New connections per Pod per second.
    #[arg(long, default_value_t = 0.05)]
    pub rate: f64,
    /// Known core issues (counted in the summary) fail the run too.
    #[arg(long)]
    pub strict: bool,
    /// Parallel runs (default: available cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Print one line per run instead of per scenario.
    #[arg(long)]
    pub each: bool,
    /// Write Node `--record-node`'s conntrack of the (first) run as a trace to this file, for
    /// `flowlens replay`.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Which Node (index) `--record` records.
    #[arg(long, default_value_t = 0)]
    pub record_node: usize,
}

fn parse_go_duration(s: &str) -> Result<Duration, String> {
    flowcore::config::parse_duration(s).map_err(|e| e.to_string())
}

struct Totals {
    runs: u64,
    connections: u64,
    conn_events: u64,
    records: u64,
    agg_out: u64,
    faults: u64,
    checks: u64,
    known: u64,
    wall: Duration,
}

fn faults_of(s: &Summary) -> u64 {
    let f = &s.faults;
    f.partitions
        + f.aggregator_crashes
        + f.agent_restarts
        + f.skewed_nodes
        + f.lost_events
        + f.datagrams_dropped
        + f.exporter_evicted
        + f.aggregator_evicted
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = if args.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        vec![Scenario::parse(&args.scenario).with_context(|| {
            format!(
                "unknown scenario {:?}: expected one of {} or all",
                args.scenario,
                Scenario::ALL.map(|s| s.name()).join(", ")
            )
        })?]
    };
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let out = std::io::stdout();
    let mut out = BufWriter::new(out.lock());
    writeln!(
        out,
        "{:<12} {:>6} {:>10} {:>12} {:>10} {:>10} {:>8} {:>11} {:>7} {:>9} {:>12}",
        "scenario",
        "runs",
        "conns",
        "conn-events",
        "records",
        "agg-out",
        "faults",
        "invariants",
        "known",
        "wall",
        "events/s"
    )?;
    let mut failed = None;
    for sc in scenarios {
        let cfg = |seed: u64| {
            let mut c = SimConfig::new(seed, sc);
            c.nodes = args.nodes;
            c.pods = args.pods;
            c.duration = Some(u64::try_from(args.duration.as_nanos()).unwrap_or(u64::MAX));
            c.conn_rate = args.rate;
            c.strict = args.strict;
            if args.record.is_some() && seed == args.seed {
                c.record_node = Some(args.record_node);
            }
            c
        };
        let started = Instant::now();
        let results = run_parallel(args.seed, args.seeds, jobs, &cfg);
        let wall = started.elapsed();
        let mut t = Totals {
            runs: 0,
            connections: 0,
            conn_events: 0,
            records: 0,
            agg_out: 0,
            faults: 0,
            checks: 0,
            known: 0,
            wall,
        };
        for (s, w) in &results {
            t.runs += 1;
            t.connections += s.connections;
            t.conn_events += s.conn_events;
            t.records += s.exporter_records;
            t.agg_out += s.aggregator_out;
            t.faults += faults_of(s);
            t.checks += s.invariants_checked;
            t.known += s.known_issues.iter().map(|k| k.1).sum::<u64>();
            if args.each {
                writeln!(
                    out,
                    "{:<12} seed {:<8} {:>10} {:>12} {:>10} {:>10} {:>8} {:>11} {:>7} {:>8.3}s {}",
                    s.scenario,
                    s.seed,
                    s.connections,
                    s.conn_events,
                    s.exporter_records,
                    s.aggregator_out,
                    faults_of(s),
                    s.invariants_checked,
                    s.known_issues.iter().map(|k| k.1).sum::<u64>(),
                    w.as_secs_f64(),
                    if s.violation.is_some() {
                        "VIOLATION"
                    } else {
                        "ok"
                    }
                )?;
            }
            if failed.is_none() && s.violation.is_some() {
                failed = Some(s.clone());
            }
        }
        let secs = t.wall.as_secs_f64().max(1e-9);
        writeln!(
            out,
            "{:<12} {:>6} {:>10} {:>12} {:>10} {:>10} {:>8} {:>11} {:>7} {:>8.2}s {:>12.0}",
            sc.name(),
            t.runs,
            t.connections,
            t.conn_events,
            t.records,
            t.agg_out,
            t.faults,
            t.checks,
            t.known,
            secs,
            t.conn_events as f64 / secs
        )?;
        if let (Some(path), Some(text)) = (
            &args.record,
            results.first().and_then(|r| r.0.trace.as_ref()),
        ) {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        if results.len() == 1 {
            print_details(&mut out, &results[0].0)?;
        } else {
            let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
            for (s, _) in &results {
                for (k, n) in &s.known_issues {
                    *kinds.entry(k.clone()).or_default() += n;
                }
            }
            for (k, n) in kinds {
                writeln!(out, "  known core issue ×{n}: {k}")?;
            }
        }
        if failed.is_some() {
            break;
        }
    }
    out.flush()?;
    if let Some(s) = failed {
        let v = s.violation.as_ref().expect("failed runs have a violation");
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "\nVIOLATION in scenario {} seed {}",
            s.scenario, s.seed
        )?;
        writeln!(
            err,
            "  first failing step {} at t={}.{:03}s: {}",
            v.step,
            v.time / 1_000_000_000,
            v.time / 1_000_000 % 1000,
            v.what
        )?;
        if let Some(c) = v.conn {
            writeln!(err, "  connection {c}, its history:")?;
            for l in &v.trace {
                writeln!(err, "    {l}")?;
            }
        }
        if let Some((node, text)) = &v.replay {
            // Next to the working directory's other output; the name says which run it is from.
            let path = PathBuf::from(format!("flowlens-sim-{}-{}.trace", s.scenario, s.seed));
            match std::fs::write(&path, text) {
                Ok(()) => writeln!(
                    err,
                    "  minimal trace (this connection as Node {node}'s conntrack showed it): {}\n  replay it: flowlens replay {} --node {node}",
                    path.display(),
                    path.display()
                )?,
                Err(e) => writeln!(
                    err,
                    "  minimal trace not written to {}: {e}",
                    path.display()
                )?,
            }
        }
        writeln!(
            err,
            "  reproduce: flowlens sim --seed {} --scenario {}{}",
            s.seed,
            s.scenario,
            reproduce_flags(&args)
        )?;
        bail!(
            "invariant violated (scenario {} seed {})",
            s.scenario,
            s.seed
        );
    }
    Ok(())
}

fn reproduce_flags(a: &SimArgs) -> String {
    let mut s = String::new();
    if let Some(n) = a.nodes {
        s += &format!(" --nodes {n}");
    }
    if let Some(p) = a.pods {
        s += &format!(" --pods {p}");
    }
    if a.duration != Duration::from_secs(300) {
        s += &format!(" --duration {}s", a.duration.as_secs());
    }
    if a.rate != 0.05 {
        s += &format!(" --rate {}", a.rate);
    }
    if a.strict {
        s += " --strict";
    }
    s
}

fn print_details(out: &mut impl Write, s: &Summary) -> anyhow::Result<()> {
    writeln!(
        out,
        "  seed {}: {} Nodes, {} Pods, {} s virtual, {} steps; aggregator in {}, correlated {}",
        s.seed, s.nodes, s.pods, s.virtual_secs, s.steps, s.aggregator_in, s.correlated
    )?;
    writeln!(out, "  faults: {:?}", s.faults)?;
    for (k, n) in &s.shortfalls {
        writeln!(out, "  counted shortfall ×{n}: {k}")?;
    }
    for (k, n) in &s.known_issues {
        writeln!(out, "  known core issue ×{n}: {k}")?;
    }
    Ok(())
}

/// Runs seeds `first..first+count` on `jobs` threads; results in seed order.
fn run_parallel(
    first: u64,
    count: u64,
    jobs: usize,
    cfg: &(dyn Fn(u64) -> SimConfig + Sync),
) -> Vec<(Summary, Duration)> {
    let next = std::sync::atomic::AtomicU64::new(0);
    let mut all: Vec<(u64, Summary, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs.min(count as usize).max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= count {
                            break;
                        }
                        let t = Instant::now();
                        let s = run_seed(&cfg(first + i));
                        mine.push((i, s, t.elapsed()));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("simulation thread panicked"))
            .collect()
    });
    all.sort_by_key(|(i, ..)| *i);
    all.into_iter().map(|(_, s, w)| (s, w)).collect()
}

/// Arguments of `flowlens replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// A conntrack trace (`flowlens-trace v1`, see `sim::trace`); `-` reads standard input.
    pub file: PathBuf,
    /// The Node the trace was recorded on (records keep connections with a Pod of this Node, or
    /// of a Pod CIDR the trace declares for it).
    #[arg(long)]
    pub node: Option<String>,
}

pub fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let trace = sim::trace::Trace::parse(&text)
        .with_context(|| format!("parsing trace {}", args.file.display()))?;
    let out = std::io::stdout();
    let mut out = BufWriter::new(out.lock());
    let stats = sim::trace::replay(&trace, args.node.as_deref(), |rec, interner| {
        serde_json::to_writer(&mut out, &rec.resolved(interner))?;
        out.write_all(b"\n")
    })?;
    out.flush()?;
    eprintln!(
        "flowlens replay: {} dumps, {} destroy events, {} records",
        stats.dumps, stats.destroys, stats.records
    );
    Ok(())
}

/// Arguments of `flowlens conntrack record`.
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// Trace file to write (`flowlens-trace v1`); `-` writes standard output.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// How long to record, Go syntax (`30s`, `5m`).
    #[arg(long, default_value = "60s", value_parser = parse_go_duration)]
    pub duration: Duration,
    /// Time between complete dumps (the agent's `flowPollInterval`).
    #[arg(long, default_value = "5s", value_parser = parse_go_duration)]
    pub interval: Duration,
    /// Only entries in this conntrack zone.
    #[arg(long, value_name = "Z")]
    pub zone: Option<u16>,
    /// Switch on nf_conntrack_acct / nf_conntrack_timestamp if they are off.
    #[arg(long)]
    pub enable_accounting: bool,
}

/// Records the live conntrack table as a trace: a complete dump every `--interval` and every
/// destroy event in between, timestamped with the wall clock (what an agent would have seen).
pub fn record(args: RecordArgs) -> anyhow::Result<()> {
    use flowcore::model::Timestamp;
    use io_linux::{
        ConntrackSocket, DEFAULT_EVENT_RCVBUF, DumpFilter, EventGroups, EventKind, EventSocket,
        SysctlPolicy, startup_checks,
    };
    let policy = if args.enable_accounting {
        SysctlPolicy::Enable
    } else {
        SysctlPolicy::ReadOnly
    };
    for w in &startup_checks(policy)?.warnings {
        eprintln!("flowlens: warning: {w}");
    }
    let filter = DumpFilter {
        family: None,
        zone: args.zone,
        mark: None,
    };
    let now = || {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    // Subscribe before the first dump so no destroy between the two is missed.
    let mut events = EventSocket::subscribe(EventGroups::DESTROY, DEFAULT_EVENT_RCVBUF)
        .context("subscribing to conntrack destroy events (needs CAP_NET_ADMIN)")?;
    let mut ct = ConntrackSocket::open().context("opening a conntrack netlink socket")?;
    let mut w = sim::trace::TraceWriter::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    w.text.push_str(&format!(
        "# recorded by flowlens conntrack record on {}, interval {:?}\n",
        host.trim(),
        args.interval
    ));
    let interval = args.interval.max(Duration::from_millis(100));
    let started = Instant::now();
    let end = started + args.duration;
    let mut next_dump = started;
    let mut buf: Vec<flowcore::model::ConntrackEntry> = Vec::new();
    let (mut dumps, mut destroys) = (0u64, 0u64);
    loop {
        let t = Instant::now();
        if t >= next_dump {
            buf.clear();
            ct.dump(&filter, &mut buf).context("dumping conntrack")?;
            w.dump(now(), &buf);
            dumps += 1;
            next_dump += interval;
            if t >= end {
                break;
            }
        }
        let wait = next_dump
            .min(end.max(next_dump))
            .saturating_duration_since(Instant::now());
        events
            .recv(Some(wait), |ev| {
                if ev.kind == EventKind::Destroy && filter.matches(&ev.entry) {
                    w.destroy(now(), &ev.entry);
                    destroys += 1;
                }
            })
            .context("receiving conntrack events")?;
    }
    if events.lost() > 0 {
        w.text.push_str(&format!(
            "# {} destroy events lost (netlink buffer overrun)\n",
            events.lost()
        ));
    }
    if args.out.as_os_str() == "-" {
        std::io::stdout().write_all(w.text.as_bytes())?;
    } else {
        std::fs::write(&args.out, &w.text)
            .with_context(|| format!("writing {}", args.out.display()))?;
    }
    eprintln!(
        "flowlens conntrack record: {dumps} dumps, {destroys} destroy events, {} lost",
        events.lost()
    );
    Ok(())
}
