//! The Kubernetes metadata index: Pods, Nodes, Services, Namespaces and NetworkPolicies, fed by
//! add/update/delete events ([`MetadataUpdate`], which io-k8s produces from informers) and asked
//! "who had this IP *at that time*".
//!
//! Time matters because conntrack outlives Pods: a connection's record is enriched with the Pod
//! that owned its addresses when the connection *started*, so
//! - a deleted Pod's IP keeps resolving to it for `grace` after the deletion (records of its last
//!   connections, TIME_WAIT tails, still name it);
//! - an IP reused by a new Pod resolves to the old Pod for connections that started before the
//!   new Pod existed, and to the new Pod after.
//!
//! Invariants: every IP's tenancies are sorted by start and do not overlap (a new tenancy closes
//! the previous open one); a deleted Pod and its tenancies are dropped by [`MetadataIndex::expire`]
//! once `deleted + grace` has passed, never earlier. Services, Nodes and Namespaces resolve to
//! their current state only (they change rarely, and their history is not worth the memory).
//! Host-network Pods are not indexed by IP: their address is the Node's.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use crate::model::{Interner, Sym, Timestamp};
use crate::policy::{
    Cidr, ContainerPort, Direction, Endpoint, FlowView, Labels, NetworkPolicy, PodView, PolicySet,
    Verdict,
};

/// `status.phase` of a Pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

/// A Pod as io-k8s reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `spec.nodeName`; empty while unscheduled.
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub labels: Labels,
    pub ports: Vec<ContainerPort>,
    pub host_network: bool,
    pub phase: PodPhase,
    /// `metadata.creationTimestamp`: the Pod owns its IPs from then on.
    pub created: Timestamp,
    /// `metadata.deletionTimestamp`, if set (a delete event sets it too).
    pub deleted: Option<Timestamp>,
}

