//! The write path into a [`Store`]: a bounded queue in front of one writer thread that
//! coalesces what the IPFIX side receives into large transactions.
//!
//! Why: SQLite's cost per transaction (WAL frames, commit) dominates small batches — 10 k
//! records per insert run ~2.7× faster than 1 k — while IPFIX messages carry tens of records.
//! The queue is bounded in records and in bytes, so a store slower than the network pushes back
//! on `send` (and through it on the TCP peers) instead of growing memory — also when a peer
//! sends records carrying kilobytes of names each; nothing is dropped without being counted. Each send names its exporter (the IPFIX peer), and the records keep
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
    /// And their bytes (see [`Ingest::send_sized`]).
    pub queue_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch: 20_000,
            max_delay: Duration::from_millis(200),
            queue_records: 200_000,
            queue_bytes: 128 << 20,
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
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// Handle to the writer. Dropping every handle (or [`Ingest::close`]) lets the writer drain
/// the queue and stop.
pub struct Ingest {
    tx: mpsc::Sender<Msg>,
    room: Arc<Semaphore>,
    cap: usize,
    bytes: Arc<Semaphore>,
    cap_bytes: usize,
    stats: Arc<IngestStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ingest {
    pub fn spawn(store: Arc<dyn Store>, cfg: IngestConfig) -> std::io::Result<Ingest> {
        let cap = cfg
            .queue_records
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let cap_bytes = cfg
            .queue_bytes
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
            bytes: Arc::new(Semaphore::new(cap_bytes)),
            cap_bytes,
            stats,
            thread: Some(thread),
        })
    }

    /// Queues `records` received from `exporter` (the IPFIX peer's address; `None` when
    /// unknown), waiting while the queue is full. Their bytes are estimated as if no two
    /// records shared a name.
    pub async fn send(
        &self,
        exporter: Option<IpAddr>,
        records: Vec<AggregatedRecord>,
    ) -> Result<(), Closed> {
        let names: usize = records.iter().map(name_bytes).sum();
        self.send_sized(exporter, records, names).await
    }

    /// [`Self::send`] with the bytes of the names the records hold that nothing else holds yet
    /// (a caller interning names counts those it added). The queue charges each record its
    /// size plus these.
    pub async fn send_sized(
        &self,
        exporter: Option<IpAddr>,
        records: Vec<AggregatedRecord>,
        names: usize,
    ) -> Result<(), Closed> {
        if records.is_empty() {
            return Ok(());
        }
        // A batch larger than the whole queue takes all of it rather than waiting forever.
        let n = records.len().min(self.cap) as u32;
        let size = records.len() * std::mem::size_of::<AggregatedRecord>() + names;
        let b = size.clamp(1, self.cap_bytes) as u32;
        let permit = self
            .room
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| Closed)?;
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(b)
            .await
            .map_err(|_| Closed)?;
        self.stats
            .records_in
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.tx
            .send(Msg {
                exporter,
                records,
                _permits: (permit, bytes),
            })
            .map_err(|_| Closed)
    }

    /// Bytes queued (not yet written).
    pub fn queued_bytes(&self) -> usize {
        self.cap_bytes - self.bytes.available_permits()
    }

    pub fn stats(&self) -> &Arc<IngestStats> {
        &self.stats
    }

    /// Stops accepting records, writes everything queued, and waits for the writer (blocking:
    /// call from `spawn_blocking` in async code).
    pub fn close(mut self) {
        self.room.close();
        self.bytes.close();
        let (dead, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.tx, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The bytes of a record's names, each counted (shared or not).
fn name_bytes(r: &AggregatedRecord) -> usize {
    [
        &r.src_pod,
        &r.src_namespace,
        &r.src_node,
        &r.dst_pod,
        &r.dst_namespace,
        &r.dst_node,
        &r.service_port_name,
        &r.ingress.name,
        &r.ingress.namespace,
        &r.ingress.rule,
        &r.egress.name,
        &r.egress.namespace,
        &r.egress.rule,
        &r.tcp_state,
        &r.src_labels,
        &r.dst_labels,
        &r.cluster_id,
    ]
    .iter()
    .map(|s| s.len())
    .sum()
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
