//! The hardened HTTP server (`ops::HttpServer`) against hostile clients on real loopback
//! sockets: slow headers, too many connections, too many requests at once, slow handlers, large
//! bodies, clients that stop reading; and the start-up contract of every listener (a port in
//! use fails start-up naming its config key) and the aggregator's bounded `/api/flows`.
//!
//! Waits are for conditions (a metric, a closed socket) with deadlines, never fixed sleeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{get, post};
use flowlens_bins::ops::{HttpLimits, HttpMetrics, HttpServer, Ops, Refusal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(15);

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + GUARD;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Running {
    addr: SocketAddr,
    metrics: HttpMetrics,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(limits: HttpLimits, router: Router) -> Running {
        let ops = Ops::new("flowlens_test");
        let server = HttpServer::bind("httpAddr", "127.0.0.1:0".parse().unwrap(), limits, &ops)
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let metrics = server.metrics().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(
            router.merge(ops.router()),
            shutdown.clone().cancelled_owned(),
        ));
        Running {
            addr,
            metrics,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(GUARD, self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap();
    }

    fn refused(&self, why: Refusal) -> u64 {
        self.metrics.refused(why)
    }
}

/// One request over a new connection: status line, lower-cased head, body.
async fn fetch(addr: SocketAddr, req: &str) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        head.to_ascii_lowercase(),
        body.to_owned(),
    )
}

async fn get_path(addr: SocketAddr, path: &str) -> (String, String, String) {
    fetch(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Waits until the server closes `s` (EOF or reset), discarding what it sends; how long that
/// took from `since`.
async fn closed_after(s: &mut TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GUARD, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server never closed the connection"),
        }
    }
}

fn hello() -> Router {
    Router::new().route("/x", get(|| async { "hello\n" }))
}

fn limits() -> HttpLimits {
    HttpLimits {
        header_read_timeout: Duration::from_millis(300),
        ..HttpLimits::default()
    }
}

