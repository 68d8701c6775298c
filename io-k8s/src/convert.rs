//! Kubernetes API objects (k8s-openapi types) → flowcore's typed metadata model.
//!
//! These functions are the only place that reads k8s-openapi types: the informers and the static
//! `--metadata` file both go through them, so a Pod means the same thing whichever way it came.
//!
//! Invariants: no function panics on API input. A field the model cannot do without (a Pod's
//! name, a Service port number out of range, an unparsable IP) is a [`ConvertError`] naming the
//! field by its JSON path; the informer counts and skips the object, the static loader reports
//! it. Fields that are merely absent take the Kubernetes default (protocol TCP, policy types
//! `[Ingress]` plus `Egress` when egress rules exist, …).

use std::collections::BTreeMap;
use std::net::IpAddr;

use flowcore::metadata::{
    NamespaceInfo, NodeInfo, PodInfo, PodPhase, ServiceInfo, ServicePortInfo,
};
use flowcore::model::Timestamp;
use flowcore::policy::{
    Cidr, ContainerPort, LabelRequirement, LabelSelector, Labels, NetworkPolicy, Peer, PolicyPort,
    PolicyTypes, PortSpec, Rule, SelectorOp,
};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy as K8sNetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector as K8sLabelSelector, ObjectMeta, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use thiserror::Error;

/// Why an object could not be converted. `field` is the JSON path inside the object
/// (`status.podIPs[1].ip`).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("missing required field {field}")]
    Missing { field: String },
    #[error("invalid {field} {value:?}: expected {expected}")]
    Invalid {
        field: String,
        value: String,
        expected: &'static str,
    },
}

impl ConvertError {
    fn invalid(field: impl Into<String>, value: impl ToString, expected: &'static str) -> Self {
        ConvertError::Invalid {
            field: field.into(),
            value: value.to_string(),
            expected,
        }
    }
}

/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Kubernetes `Time` → flowcore `Timestamp` (times before 1970 clamp to zero).
pub fn timestamp(t: &Time) -> Timestamp {
    let ns = t.0.as_nanosecond();
    Timestamp::from_nanos(u64::try_from(ns.max(0)).unwrap_or(u64::MAX))
}

/// `TCP`/`UDP`/`SCTP` (absent: TCP, the API default) → IANA protocol number.
pub fn protocol(field: &str, p: Option<&str>) -> Result<u8, ConvertError> {
    match p {
        None | Some("TCP") => Ok(6),
        Some("UDP") => Ok(17),
        Some("SCTP") => Ok(132),
        Some(other) => Err(ConvertError::invalid(field, other, "TCP, UDP or SCTP")),
    }
}

fn ip(field: impl FnOnce() -> String, s: &str) -> Result<IpAddr, ConvertError> {
    s.trim()
        .parse()
        .map_err(|_| ConvertError::invalid(field(), s, "an IPv4 or IPv6 address"))
}

fn cidr(field: impl FnOnce() -> String, s: &str) -> Result<Cidr, ConvertError> {
    s.trim()
        .parse()
        .map_err(|_| ConvertError::invalid(field(), s, "ADDRESS/PREFIX, e.g. 10.0.0.0/8"))
}

fn port(field: impl FnOnce() -> String, p: i32) -> Result<u16, ConvertError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ConvertError::invalid(field(), p, "a port number 1-65535"))
}

fn name(meta: &ObjectMeta) -> Result<&str, ConvertError> {
    meta.name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ConvertError::Missing {
            field: "metadata.name".into(),
        })
}

/// Namespaced objects: a missing namespace is `default`, as kubectl applies it.
fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

fn labels(map: Option<&BTreeMap<String, String>>) -> Labels {
    map.map(|m| Labels::new(m.iter())).unwrap_or_default()
}

