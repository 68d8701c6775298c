//! A synthetic Kubernetes cluster drawn from a seed: Nodes, Namespaces, apps (Deployments) whose
//! Pods churn with IP reuse, Services (ClusterIP, some NodePort) and NetworkPolicies, plus an
//! independent policy oracle.
//!
//! The cluster is the ground truth the invariants compare records against. Invariants:
//! - a Pod slot keeps its IP across incarnations (IP reuse), and incarnations of one slot never
//!   overlap: the next one is created `reuse_gap` after the previous is deleted;
//! - every informer event the agents and checks see is in [`Cluster::updates`], sorted by time;
//! - the oracle ([`Cluster::verdict`]) evaluates the restricted policy shapes generated here
//!   directly, without flowcore's evaluator, so a disagreement points at one of the two.

use std::net::{IpAddr, Ipv4Addr};

use flowcore::metadata::{
    MetadataUpdate, NamespaceInfo, NodeInfo, PodInfo, PodPhase, ServiceInfo, ServicePortInfo,
};
use flowcore::model::Timestamp;
use flowcore::policy::{
    Cidr, ContainerPort, LabelSelector, Labels, NetworkPolicy, Peer, PolicyPort, PolicyTypes,
    PortSpec, Rule,
};

use crate::rng::Rng;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
/// Container ports every Pod serves.
pub const HTTP_PORT: u16 = 8080;
pub const DNS_PORT: u16 = 5353;

/// Nanoseconds of virtual (true) time.
pub type Nanos = u64;
pub const SEC: Nanos = 1_000_000_000;
pub const MS: Nanos = 1_000_000;
/// Virtual time starts here (2023-11-14), so timestamps look like real ones.
pub const EPOCH: Nanos = 1_700_000_000 * SEC;

pub fn ts(t: Nanos) -> Timestamp {
    Timestamp::from_nanos(t)
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub addr: Ipv4Addr,
    /// Pod CIDR `10.<cidr>.0.0/16`.
    pub cidr: u8,
}

#[derive(Clone, Debug)]
pub struct App {
    pub ns: usize,
    pub name: String,
    pub service: Option<usize>,
    /// Pod slots of this app.
    pub slots: Vec<usize>,
}

/// One Pod lifetime in a slot. `deleted: None` lives to the end of the run.
#[derive(Clone, Debug)]
pub struct Incarnation {
    pub uid: String,
    pub name: String,
    pub created: Nanos,
    pub deleted: Option<Nanos>,
}

/// A replica position of an app: fixed Node and IP, successive Pods.
#[derive(Clone, Debug)]
pub struct Slot {
    pub app: usize,
    pub node: usize,
    pub ip: Ipv4Addr,
    pub incarnations: Vec<Incarnation>,
}

impl Slot {
    /// The incarnation alive at `t`, if any.
    pub fn at(&self, t: Nanos) -> Option<usize> {
        self.incarnations
            .iter()
            .position(|i| i.created <= t && i.deleted.is_none_or(|d| t < d))
    }
}

#[derive(Clone, Debug)]
pub struct SvcPort {
    pub name: String,
    pub proto: u8,
    pub port: u16,
    pub target: u16,
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub ns: usize,
    pub name: String,
    pub app: usize,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<SvcPort>,
}

impl Service {
    /// `namespace/name:port`, as records carry it.
    pub fn port_name(&self, cl: &Cluster, p: &SvcPort) -> String {
        format!("{}/{}:{}", cl.namespaces[self.ns], self.name, p.name)
    }
}

/// Peers the generator uses: a subset of the API with obvious semantics.
#[derive(Clone, Debug)]
pub enum SimPeer {
    /// `podSelector: {app: A}` (the policy's namespace).
    App(usize),
    /// `podSelector: {}`: every Pod of the policy's namespace.
    AllPodsInNs,
    /// `namespaceSelector: {team: <ns>}`.
    Namespace(usize),
    /// `ipBlock` with `except`.
    Block {
        net: Ipv4Addr,
        prefix: u8,
        except: Vec<(Ipv4Addr, u8)>,
    },
}

#[derive(Clone, Debug)]
pub struct SimRule {
    pub peers: Vec<SimPeer>,
    /// `(protocol, port)`; empty: all.
    pub ports: Vec<(u8, u16)>,
}

#[derive(Clone, Debug)]
pub struct SimPolicy {
    pub ns: usize,
    pub name: String,
    /// `None`: `podSelector: {}`.
    pub app: Option<usize>,
    pub ingress: Option<Vec<SimRule>>,
    pub egress: Option<Vec<SimRule>>,
}

/// What the oracle says for one direction: `None` not isolated, `Some(None)` would deny,
/// `Some(Some((policy, rule)))` admitted.
pub type Verdict = Option<Option<(usize, usize)>>;

