//! `flowlens decode` against tshark on the same capture: both must see the same data records,
//! in the same order, with the same value in every field tshark knows.
//!
//! tshark's field names are mapped to IE names by [`TSHARK_TO_IE`]; a field tshark shows that the
//! table does not know fails the comparison (so nothing is skipped silently), and so does a key
//! of flowlens's output that tshark did not show.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::traffic::Flow;
use crate::tshark::{PdmlRecord, decode_file_as, parse_abs_time};

/// How a tshark field's `show` text compares with flowlens's JSON value.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Decimal integer.
    Num,
    /// "0x1b".
    Hex,
    /// Address or string, verbatim.
    Text,
    /// "2766664.716000000" seconds → milliseconds (flowStart/EndSysUpTime).
    UptimeMillis,
    /// tshark's absolute time → the IE's own unit (flowlens writes integers since the epoch).
    AbsTime,
}

/// tshark field → IE name (the forward one; "(Reverse Type …)" in the label makes it reverse),
/// and how to compare. Time fields whose IE depends on the template (seconds, milli-, micro-,
/// nanoseconds) list every candidate; the one flowlens printed is used.
const TSHARK_TO_IE: &[(&str, &[&str], Kind)] = &[
    ("cflow.srcaddr", &["sourceIPv4Address"], Kind::Text),
    ("cflow.dstaddr", &["destinationIPv4Address"], Kind::Text),
    ("cflow.srcaddrv6", &["sourceIPv6Address"], Kind::Text),
    ("cflow.dstaddrv6", &["destinationIPv6Address"], Kind::Text),
    ("cflow.octets", &["octetDeltaCount"], Kind::Num),
    ("cflow.packets", &["packetDeltaCount"], Kind::Num),
    ("cflow.permanent_octets", &["octetTotalCount"], Kind::Num),
    ("cflow.permanent_packets", &["packetTotalCount"], Kind::Num),
    ("cflow.inputint", &["ingressInterface"], Kind::Num),
    ("cflow.outputint", &["egressInterface"], Kind::Num),
    ("cflow.direction", &["flowDirection"], Kind::Num),
    ("cflow.flow_end_reason", &["flowEndReason"], Kind::Num),
    ("cflow.srcport", &["sourceTransportPort"], Kind::Num),
    ("cflow.dstport", &["destinationTransportPort"], Kind::Num),
    ("cflow.protocol", &["protocolIdentifier"], Kind::Num),
    ("cflow.tcpflags", &["tcpControlBits"], Kind::Hex),
    ("cflow.ip_version", &["ipVersion"], Kind::Num),
    ("cflow.tos", &["ipClassOfService"], Kind::Hex),
    ("cflow.srcmask", &["sourceIPv4PrefixLength"], Kind::Num),
    ("cflow.dstmask", &["destinationIPv4PrefixLength"], Kind::Num),
    ("cflow.srcmaskv6", &["sourceIPv6PrefixLength"], Kind::Num),
    (
        "cflow.dstmaskv6",
        &["destinationIPv6PrefixLength"],
        Kind::Num,
    ),
    ("cflow.srcas", &["bgpSourceAsNumber"], Kind::Num),
    ("cflow.dstas", &["bgpDestinationAsNumber"], Kind::Num),
    ("cflow.nexthop", &["ipNextHopIPv4Address"], Kind::Text),
    ("cflow.nexthopv6", &["ipNextHopIPv6Address"], Kind::Text),
    ("cflow.vlanid", &["vlanId"], Kind::Num),
    ("cflow.src_mac", &["sourceMacAddress"], Kind::Text),
    ("cflow.dst_mac", &["destinationMacAddress"], Kind::Text),
    ("cflow.icmp_type", &["icmpTypeCodeIPv4"], Kind::Num),
    (
        "cflow.timestart",
        &["flowStartSysUpTime"],
        Kind::UptimeMillis,
    ),
    ("cflow.timeend", &["flowEndSysUpTime"], Kind::UptimeMillis),
    (
        "cflow.abstimestart",
        &[
            "flowStartSeconds",
            "flowStartMilliseconds",
            "flowStartMicroseconds",
            "flowStartNanoseconds",
        ],
        Kind::AbsTime,
    ),
    (
        "cflow.abstimeend",
        &[
            "flowEndSeconds",
            "flowEndMilliseconds",
            "flowEndMicroseconds",
            "flowEndNanoseconds",
        ],
        Kind::AbsTime,
    ),
    ("cflow.mp_id", &["meteringProcessId"], Kind::Num),
    (
        "cflow.sys_init_time",
        &["systemInitTimeMilliseconds"],
        Kind::AbsTime,
    ),
    (
        "cflow.sampling_packet_interval",
        &["samplingPacketInterval"],
        Kind::Num,
    ),
    (
        "cflow.sampling_packet_space",
        &["samplingPacketSpace"],
        Kind::Num,
    ),
    (
        "cflow.selector_algorithm",
        &["selectorAlgorithm"],
        Kind::Num,
    ),
    ("cflow.if_name", &["interfaceName"], Kind::Text),
    ("cflow.sampling_interval", &["samplingInterval"], Kind::Num),
    (
        "cflow.sampling_algorithm",
        &["samplingAlgorithm"],
        Kind::Num,
    ),
    ("cflow.exporter_addr", &["exporterIPv4Address"], Kind::Text),
    (
        "cflow.exporter_addr_v6",
        &["exporterIPv6Address"],
        Kind::Text,
    ),
    ("cflow.flows", &["deltaFlowCount"], Kind::Num),
    (
        "cflow.original_observation_domain_id",
        &["originalObservationDomainId"],
        Kind::Num,
    ),
    (
        "cflow.original_exporter_ipv4_address",
        &["originalExporterIPv4Address"],
        Kind::Text,
    ),
    (
        "cflow.original_exporter_ipv6_address",
        &["originalExporterIPv6Address"],
        Kind::Text,
    ),
    ("cflow.octets_exp", &["exportedOctetTotalCount"], Kind::Num),
    (
        "cflow.packets_exp",
        &["exportedMessageTotalCount"],
        Kind::Num,
    ),
    (
        "cflow.flows_exp",
        &["exportedFlowRecordTotalCount"],
        Kind::Num,
    ),
];

