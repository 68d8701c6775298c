//! pmacct's NetFlow/IPFIX probe (`pmacctd` with `plugins: nfprobe`, `nfprobe_version: 10`), a
//! second third-party exporter, against `flowlens decode` and tshark.
//!
//! pmacctd reads the deterministic traffic capture (`pcap_savefile`) and exports its flows over
//! UDP to a socket of the test. Reading a savefile, nfprobe never expires flows by time, only
//! when its table is full or on a graceful shutdown (SIGINT); so the test waits until the plugin
//! has taken in every flow (its debug log says "ADD FLOW" once per flow), sends SIGINT, and
//! collects what it exports on the way out. The capture of those datagrams must decode alike in
//! flowlens and tshark, and hold every flow of the traffic with its packets and octets.
//!
//! With `nfprobe_tstamp_usec: true` nfprobe sends flowStart/EndMicroseconds (154/155) with
//! length 16 (a `struct timeval`) instead of the standard 8; flowlens carries those two fields as
//! octets and decodes the rest (it used to refuse the whole template). That capture is also
//! committed, so the check runs without pmacct.
//!
//! `FLOWLENS_WRITE_FIXTURES=1` also stores the captures as tests/fixtures/pmacct-nfprobe.pcap and
//! pmacct-nfprobe-usecs.pcap.
//!
//! Needs `pmacctd` (Debian package `pmacct`), `tshark`, and builds `flowlens`; the fixture test
//! needs only tshark.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use flowcore::ipfix::{Decoder, DecoderConfig, FieldValue};
use flowcore::model::Timestamp;
use tests::decode_cmp::{assert_decode_matches_tshark, check_flows, flowlens_decode};
use tests::traffic::Flow;
use tests::*;

