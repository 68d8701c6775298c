//! Kubernetes NetworkPolicy evaluation for a flow.
//!
//! flowlens works with any CNI, so rather than asking the datapath which rule matched it
//! evaluates the NetworkPolicy objects against the flow, with Kubernetes semantics:
//!
//! - A Pod is *isolated* for ingress (egress) when some policy of its namespace selects it
//!   (`podSelector`) and lists `Ingress` (`Egress`) in its policy types. A Pod no policy isolates
//!   is [`Verdict::NotIsolated`]: everything is allowed and the record carries no policy.
//! - Ingress is evaluated at the destination Pod against the source; egress at the source Pod
//!   against the destination (the real endpoint after DNAT, as Kubernetes applies policies).
//! - A rule admits the flow when one of its peers matches the other end (no peers: everyone)
//!   and one of its ports matches the destination port and protocol (no ports: every port).
//!   Peers: `podSelector` alone (Pods of the policy's namespace), `namespaceSelector` alone (all
//!   Pods of matching namespaces), both (matching Pods in matching namespaces), `ipBlock` with
//!   `except` (any address). Ports: number, number..=`endPort`, or a name looked up in the
//!   destination Pod's container ports.
//! - When several rules admit the flow the pick is deterministic: the policy with the lowest
//!   `(namespace, name)`, then the lowest rule index. Kubernetes rules are unnamed, so the rule
//!   is reported as `ingress-<index>` / `egress-<index>` ([`rule_name`]).
//! - An isolated Pod whose policies admit nothing is [`Verdict::WouldDeny`] (action 2, drop):
//!   the connection exists, so either the CNI does not enforce or the policy is newer.
//!
//! This module is a small typed model that io-k8s converts the API objects into; flowcore does
//! not depend on k8s-openapi. Invariant: [`PolicySet`] keeps policies sorted by
//! `(namespace, name)`, unique, so an index is the deterministic order.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use thiserror::Error;

/// An address prefix (`10.0.0.0/8`, `fd00::/64`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Errors turning text into policy values.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("invalid CIDR {0:?}: expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or fd00::/64")]
    InvalidCidr(String),
}

impl Cidr {
    /// `prefix` is clamped to the family's width; host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Cidr {
        let (addr, prefix) = match addr {
            IpAddr::V4(a) => {
                let p = prefix.min(32);
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                (IpAddr::V4((u32::from(a) & mask).into()), p)
            }
            IpAddr::V6(a) => {
                let p = prefix.min(128);
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                (IpAddr::V6((u128::from(a) & mask).into()), p)
            }
        };
        Cidr { addr, prefix }
    }

    pub fn addr(self) -> IpAddr {
        self.addr
    }

    pub fn prefix(self) -> u8 {
        self.prefix
    }

    /// Whether `ip` (same family) lies inside.
    pub fn contains(self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Cidr::new(ip, self.prefix).addr == self.addr
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Cidr, PolicyError> {
        let bad = || PolicyError::InvalidCidr(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(Cidr::new(addr, prefix))
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Kubernetes labels: sorted by key, keys unique (last value wins on construction).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(Vec<(Box<str>, Box<str>)>);

impl Labels {
    pub fn new<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Labels {
        let mut v: Vec<(Box<str>, Box<str>)> = pairs
            .into_iter()
            .map(|(k, v)| (k.as_ref().into(), v.as_ref().into()))
            .collect();
        // Stable sort + keep the last of equal keys.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Box<str>, Box<str>)> = Vec::with_capacity(v.len());
        for kv in v {
            match out.last_mut() {
                Some(last) if last.0 == kv.0 => *last = kv,
                _ => out.push(kv),
            }
        }
        Labels(out)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A JSON object with keys in sorted order, as `sourcePodLabels` carries it.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        for (i, (k, v)) in self.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            json_str(&mut s, k);
            s.push(':');
            json_str(&mut s, v);
        }
        s.push('}');
        s
    }
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `matchExpressions` operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SelectorOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabelRequirement {
    pub key: String,
    pub op: SelectorOp,
    pub values: Vec<String>,
}

/// A Kubernetes label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    pub match_labels: Vec<(String, String)>,
    pub match_expressions: Vec<LabelRequirement>,
}

impl LabelSelector {
    /// Matches everything.
    pub fn all() -> LabelSelector {
        LabelSelector::default()
    }

    pub fn labels<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            match_expressions: Vec::new(),
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.op {
                    SelectorOp::In => got.is_some_and(|g| r.values.iter().any(|v| v == g)),
                    SelectorOp::NotIn => got.is_none_or(|g| r.values.iter().all(|v| v != g)),
                    SelectorOp::Exists => got.is_some(),
                    SelectorOp::DoesNotExist => got.is_none(),
                }
            })
    }
}