/// Keys flowlens adds to every record besides the IEs.
const META_KEYS: &[&str] = &[
    "exporter",
    "observationDomainId",
    "exportTime",
    "templateId",
    "optionsRecord",
];

/// The reverse IE name of `fwd` (RFC 5103: "reverse" + the name with a capital first letter).
fn reverse_name(fwd: &str) -> String {
    let mut c = fwd.chars();
    match c.next() {
        Some(f) => format!("reverse{}{}", f.to_ascii_uppercase(), c.as_str()),
        None => String::new(),
    }
}

/// The `flowlens decode` output of `file`: records, and the summary line from stderr.
pub fn flowlens_decode(file: &Path) -> (Vec<Map<String, Value>>, String) {
    let out = crate::run(
        Command::new(crate::flowlens_bin()).arg("decode").arg(file),
        "flowlens decode",
        Duration::from_secs(30),
    );
    let recs = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| match serde_json::from_str(l) {
            Ok(Value::Object(m)) => m,
            _ => panic!("flowlens decode printed a line that is not a JSON object: {l}"),
        })
        .collect();
    (recs, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// The hex digits of a value flowlens printed as octets (`0x…`) for an element whose registered
/// type is not octets or text, i.e. one it carried as octets for its nonstandard length.
fn octets_of_typed_ie<'a>(key: &str, v: &'a Value) -> Option<&'a str> {
    use flowcore::ie::DataType;
    let hex = v.as_str()?.strip_prefix("0x")?;
    let ie = flowcore::ie::by_name(key)?;
    (!matches!(ie.data_type, DataType::OctetArray | DataType::String)).then_some(hex)
}

