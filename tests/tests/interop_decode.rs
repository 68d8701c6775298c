//! `flowlens decode` against tshark on the third-party captures committed under tests/fixtures/
//! (made by interop_softflowd.rs and interop_pmacct.rs with `FLOWLENS_WRITE_FIXTURES=1`; one
//! over TCP, the others over UDP): the
//! same records, in the same order, with the same value in every field tshark decodes. This test
//! needs tshark only, not the exporters.

use tests::decode_cmp::assert_decode_matches_tshark_as;
use tests::fixtures_dir;

/// Every fixture that must be there; any other `*.pcap` in the directory is checked too.
const REQUIRED: &[&str] = &[
    "softflowd-uni.pcap",
    "softflowd-bidir.pcap",
    "softflowd-milli.pcap",
    "softflowd-micro.pcap",
    "softflowd-nano.pcap",
    "softflowd-bidir-nano.pcap",
    "softflowd-tcp.pcap",
    "pmacct-nfprobe.pcap",
];

#[test]
fn flowlens_decode_agrees_with_tshark_on_fixtures() {
    let dir = fixtures_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap" || x == "pcapng"))
        .collect();
    files.sort();
    for r in REQUIRED {
        assert!(
            files.iter().any(|f| f.ends_with(r)),
            "fixture {r} is missing from {}",
            dir.display()
        );
    }
    for f in &files {
        // Captures of IPFIX over TCP are named *-tcp.pcap; the others carry UDP datagrams.
        let tcp = f.to_string_lossy().ends_with("-tcp.pcap");
        let decode_as = if tcp {
            "tcp.port==4739,cflow"
        } else {
            "udp.port==4739,cflow"
        };
        let c = assert_decode_matches_tshark_as(f, decode_as);
        eprintln!("{}: {c:?}", f.display());
        assert!(c.records > 0, "{}: no records", f.display());
    }
}
