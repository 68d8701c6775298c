//! The write path into a [`Store`]: a bounded queue in front of one writer thread that
//! coalesces what the IPFIX side receives into large transactions.
//!
//! Why: SQLite's cost per transaction (WAL frames, commit) dominates small batches — 10 k
//! records per insert run ~2.7× faster than 1 k — while IPFIX messages carry tens of records.
//! The queue is bounded in records, so a store slower than the network pushes back on
//! `send` (and through it on the TCP peers) instead of growing memory; nothing is dropped
//! without being counted. Each send names its exporter (the IPFIX peer), and the records keep
//! it into the store: coalescing joins many peers' messages into one transaction of runs
//! ([`Batch`]), not one transaction per peer.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowcore::aggregator::AggregatedRecord;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::store::{Batch, Store};

#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Records per store transaction, at most.
    pub max_batch: usize,
    /// A partial batch is written after waiting this long for more.
    pub max_delay: Duration,
    /// Records queued (not yet written) before `send` waits.
    pub queue_records: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch: 20_000,
            max_delay: Duration::from_millis(200),
            queue_records: 200_000,
        }
    }
}

/// Counters a user would alert on.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub records_in: AtomicU64,
    pub records_stored: AtomicU64,
    pub transactions: AtomicU64,
    /// Records lost because the store refused their transaction (each failure is logged).
    pub records_failed: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
#[error("ingest writer has stopped")]
pub struct Closed;

struct Msg {
    exporter: Option<IpAddr>,
    records: Vec<AggregatedRecord>,
    _permit: OwnedSemaphorePermit,
}

/// Handle to the writer. Dropping every handle (or [`Ingest::close`]) lets the writer drain
/// the queue and stop.
pub struct Ingest {
    tx: mpsc::Sender<Msg>,
    room: Arc<Semaphore>,
    cap: usize,
    stats: Arc<IngestStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ingest {
    pub fn spawn(store: Arc<dyn Store>, cfg: IngestConfig) -> std::io::Result<Ingest> {
        let cap = cfg
            .queue_records
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let (tx, rx) = mpsc::channel::<Msg>();
        let stats = Arc::new(IngestStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("flowlens-store-writer".into())
            .spawn(move || writer(store, rx, cfg, st))?;
        Ok(Ingest {
            tx,
            room: Arc::new(Semaphore::new(cap)),
            cap,
            stats,
            thread: Some(thread),
        })
    }

    /// Queues `records` received from `exporter` (the IPFIX peer's address; `None` when
    /// unknown), waiting while the queue is full.
    pub async fn send(
        &self,
        exporter: Option<IpAddr>,
        records: Vec<AggregatedRecord>,
    ) -> Result<(), Closed> {
        if records.is_empty() {
            return Ok(());
        }
        // A batch larger than the whole queue takes all of it rather than waiting forever.
        let n = records.len().min(self.cap) as u32;
        let permit = self
            .room
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| Closed)?;
        self.stats
            .records_in
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.tx
            .send(Msg {
                exporter,
                records,
                _permit: permit,
            })
            .map_err(|_| Closed)
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    /// Stops accepting records, writes everything queued, and waits for the writer (blocking:
    /// call from `spawn_blocking` in async code).
    pub fn close(mut self) {
        self.room.close();
        let (dead, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn writer(
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Msg>,
    cfg: IngestConfig,
    stats: Arc<IngestStats>,
) {
    let max = cfg.max_batch.max(1);
    // Permits are released only after the write, so queued + in-flight stays bounded.
    let mut held: Vec<Msg> = Vec::new();
    let mut open = true;
    while open {
        // Block for the first message, then gather more until full or the delay is up.
        let mut gathered = match rx.recv() {
            Ok(m) => {
                held.push(m);
                held[0].records.len()
            }
            Err(_) => break,
        };
        let deadline = Instant::now() + cfg.max_delay;
        while gathered < max {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(m) => {
                    gathered += m.records.len();
                    held.push(m);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        // Runs point into the messages (no copy); a message larger than what is left of a
        // transaction is split across two, so every transaction holds at most max_batch.
        let mut batch = Batch::new(now_secs());
        let mut n = 0;
        for m in &held {
            let mut recs = &m.records[..];
            while !recs.is_empty() {
                let take = (max - n).min(recs.len());
                batch.push(m.exporter, &recs[..take]);
                recs = &recs[take..];
                n += take;
                if n == max {
                    write(&*store, &batch, &stats);
                    batch = Batch::new(now_secs());
                    n = 0;
                }
            }
        }
        if n > 0 {
            write(&*store, &batch, &stats);
        }
        held.clear();
    }
}

fn write(store: &dyn Store, batch: &Batch<'_>, stats: &IngestStats) {
    let n = batch.len() as u64;
    match store.insert_batch(batch) {
        Ok(()) => {
            stats.records_stored.fetch_add(n, Ordering::Relaxed);
            stats.transactions.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.records_failed.fetch_add(n, Ordering::Relaxed);
            tracing::error!(error = %e, records = n, "store insert failed; records lost");
        }
    }
}
