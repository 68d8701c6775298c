//! The attackers: hostile or broken peers, each a function that runs on a thread of its own
//! from [`ATTACKER_ADDR`] with raw sockets and hand-made (or flowcore-encoded) bytes, until the
//! scenario stops it ([`Ctl::stopped`]) or it has done all it was sized to do. Each says when its
//! effect is in place ([`Ctl::engaged`]: the connections are held, the table is full, the flood
//! is running) and reports what it did and what the daemon did back ([`Report`]). Sizes are
//! parameters: the scenarios pick a CI size (seconds) or the full size.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowcore::ipfix::{Encoder, Layout};

use super::ATTACKER_ADDR;
use super::daemons::Transport;
use super::http;
use super::records::{
    Counters, Rec, Rng, datagram_encoder, now, now_secs, stream_encoder, unique_labels, unique_name,
};

/// What an attacker can reach.
#[derive(Clone, Debug)]
pub struct Target {
    /// The aggregator's agent listener and its transport.
    pub aggregator: SocketAddr,
    pub transport: Transport,
    /// The aggregator's `/metrics` and `/api/flows`.
    pub aggregator_http: SocketAddr,
    /// The collector's IPFIX listener (TCP).
    pub collector_ipfix: SocketAddr,
    /// The collector's HTTP API.
    pub collector_http: SocketAddr,
    /// The aggregator's generated certificates (TLS only).
    pub tls_dir: Option<PathBuf>,
}

/// The scenario's side of a running attack.
pub struct Ctl {
    stop: Arc<AtomicBool>,
    engaged: Mutex<Option<mpsc::Sender<Instant>>>,
}

impl Ctl {
    pub fn new(stop: Arc<AtomicBool>, engaged: mpsc::Sender<Instant>) -> Ctl {
        Ctl {
            stop,
            engaged: Mutex::new(Some(engaged)),
        }
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The attack's effect is in place (only the first call counts).
    pub fn engaged(&self) {
        if let Some(tx) = self
            .engaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(Instant::now());
        }
    }

    /// Holds whatever the attack built until the scenario stops it.
    pub fn hold(&self) {
        self.engaged();
        while !self.stopped() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What an attack did, and what the daemon did to it.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Connections (or UDP sources) opened.
    pub connections: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Connections the daemon closed (seen as end of stream or reset).
    pub closed_by_peer: u64,
    /// Connections still open when the attack stopped.
    pub open_at_end: u64,
    /// IPFIX messages (or HTTP requests) sent.
    pub messages: u64,
    pub records: u64,
    pub bytes: u64,
    /// HTTP answers by status (`"200"`, `"503"`, …, `"closed"`, `"error"`).
    pub statuses: BTreeMap<String, u64>,
    /// Per connection, how long the daemon took to close it (attacks that measure that).
    pub close_times: Vec<Duration>,
    /// Largest HTTP body received.
    pub max_body: usize,
    /// Anything else worth saying, one line each.
    pub notes: Vec<String>,
}

impl Report {
    fn status(&mut self, s: impl Into<String>) {
        *self.statuses.entry(s.into()).or_default() += 1;
    }

