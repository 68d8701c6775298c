use std::net::IpAddr;

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pod(uid: &str, name: &str, node: &str, addr: &str, created: u64) -> PodInfo {
    PodInfo {
        uid: uid.into(),
        namespace: "default".into(),
        name: name.into(),
        node: node.into(),
        ips: vec![ip(addr)],
        labels: Labels::new([("app", name)]),
        phase: PodPhase::Running,
        created: Timestamp::from_secs(created),
        ..PodInfo::default()
    }
}

fn name_at(m: &MetadataIndex, addr: &str, at: u64) -> Option<String> {
    let id = m.pod_at(ip(addr), Timestamp::from_secs(at))?;
    Some(m.interner().resolve(m.pod(id)?.name).to_string())
}

#[test]
fn deleted_pod_resolves_during_grace_then_not() {
    let mut m = MetadataIndex::new(Duration::from_secs(60));
    m.apply(
        Timestamp::from_secs(10),
        MetadataUpdate::Pod(pod("u1", "a", "n1", "10.0.0.5", 10)),
    );
    m.apply(
        Timestamp::from_secs(100),
        MetadataUpdate::PodDeleted { uid: "u1".into() },
    );
    assert_eq!(name_at(&m, "10.0.0.5", 50).as_deref(), Some("a"));
    // A connection first seen after the deletion, within the grace period.
    assert_eq!(name_at(&m, "10.0.0.5", 120).as_deref(), Some("a"));
    assert_eq!(name_at(&m, "10.0.0.5", 170), None);
    m.expire(Timestamp::from_secs(161));
    assert_eq!(name_at(&m, "10.0.0.5", 50), None);
    assert_eq!(m.stats().pods, 0);
}

#[test]
fn reused_ip_resolves_by_connection_start() {
    let mut m = MetadataIndex::new(Duration::from_secs(60));
    m.apply(
        Timestamp::from_secs(10),
        MetadataUpdate::Pod(pod("u1", "old", "n1", "10.0.0.5", 10)),
    );
    m.apply(
        Timestamp::from_secs(100),
        MetadataUpdate::PodDeleted { uid: "u1".into() },
    );
    m.apply(
        Timestamp::from_secs(105),
        MetadataUpdate::Pod(pod("u2", "new", "n1", "10.0.0.5", 104)),
    );
    assert_eq!(name_at(&m, "10.0.0.5", 50).as_deref(), Some("old"));
    assert_eq!(name_at(&m, "10.0.0.5", 102).as_deref(), Some("old"));
    assert_eq!(name_at(&m, "10.0.0.5", 104).as_deref(), Some("new"));
    assert_eq!(name_at(&m, "10.0.0.5", 1000).as_deref(), Some("new"));
    // Before any tenancy: the first owner (clock skew), not nothing.
    assert_eq!(name_at(&m, "10.0.0.5", 1).as_deref(), Some("old"));
}

#[test]
fn reused_ip_without_delete_event_closes_the_old_tenancy() {
    let mut m = MetadataIndex::new(Duration::from_secs(60));
    m.apply(
        Timestamp::from_secs(10),
        MetadataUpdate::Pod(pod("u1", "old", "n1", "10.0.0.5", 10)),
    );
    // The delete was missed; a new Pod shows up with the same IP.
    m.apply(
        Timestamp::from_secs(200),
        MetadataUpdate::Pod(pod("u2", "new", "n1", "10.0.0.5", 190)),
    );
    assert_eq!(name_at(&m, "10.0.0.5", 150).as_deref(), Some("old"));
    assert_eq!(name_at(&m, "10.0.0.5", 201).as_deref(), Some("new"));
}

#[test]
fn host_network_pods_are_not_indexed_by_ip() {
    let mut m = MetadataIndex::new(Duration::from_secs(60));
    let mut p = pod("u1", "h", "n1", "192.168.1.1", 0);
    p.host_network = true;
    m.apply(Timestamp::from_secs(1), MetadataUpdate::Pod(p));
    m.apply(
        Timestamp::from_secs(1),
        MetadataUpdate::Node(NodeInfo {
            name: "n1".into(),
            addresses: vec![ip("192.168.1.1")],
            pod_cidrs: vec!["10.0.1.0/24".parse().unwrap()],
        }),
    );
    let n1 = m.interner().get("n1").unwrap();
    assert_eq!(
        m.classify(ip("192.168.1.1"), Timestamp::from_secs(2)),
        EndpointKind::Node { node: n1 }
    );
    assert_eq!(
        m.classify(ip("10.0.1.9"), Timestamp::from_secs(2)),
        EndpointKind::UnknownPod { node: n1 }
    );
    assert_eq!(
        m.classify(ip("8.8.8.8"), Timestamp::from_secs(2)),
        EndpointKind::External
    );
}

