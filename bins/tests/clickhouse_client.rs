//! `flowlens_bins::clickhouse` against a real ClickHouse server (Debian's 18.16 here): the schema
//! is created and re-created idempotently, a batch lands whole in the record table and in every
//! rollup, authentication works, and errors name the server and say what ClickHouse said.

mod clickhouse_fixture;

use clickhouse_fixture::{ClickHouse, shared};
use flowlens_bins::clickhouse::{ClickHouseClient, ClickHouseConfig};
use flowlens_bins::collector::synth::Synth;

const T0: u32 = 1_767_225_600;

fn cfg(ch: &ClickHouse, database: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: ch.url(),
        database: database.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn schema_is_idempotent_and_a_batch_fills_every_table() {
    let ch = shared();
    let c = ClickHouseClient::connect(cfg(ch, "client_batch"))
        .await
        .unwrap();
    assert!(!c.server_version().is_empty());
    // Connecting again (schema exists) is fine.
    drop(
        ClickHouseClient::connect(cfg(ch, "client_batch"))
            .await
            .unwrap(),
    );
    let recs = Synth::new(3, 4, 30).batch(5000, T0, 1800);
    assert_eq!(c.insert(&recs, T0 as u64 + 1800).await.unwrap(), 5000);
    assert_eq!(c.insert(&[], 0).await.unwrap(), 0);
    assert_eq!(
        ch.sql("SELECT count() FROM client_batch.flows").trim(),
        "5000"
    );
    let bytes = |f: &dyn Fn(&flowcore::aggregator::AggregatedRecord) -> bool| -> u64 {
        recs.iter().filter(|r| f(r)).map(|r| r.deltas[1]).sum()
    };
    for (table, want) in [
        ("flows", bytes(&|_| true)),
        ("flows_node_pair_1m", bytes(&|_| true)),
        (
            "flows_pod_pair_1m",
            bytes(&|r| matches!(r.flow_type, 1 | 2)),
        ),
        (
            "flows_pod_service_1m",
            bytes(&|r| !r.service_port_name.is_empty()),
        ),
        (
            "flows_policy_1m",
            bytes(&|r| !r.ingress.name.is_empty() || !r.egress.name.is_empty()),
        ),
    ] {
        let col = if table == "flows" {
            "octetDeltaCount"
        } else {
            "octets"
        };
        let got = ch.sql(&format!("SELECT sum({col}) FROM client_batch.{table}"));
        assert_eq!(got.trim(), want.to_string(), "{table}");
    }
    // External rollup: what the Pod sent, whichever end opened the flow.
    let ext: u64 = recs
        .iter()
        .map(|r| match r.flow_type {
            3 => r.deltas[1],
            4 => r.deltas[3],
            _ => 0,
        })
        .sum();
    assert_eq!(
        ch.sql("SELECT sum(octets) FROM client_batch.flows_pod_external_1m")
            .trim(),
        ext.to_string()
    );
    // Ids increase in insertion order and continue after a reconnect.
    let c2 = ClickHouseClient::connect(cfg(ch, "client_batch"))
        .await
        .unwrap();
    c2.insert(&recs[..10], 0).await.unwrap();
    assert_eq!(
        ch.sql("SELECT min(id), max(id), uniqExact(id) FROM client_batch.flows")
            .trim(),
        "1\t5010\t5010"
    );
}

#[tokio::test]
async fn password_user_and_error_messages() {
    let ch = shared();
    let ok = ClickHouseConfig {
        user: "flowlens".into(),
        password: "secret".into(),
        ..cfg(ch, "client_auth")
    };
    ClickHouseClient::connect(ok.clone()).await.unwrap();
    let e = ClickHouseClient::connect(ClickHouseConfig {
        password: "wrong".into(),
        ..ok.clone()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains(&ch.url()) && e.contains("Wrong password"), "{e}");
    // Query-only mode against a table that does not exist.
    let e = ClickHouseClient::connect(ClickHouseConfig {
        create_schema: false,
        table: "nope".into(),
        ..ok.clone()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&ch.url()) && e.contains("client_auth.nope") && e.contains("Code: 60"),
        "{e}"
    );
    // Nothing listening.
    let url = format!("http://127.0.0.1:{}", clickhouse_fixture::free_port());
    let e = ClickHouseClient::connect(ClickHouseConfig {
        url: url.clone(),
        ..ok.clone()
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&url) && e.to_lowercase().contains("refused"),
        "{e}"
    );
    // A bad config is refused before any request.
    let e = ClickHouseClient::connect(ClickHouseConfig {
        batch_rows: 0,
        ..ok
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("clickhouse.batchRows"), "{e}");
}

/// A server the test owns (not the shared one) is gone once dropped.
#[test]
fn fixture_kills_its_server_on_drop() {
    let ch = ClickHouse::start(false);
    let port = ch.http_port;
    assert_eq!(ch.sql("SELECT 1").trim(), "1");
    let pid = ch.server_pid();
    drop(ch);
    assert!(clickhouse_fixture::http(port, "GET", "/ping", "").is_err());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            // A zombie until reaped is gone as far as serving goes.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| s.contains(") Z "))
        }
    );
}