/// A Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// `status.addresses` (InternalIP, ExternalIP).
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs`.
    pub pod_cidrs: Vec<Cidr>,
}

/// One port of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePortInfo {
    /// Empty for a Service with a single unnamed port.
    pub name: String,
    pub protocol: u8,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// A Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortInfo>,
    pub load_balancer_ips: Vec<IpAddr>,
    /// Endpoint addresses when known (EndpointSlices); informational.
    pub backends: Vec<IpAddr>,
}

/// A Namespace (its labels feed `namespaceSelector`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

/// One informer event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataUpdate {
    Pod(PodInfo),
    /// The Pod with this uid is gone (its IPs resolve to it for the grace period).
    PodDeleted {
        uid: String,
    },
    Node(NodeInfo),
    NodeDeleted {
        name: String,
    },
    Service(ServiceInfo),
    ServiceDeleted {
        namespace: String,
        name: String,
    },
    Namespace(NamespaceInfo),
    NamespaceDeleted {
        name: String,
    },
    Policy(NetworkPolicy),
    PolicyDeleted {
        namespace: String,
        name: String,
    },
}

/// Internal Pod handle (stable while the Pod is in the index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(u32);

/// What the index keeps of a Pod; names interned.
#[derive(Clone, Debug)]
pub struct PodEntry {
    pub uid: Box<str>,
    pub namespace: Sym,
    pub name: Sym,
    /// `None` while unscheduled.
    pub node: Option<Sym>,
    pub labels: Labels,
    /// `labels` as JSON text (`sourcePodLabels`).
    pub labels_json: Sym,
    pub ports: Vec<ContainerPort>,
    pub host_network: bool,
    pub phase: PodPhase,
    pub created: Timestamp,
    pub deleted: Option<Timestamp>,
    ips: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug)]
struct Tenancy {
    pod: PodId,
    from: Timestamp,
    /// Exclusive end; `None` while the Pod holds the IP.
    until: Option<Timestamp>,
}

#[derive(Clone, Debug)]
struct NodeEntry {
    addresses: Vec<IpAddr>,
    pod_cidrs: Vec<Cidr>,
}

/// Longest-prefix match over Pod CIDRs: one hash map per prefix length in use (Pod CIDRs share
/// one or two lengths), so a lookup is a couple of hash probes however many Nodes there are.
/// Runs for every new connection and every ignored dump entry.
#[derive(Clone, Debug, Default)]
struct CidrIndex {
    /// Longest prefix first.
    by_len: Vec<(u8, bool, HashMap<IpAddr, Sym>)>,
}

impl CidrIndex {
    fn push_cidr(&mut self, c: Cidr, node: Sym) {
        let v6 = c.addr().is_ipv6();
        let i = match self
            .by_len
            .iter()
            .position(|(l, f, _)| *l == c.prefix() && *f == v6)
        {
            Some(i) => i,
            None => {
                self.by_len.push((c.prefix(), v6, HashMap::new()));
                self.by_len.sort_by_key(|e| std::cmp::Reverse(e.0));
                self.by_len
                    .iter()
                    .position(|(l, f, _)| *l == c.prefix() && *f == v6)
                    .unwrap_or(0)
            }
        };
        if let Some((_, _, m)) = self.by_len.get_mut(i) {
            m.insert(c.addr(), node);
        }
    }

    fn remove_cidr(&mut self, c: Cidr, node: Sym) {
        let v6 = c.addr().is_ipv6();
        for (l, f, m) in &mut self.by_len {
            if *l == c.prefix() && *f == v6 && m.get(&c.addr()) == Some(&node) {
                m.remove(&c.addr());
            }
        }
        self.by_len.retain(|(_, _, m)| !m.is_empty());
    }

    fn lookup(&self, ip: IpAddr) -> Option<Sym> {
        let v6 = ip.is_ipv6();
        self.by_len
            .iter()
            .filter(|(_, f, _)| *f == v6)
            .find_map(|(l, _, m)| m.get(&Cidr::new(ip, *l).addr()).copied())
    }
}

/// A Service port an address resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceHit {
    /// The address the client dialled (ClusterIP, LoadBalancer IP or Node address).
    pub address: IpAddr,
    pub port: u16,
    /// `namespace/name:portName` (`namespace/name` for an unnamed port).
    pub port_name: Sym,
}

/// What an address is, at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    /// A Pod the index knows.
    Pod(PodId),
    /// An address inside a Node's Pod CIDR that no known Pod holds (informer lag).
    UnknownPod { node: Sym },
    /// A Node's own address (host network).
    Node { node: Sym },
    /// Outside the cluster as far as the index knows.
    External,
}

/// Policy fields of one direction, names interned, ready for a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyMatch {
    pub verdict: Verdict,
    /// `(namespace, name)` of the admitting policy.
    pub policy: Option<(Sym, Sym)>,
    pub rule_name: Option<Sym>,
}

/// Counters a user would alert on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetadataStats {
    pub pods: usize,
    pub deleted_pods_in_grace: usize,
    pub nodes: usize,
    pub services: usize,
    pub policies: usize,
    /// Delete events for objects the index did not have.
    pub unknown_deletes: u64,
    /// Names in the table and their text bytes.
    pub names: usize,
    pub name_bytes: usize,
    /// Times the name table was rebuilt with only the names in use.
    pub compactions: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct MetadataIndex {
    interner: Interner,
    grace: Duration,
    next_pod: u32,
    pods: HashMap<PodId, PodEntry>,
    pod_by_uid: HashMap<Box<str>, PodId>,
    ip_tenancies: HashMap<IpAddr, Vec<Tenancy>>,
    /// Deleted Pods in deletion order, for expiry.
    deleted: VecDeque<(Timestamp, PodId)>,
    nodes: HashMap<Sym, NodeEntry>,
    node_by_addr: HashMap<IpAddr, Sym>,
    services: HashMap<(Sym, Sym), ServiceInfo>,
    service_by_addr: HashMap<(IpAddr, u8, u16), Sym>,
    /// NodePort → port name (Node address checked separately).
    node_ports: HashMap<(u8, u16), Sym>,
    namespaces: HashMap<Box<str>, Labels>,
    pod_cidr_index: CidrIndex,
    empty_labels: Labels,
    policies: PolicySet,
    rule_names: [Vec<Sym>; 2],
    stats_unknown_deletes: u64,
    /// Names in the table after the last compaction (the next one waits until it has doubled).
    compacted_len: usize,
    stats_compactions: u64,
}

impl MetadataIndex {
    /// `grace`: how long a deleted Pod's IPs keep resolving to it.
    pub fn new(grace: Duration) -> MetadataIndex {
        MetadataIndex {
            interner: Interner::new(),
            grace,
            next_pod: 0,
            pods: HashMap::new(),
            pod_by_uid: HashMap::new(),
            ip_tenancies: HashMap::new(),
            deleted: VecDeque::new(),
            nodes: HashMap::new(),
            node_by_addr: HashMap::new(),
            services: HashMap::new(),
            service_by_addr: HashMap::new(),
            node_ports: HashMap::new(),
            namespaces: HashMap::new(),
            pod_cidr_index: CidrIndex::default(),
            empty_labels: Labels::default(),
            policies: PolicySet::new(),
            rule_names: [Vec::new(), Vec::new()],
            stats_unknown_deletes: 0,
            compacted_len: 0,
            stats_compactions: 0,
        }
    }

    pub fn interner(&self) -> &Interner {
        &self.interner
    }

    pub fn interner_mut(&mut self) -> &mut Interner {
        &mut self.interner
    }

    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    pub fn stats(&self) -> MetadataStats {
        MetadataStats {
            pods: self.pods.len(),
            deleted_pods_in_grace: self.deleted.len(),
            nodes: self.nodes.len(),
            services: self.services.len(),
            policies: self.policies.len(),
            unknown_deletes: self.stats_unknown_deletes,
            names: self.interner.len(),
            name_bytes: self.interner.bytes(),
            compactions: self.stats_compactions,
        }
    }

    /// Rebuilds the name table with only the names the index still uses, once it holds twice
    /// as many names as after the previous rebuild (and at least 4,096): Pods come and go, and
    /// every name they brought would otherwise stay forever — a cluster creating 100,000 Pods a
    /// day would grow every agent by megabytes a day. `keep` are symbols the caller holds (its
    /// Node name, cluster id); they are rewritten to the new table. Returns whether it rebuilt:
    /// every other symbol the caller holds (cached policy verdicts, records polled and not yet
    /// encoded) is then invalid. Amortised O(1) per name added.
    pub fn compact(&mut self, keep: &mut [&mut Sym]) -> bool {
        if self.interner.len() < (2 * self.compacted_len).max(4096) {
            return false;
        }
        let old = std::mem::take(&mut self.interner);
        let mut new = Interner::new();
        let mut map: Vec<Option<Sym>> = vec![None; old.capacity()];
        let mut remap = |s: &mut Sym| {
            let slot = &mut map[s.index()];
            *s = *slot.get_or_insert_with(|| new.intern(old.resolve(*s)));
        };
        for p in self.pods.values_mut() {
            remap(&mut p.namespace);
            remap(&mut p.name);
            if let Some(n) = &mut p.node {
                remap(n);
            }
            remap(&mut p.labels_json);
        }
        self.nodes = std::mem::take(&mut self.nodes)
            .into_iter()
            .map(|(mut k, v)| {
                remap(&mut k);
                (k, v)
            })
            .collect();
        self.node_by_addr.values_mut().for_each(&mut remap);
        self.services = std::mem::take(&mut self.services)
            .into_iter()
            .map(|((mut ns, mut n), v)| {
                remap(&mut ns);
                remap(&mut n);
                ((ns, n), v)
            })
            .collect();
        self.service_by_addr.values_mut().for_each(&mut remap);
        self.node_ports.values_mut().for_each(&mut remap);
        for (_, _, m) in &mut self.pod_cidr_index.by_len {
            m.values_mut().for_each(&mut remap);
        }
        for names in &mut self.rule_names {
            names.iter_mut().for_each(&mut remap);
        }
        for k in keep.iter_mut() {
            remap(k);
        }
        self.interner = new;
        self.compacted_len = self.interner.len();
        self.stats_compactions += 1;
        true
    }

    /// Applies one informer event observed at `now`.
    pub fn apply(&mut self, now: Timestamp, update: MetadataUpdate) {
        match update {
            MetadataUpdate::Pod(p) => self.upsert_pod(now, p),
            MetadataUpdate::PodDeleted { uid } => self.delete_pod(now, &uid),
            MetadataUpdate::Node(n) => self.upsert_node(n),
            MetadataUpdate::NodeDeleted { name } => self.delete_node(&name),
            MetadataUpdate::Service(s) => self.upsert_service(s),
            MetadataUpdate::ServiceDeleted { namespace, name } => {
                self.delete_service(&namespace, &name)
            }
            MetadataUpdate::Namespace(n) => {
                self.namespaces.insert(n.name.into(), n.labels);
            }
            MetadataUpdate::NamespaceDeleted { name } => {
                if self.namespaces.remove(name.as_str()).is_none() {
                    self.stats_unknown_deletes += 1;
                }
            }
            MetadataUpdate::Policy(p) => self.policies.upsert(p),
            MetadataUpdate::PolicyDeleted { namespace, name } => {
                if !self.policies.remove(&namespace, &name) {
                    self.stats_unknown_deletes += 1;
                }
            }
        }
        self.expire(now);
    }

    /// Forgets deleted Pods whose grace period has passed.
    pub fn expire(&mut self, now: Timestamp) {
        while let Some(&(at, id)) = self.deleted.front() {
            if now < at + self.grace {
                break;
            }
            self.deleted.pop_front();
            // A Pod re-added under the same uid after its delete is live again: keep it.
            let Some(p) = self.pods.get(&id) else {
                continue;
            };
            if p.deleted != Some(at) {
                continue;
            }
            if let Some(p) = self.pods.remove(&id) {
                if self.pod_by_uid.get(&p.uid) == Some(&id) {
                    self.pod_by_uid.remove(&p.uid);
                }
                for ip in &p.ips {
                    self.drop_tenancies(*ip, id);
                }
            }
        }
    }

    fn drop_tenancies(&mut self, ip: IpAddr, id: PodId) {
        if let Some(v) = self.ip_tenancies.get_mut(&ip) {
            v.retain(|t| t.pod != id);
            if v.is_empty() {
                self.ip_tenancies.remove(&ip);
            }
        }
    }

    fn upsert_pod(&mut self, now: Timestamp, p: PodInfo) {
        let namespace = self.interner.intern(&p.namespace);
        let name = self.interner.intern(&p.name);
        let node = (!p.node.is_empty()).then(|| self.interner.intern(&p.node));
        let labels_json = self.interner.intern(&p.labels.to_json());
        let id = match self.pod_by_uid.get(p.uid.as_str()) {
            Some(&id) => id,
            None => {
                self.next_pod = self.next_pod.wrapping_add(1);
                let id = PodId(self.next_pod);
                self.pod_by_uid.insert(p.uid.as_str().into(), id);
                id
            }
        };
        // A Pod reported again after its delete (a relist) holds its IPs anew: open new
        // tenancies rather than keep the closed ones.
        let old_ips = self
            .pods
            .get(&id)
            .filter(|e| e.deleted.is_none() || p.deleted.is_some())
            .map(|e| e.ips.clone())
            .unwrap_or_default();
        let ips: Vec<IpAddr> = if p.host_network {
            Vec::new()
        } else {
            p.ips.clone()
        };
        // IPs the Pod no longer has: close its tenancy now.
        for ip in old_ips.iter().filter(|ip| !ips.contains(ip)) {
            self.close_tenancy(*ip, id, now);
        }
        // New IPs, and IPs another Pod took over meanwhile (two live Pods cannot share an IP:
        // the latest report wins).
        let holds = |t: &HashMap<IpAddr, Vec<Tenancy>>, ip: &IpAddr| {
            t.get(ip)
                .is_some_and(|v| v.iter().any(|x| x.pod == id && x.until.is_none()))
        };
        let claims: Vec<IpAddr> = ips
            .iter()
            .filter(|ip| !old_ips.contains(ip) || !holds(&self.ip_tenancies, ip))
            .copied()
            .collect();
        for ip in &claims {
            // The Pod owned the IP from its creation (informer events lag behind connections),
            // but never before the previous owner let it go.
            let v = self.ip_tenancies.entry(*ip).or_default();
            let mut from = p.created;
            for t in v.iter_mut() {
                if t.until.is_none() && t.pod != id {
                    t.until = Some(now.max(t.from));
                }
                if let Some(u) = t.until {
                    from = from.max(u);
                }
            }
            v.push(Tenancy {
                pod: id,
                from,
                until: None,
            });
            v.sort_by_key(|t| t.from);
        }
        if let Some(d) = p.deleted {
            // Deletion reported inside an update: close tenancies at that time.
            for ip in &ips {
                self.close_tenancy(*ip, id, d);
            }
            if self.pods.get(&id).and_then(|e| e.deleted).is_none() {
                self.deleted.push_back((d, id));
            }
        }
        self.pods.insert(
            id,
            PodEntry {
                uid: p.uid.into(),
                namespace,
                name,
                node,
                labels: p.labels,
                labels_json,
                ports: p.ports,
                host_network: p.host_network,
                phase: p.phase,
                created: p.created,
                deleted: p.deleted,
                ips,
            },
        );
    }

    fn close_tenancy(&mut self, ip: IpAddr, id: PodId, at: Timestamp) {
        if let Some(v) = self.ip_tenancies.get_mut(&ip) {
            for t in v.iter_mut().filter(|t| t.pod == id && t.until.is_none()) {
                t.until = Some(at.max(t.from));
            }
        }
    }

    fn delete_pod(&mut self, now: Timestamp, uid: &str) {
        let Some(&id) = self.pod_by_uid.get(uid) else {
            self.stats_unknown_deletes += 1;
            return;
        };
        let Some(entry) = self.pods.get_mut(&id) else {
            return;
        };
        if entry.deleted.is_some() {
            return;
        }
        entry.deleted = Some(now);
        let ips = entry.ips.clone();
        for ip in ips {
            self.close_tenancy(ip, id, now);
        }
        self.deleted.push_back((now, id));
    }

    fn upsert_node(&mut self, n: NodeInfo) {
        let name = self.interner.intern(&n.name);
        self.delete_node(&n.name);
        for a in &n.addresses {
            self.node_by_addr.insert(*a, name);
        }
        for c in &n.pod_cidrs {
            self.pod_cidr_index.push_cidr(*c, name);
        }
        self.nodes.insert(
            name,
            NodeEntry {
                addresses: n.addresses,
                pod_cidrs: n.pod_cidrs,
            },
        );
    }

    fn delete_node(&mut self, name: &str) {
        let Some(sym) = self.interner.get(name) else {
            return;
        };
        if let Some(old) = self.nodes.remove(&sym) {
            for a in old.addresses {
                if self.node_by_addr.get(&a) == Some(&sym) {
                    self.node_by_addr.remove(&a);
                }
            }
            for c in old.pod_cidrs {
                self.pod_cidr_index.remove_cidr(c, sym);
            }
        }
    }

    fn upsert_service(&mut self, s: ServiceInfo) {
        self.delete_service(&s.namespace, &s.name);
        let ns = self.interner.intern(&s.namespace);
        let name = self.interner.intern(&s.name);
        for port in &s.ports {
            let text = if port.name.is_empty() {
                format!("{}/{}", s.namespace, s.name)
            } else {
                format!("{}/{}:{}", s.namespace, s.name, port.name)
            };
            let sym = self.interner.intern(&text);
            for ip in s.cluster_ips.iter().chain(&s.load_balancer_ips) {
                self.service_by_addr
                    .insert((*ip, port.protocol, port.port), sym);
            }
            if let Some(np) = port.node_port {
                self.node_ports.insert((port.protocol, np), sym);
            }
        }
        self.services.insert((ns, name), s);
    }

    fn delete_service(&mut self, namespace: &str, name: &str) {
        let (Some(ns), Some(n)) = (self.interner.get(namespace), self.interner.get(name)) else {
            return;
        };
        let Some(old) = self.services.remove(&(ns, n)) else {
            return;
        };
        for port in &old.ports {
            for ip in old.cluster_ips.iter().chain(&old.load_balancer_ips) {
                self.service_by_addr
                    .remove(&(*ip, port.protocol, port.port));
            }
            if let Some(np) = port.node_port {
                self.node_ports.remove(&(port.protocol, np));
            }
        }
    }

    /// The Pod that held `ip` at time `at` (see the module docs for deleted and reused IPs).
    pub fn pod_at(&self, ip: IpAddr, at: Timestamp) -> Option<PodId> {
        let v = self.ip_tenancies.get(&ip)?;
        // The latest tenancy that had begun by `at`; a connection dated before every tenancy
        // (clock skew between kernel and API server) goes to the first.
        let i = v.partition_point(|t| t.from <= at);
        let t = if i == 0 { v.first()? } else { &v[i - 1] };
        match t.until {
            Some(u) if at >= u + self.grace => None,
            _ => Some(t.pod),
        }
    }

    pub fn pod(&self, id: PodId) -> Option<&PodEntry> {
        self.pods.get(&id)
    }

    /// The Pod with this uid, if indexed.
    pub fn pod_by_uid(&self, uid: &str) -> Option<&PodEntry> {
        self.pod_by_uid.get(uid).and_then(|id| self.pods.get(id))
    }

    /// The Node whose address `ip` is.
    pub fn node_by_address(&self, ip: IpAddr) -> Option<Sym> {
        self.node_by_addr.get(&ip).copied()
    }

    /// The Node whose Pod CIDR contains `ip` (the longest prefix if several do).
    pub fn node_by_pod_cidr(&self, ip: IpAddr) -> Option<Sym> {
        self.pod_cidr_index.lookup(ip)
    }

    /// What `ip` was at time `at`.
    pub fn classify(&self, ip: IpAddr, at: Timestamp) -> EndpointKind {
        if let Some(p) = self.pod_at(ip, at) {
            return EndpointKind::Pod(p);
        }
        if let Some(node) = self.node_by_address(ip) {
            return EndpointKind::Node { node };
        }
        if let Some(node) = self.node_by_pod_cidr(ip) {
            return EndpointKind::UnknownPod { node };
        }
        EndpointKind::External
    }

    /// The Service port a client reached by dialling `ip:port` over `proto`: a ClusterIP or
    /// LoadBalancer IP with that port, or a Node address with that NodePort.
    pub fn service(&self, ip: IpAddr, proto: u8, port: u16) -> Option<ServiceHit> {
        let port_name = self
            .service_by_addr
            .get(&(ip, proto, port))
            .copied()
            .or_else(|| {
                self.node_by_addr
                    .contains_key(&ip)
                    .then(|| self.node_ports.get(&(proto, port)).copied())
                    .flatten()
            })?;
        Some(ServiceHit {
            address: ip,
            port,
            port_name,
        })
    }

    pub fn namespace_labels(&self, namespace: &str) -> &Labels {
        self.namespaces.get(namespace).unwrap_or(&self.empty_labels)
    }

    fn pod_view(&self, id: Option<PodId>) -> Option<PodView<'_>> {
        let p = self.pods.get(&id?)?;
        if p.host_network {
            return None;
        }
        let namespace = self.interner.resolve(p.namespace);
        Some(PodView {
            namespace,
            labels: &p.labels,
            namespace_labels: self.namespace_labels(namespace),
            ports: &p.ports,
        })
    }

    /// Ingress (at `dst`) and egress (at `src`) policy verdicts of a flow whose ends are the
    /// given Pods (or none), destination the real endpoint after DNAT.
    pub fn evaluate_policies(
        &mut self,
        src: (IpAddr, Option<PodId>),
        dst: (IpAddr, Option<PodId>),
        proto: u8,
        dst_port: u16,
    ) -> (PolicyMatch, PolicyMatch) {
        let flow = FlowView {
            src: Endpoint {
                ip: src.0,
                pod: self.pod_view(src.1),
            },
            dst: Endpoint {
                ip: dst.0,
                pod: self.pod_view(dst.1),
            },
            proto,
            dst_port,
        };
        let ingress = self.policies.evaluate(&flow, Direction::Ingress);
        let egress = self.policies.evaluate(&flow, Direction::Egress);
        (
            self.policy_match(ingress, Direction::Ingress),
            self.policy_match(egress, Direction::Egress),
        )
    }

    fn policy_match(&mut self, verdict: Verdict, dir: Direction) -> PolicyMatch {
        let Verdict::Allowed { policy, rule } = verdict else {
            return PolicyMatch {
                verdict,
                policy: None,
                rule_name: None,
            };
        };
        let Some(p) = self.policies.get(policy) else {
            return PolicyMatch {
                verdict,
                policy: None,
                rule_name: None,
            };
        };
        let policy = Some((
            self.interner.intern(&p.namespace),
            self.interner.intern(&p.name),
        ));
        let names = &mut self.rule_names[dir as usize];
        while names.len() <= rule {
            let s = self
                .interner
                .intern(&crate::policy::rule_name(dir, names.len()));
            names.push(s);
        }
        PolicyMatch {
            verdict,
            policy,
            rule_name: names.get(rule).copied(),
        }
    }
}

#[cfg(test)]
mod tests;
