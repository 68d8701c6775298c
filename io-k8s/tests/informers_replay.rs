//! The informers against recorded Kubernetes API traffic, replayed by a scripted HTTP server
//! (tests/fake_api) to kube's real client: initial lists, watch events, bookmarks, a dropped
//! watch that resumes, a `410 Gone` that forces a relist which reconciles deletions, API errors
//! with backoff, readiness, and the node-local Pod watch.
//!
//! No sleeps: every wait is on a condition, under a timeout that only guards against hangs
//! (the watcher's backoff after an error is up to a couple of seconds).

mod fake_api;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fake_api::*;
use flowcore::metadata::{MetadataIndex, MetadataUpdate};
use flowcore::model::Timestamp;
use hyper::StatusCode;
use io_k8s::{InformerConfig, Informers, Kind, PodScope};
use tokio::sync::Notify;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(20);

const WEB1: &str = "3b0f2c1e-9a8d-4c7b-8e6f-5a4b3c2d1e01";
const WEB2: &str = "3b0f2c1e-9a8d-4c7b-8e6f-5a4b3c2d1e02";
const DB0: &str = "3b0f2c1e-9a8d-4c7b-8e6f-5a4b3c2d1e03";
const WEB3: &str = "3b0f2c1e-9a8d-4c7b-8e6f-5a4b3c2d1e04";
const WEB4: &str = "3b0f2c1e-9a8d-4c7b-8e6f-5a4b3c2d1e05";

/// The consumer side: applies updates to an index, as the agent does, and keeps a log of the
/// Pod updates as `+uid` / `-uid`.
struct Consumer {
    informers: Informers,
    index: MetadataIndex,
    pod_log: Vec<String>,
    now: Timestamp,
}

impl Consumer {
    fn new(informers: Informers) -> Consumer {
        Consumer {
            informers,
            index: MetadataIndex::new(Duration::from_secs(3600)),
            pod_log: Vec::new(),
            now: Timestamp::from_secs(1_795_000_000),
        }
    }

    async fn next(&mut self) {
        self.update().await;
    }

    /// The next update (applied to the index too).
    async fn update(&mut self) -> MetadataUpdate {
        let u = timeout(GUARD, self.informers.updates.recv())
            .await
            .expect("an update within the guard time")
            .expect("informers running");
        match &u {
            MetadataUpdate::Pod(p) => self.pod_log.push(format!("+{}", p.uid)),
            MetadataUpdate::PodDeleted { uid } => self.pod_log.push(format!("-{uid}")),
            _ => {}
        }
        self.now = self.now.saturating_add(Duration::from_secs(1));
        self.index.apply(self.now, u.clone());
        u
    }

    /// Consumes updates until the Pod log has `n` entries.
    async fn pods(&mut self, n: usize) -> &[String] {
        while self.pod_log.len() < n {
            self.next().await;
        }
        &self.pod_log[..n]
    }
}

fn plus(uid: &str) -> String {
    format!("+{uid}")
}

