//! The aggregator's main loop. The core (`flowcore::aggregator::Aggregator`) lives in this task
//! alone; the collecting process's session tasks decode and hand whole messages over a bounded
//! channel (TCP back-pressure when it is full). Each turn takes the waiting messages (up to
//! [`MAX_MESSAGES_PER_TURN`]), then hands what the core produced to every sink as one shared
//! batch (`crate::sinks`): sinks run on their own tasks or threads behind queues bounded by
//! records whose overflow is counted, so this thread never encodes, writes or frees an
//! aggregated record. HTTP queries of in-flight flows are answered by this task through a
//! request channel so no lock is ever taken on the hot path.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use flowcore::aggregator::{AggregatedRecord, Aggregator, AggregatorConfig as CoreConfig};
use flowcore::ipfix::{DataRecord, FieldValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::now;
use crate::config::aggregator::AggregatorSetup;
use crate::ops::Ops;
use crate::sinks::ipfix::{IpfixSinkConfig, ReplayGauges};
use crate::sinks::jsonl::{JsonLinesSink, Rotation};
use crate::sinks::{Batch, SinkMetrics, SinkSender};
use crate::transport::collector::{Collector, DecodedMessage};
use crate::transport::exporter::ExporterConfig as TransportConfig;
use crate::transport::metrics::{CollectorMetrics, ExporterMetrics};
use crate::transport::replay::ReplayConfig;
use crate::transport::{Transport, tls};

/// Most records one `/api/flows` answer carries (and one core thread collects for it); a larger
/// `limit` is a 400 that names this maximum.
pub const MAX_API_FLOWS: usize = 10_000;

/// Filters of `/api/flows` (all optional; a flow matches when every given one matches).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(default)]
pub struct FlowFilter {
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    pub protocol: Option<u8>,
    pub pod: Option<String>,
    pub namespace: Option<String>,
    pub limit: Option<usize>,
}

impl FlowFilter {
    pub fn matches(&self, r: &AggregatedRecord) -> bool {
        let k = &r.key;
        self.ip.is_none_or(|ip| k.src == ip || k.dst == ip)
            && self.port.is_none_or(|p| k.src_port == p || k.dst_port == p)
            && self.protocol.is_none_or(|p| k.proto == p)
            && self
                .pod
                .as_deref()
                .is_none_or(|p| &*r.src_pod == p || &*r.dst_pod == p)
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| &*r.src_namespace == n || &*r.dst_namespace == n)
    }
}

type FlowQuery = (FlowFilter, oneshot::Sender<Vec<Value>>);

#[derive(Clone)]
struct AggMetrics {
    records_in: Counter,
    records_out: Counter,
    correlated: Counter,
    uncorrelated: Counter,
    dropped: prometheus_client::metrics::family::Family<Vec<(String, String)>, Counter>,
    in_flight: Gauge,
    names: Gauge,
    name_bytes: Gauge,
    names_refused: prometheus_client::metrics::family::Family<Vec<(String, String)>, Counter>,
    /// Per exporter (`address/domain`): names refused and flows evicted — who a flood came from.
    exporter_refused: prometheus_client::metrics::family::Family<Vec<(String, String)>, Counter>,
    exporter_evicted: prometheus_client::metrics::family::Family<Vec<(String, String)>, Counter>,
}

