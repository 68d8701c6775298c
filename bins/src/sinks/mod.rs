//! Where aggregated records go: IPFIX to a further collector ([`ipfix`]), JSON lines to a file
//! ([`jsonl`]), ClickHouse ([`clickhouse`]). The aggregator's core loop hands each sink the records of one loop
//! turn as one shared [`Batch`] (an `Arc`, so several sinks take the same records without a copy
//! per record, and the records are dropped on the sink's thread, not the core's).
//!
//! Every sink sits behind its own [`queue`], bounded by records: when a sink falls behind (its
//! peer is down, its disk is slow) the batches that do not fit are dropped and counted by sink
//! and reason, and the core loop never waits on a sink — one stuck sink must not stop the others
//! or push back on the agents.

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    pub sink: &'static str,
    /// `queue_full` (the sink's input queue), `replay_full` (IPFIX: the replay buffer while the
    /// collector is away), `buffer_full` (ClickHouse: rows waiting for the server), `shutdown`
    /// (left when the shutdown flush ran out of time), `rejected` (the peer refused them).
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
    let gauge = metrics.queued.get_or_create(&SinkLabels { sink }).clone();
    (
        SinkSender {
            sink,
            tx,
            held: held.clone(),
            max_records: max_records.max(1),
            metrics,
            gauge: gauge.clone(),
        },
        SinkReceiver { rx, held, gauge },
    )
}

/// The core loop's end of a sink queue (one clone per core thread). Never waits.
#[derive(Clone)]
pub struct SinkSender {
    sink: &'static str,
    tx: mpsc::UnboundedSender<Batch>,
    held: Arc<AtomicUsize>,
    max_records: usize,
    metrics: SinkMetrics,
    gauge: Gauge,
}

impl SinkSender {
    /// Queues `batch`, or drops it counted (`queue_full`) when it would pass the bound, or
    /// (`shutdown`) when the sink has stopped.
    pub fn push(&self, batch: &Batch) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        if self.held.load(Ordering::Relaxed) + n > self.max_records {
            self.metrics.drop_records(self.sink, "queue_full", n as u64);
            return;
        }
        self.held.fetch_add(n, Ordering::Relaxed);
        self.gauge.inc_by(n as i64);
        if self.tx.send(batch.clone()).is_err() {
            self.held.fetch_sub(n, Ordering::Relaxed);
            self.gauge.dec_by(n as i64);
            self.metrics.drop_records(self.sink, "shutdown", n as u64);
        }
    }
}

/// The sink's end. The channel closes when the core loop drops its sender (shutdown, after the
/// final flush was handed over).
pub struct SinkReceiver {
    rx: mpsc::UnboundedReceiver<Batch>,
    held: Arc<AtomicUsize>,
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
        self.held.fetch_sub(b.len(), Ordering::Relaxed);
        self.gauge.dec_by(b.len() as i64);
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

    #[test]
    fn queue_is_bounded_by_records_and_counts_what_it_drops() {
        let m = SinkMetrics::default();
        let (tx, mut rx) = queue("test", 10, m.clone());
        tx.push(&batch(6, 0));
        tx.push(&batch(6, 100)); // 12 > 10: dropped whole
        tx.push(&batch(4, 200));
        let dropped = |reason| {
            m.dropped
                .get_or_create(&DropLabels {
                    sink: "test",
                    reason,
                })
                .get()
        };
        assert_eq!(dropped("queue_full"), 6);
        assert_eq!(rx.try_recv().unwrap().len(), 6);
        tx.push(&batch(5, 300)); // room again
        assert_eq!(rx.try_recv().unwrap().len(), 4);
        assert_eq!(rx.try_recv().unwrap().len(), 5);
        assert_eq!(
            m.queued.get_or_create(&SinkLabels { sink: "test" }).get(),
            0
        );
        drop(rx);
        tx.push(&batch(1, 400));
        assert_eq!(dropped("shutdown"), 1);
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
