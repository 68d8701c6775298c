//! The IPFIX exporting process's transport: one actor task keeps a session to a collector up and
//! writes the messages the caller queues, in order, reporting for each whether it was written.
//!
//! ## How a caller uses it
//! ```text
//! let (exporter, mut outcomes, _task) = Exporter::spawn(cfg, metrics, shutdown);
//! let mut tracker = exporter.tracker();
//! loop {
//!     select! {
//!         Some(o) = outcomes.recv() => if o.result.is_ok() { ack(o.tag) } else { nack(o.tag) },
//!         _ = tick => {
//!             // Resets the encoder on a new session; hands back messages built for the old one.
//!             let Some(session) = tracker.sync(&mut enc, |stale| nack_message(stale)) else {
//!                 continue; // no session: leave the records with the exporter core
//!             };
//!             write records into enc; enc.flush(now);
//!             while let Some(msg) = enc.poll_transmit() {
//!                 if exporter.try_send(session, tag, msg).is_err() { nack(tag) }
//!             }
//!         }
//!     }
//! }
//! ```
//! Every message is stamped with the session it was built for. The actor writes a message only
//! on that session; one built for a session that has ended is failed unwritten
//! ([`SendError::SessionEnded`]), because on a new session it would arrive before the templates
//! and with sequence numbers from the old one. [`SessionTracker::sync`] notices a new session,
//! takes the finished messages the encoder still holds for the old one out of the way, and calls
//! `Encoder::reset_session()` (templates re-sent, sequence restarted) — so templates always lead
//! a session.
//!
//! Over UDP a "session" is one connected socket; it ends when a send fails (an ICMP
//! port-unreachable comes back as the next send's error). Template refresh stays the encoder's
//! job (`EncoderConfig::datagram`, driven by `Encoder::poll_timeout`/`handle_timeout` in the
//! caller's loop), since only the encoder knows when it last sent them.
//!
//! ## Delivery guarantee
//! `Ok` means the whole message was handed to the kernel (TCP/TLS: written; UDP: sent as one
//! datagram). It does not mean the collector received it: IPFIX has no acknowledgements, and a
//! collector that dies with data in its socket buffers loses it. The actor watches the
//! connection for the collector's close (a read returning EOF or an error), so the window is the
//! data written between the collector's death and the moment the FIN or RST arrives. Every
//! message that was not completely written is reported as an error — a disconnect before or
//! during the write, no session, a full queue, shutdown — so the caller re-exports its delta
//! (flowcore's exporter core keeps deltas until acknowledged). Records carry totals as well as
//! deltas, so even the TCP window costs a collector deltas, not totals.
//!
//! ## Bounds
//! The queue holds at most `queue_capacity` messages; [`Exporter::try_send`] refuses more
//! (counted in `queue_drops`) instead of growing, and the caller nacks. Outcomes go through a
//! channel of the same capacity plus one, so every queued message can report without blocking
//! the actor on a slow reader for long.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use flowcore::config::{CollectorAddr, Transport};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backoff::{Backoff, BackoffConfig};
use super::metrics::ExporterMetrics;

/// Where and how to export.
#[derive(Clone, Debug)]
pub struct ExporterConfig {
    /// Resolved anew on every connect, so a moved Service or DNS change is followed.
    pub addr: CollectorAddr,
    /// The transport to use (see `CollectorAddr::agent_transport` for how the agent picks it).
    pub transport: Transport,
    /// Client configuration for TLS, read anew on every connect so reloaded certificates apply
    /// to the next session (see [`super::tls::watch_client_config`]).
    pub tls: Option<watch::Receiver<Arc<ClientConfig>>>,
    /// The name the collector's certificate must carry; the address's host when `None`.
    pub server_name: Option<String>,
    pub queue_capacity: usize,
    pub backoff: BackoffConfig,
    /// Seed of the jitter; `None` draws one per process.
    pub backoff_seed: Option<u64>,
    pub connect_timeout: Duration,
    /// How long shutdown may spend writing what is queued.
    pub drain_timeout: Duration,
}

