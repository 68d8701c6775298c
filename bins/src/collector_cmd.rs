//! `flowlens collector --config FILE`: aggregated IPFIX in (TCP, UDP or TLS, through the same
//! collecting process as the aggregator), stored in the embedded SQLite store, served by the HTTP
//! API and the web UI on one port.
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
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::collector::ingest::{Ingest, IngestConfig};
use crate::collector::{SqliteConfig, SqliteStore, Store};
use crate::config::collector::CollectorConfig;
use crate::ops::Ops;
use crate::transport::collector::{Collector, CollectorConfig as ListenConfig};
use crate::transport::metrics::CollectorMetrics;
use crate::transport::{Transport, tls};

/// Arguments of `flowlens collector`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example config: deploy/base/collector/flowlens-collector.conf.yaml\nThe UI and API are served on httpAddr (default 0.0.0.0:8080)."
)]
pub struct CollectorArgs {
    /// YAML config file (listenAddr, transport, dataDir, retention, httpAddr, …).
    #[arg(long)]
    pub config: PathBuf,
}

/// A running collector.
pub struct Running {
    pub ipfix_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// Starts the collector's listeners, store and HTTP server; they stop when `shutdown` is
/// cancelled (the returned task ends once ingest has stored everything it received).
pub async fn start(
    cfg: CollectorConfig,
    ops: Arc<Ops>,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(SqliteConfig {
            dir: cfg.data_dir.clone(),
            max_age: Some(cfg.retention),
            max_bytes: Some(cfg.max_store_bytes),
        })
        .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?,
    );
    let retention = crate::collector::spawn_retention(store.clone(), Duration::from_secs(60));
    let cmetrics = CollectorMetrics::default();
    let stored = Counter::<u64>::default();
    let store_errors = Counter::<u64>::default();
    ops.register(|r| {
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
    });
    let mut lc = ListenConfig::default();
    match cfg.transport {
        Transport::Tcp => lc.tcp = Some(cfg.listen_addr),
        Transport::Udp => lc.udp = Some(cfg.listen_addr),
        Transport::Tls => {
            let files = cfg.tls.transport();
            lc.tls = Some(cfg.listen_addr);
            lc.tls_config = Some(tls::watch_server_config(
                files,
                Duration::from_secs(30),
                shutdown.clone(),
            )?);
        }
    }
    let (tx, mut rx) = crate::transport::collector::channel(256);
    let collector = Collector::bind(lc, cmetrics, tx).await?;
    let ipfix_addr = collector
        .tcp_addr()
        .or(collector.udp_addr())
        .or(collector.tls_addr())
        .unwrap_or(cfg.listen_addr);
    let collector_task = tokio::spawn(collector.run(shutdown.clone()));

    let listener = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("binding the HTTP API on {}", cfg.http_addr))?;
    let http_addr = listener.local_addr()?;
    let app = crate::collector::router(store.clone())
        .merge(crate::collector::ui::ui_router())
        .merge(ops.metrics_router());
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
    });
    ops.set_ready(true);

    // The store writer coalesces what arrives into large transactions on its own thread; a
    // full queue makes `send` wait, which stops this loop reading, which pushes back on the
    // aggregator's TCP connection.
    let ingest = Ingest::spawn(store.clone(), IngestConfig::default())
        .context("starting the store writer")?;
    let istats = ingest.stats().clone();
    let task = tokio::spawn(async move {
        let mut names = Interner::default();
        let mut seen = (0u64, 0u64);
        while let Some(m) = rx.recv().await {
            let batch: Vec<AggregatedRecord> = m
                .records()
                .filter_map(|rec| AggregatedRecord::from_ipfix(&rec, &mut names).ok())
                .collect();
            if ingest.send(batch).await.is_err() {
                tracing::error!("the store writer stopped; records are no longer stored");
                break;
            }
            let (ok, failed) = (
                istats.records_stored.load(Relaxed),
                istats.records_failed.load(Relaxed),
            );
            stored.inc_by(ok - seen.0);
            store_errors.inc_by(failed - seen.1);
            seen = (ok, failed);
        }
        // Everything received is written before the collector reports done.
        tokio::task::spawn_blocking(move || ingest.close()).await?;
        stored.inc_by(istats.records_stored.load(Relaxed) - seen.0);
        let _ = collector_task.await;
        let _ = http.await;
        retention.abort();
        Ok(())
    });
    Ok(Running {
        ipfix_addr,
        http_addr,
        store,
        task,
    })
}

pub fn run(args: CollectorArgs) -> anyhow::Result<()> {
    let file: crate::config::collector::CollectorFile = crate::config::load_yaml(&args.config)?;
    let cfg = file
        .validate()
        .with_context(|| format!("in config file {}", args.config.display()))?;
    let log = cfg.log.clone();
    crate::signals::run_service(
        "flowlens_collector",
        &log,
        cfg,
        |cfg, ops, shutdown| async move {
            let r = start(cfg, ops, shutdown.clone()).await?;
            tracing::info!(ipfix = %r.ipfix_addr, http = %r.http_addr, "collector running");
            shutdown.cancelled().await;
            r.task.await?
        },
    )
}
