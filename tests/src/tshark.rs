//! tshark as a reference IPFIX decoder: its PDML output (`-T pdml`) parsed into messages and
//! data records, each record a list of the leaf fields tshark showed, in wire order.
//!
//! PDML rather than `-T json`: JSON merges repeated names (a forward and a reverse counter are
//! both `cflow.packets`) and loses their order, while PDML keeps every field with its position,
//! size, raw bytes and the label that tells a reverse IE ("(Reverse Type 2 PKTS)") or an
//! enterprise one ("(Project Antrea) Type 101") apart.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One field tshark showed.
#[derive(Clone, Debug, Default)]
pub struct PdmlField {
    pub name: String,
    pub showname: String,
    pub show: String,
    /// Raw bytes, lowercase hex.
    pub value: String,
    pub size: usize,
}

/// One IPFIX data record as tshark showed it.
#[derive(Clone, Debug, Default)]
pub struct PdmlRecord {
    /// Data set id (= template id).
    pub set_id: u16,
    pub fields: Vec<PdmlField>,
}

impl PdmlRecord {
    /// Leaf fields named `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&PdmlField> {
        self.fields.iter().filter(|f| f.name == name).collect()
    }

    /// The first field named `name`'s `show`, if any.
    pub fn show(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.show.as_str())
    }
}

/// One IPFIX message (one UDP frame) as tshark showed it.
#[derive(Clone, Debug, Default)]
pub struct PdmlMessage {
    pub frame: u64,
    /// Header fields (`cflow.od_id`, `cflow.exporttime`, `cflow.sequence`, …) by name.
    pub header: Vec<(String, String)>,
    /// The `show` of every set ("Set 1 [id=256] (3 flows)").
    pub sets: Vec<String>,
    pub records: Vec<PdmlRecord>,
    /// Expert-info and malformed-packet entries tshark raised in this frame.
    pub problems: Vec<String>,
}

impl PdmlMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Fields that are groupings or per-field annotations, not IE values.
const NOT_VALUES: &[&str] = &[
    "cflow.timedelta",
    "cflow.string_len_short",
    "cflow.string_len_long",
    "cflow.padding",
];

