//! HTTP API over a seeded SQLite store: endpoint answers (insta snapshots on a deterministic
//! store), filters narrowing results, 400s that name the parameter, the OpenAPI document
//! covering every route and parameter, and one test over a real socket on 127.0.0.1.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use flowlens_bins::collector::query::*;
use flowlens_bins::collector::synth::Synth;
use flowlens_bins::collector::{
    QueryLimits, QueryMetrics, SqliteConfig, SqliteStore, Store, StoreError, router, router_with,
};
use serde_json::Value;
use tower::ServiceExt;

/// 2026-01-01T00:00:00Z.
const T0: u64 = 1_767_225_600;

/// One seeded store shared by the tests (read-only after seeding).
fn store() -> Arc<dyn Store> {
    static STORE: OnceLock<Arc<dyn Store>> = OnceLock::new();
    STORE
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("flowlens-api-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let s = SqliteStore::open(SqliteConfig::new(dir)).unwrap();
            let recs = Synth::new(42, 4, 24).batch(2000, T0 as u32, 1800);
            s.insert(&recs, T0 + 1800).unwrap();
            Arc::new(s)
        })
        .clone()
}

async fn get(uri: &str) -> (StatusCode, Value) {
    let resp = router(store())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    (status, v)
}

async fn ok(uri: &str) -> Value {
    let (s, v) = get(uri).await;
    assert_eq!(s, StatusCode::OK, "{uri}: {v}");
    v
}

fn range() -> String {
    format!("start={T0}&end={}", T0 + 1800)
}

#[tokio::test]
async fn dashboard_snapshots() {
    let r = range();
    insta::assert_json_snapshot!(
        "top_pod_pair",
        ok(&format!("/api/top?{r}&by=podPair&limit=5")).await
    );
    insta::assert_json_snapshot!("top_node", ok(&format!("/api/top?{r}&by=node")).await);
    insta::assert_json_snapshot!(
        "timeseries_service",
        ok(&format!(
            "/api/timeseries?start={T0}&end={}&by=service&limit=2",
            T0 + 300
        ))
        .await
    );
    insta::assert_json_snapshot!(
        "sankey_policy",
        ok(&format!("/api/sankey?{r}&by=policy&limit=6")).await
    );
    insta::assert_json_snapshot!("node_matrix", ok(&format!("/api/node-matrix?{r}")).await);
    insta::assert_json_snapshot!(
        "policies",
        ok(&format!(
            "/api/policies?{r}&ingress=payments/cart-ingress&limit=3"
        ))
        .await
    );
    insta::assert_json_snapshot!(
        "flows_page",
        ok(&format!("/api/flows?{r}&limit=2&offset=10")).await
    );
}

