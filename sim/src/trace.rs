//! Conntrack traces: what one Node's conntrack showed over time (complete dumps and destroy
//! events), in a small line-oriented text format that the live recorder, the simulator and
//! `flowlens replay` share.
//!
//! # Format `flowlens-trace v1`
//!
//! UTF-8 text, one item per line; blank lines and lines starting with `#` are ignored. The first
//! non-comment line is the version line `flowlens-trace v1`; a reader rejects other versions.
//!
//! ```text
//! flowlens-trace v1
//! node node-01 192.168.0.2 10.2.0.0/16
//! pod ns-0/web-1 node-01 10.2.0.7 app=web
//! dump 1700000005000000000 2
//! E tcp 10.2.0.7:40112>10.96.0.1:80 10.3.0.9:8080>10.2.0.7:40112 id=17 o=12/2010 r=10/5120 start=1700000004100000000 state=ESTABLISHED
//! E udp 10.2.0.7:5353>10.2.0.8:5353 10.2.0.8:5353>10.2.0.7:5353 id=18 o=1/80 r=0/0
//! destroy 1700000006500000000 tcp 10.2.0.7:40112>10.96.0.1:80 10.3.0.9:8080>10.2.0.7:40112 id=17 o=14/2114 r=12/5224 start=1700000004100000000 stop=1700000006500000000 state=TIME_WAIT
//! ```
//!
//! - `node NAME ADDR CIDR[,CIDR…]`, `pod NS/NAME NODE IP [k=v,…]`: optional metadata for
//!   enrichment (`-` for no CIDR). Without any `node` line, replay treats every address as a Pod
//!   of the replaying Node.
//! - `dump T N`: a complete table at `T` (nanoseconds since the Unix epoch), then exactly `N`
//!   `E` lines.
//! - `destroy T ENTRY`: a destroy event at `T`.
//! - An entry: protocol (`tcp`, `udp`, `icmp` or a number), the original and the reply tuple as
//!   `SRC:PORT>DST:PORT` (IPv6 in brackets), then `key=value` fields in any order: `id`, `zone`,
//!   `mark`, `status` (hex or decimal), `o` / `r` original / reply `packets/bytes`, `start`,
//!   `stop` (nanoseconds), `timeout` (seconds), `state` (kernel TCP state name). Unknown keys
//!   are ignored, so later versions can add fields without breaking v1 readers.
//!
//! Invariant: events are in non-decreasing time order (the writer emits them as they happen; the
//! reader checks).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use flowcore::exporter::{ExporterConfig, FlowExporter};
use flowcore::metadata::{MetadataUpdate, NodeInfo, PodInfo, PodPhase};
use flowcore::model::{
    ConntrackEntry, ConntrackStatus, Counters, FlowRecord, Interner, TcpState, Timestamp, Tuple,
};
use flowcore::policy::{Cidr, Labels};

pub const VERSION_LINE: &str = "flowlens-trace v1";

/// A trace that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    #[error("line {line}: expected the version line {VERSION_LINE:?}, found {found:?}")]
    Version { line: usize, found: String },
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: String },
    #[error("line {line}: time {t} is before the previous event's {prev}")]
    TimeOrder { line: usize, t: u64, prev: u64 },
}

/// One event of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    Dump(Timestamp, Vec<ConntrackEntry>),
    Destroy(Timestamp, ConntrackEntry),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    pub nodes: Vec<NodeInfo>,
    pub pods: Vec<PodInfo>,
    pub events: Vec<TraceEvent>,
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

fn parse_proto(s: &str) -> Option<u8> {
    Some(match s {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" => 58,
        "sctp" => 132,
        n => n.parse().ok()?,
    })
}

fn tuple_text(t: &Tuple) -> String {
    format!(
        "{}>{}",
        SocketAddr::new(t.src, t.src_port),
        SocketAddr::new(t.dst, t.dst_port)
    )
}

fn parse_tuple(s: &str, proto: u8) -> Option<Tuple> {
    let (a, b) = s.split_once('>')?;
    let a: SocketAddr = a.parse().ok()?;
    let b: SocketAddr = b.parse().ok()?;
    Some(Tuple {
        src: a.ip(),
        dst: b.ip(),
        src_port: a.port(),
        dst_port: b.port(),
        proto,
    })
}

