//! Aggregated records as IPFIX to a further collector (`externalFlowCollectorAddr`), on a task of
//! its own: it encodes the batches the core loop hands over (AggregatedV4/V6 templates, one
//! observation domain) and sends the messages through a [`ReplayExporter`], so records produced
//! while the collector is unreachable are sent once it is back, up to the replay bound; beyond
//! it the oldest are dropped and counted (`sink_dropped{sink="ipfix",reason="replay_full"}`).
//! While the collector is connected but slower than the core, the sink stops taking batches once
//! the buffer is half full ([`ReplayExporter::accepting`]), so its queue fills and the core waits:
//! a slow collector slows the pipeline down, it never costs records.
//!
//! Shutdown: when the core loop drops its queue sender (after its final flush), the sink writes
//! what it holds until the shutdown's deadline (`shutdownGracePeriod` from the signal; or
//! `drain_timeout` from then if no shutdown clock runs), counts the rest (`reason="shutdown"`),
//! and stops the exporter.

use std::time::Duration;

use flowcore::aggregator::AggregatedRecord;
use flowcore::config::Transport;
use flowcore::ipfix::{Encoder, EncoderConfig, Layout};
use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{SinkMetrics, SinkReceiver};
use crate::clock::now;
use crate::transport::exporter::{Exporter, ExporterConfig};
use crate::transport::metrics::ExporterMetrics;
use crate::transport::replay::{ReplayConfig, ReplayExporter, ReplayStats};

const SINK: &str = "ipfix";

/// How the sink exports.
#[derive(Clone, Debug)]
pub struct IpfixSinkConfig {
    pub exporter: ExporterConfig,
    pub replay: ReplayConfig,
    /// UDP: templates are sent again this often (RFC 7011 §8.4).
    pub template_refresh: Duration,
    /// How long shutdown may spend writing what is held, when `deadline` was not started.
    pub drain_timeout: Duration,
    /// The shutdown's deadline.
    pub deadline: crate::signals::Deadline,
}

impl IpfixSinkConfig {
    pub fn new(exporter: ExporterConfig) -> Self {
        IpfixSinkConfig {
            exporter,
            replay: ReplayConfig::default(),
            template_refresh: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(5),
            deadline: Default::default(),
        }
    }
}

/// Gauges of the replay buffer.
#[derive(Clone, Default)]
pub struct ReplayGauges {
    pub bytes: Gauge,
    pub records: Gauge,
}

/// Starts the sink; it ends after `rx` closes and the drain is done.
pub fn spawn(
    cfg: IpfixSinkConfig,
    rx: SinkReceiver,
    exporter_metrics: ExporterMetrics,
    metrics: SinkMetrics,
    gauges: ReplayGauges,
) -> anyhow::Result<JoinHandle<()>> {
    let udp = cfg.exporter.transport == Transport::Udp;
    let mut enc = Encoder::new(if udp {
        EncoderConfig::datagram(1, 1500, cfg.template_refresh)
    } else {
        EncoderConfig::stream(1)
    })?;
    for l in [Layout::AggregatedV4, Layout::AggregatedV6] {
        enc.add_template(l.template_id(), l.fields())?;
    }
    Ok(tokio::spawn(run(
        cfg,
        enc,
        rx,
        exporter_metrics,
        metrics,
        gauges,
    )))
}

async fn run(
    cfg: IpfixSinkConfig,
    mut enc: Encoder,
    mut rx: SinkReceiver,
    exporter_metrics: ExporterMetrics,
    metrics: SinkMetrics,
    gauges: ReplayGauges,
) {
    let udp = cfg.exporter.transport == Transport::Udp;
    let capacity = cfg.exporter.queue_capacity;
    // Its own stop token: the exporter must outlive the drain below.
    let stop = CancellationToken::new();
    let (ex, outcomes, task) =
        Exporter::spawn(cfg.exporter.clone(), exporter_metrics, stop.clone());
    let mut replay = ReplayExporter::new(ex, outcomes, capacity, cfg.replay);
    let mut seen = ReplayStats::default();
    let mut refresh = tokio::time::interval(cfg.template_refresh.max(Duration::from_secs(1)));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            b = rx.recv(), if replay.accepting() => {
                let Some(b) = b else { break };
                let t = now();
                encode(&mut enc, &b, t, &metrics);
                // Whatever else is queued goes into the same messages, while there is room.
                while replay.accepting()
                    && let Some(b) = rx.try_recv()
                {
                    encode(&mut enc, &b, t, &metrics);
                    enc.flush(t);
                    while let Some((m, n)) = enc.poll_message() {
                        replay.push(m, n);
                    }
                }
                enc.flush(t);
            }
            alive = replay.wait() => if !alive { break },
            _ = refresh.tick(), if udp => enc.handle_timeout(now()),
        }
        while let Some((m, n)) = enc.poll_message() {
            replay.push(m, n);
        }
        replay.pump();
        report(&replay, &mut seen, &metrics, &gauges);
    }
    // Drain what is held, for a bounded time.
    let deadline = cfg.deadline.or_from_now(cfg.drain_timeout);
    while !replay.is_empty() {
        replay.pump();
        report(&replay, &mut seen, &metrics, &gauges);
        if replay.is_empty() {
            break;
        }
        match tokio::time::timeout_at(deadline, replay.wait()).await {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    replay.pump();
    report(&replay, &mut seen, &metrics, &gauges);
    let left = replay.abandon();
    if left > 0 {
        tracing::warn!(
            records = left,
            "shutdown: records for the external collector not written in time"
        );
    }
    metrics.drop_records(SINK, "shutdown", left);
    gauges.bytes.set(0);
    gauges.records.set(0);
    stop.cancel();
    let _ = task.await;
}

fn encode(
    enc: &mut Encoder,
    b: &[AggregatedRecord],
    t: flowcore::model::Timestamp,
    m: &SinkMetrics,
) {
    for r in b {
        if let Err(e) = r.write_ipfix(enc, t) {
            tracing::warn!(error = %e, "an aggregated record could not be encoded");
            m.drop_records(SINK, "invalid", 1);
        }
    }
}

fn report(replay: &ReplayExporter, seen: &mut ReplayStats, m: &SinkMetrics, g: &ReplayGauges) {
    let s = replay.stats();
    let written = s.records_written - seen.records_written;
    if written > 0 {
        m.records_out
            .get_or_create(&super::SinkLabels { sink: SINK })
            .inc_by(written);
        m.batches
            .get_or_create(&super::SinkLabels { sink: SINK })
            .inc_by(s.messages_written - seen.messages_written);
    }
    m.drop_records(
        SINK,
        "replay_full",
        s.records_dropped - seen.records_dropped,
    );
    let (bytes, records) = replay.held();
    g.bytes.set(bytes as i64);
    g.records.set(records as i64);
    *seen = s;
}
