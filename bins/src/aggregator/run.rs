//! The aggregator's main loop. The core (`flowcore::aggregator::Aggregator`) lives in this task
//! alone; the collecting process's session tasks decode and hand whole messages over a bounded
//! channel (TCP back-pressure when it is full), sinks run behind bounded queues whose overflow is
//! counted, and HTTP queries of in-flight flows are answered by this task through a request
//! channel so no lock is ever taken on the hot path.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use flowcore::aggregator::{AggregatedRecord, Aggregator, AggregatorConfig as CoreConfig};
use flowcore::ipfix::{Encoder, EncoderConfig, Layout};
use flowcore::model::Timestamp;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::now;
use crate::config::aggregator::AggregatorConfig;
use crate::ops::Ops;
use crate::sinks::jsonl::{JsonLinesSink, Rotation};
use crate::transport::collector::{Collector, CollectorConfig};
use crate::transport::exporter::{Exporter, ExporterConfig as TransportConfig, SessionTracker};
use crate::transport::metrics::{CollectorMetrics, ExporterMetrics};
use crate::transport::{Transport, tls};

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
    sink_drops: prometheus_client::metrics::family::Family<Vec<(String, String)>, Counter>,
}

/// Runs until `shutdown`, then exports every flow in flight (reason 4) and flushes the sinks.
pub async fn run(
    cfg: AggregatorConfig,
    ops: Arc<Ops>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let m = AggMetrics {
        records_in: Counter::default(),
        records_out: Counter::default(),
        correlated: Counter::default(),
        uncorrelated: Counter::default(),
        dropped: Default::default(),
        in_flight: Gauge::default(),
        sink_drops: Default::default(),
    };
    let cmetrics = CollectorMetrics::default();
    let emetrics = ExporterMetrics::default();
    ops.register(|r| {
        r.register("records_in", "Agent records received", m.records_in.clone());
        r.register("records_out", "Aggregated records produced", m.records_out.clone());
        r.register("correlated", "Inter-Node flows whose two halves met", m.correlated.clone());
        r.register("uncorrelated", "Inter-Node flows exported without their partner after the correlation timeout", m.uncorrelated.clone());
        r.register("records_dropped", "Records not aggregated, by reason (stale, duplicate, invalid) and flows evicted (store full)", m.dropped.clone());
        r.register("flows_in_flight", "Flows held in memory", m.in_flight.clone());
        r.register("sink_dropped", "Aggregated records a sink could not take (queue full), by sink", m.sink_drops.clone());
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
    let mut ccfg = CollectorConfig::default();
    match cfg.transport {
        Transport::Tcp => ccfg.tcp = Some(cfg.listen_addr),
        Transport::Udp => ccfg.udp = Some(cfg.listen_addr),
        Transport::Tls => {
            ccfg.tls = Some(cfg.listen_addr);
            ccfg.tls_config = tls_cfg;
        }
    }
    let (tx, mut rx) = crate::transport::collector::channel(1024);
    let collector = Collector::bind(ccfg, cmetrics.clone(), tx).await?;
    let collector_task = tokio::spawn(collector.run(shutdown.clone()));

    let mut core = Aggregator::new(CoreConfig {
        active_timeout: cfg.active_timeout,
        inactive_timeout: cfg.inactive_timeout,
        correlation_timeout: cfg.correlation_timeout,
        max_flows: cfg.max_flows,
        cluster_id: cfg.cluster_id.clone(),
        hash_seed: crate::transport::backoff::Backoff::random_seed(),
    });
    if let Some(path) = &cfg.metadata_file {
        let md = io_k8s::static_metadata::load(path)?;
        for u in md.updates {
            core.handle_metadata(now(), u);
        }
    }

    // Sinks.
    let export_stop = CancellationToken::new();
    let mut export_task = None;
    let mut ipfix = match &cfg.external {
        Some(addr) => {
            let mut enc = Encoder::new(EncoderConfig::stream(1))?;
            for l in [Layout::AggregatedV4, Layout::AggregatedV6] {
                enc.add_template(l.template_id(), l.fields())?;
            }
            let t = TransportConfig::new(addr.clone(), addr.transport_or_tcp());
            // Its own stop token, cancelled only after the final flush was handed over: the
            // shutdown token would close its queue before the flush.
            let (ex, mut outcomes, task) =
                Exporter::spawn(t, emetrics.clone(), export_stop.clone());
            export_task = Some(task);
            // Outcomes are counted by the transport's metrics; drain them.
            tokio::spawn(async move { while outcomes.recv().await.is_some() {} });
            let tracker = ex.tracker();
            Some((enc, ex, tracker))
        }
        None => None,
    };
    let mut json_thread = None;
    let json = match &cfg.json_lines {
        Some(j) => {
            let sink = JsonLinesSink::open(
                &j.path,
                Rotation {
                    max_bytes: j.max_bytes,
                    max_files: j.max_files,
                },
            )?;
            let (tx, thread) = spawn_json_sink(sink);
            json_thread = Some(thread);
            Some(tx)
        }
        None => None,
    };

    // /api/flows answered by this task.
    let (query_tx, mut queries) = mpsc::channel::<FlowQuery>(16);
    let api = Router::new()
        .route("/api/flows", get(api_flows))
        .with_state(query_tx);
    let http = tokio::spawn(crate::ops::serve(
        cfg.metrics_addr,
        ops.router().merge(api),
        shutdown.clone().cancelled_owned(),
    ));
    ops.set_ready(true);
    tracing::info!(listen = %cfg.listen_addr, transport = %cfg.transport, "aggregator running");

    let mut seen = flowcore::aggregator::AggregatorStats::default();
    loop {
        let sleep = crate::clock::sleep_until(core.poll_timeout());
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => {
                    let t = now();
                    let ex = msg.exporter();
                    for rec in msg.records() {
                        let _ = core.handle_record(t, ex, &rec);
                    }
                }
                // The collecting process has shut down and handed on everything.
                None => break,
            },
            _ = sleep => core.handle_timeout(now()),
            Some((filter, reply)) = queries.recv() => {
                let limit = filter.limit.unwrap_or(1000);
                let out = core.in_flight(now()).filter(|r| filter.matches(r)).take(limit).map(|r| crate::sinks::record_json(&r)).collect();
                let _ = reply.send(out);
            }
        }
        emit(&mut core, now(), &mut ipfix, json.as_ref(), &m);
        update_metrics(&core, &mut seen, &m);
    }
    core.flush_all(now());
    emit(&mut core, now(), &mut ipfix, json.as_ref(), &m);
    update_metrics(&core, &mut seen, &m);
    // Every sink writes what it was handed before the process ends.
    drop(json);
    if let Some(t) = json_thread {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    export_stop.cancel();
    if let Some(t) = export_task {
        let _ = t.await;
    }
    let _ = collector_task.await;
    let _ = http.await;
    Ok(())
}

/// Sends what the core produced to every sink.
fn emit(
    core: &mut Aggregator,
    t: Timestamp,
    ipfix: &mut Option<(Encoder, Exporter, SessionTracker)>,
    json: Option<&mpsc::Sender<AggregatedRecord>>,
    m: &AggMetrics,
) {
    let ipfix_drop = || {
        m.sink_drops
            .get_or_create(&vec![("sink".into(), "ipfix".into())])
            .inc();
    };
    // The session first: a new one must get templates before any record written from now on
    // (the encoder holds nothing between calls, since every call flushes and sends).
    let session = ipfix
        .as_mut()
        .and_then(|(enc, _, tracker)| tracker.sync(enc, |_| ipfix_drop()));
    let mut wrote = false;
    while let Some(r) = core.poll_record() {
        if let Some(j) = json
            && j.try_send(r.clone()).is_err()
        {
            m.sink_drops
                .get_or_create(&vec![("sink".into(), "json".into())])
                .inc();
        }
        if let Some((enc, _, _)) = ipfix.as_mut() {
            let _ = r.write_ipfix(enc, t);
            wrote = true;
        }
    }
    if let Some((enc, ex, _)) = ipfix.as_mut() {
        if wrote {
            enc.flush(t);
        }
        // Without a session the downstream collector is unreachable; records are dropped and
        // counted (the aggregator keeps no replay buffer for its own exports).
        while let Some(msg) = enc.poll_transmit() {
            if session.is_none_or(|s| ex.try_send(s, 0, msg).is_err()) {
                ipfix_drop();
            }
        }
    }
}

fn update_metrics(
    core: &Aggregator,
    seen: &mut flowcore::aggregator::AggregatorStats,
    m: &AggMetrics,
) {
    let s = core.stats();
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
    ] {
        if now_v > was {
            m.dropped
                .get_or_create(&vec![("reason".into(), reason.into())])
                .inc_by(now_v - was);
        }
    }
    m.in_flight.set(s.flows_in_flight as i64);
    *seen = s.clone();
}

/// The JSON lines sink on its own thread (file IO), behind a bounded queue.
fn spawn_json_sink(
    mut sink: JsonLinesSink,
) -> (mpsc::Sender<AggregatedRecord>, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<AggregatedRecord>(65536);
    let thread = std::thread::Builder::new()
        .name("json-sink".into())
        .spawn(move || {
            while let Some(r) = rx.blocking_recv() {
                if let Err(e) = sink.write(&r) {
                    tracing::error!(error = %e, "JSON lines sink write failed");
                }
                if rx.is_empty() {
                    let _ = sink.flush();
                }
            }
            let _ = sink.flush();
        })
        .expect("spawning a thread");
    (tx, thread)
}

async fn api_flows(
    State(tx): State<mpsc::Sender<FlowQuery>>,
    Query(filter): Query<FlowFilter>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
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