/// An end of a flow as the oracle sees it.
#[derive(Clone, Copy, Debug)]
pub struct End {
    pub ip: Ipv4Addr,
    /// `(ns, app)` when the end is a Pod.
    pub pod: Option<(usize, usize)>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub namespaces: Vec<String>,
    pub apps: Vec<App>,
    pub slots: Vec<Slot>,
    pub services: Vec<Service>,
    pub policies: Vec<SimPolicy>,
    /// Informer events in time order.
    pub updates: Vec<(Nanos, MetadataUpdate)>,
}

/// Shape of the generated cluster.
#[derive(Clone, Debug)]
pub struct ClusterParams {
    pub nodes: usize,
    pub pods: usize,
    pub duration: Nanos,
    /// Expected Pod replacements per Pod slot per hour.
    pub churn_per_hour: f64,
    /// Time between an incarnation's deletion and the next one's creation (same IP).
    pub reuse_gap: Nanos,
}

impl Cluster {
    pub fn generate(rng: &mut Rng, p: &ClusterParams) -> Cluster {
        let n_nodes = p.nodes.clamp(1, 250);
        let nodes: Vec<Node> = (0..n_nodes)
            .map(|i| Node {
                name: format!("node-{i:02}"),
                addr: Ipv4Addr::new(192, 168, 0, i as u8 + 1),
                cidr: i as u8 + 1,
            })
            .collect();
        let n_ns = (p.pods / 12).clamp(1, 40);
        let namespaces: Vec<String> = (0..n_ns).map(|i| format!("ns-{i}")).collect();
        let n_apps = (p.pods / 3).clamp(1, 400);
        let mut apps: Vec<App> = (0..n_apps)
            .map(|i| App {
                ns: rng.below(n_ns as u64) as usize,
                name: format!("app-{i}"),
                service: None,
                slots: Vec::new(),
            })
            .collect();
        let mut slots = Vec::with_capacity(p.pods);
        let mut per_node = vec![0u32; n_nodes];
        for s in 0..p.pods.max(1) {
            let app = if s < n_apps {
                s
            } else {
                rng.below(n_apps as u64) as usize
            };
            let node = rng.below(n_nodes as u64) as usize;
            let k = per_node[node];
            per_node[node] += 1;
            let ip = Ipv4Addr::new(10, nodes[node].cidr, (k / 250) as u8, (k % 250) as u8 + 2);
            apps[app].slots.push(s);
            let mut incarnations = Vec::new();
            // Initial Pods exist before the run starts; churn replaces them over time.
            let mut created = EPOCH - 60 * SEC;
            let mut generation = 0;
            loop {
                let life = if p.churn_per_hour > 0.0 {
                    (rng.exp(3600.0 / p.churn_per_hour) * SEC as f64) as Nanos
                } else {
                    Nanos::MAX / 4
                };
                let deleted = created.max(EPOCH).saturating_add(life.max(20 * SEC));
                let done = deleted >= EPOCH + p.duration;
                incarnations.push(Incarnation {
                    uid: format!("uid-{s}-{generation}"),
                    name: format!("{}-{s}-g{generation}", apps[app].name),
                    created,
                    deleted: (!done).then_some(deleted),
                });
                if done {
                    break;
                }
                created = deleted + p.reuse_gap;
                generation += 1;
            }
            slots.push(Slot {
                app,
                node,
                ip,
                incarnations,
            });
        }
        let mut services = Vec::new();
        for (a, app) in apps.iter_mut().enumerate() {
            if !rng.chance(0.7) {
                continue;
            }
            let id = services.len();
            let mut ports = vec![SvcPort {
                name: "http".into(),
                proto: TCP,
                port: 80,
                target: HTTP_PORT,
                node_port: rng.chance(0.3).then(|| 30000 + id as u16),
            }];
            if rng.chance(0.4) {
                ports.push(SvcPort {
                    name: "dns".into(),
                    proto: UDP,
                    port: 53,
                    target: DNS_PORT,
                    node_port: None,
                });
            }
            services.push(Service {
                ns: app.ns,
                name: format!("svc-{a}"),
                app: a,
                cluster_ip: Ipv4Addr::new(10, 96, (id / 250) as u8, (id % 250) as u8 + 1),
                ports,
            });
            app.service = Some(id);
        }
        let mut policies = Vec::new();
        for ns in 0..n_ns {
            let ns_apps: Vec<usize> = (0..n_apps).filter(|&a| apps[a].ns == ns).collect();
            if rng.chance(0.4) {
                policies.push(SimPolicy {
                    ns,
                    name: "default-deny-ingress".into(),
                    app: None,
                    ingress: Some(Vec::new()),
                    egress: None,
                });
            }
            for &a in &ns_apps {
                if rng.chance(0.4) {
                    let mut peers = vec![SimPeer::App(*rng.pick(&ns_apps).unwrap_or(&a))];
                    if rng.chance(0.5) {
                        peers.push(SimPeer::Namespace(rng.below(n_ns as u64) as usize));
                    }
                    let mut rules = vec![SimRule {
                        peers,
                        ports: vec![(TCP, HTTP_PORT)],
                    }];
                    if rng.chance(0.5) {
                        rules.push(SimRule {
                            peers: vec![SimPeer::Block {
                                net: Ipv4Addr::new(198, 51, 100, 0),
                                prefix: 24,
                                except: vec![(Ipv4Addr::new(198, 51, 100, 128), 25)],
                            }],
                            ports: Vec::new(),
                        });
                    }
                    if rng.chance(0.3) {
                        rules.push(SimRule {
                            peers: vec![SimPeer::AllPodsInNs],
                            ports: vec![(UDP, DNS_PORT)],
                        });
                    }
                    policies.push(SimPolicy {
                        ns,
                        name: format!("allow-{}", apps[a].name),
                        app: Some(a),
                        ingress: Some(rules),
                        egress: None,
                    });
                }
                if rng.chance(0.2) {
                    policies.push(SimPolicy {
                        ns,
                        name: format!("egress-{}", apps[a].name),
                        app: Some(a),
                        ingress: None,
                        egress: Some(vec![
                            SimRule {
                                peers: vec![SimPeer::AllPodsInNs],
                                ports: Vec::new(),
                            },
                            SimRule {
                                peers: vec![SimPeer::Block {
                                    net: Ipv4Addr::new(0, 0, 0, 0),
                                    prefix: 0,
                                    except: vec![(Ipv4Addr::new(10, 0, 0, 0), 8)],
                                }],
                                ports: vec![(TCP, 443)],
                            },
                        ]),
                    });
                }
            }
        }
        // The oracle walks a namespace's policies in name order, as Kubernetes tooling reports.
        policies.sort_by(|a, b| (a.ns, &a.name).cmp(&(b.ns, &b.name)));
        let mut cl = Cluster {
            nodes,
            namespaces,
            apps,
            slots,
            services,
            policies,
            updates: Vec::new(),
        };
        cl.updates = cl.build_updates();
        cl
    }

