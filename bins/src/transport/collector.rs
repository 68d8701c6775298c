//! The IPFIX collecting process: TCP, UDP and TLS listeners feeding decoded messages to one
//! consumer (the aggregator core, the collector's store) through a [`FairQueue`].
//!
//! ## Sessions
//! A transport session (RFC 7011 §10) is a TCP or TLS connection, or for UDP the traffic from
//! one exporter address and port. Each has its own [`Decoder`], so template state never leaks
//! between exporters, and its templates die with it. UDP templates expire after
//! `3 × udp_template_refresh` (RFC 7011 §8.4 advice), and a UDP session idle that long is
//! forgotten.
//!
//! ## Admission (one peer never locks the others out)
//! - At most `max_sessions_per_address` sessions per source address: a further connection from
//!   that address is refused at accept; a further UDP exporter from it replaces that address's
//!   idlest session.
//! - At most `max_sessions` TCP+TLS connections: when full, a new connection closes the session
//!   idle longest if it has been idle `evict_idle_after` (a live exporter sends at least every
//!   poll; a hoarded idle connection gives way), and is refused otherwise. UDP: the idlest
//!   exporter always gives way, so a new exporter always gets a slot.
//! - Deadlines: a TLS handshake within `handshake_timeout`; a message begun (its first byte
//!   read) complete within `message_timeout` (a header claiming 65,535 bytes and then silence
//!   holds nothing for long); a connection with no complete message for `idle_timeout` is closed.
//! - Templates: each session's are bounded by the decoder ([`DecoderConfig`]); all sessions'
//!   together by `max_template_bytes`, past which a session over its share is closed.
//!
//! Every refusal and closure is counted by reason; repeated errors are logged at most once a
//! second per kind ([`crate::rate_limited`]).
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
//! ## Fair shares, back-pressure and loss
//! Every session has its own queue in the [`FairQueue`]; the consumer takes one message from
//! each session in turn, so a flooding exporter lengthens only its own queue. TCP/TLS: a session
//! waits for room in its queue before it reads more, so a slow consumer fills the socket buffers
//! and that exporter's window closes — nothing is buffered without bound and nothing is dropped.
//! UDP has no such brake: a message that finds its exporter's queue full is dropped and counted,
//! by reason and by exporter.
//!
//! ## Errors and shutdown
//! A malformed message (or a stream that loses framing) closes only its session, logged
//! (rate-limited) and counted by reason; for UDP the exporter's template state is dropped.
//! Cancelling the shutdown token stops the listeners and closes every connection's sending side
//! (TLS: close_notify), so each exporter sees the end and stops writing; the session reads on and
//! hands over every whole message until the exporter closes, or `drain_timeout` passes. What the
//! exporter wrote before it saw the end is therefore read, not lost in a socket buffer.
//! [`Collector::run`] returns once all sessions are done, after which the queue ends and the
//! consumer sees the end once it has drained it. The consumer must keep receiving until then.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::fair::{FairConfig, FairQueue, FairReceiver, Refused, SessionQueue, Weigh};
use super::metrics::{
    CloseLabels, CloseReason, CollectorMetrics, ExporterLabels, MalformedLabels, MalformedReason,
    RejectLabels, RejectReason, TransportLabels, UdpDropLabels, UdpDropReason, UdpEvictLabels,
    UdpEvictReason,
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
    pub limits: SessionLimits,
    /// The template refresh interval UDP exporters are expected to use; templates live 3× this.
    pub udp_template_refresh: Duration,
    /// Bounds per session; `template_lifetime` is set here per transport.
    pub decoder: DecoderConfig,
}

/// Admission and deadlines (module docs).
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// TCP+TLS connections open at once; also the number of UDP exporters tracked.
    pub max_sessions: usize,
    /// Sessions from one source address.
    pub max_sessions_per_address: usize,
    /// A TLS handshake not finished by then closes the connection.
    pub handshake_timeout: Duration,
    /// A connection with no complete message for this long is closed.
    pub idle_timeout: Duration,
    /// A message begun must be complete within this.
    pub message_timeout: Duration,
    /// When full, the idlest session gives way to a new one if idle at least this long.
    pub evict_idle_after: Duration,
    /// Heap bytes of all sessions' templates.
    pub max_template_bytes: usize,
    /// Decoded messages waiting for the consumer: all sessions, and one session.
    pub queue: FairConfig,
    /// At shutdown, how long sessions keep reading what their exporters already sent.
    pub drain_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 1024,
            max_sessions_per_address: 16,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            message_timeout: Duration::from_secs(30),
            evict_idle_after: Duration::from_secs(30),
            max_template_bytes: 64 << 20,
            queue: FairConfig {
                max_bytes: 64 << 20,
                per_session_bytes: 4 << 20,
            },
            drain_timeout: Duration::from_secs(5),
        }
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            tcp: None,
            udp: None,
            tls: None,
            tls_config: None,
            limits: SessionLimits::default(),
            udp_template_refresh: Duration::from_secs(600),
            decoder: DecoderConfig {
                max_template_bytes: 256 << 10,
                ..DecoderConfig::default()
            },
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

