//! Every attack of the table and the ones an attacker would think of next, as a
//! [`Scenario`] at a [`Size`]: CI (seconds; the tests in `tests/tests/abuse_*.rs` assert on it)
//! or the full size (`tests/tests/abuse_measure.rs` prints the figures of
//! `tests/ABUSE.md`). Each also names the counters it must move ([`super::names`]) and whether
//! the well-behaved exporter must get through *while* it runs (`during`: lock-outs and floods
//! on the records' path).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::attacks::{self, FloodTo, Opening, Server, get};
use super::daemons::{Daemon, Transport, free_tcp_port, release_bins};
use super::metrics;
use super::names::*;
use super::scenario::{Expect, Scenario};
use super::{ATTACKER_ADDR, MESSAGE_TIMEOUT_BOUND, Size};
use crate::TempDir;

/// The `exporter` label of the aggregator's per-exporter counters for an attacker's domain.
pub fn attacker_label(domain: u32) -> String {
    format!("{ATTACKER_ADDR}/{domain}")
}

/// How long the aggregator remembers a finished flow (flowcore's tombstone lifetime at the
/// default `inactiveFlowRecordTimeout`: as long as conntrack may still list the connection).
const TOMBSTONE_LIFE: Duration = Duration::from_secs(150);
/// The aggregator's default `inactiveFlowRecordTimeout`: a flow with no new record is finished
/// then.
const INACTIVE_TIMEOUT: Duration = Duration::from_secs(90);
/// The aggregator tidies its tables every 5 s and hands freed memory back every 10 s.
const HOUSEKEEPING: Duration = Duration::from_secs(15);

/// Observation domains the attackers use (see `attacks`).
pub const NAME_FLOOD_DOMAIN: u32 = 0x6666;
pub const FLOW_FLOOD_DOMAIN: u32 = 0x6668;

/// No attack: the harness itself (the exporter, the stored-exactly-once check, the RSS
/// settling) must pass against any build.
pub fn control(size: Size) -> Scenario {
    let hold = size.pick(Duration::from_secs(3), Duration::from_secs(10));
    let mut s = Scenario::new(
        "control (no attack)",
        Box::new(|_t, ctl| {
            ctl.hold();
            attacks::Report::default()
        }),
    );
    s.during = true;
    s.hold_for = hold;
    s
}

/// Issue row 1: unique 200 B – 8 KiB Pod, Namespace and label names from one agent.
pub fn unique_names(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "unique names 200 B–8 KiB",
        attacks::name_flood(attacks::NameFlood {
            duration: size.pick(Duration::from_secs(60), Duration::from_secs(10)),
            max_records: size.pick(30_000, u64::MAX),
            min_len: 200,
            max_len: 8192,
            valid_lengths: false,
        }),
    );
    s.during = true;
    s.hold_for = size.pick(Duration::ZERO, Duration::from_secs(10));
    s.expect = vec![
        Expect::aggregator(NAMES_REFUSED, &[("reason", "over_budget")]),
        Expect::aggregator(NAMES_REFUSED, &[("reason", "too_long")]),
    ];
    // Records whose names are all within Kubernetes' limits get in (within maxNameBytes) and
    // are kept with their flows, as in `unique_valid_names`.
    s.aggregator_state_life = INACTIVE_TIMEOUT + TOMBSTONE_LIFE + HOUSEKEEPING;
    s
}

/// Unique names of valid Kubernetes lengths: nothing is refused as too long, only the name
/// budget (maxNameBytes) can stop them.
pub fn unique_valid_names(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "unique names of valid length",
        attacks::name_flood(attacks::NameFlood {
            duration: size.pick(Duration::from_secs(60), Duration::from_secs(10)),
            max_records: size.pick(200_000, u64::MAX),
            min_len: 200,
            max_len: 8192,
            valid_lengths: true,
        }),
    );
    s.during = true;
    s.hold_for = size.pick(Duration::ZERO, Duration::from_secs(10));
    s.expect = vec![Expect::aggregator(
        NAMES_REFUSED,
        &[("reason", "over_budget")],
    )];
    // Names of valid length are kept with the attacker's flows (active records: in flight until
    // the inactive timeout, then as tombstones), within maxNameBytes.
    s.aggregator_state_life = INACTIVE_TIMEOUT + TOMBSTONE_LIFE + HOUSEKEEPING;
    s
}