    fn build_updates(&self) -> Vec<(Nanos, MetadataUpdate)> {
        let t0 = EPOCH - 120 * SEC;
        let mut u = Vec::new();
        for n in &self.nodes {
            u.push((
                t0,
                MetadataUpdate::Node(NodeInfo {
                    name: n.name.clone(),
                    addresses: vec![IpAddr::V4(n.addr)],
                    pod_cidrs: vec![Cidr::new(IpAddr::V4(Ipv4Addr::new(10, n.cidr, 0, 0)), 16)],
                }),
            ));
        }
        for ns in &self.namespaces {
            u.push((
                t0,
                MetadataUpdate::Namespace(NamespaceInfo {
                    name: ns.clone(),
                    labels: Labels::new([("team", ns.as_str())]),
                }),
            ));
        }
        for s in &self.services {
            u.push((t0, MetadataUpdate::Service(self.service_info(s))));
        }
        for p in &self.policies {
            u.push((t0, MetadataUpdate::Policy(self.policy_object(p))));
        }
        for (si, slot) in self.slots.iter().enumerate() {
            for (ii, inc) in slot.incarnations.iter().enumerate() {
                // The informer reports a Pod once it has its IP, shortly after creation.
                u.push((
                    inc.created.max(t0) + MS,
                    MetadataUpdate::Pod(self.pod_info(si, ii)),
                ));
                if let Some(d) = inc.deleted {
                    u.push((
                        d,
                        MetadataUpdate::PodDeleted {
                            uid: inc.uid.clone(),
                        },
                    ));
                }
            }
        }
        // Stable: objects of one instant keep their generation order.
        u.sort_by_key(|(t, _)| *t);
        u
    }

    pub fn pod_info(&self, slot: usize, inc: usize) -> PodInfo {
        let s = &self.slots[slot];
        let i = &s.incarnations[inc];
        let app = &self.apps[s.app];
        PodInfo {
            uid: i.uid.clone(),
            namespace: self.namespaces[app.ns].clone(),
            name: i.name.clone(),
            node: self.nodes[s.node].name.clone(),
            ips: vec![IpAddr::V4(s.ip)],
            labels: Labels::new([("app", app.name.as_str())]),
            ports: vec![
                ContainerPort {
                    name: "http".into(),
                    protocol: TCP,
                    port: HTTP_PORT,
                },
                ContainerPort {
                    name: "dns".into(),
                    protocol: UDP,
                    port: DNS_PORT,
                },
            ],
            host_network: false,
            phase: PodPhase::Running,
            created: ts(i.created),
            deleted: None,
        }
    }

