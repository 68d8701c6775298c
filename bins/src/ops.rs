//! Operations endpoints every flowlens process serves: `/metrics` (Prometheus text format from a
//! prometheus-client registry), `/healthz` (the process is running), `/readyz` (ready to do its
//! job: initial metadata listed, listeners bound). Components register their metrics into the
//! shared registry at start-up; other routes (such as the aggregator's `/api/flows`) are merged
//! into the same server.
//!
//! [`HttpServer`] is the one HTTP server every flowlens listener runs on (the collector's API and
//! UI, the agent's and aggregator's metrics port). It owns what one hostile client could exhaust
//! and bounds each with an [`HttpLimits`] key: open connections (past `maxConnections` a new one
//! is closed at accept), the time to send a request's headers (hyper's header read timeout,
//! which also closes idle keep-alive connections), a response write that makes no progress, the
//! time to answer, the request body, and requests handled at once (past
//! `maxConcurrentRequests` the answer is 503 with `Retry-After`, never a queue). Every refusal
//! is counted by reason in `http_refused_total`. The probes (`/healthz`, `/readyz`, `/metrics`)
//! are exempt from the request cap so an overloaded server still reports itself alive.
//! Binding is separate from serving ([`HttpServer::bind`]) so a port in use fails start-up with
//! the config key named, before the process reports running.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Shared by the process's components.
pub struct Ops {
    registry: std::sync::Mutex<Registry>,
    ready: AtomicBool,
}

impl Ops {
    pub fn new(prefix: &str) -> Arc<Ops> {
        Arc::new(Ops {
            registry: std::sync::Mutex::new(Registry::with_prefix(prefix)),
            ready: AtomicBool::new(false),
        })
    }

    /// Registers metrics; `f` gets the registry.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        let mut r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut r);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }

    /// `/metrics`, `/healthz`, `/readyz`.
    pub fn router(self: &Arc<Ops>) -> Router {
        self.metrics_router()
            .route("/healthz", get(|| async { "ok\n" }))
    }

    /// `/metrics` and `/readyz`, for servers that have a `/healthz` of their own.
    pub fn metrics_router(self: &Arc<Ops>) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.render(),
    )
}

async fn readyz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    if ops.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Paths answered whatever the load: liveness and readiness probes and the Prometheus scrape
/// must keep working exactly when the server is saturated.
const PROBES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Seconds a refused client is told to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 1;