#[test]
fn services_by_cluster_ip_load_balancer_and_node_port() {
    let mut m = MetadataIndex::new(Duration::from_secs(60));
    m.apply(
        Timestamp::ZERO,
        MetadataUpdate::Node(NodeInfo {
            name: "n1".into(),
            addresses: vec![ip("192.168.1.1")],
            pod_cidrs: vec![],
        }),
    );
    let svc = ServiceInfo {
        namespace: "shop".into(),
        name: "web".into(),
        cluster_ips: vec![ip("10.96.0.10")],
        ports: vec![ServicePortInfo {
            name: "http".into(),
            protocol: 6,
            port: 80,
            node_port: Some(30080),
        }],
        load_balancer_ips: vec![ip("203.0.113.7")],
        backends: vec![],
    };
    m.apply(Timestamp::ZERO, MetadataUpdate::Service(svc));
    let name = |h: Option<ServiceHit>| h.map(|h| m.interner().resolve(h.port_name).to_string());
    assert_eq!(
        name(m.service(ip("10.96.0.10"), 6, 80)).as_deref(),
        Some("shop/web:http")
    );
    assert_eq!(
        name(m.service(ip("203.0.113.7"), 6, 80)).as_deref(),
        Some("shop/web:http")
    );
    assert_eq!(
        name(m.service(ip("192.168.1.1"), 6, 30080)).as_deref(),
        Some("shop/web:http")
    );
    assert_eq!(m.service(ip("10.96.0.10"), 17, 80), None);
    assert_eq!(m.service(ip("10.96.0.11"), 6, 30080), None);
    m.apply(
        Timestamp::ZERO,
        MetadataUpdate::ServiceDeleted {
            namespace: "shop".into(),
            name: "web".into(),
        },
    );
    assert_eq!(m.service(ip("10.96.0.10"), 6, 80), None);
    assert_eq!(m.service(ip("192.168.1.1"), 6, 30080), None);
}

#[test]
fn pod_cidr_lookup_is_longest_prefix_and_follows_node_updates() {
    let mut m = MetadataIndex::new(Duration::from_secs(60));
    let node = |name: &str, cidrs: &[&str]| {
        MetadataUpdate::Node(NodeInfo {
            name: name.into(),
            addresses: vec![],
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
        })
    };
    m.apply(Timestamp::ZERO, node("wide", &["10.0.0.0/16"]));
    m.apply(
        Timestamp::ZERO,
        node("narrow", &["10.0.5.0/24", "fd00:5::/64"]),
    );
    let name = |m: &MetadataIndex, a: &str| {
        m.node_by_pod_cidr(ip(a))
            .map(|s| m.interner().resolve(s).to_string())
    };
    assert_eq!(name(&m, "10.0.5.9").as_deref(), Some("narrow"));
    assert_eq!(name(&m, "10.0.6.9").as_deref(), Some("wide"));
    assert_eq!(name(&m, "fd00:5::9").as_deref(), Some("narrow"));
    assert_eq!(name(&m, "10.1.0.1"), None);
    m.apply(Timestamp::ZERO, node("narrow", &["10.0.7.0/24"]));
    assert_eq!(name(&m, "10.0.5.9").as_deref(), Some("wide"));
    assert_eq!(name(&m, "fd00:5::9"), None);
    assert_eq!(name(&m, "10.0.7.1").as_deref(), Some("narrow"));
    m.apply(
        Timestamp::ZERO,
        MetadataUpdate::NodeDeleted {
            name: "wide".into(),
        },
    );
    assert_eq!(name(&m, "10.0.6.9"), None);
}

#[test]
fn a_pod_reported_again_after_its_delete_resolves_again() {
    let mut m = MetadataIndex::new(Duration::from_secs(60));
    m.apply(
        Timestamp::from_secs(10),
        MetadataUpdate::Pod(pod("u1", "a", "n1", "10.0.0.5", 10)),
    );
    m.apply(
        Timestamp::from_secs(100),
        MetadataUpdate::PodDeleted { uid: "u1".into() },
    );
    m.apply(
        Timestamp::from_secs(110),
        MetadataUpdate::Pod(pod("u1", "a", "n1", "10.0.0.5", 10)),
    );
    m.expire(Timestamp::from_secs(1000));
    assert_eq!(name_at(&m, "10.0.0.5", 500).as_deref(), Some("a"));
    assert_eq!(m.stats().pods, 1);
}

mod robustness {
    use super::*;
    use crate::policy::{LabelSelector, NetworkPolicy, PolicyTypes, Rule};
    use proptest::prelude::*;

