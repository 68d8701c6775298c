//! Operations endpoints every flowlens process serves: `/metrics` (Prometheus text format from a
//! prometheus-client registry), `/healthz` (the process is running), `/readyz` (ready to do its
//! job: initial metadata listed, listeners bound). Components register their metrics into the
//! shared registry at start-up; other routes (such as the aggregator's `/api/flows`) are merged
//! into the same server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

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

/// Serves `router` on `addr` until `shutdown` resolves. Binding errors name the address.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the HTTP endpoint on {addr}"))?;
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .context("HTTP server")
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            axum::serve(listener, ops.router())
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .into_future(),
        );
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
        let _ = tx.send(());
        server.await.unwrap().unwrap();
    }
}
