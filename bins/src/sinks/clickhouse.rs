//! Aggregated records into ClickHouse (`clickhouse:` in the aggregator's config), on a task of
//! its own, through [`ClickHouseClient`] (schema ensured on connect, RowBinary over HTTP).
//!
//! - **Batches**: rows collect until `batchRows` are waiting or the oldest has waited
//!   `flushInterval`, then go out as one INSERT (ClickHouse wants few, large inserts).
//! - **Server down**: connecting and inserting are retried with exponential backoff and jitter;
//!   a failed INSERT is retried with the same encoded rows (same ids), and rows keep collecting
//!   meanwhile, up to `clickhouseBufferRows` held (waiting plus being inserted). Past it the
//!   oldest waiting rows are dropped and counted (`sink_dropped{sink="clickhouse",
//!   reason="buffer_full"}`); a row the server rejects as such never happens (the rows are typed),
//!   so nothing else is dropped while the sink runs.
//! - **Server up but slower than the core**: the sink stops taking batches while it holds a batch
//!   short of `clickhouseBufferRows`, so its queue fills and the core waits; nothing is dropped
//!   for a slow server, only for an absent one.
//! - **Shutdown**: when the core loop closes the queue (after its final flush), everything held is
//!   inserted, retrying until the shutdown's deadline (or `drain_timeout`); what is left then is counted
//!   (`reason="shutdown"`).
//! - **Metrics**: `sink_records_out`, `sink_batches` (INSERTs), `sink_errors` (failed connects
//!   and INSERTs), `sink_dropped`, all labelled `sink="clickhouse"`; `sink_queued_records` with
//!   `sink="clickhouse"` (the input queue) and `sink="clickhouse_held"` (rows held for a batch or
//!   a retry).

use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Pending, SinkMetrics, SinkReceiver};
use crate::clickhouse::{ClickHouseClient, ClickHouseConfig};
use crate::transport::backoff::{Backoff, BackoffConfig};

const SINK: &str = "clickhouse";

/// How the sink writes.
#[derive(Clone, Debug)]
pub struct ClickHouseSinkConfig {
    pub client: ClickHouseConfig,
    /// Rows held at most (waiting for a batch or a retry, and being inserted).
    pub max_rows: usize,
    pub backoff: BackoffConfig,
    /// How long shutdown may spend inserting what is held, when `deadline` was not started.
    pub drain_timeout: Duration,
    /// The shutdown's deadline.
    pub deadline: crate::signals::Deadline,
}

impl ClickHouseSinkConfig {
    pub fn new(client: ClickHouseConfig, max_rows: usize) -> Self {
        ClickHouseSinkConfig {
            client,
            max_rows,
            backoff: BackoffConfig {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
            },
            drain_timeout: Duration::from_secs(10),
            deadline: Default::default(),
        }
    }
}

/// Starts the sink; it ends after `rx` closes and the drain is done.
pub fn spawn(cfg: ClickHouseSinkConfig, rx: SinkReceiver, metrics: SinkMetrics) -> JoinHandle<()> {
    tokio::spawn(run(cfg, rx, metrics))
}

/// Rows taken from the front of the waiting rows, encoded, until the server took them.
struct Attempt {
    chunks: Vec<Bytes>,
    rows: usize,
}

