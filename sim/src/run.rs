//! One simulated run: the cluster, its traffic, one [`FlowExporter`] per Node, IPFIX over a
//! modelled transport, the [`Aggregator`], and the invariant checks, all in virtual time.
//!
//! The clock jumps to the earliest of: the next traffic/fault event, the next datagram delivery,
//! any exporter's, encoder's or the aggregator's `poll_timeout`. Everything due at that instant
//! is handled in a fixed order (metadata, events, deliveries, exporter timers, record pumping,
//! aggregator timers), so a seed reproduces the run exactly. No `HashMap` is iterated.
//!
//! Accounting per connection and Node (a [`Track`]): what the exporter last *observed* (dump or
//! destroy event), what it exported and had acknowledged, what the transport delivered, and what
//! the aggregator put out. The checks (see [`crate::check`]) compare each stage with the previous
//! one and with the ground truth; a difference is allowed only where a counted fault explains it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use flowcore::aggregator::{
    AggregatedRecord, Aggregator, AggregatorConfig, CorrelationKey, ExporterId,
};
use flowcore::exporter::{Export, ExporterConfig, FlowExporter};
use flowcore::ipfix::flow_record::write_flow_record;
use flowcore::ipfix::{
    Decoder, DecoderConfig, Encoder, EncoderConfig, Layout, node_observation_domain,
};
use flowcore::metadata::MetadataUpdate;
use flowcore::model::{BiCounters, FlowKey, FlowType, Timestamp};

use crate::check::{Track, Violation};
use crate::cluster::{
    Cluster, ClusterParams, DNS_PORT, EPOCH, End, HTTP_PORT, MS, Nanos, SEC, TCP, UDP, ts,
};
use crate::conn::{Conn, Kind, Timeline, View, node_clock, tuple};
use crate::rng::Rng;
use crate::scenario::{Faults, Scenario, Transport};

/// Poll interval of every agent (`flowPollInterval`).
pub const POLL: Nanos = 5 * SEC;

/// Hash maps of the run: a fixed-seed fast hasher (they are looked up per record and never
/// iterated, so the hasher cannot change what a seed does).
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
type Set<K> = HashSet<K, foldhash::fast::FixedState>;
/// After traffic stops, how long the run may take to settle before that is a violation.
const SETTLE: Nanos = 900 * SEC;

/// What to run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub scenario: Scenario,
    /// Overrides of the seed-drawn cluster shape.
    pub nodes: Option<usize>,
    pub pods: Option<usize>,
    pub duration: Option<Nanos>,
    /// New connections per Pod per second.
    pub conn_rate: f64,
    /// Collect the history of this connection (for the minimal trace of a violation).
    pub trace_conn: Option<u32>,
    /// Known core issues fail the run instead of being counted.
    pub strict: bool,
    /// Record this Node's conntrack (dumps and destroy events) as a trace.
    pub record_node: Option<usize>,
}

impl SimConfig {
    pub fn new(seed: u64, scenario: Scenario) -> SimConfig {
        SimConfig {
            seed,
            scenario,
            nodes: None,
            pods: None,
            duration: None,
            conn_rate: 0.05,
            trace_conn: None,
            strict: false,
            record_node: None,
        }
    }
}

/// Fault and loss counters of a run.
#[derive(Clone, Debug, Default)]
pub struct FaultCounts {
    pub partitions: u64,
    pub aggregator_crashes: u64,
    pub agent_restarts: u64,
    pub skewed_nodes: u64,
    pub lost_events: u64,
    pub events_missed_while_down: u64,
    pub datagrams_dropped: u64,
    pub records_dropped: u64,
    pub records_undecodable: u64,
    pub exporter_evicted: u64,
    pub exporter_refused: u64,
    pub aggregator_evicted: u64,
    pub nacks: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub seed: u64,
    pub scenario: String,
    pub nodes: usize,
    pub pods: usize,
    pub virtual_secs: u64,
    pub connections: u64,
    /// Connection starts, dump entries and destroy events fed to exporters.
    pub conn_events: u64,
    pub exporter_records: u64,
    pub aggregator_in: u64,
    pub aggregator_out: u64,
    pub correlated: u64,
    pub faults: FaultCounts,
    pub invariants_checked: u64,
    /// (Node, connection) pairs whose final totals fall short of the truth, by counted cause.
    pub shortfalls: Vec<(String, u64)>,
    /// Known core issues seen (not failures unless `strict`).
    pub known_issues: Vec<(String, u64)>,
    pub steps: u64,
    pub violation: Option<Violation>,
    /// The recorded trace (`record_node`), `flowlens-trace v1` text.
    pub trace: Option<String>,
    /// With `trace_conn`: `(Node name, flowlens-trace v1 text)` of that connection alone.
    pub conn_trace: Option<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrival,
    Destroy(u32),
    Dump(usize),
    AggCrash,
    AgentDown(usize),
    AgentUp(usize),
}

struct Datagram {
    node: usize,
    msg: Vec<u8>,
    carried: Vec<Carried>,
}

/// A connection's entry in one Node's table, with copies of what a dump reads to list it: a
/// dump walks the list in order and touches nothing else (the connections themselves are spread
/// over memory). The copies are exact while the connection lives; a take-over ends it early,
/// and then it is pruned before the next dump.
#[derive(Clone, Copy, Debug)]
struct Live {
    c: u32,
    vi: u8,
    view: View,
    tl: Timeline,
}

struct NodeSim {
    name: String,
    id: ExporterId,
    skew: i64,
    exporter: FlowExporter,
    encoder: Encoder,
    /// The aggregator's decoder of this Node's session.
    decoder: Decoder,
    session_broken: bool,
    up: bool,
    incarnation: u32,
    next_ct_id: u32,
    /// Entries of this Node's table (destroyed ones pruned at dumps).
    live: Vec<Live>,
    /// Exporter record → connection: `(flow key, conntrack start)`.
    by_record: Map<(FlowKey, u64), (u32, u8)>,
    partitions: Vec<(Nanos, Nanos)>,
    down: Vec<(Nanos, Nanos)>,
}

impl NodeSim {
    fn now(&self, t: Nanos) -> Timestamp {
        Timestamp::from_nanos(node_clock(t, self.skew))
    }
    fn to_true(&self, t: Timestamp) -> Nanos {
        t.as_nanos().saturating_add_signed(-self.skew)
    }
    fn partitioned(&self, t: Nanos) -> bool {
        self.partitions.iter().any(|&(a, b)| a <= t && t < b)
    }
}

