//! Deterministic synthetic aggregated records for store tests, benchmarks and seeding a
//! collector without a cluster: a fixed small cluster (Nodes, Pods talking to a few peers,
//! Services, external hosts, NetworkPolicies) and a seeded generator. The same seed gives the
//! same records on every machine, so snapshot tests can pin the API's answers.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use flowcore::aggregator::{AggregatedRecord, CorrelationKey, NodeCounters, PolicyInfo};

/// splitmix64: tiny, seedable, and good enough for test traffic.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Debug)]
struct Pod {
    ns: Arc<str>,
    name: Arc<str>,
    node: usize,
    ip: IpAddr,
    labels: Arc<str>,
    peers: Vec<usize>,
    /// Indexes into `Synth::services`: a Pod calls a few Services, not all of them.
    services: Vec<usize>,
    ingress: PolicyInfo,
    egress: PolicyInfo,
}

#[derive(Clone, Debug)]
struct Service {
    name: Arc<str>,
    ip: IpAddr,
    port: u16,
    backend: usize,
}

/// A generator of aggregated records over a fixed synthetic cluster.
#[derive(Clone, Debug)]
pub struct Synth {
    rng: Rng,
    nodes: Vec<Arc<str>>,
    pods: Vec<Pod>,
    services: Vec<Service>,
    external: Vec<IpAddr>,
    empty: Arc<str>,
    tcp: [Arc<str>; 2],
    cluster_id: Arc<str>,
}

const NAMESPACES: [&str; 4] = ["default", "shop", "payments", "monitoring"];
const APPS: [&str; 8] = [
    "frontend", "cart", "checkout", "db", "cache", "api", "worker", "metrics",
];
/// Peers each Pod talks to: bounds the Pod-pair cardinality like real service graphs do.
const PEERS: usize = 8;
/// Services each Pod calls.
const SERVICES: usize = 3;

fn s(v: impl AsRef<str>) -> Arc<str> {
    Arc::from(v.as_ref())
}

impl Synth {
    /// `nodes` ≥ 1 and `pods` ≥ 2 are enforced by rounding up.
    pub fn new(seed: u64, nodes: usize, pods: usize) -> Synth {
        let (nodes_n, pods_n) = (nodes.max(1), pods.max(2));
        let mut rng = Rng(seed);
        let nodes: Vec<Arc<str>> = (0..nodes_n).map(|i| s(format!("node-{i}"))).collect();
        let mut pods: Vec<Pod> = (0..pods_n)
            .map(|i| {
                let ns = NAMESPACES[i % NAMESPACES.len()];
                let app = APPS[(i / NAMESPACES.len()) % APPS.len()];
                let policy = |dir: &str, kind: u8| PolicyInfo {
                    name: s(format!("{app}-{dir}")),
                    namespace: s(ns),
                    kind,
                    rule: s(format!("rule-{}", i % 3)),
                    action: 1,
                };
                Pod {
                    ns: s(ns),
                    name: s(format!("{app}-{i}")),
                    node: i % nodes_n,
                    ip: IpAddr::V4(Ipv4Addr::new(
                        10,
                        (i % nodes_n) as u8,
                        (i / 250) as u8,
                        (i % 250 + 2) as u8,
                    )),
                    labels: s(format!("{{\"app\":\"{app}\"}}")),
                    peers: Vec::new(),
                    services: Vec::new(),
                    // Every other app has policies, so the "no policy" case shows too.
                    ingress: if i % 2 == 0 {
                        policy("ingress", 1)
                    } else {
                        PolicyInfo::default()
                    },
                    egress: if i % 4 == 0 {
                        policy("egress", 1)
                    } else {
                        PolicyInfo::default()
                    },
                }
            })
            .collect();
        for (i, pod) in pods.iter_mut().enumerate() {
            pod.peers = (0..PEERS)
                .map(|_| {
                    let p = rng.below(pods_n as u64 - 1) as usize;
                    if p >= i { p + 1 } else { p }
                })
                .collect();
        }
        let services = (0..(pods_n / 5).max(1))
            .map(|k| {
                let backend = k * 5 % pods_n;
                let p = &pods[backend];
                Service {
                    name: if k < APPS.len() {
                        s(format!("{}/{}-svc:http", p.ns, APPS[k]))
                    } else {
                        s(format!("{}/{}-svc-{k}:http", p.ns, APPS[k % APPS.len()]))
                    },
                    ip: IpAddr::V4(Ipv4Addr::new(10, 96, (k / 250) as u8, (k % 250 + 1) as u8)),
                    port: 80,
                    backend,
                }
            })
            .collect();
        let services: Vec<Service> = services;
        for pod in &mut pods {
            pod.services = (0..SERVICES)
                .map(|_| rng.below(services.len() as u64) as usize)
                .collect();
        }
        let external = (0..20)
            .map(|k| IpAddr::V4(Ipv4Addr::new(203, 0, 113, k + 1)))
            .collect();
        Synth {
            rng,
            nodes,
            pods,
            services,
            external,
            empty: s(""),
            tcp: [s("ESTABLISHED"), s("TIME_WAIT")],
            cluster_id: s("synthetic"),
        }
    }

