//! Agent steady-state benchmark (issue 5; run as root):
//!
//!     export CARGO_TARGET_DIR=$HOME/.cache/flowlens-target
//!     cargo run --release -p bins --example agent_bench -- [SIZES…] [--polls P]
//!
//! Default sizes 100000 1000000, 8 polls each. `--bounded`: instead of `Pipeline::pump` (which
//! encodes the exporter's whole backlog before the first message can be taken), hand each
//! message out (and ack it) as soon as the encoder finishes it — what peak RSS would be if the
//! export path pulled records only as the transport takes messages. Each size runs in a fresh child process (so its
//! peak RSS, VmHWM, is its own) against a fresh network namespace whose conntrack table is
//! filled through ctnetlink with that many TCP ESTABLISHED entries (accounting and timestamps
//! on, so every dumped message is full-sized). `nf_conntrack_max` is raised for the run and
//! restored on exit.
//!
//! The table: 250 Pods of this Node (`n1`, 10.1.0.1–250) each with n/250 connections to 2000
//! Pods of another Node (`n2`, 10.2.x.y:8080) — an inter-Node client workload where every entry
//! is a tracked connection with a local Pod at one end and both ends enriched by name.
//!
//! A poll is what the agent does every `flowPollInterval` (5 s), on a simulated clock with the
//! agent's defaults (idle timeout 15 s, active 60 s, timer granularity 500 ms):
//! 1. `ConntrackSocket::dump` into a reused `Vec` (the agent's dumper thread does the same),
//! 2. `FlowExporter::handle_dump`,
//! 3. export: `Pipeline::pump` (records → IPFIX messages for one aggregator replica, stream
//!    encoder), then the `handle_timeout`/`pump` rounds the agent runs until the next poll.
//!    No sockets: every finished message is counted (records, bytes) and its records acked, as
//!    the transport would on a successful write.
//!
//! Traffic between polls is simulated after each dump (not measured): 1 % of the entries get
//! higher counters per poll (a different 1 % each time). Poll 0 sees every connection new;
//! poll 3 (t = 15 s, the idle timeout) exports all of them; later polls are the steady state
//! (≈1 % of connections changed and ≈1 % exported per poll).
//!
//! CPU per phase is this thread's run time from /proc/thread-self/schedstat (ns; user + sys),
//! split into user and sys from /proc/thread-self/stat (10 ms ticks). The kernel's own dump
//! cost is measured with `dump_bare` (the same request, a receive loop that only walks message
//! headers), median of 3.

#[path = "bench_support/mod.rs"]
mod bench_support;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use bench_support::{status_kb, thread_cpu_ns};
use flowcore::exporter::{ExportId, ExporterConfig, FlowExporter};
use flowcore::ipfix::flow_record::write_flow_record;
use flowcore::ipfix::{Encoder, EncoderConfig, Layout, node_observation_domain};
use flowcore::metadata::{MetadataUpdate, NodeInfo, PodInfo, PodPhase};
use flowcore::model::{ConntrackEntry, ConntrackStatus, Counters, TcpState, Timestamp, Tuple};
use flowcore::policy::Labels;
use flowlens_bins::agent::pipeline::Pipeline;
use flowlens_bins::clock;
use io_linux::netns::NetNs;
use io_linux::{ConntrackSocket, DumpFilter, set_accounting, set_timestamps};

const MAX_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
const LOCAL_PODS: u32 = 250;
const REMOTE_PODS: u32 = 2000;
const POLL: Duration = Duration::from_secs(5);

/// Restores nf_conntrack_max when dropped.
struct RestoreMax(String);
impl Drop for RestoreMax {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_PATH, &self.0);
        eprintln!("restored nf_conntrack_max = {}", self.0.trim());
    }
}

/// This thread's CPU: (run time ns from schedstat, user ticks, sys ticks).
#[derive(Clone, Copy, Default)]
struct Cpu {
    ns: u64,
    utime: u64,
    stime: u64,
}

impl Cpu {
    fn now() -> Cpu {
        let ns = thread_cpu_ns();
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        Cpu {
            ns,
            utime: tick(11),
            stime: tick(12),
        }
    }

    fn since(self, t0: Cpu) -> Spent {
        Spent {
            cpu: Duration::from_nanos(self.ns - t0.ns),
            user: Duration::from_millis(10 * (self.utime - t0.utime)),
            sys: Duration::from_millis(10 * (self.stime - t0.stime)),
        }
    }
}

/// One steady poll: dump, handle_dump, export CPU, poll CPU, records.
type PollFigures = (Spent, Spent, Spent, Duration, u64);

