//! The aggregator (or the agent) stops and comes back mid-stream, end to end on real conntrack.
//!
//! One long-lived TCP connection from the client Pod's namespace to an echo server in the
//! server Pod's keeps carrying traffic (500 bytes each way every 50 ms) while `flowlens-agent`
//! exports it over TCP to `flowlens-aggregator`, which writes JSON lines (appending: both
//! incarnations write to the same file). Once records of the connection have come out, the
//! aggregator is stopped; the test waits until the agent has failed at least one export for
//! want of a session and has retried the connection, restarts the aggregator, waits for a record
//! from the new one, then closes the connection and waits for its end-of-flow record.
//!
//! While the connection is live, `/api/flows` must find it (port, Pod, address, protocol and
//! namespace filters) and filters that do not match must leave it out.
//!
//! What is asserted, per counter (packets and octets, both directions), with `C` conntrack's
//! final value for the connection (`conntrack -L -o extended`, TIME_WAIT):
//! - both cases: the end-of-flow record's total equals `C` (totals recover whatever happened);
//! - graceful stop (SIGTERM; the aggregator flushes every flow before it exits): the deltas of
//!   all the connection's records, before and after the restart, add up to exactly `C` —
//!   nothing lost, nothing counted twice;
//! - crash (SIGKILL): the deltas add up to at most `C` (nothing counted twice), and what is
//!   missing is at most what the dead aggregator can have held unexported: `C_n − L`, where `L`
//!   is the last total it wrote before dying and `C_n` is conntrack's value once the agent had
//!   noticed the loss (any later delta was never acknowledged, so it is re-sent).
//! - agent crash (SIGKILL to the agent, a new agent started; the aggregator stays up): the new
//!   agent knows nothing of what was exported and reports conntrack's totals; the deltas of all
//!   records still add up to exactly `C`.
//!
//! Needs root (see tests/README.md).

use std::time::Duration;

use tests::e2e::*;

const CLIENT: &str = "10.99.0.1";
const SERVER: &str = "10.99.0.2";
const ECHO_PORT: u16 = 9000;
const AGG_METRICS: &str = "127.0.0.1:19395";
const AGENT_METRICS: &str = "127.0.0.1:19394";

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// The aggregator gets SIGTERM.
    Graceful,
    /// The aggregator gets SIGKILL.
    Crash,
    /// The agent gets SIGKILL (the aggregator stays up).
    AgentCrash,
}

#[test]
fn aggregator_graceful_restart_loses_nothing() {
    restart(Stop::Graceful);
}

#[test]
fn aggregator_crash_keeps_totals_and_never_double_counts() {
    restart(Stop::Crash);
}

#[test]
fn agent_crash_and_restart_never_double_counts() {
    restart(Stop::AgentCrash);
}