/// Runs pmacctd's nfprobe over the traffic capture with `extra` configuration lines; returns
/// the IPFIX datagrams it sent and the traffic's flows.
fn nfprobe_export(dir: &TempDir, extra: &str) -> (Vec<Vec<u8>>, Vec<Flow>) {
    let pmacctd = require_tool("pmacctd", "pmacct");
    let (traffic_pcap, flows) = traffic::capture_file(dir);
    let sock = udp_listener();
    let port = sock.local_addr().unwrap().port();
    let log = dir.join("pmacctd.log");
    // `pcap_savefile_wait` keeps pmacctd up after the file so the plugin is still there to be
    // told to stop; `expint=1` makes the plugin look at its shutdown flag every second (a signal
    // only interrupts its poll); a small plugin buffer hands packets over without delay.
    let conf = format!(
        "daemonize: false
debug: true
logfile: {log}
pcap_savefile: {traffic}
pcap_savefile_wait: true
plugin_buffer_size: 1024
plugins: nfprobe
nfprobe_version: 10
nfprobe_receiver: 127.0.0.1:{port}
nfprobe_timeouts: expint=1
{extra}",
        log = log.display(),
        traffic = traffic_pcap.display(),
    );
    std::fs::write(dir.join("pmacctd.conf"), conf).unwrap();
    let mut daemon = ChildGuard::spawn(
        Command::new(pmacctd)
            .arg("-f")
            .arg(dir.join("pmacctd.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("pmacctd.err")).unwrap()),
        "pmacctd",
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(
        Duration::from_secs(20),
        "pmacctd's nfprobe plugin to take in every flow of the capture",
        || {
            if let Some(st) = daemon.try_wait() {
                panic!("pmacctd exited early ({st}): {}", read_log());
            }
            (read_log().matches("ADD FLOW").count() >= flows.len()).then_some(())
        },
    );
    daemon.signal_group("-INT");
    let (st, _) = daemon.wait_exit(Duration::from_secs(15));
    assert!(
        read_log().contains("Shutting down on user request"),
        "pmacctd did not shut down gracefully ({st}): {}",
        read_log()
    );
    sock.set_nonblocking(true).unwrap();
    let mut msgs = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        msgs.push(buf[..n].to_vec());
    }
    assert!(!msgs.is_empty(), "nfprobe sent nothing: {}", read_log());
    (msgs, flows)
}

/// Stores `file` under tests/fixtures as `name` when asked to.
fn maybe_write_fixture(file: &Path, name: &str) {
    if std::env::var_os("FLOWLENS_WRITE_FIXTURES").is_some() {
        std::fs::create_dir_all(fixtures_dir()).unwrap();
        std::fs::copy(file, fixtures_dir().join(name)).unwrap();
    }
}

#[test]
fn pmacct_nfprobe_exports_decode_alike_in_flowlens_and_tshark() {
    require_tool("tshark", "tshark");
    let dir = TempDir::new("nfprobe");
    let (msgs, flows) = nfprobe_export(&dir, "");
    let file = dir.join("pmacct-nfprobe.pcap");
    write_ipfix_capture(&file, &msgs);
    let c = assert_decode_matches_tshark(&file, 4739);
    eprintln!("pmacct nfprobe: {c:?}");
    let (recs, _) = flowlens_decode(&file);
    let errs = check_flows(&recs, &flows, false);
    assert!(errs.is_empty(), "pmacct nfprobe: {}", errs.join("\n"));
    maybe_write_fixture(&file, "pmacct-nfprobe.pcap");
}

/// The 16-byte microsecond timestamps nfprobe sends with `nfprobe_tstamp_usec: true`, live.
#[test]
fn pmacct_nfprobe_usec_timestamps_decode_alike_in_flowlens_and_tshark() {
    require_tool("tshark", "tshark");
    let dir = TempDir::new("nfprobe-usecs");
    let (msgs, flows) = nfprobe_export(&dir, "nfprobe_tstamp_usec: true\n");
    let file = dir.join("pmacct-nfprobe-usecs.pcap");
    write_ipfix_capture(&file, &msgs);
    let s = check_usecs_capture(&file);
    let (recs, _) = flowlens_decode(&file);
    let errs = check_flows(&recs, &flows, false);
    assert!(errs.is_empty(), "pmacct nfprobe usecs: {}", errs.join("\n"));
    assert_eq!(s.records, recs.len());
    maybe_write_fixture(&file, "pmacct-nfprobe-usecs.pcap");
}

/// The committed capture of the same: every record tshark decodes, flowlens decodes too, with
/// the same values, and they are every flow of the traffic it was made from, one record per
/// direction with its packets and octets (91 records; flowlens used to decode none of them).
#[test]
fn committed_pmacct_usecs_capture_decodes_every_record() {
    require_tool("tshark", "tshark");
    let file = fixtures_dir().join("pmacct-nfprobe-usecs.pcap");
    let s = check_usecs_capture(&file);
    let (_, flows) = traffic::capture();
    let (recs, _) = flowlens_decode(&file);
    let errs = check_flows(&recs, &flows, false);
    assert!(errs.is_empty(), "{}: {}", file.display(), errs.join("\n"));
    assert_eq!(s.records, 91, "{}", file.display());
}

/// What [`check_usecs_capture`] found.
struct UsecsCapture {
    records: usize,
}

/// Checks a capture of nfprobe's microsecond export: its templates do carry 154/155 with length
/// 16 (else the capture tests nothing), flowlens and tshark decode the same records alike, and
/// flowlens shows both times as 16 named octets in every data record.
fn check_usecs_capture(file: &Path) -> UsecsCapture {
    let c = assert_decode_matches_tshark(file, 4739);
    eprintln!("{}: {c:?}", file.display());
    assert!(c.records > 0, "{}: no records", file.display());

    // In-process, to see the template and the counter `flowlens decode` does not print.
    let mut dec = Decoder::new(DecoderConfig::default());
    let mut records = 0;
    for m in pcap::read_udp_payloads(file) {
        dec.decode(Timestamp::ZERO, &m, |r| {
            records += 1;
            if r.is_options() {
                return;
            }
            for name in ["flowStartMicroseconds", "flowEndMicroseconds"] {
                let f = r
                    .fields()
                    .find(|f| f.spec.name == Some(name))
                    .unwrap_or_else(|| panic!("template {} has no {name}", r.template_id()));
                assert_eq!(f.spec.len, 16, "{name} of template {}", r.template_id());
                assert!(
                    matches!(f.value(), FieldValue::Octets(b) if b.len() == 16),
                    "{name}: {:?}",
                    f.value()
                );
            }
        })
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let st = dec.stats();
    assert_eq!(records, c.records);
    assert!(
        st.templates > 0 && st.nonstandard_lengths == 2 * st.templates,
        "two nonstandard fields per template definition: {st:?}"
    );

    // `flowlens decode` names them and prints the bytes as hex.
    let (recs, _) = flowlens_decode(file);
    let data = recs
        .iter()
        .filter(|r| r.get("optionsRecord") != Some(&serde_json::Value::Bool(true)));
    for r in data {
        for name in ["flowStartMicroseconds", "flowEndMicroseconds"] {
            let v = r.get(name).and_then(|v| v.as_str()).unwrap_or_default();
            assert!(
                v.len() == 2 + 32 && v.starts_with("0x"),
                "{name} printed as {v:?} in {r:?}"
            );
        }
    }
    UsecsCapture { records }
}
