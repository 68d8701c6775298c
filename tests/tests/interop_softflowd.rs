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

use tests::decode_cmp::{
    assert_decode_matches_tshark, assert_decode_matches_tshark_as, check_flows, flowlens_decode,
};
use tests::traffic;
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

#[test]
fn softflowd_exports_decode_alike_in_flowlens_and_tshark() {
    let softflowd = require_tool("softflowd", "softflowd");
    require_tool("tshark", "tshark");
    let dir = TempDir::new("softflowd");
    let (traffic_pcap, flows) = traffic::capture_file(&dir);
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

/// softflowd exporting over TCP (`-P tcp`, bidirectional, nanoseconds): the stream it sent is
/// written as one TCP connection cut into segments without regard to message boundaries, which
/// flowlens decode must reassemble as tshark does.
#[test]
fn softflowd_tcp_stream_decodes_alike_in_flowlens_and_tshark() {
    let softflowd = require_tool("softflowd", "softflowd");
    require_tool("tshark", "tshark");
    let dir = TempDir::new("softflowd-tcp");
    let (traffic_pcap, flows) = traffic::capture_file(&dir);
    let tp = traffic_pcap.to_str().unwrap();
    let args = [
        "-d",
        "-c",
        "none",
        "-r",
        tp,
        "-v",
        "10",
        "-b",
        "-A",
        "nano",
        "-P",
        "tcp",
        "-n",
        "127.0.0.1:{port}",
    ];
    let stream = capture_exporter_tcp(&softflowd, &args, "softflowd -P tcp");
    let file = dir.join("softflowd-tcp.pcap");
    // 700-byte segments: messages (about 1.4 kB) straddle segments.
    pcap::write_tcp_stream_pcap(
        &file,
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:4739".parse().unwrap(),
        traffic::START,
        &stream,
        700,
    );
    let c = assert_decode_matches_tshark_as(&file, "tcp.port==4739,cflow");
    eprintln!("softflowd tcp: {c:?}");
    assert!(c.messages > 1 && c.records > 0, "{c:?}");
    let (recs, summary) = flowlens_decode(&file);
    // (The summary's "TCP streams" counts every direction that opened with a SYN, the
    // collector's payload-less one included, so it says 2 here.)
    assert!(summary.contains(" 0 IPFIX datagrams"), "{summary}");
    let errs = check_flows(&recs, &flows, true);
    assert!(errs.is_empty(), "softflowd tcp: {}", errs.join("\n"));
    if std::env::var_os("FLOWLENS_WRITE_FIXTURES").is_some() {
        std::fs::create_dir_all(fixtures_dir()).unwrap();
        std::fs::copy(&file, fixtures_dir().join("softflowd-tcp.pcap")).unwrap();
    }
}
