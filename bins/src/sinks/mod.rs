//! Where aggregated records go: IPFIX to a further collector ([`ipfix`]), JSON lines to a file
//! ([`jsonl`]), ClickHouse ([`clickhouse`]). The aggregator's core loop hands each sink the records of one loop
//! turn as one shared [`Batch`] (an `Arc`, so several sinks take the same records without a copy
//! per record, and the records are dropped on the sink's thread, not the core's).
//!
//! Every sink sits behind its own [`queue`], bounded by records. When a sink falls behind while
//! its peer takes records (a slow collector, a slow disk), the core loop waits for room
//! ([`SinkSender::push`]): it stops reading the agents' messages, TCP pushes back on the agents,
//! and their exporters keep the deltas they could not send — nothing is dropped because a peer
//! is slow. A sink whose peer is *unreachable* keeps taking records into its own bounded buffer
//! (the IPFIX replay buffer, the ClickHouse row buffer), dropping the oldest there, counted by
//! sink and reason, so an absent peer holds up the pipeline only as far as its buffer reaches.
//! Batches are handed over in chunks of at most [`MAX_BATCH`] records, so even the shutdown flush
//! of a million flows streams through the bound instead of being refused whole.

pub mod clickhouse;
pub mod ipfix;
pub mod jsonl;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowcore::aggregator::AggregatedRecord;
use flowcore::model::IeValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// The records of one turn of the core loop, shared by every sink.
pub type Batch = Arc<Vec<AggregatedRecord>>;

/// Records per batch handed to the sinks at most.
pub const MAX_BATCH: usize = 4096;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub sink: &'static str,
    /// `replay_full` (IPFIX: the replay buffer while the collector is away), `buffer_full`
    /// (ClickHouse: rows waiting for the server while it is away), `shutdown` (left when the
    /// shutdown flush ran out of time, or the sink had stopped), `invalid` (could not be
    /// encoded).
    pub reason: &'static str,
}

/// Counters of every sink, labelled by sink name.
#[derive(Clone, Default)]
pub struct SinkMetrics {
    /// Records the sink delivered (IPFIX: written to the collector; JSON: written to the file;
    /// ClickHouse: inserted).
    pub records_out: Family<SinkLabels, Counter>,
    /// Messages / files writes / INSERTs.
    pub batches: Family<SinkLabels, Counter>,
    /// Failed writes or inserts (each retried while the records are held).
    pub errors: Family<SinkLabels, Counter>,
    /// Records given up on, by sink and reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Records held by the sink (queued or waiting for a retry).
    pub queued: Family<SinkLabels, Gauge>,
    /// Every record any sink gave up on (not exposed; the shutdown checks it).
    pub dropped_total: Counter,
}

impl SinkMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "sink_records_out",
            "Aggregated records a sink delivered, by sink",
            self.records_out.clone(),
        );
        r.register(
            "sink_batches",
            "Messages, writes or inserts a sink completed, by sink",
            self.batches.clone(),
        );
        r.register(
            "sink_errors",
            "Failed writes or inserts (retried), by sink",
            self.errors.clone(),
        );
        r.register(
            "sink_dropped",
            "Aggregated records a sink gave up on, by sink and reason",
            self.dropped.clone(),
        );
        r.register(
            "sink_queued_records",
            "Aggregated records held by a sink (queued or awaiting a retry)",
            self.queued.clone(),
        );
    }

    pub fn drop_records(&self, sink: &'static str, reason: &'static str, n: u64) {
        if n > 0 {
            self.dropped_total.inc_by(n);
            self.dropped
                .get_or_create(&DropLabels { sink, reason })
                .inc_by(n);
        }
    }

    pub fn out(&self, sink: &'static str, records: u64) {
        self.records_out
            .get_or_create(&SinkLabels { sink })
            .inc_by(records);
        self.batches.get_or_create(&SinkLabels { sink }).inc();
    }

    pub fn error(&self, sink: &'static str) {
        self.errors.get_or_create(&SinkLabels { sink }).inc();
    }
}

