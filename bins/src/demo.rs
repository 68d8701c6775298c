//! `flowlens demo`: the whole pipeline on a simulated cluster, on this machine, in real time.
//!
//! The cluster (Nodes, Pods, Services, NetworkPolicies) comes from the simulator's generator.
//! Connections are generated live — intra-Node, inter-Node, Pod-to-Service (DNAT visible only in
//! the reply tuple), Pod-to-External and External-to-Pod through a NodePort — and each Node's
//! conntrack table is computed from them every poll. From there on everything is the production
//! code: one flowcore exporter and agent export path per Node, IPFIX over TCP on loopback to a
//! real aggregator, and from it to a real collector whose SQLite store, API and dashboards are
//! served on `--http`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::Context;
use flowcore::config::{CollectorAddr, Host, Transport};
use flowcore::exporter::{ExporterConfig, FlowExporter};
use flowcore::ipfix::{EncoderConfig, node_observation_domain};
use flowcore::model::{ConntrackEntry, ConntrackStatus, Counters, TcpState, Timestamp, Tuple};
use sim::cluster::{Cluster, ClusterParams, SEC};
use sim::rng::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::export_path::ExportPath;
use crate::clock::now;
use crate::ops::Ops;
use crate::transport::metrics::ExporterMetrics;

/// Arguments of `flowlens demo`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Open the printed URL in a browser; Ctrl-C stops everything cleanly.")]
pub struct DemoArgs {
    /// Where the dashboards and API are served.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Simulated Nodes.
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Simulated Pods.
    #[arg(long, default_value_t = 100)]
    pub pods: usize,
    /// Seed of the simulated cluster and traffic.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this long (Go duration, e.g. 2m); runs until Ctrl-C when unset.
    #[arg(long)]
    pub duration: Option<flowcore::config::Duration>,
    /// Keep the store here (default: a temporary directory, removed at exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// A generated connection and what each Node's conntrack table shows of it.
struct Conn {
    proto: u8,
    /// (node, original tuple, reply tuple, DNAT on this Node)
    views: Vec<(usize, Tuple, Tuple, bool)>,
    id: u32,
    start: Timestamp,
    /// Traffic stops; TCP goes to TIME_WAIT, and the entry disappears 10 s later.
    end: Timestamp,
    /// bytes/s forward and reverse.
    rate: (u64, u64),
}

impl Conn {
    fn entry(&self, v: &(usize, Tuple, Tuple, bool), t: Timestamp) -> ConntrackEntry {
        let secs = t.min(self.end).saturating_since(self.start).as_secs_f64();
        let bytes = |r: u64| 60 + (r as f64 * secs) as u64;
        let (fb, rb) = (bytes(self.rate.0), bytes(self.rate.1));
        let mut status =
            ConntrackStatus::ASSURED | ConntrackStatus::CONFIRMED | ConntrackStatus::SEEN_REPLY;
        if v.3 {
            status |= ConntrackStatus::DST_NAT;
        }
        ConntrackEntry {
            orig: v.1,
            reply: v.2,
            status: ConntrackStatus(status),
            timeout: 120,
            id: self.id,
            orig_counters: Some(Counters {
                packets: 1 + fb / 900,
                bytes: fb,
            }),
            reply_counters: Some(Counters {
                packets: 1 + rb / 900,
                bytes: rb,
            }),
            start: Some(self.start),
            tcp_state: (self.proto == 6).then_some(if t < self.end {
                TcpState::Established
            } else {
                TcpState::TimeWait
            }),
            ..Default::default()
        }
    }
}

fn tuple(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> Tuple {
    Tuple {
        src: src.into(),
        dst: dst.into(),
        src_port: sport,
        dst_port: dport,
        proto,
    }
}

/// Live traffic over the generated cluster.
struct Traffic {
    cl: Cluster,
    rng: Rng,
    conns: Vec<Conn>,
    next_id: u32,
    started: u64,
}

impl Traffic {
    fn pod(&mut self) -> usize {
        self.rng.below(self.cl.slots.len() as u64) as usize
    }

    /// Starts a few connections at `t`.
    fn spawn(&mut self, t: Timestamp, n: usize) {
        for _ in 0..n {
            let kind = self.rng.below(100);
            let proto = if self.rng.chance(0.8) { 6 } else { 17 };
            let sport = self.rng.range(32768, 61000) as u16;
            let client = self.pod();
            let (cip, cnode) = (self.cl.slots[client].ip, self.cl.slots[client].node);
            let mut views = Vec::new();
            match kind {
                // Pod to Service: DNAT to a backend, visible in the reply tuple.
                0..=39 if !self.cl.services.is_empty() => {
                    let s = self.rng.below(self.cl.services.len() as u64) as usize;
                    let svc = &self.cl.services[s];
                    let Some(port) = svc.ports.first().cloned() else {
                        continue;
                    };
                    let backends = &self.cl.apps[svc.app].slots;
                    if backends.is_empty() {
                        continue;
                    }
                    let b = backends[self.rng.below(backends.len() as u64) as usize];
                    let (bip, bnode) = (self.cl.slots[b].ip, self.cl.slots[b].node);
                    views.push((
                        cnode,
                        tuple(cip, sport, svc.cluster_ip, port.port, port.proto),
                        tuple(bip, port.target, cip, sport, port.proto),
                        true,
                    ));
                    if bnode != cnode {
                        views.push((
                            bnode,
                            tuple(cip, sport, bip, port.target, port.proto),
                            tuple(bip, port.target, cip, sport, port.proto),
                            false,
                        ));
                    }
                }
                // Pod to Pod (intra- or inter-Node).
                0..=79 => {
                    let server = self.pod();
                    let (sip, snode) = (self.cl.slots[server].ip, self.cl.slots[server].node);
                    if sip == cip {
                        continue;
                    }
                    let dport = [80, 443, 5432, 6379, 8080][self.rng.below(5) as usize];
                    views.push((
                        cnode,
                        tuple(cip, sport, sip, dport, proto),
                        tuple(sip, dport, cip, sport, proto),
                        false,
                    ));
                    if snode != cnode {
                        views.push((
                            snode,
                            tuple(cip, sport, sip, dport, proto),
                            tuple(sip, dport, cip, sport, proto),
                            false,
                        ));
                    }
                }
                // Pod to External (documentation addresses; nothing is sent anywhere).
                80..=91 => {
                    let ext = Ipv4Addr::new(203, 0, 113, self.rng.range(1, 250) as u8);
                    views.push((
                        cnode,
                        tuple(cip, sport, ext, 443, 6),
                        tuple(ext, 443, cip, sport, 6),
                        false,
                    ));
                }
                // External to Pod through a NodePort on the backend's Node.
                _ => {
                    let Some(svc) = self
                        .cl
                        .services
                        .iter()
                        .find(|s| s.ports.iter().any(|p| p.node_port.is_some()))
                    else {
                        continue;
                    };
                    let port = svc
                        .ports
                        .iter()
                        .find(|p| p.node_port.is_some())
                        .cloned()
                        .expect("found above");
                    let backends = &self.cl.apps[svc.app].slots;
                    if backends.is_empty() {
                        continue;
                    }
                    let b = backends[self.rng.below(backends.len() as u64) as usize];
                    let (bip, bnode) = (self.cl.slots[b].ip, self.cl.slots[b].node);
                    let ext = Ipv4Addr::new(198, 51, 100, self.rng.range(1, 250) as u8);
                    let node_ip = self.cl.nodes[bnode].addr;
                    let np = port.node_port.unwrap_or(30080);
                    views.push((
                        bnode,
                        tuple(ext, sport, node_ip, np, port.proto),
                        tuple(bip, port.target, ext, sport, port.proto),
                        true,
                    ));
                }
            }
            let life = match self.rng.below(100) {
                0..=69 => self.rng.range(1, 6),
                70..=94 => self.rng.range(10, 61),
                _ => self.rng.range(120, 601),
            };
            let fwd = 200 * self.rng.range(1, 5000);
            let rev = fwd * self.rng.range(1, 20) / 4;
            self.next_id = self.next_id.wrapping_add(1);
            self.started += 1;
            self.conns.push(Conn {
                proto: views[0].1.proto,
                views,
                id: self.next_id,
                start: t,
                end: t + Duration::from_secs(life),
                rate: (fwd, rev),
            });
        }
    }

    /// Each Node's table at `t`; connections 10 s past their end are gone.
    fn tables(&mut self, t: Timestamp, nodes: usize) -> Vec<Vec<ConntrackEntry>> {
        self.conns.retain(|c| t < c.end + Duration::from_secs(10));
        let mut out = vec![Vec::new(); nodes];
        for c in &self.conns {
            for v in &c.views {
                out[v.0].push(c.entry(v, t));
            }
        }
        out
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    crate::config::init_logging(&crate::config::LogConfig {
        level: "warn".into(),
        ..Default::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let temp = args.data_dir.is_none();
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("flowlens-demo-{}", std::process::id()))
    });

    // Collector: store, API, dashboards.
    let collector = crate::collector_cmd::start(
        crate::config::collector::CollectorConfig {
            listen_addr: "127.0.0.1:0".parse()?,
            transport: Transport::Tcp,
            tls: Default::default(),
            data_dir: data_dir.clone(),
            retention: Duration::from_secs(24 * 3600),
            max_store_bytes: 2 << 30,
            ingest_queue_bytes: crate::collector::IngestConfig::default().queue_bytes,
            http_addr: args.http,
            log: Default::default(),
            http: Default::default(),
            query: Default::default(),
            collecting: Default::default(),
        },
        Ops::new("flowlens_collector"),
        shutdown.clone(),
    )
    .await
    .context("starting the collector (is --http free?)")?;

    // Aggregator, exporting to the collector.
    let agg_port = free_port()?;
    // Built from the config file's defaults, so the demo runs with every bound the daemon has.
    let agg_cfg = crate::config::aggregator::AggregatorFile {
        listen_addr: SocketAddr::from(([127, 0, 0, 1], agg_port)).to_string(),
        aggregator_transport_protocol: "tcp".into(),
        flow_aggregator_address: "localhost".into(),
        external_flow_collector_addr: Some(format!("{}:tcp", collector.ipfix_addr)),
        active_flow_record_timeout: Some(Duration::from_secs(10).into()),
        inactive_flow_record_timeout: Duration::from_secs(60).into(),
        correlation_timeout: Duration::from_secs(5).into(),
        cluster_id: "demo".into(),
        metrics_addr: "127.0.0.1:0".into(),
        ..Default::default()
    }
    .validate()
    .context("the demo's aggregator configuration")?;
    let agg_shutdown = CancellationToken::new();
    let aggregator = tokio::spawn(crate::aggregator::run::run(
        agg_cfg,
        Ops::new("flowlens_aggregator"),
        agg_shutdown.clone(),
    ));

    // The simulated cluster and one agent export path per Node.
    let root = Rng::new(args.seed);
    let cl = Cluster::generate(
        &mut root.fork(2),
        &ClusterParams {
            nodes: args.nodes,
            pods: args.pods,
            duration: 24 * 3600 * SEC,
            churn_per_hour: 0.0,
            reuse_gap: 10 * SEC,
        },
    );
    let n_nodes = cl.nodes.len();
    let exported = Arc::new(AtomicU64::new(0));
    let tmetrics = ExporterMetrics::default();
    let agents_stop = CancellationToken::new();
    let mut dump_txs = Vec::new();
    let mut agents = Vec::new();
    let agg_addr = CollectorAddr::new(
        Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        agg_port,
        Some(Transport::Tcp),
    );
    for node in &cl.nodes {
        let mut core = FlowExporter::new(ExporterConfig {
            node_name: node.name.clone(),
            cluster_id: None,
            active_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            timer_granularity: Duration::from_millis(500),
            max_connections: 100_000,
            metadata_grace: Duration::from_secs(60),
        });
        for (_, u) in &cl.updates {
            core.handle_metadata(now(), u.clone());
        }
        let path = ExportPath::start(
            std::slice::from_ref(&agg_addr),
            Transport::Tcp,
            None,
            None,
            1024,
            EncoderConfig::stream(node_observation_domain(&node.name)),
            &tmetrics,
            &agents_stop,
        )?;
        let (tx, rx) = mpsc::channel::<Vec<ConntrackEntry>>(2);
        dump_txs.push(tx);
        agents.push(tokio::spawn(agent_task(
            core,
            path,
            rx,
            agents_stop.clone(),
            exported.clone(),
        )));
    }

    let pods = cl.slots.len();
    let mut traffic = Traffic {
        cl,
        rng: root.fork(7),
        conns: Vec::new(),
        next_id: 1,
        started: 0,
    };
    let url = format!("http://{}/", collector.http_addr);
    println!("flowlens demo: {n_nodes} Nodes, {pods} Pods; dashboards at {url}  (Ctrl-C to stop)");
    let t0 = now();
    let stop_after = args.duration.map(Duration::from);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = crate::signals::wait();
    tokio::pin!(ctrl_c);
    let per_second = (pods / 10).max(2);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => break,
            _ = tick.tick() => {
                let t = now();
                if stop_after.is_some_and(|d| t.saturating_since(t0) >= d) {
                    break;
                }
                traffic.spawn(t, per_second);
                for (i, table) in traffic.tables(t, n_nodes).into_iter().enumerate() {
                    let _ = dump_txs[i].try_send(table);
                }
                let secs = t.saturating_since(t0).as_secs();
                if secs.is_multiple_of(5) {
                    let s = collector.store.clone();
                    let stored = tokio::task::spawn_blocking(move || s.stats().map(|s| s.records).unwrap_or(0)).await.unwrap_or(0);
                    println!(
                        "t={secs:>4}s  connections {:>6} (live {:>5})  records exported {:>7}  stored {:>7}",
                        traffic.started,
                        traffic.conns.len(),
                        exported.load(Relaxed),
                        stored
                    );
                }
            }
        }
    }