impl ExporterConfig {
    pub fn new(addr: CollectorAddr, transport: Transport) -> Self {
        ExporterConfig {
            addr,
            transport,
            tls: None,
            server_name: None,
            queue_capacity: 1024,
            backoff: BackoffConfig::default(),
            backoff_seed: None,
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// A session to the collector; a new one after every reconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// The session state callers watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionState {
    /// The session messages can be built for now, if one is up.
    pub current: Option<SessionId>,
    /// Why the last connect attempt or session failed, for logs and tests.
    pub last_error: Option<String>,
}

/// Why a message was not written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("send queue full ({capacity} messages)")]
    QueueFull { capacity: usize },
    #[error("message built for session {built_for:?}, which has ended")]
    SessionEnded { built_for: SessionId },
    #[error("write failed: {0}")]
    Write(String),
    #[error("exporter shut down")]
    Shutdown,
}

/// What became of one queued message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The caller's tag from [`Exporter::try_send`].
    pub tag: u64,
    pub result: Result<(), SendError>,
}

struct Outgoing {
    session: SessionId,
    tag: u64,
    msg: Bytes,
}

/// The caller's handle on the actor. Cheap to clone.
#[derive(Clone)]
pub struct Exporter {
    tx: mpsc::Sender<Outgoing>,
    state: watch::Receiver<SessionState>,
    metrics: ExporterMetrics,
    capacity: usize,
}

impl Exporter {
    /// Starts the actor. It runs until `shutdown` is cancelled (then writes what is queued, for
    /// at most `drain_timeout`, and closes the session) or every handle is dropped.
    pub fn spawn(
        cfg: ExporterConfig,
        metrics: ExporterMetrics,
        shutdown: CancellationToken,
    ) -> (Exporter, mpsc::Receiver<Outcome>, JoinHandle<()>) {
        let capacity = cfg.queue_capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let (out_tx, out_rx) = mpsc::channel(capacity + 1);
        let (state_tx, state) = watch::channel(SessionState {
            current: None,
            last_error: None,
        });
        let seed = cfg.backoff_seed.unwrap_or_else(Backoff::random_seed);
        let span =
            tracing::info_span!("ipfix_export", collector = %cfg.addr, transport = %cfg.transport);
        let actor = Actor {
            backoff: Backoff::new(cfg.backoff, seed),
            cfg,
            metrics: metrics.clone(),
            rx,
            outcomes: out_tx,
            state: state_tx,
            next_session: 1,
            in_flight: None,
            retry_at: tokio::time::Instant::now(),
        };
        let task = tokio::spawn(actor.run(shutdown).instrument(span));
        (
            Exporter {
                tx,
                state,
                metrics,
                capacity,
            },
            out_rx,
            task,
        )
    }

    /// Queues `msg`, built for `session`, under the caller's `tag`; its [`Outcome`] follows on
    /// the outcomes channel. An error here means it was not queued (no outcome will follow).
    pub fn try_send(&self, session: SessionId, tag: u64, msg: Bytes) -> Result<(), SendError> {
        self.tx
            .try_send(Outgoing { session, tag, msg })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.metrics.queue_drops.inc();
                    SendError::QueueFull {
                        capacity: self.capacity,
                    }
                }
                mpsc::error::TrySendError::Closed(_) => SendError::Shutdown,
            })
    }

    /// Queues `msg`, waiting for room instead of failing when the queue is full.
    pub async fn send(&self, session: SessionId, tag: u64, msg: Bytes) -> Result<(), SendError> {
        self.tx
            .send(Outgoing { session, tag, msg })
            .await
            .map_err(|_| SendError::Shutdown)
    }

    /// A tracker that resets an encoder on every new session.
    pub fn tracker(&self) -> SessionTracker {
        SessionTracker {
            state: self.state.clone(),
            encoder_session: None,
        }
    }

    /// The session state; `changed()` wakes on every new session and every loss.
    pub fn sessions(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }

    /// The current session, if one is up.
    pub fn session(&self) -> Option<SessionId> {
        self.state.borrow().current
    }

    /// Waits until a session other than `after` is up.
    pub async fn wait_session(&self, after: Option<SessionId>) -> Result<SessionId, SendError> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| s.current.is_some() && s.current != after)
            .await
            .map_err(|_| SendError::Shutdown)?;
        state.current.ok_or(SendError::Shutdown)
    }
}