#[tokio::test]
async fn slow_header_clients_are_cut_at_the_header_timeout_and_counted() {
    let srv = Running::start(limits(), hello()).await;
    let addr = srv.addr;
    let attackers: Vec<_> = (0..5)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let t0 = Instant::now();
                s.write_all(b"GET /x HTTP/1.1\r\n").await.unwrap();
                // One header byte per 50 ms, never finishing: the slowloris pattern.
                let mut buf = [0u8; 256];
                loop {
                    tokio::select! {
                        r = s.read(&mut buf) => match r {
                            Ok(0) | Err(_) => return t0.elapsed(),
                            Ok(_) => {}
                        },
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {
                            if s.write_all(b"X").await.is_err() {
                                return t0.elapsed();
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for a in attackers {
        let cut = tokio::time::timeout(GUARD, a).await.unwrap().unwrap();
        assert!(
            cut >= Duration::from_millis(250) && cut < Duration::from_secs(5),
            "cut after {cut:?}"
        );
    }
    wait_until("5 header timeouts counted", || {
        srv.refused(Refusal::HeaderTimeout) == 5
    })
    .await;
    // A normal client is answered, and its keep-alive connection left idle is closed by the same
    // timer without being counted as a refusal.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("hello") {
        let n = tokio::time::timeout(GUARD, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    let idle = closed_after(&mut s, Instant::now()).await;
    assert!(idle < Duration::from_secs(5), "idle for {idle:?}");
    wait_until("the idle connection closed", || {
        srv.metrics.connections_open.get() == 0
    })
    .await;
    assert_eq!(srv.refused(Refusal::HeaderTimeout), 5);
    srv.stop().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_at_accept_and_normal_clients_get_answers_after() {
    let srv = Running::start(
        HttpLimits {
            max_connections: 3,
            // Long enough that the refusals below cannot be mistaken for it.
            header_read_timeout: Duration::from_secs(2),
            ..HttpLimits::default()
        },
        hello(),
    )
    .await;
    // Three connections that never send a byte hold every slot.
    let mut holders = Vec::new();
    for _ in 0..3 {
        holders.push(TcpStream::connect(srv.addr).await.unwrap());
    }
    wait_until("3 connections open", || {
        srv.metrics.connections_open.get() == 3
    })
    .await;
    // Two more are closed at accept, long before any timeout, and counted.
    for _ in 0..2 {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let took = closed_after(&mut s, t0).await;
        assert!(took < Duration::from_millis(1500), "refused after {took:?}");
    }
    assert_eq!(srv.refused(Refusal::ConnectionLimit), 2);
    // The holders are cut at the header timeout, which frees the slots for a normal client.
    for mut h in holders {
        closed_after(&mut h, Instant::now()).await;
    }
    wait_until("the slots freed", || {
        srv.metrics.connections_open.get() == 0
    })
    .await;
    assert_eq!(srv.refused(Refusal::HeaderTimeout), 3);
    let (status, _, body) = get_path(srv.addr, "/x").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "hello\n")
    );
    srv.stop().await;
}

/// A route that holds its request until the test lets it go.
fn gated() -> (Router, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    let router = Router::new().route(
        "/slow",
        get(move || {
            let g = g.clone();
            async move {
                let _p = g.acquire().await.unwrap();
                "done\n"
            }
        }),
    );
    (router, gate)
}

#[tokio::test]
async fn saturated_requests_get_503_with_retry_after_while_probes_answer() {
    let (router, gate) = gated();
    let srv = Running::start(
        HttpLimits {
            max_concurrent_requests: 2,
            ..HttpLimits::default()
        },
        router,
    )
    .await;
    let addr = srv.addr;
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get_path(addr, "/slow").await }))
        .collect();
    wait_until("2 requests in flight", || {
        srv.metrics.requests_in_flight.get() == 2
    })
    .await;
    let t0 = Instant::now();
    let (status, head, body) = get_path(addr, "/slow").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("http.maxConcurrentRequests"), "{body}");
    // Shed at once, not queued behind the held requests.
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(srv.refused(Refusal::Overloaded), 1);
    // Probes are exempt from the cap.
    let (status, _, _) = get_path(addr, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (status, _, m) = get_path(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        m.contains("flowlens_test_http_refused_total{reason=\"overloaded\"} 1"),
        "{m}"
    );
    gate.add_permits(2);
    for h in held {
        let (status, _, body) = h.await.unwrap();
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "done\n")
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn slow_handlers_are_answered_503_at_the_request_timeout() {
    let (router, _gate) = gated();
    let srv = Running::start(
        HttpLimits {
            request_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        },
        router,
    )
    .await;
    let t0 = Instant::now();
    let (status, _, body) = get_path(srv.addr, "/slow").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable", "{body}");
    assert!(body.contains("http.requestTimeout (200ms)"), "{body}");
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert_eq!(srv.refused(Refusal::RequestTimeout), 1);
    // The slot of the abandoned request is free again.
    wait_until("no request in flight", || {
        srv.metrics.requests_in_flight.get() == 0
    })
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_counted() {
    let router = Router::new().route(
        "/echo",
        post(|body: axum::body::Bytes| async move { format!("{}\n", body.len()) }),
    );
    let srv = Running::start(
        HttpLimits {
            max_body_bytes: 16,
            ..HttpLimits::default()
        },
        router,
    )
    .await;
    let post_body = |n: usize| {
        format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {n}\r\n\r\n{}",
            "a".repeat(n)
        )
    };
    let (status, _, body) = fetch(srv.addr, &post_body(16)).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "16\n")
    );
    let (status, _, _) = fetch(srv.addr, &post_body(17)).await;
    assert_eq!(status, "HTTP/1.1 413 Payload Too Large");
    assert_eq!(srv.refused(Refusal::BodyTooLarge), 1);
    srv.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_write_timeout() {
    let big = axum::body::Bytes::from(vec![b'x'; 32 << 20]);
    let router = Router::new().route("/big", get(move || async move { big.clone() }));
    let srv = Running::start(
        HttpLimits {
            write_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        },
        router,
    )
    .await;
    // A small receive window so the server's writes stall quickly.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(srv.addr).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    wait_until("a write timeout", || {
        srv.refused(Refusal::WriteTimeout) == 1
    })
    .await;
    wait_until("the connection closed", || {
        srv.metrics.connections_open.get() == 0
    })
    .await;
    drop(s);
    let (status, _, _) = get_path(srv.addr, "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_progress_finish() {
    let (router, gate) = gated();
    let srv = Running::start(HttpLimits::default(), router).await;
    let addr = srv.addr;
    let req = tokio::spawn(async move { get_path(addr, "/slow").await });
    wait_until("the request in flight", || {
        srv.metrics.requests_in_flight.get() == 1
    })
    .await;
    srv.shutdown.cancel();
    // New connections are no longer accepted once the listener is gone; the one in progress
    // still gets its answer.
    gate.add_permits(1);
    let (status, _, body) = req.await.unwrap();
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "done\n")
    );
    tokio::time::timeout(GUARD, srv.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn aggregator_setup(metrics_port: u16) -> flowlens_bins::config::aggregator::AggregatorSetup {
    flowlens_bins::config::parse_yaml::<flowlens_bins::config::aggregator::AggregatorFile>(
        &format!(
            "listenAddr: \"127.0.0.1:{}\"\naggregatorTransportProtocol: tcp\nmetricsAddr: \"127.0.0.1:{metrics_port}\"\n",
            free_port()
        ),
    )
    .unwrap()
    .validate()
    .unwrap()
}

#[tokio::test]
async fn a_metrics_port_in_use_fails_start_up_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let want = format!("metricsAddr {addr}: ");

    // Aggregator.
    let e = tokio::time::timeout(
        GUARD,
        flowlens_bins::aggregator::run::run(
            aggregator_setup(addr.port()),
            Ops::new("flowlens_aggregator"),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("start-up fails at once")
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.starts_with(&want) && msg.contains("in use"), "{msg}");

    // Agent: the bind comes before conntrack, so this fails the same way on any host.
    let cfg = flowlens_bins::config::parse_yaml::<flowlens_bins::config::agent::AgentFile>(
        &format!("enableTLSToFlowAggregator: false\nmetricsAddr: \"{addr}\"\n"),
    )
    .unwrap()
    .validate(Some("node-a"))
    .unwrap();
    let ops = Ops::new("flowlens_agent");
    let e = tokio::time::timeout(
        GUARD,
        flowlens_bins::agent::run::run(cfg, ops.clone(), CancellationToken::new()),
    )
    .await
    .expect("start-up fails at once")
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.starts_with(&want) && msg.contains("in use"), "{msg}");
    assert!(!ops.is_ready());

    // Collector.
    let dir = std::env::temp_dir().join(format!("flowlens-http-busy-{}", std::process::id()));
    let cfg = flowlens_bins::config::parse_yaml::<flowlens_bins::config::collector::CollectorFile>(
        &format!(
            "listenAddr: \"127.0.0.1:0\"\nhttpAddr: \"{addr}\"\ndataDir: {}\n",
            dir.display()
        ),
    )
    .unwrap()
    .validate()
    .unwrap();
    let ops = Ops::new("flowlens_collector");
    let e = flowlens_bins::collector_cmd::start(cfg, ops.clone(), CancellationToken::new())
        .await
        .err()
        .expect("start-up fails");
    let msg = format!("{e:#}");
    assert!(
        msg.starts_with(&format!("httpAddr {addr}: ")) && msg.contains("in use"),
        "{msg}"
    );
    assert!(!ops.is_ready());
    let _ = std::fs::remove_dir_all(&dir);
    drop(taken);
}

#[tokio::test]
async fn aggregator_api_flows_refuses_a_limit_past_the_maximum() {
    let port = free_port();
    let ops = Ops::new("flowlens_aggregator");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(flowlens_bins::aggregator::run::run(
        aggregator_setup(port),
        ops.clone(),
        shutdown.clone(),
    ));
    let o = ops.clone();
    wait_until("aggregator ready", move || o.is_ready()).await;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for (q, needle) in [
        (
            "limit=1000000000",
            "expected an integer from 1 to 10000, got `1000000000`",
        ),
        ("limit=0", "`limit`"),
        ("limit=99999999999999999999999", "limit"),
        ("port=70000", "port"),
    ] {
        let (status, _, body) = get_path(addr, &format!("/api/flows?{q}")).await;
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{q}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().unwrap_or_default().contains(needle),
            "{q}: {body}"
        );
    }
    let (status, _, body) = get_path(addr, "/api/flows?limit=10000").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(body, "[]");
    shutdown.cancel();
    tokio::time::timeout(GUARD, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