/// Pod labels of 60 KB per record (as much as an IPFIX message holds).
pub fn huge_labels(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "60 KB label JSON",
        attacks::label_flood(attacks::LabelFlood {
            records: size.pick(2_000, 40_000),
            label_len: 60_000,
        }),
    );
    s.during = true;
    s.expect = vec![Expect::aggregator(NAMES_REFUSED, &[("reason", "too_long")])];
    s
}

/// Issue row 2: templates of 1,000 fields, many template ids in many domains, held open.
pub fn template_amplification(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "1,000-field templates",
        attacks::template_flood(attacks::TemplateFlood {
            connections: size.pick(1, 4),
            domains: size.pick(4, 12),
            templates_per_domain: 1000,
            fields: 1000,
        }),
    );
    s.during = true;
    // A template over maxFieldsPerTemplate is malformed (the session closes at once); many
    // templates within it fill the session's template budget.
    s.expect = vec![
        Expect::aggregator(SESSIONS_CLOSED, &[("reason", "template_budget")]),
        Expect::aggregator(MALFORMED, &[("reason", "TooManyFields")]),
    ];
    s
}

/// Thousands of observation domains in one session, each with a template and a record.
pub fn many_domains(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "thousands of observation domains",
        attacks::domain_flood(attacks::DomainFlood {
            domains: size.pick(5_000, 100_000),
        }),
    );
    s.during = true;
    s.expect = vec![
        Expect::aggregator(SESSIONS_CLOSED, &[("reason", "template_budget")]),
        Expect::aggregator(MALFORMED, &[]),
    ];
    s
}

/// Templates defined, used once and withdrawn, over and over, with 100–1,000 fields.
pub fn template_churn(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "template define/withdraw churn",
        attacks::template_churn(attacks::TemplateChurn {
            iterations: size.pick(20_000, 500_000),
        }),
    );
    s.during = true;
    s.expect = vec![Expect::aggregator(IPFIX_RECORDS, &[])];
    s
}

/// Counters that say a held connection was refused or closed: what the transport admission
/// work adds (per-address caps, idle timeouts, evicting the idlest session when full).
fn admission_counters() -> Vec<Expect> {
    vec![
        Expect::aggregator(SESSIONS_REJECTED, &[("reason", "per_address")]),
        Expect::aggregator(SESSIONS_REJECTED, &[("reason", "full")]),
        Expect::aggregator(SESSIONS_CLOSED, &[("reason", "evicted")]),
        Expect::aggregator(SESSIONS_CLOSED, &[("reason", "idle_timeout")]),
    ]
}

/// Issue row 3: 1,024+ idle TCP connections, reopened as soon as they are closed.
pub fn idle_connections(_size: Size) -> Scenario {
    let mut s = Scenario::new(
        "1,100 idle TCP connections",
        attacks::hold_connections(attacks::HoldConnections {
            count: 1100,
            opening: Opening::Nothing,
            reopen_per_sweep: usize::MAX,
            engage_after: Duration::ZERO,
        }),
    );
    s.during = true;
    s.expect = admission_counters();
    s
}

/// Issue row 3, TLS: each connection sends the start of a ClientHello and stops. Twice as many
/// as there are session slots: when the handshake timeout frees the held ones, the next in the
/// listen backlog (the attacker's) take them, and a new exporter waits behind them.
pub fn half_open_tls(_size: Size) -> Scenario {
    let mut s = Scenario::new(
        "2,100 half-done TLS handshakes",
        attacks::hold_connections(attacks::HoldConnections {
            count: 2100,
            opening: Opening::PartialClientHello,
            reopen_per_sweep: usize::MAX,
            // Past the daemon's 10 s handshake timeout: the slots it freed are taken again.
            engage_after: Duration::from_secs(12),
        }),
    );
    s.aggregator.transport = Transport::Tls;
    s.during = true;
    s.expect = admission_counters();
    s
}

