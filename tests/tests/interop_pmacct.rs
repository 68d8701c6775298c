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
//! `FLOWLENS_WRITE_FIXTURES=1` also stores it as tests/fixtures/pmacct-nfprobe.pcap.
//!
//! Needs `pmacctd` (Debian package `pmacct`), `tshark`, and builds `flowlens`.

use std::process::{Command, Stdio};
use std::time::Duration;

use tests::decode_cmp::{assert_decode_matches_tshark, check_flows, flowlens_decode};
use tests::*;

#[test]
fn pmacct_nfprobe_exports_decode_alike_in_flowlens_and_tshark() {
    let pmacctd = require_tool("pmacctd", "pmacct");
    require_tool("tshark", "tshark");
    let dir = TempDir::new("nfprobe");
    let (traffic_pcap, flows) = traffic::capture_file(&dir);
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
",
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

    let file = dir.join("pmacct-nfprobe.pcap");
    write_ipfix_capture(&file, &msgs);
    let c = assert_decode_matches_tshark(&file, 4739);
    eprintln!("pmacct nfprobe: {c:?}");
    let (recs, _) = flowlens_decode(&file);
    let errs = check_flows(&recs, &flows, false);
    assert!(errs.is_empty(), "pmacct nfprobe: {}", errs.join("\n"));
    if std::env::var_os("FLOWLENS_WRITE_FIXTURES").is_some() {
        std::fs::create_dir_all(fixtures_dir()).unwrap();
        std::fs::copy(&file, fixtures_dir().join("pmacct-nfprobe.pcap")).unwrap();
    }
}