/// Mismatches between one tshark record and one flowlens record.
fn compare_record(t: &PdmlRecord, f: &Map<String, Value>) -> Vec<String> {
    let mut errs = Vec::new();
    if f.get("templateId").and_then(Value::as_u64) != Some(t.set_id as u64) {
        errs.push(format!(
            "templateId {:?}, tshark's set id {}",
            f.get("templateId"),
            t.set_id
        ));
    }
    let mut seen: Vec<String> = Vec::new();
    for g in &t.fields {
        if g.name == "cflow.enterprise_private_entry" {
            match compare_enterprise(g, f) {
                Ok(key) => seen.push(key),
                Err(e) => errs.push(e),
            }
            continue;
        }
        let Some((_, names, kind)) = TSHARK_TO_IE.iter().find(|(n, _, _)| *n == g.name) else {
            errs.push(format!(
                "tshark field {} ({:?}) is not in TSHARK_TO_IE",
                g.name, g.showname
            ));
            continue;
        };
        let reverse = g.showname.contains("(Reverse Type");
        let names: Vec<String> = names
            .iter()
            .map(|n| {
                if reverse {
                    reverse_name(n)
                } else {
                    n.to_string()
                }
            })
            .collect();
        let Some((key, val)) = names
            .iter()
            .filter(|n| !seen.contains(n))
            .find_map(|n| f.get(n).map(|v| (n.clone(), v)))
        else {
            errs.push(format!(
                "tshark shows {} = {:?}; flowlens printed none of {names:?}",
                g.name, g.show
            ));
            continue;
        };
        seen.push(key.clone());
        // A field flowlens carried as octets because the exporter gave it a length its type does
        // not accept (pmacct's 16-byte flowStartMicroseconds): tshark still reads it as its type,
        // so the bytes are what both decoders show alike.
        if let Some(hex) = octets_of_typed_ie(&key, val) {
            if hex != g.value {
                errs.push(format!(
                    "{key}: flowlens octets 0x{hex}, tshark's raw bytes {} ({:?})",
                    g.value, g.showname
                ));
            }
            continue;
        }
        let got = json_text(val);
        let want = match kind {
            Kind::Num | Kind::Text => Some(g.show.clone()),
            Kind::Hex => u64::from_str_radix(g.show.trim_start_matches("0x"), 16)
                .ok()
                .map(|v| v.to_string()),
            Kind::UptimeMillis => g.show.split_once('.').and_then(|(s, ms)| {
                Some((s.parse::<u64>().ok()? * 1000 + ms[..3].parse::<u64>().ok()?).to_string())
            }),
            Kind::AbsTime => parse_abs_time(&g.show).map(|ns| {
                // Integers since the epoch in the IE's unit, truncated as an NTP fraction is.
                let unit: i128 = if key.ends_with("Nanoseconds") {
                    1
                } else if key.ends_with("Microseconds") {
                    1_000
                } else if key.ends_with("Milliseconds") {
                    1_000_000
                } else {
                    1_000_000_000
                };
                ns.div_euclid(unit).to_string()
            }),
        };
        match want {
            Some(w) if w == got => {}
            Some(w) => errs.push(format!(
                "{key}: flowlens {got}, tshark {w} ({:?})",
                g.showname
            )),
            None => errs.push(format!("{key}: cannot read tshark's {:?}", g.show)),
        }
    }
    // tshark shows nothing for an empty variable-length enterprise field.
    let empty_enterprise = |k: &str, v: &Value| {
        v.as_str() == Some("") && flowcore::ie::by_name(k).is_some_and(|e| e.pen != 0)
    };
    let extra: Vec<&String> = f
        .iter()
        .filter(|(k, v)| {
            !(META_KEYS.contains(&k.as_str()) || seen.contains(k) || empty_enterprise(k, v))
        })
        .map(|(k, _)| k)
        .collect();
    if !extra.is_empty() {
        errs.push(format!(
            "flowlens printed fields tshark did not show: {extra:?}"
        ));
    }
    errs
}