fn restart(stop: Stop) {
    require_root();
    let tag = match stop {
        Stop::Graceful => "term",
        Stop::Crash => "kill",
        Stop::AgentCrash => "agent",
    };
    // Bound in this order so they drop as before: the namespaces, then the directory.
    let PodPair {
        dir,
        client,
        server,
        meta,
        jsonl,
    } = PodPair::new(
        &format!("e2e-restart-{tag}"),
        &format!("rs{tag}"),
        CLIENT,
        SERVER,
    );
    let agg_yaml = aggregator_yaml(
        "127.0.0.1:14741",
        "tcp",
        ["1s", "1s", "10s"],
        AGG_METRICS,
        &meta,
        &jsonl,
    );
    let mut agg = start_aggregator(&client, &dir, "aggregator-1", &agg_yaml, AGG_METRICS);
    let _echo = echo_server(&server, &dir, SERVER, ECHO_PORT);
    let agent_yaml = agent_yaml(
        "127.0.0.1:14741:tcp",
        ["1s", "5s"],
        "node-a",
        AGENT_METRICS,
        &meta,
        None,
    );
    let mut agent = start_agent(&client, &dir, "agent-1", &agent_yaml);
    wait_session_up(&client, AGENT_METRICS, &mut agent);

    let conn = EchoClient::connect(&client, SERVER, ECHO_PORT);
    let tuple = Tuple5::tcp(CLIENT, SERVER, conn.port, ECHO_PORT);
    let traffic = traffic(conn, 500, Duration::from_millis(50));
    let of_conn = || tuple.records_in(&jsonl);

    // Records of the connection come out of the first aggregator.
    tests::wait_for(
        Duration::from_secs(20),
        "a record of the connection from the first aggregator",
        || {
            agent.assert_running();
            agg.assert_running();
            (of_conn().len() >= 2).then_some(())
        },
    );
    // The live connection is in the aggregator's memory: `/api/flows` finds it by port, Pod,
    // address, protocol and namespace, and filters that do not match leave it out.
    let flows = |q: &str| -> Vec<serde_json::Value> {
        let body = client
            .http_get(&format!("http://{AGG_METRICS}/api/flows?{q}"))
            .unwrap_or_else(|| panic!("GET /api/flows?{q} failed"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/flows?{q}: {e}: {body}"))
    };
    for q in [
        format!("port={}", tuple.sport),
        format!("pod=server&ip={SERVER}&protocol=6"),
        "namespace=shop".to_string(),
    ] {
        let f = flows(&q);
        assert!(
            f.iter()
                .any(|r| tuple.matches(r) && r["sourcePodName"] == "client"),
            "/api/flows?{q} lacks the live connection: {f:#?}"
        );
    }
    for q in ["port=1", "pod=nobody", "protocol=17", "namespace=other"] {
        let f = flows(q);
        assert!(f.is_empty(), "/api/flows?{q} should be empty: {f:#?}");
    }
    let failed_before = scrape(
        &client,
        AGENT_METRICS,
        "flowlens_agent_records_failed_total",
    );
    let connect_failures_before = scrape(
        &client,
        AGENT_METRICS,
        "flowlens_agent_ipfix_export_connect_failures_total",
    );
    let (before, last_before, at_notice);
    if stop == Stop::AgentCrash {
        agent.stop("-KILL");
        drop(agent);
        before = of_conn();
        last_before = before.last().expect("records before the stop").clone();
        at_notice = None;
        // A new agent knows nothing of what the old one exported: it reports the connection's
        // totals from conntrack, and the aggregator counts only what it has not exported yet.
        agent = start_agent(&client, &dir, "agent-2", &agent_yaml);
    } else {
        let status = match stop {
            Stop::Graceful => agg.stop("-TERM"),
            _ => agg.stop("-KILL"),
        };
        if stop == Stop::Graceful {
            assert!(
                status.success(),
                "the aggregator did not exit cleanly on SIGTERM ({status}):\n{}",
                agg.log()
            );
        }
        drop(agg);
        before = of_conn();
        last_before = before.last().expect("records before the stop").clone();

        // The agent fails exports while the aggregator is away, and retries the connection.
        wait_metric(
            &client,
            AGENT_METRICS,
            "flowlens_agent_records_failed_total",
            failed_before + 1.0,
            Duration::from_secs(20),
            || agent.assert_running(),
        );
        wait_metric(
            &client,
            AGENT_METRICS,
            "flowlens_agent_ipfix_export_connect_failures_total",
            connect_failures_before + 1.0,
            Duration::from_secs(20),
            || agent.assert_running(),
        );
        at_notice = client
            .conntrack(ECHO_PORT)
            .into_iter()
            .find(|e| e.tuple == tuple);

        assert!(at_notice.is_some(), "the connection is not in conntrack");
        agg = start_aggregator(&client, &dir, "aggregator-2", &agg_yaml, AGG_METRICS);
    }
    tests::wait_for(
        Duration::from_secs(30),
        "a record of the connection after the restart",
        || {
            agent.assert_running();
            agg.assert_running();
            (of_conn().len() > before.len()).then_some(())
        },
    );
    let (mut conn, sent) = traffic.finish();
    conn.close();
    let ct = client.final_conntrack(ECHO_PORT, 1);
    assert_eq!(ct[0].tuple, tuple);
    let by = wait_end_of_flow(
        &jsonl,
        std::slice::from_ref(&tuple),
        Duration::from_secs(30),
        || {
            agent.assert_running();
            agg.assert_running();
        },
    );
    let recs = &by[&tuple];
    let last = recs.iter().rfind(|r| r["flowEndReason"] == 3).unwrap();
    let sums = sum_deltas(recs);
    let mut report = format!(
        "{sent} echoes; {} records ({} before the stop)\n",
        recs.len(),
        before.len()
    );
    let mut errs = Vec::new();
    for (total, _) in COUNTERS {
        let c = ct_counter(&ct[0], total);
        let got = num(last, total);
        let sum = sums[total];
        let l = num(&last_before, total);
        let cn = at_notice.as_ref().map_or(0, |e| ct_counter(e, total));
        report += &format!(
            "{total}: conntrack {c}, end-of-flow total {got}, sum of deltas {sum}; \
             last total before the stop {l}, conntrack when the agent noticed {cn}\n"
        );
        if got != c {
            errs.push(format!("{total}: end-of-flow total {got} ≠ conntrack {c}"));
        }
        match stop {
            Stop::Graceful | Stop::AgentCrash if sum != c => errs.push(format!(
                "{total}: deltas add up to {sum}, conntrack {c} ({})",
                if sum < c { "lost" } else { "double counted" }
            )),
            Stop::Crash if sum > c => {
                errs.push(format!("{total}: deltas add up to {sum} > conntrack {c}"))
            }
            Stop::Crash if c - sum > cn.saturating_sub(l) => errs.push(format!(
                "{total}: {} missing, more than the {} the dead aggregator can have held",
                c - sum,
                cn.saturating_sub(l)
            )),
            _ => {}
        }
    }
    eprintln!("{report}");
    assert!(
        errs.is_empty(),
        "{}\n{report}records: {recs:#?}",
        errs.join("\n")
    );
}

/// The aggregator forgets a flow that stays idle past `inactiveFlowRecordTimeout` (and past the
/// time it remembers finished flows), while the connection lives on; when traffic resumes, the
/// agent's next record must add only the new traffic: the deltas of all the connection's
/// records add up to exactly conntrack's final counters.
#[test]
fn aggregator_forgetting_an_idle_flow_never_double_counts() {
    require_root();
    // Bound in this order so they drop as before: the namespaces, then the directory.
    let PodPair {
        dir,
        client,
        server,
        meta,
        jsonl,
    } = PodPair::new("e2e-idle-forget", "idle", CLIENT, SERVER);
    let mut agg = start_aggregator(
        &client,
        &dir,
        "aggregator",
        &aggregator_yaml(
            "127.0.0.1:14741",
            "tcp",
            ["1s", "1s", "2s"],
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
            "127.0.0.1:14741:tcp",
            ["1s", "1s"],
            "node-a",
            AGENT_METRICS,
            &meta,
            None,
        ),
    );
    wait_session_up(&client, AGENT_METRICS, &mut agent);
    let mut conn = EchoClient::connect(&client, SERVER, ECHO_PORT);
    let tuple = Tuple5::tcp(CLIENT, SERVER, conn.port, ECHO_PORT);
    for _ in 0..10 {
        conn.send(500);
    }
    tests::wait_for(
        Duration::from_secs(20),
        "the aggregator to export the connection and then forget it (idle)",
        || {
            agent.assert_running();
            agg.assert_running();
            let seen = !tuple.records_in(&jsonl).is_empty();
            let live = scrape(&client, AGG_METRICS, "flowlens_aggregator_flows_in_flight");
            (seen && live == 0.0).then_some(())
        },
    );
    // Four more agent polls (≥ 3 s, more than the 2 s a finished flow is remembered), still
    // idle; then the connection carries traffic again and closes.
    wait_more_polls(&client, AGENT_METRICS, 4, &mut agent);
    let before = tuple.records_in(&jsonl).len();
    for _ in 0..10 {
        conn.send(700);
    }
    conn.close();
    let ct = client.final_conntrack(ECHO_PORT, 1);
    let by = wait_end_of_flow(
        &jsonl,
        std::slice::from_ref(&tuple),
        Duration::from_secs(30),
        || {
            agent.assert_running();
            agg.assert_running();
        },
    );
    let recs = &by[&tuple];
    let last = recs.iter().rfind(|r| r["flowEndReason"] == 3).unwrap();
    let errs = counter_mismatches(recs, last, &ct[0]);
    assert!(
        errs.is_empty(),
        "{}\n{} records ({before} before the idle period): {recs:#?}",
        errs.join("\n"),
        recs.len()
    );
}
