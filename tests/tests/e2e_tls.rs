//! Mutual TLS between `flowlens-agent` and `flowlens-aggregator`, end to end on real conntrack.
//!
//! The aggregator (`aggregatorTransportProtocol: tls`, `tlsDir`) generates its CA, server and
//! client certificates on first start. Then, on the same connections (curl from the client Pod's
//! namespace to the server Pod's):
//! 1. an agent whose client certificate comes from another CA (made by `openssl`) is refused:
//!    the aggregator counts a TLS handshake failure, the agent logs why, and no record arrives;
//! 2. a client without a certificate (`openssl s_client`) is refused and counted too;
//! 3. an agent with the generated client certificate gets its records through: the Pods and
//!    conntrack's totals for every connection.
//!
//! Needs root (see tests/README.md).

use std::time::{Duration, Instant};

use tests::e2e::*;
use tests::wait_for;

const CLIENT: &str = "10.99.0.1";
const SERVER: &str = "10.99.0.2";
const HTTP_PORT: u16 = 8081;
const AGG: &str = "127.0.0.1:14740";
const AGG_METRICS: &str = "127.0.0.1:19393";
const AGENT_METRICS: &str = "127.0.0.1:19392";
const HANDSHAKE_FAILURES: &str = "flowlens_aggregator_ipfix_collect_tls_handshake_failures_total";

fn tls_agent_yaml(meta: &std::path::Path, ca: &str, cert: &str, key: &str) -> String {
    agent_yaml(
        &format!("{AGG}:tls"),
        ["2s", "2s"],
        "node-a",
        AGENT_METRICS,
        meta,
        Some([ca, cert, key]),
    )
}