/// An enterprise field tshark has no name for ("Enterprise Private entry: (Project Antrea) Type
/// 101: Value (hex bytes): …"): the IE is found in flowcore's registry by PEN and id, and
/// flowlens's JSON value, turned back into wire bytes by the IE's type, must equal tshark's raw
/// bytes. Returns the JSON key compared.
fn compare_enterprise(
    g: &crate::tshark::PdmlField,
    f: &Map<String, Value>,
) -> Result<String, String> {
    use flowcore::ie::DataType::*;
    let pen = if g.showname.contains("(Project Antrea)") {
        flowcore::ie::PEN_ANTREA
    } else {
        return Err(format!(
            "enterprise field of an unknown PEN: {:?}",
            g.showname
        ));
    };
    let id: u16 = g
        .showname
        .split(" Type ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no element id in {:?}", g.showname))?;
    let ie = flowcore::ie::lookup(flowcore::ie::IeId::new(pen, id))
        .ok_or_else(|| format!("{pen}/{id} is not in flowcore's registry"))?;
    let v = f
        .get(ie.name)
        .ok_or_else(|| format!("tshark shows {pen}/{id}; flowlens printed no {}", ie.name))?;
    let n = g.size;
    let bytes: Option<Vec<u8>> = match (ie.data_type, v) {
        (String, Value::String(s)) => Some(s.as_bytes().to_vec()),
        (Ipv4Address | Ipv6Address, Value::String(s)) => {
            s.parse::<std::net::IpAddr>().ok().map(|a| match a {
                std::net::IpAddr::V4(a) => a.octets().to_vec(),
                std::net::IpAddr::V6(a) => a.octets().to_vec(),
            })
        }
        (Unsigned8 | Unsigned16 | Unsigned32 | Unsigned64 | DateTimeSeconds, Value::Number(x)) => x
            .as_u64()
            .filter(|_| n <= 8)
            .map(|x| x.to_be_bytes()[8 - n..].to_vec()),
        _ => None,
    };
    let hex: Option<std::string::String> =
        bytes.map(|b| b.iter().map(|x| format!("{x:02x}")).collect());
    if hex.as_deref() == Some(g.value.as_str()) {
        Ok(ie.name.to_string())
    } else {
        Err(format!(
            "{}: flowlens {v}, tshark's raw bytes {} ({n} bytes)",
            ie.name, g.value
        ))
    }
}

/// What a comparison covered.
#[derive(Debug)]
pub struct Compared {
    pub messages: usize,
    pub records: usize,
    pub options_records: usize,
    pub fields: usize,
    pub summary: String,
    pub sequence_warnings: Vec<String>,
}

/// Runs both decoders on `file` (IPFIX on UDP port `port` for tshark) and panics with every
/// difference.
pub fn assert_decode_matches_tshark(file: &Path, port: u16) -> Compared {
    assert_decode_matches_tshark_as(file, &format!("udp.port=={port},cflow"))
}

/// As [`assert_decode_matches_tshark`], with tshark's `-d` given (IPFIX over TCP:
/// "tcp.port==4739,cflow").
pub fn assert_decode_matches_tshark_as(file: &Path, decode_as: &str) -> Compared {
    let shown = decode_file_as(file, decode_as);
    // Sequence warnings are about the exporter (softflowd numbers its messages oddly), not
    // about how the records decode; they are reported, not failed.
    let (sequence_warnings, problems): (Vec<String>, Vec<String>) = shown
        .iter()
        .flat_map(|m| {
            m.problems
                .iter()
                .map(move |p| format!("frame {}: {p}", m.frame))
        })
        .partition(|p| p.contains("Unexpected flow sequence"));
    assert!(
        problems.is_empty(),
        "tshark complained about {}: {problems:#?}",
        file.display()
    );
    let t_recs: Vec<&PdmlRecord> = shown.iter().flat_map(|m| &m.records).collect();
    let (f_recs, summary) = flowlens_decode(file);
    assert_eq!(
        f_recs.len(),
        t_recs.len(),
        "{}: flowlens decoded {} records, tshark {} (flowlens: {summary})",
        file.display(),
        f_recs.len(),
        t_recs.len()
    );
    assert!(
        summary.contains(" 0 errors"),
        "flowlens decode reported errors on {}: {summary}",
        file.display()
    );
    let mut errs = Vec::new();
    let mut fields = 0;
    for (i, (t, f)) in t_recs.iter().zip(&f_recs).enumerate() {
        fields += t.fields.len();
        for e in compare_record(t, f) {
            errs.push(format!("record {i}: {e}"));
        }
    }
    assert!(
        errs.is_empty(),
        "{}: flowlens decode and tshark disagree:\n{}",
        file.display(),
        errs.join("\n")
    );
    Compared {
        messages: shown.len(),
        records: f_recs.len(),
        options_records: f_recs
            .iter()
            .filter(|r| r.get("optionsRecord") == Some(&Value::Bool(true)))
            .count(),
        fields,
        summary,
        sequence_warnings,
    }
}

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

/// Checks flowlens's records of an exporter's capture against the flows of the traffic capture
/// ([`crate::traffic`]): one record per direction (or one with reverse counters when
/// `bidirectional`), with the packets and IP octets sent.
pub fn check_flows(
    recs: &[Map<String, Value>],
    flows: &[Flow],
    bidirectional: bool,
) -> Vec<String> {
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
