//! One attack against the running pipeline, measured: the steps every abuse test and every
//! measurement share.
//!
//! 1. Start the collector and the aggregator, then the well-behaved exporter; wait until its
//!    first generation of flows is stored (warm).
//! 2. Run the scenario's preparation (e.g. fill the store), take each daemon's RSS as the
//!    baseline, scrape both daemons' `/metrics` and count their log lines; start the attack and
//!    wait until it is engaged. A sampler records each daemon's largest RSS and descriptor count.
//! 3. With `during`: a generation of well-behaved flows that starts after the attack engaged must
//!    be stored while the attack still runs (the attack is a lock-out or a flood on the path of
//!    the records). Otherwise the exporter just keeps sending for one generation.
//! 4. Stop the attack.
//! 5. Stop the exporter (its last generation ends) and wait until every flow it sent is stored
//!    exactly once with its counters; meanwhile, and up to [`RSS_SETTLE_DEADLINE`] from the
//!    attack's end, each daemon's RSS must come back under baseline +
//!    [`RSS_SETTLE_SLACK_BYTES`]. Peak RSS is `VmHWM` at that point (the whole run).
//! 6. Which counters moved, and whether one of those the attack must move did. A collector that
//!    died is restarted on its store to count what it had stored (and with
//!    `restart_collector`, to run its start-up retention pass before the count).
//!
//! The [`Outcome`] holds every figure; [`Outcome::failures`] lists what breaks the issue's
//! requirements, one line each, and [`Outcome::table_row`] is the line for `tests/ABUSE.md`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::attacks::{Attack, Ctl, Report, Target};
use super::daemons::{
    Aggregator, AggregatorOpts, Collector, CollectorOpts, Daemon, Mem, Transport, fds_of, mem_of,
    mib, raise_own_nofile,
};
use super::exporter::{self, Delivery, Flow, Link, Plan, WellBehaved};
use super::metrics::{self, Sample};
use super::{
    AFTER_DEADLINE, DURING_DEADLINE, NOFILE, RSS_LIMIT_BYTES, RSS_SETTLE_DEADLINE,
    RSS_SETTLE_SLACK_BYTES,
};
use crate::TempDir;

/// Which daemon a counter lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Aggregator,
    Collector,
}

/// A counter the attack must move: a name (substring) and labels.
#[derive(Clone, Debug)]
pub struct Expect {
    pub daemon: Which,
    pub name: &'static str,
    pub labels: Vec<(&'static str, &'static str)>,
}

impl Expect {
    pub fn aggregator(name: &'static str, labels: &[(&'static str, &'static str)]) -> Expect {
        Expect {
            daemon: Which::Aggregator,
            name,
            labels: labels.to_vec(),
        }
    }

    pub fn collector(name: &'static str, labels: &[(&'static str, &'static str)]) -> Expect {
        Expect {
            daemon: Which::Collector,
            name,
            labels: labels.to_vec(),
        }
    }

    fn show(&self) -> String {
        let l: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        let d = match self.daemon {
            Which::Aggregator => "aggregator",
            Which::Collector => "collector",
        };
        if l.is_empty() {
            format!("{d} *{}", self.name)
        } else {
            format!("{d} *{}{{{}}}", self.name, l.join(","))
        }
    }
}

/// What a scenario puts in place before its attack (not measured as part of it).
pub type Prepare = Box<dyn FnOnce(&Target) + Send>;