/// Keeps an encoder in step with the exporter's sessions (module docs).
pub struct SessionTracker {
    state: watch::Receiver<SessionState>,
    encoder_session: Option<SessionId>,
}

impl SessionTracker {
    /// The session to stamp new messages with, `None` while no session is up. When a session
    /// came up since the encoder's last one, first hands every finished message the encoder
    /// still holds to `stale` (built for the old session: the caller fails their records) and
    /// resets the encoder's session, so its next message carries the templates.
    pub fn sync(
        &mut self,
        enc: &mut flowcore::ipfix::Encoder,
        mut stale: impl FnMut(Bytes),
    ) -> Option<SessionId> {
        let current = self.state.borrow_and_update().current?;
        if self.encoder_session != Some(current) {
            while let Some(m) = enc.poll_transmit() {
                stale(m);
            }
            enc.reset_session();
            self.encoder_session = Some(current);
        }
        Some(current)
    }

    /// Waits until the session state changes (a session comes up or is lost).
    pub async fn changed(&mut self) -> Result<(), SendError> {
        self.state.changed().await.map_err(|_| SendError::Shutdown)
    }
}

/// An established session's write side, and a task that reports the collector closing it.
struct Conn {
    id: SessionId,
    writer: Writer,
    closed: tokio::sync::oneshot::Receiver<String>,
    reader: JoinHandle<()>,
    /// When the session came up.
    since: tokio::time::Instant,
}

enum Writer {
    Stream(Box<dyn AsyncWrite + Send + Unpin>),
    Udp(UdpSocket),
}

impl Writer {
    async fn write(&mut self, msg: &[u8]) -> std::io::Result<()> {
        match self {
            Writer::Stream(w) => {
                w.write_all(msg).await?;
                // TLS buffers records until flushed; for plain TCP this is a no-op.
                w.flush().await
            }
            Writer::Udp(s) => {
                let n = s.send(msg).await?;
                if n != msg.len() {
                    return Err(std::io::Error::other(format!(
                        "datagram truncated: {n} of {} bytes sent",
                        msg.len()
                    )));
                }
                Ok(())
            }
        }
    }

    async fn close(&mut self) {
        if let Writer::Stream(w) = self {
            // Sends TLS close_notify / TCP FIN; the collector then drains and closes too. A
            // collector that reads nothing would block the close_notify forever; dropping the
            // socket after a moment closes it anyway.
            let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
        }
    }
}

struct Actor {
    cfg: ExporterConfig,
    metrics: ExporterMetrics,
    backoff: Backoff,
    rx: mpsc::Receiver<Outgoing>,
    outcomes: mpsc::Sender<Outcome>,
    state: watch::Sender<SessionState>,
    next_session: u64,
    /// The tag being written during the shutdown drain, to report it if the drain is cut off.
    in_flight: Option<u64>,
    /// No connection attempt before this (backoff after a failed connect or a lost session).
    retry_at: tokio::time::Instant,
}

