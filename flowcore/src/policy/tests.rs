//! Policy evaluation against a deliberately simple reference evaluator, plus a few hand cases.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------------------------
// Reference evaluator: the Kubernetes rules read literally, brute force over every policy and
// rule, no namespace partitioning, no early exit, linear label lookups.

fn ref_label<'a>(labels: &'a Labels, key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
}

fn ref_selector(sel: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in &sel.match_labels {
        if ref_label(labels, k) != Some(v.as_str()) {
            return false;
        }
    }
    for r in &sel.match_expressions {
        let got = ref_label(labels, &r.key);
        let in_values = got
            .map(|g| r.values.iter().any(|v| v == g))
            .unwrap_or(false);
        let ok = match r.op {
            SelectorOp::In => in_values,
            SelectorOp::NotIn => !in_values,
            SelectorOp::Exists => got.is_some(),
            SelectorOp::DoesNotExist => got.is_none(),
        };
        if !ok {
            return false;
        }
    }
    true
}

fn ref_in(c: &Cidr, ip: IpAddr) -> bool {
    let bits = |ip: IpAddr| -> (u128, u32) {
        match ip {
            IpAddr::V4(a) => (u32::from(a) as u128, 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    };
    let (a, wa) = bits(c.addr());
    let (b, wb) = bits(ip);
    if wa != wb {
        return false;
    }
    let host = (wa - c.prefix() as u32) as usize;
    // Compare bit by bit from the top.
    (host..wa as usize).all(|i| (a >> i) & 1 == (b >> i) & 1)
}

fn ref_peer(peer: &Peer, policy_ns: &str, ep: &Endpoint) -> bool {
    match peer {
        Peer::IpBlock { cidr, except } => {
            ref_in(cidr, ep.ip) && except.iter().all(|e| !ref_in(e, ep.ip))
        }
        Peer::Pods {
            pod_selector: None,
            namespace_selector: None,
        } => false,
        Peer::Pods {
            pod_selector: Some(ps),
            namespace_selector: None,
        } => match ep.pod {
            Some(p) => p.namespace == policy_ns && ref_selector(ps, p.labels),
            None => false,
        },
        Peer::Pods {
            pod_selector: None,
            namespace_selector: Some(ns),
        } => match ep.pod {
            Some(p) => ref_selector(ns, p.namespace_labels),
            None => false,
        },
        Peer::Pods {
            pod_selector: Some(ps),
            namespace_selector: Some(ns),
        } => match ep.pod {
            Some(p) => ref_selector(ns, p.namespace_labels) && ref_selector(ps, p.labels),
            None => false,
        },
    }
}

fn ref_port(port: &PolicyPort, flow: &FlowView) -> bool {
    if port.protocol != flow.proto {
        return false;
    }
    match (&port.port, port.end_port) {
        (None, _) => true,
        (Some(PortSpec::Number(n)), None) => *n == flow.dst_port,
        (Some(PortSpec::Number(n)), Some(e)) => *n <= flow.dst_port && flow.dst_port <= e,
        (Some(PortSpec::Name(name)), _) => match flow.dst.pod {
            Some(p) => p
                .ports
                .iter()
                .filter(|c| &c.name == name && c.protocol == flow.proto)
                .any(|c| c.port == flow.dst_port),
            None => false,
        },
    }
}

/// `None`: not isolated; `Some(None)`: would deny; `Some(Some((ns, name, rule)))`: allowed.
fn reference(
    policies: &[NetworkPolicy],
    flow: &FlowView,
    dir: Direction,
) -> Option<Option<(String, String, usize)>> {
    let (target, peer) = match dir {
        Direction::Ingress => (flow.dst, flow.src),
        Direction::Egress => (flow.src, flow.dst),
    };
    let pod = target.pod?;
    let mut selecting = Vec::new();
    for p in policies {
        let typed = if dir == Direction::Ingress {
            p.policy_types.ingress
        } else {
            p.policy_types.egress
        };
        if p.namespace == pod.namespace && typed && ref_selector(&p.pod_selector, pod.labels) {
            selecting.push(p);
        }
    }
    if selecting.is_empty() {
        return None;
    }
    let mut admitting = Vec::new();
    for p in selecting {
        let rules = if dir == Direction::Ingress {
            &p.ingress
        } else {
            &p.egress
        };
        for (i, r) in rules.iter().enumerate() {
            let peers =
                r.peers.is_empty() || r.peers.iter().any(|x| ref_peer(x, &p.namespace, &peer));
            let ports = r.ports.is_empty() || r.ports.iter().any(|x| ref_port(x, flow));
            if peers && ports {
                admitting.push((p.namespace.clone(), p.name.clone(), i));
            }
        }
    }
    admitting.sort();
    Some(admitting.into_iter().next())
}

// ---------------------------------------------------------------------------------------------
// Generators over a small universe so selectors, ports and CIDRs actually collide.

fn labels() -> impl Strategy<Value = Labels> {
    proptest::collection::vec(
        (
            prop::sample::select(vec!["app", "tier"]),
            prop::sample::select(vec!["a", "b"]),
        ),
        0..3,
    )
    .prop_map(Labels::new)
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let req = (
        prop::sample::select(vec!["app", "tier"]),
        prop::sample::select(vec![
            SelectorOp::In,
            SelectorOp::NotIn,
            SelectorOp::Exists,
            SelectorOp::DoesNotExist,
        ]),
        proptest::collection::vec(prop::sample::select(vec!["a", "b"]), 0..3),
    )
        .prop_map(|(k, op, vs)| LabelRequirement {
            key: k.into(),
            op,
            values: vs.into_iter().map(String::from).collect(),
        });
    (
        proptest::collection::vec(
            (
                prop::sample::select(vec!["app", "tier"]),
                prop::sample::select(vec!["a", "b"]),
            ),
            0..2,
        ),
        proptest::collection::vec(req, 0..2),
    )
        .prop_map(|(ml, me)| LabelSelector {
            match_labels: ml.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            match_expressions: me,
        })
}

fn cidr() -> impl Strategy<Value = Cidr> {
    (0u8..4, 28u8..=32)
        .prop_map(|(last, p)| Cidr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), p))
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (
            proptest::option::of(selector()),
            proptest::option::of(selector())
        )
            .prop_map(|(pod_selector, namespace_selector)| Peer::Pods {
                pod_selector,
                namespace_selector
            }),
        (cidr(), proptest::collection::vec(cidr(), 0..2))
            .prop_map(|(cidr, except)| Peer::IpBlock { cidr, except }),
    ]
}