/// A Pod. Without `metadata.uid` (hand-written files) the uid is `namespace/name`; without
/// `creationTimestamp` the Pod owns its IPs from the epoch (a static file has no history).
pub fn pod(p: &Pod) -> Result<PodInfo, ConvertError> {
    let meta = &p.metadata;
    let name = name(meta)?.to_string();
    let namespace = namespace(meta).to_string();
    let uid = match meta.uid.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => u.to_string(),
        None => format!("{namespace}/{name}"),
    };
    let spec = p.spec.as_ref();
    let status = p.status.as_ref();

    let mut ips = Vec::new();
    if let Some(list) = status.and_then(|s| s.pod_ips.as_ref()) {
        for (i, pip) in list.iter().enumerate() {
            let a = ip(|| format!("status.podIPs[{i}].ip"), &pip.ip)?;
            if !ips.contains(&a) {
                ips.push(a);
            }
        }
    }
    // Older API servers (and hand-written files) may carry only the singular field.
    if ips.is_empty()
        && let Some(s) = status
            .and_then(|s| s.pod_ip.as_deref())
            .filter(|s| !s.is_empty())
    {
        ips.push(ip(|| "status.podIP".into(), s)?);
    }

    // Only named ports matter: the model keeps them to resolve named NetworkPolicy ports.
    let mut ports = Vec::new();
    if let Some(spec) = spec {
        let containers = spec
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| ("containers", i, c))
            .chain(
                spec.init_containers
                    .iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, c)| ("initContainers", i, c)),
            );
        for (list, ci, c) in containers {
            for (pi, cp) in c.ports.iter().flatten().enumerate() {
                let Some(pname) = cp.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let at = || format!("spec.{list}[{ci}].ports[{pi}]");
                ports.push(ContainerPort {
                    name: pname.to_string(),
                    protocol: protocol(&format!("{}.protocol", at()), cp.protocol.as_deref())?,
                    port: port(|| format!("{}.containerPort", at()), cp.container_port)?,
                });
            }
        }
    }

    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => PodPhase::Running,
        Some("Succeeded") => PodPhase::Succeeded,
        Some("Failed") => PodPhase::Failed,
        Some("Unknown") => PodPhase::Unknown,
        // Absent or a phase newer than this code: Pending is the API's starting state.
        _ => PodPhase::Pending,
    };

    Ok(PodInfo {
        uid,
        namespace,
        name,
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ips,
        labels: labels(meta.labels.as_ref()),
        ports,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        phase,
        created: meta
            .creation_timestamp
            .as_ref()
            .map(timestamp)
            .unwrap_or(Timestamp::ZERO),
        deleted: meta.deletion_timestamp.as_ref().map(timestamp),
    })
}

/// The key a Pod delete event carries (same fallback as [`pod`]).
pub fn pod_uid(p: &Pod) -> Result<String, ConvertError> {
    let meta = &p.metadata;
    let name = name(meta)?;
    Ok(match meta.uid.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => u.to_string(),
        None => format!("{}/{name}", namespace(meta)),
    })
}

/// A Node: its InternalIP and ExternalIP addresses (Hostname entries are not addresses) and
/// Pod CIDRs.
pub fn node(n: &Node) -> Result<NodeInfo, ConvertError> {
    let name = name(&n.metadata)?.to_string();
    let mut addresses = Vec::new();
    for (i, a) in n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        let a = ip(|| format!("status.addresses[{i}].address"), &a.address)?;
        if !addresses.contains(&a) {
            addresses.push(a);
        }
    }
    let mut pod_cidrs = Vec::new();
    if let Some(spec) = &n.spec {
        for (i, c) in spec.pod_cidrs.iter().flatten().enumerate() {
            pod_cidrs.push(cidr(|| format!("spec.podCIDRs[{i}]"), c)?);
        }
        if pod_cidrs.is_empty()
            && let Some(c) = spec.pod_cidr.as_deref().filter(|c| !c.is_empty())
        {
            pod_cidrs.push(cidr(|| "spec.podCIDR".into(), c)?);
        }
    }
    Ok(NodeInfo {
        name,
        addresses,
        pod_cidrs,
    })
}

