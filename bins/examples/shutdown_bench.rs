//! Shutdown benchmark (issue "exactly once under every fault"; run as root): SIGTERM to the real
//! release binaries holding a large state, and a count of the final records (flowEndReason 4)
//! that reach the next hop.
//!
//!     export CARGO_TARGET_DIR=$HOME/.cache/flowlens-target
//!     cargo build --release -p bins --bins --example shutdown_bench
//!     $CARGO_TARGET_DIR/release/examples/shutdown_bench agent 100352 1000000
//!     $CARGO_TARGET_DIR/release/examples/shutdown_bench aggregator 66560 200704 1000000
//!
//! The binaries are taken from next to this example's directory (`release/flowlens-agent`,
//! `release/flowlens-aggregator`, `release/flowlens`), or from `$FLOWLENS_AGENT_BIN`,
//! `$FLOWLENS_AGGREGATOR_BIN`, `$FLOWLENS_BIN`. `cargo run --example` does not build them: build
//! them first (above).
//!
//! `agent N…`: per N, a fresh network namespace whose conntrack table holds N TCP ESTABLISHED
//! entries, filled through ctnetlink as `agent_bench` does (250 Pods of Node `n1`, 10.1.0.1–250,
//! each with N/250 connections to 2000 Pods of Node `n2`, 10.2.x.y:8080), `nf_conntrack_max`
//! raised for the run and restored after. `flowlens-agent` runs inside it (`ip netns exec`) with
//! a static `metadataFile` naming those Pods and Nodes, the shipped defaults otherwise (poll 5 s,
//! idle 15 s, active 60 s, maxConnections 1,000,000, shutdownGracePeriod 25 s), exporting over
//! TCP to a counting IPFIX receiver on the namespace's loopback: this program again, re-executed
//! inside the namespace (`recv-agent`), on flowlens's own collecting process
//! (`transport::collector`). A receiver rather than an aggregator: it counts exactly what the
//! agent delivered, every record decoded and keyed by its connection, where an aggregator would
//! hold inter-Node records for correlation and add its own shutdown path to the measurement.
//! Once the agent has dumped and tracks N connections (`/metrics`: `conntrack_polls`,
//! `tracked_connection_count`), it gets SIGTERM; measured: SIGTERM to exit, the exit status, the
//! distinct connections with a flowEndReason 4 record at the receiver (expected: N; duplicates
//! and records of unknown connections are counted too), peak RSS (VmHWM from /proc, sampled until
//! exit, and ru_maxrss from wait4). `--at burst`: the SIGTERM comes instead once the first
//! exports (every connection is new, so each gets an idle export 15 s after the first dump) have
//! begun, with records in flight; `--at steady`: once every connection has been exported once;
//! `--at mid-dump`: after that, while a conntrack dump is in progress (the dump thread runs).
//!
//! `aggregator N… [--dirty]`: per N, `flowlens collector` (SQLite store in a temporary directory,
//! IPFIX over TCP) and `flowlens-aggregator` (TCP in, IPFIX over TCP to that collector, the
//! shipped defaults otherwise: sinkQueueRecords 65,536, maxFlows 1,000,000, one core thread,
//! shutdownGracePeriod 25 s; active and inactive timeouts raised to 1 h / 2 h so that every flow
//! stays in flight, unexported changes included, until the SIGTERM), all on loopback. The real
//! collector rather than a counting receiver because the question is what reaches the store:
//! it adds the collector's ingest (SQLite) to the path the aggregator's shutdown streams into.
//! This program plays one agent (Node `node-a`, agent template layout, one TCP session): N
//! records of N distinct intra-Node (flowType 1) TCP connections, flowEndReason 2 (active). An
//! intra-Node flow is exported on its first record, so before the SIGTERM the collector holds N
//! records and the aggregator N clean flows (nothing unexported; flowcore's shutdown flush gives
//! such a flow no last record, so this run receives no reason-4 records). `--dirty`: a second
//! record per flow with higher counters follows, which the aggregator holds unexported (the
//! active timeout is 1 h), so every flow in flight has something to deliver at shutdown. Waited
//! for: `flows_in_flight` = N, `records_out` = N, `sink_records_out{sink="ipfix"}` = N and the
//! collector's `ipfix_collect_records` = N (its `records_stored` lags: it moves only when a later
//! message arrives). Then SIGTERM to the aggregator; measured as for the agent; then, once the
//! aggregator's session to the collector has closed (everything it wrote decoded), the collector
//! is stopped (storing what it holds) and its store is read back: records by flowEndReason,
//! distinct flows with a reason-4 record, and the sum of every record's deltas against the
//! counters the flows were fed (exactly once: equal).
//!
//! `--grace DURATION` sets `shutdownGracePeriod` of the agent or aggregator under test.
//!
//! Everything created is removed by drop guards, also on failure: processes (their process
//! groups: TERM, then KILL), namespaces, temporary directories, `nf_conntrack_max`. Waiting is
//! always for a condition (a metric, a count, an exit) with a deadline.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bench_support::free_port;
use flowcore::ipfix::flow_record::write_flow_record;
use flowcore::ipfix::{Encoder, EncoderConfig, FieldValue, Layout, node_observation_domain};
use flowcore::model::{
    BiCounters, ConntrackEntry, ConntrackStatus, FlowEndReason, FlowKey, FlowRecord, FlowType,
    Interner, PolicyFields, TcpState, Timestamp, Tuple,
};
use flowlens_bins::clock;
use flowlens_bins::transport::collector::{Collector, CollectorConfig, queue};
use flowlens_bins::transport::metrics::CollectorMetrics;
use io_linux::netns::NetNs;
use io_linux::{ConntrackSocket, set_accounting, set_timestamps};
use tokio_util::sync::CancellationToken;

const MAX_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const LOCAL_PODS: u32 = 250;
const REMOTE_PODS: u32 = 2000;
/// Inside the agent's namespace: the receiver's IPFIX port and the agent's metrics.
const RECV_ADDR: &str = "127.0.0.1:4739";
const AGENT_METRICS: &str = "127.0.0.1:9390";
const FORCED_END: u8 = FlowEndReason::ForcedEnd as u8;

// --- process, directory and sysctl guards ---------------------------------------------------