/// Runs until `shutdown`, then exports every flow in flight (reason 4) and flushes the sinks.
pub async fn run(
    cfg: impl Into<AggregatorSetup>,
    ops: Arc<Ops>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let cfg: AggregatorSetup = cfg.into();
    // Bound before anything else: a port in use fails start-up naming metricsAddr.
    let http =
        crate::ops::HttpServer::bind("metricsAddr", cfg.metrics_addr, cfg.http, &ops).await?;
    let m = AggMetrics {
        records_in: Counter::default(),
        records_out: Counter::default(),
        correlated: Counter::default(),
        uncorrelated: Counter::default(),
        dropped: Default::default(),
        in_flight: Gauge::default(),
        names: Gauge::default(),
        name_bytes: Gauge::default(),
        names_refused: Default::default(),
        exporter_refused: Default::default(),
        exporter_evicted: Default::default(),
    };
    let cmetrics = CollectorMetrics::default();
    let emetrics = ExporterMetrics::default();
    let smetrics = SinkMetrics::default();
    let replay_gauges = ReplayGauges::default();
    ops.register(|r| {
        r.register("records_in", "Agent records received", m.records_in.clone());
        r.register("records_out", "Aggregated records produced", m.records_out.clone());
        r.register("correlated", "Inter-Node flows whose two halves met", m.correlated.clone());
        r.register("uncorrelated", "Inter-Node flows exported without their partner after the correlation timeout", m.uncorrelated.clone());
        r.register("records_dropped", "Records not aggregated, by reason (stale, duplicate, invalid) and flows evicted (store full)", m.dropped.clone());
        r.register("flows_in_flight", "Flows held in memory", m.in_flight.clone());
        r.register("names", "Interned names (Pods, Namespaces, Nodes, Services, policies, labels) held", m.names.clone());
        r.register("name_bytes", "Heap bytes of the interned names (bounded by maxNameBytes)", m.name_bytes.clone());
        r.register("names_refused", "Names refused in agent records (the field left empty), by reason: too_long (over Kubernetes' limit or maxLabelBytes), over_budget (maxNameBytes reached, exporter over its share), tcp_state (not a kernel state name)", m.names_refused.clone());
        r.register("exporter_names_refused", "Names refused, by exporter (address/observation domain)", m.exporter_refused.clone());
        r.register("exporter_flows_evicted", "Flows evicted (exported early, reason 5) because the flow table or the name table was full, by exporter", m.exporter_evicted.clone());
        smetrics.register(r);
        r.register("ipfix_replay_bytes", "IPFIX bytes held for the external collector until written (replayed after a reconnect)", replay_gauges.bytes.clone());
        r.register("ipfix_replay_records", "Aggregated records held for the external collector until written", replay_gauges.records.clone());
        cmetrics.register(r, "ipfix_collect");
        emetrics.register(r, "ipfix_export");
    });

    // TLS for the collecting process: files, or generated (and renewed) in tlsDir.
    let tls_cfg = if cfg.transport == Transport::Tls {
        let files = match &cfg.tls_dir {
            Some(dir) => {
                let names = vec![
                    cfg.server_name.clone(),
                    "localhost".into(),
                    "127.0.0.1".into(),
                ];
                let r = tls::ensure_certs(
                    dir,
                    &names,
                    SystemTime::now(),
                    Duration::from_secs(30 * 86400),
                    &tls::CertValidity::default(),
                )
                .with_context(|| format!("TLS certificates in {}", dir.display()))?;
                tracing::info!(dir = %dir.display(), renewal = ?r, "TLS certificates ready");
                tls::GeneratedCerts::in_dir(dir).server()
            }
            None => cfg.tls.transport(),
        };
        Some(tls::watch_server_config(
            files,
            Duration::from_secs(30),
            shutdown.clone(),
        )?)
    } else {
        None
    };
    // Generated certificates are renewed before they expire; the server configuration reloads
    // changed files by itself (a renewed CA must still reach the agents, e.g. through a Secret).
    if cfg.transport == Transport::Tls
        && let Some(dir) = cfg.tls_dir.clone()
    {
        let names = vec![
            cfg.server_name.clone(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match tls::ensure_certs(
                    &dir,
                    &names,
                    SystemTime::now(),
                    Duration::from_secs(30 * 86400),
                    &tls::CertValidity::default(),
                ) {
                    Ok(tls::Renewal::Kept) => {}
                    Ok(r) => {
                        tracing::warn!(dir = %dir.display(), renewal = ?r, "TLS certificates renewed")
                    }
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %format!("{e:#}"), "renewing TLS certificates failed")
                    }
                }
            }
        });
    }
    let mut ccfg = cfg.collecting.listener();
    match cfg.transport {
        Transport::Tcp => ccfg.tcp = Some(cfg.listen_addr),
        Transport::Udp => ccfg.udp = Some(cfg.listen_addr),
        Transport::Tls => {
            ccfg.tls = Some(cfg.listen_addr);
            ccfg.tls_config = tls_cfg;
        }
    }
    let (queue, mut rx) = crate::transport::collector::queue(&ccfg.limits);
    let collector = Collector::bind(ccfg, cmetrics.clone(), queue).await?;
    let collector_task = tokio::spawn(collector.run(shutdown.clone()));

    // The core, split into shards by a hash of the flow key (both halves of a flow meet in one
    // shard), each on a thread of its own.
    let shards = cfg.sinks.core_threads.max(1);
    let core_cfg = CoreConfig {
        active_timeout: cfg.active_timeout,
        inactive_timeout: cfg.inactive_timeout,
        correlation_timeout: cfg.correlation_timeout,
        max_flows: cfg.max_flows.div_ceil(shards),
        max_name_bytes: cfg.max_name_bytes.div_ceil(shards),
        max_label_bytes: cfg.max_label_bytes,
        cluster_id: cfg.cluster_id.clone(),
        hash_seed: crate::transport::backoff::Backoff::random_seed(),
    };
    let metadata = match &cfg.metadata_file {
        Some(path) => io_k8s::static_metadata::load(path)?.updates,
        None => Vec::new(),
    };

    // The whole shutdown (reading what agents sent, the flush, the sinks' last writes) fits
    // shutdownGracePeriod from the signal.
    let deadline = crate::signals::Deadline::default();
    {
        let (d, grace, stop) = (deadline.clone(), cfg.sinks.shutdown_grace, shutdown.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            d.start(grace);
        });
    }

    // Sinks, each on its own task or thread behind a queue bounded by records.
    let mut sinks: Vec<SinkSender> = Vec::new();
    let mut sink_tasks = Vec::new();
    if let Some(addr) = &cfg.external {
        let (tx, rx) = crate::sinks::queue("ipfix", cfg.sinks.queue_records, smetrics.clone());
        let mut sc =
            IpfixSinkConfig::new(TransportConfig::new(addr.clone(), addr.transport_or_tcp()));
        sc.replay = ReplayConfig {
            max_bytes: cfg.sinks.replay_bytes,
        };
        sc.drain_timeout = cfg.sinks.shutdown_grace;
        sc.deadline = deadline.clone();
        sink_tasks.push(crate::sinks::ipfix::spawn(
            sc,
            rx,
            emetrics.clone(),
            smetrics.clone(),
            replay_gauges.clone(),
        )?);
        sinks.push(tx);
    }
    if let Some((ch, max_rows)) = &cfg.sinks.clickhouse {
        let (tx, rx) = crate::sinks::queue("clickhouse", cfg.sinks.queue_records, smetrics.clone());
        let mut sc = crate::sinks::clickhouse::ClickHouseSinkConfig::new(ch.clone(), *max_rows);
        sc.drain_timeout = cfg.sinks.shutdown_grace;
        sc.deadline = deadline.clone();
        sink_tasks.push(crate::sinks::clickhouse::spawn(sc, rx, smetrics.clone()));
        sinks.push(tx);
    }
    let mut json_thread = None;
    if let Some(j) = &cfg.json_lines {
        let sink = JsonLinesSink::open(
            &j.path,
            Rotation {
                max_bytes: j.max_bytes,
                max_files: j.max_files,
            },
        )?;
        let (tx, rx) = crate::sinks::queue("json", cfg.sinks.queue_records, smetrics.clone());
        json_thread = Some(crate::sinks::jsonl::spawn(sink, rx, smetrics.clone()));
        sinks.push(tx);
    }

    // /api/flows answered by this task.
    let (query_tx, mut queries) = mpsc::channel::<FlowQuery>(16);
    let api = Router::new()
        .route("/api/flows", get(api_flows))
        .with_state(query_tx);
    let http =
        tokio::spawn(http.serve(ops.router().merge(api), shutdown.clone().cancelled_owned()));
    ops.set_ready(true);
    tracing::info!(listen = %cfg.listen_addr, transport = %cfg.transport, "aggregator running");

    let mut shard_tx = Vec::with_capacity(shards);
    let mut shard_threads = Vec::with_capacity(shards);
    for idx in 0..shards {
        let (tx, rx) = mpsc::channel::<Input>(SHARD_QUEUE);
        let mut core = Aggregator::new(core_cfg.clone());
        for u in &metadata {
            core.handle_metadata(now(), u.clone());
        }
        let (sinks, m, deadline) = (sinks.clone(), m.clone(), deadline.clone());
        let thread = std::thread::Builder::new()
            .name(format!("aggregator-core-{idx}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                    .expect("a current-thread runtime");
                rt.block_on(shard_loop(
                    core,
                    rx,
                    sinks,
                    m,
                    Shard { idx, of: shards },
                    deadline,
                ));
            })
            .context("spawning an aggregator core thread")?;
        shard_tx.push(tx);
        shard_threads.push(thread);
    }

    // Route: every shard sees every message and takes its own records; queries go to all.
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => {
                    cmetrics.queued_bytes.set(rx.queued_bytes() as i64);
                    let msg = Arc::new(msg);
                    for tx in &shard_tx {
                        // Waiting here is the back-pressure towards the agents.
                        if tx.send(Input::Message(msg.clone())).await.is_err() {
                            anyhow::bail!("an aggregator core thread stopped");
                        }
                    }
                }
                // The collecting process has shut down and handed on everything.
                None => break,
            },
            Some((filter, reply)) = queries.recv() => {
                let txs = shard_tx.clone();
                tokio::spawn(async move {
                    let limit = filter.limit.unwrap_or(1000);
                    let mut out = Vec::new();
                    for tx in txs {
                        let (r, answer) = oneshot::channel();
                        if tx.send(Input::Query(filter.clone(), r)).await.is_ok()
                            && let Ok(v) = answer.await
                        {
                            out.extend(v);
                        }
                    }
                    out.truncate(limit);
                    let _ = reply.send(out);
                });
            }
        }
    }
    // Each shard exports every flow in flight, hands it to the sinks and ends.
    let shutdown_started = std::time::Instant::now();
    let dropped_before = smetrics.dropped_total.get();
    drop(shard_tx);
    for t in shard_threads {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    // Every sink writes what it was handed before the process ends: closing the queues starts
    // their final flush.
    drop(sinks);
    if let Some(t) = json_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    for t in sink_tasks {
        let _ = t.await;
    }
    let _ = collector_task.await;
    let _ = http.await;
    let lost = smetrics.dropped_total.get() - dropped_before;
    if lost > 0 {
        tracing::error!(records = lost, took = ?shutdown_started.elapsed(), "shut down with aggregated records not delivered (see sink_dropped)");
        anyhow::bail!(
            "{lost} aggregated records were not delivered during shutdown; raise shutdownGracePeriod (and terminationGracePeriodSeconds) or check the sinks' peers"
        );
    }
    tracing::info!(took = ?shutdown_started.elapsed(), "every aggregated record delivered; stopped");
    Ok(())
}

