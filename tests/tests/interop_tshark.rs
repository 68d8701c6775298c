//! flowcore's encoder against tshark's IPFIX dissector (`cflow`): Antrea-layout records (agent
//! and aggregated, IPv4 and IPv6) encoded by flowlens must be decoded by tshark with the same
//! value in every field — IANA fields by tshark's own names and rendering, reverse (PEN 29305)
//! counters as "Reverse" fields, Antrea (PEN 56506) fields as raw enterprise entries with the
//! exact bytes — and without any expert warning or malformed-packet mark.
//!
//! Needs `tshark` (Debian package `tshark`).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use flowcore::ie::{PEN_ANTREA, PEN_IANA, PEN_REVERSE};
use flowcore::ipfix::Layout;
use tests::tshark::{PdmlMessage, PdmlRecord, abs_time, iana_field_name};
use tests::*;

const DOMAIN: u32 = 0x0a0b_0c0d;

/// Five records of each layout, layouts interleaved in runs so that messages carry several sets
/// and sets several records.
fn records() -> Vec<TestRecord> {
    let mut v = Vec::new();
    for i in 0..5 {
        for l in ALL_LAYOUTS {
            v.push(antrea_record(l, i));
            if i % 2 == 0 {
                v.push(antrea_record(l, 100 + i));
            }
        }
    }
    v
}

/// Every mismatch between what tshark showed for one record and what was encoded.
fn compare(got: &PdmlRecord, want: &TestRecord) -> Vec<String> {
    let mut errs = Vec::new();
    let tid = want.layout.template_id();
    if got.set_id != tid {
        errs.push(format!("set id {} instead of {tid}", got.set_id));
    }
    let mut shown = got.fields.iter().peekable();
    for (spec, v) in &want.fields {
        let ie = spec.name.unwrap_or("?");
        let mut bad = |what: String| errs.push(format!("{ie} ({}): {what}", spec.ie));
        // tshark 4.0 shows nothing for an empty variable-length enterprise field; the fields
        // after it must still line up.
        if spec.ie.pen != PEN_IANA && *v == Val::S(String::new()) {
            let tag = format!(" Type {}:", spec.ie.id);
            if shown.peek().is_none_or(|g| !g.showname.contains(&tag)) {
                continue;
            }
        }
        let Some(g) = shown.next() else {
            bad("not shown (record ended)".into());
            continue;
        };
        match spec.ie.pen {
            PEN_IANA => {
                let Some(name) = iana_field_name(ie) else {
                    bad(format!("no tshark name known; tshark showed {g:?}"));
                    continue;
                };
                if g.name != name {
                    bad(format!("tshark field {} instead of {name}", g.name));
                }
                let want_show = match v {
                    Val::Secs(s) => abs_time(*s),
                    v => v.text(),
                };
                if g.show != want_show {
                    bad(format!("tshark shows {:?}, encoded {want_show:?}", g.show));
                }
            }
            PEN_REVERSE => {
                let fwd = flowcore::ie::lookup(flowcore::ie::IeId::iana(spec.ie.id))
                    .map(|e| e.name)
                    .unwrap_or("?");
                let name = iana_field_name(fwd).unwrap_or("?");
                if g.name != name {
                    bad(format!("tshark field {} instead of {name}", g.name));
                }
                let tag = format!("(Reverse Type {} ", spec.ie.id);
                if !g.showname.contains(&tag) {
                    bad(format!("label {:?} lacks {tag:?}", g.showname));
                }
                if g.show != v.text() {
                    bad(format!("tshark shows {:?}, encoded {:?}", g.show, v.text()));
                }
            }
            PEN_ANTREA => {
                // tshark 4.0 has no names for Antrea's IEs; it shows them as enterprise entries
                // of "Project Antrea" with their raw bytes.
                let tag = format!("(Project Antrea) Type {}:", spec.ie.id);
                if g.name != "cflow.enterprise_private_entry" || !g.showname.contains(&tag) {
                    bad(format!(
                        "shown as {} {:?}, expected {tag:?}",
                        g.name, g.showname
                    ));
                }
                let hex = v.wire_hex(spec);
                if g.value != hex || g.size != hex.len() / 2 {
                    bad(format!(
                        "raw bytes {} ({} bytes), encoded {hex} ({:?})",
                        g.value, g.size, v
                    ));
                }
            }
            pen => bad(format!("unexpected PEN {pen}")),
        }
    }
    let extra: Vec<_> = shown.map(|g| &g.showname).collect();
    if !extra.is_empty() {
        errs.push(format!("tshark showed more fields than encoded: {extra:?}"));
    }
    errs
}