#[tokio::test]
async fn every_endpoint_answers_for_every_grouping() {
    let r = range();
    for by in ["podPair", "pod", "nodePair", "node", "service", "external"] {
        let v = ok(&format!("/api/top?{r}&by={by}")).await;
        assert!(!v["rows"].as_array().unwrap().is_empty(), "top by {by}");
    }
    for by in ["srcPod", "dstPod", "service", "nodePair"] {
        let v = ok(&format!("/api/timeseries?{r}&by={by}&limit=3")).await;
        let s = v["series"].as_array().unwrap();
        assert_eq!(s.len(), 3, "timeseries by {by}");
        assert!(
            s.iter()
                .all(|s| !s["points"].as_array().unwrap().is_empty())
        );
    }
    for by in ["podPair", "policy", "podService", "podExternal"] {
        let v = ok(&format!("/api/sankey?{r}&by={by}")).await;
        assert!(!v["links"].as_array().unwrap().is_empty(), "sankey by {by}");
    }
    let st = ok("/api/stats").await;
    assert_eq!(st["records"], 2000);
    assert_eq!(st["backend"], "sqlite");
    let (s, _) = get("/healthz").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn filters_narrow_results() {
    let r = range();
    let count = |v: &Value| v["flows"].as_array().unwrap().len();
    let all = ok(&format!("/api/flows?{r}&limit=1000")).await;
    assert_eq!(count(&all), 1000);
    for (q, check) in [
        (
            "namespace=shop",
            &(|f: &Value| {
                f["sourcePodNamespace"] == "shop" || f["destinationPodNamespace"] == "shop"
            }) as &dyn Fn(&Value) -> bool,
        ),
        ("flowType=toExternal", &|f: &Value| f["flowType"] == 3),
        ("protocol=udp", &|f: &Value| f["protocolIdentifier"] == 17),
        ("dstPort=5432", &|f: &Value| {
            f["destinationTransportPort"] == 5432
        }),
        ("node=node-1", &|f: &Value| {
            f["sourceNodeName"] == "node-1" || f["destinationNodeName"] == "node-1"
        }),
        ("service=shop/cart-svc", &|f: &Value| {
            f["destinationServicePortName"] == "shop/cart-svc:http"
        }),
        ("policy=payments/cart-ingress", &|f: &Value| {
            f["ingressNetworkPolicyName"] == "cart-ingress"
                || f["egressNetworkPolicyName"] == "cart-ingress"
        }),
        ("pod=shop/cart-5", &|f: &Value| {
            f["sourcePodName"] == "cart-5" || f["destinationPodName"] == "cart-5"
        }),
        ("srcIp=10.1.0.7", &|f: &Value| {
            f["sourceIPAddress"] == "10.1.0.7"
        }),
        ("srcNamespace=shop", &|f: &Value| {
            f["sourcePodNamespace"] == "shop"
        }),
        ("dstNamespace=payments", &|f: &Value| {
            f["destinationPodNamespace"] == "payments"
        }),
        ("srcPod=shop/cart-5", &|f: &Value| {
            f["sourcePodNamespace"] == "shop" && f["sourcePodName"] == "cart-5"
        }),
        ("dstPod=cart-5", &|f: &Value| {
            f["destinationPodName"] == "cart-5"
        }),
        ("srcNode=node-1", &|f: &Value| {
            f["sourceNodeName"] == "node-1"
        }),
        ("dstNode=node-2&srcNode=node-1", &|f: &Value| {
            f["sourceNodeName"] == "node-1" && f["destinationNodeName"] == "node-2"
        }),
    ] {
        let v = ok(&format!("/api/flows?{r}&limit=1000&{q}")).await;
        let n = count(&v);
        assert!(n > 0 && n < 1000, "{q}: {n}");
        for f in v["flows"].as_array().unwrap() {
            assert!(check(f), "{q}: {f}");
        }
    }
    // Dashboard filters narrow the rollup views.
    let top = ok(&format!("/api/top?{r}&by=podPair&limit=1000")).await;
    let top_ns = ok(&format!(
        "/api/top?{r}&by=podPair&limit=1000&namespace=payments"
    ))
    .await;
    let rows = |v: &Value| v["rows"].as_array().unwrap().clone();
    assert!(rows(&top_ns).len() < rows(&top).len());
    assert!(
        rows(&top_ns)
            .iter()
            .all(|t| t["src"].as_str().unwrap().starts_with("payments/")
                || t["dst"].as_str().unwrap().starts_with("payments/"))
    );
    let sk = ok(&format!("/api/sankey?{r}&by=podPair&pod=shop/cart-5")).await;
    assert!(
        sk["links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["source"] == "s:shop/cart-5" || l["target"] == "d:shop/cart-5")
    );
    // A range with no data answers empty.
    let empty = ok("/api/top?start=0&end=60").await;
    assert_eq!(empty["rows"], Value::Array(vec![]));
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    for (q, needle) in [
        ("/api/flows?srcPort=99999", "`srcPort`"),
        ("/api/flows?srcPort=abc", "0 to 65535"),
        ("/api/flows?dstIp=10.0.0", "`dstIp`"),
        ("/api/flows?flowType=sideways", "intraNode"),
        ("/api/flows?protocol=tcpp", "`protocol`"),
        ("/api/flows?limit=0", "`limit`"),
        ("/api/flows?limit=1000000", "1 to 1000"),
        ("/api/flows?start=yesterday", "RFC 3339"),
        ("/api/flows?start=100&end=50", "before"),
        ("/api/flows?nmespace=x", "unknown parameter `nmespace`"),
        ("/api/flows?pod=a/b/c", "NAMESPACE/NAME"),
        ("/api/flows?limit=5&limit=6", "more than once"),
        ("/api/top?by=planet", "podPair"),
        ("/api/sankey?by=x", "podExternal"),
        ("/api/timeseries?limit=51", "1 to 50"),
        ("/api/node-matrix?by=x", "unknown parameter `by`"),
        ("/api/stats?x=1", "unknown parameter"),
        ("/api/flows?%zz=1", "unknown parameter"),
    ] {
        let (s, v) = get(q).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        let msg = v["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{q}: {msg}");
    }
}

#[tokio::test]
async fn openapi_lists_every_route_and_parameter() {
    let doc = ok("/api/openapi.json").await;
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    let params = |p: &str| -> Vec<String> {
        paths[p]["get"]["parameters"]
            .as_array()
            .map_or(vec![], |a| {
                a.iter()
                    .map(|x| x["name"].as_str().unwrap().to_owned())
                    .collect()
            })
    };
    for p in [
        "/healthz",
        "/api/openapi.json",
        "/api/flows",
        "/api/top",
        "/api/timeseries",
        "/api/sankey",
        "/api/node-matrix",
        "/api/policies",
        "/api/stats",
    ] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    let mut documented = params("/api/flows");
    documented.sort();
    let mut accepted: Vec<String> = flowlens_bins::collector::api::FLOW_PARAMS
        .iter()
        .map(|s| s.to_string())
        .collect();
    accepted.sort();
    assert_eq!(documented, accepted);
    // Every documented parameter is accepted (not rejected as unknown).
    for p in [
        "/api/top",
        "/api/timeseries",
        "/api/sankey",
        "/api/node-matrix",
        "/api/policies",
    ] {
        for name in params(p) {
            let (s, v) = get(&format!("{p}?{name}=")).await;
            assert_eq!(s, StatusCode::OK, "{p}?{name}=: {v}");
        }
    }
    // Every $ref resolves.
    let text = doc.to_string();
    for r in text.split("#/components/schemas/").skip(1) {
        let name = &r[..r.find('"').unwrap()];
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "dangling $ref {name}"
        );
    }
}

/// The router served by the collector's HTTP server on a real socket, read with a minimal
/// HTTP/1.1 client.
#[tokio::test]
async fn serves_over_a_real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ops = flowlens_bins::ops::Ops::new("flowlens_collector");
    let server = flowlens_bins::ops::HttpServer::bind(
        "httpAddr",
        "127.0.0.1:0".parse().unwrap(),
        Default::default(),
        &ops,
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let server = tokio::spawn(server.serve(router(store()), std::future::pending()));
    let fetch = |path: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(buf).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (
            head.lines().next().unwrap().to_owned(),
            head.to_ascii_lowercase(),
            body.to_owned(),
        )
    };
    let (status, head, body) = fetch(format!(
        "/api/top?start={T0}&end={}&by=node&limit=2",
        T0 + 1800
    ))
    .await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    let (status, _, body) = fetch("/api/flows?srcPort=x".into()).await;
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert!(body.contains("srcPort"));
    let (status, _, body) = fetch("/healthz".into()).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    server.abort();
}

