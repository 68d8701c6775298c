//! The RFC 7012 types beyond flowlens's own layouts, reduced-size integers, an options template,
//! and template withdrawal and redefinition, encoded by flowcore and read by ipfixDump
//! (libfixbuf), tshark and `flowlens decode`, each checked against the values written.
//!
//! Quirks: tshark 4.0 shows a boolean false (2) as "True" (so its raw octet is compared);
//! ipfixDump 2.x prints dateTimeMicroseconds/Nanoseconds without their fraction
//! ("…16:00:00.000000", also for softflowd's exports), so for those only the seconds are
//! compared there; tshark and flowlens are checked to the microsecond/nanosecond.
//!
//! Needs `ipfixDump` (Debian package `libfixbuf-tools`) and `tshark`; builds `flowlens`.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use flowcore::ipfix::{Encoder, EncoderConfig, FieldSpec};
use flowcore::model::Timestamp;
use serde_json::Value;
use tests::decode_cmp::flowlens_decode;
use tests::tshark::parse_abs_time;
use tests::*;

const DOMAIN: u32 = 5;
const DATA: u16 = 300;
const OPTIONS: u16 = 301;

fn spec(n: &str) -> FieldSpec {
    FieldSpec::named(n).unwrap_or_else(|| panic!("{n} is not in flowcore's registry"))
}

