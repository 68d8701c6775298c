//! The store writer: coalesces small sends into few transactions, stores everything on close,
//! and does not deadlock on a batch larger than its queue; and the collector end to end: each
//! record keeps the address of the IPFIX peer that sent it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flowlens_bins::collector::synth::Synth;
use flowlens_bins::collector::{Ingest, IngestConfig, SqliteConfig, SqliteStore, Store};

fn store(name: &str) -> Arc<SqliteStore> {
    let d = std::env::temp_dir().join(format!("flowlens-ingest-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    Arc::new(SqliteStore::open(SqliteConfig::new(d)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesces_sends_and_stores_everything_on_close() {
    let s = store("coalesce");
    let cfg = IngestConfig {
        max_batch: 1000,
        max_delay: Duration::from_millis(100),
        queue_records: 5000,
        // Smaller than the last batch alone: records and bytes both bound the queue.
        queue_bytes: 1 << 20,
    };
    let ing = Ingest::spawn(s.clone(), cfg).unwrap();
    let mut synth = Synth::new(9, 3, 12);
    for k in 0..20u32 {
        ing.send(None, synth.batch(300, 1_767_225_600 + k * 60, 60))
            .await
            .unwrap();
    }
    // Larger than the whole queue, in records and in bytes: must not wait forever.
    ing.send(None, synth.batch(12_000, 1_767_300_000, 600))
        .await
        .unwrap();
    let stats = ing.stats().clone();
    tokio::task::spawn_blocking(move || ing.close())
        .await
        .unwrap();
    assert_eq!(stats.records_in.load(Ordering::Relaxed), 18_000);
    assert_eq!(stats.records_stored.load(Ordering::Relaxed), 18_000);
    assert_eq!(stats.records_failed.load(Ordering::Relaxed), 0);
    let tx = stats.transactions.load(Ordering::Relaxed);
    // 18 k records in batches of at most 1 k: at least 18 transactions, and far fewer than
    // one per send plus one per slice would be without coalescing (20 + 12).
    assert!((18..32).contains(&tx), "{tx} transactions");
    assert_eq!(s.stats().unwrap().records, 18_000);
}

/// Two exporters on two loopback addresses send to one collector over TCP: every record is
/// stored under the address it came from, whatever the records themselves claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_keep_the_exporter_that_sent_them() {
    use flowcore::config::Transport;
    use flowcore::ipfix::{Encoder, EncoderConfig, Layout};
    use flowcore::model::Timestamp;
    use flowlens_bins::config::collector::CollectorConfig;
    use tokio::io::AsyncWriteExt;

    let dir = std::env::temp_dir().join(format!("flowlens-ingest-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = CollectorConfig {
        listen_addr: "127.0.0.1:0".parse().unwrap(),
        transport: Transport::Tcp,
        tls: Default::default(),
        data_dir: dir.clone(),
        // The records are from 2026-01-01: keep them from the retention pass.
        retention: Duration::from_secs(3650 * 86_400),
        max_store_bytes: 1 << 30,
        ingest_queue_bytes: 64 << 20,
        http_addr: "127.0.0.1:0".parse().unwrap(),
        log: Default::default(),
        http: Default::default(),
        query: Default::default(),
        collecting: Default::default(),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let r = flowlens_bins::collector_cmd::start(
        cfg,
        flowlens_bins::ops::Ops::new("t"),
        shutdown.clone(),
    )
    .await
    .unwrap();
    const T0: u32 = 1_767_225_600;
    let mut socks = Vec::new();
    let mut synth = Synth::new(4, 3, 12);
    for (from, n) in [("127.0.0.1", 700usize), ("127.0.0.2", 300)] {
        let mut enc = Encoder::new(EncoderConfig::stream(1)).unwrap();
        for l in [Layout::AggregatedV4, Layout::AggregatedV6] {
            enc.add_template(l.template_id(), l.fields()).unwrap();
        }
        let now = Timestamp::from_secs(T0 as u64 + 600);
        for rec in &synth.batch(n, T0, 600) {
            rec.write_ipfix(&mut enc, now).unwrap();
        }
        enc.flush(now);
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut s = sock.connect(r.ipfix_addr).await.unwrap();
        while let Some(b) = enc.poll_transmit() {
            s.write_all(&b).await.unwrap();
        }
        s.shutdown().await.unwrap();
        socks.push(s);
    }
    // Stored when the store holds all 1000: a condition, waited for with a deadline.
    let store = r.store.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = store.clone();
        let n = tokio::task::spawn_blocking(move || s.stats().unwrap().records)
            .await
            .unwrap();
        if n == 1000 {
            break;
        }
        assert!(n < 1000, "{n} records stored, 1000 sent");
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of 1000 records stored"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    r.task.await.unwrap().unwrap();
    drop(socks);
    let store = SqliteStore::open(SqliteConfig::new(&dir)).unwrap();
    assert_eq!(
        store.exporters().unwrap(),
        vec![
            ("127.0.0.1".to_string(), 700),
            ("127.0.0.2".to_string(), 300)
        ]
    );
    let rows = store
        .flows(&flowlens_bins::collector::query::FlowQuery {
            filter: Default::default(),
            limit: 2000,
            offset: 0,
        })
        .unwrap();
    let from_b = rows
        .iter()
        .filter(|r| r.exporter_address.as_deref() == Some("127.0.0.2"))
        .count();
    assert_eq!(from_b, 300);
    // What the records say about their exporter is theirs, and is kept apart.
    assert!(rows.iter().all(|r| r.original_exporter_address.is_some()
        && r.original_exporter_address != r.exporter_address));
}