    /// A one-line summary for tables and failure messages.
    pub fn summary(&self) -> String {
        let mut p = Vec::new();
        if self.connections > 0 {
            p.push(format!("{} connections", self.connections));
        }
        if self.connect_failures > 0 {
            p.push(format!("{} failed to connect", self.connect_failures));
        }
        if self.closed_by_peer > 0 {
            p.push(format!("{} closed by the daemon", self.closed_by_peer));
        }
        if self.open_at_end > 0 {
            p.push(format!("{} open at the end", self.open_at_end));
        }
        if self.messages > 0 {
            p.push(format!("{} messages", self.messages));
        }
        if self.records > 0 {
            p.push(format!("{} records", self.records));
        }
        if self.bytes > 0 {
            p.push(format!("{} MiB sent", self.bytes >> 20));
        }
        if !self.statuses.is_empty() {
            let s: Vec<String> = self
                .statuses
                .iter()
                .map(|(k, v)| format!("{k}×{v}"))
                .collect();
            p.push(format!("answers {}", s.join(" ")));
        }
        if self.max_body > 0 {
            p.push(format!("largest body {} KiB", self.max_body >> 10));
        }
        p.extend(self.notes.iter().cloned());
        p.join(", ")
    }
}

/// An attack ready to run.
pub type Attack = Box<dyn FnOnce(&Target, &Ctl) -> Report + Send>;

/// How long a held connection's connect may take: past it the daemon's backlog is full.
const HOLD_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

fn connect(dst: SocketAddr) -> std::io::Result<TcpStream> {
    http::connect_from(ATTACKER_ADDR, dst, Duration::from_secs(3))
}

/// Whether the daemon has closed `s` (end of stream or an error; data it sent is read and
/// dropped).
fn closed(s: &mut TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 4096];
    let c = loop {
        match s.read(&mut b) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    let _ = s.set_nonblocking(false);
    c
}

// ---------------------------------------------------------------------------------------------
// Record floods (agent layout to the aggregator, aggregated layout to the collector)

/// A TCP session that writes whatever an encoder produces, reconnecting (with templates again)
/// whenever the daemon closes it.
struct Flooder {
    dst: SocketAddr,
    domain: u32,
    layout: Layout,
    enc: Encoder,
    sock: Option<TcpStream>,
}

impl Flooder {
    fn new(dst: SocketAddr, domain: u32, layout: Layout) -> Flooder {
        Flooder {
            dst,
            domain,
            layout,
            enc: stream_encoder(domain, layout),
            sock: None,
        }
    }

    /// Writes every finished message; on failure the session is dropped (counted).
    fn pump(&mut self, r: &mut Report) {
        while let Some(m) = self.enc.poll_transmit() {
            if self.sock.is_none() {
                match connect(self.dst) {
                    Ok(s) => {
                        let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                        self.sock = Some(s);
                        r.connections += 1;
                        if r.connections > 1 {
                            // Templates again on the new session; this message is lost.
                            self.enc = stream_encoder(self.domain, self.layout);
                            return;
                        }
                    }
                    Err(_) => {
                        r.connect_failures += 1;
                        std::thread::sleep(Duration::from_millis(50));
                        return;
                    }
                }
            }
            let s = self.sock.as_mut().expect("connected");
            match s.write_all(&m) {
                Ok(()) => {
                    r.messages += 1;
                    r.bytes += m.len() as u64;
                }
                Err(_) => {
                    r.closed_by_peer += 1;
                    self.sock = None;
                }
            }
        }
    }

    fn write(&mut self, rec: &Rec, r: &mut Report) {
        if rec.write(&mut self.enc, self.layout).is_ok() {
            r.records += 1;
        }
        self.pump(r);
    }

    fn finish(&mut self, r: &mut Report) {
        self.enc.flush(now());
        self.pump(r);
    }

    fn is_open(&mut self) -> bool {
        self.sock.as_mut().is_some_and(|s| !closed(s))
    }
}

/// The 5-tuple of attack flow `n`: from 10.66.x.y, unique for 2^32 flows.
fn attack_flow(n: u64) -> (std::net::Ipv4Addr, u16) {
    let host = (n >> 16) as u32;
    (
        std::net::Ipv4Addr::from(0x0a42_0000u32 | (host & 0xffff)),
        (n & 0xffff) as u16,
    )
}

/// Unique Pod, Namespace and label names, 200 B – 8 KiB each (issue row 1): records of flows in
/// flight (flowEndReason 2, so the aggregator must hold their names) from one agent, for
/// `duration` or `max_records`, whichever comes first.
#[derive(Clone, Debug)]
pub struct NameFlood {
    pub duration: Duration,
    pub max_records: u64,
    pub min_len: usize,
    pub max_len: usize,
    /// Valid Kubernetes lengths (Pod names ≤ 253, Namespaces ≤ 63) instead of the above, so
    /// that nothing is refused as too long and only the byte budget can stop it.
    pub valid_lengths: bool,
}

pub fn name_flood(p: NameFlood) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        let mut f = Flooder::new(t.aggregator, 0x6666, Layout::AgentV4);
        let mut rng = Rng::new(0x4e41_4d45);
        let t0 = Instant::now();
        let mut n = 0u64;
        while !ctl.stopped() && t0.elapsed() < p.duration && n < p.max_records {
            let (len, ns_len) = if p.valid_lengths {
                (rng.range(100, 253), rng.range(20, 63))
            } else {
                (
                    rng.range(p.min_len, p.max_len),
                    rng.range(p.min_len, p.max_len),
                )
            };
            let pod = unique_name("p", n, len);
            let ns = unique_name("n", n, ns_len);
            let dpod = unique_name("d", n, len);
            let labels = unique_labels(n, rng.range(p.min_len.max(20), p.max_len.max(20)));
            let (src, sport) = attack_flow(n);
            let rec = Rec {
                src,
                sport,
                end_reason: 2,
                totals: Counters {
                    packets: 1,
                    octets: 100,
                    ..Counters::default()
                },
                src_pod: &pod,
                src_ns: &ns,
                src_node: "attacker-node",
                dst_pod: &dpod,
                dst_ns: &ns,
                dst_node: "attacker-node",
                src_labels: &labels,
                dst_labels: &labels,
                ..Rec::default()
            };
            f.write(&rec, &mut r);
            n += 1;
            if n == 1000 || t0.elapsed() > Duration::from_secs(1) {
                ctl.engaged();
            }
        }
        f.finish(&mut r);
        r.open_at_end = u64::from(f.is_open());
        ctl.hold();
        r
    })
}