/// One typed value as written.
#[derive(Clone, Debug)]
enum V {
    U(u64),
    Ip(IpAddr),
    Mac([u8; 6]),
    /// Nanoseconds since the Unix epoch, for any dateTime* type.
    T(u64),
    F(f64),
    B(bool),
    S(&'static str),
}

/// The data template: reduced-size counters, MAC, the three sub-second time types, float64,
/// boolean, string.
fn data_fields() -> Vec<FieldSpec> {
    vec![
        spec("sourceIPv4Address"),
        spec("destinationIPv6Address"),
        spec("octetDeltaCount").with_len(4),
        spec("packetDeltaCount").with_len(2),
        spec("sourceTransportPort"),
        spec("protocolIdentifier"),
        spec("sourceMacAddress"),
        spec("flowStartMilliseconds"),
        spec("flowEndMilliseconds"),
        spec("flowStartMicroseconds"),
        spec("flowStartNanoseconds"),
        spec("samplingProbability"),
        spec("dataRecordsReliability"),
        spec("interfaceName"),
    ]
}

fn data_record(i: u64) -> Vec<V> {
    let t = NOW.as_nanos() + 123_456_789 + i * 1_000_001_001;
    vec![
        V::Ip(format!("192.0.2.{}", 10 + i).parse().unwrap()),
        V::Ip(format!("2001:db8::{:x}", 0x100 + i).parse().unwrap()),
        V::U(4_000_000_000 - i),
        V::U(60_000 + i),
        V::U(50_000 + i),
        V::U([6, 17, 1][i as usize % 3]),
        V::Mac([0x02, 0x42, 0xac, 0x11, 0, i as u8]),
        V::T(t / 1_000_000 * 1_000_000),
        V::T((t + 2_500_000_000) / 1_000_000 * 1_000_000),
        V::T(t / 1_000 * 1_000),
        V::T(t),
        V::F([0.125, 0.5, 2.0][i as usize % 3]),
        V::B(i.is_multiple_of(2)),
        V::S(["eth0", "", "a-rather-long-interface-name-0123456789"][i as usize % 3]),
    ]
}

/// Options template: scope meteringProcessId.
fn options_scope() -> Vec<FieldSpec> {
    vec![spec("meteringProcessId")]
}

fn options_fields() -> Vec<FieldSpec> {
    vec![
        spec("exportedMessageTotalCount"),
        spec("exportedFlowRecordTotalCount"),
        spec("systemInitTimeMilliseconds"),
    ]
}

fn options_record() -> Vec<V> {
    vec![
        V::U(77),
        V::U(12_345),
        V::U(678_901),
        V::T(NOW.as_nanos() - 3_600_000_000_000 + 42_000_000),
    ]
}

/// After withdrawal, template 300 is redefined with other fields.
fn redefined_fields() -> Vec<FieldSpec> {
    vec![spec("sourceIPv6Address"), spec("octetTotalCount")]
}

fn redefined_record() -> Vec<V> {
    vec![V::Ip("2001:db8::beef".parse().unwrap()), V::U(1 << 40)]
}

fn write(enc: &mut Encoder, tid: u16, vals: &[V]) {
    let mut w = enc.record(NOW, tid).unwrap();
    for v in vals {
        match v {
            V::U(n) => w.uint(*n),
            V::Ip(a) => w.ip(*a),
            V::Mac(m) => w.mac(*m),
            V::T(ns) => w.time(Timestamp::from_nanos(*ns)),
            V::F(f) => w.float(*f),
            V::B(b) => w.boolean(*b),
            V::S(s) => w.string(s),
        };
    }
    w.finish().unwrap();
}

fn new_encoder() -> Encoder {
    let mut enc = Encoder::new(EncoderConfig {
        // Fits a UDP datagram, for the pcap.
        max_message_size: 65_507,
        ..EncoderConfig::stream(DOMAIN)
    })
    .unwrap();
    enc.add_template(DATA, &data_fields()).unwrap();
    enc.add_options_template(OPTIONS, &options_scope(), &options_fields())
        .unwrap();
    enc
}

fn drain(enc: &mut Encoder) -> Vec<Vec<u8>> {
    enc.flush(NOW);
    std::iter::from_fn(|| enc.poll_transmit())
        .map(|b| b.to_vec())
        .collect()
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// ipfixDump's "2025-11-24 16:00:00.123" for a time of `digits` fraction digits.
fn dump_time(ns: u64, digits: usize) -> String {
    let secs = ns / 1_000_000_000;
    let t = tests::tshark::abs_time(secs);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let p: Vec<&str> = t.split_whitespace().collect();
    let m = months.iter().position(|x| *x == p[0]).unwrap() + 1;
    let day: u32 = p[1].trim_end_matches(',').parse().unwrap();
    let base = format!("{}-{m:02}-{day:02} {}", p[2], &p[3][..8]);
    match digits {
        0 => base,
        3 => format!("{base}.{:03}", ns / 1_000_000 % 1000),
        // Micro and nano: ipfixDump drops the fraction (see the module comment).
        d => format!("{base}.{}", "0".repeat(d)),
    }
}

/// ipfixDump's text for a value of field `f`.
fn dump_text(f: &FieldSpec, v: &V) -> String {
    use flowcore::ie::DataType::*;
    match v {
        V::U(n) => n.to_string(),
        V::Ip(a) => a.to_string(),
        V::Mac(m) => mac_text(m),
        V::T(ns) => match f.data_type {
            DateTimeMilliseconds => dump_time(*ns, 3),
            DateTimeMicroseconds => dump_time(*ns, 6),
            _ => dump_time(*ns, 9),
        },
        V::F(x) => x.to_string(),
        V::B(b) => if *b { "1" } else { "2" }.to_string(),
        V::S(s) => format!("(len: {}) {s}", s.len()),
    }
}

/// "(143) (S)              meteringProcessId : 77" → ("meteringProcessId", "77").
fn dump_records(out: &str) -> Vec<Vec<(String, String)>> {
    let mut recs: Vec<Vec<(String, String)>> = Vec::new();
    let mut in_data = false;
    for l in out.lines() {
        if l.starts_with("--- data record") {
            recs.push(Vec::new());
            in_data = true;
        } else if l.starts_with("---") || l.starts_with("***") {
            in_data = false;
        } else if in_data
            && l.starts_with('\t')
            && let Some((_, rest)) = l
                .trim_start()
                .strip_prefix('(')
                .and_then(|r| r.split_once(')'))
            && let Some((name, value)) = rest.split_once(" : ")
        {
            let name = name.trim().trim_start_matches("(S)").trim().to_string();
            if let Some(r) = recs.last_mut() {
                r.push((name, value.to_string()));
            }
        }
    }
    recs
}

fn compare_dump(
    got: &[(String, String)],
    fields: &[FieldSpec],
    vals: &[V],
    what: &str,
    errs: &mut Vec<String>,
) {
    if got.len() != fields.len() {
        errs.push(format!(
            "{what}: {} fields dumped, {} written: {got:?}",
            got.len(),
            fields.len()
        ));
        return;
    }
    for ((name, text), (f, v)) in got.iter().zip(fields.iter().zip(vals)) {
        let want_name = f.name.unwrap_or("?");
        let ok = match v {
            // fixbuf writes IPv6 groups zero-padded; floats in its own notation.
            V::Ip(a) => text.parse::<IpAddr>().ok() == Some(*a),
            V::F(x) => text.parse::<f64>().ok() == Some(*x),
            V::S("") => text.trim_end() == "(len: 0)",
            _ => *text == dump_text(f, v),
        };
        if name != want_name || !ok {
            errs.push(format!(
                "{what}: {name} = {text:?}, wrote {want_name} = {:?} (expected {:?})",
                v,
                dump_text(f, v)
            ));
        }
    }
}

/// A raw stream file: templates, three data records and an options record, then template 300
/// withdrawn, redefined with other fields, and used again.
#[test]
fn ipfixdump_reads_every_type_options_and_withdrawal() {
    let ipfix_dump = require_tool("ipfixDump", "libfixbuf-tools");
    let dir = TempDir::new("types-dump");
    let mut enc = new_encoder();
    for i in 0..3 {
        write(&mut enc, DATA, &data_record(i));
    }
    write(&mut enc, OPTIONS, &options_record());
    let mut msgs = drain(&mut enc);
    enc.withdraw_template(NOW, DATA).unwrap();
    enc.add_template(DATA, &redefined_fields()).unwrap();
    write(&mut enc, DATA, &redefined_record());
    msgs.extend(drain(&mut enc));
    let file = dir.join("types.ipfix");
    std::fs::write(&file, msgs.concat()).unwrap();

    let out = run(
        Command::new(&ipfix_dump).arg("--in").arg(&file),
        "ipfixDump",
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.trim().is_empty(), "ipfixDump warned: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let recs = dump_records(&stdout);
    assert_eq!(recs.len(), 5, "data records dumped:\n{stdout}");
    let mut errs = Vec::new();
    let data = data_fields();
    for (i, rec) in recs.iter().take(3).enumerate() {
        compare_dump(
            rec,
            &data,
            &data_record(i as u64),
            &format!("record {i}"),
            &mut errs,
        );
    }
    let opt: Vec<FieldSpec> = options_scope()
        .into_iter()
        .chain(options_fields())
        .collect();
    compare_dump(
        &recs[3],
        &opt,
        &options_record(),
        "options record",
        &mut errs,
    );
    compare_dump(
        &recs[4],
        &redefined_fields(),
        &redefined_record(),
        "record after redefinition",
        &mut errs,
    );
    assert!(errs.is_empty(), "ipfixDump disagrees:\n{}", errs.join("\n"));
    // The options record's scope is marked as such.
    assert!(
        stdout.contains("(143) (S)"),
        "meteringProcessId not shown as a scope field:\n{stdout}"
    );
    // The withdrawal: a template record with no fields.
    assert!(
        stdout.contains(&format!(
            "tid:   {DATA} (0x{DATA:04x})    field count:     0"
        )),
        "no withdrawal of template {DATA} in:\n{stdout}"
    );
}

/// The same records as UDP datagrams in a pcap, read by tshark and `flowlens decode`.
#[test]
fn tshark_and_flowlens_read_every_type_and_options() {
    require_tool("tshark", "tshark");
    let dir = TempDir::new("types-tshark");
    let mut enc = new_encoder();
    for i in 0..3 {
        write(&mut enc, DATA, &data_record(i));
    }
    write(&mut enc, OPTIONS, &options_record());
    let msgs = drain(&mut enc);
    let file = dir.join("types.pcap");
    write_ipfix_capture(&file, &msgs);

    // tshark: by its field names; times moved into its "timedelta" group, so compared by name.
    let shown = tests::tshark::decode_file(&file, 4739);
    let problems: Vec<_> = shown.iter().flat_map(|m| &m.problems).collect();
    assert!(problems.is_empty(), "tshark complained: {problems:?}");
    let recs: Vec<_> = shown.iter().flat_map(|m| &m.records).collect();
    assert_eq!(recs.len(), 4, "tshark's data records");
    let mut errs = Vec::new();
    for i in 0..3u64 {
        let v = data_record(i);
        let r = recs[i as usize];
        let show = |n: &str, k: usize| r.all(n).get(k).map(|f| f.show.clone());
        let ns = |n: &str, k: usize| show(n, k).and_then(|s| parse_abs_time(&s));
        let V::T(ms_start) = v[7] else { unreachable!() };
        let V::T(ms_end) = v[8] else { unreachable!() };
        let V::T(us) = v[9] else { unreachable!() };
        let V::T(nano) = v[10] else { unreachable!() };
        let text = |x: &V| match x {
            V::U(n) => n.to_string(),
            V::Ip(a) => a.to_string(),
            V::Mac(m) => mac_text(m),
            V::F(f) => f.to_string(),
            V::B(b) => (*b as u8).to_string(),
            V::S(s) => s.to_string(),
            V::T(t) => t.to_string(),
        };
        let checks: Vec<(&str, Option<String>, String)> = vec![
            ("srcaddr", show("cflow.srcaddr", 0), text(&v[0])),
            ("dstaddrv6", show("cflow.dstaddrv6", 0), text(&v[1])),
            ("octets", show("cflow.octets", 0), text(&v[2])),
            ("packets", show("cflow.packets", 0), text(&v[3])),
            ("srcport", show("cflow.srcport", 0), text(&v[4])),
            ("protocol", show("cflow.protocol", 0), text(&v[5])),
            ("srcmac", show("cflow.srcmac", 0), text(&v[6])),
            (
                "abstimestart (ms)",
                ns("cflow.abstimestart", 0).map(|t| t.to_string()),
                ms_start.to_string(),
            ),
            (
                "abstimeend (ms)",
                ns("cflow.abstimeend", 0).map(|t| t.to_string()),
                ms_end.to_string(),
            ),
            (
                "abstimestart (µs)",
                ns("cflow.abstimestart", 1).map(|t| (t / 1000 * 1000).to_string()),
                us.to_string(),
            ),
            (
                "abstimestart (ns)",
                ns("cflow.abstimestart", 2).map(|t| t.to_string()),
                nano.to_string(),
            ),
            (
                "sampling_probability",
                show("cflow.sampling_probability", 0),
                text(&v[11]),
            ),
            // tshark 4.0 shows any non-zero boolean as True, RFC 7011's false (2) included:
            // compare the raw octet (1 true, 2 false).
            (
                "data_records_reliability (raw)",
                r.all("cflow.data_records_reliability")
                    .first()
                    .map(|f| f.value.clone()),
                if matches!(v[12], V::B(true)) {
                    "01"
                } else {
                    "02"
                }
                .to_string(),
            ),
            ("if_name", show("cflow.if_name", 0), text(&v[13])),
        ];
        for (k, got, want) in checks {
            // tshark shows nothing for an empty string.
            if want.is_empty() && got.is_none() {
                continue;
            }
            if got.as_deref() != Some(want.as_str()) {
                errs.push(format!("tshark record {i}: {k} = {got:?}, wrote {want:?}"));
            }
        }
    }
    let o = recs[3];
    for (n, want) in [
        ("cflow.mp_id", "77".to_string()),
        ("cflow.packetsexp", "12345".to_string()),
        ("cflow.flowsexp", "678901".to_string()),
    ] {
        let got = o.show(n).map(str::to_string);
        if got.as_deref() != Some(want.as_str()) {
            errs.push(format!(
                "tshark options record: {n} = {got:?}, wrote {want:?}"
            ));
        }
    }
    let V::T(init) = options_record()[3] else {
        unreachable!()
    };
    let got = o.show("cflow.sys_init_time").and_then(parse_abs_time);
    if got != Some(init as i128) {
        errs.push(format!(
            "tshark options record: sys_init_time = {got:?}, wrote {init}"
        ));
    }

    // flowlens decode: typed JSON values.
    let (json, summary) = flowlens_decode(&file);
    assert!(summary.contains(" 0 errors"), "{summary}");
    assert_eq!(json.len(), 4, "flowlens decode records: {json:?}");
    for i in 0..3u64 {
        let r = &json[i as usize];
        for (f, v) in data_fields().iter().zip(data_record(i)) {
            let name = f.name.unwrap();
            let got = r.get(name);
            let ok = match (&v, f.data_type) {
                (V::U(n), _) => got.and_then(Value::as_u64) == Some(*n),
                (V::Ip(a), _) => got.and_then(Value::as_str) == Some(a.to_string().as_str()),
                (V::Mac(m), _) => got.and_then(Value::as_str) == Some(mac_text(m).as_str()),
                (V::T(ns), flowcore::ie::DataType::DateTimeMilliseconds) => {
                    got.and_then(Value::as_u64) == Some(ns / 1_000_000)
                }
                (V::T(ns), flowcore::ie::DataType::DateTimeMicroseconds) => {
                    got.and_then(Value::as_u64) == Some(ns / 1_000)
                }
                (V::T(ns), _) => got.and_then(Value::as_u64) == Some(*ns),
                (V::F(x), _) => got.and_then(Value::as_f64) == Some(*x),
                (V::B(b), _) => got.and_then(Value::as_bool) == Some(*b),
                (V::S(s), _) => got.and_then(Value::as_str) == Some(*s),
            };
            if !ok {
                errs.push(format!(
                    "flowlens record {i}: {name} = {got:?}, wrote {v:?}"
                ));
            }
        }
    }
    let o = &json[3];
    if o.get("optionsRecord") != Some(&Value::Bool(true))
        || o.get("meteringProcessId").and_then(Value::as_u64) != Some(77)
        || o.get("exportedFlowRecordTotalCount")
            .and_then(Value::as_u64)
            != Some(678_901)
    {
        errs.push(format!("flowlens options record: {o:?}"));
    }
    assert!(errs.is_empty(), "{}", errs.join("\n"));
}
