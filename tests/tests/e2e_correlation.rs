//! Two agents, one aggregator: the two Node halves of inter-Node flows meet, end to end on real
//! conntrack.
//!
//! Three namespaces: node-a (client Pod 10.99.0.1), node-b (server Pod 10.99.0.2), joined by a
//! "Pod network" veth, and the aggregator's, reached from each Node over a veth of its own (so
//! the agents' IPFIX sessions are no Pod's traffic), with mutual TLS: the aggregator generates
//! its CA and certificates (`tlsDir`), both agents use the generated client certificate. Each
//! Node namespace runs a `flowlens-agent` with its own `nodeName` and the same static
//! metadata, polling its own conntrack table. curl on node-a fetches from an HTTP server on node-b. Every connection's
//! aggregated records must be `correlated: true`, carry the Pods, Nodes and flowType 2, and
//! the end-of-flow record's per-Node counters must equal each Node's conntrack:
//! `…FromSourceNode` = node-a's `conntrack -L`, `…FromDestinationNode` = node-b's; both
//! `flowEndSecondsFrom…Node` are set, and the aggregator counts the correlations and no
//! uncorrelated flow.
//!
//! Needs root (see tests/README.md).

use std::time::Duration;

use tests::TempDir;
use tests::e2e::*;

const CLIENT: &str = "10.99.0.1";
const SERVER: &str = "10.99.0.2";
const HTTP_PORT: u16 = 8082;
const CONNECTIONS: usize = 3;
const AGG_METRICS: &str = "127.0.0.1:19397";
const AGENT_METRICS: &str = "127.0.0.1:19396";
const AGG_IP: &str = "192.168.70.1";

#[test]
fn two_agents_halves_are_correlated_with_both_nodes_counters() {
    require_root();
    let dir = TempDir::new("e2e-correlation");
    let node_a = Netns::new("cor-a");
    let node_b = Netns::new("cor-b");
    let aggns = Netns::new("cor-agg");
    veth(
        &node_a,
        "pod0",
        &format!("{CLIENT}/24"),
        &node_b,
        "pod0",
        &format!("{SERVER}/24"),
    );
    veth(
        &node_a,
        "agg0",
        "192.168.71.2/24",
        &aggns,
        "toa",
        "192.168.71.1/24",
    );
    veth(
        &node_b,
        "agg0",
        "192.168.72.2/24",
        &aggns,
        "tob",
        "192.168.72.1/24",
    );
    // The aggregator's address, the name in its generated server certificate, is on its
    // loopback; each Node routes to it over its own veth.
    aggns.ip(&["addr", "add", &format!("{AGG_IP}/32"), "dev", "lo"]);
    node_a.ip(&[
        "route",
        "add",
        &format!("{AGG_IP}/32"),
        "via",
        "192.168.71.1",
    ]);
    node_b.ip(&[
        "route",
        "add",
        &format!("{AGG_IP}/32"),
        "via",
        "192.168.72.1",
    ]);
    node_a.enable_conntrack(&dir);
    node_b.enable_conntrack(&dir);
    let meta = dir.join("meta.yaml");
    std::fs::write(&meta, metadata_yaml(CLIENT, SERVER)).unwrap();
    let jsonl = dir.join("flows.jsonl");
    let tls = dir.join("tls");

    let mut agg = start_aggregator(
        &aggns,
        &dir,
        "aggregator",
        &(aggregator_yaml(
            "0.0.0.0:4739",
            "tls",
            ["2s", "10s", "20s"],
            AGG_METRICS,
            &meta,
            &jsonl,
        ) + &format!(
            "tlsDir: {}\nflowAggregatorAddress: \"{AGG_IP}\"\n",
            tls.display()
        )),
        AGG_METRICS,
    );
    let [ca, cert, key] = ["ca.crt", "client.crt", "client.key"].map(|f| tls.join(f));
    let agent_yaml = |node: &str| {
        agent_yaml(
            &format!("{AGG_IP}:4739:tls"),
            ["2s", "2s"],
            node,
            AGENT_METRICS,
            &meta,
            Some([&ca, &cert, &key].map(|p| p.to_str().expect("utf-8 path"))),
        )
    };
    let mut agent_a = start_agent(&node_a, &dir, "agent-a", &agent_yaml("node-a"));
    let mut agent_b = start_agent(&node_b, &dir, "agent-b", &agent_yaml("node-b"));
    for (ns, agent) in [(&node_a, &mut agent_a), (&node_b, &mut agent_b)] {
        wait_session_up(ns, AGENT_METRICS, agent);
    }

    let _http = http_server(&node_b, &dir, SERVER, HTTP_PORT);
    curl_n(
        &node_a,
        &format!("http://{SERVER}:{HTTP_PORT}/"),
        CONNECTIONS,
    );
    let ct_a = node_a.final_conntrack(HTTP_PORT, CONNECTIONS);
    let ct_b = node_b.final_conntrack(HTTP_PORT, CONNECTIONS);
    let tuples: Vec<Tuple5> = ct_a.iter().map(|e| e.tuple.clone()).collect();
    let by = wait_end_of_flow(&jsonl, &tuples, Duration::from_secs(40), || {
        agent_a.assert_running();
        agent_b.assert_running();
        agg.assert_running();
    });

    let mut errs = Vec::new();
    for a in &ct_a {
        let b = ct_b
            .iter()
            .find(|b| b.tuple == a.tuple)
            .unwrap_or_else(|| panic!("{:?} is not in node-b's conntrack: {ct_b:#?}", a.tuple));
        let recs = &by[&a.tuple];
        for r in recs {
            for (key, want) in [
                ("sourcePodName", "client"),
                ("sourceNodeName", "node-a"),
                ("destinationPodName", "server"),
                ("destinationNodeName", "node-b"),
            ] {
                if r[key] != want {
                    errs.push(format!("{:?}: {key} is {}, want {want:?}", a.tuple, r[key]));
                }
            }
            if r["correlated"] != true || r["flowType"] != 2 {
                errs.push(format!(
                    "{:?}: correlated {} flowType {} (want true, 2)",
                    a.tuple, r["correlated"], r["flowType"]
                ));
            }
        }
        let last = recs.iter().rfind(|r| r["flowEndReason"] == 3).unwrap();
        for (side, ct) in [("SourceNode", a), ("DestinationNode", b)] {
            for (total, _) in COUNTERS {
                let key = format!("{total}From{side}");
                let (got, want) = (num(last, &key), ct_counter(ct, total));
                if got != want {
                    errs.push(format!(
                        "{:?}: {key} = {got}, that Node's conntrack says {want}",
                        a.tuple
                    ));
                }
            }
            let end = format!("flowEndSecondsFrom{side}");
            if num(last, &end) == 0 {
                errs.push(format!("{:?}: {end} is 0", a.tuple));
            }
        }
        assert!(
            a.packets > 0 && b.packets > 0,
            "conntrack counted nothing: {a:?} {b:?}"
        );
    }
    assert!(
        errs.is_empty(),
        "{} mismatches:\n{}\nnode-a conntrack: {ct_a:#?}\nnode-b conntrack: {ct_b:#?}\nrecords: {by:#?}",
        errs.len(),
        errs.join("\n")
    );
    let correlated = scrape(&aggns, AGG_METRICS, "flowlens_aggregator_correlated_total");
    let uncorrelated = scrape(
        &aggns,
        AGG_METRICS,
        "flowlens_aggregator_uncorrelated_total",
    );
    assert!(
        correlated >= CONNECTIONS as f64 && uncorrelated == 0.0,
        "aggregator metrics: correlated {correlated}, uncorrelated {uncorrelated}"
    );
}