/// Records with a huge source Pod-labels JSON (`label_len` bytes; up to about 65,000 fit in one
/// message).
#[derive(Clone, Debug)]
pub struct LabelFlood {
    pub records: u64,
    pub label_len: usize,
}

pub fn label_flood(p: LabelFlood) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        let mut f = Flooder::new(t.aggregator, 0x6667, Layout::AgentV4);
        for n in 0..p.records {
            if ctl.stopped() {
                break;
            }
            let labels = unique_labels(n, p.label_len);
            let (src, sport) = attack_flow(n);
            let rec = Rec {
                src,
                sport,
                end_reason: 2,
                src_pod: "big-labels",
                src_ns: "attacker",
                src_node: "attacker-node",
                dst_pod: "big-labels-peer",
                dst_ns: "attacker",
                dst_node: "attacker-node",
                src_labels: &labels,
                ..Rec::default()
            };
            f.write(&rec, &mut r);
            if n == 100 {
                ctl.engaged();
            }
        }
        f.finish(&mut r);
        r.open_at_end = u64::from(f.is_open());
        ctl.hold();
        r
    })
}

/// Where a record flood goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodTo {
    /// The aggregator, as an agent (agent layout).
    Aggregator,
    /// The collector directly, as a second aggregator (aggregated layout).
    Collector,
}

/// Records of unique 5-tuples from one exporter: `flows` of them (engaged then), and with
/// `continuous` new ones until stopped.
#[derive(Clone, Debug)]
pub struct FlowFlood {
    pub to: FloodTo,
    pub flows: u64,
    pub continuous: bool,
    /// flowEndReason: 2 keeps each flow in the aggregator's table, 3 ends it (exported at once).
    pub end_reason: u8,
    /// Every flow with Pods of its own names (a store with many distinct names).
    pub distinct_names: bool,
    /// End times spread over this many seconds before now (the dashboards' time range).
    pub spread_secs: u64,
}

pub fn flow_flood(p: FlowFlood) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        let (dst, layout) = match p.to {
            FloodTo::Aggregator => (t.aggregator, Layout::AgentV4),
            FloodTo::Collector => (t.collector_ipfix, Layout::AggregatedV4),
        };
        let mut f = Flooder::new(dst, 0x6668, layout);
        let now = now_secs();
        let mut n = 0u64;
        while !ctl.stopped() && (p.continuous || n < p.flows) {
            let (src, sport) = attack_flow(n);
            let (pod, peer) = if p.distinct_names {
                (format!("flood-{n:08x}"), format!("sink-{:06x}", n / 3))
            } else {
                ("flood".to_string(), "sink".to_string())
            };
            let end = now.saturating_sub(n % p.spread_secs.max(1));
            let rec = Rec {
                src,
                sport,
                start_secs: end.saturating_sub(5),
                end_secs: end,
                end_reason: p.end_reason,
                totals: Counters {
                    packets: 3,
                    octets: 300,
                    rev_packets: 2,
                    rev_octets: 200,
                },
                deltas: Counters {
                    packets: 3,
                    octets: 300,
                    rev_packets: 2,
                    rev_octets: 200,
                },
                src_pod: &pod,
                src_ns: "attacker",
                src_node: "attacker-node",
                dst_pod: &peer,
                dst_ns: "attacker",
                dst_node: "attacker-node",
                tcp_state: if p.end_reason == 3 {
                    "TIME_WAIT"
                } else {
                    "ESTABLISHED"
                },
                ..Rec::default()
            };
            f.write(&rec, &mut r);
            n += 1;
            if n == p.flows {
                f.finish(&mut r);
                ctl.engaged();
            }
        }
        f.finish(&mut r);
        r.open_at_end = u64::from(f.is_open());
        ctl.hold();
        r
    })
}

