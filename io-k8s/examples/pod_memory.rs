//! Heap cost of watching Pods cluster-wide: what one Pod costs the agent in flowcore's
//! `MetadataIndex` plus the informer's key set, and what a decoded API object costs while it
//! passes through (the numbers behind io-k8s/README.md's node-local vs cluster-wide table).
//!
//! `cargo run -p io-k8s --example pod_memory [PODS]` (default 100000). Heap bytes are counted
//! by a global allocator (live bytes: allocations minus frees), so the figures do not depend on
//! the optimisation level.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use flowcore::metadata::{MetadataIndex, MetadataUpdate};
use flowcore::model::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

/// A Pod as a Deployment makes it: 3 labels, one IP, one named port, a realistic spec/status.
fn pod_json(i: usize) -> Value {
    let app = format!("app-{}", i % 500);
    let hash = format!("{:09x}", (i / 10) * 7919 % 0xfff_ffff);
    let ip = format!("10.{}.{}.{}", 64 + (i >> 16) % 64, (i >> 8) & 255, i & 255);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{app}-{hash}-{:05x}", i & 0xfffff),
            "namespace": format!("team-{}", i % 50),
            "uid": format!("3b0f2c1e-9a8d-4c7b-8e6f-{:012x}", i),
            "resourceVersion": (1000 + i).to_string(),
            "creationTimestamp": "2026-11-25T07:00:00Z",
            "labels": {"app": app, "pod-template-hash": hash, "tier": "backend"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{app}-{hash}"), "uid": "0e1f2a3b-4c5d-4e6f-8a9b-000000000000",
                "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": format!("node-{}", i % 1000),
            "containers": [{"name": "main", "image": format!("registry.example/{app}:1.4.2"),
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "serviceAccountName": "default",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "hostIP": "192.168.10.11", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "2026-11-25T07:00:05Z"}],
            "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0,
                "image": format!("registry.example/{app}:1.4.2"), "imageID": "sha256:ab",
                "state": {"running": {"startedAt": "2026-11-25T07:00:04Z"}}}],
            "qosClass": "Burstable"
        }
    })
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);

    // One decoded object, as the watcher holds it while it is converted.
    let text = serde_json::to_string(&pod_json(1)).unwrap();
    let before = live();
    let decoded: Pod = serde_json::from_str(&text).unwrap();
    let per_decoded = live() - before;
    drop(decoded);

    let mut index = MetadataIndex::new(Duration::from_secs(60));
    let mut keys: HashSet<String> = HashSet::new();
    let (mut index_bytes, mut key_bytes) = (0i64, 0i64);
    let now = Timestamp::from_secs(1_795_000_000);
    for i in 0..n {
        let p: Pod = serde_json::from_value(pod_json(i)).unwrap();
        let info = io_k8s::convert::pod(&p).unwrap();
        let b = live();
        index.apply(now, MetadataUpdate::Pod(info));
        let a = live();
        keys.insert(io_k8s::convert::pod_uid(&p).unwrap());
        // The PodInfo moved into apply() is freed inside it; what stays is the index's growth.
        index_bytes += a - b;
        key_bytes += live() - a;
        drop(p);
    }
    let per = |b: i64| b as f64 / n as f64;
    println!("pods: {n}");
    println!("decoded k8s-openapi Pod (transient, per object in flight): {per_decoded} B");
    println!(
        "MetadataIndex per Pod: {:.0} B (total {:.1} MiB)",
        per(index_bytes),
        index_bytes as f64 / 1048576.0
    );
    println!(
        "informer key set per Pod: {:.0} B (total {:.1} MiB)",
        per(key_bytes),
        key_bytes as f64 / 1048576.0
    );
    println!(
        "cluster-wide Pod watch, resident: {:.0} B per Pod",
        per(index_bytes + key_bytes)
    );
    assert_eq!(index.stats().pods, n);
}