/// A sink's input: batches bounded by the number of records they hold.
pub fn queue(
    sink: &'static str,
    max_records: usize,
    metrics: SinkMetrics,
) -> (SinkSender, SinkReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let held = Arc::new(AtomicUsize::new(0));
    let room = Arc::new(tokio::sync::Notify::new());
    let gauge = metrics.queued.get_or_create(&SinkLabels { sink }).clone();
    (
        SinkSender {
            sink,
            tx,
            held: held.clone(),
            room: room.clone(),
            max_records: max_records.max(1),
            metrics,
            gauge: gauge.clone(),
        },
        SinkReceiver {
            rx,
            held,
            room,
            gauge,
        },
    )
}

/// The core loop's end of a sink queue (one clone per core thread).
#[derive(Clone)]
pub struct SinkSender {
    sink: &'static str,
    tx: mpsc::UnboundedSender<Batch>,
    held: Arc<AtomicUsize>,
    /// Signalled by the receiver when it takes a batch.
    room: Arc<tokio::sync::Notify>,
    max_records: usize,
    metrics: SinkMetrics,
    gauge: Gauge,
}

impl SinkSender {
    /// Queues `batch`, waiting while the queue holds `max_records` (an empty queue takes any
    /// batch); counts it dropped (`shutdown`) when the sink has stopped.
    pub async fn push(&self, batch: &Batch) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let held = self.held.load(Ordering::Acquire);
            if held == 0 || held + n <= self.max_records || self.tx.is_closed() {
                break;
            }
            room.await;
        }
        self.held.fetch_add(n, Ordering::AcqRel);
        self.gauge.inc_by(n as i64);
        if self.tx.send(batch.clone()).is_err() {
            self.held.fetch_sub(n, Ordering::Relaxed);
            self.gauge.dec_by(n as i64);
            self.metrics.drop_records(self.sink, "shutdown", n as u64);
        }
    }
}

impl SinkSender {
    /// Records the core could not hand over before the shutdown's deadline.
    pub fn dropped_at_shutdown(&self, n: u64) {
        self.metrics.drop_records(self.sink, "shutdown", n);
    }
}

/// The sink's end. The channel closes when the core loop drops its sender (shutdown, after the
/// final flush was handed over).
pub struct SinkReceiver {
    rx: mpsc::UnboundedReceiver<Batch>,
    held: Arc<AtomicUsize>,
    room: Arc<tokio::sync::Notify>,
    gauge: Gauge,
}

impl SinkReceiver {
    pub async fn recv(&mut self) -> Option<Batch> {
        let b = self.rx.recv().await?;
        self.taken(&b);
        Some(b)
    }

    pub fn try_recv(&mut self) -> Option<Batch> {
        let b = self.rx.try_recv().ok()?;
        self.taken(&b);
        Some(b)
    }

    pub fn blocking_recv(&mut self) -> Option<Batch> {
        let b = self.rx.blocking_recv()?;
        self.taken(&b);
        Some(b)
    }

    fn taken(&self, b: &Batch) {
        self.held.fetch_sub(b.len(), Ordering::AcqRel);
        self.gauge.dec_by(b.len() as i64);
        self.room.notify_waiters();
    }
}

impl Drop for SinkReceiver {
    fn drop(&mut self) {
        // A sender waiting for room sees the closed channel and counts its batch dropped.
        self.rx.close();
        self.room.notify_waiters();
    }
}

/// Records taken out of batches, for sinks that hold rows across batches (oldest first).
#[derive(Default)]
pub struct Pending {
    batches: VecDeque<(Batch, usize)>,
    len: usize,
}

impl Pending {
    pub fn push(&mut self, b: Batch) {
        self.len += b.len();
        self.batches.push_back((b, 0));
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Up to `n` records from the front, as slices (no copy).
    pub fn front(&self, n: usize) -> impl Iterator<Item = &[AggregatedRecord]> {
        let mut left = n;
        self.batches.iter().map_while(move |(b, from)| {
            if left == 0 {
                return None;
            }
            let s = &b[*from..(*from + left).min(b.len())];
            left -= s.len();
            Some(s)
        })
    }

    /// Removes `n` records from the front (after they were delivered or given up on).
    pub fn consume(&mut self, mut n: usize) {
        n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some((b, from)) = self.batches.front_mut() else {
                break;
            };
            let here = (b.len() - *from).min(n);
            *from += here;
            n -= here;
            if *from == b.len() {
                self.batches.pop_front();
            }
        }
    }

