//! The aggregator's ClickHouse sink end to end: two Nodes' exporters → the aggregator over mutual
//! TLS (`aggregator_common`) → a real ClickHouse server (Debian's clickhouse-server, started by the
//! test on loopback, `clickhouse_fixture`) → rows read back and checked: bytes, packets, both
//! Nodes' counters, Pods, Nodes, correlation (with the core split over two threads), and the
//! shutdown flush. A second test puts a TCP relay the test controls between the aggregator and
//! ClickHouse: while the relay refuses, connects fail, are counted and retried, the rows are
//! held, and nothing is lost.
//!
//! No sleep orders events: each step waits for a condition (rows in ClickHouse, a metric), with a
//! deadline only as a guard against hanging.

mod aggregator_common;
mod clickhouse_fixture;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aggregator_common::*;
use clickhouse_fixture::{ClickHouse, shared};
use flowlens_bins::ops::Ops;
use tokio_util::sync::CancellationToken;

const FLOWS: u32 = 40;
/// Flows only the source Node reports: no partner before shutdown, so the shutdown flush exports
/// them (uncorrelated).
const LONE: u32 = 10;

/// node-a sends FLOWS + LONE flows, node-b the first FLOWS.
fn flows(side: u32) -> std::ops::Range<u32> {
    0..if side == 0 { FLOWS + LONE } else { FLOWS }
}

fn sinks(url: &str, database: &str) -> String {
    format!(
        "clickhouse:\n  url: \"{url}\"\n  database: {database}\n  batchRows: 1000\n  flushInterval: 100ms\n  timeout: 5s\nclickhouseBufferRows: 10000\n"
    )
}

/// Rows in the record table; 0 while the sink has not created it yet.
fn count(ch: &ClickHouse, database: &str) -> u64 {
    let q = format!("SELECT count() FROM {database}.flows");
    match clickhouse_fixture::http(ch.http_port, "POST", "/", &q) {
        Ok((status, body)) if status.contains(" 200 ") => body.trim().parse().unwrap(),
        Ok((_, body)) if body.contains("doesn't exist") => 0,
        other => panic!("{q}: {other:?}"),
    }
}

/// Every flow's correlated row, checked against what both Nodes sent.
fn check_rows(ch: &ClickHouse, database: &str) {
    let rows = ch.sql(&format!(
        "SELECT sourceTransportPort, sourcePodName, destinationPodName, sourceNodeName, destinationNodeName, \
         sourcePodNamespace, octetDeltaCount, packetDeltaCount, reverseOctetDeltaCount, \
         fromSourceNode, octetTotalCountFromSourceNode, packetTotalCountFromSourceNode, \
         fromDestinationNode, octetTotalCountFromDestinationNode, packetTotalCountFromDestinationNode, \
         reversePacketTotalCountFromDestinationNode, correlated, flowType, tcpState, sourceIP, destinationIP \
         FROM {database}.flows WHERE correlated = 1 ORDER BY sourceTransportPort"
    ));
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), FLOWS as usize, "one correlated row per flow");
    for (j, r) in rows.iter().enumerate() {
        let j = j as u32;
        let (s, d) = (counters(j, 0), counters(j, 1));
        let want = [
            (40_000 + j).to_string(),
            client_pod(j),
            server_pod(j),
            "node-a".into(),
            "node-b".into(),
            "shop".into(),
            // The flow's counters are the source Node's.
            s.octets.to_string(),
            s.packets.to_string(),
            s.reverse_octets.to_string(),
            "1".into(),
            s.octets.to_string(),
            s.packets.to_string(),
            "1".into(),
            d.octets.to_string(),
            d.packets.to_string(),
            d.reverse_packets.to_string(),
            "1".into(),
            "2".into(),
            "ESTABLISHED".into(),
            format!("10.1.0.{}", 1 + j % 7),
            format!("10.2.0.{}", 1 + j % 3),
        ];
        assert_eq!(
            r,
            &want.iter().map(String::as_str).collect::<Vec<_>>(),
            "flow {j}"
        );
    }
}