// ---------------------------------------------------------------------------------------------
// Templates and observation domains

/// Hand-made template messages: `count` templates from id `first`, `fields` unknown IANA IEs of
/// one byte each (4 wire bytes per field), as many per message as fit.
fn template_messages(domain: u32, first: u16, count: usize, fields: usize) -> Vec<Vec<u8>> {
    let per = 4 + 4 * fields;
    let fit = ((65535 - 16 - 4) / per).max(1);
    let mut out = Vec::new();
    let mut id = first;
    let mut left = count;
    let mut seq = 0u32;
    while left > 0 {
        let n = left.min(fit);
        let mut set = Vec::with_capacity(4 + n * per);
        set.extend_from_slice(&2u16.to_be_bytes());
        set.extend_from_slice(&((4 + n * per) as u16).to_be_bytes());
        for _ in 0..n {
            set.extend_from_slice(&id.to_be_bytes());
            set.extend_from_slice(&(fields as u16).to_be_bytes());
            for i in 0..fields {
                set.extend_from_slice(&(1000 + (i % 1000) as u16).to_be_bytes());
                set.extend_from_slice(&1u16.to_be_bytes());
            }
            id = id.wrapping_add(1).max(256);
        }
        out.push(message(domain, seq, &set));
        seq += 1;
        left -= n;
    }
    out
}

/// An IPFIX message around `sets`.
fn message(domain: u32, seq: u32, sets: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + sets.len());
    m.extend_from_slice(&10u16.to_be_bytes());
    m.extend_from_slice(&((16 + sets.len()) as u16).to_be_bytes());
    m.extend_from_slice(&(now_secs() as u32).to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&domain.to_be_bytes());
    m.extend_from_slice(sets);
    m
}

/// Templates of `fields` fields, `templates_per_domain` ids in each of `domains` observation
/// domains, on each of `connections` sessions, which are then held open.
#[derive(Clone, Debug)]
pub struct TemplateFlood {
    pub connections: usize,
    pub domains: u32,
    pub templates_per_domain: usize,
    pub fields: usize,
}

pub fn template_flood(p: TemplateFlood) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        let mut socks = Vec::new();
        'conns: for c in 0..p.connections {
            let mut s = match connect(t.aggregator) {
                Ok(s) => s,
                Err(_) => {
                    r.connect_failures += 1;
                    continue;
                }
            };
            let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
            r.connections += 1;
            for d in 0..p.domains {
                for m in template_messages(
                    ((c as u32) << 16) | d,
                    256,
                    p.templates_per_domain,
                    p.fields,
                ) {
                    if ctl.stopped() {
                        break 'conns;
                    }
                    if s.write_all(&m).is_err() {
                        r.closed_by_peer += 1;
                        continue 'conns;
                    }
                    r.messages += 1;
                    r.bytes += m.len() as u64;
                }
            }
            socks.push(s);
        }
        ctl.engaged();
        ctl.hold();
        for s in &mut socks {
            if closed(s) {
                r.closed_by_peer += 1;
            } else {
                r.open_at_end += 1;
            }
        }
        r
    })
}

/// One session, then `iterations` times: a template (id cycling over 16, 100–1000 fields)
/// defined, used once, and withdrawn.
#[derive(Clone, Debug)]
pub struct TemplateChurn {
    pub iterations: u64,
}

