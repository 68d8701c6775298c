//! End to end on real conntrack: `flowlens-agent` (Node node-a, static metadata) polls the
//! conntrack table of the client Pod's namespace while curl there fetches from an HTTP server
//! in the server Pod's namespace (node-b); it exports over TCP (and, in a second test, UDP) to
//! `flowlens-aggregator` on the namespace's loopback, which writes JSON lines. Every connection's records must carry the
//! Pods, Nodes, flowType 2 (InterNode: node-b is remote), tcpState TIME_WAIT at the end, and
//! totals equal to `conntrack -L -o extended`, compared per 5-tuple; the deltas of a
//! connection's records must add up to its totals.
//!
//! Needs root (see tests/README.md).

use std::collections::BTreeSet;
use std::time::Duration;

use tests::e2e::*;

const CLIENT: &str = "10.99.0.1";
const SERVER: &str = "10.99.0.2";
const HTTP_PORT: u16 = 8080;
const CONNECTIONS: usize = 3;

#[test]
fn agent_exports_real_conntrack_with_pods_and_counters_over_tcp() {
    agent_end_to_end("tcp");
}

#[test]
fn agent_exports_real_conntrack_with_pods_and_counters_over_udp() {
    agent_end_to_end("udp");
}

fn agent_end_to_end(transport: &str) {
    require_root();
    // Bound in this order so they drop as before: the namespaces, then the directory.
    let PodPair {
        dir,
        client,
        server,
        meta,
        jsonl,
    } = PodPair::new(
        &format!("e2e-agent-{transport}"),
        &format!("agent{transport}"),
        CLIENT,
        SERVER,
    );

    let mut agg = start_aggregator(
        &client,
        &dir,
        "aggregator",
        &aggregator_yaml(
            "127.0.0.1:14739",
            transport,
            ["2s", "2s", "10s"],
            "127.0.0.1:19391",
            &meta,
            &jsonl,
        ),
        "127.0.0.1:19391",
    );
    let _http = http_server(&server, &dir, SERVER, HTTP_PORT);
    let mut agent = start_agent(
        &client,
        &dir,
        "agent",
        &agent_yaml(
            &format!("127.0.0.1:14739:{transport}"),
            ["2s", "2s"],
            "node-a",
            "127.0.0.1:19390",
            &meta,
            None,
        ),
    );
    // The agent is connected before the traffic starts, so it sees the connections live.
    wait_session_up(&client, "127.0.0.1:19390", &mut agent);

    curl_n(
        &client,
        &format!("http://{SERVER}:{HTTP_PORT}/"),
        CONNECTIONS,
    );
    let ct = client.final_conntrack(HTTP_PORT, CONNECTIONS);
    let tuples: Vec<Tuple5> = ct.iter().map(|e| e.tuple.clone()).collect();
    assert_eq!(
        tuples.iter().collect::<BTreeSet<_>>().len(),
        CONNECTIONS,
        "distinct connections: {ct:?}"
    );
    let by = wait_end_of_flow(&jsonl, &tuples, Duration::from_secs(30), || {
        agent.assert_running();
        agg.assert_running();
    });

    let mut errs = Vec::new();
    for e in &ct {
        let recs = &by[&e.tuple];
        let last = recs
            .iter()
            .rfind(|r| r["flowEndReason"] == 3)
            .expect("end-of-flow record");
        for (key, want) in [
            ("sourcePodName", "client"),
            ("sourcePodNamespace", "shop"),
            ("sourceNodeName", "node-a"),
            ("destinationPodName", "server"),
            ("destinationPodNamespace", "shop"),
            ("destinationNodeName", "node-b"),
            ("tcpState", e.state.as_str()),
        ] {
            if last[key] != want {
                errs.push(format!(
                    "{:?}: {key} is {}, want {want:?}",
                    e.tuple, last[key]
                ));
            }
        }
        for r in recs {
            if r["flowType"] != 2 {
                errs.push(format!(
                    "{:?}: flowType {} (want 2, InterNode)",
                    e.tuple, r["flowType"]
                ));
            }
            if r["sourcePodName"] != "client" || r["destinationPodName"] != "server" {
                errs.push(format!("{:?}: a record without the Pods: {r}", e.tuple));
            }
        }
        let sums = sum_deltas(recs);
        for (total, _) in COUNTERS {
            let want = ct_counter(e, total);
            let from_src = format!("{total}FromSourceNode");
            for (what, got) in [
                (total.to_string(), num(last, total)),
                (from_src.clone(), num(last, &from_src)),
                (format!("sum of {total} deltas"), sums[total]),
            ] {
                if got != want {
                    errs.push(format!(
                        "{:?}: {what} = {got}, conntrack says {want}",
                        e.tuple
                    ));
                }
            }
        }
        assert!(
            e.packets > 0 && e.reverse_bytes > 0,
            "conntrack counted nothing: {e:?} (nf_conntrack_acct?)"
        );
    }
    assert!(
        errs.is_empty(),
        "{} mismatches:\n{}\nconntrack: {ct:#?}\nrecords: {by:#?}",
        errs.len(),
        errs.join("\n")
    );
    // Nothing else was exported: the agent's and aggregator's own loopback session is no Pod's.
    let all = read_jsonl(&jsonl);
    let stray: Vec<_> = all
        .iter()
        .filter(|r| !tuples.iter().any(|t| t.matches(r)))
        .collect();
    assert!(stray.is_empty(), "records of other flows: {stray:#?}");
}