    /// Drops the oldest records until at most `max` are held; returns how many were dropped.
    pub fn trim_to(&mut self, max: usize) -> usize {
        let over = self.len.saturating_sub(max);
        self.consume(over);
        over
    }
}

/// The record as a JSON object keyed by IE names (as `flowlens decode` prints them), plus
/// `correlated`.
pub fn record_json(r: &AggregatedRecord) -> Value {
    let mut m = Map::with_capacity(72);
    r.visit(|name, v| {
        let v: Value = match v {
            IeValue::Unsigned8(x) => x.into(),
            IeValue::Unsigned16(x) => x.into(),
            IeValue::Unsigned64(x) => x.into(),
            IeValue::DateTimeSeconds(x) => x.into(),
            IeValue::Ip(a) => a.to_string().into(),
            IeValue::String(s) => s.into(),
        };
        m.insert(name.to_string(), v);
    });
    m.insert("correlated".into(), r.correlated.into());
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, first_port: u16) -> Batch {
        let r = crate::collector::synth::Synth::new(1, 1, 1).batch(1, 1_767_225_600, 60);
        Arc::new(
            (0..n)
                .map(|i| {
                    let mut x = r[0].clone();
                    x.key.src_port = first_port + i as u16;
                    x
                })
                .collect(),
        )
    }

    fn ports(p: &Pending, n: usize) -> Vec<u16> {
        p.front(n).flatten().map(|r| r.key.src_port).collect()
    }

    #[tokio::test]
    async fn a_full_queue_makes_the_sender_wait_and_a_stopped_sink_counts_its_drops() {
        let m = SinkMetrics::default();
        let (tx, mut rx) = queue("test", 10, m.clone());
        tx.push(&batch(6, 0)).await;
        // 6 + 6 > 10: the second waits until the first is taken.
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.push(&batch(6, 100)).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the sender waits for room");
        assert_eq!(rx.try_recv().unwrap().len(), 6);
        waiting.await.unwrap();
        assert_eq!(rx.try_recv().unwrap()[0].key.src_port, 100);
        // An empty queue takes a batch larger than the bound.
        tx.push(&batch(20, 200)).await;
        assert_eq!(rx.try_recv().unwrap().len(), 20);
        assert_eq!(
            m.queued.get_or_create(&SinkLabels { sink: "test" }).get(),
            0
        );
        let dropped = |reason| {
            m.dropped
                .get_or_create(&DropLabels {
                    sink: "test",
                    reason,
                })
                .get()
        };
        // A sender waiting on a sink that stops is released and counts the batch.
        tx.push(&batch(9, 300)).await;
        let tx3 = tx.clone();
        let waiting = tokio::spawn(async move { tx3.push(&batch(9, 400)).await });
        tokio::task::yield_now().await;
        drop(rx);
        waiting.await.unwrap();
        assert_eq!(dropped("shutdown"), 9);
    }

    #[test]
    fn pending_takes_from_the_front_across_batches_and_trims_the_oldest() {
        let mut p = Pending::default();
        p.push(batch(3, 0));
        p.push(batch(4, 10));
        assert_eq!(p.len(), 7);
        assert_eq!(ports(&p, 5), vec![0, 1, 2, 10, 11]);
        p.consume(2);
        assert_eq!(ports(&p, 100), vec![2, 10, 11, 12, 13]);
        assert_eq!(p.trim_to(3), 2);
        assert_eq!(ports(&p, 100), vec![11, 12, 13]);
        p.consume(10);
        assert!(p.is_empty());
        assert_eq!(ports(&p, 5), Vec::<u16>::new());
    }
}