/// Messages queued per core thread.
const SHARD_QUEUE: usize = 64;

/// What a core thread is handed.
enum Input {
    Message(Arc<DecodedMessage>),
    Query(FlowFilter, oneshot::Sender<Vec<Value>>),
}

/// Which records a core thread takes.
#[derive(Clone, Copy)]
struct Shard {
    idx: usize,
    of: usize,
}

impl Shard {
    /// Whether `rec`'s flow is this shard's: a hash of the flow key (addresses, ports,
    /// protocol, by value, so encodings of different lengths agree), the same for both Nodes'
    /// halves of a flow. A record without a key goes to shard 0, whose core counts it invalid.
    fn takes(&self, rec: &DataRecord<'_>) -> bool {
        if self.of == 1 {
            return true;
        }
        let mut h: u64 = 0x243f_6a88_85a3_08d3;
        let mut mix = |v: u64| h = (h ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        for f in rec.fields() {
            if f.spec.ie.pen != 0 {
                continue;
            }
            match (f.spec.ie.id, f.value()) {
                (8 | 12 | 27 | 28, FieldValue::Ipv4(a)) => mix(u64::from(u32::from(a))),
                (8 | 12 | 27 | 28, FieldValue::Ipv6(a)) => {
                    let v = u128::from(a);
                    mix(v as u64);
                    mix((v >> 64) as u64);
                }
                (4 | 7 | 11, v) => mix(v.as_u64().unwrap_or(0)),
                _ => {}
            }
        }
        (h >> 32) as usize % self.of == self.idx
    }
}

/// One core thread: its shard of the flows, timers, `/api/flows` for them, and its sinks'
/// batches. Ends when the router closes its queue, after exporting every flow in flight.
async fn shard_loop(
    mut core: Aggregator,
    mut rx: mpsc::Receiver<Input>,
    sinks: Vec<SinkSender>,
    m: AggMetrics,
    shard: Shard,
    deadline: crate::signals::Deadline,
) {
    let mut seen = Seen::default();
    loop {
        let sleep = crate::clock::sleep_until(core.poll_timeout());
        tokio::select! {
            input = rx.recv() => match input {
                Some(input) => {
                    let t = now();
                    handle(&mut core, t, input, shard);
                    // Whatever else is waiting, before the per-turn work (sinks, metrics).
                    for _ in 0..MAX_MESSAGES_PER_TURN {
                        let Ok(input) = rx.try_recv() else { break };
                        handle(&mut core, t, input, shard);
                    }
                }
                None => break,
            },
            _ = sleep => core.handle_timeout(now()),
        }
        emit(&mut core, &sinks, None).await;
        update_metrics(&core, &mut seen, &m);
    }
    // Shutdown: every flow in flight, a batch at a time, at the pace the sinks take them, until
    // the shutdown's deadline; what is left then is counted for every sink.
    let flows = core.len();
    let started = std::time::Instant::now();
    let until = deadline.get();
    loop {
        let more = core.flush_some(now(), crate::sinks::MAX_BATCH);
        if !emit(&mut core, &sinks, until).await {
            let mut left = core.len() as u64;
            while core.poll_record().is_some() {
                left += 1;
            }
            for s in &sinks {
                s.dropped_at_shutdown(left);
            }
            tracing::error!(
                shard = shard.idx,
                flows_left = left,
                "shutdownGracePeriod over before every flow in flight was handed to the sinks"
            );
            break;
        }
        if !more {
            break;
        }
    }
    update_metrics(&core, &mut seen, &m);
    tracing::info!(shard = shard.idx, flows, took = ?started.elapsed(), "flows in flight handed to the sinks");
}

fn handle(core: &mut Aggregator, t: flowcore::model::Timestamp, input: Input, shard: Shard) {
    match input {
        Input::Message(msg) => {
            let ex = msg.exporter();
            for rec in msg.records().filter(|r| shard.takes(r)) {
                let _ = core.handle_record(t, ex, &rec);
            }
        }
        Input::Query(filter, reply) => {
            let limit = filter.limit.unwrap_or(1000);
            let out = core
                .in_flight(t)
                .filter(|r| filter.matches(r))
                .take(limit)
                .map(|r| crate::sinks::record_json(&r))
                .collect();
            let _ = reply.send(out);
        }
    }
}

/// Messages taken from the collecting process per turn of the loop at most, so timers and
/// queries are not starved under load.
const MAX_MESSAGES_PER_TURN: usize = 16;

/// Hands what the core produced to every sink, in shared batches of at most
/// [`crate::sinks::MAX_BATCH`] records (dropped by the sinks, off this thread), waiting while a
/// sink's queue is full — until `until`, if given: then the batch is counted dropped by the sinks
/// that did not take it, and `false` returned. Without sinks the records are dropped here.
async fn emit(
    core: &mut Aggregator,
    sinks: &[SinkSender],
    until: Option<tokio::time::Instant>,
) -> bool {
    loop {
        let mut out = Vec::new();
        while out.len() < crate::sinks::MAX_BATCH
            && let Some(r) = core.poll_record()
        {
            out.push(r);
        }
        if out.is_empty() {
            return true;
        }
        if sinks.is_empty() {
            continue;
        }
        let batch: Batch = Arc::new(out);
        for (i, s) in sinks.iter().enumerate() {
            match until {
                None => s.push(&batch).await,
                Some(t) => {
                    if tokio::time::timeout_at(t, s.push(&batch)).await.is_err() {
                        // This sink and the ones after it never got the batch.
                        for s in &sinks[i..] {
                            s.dropped_at_shutdown(batch.len() as u64);
                        }
                        return false;
                    }
                }
            }
        }
    }
}

/// What a core thread last reported to the metrics (each adds its own changes).
#[derive(Default)]
struct Seen {
    stats: flowcore::aggregator::AggregatorStats,
    exporters: std::collections::HashMap<
        flowcore::aggregator::ExporterId,
        flowcore::aggregator::ExporterCounters,
    >,
}

fn update_metrics(core: &Aggregator, seen: &mut Seen, m: &AggMetrics) {
    let s = core.stats();
    // Per exporter only when something was refused or evicted (walking every exporter each turn
    // would cost as much as the turn).
    if s.names_too_long
        + s.names_over_budget
        + s.tcp_states_invalid
        + s.evicted
        + s.evicted_for_names
        != seen.stats.names_too_long
            + seen.stats.names_over_budget
            + seen.stats.tcp_states_invalid
            + seen.stats.evicted
            + seen.stats.evicted_for_names
    {
        for (id, c) in core.exporters() {
            let was = seen.exporters.entry(id).or_default();
            let label = || vec![("exporter".to_string(), format!("{}/{}", id.addr, id.domain))];
            if c.names_refused > was.names_refused {
                m.exporter_refused
                    .get_or_create(&label())
                    .inc_by(c.names_refused - was.names_refused);
            }
            if c.flows_evicted > was.flows_evicted {
                m.exporter_evicted
                    .get_or_create(&label())
                    .inc_by(c.flows_evicted - was.flows_evicted);
            }
            *was = *c;
        }
    }
    let seen = &mut seen.stats;
    let d = |a: u64, b: u64| a.saturating_sub(b);
    m.records_in.inc_by(d(s.records_in, seen.records_in));
    m.records_out.inc_by(d(s.records_out, seen.records_out));
    m.correlated.inc_by(d(s.correlated, seen.correlated));
    m.uncorrelated.inc_by(d(s.uncorrelated, seen.uncorrelated));
    for (reason, now_v, was) in [
        ("stale", s.records_stale, seen.records_stale),
        ("duplicate", s.records_duplicate, seen.records_duplicate),
        ("invalid", s.records_invalid, seen.records_invalid),
        ("evicted", s.evicted, seen.evicted),
        ("evicted_names", s.evicted_for_names, seen.evicted_for_names),
    ] {
        if now_v > was {
            m.dropped
                .get_or_create(&vec![("reason".into(), reason.into())])
                .inc_by(now_v - was);
        }
    }
    for (reason, now_v, was) in [
        ("too_long", s.names_too_long, seen.names_too_long),
        ("over_budget", s.names_over_budget, seen.names_over_budget),
        ("tcp_state", s.tcp_states_invalid, seen.tcp_states_invalid),
    ] {
        if now_v > was {
            m.names_refused
                .get_or_create(&vec![("reason".into(), reason.into())])
                .inc_by(now_v - was);
        }
    }
    // Each shard adds its own change (several shards share the gauges).
    m.in_flight
        .inc_by(s.flows_in_flight as i64 - seen.flows_in_flight as i64);
    m.names.inc_by(s.names as i64 - seen.names as i64);
    m.name_bytes
        .inc_by(s.name_bytes as i64 - seen.name_bytes as i64);
    *seen = s.clone();
}

async fn api_flows(
    State(tx): State<mpsc::Sender<FlowQuery>>,
    filter: Result<Query<FlowFilter>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let bad = |msg: String| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": msg })),
        )
            .into_response()
    };
    let filter = match filter {
        Ok(Query(f)) => f,
        Err(e) => return bad(format!("malformed query string: {}", e.body_text())),
    };
    if let Some(n) = filter.limit
        && !(1..=MAX_API_FLOWS).contains(&n)
    {
        return bad(format!(
            "bad parameter `limit`: expected an integer from 1 to {MAX_API_FLOWS}, got `{n}`"
        ));
    }
    let (reply, rx) = oneshot::channel();
    if tx.send((filter, reply)).await.is_err() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "aggregator shutting down",
        )
            .into_response();
    }
    match rx.await {
        Ok(v) => axum::Json(v).into_response(),
        Err(_) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "aggregator shutting down",
        )
            .into_response(),
    }
}