/// A Service without backends ([`crate::services::ServiceJoin`] adds those from
/// EndpointSlices). Headless Services (`clusterIP: None`) have no ClusterIP; `externalIPs` count
/// as load-balancer addresses because kube-proxy treats both as "dialled address → Service".
pub fn service(s: &Service) -> Result<ServiceInfo, ConvertError> {
    let name = name(&s.metadata)?.to_string();
    let namespace = namespace(&s.metadata).to_string();
    let spec = s.spec.as_ref();
    let mut cluster_ips = Vec::new();
    let mut push_cluster_ip = |field: &dyn Fn() -> String, v: &str| {
        if v.is_empty() || v == "None" {
            return Ok(());
        }
        let a = ip(field, v)?;
        if !cluster_ips.contains(&a) {
            cluster_ips.push(a);
        }
        Ok::<(), ConvertError>(())
    };
    if let Some(spec) = spec {
        for (i, c) in spec.cluster_ips.iter().flatten().enumerate() {
            push_cluster_ip(&|| format!("spec.clusterIPs[{i}]"), c)?;
        }
        if let Some(c) = &spec.cluster_ip {
            push_cluster_ip(&|| "spec.clusterIP".into(), c)?;
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        ports.push(ServicePortInfo {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(&format!("spec.ports[{i}].protocol"), p.protocol.as_deref())?,
            port: port(|| format!("spec.ports[{i}].port"), p.port)?,
            node_port: p
                .node_port
                .filter(|np| *np != 0)
                .map(|np| port(|| format!("spec.ports[{i}].nodePort"), np))
                .transpose()?,
        });
    }
    let mut load_balancer_ips = Vec::new();
    for (i, e) in spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        load_balancer_ips.push(ip(|| format!("spec.externalIPs[{i}]"), e)?);
    }
    for (i, ing) in s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        // Hostname-only ingresses (some cloud load balancers) have no address to match.
        if let Some(v) = ing.ip.as_deref().filter(|v| !v.is_empty()) {
            let a = ip(|| format!("status.loadBalancer.ingress[{i}].ip"), v)?;
            if !load_balancer_ips.contains(&a) {
                load_balancer_ips.push(a);
            }
        }
    }
    Ok(ServiceInfo {
        namespace,
        name,
        cluster_ips,
        ports,
        load_balancer_ips,
        backends: Vec::new(),
    })
}

/// What an EndpointSlice contributes to its Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceInfo {
    pub namespace: String,
    pub name: String,
    /// The `kubernetes.io/service-name` label; `None` for slices not managed for a Service.
    pub service: Option<String>,
    /// Addresses of endpoints not known to be unready.
    pub backends: Vec<IpAddr>,
}

/// An EndpointSlice. FQDN slices carry no addresses the index could match, so they are empty.
pub fn endpoint_slice(e: &EndpointSlice) -> Result<SliceInfo, ConvertError> {
    let name = name(&e.metadata)?.to_string();
    let namespace = namespace(&e.metadata).to_string();
    let service = e
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .filter(|s| !s.is_empty())
        .cloned();
    let mut backends = Vec::new();
    if e.address_type == "IPv4" || e.address_type == "IPv6" {
        for (i, ep) in e.endpoints.iter().flatten().enumerate() {
            // `ready` absent means ready (API contract: "should be interpreted as true").
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for (j, a) in ep.addresses.iter().enumerate() {
                let a = ip(|| format!("endpoints[{i}].addresses[{j}]"), a)?;
                if !backends.contains(&a) {
                    backends.push(a);
                }
            }
        }
    }
    Ok(SliceInfo {
        namespace,
        name,
        service,
        backends,
    })
}

/// A Namespace and its labels (they feed `namespaceSelector`).
pub fn namespace_info(n: &Namespace) -> Result<NamespaceInfo, ConvertError> {
    Ok(NamespaceInfo {
        name: name(&n.metadata)?.to_string(),
        labels: labels(n.metadata.labels.as_ref()),
    })
}

fn selector(field: &str, s: &K8sLabelSelector) -> Result<LabelSelector, ConvertError> {
    let match_labels = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut match_expressions = Vec::new();
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let op = match r.operator.as_str() {
            "In" => SelectorOp::In,
            "NotIn" => SelectorOp::NotIn,
            "Exists" => SelectorOp::Exists,
            "DoesNotExist" => SelectorOp::DoesNotExist,
            other => {
                return Err(ConvertError::invalid(
                    format!("{field}.matchExpressions[{i}].operator"),
                    other,
                    "In, NotIn, Exists or DoesNotExist",
                ));
            }
        };
        match_expressions.push(LabelRequirement {
            key: r.key.clone(),
            op,
            values: r.values.clone().unwrap_or_default(),
        });
    }
    Ok(LabelSelector {
        match_labels,
        match_expressions,
    })
}

