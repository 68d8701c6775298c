//! flowcore's encoder against nfdump's collector, `nfcapd`: Antrea-layout records sent over UDP
//! on loopback must be printed by `nfcapd -E` (its record dump) with the values sent: addresses,
//! ports, protocol, octet and packet deltas, flow end reason, and the reverse (PEN 29305) delta
//! counters, which nfdump shows as "out bytes" / "out packets".
//!
//! nfdump 1.7.1 does not read flowStartSeconds/flowEndSeconds (it prints first/last as 0,
//! "<unknown>"), so the flow times are not compared; Antrea's own fields are not decoded by it.
//!
//! Needs `nfcapd` (Debian package `nfdump`).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use flowcore::ipfix::Layout;
use tests::*;

/// Every "Flow Record:" block of nfcapd's output, as key → value text.
fn parse_records(out: &str) -> Vec<HashMap<String, String>> {
    let mut recs: Vec<HashMap<String, String>> = Vec::new();
    for l in out.lines() {
        if l.starts_with("Flow Record:") {
            recs.push(HashMap::new());
        } else if let (Some(r), Some((k, v))) = (recs.last_mut(), l.split_once('=')) {
            // "  in bytes     =            159007" and "  proto        =   17 UDP".
            r.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    recs
}

#[test]
fn nfcapd_prints_what_flowlens_sent() {
    let nfcapd = require_tool("nfcapd", "nfdump");
    let dir = TempDir::new("nfcapd");
    let port = free_udp_port();
    let out = dir.join("nfcapd.out");
    let err = dir.join("nfcapd.err");
    let mut daemon = ChildGuard::spawn(
        Command::new(nfcapd)
            .arg("-w")
            .arg(dir.path())
            .args(["-b", "127.0.0.1", "-p", &port.to_string(), "-E", "-t", "60"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap()),
        "nfcapd",
    );
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    wait_for(Duration::from_secs(10), "nfcapd to listen", || {
        if let Some(st) = daemon.try_wait() {
            panic!("nfcapd exited ({st}): {}", read(&err));
        }
        read(&err).contains("Startup nfcapd").then_some(())
    });

    let mut recs = Vec::new();
    for i in 0..5u64 {
        for (k, l) in ALL_LAYOUTS.into_iter().enumerate() {
            recs.push(antrea_record(l, i + 20 * k as u64));
        }
    }
    let mut enc = encoder_with_layouts(0x00c0_ffee);
    let msgs = encode(&mut enc, &recs);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for m in &msgs {
        sock.send_to(m, ("127.0.0.1", port)).unwrap();
    }
    let printed = wait_for(
        Duration::from_secs(15),
        "nfcapd to print every record",
        || {
            let r = parse_records(&read(&out));
            (r.len() >= recs.len()).then_some(r)
        },
    );
    assert_eq!(printed.len(), recs.len(), "records printed by nfcapd");

    let mut errs = Vec::new();
    for r in &recs {
        let v4 = matches!(r.layout, Layout::AgentV4 | Layout::AggregatedV4);
        let (sk, dk) = if v4 {
            ("sourceIPv4Address", "destinationIPv4Address")
        } else {
            ("sourceIPv6Address", "destinationIPv6Address")
        };
        let src = r.ip(sk).to_string();
        let sport = r.u("sourceTransportPort").to_string();
        let Some(p) = printed
            .iter()
            .find(|p| p.get("src addr") == Some(&src) && p.get("src port") == Some(&sport))
        else {
            errs.push(format!("{:?} {src}:{sport}: not printed", r.layout));
            continue;
        };
        let proto = p
            .get("proto")
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string);
        let reason = p
            .get("end reason")
            .and_then(|s| s.split_whitespace().next())
            .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
            .map(|n| n.to_string());
        let checks = [
            ("dst addr", p.get("dst addr").cloned(), r.ip(dk).to_string()),
            (
                "dst port",
                p.get("dst port").cloned(),
                r.u("destinationTransportPort").to_string(),
            ),
            ("proto", proto, r.u("protocolIdentifier").to_string()),
            (
                "in bytes",
                p.get("in bytes").cloned(),
                r.u("octetDeltaCount").to_string(),
            ),
            (
                "in packets",
                p.get("in packets").cloned(),
                r.u("packetDeltaCount").to_string(),
            ),
            (
                "out bytes",
                p.get("out bytes").cloned(),
                r.u("reverseOctetDeltaCount").to_string(),
            ),
            (
                "out packets",
                p.get("out packets").cloned(),
                r.u("reversePacketDeltaCount").to_string(),
            ),
            ("end reason", reason, r.u("flowEndReason").to_string()),
        ];
        for (k, got, want) in checks {
            if got.as_deref() != Some(want.as_str()) {
                errs.push(format!(
                    "{:?} {src}:{sport}: {k} = {got:?}, sent {want:?}",
                    r.layout
                ));
            }
        }
    }
    assert!(errs.is_empty(), "nfcapd disagrees:\n{}", errs.join("\n"));
    // On SIGTERM nfcapd logs its totals (packets and bytes of both directions) and how many
    // sequence numbers it found wrong.
    daemon.signal_group("-TERM");
    daemon.wait_exit(Duration::from_secs(10));
    let log = read(&err);
    assert!(
        log.contains(&format!(
            "Flows: {}, Packets: {}, Bytes: {}, Sequence Errors: 0, Bad Packets: 0",
            recs.len(),
            recs.iter()
                .map(|r| r.u("packetDeltaCount") + r.u("reversePacketDeltaCount"))
                .sum::<u64>(),
            recs.iter()
                .map(|r| r.u("octetDeltaCount") + r.u("reverseOctetDeltaCount"))
                .sum::<u64>(),
        )),
        "nfcapd's totals: {log}"
    );
}
