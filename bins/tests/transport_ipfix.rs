//! The IPFIX transport against real sockets on 127.0.0.1: the exporter actor and the collecting
//! process over TCP, UDP and mutual TLS, refused certificates, a collector restart, a malformed
//! session next to a healthy one, and back-pressure. No sleep is used to order events: each test
//! awaits the condition it needs, with a timeout only as a guard against hanging.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flowcore::config::{CollectorAddr, Host, Transport};
use flowcore::ipfix::example::write_example_record;
use flowcore::ipfix::{DataRecord, Encoder, EncoderConfig, Layout};
use flowcore::model::Timestamp;
use flowlens_bins::transport::backoff::BackoffConfig;
use flowlens_bins::transport::collector::{
    Collector, CollectorConfig, DecodedMessage, SessionLimits,
};
use flowlens_bins::transport::exporter::{
    Exporter, ExporterConfig, Outcome, SendError, SessionId, SessionState,
};
use flowlens_bins::transport::fair::{FairConfig, FairReceiver, fair_queue};
use flowlens_bins::transport::metrics::{
    CollectorMetrics, ExporterMetrics, MalformedLabels, MalformedReason, RejectLabels,
    RejectReason, UdpDropLabels, UdpDropReason,
};
use flowlens_bins::transport::replay::{ReplayConfig, ReplayExporter};
use flowlens_bins::transport::tls::{self, GeneratedCerts, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(20);
const LAYOUT: Layout = Layout::AgentV4;

async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `cond` until it holds (for conditions that have no event to await, such as counters).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    guard(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap();
    Timestamp::from_nanos(d.as_nanos() as u64)
}

fn encoder(transport: Transport) -> Encoder {
    let cfg = if transport.is_stream() {
        EncoderConfig::stream(7)
    } else {
        EncoderConfig::datagram(7, 1500, Duration::from_secs(60))
    };
    let mut enc = Encoder::new(cfg).unwrap();
    enc.add_template(LAYOUT.template_id(), LAYOUT.fields())
        .unwrap();
    enc
}

/// Records `range` of the example layout, as finished messages.
fn encode(enc: &mut Encoder, range: std::ops::Range<u64>) -> Vec<Bytes> {
    let t = now();
    for i in range {
        write_example_record(enc, t, LAYOUT, i).unwrap();
    }
    enc.flush(t);
    std::iter::from_fn(|| enc.poll_transmit()).collect()
}

/// The record index `write_example_record` was given, after checking the values it derives
/// from it.
fn check(rec: &DataRecord<'_>) -> u64 {
    assert_eq!(rec.template_id(), LAYOUT.template_id());
    let (mut port, mut octets, mut pod) = (None, None, None);
    for f in rec.fields() {
        match f.spec.name {
            Some("sourceTransportPort") => port = f.value().as_u64(),
            Some("octetDeltaCount") => octets = f.value().as_u64(),
            Some("sourcePodName") => pod = f.value().as_str().map(|s| s.into_owned()),
            _ => {}
        }
    }
    let i = port.expect("sourceTransportPort") - 40000;
    assert_eq!(octets, Some(15_000 * (i + 1)), "record {i}");
    let want_pod = ["frontend-7c9f8d6b5-x2k4p", "catalog-5d8f9c7b6-qwz9r"][(i % 2) as usize];
    assert_eq!(pod.as_deref(), Some(want_pod), "record {i}");
    i
}

/// Receives messages until `n` records have arrived; returns their indices in arrival order.
async fn receive(rx: &mut FairReceiver<DecodedMessage>, n: usize) -> Vec<u64> {
    guard("records at the collector", async {
        let mut got = Vec::new();
        while got.len() < n {
            let m = rx.recv().await.expect("collector channel open");
            got.extend(m.records().map(|r| check(&r)));
        }
        got
    })
    .await
}

struct RunningCollector {
    tcp: Option<SocketAddr>,
    udp: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    rx: FairReceiver<DecodedMessage>,
    metrics: CollectorMetrics,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningCollector {
    /// A TCP collector on `port` of 127.0.0.1 (0: a free one).
    async fn tcp(port: u16, capacity: usize) -> RunningCollector {
        RunningCollector::start(
            CollectorConfig {
                tcp: Some(loopback(port)),
                ..CollectorConfig::default()
            },
            capacity,
        )
        .await
    }

    /// A collector whose sessions may each queue `capacity` full messages (at least one).
    async fn start(cfg: CollectorConfig, capacity: usize) -> RunningCollector {
        let (queue, rx) = fair_queue(FairConfig {
            max_bytes: capacity * 70_000,
            per_session_bytes: (capacity - 1) * 70_000 + 1,
        });
        let metrics = CollectorMetrics::default();
        let c = Collector::bind(cfg, metrics.clone(), queue).await.unwrap();
        let (tcp, udp, tls) = (c.tcp_addr(), c.udp_addr(), c.tls_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(c.run(shutdown.clone()));
        RunningCollector {
            tcp,
            udp,
            tls,
            rx,
            metrics,
            shutdown,
            task,
        }
    }

    async fn stop(self) -> Vec<u64> {
        self.shutdown.cancel();
        // The consumer keeps receiving while the sessions drain (a session waiting for room in
        // its queue must get it to finish): every message read before the shutdown is still
        // delivered, then the end.
        let mut rx = self.rx;
        let consumer = tokio::spawn(async move {
            let mut rest = Vec::new();
            while let Some(m) = rx.recv().await {
                rest.extend(m.records().map(|r| check(&r)));
            }
            rest
        });
        guard("collector shutdown", self.task)
            .await
            .unwrap()
            .unwrap();
        guard("the queue's end", consumer).await.unwrap()
    }
}

/// An exporter actor with its outcomes, stopped and joined by [`Link::finish`].
struct Link {
    exp: Exporter,
    outcomes: mpsc::Receiver<Outcome>,
    metrics: ExporterMetrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    fn spawn(cfg: ExporterConfig) -> Link {
        let stop = CancellationToken::new();
        let metrics = ExporterMetrics::default();
        let (exp, outcomes, task) = Exporter::spawn(cfg, metrics.clone(), stop.clone());
        Link {
            exp,
            outcomes,
            metrics,
            stop,
            task,
        }
    }

    /// An exporter to `addr` over `transport` with the tests' fast backoff.
    fn to(addr: SocketAddr, transport: Transport) -> Link {
        Link::spawn(exporter_cfg(addr, transport))
    }

    /// Waits for the first session.
    async fn session(&self) -> SessionId {
        guard("session", self.exp.wait_session(None)).await.unwrap()
    }

    /// Sends `msgs` on `session` and awaits every outcome.
    async fn send_all(&mut self, session: SessionId, msgs: Vec<Bytes>) -> Vec<Outcome> {
        send_all(&self.exp, &mut self.outcomes, session, msgs).await
    }

    async fn finish(self) {
        self.stop.cancel();
        guard("exporter shutdown", self.task).await.unwrap();
    }
}

/// A fresh encoder whose session has started (templates lead its first message).
fn session_encoder(transport: Transport) -> Encoder {
    let mut enc = encoder(transport);
    enc.reset_session();
    enc
}

fn loopback(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

fn any_port() -> Option<SocketAddr> {
    Some(loopback(0))
}

fn exporter_cfg(addr: SocketAddr, transport: Transport) -> ExporterConfig {
    let mut cfg = ExporterConfig::new(
        CollectorAddr::new(Host::Ip(addr.ip()), addr.port(), Some(transport)),
        transport,
    );
    cfg.backoff = BackoffConfig {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
    };
    cfg.backoff_seed = Some(42);
    cfg
}

/// Sends `msgs` on `session` and awaits every outcome.
async fn send_all(
    exp: &Exporter,
    outcomes: &mut mpsc::Receiver<Outcome>,
    session: SessionId,
    msgs: Vec<Bytes>,
) -> Vec<Outcome> {
    let n = msgs.len();
    for (tag, m) in msgs.into_iter().enumerate() {
        exp.send(session, tag as u64, m).await.unwrap();
    }
    guard("outcomes", async {
        let mut v = Vec::new();
        while v.len() < n {
            v.push(outcomes.recv().await.unwrap());
        }
        v
    })
    .await
}

fn assert_all_ok(outcomes: &[Outcome]) {
    for (i, o) in outcomes.iter().enumerate() {
        assert_eq!(o.tag, i as u64);
        assert_eq!(o.result, Ok(()), "message {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_round_trip_of_500_records() {
    let mut col = RunningCollector::tcp(0, 64).await;
    let mut link = Link::to(col.tcp.unwrap(), Transport::Tcp);
    let session = link.session().await;
    let msgs = encode(&mut session_encoder(Transport::Tcp), 0..500);
    // Many records per message: one template message and a few data messages.
    assert!(msgs.len() < 10, "{} messages", msgs.len());
    assert_all_ok(&link.send_all(session, msgs).await);
    assert_eq!(
        receive(&mut col.rx, 500).await,
        (0..500).collect::<Vec<_>>()
    );
    assert_eq!(col.metrics.records.get(), 500);
    assert_eq!(col.metrics.sequence_gaps.get(), 0);
    link.finish().await;
    assert!(col.stop().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_round_trip_of_500_records() {
    let mut col = RunningCollector::start(
        CollectorConfig {
            udp: any_port(),
            ..CollectorConfig::default()
        },
        256,
    )
    .await;
    let mut link = Link::to(col.udp.unwrap(), Transport::Udp);
    let session = link.session().await;
    let mut enc = session_encoder(Transport::Udp);
    let mut got = Vec::new();
    // Batches of 100 records, each received before the next is sent, so the kernel's socket
    // buffer never overflows on a busy machine (that would be UDP doing its job, not a bug).
    for batch in 0..5u64 {
        let msgs = encode(&mut enc, batch * 100..(batch + 1) * 100);
        assert!(
            msgs.iter().all(|m| m.len() <= 1452),
            "datagrams fit a 1500-byte MTU"
        );
        assert_all_ok(&link.send_all(session, msgs).await);
        got.extend(receive(&mut col.rx, 100).await);
    }
    assert_eq!(got, (0..500).collect::<Vec<_>>());
    assert_eq!(col.metrics.records_missing.get(), 0);
    link.finish().await;
    col.stop().await;
}

struct Pki {
    dir: PathBuf,
    good: GeneratedCerts,
    other: GeneratedCerts,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("flowlens-transport-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let good = tls::generate_ca_and_certs(&dir.join("good"), &names).unwrap();
        let other = tls::generate_ca_and_certs(&dir.join("other"), &names).unwrap();
        Pki { dir, good, other }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_collector(server: &TlsFiles) -> RunningCollector {
    let (keep, rx) = watch::channel(tls::server_config(server).unwrap());
    // The collector reads the configuration per connection; the sender may go.
    drop(keep);
    RunningCollector::start(
        CollectorConfig {
            tls: any_port(),
            tls_config: Some(rx),
            ..CollectorConfig::default()
        },
        64,
    )
    .await
}

fn tls_exporter(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    stop: &CancellationToken,
) -> (Exporter, mpsc::Receiver<Outcome>) {
    let mut cfg = exporter_cfg(addr, Transport::Tls);
    let (keep, rx) = watch::channel(client);
    drop(keep);
    cfg.tls = Some(rx);
    let (exp, outcomes, _task) = Exporter::spawn(cfg, ExporterMetrics::default(), stop.clone());
    (exp, outcomes)
}

async fn wait_error(exp: &Exporter, what: &str, needle: &str) -> String {
    let mut rx = exp.sessions();
    let state: SessionState = guard(what, async {
        rx.wait_for(|s| s.last_error.as_deref().is_some_and(|e| e.contains(needle)))
            .await
            .unwrap()
            .clone()
    })
    .await;
    state.last_error.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_round_trip_of_500_records() {
    let pki = Pki::new("mtls");
    let mut col = tls_collector(&pki.good.server()).await;
    let stop = CancellationToken::new();
    let client =
        tls::watch_client_config(pki.good.client(), Duration::from_secs(1), stop.clone()).unwrap();
    // By DNS name: resolved at connect time, and the certificate is checked for that name.
    let port = col.tls.unwrap().port();
    let mut cfg = ExporterConfig::new(
        format!("localhost:{port}:tls").parse().unwrap(),
        Transport::Tls,
    );
    cfg.tls = Some(client);
    let mut link = Link::spawn(cfg);
    let session = link.session().await;
    let msgs = encode(&mut session_encoder(Transport::Tls), 0..500);
    assert_all_ok(&link.send_all(session, msgs).await);
    assert_eq!(
        receive(&mut col.rx, 500).await,
        (0..500).collect::<Vec<_>>()
    );
    assert_eq!(col.metrics.tls_handshake_failures.get(), 0);
    stop.cancel();
    link.finish().await;
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_refuses_unknown_or_missing_client_certs_and_a_foreign_server() {
    let pki = Pki::new("refuse");
    let col = tls_collector(&pki.good.server()).await;
    let addr = col.tls.unwrap();
    let stop = CancellationToken::new();

    // A client certificate from another CA (the client trusts the right CA for the server).
    let foreign_client = tls::client_config(&TlsFiles {
        ca: pki.good.ca_cert.clone(),
        ..pki.other.client()
    })
    .unwrap();
    let (exp, _o) = tls_exporter(addr, foreign_client, &stop);
    let e = wait_error(&exp, "unknown-CA refusal", "alert").await;
    assert!(
        e.contains("UnknownCA") || e.contains("BadCertificate"),
        "{e}"
    );
    wait_until("handshake failure counted", || {
        col.metrics.tls_handshake_failures.get() >= 1
    })
    .await;

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::load_certs(&pki.good.ca_cert).unwrap() {
        roots.add(c).unwrap();
    }
    let no_cert = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let failures = col.metrics.tls_handshake_failures.get();
    let (exp2, _o2) = tls_exporter(addr, Arc::new(no_cert), &stop);
    let e = wait_error(&exp2, "missing-certificate refusal", "alert").await;
    assert!(e.contains("CertificateRequired"), "{e}");
    wait_until("second handshake failure counted", || {
        col.metrics.tls_handshake_failures.get() > failures
    })
    .await;

    // A collector whose certificate another CA signed: the exporter refuses it.
    let foreign = tls_collector(&TlsFiles {
        ca: pki.good.ca_cert.clone(),
        ..pki.other.server()
    })
    .await;
    let good_client = tls::client_config(&pki.good.client()).unwrap();
    let (exp3, _o3) = tls_exporter(foreign.tls.unwrap(), good_client, &stop);
    let e = wait_error(&exp3, "foreign server refusal", "invalid peer certificate").await;
    assert!(
        e.contains("UnknownIssuer") && e.contains("TLS handshake"),
        "{e}"
    );

    assert_eq!(col.metrics.records.get() + foreign.metrics.records.get(), 0);
    stop.cancel();
    col.stop().await;
    foreign.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_restart_on_the_same_port_gets_templates_again() {
    let mut col = RunningCollector::tcp(0, 64).await;
    let port = col.tcp.unwrap().port();
    let mut link = Link::to(loopback(port), Transport::Tcp);
    let mut sessions = link.exp.sessions();
    let mut tracker = link.exp.tracker();
    let mut enc = encoder(Transport::Tcp);
    link.session().await;
    let first = tracker
        .sync(&mut enc, |_| panic!("nothing built yet"))
        .unwrap();
    assert_all_ok(&link.send_all(first, encode(&mut enc, 0..200)).await);
    assert_eq!(receive(&mut col.rx, 200).await.len(), 200);

    // Kill the collector mid-stream; the exporter sees the close.
    assert!(col.stop().await.is_empty());
    guard("session loss", sessions.wait_for(|s| s.current.is_none()))
        .await
        .unwrap();
    // A message built for the lost session is failed, not written on a later one.
    let stale = encode(&mut enc, 200..210);
    let o = link.send_all(first, stale).await;
    assert!(
        o.iter()
            .all(|o| o.result == Err(SendError::SessionEnded { built_for: first }))
    );
    assert_eq!(
        tracker.sync(&mut enc, |_| {}),
        None,
        "no session while the collector is down"
    );
    // Records finished while disconnected are still in the encoder: the tracker hands them back.
    let t = now();
    for i in 210..220 {
        write_example_record(&mut enc, t, LAYOUT, i).unwrap();
    }
    enc.flush(t);

    // Back on the same port: the exporter reconnects, the caller resets its encoder.
    let mut col = RunningCollector::tcp(port, 64).await;
    guard("reconnect", link.exp.wait_session(Some(first)))
        .await
        .unwrap();
    let mut handed_back = 0;
    let second = tracker.sync(&mut enc, |_| handed_back += 1).unwrap();
    assert!(second > first);
    assert_eq!(handed_back, 1, "the message finished while disconnected");
    let msgs = encode(&mut enc, 300..600);
    assert_all_ok(&link.send_all(second, msgs).await);
    assert_eq!(
        receive(&mut col.rx, 300).await,
        (300..600).collect::<Vec<_>>()
    );
    // Every data set found its template, and the new session's sequence starts at 0.
    assert_eq!(col.metrics.sets_without_template.get(), 0);
    assert_eq!(col.metrics.sequence_gaps.get(), 0);
    assert!(link.metrics.sessions.get() >= 2 && link.metrics.disconnects.get() >= 1);
    link.finish().await;
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_session_closes_alone() {
    let mut col = RunningCollector::tcp(0, 64).await;
    let addr = col.tcp.unwrap();
    let mut good = TcpStream::connect(addr).await.unwrap();
    let mut bad = TcpStream::connect(addr).await.unwrap();
    let mut enc = encoder(Transport::Tcp);
    for m in encode(&mut enc, 0..50) {
        good.write_all(&m).await.unwrap();
    }
    assert_eq!(receive(&mut col.rx, 50).await.len(), 50);

    // A header that claims 40 bytes, then a set whose length runs past the message.
    let mut junk = vec![0, 10, 0, 40, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 7];
    junk.extend_from_slice(&[1, 0, 0, 200]);
    junk.resize(40, 0xee);
    bad.write_all(&junk).await.unwrap();
    let mut buf = [0u8; 16];
    let n = guard("bad session closed", bad.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let malformed = col
        .metrics
        .malformed
        .get_or_create(&MalformedLabels {
            reason: MalformedReason::BadSetLength,
        })
        .get();
    assert_eq!(malformed, 1);

    // The other session is untouched.
    for m in encode(&mut enc, 50..120) {
        good.write_all(&m).await.unwrap();
    }
    assert_eq!(
        receive(&mut col.rx, 70).await,
        (50..120).collect::<Vec<_>>()
    );
    wait_until("one session left", || col.metrics.sessions_open.get() == 1).await;
    drop(good);
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_the_maximum_are_refused() {
    let mut col = RunningCollector::start(
        CollectorConfig {
            tcp: any_port(),
            limits: SessionLimits {
                max_sessions: 1,
                ..SessionLimits::default()
            },
            ..CollectorConfig::default()
        },
        8,
    )
    .await;
    let addr = col.tcp.unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut enc = encoder(Transport::Tcp);
    for m in encode(&mut enc, 0..3) {
        first.write_all(&m).await.unwrap();
    }
    receive(&mut col.rx, 3).await;
    let mut second = TcpStream::connect(addr).await.unwrap();
    let n = guard("refused session closed", second.read(&mut [0u8; 4])).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let rejected = |reason| {
        col.metrics
            .sessions_rejected
            .get_or_create(&RejectLabels { reason })
            .get()
    };
    assert_eq!(rejected(RejectReason::Full), 1);
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_channel_pushes_back_on_tcp_and_drops_counted_on_udp() {
    let mut col = RunningCollector::start(
        CollectorConfig {
            tcp: any_port(),
            udp: any_port(),
            ..CollectorConfig::default()
        },
        1,
    )
    .await;
    let mut enc = encoder(Transport::Tcp);
    let mut msgs = encode(&mut enc, 0..250).into_iter();
    let templates = msgs.next().unwrap();
    let data = msgs.next().unwrap();
    assert!(data.len() > 60_000, "one full message");

    // TCP: write the same full data message until the socket stops taking bytes. With nothing
    // consuming, the session holds one message in its queue and one waiting to be sent, and
    // reads nothing more, so the kernel buffers fill and the writer stalls.
    let mut sock = TcpStream::connect(col.tcp.unwrap()).await.unwrap();
    sock.write_all(&templates).await.unwrap();
    let mut written = 0usize;
    let stalled = loop {
        assert!(
            written < 2_000 * data.len(),
            "the collector never pushed back"
        );
        let off = written % data.len();
        // `write` is cancel-safe: a timed-out call wrote nothing.
        match tokio::time::timeout(Duration::from_millis(500), sock.write(&data[off..])).await {
            Ok(r) => written += r.unwrap(),
            Err(_) => break written,
        }
    };
    let decoded = col.metrics.messages.get();
    assert!(
        decoded <= 4,
        "{decoded} messages decoded while the channel was full"
    );
    let in_kernel = stalled / data.len();
    assert!(in_kernel >= 2, "stalled after {in_kernel} messages");

    // Consume: everything written arrives, nothing is dropped.
    let remainder = (data.len() - stalled % data.len()) % data.len();
    let records_per_msg = {
        let m = guard("first message", col.rx.recv()).await.unwrap();
        m.len()
    };
    let total_msgs = stalled.div_ceil(data.len());
    let consumer = tokio::spawn(async move {
        let mut n = records_per_msg;
        while n < total_msgs * records_per_msg {
            n += col.rx.recv().await.unwrap().len();
        }
        (n, col)
    });
    sock.write_all(&data[data.len() - remainder..])
        .await
        .unwrap();
    let (n, col) = guard("all records after back-pressure", consumer)
        .await
        .unwrap();
    assert_eq!(n, total_msgs * records_per_msg);
    assert_eq!(col.metrics.records.get() as usize, n);

    // UDP: its own queue is full after one message (nobody consumes); datagrams are dropped and
    // counted, for the exporter too.
    let mut col = col;
    let mut uenc = encoder(Transport::Udp);
    let dgrams = encode(&mut uenc, 0..30);
    let udp = tokio::net::UdpSocket::bind(loopback(0)).await.unwrap();
    udp.connect(col.udp.unwrap()).await.unwrap();
    let before = col.metrics.messages.get();
    for d in &dgrams {
        udp.send(d).await.unwrap();
    }
    let data_dgrams = dgrams.len() as u64 - 1;
    wait_until("every datagram decoded", || {
        col.metrics.messages.get() == before + dgrams.len() as u64
    })
    .await;
    let dropped = col
        .metrics
        .udp_dropped_messages
        .get_or_create(&UdpDropLabels {
            reason: UdpDropReason::QueueFull,
        })
        .get();
    assert_eq!(
        dropped,
        data_dgrams - 1,
        "one fits the queue, the rest are dropped"
    );
    assert!(col.metrics.udp_dropped_records.get() >= dropped);
    let by_exporter = col
        .metrics
        .exporter_dropped_records
        .get_or_create(&flowlens_bins::transport::metrics::ExporterLabels {
            exporter: udp.local_addr().unwrap().to_string(),
        })
        .get();
    assert_eq!(by_exporter, col.metrics.udp_dropped_records.get());
    let kept = guard("the one queued datagram", col.rx.recv())
        .await
        .unwrap();
    assert_eq!(kept.records().map(|r| check(&r)).next(), Some(0));
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_client_files_are_used_for_the_next_session() {
    let pki = Pki::new("reload");
    // The collector already runs with the renewed PKI ("other"); the exporter's mounted files
    // still hold the old one, so its sessions are refused until the files change.
    let mut col = tls_collector(&pki.other.server()).await;
    let mounted = pki.dir.join("mounted");
    let names = ["localhost".to_string(), "127.0.0.1".to_string()];
    let old = tls::generate_ca_and_certs(&mounted, &names).unwrap();
    let stop = CancellationToken::new();
    let mut client =
        tls::watch_client_config(old.client(), Duration::from_millis(20), stop.clone()).unwrap();
    let first = client.borrow_and_update().clone();
    let mut cfg = exporter_cfg(col.tls.unwrap(), Transport::Tls);
    cfg.tls = Some(client.clone());
    let mut link = Link::spawn(cfg);
    wait_error(
        &link.exp,
        "refusal with the old files",
        "invalid peer certificate",
    )
    .await;

    // The Secret is updated: same paths, the renewed CA and client certificate.
    for (from, to) in [
        (&pki.other.ca_cert, &old.ca_cert),
        (&pki.other.client_cert, &old.client_cert),
        (&pki.other.client_key, &old.client_key),
    ] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    guard("reloaded configuration", client.changed())
        .await
        .unwrap();
    assert!(!Arc::ptr_eq(&first, &client.borrow()));

    // A session opened with the old files just before the reload can look up for a moment (TLS
    // 1.3 finishes on the client before the server's alert arrives); its messages fail
    // unwritten. The next session uses the renewed files.
    let mut after = None;
    let mut tries = 0;
    loop {
        let session = guard("a session", link.exp.wait_session(after))
            .await
            .unwrap();
        let msgs = encode(&mut session_encoder(Transport::Tls), 0..20);
        let o = link.send_all(session, msgs).await;
        if o.iter().all(|o| o.result.is_ok()) {
            break;
        }
        tries += 1;
        assert!(
            tries < 5,
            "no working session with the renewed files: {o:?}"
        );
        after = Some(session);
    }
    assert_eq!(receive(&mut col.rx, 20).await.len(), 20);
    stop.cancel();
    link.finish().await;
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_send_queue_refuses_and_shutdown_drains_what_was_queued() {
    // A collector that nobody reads from: its session stops reading, the socket buffers fill,
    // the exporter's writes block, and its queue (4 messages) fills.
    let col = RunningCollector::tcp(0, 1).await;
    let mut cfg = exporter_cfg(col.tcp.unwrap(), Transport::Tcp);
    cfg.queue_capacity = 4;
    cfg.drain_timeout = GUARD;
    let Link {
        exp,
        mut outcomes,
        metrics,
        stop,
        task,
    } = Link::spawn(cfg);
    let session = guard("session", exp.wait_session(None)).await.unwrap();
    let mut msgs = encode(&mut session_encoder(Transport::Tcp), 0..250).into_iter();
    let templates = msgs.next().unwrap();
    let data = msgs.next().unwrap();
    let records_per_msg = {
        let mut d = flowcore::ipfix::Decoder::new(Default::default());
        d.decode(now(), &templates, |_| {}).unwrap();
        d.decode(now(), &data, |_| {}).unwrap().data_records as usize
    };
    exp.send(session, 0, templates).await.unwrap();
    let mut queued = 1u64;
    let refused = guard("a full queue", async {
        loop {
            match exp.try_send(session, queued, data.clone()) {
                Ok(()) => queued += 1,
                Err(e) => break e,
            }
            assert!(queued < 5_000, "the queue never filled");
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(refused, SendError::QueueFull { capacity: 4 });
    assert_eq!(metrics.queue_drops.get(), 1);

    // Shut the exporter down with messages still queued, then let the collector consume:
    // everything reported written arrives, and every queued message gets an outcome.
    stop.cancel();
    let RunningCollector {
        mut rx,
        shutdown,
        task: col_task,
        metrics: col_metrics,
        ..
    } = col;
    let consumer = tokio::spawn(async move {
        let mut records = 0usize;
        while let Some(m) = rx.recv().await {
            records += m.len();
        }
        records
    });
    // Outcomes are read while the exporter drains (the channel closes when it is done).
    let results = guard("exporter drain", async {
        let mut v = Vec::new();
        while let Some(o) = outcomes.recv().await {
            v.push(o);
        }
        v
    })
    .await;
    guard("exporter task", task).await.unwrap();
    assert_eq!(
        results.len() as u64,
        queued,
        "one outcome per queued message"
    );
    let written = results.iter().filter(|o| o.result.is_ok()).count();
    assert_eq!(
        written as u64, queued,
        "a healthy collector: the drain wrote everything"
    );
    // The exporter closed its session; the collector's session reads to the end and closes.
    wait_until("collector session closed", || {
        col_metrics.sessions_open.get() == 0
    })
    .await;
    shutdown.cancel();
    guard("collector shutdown", col_task)
        .await
        .unwrap()
        .unwrap();
    let records = guard("consumer", consumer).await.unwrap();
    assert_eq!(records, (queued as usize - 1) * records_per_msg);
}

/// Finished messages with their data record counts, for a [`ReplayExporter`].
fn encode_counted(enc: &mut Encoder, range: std::ops::Range<u64>) -> Vec<(Bytes, u32)> {
    let t = now();
    for i in range {
        write_example_record(enc, t, LAYOUT, i).unwrap();
    }
    enc.flush(t);
    std::iter::from_fn(|| enc.poll_message()).collect()
}

/// A replay buffer over `link`'s exporter (the link keeps the stop token and the task).
fn replay_over(link: &mut Link, max_bytes: usize) -> ReplayExporter {
    let (_, dead) = mpsc::channel(1);
    let outcomes = std::mem::replace(&mut link.outcomes, dead);
    ReplayExporter::new(link.exp.clone(), outcomes, 1024, ReplayConfig { max_bytes })
}

/// Pumps `r` until `cond` holds.
async fn pump_until(r: &mut ReplayExporter, what: &str, cond: impl Fn(&ReplayExporter) -> bool) {
    guard(what, async {
        loop {
            r.pump();
            if cond(r) {
                break;
            }
            assert!(r.wait().await, "exporter gone while waiting for {what}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_buffer_sends_what_a_collector_restart_missed() {
    let mut col = RunningCollector::tcp(0, 64).await;
    let port = col.tcp.unwrap().port();
    let mut link = Link::to(loopback(port), Transport::Tcp);
    let mut sessions = link.exp.sessions();
    let mut replay = replay_over(&mut link, 16 << 20);
    // One encoder for the whole run: the replay buffer puts templates before every session.
    let mut enc = encoder(Transport::Tcp);
    for (m, n) in encode_counted(&mut enc, 0..200) {
        replay.push(m, n);
    }
    pump_until(&mut replay, "200 written", |r| {
        r.stats().records_written == 200
    })
    .await;
    assert_eq!(
        receive(&mut col.rx, 200).await,
        (0..200).collect::<Vec<_>>()
    );

    // The collector stops (draining what it read); records produced meanwhile are held.
    assert!(col.stop().await.is_empty());
    guard("session loss", sessions.wait_for(|s| s.current.is_none()))
        .await
        .unwrap();
    for (m, n) in encode_counted(&mut enc, 200..1200) {
        replay.push(m, n);
    }
    replay.pump();
    assert_eq!(replay.stats().records_written, 200);
    assert_eq!(replay.held().1, 1000, "held while the collector is away");

    // Back on the same port: everything held arrives, in order, after the templates.
    let mut col = RunningCollector::tcp(port, 64).await;
    pump_until(&mut replay, "1200 written", |r| {
        r.stats().records_written == 1200
    })
    .await;
    assert_eq!(
        receive(&mut col.rx, 1000).await,
        (200..1200).collect::<Vec<_>>()
    );
    assert_eq!(replay.held(), (0, 0));
    assert_eq!(replay.stats().records_dropped, 0);
    assert_eq!(col.metrics.sets_without_template.get(), 0);
    assert_eq!(col.metrics.sequence_gaps.get(), 0);
    link.finish().await;
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_buffer_beyond_its_bound_drops_the_oldest_counted() {
    // A port nothing listens on yet.
    let port = std::net::TcpListener::bind(loopback(0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut link = Link::to(loopback(port), Transport::Tcp);
    guard("a refused connect", async {
        let mut rx = link.exp.sessions();
        rx.wait_for(|s| s.last_error.is_some()).await.unwrap();
    })
    .await;
    // About three full messages.
    let mut replay = replay_over(&mut link, 3 * 65_535);
    let mut enc = encoder(Transport::Tcp);
    let msgs = encode_counted(&mut enc, 0..3000);
    assert!(msgs.len() > 8, "{} messages", msgs.len());
    for (m, n) in msgs {
        replay.push(m, n);
    }
    replay.pump();
    let dropped = replay.stats().records_dropped;
    let (bytes, held) = replay.held();
    assert!(bytes <= 3 * 65_535, "{bytes} bytes held");
    assert!(dropped > 0 && held > 0);
    assert_eq!(dropped + held, 3000, "every record is held or counted");

    let mut col = RunningCollector::tcp(port, 64).await;
    pump_until(&mut replay, "the held records written", |r| r.is_empty()).await;
    assert_eq!(replay.stats().records_written, held);
    // The newest were kept.
    assert_eq!(
        receive(&mut col.rx, held as usize).await,
        (dropped..3000).collect::<Vec<_>>()
    );
    assert_eq!(col.metrics.sets_without_template.get(), 0);
    link.finish().await;
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_buffer_resends_what_a_dead_session_failed_exactly_once() {
    // A collector that reads nothing: its session hands one message to the channel and blocks,
    // the socket buffers fill, and the exporter's writes stall with messages in flight.
    let col = RunningCollector::tcp(0, 1).await;
    let port = col.tcp.unwrap().port();
    let mut link = Link::to(loopback(port), Transport::Tcp);
    let mut sessions = link.exp.sessions();
    let mut replay = replay_over(&mut link, 256 << 20);
    let mut enc = encoder(Transport::Tcp);
    // ~8 MB: more than the socket buffers take while the collector reads nothing (the receive
    // buffer only grows while the application reads). Ports 40000 + N stay below 65536.
    const N: u64 = 25_000;
    for (m, n) in encode_counted(&mut enc, 0..N) {
        replay.push(m, n);
    }
    guard("writes stalled", async {
        loop {
            replay.pump();
            // No outcome for a while with records still held: the socket is full.
            if tokio::time::timeout(Duration::from_millis(300), replay.wait())
                .await
                .is_err()
            {
                break;
            }
        }
    })
    .await;
    assert!(replay.stats().records_written < N);

    // The collector dies with unread data: its consumer goes, the session closes (a reset), the
    // stalled write fails, and the messages behind it fail unwritten.
    let RunningCollector {
        rx, shutdown, task, ..
    } = col;
    drop(rx);
    shutdown.cancel();
    guard("collector gone", task).await.unwrap().unwrap();
    guard("session loss", sessions.wait_for(|s| s.current.is_none()))
        .await
        .unwrap();
    pump_until(&mut replay, "every outcome of the dead session", |r| {
        r.in_flight() == 0
    })
    .await;
    // Reported written: a prefix, in order (some of it died unread in the socket buffers, the
    // window IPFIX without acknowledgements cannot close).
    let first = replay.stats().records_written;
    assert!(first < N);

    // A new collector: what was not reported written is sent again, once, in order.
    let mut col = RunningCollector::tcp(port, 64).await;
    pump_until(&mut replay, "everything written", |r| r.is_empty()).await;
    let s = replay.stats();
    assert_eq!(s.records_written, N);
    assert!(
        s.messages_replayed > 0,
        "in-flight messages were sent again"
    );
    let got = receive(&mut col.rx, (N - first) as usize).await;
    // Exactly the records after the last one the old session reported written.
    assert_eq!(got, (first..N).collect::<Vec<_>>());
    assert_eq!(col.metrics.sequence_gaps.get(), 0);
    assert_eq!(col.metrics.sets_without_template.get(), 0);
    link.finish().await;
    assert!(col.stop().await.is_empty(), "nothing sent twice");
}

/// End-to-end rate: `FLOWLENS_EXPORTERS` exporter actors (default 100) each write
/// `FLOWLENS_MESSAGES` full messages (default 50, ~200 records each) over TCP loopback into one
/// collector whose consumer walks every field of every record. Prints records/s; run with
/// `cargo test --release -p bins --test transport_ipfix -- --ignored --nocapture throughput`.
/// On the 2-core dev machine (shared with other builds): 100 exporters 1.2 M records/s, 10
/// exporters 2.3 M/s, one exporter 3.4 M/s (AgentV4 records, ~200 per message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run in release"]
async fn throughput_over_tcp_loopback() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (exporters, per_exporter) = (env("FLOWLENS_EXPORTERS", 100), env("FLOWLENS_MESSAGES", 50));
    let col = RunningCollector::tcp(0, 1024).await;
    let addr = col.tcp.unwrap();
    let mut msgs = encode(&mut encoder(Transport::Tcp), 0..250).into_iter();
    let (templates, data) = (msgs.next().unwrap(), msgs.next().unwrap());
    let records_per_msg = {
        let mut d = flowcore::ipfix::Decoder::new(Default::default());
        d.decode(now(), &templates, |_| {}).unwrap();
        d.decode(now(), &data, |_| {}).unwrap().data_records as usize
    };
    let total = exporters * per_exporter * records_per_msg;
    let RunningCollector {
        mut rx,
        shutdown,
        task: col_task,
        ..
    } = col;
    let consumer = tokio::spawn(async move {
        let (mut n, mut fields) = (0usize, 0usize);
        while n < total {
            let m = rx.recv().await.unwrap();
            for r in m.records() {
                fields += r.fields().count();
                n += 1;
            }
        }
        (n, fields)
    });
    let stop = CancellationToken::new();
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..exporters {
        let (exp, mut outcomes, task) = Exporter::spawn(
            exporter_cfg(addr, Transport::Tcp),
            ExporterMetrics::default(),
            stop.clone(),
        );
        let (templates, data) = (templates.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let s = exp.wait_session(None).await.unwrap();
            let acks = tokio::spawn(async move {
                let mut ok = 0;
                while let Some(o) = outcomes.recv().await {
                    ok += o.result.is_ok() as usize;
                }
                ok
            });
            exp.send(s, 0, templates).await.unwrap();
            for tag in 1..=per_exporter as u64 {
                exp.send(s, tag, data.clone()).await.unwrap();
            }
            drop(exp);
            (task, acks)
        }));
    }
    let (n, fields) = tokio::time::timeout(Duration::from_secs(300), consumer)
        .await
        .expect("all records within 5 minutes")
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{exporters} exporters → 1 collector over TCP loopback: {n} records ({fields} fields) in {secs:.2}s = {:.0} records/s",
        n as f64 / secs
    );
    assert_eq!(n, total);
    stop.cancel();
    for t in tasks {
        let (task, acks) = t.await.unwrap();
        task.await.unwrap();
        assert_eq!(acks.await.unwrap(), per_exporter + 1);
    }
    shutdown.cancel();
    col_task.await.unwrap().unwrap();
}

// ---- admission: one peer never locks the others out ----

fn with_limits(tcp: bool, f: impl FnOnce(&mut SessionLimits)) -> CollectorConfig {
    let mut limits = SessionLimits::default();
    f(&mut limits);
    CollectorConfig {
        tcp: if tcp { any_port() } else { None },
        udp: if tcp { None } else { any_port() },
        limits,
        ..CollectorConfig::default()
    }
}

/// A TCP connection to `to` from loopback address `from` (127.0.0.x).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((from, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// The collector closed `s` (EOF or a reset).
async fn closed(s: &mut TcpStream, what: &str) {
    let n = guard(what, s.read(&mut [0u8; 16])).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{what}: {n:?}");
}

fn closed_count(
    col: &RunningCollector,
    reason: flowlens_bins::transport::metrics::CloseReason,
) -> u64 {
    col.metrics
        .sessions_closed
        .get_or_create(&flowlens_bins::transport::metrics::CloseLabels { reason })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_is_capped_and_another_still_gets_in() {
    let mut col =
        RunningCollector::start(with_limits(true, |l| l.max_sessions_per_address = 2), 8).await;
    let addr = col.tcp.unwrap();
    let _a = connect_from([127, 0, 0, 1], addr).await;
    let _b = connect_from([127, 0, 0, 1], addr).await;
    wait_until("two sessions", || col.metrics.sessions_open.get() == 2).await;
    let mut third = connect_from([127, 0, 0, 1], addr).await;
    closed(&mut third, "the third connection from one address refused").await;
    let rejected = col
        .metrics
        .sessions_rejected
        .get_or_create(&RejectLabels {
            reason: RejectReason::PerAddress,
        })
        .get();
    assert_eq!(rejected, 1);
    let mut other = connect_from([127, 0, 0, 2], addr).await;
    let mut enc = encoder(Transport::Tcp);
    for m in encode(&mut enc, 0..10) {
        other.write_all(&m).await.unwrap();
    }
    assert_eq!(receive(&mut col.rx, 10).await, (0..10).collect::<Vec<_>>());
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_full_the_idlest_session_gives_way_to_a_new_exporter() {
    let mut col = RunningCollector::start(
        with_limits(true, |l| {
            l.max_sessions = 2;
            l.evict_idle_after = Duration::from_millis(200);
        }),
        8,
    )
    .await;
    let addr = col.tcp.unwrap();
    let mut idle = connect_from([127, 0, 0, 3], addr).await;
    wait_until("one session", || col.metrics.sessions_open.get() == 1).await;
    // The second session has sent a message since, so the first is the idlest.
    let mut busy = connect_from([127, 0, 0, 4], addr).await;
    let mut benc = encoder(Transport::Tcp);
    for m in encode(&mut benc, 100..101) {
        busy.write_all(&m).await.unwrap();
    }
    assert_eq!(receive(&mut col.rx, 1).await, vec![100]);
    // A newcomer is refused until a session has been idle long enough, then the idlest gives
    // way and the newcomer's records arrive.
    let mut enc = encoder(Transport::Tcp);
    let msgs = encode(&mut enc, 0..10);
    let accepted = || {
        col.metrics
            .sessions
            .get_or_create(&flowlens_bins::transport::metrics::TransportLabels {
                transport: Transport::Tcp.into(),
            })
            .get()
    };
    let rejected = || {
        col.metrics
            .sessions_rejected
            .get_or_create(&RejectLabels {
                reason: RejectReason::Full,
            })
            .get()
    };
    let mut newcomer = guard("a newcomer admitted", async {
        loop {
            let (n, r) = (accepted(), rejected());
            let s = connect_from([127, 0, 0, 5], addr).await;
            wait_until("admitted or refused", || accepted() > n || rejected() > r).await;
            if accepted() > n {
                break s;
            }
        }
    })
    .await;
    for m in &msgs {
        newcomer.write_all(m).await.unwrap();
    }
    assert_eq!(receive(&mut col.rx, 10).await, (0..10).collect::<Vec<_>>());
    closed(&mut idle, "the idlest session closed").await;
    wait_until("eviction counted", || {
        closed_count(
            &col,
            flowlens_bins::transport::metrics::CloseReason::Evicted,
        ) == 1
    })
    .await;
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_begun_and_never_finished_is_cut_off_and_an_idle_one_closed() {
    let mut col = RunningCollector::start(
        with_limits(true, |l| {
            l.message_timeout = Duration::from_millis(200);
            l.idle_timeout = Duration::from_millis(400);
        }),
        8,
    )
    .await;
    let addr = col.tcp.unwrap();
    // A header claiming 65,535 bytes, ten bytes of it, then silence.
    let mut slow = connect_from([127, 0, 0, 6], addr).await;
    slow.write_all(&[0, 10, 0xff, 0xff, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    closed(&mut slow, "the slow message cut off").await;
    assert_eq!(
        closed_count(
            &col,
            flowlens_bins::transport::metrics::CloseReason::MessageTimeout
        ),
        1
    );
    // An exporter that sends, then goes quiet: what it sent is delivered, then it is closed.
    let mut quiet = connect_from([127, 0, 0, 7], addr).await;
    let mut enc = encoder(Transport::Tcp);
    for m in encode(&mut enc, 0..5) {
        quiet.write_all(&m).await.unwrap();
    }
    assert_eq!(receive(&mut col.rx, 5).await, (0..5).collect::<Vec<_>>());
    closed(&mut quiet, "the idle session closed").await;
    wait_until("idle close counted", || {
        closed_count(
            &col,
            flowlens_bins::transport::metrics::CloseReason::IdleTimeout,
        ) == 1
    })
    .await;
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reads_what_an_exporter_already_wrote() {
    let col = RunningCollector::start(with_limits(true, |_| {}), 1024).await;
    let mut s = connect_from([127, 0, 0, 8], col.tcp.unwrap()).await;
    let mut enc = encoder(Transport::Tcp);
    let msgs = encode(&mut enc, 0..2000);
    // The first message is decoded (the session is up), the rest is written at once and may
    // still sit in the socket when the shutdown comes.
    s.write_all(&msgs[0]).await.unwrap();
    wait_until("templates decoded", || col.metrics.messages.get() >= 1).await;
    for m in &msgs[1..] {
        s.write_all(m).await.unwrap();
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        // The collector's close reaches the exporter as an end of stream.
        let mut buf = [0u8; 16];
        let n = guard("the collector's close", s.read(&mut buf)).await;
        let _ = tx.send(n.map_err(|e| e.to_string()));
    });
    let got = col.stop().await;
    assert_eq!(
        got,
        (0..2000).collect::<Vec<_>>(),
        "every record written was read"
    );
    reader.await.unwrap();
    assert_eq!(rx.await.unwrap(), Ok(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_session_waits_its_turn_and_the_quiet_one_is_served() {
    let mut col = RunningCollector::start(with_limits(true, |_| {}), 2).await;
    let addr = col.tcp.unwrap();
    let mut flood = connect_from([127, 0, 0, 9], addr).await;
    let mut enc = encoder(Transport::Tcp);
    let mut msgs = encode(&mut enc, 0..2000).into_iter();
    flood.write_all(&msgs.next().unwrap()).await.unwrap();
    let data: Vec<Bytes> = msgs.collect();
    let flooder = tokio::spawn(async move {
        for m in data.iter().cycle().take(200) {
            if flood.write_all(m).await.is_err() {
                break;
            }
        }
        flood
    });
    // The flooder's queue is full and it waits; now a quiet exporter sends one message.
    wait_until("the flooder's queue full", || {
        col.metrics.messages.get() >= 3
    })
    .await;
    let before = col.metrics.messages.get();
    let mut quiet = connect_from([127, 0, 0, 10], addr).await;
    let mut qenc = encoder(Transport::Tcp);
    for m in encode(&mut qenc, 5000..5001) {
        quiet.write_all(&m).await.unwrap();
    }
    wait_until("the quiet message decoded", || {
        col.metrics.messages.get() >= before + 2
    })
    .await;
    // Within two turns of the consumer: one of the flooder's, then the quiet one's.
    let mut seen = Vec::new();
    for _ in 0..3 {
        let m = guard("a message", col.rx.recv()).await.unwrap();
        seen.push(m.records().map(|r| check(&r)).collect::<Vec<_>>());
    }
    assert!(
        seen.iter().any(|r| r == &vec![5000]),
        "the quiet exporter's record came within the first turns: {:?}",
        seen.iter().map(|r| r.len()).collect::<Vec<_>>()
    );
    drop(quiet);
    let rest = col.stop();
    let flood = flooder;
    let _ = rest.await;
    flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_exporters_beyond_their_share_replace_the_idlest_and_a_new_one_always_gets_in() {
    let mut col = RunningCollector::start(
        with_limits(false, |l| {
            l.max_sessions = 3;
            l.max_sessions_per_address = 2;
        }),
        8,
    )
    .await;
    let to = col.udp.unwrap();
    let mut uenc = encoder(Transport::Udp);
    let first = encode(&mut uenc, 0..1);
    let send_from = |ip: [u8; 4]| {
        let first = first.clone();
        async move {
            let s = tokio::net::UdpSocket::bind(SocketAddr::from((ip, 0)))
                .await
                .unwrap();
            for d in &first {
                s.send_to(d, to).await.unwrap();
            }
            s
        }
    };
    // Three ports of one address: the third replaces that address's idlest (each sends one
    // record, which the test takes so no queue fills).
    let mut keep = Vec::new();
    for _ in 0..3 {
        keep.push(send_from([127, 0, 0, 11]).await);
    }
    let evicted = |reason| {
        col.metrics
            .udp_sessions_evicted
            .get_or_create(&flowlens_bins::transport::metrics::UdpEvictLabels { reason })
            .get()
    };
    use flowlens_bins::transport::metrics::UdpEvictReason;
    wait_until("per-address eviction", || {
        evicted(UdpEvictReason::PerAddress) == 1
    })
    .await;
    // Two more addresses: the table (3) is full, the idlest gives way.
    keep.push(send_from([127, 0, 0, 12]).await);
    keep.push(send_from([127, 0, 0, 13]).await);
    wait_until("full eviction", || evicted(UdpEvictReason::Full) == 1).await;
    assert_eq!(col.metrics.sessions_open.get(), 3);
    // Every datagram so far was delivered, evicted sessions' included.
    assert_eq!(receive(&mut col.rx, 5).await, vec![0; 5]);
    // A new exporter's records all arrive.
    let s = tokio::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 14], 0)))
        .await
        .unwrap();
    let mut enc = encoder(Transport::Udp);
    for d in encode(&mut enc, 0..20) {
        s.send_to(&d, to).await.unwrap();
    }
    assert_eq!(receive(&mut col.rx, 20).await, (0..20).collect::<Vec<_>>());
    col.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_its_share_of_the_template_budget_is_closed_alone() {
    let mut cfg = with_limits(true, |l| l.max_template_bytes = 64 << 10);
    cfg.decoder.max_template_bytes = 1 << 20;
    let mut col = RunningCollector::start(cfg, 8).await;
    let addr = col.tcp.unwrap();
    // A well-behaved exporter first.
    let mut good = connect_from([127, 0, 0, 15], addr).await;
    let mut enc = encoder(Transport::Tcp);
    for m in encode(&mut enc, 0..3) {
        good.write_all(&m).await.unwrap();
    }
    assert_eq!(receive(&mut col.rx, 3).await, vec![0, 1, 2]);
    // A template bomb: messages of 400-field templates until the total passes the budget.
    let mut bomb = connect_from([127, 0, 0, 16], addr).await;
    for id in 300u16..320 {
        let mut set = vec![0u8, 2, 0, 0];
        set.extend_from_slice(&id.to_be_bytes());
        set.extend_from_slice(&400u16.to_be_bytes());
        for _ in 0..400 {
            set.extend_from_slice(&[0, 1, 0, 8]); // octetDeltaCount, 8 bytes
        }
        let set_len = set.len() as u16;
        set[2..4].copy_from_slice(&set_len.to_be_bytes());
        let mut msg = vec![0u8, 10];
        msg.extend_from_slice(&((16 + set.len()) as u16).to_be_bytes());
        msg.extend_from_slice(&[0; 8]);
        msg.extend_from_slice(&9u32.to_be_bytes());
        msg.extend_from_slice(&set);
        if bomb.write_all(&msg).await.is_err() {
            break;
        }
    }
    closed(&mut bomb, "the template bomb's session closed").await;
    assert_eq!(
        closed_count(
            &col,
            flowlens_bins::transport::metrics::CloseReason::TemplateBudget
        ),
        1
    );
    wait_until("the bomb's templates freed", || {
        (col.metrics.template_bytes.get() as usize) < 16 << 10
    })
    .await;
    for m in encode(&mut enc, 3..6) {
        good.write_all(&m).await.unwrap();
    }
    assert_eq!(receive(&mut col.rx, 3).await, vec![3, 4, 5]);
    col.stop().await;
}