/// One attack and how to run it.
pub struct Scenario {
    pub name: &'static str,
    pub aggregator: AggregatorOpts,
    pub collector: CollectorOpts,
    pub plan: Plan,
    /// The well-behaved exporter must get its records stored while the attack runs.
    pub during: bool,
    /// At least one of these must move.
    pub expect: Vec<Expect>,
    /// Run before the attack starts, on the running pipeline (e.g. fill the store).
    pub prepare: Option<Prepare>,
    pub attack: Attack,
    /// How long the attack may take to engage.
    pub engage_timeout: Duration,
    /// Leave the attack running at least this long after it engaged (unless it ends by
    /// itself), e.g. to see the daemon close what it holds.
    pub hold_for: Duration,
    /// After the attack, restart the collector on its store before the final check (runs the
    /// start-up retention pass).
    pub restart_collector: bool,
    /// The attack's records are valid flows, which the aggregator keeps for their lifetime (in
    /// flight until `inactiveFlowRecordTimeout`, then remembered as tombstones for 150 s, so
    /// that a restarted agent's re-export is not counted twice), bounded by `maxFlows` and
    /// `maxNameBytes`: its RSS has this much longer than [`RSS_SETTLE_DEADLINE`] to settle.
    pub aggregator_state_life: Duration,
}

impl Scenario {
    /// A scenario with the defaults: TCP, the daemons' default limits, the default plan.
    pub fn new(name: &'static str, attack: Attack) -> Scenario {
        Scenario {
            name,
            aggregator: AggregatorOpts::default(),
            collector: CollectorOpts::default(),
            plan: Plan::default(),
            during: false,
            expect: Vec::new(),
            prepare: None,
            attack,
            engage_timeout: Duration::from_secs(120),
            hold_for: Duration::ZERO,
            restart_collector: false,
            aggregator_state_life: Duration::ZERO,
        }
    }
}

/// A daemon's figures.
#[derive(Clone, Debug, Default)]
pub struct DaemonFigures {
    pub baseline: Mem,
    /// Largest RSS sampled during the attack, and `VmHWM` when it stopped.
    pub sampled_rss: u64,
    pub hwm: u64,
    pub max_fds: usize,
    /// RSS once settled (or when the deadline passed), and how long that took.
    pub settled_rss: u64,
    /// How long it had to settle.
    pub settle_deadline: Duration,
    /// When it did not: its gauges of what it holds (tables, names, queues), to say what.
    pub holding: Vec<String>,
    pub settled_in: Option<Duration>,
    /// Exit status and the end of its log if it died.
    pub crashed: Option<String>,
    /// Log lines written between the attack's start and its end.
    pub log_lines: usize,
}

/// Everything measured.
pub struct Outcome {
    pub name: &'static str,
    pub attack: Report,
    /// Engaged, and how long the attack ran from then.
    pub engaged: Option<Duration>,
    pub attack_ran: Duration,
    pub aggregator: DaemonFigures,
    pub collector: DaemonFigures,
    /// The generation sent during the attack (`during` scenarios).
    pub during: Option<Result<Delivery, String>>,
    /// Every flow sent.
    pub after: Result<Delivery, String>,
    pub exporter_sessions: u64,
    pub exporter_failures: u64,
    pub exporter_last_failure: Option<String>,
    /// (what, before, after) of each expected counter.
    pub expected: Vec<(String, f64, f64)>,
    /// Every counter that moved during the attack, per daemon.
    pub moved: Vec<(String, f64, f64)>,
    /// The collector was restarted on its store to read it (it had died).
    pub collector_restarted: bool,
}

fn crash_note(d: &mut Daemon) -> Option<String> {
    d.exited()
        .map(|st| format!("{} exited ({st}): {}", d.what, d.log_tail(3)))
}