/// One `from` / `to` entry of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`. With neither (the API forbids it) it matches
    /// nothing.
    Pods {
        pod_selector: Option<LabelSelector>,
        namespace_selector: Option<LabelSelector>,
    },
    IpBlock {
        cidr: Cidr,
        except: Vec<Cidr>,
    },
}

/// `port` of a `NetworkPolicyPort`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortSpec {
    Number(u16),
    /// A container port name of the destination Pod.
    Name(String),
}

/// One `ports` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicyPort {
    /// IANA protocol number; Kubernetes defaults to TCP (6).
    pub protocol: u8,
    /// `None`: every port of `protocol`.
    pub port: Option<PortSpec>,
    /// With a numeric port: the range `port..=end_port`.
    pub end_port: Option<u16>,
}

/// An ingress or egress rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Empty: every peer.
    pub peers: Vec<Peer>,
    /// Empty: every port and protocol.
    pub ports: Vec<PolicyPort>,
}

/// `policyTypes`. The API's default (Ingress, plus Egress when egress rules exist) is the
/// converter's job; here they are explicit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyTypes {
    pub ingress: bool,
    pub egress: bool,
}

/// A Kubernetes `networking.k8s.io/v1` NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NetworkPolicy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: LabelSelector,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    pub policy_types: PolicyTypes,
}

/// A named container port of a Pod (for named policy ports).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ContainerPort {
    pub name: String,
    pub protocol: u8,
    pub port: u16,
}

/// What policy evaluation needs to know of a Pod.
#[derive(Clone, Copy, Debug)]
pub struct PodView<'a> {
    pub namespace: &'a str,
    pub labels: &'a Labels,
    pub namespace_labels: &'a Labels,
    pub ports: &'a [ContainerPort],
}

/// One end of a flow: its address, and the Pod behind it if any (host-network Pods are not
/// Pods for policy purposes: Kubernetes leaves their behaviour undefined).
#[derive(Clone, Copy, Debug)]
pub struct Endpoint<'a> {
    pub ip: IpAddr,
    pub pod: Option<PodView<'a>>,
}

/// A flow as policy sees it: destination is the real endpoint after DNAT.
#[derive(Clone, Copy, Debug)]
pub struct FlowView<'a> {
    pub src: Endpoint<'a>,
    pub dst: Endpoint<'a>,
    pub proto: u8,
    pub dst_port: u16,
}

/// Direction of evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

/// Outcome for one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// The end is not a Pod, or no policy isolates it: allowed, no policy to report.
    NotIsolated,
    /// Admitted by rule `rule` of the policy at index `policy` of the [`PolicySet`].
    Allowed { policy: usize, rule: usize },
    /// Isolated and nothing admits it.
    WouldDeny,
}

/// `ingress-<index>` / `egress-<index>`: Kubernetes rules have no names.
pub fn rule_name(direction: Direction, rule: usize) -> String {
    match direction {
        Direction::Ingress => format!("ingress-{rule}"),
        Direction::Egress => format!("egress-{rule}"),
    }
}

/// All NetworkPolicies of the cluster, sorted by `(namespace, name)`.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    policies: Vec<NetworkPolicy>,
    /// Namespace → its policies' index range in `policies` (rebuilt on every change: policies
    /// change rarely, evaluation runs for every record).
    by_namespace: HashMap<Box<str>, (usize, usize), foldhash::fast::FixedState>,
}

impl PolicySet {
    pub fn new() -> PolicySet {
        PolicySet::default()
    }

    fn position(&self, namespace: &str, name: &str) -> Result<usize, usize> {
        self.policies
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
    }

    /// Adds or replaces the policy with the same namespace and name.
    pub fn upsert(&mut self, policy: NetworkPolicy) {
        match self.position(&policy.namespace, &policy.name) {
            Ok(i) => self.policies[i] = policy,
            Err(i) => self.policies.insert(i, policy),
        }
        self.index_namespaces();
    }