pub fn template_churn(p: TemplateChurn) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        let mut s: Option<TcpStream> = None;
        let mut rng = Rng::new(0x4348_5552);
        for i in 0..p.iterations {
            if ctl.stopped() {
                break;
            }
            if s.is_none() {
                match connect(t.aggregator) {
                    Ok(c) => {
                        let _ = c.set_write_timeout(Some(Duration::from_secs(10)));
                        s = Some(c);
                        r.connections += 1;
                    }
                    Err(_) => {
                        r.connect_failures += 1;
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
            let id = 256 + (i % 16) as u16;
            let fields = rng.range(100, 1000);
            let mut sets = template_messages(7, id, 1, fields).remove(0).split_off(16);
            // A data record of it (all one-byte fields).
            sets.extend_from_slice(&id.to_be_bytes());
            sets.extend_from_slice(&((4 + fields) as u16).to_be_bytes());
            sets.extend(std::iter::repeat_n(0x5a, fields));
            // Withdrawn: a template record with field count 0.
            sets.extend_from_slice(&2u16.to_be_bytes());
            sets.extend_from_slice(&8u16.to_be_bytes());
            sets.extend_from_slice(&id.to_be_bytes());
            sets.extend_from_slice(&0u16.to_be_bytes());
            let m = message(7, i as u32, &sets);
            if s.as_mut().expect("connected").write_all(&m).is_err() {
                r.closed_by_peer += 1;
                s = None;
                continue;
            }
            r.messages += 1;
            r.records += 1;
            r.bytes += m.len() as u64;
            if i == 1000 {
                ctl.engaged();
            }
        }
        r.open_at_end = u64::from(s.as_mut().is_some_and(|s| !closed(s)));
        ctl.hold();
        r
    })
}

/// One session with `domains` observation domains, each with a small template and a record.
#[derive(Clone, Debug)]
pub struct DomainFlood {
    pub domains: u32,
}

pub fn domain_flood(p: DomainFlood) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        let mut s = match connect(t.aggregator) {
            Ok(s) => s,
            Err(e) => {
                r.connect_failures += 1;
                r.notes.push(format!("connect: {e}"));
                ctl.engaged();
                return r;
            }
        };
        let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
        r.connections += 1;
        let mut buf = Vec::new();
        for d in 0..p.domains {
            if ctl.stopped() {
                break;
            }
            let mut set = template_messages(d + 1, 256, 1, 3).remove(0).split_off(16);
            set.extend_from_slice(&256u16.to_be_bytes());
            set.extend_from_slice(&7u16.to_be_bytes());
            set.extend_from_slice(&[1, 2, 3]);
            buf.extend(message(d + 1, 0, &set));
            r.messages += 1;
            if buf.len() > 60_000 {
                if s.write_all(&buf).is_err() {
                    r.closed_by_peer += 1;
                    r.notes.push(format!("closed after {} domains", d + 1));
                    buf.clear();
                    break;
                }
                r.bytes += buf.len() as u64;
                buf.clear();
            }
        }
        if !buf.is_empty() && s.write_all(&buf).is_ok() {
            r.bytes += buf.len() as u64;
        }
        ctl.engaged();
        ctl.hold();
        if closed(&mut s) {
            r.closed_by_peer += 1;
        } else {
            r.open_at_end += 1;
        }
        r
    })
}

// ---------------------------------------------------------------------------------------------
// Connections held

/// What a held connection sends after connecting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// Nothing: an idle TCP connection.
    Nothing,
    /// The first bytes of a TLS ClientHello (a record header announcing 512 bytes, then 10 of
    /// them): a handshake left half done.
    PartialClientHello,
}

/// `count` connections to the aggregator's agent listener, kept open: whichever the daemon
/// closes is opened again (at most `reopen_per_sweep` per 100 ms sweep), as a hostile peer
/// would, so that a slot the daemon frees goes back to the attacker first.
#[derive(Clone, Debug)]
pub struct HoldConnections {
    pub count: usize,
    pub opening: Opening,
    pub reopen_per_sweep: usize,
    /// Not engaged before this long: e.g. one handshake timeout, so that the daemon has freed
    /// the first slots and the attacker holds them again (the steady state).
    pub engage_after: Duration,
}