/// The limits of one HTTP server: the `http:` section of each binary's config
/// (`crate::config::HttpFile` reads and checks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Time to send a request's headers, counted from when the server starts waiting for them
    /// (the connection was accepted, or the previous response was sent): cuts slow-header
    /// clients, and is therefore also how long an idle keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// Time to produce a response (the handler, store queries included).
    pub request_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection (a client
    /// that stopped reading would otherwise hold its connection for ever).
    pub write_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Connections open at once; past it a new connection is closed at accept.
    pub max_connections: usize,
    /// Requests handled at once (probes excepted); past it the answer is 503 with Retry-After.
    pub max_concurrent_requests: usize,
    /// At shutdown, how long requests in progress may take to finish before their connections
    /// are closed.
    pub shutdown_grace: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_body_bytes: 64 << 10,
            max_connections: 512,
            max_concurrent_requests: 64,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Why a connection or request was refused (the `reason` label of `http_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `maxConnections` connections were open: closed at accept.
    ConnectionLimit,
    /// The request's headers did not arrive within `headerReadTimeout`.
    HeaderTimeout,
    /// A response write made no progress for `writeTimeout`.
    WriteTimeout,
    /// `maxConcurrentRequests` requests were in progress: 503 with Retry-After.
    Overloaded,
    /// No response within `requestTimeout`: 503.
    RequestTimeout,
    /// The body was larger than `maxBodyBytes`: 413.
    BodyTooLarge,
    /// `accept` failed (typically out of file descriptors); the server backs off briefly.
    AcceptFailed,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::ConnectionLimit,
        Refusal::HeaderTimeout,
        Refusal::WriteTimeout,
        Refusal::Overloaded,
        Refusal::RequestTimeout,
        Refusal::BodyTooLarge,
        Refusal::AcceptFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::WriteTimeout => "write_timeout",
            Refusal::Overloaded => "overloaded",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::BodyTooLarge => "body_too_large",
            Refusal::AcceptFailed => "accept_failed",
        }
    }
}

type ReasonLabel = [(&'static str, &'static str); 1];

/// The server's metrics (registered under the process's prefix, e.g.
/// `flowlens_collector_http_refused_total`).
#[derive(Clone, Default)]
pub struct HttpMetrics {
    pub refused: Family<ReasonLabel, Counter>,
    pub connections_open: Gauge,
    pub requests_in_flight: Gauge,
}

impl HttpMetrics {
    fn register(&self, r: &mut Registry) {
        // Every reason from the start, so alerts on a rate see a zero rather than no series.
        for why in Refusal::ALL {
            let _ = self.refused.get_or_create(&[("reason", why.label())]);
        }
        r.register(
            "http_refused",
            "HTTP connections and requests refused or cut, by reason (connection_limit, header_timeout, write_timeout, overloaded, request_timeout, body_too_large, accept_failed)",
            self.refused.clone(),
        );
        r.register(
            "http_connections_open",
            "HTTP connections open",
            self.connections_open.clone(),
        );
        r.register(
            "http_requests_in_flight",
            "HTTP requests being handled (probes included)",
            self.requests_in_flight.clone(),
        );
    }

    pub fn refuse(&self, why: Refusal) {
        self.refused.get_or_create(&[("reason", why.label())]).inc();
    }

    /// How many refusals of `why` so far.
    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused.get_or_create(&[("reason", why.label())]).get()
    }
}

/// A 503 with `Retry-After` and a JSON `{"error": …}` body: the answer when a bound is full and
/// trying again shortly is the right move.
pub fn retry_later(message: String) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(serde_json::json!({ "error": message })),
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    r
}

/// A bound listener, not serving yet. See the module docs.
pub struct HttpServer {
    listener: TcpListener,
    limits: HttpLimits,
    metrics: HttpMetrics,
}

impl HttpServer {
    /// Binds `addr` and registers the server's metrics into `ops`. `key` is the config key the
    /// address came from (`httpAddr`, `metricsAddr`); an error names it and the address.
    pub async fn bind(
        key: &str,
        addr: SocketAddr,
        limits: HttpLimits,
        ops: &Ops,
    ) -> anyhow::Result<HttpServer> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::AddrInUse => {
                    "; another process listens there: stop it or choose another port"
                }
                io::ErrorKind::AddrNotAvailable => "; no interface of this host has that address",
                io::ErrorKind::PermissionDenied => "; ports below 1024 need CAP_NET_BIND_SERVICE",
                _ => "",
            };
            anyhow::anyhow!("{key} {addr}: {e}{hint}")
        })?;
        let metrics = HttpMetrics::default();
        ops.register(|r| metrics.register(r));
        Ok(HttpServer {
            listener,
            limits,
            metrics,
        })
    }

    /// The bound address (the port chosen by the system for port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    pub fn metrics(&self) -> &HttpMetrics {
        &self.metrics
    }

    /// Serves `router` until `shutdown` resolves; then stops accepting, lets requests in
    /// progress finish for up to `shutdownGrace`, and closes what is left.
    pub async fn serve(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let HttpServer {
            listener,
            limits,
            metrics,
        } = self;
        let guard = Arc::new(Guard {
            requests: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            limits,
            metrics: metrics.clone(),
        });
        let app = router
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                limits.max_body_bytes,
            ))
            .layer(axum::middleware::from_fn_with_state(guard, guard_request));
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        let stop = CancellationToken::new();
        let mut conns = tokio::task::JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => break,
                a = listener.accept() => a,
            };
            while conns.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, most likely: the next accept would fail the same
                    // way at once, so pause instead of spinning.
                    metrics.refuse(Refusal::AcceptFailed);
                    tracing::warn!(error = %e, "HTTP accept failed; pausing 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics.refuse(Refusal::ConnectionLimit);
                // Best effort and never blocking: a client that reads gets a 503 rather than a
                // bare reset.
                let _ = stream.try_write(REFUSED_RESPONSE);
                tracing::debug!(%peer, "HTTP connection refused: maxConnections open");
                continue;
            };
            let _ = stream.set_nodelay(true);
            conns.spawn(serve_connection(
                stream,
                app.clone(),
                http.clone(),
                limits.write_timeout,
                metrics.clone(),
                stop.clone(),
                slot,
            ));
        }
        drop(listener);
        stop.cancel();
        let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(limits.shutdown_grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                connections = conns.len(),
                "HTTP requests still in progress after the shutdown grace; closing their connections"
            );
            conns.abort_all();
        }
        while conns.join_next().await.is_some() {}
        Ok(())
    }
}

const REFUSED_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Length: 0\r\nConnection: close\r\n\r\n";

/// Accept errors that concern one connection only (it was reset before we took it).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// One connection, until the client or the server closes it. `slot` is its place under
/// `maxConnections`, given back when this returns.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    http: hyper::server::conn::http1::Builder,
    write_timeout: Duration,
    metrics: HttpMetrics,
    stop: CancellationToken,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let _slot = slot;
    metrics.connections_open.inc();
    let _open = scopeguard(|| {
        metrics.connections_open.dec();
    });
    let seen = Arc::new(Seen::default());
    let io = TokioIo::new(Watched {
        inner: stream,
        seen: seen.clone(),
        write_timeout,
        stall: None,
    });
    let on_request = seen.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        on_request.request_started();
        tower::ServiceExt::oneshot(app.clone(), req)
    });
    let conn = http.serve_connection(io, svc);
    let mut conn = std::pin::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    let Err(e) = res else { return };
    if e.is_timeout() {
        if seen.idle_keep_alive() {
            // A keep-alive connection nobody reused: an ordinary close, not a refusal.
            tracing::trace!("HTTP keep-alive connection closed after headerReadTimeout idle");
        } else {
            metrics.refuse(Refusal::HeaderTimeout);
            tracing::debug!("HTTP connection cut: headers not received within headerReadTimeout");
        }
    } else if io_error_kind(&e) == Some(io::ErrorKind::TimedOut) {
        metrics.refuse(Refusal::WriteTimeout);
        tracing::debug!("HTTP connection cut: the client stopped reading (writeTimeout)");
    } else {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

fn io_error_kind(e: &hyper::Error) -> Option<io::ErrorKind> {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        src = s.source();
    }
    None
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    G(Some(f))
}

/// What a connection has read, to tell a slow client (bytes of a request arrived, or none ever
/// did) from an idle keep-alive connection when hyper's header timer fires.
#[derive(Default)]
struct Seen {
    bytes_read: AtomicU64,
    requests: AtomicU64,
    read_at_last_request: AtomicU64,
}

impl Seen {
    fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.read_at_last_request
            .store(self.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// At least one request was served and not a byte of another has arrived since.
    fn idle_keep_alive(&self) -> bool {
        self.requests.load(Ordering::Relaxed) > 0
            && self.bytes_read.load(Ordering::Relaxed)
                == self.read_at_last_request.load(Ordering::Relaxed)
    }
}

/// The connection's socket: counts what is read ([`Seen`]) and fails a write that has made no
/// progress for `write_timeout` with `TimedOut`.
struct Watched {
    inner: TcpStream,
    seen: Arc<Seen>,
    write_timeout: Duration,
    /// Armed when a write first waits; cleared by any progress.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Watched {
    /// After the socket answered Pending: Pending too, unless the stall has lasted too long.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let t = self.write_timeout;
        let s = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
        match s.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client read nothing for writeTimeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        r: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.stalled(cx),
            r => {
                self.stall = None;
                r
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            me.seen.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        me.progressed(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        me.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_flush(cx);
        me.progressed(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_shutdown(cx);
        me.progressed(r, cx)
    }
}

/// The per-request bounds: concurrency (shed, not queued) and time to answer.
struct Guard {
    requests: Arc<Semaphore>,
    limits: HttpLimits,
    metrics: HttpMetrics,
}

async fn guard_request(State(g): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let probe = PROBES.contains(&req.uri().path());
    let permit = if probe {
        None
    } else {
        match g.requests.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                g.metrics.refuse(Refusal::Overloaded);
                return retry_later(format!(
                    "server busy: {} requests in progress (http.maxConcurrentRequests); retry in {RETRY_AFTER_SECS} s",
                    g.limits.max_concurrent_requests
                ));
            }
        }
    };
    g.metrics.requests_in_flight.inc();
    let _in_flight = scopeguard(|| {
        g.metrics.requests_in_flight.dec();
    });
    // A handler past the deadline is dropped; work it handed to other threads (store queries)
    // carries its own deadline and its own concurrency permit.
    let res = tokio::time::timeout(g.limits.request_timeout, next.run(req)).await;
    drop(permit);
    match res {
        Ok(r) => {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                g.metrics.refuse(Refusal::BodyTooLarge);
            }
            r
        }
        Err(_) => {
            g.metrics.refuse(Refusal::RequestTimeout);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({
                    "error": format!(
                        "no answer within http.requestTimeout ({}); narrow the query (time range, filters)",
                        flowcore::config::Duration(g.limits.request_timeout)
                    )
                })),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[tokio::test]
    async fn metrics_health_and_readiness_over_http() {
        let ops = Ops::new("flowlens_test");
        let c: Counter = Counter::default();
        ops.register(|r| r.register("records_exported", "Records exported", c.clone()));
        c.inc_by(7);
        let server = HttpServer::bind(
            "metricsAddr",
            "127.0.0.1:0".parse().unwrap(),
            HttpLimits::default(),
            &ops,
        )
        .await
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server.serve(ops.router(), async move {
            let _ = rx.await;
        }));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503"));
        ops.set_ready(true);
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
        let m = get("/metrics").await;
        assert!(m.contains("flowlens_test_records_exported_total 7"), "{m}");
        assert!(
            m.contains("flowlens_test_http_refused_total{reason=\"connection_limit\"} 0"),
            "{m}"
        );
        let _ = tx.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_port_in_use_names_the_key_and_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let ops = Ops::new("flowlens_test");
        let e = HttpServer::bind("metricsAddr", addr, HttpLimits::default(), &ops)
            .await
            .err()
            .expect("the port is taken");
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with(&format!("metricsAddr {addr}: ")) && msg.contains("in use"),
            "{msg}"
        );
    }
}