/// After shutdown: the lone flows, still waiting for their partner, were exported by the final
/// flush (uncorrelated, with the source Node's counters) and inserted before `run` returned;
/// nothing was dropped.
fn check_shutdown_flush(ch: &ClickHouse, db: &str, ops: &Ops) {
    assert_eq!(count(ch, db), u64::from(FLOWS + LONE));
    let lone = ch.sql(&format!(
        "SELECT count(), sum(octetDeltaCount), sum(fromDestinationNode), min(sourceTransportPort) \
         FROM {db}.flows WHERE correlated = 0"
    ));
    let want: u64 = (FLOWS..FLOWS + LONE).map(|j| counters(j, 0).octets).sum();
    assert_eq!(
        lone.trim(),
        format!("{LONE}\t{want}\t0\t{}", 40_000 + FLOWS)
    );
    assert_eq!(
        metric(ops, "flowlens_aggregator_correlated_total"),
        u64::from(FLOWS)
    );
    assert_eq!(
        metric(ops, "flowlens_aggregator_uncorrelated_total"),
        u64::from(LONE)
    );
    assert_eq!(
        metric(
            ops,
            "flowlens_aggregator_sink_records_out_total{sink=\"clickhouse\"}"
        ),
        u64::from(FLOWS + LONE)
    );
    assert_eq!(metric(ops, "flowlens_aggregator_sink_dropped_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_over_mutual_tls_into_clickhouse() {
    let ch = shared();
    let dir = TempDir::new("e2e");
    let db = "agg_e2e";
    // Two core threads: both halves of every flow must still meet (flows split by key hash).
    let agg = Aggregator::start(&dir, &format!("coreThreads: 2\n{}", sinks(&ch.url(), db))).await;
    export_both_nodes(agg.port, &agg.certs, flows).await;
    // Both halves met: one row per flow, inserted within the flush interval.
    wait_until("correlated rows in ClickHouse", || {
        count(ch, db) >= u64::from(FLOWS)
    })
    .await;
    check_rows(ch, db);
    let ops = agg.stop().await;
    check_shutdown_flush(ch, db, &ops);
}

/// A TCP relay to ClickHouse that refuses (accepts and closes at once) while `down` is set.
async fn relay(to: u16, down: Arc<AtomicBool>, stop: CancellationToken) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = l.accept() => r.unwrap(),
            };
            if down.load(Ordering::SeqCst) {
                drop(c);
                continue;
            }
            let stop = stop.clone();
            tokio::spawn(async move {
                let Ok(mut s) =
                    tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], to))).await
                else {
                    return;
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_records_are_held_retried_and_flushed() {
    let ch = shared();
    let dir = TempDir::new("down");
    let db = "agg_down";
    let down = Arc::new(AtomicBool::new(true));
    let stop = CancellationToken::new();
    let port = relay(ch.http_port, down.clone(), stop.clone()).await;
    let agg = Aggregator::start(&dir, &sinks(&format!("http://127.0.0.1:{port}"), db)).await;
    export_both_nodes(agg.port, &agg.certs, flows).await;
    let o = agg.ops.clone();
    wait_until("the rows held while ClickHouse is unreachable", || {
        metric(
            &o,
            "flowlens_aggregator_sink_queued_records{sink=\"clickhouse_held\"}",
        ) == u64::from(FLOWS)
            && metric(
                &o,
                "flowlens_aggregator_sink_errors_total{sink=\"clickhouse\"}",
            ) >= 1
    })
    .await;
    assert_eq!(count(ch, db), 0, "nothing reached the server");
    // The server is reachable again: the sink connects (creating the schema) and inserts.
    down.store(false, Ordering::SeqCst);
    wait_until("rows after the server came back", || {
        count(ch, db) >= u64::from(FLOWS)
    })
    .await;
    check_rows(ch, db);
    let ops = agg.stop().await;
    check_shutdown_flush(ch, db, &ops);
    stop.cancel();
}