fn port() -> impl Strategy<Value = PolicyPort> {
    let spec = prop_oneof![
        Just(None),
        (79u16..83).prop_map(|n| Some(PortSpec::Number(n))),
        prop::sample::select(vec!["http", "dns", "nope"])
            .prop_map(|s| Some(PortSpec::Name(s.into()))),
    ];
    (
        prop::sample::select(vec![6u8, 17]),
        spec,
        proptest::option::of(79u16..84),
    )
        .prop_map(|(protocol, port, end_port)| PolicyPort {
            protocol,
            port,
            end_port,
        })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::collection::vec(peer(), 0..3),
        proptest::collection::vec(port(), 0..2),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        prop::sample::select(vec!["ns0", "ns1"]),
        prop::sample::select(vec!["p0", "p1", "p2"]),
        selector(),
        proptest::collection::vec(rule(), 0..3),
        proptest::collection::vec(rule(), 0..3),
        any::<(bool, bool)>(),
    )
        .prop_map(
            |(ns, name, pod_selector, ingress, egress, (i, e))| NetworkPolicy {
                namespace: ns.into(),
                name: name.into(),
                pod_selector,
                ingress,
                egress,
                policy_types: PolicyTypes {
                    ingress: i,
                    egress: e,
                },
            },
        )
}

#[derive(Clone, Debug)]
struct PodSpec {
    ns: &'static str,
    labels: Labels,
}

fn endpoint() -> impl Strategy<Value = (u8, Option<PodSpec>)> {
    (
        0u8..6,
        proptest::option::of(
            (prop::sample::select(vec!["ns0", "ns1"]), labels())
                .prop_map(|(ns, labels)| PodSpec { ns, labels }),
        ),
    )
}

fn pod_view<'a>(
    p: &'a PodSpec,
    ns_labels: &'a (Labels, Labels),
    ports: &'a [ContainerPort],
) -> PodView<'a> {
    let namespace_labels = if p.ns == "ns0" {
        &ns_labels.0
    } else {
        &ns_labels.1
    };
    PodView {
        namespace: p.ns,
        labels: &p.labels,
        namespace_labels,
        ports,
    }
}

