//! `flowlens collector` on ClickHouse (Debian's clickhouse-server on loopback): aggregated IPFIX
//! received over TCP lands in ClickHouse and is served by the API; with `ingest: false` the
//! collector serves a database others fill and listens for no IPFIX.

mod clickhouse_fixture;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use flowcore::config::Transport;
use flowcore::ipfix::{Encoder, EncoderConfig, Layout};
use flowcore::model::Timestamp;
use flowlens_bins::clickhouse::{ClickHouseClient, ClickHouseConfig};
use flowlens_bins::collector::query::*;
use flowlens_bins::collector::synth::Synth;
use flowlens_bins::collector_cmd::start_with;
use flowlens_bins::config::collector::{CollectorConfig, StoreBackend, StoreChoice};
use flowlens_bins::ops::Ops;
use tokio_util::sync::CancellationToken;

const T0: u32 = 1_767_225_600;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn collector_cfg(name: &str) -> CollectorConfig {
    CollectorConfig {
        listen_addr: free_addr(),
        transport: Transport::Tcp,
        tls: Default::default(),
        data_dir: std::env::temp_dir().join(format!("flowlens-chc-{name}-{}", std::process::id())),
        retention: Duration::from_secs(86400),
        max_store_bytes: 1 << 30,
        ingest_queue_bytes: 64 << 20,
        http_addr: "127.0.0.1:0".parse().unwrap(),
        log: Default::default(),
        http: Default::default(),
        query: Default::default(),
        collecting: Default::default(),
    }
}

fn ch_cfg(db: &str) -> ClickHouseConfig {
    let ch = clickhouse_fixture::shared();
    ch.sql(&format!("DROP DATABASE IF EXISTS {db}"));
    ClickHouseConfig {
        url: ch.url(),
        database: db.into(),
        batch_rows: 500,
        flush_interval: Duration::from_millis(50).into(),
        // The records are from 2026-01-01: keep them from the collector's retention pass.
        retention: Duration::from_secs(3650 * 86400).into(),
        ..Default::default()
    }
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipfix_in_clickhouse_out() {
    let cfg = collector_cfg("ingest");
    let choice = StoreChoice {
        backend: StoreBackend::ClickHouse(Box::new(ch_cfg("collector_ingest"))),
        ingest: true,
    };
    let shutdown = CancellationToken::new();
    let r = start_with(cfg, choice, Ops::new("t"), shutdown.clone())
        .await
        .unwrap();
    assert!(r.ipfix_listening);
    let recs = Synth::new(5, 3, 12).batch(2000, T0, 600);
    let mut enc = Encoder::new(EncoderConfig::stream(1)).unwrap();
    for l in [Layout::AggregatedV4, Layout::AggregatedV6] {
        enc.add_template(l.template_id(), l.fields()).unwrap();
    }
    let now = Timestamp::from_secs(T0 as u64 + 600);
    for rec in &recs {
        rec.write_ipfix(&mut enc, now).unwrap();
    }
    enc.flush(now);
    let mut sock = tokio::net::TcpStream::connect(r.ipfix_addr).await.unwrap();
    while let Some(b) = enc.poll_transmit() {
        tokio::io::AsyncWriteExt::write_all(&mut sock, &b)
            .await
            .unwrap();
    }
    // Done when the records and the rollups both hold all of them: ClickHouse commits the
    // record table's part before it runs the views of the same INSERT, so a reader can see
    // the records a moment before their rollup rows.
    let want: u64 = recs.iter().map(|r| r.deltas[1] + r.deltas[3]).sum();
    let store = r.store.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = store.clone();
        let (n, bytes) = tokio::task::spawn_blocking(move || {
            let top = s
                .top(&TopQuery {
                    filter: DashFilter::range(TimeRange::new(T0 as u64, T0 as u64 + 600)),
                    by: TopBy::NodePair,
                    limit: 100,
                })
                .unwrap();
            (
                s.stats().unwrap().records,
                top.iter().map(|t| t.bytes).sum::<u64>(),
            )
        })
        .await
        .unwrap();
        if n == 2000 && bytes == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of 2000 records, {bytes} of {want} bytes in the rollups"
        );
        assert!(
            n <= 2000 && bytes <= want,
            "more stored than sent: {n}, {bytes}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = r.http_addr;
    let body = tokio::task::spawn_blocking(move || get(http, "/api/stats"))
        .await
        .unwrap();
    assert!(body.contains("\"backend\":\"clickhouse\""), "{body}");
    drop(sock);
    shutdown.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_only_serves_what_others_wrote() {
    let ch = ch_cfg("collector_query_only");
    let writer = ClickHouseClient::connect(ch.clone()).await.unwrap();
    writer
        .insert(&Synth::new(2, 3, 12).batch(700, T0, 600), T0 as u64)
        .await
        .unwrap();
    let cfg = collector_cfg("query-only");
    let ipfix = cfg.listen_addr;
    let shutdown = CancellationToken::new();
    let r = start_with(
        cfg,
        StoreChoice {
            backend: StoreBackend::ClickHouse(Box::new(ch)),
            ingest: false,
        },
        Ops::new("t"),
        shutdown.clone(),
    )
    .await
    .unwrap();
    assert!(!r.ipfix_listening);
    assert!(
        TcpStream::connect(ipfix).is_err(),
        "nothing may listen for IPFIX"
    );
    let http = r.http_addr;
    let body = tokio::task::spawn_blocking(move || {
        get(
            http,
            &format!("/api/flows?start={T0}&end={}&limit=5", T0 + 600),
        ) + &get(http, "/api/stats")
    })
    .await
    .unwrap();
    assert!(body.contains("\"records\":700"), "{body}");
    assert_eq!(body.matches("\"sourceIPAddress\"").count(), 5, "{body}");
    shutdown.cancel();
    r.task.await.unwrap().unwrap();
}