    fn update() -> impl Strategy<Value = MetadataUpdate> {
        let addr = (0u8..6).prop_map(|i| format!("10.0.0.{i}"));
        prop_oneof![
            (
                0u8..4,
                addr.clone(),
                0u64..100,
                any::<bool>(),
                proptest::option::of(0u64..100)
            )
                .prop_map(|(u, a, created, host, deleted)| {
                    let mut p = pod(&format!("u{u}"), &format!("p{u}"), "n1", &a, created);
                    p.host_network = host;
                    p.deleted = deleted.map(Timestamp::from_secs);
                    MetadataUpdate::Pod(p)
                }),
            (0u8..5).prop_map(|u| MetadataUpdate::PodDeleted {
                uid: format!("u{u}")
            }),
            (0u8..2, addr.clone(), 8u8..33).prop_map(|(n, a, len)| MetadataUpdate::Node(
                NodeInfo {
                    name: format!("n{n}"),
                    addresses: vec![ip(&a)],
                    pod_cidrs: vec![crate::policy::Cidr::new(ip(&a), len)],
                }
            )),
            (0u8..3).prop_map(|n| MetadataUpdate::NodeDeleted {
                name: format!("n{n}")
            }),
            (addr, 0u16..3, proptest::option::of(0u16..3)).prop_map(|(a, port, np)| {
                MetadataUpdate::Service(ServiceInfo {
                    namespace: "default".into(),
                    name: "s".into(),
                    cluster_ips: vec![ip(&a)],
                    ports: vec![ServicePortInfo {
                        name: String::new(),
                        protocol: 6,
                        port,
                        node_port: np,
                    }],
                    ..ServiceInfo::default()
                })
            }),
            Just(MetadataUpdate::ServiceDeleted {
                namespace: "default".into(),
                name: "s".into()
            }),
            Just(MetadataUpdate::NamespaceDeleted {
                name: "default".into()
            }),
            Just(MetadataUpdate::Policy(NetworkPolicy {
                namespace: "default".into(),
                name: "np".into(),
                pod_selector: LabelSelector::all(),
                ingress: vec![Rule::default()],
                egress: vec![],
                policy_types: PolicyTypes {
                    ingress: true,
                    egress: true
                },
            })),
            Just(MetadataUpdate::PolicyDeleted {
                namespace: "default".into(),
                name: "np".into()
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), ..ProptestConfig::default() })]
        /// Any event sequence, at times going back and forth: lookups never panic, and a Pod
        /// reported live is found at its IP right after.
        #[test]
        fn arbitrary_updates_never_panic(evs in proptest::collection::vec((0u64..200, update()), 0..40)) {
            let mut m = MetadataIndex::new(Duration::from_secs(30));
            for (t, ev) in evs {
                let now = Timestamp::from_secs(t);
                let live = match &ev {
                    MetadataUpdate::Pod(p) if !p.host_network && p.deleted.is_none() => Some((p.ips[0], p.uid.clone())),
                    _ => None,
                };
                m.apply(now, ev);
                if let Some((addr, uid)) = live {
                    let later = Timestamp::from_secs(1_000);
                    let id = m.pod_at(addr, later);
                    prop_assert_eq!(id.and_then(|id| m.pod(id)).map(|p| p.uid.to_string()), Some(uid));
                }
                for i in 0..6u8 {
                    let a = IpAddr::from([10, 0, 0, i]);
                    let _ = m.classify(a, now);
                    let _ = m.service(a, 6, 1);
                    let id = m.pod_at(a, now);
                    let _ = m.evaluate_policies((a, id), (a, id), 6, 1);
                }
            }
        }
    }
}

#[test]
fn churned_pod_names_are_compacted_away_and_live_names_survive() {
    let mut m = MetadataIndex::new(Duration::from_secs(60));
    m.apply(
        Timestamp::from_secs(1),
        MetadataUpdate::Node(NodeInfo {
            name: "node-a".into(),
            addresses: vec![ip("192.168.0.1")],
            pod_cidrs: vec![Cidr::new(ip("10.1.0.0"), 16)],
        }),
    );
    m.apply(
        Timestamp::from_secs(1),
        MetadataUpdate::Pod(pod("keep", "long-lived", "node-a", "10.9.9.9", 1)),
    );
    let mut own = m.interner_mut().intern("node-a");
    let mut peak = 0;
    // 50,000 short-lived Pods, each deleted and expired.
    for i in 0..50_000u64 {
        let t = 10 + i;
        let a = format!("10.1.{}.{}", (i / 250) % 250, i % 250 + 1);
        m.apply(
            Timestamp::from_secs(t),
            MetadataUpdate::Pod(pod(
                &format!("u{i}"),
                &format!("job-{i:06}"),
                "node-a",
                &a,
                t,
            )),
        );
        m.apply(
            Timestamp::from_secs(t),
            MetadataUpdate::PodDeleted {
                uid: format!("u{i}"),
            },
        );
        m.compact(&mut [&mut own]);
        peak = peak.max(m.stats().names);
    }
    let s = m.stats();
    assert!(s.compactions > 0);
    // Live: ~60 Pods in their grace period (name, labels) + the long-lived one + a few names.
    assert!(peak < 10_000, "the table stays bounded: peak {peak} names");
    assert_eq!(name_at(&m, "10.9.9.9", 5).as_deref(), Some("long-lived"));
    assert_eq!(m.interner().resolve(own), "node-a");
    for n in [
        m.node_by_pod_cidr(ip("10.1.3.3")),
        m.node_by_address(ip("192.168.0.1")),
    ] {
        assert_eq!(n.map(|n| m.interner().resolve(n)), Some("node-a"));
    }
}