pub struct Sim {
    cfg: SimConfig,
    pub(crate) cl: Cluster,
    transport: Transport,
    faults: Faults,
    rng: Rng,
    rng_net: Rng,
    rng_ev: Rng,
    pub(crate) now: Nanos,
    pub(crate) step: u64,
    t_end: Nanos,
    pub(crate) conns: Vec<Conn>,
    pub(crate) tracks: Vec<[Track; 2]>,
    /// `conns[c].destroyed`, compact (read for every entry of every dump).
    gone: Vec<bool>,
    /// `(Node, tuple)` of every original and reply tuple in a table: conntrack keeps both unique
    /// per table, so a new connection that would clash with one is not made.
    live_tuples: Set<(usize, flowcore::model::Tuple)>,
    recent: Vec<u32>,
    events: BinaryHeap<Reverse<(Nanos, u64, Ev)>>,
    datagrams: BinaryHeap<Reverse<(Nanos, u64, usize)>>,
    datagram_slab: Vec<Option<Datagram>>,
    seq: u64,
    nodes: Vec<NodeSim>,
    meta_cursor: usize,
    agg: Aggregator,
    agg_cfg: AggregatorConfig,
    pub(crate) agg_incarnation: u32,
    pub(crate) by_key: Map<CorrelationKey, Vec<u32>>,
    /// Fault windows `(node or all, from, until)`, for the correlation exemption.
    pub(crate) fault_windows: Vec<(Option<usize>, Nanos, Nanos)>,
    pub(crate) summary: Summary,
    pub(crate) trace: Vec<String>,
    pub(crate) violation: Option<Violation>,
    agg_in_total: u64,
    pub(crate) acked_total: u64,
    all_services: Vec<usize>,
    /// Services with a NodePort (targets of external clients).
    node_port_services: Vec<usize>,
    recorder: Option<(usize, crate::trace::TraceWriter)>,
    /// With `trace_conn`: its source-side Node, what that Node's conntrack showed of it (every
    /// dump listing it, one more that no longer does, its destroy event), and whether it is
    /// complete — a minimal trace that replays the connection through an exporter.
    min_trace: Option<(usize, crate::trace::TraceWriter, bool)>,
    /// The dump being built: one buffer for every Node, so it stays in cache.
    buf: Vec<flowcore::model::ConntrackEntry>,
    /// Known core issues by kind (see `check::final_checks`).
    pub(crate) known: [u64; 10],
    last_traced_obs: Option<(u32, BiCounters)>,
    pub(crate) delivered_total: u64,
}

fn exporter_config(name: &str, faults: &Faults) -> ExporterConfig {
    let mut c = ExporterConfig {
        node_name: name.to_string(),
        ..ExporterConfig::default()
    };
    if faults.exporter_capacity > 0 {
        c.max_connections = faults.exporter_capacity;
    }
    c
}

fn encoder_for(domain: u32, transport: Transport) -> Encoder {
    let cfg = match transport {
        Transport::Tcp => EncoderConfig::stream(domain),
        Transport::Udp => EncoderConfig::datagram(domain, 1500, std::time::Duration::from_secs(20)),
    };
    let mut e = Encoder::new(cfg).expect("valid encoder config");
    e.add_template(Layout::AgentV4.template_id(), Layout::AgentV4.fields())
        .expect("agent template");
    e
}

