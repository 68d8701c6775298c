//! flowcore's encoder against pmacct's collector, `nfacctd`: Antrea-layout records sent over
//! real UDP on loopback must come out of nfacctd's print plugin with the values that were sent.
//!
//! Two print plugins run side by side:
//! - `full` aggregates on the 5-tuple, the timestamps and custom primitives (pmacct's
//!   `aggregate_primitives`) for every other IANA field of the layouts, the reverse counters of
//!   PEN 29305 and a selection of Antrea PEN 56506 fields, so each record is its own aggregate
//!   and every value can be compared;
//! - `sum` aggregates on the protocol only, so nfacctd must add up octetDeltaCount and
//!   packetDeltaCount over the records of each protocol.
//!
//! Needs `nfacctd` (Debian package `pmacct`).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use flowcore::ipfix::Layout;
use serde_json::Value;
use tests::*;

/// Custom primitives: name, pmacct field_type ([PEN:]id), length, semantics, and the flowlens
/// IE it must show.
const PRIMITIVES: &[(&str, &str, &str, &str, &str)] = &[
    ("flow_end_reason", "136", "1", "u_int", "flowEndReason"),
    ("pkt_total", "86", "8", "u_int", "packetTotalCount"),
    ("oct_total", "85", "8", "u_int", "octetTotalCount"),
    (
        "rev_pkt_total",
        "29305:86",
        "8",
        "u_int",
        "reversePacketTotalCount",
    ),
    (
        "rev_oct_total",
        "29305:85",
        "8",
        "u_int",
        "reverseOctetTotalCount",
    ),
    (
        "rev_pkt_delta",
        "29305:2",
        "8",
        "u_int",
        "reversePacketDeltaCount",
    ),
    (
        "rev_oct_delta",
        "29305:1",
        "8",
        "u_int",
        "reverseOctetDeltaCount",
    ),
    ("src_pod", "56506:101", "vlen", "str", "sourcePodName"),
    ("src_ns", "56506:100", "vlen", "str", "sourcePodNamespace"),
    ("dst_pod", "56506:103", "vlen", "str", "destinationPodName"),
    (
        "dst_node",
        "56506:105",
        "vlen",
        "str",
        "destinationNodeName",
    ),
    (
        "svc_port",
        "56506:108",
        "2",
        "u_int",
        "destinationServicePort",
    ),
    ("tcp_state", "56506:136", "vlen", "str", "tcpState"),
    ("flow_type", "56506:137", "1", "u_int", "flowType"),
];

/// Primitives only the aggregated layouts carry.
const AGGREGATED_PRIMITIVES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "orig_odid",
        "405",
        "4",
        "u_int",
        "originalObservationDomainId",
    ),
    ("orig_exp4", "403", "4", "ip", "originalExporterIPv4Address"),
    (
        "orig_exp6",
        "404",
        "16",
        "ip",
        "originalExporterIPv6Address",
    ),
    ("cluster_id", "56506:158", "vlen", "str", "clusterId"),
];

/// Records of every layout, TCP and UDP, each with its own source address and port.
fn records() -> Vec<TestRecord> {
    let mut v = Vec::new();
    for i in 0..6 {
        for (k, l) in ALL_LAYOUTS.into_iter().enumerate() {
            v.push(antrea_record(l, i + 20 * k as u64));
        }
    }
    v
}

fn write_config(dir: &TempDir, port: u16) {
    let prims: String = PRIMITIVES
        .iter()
        .chain(AGGREGATED_PRIMITIVES)
        .map(|(n, t, l, s, _)| format!("name={n}\tfield_type={t}\tlen={l}\tsemantics={s}\n"))
        .collect();
    std::fs::write(dir.join("primitives.lst"), prims).unwrap();
    let custom: Vec<&str> = PRIMITIVES
        .iter()
        .chain(AGGREGATED_PRIMITIVES)
        .map(|p| p.0)
        .collect();
    let conf = format!(
        "daemonize: false
logfile: {dir}/nfacctd.log
pidfile: {dir}/nfacctd.pid
nfacctd_ip: 127.0.0.1
nfacctd_port: {port}
aggregate_primitives: {dir}/primitives.lst
timestamps_secs: true
timestamps_since_epoch: true
plugins: print[full], print[sum]
print_output[full]: json
print_output_file[full]: {dir}/full.json
print_output_file_append[full]: true
print_refresh_time[full]: 1
aggregate[full]: src_host, dst_host, src_port, dst_port, proto, timestamp_start, timestamp_end, {custom}
print_output[sum]: json
print_output_file[sum]: {dir}/sum.json
print_output_file_append[sum]: true
print_refresh_time[sum]: 1
aggregate[sum]: proto
",
        dir = dir.path().display(),
        custom = custom.join(", ")
    );
    std::fs::write(dir.join("nfacctd.conf"), conf).unwrap();
}

/// Every JSON line of a print plugin's output file so far.
fn json_lines(path: &std::path::Path) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .collect()
}

fn num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// nfacctd's rendering of a protocol number.
fn proto_name(p: u64) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        _ => "?",
    }
}