#[derive(Clone, Copy, Default)]
struct Spent {
    cpu: Duration,
    user: Duration,
    sys: Duration,
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn remote_ip(j: u32) -> IpAddr {
    v4(10, 2, (j >> 8) as u8, j as u8 + 1)
}

/// Entry `i`: local Pod `i % 250` → remote Pod `(7i) % 2000`:8080, source port unique per Pod.
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

fn exporter(t0: Timestamp) -> FlowExporter {
    let mut ex = FlowExporter::new(ExporterConfig {
        node_name: "n1".into(),
        cluster_id: None,
        active_timeout: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(15),
        // As the agent sets it.
        timer_granularity: Duration::from_millis(500),
        max_connections: 1_000_000,
        metadata_grace: Duration::from_secs(60),
    });
    for (name, addr, cidr) in [
        ("n1", v4(192, 168, 0, 1), "10.1.0.0/16"),
        ("n2", v4(192, 168, 0, 2), "10.2.0.0/16"),
    ] {
        ex.handle_metadata(
            t0,
            MetadataUpdate::Node(NodeInfo {
                name: name.into(),
                addresses: vec![addr],
                pod_cidrs: vec![cidr.parse().unwrap()],
            }),
        );
    }
    let pod = |name: String, node: &str, ip: IpAddr, app: &str| {
        MetadataUpdate::Pod(PodInfo {
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            name,
            node: node.into(),
            ips: vec![ip],
            labels: Labels::new([("app", app)]),
            phase: PodPhase::Running,
            ..PodInfo::default()
        })
    };
    for p in 0..LOCAL_PODS {
        ex.handle_metadata(
            t0,
            pod(
                format!("client-7c9f8d6b5-{p:05}"),
                "n1",
                v4(10, 1, 0, (1 + p) as u8),
                "client",
            ),
        );
    }
    for j in 0..REMOTE_PODS {
        ex.handle_metadata(
            t0,
            pod(
                format!("server-5d8f9c7b6-{j:05}"),
                "n2",
                remote_ip(j),
                "server",
            ),
        );
    }
    ex
}

/// Simulated traffic up to poll `k`: entry with phase `p` (0..100, from its tuple) has had
/// `(k + p) / 100` bursts, so exactly the entries with `(k + p) % 100 == 0` change at poll k.
fn set_counters(v: &mut [ConntrackEntry], k: u64) {
    for e in v.iter_mut() {
        let IpAddr::V4(s) = e.orig.src else { continue };
        let h = (u64::from(s.octets()[3]) * 0x9e37_79b9 + u64::from(e.orig.src_port) * 131) % 100;
        let bursts = (k + h) / 100;
        let c = Counters {
            packets: 10 + 10 * bursts,
            bytes: 1500 + 15_000 * bursts,
        };
        e.orig_counters = Some(c);
        e.reply_counters = Some(Counters {
            packets: c.packets,
            bytes: c.bytes * 4,
        });
    }
}

/// The agent's dump path: entries in chunks into the exporter, counters raised as they pass.
struct Stream<'a> {
    core: &'a mut FlowExporter,
    now: Timestamp,
    k: u64,
    buf: Vec<ConntrackEntry>,
}

impl Stream<'_> {
    fn flush(&mut self) {
        set_counters(&mut self.buf, self.k);
        self.core.dump_chunk(self.now, &self.buf);
        self.buf.clear();
    }
}

impl io_linux::DumpSink for Stream<'_> {
    fn entry(&mut self, e: &ConntrackEntry) {
        self.buf.push(*e);
        if self.buf.len() >= 16_384 {
            self.flush();
        }
    }

    fn restart(&mut self) {}
}

#[derive(Default)]
struct Out {
    records: u64,
    messages: u64,
    bytes: u64,
}

/// Encoded messages out of the pipeline: counted, and their records acked.
fn drain(p: &mut Pipeline, core: &mut FlowExporter, out: &mut Out) {
    while let Some(o) = p.poll_outgoing() {
        out.records += o.exports.len() as u64;
        out.messages += 1;
        out.bytes += o.message.len() as u64;
        Pipeline::settle(core, &o.exports, true);
    }
}