/// Issue row 4: 1,100 one-datagram UDP exporters from distinct source ports. The well-behaved
/// exporter comes from a new source port every generation (a restarted agent, a new Node), so
/// it needs a session slot while the table is full.
pub fn udp_session_table(_size: Size) -> Scenario {
    let mut s = Scenario::new(
        "1,100 one-datagram UDP exporters",
        attacks::udp_sources(attacks::UdpSources { count: 1100 }),
    );
    s.aggregator.transport = Transport::Udp;
    s.during = true;
    s.expect = vec![Expect::aggregator(UDP_SESSIONS_EVICTED, &[])];
    s
}

/// Issue row 5: a header claiming 65,535 bytes, 4 bytes of body, then silence (or, `trickle`,
/// one byte every 500 ms). Each connection must be closed within [`MESSAGE_TIMEOUT_BOUND`].
pub fn partial_message(size: Size, trickle: bool) -> Scenario {
    let mut s = Scenario::new(
        if trickle {
            "IPFIX message trickled 2 B/s"
        } else {
            "IPFIX header claiming 65,535 B, then silence"
        },
        attacks::partial_messages(attacks::PartialMessages {
            count: size.pick(16, 1024),
            trickle,
        }),
    );
    s.during = true;
    s.hold_for = MESSAGE_TIMEOUT_BOUND + Duration::from_secs(5);
    s.expect = vec![Expect::aggregator(
        SESSIONS_CLOSED,
        &[("reason", "message_timeout")],
    )];
    s
}

/// What a partial-message scenario asserts beyond the common requirements.
pub fn partial_message_failures(o: &super::scenario::Outcome) -> Vec<String> {
    let r = &o.attack;
    let late = r
        .close_times
        .iter()
        .filter(|t| **t > MESSAGE_TIMEOUT_BOUND)
        .count();
    let mut f = Vec::new();
    if r.open_at_end > 0 || late > 0 {
        f.push(format!(
            "{} of {} connections stuck inside a message still open after {:?}, {} closed later than {:?}",
            r.open_at_end,
            r.connections,
            o.attack_ran,
            late,
            MESSAGE_TIMEOUT_BOUND
        ));
    }
    f
}

/// Issue row "one malformed message per ms": `per_second` malformed messages, each on a new
/// connection. The aggregator's log must grow by a bounded number of lines.
pub fn malformed_flood(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "one malformed message per ms",
        attacks::malformed_flood(attacks::MalformedFlood {
            per_second: 1000,
            duration: size.pick(Duration::from_secs(4), Duration::from_secs(10)),
        }),
    );
    s.during = true;
    s.hold_for = size.pick(Duration::from_secs(4), Duration::from_secs(10));
    s.expect = vec![Expect::aggregator(MALFORMED, &[])];
    s
}

/// The log-growth bound of a malformed flood.
pub fn log_flood_failures(o: &super::scenario::Outcome) -> Vec<String> {
    let secs = o.attack_ran.as_secs_f64().max(1.0) + 2.0;
    let bound = (super::LOG_LINES_PER_SEC * secs) as usize + super::LOG_LINES_SLACK;
    let lines = o.aggregator.log_lines;
    if lines > bound {
        vec![format!(
            "the aggregator wrote {lines} log lines for {} malformed messages over {:.1} s; at most {bound} allowed ({} per second + {})",
            o.attack.messages,
            secs,
            super::LOG_LINES_PER_SEC,
            super::LOG_LINES_SLACK
        )]
    } else {
        Vec::new()
    }
}