/// One entry as a trace line's body.
pub fn entry_text(e: &ConntrackEntry) -> String {
    let mut s = format!(
        "{} {} {} id={}",
        proto_name(e.orig.proto),
        tuple_text(&e.orig),
        tuple_text(&e.reply),
        e.id
    );
    if e.zone != 0 {
        let _ = write!(s, " zone={}", e.zone);
    }
    if e.mark != 0 {
        let _ = write!(s, " mark={}", e.mark);
    }
    if e.status.0 != 0 {
        let _ = write!(s, " status={:#x}", e.status.0);
    }
    for (k, c) in [("o", e.orig_counters), ("r", e.reply_counters)] {
        if let Some(c) = c {
            let _ = write!(s, " {k}={}/{}", c.packets, c.bytes);
        }
    }
    if let Some(t) = e.start {
        let _ = write!(s, " start={}", t.as_nanos());
    }
    if let Some(t) = e.stop {
        let _ = write!(s, " stop={}", t.as_nanos());
    }
    if e.timeout != 0 {
        let _ = write!(s, " timeout={}", e.timeout);
    }
    if let Some(st) = e.tcp_state {
        let _ = write!(s, " state={}", st.name());
    }
    s
}

/// Parses an entry line's body (see the module docs).
pub fn parse_entry(s: &str) -> Result<ConntrackEntry, String> {
    let mut it = s.split_ascii_whitespace();
    let proto = it
        .next()
        .and_then(parse_proto)
        .ok_or("expected a protocol (tcp, udp, icmp or a number)")?;
    let orig = it
        .next()
        .and_then(|t| parse_tuple(t, proto))
        .ok_or("expected the original tuple SRC:PORT>DST:PORT")?;
    let reply = it
        .next()
        .and_then(|t| parse_tuple(t, proto))
        .ok_or("expected the reply tuple SRC:PORT>DST:PORT")?;
    let mut e = ConntrackEntry {
        orig,
        reply,
        ..ConntrackEntry::default()
    };
    for kv in it {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, found {kv:?}"))?;
        let bad = || format!("bad value for {k}: {v:?}");
        let num = |v: &str| -> Result<u64, String> {
            match v.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).map_err(|_| bad()),
                None => v.parse().map_err(|_| bad()),
            }
        };
        let counters = |v: &str| -> Result<Counters, String> {
            let (p, b) = v.split_once('/').ok_or_else(bad)?;
            Ok(Counters {
                packets: p.parse().map_err(|_| bad())?,
                bytes: b.parse().map_err(|_| bad())?,
            })
        };
        match k {
            "id" => e.id = num(v)? as u32,
            "zone" => e.zone = num(v)? as u16,
            "mark" => e.mark = num(v)? as u32,
            "status" => e.status = ConntrackStatus(num(v)? as u32),
            "o" => e.orig_counters = Some(counters(v)?),
            "r" => e.reply_counters = Some(counters(v)?),
            "start" => e.start = Some(Timestamp::from_nanos(num(v)?)),
            "stop" => e.stop = Some(Timestamp::from_nanos(num(v)?)),
            "timeout" => e.timeout = num(v)? as u32,
            "state" => e.tcp_state = Some(TcpState::from_name(v).ok_or_else(bad)?),
            _ => {}
        }
    }
    Ok(e)
}

/// Appends trace lines to a `String`.
#[derive(Debug, Default)]
pub struct TraceWriter {
    pub text: String,
}

impl TraceWriter {
    pub fn new() -> TraceWriter {
        TraceWriter {
            text: format!("{VERSION_LINE}\n"),
        }
    }

    pub fn node(&mut self, n: &NodeInfo) {
        let addr = n
            .addresses
            .first()
            .map_or("-".to_string(), |a| a.to_string());
        let cidrs: Vec<String> = n.pod_cidrs.iter().map(|c| c.to_string()).collect();
        let cidrs = if cidrs.is_empty() {
            "-".to_string()
        } else {
            cidrs.join(",")
        };
        let _ = writeln!(self.text, "node {} {addr} {cidrs}", n.name);
    }

    pub fn pod(&mut self, p: &PodInfo) {
        let Some(ip) = p.ips.first() else { return };
        let labels: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            self.text,
            "pod {}/{} {} {ip} {}",
            p.namespace,
            p.name,
            p.node,
            labels.join(",")
        );
    }

    pub fn dump(&mut self, t: Timestamp, entries: &[ConntrackEntry]) {
        let _ = writeln!(self.text, "dump {} {}", t.as_nanos(), entries.len());
        for e in entries {
            let _ = writeln!(self.text, "E {}", entry_text(e));
        }
    }

    pub fn destroy(&mut self, t: Timestamp, e: &ConntrackEntry) {
        let _ = writeln!(self.text, "destroy {} {}", t.as_nanos(), entry_text(e));
    }
}

