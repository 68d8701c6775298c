//! The well-behaved exporter: an agent-like IPFIX exporter on 127.0.0.1 (TCP, UDP or mutual
//! TLS) that sends known flows throughout an attack, and the check that the collector stored
//! each of them exactly once with its counters.
//!
//! It sends *generations* of flows, one after the other until stopped: each generation is
//! `flows` intra-Node TCP connections from 10.77.0.1 (Pod `wellbehaved/wb-client`) to 10.77.0.2
//! (`wellbehaved/wb-server`) on Node `wb-node`, each with a source port of its own, reported
//! `records` times `step` apart with growing totals (flowEndReason 2, active) and ended by the
//! last record (flowEndReason 3, TIME_WAIT), which the aggregator exports at once. The ledger
//! keeps every flow's final totals: a flow is stored right when the collector holds exactly one
//! end-of-flow record for it, whose totals are the final ones, and the deltas of all its
//! records add up to them (nothing missing, nothing counted twice).
//!
//! Like an agent, each record's deltas count from the totals last *written successfully*: a
//! step whose write failed is carried by the next one (DESIGN.md: a failed export loses
//! nothing), and a flow whose end-of-flow record could not be written is owed and sent with the
//! next step, until it is. Each generation opens a new session (over UDP, a new socket: a new
//! source port) after closing the previous one, as a restarted agent or a new Node would: an
//! attack that locks new exporters out shows, not only one that cuts those connected.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use flowcore::ipfix::{Encoder, Layout, node_observation_domain};
use serde_json::Value;

use super::GOOD_ADDR;
use super::http;
use super::records::{Counters, Rec, datagram_encoder, now, now_secs, stream_encoder};

pub const SRC: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const DST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const NODE: &str = "wb-node";
const FIRST_PORT: u16 = 20000;

/// How much the exporter sends.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub flows: u16,
    pub records: u32,
    pub step: Duration,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            flows: 8,
            records: 4,
            step: Duration::from_millis(250),
        }
    }
}

/// Where the exporter sends.
#[derive(Clone, Debug)]
pub enum Link {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    /// Mutual TLS with the certificates the aggregator generated in `dir` (`ca.crt`,
    /// `client.crt`, `client.key`), server name `localhost`.
    Tls {
        addr: SocketAddr,
        dir: PathBuf,
    },
}

/// One flow as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub generation: u32,
    pub port: u16,
    pub start_secs: u64,
    /// The latest totals; final once the generation has finished.
    pub totals: Counters,
    /// The totals of the last record written successfully: the next record's deltas count
    /// from here (DESIGN.md: a failed export loses nothing).
    pub exported: Counters,
    /// Its end-of-flow record has been written.
    pub ended: bool,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub index: u32,
    pub started: Instant,
    pub finished: Option<Instant>,
    pub flows: Vec<Flow>,
}

/// What the exporter sent and how its sessions went.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    pub generations: Vec<Generation>,
    /// Sessions opened (the first one included).
    pub sessions: u64,
    /// Connection attempts or writes that failed.
    pub failures: u64,
    pub last_failure: Option<String>,
}

impl Ledger {
    /// Every flow of the finished generations.
    pub fn finished_flows(&self) -> Vec<Flow> {
        self.generations
            .iter()
            .filter(|g| g.finished.is_some())
            .flat_map(|g| g.flows.iter().cloned())
            .collect()
    }
}

/// Totals of flow `j`'s record `k` (distinct per flow and counter, growing with `k`).
fn totals(j: u16, k: u32) -> Counters {
    let (j, k) = (u64::from(j), u64::from(k) + 1);
    Counters {
        packets: k * (10 + j),
        octets: k * (1000 + 100 * j) + 7 * j,
        rev_packets: k * (5 + j),
        rev_octets: k * (3000 + 10 * j) + 3 * j,
    }
}

