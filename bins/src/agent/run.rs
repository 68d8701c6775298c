//! The agent's main loop: conntrack dumps every `flowPollInterval` and destroy events as they
//! come, through the flowcore exporter, to the aggregator replicas over TCP, UDP or TLS.
//!
//! Threads: conntrack dumps and events use blocking netlink sockets, each on its own thread; the
//! exporter core, the encoders and all decisions live in one tokio task (this loop), which is the
//! only place state changes. Timers come from the core's `poll_timeout()`.
//!
//! Delivery: a record's delta is forgotten by the core only when the transport reports its
//! message written (`ack`); a failed or stale message is `nack`ed and its delta goes out again, so
//! an aggregator restart or a network partition loses nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flowcore::config::{CollectorAddr, Host};
use flowcore::exporter::{ExporterConfig, FlowExporter};
use flowcore::ipfix::{EncoderConfig, node_observation_domain};
use flowcore::metadata::MetadataUpdate;
use flowcore::model::ConntrackEntry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::export_path::ExportPath;
use crate::clock::now;
use crate::config::agent::AgentConfig;
use crate::ops::Ops;
use crate::transport::metrics::ExporterMetrics;
use crate::transport::{Transport, tls};

/// Agent metrics (besides the transport's).
#[derive(Clone)]
struct AgentMetrics {
    polls: Counter,
    poll_seconds: Histogram,
    dump_errors: Counter,
    conntrack_entries: Gauge,
    conntrack_max: Gauge,
    tracked: Gauge,
    records_exported: Counter,
    records_failed: Counter,
    lost_events: Counter,
    destroy_events: Counter,
    metadata_updates: Counter,
    metadata_names: Gauge,
    metadata_name_bytes: Gauge,
}

impl AgentMetrics {
    fn new(ops: &Ops) -> AgentMetrics {
        let m = AgentMetrics {
            polls: Counter::default(),
            poll_seconds: Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            dump_errors: Counter::default(),
            conntrack_entries: Gauge::default(),
            conntrack_max: Gauge::default(),
            tracked: Gauge::default(),
            records_exported: Counter::default(),
            records_failed: Counter::default(),
            lost_events: Counter::default(),
            destroy_events: Counter::default(),
            metadata_updates: Counter::default(),
            metadata_names: Gauge::default(),
            metadata_name_bytes: Gauge::default(),
        };
        ops.register(|r| {
            r.register("conntrack_polls", "Conntrack dumps completed", m.polls.clone());
            r.register("conntrack_poll_seconds", "Time to dump and process the conntrack table", m.poll_seconds.clone());
            r.register("conntrack_dump_errors", "Conntrack dumps that failed (retried next poll)", m.dump_errors.clone());
            r.register("conntrack_total_connection_count", "Entries in the conntrack table", m.conntrack_entries.clone());
            r.register("conntrack_max_connection_count", "nf_conntrack_max", m.conntrack_max.clone());
            r.register("tracked_connection_count", "Connections the exporter tracks (a Pod of this Node at one end)", m.tracked.clone());
            r.register("records_exported", "Flow records written to an aggregator", m.records_exported.clone());
            r.register("records_failed", "Flow records not written (their deltas are re-exported)", m.records_failed.clone());
            r.register("conntrack_lost_events", "Destroy events lost (kernel buffer overrun or full queue); the next dump reconciles", m.lost_events.clone());
            r.register("conntrack_destroy_events", "Destroy events received", m.destroy_events.clone());
            r.register("metadata_updates", "Kubernetes metadata updates applied", m.metadata_updates.clone());
            r.register("metadata_names", "Names (Pods, Namespaces, Nodes, Services, labels) the metadata index holds; rebuilt with only the live ones when it doubles", m.metadata_names.clone());
            r.register("metadata_name_bytes", "Text bytes of those names", m.metadata_name_bytes.clone());
        });
        m
    }
}

/// Entries per chunk handed from the dump thread to the loop: ~3.4 MB, so the agent never holds
/// the whole table (208 B per entry; 208 MB at 1M connections) besides the exporter's own store.
const DUMP_CHUNK: usize = 16_384;

/// What the dump thread reports: a dump in chunks, then its end (with the table's size) or its
/// failure. An interrupted pass is re-sent from the start within the same dump.
enum DumpMsg {
    Chunk(Vec<ConntrackEntry>),
    End(io_linux::TableStats),
    Failed(anyhow::Error),
}

/// Streams each pass into chunks; the loop gives emptied chunks back for reuse.
struct ChunkSink<'a> {
    buf: Vec<ConntrackEntry>,
    tx: &'a mpsc::Sender<DumpMsg>,
    reuse: &'a std::sync::mpsc::Receiver<Vec<ConntrackEntry>>,
    closed: bool,
}