fn minus(uid: &str) -> String {
    format!("-{uid}")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn replay_list_watch_bookmark_drop_gone_relist() {
    let api = FakeApi::start().await;
    api.list(PODS, ListReply::ok(fixture("pods-list-1.json")));
    api.watch(PODS, fixture("pods-watch-1.jsonl"), true);
    api.watch(PODS, fixture("pods-watch-2.jsonl"), false);
    api.list(PODS, ListReply::ok(fixture("pods-list-2.json")));
    api.watch(PODS, fixture("pods-watch-3.jsonl"), false);
    api.list(NODES, ListReply::ok(fixture("nodes-list.json")));
    api.list(NAMESPACES, ListReply::ok(fixture("namespaces-list.json")));
    api.list(SERVICES, ListReply::ok(fixture("services-list.json")));
    api.list(
        ENDPOINT_SLICES,
        ListReply::ok(fixture("endpointslices-list.json")),
    );
    // NetworkPolicies answer last, to see readiness wait for every kind.
    let gate = Arc::new(Notify::new());
    api.list(
        NETWORK_POLICIES,
        ListReply {
            gate: Some(gate.clone()),
            ..ListReply::ok(fixture("networkpolicies-list.json"))
        },
    );

    let informers = Informers::spawn(api.client(), InformerConfig::default());
    let handle = informers.handle.clone();
    let mut c = Consumer::new(informers);

    // Initial list, then watch 1: web-3 added, web-1 relabelled, bookmark, connection dropped.
    assert_eq!(
        c.pods(5).await,
        [plus(WEB1), plus(WEB2), plus(DB0), plus(WEB3), plus(WEB1)]
    );
    assert!(!handle.is_ready(), "NetworkPolicies not listed yet");

    // The dropped watch resumes from the bookmark's resourceVersion, without a relist.
    let resumed = timeout(
        GUARD,
        api.wait_request(|r| {
            r.starts_with(PODS) && r.contains("watch=true") && r.contains("resourceVersion=1010")
        }),
    )
    .await
    .expect("watch resumed at the bookmark");
    assert!(resumed.contains("allowWatchBookmarks=true"), "{resumed}");

    // Watch 2: web-2 deleted, then 410 Gone → relist → db-0 (deleted meanwhile) reconciled.
    assert_eq!(
        c.pods(10).await[5..],
        [minus(WEB2), plus(WEB1), plus(WEB3), plus(WEB4), minus(DB0)]
    );
    let pod_lists: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with(PODS) && !r.contains("watch=true"))
        .collect();
    assert_eq!(pod_lists.len(), 2, "{pod_lists:?}");

    gate.notify_one();
    timeout(GUARD, handle.ready())
        .await
        .expect("ready once every kind is listed");
    assert!(handle.is_ready());
    // Everything up to readiness is on the channel: drain it.
    while let Ok(u) = c.informers.updates.try_recv() {
        c.now = c.now.saturating_add(Duration::from_secs(1));
        c.index.apply(c.now, u);
    }

    let st = handle.stats(Kind::Pod);
    assert_eq!(
        (
            st.applied, st.deleted, st.relists, st.gone, st.errors, st.skipped
        ),
        (8, 2, 1, 1, 1, 0),
        "{st:?}"
    );
    assert_eq!(handle.stats(Kind::Node).applied, 2);
    assert_eq!(handle.stats(Kind::NetworkPolicy).relists, 0);

    // The index the agent ends with.
    let idx = &mut c.index;
    let now = c.now;
    let live =
        |idx: &MetadataIndex, uid: &str| idx.pod_by_uid(uid).is_some_and(|p| p.deleted.is_none());
    assert!(live(idx, WEB1) && live(idx, WEB3) && live(idx, WEB4));
    assert!(
        !live(idx, WEB2) && !live(idx, DB0),
        "deleted Pods are in grace only"
    );
    let web1 = idx.pod_by_uid(WEB1).unwrap();
    assert_eq!(
        web1.labels.get("version"),
        Some("2"),
        "the MODIFIED event applied"
    );
    let p = idx.pod_at(ip("10.244.2.11"), now).unwrap();
    assert_eq!(
        idx.interner().resolve(idx.pod(p).unwrap().name),
        "web-5d9c8b7f6-pqrst"
    );
    let st = idx.stats();
    assert_eq!((st.nodes, st.services, st.policies), (2, 1, 2));
    let hit = idx.service(ip("10.96.12.34"), 6, 80).expect("ClusterIP");
    assert_eq!(idx.interner().resolve(hit.port_name), "shop/web:http");
    let hit = idx
        .service(ip("192.168.10.11"), 6, 30080)
        .expect("NodePort");
    assert_eq!(idx.interner().resolve(hit.port_name), "shop/web:http");
    assert_eq!(idx.namespace_labels("shop").get("team"), Some("web"));
    c.informers.shutdown();
}