/// How a process ended.
#[derive(Clone, Copy)]
struct Exit {
    /// Raw wait status.
    status: i32,
    at: Instant,
    /// ru_maxrss of the process (kB).
    maxrss_kb: i64,
}

impl Exit {
    fn describe(&self) -> String {
        let s = self.status;
        if libc::WIFEXITED(s) {
            format!("exit {}", libc::WEXITSTATUS(s))
        } else if libc::WIFSIGNALED(s) {
            format!("signal {}", libc::WTERMSIG(s))
        } else {
            format!("status {s:#x}")
        }
    }

    fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }
}

#[derive(Default)]
struct ExitSlot {
    exit: Mutex<Option<Exit>>,
    cv: Condvar,
}

/// A child process in its own process group, reaped by a thread of its own. The thread first
/// waits for the exit without reaping (the pid, and so the group id, cannot be reused while it
/// is a zombie), then reaps under the lock that signalling takes: no signal can reach a reused
/// id. Dropped while running: TERM to the group, then KILL.
struct Proc {
    what: String,
    pid: i32,
    slot: Arc<ExitSlot>,
    log: Option<PathBuf>,
}

impl Proc {
    /// Spawns `cmd`; stdout and stderr go to `log` unless the caller piped them. Returns the
    /// piped stdin and stdout, if any.
    fn spawn(
        cmd: &mut Command,
        what: &str,
        log: Option<&Path>,
    ) -> (Proc, Option<ChildStdin>, Option<std::process::ChildStdout>) {
        if let Some(log) = log {
            let f = std::fs::File::create(log).expect("create log file");
            cmd.stdout(f.try_clone().expect("dup log")).stderr(f);
        }
        let mut child = cmd
            .env("NO_COLOR", "1")
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
        let pid = child.id() as i32;
        // Reaped by the thread below, not by `Child` (dropping a `Child` neither waits nor kills).
        drop(child);
        let slot = Arc::new(ExitSlot::default());
        let s = slot.clone();
        std::thread::spawn(move || {
            loop {
                // SAFETY: plain syscalls on our own child; `info` is written by the kernel.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                let r = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        pid as libc::id_t,
                        &mut info,
                        libc::WEXITED | libc::WNOWAIT,
                    )
                };
                if r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    break;
                }
            }
            let at = Instant::now();
            let mut g = s.exit.lock().unwrap();
            let mut status = 0;
            // SAFETY: as above; `ru` is written by the kernel.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            *g = Some(Exit {
                status,
                at,
                maxrss_kb: ru.ru_maxrss,
            });
            s.cv.notify_all();
        });
        (
            Proc {
                what: what.to_string(),
                pid,
                slot,
                log: log.map(Path::to_path_buf),
            },
            stdin,
            stdout,
        )
    }

    fn exited(&self) -> Option<Exit> {
        *self.slot.exit.lock().unwrap()
    }

    /// Waits at most `d` for the exit.
    fn wait_exit(&self, d: Duration) -> Option<Exit> {
        let g = self.slot.exit.lock().unwrap();
        let (g, _) = self
            .slot
            .cv
            .wait_timeout_while(g, d, |e| e.is_none())
            .unwrap();
        *g
    }

    /// Signals the process (or with `group` its group), unless it has been reaped. Returns when
    /// the signal was sent.
    fn signal(&self, sig: i32, group: bool) -> Option<Instant> {
        let g = self.slot.exit.lock().unwrap();
        if g.is_some() {
            return None;
        }
        let target = if group { -self.pid } else { self.pid };
        // SAFETY: `kill` on our own unreaped child (or its group).
        unsafe { libc::kill(target, sig) };
        Some(Instant::now())
    }

    /// Panics with the end of its log if the process has exited.
    fn assert_running(&self) {
        if let Some(e) = self.exited() {
            panic!(
                "{} exited ({}); the end of its log:\n{}",
                self.what,
                e.describe(),
                self.log_tail(40)
            );
        }
    }

    fn log_tail(&self, n: usize) -> String {
        let Some(p) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Log lines about the shutdown (and any warning or error).
    fn shutdown_lines(&self) -> Vec<String> {
        let Some(p) = &self.log else {
            return Vec::new();
        };
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                ["shut", "deliver", "handed", "WARN", "ERROR", "error:"]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        self.signal(libc::SIGTERM, true);
        if self.wait_exit(Duration::from_secs(3)).is_none() {
            self.signal(libc::SIGKILL, true);
            self.wait_exit(Duration::from_secs(10));
        }
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "flowlens-shutdown-bench-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temporary directory");
        TempDir(p)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Restores nf_conntrack_max when dropped.
struct RestoreMax(String);

impl Drop for RestoreMax {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_PATH, &self.0);
        eprintln!("restored nf_conntrack_max = {}", self.0.trim());
    }
}

// --- small helpers -------------------------------------------------------------------------

fn log(msg: impl AsRef<str>) {
    eprintln!("[{}] {}", clock_hms(), msg.as_ref());
}

fn clock_hms() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// Polls `f` every `every` until it gives a value or `timeout` passes (then panics naming
/// `what`, with `f`'s last diagnostic).
fn wait_for<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let t = Instant::now();
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; last: {last}"
        );
        std::thread::sleep(every);
    }
}

/// `GET path` over HTTP/1.1 from this thread's network namespace; the body of a 200.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // The metrics answer may be chunked: strip the chunk-size lines.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(after.get(..n)?);
            rest = after.get(n + 2..)?;
        }
        return Some(out);
    }
    Some(body.to_string())
}

/// Metrics (Prometheus text) by exact series name (`name` or `name{labels}`), summed over the
/// series of a name without labels given.
struct Metrics(String);

impl Metrics {
    fn get(&self, series: &str) -> u64 {
        self.value(series) as u64
    }

    fn value(&self, series: &str) -> f64 {
        let mut sum = 0.0;
        for l in self.0.lines().filter(|l| !l.starts_with('#')) {
            let Some((id, v)) = l.rsplit_once(' ') else {
                continue;
            };
            let hit =
                id == series || (!series.contains('{') && id.starts_with(&format!("{series}{{")));
            if hit {
                sum += v.parse::<f64>().unwrap_or(0.0);
            }
        }
        sum
    }
}