/// Flow `f`'s next record: its totals, and as deltas what was not written yet.
fn record(f: &Flow, last: bool) -> Rec<'static> {
    Rec {
        src: SRC,
        dst: DST,
        sport: f.port,
        dport: 8080,
        proto: 6,
        start_secs: f.start_secs,
        end_secs: now_secs().max(f.start_secs),
        end_reason: if last { 3 } else { 2 },
        flow_type: 1,
        totals: f.totals,
        deltas: f.totals.minus(f.exported),
        src_pod: "wb-client",
        src_ns: "wellbehaved",
        src_node: NODE,
        dst_pod: "wb-server",
        dst_ns: "wellbehaved",
        dst_node: NODE,
        tcp_state: if last { "TIME_WAIT" } else { "ESTABLISHED" },
        src_labels: r#"{"app":"wb-client"}"#,
        dst_labels: r#"{"app":"wb-server"}"#,
    }
}

/// The exporter, on a thread of its own.
pub struct WellBehaved {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    thread: Option<JoinHandle<()>>,
}

impl WellBehaved {
    pub fn start(link: Link, plan: Plan) -> WellBehaved {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (s, l) = (stop.clone(), ledger.clone());
        let thread = std::thread::Builder::new()
            .name("well-behaved".into())
            .spawn(move || run(link, plan, &s, &l))
            .expect("spawn the well-behaved exporter");
        WellBehaved {
            stop,
            ledger,
            thread: Some(thread),
        }
    }

    pub fn ledger(&self) -> Ledger {
        self.ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until a generation that started at or after `t` has finished; returns its flows.
    pub fn wait_generation_after(&self, t: Instant, timeout: Duration) -> Vec<Flow> {
        crate::wait_for(timeout, "a generation of well-behaved flows", || {
            self.ledger()
                .generations
                .iter()
                .find(|g| g.started >= t && g.finished.is_some())
                .map(|g| g.flows.clone())
        })
    }

    /// Stops after the current generation (every flow ends) and returns the ledger.
    pub fn finish(mut self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && let Err(p) = t.join()
        {
            std::panic::resume_unwind(p);
        }
        self.ledger()
    }
}

impl Drop for WellBehaved {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|p| p.into_inner())
}

/// Copies the flows' state into the ledger.
fn sync(ledger: &Mutex<Ledger>, flows: &[Flow]) {
    let mut l = lock(ledger);
    for f in flows {
        if let Some(x) = l
            .generations
            .get_mut(f.generation as usize)
            .and_then(|g| g.flows.iter_mut().find(|x| x.port == f.port))
        {
            *x = f.clone();
        }
    }
}

fn run(link: Link, plan: Plan, stop: &AtomicBool, ledger: &Mutex<Ledger>) {
    let domain = node_observation_domain(NODE);
    let mut conn = Conn::new(link, domain);
    // Flows of earlier generations whose end-of-flow record has not been written yet.
    let mut owed: Vec<Flow> = Vec::new();
    let mut g: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let start = now_secs();
        let mut flows: Vec<Flow> = (0..plan.flows)
            .map(|j| Flow {
                generation: g,
                port: FIRST_PORT + ((u32::from(plan.flows) * g + u32::from(j)) % 40_000) as u16,
                start_secs: start,
                totals: Counters::default(),
                exported: Counters::default(),
                ended: false,
            })
            .collect();
        lock(ledger).generations.push(Generation {
            index: g,
            started: Instant::now(),
            finished: None,
            flows: flows.clone(),
        });
        // Every generation on a session of its own.
        conn.close();
        for k in 0..plan.records {
            let t0 = Instant::now();
            let last = k + 1 == plan.records;
            for (j, f) in flows.iter_mut().enumerate() {
                f.totals = totals(j as u16, k);
            }
            let recs: Vec<Rec> = owed
                .iter()
                .map(|f| record(f, true))
                .chain(flows.iter().map(|f| record(f, last)))
                .collect();
            if conn.send(&recs, ledger) {
                for f in owed.iter_mut() {
                    f.exported = f.totals;
                    f.ended = true;
                }
                sync(ledger, &owed);
                owed.clear();
                for f in flows.iter_mut() {
                    f.exported = f.totals;
                    f.ended = last;
                }
            }
            sync(ledger, &flows);
            if last {
                lock(ledger).generations[g as usize].finished = Some(Instant::now());
            } else {
                std::thread::sleep(plan.step.saturating_sub(t0.elapsed()));
            }
        }
        owed.extend(flows.into_iter().filter(|f| !f.ended));
        g += 1;
    }
    // What is still owed, retried a step apart for a while, as an agent's next polls would.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !owed.is_empty() && Instant::now() < deadline {
        let recs: Vec<Rec> = owed.iter().map(|f| record(f, true)).collect();
        if conn.send(&recs, ledger) {
            for f in owed.iter_mut() {
                f.exported = f.totals;
                f.ended = true;
            }
            sync(ledger, &owed);
            owed.clear();
        } else {
            std::thread::sleep(plan.step);
        }
    }
    conn.close();
}