impl Actor {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut conn: Option<Conn> = None;
        loop {
            if conn.is_none() && tokio::time::Instant::now() >= self.retry_at {
                let attempt = tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    r = self.connect() => r,
                };
                match attempt {
                    Ok(c) => {
                        tracing::info!(session = c.id.0, "connected to the collector");
                        self.metrics.sessions.inc();
                        self.metrics.session_up.set(1);
                        self.state.send_replace(SessionState {
                            current: Some(c.id),
                            last_error: None,
                        });
                        conn = Some(c);
                    }
                    Err(e) => {
                        let delay = self.backoff.next_delay();
                        let msg = format!("{e:#}");
                        tracing::warn!(error = %msg, retry_in = ?delay, "cannot connect to the collector");
                        self.metrics.connect_failures.inc();
                        self.state.send_modify(|s| s.last_error = Some(msg));
                        self.retry_at = tokio::time::Instant::now() + delay;
                    }
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                reason = async { (&mut conn.as_mut()?.closed).await.ok() }, if conn.is_some() => {
                    let reason = reason.unwrap_or_else(|| "reader stopped".into());
                    self.lose(&mut conn, format!("collector closed the session: {reason}")).await;
                }
                m = self.rx.recv() => {
                    let Some(m) = m else { break };
                    self.write(&mut conn, m).await;
                }
                _ = tokio::time::sleep_until(self.retry_at), if conn.is_none() => {}
            }
        }
        self.drain(&mut conn).await;
    }

    /// Writes `m` on its session, or fails it.
    async fn write(&mut self, conn: &mut Option<Conn>, m: Outgoing) {
        let result = match conn.as_mut() {
            Some(c) if c.id == m.session => match c.writer.write(&m.msg).await {
                Ok(()) => {
                    self.metrics.messages_sent.inc();
                    self.metrics.bytes_sent.inc_by(m.msg.len() as u64);
                    Ok(())
                }
                Err(e) => {
                    let err = SendError::Write(e.to_string());
                    self.lose(conn, format!("write failed: {e}")).await;
                    Err(err)
                }
            },
            _ => Err(SendError::SessionEnded {
                built_for: m.session,
            }),
        };
        self.report(m.tag, result).await;
    }

    async fn report(&mut self, tag: u64, result: Result<(), SendError>) {
        if result.is_err() {
            self.metrics.messages_failed.inc();
        }
        // A caller that dropped the outcomes receiver does not care; nothing to do then.
        let _ = self.outcomes.send(Outcome { tag, result }).await;
    }

    /// Ends the current session after an error; the next connect waits out the backoff.
    async fn lose(&mut self, conn: &mut Option<Conn>, why: String) {
        if let Some(mut c) = conn.take() {
            c.reader.abort();
            c.writer.close().await;
            tracing::warn!(session = c.id.0, reason = %why, "session to the collector lost");
            // A session that lasted proved the peer works: back off from scratch. One that the
            // collector closed at once (a refused certificate: TLS 1.3 finishes client-side
            // before the server's alert) must not be retried in a tight loop.
            if c.since.elapsed() >= Duration::from_secs(30) {
                self.backoff.reset();
            }
        }
        self.retry_at = tokio::time::Instant::now() + self.backoff.next_delay();
        self.metrics.disconnects.inc();
        self.metrics.session_up.set(0);
        self.state.send_replace(SessionState {
            current: None,
            last_error: Some(why),
        });
    }

    async fn connect(&mut self) -> Result<Conn> {
        let id = SessionId(self.next_session);
        let host_port = self.cfg.addr.host_port();
        let timeout = self.cfg.connect_timeout;
        let (writer, reader): (Writer, Box<dyn AsyncRead + Send + Unpin>) =
            tokio::time::timeout(timeout, async {
                match self.cfg.transport {
                    Transport::Udp => {
                        let peer = tokio::net::lookup_host(&host_port)
                            .await
                            .with_context(|| format!("resolving {host_port}"))?
                            .next()
                            .ok_or_else(|| anyhow!("{host_port} resolves to no address"))?;
                        let local: std::net::SocketAddr = if peer.is_ipv4() {
                            ([0, 0, 0, 0], 0).into()
                        } else {
                            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                        };
                        let s = UdpSocket::bind(local).await.context("binding a UDP socket")?;
                        s.connect(peer)
                            .await
                            .with_context(|| format!("connecting UDP to {peer}"))?;
                        // Nothing to read on UDP; the reader is a stream that never ends.
                        let never: Box<dyn AsyncRead + Send + Unpin> = Box::new(tokio::io::empty());
                        Ok::<_, anyhow::Error>((Writer::Udp(s), never))
                    }
                    Transport::Tcp => {
                        let s = TcpStream::connect(&host_port)
                            .await
                            .with_context(|| format!("connecting to {host_port}"))?;
                        let _ = s.set_nodelay(true);
                        let (r, w) = s.into_split();
                        Ok((Writer::Stream(Box::new(w)), Box::new(r) as _))
                    }
                    Transport::Tls => {
                        let cfg = self
                            .cfg
                            .tls
                            .as_ref()
                            .ok_or_else(|| anyhow!("TLS export needs a client configuration (CA, certificate and key files)"))?
                            .borrow()
                            .clone();
                        let name_text = self
                            .cfg
                            .server_name
                            .clone()
                            .unwrap_or_else(|| self.cfg.addr.host.to_string());
                        let name = super::tls::server_name(&name_text)?;
                        let s = TcpStream::connect(&host_port)
                            .await
                            .with_context(|| format!("connecting to {host_port}"))?;
                        let _ = s.set_nodelay(true);
                        let tls = tokio_rustls::TlsConnector::from(cfg)
                            .connect(name, s)
                            .await
                            .with_context(|| format!("TLS handshake with {host_port} (as {name_text})"))?;
                        let (r, w) = tokio::io::split(tls);
                        Ok((Writer::Stream(Box::new(w)), Box::new(r) as _))
                    }
                }
            })
            .await
            .map_err(|_| anyhow!("connecting to {host_port}: no answer within {timeout:?}"))??;
        self.next_session += 1;
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let udp = self.cfg.transport == Transport::Udp;
        let reader = tokio::spawn(async move {
            if udp {
                // tokio::io::empty() reads EOF at once; a UDP session ends only on write errors.
                return std::future::pending::<()>().await;
            }
            let why = watch_close(reader).await;
            let _ = closed_tx.send(why);
        });
        Ok(Conn {
            id,
            writer,
            closed,
            reader,
            since: tokio::time::Instant::now(),
        })
    }

    /// On shutdown: writes what is queued on the current session and reports each outcome, all
    /// within `drain_timeout`; past it, fails the rest without waiting on the caller, and closes.
    async fn drain(&mut self, conn: &mut Option<Conn>) {
        self.rx.close();
        let deadline = tokio::time::Instant::now() + self.cfg.drain_timeout;
        let finished = tokio::time::timeout_at(deadline, async {
            while let Some(m) = self.rx.recv().await {
                self.in_flight = Some(m.tag);
                self.write(conn, m).await;
                self.in_flight = None;
            }
        })
        .await
        .is_ok();
        if !finished {
            // Possibly cut off mid-write: the collector may hold part of a message, so the
            // session cannot carry anything else. A caller that stopped reading outcomes gets
            // what still fits.
            tracing::warn!(timeout = ?self.cfg.drain_timeout, "shutdown drain timed out; failing what is left");
            self.lose(conn, "shutdown drain timed out".into()).await;
            let left = self
                .in_flight
                .take()
                .into_iter()
                .chain(std::iter::from_fn(|| {
                    self.rx.try_recv().ok().map(|m| m.tag)
                }));
            for tag in left.collect::<Vec<_>>() {
                self.metrics.messages_failed.inc();
                let _ = self.outcomes.try_send(Outcome {
                    tag,
                    result: Err(SendError::Shutdown),
                });
            }
        }
        if let Some(mut c) = conn.take() {
            c.reader.abort();
            c.writer.close().await;
        }
        self.metrics.session_up.set(0);
        self.state.send_replace(SessionState {
            current: None,
            last_error: Some("shut down".into()),
        });
    }
}

/// Reads until the collector closes the connection; IPFIX collectors send nothing, so any
/// end — EOF, a TLS alert such as a rejected client certificate, a reset — is the reason.
async fn watch_close(mut r: Box<dyn AsyncRead + Send + Unpin>) -> String {
    let mut buf = [0u8; 512];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => return "closed by the collector".into(),
            Ok(_) => continue,
            Err(e) => return e.to_string(),
        }
    }
}