/// One export round: `Pipeline::pump` (production), or with `bounded` a loop that hands each
/// message out as soon as the encoder finishes it.
fn pump(
    p: &mut Pipeline,
    enc: &mut Encoder,
    bounded: bool,
    now: Timestamp,
    core: &mut FlowExporter,
    out: &mut Out,
) {
    if !bounded {
        // As `ExportPath::pump` drives it: at most 256 messages per replica encoded ahead,
        // then handed over.
        loop {
            let more = p.pump(now, core, 256);
            drain(p, core, out);
            if !more {
                break;
            }
        }
        return;
    }
    let mut pending = std::collections::VecDeque::new();
    let mut take = |enc: &mut Encoder,
                    core: &mut FlowExporter,
                    pending: &mut std::collections::VecDeque<ExportId>| {
        while let Some((m, k)) = enc.poll_message() {
            out.records += u64::from(k);
            out.messages += 1;
            out.bytes += m.len() as u64;
            let ids: Vec<ExportId> = pending.drain(..(k as usize).min(pending.len())).collect();
            Pipeline::settle(core, &ids, true);
        }
    };
    while let Some(e) = core.poll_record(now) {
        write_flow_record(enc, now, &e.record, core.interner()).unwrap();
        pending.push_back(e.id);
        take(enc, core, &mut pending);
    }
    enc.flush(now);
    take(enc, core, &mut pending);
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn child(n: u32, polls: u64, bounded: bool) {
    let ns = NetNs::create("flagbench").unwrap();
    let mut sock = ns
        .run(|| {
            set_accounting(true)?;
            set_timestamps(true)?;
            ConntrackSocket::open()
        })
        .unwrap()
        .unwrap();
    let t = Instant::now();
    sock.create_entries(entries(n)).unwrap();
    let fill = t.elapsed();
    let f = DumpFilter::default();
    let rss_start = status_kb("VmRSS");

    // The kernel's own dump cost.
    let mut bare = Vec::new();
    for _ in 0..3 {
        let (c0, w0) = (Cpu::now(), Instant::now());
        let st = sock.dump_bare(&f).unwrap();
        bare.push((w0.elapsed(), Cpu::now().since(c0)));
        assert_eq!(st.entries, u64::from(n));
    }
    bare.sort_by_key(|b| b.0);
    let (bare_wall, bare_cpu) = bare[1];
    println!(
        "\n## {n} entries{} (fill {:.2} s; VmRSS before polls {} MiB)\n\nkernel bare dump (median of 3): wall {} ms, CPU {} ms (user {} / sys {} ms)\n",
        if bounded { ", --bounded export" } else { "" },
        fill.as_secs_f64(),
        rss_start / 1024,
        ms(bare_wall),
        ms(bare_cpu.cpu),
        ms(bare_cpu.user),
        ms(bare_cpu.sys),
    );
    println!(
        "| poll | t | dump wall | dump CPU (user/sys) | handle_dump CPU | export CPU | poll CPU | user-space CPU (poll − bare) | records | msgs | IPFIX bytes | records/CPU-s (export) | tracked | VmRSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");

    let t0 = clock::now();
    let mut core = exporter(t0);
    let domain = node_observation_domain("n1");
    let mut pipe =
        Pipeline::new(EncoderConfig::stream(domain), &["127.0.0.1:4739".into()]).unwrap();
    // --bounded: the same records and encoder, each message taken (and acked) as soon as it is
    // full, instead of `Pipeline::pump` encoding the whole backlog first.
    let mut enc = Encoder::new(EncoderConfig::stream(domain)).unwrap();
    for l in [Layout::AgentV4, Layout::AgentV6] {
        enc.add_template(l.template_id(), l.fields()).unwrap();
    }
    let mut v: Vec<ConntrackEntry> = Vec::new();
    let mut steady: Vec<PollFigures> = Vec::new();
    for k in 0..polls {
        let now = t0 + POLL * k as u32;
        let next = now + POLL;
        // As the agent does: the dump streamed in 16k-entry chunks into the exporter
        // (begin_dump / dump_chunk / end_dump), so "dump" CPU below includes handle_dump's work.
        let (c0, w0) = (Cpu::now(), Instant::now());
        core.begin_dump(now);
        let mut stream = Stream {
            core: &mut core,
            now,
            k,
            buf: std::mem::take(&mut v),
        };
        let st = sock.dump(&f, &mut stream).unwrap();
        stream.flush();
        v = std::mem::take(&mut stream.buf);
        core.end_dump(now);
        let (dump_wall, dump) = (w0.elapsed(), Cpu::now().since(c0));
        assert_eq!(st.entries, u64::from(n));
        let hd = Spent::default();

        let c2 = Cpu::now();
        let mut out = Out::default();
        pump(&mut pipe, &mut enc, bounded, now, &mut core, &mut out);
        // The agent's timer rounds until the next poll.
        let mut rounds = 0;
        while let Some(d) = core.poll_timeout() {
            if d >= next || rounds > 100 {
                break;
            }
            let d = d.max(now);
            core.handle_timeout(d);
            pump(&mut pipe, &mut enc, bounded, d, &mut core, &mut out);
            rounds += 1;
        }
        let exp = Cpu::now().since(c2);
        assert_eq!(core.in_flight(), 0);

        let poll = dump.cpu + hd.cpu + exp.cpu;
        let user_space = poll.saturating_sub(bare_cpu.cpu);
        println!(
            "| {k} | {} s | {} ms | {} ms ({}/{}) | {} ms | {} ms | {} ms | {} ms ({:.2}× bare) | {} | {} | {} | {} | {} | {} MiB |",
            5 * k,
            ms(dump_wall),
            ms(dump.cpu),
            ms(dump.user),
            ms(dump.sys),
            ms(hd.cpu),
            ms(exp.cpu),
            ms(poll),
            ms(user_space),
            user_space.as_secs_f64() / bare_cpu.cpu.as_secs_f64(),
            out.records,
            out.messages,
            out.bytes,
            if exp.cpu.is_zero() {
                "-".to_string()
            } else {
                format!("{:.0}", out.records as f64 / exp.cpu.as_secs_f64())
            },
            core.stats().tracked,
            status_kb("VmRSS") / 1024,
        );
        if k >= 4 {
            steady.push((dump, hd, exp, poll, out.records));
        }
    }
    if !steady.is_empty() {
        let m = steady.len() as u32;
        let sum = |f: &dyn Fn(&PollFigures) -> Duration| steady.iter().map(f).sum::<Duration>() / m;
        let dump = sum(&|s| s.0.cpu);
        let dump_user = sum(&|s| s.0.user);
        let hd = sum(&|s| s.1.cpu);
        let exp = sum(&|s| s.2.cpu);
        let poll = sum(&|s| s.3);
        let recs: u64 = steady.iter().map(|s| s.4).sum::<u64>() / u64::from(m);
        println!(
            "\nsteady state (mean of polls 4..{}): dump CPU {} ms (user {} ms), handle_dump {} ms, export {} ms ({recs} records/poll), poll CPU {} ms; user-space CPU (poll − bare dump CPU) {} ms = {:.2}× the kernel's bare dump CPU ({} ms)",
            polls - 1,
            ms(dump),
            ms(dump_user),
            ms(hd),
            ms(exp),
            ms(poll),
            ms(poll.saturating_sub(bare_cpu.cpu)),
            poll.saturating_sub(bare_cpu.cpu).as_secs_f64() / bare_cpu.cpu.as_secs_f64(),
            ms(bare_cpu.cpu),
        );
    }
    let s = core.stats();
    println!(
        "exporter: tracked {}, records polled {} acked {}, ignored {}, store heap {} MiB; pipeline {} records {} messages; Vec capacity {} entries ({} MiB); peak RSS (VmHWM) {} MiB, VmRSS {} MiB",
        s.tracked,
        s.records_polled,
        s.records_acked,
        s.ignored_entries,
        s.store_heap_bytes >> 20,
        pipe.stats().records,
        pipe.stats().messages,
        v.capacity(),
        (v.capacity() * size_of::<ConntrackEntry>()) >> 20,
        status_kb("VmHWM") / 1024,
        status_kb("VmRSS") / 1024,
    );
    drop(sock);
    drop(ns);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut polls = 8u64;
    let mut bounded = false;
    let mut sizes = Vec::new();
    let mut child_n = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--polls" => polls = it.next().expect("--polls P").parse().expect("a number"),
            "--bounded" => bounded = true,
            "--child" => child_n = Some(it.next().expect("--child N").parse().expect("a number")),
            s => sizes.push(s.parse::<u32>().expect("sizes are numbers")),
        }
    }
    if let Some(n) = child_n {
        child(n, polls, bounded);
        return;
    }
    if sizes.is_empty() {
        sizes = vec![100_000, 1_000_000];
    }
    let old_max = std::fs::read_to_string(MAX_PATH).expect("read nf_conntrack_max (root?)");
    let _restore = RestoreMax(old_max.clone());
    let biggest = u64::from(*sizes.iter().max().unwrap());
    let want = (biggest + biggest / 10 + 1000).max(old_max.trim().parse().unwrap_or(0));
    std::fs::write(MAX_PATH, want.to_string()).unwrap();
    println!(
        "# agent_bench: nf_conntrack_max {} -> {want}; {polls} polls per size; size_of::<ConntrackEntry>() = {} B; load: {}",
        old_max.trim(),
        size_of::<ConntrackEntry>(),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let exe = std::env::current_exe().unwrap();
    for n in sizes {
        let mut c = Command::new(&exe);
        c.args(["--child", &n.to_string(), "--polls", &polls.to_string()]);
        if bounded {
            c.arg("--bounded");
        }
        let st = c.status().unwrap();
        assert!(st.success(), "child for {n} failed: {st}");
    }
}
