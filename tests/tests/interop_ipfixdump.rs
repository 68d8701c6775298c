//! flowcore's encoder against libfixbuf's `ipfixDump`: a raw IPFIX file (TCP-style stream of
//! large messages, as an aggregator writes it) produced by flowlens must be read by ipfixDump
//! without a warning, with the right message and record counts, and with every field's value as
//! encoded. Antrea's PEN 56506 elements are given to ipfixDump as an element file (IANA registry
//! XML) generated from flowcore's registry, so they are typed and named, not "alien".
//!
//! Needs `ipfixDump` (Debian package `libfixbuf-tools`).

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use flowcore::ie::{self, PEN_ANTREA};
use flowcore::ipfix::{Encoder, EncoderConfig};
use tests::*;

/// The Antrea elements of flowcore's registry as an ipfixDump element file.
fn antrea_element_xml() -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <registry xmlns=\"http://www.iana.org/assignments\" id=\"antrea\">\n\
         <registry id=\"ipfix-information-elements\">\n",
    );
    for e in ie::Registry::get().iter().filter(|e| e.pen == PEN_ANTREA) {
        x += &format!(
            "<record><name>{}</name><dataType>{}</dataType><elementId>{}</elementId>\
             <enterpriseId>{}</enterpriseId></record>\n",
            e.name, e.data_type, e.id, e.pen
        );
    }
    x + "</registry>\n</registry>\n"
}

/// One data record as ipfixDump printed it: (element name, value text) in order.
type Dumped = Vec<(String, String)>;

/// The data records of ipfixDump's output, and its closing file statistics line.
fn parse_dump(out: &str) -> (Vec<Dumped>, String) {
    let mut recs: Vec<Dumped> = Vec::new();
    let mut in_fields = false;
    let mut stats = String::new();
    for l in out.lines() {
        if l.starts_with("--- data record") {
            recs.push(Vec::new());
            in_fields = false;
        } else if l.starts_with("---") || l.starts_with("***") {
            in_fields = false;
            if l.starts_with("*** File Stats") {
                stats = l.to_string();
            }
        } else if l == "fields:" && !recs.is_empty() {
            in_fields = true;
        } else if in_fields && let Some(rest) = l.trim_start().strip_prefix('(') {
            // "(56506/101)                sourcePodName : (len: 24) frontend-…"
            let Some((_, rest)) = rest.split_once(')') else {
                continue;
            };
            let Some((name, value)) = rest.split_once(" : ") else {
                continue;
            };
            if let Some(r) = recs.last_mut() {
                r.push((name.trim().to_string(), value.to_string()));
            }
        }
    }
    (recs, stats)
}

/// "2025-11-24 15:58:59" for a Unix time.
fn dump_time(secs: u64) -> String {
    // Reuse tshark's calendar ("Nov 24, 2025 15:58:59.000000000 UTC") and reorder it.
    let t = tests::tshark::abs_time(secs);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut it = t.split_whitespace();
    let (mon, day, year, hms) = (
        it.next().unwrap_or(""),
        it.next().unwrap_or("").trim_end_matches(','),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    );
    let m = months.iter().position(|x| *x == mon).unwrap_or(0) + 1;
    format!(
        "{year}-{m:02}-{:02} {}",
        day.parse::<u32>().unwrap_or(0),
        &hms[..8]
    )
}

fn compare(dumped: &Dumped, want: &TestRecord) -> Vec<String> {
    let mut errs = Vec::new();
    if dumped.len() != want.fields.len() {
        errs.push(format!(
            "{} fields dumped, {} encoded",
            dumped.len(),
            want.fields.len()
        ));
    }
    for ((name, got), (spec, v)) in dumped.iter().zip(&want.fields) {
        let ie = spec.name.unwrap_or("?");
        if name != ie {
            errs.push(format!("field {ie} dumped as {name}"));
            continue;
        }
        let ok = match v {
            Val::U(n) => got == &n.to_string(),
            Val::Secs(s) => got == &dump_time(*s),
            // fixbuf prints IPv6 groups zero-padded ("fd00:0001::0002"): compare parsed.
            Val::Ip(a) => got.parse::<IpAddr>().ok() == Some(*a),
            Val::S(s) => {
                got == &format!("(len: {}) {s}", s.len()) || (s.is_empty() && got == "(len: 0) ")
            }
        };
        if !ok {
            errs.push(format!("{ie}: ipfixDump shows {got:?}, encoded {v:?}"));
        }
    }
    errs
}

#[test]
fn ipfixdump_reads_flowlens_stream_file() {
    let ipfix_dump = require_tool("ipfixDump", "libfixbuf-tools");
    let dir = TempDir::new("ipfixdump");
    let mut enc = Encoder::new(EncoderConfig::stream(0x0a0b_0c0d)).unwrap();
    for l in ALL_LAYOUTS {
        enc.add_template(l.template_id(), l.fields()).unwrap();
    }
    let mut recs = Vec::new();
    for i in 0..60 {
        // Runs of one layout, then the next: several sets per message.
        let l = ALL_LAYOUTS[(i / 5 % 4) as usize];
        recs.push(match i % 6 {
            // Labels long enough for the 3-byte variable-length form, at and past 255 bytes.
            0 => antrea_record_with_labels(l, i, 255 + 10 * i as usize),
            _ => antrea_record(l, i),
        });
    }
    let msgs = encode(&mut enc, &recs);
    let file = dir.join("flowlens.ipfix");
    std::fs::write(&file, msgs.concat()).unwrap();
    let xml = dir.join("antrea.xml");
    std::fs::write(&xml, antrea_element_xml()).unwrap();

    let out = run(
        Command::new(&ipfix_dump)
            .arg("--in")
            .arg(&file)
            .arg("--element-file")
            .arg(&xml),
        "ipfixDump",
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "ipfixDump warned: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (dumped, stats) = parse_dump(&stdout);
    assert_eq!(
        stats,
        format!(
            "*** File Stats: {} Messages, {} Data Records, 4 Template Records ***",
            msgs.len(),
            recs.len()
        ),
        "ipfixDump's file statistics"
    );
    assert_eq!(dumped.len(), recs.len(), "data records dumped");
    let mut errs = Vec::new();
    for (k, (d, r)) in dumped.iter().zip(&recs).enumerate() {
        for e in compare(d, r) {
            errs.push(format!("record {k} ({:?}): {e}", r.layout));
        }
    }
    assert!(errs.is_empty(), "ipfixDump disagrees:\n{}", errs.join("\n"));
    assert!(
        !stdout.contains("_alienInformationElement"),
        "every element should be known to ipfixDump"
    );
}
