//! The IPFIX collecting process: TCP, UDP and TLS listeners feeding decoded messages to one
//! consumer (the aggregator core, the collector's store) through a bounded channel.
//!
//! ## Sessions
//! A transport session (RFC 7011 §10) is a TCP or TLS connection, or for UDP the traffic from
//! one exporter address. Each has its own [`Decoder`], so template state never leaks between
//! exporters. UDP templates expire after `3 × udp_template_refresh` (RFC 7011 §8.4 advice), and a
//! UDP session idle that long is forgotten. At most `max_sessions` TCP+TLS connections are open
//! (further ones are closed at once and counted), and at most `max_sessions` UDP exporters are
//! tracked (datagrams from more are dropped and counted).
//!
//! ## Handing messages on
//! A session task decodes each message itself and sends one [`DecodedMessage`] per IPFIX message
//! that holds data records. The message keeps the received bytes (one refcounted `Bytes`, split
//! off the read buffer without copying for TCP/TLS), the templates its records use (the decoder's
//! own `Arc`s, shared across messages; a redefinition is a new one), and one
//! 12-byte span per record; [`DecodedMessage::records`] yields flowcore's borrowed
//! [`DataRecord`] views again, so the consumer runs `Aggregator::handle_record` on them directly.
//! That is two small allocations per message (a few hundred records) and none per record, and the
//! consumer needs no template state of its own nor any knowledge of sessions. Decoding in the
//! session task is also what lets a malformed message close exactly its own session, and spreads
//! decoding over the runtime's threads.
//!
//! ## Back-pressure and loss
//! TCP/TLS: a session waits for room in the channel before it reads more, so a slow consumer
//! fills the socket buffers and the exporter's window closes — nothing is buffered without bound
//! and nothing is dropped. UDP has no such brake: a message that finds the channel full is dropped
//! and counted (`udp_dropped_messages`, `udp_dropped_records`).
//!
//! ## Errors and shutdown
//! A malformed message (or a stream that loses framing) closes only its session, logged with the
//! reason and counted by reason; for UDP the exporter's template state is dropped. Cancelling the
//! shutdown token stops the listeners, lets every session hand on the whole messages it already
//! read, and closes them; [`Collector::run`] returns once all are done, after which the channel
//! closes and the consumer sees the end once it has drained it. The consumer must keep receiving
//! until then.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use flowcore::aggregator::ExporterId;
use flowcore::config::Transport;
use flowcore::ipfix::{
    DataRecord, DecodeError, Decoder, DecoderConfig, HEADER_LEN, MessageHeader, Template,
    TemplateId, VERSION,
};
use flowcore::model::Timestamp;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::metrics::{
    CollectorMetrics, MalformedLabels, MalformedReason, TransportLabels, UdpDropLabels,
    UdpDropReason,
};

/// Where to listen and how much to accept.
#[derive(Clone, Debug)]
pub struct CollectorConfig {
    pub tcp: Option<SocketAddr>,
    pub udp: Option<SocketAddr>,
    /// TLS listener; needs `tls_config`.
    pub tls: Option<SocketAddr>,
    /// The server configuration, read anew for each connection so a reloaded certificate
    /// (see [`super::tls::watch_server_config`]) applies to new sessions.
    pub tls_config: Option<watch::Receiver<Arc<ServerConfig>>>,
    /// TCP+TLS connections open at once; also the number of UDP exporters tracked.
    pub max_sessions: usize,
    /// The template refresh interval UDP exporters are expected to use; templates live 3× this.
    pub udp_template_refresh: Duration,
    /// A TLS handshake not finished by then closes the connection (a silent peer would
    /// otherwise hold a session slot).
    pub handshake_timeout: Duration,
    /// Bounds per session; `template_lifetime` is set here per transport.
    pub decoder: DecoderConfig,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            tcp: None,
            udp: None,
            tls: None,
            tls_config: None,
            max_sessions: 1024,
            udp_template_refresh: Duration::from_secs(600),
            handshake_timeout: Duration::from_secs(10),
            decoder: DecoderConfig::default(),
        }
    }
}