    // Clean shutdown, upstream first: agents flush (reason 4), the aggregator flushes, the
    // collector stores the rest.
    println!("flowlens demo: shutting down");
    drop(dump_txs);
    agents_stop.cancel();
    for a in agents {
        let _ = a.await;
    }
    agg_shutdown.cancel();
    let _ = aggregator.await;
    shutdown.cancel();
    let _ = collector.task.await;
    if temp {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

/// One simulated Node's agent: the production exporter core and export path, fed tables.
async fn agent_task(
    mut core: FlowExporter,
    mut path: ExportPath,
    mut dumps: mpsc::Receiver<Vec<ConntrackEntry>>,
    stop: CancellationToken,
    exported: Arc<AtomicU64>,
) {
    loop {
        let sleep = crate::clock::sleep_until(core.poll_timeout());
        tokio::select! {
            _ = stop.cancelled() => break,
            d = dumps.recv() => match d {
                Some(table) => core.handle_dump(now(), &table),
                None => break,
            },
            Some(ev) = path.next_event() => {
                let s = path.handle(ev, now(), &mut core);
                exported.fetch_add(s.exported, Relaxed);
            }
            _ = sleep => core.handle_timeout(now()),
        }
        path.pump(now(), &mut core);
    }
    core.shutdown(now());
    let (s, _) = path.finish(&mut core, Duration::from_secs(3)).await;
    exported.fetch_add(s.exported, Relaxed);
}