/// A session to the aggregator, opened when needed.
struct Conn {
    link: Link,
    domain: u32,
    enc: Encoder,
    stream: Option<Box<dyn Stream>>,
    udp: Option<UdpSocket>,
}

trait Stream: Write + Send {
    /// Whether the peer has closed the connection (the collecting process never writes).
    fn closed(&mut self) -> bool;
    /// A graceful end: everything written is delivered, then end of stream.
    fn close(&mut self);
}

fn socket_closed(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut b = [0u8; 1024];
    let closed = match s.peek(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    let _ = s.set_nonblocking(false);
    closed
}

impl Stream for TcpStream {
    fn closed(&mut self) -> bool {
        socket_closed(self)
    }
    fn close(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

struct TlsStream(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Write for TlsStream {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Stream for TlsStream {
    fn closed(&mut self) -> bool {
        // Session tickets and alerts the server sent are read (and dropped) first.
        let _ = self.0.sock.set_nonblocking(true);
        let mut b = [0u8; 4096];
        let closed = loop {
            match self.0.read(&mut b) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(e) => break e.kind() != std::io::ErrorKind::WouldBlock,
            }
        };
        let _ = self.0.sock.set_nonblocking(false);
        closed
    }
    fn close(&mut self) {
        self.0.conn.send_close_notify();
        let _ = self.0.flush();
        let _ = self.0.sock.shutdown(std::net::Shutdown::Write);
    }
}

impl Conn {
    fn new(link: Link, domain: u32) -> Conn {
        let enc = match link {
            Link::Udp(_) => datagram_encoder(domain, Layout::AgentV4),
            _ => stream_encoder(domain, Layout::AgentV4),
        };
        Conn {
            link,
            domain,
            enc,
            stream: None,
            udp: None,
        }
    }

    /// Ends the session (TLS: with close_notify); what was written is delivered.
    fn close(&mut self) {
        if let Some(mut s) = self.stream.take() {
            s.close();
        }
        self.udp = None;
    }

    /// Sends `recs` (on a new session if none is up, templates first); whether they were all
    /// written. A failure is counted and the session dropped; the next call tries a new one.
    fn send(&mut self, recs: &[Rec], ledger: &Mutex<Ledger>) -> bool {
        match self.try_send(recs, ledger) {
            Ok(()) => true,
            Err(e) => {
                self.close();
                let mut l = lock(ledger);
                l.failures += 1;
                l.last_failure = Some(e);
                false
            }
        }
    }

    fn try_send(&mut self, recs: &[Rec], ledger: &Mutex<Ledger>) -> Result<(), String> {
        if self.stream.as_mut().is_some_and(|s| s.closed()) {
            self.stream = None;
        }
        let fresh = match &self.link {
            Link::Udp(_) => self.udp.is_none(),
            _ => self.stream.is_none(),
        };
        if fresh {
            self.open()?;
            lock(ledger).sessions += 1;
            // A new encoder: templates first, sequence numbers from 0.
            self.enc = match self.link {
                Link::Udp(_) => datagram_encoder(self.domain, Layout::AgentV4),
                _ => stream_encoder(self.domain, Layout::AgentV4),
            };
        }
        for r in recs {
            r.write(&mut self.enc, Layout::AgentV4)
                .map_err(|e| format!("encode: {e}"))?;
        }
        self.enc.flush(now());
        while let Some(m) = self.enc.poll_transmit() {
            match (&self.link, self.stream.as_mut(), self.udp.as_ref()) {
                (Link::Udp(a), _, Some(u)) => {
                    u.send_to(&m, a).map_err(|e| format!("UDP send: {e}"))?;
                }
                (_, Some(s), _) => s.write_all(&m).map_err(|e| format!("write: {e}"))?,
                _ => return Err("no session".into()),
            }
        }
        if let Some(s) = self.stream.as_mut() {
            s.flush().map_err(|e| format!("flush: {e}"))?;
        }
        Ok(())
    }

    fn open(&mut self) -> Result<(), String> {
        let timeout = Duration::from_secs(5);
        match &self.link {
            Link::Udp(_) => {
                let u = UdpSocket::bind(SocketAddr::new(GOOD_ADDR, 0))
                    .map_err(|e| format!("UDP bind: {e}"))?;
                self.udp = Some(u);
            }
            Link::Tcp(a) => {
                let s = http::connect_from(GOOD_ADDR, *a, timeout)
                    .map_err(|e| format!("connect {a}: {e}"))?;
                s.set_write_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                let _ = s.set_nodelay(true);
                self.stream = Some(Box::new(s));
            }
            Link::Tls { addr, dir } => {
                let s = http::connect_from(GOOD_ADDR, *addr, timeout)
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                s.set_write_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                let mut t = rustls::StreamOwned::new(tls_client(dir)?, s);
                while t.conn.is_handshaking() {
                    t.conn
                        .complete_io(&mut t.sock)
                        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                }
                self.stream = Some(Box::new(TlsStream(t)));
            }
        }
        Ok(())
    }
}

/// A TLS client with the aggregator's generated CA and client certificate in `dir`.
pub fn tls_client(dir: &std::path::Path) -> Result<rustls::ClientConnection, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what} in {}: {e}", dir.display());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.crt")).map_err(|e| err("ca.crt", &e))? {
        roots
            .add(c.map_err(|e| err("ca.crt", &e))?)
            .map_err(|e| err("ca.crt", &e))?;
    }
    let certs = CertificateDer::pem_file_iter(dir.join("client.crt"))
        .map_err(|e| err("client.crt", &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("client.crt", &e))?;
    let key =
        PrivateKeyDer::from_pem_file(dir.join("client.key")).map_err(|e| err("client.key", &e))?;
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .map_err(|e| err("client certificate", &e))?;
    rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from("localhost").expect("a DNS name"),
    )
    .map_err(|e| e.to_string())
}