impl Trace {
    pub fn parse(text: &str) -> Result<Trace, TraceError> {
        let mut trace = Trace::default();
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        match lines.next() {
            Some((_, VERSION_LINE)) => {}
            Some((line, found)) => {
                return Err(TraceError::Version {
                    line,
                    found: found.into(),
                });
            }
            None => {
                return Err(TraceError::Version {
                    line: 1,
                    found: String::new(),
                });
            }
        }
        let syntax = |line: usize, what: String| TraceError::Syntax { line, what };
        let mut prev = 0u64;
        let mut time = |line: usize, s: Option<&str>| -> Result<Timestamp, TraceError> {
            let t: u64 = s
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| syntax(line, "expected a time in nanoseconds".into()))?;
            if t < prev {
                return Err(TraceError::TimeOrder { line, t, prev });
            }
            prev = t;
            Ok(Timestamp::from_nanos(t))
        };
        while let Some((line, l)) = lines.next() {
            let (word, rest) = l.split_once(' ').unwrap_or((l, ""));
            match word {
                "node" => {
                    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
                    if f.len() != 3 {
                        return Err(syntax(line, "expected node NAME ADDR CIDR[,CIDR…]".into()));
                    }
                    let addresses = match f[1] {
                        "-" => Vec::new(),
                        a => vec![
                            a.parse()
                                .map_err(|_| syntax(line, format!("bad address {a:?}")))?,
                        ],
                    };
                    let pod_cidrs = match f[2] {
                        "-" => Vec::new(),
                        c => c
                            .split(',')
                            .map(|c| c.parse::<Cidr>().map_err(|e| syntax(line, e.to_string())))
                            .collect::<Result<_, _>>()?,
                    };
                    trace.nodes.push(NodeInfo {
                        name: f[0].into(),
                        addresses,
                        pod_cidrs,
                    });
                }
                "pod" => {
                    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
                    if !(3..=4).contains(&f.len()) {
                        return Err(syntax(line, "expected pod NS/NAME NODE IP [k=v,…]".into()));
                    }
                    let (ns, name) = f[0]
                        .split_once('/')
                        .ok_or_else(|| syntax(line, "expected NS/NAME".into()))?;
                    let ip: IpAddr = f[2]
                        .parse()
                        .map_err(|_| syntax(line, format!("bad address {:?}", f[2])))?;
                    let labels = f
                        .get(3)
                        .map(|l| Labels::new(l.split(',').filter_map(|kv| kv.split_once('='))))
                        .unwrap_or_default();
                    trace.pods.push(PodInfo {
                        uid: format!("{ns}/{name}"),
                        namespace: ns.into(),
                        name: name.into(),
                        node: f[1].into(),
                        ips: vec![ip],
                        labels,
                        phase: PodPhase::Running,
                        ..PodInfo::default()
                    });
                }
                "dump" => {
                    let mut f = rest.split_ascii_whitespace();
                    let t = time(line, f.next())?;
                    let n: usize = f
                        .next()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(|| syntax(line, "expected dump T N".into()))?;
                    let mut entries = Vec::with_capacity(n);
                    for _ in 0..n {
                        let (el, l) = lines
                            .next()
                            .ok_or_else(|| syntax(line, format!("dump announced {n} entries")))?;
                        let body = l
                            .strip_prefix("E ")
                            .ok_or_else(|| syntax(el, "expected an E line".into()))?;
                        entries.push(parse_entry(body).map_err(|w| syntax(el, w))?);
                    }
                    trace.events.push(TraceEvent::Dump(t, entries));
                }
                "destroy" => {
                    let (t, body) = rest.split_once(' ').unwrap_or((rest, ""));
                    let t = time(line, Some(t))?;
                    let e = parse_entry(body).map_err(|w| syntax(line, w))?;
                    trace.events.push(TraceEvent::Destroy(t, e));
                }
                w => {
                    return Err(syntax(
                        line,
                        format!("unknown item {w:?}: expected node, pod, dump or destroy"),
                    ));
                }
            }
        }
        Ok(trace)
    }
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    pub dumps: u64,
    pub destroys: u64,
    pub records: u64,
}