async fn run(cfg: ClickHouseSinkConfig, mut rx: SinkReceiver, metrics: SinkMetrics) {
    let batch_rows = cfg.client.batch_rows.max(1);
    let interval: Duration = cfg.client.flush_interval.into();
    let mut backoff = Backoff::new(cfg.backoff, Backoff::random_seed());
    let mut client: Option<ClickHouseClient> = None;
    let mut pending = Pending::default();
    let mut attempt: Option<Attempt> = None;
    // When the oldest waiting row arrived (flush by interval), and no attempt before `retry_at`.
    let mut oldest: Option<Instant> = None;
    let mut retry_at = Instant::now();
    // Set once the queue closed: the drain's deadline.
    let mut deadline: Option<Instant> = None;
    let gauge = metrics
        .queued
        .get_or_create(&super::SinkLabels {
            sink: "clickhouse_held",
        })
        .clone();
    loop {
        let now = Instant::now();
        let held = pending.len() + attempt.as_ref().map_or(0, |a| a.rows);
        gauge.set(held as i64);
        let due = attempt.is_some()
            || pending.len() >= batch_rows
            || oldest.is_some_and(|t| now >= t + interval)
            || (deadline.is_some() && !pending.is_empty());
        if deadline.is_some() && held == 0 {
            break;
        }
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        // Connect at once (schema problems show at start), and again after a failure.
        if (due || client.is_none()) && now >= retry_at {
            let limit = deadline.unwrap_or(now + Duration::from_secs(86_400));
            if client.is_none() {
                match tokio::time::timeout_at(limit, ClickHouseClient::connect(cfg.client.clone()))
                    .await
                {
                    Ok(Ok(c)) => {
                        tracing::info!(url = %cfg.client.url, version = c.server_version(), table = %c.table(), "connected to ClickHouse");
                        client = Some(c);
                    }
                    Ok(Err(e)) => {
                        metrics.error(SINK);
                        retry_at = Instant::now() + backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?(retry_at - Instant::now()), held, "cannot connect to ClickHouse; holding the records");
                        continue;
                    }
                    Err(_) => break,
                }
            }
            if !due {
                continue;
            }
            let c = client.as_ref().expect("connected above");
            let a = attempt.get_or_insert_with(|| {
                let inserted_at = crate::clock::now().as_secs();
                let mut chunks = Vec::new();
                let mut rows = 0;
                for s in pending.front(batch_rows) {
                    chunks.extend(c.encode(s, inserted_at));
                    rows += s.len();
                }
                pending.consume(rows);
                Attempt { chunks, rows }
            });
            match tokio::time::timeout_at(limit, c.insert_encoded(a.chunks.clone())).await {
                Ok(Ok(())) => {
                    metrics.out(SINK, a.rows as u64);
                    attempt = None;
                    backoff.reset();
                    oldest = (!pending.is_empty()).then(Instant::now);
                }
                Ok(Err(e)) => {
                    metrics.error(SINK);
                    retry_at = Instant::now() + backoff.next_delay();
                    tracing::warn!(error = %e, rows = a.rows, retry_in = ?(retry_at - Instant::now()), "ClickHouse INSERT failed; retrying");
                }
                Err(_) => break,
            }
            continue;
        }
        // Wait for rows, the batch interval, or the retry time.
        let wake = if due || client.is_none() {
            Some(retry_at)
        } else {
            oldest.map(|t| t + interval)
        };
        let wake = match (wake, deadline) {
            (Some(w), Some(d)) => Some(w.min(d)),
            (w, d) => w.or(d),
        };
        // Healthy (connected, no failed INSERT waiting): take rows only while there is room.
        let away = client.is_none() || now < retry_at;
        let accepting = away || held + batch_rows <= cfg.max_rows;
        tokio::select! {
            b = rx.recv(), if deadline.is_none() && accepting => match b {
                Some(b) => {
                    if pending.is_empty() {
                        oldest = Some(Instant::now());
                    }
                    pending.push(b);
                    // Also whatever else is queued (while healthy, what fits), then the bound.
                    let in_attempt = attempt.as_ref().map_or(0, |a| a.rows);
                    while (away || pending.len() + in_attempt + batch_rows <= cfg.max_rows)
                        && let Some(b) = rx.try_recv()
                    {
                        pending.push(b);
                    }
                    let room = cfg.max_rows.saturating_sub(attempt.as_ref().map_or(0, |a| a.rows));
                    let dropped = pending.trim_to(room);
                    if dropped > 0 {
                        tracing::warn!(dropped, "ClickHouse sink buffer full; dropping the oldest records");
                        metrics.drop_records(SINK, "buffer_full", dropped as u64);
                    }
                }
                None => deadline = Some(cfg.deadline.or_from_now(cfg.drain_timeout)),
            },
            _ = async {
                match wake {
                    Some(w) => tokio::time::sleep_until(w).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
    let left = pending.len() + attempt.map_or(0, |a| a.rows);
    if left > 0 {
        tracing::warn!(
            records = left,
            "shutdown: records for ClickHouse not inserted in time"
        );
    }
    metrics.drop_records(SINK, "shutdown", left as u64);
    gauge.set(0);
}