/// Checks tshark's view of `msgs` (data messages after template messages) against `recs`.
fn check(shown: &[PdmlMessage], recs: &[TestRecord]) {
    let problems: Vec<_> = shown
        .iter()
        .flat_map(|m| {
            m.problems
                .iter()
                .map(move |p| format!("frame {}: {p}", m.frame))
        })
        .collect();
    assert!(problems.is_empty(), "tshark complained: {problems:#?}");
    for m in shown {
        assert_eq!(m.header("cflow.version"), Some("10"), "frame {}", m.frame);
        assert_eq!(
            m.header("cflow.od_id"),
            Some(DOMAIN.to_string().as_str()),
            "frame {}",
            m.frame
        );
        assert_eq!(
            m.header("cflow.exporttime"),
            Some(NOW.as_secs().to_string().as_str()),
            "frame {}",
            m.frame
        );
    }
    // Sequence numbers count the data records sent before each message (RFC 7011 §3.1).
    let mut before = 0;
    for m in shown.iter().filter(|m| !m.records.is_empty()) {
        assert_eq!(
            m.header("cflow.sequence"),
            Some(before.to_string().as_str()),
            "sequence number of frame {}",
            m.frame
        );
        before += m.records.len();
    }
    let got: Vec<&PdmlRecord> = shown.iter().flat_map(|m| &m.records).collect();
    assert_eq!(
        got.len(),
        recs.len(),
        "tshark decoded {} data records, {} were sent (sets: {:?})",
        got.len(),
        recs.len(),
        shown.iter().flat_map(|m| &m.sets).collect::<Vec<_>>()
    );
    let mut errs = Vec::new();
    for (k, (g, w)) in got.iter().zip(recs).enumerate() {
        for e in compare(g, w) {
            errs.push(format!("record {k} ({:?}): {e}", w.layout));
        }
    }
    assert!(errs.is_empty(), "tshark disagrees:\n{}", errs.join("\n"));
}

/// Encoded messages written as UDP datagrams into a pcap file, read back by `tshark -r`.
#[test]
fn tshark_decodes_antrea_layouts_from_pcap() {
    let dir = TempDir::new("tshark-pcap");
    let recs = records();
    let mut enc = encoder_with_layouts(DOMAIN);
    let msgs = encode(&mut enc, &recs);
    assert!(
        msgs.len() >= 6,
        "expected the records to span several messages"
    );
    let file = dir.join("flowlens.pcap");
    let src: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let dst: SocketAddr = "127.0.0.1:4739".parse().unwrap();
    pcap::write_udp_pcap(&file, src, dst, Duration::from_secs(NOW.as_secs()), &msgs);
    let shown = tests::tshark::decode_file(&file, 4739);
    assert_eq!(shown.len(), msgs.len(), "one IPFIX message per datagram");
    check(&shown, &recs);
}