#[test]
fn nfacctd_prints_what_flowlens_sent() {
    let nfacctd = require_tool("nfacctd", "pmacct");
    let dir = TempDir::new("nfacctd");
    let port = free_udp_port();
    write_config(&dir, port);
    let log = dir.join("nfacctd.log");
    let mut daemon = ChildGuard::spawn(
        Command::new(nfacctd)
            .arg("-f")
            .arg(dir.join("nfacctd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nfacctd.err")).unwrap()),
        "nfacctd",
    );
    let read_log = || {
        std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(dir.join("nfacctd.err")).unwrap_or_default()
    };
    // Ready when the core listens and both plugins run their loop (a first, empty purge):
    // datagrams the core takes in before the plugins are up are lost.
    wait_for(
        Duration::from_secs(10),
        "nfacctd and its plugins to start",
        || {
            if let Some(st) = daemon.try_wait() {
                panic!("nfacctd exited ({st}): {}", read_log());
            }
            let log = read_log();
            (log.contains("waiting for NetFlow/IPFIX data")
                && log.contains("( full/print ): *** Purging cache - END")
                && log.contains("( sum/print ): *** Purging cache - END"))
            .then_some(())
        },
    );

    let recs = records();
    let mut enc = encoder_with_layouts(0x00c0_ffee);
    let msgs = encode(&mut enc, &recs);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for m in &msgs {
        sock.send_to(m, ("127.0.0.1", port)).unwrap();
    }

    // Every record is its own aggregate in `full` (its source address alone tells it apart).
    let full = wait_for(
        Duration::from_secs(15),
        "nfacctd's `full` output to hold every record",
        || {
            let lines = json_lines(&dir.join("full.json"));
            (lines.len() >= recs.len()).then_some(lines)
        },
    );
    assert_eq!(
        full.len(),
        recs.len(),
        "one aggregate per record expected: {full:#?}"
    );
    let mut errs = Vec::new();
    for r in &recs {
        let src = r.ip(match r.layout {
            Layout::AgentV4 | Layout::AggregatedV4 => "sourceIPv4Address",
            _ => "sourceIPv6Address",
        });
        let dst = r.ip(match r.layout {
            Layout::AgentV4 | Layout::AggregatedV4 => "destinationIPv4Address",
            _ => "destinationIPv6Address",
        });
        let Some(line) = full.iter().find(|l| {
            l.get("ip_src").and_then(Value::as_str) == Some(src.to_string().as_str())
                && l.get("port_src").and_then(|v| num(Some(v))) == Some(r.u("sourceTransportPort"))
        }) else {
            errs.push(format!("{:?} {src}: no aggregate printed", r.layout));
            continue;
        };
        let mut check = |key: &str, got: Option<String>, want: String| {
            if got.as_deref() != Some(want.as_str()) {
                errs.push(format!(
                    "{:?} {src}: {key} = {got:?}, sent {want:?}",
                    r.layout
                ));
            }
        };
        let s = |k: &str| {
            line.get(k).map(|v| match v {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            })
        };
        check("ip_dst", s("ip_dst"), dst.to_string());
        check(
            "port_dst",
            s("port_dst"),
            r.u("destinationTransportPort").to_string(),
        );
        check(
            "ip_proto",
            s("ip_proto"),
            proto_name(r.u("protocolIdentifier")).to_string(),
        );
        check("bytes", s("bytes"), r.u("octetDeltaCount").to_string());
        check("packets", s("packets"), r.u("packetDeltaCount").to_string());
        // Printed as "<secs>.000000" even with timestamps_secs.
        let secs = |k: &str| s(k).map(|v| v.trim_end_matches(".000000").to_string());
        check(
            "timestamp_start",
            secs("timestamp_start"),
            r.u("flowStartSeconds").to_string(),
        );
        check(
            "timestamp_end",
            secs("timestamp_end"),
            r.u("flowEndSeconds").to_string(),
        );
        let aggregated = matches!(r.layout, Layout::AggregatedV4 | Layout::AggregatedV6);
        let prims = PRIMITIVES
            .iter()
            .chain(AGGREGATED_PRIMITIVES.iter().filter(|_| aggregated));
        for (name, _, _, _, ie) in prims {
            check(name, s(name), r.get(ie).text());
        }
    }
    assert!(errs.is_empty(), "nfacctd disagrees:\n{}", errs.join("\n"));

    // `sum`: octetDeltaCount and packetDeltaCount added up per protocol.
    let mut want: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for r in &recs {
        let e = want
            .entry(proto_name(r.u("protocolIdentifier")))
            .or_default();
        e.0 += r.u("octetDeltaCount");
        e.1 += r.u("packetDeltaCount");
    }
    let total_bytes: u64 = want.values().map(|v| v.0).sum();
    let sums = wait_for(
        Duration::from_secs(15),
        "nfacctd's `sum` output to account for every byte",
        || {
            let lines = json_lines(&dir.join("sum.json"));
            let bytes: u64 = lines.iter().filter_map(|l| num(l.get("bytes"))).sum();
            (bytes >= total_bytes).then_some(lines)
        },
    );
    let mut got: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for l in &sums {
        let p = match l.get("ip_proto").and_then(Value::as_str) {
            Some("tcp") => "tcp",
            Some("udp") => "udp",
            p => panic!("unexpected protocol {p:?} in {l:?}"),
        };
        let e = got.entry(p).or_default();
        // A purge may split one protocol's records over two lines: add them up.
        e.0 += num(l.get("bytes")).unwrap_or(0);
        e.1 += num(l.get("packets")).unwrap_or(0);
    }
    assert_eq!(got, want, "per-protocol (bytes, packets) sums");
    assert!(
        !read_log().contains("ERROR"),
        "nfacctd logged errors: {}",
        read_log()
    );
}