fn decoder_for(transport: Transport) -> Decoder {
    Decoder::new(DecoderConfig {
        template_lifetime: (transport == Transport::Udp)
            .then(|| std::time::Duration::from_secs(60)),
        ..DecoderConfig::default()
    })
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let root = Rng::new(cfg.seed);
        let mut shape = root.fork(1);
        let (transport, churn, faults) = cfg.scenario.setup();
        let nodes = cfg.nodes.unwrap_or_else(|| shape.range(2, 5) as usize);
        let pods = cfg
            .pods
            .unwrap_or_else(|| nodes * shape.range(3, 8) as usize);
        let duration = cfg.duration.unwrap_or(300 * SEC);
        let params = ClusterParams {
            nodes,
            pods,
            duration,
            churn_per_hour: churn,
            reuse_gap: 10 * SEC + 2 * faults.max_skew,
        };
        let cl = Cluster::generate(&mut root.fork(2), &params);
        let mut frng = root.fork(3);
        let mut node_sims: Vec<NodeSim> = cl
            .nodes
            .iter()
            .map(|n| {
                let domain = node_observation_domain(&n.name);
                let skew = if faults.max_skew > 0 {
                    frng.range(0, 2 * faults.max_skew) as i64 - faults.max_skew as i64
                } else {
                    0
                };
                NodeSim {
                    name: n.name.clone(),
                    id: ExporterId {
                        addr: IpAddr::V4(n.addr),
                        domain,
                    },
                    skew,
                    exporter: FlowExporter::new(exporter_config(&n.name, &faults)),
                    encoder: encoder_for(domain, transport),
                    decoder: decoder_for(transport),
                    session_broken: false,
                    up: true,
                    incarnation: 0,
                    next_ct_id: 1,
                    live: Vec::new(),
                    by_record: Map::default(),
                    partitions: Vec::new(),
                    down: Vec::new(),
                }
            })
            .collect();
        let agg_cfg = AggregatorConfig {
            hash_seed: cfg.seed,
            max_flows: if faults.aggregator_capacity > 0 {
                faults.aggregator_capacity
            } else {
                AggregatorConfig::default().max_flows
            },
            ..AggregatorConfig::default()
        };
        let t_end = EPOCH + duration;
        let mut sim = Sim {
            rng: root.fork(4),
            rng_net: root.fork(5),
            rng_ev: root.fork(6),
            transport,
            now: EPOCH,
            step: 0,
            t_end,
            conns: Vec::new(),
            tracks: Vec::new(),
            gone: Vec::new(),
            live_tuples: Set::default(),
            recent: Vec::new(),
            events: BinaryHeap::new(),
            datagrams: BinaryHeap::new(),
            datagram_slab: Vec::new(),
            seq: 0,
            nodes: Vec::new(),
            meta_cursor: 0,
            agg: Aggregator::new(agg_cfg.clone()),
            agg_cfg,
            agg_incarnation: 0,
            by_key: Map::default(),
            fault_windows: Vec::new(),
            summary: Summary {
                seed: cfg.seed,
                scenario: cfg.scenario.name().to_string(),
                nodes,
                pods,
                virtual_secs: duration / SEC,
                ..Summary::default()
            },
            trace: Vec::new(),
            violation: None,
            agg_in_total: 0,
            acked_total: 0,
            all_services: (0..cl.services.len()).collect(),
            node_port_services: (0..cl.services.len())
                .filter(|&s| cl.services[s].ports.iter().any(|p| p.node_port.is_some()))
                .collect(),
            recorder: None,
            min_trace: None,
            buf: Vec::new(),
            known: [0; 10],
            last_traced_obs: None,
            delivered_total: 0,
            cl,
            faults,
            cfg,
        };
        sim.summary.faults.skewed_nodes = node_sims.iter().filter(|n| n.skew != 0).count() as u64;
        // Faults, all healed well before the traffic stops.
        let span = duration.saturating_sub(90 * SEC).max(SEC);
        for _ in 0..sim.faults.partitions {
            let n = frng.below(node_sims.len() as u64) as usize;
            let from = EPOCH + 10 * SEC + frng.below(span);
            let until = from + frng.range(5, 60) * SEC;
            node_sims[n].partitions.push((from, until));
            sim.fault_windows.push((Some(n), from, until));
            sim.summary.faults.partitions += 1;
        }
        for _ in 0..sim.faults.aggregator_crashes {
            let at = EPOCH + 20 * SEC + frng.below(span);
            sim.fault_windows.push((None, at, at));
            sim.push(at, Ev::AggCrash);
        }
        for _ in 0..sim.faults.agent_restarts {
            let n = frng.below(node_sims.len() as u64) as usize;
            let at = EPOCH + 20 * SEC + frng.below(span);
            let up = at + frng.range(1, 20) * SEC;
            if node_sims[n].down.iter().any(|&(a, b)| a <= up && at <= b) {
                continue;
            }
            node_sims[n].down.push((at, up));
            sim.fault_windows.push((Some(n), at, up));
            sim.push(at, Ev::AgentDown(n));
            sim.push(up, Ev::AgentUp(n));
        }
        for (i, _) in node_sims.iter().enumerate() {
            let phase = frng.below(POLL);
            sim.push(EPOCH + phase, Ev::Dump(i));
        }
        sim.nodes = node_sims;
        if let Some(n) = sim.cfg.record_node.filter(|&n| n < sim.nodes.len()) {
            let mut w = crate::trace::TraceWriter::new();
            for (_, u) in &sim.cl.updates {
                if let MetadataUpdate::Node(info) = u {
                    w.node(info);
                }
            }
            sim.recorder = Some((n, w));
        }
        sim.push(EPOCH, Ev::Arrival);
        sim
    }

    fn push(&mut self, t: Nanos, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse((t, self.seq, ev)));
    }

    pub(crate) fn traced(&self, conn: u32) -> bool {
        self.cfg.trace_conn == Some(conn) && self.trace.len() < 400
    }

    pub(crate) fn push_trace(&mut self, line: String) {
        let t = self.now.saturating_sub(EPOCH);
        self.trace.push(format!(
            "t={}.{:03}s step={} {line}",
            t / SEC,
            t % SEC / MS,
            self.step
        ));
    }

    pub(crate) fn fail(&mut self, conn: Option<u32>, what: String) {
        if self.violation.is_none() {
            self.violation = Some(Violation {
                step: self.step,
                time: self.now.saturating_sub(EPOCH),
                conn,
                what,
                trace: Vec::new(),
                replay: None,
            });
        }
    }

    /// Runs to the end and returns the summary (with the violation, if any).
    pub fn run(mut self) -> Summary {
        let mut same_instant = 0u32;
        let mut last = 0;
        while let Some(t) = self.next_time() {
            self.now = t.max(self.now);
            if self.now == last {
                same_instant += 1;
                if same_instant > 10_000 {
                    self.fail(
                        None,
                        "livelock: poll_timeout does not advance past now".into(),
                    );
                    break;
                }
            } else {
                same_instant = 0;
                last = self.now;
            }
            self.step += 1;
            self.apply_metadata();
            while let Some(&Reverse((et, _, ev))) = self.events.peek() {
                if et > self.now {
                    break;
                }
                self.events.pop();
                self.handle_event(ev);
            }
            while let Some(&Reverse((dt, _, idx))) = self.datagrams.peek() {
                if dt > self.now {
                    break;
                }
                self.datagrams.pop();
                if let Some(d) = self.datagram_slab[idx].take() {
                    self.deliver_datagram(d);
                }
            }
            for n in 0..self.nodes.len() {
                if !self.nodes[n].up {
                    continue;
                }
                let node = &mut self.nodes[n];
                let tn = node.now(self.now);
                if node.exporter.poll_timeout().is_some_and(|x| x <= tn) {
                    node.exporter.handle_timeout(tn);
                }
                if node.encoder.poll_timeout().is_some_and(|x| x <= tn) {
                    node.encoder.handle_timeout(tn);
                    self.send_encoded(n, Vec::new());
                }
                self.pump(n);
            }
            if self.agg.poll_timeout().is_some_and(|x| x <= ts(self.now)) {
                self.agg.handle_timeout(ts(self.now));
            }
            self.drain_aggregator();
            if self.violation.is_some() {
                break;
            }
            if self.now >= self.t_end && self.quiet() {
                break;
            }
            if self.now > self.t_end + SETTLE {
                self.fail(
                    None,
                    format!(
                        "not settled {}s after traffic stopped: exporters {:?}, aggregator {} flows",
                        SETTLE / SEC,
                        self.nodes
                            .iter()
                            .map(|n| (n.exporter.stats().tracked, n.exporter.stats().ending))
                            .collect::<Vec<_>>(),
                        self.agg.len()
                    ),
                );
                break;
            }
        }
        if self.violation.is_none() {
            self.final_checks();
        }
        self.finish_summary();
        let mut s = std::mem::take(&mut self.summary);
        s.trace = self.recorder.take().map(|(_, w)| w.text);
        s.conn_trace = self
            .min_trace
            .take()
            .map(|(n, w, _)| (self.nodes[n].name.clone(), w.text));
        s.violation = self.violation.take();
        if let Some(v) = &mut s.violation {
            v.trace = std::mem::take(&mut self.trace);
        }
        s
    }

    fn next_time(&self) -> Option<Nanos> {
        let mut t = self.events.peek().map(|Reverse((t, ..))| *t);
        let mut min = |x: Nanos| t = Some(t.map_or(x, |t| t.min(x)));
        if let Some(Reverse((d, ..))) = self.datagrams.peek() {
            min(*d);
        }
        for n in self.nodes.iter().filter(|n| n.up) {
            if let Some(x) = n.exporter.poll_timeout() {
                min(n.to_true(x));
            }
            if let Some(x) = n.encoder.poll_timeout() {
                min(n.to_true(x));
            }
        }
        if let Some(x) = self.agg.poll_timeout() {
            min(x.as_nanos());
        }
        t
    }

    fn quiet(&self) -> bool {
        self.datagrams.is_empty()
            && self.conns.iter().rev().take(64).all(|c| c.destroyed)
            && !self
                .events
                .iter()
                .any(|Reverse((_, _, e))| matches!(e, Ev::Destroy(_) | Ev::AgentUp(_)))
            && self.nodes.iter().all(|n| {
                let s = n.exporter.stats();
                s.tracked == 0 && s.ending == 0 && n.exporter.in_flight() == 0
            })
            && self.agg.is_empty()
    }

    fn apply_metadata(&mut self) {
        while let Some((t, u)) = self.cl.updates.get(self.meta_cursor) {
            if *t > self.now {
                break;
            }
            for n in self.nodes.iter_mut().filter(|n| n.up) {
                n.exporter.handle_metadata(n.now(self.now), u.clone());
            }
            self.meta_cursor += 1;
        }
    }

    fn handle_event(&mut self, ev: Ev) {
        match ev {
            Ev::Arrival => {
                self.arrival();
                if self.now < self.t_end {
                    let pods = self.cl.slots.len() as f64;
                    let mean = 1.0 / (self.cfg.conn_rate * pods).max(1e-6);
                    let dt = (self.rng.exp(mean) * SEC as f64) as Nanos;
                    self.push(self.now + dt.max(1), Ev::Arrival);
                }
            }
            Ev::Destroy(c) => {
                if !self.conns[c as usize].destroyed {
                    self.destroy(c);
                }
            }
            Ev::Dump(n) => {
                if self.nodes[n].up {
                    self.dump(n);
                }
                if self.now < self.t_end + SETTLE {
                    self.push(self.now + POLL, Ev::Dump(n));
                }
            }
            Ev::AggCrash => self.aggregator_crash(),
            Ev::AgentDown(n) => self.agent_down(n),
            Ev::AgentUp(n) => self.agent_up(n),
        }
    }

    // --- traffic -----------------------------------------------------------------------------

    /// A slot whose current Pod is alive from `now` (with margin) and its remaining lifetime.
    /// A Pod alive from `now` (with margin): among the slots of `app` (any slot when `None`),
    /// not `exclude`. Returns slot, incarnation and how long the Pod has left.
    fn pick_pod(
        &mut self,
        app: Option<usize>,
        exclude: Option<usize>,
    ) -> Option<(usize, usize, Nanos)> {
        let margin = 2 * SEC + self.faults.max_skew;
        for _ in 0..4 {
            let s = match app {
                Some(a) => {
                    let slots = &self.cl.apps[a].slots;
                    slots[self.rng.below(slots.len() as u64) as usize]
                }
                None => self.rng.below(self.cl.slots.len() as u64) as usize,
            };
            if Some(s) == exclude {
                continue;
            }
            let slot = &self.cl.slots[s];
            let Some(i) = slot.at(self.now) else { continue };
            let inc = &slot.incarnations[i];
            if self.now < inc.created + margin {
                continue;
            }
            let until = inc.deleted.map_or(Nanos::MAX, |d| d.saturating_sub(SEC));
            if until <= self.now + 10 * MS {
                continue;
            }
            return Some((s, i, until));
        }
        None
    }

    fn arrival(&mut self) {
        if self.now >= self.t_end {
            return;
        }
        let reuse_p =
            if self.cfg.scenario == Scenario::Churn || self.cfg.scenario == Scenario::Chaos {
                0.15
            } else {
                0.03
            };
        if self.rng.chance(reuse_p) && self.try_reuse() {
            return;
        }
        let roll = self.rng.below(100);
        let (kind, proto) = match roll {
            0..35 => (Kind::PodToPod, if self.rng.chance(0.3) { UDP } else { TCP }),
            35..70 => (Kind::PodToService, TCP),
            70..85 => (
                Kind::ToExternal,
                if self.rng.chance(0.2) { UDP } else { TCP },
            ),
            _ => (Kind::FromExternal, TCP),
        };
        let Some(spec) = self.plan(kind, proto) else {
            return;
        };
        self.start_conn(spec);
    }

    fn try_reuse(&mut self) -> bool {
        let min_gap = 2 * SEC + 2 * self.faults.max_skew;
        let n = self.recent.len();
        for _ in 0..3 {
            if n == 0 {
                return false;
            }
            let old = self.recent[self.rng.below(n as u64) as usize];
            let o = &self.conns[old as usize];
            if o.reused_by.is_some()
                || o.tl.t_close > self.now
                || self.now < o.tl.t_start + min_gap
                || o.kind == Kind::FromExternal
            {
                continue;
            }
            // Both Pods must still be the same incarnations.
            let alive = |p: Option<(usize, usize)>| {
                p.is_none_or(|(s, i)| {
                    let inc = &self.cl.slots[s].incarnations[i];
                    inc.deleted.is_none_or(|d| d > self.now + 2 * SEC)
                })
            };
            if !alive(o.src_pod) || !alive(o.dst_pod) {
                continue;
            }
            let mut spec = Spec::from_conn(o);
            let until = [o.src_pod, o.dst_pod]
                .into_iter()
                .flatten()
                .filter_map(|(s, i)| self.cl.slots[s].incarnations[i].deleted)
                .min()
                .map_or(Nanos::MAX, |d| d - SEC);
            spec.until = until;
            if !o.destroyed {
                // The kernel lets a new SYN take over a TIME_WAIT entry: the old one is destroyed.
                self.destroy(old);
            }
            let id = self.conns.len();
            self.start_conn(spec);
            if self.conns.len() > id {
                self.conns[old as usize].reused_by = Some(id as u32);
                return true;
            }
        }
        false
    }

    fn plan(&mut self, kind: Kind, proto: u8) -> Option<Spec> {
        let (client, server, service, until) = match kind {
            Kind::PodToPod => {
                let (cs, ci, cu) = self.pick_pod(None, None)?;
                let (ss, si, su) = self.pick_pod(None, Some(cs))?;
                (Some((cs, ci)), Some((ss, si)), None, cu.min(su))
            }
            Kind::PodToService | Kind::FromExternal => {
                let svcs = if kind == Kind::FromExternal {
                    &self.node_port_services
                } else {
                    &self.all_services
                };
                let &svc = self.rng.pick(svcs)?;
                let app = self.cl.services[svc].app;
                let (ss, si, su) = self.pick_pod(Some(app), None)?;
                let ports = &self.cl.services[svc].ports;
                let pi = if kind == Kind::FromExternal {
                    ports.iter().position(|p| p.node_port.is_some())?
                } else {
                    self.rng.below(ports.len() as u64) as usize
                };
                if kind == Kind::FromExternal {
                    (None, Some((ss, si)), Some((svc, pi)), su)
                } else {
                    let (cs, ci, cu) = self.pick_pod(None, Some(ss))?;
                    (Some((cs, ci)), Some((ss, si)), Some((svc, pi)), cu.min(su))
                }
            }
            Kind::ToExternal => {
                let (cs, ci, cu) = self.pick_pod(None, None)?;
                (Some((cs, ci)), None, None, cu)
            }
        };
        let proto = match service {
            Some((s, p)) => self.cl.services[s].ports[p].proto,
            None => proto,
        };
        let ext = match kind {
            Kind::ToExternal => Some(Ipv4Addr::new(203, 0, 113, self.rng.range(1, 254) as u8)),
            Kind::FromExternal => Some(Ipv4Addr::new(198, 51, 100, self.rng.range(1, 254) as u8)),
            _ => None,
        };
        let server_port = match (kind, service) {
            (_, Some((s, p))) => self.cl.services[s].ports[p].target,
            (Kind::ToExternal, _) => {
                if proto == TCP {
                    443
                } else {
                    123
                }
            }
            _ => {
                if proto == TCP {
                    HTTP_PORT
                } else {
                    DNS_PORT
                }
            }
        };
        let client_port = self.rng.range(32768, 60999) as u16;
        Some(Spec {
            kind,
            proto,
            client,
            server,
            service,
            ext,
            client_port,
            server_port,
            until,
        })
    }

    fn start_conn(&mut self, spec: Spec) {
        let r = &mut self.rng;
        let now = self.now;
        let class = r.below(10);
        let dur = match class {
            0..4 => r.range(5 * MS, 3 * SEC),
            4..8 => r.range(3 * SEC, 90 * SEC),
            _ => r.range(90 * SEC, 900 * SEC),
        };
        let t_close = (now + dur).min(spec.until).min(self.t_end);
        if t_close < now + 5 * MS {
            return;
        }
        let answered = r.chance(if spec.proto == TCP { 0.93 } else { 0.85 });
        let t_est = answered.then(|| now + r.range(MS / 5, 5 * MS).min(t_close - now - MS));
        let t_traffic_end = match t_est {
            Some(e) if r.chance(0.3) => e + (t_close - e) / r.range(2, 5),
            _ => t_close,
        };
        let rst = spec.proto == TCP && r.chance(0.1);
        let short_linger = r.chance(0.25);
        let (t_close, linger) = if spec.proto == TCP && t_est.is_none() {
            // Unanswered SYN: retransmits until conntrack gives up.
            let end = (now + r.range(10 * SEC, 40 * SEC)).min(self.t_end.max(now + 10 * SEC));
            (end, 0)
        } else if short_linger {
            (t_close, r.range(0, 3 * SEC))
        } else if spec.proto == TCP {
            (t_close, if rst { 10 * SEC } else { 120 * SEC })
        } else if t_est.is_some() {
            (t_close, 120 * SEC)
        } else {
            (t_close, 30 * SEC)
        };
        let pps = [r.range(1, 100) as u32, r.range(1, 100) as u32];
        let size = [r.range(60, 1400) as u32, r.range(60, 1400) as u32];
        let id = self.conns.len() as u32;
        let cl = &self.cl;
        let pod_ip = |p: (usize, usize)| cl.slots[p.0].ip;
        let pod_node = |p: (usize, usize)| cl.slots[p.0].node;
        let client_ip = spec
            .client
            .map_or_else(|| spec.ext.expect("external client"), pod_ip);
        let server_ip = spec
            .server
            .map_or_else(|| spec.ext.expect("external server"), pod_ip);
        let (cp, sp, proto) = (spec.client_port, spec.server_port, spec.proto);
        let svc = spec
            .service
            .map(|(s, p)| (&cl.services[s], &cl.services[s].ports[p]));
        let mut views = Vec::new();
        let mut dialled = None;
        let flow_type;
        match spec.kind {
            Kind::PodToPod | Kind::PodToService => {
                let (cn, sn) = (
                    pod_node(spec.client.expect("client pod")),
                    pod_node(spec.server.expect("server pod")),
                );
                let (dip, dport, nat) = match svc {
                    Some((s, p)) => (
                        s.cluster_ip,
                        p.port,
                        flowcore::model::ConntrackStatus::DST_NAT,
                    ),
                    None => (server_ip, sp, 0),
                };
                if nat != 0 {
                    dialled = Some((IpAddr::V4(dip), dport));
                }
                let reply = tuple(server_ip, sp, client_ip, cp, proto);
                views.push(View {
                    node: cn,
                    side: 0,
                    orig: tuple(client_ip, cp, dip, dport, proto),
                    reply,
                    nat,
                    ct_id: 0,
                    start_node: 0,
                });
                if cn != sn {
                    views.push(View {
                        node: sn,
                        side: 1,
                        orig: tuple(client_ip, cp, server_ip, sp, proto),
                        reply,
                        nat: 0,
                        ct_id: 0,
                        start_node: 0,
                    });
                    flow_type = FlowType::InterNode;
                } else {
                    flow_type = FlowType::IntraNode;
                }
            }
            Kind::ToExternal => {
                let cn = pod_node(spec.client.expect("client pod"));
                let naddr = cl.nodes[cn].addr;
                views.push(View {
                    node: cn,
                    side: 0,
                    orig: tuple(client_ip, cp, server_ip, sp, proto),
                    reply: tuple(server_ip, sp, naddr, cp, proto),
                    nat: flowcore::model::ConntrackStatus::SRC_NAT,
                    ct_id: 0,
                    start_node: 0,
                });
                flow_type = FlowType::ToExternal;
            }
            Kind::FromExternal => {
                let sn = pod_node(spec.server.expect("server pod"));
                let naddr = cl.nodes[sn].addr;
                let np = svc.and_then(|(_, p)| p.node_port).expect("node port");
                dialled = Some((IpAddr::V4(naddr), np));
                views.push(View {
                    node: sn,
                    side: 0,
                    orig: tuple(client_ip, cp, naddr, np, proto),
                    reply: tuple(server_ip, sp, client_ip, cp, proto),
                    nat: flowcore::model::ConntrackStatus::DST_NAT,
                    ct_id: 0,
                    start_node: 0,
                });
                flow_type = FlowType::FromExternal;
            }
        }
        let end = |p: Option<(usize, usize)>, ip: Ipv4Addr| End {
            ip,
            pod: p.map(|(s, _)| {
                let app = cl.slots[s].app;
                (cl.apps[app].ns, app)
            }),
        };
        let (se, de) = (end(spec.client, client_ip), end(spec.server, server_ip));
        let ingress = cl.verdict(se, de, proto, sp, false);
        let egress = cl.verdict(se, de, proto, sp, true);
        for v in &mut views {
            let node = &mut self.nodes[v.node];
            v.ct_id = node.next_ct_id;
            node.next_ct_id = node.next_ct_id.wrapping_add(1);
            v.start_node = node_clock(now, node.skew);
        }
        let key = FlowKey {
            src: IpAddr::V4(client_ip),
            dst: IpAddr::V4(server_ip),
            src_port: cp,
            dst_port: sp,
            proto,
        };
        let conn = Conn {
            kind: spec.kind,
            proto,
            key,
            flow_type,
            src_pod: spec.client,
            dst_pod: spec.server,
            service: spec.service,
            dialled,
            ingress,
            egress,
            tl: Timeline {
                proto,
                rst,
                pps,
                size,
                t_start: now,
                t_est,
                t_traffic_end,
                t_close,
                t_destroy: t_close + linger,
                final_counters: BiCounters::default(),
            },
            views,
            destroyed: false,
            reused_by: None,
        };
        let mut conn = conn;
        conn.seal();
        if conn.views.iter().any(|v| {
            self.live_tuples.contains(&(v.node, v.orig))
                || self.live_tuples.contains(&(v.node, v.reply))
        }) {
            return;
        }
        for (vi, v) in conn.views.iter().enumerate() {
            self.live_tuples.insert((v.node, v.orig));
            self.live_tuples.insert((v.node, v.reply));
            self.nodes[v.node].live.push(Live {
                c: id,
                vi: vi as u8,
                view: *v,
                tl: conn.tl,
            });
            self.nodes[v.node]
                .by_record
                .insert((key, v.start_node), (id, vi as u8));
        }
        let ck = CorrelationKey {
            src: key.src,
            dst: key.dst,
            src_port: key.src_port,
            dst_port: key.dst_port,
            proto: key.proto,
        };
        self.by_key.entry(ck).or_default().push(id);
        self.push(conn.tl.t_destroy, Ev::Destroy(id));
        self.summary.connections += 1;
        self.summary.conn_events += 1;
        self.conns.push(conn);
        self.gone.push(false);
        self.tracks.push([Track::default(), Track::default()]);
        if self.recent.len() < 256 {
            self.recent.push(id);
        } else {
            let i = self.rng.below(256) as usize;
            self.recent[i] = id;
        }
        if self.cfg.trace_conn == Some(id) {
            let mut w = crate::trace::TraceWriter::new();
            for (_, u) in &self.cl.updates {
                if let MetadataUpdate::Node(info) = u {
                    w.node(info);
                }
            }
            self.min_trace = Some((self.conns[id as usize].views[0].node, w, false));
        }
        if self.traced(id) {
            let line = {
                let c = &self.conns[id as usize];
                format!(
                    "start {:?} {:?} key={:?} flow_type={:?} views={:?} est={:?} close=+{}ms destroy=+{}ms final={:?}",
                    c.kind,
                    c.proto,
                    c.key,
                    c.flow_type,
                    c.views
                        .iter()
                        .map(|v| (v.node, v.side, v.ct_id))
                        .collect::<Vec<_>>(),
                    c.tl.t_est.map(|e| e - c.tl.t_start),
                    (c.tl.t_close - c.tl.t_start) / MS,
                    (c.tl.t_destroy - c.tl.t_start) / MS,
                    c.final_counters()
                )
            };
            self.push_trace(line);
        }
    }

    fn destroy(&mut self, c: u32) {
        let now = self.now;
        let conn = &mut self.conns[c as usize];
        if conn.destroyed {
            return;
        }
        conn.destroyed = true;
        self.gone[c as usize] = true;
        // A take-over (5-tuple reuse) ends the entry early: it is frozen from now on.
        let tl = &mut conn.tl;
        if tl.t_destroy > now {
            tl.t_destroy = now;
            tl.t_close = tl.t_close.min(now);
            tl.t_traffic_end = tl.t_traffic_end.min(now);
            tl.seal();
        }
        for v in &self.conns[c as usize].views {
            self.live_tuples.remove(&(v.node, v.orig));
            self.live_tuples.remove(&(v.node, v.reply));
        }
        for vi in 0..self.conns[c as usize].views.len() {
            let v = self.conns[c as usize].views[vi];
            let entry = self.conns[c as usize].entry(&v, now, self.nodes[v.node].skew);
            self.summary.conn_events += 1;
            if !self.nodes[v.node].up {
                self.summary.faults.events_missed_while_down += 1;
                self.tracks[c as usize][vi].missed_event = true;
                if self.traced(c) {
                    let line = format!("destroy event on node {} missed: agent down", v.node);
                    self.push_trace(line);
                }
                continue;
            }
            if self.faults.lost_events > 0.0 && self.rng_ev.chance(self.faults.lost_events) {
                self.summary.faults.lost_events += 1;
                self.tracks[c as usize][vi].missed_event = true;
                if self.traced(c) {
                    let line = format!("destroy event on node {} lost", v.node);
                    self.push_trace(line);
                }
                continue;
            }
            let node = &mut self.nodes[v.node];
            let tn = node.now(now);
            node.exporter.handle_destroy(tn, &entry);
            if self.cfg.trace_conn == Some(c)
                && let Some((mn, w, _)) = &mut self.min_trace
                && *mn == v.node
            {
                w.destroy(tn, &entry);
            }
            if let Some((rn, w)) = &mut self.recorder
                && *rn == v.node
            {
                w.destroy(tn, &entry);
            }
            let inc = node.incarnation;
            let t = &mut self.tracks[c as usize][vi];
            t.observe(inc, entry_counters(&entry));
            if self.traced(c) {
                let line = format!("destroy event node {} {:?}", v.node, entry_counters(&entry));
                self.push_trace(line);
            } else if let Some(tc) = self.cfg.trace_conn
                && self.trace.len() < 400
                && (self
                    .conns
                    .get(tc as usize)
                    .is_none_or(|t| t.key == self.conns[c as usize].key))
                && std::env::var("SIM_TRACE_PORT")
                    .is_ok_and(|p| p == self.conns[c as usize].key.src_port.to_string())
            {
                let line = format!(
                    "destroy event node {} of conn {c} on {:?}: {}",
                    v.node,
                    self.conns[c as usize].key,
                    crate::trace::entry_text(&entry)
                );
                self.push_trace(line);
            }
        }
    }

    fn dump(&mut self, n: usize) {
        let now = self.now;
        let gone = &self.gone;
        let mut buf = std::mem::take(&mut self.buf);
        let node = &mut self.nodes[n];
        buf.clear();
        let inc = node.incarnation;
        let mut dead = 0;
        for l in &node.live {
            if gone[l.c as usize] {
                dead += 1;
                continue;
            }
            buf.push(l.tl.entry(&l.view, now, node.skew));
            let e = buf.last().expect("just pushed");
            self.tracks[l.c as usize][l.vi as usize].observe(inc, entry_counters(e));
        }
        // Destroyed entries are skipped, and pruned once they are a quarter of the list (entries
        // are large; pruning at every dump would move the whole list every time).
        if dead * 4 > node.live.len() {
            node.live.retain(|l| !gone[l.c as usize]);
        }
        self.summary.conn_events += buf.len() as u64;
        if self.cfg.trace_conn.is_some()
            && let Ok(p) = std::env::var("SIM_TRACE_PORT")
        {
            let lines: Vec<String> = buf
                .iter()
                .filter(|e| e.orig.src_port.to_string() == p || e.orig.dst_port.to_string() == p)
                .map(|e| format!("dump node {n} entry: {}", crate::trace::entry_text(e)))
                .collect();
            for l in lines {
                self.push_trace(l);
            }
        }
        let node = &mut self.nodes[n];
        let tn = node.now(now);
        node.exporter.handle_dump(tn, &buf);
        if let Some(tc) = self.cfg.trace_conn
            && let Some((mn, w, done)) = &mut self.min_trace
            && *mn == n
            && !*done
        {
            let view = &self.conns[tc as usize].views[0];
            let e: Vec<_> = buf
                .iter()
                .filter(|e| e.orig == view.orig && e.id == view.ct_id)
                .copied()
                .collect();
            *done = e.is_empty();
            w.dump(tn, &e);
        }
        if let Some((rn, w)) = &mut self.recorder
            && *rn == n
        {
            w.dump(tn, &buf);
        }
        self.buf = buf;
        if let Some(tc) = self.cfg.trace_conn
            && let Some(vi) = self.nodes[n]
                .live
                .iter()
                .find(|l| l.c == tc && !self.gone[tc as usize])
                .map(|l| l.vi)
            && self.tracks[tc as usize][vi as usize].obs != self.last_traced_obs
        {
            self.last_traced_obs = self.tracks[tc as usize][vi as usize].obs;
            let e =
                self.conns[tc as usize].entry(&self.conns[tc as usize].views[vi as usize], now, 0);
            if self.traced(tc) {
                let line = format!(
                    "dump node {n} lists it: {:?} {:?}",
                    e.tcp_state,
                    entry_counters(&e)
                );
                self.push_trace(line);
            }
        }
    }

    // --- faults ------------------------------------------------------------------------------

    fn aggregator_crash(&mut self) {
        self.summary.faults.aggregator_crashes += 1;
        self.agg_in_total += self.agg.stats().records_in;
        self.summary.faults.aggregator_evicted += self.agg.stats().evicted;
        self.summary.correlated += self.agg.stats().correlated;
        self.agg = Aggregator::new(self.agg_cfg.clone());
        self.agg_incarnation += 1;
        for t in self.tracks.iter_mut().flatten() {
            t.on_aggregator_crash();
        }
        for n in &mut self.nodes {
            n.decoder = decoder_for(self.transport);
            n.session_broken = true;
        }
    }

    fn agent_down(&mut self, n: usize) {
        self.summary.faults.agent_restarts += 1;
        let node = &mut self.nodes[n];
        node.up = false;
        let inc = node.incarnation;
        for c in 0..self.conns.len() {
            for (vi, v) in self.conns[c].views.iter().enumerate() {
                if v.node == n {
                    self.tracks[c][vi].on_agent_down(inc);
                }
            }
        }
    }

    fn agent_up(&mut self, n: usize) {
        let now = self.now;
        let node = &mut self.nodes[n];
        node.up = true;
        node.incarnation += 1;
        node.exporter = FlowExporter::new(exporter_config(&node.name, &self.faults));
        node.session_broken = true;
        let tn = node.now(now);
        // Informers list what exists now: deleted Pods are gone, whatever their connections.
        let mut pods_missing = HashSet::new();
        for (t, u) in &self.cl.updates[..self.meta_cursor] {
            let _ = t;
            match u {
                MetadataUpdate::Pod(p) => {
                    pods_missing.remove(&p.uid);
                }
                MetadataUpdate::PodDeleted { uid } => {
                    pods_missing.insert(uid.clone());
                }
                _ => {}
            }
        }
        for (_, u) in &self.cl.updates[..self.meta_cursor] {
            let skip = match u {
                MetadataUpdate::Pod(p) => pods_missing.contains(&p.uid),
                MetadataUpdate::PodDeleted { .. } => true,
                _ => false,
            };
            if !skip {
                node.exporter.handle_metadata(tn, u.clone());
            }
        }
        // Records of connections whose Pod the new agent cannot know any more may lack names.
        for c in 0..self.conns.len() {
            let conn = &self.conns[c];
            if conn.destroyed || !conn.views.iter().any(|v| v.node == n) {
                continue;
            }
            let gone = |p: Option<(usize, usize)>| {
                p.is_some_and(|(s, i)| pods_missing.contains(&self.cl.slots[s].incarnations[i].uid))
            };
            if gone(conn.src_pod) || gone(conn.dst_pod) {
                for t in &mut self.tracks[c] {
                    t.meta_degraded = true;
                }
            }
        }
    }

    // --- transport ---------------------------------------------------------------------------

    fn pump(&mut self, n: usize) {
        let tn = self.nodes[n].now(self.now);
        let mut batch: Vec<(Export, (u32, u8))> = Vec::new();
        while let Some(ex) = self.nodes[n].exporter.poll_record(tn) {
            let r = &ex.record;
            let Some(&cv) = self.nodes[n]
                .by_record
                .get(&(r.key, r.flow_start.as_nanos()))
            else {
                self.fail(
                    None,
                    format!("node {n}: exporter record for no known connection: {r:?}"),
                );
                return;
            };
            self.summary.exporter_records += 1;
            self.check_exporter_record(n, cv, &ex);
            batch.push((ex, cv));
        }
        if batch.is_empty() {
            return;
        }
        match self.transport {
            Transport::Tcp => {
                if self.nodes[n].partitioned(self.now) {
                    for (ex, cv) in batch {
                        self.summary.faults.nacks += 1;
                        self.nodes[n].session_broken = true;
                        if let Err(e) = self.nodes[n].exporter.nack(ex.id) {
                            self.fail(Some(cv.0), format!("nack: {e}"));
                        }
                        if self.traced(cv.0) {
                            let line = format!("node {n} record {:?} nacked (partition)", ex.id);
                            self.push_trace(line);
                        }
                    }
                    return;
                }
                let carried = self.encode(n, &batch);
                self.send_encoded(n, carried);
                for (ex, cv) in batch {
                    self.on_ack(n, cv, &ex);
                    if let Err(e) = self.nodes[n].exporter.ack(ex.id) {
                        self.fail(Some(cv.0), format!("ack: {e}"));
                    }
                }
            }
            Transport::Udp => {
                // One record per datagram, so a lost datagram maps to exactly one record.
                for (ex, cv) in batch {
                    let carried = self.encode(n, std::slice::from_ref(&(ex, cv)));
                    self.send_encoded(n, carried);
                    self.on_ack(n, cv, &ex);
                    if let Err(e) = self.nodes[n].exporter.ack(ex.id) {
                        self.fail(Some(cv.0), format!("ack: {e}"));
                    }
                }
            }
        }
    }

    fn encode(&mut self, n: usize, batch: &[(Export, (u32, u8))]) -> Vec<Carried> {
        let now = ts(self.now);
        let node = &mut self.nodes[n];
        if node.session_broken && self.transport == Transport::Tcp {
            // A new TCP session: templates again, and a fresh decoder on the aggregator side.
            node.encoder.reset_session();
            node.decoder = decoder_for(self.transport);
        }
        node.session_broken = false;
        let mut carried = Vec::with_capacity(batch.len());
        for (ex, cv) in batch {
            if let Err(e) =
                write_flow_record(&mut node.encoder, now, &ex.record, node.exporter.interner())
            {
                let msg = format!("encode: {e}");
                self.fail(Some(cv.0), msg);
                return carried;
            }
            carried.push((cv.0, cv.1, ex.record.totals));
        }
        node.encoder.flush(now);
        carried
    }

    /// Sends what the encoder finished: delivered now (TCP) or into the network (UDP).
    fn send_encoded(&mut self, n: usize, carried: Vec<Carried>) {
        let mut msgs = Vec::new();
        while let Some(m) = self.nodes[n].encoder.poll_transmit() {
            msgs.push(m);
        }
        match self.transport {
            Transport::Tcp => {
                let want = carried.len();
                let mut carried = carried.into_iter();
                let mut decoded = 0;
                for msg in msgs {
                    decoded += self.decode_and_aggregate(n, &msg, &mut carried).0;
                }
                if decoded != want {
                    self.fail(
                        None,
                        format!("node {n}: TCP session decoded {decoded} records of {want} sent"),
                    );
                }
            }
            Transport::Udp => {
                let last = msgs.len().saturating_sub(1);
                let mut carried = Some(carried);
                for (i, msg) in msgs.into_iter().enumerate() {
                    // Template-only messages carry no records; the record is in the last one.
                    let c = if i == last {
                        carried.take().unwrap_or_default()
                    } else {
                        Vec::new()
                    };
                    if self.nodes[n].partitioned(self.now)
                        || (self.faults.udp_loss > 0.0 && self.rng_net.chance(self.faults.udp_loss))
                    {
                        self.summary.faults.datagrams_dropped += 1;
                        self.summary.faults.records_dropped += c.len() as u64;
                        for &(cc, vi, _) in &c {
                            self.tracks[cc as usize][vi as usize].lost_net = true;
                            if self.traced(cc) {
                                let line = format!("datagram from node {n} lost");
                                self.push_trace(line);
                            }
                        }
                        continue;
                    }
                    let at = self.now + self.rng_net.range(0, self.faults.udp_jitter);
                    self.datagram_slab.push(Some(Datagram {
                        node: n,
                        msg: msg.to_vec(),
                        carried: c,
                    }));
                    let idx = self.datagram_slab.len() - 1;
                    self.seq += 1;
                    self.datagrams.push(Reverse((at, self.seq, idx)));
                }
            }
        }
    }

    fn deliver_datagram(&mut self, d: Datagram) {
        let want = d.carried.len();
        let mut it = d.carried.clone().into_iter();
        let (decoded, _) = self.decode_and_aggregate(d.node, &d.msg, &mut it);
        if decoded == 0 && want > 0 {
            // No template (lost, or the aggregator restarted): the decoder counts it.
            self.summary.faults.records_undecodable += want as u64;
            for &(c, vi, _) in &d.carried {
                self.tracks[c as usize][vi as usize].lost_net = true;
                if self.traced(c) {
                    let line = format!("datagram from node {} undecodable (no template)", d.node);
                    self.push_trace(line);
                }
            }
        } else if decoded != want {
            self.fail(
                None,
                format!("datagram decoded {decoded} of {want} records"),
            );
        }
    }

    /// Decodes one message into the aggregator; returns records decoded and whether `carried`
    /// has records left over.
    fn decode_and_aggregate(
        &mut self,
        n: usize,
        msg: &[u8],
        carried: &mut impl Iterator<Item = Carried>,
    ) -> (usize, bool) {
        enum Item {
            /// A record went in; the aggregator's `reused` counter before it.
            In(u64),
            Out(Box<AggregatedRecord>),
            Err(String),
        }
        let now = ts(self.now);
        let mut items = Vec::new();
        let node = &mut self.nodes[n];
        let id = node.id;
        let agg = &mut self.agg;
        let res = node.decoder.decode(now, msg, |rec| {
            items.push(Item::In(agg.stats().reused));
            if let Err(e) = agg.handle_record(now, id, &rec) {
                items.push(Item::Err(e.to_string()));
            }
            while let Some(o) = agg.poll_record() {
                items.push(Item::Out(Box::new(o)));
            }
        });
        if let Err(e) = res {
            self.fail(None, format!("node {n}: decode failed: {e}"));
            return (0, false);
        }
        let mut decoded = 0;
        for it in items {
            match it {
                Item::In(reused_before) => {
                    decoded += 1;
                    if let Some((c, vi, totals)) = carried.next() {
                        if self.traced(c) && self.agg.stats().reused > reused_before {
                            self.push_trace("the aggregator took this record for a new connection on the 5-tuple (reused)".into());
                        }
                        self.on_delivered(c, vi, totals);
                    }
                }
                Item::Out(o) => self.on_output(*o),
                Item::Err(e) => self.fail(None, format!("aggregator rejected a record: {e}")),
            }
        }
        (decoded, false)
    }

    fn drain_aggregator(&mut self) {
        while let Some(o) = self.agg.poll_record() {
            self.on_output(o);
        }
    }

    fn finish_summary(&mut self) {
        let s = self.agg.stats().clone();
        self.summary.aggregator_in = self.agg_in_total + s.records_in;
        self.summary.correlated += s.correlated;
        self.summary.faults.aggregator_evicted += s.evicted;
        for n in &self.nodes {
            let st = n.exporter.stats();
            self.summary.faults.exporter_evicted += st.evicted;
            self.summary.faults.exporter_refused += st.refused_store_full;
        }
        self.summary.steps = self.step;
    }

    pub(crate) fn node_name(&self, n: usize) -> &str {
        &self.nodes[n].name
    }

    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    pub(crate) fn node_incarnation(&self, n: usize) -> u32 {
        self.nodes[n].incarnation
    }

    pub(crate) fn nodes_refused(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| n.exporter.stats().refused_store_full > 0)
    }

    pub(crate) fn trace_conn(&self) -> Option<u32> {
        self.cfg.trace_conn
    }

    pub(crate) fn agg_stats(&self) -> &flowcore::aggregator::AggregatorStats {
        self.agg.stats()
    }

    pub(crate) fn strict(&self) -> bool {
        self.cfg.strict
    }
}