/// Unique 5-tuples from one agent, held in flight (flowEndReason 2), to fill the flow table:
/// CI with `maxFlows: 20000`, full size against the default 1,000,000.
pub fn flow_table_flood(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "flow-table flood of unique 5-tuples",
        attacks::flow_flood(attacks::FlowFlood {
            to: FloodTo::Aggregator,
            flows: size.pick(60_000, 3_000_000),
            continuous: true,
            end_reason: 2,
            distinct_names: false,
            spread_secs: 1,
        }),
    );
    s.aggregator.max_flows = size.pick(Some(20_000), None);
    s.during = true;
    // Up to maxFlows of the flood's flows stay in flight until the inactive timeout, then as
    // tombstones.
    s.aggregator_state_life = INACTIVE_TIMEOUT + TOMBSTONE_LIFE + HOUSEKEEPING;
    s.expect = vec![Expect::aggregator(
        EXPORTER_FLOWS_EVICTED,
        &[("exporter", leak(attacker_label(FLOW_FLOOD_DOMAIN)))],
    )];
    s
}

/// Fair eviction: none of the well-behaved exporter's flows may be evicted.
pub fn eviction_failures(o: &super::scenario::Outcome) -> Vec<String> {
    let evicted = [
        o.during.as_ref().and_then(|d| d.as_ref().ok()),
        o.after.as_ref().ok(),
    ]
    .iter()
    .flatten()
    .map(|d| d.evicted_records)
    .max()
    .unwrap_or(0);
    if evicted > 0 {
        vec![format!(
            "{evicted} of the well-behaved exporter's records were evicted (flowEndReason 5): the flood should evict its own flows"
        )]
    } else {
        Vec::new()
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// One agent floods the aggregator with ended flows (exported at once), so the aggregated
/// stream towards the collector is mostly its records.
pub fn agent_flood(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "one agent flooding ended flows",
        attacks::flow_flood(attacks::FlowFlood {
            to: FloodTo::Aggregator,
            flows: size.pick(50_000, 500_000),
            continuous: true,
            end_reason: 3,
            distinct_names: false,
            spread_secs: 1,
        }),
    );
    s.during = true;
    s.hold_for = size.pick(Duration::ZERO, Duration::from_secs(20));
    s.expect = vec![Expect::aggregator(AGGREGATOR_RECORDS_IN, &[])];
    // Ended flows are remembered as tombstones (within maxFlows).
    s.aggregator_state_life = TOMBSTONE_LIFE + HOUSEKEEPING;
    s
}

/// Issue row "one exporter flooding the collector": a second IPFIX exporter sends the collector
/// aggregated records as fast as it takes them.
pub fn collector_flood(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "one exporter flooding the collector",
        attacks::flow_flood(attacks::FlowFlood {
            to: FloodTo::Collector,
            flows: size.pick(50_000, 500_000),
            continuous: true,
            end_reason: 3,
            distinct_names: false,
            spread_secs: 60,
        }),
    );
    s.during = true;
    s.hold_for = size.pick(Duration::ZERO, Duration::from_secs(20));
    s.expect = vec![Expect::collector(IPFIX_RECORDS, &[])];
    s
}

/// The same flood against a store bounded by maxStoreBytes, then the retention pass (at the
/// collector's start): the well-behaved history must survive the flooder's.
pub fn collector_flood_retention(size: Size) -> Scenario {
    let mut s = Scenario::new(
        "collector flood, then size-based retention",
        attacks::flow_flood(attacks::FlowFlood {
            to: FloodTo::Collector,
            flows: size.pick(200_000, 3_000_000),
            continuous: false,
            end_reason: 3,
            distinct_names: false,
            // Now, like everyone else's: the minutes retention must cut are shared.
            spread_secs: 1,
        }),
    );
    s.collector.max_store_bytes = Some(size.pick(16 << 20, 256 << 20));
    s.during = true;
    s.restart_collector = true;
    s.expect = vec![Expect::collector(IPFIX_RECORDS, &[])];
    s
}