/// Identifies a transport session for the life of the process.
pub type SessionId = u64;

/// One IPFIX message with data records, owned, decoded in its session.
#[derive(Clone, Debug)]
pub struct DecodedMessage {
    pub session: SessionId,
    pub peer: SocketAddr,
    pub transport: Transport,
    pub header: MessageHeader,
    bytes: Bytes,
    templates: Vec<Arc<Template>>,
    records: Vec<RecordSpan>,
}

/// Where a record sits in the message, and which of the message's templates it uses.
#[derive(Clone, Copy, Debug)]
struct RecordSpan {
    template: u32,
    start: u32,
    len: u32,
}

impl DecodedMessage {
    /// The data records (and options records) in message order, as flowcore's views.
    pub fn records(&self) -> impl ExactSizeIterator<Item = DataRecord<'_>> + '_ {
        self.records.iter().map(|r| DataRecord {
            header: &self.header,
            template: &self.templates[r.template as usize],
            data: &self.bytes[r.start as usize..(r.start + r.len) as usize],
        })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The message as received, e.g. to store or forward it.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Who sent it, as the aggregator keys exporters.
    pub fn exporter(&self) -> ExporterId {
        ExporterId {
            addr: self.peer.ip(),
            domain: self.header.domain,
        }
    }

    /// The template `id` used by records of this message, if any.
    pub fn template(&self, id: TemplateId) -> Option<&Template> {
        self.templates.iter().find(|t| t.id == id).map(|t| &**t)
    }
}

/// A bounded channel of the right type.
pub fn channel(capacity: usize) -> (mpsc::Sender<DecodedMessage>, mpsc::Receiver<DecodedMessage>) {
    mpsc::channel(capacity)
}

/// The clock, read at the edge and passed into the sans-IO decoder.
fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A session's decoder and the decoder counters already reported.
struct SessionDecoder {
    decoder: Decoder,
    reported: (u64, u64, u64),
}

impl SessionDecoder {
    fn new(cfg: DecoderConfig) -> Self {
        SessionDecoder {
            decoder: Decoder::new(cfg),
            reported: (0, 0, 0),
        }
    }