proptest! {
    // Modest for CI; `PROPTEST_CASES=N` runs more.
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(400), ..ProptestConfig::default() })]

    #[test]
    fn evaluation_matches_reference(
        policies in proptest::collection::vec(policy(), 0..5),
        ns_labels in (labels(), labels()),
        src in endpoint(),
        dst in endpoint(),
        proto in prop::sample::select(vec![6u8, 17, 1]),
        dst_port in 78u16..84,
    ) {
        let mut set = PolicySet::new();
        for p in &policies {
            set.upsert(p.clone());
        }
        // The set's view after upserts (later duplicates replace earlier ones).
        let effective: Vec<NetworkPolicy> = set.iter().cloned().collect();
        let ports = vec![
            ContainerPort { name: "http".into(), protocol: 6, port: 80 },
            ContainerPort { name: "dns".into(), protocol: 17, port: 81 },
        ];
        let s_pod = src.1.as_ref().map(|p| pod_view(p, &ns_labels, &ports));
        let d_pod = dst.1.as_ref().map(|p| pod_view(p, &ns_labels, &ports));
        let flow = FlowView {
            src: Endpoint { ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, src.0)), pod: s_pod },
            dst: Endpoint { ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, dst.0)), pod: d_pod },
            proto,
            dst_port,
        };
        for dir in [Direction::Ingress, Direction::Egress] {
            let got = set.evaluate(&flow, dir);
            let want = reference(&effective, &flow, dir);
            let got_named = match got {
                Verdict::NotIsolated => None,
                Verdict::WouldDeny => Some(None),
                Verdict::Allowed { policy, rule } => {
                    let p = set.get(policy).unwrap();
                    Some(Some((p.namespace.clone(), p.name.clone(), rule)))
                }
            };
            prop_assert_eq!(got_named, want, "direction {:?}", dir);
        }
    }
}

#[test]
fn cidr_parse_and_contains() {
    let c: Cidr = "10.1.2.3/16".parse().unwrap();
    assert_eq!(c.to_string(), "10.1.0.0/16");
    assert!(c.contains("10.1.255.1".parse().unwrap()));
    assert!(!c.contains("10.2.0.1".parse().unwrap()));
    assert!(!c.contains("::1".parse().unwrap()));
    assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    assert!("10.0.0.0".parse::<Cidr>().is_err());
    let all6: Cidr = "::/0".parse().unwrap();
    assert!(all6.contains("fd00::1".parse().unwrap()));
}