/// Largest RSS and descriptor count of two processes, sampled every 100 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<[(u64, usize); 2]>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pids: [u32; 2]) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new([(0u64, 0usize); 2]));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (i, pid) in pids.iter().enumerate() {
                    let rss = mem_of(*pid).map_or(0, |m| m.rss);
                    let fds = fds_of(*pid).unwrap_or(0);
                    let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
                    g[i].0 = g[i].0.max(rss);
                    g[i].1 = g[i].1.max(fds);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> [(u64, usize); 2] {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.max.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether each daemon's RSS is back under its baseline + [`RSS_SETTLE_SLACK_BYTES`], and when
/// (from the attack's end); gives up on each at its deadline ([`RSS_SETTLE_DEADLINE`], longer
/// for state the attack legitimately made).
struct Settle {
    since: Instant,
    pending: [bool; 2],
    deadlines: [Duration; 2],
}

impl Settle {
    fn new(since: Instant, deadlines: [Duration; 2]) -> Settle {
        Settle {
            since,
            pending: [true, true],
            deadlines,
        }
    }

    fn done(&self) -> bool {
        let t = self.since.elapsed();
        !self
            .pending
            .iter()
            .zip(self.deadlines)
            .any(|(p, d)| *p && t < d)
    }

    fn poll(&mut self, daemons: [(&mut Daemon, &mut DaemonFigures); 2]) {
        if self.done() {
            return;
        }
        for (i, (d, f)) in daemons.into_iter().enumerate() {
            if !self.pending[i] || self.since.elapsed() >= self.deadlines[i] {
                continue;
            }
            match d.mem() {
                None => self.pending[i] = false,
                Some(m) => {
                    f.settled_rss = m.rss;
                    if m.rss <= f.baseline.rss + RSS_SETTLE_SLACK_BYTES {
                        f.settled_in = Some(self.since.elapsed());
                        self.pending[i] = false;
                    }
                }
            }
        }
    }
}

/// The gauges of what a daemon holds, `name value`, for a failure message.
fn holding(samples: &[Sample]) -> Vec<String> {
    const WHAT: [&str; 8] = [
        "in_flight",
        "tombstone",
        "name",
        "metadata",
        "queued",
        "replay",
        "sessions",
        "entries",
    ];
    samples
        .iter()
        .filter(|s| !s.name.ends_with("_total") && s.value != 0.0)
        .filter(|s| WHAT.iter().any(|w| s.name.contains(w)))
        .map(|s| format!("{} {}", s.key(), s.value))
        .collect()
}

/// A scrape that retries for a while (a daemon under attack may refuse a few), else empty.
fn scrape_patiently(addr: std::net::SocketAddr, alive: &mut dyn FnMut() -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = metrics::scrape(addr) {
            return s;
        }
        if !alive() || Instant::now() >= deadline {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A running attack.
struct Running {
    stop: Arc<AtomicBool>,
    engaged: mpsc::Receiver<Instant>,
    thread: Option<std::thread::JoinHandle<Report>>,
}

impl Running {
    fn start(attack: Attack, target: Target) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, engaged) = mpsc::channel();
        let ctl = Ctl::new(stop.clone(), tx);
        let thread = std::thread::Builder::new()
            .name("attacker".into())
            .spawn(move || {
                let r = attack(&target, &ctl);
                // An attack that finished by itself has nothing more in place than it had.
                ctl.engaged();
                r
            })
            .expect("spawn the attacker");
        Running {
            stop,
            engaged,
            thread: Some(thread),
        }
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().expect("running").join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Scenario {
    /// Runs the scenario (module docs). Panics only when the harness itself cannot proceed
    /// (a daemon does not start, the exporter's first flows are never stored).
    pub fn run(self) -> Outcome {
        // One scenario at a time in a test binary (cargo runs tests in parallel): the daemons'
        // RSS and the attack's pace are measured, and two attacks would share two cores.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        raise_own_nofile();
        let slug: String = self
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let dir = TempDir::new(&format!("abuse-{slug}"));
        let mut collector = Collector::start(dir.path(), &self.collector);
        let mut aggregator = Aggregator::start(dir.path(), &self.aggregator, collector.ipfix);
        let link = match aggregator.transport {
            Transport::Tcp => Link::Tcp(aggregator.listen),
            Transport::Udp => Link::Udp(aggregator.listen),
            Transport::Tls => Link::Tls {
                addr: aggregator.listen,
                dir: aggregator.tls_dir.clone().expect("tlsDir"),
            },
        };
        let target = Target {
            aggregator: aggregator.listen,
            transport: aggregator.transport,
            aggregator_http: aggregator.metrics,
            collector_ipfix: collector.ipfix,
            collector_http: collector.http,
            tls_dir: aggregator.tls_dir.clone(),
        };
        let exporter = WellBehaved::start(link, self.plan);

        // 1. Warm: the first generation stored.
        let first = exporter.wait_generation_after(
            exporter
                .ledger()
                .generations
                .first()
                .map_or_else(Instant::now, |g| g.started),
            Duration::from_secs(30),
        );
        match exporter::wait_stored(collector.http, &first, Duration::from_secs(30), || {
            aggregator.daemon.assert_running();
            collector.daemon.assert_running();
            true
        }) {
            Ok(d) if d.all_ok() => {}
            other => panic!(
                "{}: the well-behaved exporter's first flows were not stored before any attack \
                 ({}); exporter: {:?}\naggregator log:\n{}\ncollector log:\n{}",
                self.name,
                match other {
                    Ok(d) => d.summary(),
                    Err(e) => e,
                },
                exporter.ledger().last_failure,
                aggregator.daemon.log_tail(20),
                collector.daemon.log_tail(20)
            ),
        }

        // 2. Attack (after what it needs in place, which is not part of it).
        if let Some(prepare) = self.prepare {
            prepare(&target);
        }
        let base_a = aggregator.daemon.mem().unwrap_or_default();
        let base_c = collector.daemon.mem().unwrap_or_default();
        let mut fig_a = DaemonFigures {
            baseline: base_a,
            ..DaemonFigures::default()
        };
        let mut fig_c = DaemonFigures {
            baseline: base_c,
            ..DaemonFigures::default()
        };
        let before_a = scrape_patiently(aggregator.metrics, &mut || true);
        let before_c = scrape_patiently(collector.http, &mut || true);
        let (lines_a, lines_c) = (aggregator.daemon.log_lines(), collector.daemon.log_lines());
        let sampler = Sampler::start([aggregator.daemon.pid(), collector.daemon.pid()]);
        let t_start = Instant::now();
        let running = Running::start(self.attack, target.clone());
        let engaged_at = running.engaged.recv_timeout(self.engage_timeout).ok();

        // 3. The well-behaved exporter during the attack.
        let mut during = None;
        if let Some(t_eng) = engaged_at {
            let gen_ = exporter.wait_generation_after(t_eng, Duration::from_secs(60));
            if self.during {
                let a = &mut aggregator.daemon;
                let c = &mut collector.daemon;
                let mut dead = false;
                let d = exporter::wait_stored(collector.http, &gen_, DURING_DEADLINE, || {
                    dead |= a.exited().is_some() || c.exited().is_some();
                    !dead
                });
                during = Some(if dead {
                    Err("a daemon died during the attack".to_string())
                } else {
                    d
                });
            }
        }

        if let Some(t_eng) = engaged_at {
            let what = format!("the attack to end by itself or {:?} to pass", self.hold_for);
            crate::wait_for(self.hold_for + Duration::from_secs(60), &what, || {
                (t_eng.elapsed() >= self.hold_for || running.finished()).then_some(())
            });
        }

        // 4. Stop; peaks.
        let attack_ran = engaged_at.map_or(Duration::ZERO, |t| t.elapsed());
        let report = running.stop();
        let t_stop = Instant::now();
        let [(max_a, fds_a), (max_c, fds_c)] = sampler.finish();
        for (d, f, max, fds, lines) in [
            (&mut aggregator.daemon, &mut fig_a, max_a, fds_a, lines_a),
            (&mut collector.daemon, &mut fig_c, max_c, fds_c, lines_c),
        ] {
            f.sampled_rss = max;
            f.max_fds = fds;
            f.hwm = d.mem().map_or(max, |m| m.hwm.max(max));
            f.log_lines = d.log_lines().saturating_sub(lines);
        }

        // 5. Every flow stored exactly once; the RSS settles meanwhile (polled with the store).
        let ledger = exporter.finish();
        let flows: Vec<Flow> = ledger.finished_flows();
        fig_a.settle_deadline = RSS_SETTLE_DEADLINE + self.aggregator_state_life;
        fig_c.settle_deadline = RSS_SETTLE_DEADLINE;
        let mut settle = Settle::new(t_stop, [fig_a.settle_deadline, fig_c.settle_deadline]);
        let mut after = {
            let (a, c) = (&mut aggregator.daemon, &mut collector.daemon);
            let (fa, fc) = (&mut fig_a, &mut fig_c);
            exporter::wait_stored(collector.http, &flows, AFTER_DEADLINE, || {
                settle.poll([(&mut *a, &mut *fa), (&mut *c, &mut *fc)]);
                c.exited().is_none()
            })
        };
        while !settle.done() {
            settle.poll([
                (&mut aggregator.daemon, &mut fig_a),
                (&mut collector.daemon, &mut fig_c),
            ]);
            if !settle.done() {
                std::thread::sleep(Duration::from_millis(250));
            }
        }

        // The peak over the whole run (a daemon may still be growing while it drains).
        for (d, f) in [
            (&mut aggregator.daemon, &mut fig_a),
            (&mut collector.daemon, &mut fig_c),
        ] {
            if let Some(m) = d.mem() {
                f.hwm = f.hwm.max(m.hwm);
            }
        }

        // 6. Counters as the attack left them.
        let after_a = scrape_patiently(aggregator.metrics, &mut || {
            aggregator.daemon.exited().is_none()
        });
        let after_c = scrape_patiently(collector.http, &mut || collector.daemon.exited().is_none());
        fig_a.crashed = crash_note(&mut aggregator.daemon);
        fig_c.crashed = crash_note(&mut collector.daemon);
        for (f, samples) in [(&mut fig_a, &after_a), (&mut fig_c, &after_c)] {
            if f.settled_in.is_none() {
                f.holding = holding(samples);
            }
        }

        // A dead collector is started again on its store to read what it had stored; with
        // `restart_collector` the new process's start-up retention pass runs first.
        let mut collector_restarted = false;
        if self.restart_collector || fig_c.crashed.is_some() {
            collector.restart(dir.path(), &self.collector);
            collector_restarted = fig_c.crashed.is_some();
            let c = &mut collector.daemon;
            after = exporter::wait_stored(collector.http, &flows, AFTER_DEADLINE, || {
                c.exited().is_none()
            });
        }

        let expected = self
            .expect
            .iter()
            .map(|e| {
                let (b, a) = match e.daemon {
                    Which::Aggregator => (&before_a, &after_a),
                    Which::Collector => (&before_c, &after_c),
                };
                let present = metrics::present(a, e.name, &e.labels);
                let show = if present {
                    e.show()
                } else {
                    format!("{} (no such sample)", e.show())
                };
                (
                    show,
                    metrics::value(b, e.name, &e.labels),
                    metrics::value(a, e.name, &e.labels),
                )
            })
            .collect();
        let mut moved: Vec<(String, f64, f64)> = metrics::moved(&before_a, &after_a);
        moved.extend(metrics::moved(&before_c, &after_c));
        Outcome {
            name: self.name,
            attack: report,
            engaged: engaged_at.map(|t| t.duration_since(t_start)),
            attack_ran,
            aggregator: fig_a,
            collector: fig_c,
            during,
            after,
            exporter_sessions: ledger.sessions,
            exporter_failures: ledger.failures,
            exporter_last_failure: ledger.last_failure,
            expected,
            moved,
            collector_restarted,
        }
    }
}

/// Counters that move with any traffic; left out of the "what moved" column.
const TRAFFIC: [&str; 14] = [
    "records_in_total",
    "records_out_total",
    "_messages_total",
    "_records_total",
    "records_stored_total",
    "messages_sent_total",
    "bytes_sent_total",
    "batches_total",
    "sink_records_out_total",
    "correlated_total",
    "_sessions_total",
    "conntrack",
    "http_requests",
    "records_dropped_total{reason=\"duplicate\"}",
];

impl Outcome {
    /// What breaks the requirements, one line each (empty: all met).
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.engaged.is_none() {
            f.push(format!(
                "the attack never engaged ({})",
                self.attack.summary()
            ));
        }
        for (name, d) in [
            ("aggregator", &self.aggregator),
            ("collector", &self.collector),
        ] {
            if let Some(c) = &d.crashed {
                f.push(format!("{name} crashed: {c}"));
            }
            if d.hwm >= RSS_LIMIT_BYTES {
                f.push(format!(
                    "{name} peak RSS {} MiB ≥ {} MiB",
                    mib(d.hwm),
                    mib(RSS_LIMIT_BYTES)
                ));
            }
            if d.crashed.is_none() && d.settled_in.is_none() {
                f.push(format!(
                    "{name} RSS {} MiB not back under baseline {} MiB + {} MiB within {:?} after the attack",
                    mib(d.settled_rss),
                    mib(d.baseline.rss),
                    mib(RSS_SETTLE_SLACK_BYTES),
                    d.settle_deadline
                ));
                if !d.holding.is_empty() {
                    f.push(format!("{name} still holds: {}", d.holding.join(", ")));
                }
            }
        }
        match &self.during {
            Some(Ok(d)) if d.all_ok() => {}
            Some(Ok(d)) => f.push(format!(
                "well-behaved exporter under attack: {} within {:?} of its generation's end \
                 (exporter: {} sessions, {} failures, last: {})",
                d.summary(),
                DURING_DEADLINE,
                self.exporter_sessions,
                self.exporter_failures,
                self.exporter_last_failure.as_deref().unwrap_or("none")
            )),
            Some(Err(e)) => f.push(format!("well-behaved exporter under attack: {e}")),
            None => {}
        }
        match &self.after {
            Ok(d) if d.all_ok() => {}
            Ok(d) => f.push(format!(
                "well-behaved records after the attack: {}{}",
                d.summary(),
                if self.collector_restarted {
                    " (read from the store after restarting the dead collector)"
                } else {
                    ""
                }
            )),
            Err(e) => f.push(format!("well-behaved records after the attack: {e}")),
        }
        if !self.expected.is_empty() && !self.expected.iter().any(|(_, b, a)| a > b) {
            let e: Vec<String> = self
                .expected
                .iter()
                .map(|(n, b, a)| format!("{n} {b}→{a}"))
                .collect();
            f.push(format!(
                "none of the attack's counters moved: {}",
                e.join(", ")
            ));
        }
        f
    }

    /// Panics listing [`Self::failures`] and `extra` (attack-specific), with the figures.
    pub fn assert_ok(&self, extra: Vec<String>) {
        let mut f = self.failures();
        f.extend(extra);
        if !f.is_empty() {
            panic!(
                "{}: {} requirement(s) not met:\n  - {}\nfigures: {}",
                self.name,
                f.len(),
                f.join("\n  - "),
                self.figures()
            );
        }
        eprintln!("{}: ok: {}", self.name, self.figures());
    }

    /// Counters that moved, without the traffic ones.
    pub fn moved_counters(&self) -> Vec<String> {
        self.moved
            .iter()
            .filter(|(k, _, _)| !TRAFFIC.iter().any(|t| k.contains(t)))
            .map(|(k, b, a)| format!("{k} +{}", a - b))
            .collect()
    }

    fn stored(&self) -> String {
        match &self.after {
            Ok(d) => format!("{}/{}", d.ok, d.expected),
            Err(e) => format!("unreadable ({e})"),
        }
    }

    /// Every figure on one line.
    pub fn figures(&self) -> String {
        let d = |d: &DaemonFigures| {
            format!(
                "baseline {} MiB, peak {} MiB, settled {} MiB{}, max fds {}/{}, {} log lines",
                mib(d.baseline.rss),
                mib(d.hwm),
                mib(d.settled_rss),
                d.settled_in
                    .map_or(" (not settled)".to_string(), |t| format!(" in {t:.1?}")),
                d.max_fds,
                NOFILE,
                d.log_lines
            )
        };
        format!(
            "aggregator [{}]; collector [{}]; during: {}; stored after: {}; attack: {} (engaged after {:?}, ran {:.1?}); counters moved: {}",
            d(&self.aggregator),
            d(&self.collector),
            match &self.during {
                Some(Ok(x)) => x.summary(),
                Some(Err(e)) => e.clone(),
                None => "not checked".into(),
            },
            self.stored(),
            self.attack.summary(),
            self.engaged,
            self.attack_ran,
            self.moved_counters().join(", ")
        )
    }

    /// The line of the table in `tests/ABUSE.md`: attack | aggregator peak | collector peak |
    /// well-behaved stored/expected (and during) | crash | counters moved.
    pub fn table_row(&self) -> String {
        let crash = [&self.aggregator, &self.collector]
            .iter()
            .zip(["aggregator", "collector"])
            .filter_map(|(d, n)| d.crashed.as_ref().map(|c| format!("{n}: {c}")))
            .collect::<Vec<_>>();
        let during = match &self.during {
            Some(Ok(d)) => format!(" (under attack: {}/{})", d.ok, d.expected),
            Some(Err(e)) => format!(" (under attack: {e})"),
            None => String::new(),
        };
        format!(
            "| {} | {} MiB | {} MiB | {}{} | {} | {} |",
            self.name,
            mib(self.aggregator.hwm),
            mib(self.collector.hwm),
            self.stored(),
            during,
            if crash.is_empty() {
                "no".to_string()
            } else {
                crash.join("; ").replace('|', "/").replace('\n', " ")
            },
            {
                let m = self.moved_counters();
                if m.is_empty() {
                    "none".to_string()
                } else {
                    m.join(", ").replace('|', "/")
                }
            }
        )
    }
}

impl Outcome {
    /// A cell of the table in `tests/ABUSE.md`: peaks, whether (and when) each daemon's RSS
    /// settled, stored, crash, counters moved.
    pub fn cell(&self) -> String {
        let settled = |d: &DaemonFigures| match (d.settled_in, &d.crashed) {
            (_, Some(_)) => "crashed".to_string(),
            (Some(t), None) => format!("yes ({:.0} s)", t.as_secs_f64()),
            (None, None) => format!("no ({} MiB)", mib(d.settled_rss)),
        };
        let during = match &self.during {
            Some(Ok(d)) => format!(" (under attack: {}/{})", d.ok, d.expected),
            Some(Err(e)) => format!(" (under attack: {e})"),
            None => String::new(),
        };
        let crash: Vec<String> = [
            ("aggregator", &self.aggregator),
            ("collector", &self.collector),
        ]
        .iter()
        .filter_map(|(n, d)| d.crashed.as_ref().map(|c| format!("{n}: {c}")))
        .collect();
        let moved = self.moved_counters();
        format!(
            "RSS agg **{} MiB** / col **{} MiB**; settled: agg {}, col {}; stored {}{}; {}; moved: {}",
            mib(self.aggregator.hwm),
            mib(self.collector.hwm),
            settled(&self.aggregator),
            settled(&self.collector),
            self.stored(),
            during,
            if crash.is_empty() {
                "no crash".to_string()
            } else {
                format!("**crash**: {}", crash.join("; "))
            },
            if moved.is_empty() {
                "none".to_string()
            } else {
                moved.join(", ")
            }
        )
        .replace('|', "/")
        .replace('\n', " ")
    }
}

/// Prints the outcome's row and figures, and appends the row to `$FLOWLENS_ABUSE_REPORT` if set
/// (the measurements' output).
pub fn report(o: &Outcome) {
    let row = o.table_row();
    println!("{row}\n    cell: {}\n    {}", o.cell(), o.figures());
    let f = o.failures();
    if !f.is_empty() {
        println!(
            "    requirements not met:\n      - {}",
            f.join("\n      - ")
        );
    }
    if let Some(p) = std::env::var_os("FLOWLENS_ABUSE_REPORT") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(
                file,
                "{row}\n{}\n<!-- {} -->",
                o.cell(),
                o.figures().replace("--", "—")
            );
        }
    }
}