impl Weigh for DecodedMessage {
    /// The received bytes, the record spans and the message itself.
    fn weight(&self) -> usize {
        self.bytes.len() + 12 * self.records.len() + 128
    }
}

/// The queue between the sessions and the consumer, with the limits' bounds.
pub fn queue(limits: &SessionLimits) -> (FairQueue<DecodedMessage>, FairReceiver<DecodedMessage>) {
    super::fair::fair_queue(limits.queue)
}

#[derive(Clone, Copy, Debug)]
struct SessionInfo {
    id: SessionId,
    peer: SocketAddr,
    transport: Transport,
}

/// The open stream sessions, for admission.
struct Registry {
    sessions: HashMap<SessionId, Slot>,
    per_addr: HashMap<IpAddr, usize>,
}

struct Slot {
    peer: IpAddr,
    /// Milliseconds since `Shared::epoch` of the last complete message (or the accept).
    last_active: Arc<AtomicU64>,
    /// Closes the session (eviction).
    stop: CancellationToken,
    /// Already told to give way.
    evicting: bool,
}

/// What every task shares.
struct Shared {
    cfg: CollectorConfig,
    metrics: CollectorMetrics,
    queue: FairQueue<DecodedMessage>,
    next_id: AtomicU64,
    registry: Mutex<Registry>,
    /// Heap bytes of every session's templates.
    template_bytes: AtomicUsize,
    /// Sessions holding templates (the template budget's fair share divides among them).
    template_holders: AtomicUsize,
    epoch: Instant,
}

impl Shared {
    fn session(&self, peer: SocketAddr, transport: Transport) -> SessionInfo {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.session_with_id(id, peer, transport)
    }