/// Every record the collector stored for flows from [`SRC`], via `/api/flows` (page by page,
/// deduplicated by row id).
pub fn stored_rows(collector_http: SocketAddr) -> Result<Vec<Value>, String> {
    let mut by_id = std::collections::BTreeMap::new();
    let mut offset = 0;
    loop {
        let path = format!("/api/flows?srcIp={SRC}&limit=1000&offset={offset}");
        let r = http::get(collector_http, &path, Duration::from_secs(10))
            .map_err(|e| format!("GET {path}: {e}"))?;
        if r.status != 200 {
            return Err(format!("GET {path}: status {}: {}", r.status, r.text()));
        }
        let v = r.json()?;
        let rows = v["flows"]
            .as_array()
            .ok_or_else(|| format!("GET {path}: no `flows` array"))?;
        for row in rows {
            by_id.insert(row["id"].as_i64().unwrap_or_default(), row.clone());
        }
        if rows.len() < 1000 {
            break;
        }
        offset += 1000;
    }
    Ok(by_id.into_values().collect())
}

/// How the stored records compare with what was sent.
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    pub expected: usize,
    /// Flows stored exactly once with their counters.
    pub ok: usize,
    /// Flows with no end-of-flow record stored.
    pub missing: Vec<u16>,
    /// Flows with more than one end-of-flow record.
    pub doubled: Vec<u16>,
    /// Flows whose counters are wrong, and how.
    pub wrong: Vec<String>,
    /// Stored records of these flows with flowEndReason 5 (evicted for lack of resources).
    pub evicted_records: usize,
    /// Of the missing flows, those whose end-of-flow record the exporter could not write (it
    /// was locked out) as far as `flows` says.
    pub never_written: usize,
}

impl Delivery {
    pub fn all_ok(&self) -> bool {
        self.expected > 0 && self.ok == self.expected
    }