fn attr(line: &str, key: &str) -> Option<String> {
    let pat = format!(" {key}=\"");
    let start = line.find(&pat)? + pat.len();
    let end = start + line[start..].find('"')?;
    Some(unescape(&line[start..end]))
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&apos;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// Parses tshark's PDML (one element per line, as tshark writes it).
pub fn parse_pdml(pdml: &str) -> Vec<PdmlMessage> {
    let mut out: Vec<PdmlMessage> = Vec::new();
    let mut frame = 0;
    let mut in_cflow = false;
    let mut cur: Option<PdmlMessage> = None;
    let mut set_id = 0u16;
    for line in pdml.lines() {
        let t = line.trim_start();
        if t.starts_with("<field name=\"frame.number\"") {
            frame = attr(t, "show").and_then(|s| s.parse().ok()).unwrap_or(0);
        }
        if t.starts_with("<proto name=\"cflow\"") {
            in_cflow = true;
            // A frame may carry several messages only over TCP; each UDP datagram is one.
            cur = Some(PdmlMessage {
                frame,
                ..Default::default()
            });
            continue;
        }
        if in_cflow && t.starts_with("</proto>") {
            in_cflow = false;
            out.extend(cur.take());
            continue;
        }
        let name = attr(t, "name").unwrap_or_default();
        if name.starts_with("_ws.expert.") {
            continue;
        }
        if name == "_ws.expert" || name.starts_with("_ws.malformed") {
            let what = attr(t, "showname")
                .or_else(|| attr(t, "show"))
                .unwrap_or_default();
            match cur.as_mut() {
                Some(m) => m.problems.push(what),
                // A malformed-packet marker right after the cflow proto, in the same frame.
                None => {
                    if let Some(m) = out.last_mut().filter(|m| m.frame == frame) {
                        m.problems.push(what)
                    }
                }
            }
            continue;
        }
        let Some(msg) = cur.as_mut() else { continue };
        if !t.starts_with("<field ") {
            continue;
        }
        let show = attr(t, "show").unwrap_or_default();
        if name.is_empty() {
            if show.starts_with("Set ") {
                msg.sets.push(show.clone());
            } else if show.starts_with("Flow ") {
                msg.records.push(PdmlRecord {
                    set_id,
                    fields: Vec::new(),
                });
            }
            continue;
        }
        match name.as_str() {
            "cflow.flowset_id" => {
                set_id = show.parse().unwrap_or(0);
                continue;
            }
            "cflow.version" | "cflow.len" | "cflow.exporttime" | "cflow.sequence"
            | "cflow.od_id" | "cflow.timestamp" => {
                msg.header.push((name, show));
                continue;
            }
            _ => {}
        }
        // Sub-fields of a value ("cflow.tcpflags.syn") are bits of a field already taken.
        if NOT_VALUES.contains(&name.as_str())
            || name.matches('.').count() > 1
            || name.starts_with("cflow.template")
            || name == "cflow.flowset_length"
        {
            continue;
        }
        // Data-record fields come after a "Flow N" marker; anything else (template sets,
        // padding) is not part of a record.
        if let Some(rec) = msg.records.last_mut()
            && msg.sets.last().is_some_and(|s| s.contains("flows)"))
        {
            rec.fields.push(PdmlField {
                showname: attr(t, "showname").unwrap_or_default(),
                value: attr(t, "value").unwrap_or_default(),
                size: attr(t, "size").and_then(|s| s.parse().ok()).unwrap_or(0),
                name,
                show,
            });
        }
    }
    out
}

/// Runs tshark on `file`, decoding UDP port `port` as IPFIX (`cflow`), and parses its PDML.
pub fn decode_file(file: &Path, port: u16) -> Vec<PdmlMessage> {
    decode_file_as(file, &format!("udp.port=={port},cflow"))
}

/// Runs tshark on `file` with `decode_as` (`-d`, e.g. "tcp.port==4739,cflow") and parses its
/// PDML.
pub fn decode_file_as(file: &Path, decode_as: &str) -> Vec<PdmlMessage> {
    let tshark = crate::require_tool("tshark", "tshark");
    let out = crate::run(
        Command::new(tshark)
            .arg("-r")
            .arg(file)
            .args(["-d", decode_as])
            .args(["-o", "cflow.max_template_fields:255", "-T", "pdml"]),
        "tshark -T pdml",
        Duration::from_secs(30),
    );
    parse_pdml(&String::from_utf8_lossy(&out.stdout))
}

/// tshark's rendering of a `dateTimeSeconds` value ("Nov 24, 2025 15:59:59.000000000 UTC").
pub fn abs_time(unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (unix_secs / 86_400) as i64;
    let rem = unix_secs % 86_400;
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{} {}, {} {:02}:{:02}:{:02}.000000000 UTC",
        MONTHS[(m - 1) as usize],
        d,
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// tshark's field name for an IANA IE flowlens sends, or `None` if this table does not know it.
/// (Found by running tshark 4.0 on flowlens output; reverse IEs of PEN 29305 share the forward
/// name and are told apart by "(Reverse Type N …)" in the label.)
pub fn iana_field_name(ie_name: &str) -> Option<&'static str> {
    Some(match ie_name {
        "octetDeltaCount" => "cflow.octets",
        "packetDeltaCount" => "cflow.packets",
        "octetTotalCount" => "cflow.permanent_octets",
        "packetTotalCount" => "cflow.permanent_packets",
        "protocolIdentifier" => "cflow.protocol",
        "sourceTransportPort" => "cflow.srcport",
        "destinationTransportPort" => "cflow.dstport",
        "sourceIPv4Address" => "cflow.srcaddr",
        "destinationIPv4Address" => "cflow.dstaddr",
        "sourceIPv6Address" => "cflow.srcaddrv6",
        "destinationIPv6Address" => "cflow.dstaddrv6",
        "flowStartSeconds" => "cflow.abstimestart",
        "flowEndSeconds" => "cflow.abstimeend",
        "flowEndReason" => "cflow.flow_end_reason",
        "originalObservationDomainId" => "cflow.original_observation_domain_id",
        "originalExporterIPv4Address" => "cflow.original_exporter_ipv4_address",
        "originalExporterIPv6Address" => "cflow.original_exporter_ipv6_address",
        _ => return None,
    })
}

/// Parses tshark's absolute time ("Nov 24, 2025 16:00:00.001250999 UTC") into nanoseconds since
/// the Unix epoch.
pub fn parse_abs_time(s: &str) -> Option<i128> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let s = s.strip_suffix(" UTC")?;
    let mut it = s.split_whitespace();
    let mon = it.next()?;
    let m = MONTHS.iter().position(|m| *m == mon)? as i64 + 1;
    let d: i64 = it.next()?.trim_end_matches(',').parse().ok()?;
    let y: i64 = it.next()?.parse().ok()?;
    let t = it.next()?;
    let (hms, frac) = t.split_once('.').unwrap_or((t, "0"));
    let mut hms = hms.split(':').map(|x| x.parse::<i64>());
    let (h, mi, se) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    // Days from civil (H. Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let frac_ns: i128 = format!("{frac:0<9}")[..9].parse().ok()?;
    Some(((days * 86_400 + h * 3600 + mi * 60 + se) as i128) * 1_000_000_000 + frac_ns)
}