    fn index_namespaces(&mut self) {
        for r in self.by_namespace.values_mut() {
            *r = (0, 0);
        }
        let mut start = 0;
        for (i, p) in self.policies.iter().enumerate() {
            let next = self.policies.get(i + 1);
            if next.is_none_or(|n| n.namespace != p.namespace) {
                match self.by_namespace.get_mut(p.namespace.as_str()) {
                    Some(r) => *r = (start, i + 1),
                    None => {
                        self.by_namespace
                            .insert(p.namespace.as_str().into(), (start, i + 1));
                    }
                }
                start = i + 1;
            }
        }
        self.by_namespace.retain(|_, r| r.1 > 0);
    }

    /// Removes a policy; returns whether it existed.
    pub fn remove(&mut self, namespace: &str, name: &str) -> bool {
        match self.position(namespace, name) {
            Ok(i) => {
                self.policies.remove(i);
                self.index_namespaces();
                true
            }
            Err(_) => false,
        }
    }

    pub fn get(&self, index: usize) -> Option<&NetworkPolicy> {
        self.policies.get(index)
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.iter()
    }

    /// The verdict for `flow` in `direction`.
    pub fn evaluate(&self, flow: &FlowView<'_>, direction: Direction) -> Verdict {
        let (target, peer) = match direction {
            Direction::Ingress => (flow.dst, flow.src),
            Direction::Egress => (flow.src, flow.dst),
        };
        let Some(pod) = target.pod else {
            return Verdict::NotIsolated;
        };
        // Policies of one namespace are contiguous in the sorted set.
        let Some(&(start, end)) = self.by_namespace.get(pod.namespace) else {
            return Verdict::NotIsolated;
        };
        let mut isolated = false;
        for (i, p) in self.policies[start..end].iter().enumerate() {
            let applies = match direction {
                Direction::Ingress => p.policy_types.ingress,
                Direction::Egress => p.policy_types.egress,
            };
            if !applies || !p.pod_selector.matches(pod.labels) {
                continue;
            }
            isolated = true;
            let rules = match direction {
                Direction::Ingress => &p.ingress,
                Direction::Egress => &p.egress,
            };
            for (r, rule) in rules.iter().enumerate() {
                if rule_admits(rule, &p.namespace, &peer, flow) {
                    return Verdict::Allowed {
                        policy: start + i,
                        rule: r,
                    };
                }
            }
        }
        if isolated {
            Verdict::WouldDeny
        } else {
            Verdict::NotIsolated
        }
    }
}

fn rule_admits(rule: &Rule, policy_ns: &str, peer: &Endpoint<'_>, flow: &FlowView<'_>) -> bool {
    let peer_ok =
        rule.peers.is_empty() || rule.peers.iter().any(|p| peer_matches(p, policy_ns, peer));
    peer_ok && (rule.ports.is_empty() || rule.ports.iter().any(|p| port_matches(p, flow)))
}

fn peer_matches(peer: &Peer, policy_ns: &str, ep: &Endpoint<'_>) -> bool {
    match peer {
        Peer::IpBlock { cidr, except } => {
            cidr.contains(ep.ip) && !except.iter().any(|e| e.contains(ep.ip))
        }
        Peer::Pods {
            pod_selector,
            namespace_selector,
        } => {
            let Some(pod) = ep.pod else { return false };
            let ns_ok = match namespace_selector {
                Some(sel) => sel.matches(pod.namespace_labels),
                // podSelector alone: the policy's own namespace.
                None => pod.namespace == policy_ns,
            };
            let pod_ok = pod_selector.as_ref().is_none_or(|s| s.matches(pod.labels));
            (pod_selector.is_some() || namespace_selector.is_some()) && ns_ok && pod_ok
        }
    }
}

fn port_matches(p: &PolicyPort, flow: &FlowView<'_>) -> bool {
    if p.protocol != flow.proto {
        return false;
    }
    match &p.port {
        None => true,
        Some(PortSpec::Number(n)) => match p.end_port {
            Some(end) => (*n..=end).contains(&flow.dst_port),
            None => *n == flow.dst_port,
        },
        Some(PortSpec::Name(name)) => flow.dst.pod.is_some_and(|pod| {
            pod.ports
                .iter()
                .any(|c| c.name == *name && c.protocol == flow.proto && c.port == flow.dst_port)
        }),
    }
}

#[cfg(test)]
mod tests;