#[tokio::test]
async fn api_errors_back_off_and_node_local_pod_watch() {
    let api = FakeApi::start().await;
    // Nodes: 429 (kube's client retries that itself), then a 500 (a watcher error: counted,
    // backed off, listed again), then the list.
    api.list(
        NODES,
        ListReply {
            status: StatusCode::TOO_MANY_REQUESTS,
            body: status_body(429, "TooManyRequests"),
            gate: None,
        },
    );
    api.list(
        NODES,
        ListReply {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            body: status_body(500, "InternalError"),
            gate: None,
        },
    );
    api.list(NODES, ListReply::ok(fixture("nodes-list.json")));
    api.list(PODS, ListReply::ok(fixture("pods-list-1.json")));

    let informers = Informers::spawn(
        api.client(),
        InformerConfig {
            pods: PodScope::Node("node-a".into()),
            channel_capacity: 4,
        },
    );
    let handle = informers.handle.clone();
    let mut c = Consumer::new(informers);
    // A small channel: readiness needs the consumer to drain it.
    timeout(GUARD, async {
        loop {
            tokio::select! {
                biased;
                r = handle.ready() => break assert!(r, "informers stopped"),
                _ = c.next() => {}
            }
        }
    })
    .await
    .expect("ready after the retry");
    let st = handle.stats(Kind::Node);
    assert_eq!((st.errors, st.applied, st.relists), (1, 2, 0), "{st:?}");
    let node_lists = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with(NODES) && !r.contains("watch=true"))
        .count();
    assert_eq!(node_lists, 3);

    let pod_list = api
        .requests()
        .into_iter()
        .find(|r| r.starts_with(PODS))
        .unwrap();
    assert!(
        pod_list.contains("fieldSelector=spec.nodeName%3Dnode-a"),
        "{pod_list}"
    );
    // The watch starts right after the list (readiness does not wait for it).
    let node_watch = timeout(
        GUARD,
        api.wait_request(|r| r.starts_with(NODES) && r.contains("watch=true")),
    )
    .await
    .expect("Node watch started");
    assert!(!node_watch.contains("fieldSelector"), "{node_watch}");
    c.informers.shutdown();
}

/// Watch events of the other kinds, released one kind at a time so the order is fixed:
/// EndpointSlice changes re-emit their Service with new backends, a slice that arrives before its
/// Service shows up when the Service does, and deletes of Services, policies and Nodes and a
/// Namespace relabel reach the index.
#[tokio::test]
async fn replay_service_slice_policy_namespace_node_events() {
    let api = FakeApi::start().await;
    api.list(PODS, ListReply::ok(fixture("pods-list-1.json")));
    api.list(NODES, ListReply::ok(fixture("nodes-list.json")));
    api.list(NAMESPACES, ListReply::ok(fixture("namespaces-list.json")));
    api.list(SERVICES, ListReply::ok(fixture("services-list.json")));
    api.list(
        ENDPOINT_SLICES,
        ListReply::ok(fixture("endpointslices-list.json")),
    );
    api.list(
        NETWORK_POLICIES,
        ListReply::ok(fixture("networkpolicies-list.json")),
    );
    let mut gates = Vec::new();
    for (path, file) in [
        (ENDPOINT_SLICES, "endpointslices-watch.jsonl"),
        (SERVICES, "services-watch.jsonl"),
        (NETWORK_POLICIES, "networkpolicies-watch.jsonl"),
        (NAMESPACES, "namespaces-watch.jsonl"),
        (NODES, "nodes-watch.jsonl"),
    ] {
        let gate = Arc::new(Notify::new());
        api.watch_reply(
            path,
            WatchReply {
                lines: fixture(file),
                close: false,
                gate: Some(gate.clone()),
            },
        );
        gates.push(gate);
    }

    let informers = Informers::spawn(api.client(), InformerConfig::default());
    let handle = informers.handle.clone();
    let mut c = Consumer::new(informers);
    timeout(GUARD, async {
        loop {
            tokio::select! {
                biased;
                r = handle.ready() => break assert!(r),
                _ = c.next() => {}
            }
        }
    })
    .await
    .expect("ready");
    while let Ok(u) = c.informers.updates.try_recv() {
        c.index.apply(c.now, u);
    }
    let st = c.index.stats();
    assert_eq!((st.pods, st.nodes, st.services, st.policies), (3, 2, 1, 2));

    let mut updates = Vec::new();
    // EndpointSlices: db's slice arrives before the db Service exists, so it emits nothing yet;
    // then web's slice loses web-2 (unready now) and gains web-4. (In this order: once web's
    // update is out, the db slice, earlier on the same stream, has been handled.)
    gates[0].notify_one();
    updates.push(c.update().await);
    // Services: db added (with the slice seen before), web deleted.
    gates[1].notify_one();
    updates.push(c.update().await);
    updates.push(c.update().await);
    gates[2].notify_one();
    updates.push(c.update().await);
    gates[3].notify_one();
    updates.push(c.update().await);
    gates[4].notify_one();
    updates.push(c.update().await);
    let summary: Vec<String> = updates.iter().map(summarize).collect();
    assert_eq!(
        summary,
        [
            "Service shop/web backends [10.244.1.10, 10.244.2.11]",
            "Service data/db backends [10.244.2.30]",
            "ServiceDeleted shop/web",
            "PolicyDeleted data/default-deny",
            "Namespace shop team=storefront",
            "NodeDeleted node-b",
        ]
    );

    let idx = &c.index;
    assert!(idx.service(ip("10.96.12.34"), 6, 80).is_none());
    assert!(idx.service(ip("192.168.10.11"), 6, 30080).is_none());
    let hit = idx
        .service(ip("10.96.40.1"), 6, 5432)
        .expect("db ClusterIP");
    assert_eq!(idx.interner().resolve(hit.port_name), "data/db:postgres");
    assert_eq!(idx.stats().policies, 1);
    assert_eq!(idx.namespace_labels("shop").get("team"), Some("storefront"));
    assert!(idx.node_by_address(ip("192.168.10.12")).is_none());
    assert!(idx.node_by_address(ip("192.168.10.11")).is_some());
    assert_eq!(handle.stats(Kind::EndpointSlice).applied, 3);
    assert_eq!(handle.stats(Kind::Service).deleted, 1);
    c.informers.shutdown();
}

