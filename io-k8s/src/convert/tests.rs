use serde_json::json;

use super::*;

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn pod_dual_stack_named_ports_phase_and_times() {
    let p: Pod = from(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web-1", "namespace": "demo", "uid": "u-1",
            "creationTimestamp": "2026-11-20T09:00:00Z",
            "deletionTimestamp": "2026-11-20T10:00:00Z",
            "labels": {"app": "web", "tier": "fe"}
        },
        "spec": {
            "nodeName": "node-a",
            "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080},
                {"containerPort": 9000},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"}
            ]}],
            "initContainers": [{"name": "side", "ports": [{"name": "proxy", "containerPort": 15001}]}]
        },
        "status": {"phase": "Running", "podIP": "10.0.0.5",
                   "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}
    }));
    let info = pod(&p).unwrap();
    assert_eq!(info.uid, "u-1");
    assert_eq!(
        (
            info.namespace.as_str(),
            info.name.as_str(),
            info.node.as_str()
        ),
        ("demo", "web-1", "node-a")
    );
    assert_eq!(info.ips, vec![ip("10.0.0.5"), ip("fd00::5")]);
    assert_eq!(info.labels, Labels::new([("app", "web"), ("tier", "fe")]));
    let ports: Vec<(&str, u8, u16)> = info
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.protocol, p.port))
        .collect();
    assert_eq!(
        ports,
        [("http", 6, 8080), ("dns", 17, 53), ("proxy", 6, 15001)]
    );
    assert_eq!(info.phase, PodPhase::Running);
    assert!(!info.host_network);
    assert_eq!(info.created, Timestamp::from_secs(1_795_165_200));
    assert_eq!(info.deleted, Some(Timestamp::from_secs(1_795_168_800)));
}

#[test]
fn pod_minimal_defaults() {
    let p: Pod = from(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "x"}, "spec": {"containers": [], "hostNetwork": true},
        "status": {"podIP": "192.168.1.4"}}));
    let info = pod(&p).unwrap();
    assert_eq!(info.uid, "default/x", "no uid: namespace/name");
    assert_eq!(info.namespace, "default");
    assert_eq!(info.node, "");
    assert_eq!(info.ips, vec![ip("192.168.1.4")]);
    assert!(info.host_network);
    assert_eq!(info.phase, PodPhase::Pending);
    assert_eq!(info.created, Timestamp::ZERO);
    assert_eq!(pod_uid(&p).unwrap(), "default/x");
}

#[test]
fn pod_errors_name_the_field() {
    let p: Pod = from(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}}));
    assert_eq!(
        pod(&p).unwrap_err(),
        ConvertError::Missing {
            field: "metadata.name".into()
        }
    );
    let p: Pod = from(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
        "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "bogus"}]}}),
    );
    assert_eq!(
        pod(&p).unwrap_err().to_string(),
        "invalid status.podIPs[1].ip \"bogus\": expected an IPv4 or IPv6 address"
    );
    let p: Pod = from(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "p", "containerPort": 70000}]}]}}),
    );
    assert_eq!(
        pod(&p).unwrap_err().to_string(),
        "invalid spec.containers[0].ports[0].containerPort \"70000\": expected a port number 1-65535"
    );
    let p: Pod = from(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "p", "containerPort": 1, "protocol": "ICMP"}]}]}}),
    );
    assert!(
        pod(&p)
            .unwrap_err()
            .to_string()
            .contains("protocol \"ICMP\": expected TCP, UDP or SCTP")
    );
}

#[test]
fn node_addresses_and_cidrs() {
    let n: Node = from(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.10.11"},
            {"type": "Hostname", "address": "node-a"},
            {"type": "ExternalIP", "address": "203.0.113.7"}]}}),
    );
    let info = node(&n).unwrap();
    assert_eq!(info.name, "node-a");
    assert_eq!(info.addresses, vec![ip("192.168.10.11"), ip("203.0.113.7")]);
    assert_eq!(
        info.pod_cidrs,
        vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:1::/64".parse().unwrap()
        ]
    );
    let n: Node = from(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "b"},
        "spec": {"podCIDR": "10.244.2.0/33"}}),
    );
    assert!(
        node(&n)
            .unwrap_err()
            .to_string()
            .starts_with("invalid spec.podCIDR \"10.244.2.0/33\"")
    );
}

#[test]
fn service_cluster_ips_ports_node_ports_and_lb() {
    let s: Service = from(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::a"],
                 "externalIPs": ["198.51.100.1"],
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080},
                           {"name": "dns", "port": 53, "protocol": "UDP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "lb.example"}]}}}));
    let info = service(&s).unwrap();
    assert_eq!(info.cluster_ips, vec![ip("10.96.0.10"), ip("fd00:96::a")]);
    assert_eq!(
        info.ports,
        vec![
            ServicePortInfo {
                name: "http".into(),
                protocol: 6,
                port: 80,
                node_port: Some(30080)
            },
            ServicePortInfo {
                name: "dns".into(),
                protocol: 17,
                port: 53,
                node_port: None
            },
        ]
    );
    assert_eq!(
        info.load_balancer_ips,
        vec![ip("198.51.100.1"), ip("203.0.113.9")]
    );
    assert!(info.backends.is_empty());

    let headless: Service = from(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "demo"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 5432}]}}));
    assert!(service(&headless).unwrap().cluster_ips.is_empty());
}