/// The same over a real socket: tshark captures on the loopback interface while the test sends
/// the messages by UDP to a port nobody listens on; the capture is then decoded as above.
#[test]
fn tshark_decodes_antrea_layouts_sent_over_udp_loopback() {
    let tshark = require_tool("tshark", "tshark");
    let dir = TempDir::new("tshark-live");
    let recs = records();
    let mut enc = encoder_with_layouts(DOMAIN);
    let msgs = encode(&mut enc, &recs);
    let port = free_udp_port();
    let file = dir.join("live.pcapng");
    let log = dir.join("tshark.err");
    // `-c N` makes tshark exit by itself once it has every datagram. "Capturing on …" is printed
    // before the capture is live; "Capture started." after.
    let mut cap = ChildGuard::spawn(
        Command::new(&tshark)
            .args(["-i", "lo", "-f", &format!("udp dst port {port}")])
            .args(["-c", &msgs.len().to_string(), "-w"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap()),
        "tshark capture on lo",
    );
    wait_for(Duration::from_secs(15), "tshark to start capturing", || {
        if let Some(st) = cap.try_wait() {
            panic!(
                "tshark exited ({st}) before capturing: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Capture started")
            .then_some(())
    });
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for m in &msgs {
        sock.send_to(m, ("127.0.0.1", port)).unwrap();
    }
    let (st, _) = cap.wait_exit(Duration::from_secs(20));
    assert!(
        st.success(),
        "tshark capture failed: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let shown = tests::tshark::decode_file(&file, port);
    assert_eq!(shown.len(), msgs.len(), "one IPFIX message per datagram");
    check(&shown, &recs);
}

/// Variable-length fields of 254, 255 and 1000 bytes (1-byte and 3-byte length forms), in
/// stream-sized messages (up to 65535 bytes) written as a pcap.
#[test]
fn tshark_decodes_long_strings_and_large_messages() {
    let dir = TempDir::new("tshark-long");
    let mut enc = flowcore::ipfix::Encoder::new(flowcore::ipfix::EncoderConfig {
        // The largest UDP payload over IPv4: the messages go into a pcap as datagrams.
        max_message_size: 65_507,
        ..flowcore::ipfix::EncoderConfig::stream(DOMAIN)
    })
    .unwrap();
    for l in ALL_LAYOUTS {
        enc.add_template(l.template_id(), l.fields()).unwrap();
    }
    let mut recs = Vec::new();
    for (k, len) in [254usize, 255, 256, 1000, 20].into_iter().enumerate() {
        for l in ALL_LAYOUTS {
            recs.push(antrea_record_with_labels(l, k as u64, len));
        }
    }
    // Enough records for more than one maximal message: the encoder must start a second one.
    for i in 0..150 {
        recs.push(antrea_record_with_labels(ALL_LAYOUTS[i % 4], i as u64, 300));
    }
    let msgs = encode(&mut enc, &recs);
    assert!(
        msgs.iter().any(|m| m.len() > 60_000) && msgs.iter().all(|m| m.len() <= 65_507),
        "expected a message near the 65535-byte limit: {:?}",
        msgs.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let file = dir.join("long.pcap");
    let src: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let dst: SocketAddr = "127.0.0.1:4739".parse().unwrap();
    pcap::write_udp_pcap(&file, src, dst, Duration::from_secs(NOW.as_secs()), &msgs);
    let shown = tests::tshark::decode_file(&file, 4739);
    assert_eq!(shown.len(), msgs.len(), "one IPFIX message per datagram");
    check(&shown, &recs);
}

/// A single-layout sanity check whose failure message is short: the first record of each layout
/// alone in its own message.
#[test]
fn tshark_decodes_each_layout_alone() {
    let dir = TempDir::new("tshark-each");
    for l in [
        Layout::AgentV4,
        Layout::AgentV6,
        Layout::AggregatedV4,
        Layout::AggregatedV6,
    ] {
        let recs = vec![antrea_record(l, 3)];
        let mut enc = encoder_with_layouts(DOMAIN);
        let msgs = encode(&mut enc, &recs);
        let file = dir.join(&format!("{l:?}.pcap"));
        let src: SocketAddr = "[::1]:50000".parse().unwrap();
        let dst: SocketAddr = "[::1]:4739".parse().unwrap();
        pcap::write_udp_pcap(&file, src, dst, Duration::from_secs(NOW.as_secs()), &msgs);
        check(&tests::tshark::decode_file(&file, 4739), &recs);
    }
}

/// `flowlens decode` on flowlens's own Antrea-layout messages agrees with tshark: IANA and reverse
/// fields by tshark's names, Antrea's fields by their raw bytes.
#[test]
fn flowlens_decode_agrees_with_tshark_on_antrea_layouts() {
    let dir = TempDir::new("tshark-decode");
    let recs = records();
    let mut enc = encoder_with_layouts(DOMAIN);
    let msgs = encode(&mut enc, &recs);
    let file = dir.join("flowlens.pcap");
    write_ipfix_capture(&file, &msgs);
    let c = tests::decode_cmp::assert_decode_matches_tshark(&file, 4739);
    assert_eq!(c.records, recs.len(), "{c:?}");
}