    pub fn summary(&self) -> String {
        let mut s = format!("{}/{} flows stored exactly once", self.ok, self.expected);
        if !self.missing.is_empty() {
            s += &format!(
                "; {} missing (ports {})",
                self.missing.len(),
                list(&self.missing)
            );
            if self.never_written > 0 {
                s += &format!(
                    " — the exporter could not write the end of {} of them",
                    self.never_written
                );
            }
        }
        if !self.doubled.is_empty() {
            s += &format!(
                "; {} stored twice or more (ports {})",
                self.doubled.len(),
                list(&self.doubled)
            );
        }
        if !self.wrong.is_empty() {
            s += &format!(
                "; {} with wrong counters ({})",
                self.wrong.len(),
                self.wrong
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        if self.evicted_records > 0 {
            s += &format!("; {} records evicted (reason 5)", self.evicted_records);
        }
        s
    }
}

fn list(v: &[u16]) -> String {
    let mut s: Vec<String> = v.iter().take(8).map(u16::to_string).collect();
    if v.len() > 8 {
        s.push("…".into());
    }
    s.join(", ")
}

fn num(r: &Value, k: &str) -> u64 {
    r[k].as_u64().unwrap_or(0)
}

/// Checks `flows` against the stored `rows`.
pub fn check(rows: &[Value], flows: &[Flow]) -> Delivery {
    let mut d = Delivery {
        expected: flows.len(),
        ..Delivery::default()
    };
    for f in flows {
        let mine: Vec<&Value> = rows
            .iter()
            .filter(|r| {
                num(r, "sourceTransportPort") == u64::from(f.port)
                    && num(r, "flowStartSeconds") == f.start_secs
            })
            .collect();
        d.evicted_records += mine.iter().filter(|r| num(r, "flowEndReason") == 5).count();
        let ends: Vec<&&Value> = mine
            .iter()
            .filter(|r| num(r, "flowEndReason") == 3)
            .collect();
        match ends.len() {
            0 => {
                d.missing.push(f.port);
                d.never_written += usize::from(!f.ended);
                continue;
            }
            1 => {}
            _ => {
                d.doubled.push(f.port);
                continue;
            }
        }
        let sum = |k: &str| mine.iter().map(|r| num(r, k)).sum::<u64>();
        let want = f.totals;
        let got_sum = Counters {
            packets: sum("packetDeltaCount"),
            octets: sum("octetDeltaCount"),
            rev_packets: sum("reversePacketDeltaCount"),
            rev_octets: sum("reverseOctetDeltaCount"),
        };
        let end = ends[0];
        let got_end = Counters {
            packets: num(end, "packetTotalCount"),
            octets: num(end, "octetTotalCount"),
            rev_packets: num(end, "reversePacketTotalCount"),
            rev_octets: num(end, "reverseOctetTotalCount"),
        };
        if got_sum != want || got_end != want {
            d.wrong.push(format!(
                "port {}: sent totals {want:?}, stored end totals {got_end:?}, sum of stored deltas {got_sum:?}",
                f.port
            ));
            continue;
        }
        d.ok += 1;
    }
    d
}

/// Polls the collector until every flow of `flows` is stored right or `timeout` passes (or
/// `alive` says the collector is gone); the last comparison either way (or why the store could
/// not be read).
pub fn wait_stored(
    collector_http: SocketAddr,
    flows: &[Flow],
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<Delivery, String> {
    let deadline = Instant::now() + timeout;
    let mut last: Result<Delivery, String> = Err("not read yet".into());
    // A result with nothing missing that has not changed for this long will not get better
    // (a record stored twice stays stored twice).
    let settled = Duration::from_secs(5);
    let mut same_since = (String::new(), Instant::now());
    loop {
        if !alive() {
            return last.and_then(|_| Err("the collector died".to_string()));
        }
        last = match stored_rows(collector_http) {
            Ok(rows) => Ok(check(&rows, flows)),
            Err(e) => match last {
                // Keep the last comparison: the read failing now says less than it did.
                Ok(d) => Ok(d),
                Err(_) => Err(e),
            },
        };
        if let Ok(d) = &last {
            let s = d.summary();
            if s != same_since.0 {
                same_since = (s, Instant::now());
            }
            if d.all_ok() || d.missing.is_empty() && same_since.1.elapsed() >= settled {
                return last;
            }
        }
        if Instant::now() >= deadline {
            return last;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The source address the exporter's records carry.
pub fn source_ip() -> IpAddr {
    IpAddr::V4(SRC)
}
