//! softflowd, a third-party IPFIX exporter, against `flowlens decode` and tshark.
//!
//! A deterministic traffic capture (tests/src/traffic.rs) is turned into flows by softflowd
//! (`-r FILE -v 10`, uni- and bidirectional, flow times as sysUpTime or `-A milli/micro/nano`);
//! its IPFIX datagrams are received on loopback and written to a capture, which `flowlens decode`
//! and tshark must read alike, field by field. The flows must also be the ones in the traffic:
//! addresses, ports, protocol, packet and octet counts per direction.
//!
//! `FLOWLENS_WRITE_FIXTURES=1` also stores each capture under tests/fixtures/ (softflowd-*.pcap),
//! which interop_decode.rs checks without needing softflowd.
//!
//! Needs `softflowd` (Debian package `softflowd`), `tshark`, and builds `flowlens`.

use serde_json::{Map, Value};
use tests::decode_cmp::{assert_decode_matches_tshark, flowlens_decode};
use tests::traffic::{self, Flow};
use tests::*;

/// Modes: fixture name and softflowd's extra arguments.
const MODES: &[(&str, &[&str])] = &[
    ("uni", &[]),
    ("bidir", &["-b"]),
    ("milli", &["-A", "milli"]),
    ("micro", &["-A", "micro"]),
    ("nano", &["-A", "nano"]),
    ("bidir-nano", &["-b", "-A", "nano"]),
];

fn get_u(r: &Map<String, Value>, k: &str) -> Option<u64> {
    r.get(k).and_then(Value::as_u64)
}

fn get_s<'a>(r: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    r.get(k).and_then(Value::as_str)
}

/// The data record of the flow from `a` to `b`, if flowlens printed one.
fn find(
    recs: &[Map<String, Value>],
    proto: u8,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
) -> Option<&Map<String, Value>> {
    let (sk, dk) = if a.is_ipv4() {
        ("sourceIPv4Address", "destinationIPv4Address")
    } else {
        ("sourceIPv6Address", "destinationIPv6Address")
    };
    recs.iter().find(|r| {
        get_u(r, "protocolIdentifier") == Some(proto as u64)
            && get_s(r, sk) == Some(a.ip().to_string().as_str())
            && get_s(r, dk) == Some(b.ip().to_string().as_str())
            && get_u(r, "sourceTransportPort") == Some(a.port() as u64)
            && get_u(r, "destinationTransportPort") == Some(b.port() as u64)
    })
}

/// Checks flowlens's records against the flows of the traffic capture.
fn check_flows(recs: &[Map<String, Value>], flows: &[Flow], bidirectional: bool) -> Vec<String> {
    let mut errs = Vec::new();
    let data: Vec<Map<String, Value>> = recs
        .iter()
        .filter(|r| r.get("optionsRecord") != Some(&Value::Bool(true)))
        .cloned()
        .collect();
    let mut expected_records = 0;
    for f in flows {
        let counts = |r: &Map<String, Value>, rev: bool| {
            let (o, p) = if rev {
                ("reverseOctetDeltaCount", "reversePacketDeltaCount")
            } else {
                ("octetDeltaCount", "packetDeltaCount")
            };
            (get_u(r, p), get_u(r, o))
        };
        if bidirectional {
            expected_records += 1;
            match find(&data, f.proto, f.client, f.server) {
                None => errs.push(format!("no record for {f:?}")),
                Some(r) => {
                    let want = (
                        (Some(f.packets.0), Some(f.octets.0)),
                        (Some(f.packets.1), Some(f.octets.1)),
                    );
                    let got = (counts(r, false), counts(r, true));
                    if got != want {
                        errs.push(format!(
                            "{f:?}: (packets, octets) forward and reverse {got:?}, want {want:?}"
                        ));
                    }
                }
            }
        } else {
            for (a, b, p, o) in [
                (f.client, f.server, f.packets.0, f.octets.0),
                (f.server, f.client, f.packets.1, f.octets.1),
            ] {
                if p == 0 {
                    continue;
                }
                expected_records += 1;
                match find(&data, f.proto, a, b) {
                    None => errs.push(format!("no record for {a} -> {b} of {f:?}")),
                    Some(r) if counts(r, false) != (Some(p), Some(o)) => errs.push(format!(
                        "{a} -> {b}: (packets, octets) {:?}, want {:?}",
                        counts(r, false),
                        (p, o)
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    if data.len() != expected_records {
        errs.push(format!(
            "{} data records, {expected_records} expected",
            data.len()
        ));
    }
    errs
}

#[test]
fn softflowd_exports_decode_alike_in_flowlens_and_tshark() {
    let softflowd = require_tool("softflowd", "softflowd");
    require_tool("tshark", "tshark");
    let dir = TempDir::new("softflowd");
    let (frames, flows) = traffic::capture();
    let traffic_pcap = dir.join("traffic.pcap");
    pcap::write_pcap(&traffic_pcap, &frames);
    let write_fixtures = std::env::var_os("FLOWLENS_WRITE_FIXTURES").is_some();
    let mut errs = Vec::new();
    for (name, extra) in MODES {
        let tp = traffic_pcap.to_str().unwrap();
        let mut args = vec!["-d", "-c", "none", "-r", tp, "-v", "10"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-n", "127.0.0.1:{port}"]);
        let msgs = capture_exporter(&softflowd, &args, &format!("softflowd {}", args.join(" ")));
        let file = dir.join(&format!("softflowd-{name}.pcap"));
        write_ipfix_capture(&file, &msgs);
        let c = assert_decode_matches_tshark(&file, 4739);
        eprintln!("softflowd {name}: {c:?}");
        assert!(c.records > 0 && c.options_records > 0, "{name}: {c:?}");
        let (recs, _) = flowlens_decode(&file);
        for e in check_flows(&recs, &flows, extra.contains(&"-b")) {
            errs.push(format!("softflowd {name}: {e}"));
        }
        // The flow times are in the unit asked for.
        let unit_key = match *extra {
            [.., "-A", "milli"] => "flowStartMilliseconds",
            [.., "-A", "micro"] => "flowStartMicroseconds",
            [.., "-A", "nano"] => "flowStartNanoseconds",
            _ => "flowStartSysUpTime",
        };
        if !recs
            .iter()
            .filter(|r| r.get("optionsRecord").is_none())
            .all(|r| r.contains_key(unit_key))
        {
            errs.push(format!("softflowd {name}: records without {unit_key}"));
        }
        if write_fixtures {
            std::fs::create_dir_all(fixtures_dir()).unwrap();
            std::fs::copy(&file, fixtures_dir().join(format!("softflowd-{name}.pcap"))).unwrap();
        }
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}