const PARTIAL_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, 512 bytes
    0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x00, 0x00, 0x00, 0x00,
];

fn open_held(dst: SocketAddr, opening: Opening) -> std::io::Result<TcpStream> {
    let mut s = http::connect_from(ATTACKER_ADDR, dst, HOLD_CONNECT_TIMEOUT)?;
    if opening == Opening::PartialClientHello {
        s.write_all(PARTIAL_HELLO)?;
    }
    Ok(s)
}

pub fn hold_connections(p: HoldConnections) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        let open = |r: &mut Report| match open_held(t.aggregator, p.opening) {
            Ok(s) => {
                r.connections += 1;
                Some(s)
            }
            Err(_) => {
                r.connect_failures += 1;
                None
            }
        };
        r.open_at_end = hold(
            p.count,
            p.reopen_per_sweep,
            p.engage_after,
            ctl,
            &mut r,
            open,
            |_, _| true,
        );
        r
    })
}

/// Keeps `count` connections open until stopped. Every 100 ms a sweep drops those the daemon
/// closed (counted), lets `tend` act on the live ones (given the sweep's number; false: it
/// found the connection gone),
/// and opens missing ones with `open` — at most `reopen` per sweep and for at most a second, so
/// that a daemon whose backlog is full (connects time out) does not stall the sweep. Engaged
/// once a sweep has tried every slot, or after 5 s, but not before `engage_after`. Returns how
/// many are open at the end.
fn hold(
    count: usize,
    reopen: usize,
    engage_after: Duration,
    ctl: &Ctl,
    r: &mut Report,
    mut open: impl FnMut(&mut Report) -> Option<TcpStream>,
    mut tend: impl FnMut(&mut TcpStream, u64) -> bool,
) -> u64 {
    let mut socks: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
    let t0 = Instant::now();
    let mut n = 0u64;
    while !ctl.stopped() {
        let sweep = Instant::now();
        n += 1;
        let mut opened = 0;
        let mut tried_all = true;
        for slot in socks.iter_mut() {
            if let Some(s) = slot
                && (closed(s) || !tend(s, n))
            {
                r.closed_by_peer += 1;
                *slot = None;
            }
            if slot.is_none() {
                if opened < reopen && sweep.elapsed() < Duration::from_secs(1) {
                    opened += 1;
                    *slot = open(r);
                } else {
                    tried_all = false;
                }
            }
        }
        if (tried_all || t0.elapsed() >= Duration::from_secs(5)) && t0.elapsed() >= engage_after {
            ctl.engaged();
        }
        std::thread::sleep(Duration::from_millis(100).saturating_sub(sweep.elapsed()));
    }
    socks
        .iter_mut()
        .flatten()
        .map(|s| u64::from(!closed(s)))
        .sum()
}

/// `count` connections that each send an IPFIX header claiming 65,535 bytes and 4 bytes of
/// body, then nothing (or, with `trickle`, one more byte per connection every 500 ms). Not
/// reopened: the report's `close_times` say when the daemon closed each.
#[derive(Clone, Debug)]
pub struct PartialMessages {
    pub count: usize,
    pub trickle: bool,
}

pub fn partial_messages(p: PartialMessages) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        let mut head = message(1, 0, &[0, 2, 0, 8, 1, 0, 0, 0]);
        head[2..4].copy_from_slice(&65535u16.to_be_bytes());
        let mut socks: Vec<(TcpStream, Instant)> = Vec::new();
        for _ in 0..p.count {
            match connect(t.aggregator).and_then(|mut s| s.write_all(&head).map(|()| s)) {
                Ok(s) => {
                    r.connections += 1;
                    socks.push((s, Instant::now()));
                }
                Err(_) => r.connect_failures += 1,
            }
        }
        ctl.engaged();
        let mut open: Vec<Option<(TcpStream, Instant)>> = socks.into_iter().map(Some).collect();
        let mut last_trickle = Instant::now();
        while !ctl.stopped() && open.iter().any(Option::is_some) {
            let trickle = p.trickle && last_trickle.elapsed() >= Duration::from_millis(500);
            if trickle {
                last_trickle = Instant::now();
            }
            for slot in open.iter_mut() {
                let Some((s, since)) = slot else { continue };
                let gone = closed(s) || (trickle && s.write_all(&[0]).is_err());
                if gone {
                    r.closed_by_peer += 1;
                    r.close_times.push(since.elapsed());
                    *slot = None;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        r.open_at_end = open.iter().filter(|s| s.is_some()).count() as u64;
        r
    })
}