pub(crate) fn entry_counters(e: &flowcore::model::ConntrackEntry) -> BiCounters {
    let o = e.orig_counters.unwrap_or_default();
    let r = e.reply_counters.unwrap_or_default();
    BiCounters {
        packets: o.packets,
        octets: o.bytes,
        reverse_packets: r.packets,
        reverse_octets: r.bytes,
    }
}

/// A record on its way: connection, view, totals.
type Carried = (u32, u8, BiCounters);

/// A connection about to be created.
struct Spec {
    kind: Kind,
    proto: u8,
    client: Option<(usize, usize)>,
    server: Option<(usize, usize)>,
    service: Option<(usize, usize)>,
    ext: Option<Ipv4Addr>,
    client_port: u16,
    server_port: u16,
    until: Nanos,
}

impl Spec {
    fn from_conn(c: &Conn) -> Spec {
        let ext = match c.kind {
            Kind::ToExternal => match c.key.dst {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            },
            Kind::FromExternal => match c.key.src {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            },
            _ => None,
        };
        Spec {
            kind: c.kind,
            proto: c.proto,
            client: c.src_pod,
            server: c.dst_pod,
            service: c.service,
            ext,
            client_port: c.key.src_port,
            server_port: c.key.dst_port,
            until: Nanos::MAX,
        }
    }
}