    fn service_info(&self, s: &Service) -> ServiceInfo {
        ServiceInfo {
            namespace: self.namespaces[s.ns].clone(),
            name: s.name.clone(),
            cluster_ips: vec![IpAddr::V4(s.cluster_ip)],
            ports: s
                .ports
                .iter()
                .map(|p| ServicePortInfo {
                    name: p.name.clone(),
                    protocol: p.proto,
                    port: p.port,
                    node_port: p.node_port,
                })
                .collect(),
            load_balancer_ips: Vec::new(),
            backends: self.apps[s.app]
                .slots
                .iter()
                .map(|&i| IpAddr::V4(self.slots[i].ip))
                .collect(),
        }
    }

    fn policy_object(&self, p: &SimPolicy) -> NetworkPolicy {
        let sel = |app: Option<usize>| match app {
            Some(a) => LabelSelector::labels([("app", self.apps[a].name.as_str())]),
            None => LabelSelector::all(),
        };
        let rule = |r: &SimRule| Rule {
            peers: r
                .peers
                .iter()
                .map(|peer| match peer {
                    SimPeer::App(a) => Peer::Pods {
                        pod_selector: Some(sel(Some(*a))),
                        namespace_selector: None,
                    },
                    SimPeer::AllPodsInNs => Peer::Pods {
                        pod_selector: Some(LabelSelector::all()),
                        namespace_selector: None,
                    },
                    SimPeer::Namespace(ns) => Peer::Pods {
                        pod_selector: None,
                        namespace_selector: Some(LabelSelector::labels([(
                            "team",
                            self.namespaces[*ns].as_str(),
                        )])),
                    },
                    SimPeer::Block {
                        net,
                        prefix,
                        except,
                    } => Peer::IpBlock {
                        cidr: Cidr::new(IpAddr::V4(*net), *prefix),
                        except: except
                            .iter()
                            .map(|(a, p)| Cidr::new(IpAddr::V4(*a), *p))
                            .collect(),
                    },
                })
                .collect(),
            ports: r
                .ports
                .iter()
                .map(|&(protocol, port)| PolicyPort {
                    protocol,
                    port: Some(PortSpec::Number(port)),
                    end_port: None,
                })
                .collect(),
        };
        NetworkPolicy {
            namespace: self.namespaces[p.ns].clone(),
            name: p.name.clone(),
            pod_selector: sel(p.app),
            ingress: p.ingress.iter().flatten().map(rule).collect(),
            egress: p.egress.iter().flatten().map(rule).collect(),
            policy_types: PolicyTypes {
                ingress: p.ingress.is_some(),
                egress: p.egress.is_some(),
            },
        }
    }

    /// The oracle: ingress (`egress == false`, evaluated at `dst`) or egress verdict of a flow
    /// `src → dst` (real endpoint) on `proto`/`port`.
    pub fn verdict(&self, src: End, dst: End, proto: u8, port: u16, egress: bool) -> Verdict {
        let (target, peer) = if egress { (src, dst) } else { (dst, src) };
        let (ns, app) = target.pod?;
        let in_prefix = |ip: Ipv4Addr, net: Ipv4Addr, prefix: u8| {
            prefix == 0 || (u32::from(ip) >> (32 - prefix)) == (u32::from(net) >> (32 - prefix))
        };
        let mut isolated = false;
        for (pi, p) in self.policies.iter().enumerate() {
            if p.ns != ns || p.app.is_some_and(|a| a != app) {
                continue;
            }
            let Some(rules) = (if egress { &p.egress } else { &p.ingress }) else {
                continue;
            };
            isolated = true;
            for (ri, r) in rules.iter().enumerate() {
                let peer_ok = r.peers.is_empty()
                    || r.peers.iter().any(|pe| match pe {
                        SimPeer::App(a) => peer.pod == Some((ns, *a)),
                        SimPeer::AllPodsInNs => peer.pod.is_some_and(|(n, _)| n == ns),
                        SimPeer::Namespace(n) => peer.pod.is_some_and(|(pn, _)| pn == *n),
                        SimPeer::Block {
                            net,
                            prefix,
                            except,
                        } => {
                            in_prefix(peer.ip, *net, *prefix)
                                && !except.iter().any(|(e, ep)| in_prefix(peer.ip, *e, *ep))
                        }
                    });
                let port_ok = r.ports.is_empty() || r.ports.contains(&(proto, port));
                if peer_ok && port_ok {
                    return Some(Some((pi, ri)));
                }
            }
        }
        isolated.then_some(None)
    }
}