    /// A session opens (counted).
    fn session_with_id(
        &self,
        id: SessionId,
        peer: SocketAddr,
        transport: Transport,
    ) -> SessionInfo {
        self.metrics
            .sessions
            .get_or_create(&TransportLabels {
                transport: transport.into(),
            })
            .inc();
        SessionInfo {
            id,
            peer,
            transport,
        }
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn malformed(&self, info: &SessionInfo, e: &DecodeError) {
        self.metrics
            .malformed
            .get_or_create(&MalformedLabels {
                reason: MalformedReason::from(e),
            })
            .inc();
        crate::rate_limited!(warn, session = info.id, peer = %info.peer, transport = %info.transport, error = %e, "malformed IPFIX message; closing the session");
    }

    fn closed(&self, reason: CloseReason) {
        self.metrics
            .sessions_closed
            .get_or_create(&CloseLabels { reason })
            .inc();
    }

    /// Admits a connection from `peer`, or says why not (module docs).
    fn admit(&self, id: SessionId, peer: IpAddr) -> Result<Admitted, RejectReason> {
        let limits = &self.cfg.limits;
        let now = self.millis();
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if reg.per_addr.get(&peer).copied().unwrap_or(0) >= limits.max_sessions_per_address {
            return Err(RejectReason::PerAddress);
        }
        let giving_way = reg.sessions.values().filter(|s| s.evicting).count();
        if reg.sessions.len() - giving_way >= limits.max_sessions {
            let min_idle = limits.evict_idle_after.as_millis() as u64;
            // The idlest; of two idle since the same millisecond, the one admitted first (ids
            // grow), so the choice never depends on the table's order.
            let victim = reg
                .sessions
                .iter_mut()
                .filter(|(_, s)| !s.evicting)
                .map(|(id, s)| ((s.last_active.load(Ordering::Relaxed), *id), s))
                .filter(|((t, _), _)| now.saturating_sub(*t) >= min_idle)
                .min_by_key(|(k, _)| *k);
            match victim {
                Some((_, s)) => {
                    // Counted when the session ends (`CloseReason::Evicted`).
                    s.evicting = true;
                    s.stop.cancel();
                }
                None => return Err(RejectReason::Full),
            }
        }
        let slot = Slot {
            peer,
            last_active: Arc::new(AtomicU64::new(now)),
            stop: CancellationToken::new(),
            evicting: false,
        };
        let admitted = Admitted {
            last_active: slot.last_active.clone(),
            stop: slot.stop.clone(),
        };
        reg.sessions.insert(id, slot);
        *reg.per_addr.entry(peer).or_default() += 1;
        Ok(admitted)
    }

    fn leave(&self, id: SessionId) {
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = reg.sessions.remove(&id)
            && let Some(n) = reg.per_addr.get_mut(&s.peer)
        {
            *n -= 1;
            if *n == 0 {
                reg.per_addr.remove(&s.peer);
            }
        }
    }

    /// Accounts a session's template bytes going from `was` to `now`; `true` when the session
    /// must close: all sessions are over `max_template_bytes` and this one over its share.
    fn templates(&self, was: usize, now: usize) -> bool {
        if was == now {
            return false;
        }
        if now > was {
            self.template_bytes.fetch_add(now - was, Ordering::Relaxed);
        } else {
            self.template_bytes.fetch_sub(was - now, Ordering::Relaxed);
        }
        match (was, now) {
            (0, _) => {
                self.template_holders.fetch_add(1, Ordering::Relaxed);
            }
            (_, 0) => {
                self.template_holders.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        let total = self.template_bytes.load(Ordering::Relaxed);
        self.metrics.template_bytes.set(total as i64);
        let max = self.cfg.limits.max_template_bytes;
        let holders = self.template_holders.load(Ordering::Relaxed).max(1);
        total > max && now > max / holders
    }
}

/// What an admitted session gets.
struct Admitted {
    last_active: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// Keeps `sessions_open`, the registry and the template accounting right however a session
/// ends.
struct SessionGuard {
    shared: Arc<Shared>,
    id: Option<SessionId>,
    template_bytes: usize,
}

impl SessionGuard {
    fn new(shared: &Arc<Shared>, id: Option<SessionId>) -> Self {
        shared.metrics.sessions_open.inc();
        SessionGuard {
            shared: shared.clone(),
            id,
            template_bytes: 0,
        }
    }

    /// After a decode: whether the session must close for the template budget.
    fn templates(&mut self, now: usize) -> bool {
        let was = std::mem::replace(&mut self.template_bytes, now);
        self.shared.templates(was, now)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.shared.metrics.sessions_open.dec();
        self.shared.templates(self.template_bytes, 0);
        if let Some(id) = self.id {
            self.shared.leave(id);
        }
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
    /// Sessions hand their messages to `queue` (see [`queue`]).
    pub async fn bind(
        cfg: CollectorConfig,
        metrics: CollectorMetrics,
        queue: FairQueue<DecodedMessage>,
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
        Ok(Collector {
            shared: Arc::new(Shared {
                cfg,
                metrics,
                queue,
                next_id: AtomicU64::new(1),
                registry: Mutex::new(Registry {
                    sessions: HashMap::new(),
                    per_addr: HashMap::new(),
                }),
                template_bytes: AtomicUsize::new(0),
                template_holders: AtomicUsize::new(0),
                epoch: Instant::now(),
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
                        crate::rate_limited!(warn, %transport, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                let admitted = match shared.admit(id, peer.ip()) {
                    Ok(a) => a,
                    Err(reason) => {
                        shared.metrics.sessions_rejected.get_or_create(&RejectLabels { reason }).inc();
                        crate::rate_limited!(warn, %peer, %transport, ?reason, max = shared.cfg.limits.max_sessions, per_address = shared.cfg.limits.max_sessions_per_address, "IPFIX session refused; closing the new connection");
                        continue;
                    }
                };
                let info = shared.session_with_id(id, peer, transport);
                let _ = sock.set_nodelay(true);
                let span = tracing::info_span!("ipfix_session", id = info.id, %peer, %transport);
                let tls = tls.as_ref().map(|c| c.borrow().clone());
                sessions.spawn(
                    stream_session(sock, tls, info, admitted, shared.clone(), shutdown.clone())
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
    admitted: Admitted,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let mut guard = SessionGuard::new(&shared, Some(info.id));
    tracing::debug!("session open");
    let queue = shared.queue.session();
    let mut ctx = StreamCtx {
        info: &info,
        shared: &shared,
        queue: &queue,
        admitted: &admitted,
        guard: &mut guard,
    };
    let end = match tls {
        None => read_stream(sock, &mut ctx, &shutdown).await,
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let hs = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = admitted.stop.cancelled() => return,
                r = tokio::time::timeout(shared.cfg.limits.handshake_timeout, acceptor.accept(sock)) => r,
            };
            match hs {
                Ok(Ok(s)) => read_stream(s, &mut ctx, &shutdown).await,
                Ok(Err(e)) => {
                    shared.metrics.tls_handshake_failures.inc();
                    crate::rate_limited!(warn, peer = %info.peer, error = %e, "TLS handshake failed; closing the connection");
                    return;
                }
                Err(_) => {
                    shared.metrics.tls_handshake_failures.inc();
                    crate::rate_limited!(warn, peer = %info.peer, timeout = ?shared.cfg.limits.handshake_timeout, "TLS handshake not finished in time; closing the connection");
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
        StreamEnd::Closed(reason) => {
            shared.closed(reason);
            crate::rate_limited!(info, peer = %info.peer, ?reason, "IPFIX session closed");
        }
    }
}

enum StreamEnd {
    Eof,
    Shutdown,
    ConsumerGone,
    Truncated(usize),
    Io(std::io::Error),
    Malformed(DecodeError),
    /// Closed by the collecting process (admission, deadlines, budget).
    Closed(CloseReason),
}

/// What a stream session reads with.
struct StreamCtx<'a> {
    info: &'a SessionInfo,
    shared: &'a Shared,
    queue: &'a SessionQueue<DecodedMessage>,
    admitted: &'a Admitted,
    guard: &'a mut SessionGuard,
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

/// Bytes a read asks for when nothing says how much more is coming.
const READ_CHUNK: usize = 16 << 10;

/// The length a message header at the front of `buf` declares, once its 4 bytes are in.
fn declared_len(buf: &[u8]) -> Option<usize> {
    (buf.len() >= 4).then(|| u16::from_be_bytes([buf[2], buf[3]]) as usize)
}

/// Why a session is winding down: it reads on and hands over whole messages until the exporter
/// closes or `until`, then ends with `end`.
struct Closing {
    until: tokio::time::Instant,
    end: fn() -> StreamEnd,
}

async fn read_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    ctx: &mut StreamCtx<'_>,
    shutdown: &CancellationToken,
) -> StreamEnd {
    use tokio::time::Instant as TokioInstant;
    let shared = ctx.shared;
    let limits = shared.cfg.limits;
    let mut dec = SessionDecoder::new(DecoderConfig {
        template_lifetime: None,
        ..shared.cfg.decoder.clone()
    });
    // Grows with what arrives: an idle session holds little.
    let mut buf = BytesMut::new();
    let mut partial_since: Option<TokioInstant> = None;
    let mut last_complete = TokioInstant::now();
    let mut closing: Option<Closing> = None;
    // The last read filled the buffer: data is streaming in, read in large chunks.
    let mut streaming = false;
    loop {
        let mut completed = false;
        loop {
            let frame = match next_frame(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return StreamEnd::Malformed(e),
            };
            completed = true;
            let msg = match dec.decode(ctx.info, frame, &shared.metrics) {
                Ok(m) => m,
                Err(e) => return StreamEnd::Malformed(e),
            };
            if ctx.guard.templates(dec.decoder.template_bytes()) {
                return StreamEnd::Closed(CloseReason::TemplateBudget);
            }
            last_complete = TokioInstant::now();
            ctx.admitted
                .last_active
                .store(shared.millis(), Ordering::Relaxed);
            if msg.is_empty() {
                continue;
            }
            // Waiting here is the back-pressure: no read until this session's queue has room.
            if ctx.queue.send(msg).await.is_err() {
                return StreamEnd::ConsumerGone;
            }
            // Waiting for the consumer is not idleness.
            ctx.admitted
                .last_active
                .store(shared.millis(), Ordering::Relaxed);
        }
        if buf.is_empty() {
            partial_since = None;
        } else if completed {
            partial_since = Some(TokioInstant::now());
        }
        // Shutdown, eviction, idleness: close our sending side (TLS: close_notify) so the
        // exporter sees the end and stops writing, then read on what it already wrote.
        let wind_down = if closing.is_some() {
            None
        } else if shutdown.is_cancelled() {
            Some((
                StreamEnd::shutdown as fn() -> StreamEnd,
                limits.drain_timeout,
            ))
        } else if ctx.admitted.stop.is_cancelled() {
            Some((
                StreamEnd::evicted as fn() -> StreamEnd,
                limits.drain_timeout,
            ))
        } else {
            None
        };
        if let Some((end, drain)) = wind_down {
            let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
            closing = Some(Closing {
                until: TokioInstant::now() + drain,
                end,
            });
        }
        let want = declared_len(&buf)
            .map_or(0, |n| n.saturating_sub(buf.len()))
            .max(if streaming {
                2 * MAX_MESSAGE
            } else {
                READ_CHUNK
            });
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        let spare = buf.capacity() - buf.len();
        let deadline = match (&closing, partial_since) {
            (Some(c), _) => c.until,
            (None, Some(p)) => p + limits.message_timeout,
            (None, None) => last_complete + limits.idle_timeout,
        };
        tokio::select! {
            biased;
            _ = ctx.admitted.stop.cancelled(), if closing.is_none() => {}
            _ = shutdown.cancelled(), if closing.is_none() => {}
            _ = tokio::time::sleep_until(deadline) => {
                return match (closing, partial_since) {
                    (Some(c), _) => (c.end)(),
                    (None, Some(_)) => StreamEnd::Closed(CloseReason::MessageTimeout),
                    (None, None) => {
                        // Idle: wind down like an eviction, so nothing in flight is lost.
                        let _ = tokio::time::timeout(Duration::from_secs(1), s.shutdown()).await;
                        closing = Some(Closing {
                            until: TokioInstant::now() + limits.drain_timeout,
                            end: StreamEnd::idle,
                        });
                        continue;
                    }
                };
            }
            r = s.read_buf(&mut buf) => match r {
                Ok(0) if buf.is_empty() => {
                    return closing.map_or(StreamEnd::Eof, |c| (c.end)());
                }
                Ok(0) => return StreamEnd::Truncated(buf.len()),
                Ok(n) => {
                    streaming = n == spare;
                    partial_since = partial_since.or(Some(TokioInstant::now()));
                }
                Err(e) => return closing.map_or(StreamEnd::Io(e), |c| (c.end)()),
            }
        }
    }
}

impl StreamEnd {
    fn shutdown() -> StreamEnd {
        StreamEnd::Shutdown
    }
    fn evicted() -> StreamEnd {
        StreamEnd::Closed(CloseReason::Evicted)
    }
    fn idle() -> StreamEnd {
        StreamEnd::Closed(CloseReason::IdleTimeout)
    }
}

/// One UDP exporter (address and port).
struct UdpSession {
    info: SessionInfo,
    dec: SessionDecoder,
    queue: SessionQueue<DecodedMessage>,
    /// Its key in the idleness order.
    seq: u64,
    last_seen: Instant,
    guard: SessionGuard,
}

/// The UDP exporters tracked: by address, in idleness order (oldest datagram first), and per
/// source IP.
struct UdpSessions {
    by_addr: HashMap<SocketAddr, UdpSession>,
    order: BTreeMap<u64, SocketAddr>,
    per_ip: HashMap<IpAddr, Vec<SocketAddr>>,
    seq: u64,
}

impl UdpSessions {
    fn touch(&mut self, peer: SocketAddr) -> Option<&mut UdpSession> {
        let s = self.by_addr.get_mut(&peer)?;
        self.order.remove(&s.seq);
        self.seq += 1;
        s.seq = self.seq;
        s.last_seen = Instant::now();
        self.order.insert(s.seq, peer);
        Some(s)
    }

    fn insert(&mut self, peer: SocketAddr, mut s: UdpSession) {
        self.seq += 1;
        s.seq = self.seq;
        self.order.insert(s.seq, peer);
        self.per_ip.entry(peer.ip()).or_default().push(peer);
        self.by_addr.insert(peer, s);
    }

    fn remove(&mut self, peer: &SocketAddr) -> Option<UdpSession> {
        let s = self.by_addr.remove(peer)?;
        self.order.remove(&s.seq);
        if let Some(v) = self.per_ip.get_mut(&peer.ip()) {
            v.retain(|p| p != peer);
            if v.is_empty() {
                self.per_ip.remove(&peer.ip());
            }
        }
        Some(s)
    }

    /// The session seen least recently, of `ip` or of all.
    fn idlest(&self, ip: Option<IpAddr>) -> Option<SocketAddr> {
        match ip {
            None => self.order.values().next().copied(),
            Some(ip) => self
                .per_ip
                .get(&ip)?
                .iter()
                .min_by_key(|p| self.by_addr.get(p).map_or(0, |s| s.seq))
                .copied(),
        }
    }
}

async fn udp_loop(sock: UdpSocket, shared: Arc<Shared>, shutdown: CancellationToken) {
    let limits = shared.cfg.limits;
    let lifetime = shared.cfg.udp_template_refresh.saturating_mul(3);
    let dcfg = DecoderConfig {
        template_lifetime: Some(lifetime),
        ..shared.cfg.decoder.clone()
    };
    let mut sessions = UdpSessions {
        by_addr: HashMap::new(),
        order: BTreeMap::new(),
        per_ip: HashMap::new(),
        seq: 0,
    };
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut sweep =
        tokio::time::interval(lifetime.clamp(Duration::from_secs(1), Duration::from_secs(60)));
    let evicted = |reason| {
        shared
            .metrics
            .udp_sessions_evicted
            .get_or_create(&UdpEvictLabels { reason })
            .inc();
    };
    loop {
        let (n, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sweep.tick() => {
                // An exporter silent for a whole template lifetime has nothing left to decode.
                let stale: Vec<SocketAddr> = sessions
                    .order
                    .values()
                    .copied()
                    .take_while(|p| sessions.by_addr.get(p).is_some_and(|s| s.last_seen.elapsed() >= lifetime))
                    .collect();
                for p in stale {
                    if let Some(s) = sessions.remove(&p) {
                        forget_exporter(&shared, &s.info);
                    }
                }
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
        if sessions.touch(peer).is_none() {
            // A new exporter always gets a slot: its address's idlest session gives way when
            // that address has its share, else the idlest of all when the table is full.
            let victim = if sessions.per_ip.get(&peer.ip()).map_or(0, Vec::len)
                >= limits.max_sessions_per_address
            {
                evicted(UdpEvictReason::PerAddress);
                sessions.idlest(Some(peer.ip()))
            } else if sessions.by_addr.len() >= limits.max_sessions {
                evicted(UdpEvictReason::Full);
                sessions.idlest(None)
            } else {
                None
            };
            if let Some(v) = victim
                && let Some(s) = sessions.remove(&v)
            {
                forget_exporter(&shared, &s.info);
            }
            let info = shared.session(peer, Transport::Udp);
            tracing::debug!(session = info.id, %peer, "UDP session open");
            sessions.insert(
                peer,
                UdpSession {
                    info,
                    dec: SessionDecoder::new(dcfg.clone()),
                    queue: shared.queue.session(),
                    seq: 0,
                    last_seen: Instant::now(),
                    guard: SessionGuard::new(&shared, None),
                },
            );
        }
        let Some(s) = sessions.by_addr.get_mut(&peer) else {
            continue;
        };
        // One copy of exactly the datagram, so the buffer is reused for the next one.
        let bytes = Bytes::copy_from_slice(&buf[..n]);
        let result = s.dec.decode(&s.info, bytes, &shared.metrics);
        let over_budget = s.guard.templates(s.dec.decoder.template_bytes());
        match result {
            Ok(m) if m.is_empty() => {}
            Ok(m) => {
                let records = m.len() as u64;
                match s.queue.try_send(m) {
                    Ok(()) => {}
                    Err(Refused::Full) => {
                        shared
                            .metrics
                            .udp_dropped_messages
                            .get_or_create(&UdpDropLabels {
                                reason: UdpDropReason::QueueFull,
                            })
                            .inc();
                        shared.metrics.udp_dropped_records.inc_by(records);
                        shared
                            .metrics
                            .exporter_dropped_records
                            .get_or_create(&exporter_label(&s.info))
                            .inc_by(records);
                    }
                    Err(Refused::Closed) => return,
                }
            }
            Err(e) => {
                let info = s.info;
                shared.malformed(&info, &e);
                if let Some(s) = sessions.remove(&peer) {
                    forget_exporter(&shared, &s.info);
                }
                continue;
            }
        }
        if over_budget {
            evicted(UdpEvictReason::TemplateBudget);
            if let Some(s) = sessions.remove(&peer) {
                forget_exporter(&shared, &s.info);
            }
        }
    }
}

fn exporter_label(info: &SessionInfo) -> ExporterLabels {
    ExporterLabels {
        exporter: info.peer.to_string(),
    }
}

/// A UDP exporter's session is gone: so is its per-exporter series.
fn forget_exporter(shared: &Shared, info: &SessionInfo) {
    shared
        .metrics
        .exporter_dropped_records
        .remove(&exporter_label(info));
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