#[test]
fn endpoint_slice_skips_unready_and_fqdn() {
    let e: EndpointSlice = from(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true}},
                      {"addresses": ["10.0.0.6"], "conditions": {"ready": false}},
                      {"addresses": ["10.0.0.7"]}]}),
    );
    let s = endpoint_slice(&e).unwrap();
    assert_eq!(s.service.as_deref(), Some("web"));
    assert_eq!(s.backends, vec![ip("10.0.0.5"), ip("10.0.0.7")]);
    let e: EndpointSlice = from(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "x", "namespace": "demo"}, "addressType": "FQDN",
        "endpoints": [{"addresses": ["example.com"]}]}),
    );
    let s = endpoint_slice(&e).unwrap();
    assert_eq!((s.service, s.backends.len()), (None, 0));
}

#[test]
fn namespace_labels() {
    let n: Namespace = from(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "demo", "labels": {"team": "web"}}}));
    assert_eq!(
        namespace_info(&n).unwrap(),
        NamespaceInfo {
            name: "demo".into(),
            labels: Labels::new([("team", "web")])
        }
    );
}

#[test]
fn network_policy_full() {
    let p: K8sNetworkPolicy = from(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow", "namespace": "demo"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "api"},
                            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]},
            "ingress": [{"from": [
                    {"namespaceSelector": {"matchLabels": {"team": "web"}}, "podSelector": {}},
                    {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                 "ports": [{"port": "http"}, {"port": 8000, "endPort": 8100, "protocol": "TCP"},
                           {"port": "53", "protocol": "UDP"}]}],
            "egress": [{}]
        }}),
    );
    let np = network_policy(&p).unwrap();
    assert_eq!(
        np.policy_types,
        PolicyTypes {
            ingress: true,
            egress: true
        },
        "default types"
    );
    assert_eq!(
        np.pod_selector.match_labels,
        vec![("app".to_string(), "api".to_string())]
    );
    assert_eq!(np.pod_selector.match_expressions[0].op, SelectorOp::NotIn);
    let r = &np.ingress[0];
    assert_eq!(
        r.peers,
        vec![
            Peer::Pods {
                pod_selector: Some(LabelSelector::all()),
                namespace_selector: Some(LabelSelector::labels([("team", "web")])),
            },
            Peer::IpBlock {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.1.0.0/16".parse().unwrap()],
            },
        ]
    );
    assert_eq!(
        r.ports,
        vec![
            PolicyPort {
                protocol: 6,
                port: Some(PortSpec::Name("http".into())),
                end_port: None
            },
            PolicyPort {
                protocol: 6,
                port: Some(PortSpec::Number(8000)),
                end_port: Some(8100)
            },
            PolicyPort {
                protocol: 17,
                port: Some(PortSpec::Number(53)),
                end_port: None
            },
        ]
    );
    assert_eq!(
        np.egress,
        vec![Rule::default()],
        "an empty egress rule allows all"
    );

    let deny: K8sNetworkPolicy = from(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "demo"}, "spec": {"podSelector": {}}}),
    );
    let np = network_policy(&deny).unwrap();
    assert_eq!(
        np.policy_types,
        PolicyTypes {
            ingress: true,
            egress: false
        }
    );
    assert!(np.ingress.is_empty() && np.pod_selector == LabelSelector::all());
}

#[test]
fn network_policy_errors() {
    let p: K8sNetworkPolicy = from(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p"}, "spec": {"podSelector": {}, "policyTypes": ["Sideways"]}}),
    );
    assert_eq!(
        network_policy(&p).unwrap_err().to_string(),
        "invalid spec.policyTypes[0] \"Sideways\": expected Ingress or Egress"
    );
    let p: K8sNetworkPolicy = from(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p"}, "spec": {"podSelector": {}, "egress": [{"to": [
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}}]}]}}),
    );
    assert_eq!(
        network_policy(&p).unwrap_err().to_string(),
        "invalid spec.egress[0].to[0].podSelector.matchExpressions[0].operator \"Like\": expected In, NotIn, Exists or DoesNotExist"
    );
    let p: K8sNetworkPolicy = from(
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p"}, "spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0"}}]}]}}),
    );
    assert!(
        network_policy(&p)
            .unwrap_err()
            .to_string()
            .starts_with("invalid spec.ingress[0].from[0].ipBlock.cidr")
    );
}