/// Dropping the update receiver stops the informers even while nothing happens.
#[tokio::test]
async fn dropping_the_receiver_stops_the_informers() {
    let api = FakeApi::start().await;
    let never = Arc::new(Notify::new());
    api.list(
        NETWORK_POLICIES,
        ListReply {
            gate: Some(never.clone()),
            ..ListReply::ok(fixture("networkpolicies-list.json"))
        },
    );
    let informers = Informers::spawn(api.client(), InformerConfig::default());
    let handle = informers.handle.clone();
    drop(informers.updates);
    let ready = timeout(GUARD, handle.ready())
        .await
        .expect("the task ended");
    assert!(!ready, "stopped before every list arrived");
}

fn summarize(u: &MetadataUpdate) -> String {
    match u {
        MetadataUpdate::Service(s) => format!(
            "Service {}/{} backends {:?}",
            s.namespace, s.name, s.backends
        ),
        MetadataUpdate::ServiceDeleted { namespace, name } => {
            format!("ServiceDeleted {namespace}/{name}")
        }
        MetadataUpdate::PolicyDeleted { namespace, name } => {
            format!("PolicyDeleted {namespace}/{name}")
        }
        MetadataUpdate::Namespace(n) => format!(
            "Namespace {} team={}",
            n.name,
            n.labels.get("team").unwrap_or("")
        ),
        MetadataUpdate::NodeDeleted { name } => format!("NodeDeleted {name}"),
        other => format!("{other:?}"),
    }
}

/// The production transport: HTTPS with rustls on the ring provider, the API server's CA given
/// as in a kubeconfig or the in-cluster service account; a client without that CA is refused.
#[tokio::test]
async fn https_with_ring_and_the_cluster_ca() {
    let (tls, ca) = test_pki();
    let api = FakeApi::start_with(Some(tls)).await;
    api.list(PODS, ListReply::ok(fixture("pods-list-1.json")));

    let untrusting = api.tls_client(None);
    let err = timeout(
        GUARD,
        kube::Api::<k8s_openapi::api::core::v1::Pod>::all(untrusting)
            .list(&kube::api::ListParams::default()),
    )
    .await
    .expect("answer within the guard time")
    .expect_err("an unknown CA is refused");
    // The handshake fails before any HTTP request (the reason text depends on which trust
    // store kube falls back to: webpki's UnknownIssuer here).
    assert!(api.requests().is_empty(), "{err:?}");

    let informers = Informers::spawn(api.tls_client(Some(ca)), InformerConfig::default());
    let handle = informers.handle.clone();
    let mut c = Consumer::new(informers);
    assert_eq!(c.pods(3).await, [plus(WEB1), plus(WEB2), plus(DB0)]);
    timeout(GUARD, async {
        loop {
            tokio::select! {
                biased;
                r = handle.ready() => break assert!(r),
                _ = c.next() => {}
            }
        }
    })
    .await
    .expect("ready over HTTPS");
    c.informers.shutdown();
}