    fn decode(
        &mut self,
        info: &SessionInfo,
        bytes: Bytes,
        metrics: &CollectorMetrics,
    ) -> Result<DecodedMessage, DecodeError> {
        let mut templates: Vec<Arc<Template>> = Vec::new();
        let mut records = Vec::new();
        let base = bytes.as_ptr() as usize;
        let result = self.decoder.decode(now(), &bytes, |rec| {
            // The decoder's own `Arc`: the clones in `templates` keep each one alive (and its
            // address unique) for as long as this message is.
            let idx = match templates.iter().rposition(|c| Arc::ptr_eq(c, rec.template)) {
                Some(i) => i,
                None => {
                    templates.push(rec.template.clone());
                    templates.len() - 1
                }
            };
            // Offsets fit in u32: a message is at most 65535 bytes.
            records.push(RecordSpan {
                template: idx as u32,
                start: (rec.data.as_ptr() as usize - base) as u32,
                len: rec.data.len() as u32,
            });
        });
        let s = self.decoder.stats();
        let (gaps, missing, without) = self.reported;
        metrics.sequence_gaps.inc_by(s.sequence_gaps - gaps);
        metrics.records_missing.inc_by(s.records_missing - missing);
        metrics
            .sets_without_template
            .inc_by(s.sets_without_template - without);
        self.reported = (s.sequence_gaps, s.records_missing, s.sets_without_template);
        let summary = result?;
        metrics.messages.inc();
        metrics.records.inc_by(records.len() as u64);
        Ok(DecodedMessage {
            session: info.id,
            peer: info.peer,
            transport: info.transport,
            header: summary.header,
            bytes,
            templates,
            records,
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct SessionInfo {
    id: SessionId,
    peer: SocketAddr,
    transport: Transport,
}

/// What every task shares.
struct Shared {
    cfg: CollectorConfig,
    metrics: CollectorMetrics,
    tx: mpsc::Sender<DecodedMessage>,
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
}

impl Shared {
    fn session(&self, peer: SocketAddr, transport: Transport) -> SessionInfo {
        self.metrics
            .sessions
            .get_or_create(&TransportLabels {
                transport: transport.into(),
            })
            .inc();
        SessionInfo {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            transport,
        }
    }

    fn malformed(&self, info: &SessionInfo, e: &DecodeError) {
        self.metrics
            .malformed
            .get_or_create(&MalformedLabels {
                reason: MalformedReason::from(e),
            })
            .inc();
        tracing::warn!(session = info.id, peer = %info.peer, transport = %info.transport, error = %e, "malformed IPFIX message; closing the session");
    }
}

/// Keeps `sessions_open` right however a session ends.
struct OpenGuard(CollectorMetrics);

impl OpenGuard {
    fn new(m: &CollectorMetrics) -> Self {
        m.sessions_open.inc();
        OpenGuard(m.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.sessions_open.dec();
    }
}

/// Bound listeners, ready to [`run`](Collector::run).
pub struct Collector {
    shared: Arc<Shared>,
    tcp: Option<TcpListener>,
    udp: Option<UdpSocket>,
    tls: Option<(TcpListener, watch::Receiver<Arc<ServerConfig>>)>,
}

impl Collector {
    /// Binds the configured listeners (port 0 picks a free port; see the `*_addr` methods).
    pub async fn bind(
        cfg: CollectorConfig,
        metrics: CollectorMetrics,
        tx: mpsc::Sender<DecodedMessage>,
    ) -> Result<Collector> {
        let tcp = match cfg.tcp {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("listening for IPFIX over TCP on {a}"))?,
            ),
            None => None,
        };
        let udp = match cfg.udp {
            Some(a) => Some(
                UdpSocket::bind(a)
                    .await
                    .with_context(|| format!("listening for IPFIX over UDP on {a}"))?,
            ),
            None => None,
        };
        let tls = match (cfg.tls, &cfg.tls_config) {
            (Some(a), Some(c)) => Some((
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("listening for IPFIX over TLS on {a}"))?,
                c.clone(),
            )),
            (Some(a), None) => anyhow::bail!(
                "a TLS listener on {a} needs a server configuration (CA, certificate and key files)"
            ),
            (None, _) => None,
        };
        let slots = Arc::new(Semaphore::new(cfg.max_sessions));
        Ok(Collector {
            shared: Arc::new(Shared {
                cfg,
                metrics,
                tx,
                next_id: AtomicU64::new(1),
                slots,
            }),
            tcp,
            udp,
            tls,
        })
    }

    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().and_then(|s| s.local_addr().ok())
    }
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled, then drains (module docs) and returns.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut tasks = JoinSet::new();
        if let Some(l) = self.tcp {
            tasks.spawn(accept_loop(l, None, self.shared.clone(), shutdown.clone()));
        }
        if let Some((l, c)) = self.tls {
            tasks.spawn(accept_loop(
                l,
                Some(c),
                self.shared.clone(),
                shutdown.clone(),
            ));
        }
        if let Some(s) = self.udp {
            tasks.spawn(udp_loop(s, self.shared.clone(), shutdown.clone()));
        }
        drop(self.shared);
        while let Some(r) = tasks.join_next().await {
            r.context("collector task panicked")?;
        }
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<watch::Receiver<Arc<ServerConfig>>>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            r = listener.accept() => {
                let (sock, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: pause instead of spinning.
                        tracing::warn!(%transport, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = shared.slots.clone().try_acquire_owned() else {
                    shared.metrics.sessions_rejected.inc();
                    tracing::warn!(%peer, %transport, max = shared.cfg.max_sessions, "too many IPFIX sessions; closing the new connection");
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let info = shared.session(peer, transport);
                let span = tracing::info_span!("ipfix_session", id = info.id, %peer, %transport);
                let tls = tls.as_ref().map(|c| c.borrow().clone());
                sessions.spawn(
                    stream_session(sock, tls, info, permit, shared.clone(), shutdown.clone())
                        .instrument(span),
                );
            }
        }
    }
    while sessions.join_next().await.is_some() {}
}

async fn stream_session(
    sock: TcpStream,
    tls: Option<Arc<ServerConfig>>,
    info: SessionInfo,
    _permit: OwnedSemaphorePermit,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let _open = OpenGuard::new(&shared.metrics);
    tracing::debug!("session open");
    let end = match tls {
        None => read_stream(sock, &info, &shared, &shutdown).await,
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let hs = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(shared.cfg.handshake_timeout, acceptor.accept(sock)) => r,
            };
            match hs {
                Ok(Ok(s)) => read_stream(s, &info, &shared, &shutdown).await,
                Ok(Err(e)) => {
                    shared.metrics.tls_handshake_failures.inc();
                    tracing::warn!(error = %e, "TLS handshake failed; closing the connection");
                    return;
                }
                Err(_) => {
                    shared.metrics.tls_handshake_failures.inc();
                    tracing::warn!(timeout = ?shared.cfg.handshake_timeout, "TLS handshake not finished in time; closing the connection");
                    return;
                }
            }
        }
    };
    match end {
        StreamEnd::Eof => tracing::debug!("closed by the exporter"),
        StreamEnd::Shutdown => tracing::debug!("closed for shutdown"),
        StreamEnd::ConsumerGone => tracing::debug!("consumer gone; closing"),
        StreamEnd::Truncated(n) => {
            tracing::info!(pending_bytes = n, "closed by the exporter inside a message")
        }
        StreamEnd::Io(e) => tracing::info!(error = %e, "session ended by a socket error"),
        StreamEnd::Malformed(e) => shared.malformed(&info, &e),
    }
}

enum StreamEnd {
    Eof,
    Shutdown,
    ConsumerGone,
    Truncated(usize),
    Io(std::io::Error),
    Malformed(DecodeError),
}

/// Largest IPFIX message; the read buffer always has room for one.
const MAX_MESSAGE: usize = flowcore::ipfix::MAX_MESSAGE_LEN;

/// The next whole message at the front of `buf`, split off without copying. Same checks as
/// `flowcore::ipfix::StreamDeframer`, which copies into its own buffer instead.
fn next_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, DecodeError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let version = u16::from_be_bytes([buf[0], buf[1]]);
    if version != VERSION {
        return Err(DecodeError::BadVersion { found: version });
    }
    let length = u16::from_be_bytes([buf[2], buf[3]]);
    if (length as usize) < HEADER_LEN {
        return Err(DecodeError::StreamBadLength { length });
    }
    if buf.len() < length as usize {
        return Ok(None);
    }
    Ok(Some(buf.split_to(length as usize).freeze()))
}