/// Sends `records` aggregated records with distinct Pod names straight to the collector and
/// waits (5 min at most) until it has stored them: a store with many distinct names.
pub fn fill_collector(collector_ipfix: SocketAddr, collector_http: SocketAddr, records: u64) {
    let before = metrics::scrape(collector_http)
        .map(|s| metrics::value(&s, RECORDS_STORED, &[]))
        .unwrap_or(0.0);
    let fill = attacks::flow_flood(attacks::FlowFlood {
        to: FloodTo::Collector,
        flows: records,
        continuous: false,
        end_reason: 3,
        distinct_names: true,
        spread_secs: 3000,
    });
    let target = attacks::Target {
        aggregator: collector_ipfix,
        transport: Transport::Tcp,
        aggregator_http: collector_http,
        collector_ipfix,
        collector_http,
        tls_dir: None,
    };
    run_to_engaged(fill, &target);
    crate::wait_for(
        Duration::from_secs(300),
        "the collector to store the filling records",
        || {
            let n = metrics::scrape(collector_http)
                .map(|s| metrics::value(&s, RECORDS_STORED, &[]))
                .unwrap_or(0.0);
            (n - before >= records as f64).then_some(())
        },
    );
}

/// Issue row "1,000 concurrent dashboard/API queries over a store with many distinct names".
pub fn concurrent_queries(size: Size) -> Scenario {
    let records = size.pick(30_000, 500_000);
    let paths: Vec<String> = [
        "/api/top?by=podPair&limit=1000&start=now-1h",
        "/api/top?by=pod&limit=1000&start=now-1h",
        "/api/sankey?by=podPair&limit=500&start=now-1h",
        "/api/timeseries?by=srcPod&limit=50&start=now-1h",
        "/api/flows?limit=1000&srcNamespace=attacker",
        "/api/policies?limit=1000&start=now-1h",
        "/api/node-matrix?start=now-1h",
        "/api/stats",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    let mut s = Scenario::new(
        "1,000 concurrent API queries",
        attacks::concurrent_queries(attacks::ConcurrentQueries {
            count: size.pick(300, 1000),
            rounds: size.pick(1, 3),
            paths,
        }),
    );
    s.prepare = Some(Box::new(move |t| {
        fill_collector(t.collector_ipfix, t.collector_http, records)
    }));
    s.expect = vec![
        Expect::collector(QUERY_REFUSED, &[("reason", "busy")]),
        Expect::collector(HTTP_REFUSED, &[("reason", "overloaded")]),
        Expect::collector(HTTP_REFUSED, &[("reason", "connection_limit")]),
    ];
    s
}

/// Issue row "2,000 HTTP connections sending headers slowly" (one byte a second, reopened when
/// closed), held past the header timeout.
pub fn slow_headers(_size: Size) -> Scenario {
    let mut s = Scenario::new(
        "2,000 slow-header HTTP connections",
        attacks::slow_headers(attacks::SlowHeaders {
            count: 2000,
            every: Duration::from_secs(1),
        }),
    );
    s.hold_for = Duration::from_secs(15);
    s.expect = vec![
        Expect::collector(HTTP_REFUSED, &[("reason", "connection_limit")]),
        Expect::collector(HTTP_REFUSED, &[("reason", "header_timeout")]),
    ];
    s
}

/// The collector never ran out of descriptors.
pub fn fd_failures(o: &super::scenario::Outcome) -> Vec<String> {
    let limit = super::NOFILE as usize;
    if o.collector.max_fds + 8 >= limit {
        vec![format!(
            "the collector held {} descriptors (limit {limit}): exhausted",
            o.collector.max_fds
        )]
    } else {
        Vec::new()
    }
}

/// Issue row "aggregator `/api/flows?limit=1000000000`": with many flows in flight, a huge
/// limit to both daemons' `/api/flows`.
pub fn unbounded_limit(size: Size) -> Scenario {
    let flows = size.pick(20_000, 300_000);
    let mut s = Scenario::new(
        "/api/flows?limit=1000000000",
        attacks::requests(attacks::Requests {
            requests: vec![
                (Server::Aggregator, get("/api/flows?limit=1000000000")),
                (Server::Collector, get("/api/flows?limit=1000000000")),
            ],
            rounds: size.pick(3, 10),
        }),
    );
    s.prepare = Some(Box::new(move |t| {
        // Flows in flight in the aggregator, and stored in the collector.
        let fill = attacks::flow_flood(attacks::FlowFlood {
            to: FloodTo::Aggregator,
            flows,
            continuous: false,
            end_reason: 2,
            distinct_names: false,
            spread_secs: 1,
        });
        run_to_engaged(fill, t);
        let want = flows as f64;
        crate::wait_for(
            Duration::from_secs(120),
            "the aggregator to take the filling flows",
            || {
                let n = metrics::scrape(t.aggregator_http)
                    .map(|s| metrics::value(&s, AGGREGATOR_RECORDS_IN, &[]))
                    .unwrap_or(0.0);
                (n >= want).then_some(())
            },
        );
    }));
    s
}

/// Runs an attack until it engages (its writing done), then stops it.
fn run_to_engaged(a: attacks::Attack, t: &attacks::Target) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let ctl = attacks::Ctl::new(stop.clone(), tx);
    let t = t.clone();
    let h = std::thread::spawn(move || a(&t, &ctl));
    let _ = rx.recv_timeout(Duration::from_secs(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = h.join();
}

/// Every answer was a 4xx (a refusal), none a success, error or timeout.
pub fn all_refused_failures(o: &super::scenario::Outcome, also_closed: bool) -> Vec<String> {
    let bad: Vec<String> = o
        .attack
        .statuses
        .iter()
        .filter(|(k, _)| !(k.starts_with('4') || also_closed && *k == "closed"))
        .map(|(k, v)| format!("{k}×{v}"))
        .collect();
    if bad.is_empty() && !o.attack.statuses.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "answers that were not refusals (4xx{}): {} (all: {})",
            if also_closed { " or closed" } else { "" },
            bad.join(" "),
            o.attack.summary()
        )]
    }
}