#[test]
fn labels_json_is_sorted_and_escaped() {
    let l = Labels::new([("tier", "web"), ("app", "a\"b"), ("tier", "db")]);
    assert_eq!(l.to_json(), r#"{"app":"a\"b","tier":"db"}"#);
}

// --- hand cases from the Kubernetes documentation's examples ---------------------------------

struct Fixture {
    ports: Vec<ContainerPort>,
    web: Labels,
    client: Labels,
    prod: Labels,
    dev: Labels,
}

fn fixture() -> Fixture {
    Fixture {
        ports: vec![ContainerPort {
            name: "http".into(),
            protocol: 6,
            port: 8080,
        }],
        web: Labels::new([("app", "web")]),
        client: Labels::new([("app", "client")]),
        prod: Labels::new([("env", "prod")]),
        dev: Labels::new([("env", "dev")]),
    }
}

fn ingress_only(rules: Vec<Rule>) -> NetworkPolicy {
    NetworkPolicy {
        namespace: "shop".into(),
        name: "p".into(),
        pod_selector: LabelSelector::labels([("app", "web")]),
        ingress: rules,
        egress: vec![],
        policy_types: PolicyTypes {
            ingress: true,
            egress: false,
        },
    }
}

fn verdict(policy: NetworkPolicy, src: Endpoint, dst: Endpoint, port: u16) -> Verdict {
    let mut set = PolicySet::new();
    set.upsert(policy);
    set.evaluate(
        &FlowView {
            src,
            dst,
            proto: 6,
            dst_port: port,
        },
        Direction::Ingress,
    )
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and_in_two_peers_is_or() {
    let f = fixture();
    let web = PodView {
        namespace: "shop",
        labels: &f.web,
        namespace_labels: &f.prod,
        ports: &f.ports,
    };
    let dst = Endpoint {
        ip: "10.0.0.2".parse().unwrap(),
        pod: Some(web),
    };
    // A client Pod in a dev namespace.
    let dev_client = PodView {
        namespace: "other",
        labels: &f.client,
        namespace_labels: &f.dev,
        ports: &[],
    };
    let src = Endpoint {
        ip: "10.0.0.1".parse().unwrap(),
        pod: Some(dev_client),
    };
    let both = Peer::Pods {
        pod_selector: Some(LabelSelector::labels([("app", "client")])),
        namespace_selector: Some(LabelSelector::labels([("env", "prod")])),
    };
    let rule = |peers| Rule {
        peers,
        ports: vec![],
    };
    assert_eq!(
        verdict(ingress_only(vec![rule(vec![both])]), src, dst, 8080),
        Verdict::WouldDeny
    );
    let either = vec![
        Peer::Pods {
            pod_selector: None,
            namespace_selector: Some(LabelSelector::labels([("env", "prod")])),
        },
        Peer::Pods {
            pod_selector: Some(LabelSelector::labels([("app", "client")])),
            namespace_selector: Some(LabelSelector::all()),
        },
    ];
    assert_eq!(
        verdict(ingress_only(vec![rule(either)]), src, dst, 8080),
        Verdict::Allowed { policy: 0, rule: 0 }
    );
    // podSelector alone only selects Pods of the policy's own namespace.
    let same_ns = Peer::Pods {
        pod_selector: Some(LabelSelector::labels([("app", "client")])),
        namespace_selector: None,
    };
    assert_eq!(
        verdict(ingress_only(vec![rule(vec![same_ns])]), src, dst, 8080),
        Verdict::WouldDeny
    );
}

#[test]
fn ip_block_except_end_port_and_named_port() {
    let f = fixture();
    let web = PodView {
        namespace: "shop",
        labels: &f.web,
        namespace_labels: &f.prod,
        ports: &f.ports,
    };
    let dst = Endpoint {
        ip: "10.0.0.2".parse().unwrap(),
        pod: Some(web),
    };
    let ext = |ip: &str| Endpoint {
        ip: ip.parse().unwrap(),
        pod: None,
    };
    let block = Peer::IpBlock {
        cidr: "172.17.0.0/16".parse().unwrap(),
        except: vec!["172.17.1.0/24".parse().unwrap()],
    };
    let range = PolicyPort {
        protocol: 6,
        port: Some(PortSpec::Number(8000)),
        end_port: Some(8100),
    };
    let p = ingress_only(vec![Rule {
        peers: vec![block],
        ports: vec![range],
    }]);
    assert_eq!(
        verdict(p.clone(), ext("172.17.2.3"), dst, 8080),
        Verdict::Allowed { policy: 0, rule: 0 }
    );
    assert_eq!(
        verdict(p.clone(), ext("172.17.1.3"), dst, 8080),
        Verdict::WouldDeny
    );
    assert_eq!(verdict(p, ext("172.17.2.3"), dst, 8101), Verdict::WouldDeny);
    let named = PolicyPort {
        protocol: 6,
        port: Some(PortSpec::Name("http".into())),
        end_port: None,
    };
    let p = ingress_only(vec![Rule {
        peers: vec![],
        ports: vec![named],
    }]);
    assert_eq!(
        verdict(p.clone(), ext("1.2.3.4"), dst, 8080),
        Verdict::Allowed { policy: 0, rule: 0 }
    );
    assert_eq!(verdict(p, ext("1.2.3.4"), dst, 80), Verdict::WouldDeny);
}

#[test]
fn isolation_needs_the_policy_type_and_empty_rules_deny_all() {
    let f = fixture();
    let web = PodView {
        namespace: "shop",
        labels: &f.web,
        namespace_labels: &f.prod,
        ports: &f.ports,
    };
    let dst = Endpoint {
        ip: "10.0.0.2".parse().unwrap(),
        pod: Some(web),
    };
    let src = Endpoint {
        ip: "1.2.3.4".parse().unwrap(),
        pod: None,
    };
    // Default deny: selects, lists Ingress, no rules.
    assert_eq!(
        verdict(ingress_only(vec![]), src, dst, 80),
        Verdict::WouldDeny
    );
    // An egress-only policy does not isolate for ingress.
    let mut egress_only = ingress_only(vec![]);
    egress_only.policy_types = PolicyTypes {
        ingress: false,
        egress: true,
    };
    assert_eq!(verdict(egress_only, src, dst, 80), Verdict::NotIsolated);
    // An empty rule allows everything.
    assert_eq!(
        verdict(ingress_only(vec![Rule::default()]), src, dst, 80),
        Verdict::Allowed { policy: 0, rule: 0 }
    );
    // The first admitting policy by (namespace, name), then rule index.
    let mut set = PolicySet::new();
    let mut b = ingress_only(vec![Rule::default()]);
    b.name = "b".into();
    let mut a = ingress_only(vec![
        Rule {
            peers: vec![Peer::IpBlock {
                cidr: "9.9.9.9/32".parse().unwrap(),
                except: vec![],
            }],
            ports: vec![],
        },
        Rule::default(),
    ]);
    a.name = "a".into();
    set.upsert(b);
    set.upsert(a);
    let v = set.evaluate(
        &FlowView {
            src,
            dst,
            proto: 6,
            dst_port: 80,
        },
        Direction::Ingress,
    );
    assert_eq!(v, Verdict::Allowed { policy: 0, rule: 1 });
    assert_eq!(set.get(0).map(|p| p.name.as_str()), Some("a"));
    assert_eq!(rule_name(Direction::Egress, 3), "egress-3");
}
