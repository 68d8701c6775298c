//! A clean agent shutdown flushes every live connection, end to end on real conntrack.
//!
//! A long-lived TCP connection (client Pod → echo server in the server Pod) carries some traffic
//! and then idles, still ESTABLISHED. The agent's export timeouts are long (60 s), so nothing of
//! it has been exported when the agent gets SIGTERM, after it has polled the idle connection
//! twice. The agent must exit 0 and its flush must reach the aggregator: the connection's
//! record has flowEndReason 4 (forced end), the Pods, and totals (and the sum of deltas) equal
//! to conntrack's counters for the idle connection.
//!
//! Needs root (see tests/README.md).

use std::time::Duration;

use tests::e2e::*;

const CLIENT: &str = "10.99.0.1";
const SERVER: &str = "10.99.0.2";
const ECHO_PORT: u16 = 9001;
const AGG_METRICS: &str = "127.0.0.1:19399";
const AGENT_METRICS: &str = "127.0.0.1:19398";

#[test]
fn agent_shutdown_flushes_live_connections() {
    require_root();
    // Bound in this order so they drop as before: the namespaces, then the directory.
    let PodPair {
        dir,
        client,
        server,
        meta,
        jsonl,
    } = PodPair::new("e2e-shutdown", "shut", CLIENT, SERVER);
    let mut agg = start_aggregator(
        &client,
        &dir,
        "aggregator",
        &aggregator_yaml(
            "127.0.0.1:14742",
            "tcp",
            ["60s", "1s", "60s"],
            AGG_METRICS,
            &meta,
            &jsonl,
        ),
        AGG_METRICS,
    );
    let _echo = echo_server(&server, &dir, SERVER, ECHO_PORT);
    let mut agent = start_agent(
        &client,
        &dir,
        "agent",
        &agent_yaml(
            "127.0.0.1:14742:tcp",
            ["60s", "60s"],
            "node-a",
            AGENT_METRICS,
            &meta,
            None,
        ),
    );
    wait_session_up(&client, AGENT_METRICS, &mut agent);

    let mut conn = EchoClient::connect(&client, SERVER, ECHO_PORT);
    let tuple = Tuple5::tcp(CLIENT, SERVER, conn.port, ECHO_PORT);
    for _ in 0..5 {
        conn.send(1000);
    }
    // The connection is idle from here on; two more polls and the agent has its final counters.
    wait_more_polls(&client, AGENT_METRICS, 2, &mut agent);
    let ct = client
        .conntrack(ECHO_PORT)
        .into_iter()
        .find(|e| e.tuple == tuple)
        .expect("the connection in conntrack");
    assert_eq!(ct.state, "ESTABLISHED", "{ct:?}");
    assert!(
        tuple.records_in(&jsonl).is_empty(),
        "the connection was exported before the shutdown; the test's timeouts are too short"
    );

    let status = agent.stop("-TERM");
    assert!(
        status.success(),
        "the agent did not exit cleanly on SIGTERM ({status}):\n{}",
        agent.log()
    );
    let recs = tests::wait_for(
        Duration::from_secs(20),
        "the flushed record of the live connection",
        || {
            agg.assert_running();
            let r = tuple.records_in(&jsonl);
            (!r.is_empty()).then_some(r)
        },
    );
    let last = recs.last().unwrap();
    let mut errs = counter_mismatches(&recs, last, &ct);
    for (key, want) in [
        ("sourcePodName", "client"),
        ("destinationPodName", "server"),
        ("tcpState", "ESTABLISHED"),
    ] {
        if last[key] != want {
            errs.push(format!("{key} is {}, want {want:?}", last[key]));
        }
    }
    if last["flowEndReason"] != 4 {
        errs.push(format!(
            "flowEndReason {} (want 4, forced end)",
            last["flowEndReason"]
        ));
    }
    assert!(
        errs.is_empty(),
        "{}\nconntrack: {ct:?}\nrecords: {recs:#?}\nagent log:\n{}",
        errs.join("\n"),
        agent.log()
    );
    conn.close();
}