/// Requests a megabyte long (URI, one header) and a POST announcing a gigabyte body, to both
/// daemons' HTTP servers.
pub fn huge_requests(size: Size) -> Scenario {
    let big = "a".repeat(1 << 20);
    let uri =
        format!("GET /api/flows?pod={big} HTTP/1.1\r\nHost: {{host}}\r\nConnection: close\r\n\r\n");
    let header = format!(
        "GET /api/stats HTTP/1.1\r\nHost: {{host}}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );
    let post = format!(
        "POST /api/flows HTTP/1.1\r\nHost: {{host}}\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n{}",
        "b".repeat(1 << 16)
    );
    let mut requests = Vec::new();
    for server in [Server::Aggregator, Server::Collector] {
        for r in [&uri, &header, &post] {
            requests.push((server, r.clone()));
        }
    }
    let mut s = Scenario::new(
        "megabyte request lines and headers",
        attacks::requests(attacks::Requests {
            requests,
            rounds: size.pick(3, 50),
        }),
    );
    s.expect = vec![];
    s
}

/// Issue row "query time range near i64 limits": bounds past what the API accepts (Unix
/// seconds up to 2100, RFC 3339, `now-N{s,m,h,d}`), absolute and relative, on every endpoint;
/// each must be refused (400), never computed with wrapped arithmetic.
pub fn time_range_overflow(size: Size) -> Scenario {
    let mut requests = Vec::new();
    for p in [
        "/api/flows?start=-9223372036854775808&end=9223372036854775807",
        "/api/flows?start=9223372036854775807",
        "/api/flows?end=18446744073709551615",
        "/api/top?start=0&end=18446744073709551615",
        "/api/top?start=9223372036854775806&end=9223372036854775807",
        "/api/timeseries?start=9223372036854775000&end=9223372036854775807",
        // 213503982334602 days are more seconds than a u64 holds.
        "/api/timeseries?start=now-213503982334602d",
        "/api/sankey?start=9999-12-31T23:59:59Z",
        "/api/node-matrix?end=-1",
        "/api/policies?start=18446744073709551615&end=18446744073709551615",
    ] {
        requests.push((Server::Collector, get(p)));
    }
    let mut s = Scenario::new(
        "query time range near i64 limits",
        attacks::requests(attacks::Requests {
            requests,
            rounds: size.pick(2, 20),
        }),
    );
    s.expect = vec![];
    s
}

/// What happened when a daemon's HTTP port was already taken.
#[derive(Debug)]
pub struct PortInUse {
    pub daemon: &'static str,
    /// The exit status, if it exited within the deadline.
    pub exited: Option<std::process::ExitStatus>,
    pub log: String,
}

impl PortInUse {
    /// The daemon must refuse to start, naming the key of the taken address.
    pub fn failures(&self, key: &str) -> Vec<String> {
        match self.exited {
            Some(st) if !st.success() && self.log.contains(key) => Vec::new(),
            Some(st) => vec![format!(
                "{} exited ({st}) without naming {key}: {}",
                self.daemon,
                self.log.trim()
            )],
            None => vec![format!(
                "{} kept running with its {key} taken by another process (no metrics, no error); its log: {}",
                self.daemon,
                self.log.lines().take(5).collect::<Vec<_>>().join(" / ")
            )],
        }
    }
}

/// Issue row "metrics port already in use": starts the daemon (`aggregator`: metricsAddr,
/// `collector`: httpAddr) with that address held by another socket; waits 15 s at most for it to
/// exit.
pub fn port_in_use(aggregator: bool) -> PortInUse {
    super::daemons::raise_own_nofile();
    let dir = TempDir::new(if aggregator {
        "abuse-port-aggregator"
    } else {
        "abuse-port-collector"
    });
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let (what, bin, args, yaml) = if aggregator {
        let yaml = format!(
            "listenAddr: \"127.0.0.1:{}\"\naggregatorTransportProtocol: tcp\nmetricsAddr: \"{addr}\"\n",
            free_tcp_port()
        );
        (
            "aggregator",
            release_bins().aggregator.clone(),
            vec!["--config".to_string()],
            yaml,
        )
    } else {
        let yaml = format!(
            "listenAddr: \"127.0.0.1:{}\"\ntransport: tcp\ndataDir: {}\nhttpAddr: \"{addr}\"\n",
            free_tcp_port(),
            dir.join("store").display()
        );
        (
            "collector",
            release_bins().flowlens.clone(),
            vec!["collector".to_string(), "--config".to_string()],
            yaml,
        )
    };
    let cfg = dir.join("config.yaml");
    std::fs::write(&cfg, yaml).expect("write config");
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cfg_s = cfg.to_str().expect("utf-8 path").to_string();
    args.push(&cfg_s);
    let mut d = Daemon::spawn(&bin, &args, &dir.join("log"), what);
    let t0 = Instant::now();
    let mut exited = None;
    while t0.elapsed() < Duration::from_secs(15) {
        exited = d.exited();
        if exited.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(taken);
    PortInUse {
        daemon: what,
        exited,
        log: d.log_text(),
    }
}

/// Every scenario at `size`, by name, for the measurements.
pub fn all(size: Size) -> Vec<Scenario> {
    vec![
        control(size),
        unique_names(size),
        unique_valid_names(size),
        huge_labels(size),
        template_amplification(size),
        many_domains(size),
        template_churn(size),
        idle_connections(size),
        half_open_tls(size),
        udp_session_table(size),
        partial_message(size, false),
        partial_message(size, true),
        malformed_flood(size),
        flow_table_flood(size),
        agent_flood(size),
        collector_flood(size),
        collector_flood_retention(size),
        concurrent_queries(size),
        slow_headers(size),
        unbounded_limit(size),
        huge_requests(size),
        time_range_overflow(size),
    ]
}