impl ChunkSink<'_> {
    fn send(&mut self) {
        if self.buf.is_empty() || self.closed {
            return;
        }
        let next = self
            .reuse
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(DUMP_CHUNK));
        let full = std::mem::replace(&mut self.buf, next);
        self.closed = self.tx.blocking_send(DumpMsg::Chunk(full)).is_err();
    }
}

impl io_linux::DumpSink for ChunkSink<'_> {
    fn entry(&mut self, e: &ConntrackEntry) {
        self.buf.push(*e);
        if self.buf.len() >= DUMP_CHUNK {
            self.send();
        }
    }

    /// Entries already handed on were real; the retried pass lists the table again, and only
    /// its end ends connections for their absence.
    fn restart(&mut self) {}
}

/// The dump thread's handles: dump requests, emptied chunks back for reuse, and its reports.
type Dumper = (
    std::sync::mpsc::Sender<()>,
    std::sync::mpsc::Sender<Vec<ConntrackEntry>>,
    mpsc::Receiver<DumpMsg>,
);

/// Dumps conntrack on request on a dedicated thread, streaming chunks to the loop.
fn spawn_dumper(zone: Option<u16>) -> anyhow::Result<Dumper> {
    let (req_tx, req_rx) = std::sync::mpsc::channel::<()>();
    let (reuse_tx, reuse_rx) = std::sync::mpsc::channel::<Vec<ConntrackEntry>>();
    let (res_tx, res_rx) = mpsc::channel(2);
    let mut sock = io_linux::ConntrackSocket::open()
        .context("opening the conntrack netlink socket (needs CAP_NET_ADMIN)")?;
    std::thread::Builder::new()
        .name("conntrack-dump".into())
        .spawn(move || {
            let filter = io_linux::DumpFilter {
                zone,
                ..Default::default()
            };
            while req_rx.recv().is_ok() {
                let buf = reuse_rx
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(DUMP_CHUNK));
                let mut sink = ChunkSink {
                    buf,
                    tx: &res_tx,
                    reuse: &reuse_rx,
                    closed: false,
                };
                let res = sock.dump(&filter, &mut sink);
                sink.send();
                let msg = match res
                    .map_err(anyhow::Error::from)
                    .and_then(|_| sock.table_stats().map_err(anyhow::Error::from))
                {
                    Ok(stats) => DumpMsg::End(stats),
                    Err(e) => DumpMsg::Failed(e),
                };
                if sink.closed || res_tx.blocking_send(msg).is_err() {
                    return;
                }
            }
        })?;
    Ok((req_tx, reuse_tx, res_rx))
}

/// Destroy events on a dedicated thread; a full queue or a kernel overrun counts as lost (the
/// next dump notices the connections are gone).
fn spawn_events(
    metrics: AgentMetrics,
    stop: CancellationToken,
) -> anyhow::Result<mpsc::Receiver<ConntrackEntry>> {
    let (tx, rx) = mpsc::channel(65536);
    let mut sock = io_linux::EventSocket::subscribe(
        io_linux::EventGroups::DESTROY,
        io_linux::DEFAULT_EVENT_RCVBUF,
    )
    .context("subscribing to conntrack destroy events")?;
    std::thread::Builder::new().name("conntrack-events".into()).spawn(move || {
        while !stop.is_cancelled() {
            let res = sock.recv(Some(Duration::from_millis(500)), |ev| {
                metrics.destroy_events.inc();
                if tx.try_send(ev.entry).is_err() {
                    metrics.lost_events.inc();
                }
            });
            match res {
                Ok(io_linux::Received::Lost) => {
                    metrics.lost_events.inc();
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "conntrack event socket failed; relying on dumps");
                    return;
                }
            }
        }
    })?;
    Ok(rx)
}

/// Kubernetes metadata: a static file, or informers against the API server.
async fn metadata_source(
    cfg: &AgentConfig,
) -> anyhow::Result<(Vec<MetadataUpdate>, Option<io_k8s::Informers>)> {
    if let Some(path) = &cfg.metadata_file {
        let m = io_k8s::static_metadata::load(path)?;
        tracing::info!(file = %path.display(), updates = m.updates.len(), ignored = m.ignored.len(), "static metadata loaded");
        return Ok((m.updates, None));
    }
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG); use metadataFile outside a cluster")?;
    let pods = if cfg.node_local_pods {
        io_k8s::PodScope::Node(cfg.node_name.clone())
    } else {
        io_k8s::PodScope::Cluster
    };
    let inf = io_k8s::Informers::spawn(
        client,
        io_k8s::InformerConfig {
            pods,
            ..Default::default()
        },
    );
    Ok((Vec::new(), Some(inf)))
}

