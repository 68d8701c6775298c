//! `flowlens collector --config FILE`: aggregated IPFIX in (TCP, UDP or TLS, through the same
//! collecting process as the aggregator), stored in the embedded SQLite store or in ClickHouse
//! (`store: clickhouse`), served by the HTTP API and the web UI on one port. With `ingest: false`
//! there is no IPFIX listener: the collector serves a store others write (the aggregator's
//! ClickHouse exporter).
//!
//! Ingest goes through `collector::ingest` (one writer thread, large transactions, a bounded
//! queue that pushes back on the aggregator's TCP connection rather than buffering).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context;
use flowcore::aggregator::{AggregatedRecord, Interner};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::collector::clickhouse::ClickHouseStore;
use crate::collector::ingest::{Ingest, IngestConfig};
use crate::collector::{QueryMetrics, RetentionMetrics, SqliteConfig, SqliteStore, Store};
use crate::config::collector::{CollectorConfig, StoreBackend, StoreChoice};
use crate::ops::{HttpServer, Ops};
use crate::transport::collector::Collector;
use crate::transport::metrics::CollectorMetrics;
use crate::transport::{Transport, tls};

/// Bytes of names the ingest loop keeps to share between records (text and overhead).
const NAME_CACHE_BYTES: usize = 16 << 20;

/// Arguments of `flowlens collector`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example config: deploy/base/collector/flowlens-collector.conf.yaml\nThe UI and API are served on httpAddr (default 0.0.0.0:8080)."
)]
pub struct CollectorArgs {
    /// YAML config file (listenAddr, transport, dataDir, retention, httpAddr, store,
    /// clickhouse, ingest, http, query, …).
    #[arg(long)]
    pub config: PathBuf,
}