/// A store of the same records as [`store`], in its own directory, with `query` limits.
fn limited_store(name: &str, query: QueryLimits) -> Arc<dyn Store> {
    let dir = std::env::temp_dir().join(format!("flowlens-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = SqliteStore::open(SqliteConfig {
        query,
        ..SqliteConfig::new(dir)
    })
    .unwrap();
    let recs = Synth::new(42, 4, 24).batch(2000, T0 as u32, 1800);
    s.insert(&recs, T0 + 1800).unwrap();
    Arc::new(s)
}

async fn get_from(app: &axum::Router, uri: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    (status, headers, v)
}

#[tokio::test]
async fn a_query_past_its_deadline_is_stopped_with_a_503_saying_what_to_narrow() {
    // Past the deadline before it starts: the progress handler interrupts SQLite at its first
    // check, so this is the interrupt path every time.
    let limits = QueryLimits {
        timeout: std::time::Duration::from_nanos(1),
        ..QueryLimits::default()
    };
    let metrics = QueryMetrics::default();
    let app = router_with(limited_store("deadline", limits), limits, metrics.clone());
    let r = range();
    for uri in [
        format!("/api/top?{r}&by=podPair"),
        format!("/api/timeseries?{r}"),
        format!("/api/flows?{r}&limit=1000"),
    ] {
        let (s, _, v) = get_from(&app, &uri).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains("query.timeout") && msg.contains("narrow the time range"),
            "{uri}: {msg}"
        );
    }
    assert_eq!(metrics.refused("deadline"), 3);
}