/// Runs the agent until `shutdown` is cancelled, then flushes every live connection.
pub async fn run(
    cfg: AgentConfig,
    ops: Arc<Ops>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Bound before anything else: a port in use fails start-up naming metricsAddr.
    let http =
        crate::ops::HttpServer::bind("metricsAddr", cfg.metrics_addr, cfg.http, &ops).await?;
    let metrics = AgentMetrics::new(&ops);
    let http = tokio::spawn(http.serve(ops.router(), shutdown.clone().cancelled_owned()));
    let tmetrics = ExporterMetrics::default();
    ops.register(|r| tmetrics.register(r, "ipfix_export"));
    match io_linux::startup_checks(io_linux::SysctlPolicy::Enable) {
        Ok(report) => {
            for w in &report.warnings {
                tracing::warn!("{w}");
            }
        }
        Err(e) => return Err(e).context("conntrack start-up checks"),
    }
    let domain = node_observation_domain(&cfg.node_name);
    let mut core = FlowExporter::new(ExporterConfig {
        node_name: cfg.node_name.clone(),
        cluster_id: None,
        active_timeout: cfg.active_timeout,
        idle_timeout: cfg.idle_timeout,
        timer_granularity: Duration::from_millis(500),
        max_connections: cfg.max_connections,
        metadata_grace: Duration::from_secs(60),
    });

    // Transport: one exporter actor per aggregator replica, all outcomes into one channel.
    let tls_cfg = if cfg.transport == Transport::Tls {
        let files = cfg.tls.transport();
        Some(tls::watch_client_config(
            files,
            Duration::from_secs(30),
            shutdown.clone(),
        )?)
    } else {
        None
    };
    let enc_cfg = match cfg.transport {
        Transport::Udp => EncoderConfig::datagram(domain, 1500, Duration::from_secs(60)),
        _ => EncoderConfig::stream(domain),
    };
    // A name with several addresses (a headless Service over aggregator replicas) is one shard
    // per address; TLS still verifies the name.
    let (collectors, server_name) = expand_replicas(&cfg.collectors).await;
    // The transport outlives the main loop: the shutdown flush below still goes out through it,
    // and it stops (draining and closing its sessions) only when this function returns. With
    // `shutdown` itself the actors closed their queues at the signal, before the flush reached
    // them, and the flushed records were failed unsent.
    let transport_stop = CancellationToken::new();
    let _transport_stop = transport_stop.clone().drop_guard();
    let mut path = ExportPath::start(
        &collectors,
        cfg.transport,
        tls_cfg,
        server_name,
        cfg.max_queued_messages,
        enc_cfg,
        &tmetrics,
        &transport_stop,
    )?;

    // Metadata.
    let (initial, informers) = metadata_source(&cfg).await?;
    for u in initial {
        core.handle_metadata(now(), u);
        metrics.metadata_updates.inc();
    }
    let (mut meta_rx, meta_ready) = match informers {
        Some(inf) => (Some(inf.updates), Some(inf.handle)),
        None => (None, None),
    };

    // Conntrack.
    let (dump_req, dump_reuse, mut dump_res) = spawn_dumper(cfg.conntrack_zone)?;
    let events_stop = shutdown.child_token();
    let mut events = spawn_events(metrics.clone(), events_stop.clone())?;
    let mut poll_tick = tokio::time::interval(cfg.poll_interval);
    poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dump_started: Option<Instant> = None;
    let mut first_dump_done = false;

    tracing::info!(node = %cfg.node_name, domain, collectors = ?collectors.iter().map(|c| c.to_string()).collect::<Vec<_>>(), transport = %cfg.transport, "agent running");
    loop {
        let deadline = core
            .poll_timeout()
            .into_iter()
            .chain(path.pipeline.poll_timeout())
            .min();
        let sleep = crate::clock::sleep_until(deadline);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = poll_tick.tick(), if dump_started.is_none() => {
                dump_started = Some(Instant::now());
                if dump_req.send(()).is_err() {
                    anyhow::bail!("the conntrack dump thread stopped");
                }
            }
            Some(first) = dump_res.recv() => {
                // One dump, chunk by chunk, with no other input in between: together the chunks
                // are one instant's table, as the exporter's dump contract requires.
                let t = now();
                core.begin_dump(t);
                let mut msg = Some(first);
                let outcome = loop {
                    match msg.take() {
                        Some(DumpMsg::Chunk(mut c)) => {
                            core.dump_chunk(t, &c);
                            c.clear();
                            let _ = dump_reuse.send(c);
                        }
                        Some(DumpMsg::End(stats)) => break Ok(Some(stats)),
                        Some(DumpMsg::Failed(e)) => break Err(e),
                        None => break Err(anyhow::anyhow!("the conntrack dump thread stopped")),
                    }
                    // A dump of a million entries takes seconds: a shutdown abandons it (no
                    // end_dump, so nothing ends for missing from it) rather than waiting.
                    msg = tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break Ok(None),
                        m = dump_res.recv() => m,
                    };
                };
                let took = dump_started.take().map(|t| t.elapsed());
                match outcome {
                    Ok(None) => {}
                    Ok(Some(stats)) => {
                        core.end_dump(t);
                        metrics.polls.inc();
                        metrics.conntrack_entries.set(stats.entries as i64);
                        metrics.conntrack_max.set(stats.max_entries as i64);
                        metrics.tracked.set(core.stats().tracked as i64);
                        first_dump_done = true;
                    }
                    // No end_dump: nothing is ended for missing from a failed dump.
                    Err(e) => {
                        metrics.dump_errors.inc();
                        tracing::warn!(error = %format!("{e:#}"), "conntrack dump failed; retrying at the next poll");
                    }
                }
                if let Some(t) = took {
                    metrics.poll_seconds.observe(t.as_secs_f64());
                }
            }
            Some(e) = events.recv() => core.handle_destroy(now(), &e),
            Some(u) = async { match meta_rx.as_mut() { Some(r) => r.recv().await, None => None } } => {
                core.handle_metadata(now(), u);
                metrics.metadata_updates.inc();
                let ms = core.metadata().stats();
                metrics.metadata_names.set(ms.names as i64);
                metrics.metadata_name_bytes.set(ms.name_bytes as i64);
            }
            Some(ev) = path.next_event() => {
                let st = path.handle(ev, now(), &mut core);
                metrics.records_exported.inc_by(st.exported);
                metrics.records_failed.inc_by(st.failed);
            }
            _ = sleep => {
                let t = now();
                core.handle_timeout(t);
                path.pipeline.handle_timeout(t);
            }
        }
        // Everything due goes out now.
        let st = path.pump(now(), &mut core);
        metrics.records_failed.inc_by(st.failed);
        let meta_ok = meta_ready.as_ref().is_none_or(|h| h.is_ready());
        ops.set_ready(first_dump_done && meta_ok);
    }

    // Shutdown: end every live connection (reason 4) and send every final record, streaming
    // them a bounded number of messages at a time, within the grace period.
    let tracked = core.stats().tracked;
    tracing::info!(connections = tracked, grace = ?cfg.shutdown_grace, "shutting down: sending the final record of every connection");
    events_stop.cancel();
    core.shutdown(now());
    let started = Instant::now();
    let (st, left) = path.finish(&mut core, cfg.shutdown_grace).await;
    metrics.records_exported.inc_by(st.exported);
    metrics.records_failed.inc_by(st.failed);
    let _ = http.await;
    if left.total() > 0 {
        tracing::error!(
            not_sent = left.not_sent,
            handed_to_transport = left.handed_over,
            grace = ?cfg.shutdown_grace,
            "shut down with final records not known delivered: those not sent lose their last deltas; those handed to the transport may still be written as it stops"
        );
        anyhow::bail!(
            "{} of {tracked} connections' final records were not sent within shutdownGracePeriod ({:?}) and {} more were still being written; raise shutdownGracePeriod (and terminationGracePeriodSeconds) or check the aggregator",
            left.not_sent,
            cfg.shutdown_grace,
            left.handed_over
        );
    }
    tracing::info!(connections = tracked, took = ?started.elapsed(), "every final record delivered");
    Ok(())
}

/// Expands a single collector name that resolves to several addresses into one collector per
/// address (sorted, so every agent orders the replicas alike), keeping the name for TLS
/// verification. Anything else is returned as configured. Resolution happens once at start; a
/// changed replica set takes an agent restart (a rolling restart of the DaemonSet).
async fn expand_replicas(collectors: &[CollectorAddr]) -> (Vec<CollectorAddr>, Option<String>) {
    if let [c] = collectors
        && let Host::Name(name) = &c.host
        && let Ok(addrs) = tokio::net::lookup_host((name.as_str(), c.port)).await
    {
        let mut ips: Vec<std::net::IpAddr> = addrs.map(|a| a.ip()).collect();
        ips.sort();
        ips.dedup();
        if ips.len() > 1 {
            tracing::info!(name = %name, replicas = ips.len(), "sharding flows across aggregator replicas");
            let out = ips
                .into_iter()
                .map(|ip| CollectorAddr::new(Host::Ip(ip), c.port, c.transport))
                .collect();
            return (out, Some(name.clone()));
        }
    }
    (collectors.to_vec(), None)
}