fn peers(field: &str, list: Option<&Vec<NetworkPolicyPeer>>) -> Result<Vec<Peer>, ConvertError> {
    let mut out = Vec::new();
    for (i, p) in list.into_iter().flatten().enumerate() {
        let at = format!("{field}[{i}]");
        if let Some(b) = &p.ip_block {
            let mut except = Vec::new();
            for (j, e) in b.except.iter().flatten().enumerate() {
                except.push(cidr(|| format!("{at}.ipBlock.except[{j}]"), e)?);
            }
            out.push(Peer::IpBlock {
                cidr: cidr(|| format!("{at}.ipBlock.cidr"), &b.cidr)?,
                except,
            });
        } else {
            out.push(Peer::Pods {
                pod_selector: p
                    .pod_selector
                    .as_ref()
                    .map(|s| selector(&format!("{at}.podSelector"), s))
                    .transpose()?,
                namespace_selector: p
                    .namespace_selector
                    .as_ref()
                    .map(|s| selector(&format!("{at}.namespaceSelector"), s))
                    .transpose()?,
            });
        }
    }
    Ok(out)
}

fn policy_ports(
    field: &str,
    list: Option<&Vec<NetworkPolicyPort>>,
) -> Result<Vec<PolicyPort>, ConvertError> {
    let mut out = Vec::new();
    for (i, p) in list.into_iter().flatten().enumerate() {
        let at = format!("{field}[{i}]");
        let port_spec = match &p.port {
            None => None,
            Some(IntOrString::Int(n)) => Some(PortSpec::Number(port(|| format!("{at}.port"), *n)?)),
            // A numeric string is a number (the API accepts "80" as IntOrString).
            Some(IntOrString::String(s)) => Some(match s.parse::<i32>() {
                Ok(n) => PortSpec::Number(port(|| format!("{at}.port"), n)?),
                Err(_) => PortSpec::Name(s.clone()),
            }),
        };
        out.push(PolicyPort {
            protocol: protocol(&format!("{at}.protocol"), p.protocol.as_deref())?,
            end_port: p
                .end_port
                .map(|e| port(|| format!("{at}.endPort"), e))
                .transpose()?,
            port: port_spec,
        });
    }
    Ok(out)
}

/// A NetworkPolicy. Absent `policyTypes` take the API default: Ingress, plus Egress when the
/// policy has egress rules.
pub fn network_policy(p: &K8sNetworkPolicy) -> Result<NetworkPolicy, ConvertError> {
    let name = name(&p.metadata)?.to_string();
    let namespace = namespace(&p.metadata).to_string();
    let spec = p.spec.as_ref();
    let pod_selector = spec
        .and_then(|s| s.pod_selector.as_ref())
        .map(|s| selector("spec.podSelector", s))
        .transpose()?
        .unwrap_or_default();
    let mut ingress = Vec::new();
    for (i, r) in spec
        .and_then(|s| s.ingress.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        ingress.push(Rule {
            peers: peers(&format!("spec.ingress[{i}].from"), r.from.as_ref())?,
            ports: policy_ports(&format!("spec.ingress[{i}].ports"), r.ports.as_ref())?,
        });
    }
    let mut egress = Vec::new();
    for (i, r) in spec
        .and_then(|s| s.egress.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        egress.push(Rule {
            peers: peers(&format!("spec.egress[{i}].to"), r.to.as_ref())?,
            ports: policy_ports(&format!("spec.egress[{i}].ports"), r.ports.as_ref())?,
        });
    }
    let policy_types = match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(types) => {
            let mut t = PolicyTypes::default();
            for (i, ty) in types.iter().enumerate() {
                match ty.as_str() {
                    "Ingress" => t.ingress = true,
                    "Egress" => t.egress = true,
                    other => {
                        return Err(ConvertError::invalid(
                            format!("spec.policyTypes[{i}]"),
                            other,
                            "Ingress or Egress",
                        ));
                    }
                }
            }
            t
        }
        None => PolicyTypes {
            ingress: true,
            egress: !egress.is_empty(),
        },
    };
    Ok(NetworkPolicy {
        namespace,
        name,
        pod_selector,
        ingress,
        egress,
        policy_types,
    })
}

/// `(namespace, name)` of a namespaced object, for delete events.
pub fn namespaced_key(meta: &ObjectMeta) -> Result<(String, String), ConvertError> {
    Ok((namespace(meta).to_string(), name(meta)?.to_string()))
}

/// `name` of a cluster-scoped object, for delete events.
pub fn cluster_key(meta: &ObjectMeta) -> Result<String, ConvertError> {
    Ok(name(meta)?.to_string())
}

#[cfg(test)]
mod tests;