/// Feeds `trace` through one exporter core (as Node `node`, default: the first declared Node)
/// and hands every record to `sink`, acknowledging it. Ends with a shutdown at the last event's
/// time plus the active timeout, so every connection gets its last record.
pub fn replay<E>(
    trace: &Trace,
    node: Option<&str>,
    mut sink: impl FnMut(&FlowRecord, &Interner) -> Result<(), E>,
) -> Result<ReplayStats, E> {
    let name = node
        .map(str::to_string)
        .or_else(|| trace.nodes.first().map(|n| n.name.clone()))
        .unwrap_or_else(|| "trace-node".into());
    let cfg = ExporterConfig {
        node_name: name.clone(),
        ..ExporterConfig::default()
    };
    let active = cfg.active_timeout;
    let mut ex = FlowExporter::new(cfg);
    let t0 = Timestamp::ZERO;
    if trace.nodes.is_empty() {
        // No metadata: every address counts as a Pod of this Node, so nothing is dropped.
        ex.handle_metadata(
            t0,
            MetadataUpdate::Node(NodeInfo {
                name: name.clone(),
                addresses: Vec::new(),
                pod_cidrs: vec![
                    Cidr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
                    Cidr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
                ],
            }),
        );
    }
    for n in &trace.nodes {
        ex.handle_metadata(t0, MetadataUpdate::Node(n.clone()));
    }
    for p in &trace.pods {
        ex.handle_metadata(t0, MetadataUpdate::Pod(p.clone()));
    }
    let mut stats = ReplayStats::default();
    let mut pump = |ex: &mut FlowExporter, now: Timestamp, stats: &mut ReplayStats| {
        while let Some(r) = ex.poll_record(now) {
            sink(&r.record, ex.interner())?;
            stats.records += 1;
            // Every polled record is answered; the id is fresh, so this cannot fail.
            let _ = ex.ack(r.id);
        }
        Ok(())
    };
    let mut now = t0;
    for ev in &trace.events {
        let t = match ev {
            TraceEvent::Dump(t, _) | TraceEvent::Destroy(t, _) => *t,
        };
        while let Some(due) = ex.poll_timeout().filter(|d| *d <= t) {
            let due = due.max(now);
            ex.handle_timeout(due);
            pump(&mut ex, due, &mut stats)?;
            if ex.poll_timeout() == Some(due) {
                break;
            }
        }
        now = t;
        match ev {
            TraceEvent::Dump(t, entries) => {
                ex.handle_dump(*t, entries);
                stats.dumps += 1;
            }
            TraceEvent::Destroy(t, e) => {
                ex.handle_destroy(*t, e);
                stats.destroys += 1;
            }
        }
        pump(&mut ex, now, &mut stats)?;
    }
    let end = now + active.max(Duration::from_secs(1));
    ex.handle_timeout(end);
    pump(&mut ex, end, &mut stats)?;
    ex.shutdown(end);
    pump(&mut ex, end, &mut stats)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_text() {
        let e = parse_entry(
            "tcp 10.2.0.7:40112>10.96.0.1:80 10.3.0.9:8080>10.2.0.7:40112 id=17 status=0x2e o=12/2010 r=10/5120 start=5 state=ESTABLISHED",
        )
        .unwrap();
        assert_eq!(e.orig.dst_port, 80);
        assert_eq!(e.reply.src_port, 8080);
        assert_eq!(e.tcp_state, Some(TcpState::Established));
        assert_eq!(parse_entry(&entry_text(&e)).unwrap(), e);
        let v6 = parse_entry("udp [fd00::1]:53>[fd00::2]:53 [fd00::2]:53>[fd00::1]:53").unwrap();
        assert_eq!(parse_entry(&entry_text(&v6)).unwrap(), v6);
    }

    #[test]
    fn bad_traces_name_the_line() {
        assert!(matches!(
            Trace::parse("flowlens-trace v2\n"),
            Err(TraceError::Version { line: 1, .. })
        ));
        let t = "flowlens-trace v1\ndump 10 1\nE tcp nope\n";
        assert!(matches!(
            Trace::parse(t),
            Err(TraceError::Syntax { line: 3, .. })
        ));
        let t = "flowlens-trace v1\ndump 10 0\ndump 5 0\n";
        assert!(matches!(
            Trace::parse(t),
            Err(TraceError::TimeOrder { line: 3, .. })
        ));
    }

    #[test]
    fn replay_exports_a_short_connection_once() {
        let text = "flowlens-trace v1
# no metadata: every address is a local Pod
dump 1000000000 1
E tcp 10.0.0.1:4000>10.0.0.2:80 10.0.0.2:80>10.0.0.1:4000 id=1 o=3/180 r=2/120 start=900000000 state=ESTABLISHED
destroy 2000000000 tcp 10.0.0.1:4000>10.0.0.2:80 10.0.0.2:80>10.0.0.1:4000 id=1 o=5/280 r=4/220 start=900000000 stop=2000000000 state=TIME_WAIT
dump 6000000000 0
";
        let trace = Trace::parse(text).unwrap();
        let mut recs = Vec::new();
        let stats = replay(&trace, None, |r, _| {
            recs.push(*r);
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(stats.records, 1);
        assert_eq!(recs[0].totals.octets, 280);
        assert_eq!(recs[0].deltas.reverse_octets, 220);
    }
}