/// A `/proc/<pid>/status` figure in kB.
fn proc_status_kb(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A release binary: `$env`, else next to this example's directory.
fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let p = exe
        .parent()
        .and_then(Path::parent)
        .expect("the example lives in <target>/<profile>/examples")
        .join(name);
    assert!(
        p.exists(),
        "{} not found: build it first (cargo build --release -p bins --bins) or set {env}",
        p.display()
    );
    p
}

/// SIGTERM to `p`, then waits (at most `limit`) for its exit, sampling VmHWM meanwhile.
/// Returns the exit, the time from the signal to the exit, the last VmHWM read (kB) and the
/// wall-clock time the signal was sent.
fn terminate(p: &Proc, limit: Duration) -> (Option<Exit>, Duration, u64, SystemTime) {
    let mut hwm = proc_status_kb(p.pid, "VmHWM");
    let wall = SystemTime::now();
    let sent = p
        .signal(libc::SIGTERM, false)
        .expect("the process is running");
    loop {
        if let Some(e) = p.wait_exit(Duration::from_millis(20)) {
            return (Some(e), e.at.duration_since(sent), hwm, wall);
        }
        hwm = hwm.max(proc_status_kb(p.pid, "VmHWM"));
        if sent.elapsed() > limit {
            return (None, sent.elapsed(), hwm, wall);
        }
    }
}

