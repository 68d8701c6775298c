//! The aggregator's IPFIX export through a collector restart: two Nodes' exporters → the
//! aggregator over mutual TLS (`aggregator_common`) → IPFIX over TCP to a collecting process
//! (`transport::collector`, real sockets on loopback). The collector stops (draining what it
//! read) while flows keep being correlated; the aggregator holds their records in its replay
//! buffer and, once the collector is back on the same port, sends them after new templates and
//! in sequence: every record arrives exactly once, nothing is dropped. Over UDP, records go in
//! datagram-sized messages after the templates.

mod aggregator_common;

use std::net::SocketAddr;

use aggregator_common::*;
use flowcore::ipfix::DataRecord;
use flowlens_bins::transport::collector::{Collector, CollectorConfig, DecodedMessage, queue};
use flowlens_bins::transport::fair::FairReceiver;
use flowlens_bins::transport::metrics::CollectorMetrics;
use tokio_util::sync::CancellationToken;

struct RunningCollector {
    rx: FairReceiver<DecodedMessage>,
    metrics: CollectorMetrics,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningCollector {
    async fn start(port: u16) -> RunningCollector {
        RunningCollector::on(CollectorConfig {
            tcp: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            ..CollectorConfig::default()
        })
        .await
    }

    async fn on(cfg: CollectorConfig) -> RunningCollector {
        let (tx, rx) = queue(&cfg.limits);
        let metrics = CollectorMetrics::default();
        let c = Collector::bind(cfg, metrics.clone(), tx).await.unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(c.run(shutdown.clone()));
        RunningCollector {
            rx,
            metrics,
            shutdown,
            task,
        }
    }

    /// (sourceTransportPort, octetDeltaCount, octetTotalCountFromDestinationNode, sourcePodName)
    /// of `n` records, in arrival order.
    async fn receive(&mut self, n: usize) -> Vec<(u64, u64, u64, String)> {
        tokio::time::timeout(GUARD, async {
            let mut got = Vec::new();
            while got.len() < n {
                let m = self.rx.recv().await.expect("collector open");
                got.extend(m.records().map(|r| fields(&r)));
            }
            got
        })
        .await
        .expect("records at the collector")
    }

    /// Stops, and returns what was still read before the stop.
    async fn stop(mut self) -> usize {
        self.shutdown.cancel();
        tokio::time::timeout(GUARD, &mut self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let mut n = 0;
        while let Some(m) = self.rx.recv().await {
            n += m.len();
        }
        n
    }
}

fn fields(r: &DataRecord<'_>) -> (u64, u64, u64, String) {
    let (mut port, mut octets, mut from_dst, mut pod) = (0, 0, 0, String::new());
    for f in r.fields() {
        match f.spec.name {
            Some("sourceTransportPort") => port = f.value().as_u64().unwrap(),
            Some("octetDeltaCount") => octets = f.value().as_u64().unwrap(),
            Some("octetTotalCountFromDestinationNode") => from_dst = f.value().as_u64().unwrap(),
            Some("sourcePodName") => pod = f.value().as_str().unwrap().into_owned(),
            _ => {}
        }
    }
    (port, octets, from_dst, pod)
}

fn want(flows: std::ops::Range<u32>) -> Vec<(u64, u64, u64, String)> {
    flows
        .map(|j| {
            (
                u64::from(40_000 + j),
                counters(j, 0).octets,
                counters(j, 1).octets,
                client_pod(j),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_restart_loses_no_aggregated_record() {
    let port = free_port();
    let mut col = RunningCollector::start(port).await;
    let dir = TempDir::new("ipfix-restart");
    let agg = Aggregator::start(
        &dir,
        &format!("externalFlowCollectorAddr: \"127.0.0.1:{port}:tcp\"\n"),
    )
    .await;
    export_both_nodes(agg.port, &agg.certs, |_| 0..20).await;
    assert_eq!(col.receive(20).await, want(0..20));

    // The collector goes away; flows 20..50 are correlated meanwhile and held.
    assert_eq!(col.stop().await, 0);
    let o = agg.ops.clone();
    wait_until("the aggregator noticed the collector is gone", || {
        metric(&o, "flowlens_aggregator_ipfix_export_session_up") == 0
    })
    .await;
    export_both_nodes(agg.port, &agg.certs, |_| 20..50).await;
    wait_until("30 records held for the collector", || {
        metric(&o, "flowlens_aggregator_ipfix_replay_records") == 30
    })
    .await;

    // Back on the same port: the held records arrive once, in order, after new templates.
    let mut col = RunningCollector::start(port).await;
    assert_eq!(col.receive(30).await, want(20..50));
    assert_eq!(col.metrics.sets_without_template.get(), 0);
    assert_eq!(col.metrics.sequence_gaps.get(), 0);
    let ops = agg.stop().await;
    assert_eq!(col.stop().await, 0, "nothing more: no record twice");
    assert_eq!(
        metric(
            &ops,
            "flowlens_aggregator_sink_records_out_total{sink=\"ipfix\"}"
        ),
        50
    );
    assert_eq!(metric(&ops, "flowlens_aggregator_sink_dropped_total"), 0);
    assert_eq!(metric(&ops, "flowlens_aggregator_ipfix_replay_records"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_export_fits_datagrams_and_carries_templates() {
    let port = free_port();
    let mut col = RunningCollector::on(CollectorConfig {
        udp: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        ..CollectorConfig::default()
    })
    .await;
    let dir = TempDir::new("ipfix-udp");
    let agg = Aggregator::start(
        &dir,
        &format!("externalFlowCollectorAddr: \"127.0.0.1:{port}:udp\"\n"),
    )
    .await;
    export_both_nodes(agg.port, &agg.certs, |_| 0..20).await;
    // Loopback does not drop datagrams this small and few; templates came first.
    let mut got = col.receive(20).await;
    got.sort();
    assert_eq!(got, want(0..20));
    assert_eq!(col.metrics.sets_without_template.get(), 0);
    assert_eq!(col.metrics.records_missing.get(), 0);
    let ops = agg.stop().await;
    assert_eq!(
        metric(
            &ops,
            "flowlens_aggregator_sink_records_out_total{sink=\"ipfix\"}"
        ),
        20
    );
    assert!(
        metric(&ops, "flowlens_aggregator_ipfix_export_messages_sent_total") > 2,
        "many datagrams, not one 64 KiB message"
    );
    col.stop().await;
}