#[test]
fn mutual_tls_admits_the_generated_client_and_refuses_others() {
    require_root();
    // Bound in this order so they drop as before: the namespaces, then the directory.
    let PodPair {
        dir,
        client,
        server,
        meta,
        jsonl,
    } = PodPair::new("e2e-tls", "tls", CLIENT, SERVER);
    let tls_dir = dir.join("tls");

    let mut agg = start_aggregator(
        &client,
        &dir,
        "aggregator",
        &(aggregator_yaml(AGG, "tls", ["2s", "2s", "10s"], AGG_METRICS, &meta, &jsonl)
            + &format!(
                "tlsDir: {}\nflowAggregatorAddress: localhost\n",
                tls_dir.display()
            )),
        AGG_METRICS,
    );
    for f in [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
    ] {
        assert!(
            tls_dir.join(f).is_file(),
            "the aggregator did not generate {f} in {}",
            tls_dir.display()
        );
    }
    let ca = tls_dir.join("ca.crt");
    let ca = ca.to_str().unwrap();

    // Traffic first: its conntrack entries stay (TIME_WAIT) for both agents to see.
    let _http = http_server(&server, &dir, SERVER, HTTP_PORT);
    curl_n(&client, &format!("http://{SERVER}:{HTTP_PORT}/"), 2);
    let ct = client.final_conntrack(HTTP_PORT, 2);

    // 1. A client certificate from another CA.
    let (_, other_cert, other_key) = openssl_other_ca(&dir);
    let mut bad = start_agent(
        &client,
        &dir,
        "agent-other-ca",
        &tls_agent_yaml(
            &meta,
            ca,
            other_cert.to_str().unwrap(),
            other_key.to_str().unwrap(),
        ),
    );
    let t0 = wait_metric(
        &client,
        AGG_METRICS,
        HANDSHAKE_FAILURES,
        1.0,
        Duration::from_secs(20),
        || {
            bad.assert_running();
            agg.assert_running();
        },
    );
    let since = Instant::now();
    // The agent says why: the aggregator's alert naming the unknown CA.
    let log = wait_for(
        Duration::from_secs(20),
        "the agent with a foreign certificate to log the refusal",
        || {
            bad.assert_running();
            let l = bad.log();
            l.lines()
                .find(|l| l.contains("WARN") && l.contains("UnknownCA"))
                .map(str::to_string)
        },
    );
    eprintln!("agent with a foreign client certificate logged: {log}");
    // Three polls of the agent: it has tried to export the connections by now.
    wait_metric(
        &client,
        AGENT_METRICS,
        "flowlens_agent_conntrack_polls_total",
        3.0,
        Duration::from_secs(20),
        || bad.assert_running(),
    );
    assert_eq!(
        scrape(&client, AGG_METRICS, "flowlens_aggregator_records_in_total"),
        0.0,
        "the aggregator took records from a client certificate of another CA"
    );
    assert!(
        read_jsonl(&jsonl).is_empty(),
        "records arrived from a client certificate of another CA"
    );
    let refused = scrape(&client, AGG_METRICS, HANDSHAKE_FAILURES) - t0;
    let refused_secs = since.elapsed().as_secs_f64();
    // What the refused agent believes it delivered: nothing arrived, so nothing may count as
    // exported (an exported record's delta is forgotten by the agent).
    let bad_exported = scrape(
        &client,
        AGENT_METRICS,
        "flowlens_agent_records_exported_total",
    );
    drop(bad);
    let failures = scrape(&client, AGG_METRICS, HANDSHAKE_FAILURES);

    // 2. No client certificate at all.
    let openssl = tests::require_tool("openssl", "openssl");
    let out = client
        .cmd(&openssl)
        .args(["s_client", "-connect", AGG, "-CAfile", ca])
        .args(["-servername", "localhost", "-ign_eof"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("alert") || !out.status.success(),
        "openssl s_client without a certificate was not refused:\n{text}"
    );
    wait_metric(
        &client,
        AGG_METRICS,
        HANDSHAKE_FAILURES,
        failures + 1.0,
        Duration::from_secs(10),
        || agg.assert_running(),
    );
    assert!(read_jsonl(&jsonl).is_empty());

    // 3. The generated client certificate: the records arrive.
    let cert = tls_dir.join("client.crt");
    let key = tls_dir.join("client.key");
    let mut good = start_agent(
        &client,
        &dir,
        "agent",
        &tls_agent_yaml(&meta, ca, cert.to_str().unwrap(), key.to_str().unwrap()),
    );
    let tuples: Vec<Tuple5> = ct.iter().map(|e| e.tuple.clone()).collect();
    let by = wait_end_of_flow(&jsonl, &tuples, Duration::from_secs(30), || {
        good.assert_running();
        agg.assert_running();
    });
    for e in &ct {
        let recs = &by[&e.tuple];
        let last = recs.iter().rfind(|r| r["flowEndReason"] == 3).unwrap();
        assert_eq!(last["sourcePodName"], "client", "{last}");
        assert_eq!(last["destinationPodName"], "server", "{last}");
        assert_eq!(last["flowType"], 2, "{last}");
        for (total, _) in COUNTERS {
            assert_eq!(num(last, total), ct_counter(e, total), "{total}: {last}");
        }
    }
    assert_eq!(
        scrape(&client, AGG_METRICS, HANDSHAKE_FAILURES),
        failures + 1.0,
        "the agent with the generated certificate failed a handshake"
    );
    assert!(
        scrape(
            &client,
            AGENT_METRICS,
            "flowlens_agent_ipfix_export_session_up"
        ) == 1.0,
        "the agent's session is not up"
    );
    // Checked last so that everything above is known to work. Refused, the agent must not
    // count records as exported (their deltas would be forgotten: lost once the certificate is
    // fixed, e.g. by a Secret update the agent reloads) ...
    let no_export = (bad_exported == 0.0).then_some(()).ok_or_else(|| {
        format!(
            "the agent with a refused certificate counted {bad_exported} records as exported \
             though none arrived: messages written into a TLS session the aggregator then \
             refused are acknowledged (bins/src/transport/exporter.rs Actor::write acks a \
             message once written to the socket)"
        )
    });
    // ... and must back off (200 ms doubling, jittered), not reconnect in a tight loop.
    let backoff = (refused <= 10.0 + 2.0 * refused_secs)
        .then_some(())
        .ok_or_else(|| {
            format!(
                "the agent with a refused certificate reconnected {refused} times in \
             {refused_secs:.1} s: no backoff after a session the aggregator closed (TLS 1.3 \
             finishes client-side before the server's alert, so the session counts as \
             connected; bins/src/transport/exporter.rs must back off after a lost session too)"
            )
        });
    let errs: Vec<String> = [no_export, backoff]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}