/// A running collector.
pub struct Running {
    /// Where IPFIX is received; only meaningful when `ipfix_listening`.
    pub ipfix_addr: SocketAddr,
    /// False in query-only mode (`ingest: false`).
    pub ipfix_listening: bool,
    pub http_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Starts the collector's listeners, store and HTTP server; they stop when `shutdown` is
/// cancelled (the returned task ends once ingest has stored everything it received). Embedded
/// SQLite store, IPFIX ingest on.
pub async fn start(
    cfg: CollectorConfig,
    ops: Arc<Ops>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    start_with(cfg, StoreChoice::default(), ops, shutdown).await
}

/// [`start`] with the store settings of the config file: SQLite or ClickHouse, with or without
/// IPFIX ingest.
pub async fn start_with(
    cfg: CollectorConfig,
    choice: StoreChoice,
    ops: Arc<Ops>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    // Bound first: a port in use fails start-up naming httpAddr before anything else starts.
    let server = HttpServer::bind("httpAddr", cfg.http_addr, cfg.http, &ops).await?;
    let mut ingest_cfg = IngestConfig {
        queue_bytes: cfg.ingest_queue_bytes,
        ..IngestConfig::default()
    };
    let store: Arc<dyn Store> = match &choice.backend {
        StoreBackend::Sqlite => Arc::new(
            SqliteStore::open(SqliteConfig {
                dir: cfg.data_dir.clone(),
                max_age: Some(cfg.retention),
                max_bytes: Some(cfg.max_store_bytes),
                query: cfg.query,
            })
            .with_context(|| format!("dataDir {}: opening the store", cfg.data_dir.display()))?,
        ),
        StoreBackend::ClickHouse(ch) => {
            // ClickHouse wants few large INSERTs (each makes a part to merge).
            ingest_cfg = IngestConfig {
                max_batch: ch.batch_rows,
                max_delay: ch.flush_interval.into(),
                queue_records: ingest_cfg.queue_records.max(2 * ch.batch_rows),
                queue_bytes: cfg.ingest_queue_bytes,
            };
            let ch = (**ch).clone();
            let url = ch.url.clone();
            let limits = cfg.query;
            Arc::new(
                tokio::task::spawn_blocking(move || ClickHouseStore::open_with(ch, limits))
                    .await?
                    .with_context(|| format!("opening the ClickHouse store at {url}"))?,
            )
        }
    };
    let rmetrics = RetentionMetrics::default();
    let retention =
        crate::collector::spawn_retention(store.clone(), Duration::from_secs(60), rmetrics.clone());
    let release = crate::collector::spawn_release(store.clone());
    let cmetrics = CollectorMetrics::default();
    let stored = Counter::<u64>::default();
    let store_errors = Counter::<u64>::default();
    let records_invalid = Counter::<u64>::default();
    let ingest_queued = Gauge::<i64>::default();
    let qmetrics = QueryMetrics::default();
    ops.register(|r| {
        qmetrics.register(r);
        rmetrics.register(r);
        cmetrics.register(r, "ipfix_collect");
        r.register(
            "records_stored",
            "Aggregated records written to the store",
            stored.clone(),
        );
        r.register(
            "store_errors",
            "Batches the store failed to write (logged)",
            store_errors.clone(),
        );
        r.register(
            "records_invalid",
            "Data records received that are not flow records (no 5-tuple); not stored",
            records_invalid.clone(),
        );
        r.register(
            "ingest_queued_bytes",
            "Bytes of received records not yet written to the store (bounded by ingestQueueBytes; at the bound, reading the IPFIX sessions waits)",
            ingest_queued.clone(),
        );
    });
    let (ipfix_addr, collector_task, mut rx) = if choice.ingest {
        let mut lc = cfg.collecting.listener();
        match cfg.transport {
            Transport::Tcp => lc.tcp = Some(cfg.listen_addr),
            Transport::Udp => lc.udp = Some(cfg.listen_addr),
            Transport::Tls => {
                // Loaded here first so an error names its key (tls.caCert, tls.cert, tls.key).
                cfg.tls.check()?;
                let files = cfg.tls.transport();
                lc.tls = Some(cfg.listen_addr);
                lc.tls_config = Some(tls::watch_server_config(
                    files,
                    Duration::from_secs(30),
                    shutdown.clone(),
                )?);
            }
        }
        let (queue, rx) = crate::transport::collector::queue(&lc.limits);
        let collector = Collector::bind(lc, cmetrics.clone(), queue)
            .await
            .with_context(|| format!("listenAddr {}", cfg.listen_addr))?;
        let ipfix_addr = collector
            .tcp_addr()
            .or(collector.udp_addr())
            .or(collector.tls_addr())
            .unwrap_or(cfg.listen_addr);
        (
            ipfix_addr,
            Some(tokio::spawn(collector.run(shutdown.clone()))),
            Some(rx),
        )
    } else {
        (cfg.listen_addr, None, None)
    };

    let http_addr = server.local_addr()?;
    let app = crate::collector::router_with(store.clone(), cfg.query, qmetrics)
        .merge(crate::collector::ui::ui_router())
        .merge(ops.metrics_router());
    let shutdown_q = shutdown.clone();
    let http = tokio::spawn(server.serve(app, shutdown.clone().cancelled_owned()));
    ops.set_ready(true);

    // The store writer coalesces what arrives into large transactions on its own thread; a
    // full queue makes `send` wait, which stops this loop reading, which pushes back on the
    // aggregator's TCP connection.
    let ingest = match rx {
        Some(_) => {
            Some(Ingest::spawn(store.clone(), ingest_cfg).context("starting the store writer")?)
        }
        None => None,
    };
    let task = tokio::spawn(async move {
        if let (Some(ingest), Some(rx)) = (ingest, rx.as_mut()) {
            let istats = ingest.stats().clone();
            let mut names = Interner::default();
            let mut seen = (0u64, 0u64);
            // The writer's counters reach the metrics each message, and each second while no
            // message comes (the last batch of a burst is written after its message).
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let report = |seen: &mut (u64, u64)| {
                let (ok, failed) = (
                    istats.records_stored.load(Relaxed),
                    istats.records_failed.load(Relaxed),
                );
                stored.inc_by(ok - seen.0);
                store_errors.inc_by(failed - seen.1);
                *seen = (ok, failed);
            };
            loop {
                let m = tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                    _ = tick.tick() => {
                        report(&mut seen);
                        continue;
                    }
                };
                cmetrics.queued_bytes.set(rx.queued_bytes() as i64);
                let names_before = names.bytes();
                let batch: Vec<AggregatedRecord> = m
                    .records()
                    .filter_map(|rec| AggregatedRecord::from_ipfix(&rec, &mut names).ok())
                    .collect();
                // A data record that is not a flow record (no 5-tuple): counted, never stored.
                let invalid = m.len() - batch.len();
                if invalid > 0 {
                    records_invalid.inc_by(invalid as u64);
                    crate::rate_limited!(warn, peer = %m.peer, records = invalid, "data records without a 5-tuple; not stored");
                }
                // What this batch added to the names: the queue charges it (a name seen before
                // is shared, not copied).
                let new_names = names.bytes().saturating_sub(names_before);
                // The names are only a cache that lets a batch's records share their text; a
                // flood of distinct names starts it over instead of growing it.
                if names.bytes() > NAME_CACHE_BYTES {
                    names = Interner::default();
                }
                // The exporter is the session's peer address, which the peer cannot choose
                // (unlike the records' originalExporter fields); port-free, so one exporter
                // stays one exporter across reconnects.
                if ingest
                    .send_sized(Some(m.peer.ip().to_canonical()), batch, new_names)
                    .await
                    .is_err()
                {
                    tracing::error!("the store writer stopped; records are no longer stored");
                    break;
                }
                report(&mut seen);
            }
            // Everything received is written before the collector reports done.
            tokio::task::spawn_blocking(move || ingest.close()).await?;
            stored.inc_by(istats.records_stored.load(Relaxed) - seen.0);
        } else {
            shutdown_q.cancelled().await;
        }
        if let Some(t) = collector_task {
            let _ = t.await;
        }
        if let Ok(Err(e)) = http.await {
            tracing::warn!(error = %format!("{e:#}"), "HTTP server stopped with an error");
        }
        retention.abort();
        release.abort();
        Ok(())
    });
    Ok(Running {
        ipfix_addr,
        ipfix_listening: choice.ingest,
        http_addr,
        store,
        task,
    })
}

pub fn run(args: CollectorArgs) -> anyhow::Result<()> {
    let file: crate::config::collector::CollectorFile = crate::config::load_yaml(&args.config)?;
    let (cfg, choice) = file
        .validate_with_store()
        .with_context(|| format!("in config file {}", args.config.display()))?;
    let log = cfg.log.clone();
    crate::signals::run_service(
        "flowlens_collector",
        &log,
        cfg,
        |cfg, ops, shutdown| async move {
            let r = start_with(cfg, choice, ops, shutdown.clone()).await?;
            if r.ipfix_listening {
                tracing::info!(ipfix = %r.ipfix_addr, http = %r.http_addr, "collector running");
            } else {
                tracing::info!(http = %r.http_addr, "collector running (query only, no IPFIX)");
            }
            shutdown.cancelled().await;
            r.task.await?
        },
    )
}