/// Seconds from `since` to the timestamp that starts the first log line containing `what`
/// (`2026-12-08T00:58:38.973969Z …`, UTC), compared by time of day.
fn log_delay(lines: &[String], what: &str, since: SystemTime) -> Option<f64> {
    let l = lines.iter().find(|l| l.contains(what))?;
    let t = l
        .split_whitespace()
        .next()?
        .split_once('T')?
        .1
        .trim_end_matches('Z');
    let mut hms = t.split(':');
    let (h, m, s): (f64, f64, f64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    let at = h * 3600.0 + m * 60.0 + s;
    let sent = since.duration_since(UNIX_EPOCH).ok()?.as_secs_f64() % 86_400.0;
    Some((at - sent).rem_euclid(86_400.0))
}

/// CPU time (ns, schedstat) of `pid`'s thread named `comm`.
fn thread_cpu(pid: i32, comm: &str) -> Option<u64> {
    let task = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .map(|t| t.path())
        .find(|t| std::fs::read_to_string(t.join("comm")).is_ok_and(|c| c.trim() == comm))?;
    std::fs::read_to_string(task.join("schedstat"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// One line of the results table.
struct Row {
    what: String,
    n: u64,
    took: Duration,
    status: String,
    received: u64,
    expected: u64,
    hwm_kb: u64,
    maxrss_kb: i64,
    notes: String,
}

fn print_table(rows: &[Row]) {
    println!(
        "\n| run | N | SIGTERM → exit | exit status | final records (reason 4) received / expected | peak RSS VmHWM (ru_maxrss) | notes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.2} s | {} | {} / {} | {} MiB ({} MiB) | {} |",
            r.what,
            r.n,
            r.took.as_secs_f64(),
            r.status,
            r.received,
            r.expected,
            r.hwm_kb / 1024,
            r.maxrss_kb / 1024,
            r.notes
        );
    }
}

// --- agent -----------------------------------------------------------------------------------

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn remote_ip(j: u32) -> IpAddr {
    v4(10, 2, (j >> 8) as u8, j as u8 + 1)
}

/// Entry `i`: local Pod `i % 250` → remote Pod `(7i) % 2000`:8080, source port unique per Pod
/// (as in `agent_bench`).
fn entries(n: u32) -> impl Iterator<Item = ConntrackEntry> {
    (0..n).map(|i| {
        let src = v4(10, 1, 0, (1 + i % LOCAL_PODS) as u8);
        let dst = remote_ip((i.wrapping_mul(7)) % REMOTE_PODS);
        let sport = 10_000 + (i / LOCAL_PODS) as u16;
        ConntrackEntry {
            orig: Tuple {
                src,
                dst,
                src_port: sport,
                dst_port: 8080,
                proto: 6,
            },
            reply: Tuple {
                src: dst,
                dst: src,
                src_port: 8080,
                dst_port: sport,
                proto: 6,
            },
            timeout: 3600,
            status: ConntrackStatus(ConntrackStatus::SEEN_REPLY | ConntrackStatus::ASSURED),
            tcp_state: Some(TcpState::Established),
            ..Default::default()
        }
    })
}

/// The index of entry `(src, sport, dst, dport, proto)` if it is one of the first `n` of
/// [`entries`].
fn entry_index(k: &Key, n: u32) -> Option<u32> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (k.0, k.2) else {
        return None;
    };
    let so = s.octets();
    if so[..3] != [10, 1, 0] || so[3] == 0 || u32::from(so[3]) > LOCAL_PODS || k.1 < 10_000 {
        return None;
    }
    let i = u32::from(k.1 - 10_000) * LOCAL_PODS + u32::from(so[3]) - 1;
    let ok = i < n
        && IpAddr::V4(d) == remote_ip((i.wrapping_mul(7)) % REMOTE_PODS)
        && k.3 == 8080
        && k.4 == 6;
    ok.then_some(i)
}

/// The static metadata: Nodes n1 and n2, Namespace `bench`, 250 client Pods on n1 and 2000
/// server Pods on n2, as `kind: List` documents of 500 objects (the loader takes at most 1024
/// YAML documents per file).
fn agent_metadata() -> String {
    let mut objs = Vec::new();
    for (name, addr, cidr) in [
        ("n1", "192.168.0.1", "10.1.0.0/16"),
        ("n2", "192.168.0.2", "10.2.0.0/16"),
    ] {
        objs.push(format!(
            "{{apiVersion: v1, kind: Node, metadata: {{name: {name}}}, spec: {{podCIDR: {cidr}}}, \
             status: {{addresses: [{{type: InternalIP, address: {addr}}}]}}}}"
        ));
    }
    objs.push("{apiVersion: v1, kind: Namespace, metadata: {name: bench}}".to_string());
    let mut pod = |name: String, node: &str, ip: IpAddr, app: &str| {
        objs.push(format!(
            "{{apiVersion: v1, kind: Pod, metadata: {{name: {name}, namespace: bench, uid: u-{name}, labels: {{app: {app}}}}}, \
             spec: {{nodeName: {node}}}, status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}}}"
        ));
    };
    for p in 0..LOCAL_PODS {
        pod(
            format!("client-7c9f8d6b5-{p:05}"),
            "n1",
            v4(10, 1, 0, (1 + p) as u8),
            "client",
        );
    }
    for j in 0..REMOTE_PODS {
        pod(
            format!("server-5d8f9c7b6-{j:05}"),
            "n2",
            remote_ip(j),
            "server",
        );
    }
    objs.chunks(500)
        .map(|c| format!("apiVersion: v1\nkind: List\nitems:\n- {}\n", c.join("\n- ")))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The receiver's answer to `count`.
#[derive(Debug, Default, Clone, Copy)]
struct RecvCount {
    records: u64,
    by_reason: [u64; 6],
    distinct4: u64,
    dup4: u64,
    foreign4: u64,
    sessions_open: i64,
    decoded: u64,
    consumed: u64,
}

/// The counting receiver, run inside the agent's namespace by `ip netns exec`.
struct Receiver {
    proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Receiver {
    fn start(ns: &NetNs, n: u32) -> Receiver {
        let exe = std::env::current_exe().expect("current_exe");
        let (proc, stdin, stdout) = Proc::spawn(
            Command::new("ip")
                .args(["netns", "exec", ns.name()])
                .arg(exe)
                .args(["recv-agent", RECV_ADDR, &n.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            "counting receiver",
            None,
        );
        let mut r = Receiver {
            proc,
            stdin: stdin.expect("piped stdin"),
            stdout: BufReader::new(stdout.expect("piped stdout")),
        };
        let mut line = String::new();
        r.stdout.read_line(&mut line).expect("receiver output");
        assert_eq!(line.trim(), "listening", "receiver: {line:?}");
        r
    }

    fn count(&mut self) -> RecvCount {
        writeln!(self.stdin, "count").expect("write to the receiver");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("receiver output");
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().expect("a number"))
            .collect();
        assert_eq!(v.len(), 13, "receiver: {line:?}");
        RecvCount {
            records: v[0],
            by_reason: [v[1], v[2], v[3], v[4], v[5], v[6]],
            distinct4: v[7],
            dup4: v[8],
            foreign4: v[9],
            sessions_open: v[10] as i64,
            decoded: v[11],
            consumed: v[12],
        }
    }
}

/// `(src, sport, dst, dport, proto)`.
type Key = (IpAddr, u16, IpAddr, u16, u8);

#[derive(Default)]
struct Tally {
    records: u64,
    by_reason: [u64; 6],
    seen4: Vec<bool>,
    distinct4: u64,
    dup4: u64,
    foreign4: u64,
    consumed: u64,
}

/// `recv-agent ADDR N`: an IPFIX collecting process on ADDR (TCP) counting agent records; on
/// stdin `count` it answers `count records r0 r1 r2 r3 r4 r5 distinct4 dup4 foreign4
/// sessions_open decoded consumed` (r0..r5: records by flowEndReason).
fn recv_agent(addr: &str, n: u32) {
    let metrics = CollectorMetrics::default();
    let tally = Arc::new(Mutex::new(Tally {
        seen4: vec![false; n as usize],
        ..Tally::default()
    }));
    let (m, t) = (metrics.clone(), tally.clone());
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut out = std::io::stdout();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if line.trim() != "count" {
                continue;
            }
            // Sessions first: once none is open, `decoded` is final.
            let open = m.sessions_open.get();
            let decoded = m.records.get();
            let t = t.lock().unwrap();
            let r = t.by_reason;
            let _ = writeln!(
                out,
                "count {} {} {} {} {} {} {} {} {} {} {} {} {}",
                t.records,
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                t.distinct4,
                t.dup4,
                t.foreign4,
                open,
                decoded,
                t.consumed
            );
            let _ = out.flush();
        }
        // stdin closed: the parent is gone.
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let cfg = CollectorConfig {
            tcp: Some(addr.parse().expect("an address")),
            ..CollectorConfig::default()
        };
        let (tx, mut rx) = queue(&cfg.limits);
        let c = Collector::bind(cfg, metrics, tx).await.expect("bind");
        tokio::spawn(c.run(CancellationToken::new()));
        println!("listening");
        std::io::stdout().flush().expect("flush");
        while let Some(msg) = rx.recv().await {
            let mut t = tally.lock().unwrap();
            for rec in msg.records() {
                let (mut src, mut dst) = (None, None);
                let (mut sport, mut dport, mut proto, mut reason) = (0u16, 0u16, 0u8, 0u8);
                for f in rec.fields() {
                    if f.spec.ie.pen != 0 {
                        continue;
                    }
                    match (f.spec.ie.id, f.value()) {
                        (8 | 27, FieldValue::Ipv4(a)) => src = Some(IpAddr::V4(a)),
                        (8 | 27, FieldValue::Ipv6(a)) => src = Some(IpAddr::V6(a)),
                        (12 | 28, FieldValue::Ipv4(a)) => dst = Some(IpAddr::V4(a)),
                        (12 | 28, FieldValue::Ipv6(a)) => dst = Some(IpAddr::V6(a)),
                        (7, v) => sport = v.as_u64().unwrap_or(0) as u16,
                        (11, v) => dport = v.as_u64().unwrap_or(0) as u16,
                        (4, v) => proto = v.as_u64().unwrap_or(0) as u8,
                        (136, v) => reason = v.as_u64().unwrap_or(0) as u8,
                        _ => {}
                    }
                }
                t.records += 1;
                t.by_reason[usize::from(reason).min(5)] += 1;
                if reason != FORCED_END {
                    continue;
                }
                let idx = match (src, dst) {
                    (Some(s), Some(d)) => entry_index(&(s, sport, d, dport, proto), n),
                    _ => None,
                };
                match idx {
                    Some(i) if t.seen4[i as usize] => t.dup4 += 1,
                    Some(i) => {
                        t.seen4[i as usize] = true;
                        t.distinct4 += 1;
                    }
                    None => t.foreign4 += 1,
                }
            }
            t.consumed += msg.len() as u64;
        }
    });
}

/// When the agent gets its SIGTERM.
#[derive(Clone, Copy, Debug)]
enum At {
    /// Right after its first dump, every connection tracked and nothing exported yet.
    FirstDump,
    /// Once the first exports (idle, every connection) have begun: records in flight.
    Burst,
    /// Once every connection has been exported once.
    Steady,
    /// After `Steady`, while a conntrack dump is in progress (its thread runs).
    MidDump,
}

fn agent_run(n: u32, at: At, grace: Option<&str>) -> Row {
    log(format!(
        "agent N = {n}: filling a namespace's conntrack table"
    ));
    let dir = TempDir::new("agent");
    let ns = NetNs::create("flshut").expect("create a network namespace");
    let fill = Instant::now();
    {
        let mut sock = ns
            .run(|| {
                set_accounting(true)?;
                set_timestamps(true)?;
                ConntrackSocket::open()
            })
            .expect("enter the namespace")
            .expect("open ctnetlink in the namespace");
        sock.create_entries(entries(n))
            .expect("create conntrack entries");
    }
    log(format!(
        "{n} entries created in {:.1} s; starting the receiver and the agent",
        fill.elapsed().as_secs_f64()
    ));
    let meta = dir.join("metadata.yaml");
    std::fs::write(&meta, agent_metadata()).expect("write metadata");
    let cfg = dir.join("agent.yaml");
    let mut yaml = format!(
        "flowCollectorAddr: \"{RECV_ADDR}:tcp\"\nenableTLSToFlowAggregator: false\nnodeName: n1\n\
         metricsAddr: \"{AGENT_METRICS}\"\nmetadataFile: {}\n",
        meta.display()
    );
    if let Some(g) = grace {
        yaml += &format!("shutdownGracePeriod: {g}\n");
    }
    std::fs::write(&cfg, &yaml).expect("write agent config");

    let mut recv = Receiver::start(&ns, n);
    let agent_log = dir.join("agent.log");
    let (agent, _, _) = Proc::spawn(
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(binary("FLOWLENS_AGENT_BIN", "flowlens-agent"))
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null()),
        "flowlens-agent",
        Some(&agent_log),
    );
    let scrape = || -> Result<Metrics, String> {
        agent.assert_running();
        ns.run(|| http_get(AGENT_METRICS, "/metrics"))
            .map_err(|e| e.to_string())?
            .map(Metrics)
            .ok_or_else(|| "no /metrics answer yet".to_string())
    };
    let started = Instant::now();
    let m = wait_for(
        Duration::from_secs(180),
        Duration::from_millis(200),
        "the agent's first dump with every connection tracked",
        || {
            let m = scrape()?;
            let (polls, tracked) = (
                m.get("flowlens_agent_conntrack_polls_total"),
                m.get("flowlens_agent_tracked_connection_count"),
            );
            if polls >= 1 && tracked == u64::from(n) {
                Ok(m)
            } else {
                Err(format!("polls {polls}, tracked {tracked}"))
            }
        },
    );
    // Later moments: while the first exports are under way (every connection is new, so each
    // gets an idle export `idleFlowExportTimeout` after the first dump), or once they are done.
    let m = match at {
        At::FirstDump => m,
        At::Burst => wait_for(
            Duration::from_secs(120),
            Duration::from_millis(10),
            "the first exports to begin",
            || {
                let m = scrape()?;
                let e = m.get("flowlens_agent_records_exported_total");
                if e > 0 {
                    Ok(m)
                } else {
                    Err(format!("exported {e}"))
                }
            },
        ),
        At::Steady | At::MidDump => wait_for(
            Duration::from_secs(180),
            Duration::from_millis(200),
            "every connection's first export",
            || {
                let m = scrape()?;
                let e = m.get("flowlens_agent_records_exported_total");
                if e >= u64::from(n) {
                    Ok(m)
                } else {
                    Err(format!("exported {e}"))
                }
            },
        ),
    };
    if let At::MidDump = at {
        // Well into a dump: its thread has run 300 ms since it was last seen idle (a dump of
        // 1M entries takes seconds; its first chunk reaches the loop after a few ms).
        let mut idle = (u64::MAX, 0u64);
        wait_for(
            Duration::from_secs(60),
            Duration::from_millis(5),
            "a conntrack dump in progress",
            || {
                let cpu = thread_cpu(agent.pid, "conntrack-dump").ok_or("no dump thread")?;
                // (CPU when last seen idle, CPU at the previous look).
                if cpu == idle.1 || idle.0 == u64::MAX {
                    idle.0 = cpu;
                }
                idle.1 = cpu;
                let ran = cpu - idle.0;
                if ran >= 300_000_000 {
                    Ok(())
                } else {
                    Err(format!("the dump thread ran {} ms", ran / 1_000_000))
                }
            },
        );
    }
    let before = recv.count();
    log(format!(
        "agent tracks {} connections ({:?}: {:.1} s after start; conntrack dumps so far took {:.2} s; records exported before SIGTERM {}, received {}); load {}; SIGTERM",
        m.get("flowlens_agent_tracked_connection_count"),
        at,
        started.elapsed().as_secs_f64(),
        m.value("flowlens_agent_conntrack_poll_seconds_sum"),
        m.get("flowlens_agent_records_exported_total"),
        before.records,
        loadavg(),
    ));
    let limit = Duration::from_secs(25 + 120);
    let (exit, took, hwm, sent) = terminate(&agent, limit);
    let status = exit.map_or_else(
        || format!("still running after {limit:?}"),
        |e| e.describe(),
    );
    log(format!(
        "agent: {status} {:.2} s after SIGTERM",
        took.as_secs_f64()
    ));
    // Everything the agent wrote is read once its session has closed and the consumer has
    // taken every decoded record.
    let c = wait_for(
        Duration::from_secs(60),
        Duration::from_millis(50),
        "the receiver to read the agent's session to its end",
        || {
            let c = recv.count();
            if c.sessions_open == 0 && c.consumed == c.decoded {
                Ok(c)
            } else {
                Err(format!("{c:?}"))
            }
        },
    );
    let mut notes = format!(
        "records received {} (by reason 1..5: {:?}); reason 4 duplicates {}, unknown {}",
        c.records,
        &c.by_reason[1..],
        c.dup4,
        c.foreign4
    );
    let lines = agent.shutdown_lines();
    for l in &lines {
        println!("  agent log: {l}");
    }
    // A dump in progress is processed to its end before the loop sees the signal.
    if let Some(d) = log_delay(&lines, "shutting down: sending", sent) {
        notes += &format!("; shutdown began {d:.2} s after SIGTERM");
    }
    if exit.is_none() {
        notes += "; killed";
    }
    drop(recv.stdin);
    drop(recv.proc);
    Row {
        what: match at {
            At::FirstDump => "agent".into(),
            At::Burst => "agent --at burst".into(),
            At::Steady => "agent --at steady".into(),
            At::MidDump => "agent --at mid-dump".into(),
        },
        n: u64::from(n),
        took,
        status,
        received: c.distinct4,
        expected: u64::from(n),
        hwm_kb: hwm,
        maxrss_kb: exit.map_or(0, |e| e.maxrss_kb),
        notes,
    }
}

// --- aggregator -----------------------------------------------------------------------------

const CLIENT_PODS: u32 = 250;
const SERVER_PODS: u32 = 200;

/// Flow `i` of the aggregator run: client Pod `i % 250` (10.0.0.x) → server Pod `7i % 200`
/// (10.0.1.y):8080, both on node-a, source port unique per client Pod.
fn agg_key(i: u32) -> FlowKey {
    FlowKey {
        src: v4(10, 0, 0, (1 + i % CLIENT_PODS) as u8),
        dst: v4(10, 0, 1, (1 + (i.wrapping_mul(7)) % SERVER_PODS) as u8),
        src_port: 10_000 + (i / CLIENT_PODS) as u16,
        dst_port: 8080,
        proto: 6,
    }
}

fn agg_index(src: &[u8], sport: u16, dst: &[u8], dport: u16, proto: u8, n: u32) -> Option<u32> {
    if src.len() != 4 || dst.len() != 4 || src[..3] != [10, 0, 0] || src[3] == 0 || sport < 10_000 {
        return None;
    }
    let i = u32::from(sport - 10_000) * CLIENT_PODS + u32::from(src[3]) - 1;
    let ok = i < n
        && agg_key(i).dst == v4(dst[0], dst[1], dst[2], dst[3])
        && dport == 8080
        && proto == 6;
    ok.then_some(i)
}

/// Totals of flow `i`'s `round`-th record (1 or 2): packets, octets, reverse packets, reverse
/// octets.
fn agg_totals(i: u32, round: u64) -> BiCounters {
    BiCounters {
        packets: 10 * round,
        octets: (15_000 + u64::from(i % 1000)) * round,
        reverse_packets: 12 * round,
        reverse_octets: 60_000 * round,
    }
}

/// Writes N intra-Node agent records (and with `dirty` a second, higher one per flow) to
/// `addr` over one TCP session, as an agent on node-a would; returns the stream (kept open:
/// an agent stays connected) after the last byte was written.
fn feed(addr: &str, n: u32, dirty: bool) -> TcpStream {
    let mut names = Interner::new();
    let ns = names.intern("bench");
    let node = names.intern("node-a");
    let labels_c = names.intern(r#"{"app":"client"}"#);
    let labels_s = names.intern(r#"{"app":"server"}"#);
    let client: Vec<_> = (0..CLIENT_PODS)
        .map(|p| names.intern(&format!("client-7c9f8d6b5-{p:05}")))
        .collect();
    let server: Vec<_> = (0..SERVER_PODS)
        .map(|p| names.intern(&format!("server-5d8f9c7b6-{p:05}")))
        .collect();
    let now = clock::now();
    let mut enc =
        Encoder::new(EncoderConfig::stream(node_observation_domain("node-a"))).expect("encoder");
    for l in [Layout::AgentV4, Layout::AgentV6] {
        enc.add_template(l.template_id(), l.fields())
            .expect("template");
    }
    let sock = TcpStream::connect(addr).expect("connect to the aggregator");
    sock.set_nodelay(true).expect("nodelay");
    let mut w = BufWriter::with_capacity(256 << 10, sock.try_clone().expect("clone"));
    let rounds: &[u64] = if dirty { &[1, 2] } else { &[1] };
    for &round in rounds {
        for i in 0..n {
            let totals = agg_totals(i, round);
            let deltas = if round == 1 { totals } else { agg_totals(i, 1) };
            let rec = FlowRecord {
                flow_start: Timestamp::from_secs(now.as_secs() - 60),
                flow_end: now,
                flow_end_reason: FlowEndReason::ActiveTimeout,
                key: agg_key(i),
                totals,
                deltas,
                source_pod_namespace: Some(ns),
                source_pod_name: Some(client[(i % CLIENT_PODS) as usize]),
                destination_pod_namespace: Some(ns),
                destination_pod_name: Some(server[((i.wrapping_mul(7)) % SERVER_PODS) as usize]),
                source_node_name: Some(node),
                destination_node_name: Some(node),
                destination_cluster_ip: None,
                destination_service_port: None,
                destination_service_port_name: None,
                ingress_policy: PolicyFields::default(),
                egress_policy: PolicyFields::default(),
                tcp_state: Some(TcpState::Established),
                flow_type: FlowType::IntraNode,
                source_pod_labels: Some(labels_c),
                destination_pod_labels: Some(labels_s),
                cluster_id: None,
            };
            write_flow_record(&mut enc, now, &rec, &names).expect("encode");
            while let Some(m) = enc.poll_transmit() {
                w.write_all(&m).expect("write to the aggregator");
            }
        }
    }
    enc.flush(now);
    while let Some(m) = enc.poll_transmit() {
        w.write_all(&m).expect("write to the aggregator");
    }
    w.flush().expect("write to the aggregator");
    sock
}

/// What the collector's store holds, read back after it stopped.
#[derive(Debug, Default)]
struct StoreCount {
    rows: u64,
    by_reason: [u64; 6],
    distinct4: u64,
    dup4: u64,
    foreign: u64,
    /// Sum of every row's deltas (packets, octets, reverse packets, reverse octets).
    deltas: [u64; 4],
}

/// LEB128 varint.
fn uvarint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&x, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(x & 0x7f) << shift;
        if x < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Reads `flows` of the collector's SQLite store. `rest` is the collector's packed BLOB
/// (`collector/sqlite/codec.rs`, version 1): inserted_at, start_secs, end_reason, totals[4],
/// deltas[4], … as varints.
fn read_store(db: &Path, n: u32) -> StoreCount {
    let c = rusqlite::Connection::open(db).expect("open the collector's store");
    let mut q = c
        .prepare("SELECT src_ip, src_port, dst_ip, dst_port, proto, rest FROM flows")
        .expect("query flows");
    let mut rows = q.query([]).expect("query flows");
    let mut out = StoreCount::default();
    let mut seen = vec![false; n as usize];
    while let Some(r) = rows.next().expect("read a row") {
        let src: Vec<u8> = r.get(0).expect("src_ip");
        let sport: i64 = r.get(1).expect("src_port");
        let dst: Vec<u8> = r.get(2).expect("dst_ip");
        let dport: i64 = r.get(3).expect("dst_port");
        let proto: i64 = r.get(4).expect("proto");
        let rest: Vec<u8> = r.get(5).expect("rest");
        out.rows += 1;
        let mut b = &rest[..];
        assert_eq!(b.first(), Some(&1), "flows.rest version 1");
        b = &b[1..];
        let mut v = || uvarint(&mut b).expect("a well-formed flows.rest");
        let (_inserted, _start, reason) = (v(), v(), v());
        let _totals = [v(), v(), v(), v()];
        for d in &mut out.deltas {
            *d += v();
        }
        out.by_reason[(reason as usize).min(5)] += 1;
        let idx = agg_index(&src, sport as u16, &dst, dport as u16, proto as u8, n);
        match idx {
            None => out.foreign += 1,
            Some(i) if reason == u64::from(FORCED_END) => {
                if seen[i as usize] {
                    out.dup4 += 1;
                } else {
                    seen[i as usize] = true;
                    out.distinct4 += 1;
                }
            }
            Some(_) => {}
        }
    }
    out
}

fn aggregator_run(n: u32, dirty: bool, grace: Option<&str>) -> Row {
    log(format!(
        "aggregator N = {n}{}: starting the collector and the aggregator",
        if dirty { " --dirty" } else { "" }
    ));
    let dir = TempDir::new("aggregator");
    let (ipfix, http) = (free_port(), free_port());
    let (listen, metrics) = (free_port(), free_port());
    let store = dir.join("store");
    let ccfg = dir.join("collector.yaml");
    std::fs::write(
        &ccfg,
        format!(
            "listenAddr: \"127.0.0.1:{ipfix}\"\ntransport: tcp\ndataDir: {}\nhttpAddr: \"127.0.0.1:{http}\"\n",
            store.display()
        ),
    )
    .expect("write collector config");
    let (collector, _, _) = Proc::spawn(
        Command::new(binary("FLOWLENS_BIN", "flowlens"))
            .arg("collector")
            .arg("--config")
            .arg(&ccfg)
            .stdin(Stdio::null()),
        "flowlens collector",
        Some(&dir.join("collector.log")),
    );
    let http_addr = format!("127.0.0.1:{http}");
    let collector_metrics = || -> Result<Metrics, String> {
        collector.assert_running();
        http_get(&http_addr, "/metrics")
            .map(Metrics)
            .ok_or_else(|| "no /metrics answer".into())
    };
    wait_for(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "the collector to answer /metrics",
        collector_metrics,
    );
    let acfg = dir.join("aggregator.yaml");
    let mut yaml = format!(
        "listenAddr: \"127.0.0.1:{listen}\"\naggregatorTransportProtocol: tcp\n\
         externalFlowCollectorAddr: \"127.0.0.1:{ipfix}:tcp\"\nmetricsAddr: \"127.0.0.1:{metrics}\"\n\
         activeFlowRecordTimeout: 1h\ninactiveFlowRecordTimeout: 2h\n"
    );
    if let Some(g) = grace {
        yaml += &format!("shutdownGracePeriod: {g}\n");
    }
    // The default maxFlows (500,000) holds fewer: raised to hold every flow of the run.
    if n > 500_000 {
        yaml += &format!("maxFlows: {n}\n");
    }
    std::fs::write(&acfg, &yaml).expect("write aggregator config");
    let (agg, _, _) = Proc::spawn(
        Command::new(binary("FLOWLENS_AGGREGATOR_BIN", "flowlens-aggregator"))
            .arg("--config")
            .arg(&acfg)
            .stdin(Stdio::null()),
        "flowlens-aggregator",
        Some(&dir.join("aggregator.log")),
    );
    let metrics_addr = format!("127.0.0.1:{metrics}");
    let agg_metrics = || -> Result<Metrics, String> {
        agg.assert_running();
        http_get(&metrics_addr, "/metrics")
            .map(Metrics)
            .ok_or_else(|| "no /metrics answer".into())
    };
    wait_for(
        Duration::from_secs(30),
        Duration::from_millis(50),
        "the aggregator to answer /metrics",
        agg_metrics,
    );

    let records = u64::from(n) * if dirty { 2 } else { 1 };
    let t = Instant::now();
    let sock = feed(&format!("127.0.0.1:{listen}"), n, dirty);
    log(format!(
        "{records} agent records written in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    // The aggregator closes its sending side at shutdown; an agent then closes the session.
    let reader = std::thread::spawn(move || {
        let mut s = sock;
        let mut buf = [0u8; 4096];
        while matches!(s.read(&mut buf), Ok(k) if k > 0) {}
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let nn = u64::from(n);
    let m = wait_for(
        Duration::from_secs(300),
        Duration::from_millis(100),
        "every record aggregated, every first export stored by the collector",
        || {
            let m = agg_metrics()?;
            let c = collector_metrics()?;
            let s = (
                m.get("flowlens_aggregator_records_in_total"),
                m.get("flowlens_aggregator_flows_in_flight"),
                m.get("flowlens_aggregator_records_out_total"),
                m.get("flowlens_aggregator_sink_records_out_total{sink=\"ipfix\"}"),
                // Decoded, not `records_stored`: that counter only moves when a later message
                // arrives (collector_cmd.rs), so after the last one it stays behind.
                c.get("flowlens_collector_ipfix_collect_records_total"),
            );
            if s == (records, nn, nn, nn, nn) {
                Ok(m)
            } else {
                Err(format!(
                    "records_in {}, flows_in_flight {}, records_out {}, ipfix sink out {}, collector decoded {}",
                    s.0, s.1, s.2, s.3, s.4
                ))
            }
        },
    );
    log(format!(
        "aggregator holds {} flows, the collector received their {nn} first exports ({:.1} s after the feed began); dropped {}, sink dropped {}; aggregator VmRSS {} MiB; load {}; SIGTERM",
        m.get("flowlens_aggregator_flows_in_flight"),
        t.elapsed().as_secs_f64(),
        m.get("flowlens_aggregator_records_dropped_total"),
        m.get("flowlens_aggregator_sink_dropped_total"),
        proc_status_kb(agg.pid, "VmRSS") / 1024,
        loadavg(),
    ));
    let limit = Duration::from_secs(25 + 180);
    let (exit, took, hwm, sent) = terminate(&agg, limit);
    let status = exit.map_or_else(
        || format!("still running after {limit:?}"),
        |e| e.describe(),
    );
    log(format!(
        "aggregator: {status} {:.2} s after SIGTERM",
        took.as_secs_f64()
    ));
    let lines = agg.shutdown_lines();
    for l in &lines {
        println!("  aggregator log: {l}");
    }
    let handed = log_delay(&lines, "flows in flight handed", sent);
    let _ = reader.join();

    // The collector: once the aggregator's session has closed (everything it wrote decoded), it
    // is stopped, which stores what it still holds; the store is then complete and closed.
    let settled = Instant::now();
    let mut notes = String::new();
    let decoded = wait_for(
        Duration::from_secs(120),
        Duration::from_millis(50),
        "the collector to read the aggregator's session to its end",
        || {
            let c = collector_metrics()?;
            let open = c.get("flowlens_collector_ipfix_collect_sessions_open");
            if open == 0 {
                Ok(c.get("flowlens_collector_ipfix_collect_records_total"))
            } else {
                Err(format!("sessions open {open}"))
            }
        },
    );
    let (cexit, ctook, _, _) = terminate(&collector, Duration::from_secs(120));
    let cstatus = cexit.map_or("still running".to_string(), |e| e.describe());
    log(format!(
        "collector decoded {decoded} records in all; session closed {:.1} s after the aggregator's exit; collector {cstatus} {:.1} s after SIGTERM",
        settled.elapsed().as_secs_f64() - ctook.as_secs_f64(),
        ctook.as_secs_f64()
    ));
    if !cexit.is_some_and(|e| e.success()) {
        notes += &format!("collector: {cstatus}; ");
        for l in collector.shutdown_lines() {
            println!("  collector log: {l}");
        }
    }
    let sc = read_store(&store.join("flows.sqlite"), n);
    let want: [u64; 4] = (0..n).fold([0; 4], |mut a, i| {
        let t = agg_totals(i, if dirty { 2 } else { 1 });
        for (x, v) in a
            .iter_mut()
            .zip([t.packets, t.octets, t.reverse_packets, t.reverse_octets])
        {
            *x += v;
        }
        a
    });
    if let Some(d) = handed {
        notes += &format!("flows handed to the sinks {d:.2} s after SIGTERM; ");
    }
    notes += &format!(
        "collector decoded {decoded}, store rows {} (by reason 1..5: {:?}); reason 4 duplicates {}, unknown rows {}; deltas {} the fed counters",
        sc.rows,
        &sc.by_reason[1..],
        sc.dup4,
        sc.foreign,
        if sc.deltas == want {
            "sum to".to_string()
        } else {
            format!("{:?} ≠ {:?}", sc.deltas, want)
        }
    );
    Row {
        what: if dirty {
            "aggregator --dirty".into()
        } else {
            "aggregator".into()
        },
        n: nn,
        took,
        status,
        received: sc.distinct4,
        expected: nn,
        hwm_kb: hwm,
        maxrss_kb: exit.map_or(0, |e| e.maxrss_kb),
        notes,
    }
}

// --- main -----------------------------------------------------------------------------------

fn usage() -> ! {
    eprintln!(
        "usage: shutdown_bench agent N… [--at first-dump|burst|steady|mid-dump] [--grace DURATION]\n       shutdown_bench aggregator N… [--dirty] [--grace DURATION]\n(root; the release binaries built first: cargo build --release -p bins --bins --example shutdown_bench)"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first().cloned() else {
        usage()
    };
    if mode == "recv-agent" {
        let (Some(addr), Some(n)) = (args.get(1), args.get(2)) else {
            usage()
        };
        recv_agent(addr, n.parse().expect("N"));
        return;
    }
    let mut sizes = Vec::new();
    let mut dirty = false;
    let mut at = At::FirstDump;
    let mut grace = None;
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dirty" => dirty = true,
            "--at" => {
                at = match it.next().map(String::as_str) {
                    Some("first-dump") => At::FirstDump,
                    Some("burst") => At::Burst,
                    Some("steady") => At::Steady,
                    Some("mid-dump") => At::MidDump,
                    _ => usage(),
                }
            }
            "--grace" => grace = Some(it.next().cloned().unwrap_or_else(|| usage())),
            s => sizes.push(s.parse::<u32>().unwrap_or_else(|_| usage())),
        }
    }
    if sizes.is_empty() {
        usage()
    }
    let mut rows = Vec::new();
    match mode.as_str() {
        "agent" => {
            let old = std::fs::read_to_string(MAX_PATH).expect("read nf_conntrack_max (root?)");
            let _restore = RestoreMax(old.clone());
            let biggest = u64::from(*sizes.iter().max().expect("a size"));
            let want = (biggest + biggest / 10 + 1000).max(old.trim().parse().unwrap_or(0));
            std::fs::write(MAX_PATH, want.to_string()).expect("raise nf_conntrack_max");
            log(format!(
                "nf_conntrack_max {} -> {want}; agent {}; load {}",
                old.trim(),
                binary("FLOWLENS_AGENT_BIN", "flowlens-agent").display(),
                loadavg()
            ));
            for n in sizes {
                rows.push(agent_run(n, at, grace.as_deref()));
            }
        }
        "aggregator" => {
            log(format!(
                "aggregator {}, collector {}; load {}",
                binary("FLOWLENS_AGGREGATOR_BIN", "flowlens-aggregator").display(),
                binary("FLOWLENS_BIN", "flowlens").display(),
                loadavg()
            ));
            for n in sizes {
                rows.push(aggregator_run(n, dirty, grace.as_deref()));
            }
        }
        _ => usage(),
    }
    print_table(&rows);
}