/// `count` one-datagram UDP exporters from distinct source ports (each a valid template and
/// record), then silence: sessions that fill the table.
#[derive(Clone, Debug)]
pub struct UdpSources {
    pub count: usize,
}

pub fn udp_sources(p: UdpSources) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        // All bound at once, so that no source port is reused.
        let mut socks = Vec::with_capacity(p.count);
        for n in 0..p.count as u64 {
            if ctl.stopped() {
                break;
            }
            let s = match UdpSocket::bind(SocketAddr::new(ATTACKER_ADDR, 0)) {
                Ok(s) => s,
                Err(_) => {
                    r.connect_failures += 1;
                    continue;
                }
            };
            let mut enc = datagram_encoder(0x6669, Layout::AgentV4);
            let (src, sport) = attack_flow(n);
            let rec = Rec {
                src,
                sport,
                end_reason: 3,
                src_pod: "udp-source",
                src_ns: "attacker",
                src_node: "attacker-node",
                ..Rec::default()
            };
            let _ = rec.write(&mut enc, Layout::AgentV4);
            enc.flush(now());
            while let Some(m) = enc.poll_transmit() {
                // Paced so that the daemon's socket buffer takes every datagram: the point is
                // sessions, not loss.
                std::thread::sleep(Duration::from_micros(200));
                if s.send_to(&m, t.aggregator).is_ok() {
                    r.messages += 1;
                    r.bytes += m.len() as u64;
                }
            }
            r.connections += 1;
            r.records += 1;
            socks.push(s);
        }
        ctl.hold();
        r
    })
}

// ---------------------------------------------------------------------------------------------
// Malformed input

/// One malformed message per connection, `per_second` of them, for `duration`: bad versions,
/// impossible lengths, sets longer than their message, templates with no fields.
#[derive(Clone, Debug)]
pub struct MalformedFlood {
    pub per_second: u32,
    pub duration: Duration,
}

fn malformed(kind: u64) -> Vec<u8> {
    match kind % 4 {
        // Version 9.
        0 => {
            let mut m = message(1, 0, &[]);
            m[1] = 9;
            m
        }
        // A length shorter than the header.
        1 => {
            let mut m = message(1, 0, &[]);
            m[2..4].copy_from_slice(&8u16.to_be_bytes());
            m
        }
        // A set claiming more bytes than the message holds.
        2 => message(1, 0, &[1, 0, 0x03, 0xe8, 0, 0, 0, 0]),
        // A template record cut short.
        _ => message(1, 0, &[0, 2, 0, 8, 1, 0, 0, 9]),
    }
}

pub fn malformed_flood(p: MalformedFlood) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        let t0 = Instant::now();
        let every = Duration::from_secs(1) / p.per_second.max(1);
        let mut n = 0u64;
        while !ctl.stopped() && t0.elapsed() < p.duration {
            let due = t0 + every * n as u32;
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
            match connect(t.aggregator) {
                Ok(mut s) => {
                    r.connections += 1;
                    if s.write_all(&malformed(n)).is_ok() {
                        r.messages += 1;
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
                Err(_) => r.connect_failures += 1,
            }
            n += 1;
            if t0.elapsed() >= Duration::from_secs(1) {
                ctl.engaged();
            }
        }
        ctl.engaged();
        r
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// `count` requests at once (one connection each, all written before any answer is read),
/// cycling over `paths`, `rounds` times or until stopped.
#[derive(Clone, Debug)]
pub struct ConcurrentQueries {
    pub count: usize,
    pub rounds: usize,
    pub paths: Vec<String>,
}

pub fn concurrent_queries(p: ConcurrentQueries) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        for round in 0..p.rounds {
            if ctl.stopped() {
                break;
            }
            let mut socks = Vec::with_capacity(p.count);
            for i in 0..p.count {
                let path = &p.paths[i % p.paths.len()];
                let req = format!(
                    "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    t.collector_http
                );
                match connect(t.collector_http).and_then(|mut s| {
                    s.write_all(req.as_bytes())?;
                    Ok(s)
                }) {
                    Ok(s) => {
                        r.connections += 1;
                        r.messages += 1;
                        socks.push(s);
                    }
                    Err(_) => r.connect_failures += 1,
                }
            }
            if round == 0 {
                ctl.engaged();
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            for mut s in socks {
                match http::read_response(&mut s, deadline) {
                    Ok(a) => {
                        r.max_body = r.max_body.max(a.body.len());
                        r.status(a.status.to_string());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => r.status("closed"),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                        ) =>
                    {
                        r.status("timeout")
                    }
                    Err(_) => r.status("error"),
                }
            }
        }
        ctl.hold();
        r
    })
}