#[tokio::test]
async fn a_query_holding_too_many_groups_is_a_422_naming_the_bound() {
    let small = QueryLimits {
        max_groups: 3,
        ..QueryLimits::default()
    };
    let metrics = QueryMetrics::default();
    let app = router_with(limited_store("groups", small), small, metrics.clone());
    let r = range();
    let uris = [
        format!("/api/top?{r}&by=podPair&limit=2"),
        format!("/api/top?{r}&by=external&limit=2"),
        format!("/api/timeseries?{r}&by=srcPod&limit=2"),
        format!("/api/sankey?{r}&by=podPair&limit=2"),
        format!("/api/policies?{r}&limit=2"),
        format!("/api/node-matrix?{r}"),
    ];
    for uri in &uris {
        let (s, _, v) = get_from(&app, uri).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {v}");
        let msg = v["error"].as_str().unwrap();
        assert!(
            msg.contains("more than 3 groups (query.maxGroups)") && msg.contains("narrow"),
            "{uri}: {msg}"
        );
    }
    assert_eq!(metrics.refused("too_large"), uris.len() as u64);
    // The same queries fit the default bound.
    for uri in &uris {
        let (s, v) = get(uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
    }
}

/// A store whose `top` blocks until the test opens the gate; everything else is unused.
struct GateStore {
    entered: std::sync::atomic::AtomicUsize,
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl GateStore {
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

fn unused<T>() -> Result<T, StoreError> {
    unreachable!("not called by this test")
}

impl Store for GateStore {
    fn insert_batch(&self, _: &flowlens_bins::collector::Batch<'_>) -> Result<(), StoreError> {
        unused()
    }
    fn flows(&self, _: &FlowQuery) -> Result<Vec<FlowRow>, StoreError> {
        unused()
    }
    fn top(&self, _: &TopQuery) -> Result<Vec<TopRow>, StoreError> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
        Ok(Vec::new())
    }
    fn timeseries(&self, _: &SeriesQuery) -> Result<TimeSeries, StoreError> {
        unused()
    }
    fn sankey(&self, _: &SankeyQuery) -> Result<Sankey, StoreError> {
        unused()
    }
    fn node_matrix(&self, _: &DashFilter) -> Result<NodeMatrix, StoreError> {
        unused()
    }
    fn policy_flows(&self, _: &PolicyQuery) -> Result<Vec<PolicyFlow>, StoreError> {
        unused()
    }
    fn stats(&self) -> Result<StoreStats, StoreError> {
        unused()
    }
    fn enforce_retention(&self, _: u64) -> Result<RetentionReport, StoreError> {
        unused()
    }
}

#[tokio::test]
async fn store_queries_past_max_concurrent_wait_then_get_503_with_retry_after() {
    let gate = Arc::new(GateStore {
        entered: Default::default(),
        open: std::sync::Mutex::new(false),
        cv: std::sync::Condvar::new(),
    });
    let limits = QueryLimits {
        max_concurrent: 1,
        timeout: std::time::Duration::from_millis(300),
        ..QueryLimits::default()
    };
    let metrics = QueryMetrics::default();
    let app = router_with(gate.clone(), limits, metrics.clone());
    let first = {
        let app = app.clone();
        tokio::spawn(async move { get_from(&app, "/api/top").await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while gate.entered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first query never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let t0 = std::time::Instant::now();
    let (s, headers, v) = get_from(&app, "/api/top").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(headers["retry-after"], "1");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains("query.maxConcurrent"), "{msg}");
    // It waited for a slot for query.timeout, then gave up; the store never saw it.
    assert!(t0.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(gate.entered.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(metrics.refused("busy"), 1);
    gate.release();
    let (s, _, v) = first.await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    // The slot is free again.
    let (s, _, _) = get_from(&app, "/api/top").await;
    assert_eq!(s, StatusCode::OK);
}

/// Query-string values a client might send for a number: integers of every size and sign,
/// times in every accepted form with arbitrary numbers, and arbitrary text.
fn number_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u128>().prop_map(|n| n.to_string()),
        (T0 - 7200..T0 + 7200).prop_map(|n| n.to_string()),
        (0u64..70_000).prop_map(|n| n.to_string()),
        (any::<u64>(), "[smhd]").prop_map(|(n, u)| format!("now-{n}{u}")),
        (any::<i64>(), 0i64..20, 0i64..40)
            .prop_map(|(y, m, d)| format!("{y}-{m:02}-{d:02}T00:00:00Z")),
        ".{0,20}",
    ]
}

fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
    /// Whatever numbers a client sends, every endpoint answers 200 or a 400 that names one of
    /// the parameters it was given: no panic, no overflow, no 500.
    #[test]
    fn handlers_answer_any_numbers_with_200_or_a_400_naming_the_parameter(
        endpoint in 0usize..6,
        start in number_text(),
        end in number_text(),
        limit in number_text(),
        other in number_text(),
    ) {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        let rt = RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
        });
        let (path, other_name) = [
            ("/api/flows", "srcPort"),
            ("/api/flows", "offset"),
            ("/api/top", "limit"),
            ("/api/timeseries", "limit"),
            ("/api/sankey", "limit"),
            ("/api/policies", "limit"),
        ][endpoint];
        let mut q = vec![("start", &start), ("end", &end), (other_name, &other)];
        if other_name != "limit" {
            q.push(("limit", &limit));
        }
        let qs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
        let uri = format!("{path}?{}", qs.join("&"));
        let (status, v) = rt.block_on(get(&uri));
        match status {
            StatusCode::OK => {}
            StatusCode::BAD_REQUEST => {
                let msg = v["error"].as_str().unwrap_or_default();
                proptest::prop_assert!(
                    q.iter().any(|(k, _)| msg.contains(&format!("`{k}`")))
                        || msg.contains("`start`/`end`"),
                    "{uri}: {msg}"
                );
            }
            s => proptest::prop_assert!(false, "{uri}: {s} {v}"),
        }
    }
}