async fn read_stream<S: AsyncRead + Unpin>(
    mut s: S,
    info: &SessionInfo,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> StreamEnd {
    let mut dec = SessionDecoder::new(DecoderConfig {
        template_lifetime: None,
        ..shared.cfg.decoder.clone()
    });
    let mut buf = BytesMut::with_capacity(2 * MAX_MESSAGE);
    let mut stopping = false;
    loop {
        loop {
            let frame = match next_frame(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return StreamEnd::Malformed(e),
            };
            let msg = match dec.decode(info, frame, &shared.metrics) {
                Ok(m) => m,
                Err(e) => return StreamEnd::Malformed(e),
            };
            if msg.is_empty() {
                continue;
            }
            // Waiting here is the back-pressure: no read until the consumer takes this.
            if shared.tx.send(msg).await.is_err() {
                return StreamEnd::ConsumerGone;
            }
        }
        if stopping {
            return StreamEnd::Shutdown;
        }
        if buf.capacity() - buf.len() < MAX_MESSAGE {
            buf.reserve(MAX_MESSAGE);
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => stopping = true,
            r = s.read_buf(&mut buf) => match r {
                Ok(0) if buf.is_empty() => return StreamEnd::Eof,
                Ok(0) => return StreamEnd::Truncated(buf.len()),
                Ok(_) => {}
                Err(e) => return StreamEnd::Io(e),
            }
        }
    }
}

struct UdpSession {
    info: SessionInfo,
    dec: SessionDecoder,
    last_seen: Instant,
    _open: OpenGuard,
}

async fn udp_loop(sock: UdpSocket, shared: Arc<Shared>, shutdown: CancellationToken) {
    let lifetime = shared.cfg.udp_template_refresh.saturating_mul(3);
    let dcfg = DecoderConfig {
        template_lifetime: Some(lifetime),
        ..shared.cfg.decoder.clone()
    };
    let mut sessions: HashMap<SocketAddr, UdpSession> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut sweep =
        tokio::time::interval(lifetime.clamp(Duration::from_secs(1), Duration::from_secs(60)));
    loop {
        let (n, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sweep.tick() => {
                // An exporter silent for a whole template lifetime has nothing left to decode.
                sessions.retain(|_, s| s.last_seen.elapsed() < lifetime);
                continue;
            }
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends and the like; nothing to do with the data.
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            }
        };
        if !sessions.contains_key(&peer) && sessions.len() >= shared.cfg.max_sessions {
            shared
                .metrics
                .udp_dropped_messages
                .get_or_create(&UdpDropLabels {
                    reason: UdpDropReason::TooManySessions,
                })
                .inc();
            continue;
        }
        let s = sessions.entry(peer).or_insert_with(|| {
            let info = shared.session(peer, Transport::Udp);
            tracing::debug!(session = info.id, %peer, "UDP session open");
            UdpSession {
                info,
                dec: SessionDecoder::new(dcfg.clone()),
                last_seen: Instant::now(),
                _open: OpenGuard::new(&shared.metrics),
            }
        });
        s.last_seen = Instant::now();
        // One copy of exactly the datagram, so the buffer is reused for the next one.
        let bytes = Bytes::copy_from_slice(&buf[..n]);
        match s.dec.decode(&s.info, bytes, &shared.metrics) {
            Ok(m) if m.is_empty() => {}
            Ok(m) => match shared.tx.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m)) => {
                    shared
                        .metrics
                        .udp_dropped_messages
                        .get_or_create(&UdpDropLabels {
                            reason: UdpDropReason::ChannelFull,
                        })
                        .inc();
                    shared.metrics.udp_dropped_records.inc_by(m.len() as u64);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            },
            Err(e) => {
                let info = s.info;
                shared.malformed(&info, &e);
                sessions.remove(&peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowcore::ipfix::{Encoder, EncoderConfig, FieldSpec};

    #[test]
    fn redefined_template_is_used_and_old_messages_keep_theirs() {
        let fields = |names: &[&str]| -> Vec<FieldSpec> {
            names.iter().map(|n| FieldSpec::named(n).unwrap()).collect()
        };
        let one = fields(&["sourceTransportPort"]);
        let two = fields(&["sourceTransportPort", "destinationTransportPort"]);
        let mut enc = Encoder::new(EncoderConfig::stream(1)).unwrap();
        let t = Timestamp::from_secs(1_700_000_000);
        let mut msgs = Vec::new();
        enc.add_template(300, &one).unwrap();
        enc.record(t, 300).unwrap().uint(1).finish().unwrap();
        enc.flush(t);
        msgs.extend(std::iter::from_fn(|| enc.poll_transmit()));
        enc.add_template(300, &two).unwrap();
        enc.record(t, 300)
            .unwrap()
            .uint(2)
            .uint(3)
            .finish()
            .unwrap();
        enc.flush(t);
        msgs.extend(std::iter::from_fn(|| enc.poll_transmit()));

        let info = SessionInfo {
            id: 1,
            peer: ([127, 0, 0, 1], 1).into(),
            transport: Transport::Tcp,
        };
        let metrics = CollectorMetrics::default();
        let mut dec = SessionDecoder::new(DecoderConfig::default());
        let decoded: Vec<DecodedMessage> = msgs
            .into_iter()
            .map(|m| dec.decode(&info, m, &metrics).unwrap())
            .filter(|m| !m.is_empty())
            .collect();
        assert_eq!(decoded.len(), 2);
        let values = |m: &DecodedMessage| -> Vec<Vec<u64>> {
            m.records()
                .map(|r| r.fields().map(|f| f.value().as_u64().unwrap()).collect())
                .collect()
        };
        assert_eq!(values(&decoded[0]), vec![vec![1]]);
        assert_eq!(values(&decoded[1]), vec![vec![2, 3]]);
        assert_eq!(decoded[0].template(300).unwrap().fields.len(), 1);
        assert_eq!(decoded[1].exporter().domain, 1);
        assert_eq!(metrics.records.get(), 2);
    }

    /// Corrupted copies of real messages (bit flips, truncation, stray bytes) go through the
    /// framing and the session decoder: errors, never panics, and a session that survives an
    /// error keeps decoding.
    #[test]
    fn corrupted_streams_never_panic() {
        let mut enc = Encoder::new(EncoderConfig::stream(3)).unwrap();
        let layout = flowcore::ipfix::Layout::AgentV4;
        enc.add_template(layout.template_id(), layout.fields())
            .unwrap();
        let t = Timestamp::from_secs(1_700_000_000);
        for i in 0..40 {
            flowcore::ipfix::example::write_example_record(&mut enc, t, layout, i).unwrap();
        }
        enc.flush(t);
        let clean: Vec<u8> = std::iter::from_fn(|| enc.poll_transmit())
            .flat_map(|m| m.to_vec())
            .collect();
        let info = SessionInfo {
            id: 1,
            peer: ([127, 0, 0, 1], 1).into(),
            transport: Transport::Tcp,
        };
        let metrics = CollectorMetrics::default();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut errors, mut records) = (0, 0);
        for _ in 0..2000 {
            let mut bytes = clean.clone();
            for _ in 0..1 + rand(4) {
                match rand(3) {
                    0 => {
                        let i = rand(bytes.len());
                        bytes[i] ^= 1 << rand(8);
                    }
                    1 => bytes.truncate(rand(bytes.len())),
                    _ => {
                        let i = rand(bytes.len());
                        bytes.insert(i, rand(256) as u8);
                    }
                }
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let mut dec = SessionDecoder::new(DecoderConfig::default());
            loop {
                match next_frame(&mut buf) {
                    Ok(Some(f)) => match dec.decode(&info, f, &metrics) {
                        Ok(m) => records += m.records().count(),
                        Err(_) => {
                            errors += 1;
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
        }
        assert!(
            errors > 100 && records > 1000,
            "{errors} errors, {records} records"
        );
    }

    #[test]
    fn framing_checks_and_splits() {
        let mut b = BytesMut::from(&[0u8, 10, 0, 16][..]);
        assert_eq!(next_frame(&mut b), Ok(None));
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&[0, 10]);
        let f = next_frame(&mut b).unwrap().unwrap();
        assert_eq!(f.len(), 16);
        assert_eq!(b.len(), 2);
        let mut bad = BytesMut::from(&[0u8, 9, 0, 16][..]);
        assert_eq!(
            next_frame(&mut bad),
            Err(DecodeError::BadVersion { found: 9 })
        );
        let mut short = BytesMut::from(&[0u8, 10, 0, 3][..]);
        assert_eq!(
            next_frame(&mut short),
            Err(DecodeError::StreamBadLength { length: 3 })
        );
    }
}