/// `count` connections to the collector's HTTP port that send a request's headers one byte
/// every `every` (slowloris); whichever the daemon closes is opened again (64 per sweep).
#[derive(Clone, Debug)]
pub struct SlowHeaders {
    pub count: usize,
    pub every: Duration,
}

pub fn slow_headers(p: SlowHeaders) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        let start = b"GET /api/stats HTTP/1.1\r\nHost: x\r\n";
        let open = |r: &mut Report| {
            let mut s =
                match http::connect_from(ATTACKER_ADDR, t.collector_http, HOLD_CONNECT_TIMEOUT) {
                    Ok(s) => s,
                    Err(_) => {
                        r.connect_failures += 1;
                        return None;
                    }
                };
            let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
            if s.write_all(start).is_ok() {
                r.connections += 1;
                Some(s)
            } else {
                r.closed_by_peer += 1;
                None
            }
        };
        // One more header byte per connection every `every` (sweeps are 100 ms apart).
        let every = (p.every.as_millis() / 100).max(1) as u64;
        let tend = |s: &mut TcpStream, sweep: u64| {
            !sweep.is_multiple_of(every) || s.write_all(b"X").is_ok()
        };
        r.open_at_end = hold(p.count, usize::MAX, Duration::ZERO, ctl, &mut r, open, tend);
        r
    })
}

/// Requests, over and over until stopped, to each of `targets` (`aggregator` or `collector`):
/// each answer tallied by status, the largest body kept.
#[derive(Clone, Debug)]
pub struct Requests {
    /// (which HTTP server, raw request with `{host}` for the Host header).
    pub requests: Vec<(Server, String)>,
    /// Rounds at most (each sends every request once).
    pub rounds: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    Aggregator,
    Collector,
}

pub fn requests(p: Requests) -> Attack {
    Box::new(move |t, ctl| {
        let mut r = Report::default();
        for round in 0..p.rounds {
            for (server, raw) in &p.requests {
                if ctl.stopped() {
                    break;
                }
                let addr = match server {
                    Server::Aggregator => t.aggregator_http,
                    Server::Collector => t.collector_http,
                };
                let raw = raw.replace("{host}", &addr.to_string());
                r.messages += 1;
                let line: String = raw.lines().next().unwrap_or("").chars().take(100).collect();
                match http::request_raw(
                    ATTACKER_ADDR,
                    addr,
                    raw.as_bytes(),
                    Duration::from_secs(60),
                ) {
                    Ok(a) => {
                        r.max_body = r.max_body.max(a.body.len());
                        r.status(a.status.to_string());
                        let note = format!("{line} → {}", a.status);
                        if !(400..500).contains(&a.status) && !r.notes.contains(&note) {
                            r.notes.push(note);
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::UnexpectedEof
                                | std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::BrokenPipe
                        ) =>
                    {
                        r.status("closed")
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => r.status("timeout"),
                    Err(e) => {
                        r.status("error");
                        let note = format!("{line} → {e}");
                        if !r.notes.contains(&note) {
                            r.notes.push(note);
                        }
                    }
                }
            }
            if round == 0 {
                ctl.engaged();
            }
        }
        ctl.hold();
        r
    })
}

/// `GET path` as a raw request for [`Requests`].
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {{host}}\r\nConnection: close\r\n\r\n")
}
