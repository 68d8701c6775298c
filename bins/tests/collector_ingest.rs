//! The store writer: coalesces small sends into few transactions, stores everything on close,
//! and does not deadlock on a batch larger than its queue.

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
    };
    let ing = Ingest::spawn(s.clone(), cfg).unwrap();
    let mut synth = Synth::new(9, 3, 12);
    for k in 0..20u32 {
        ing.send(synth.batch(300, 1_767_225_600 + k * 60, 60))
            .await
            .unwrap();
    }
    // Larger than the whole queue: must not wait forever.
    ing.send(synth.batch(12_000, 1_767_300_000, 600))
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