    /// One record ending at `end_secs`.
    pub fn record(&mut self, end_secs: u32) -> AggregatedRecord {
        let r = &mut self.rng;
        let src_i = r.below(self.pods.len() as u64) as usize;
        let kind = r.below(100);
        let octets = 1_000 + r.below(2_000_000);
        let rev_octets = 500 + r.below(octets);
        let deltas = [octets / 800 + 1, octets, rev_octets / 800 + 1, rev_octets];
        let mult = 1 + r.below(5);
        let totals = deltas.map(|d| d * mult);
        let src_port = 32768 + r.below(28000) as u16;
        let start_secs = end_secs.saturating_sub(60 * mult as u32);
        let end_reason = if r.below(4) == 0 { 3 } else { 2 };
        let tcp = self.tcp[(end_reason == 3) as usize].clone();
        let e = self.empty.clone();
        let src = &self.pods[src_i];
        let mut rec = AggregatedRecord {
            key: CorrelationKey {
                src: src.ip,
                dst: src.ip,
                src_port,
                dst_port: 0,
                proto: 6,
            },
            start_secs,
            end_secs,
            end_reason,
            flow_type: 1,
            totals,
            deltas,
            throughput: octets * 8 / 60,
            reverse_throughput: rev_octets * 8 / 60,
            from_source: None,
            from_destination: None,
            src_pod: src.name.clone(),
            src_namespace: src.ns.clone(),
            src_node: self.nodes[src.node].clone(),
            dst_pod: e.clone(),
            dst_namespace: e.clone(),
            dst_node: e.clone(),
            cluster_ip: None,
            service_port: 0,
            service_port_name: e.clone(),
            ingress: PolicyInfo::default(),
            egress: src.egress.clone(),
            tcp_state: tcp,
            src_labels: src.labels.clone(),
            dst_labels: e.clone(),
            correlated: true,
            original_exporter: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, src.node as u8 + 1))),
            original_domain: src.node as u32 + 1,
            cluster_id: self.cluster_id.clone(),
        };
        let dst_pod = match kind {
            // Pod → Pod directly.
            0..60 => Some(src.peers[r.below(PEERS as u64) as usize]),
            // Pod → Service (the DNAT'd destination is the backend Pod).
            60..80 => {
                let svc = &self.services[src.services[r.below(SERVICES as u64) as usize]];
                rec.cluster_ip = Some(svc.ip);
                rec.service_port = svc.port;
                rec.service_port_name = svc.name.clone();
                Some(svc.backend)
            }
            // Pod → external: DNS over UDP or HTTPS.
            80..95 => {
                rec.flow_type = 3;
                rec.key.dst = self.external[r.below(self.external.len() as u64) as usize];
                (rec.key.dst_port, rec.key.proto) = if kind < 85 { (53, 17) } else { (443, 6) };
                if rec.key.proto == 17 {
                    rec.tcp_state = self.empty.clone();
                }
                None
            }
            // External → Pod: the Pod is the destination.
            _ => {
                rec.flow_type = 4;
                let ext = self.external[r.below(self.external.len() as u64) as usize];
                rec.key.src = ext;
                rec.key.dst = src.ip;
                rec.key.dst_port = 8080;
                rec.egress = PolicyInfo::default();
                rec.ingress = src.ingress.clone();
                std::mem::swap(&mut rec.src_pod, &mut rec.dst_pod);
                std::mem::swap(&mut rec.src_namespace, &mut rec.dst_namespace);
                std::mem::swap(&mut rec.src_node, &mut rec.dst_node);
                std::mem::swap(&mut rec.src_labels, &mut rec.dst_labels);
                None
            }
        };
        let src_node = src.node;
        let counters = NodeCounters {
            totals,
            deltas,
            throughput: rec.throughput,
            reverse_throughput: rec.reverse_throughput,
            end_secs,
        };
        if let Some(d) = dst_pod {
            let dst = &self.pods[d];
            rec.key.dst = dst.ip;
            rec.key.dst_port = [80, 443, 5432, 6379][d % 4];
            rec.dst_pod = dst.name.clone();
            rec.dst_namespace = dst.ns.clone();
            rec.dst_node = self.nodes[dst.node].clone();
            rec.dst_labels = dst.labels.clone();
            rec.ingress = dst.ingress.clone();
            rec.flow_type = if dst.node == src_node { 1 } else { 2 };
            rec.from_source = Some(counters);
            if rec.flow_type == 2 {
                rec.from_destination = Some(counters);
            }
        } else if rec.flow_type == 3 {
            rec.from_source = Some(counters);
        } else {
            rec.from_destination = Some(counters);
        }
        rec
    }

    /// `n` records whose end times step evenly through `[start, start + span_secs)`.
    pub fn batch(&mut self, n: usize, start: u32, span_secs: u32) -> Vec<AggregatedRecord> {
        (0..n)
            .map(|k| {
                let t = start as u64 + (k as u64 * span_secs as u64) / n.max(1) as u64;
                self.record(t as u32)
            })
            .collect()
    }
}
