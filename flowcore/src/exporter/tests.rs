//! Exporter tests: hand cases, record snapshots, and a proptest over random traces.

use std::collections::HashMap;
use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::metadata::{NamespaceInfo, NodeInfo, PodInfo, PodPhase, ServiceInfo, ServicePortInfo};
use crate::model::{Counters, Tuple};
use crate::policy::{
    ContainerPort, LabelSelector, Labels, NetworkPolicy, Peer, PolicyPort, PolicyTypes, PortSpec,
    Rule,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn secs(s: u64) -> Timestamp {
    Timestamp::from_secs(1_700_000_000 + s)
}

fn pod(uid: &str, ns: &str, name: &str, node: &str, addr: &str, app: &str) -> PodInfo {
    PodInfo {
        uid: uid.into(),
        namespace: ns.into(),
        name: name.into(),
        node: node.into(),
        ips: vec![ip(addr)],
        labels: Labels::new([("app", app)]),
        ports: vec![ContainerPort {
            name: "http".into(),
            protocol: 6,
            port: 8080,
        }],
        phase: PodPhase::Running,
        created: secs(0),
        ..PodInfo::default()
    }
}

/// Two Nodes; n1 is local. shop/client and shop/web on n1, shop/db on n2, Service shop/web.
fn cluster(cfg: ExporterConfig) -> FlowExporter {
    let mut ex = FlowExporter::new(ExporterConfig {
        node_name: "n1".into(),
        cluster_id: Some("c1".into()),
        ..cfg
    });
    let t = secs(0);
    for (n, addr, cidr) in [
        ("n1", "192.168.0.1", "10.1.1.0/24"),
        ("n2", "192.168.0.2", "10.1.2.0/24"),
    ] {
        ex.handle_metadata(
            t,
            MetadataUpdate::Node(NodeInfo {
                name: n.into(),
                addresses: vec![ip(addr)],
                pod_cidrs: vec![cidr.parse().unwrap()],
            }),
        );
    }
    ex.handle_metadata(
        t,
        MetadataUpdate::Namespace(NamespaceInfo {
            name: "shop".into(),
            labels: Labels::new([("team", "shop")]),
        }),
    );
    ex.handle_metadata(
        t,
        MetadataUpdate::Pod(pod("u1", "shop", "client", "n1", "10.1.1.10", "client")),
    );
    ex.handle_metadata(
        t,
        MetadataUpdate::Pod(pod("u2", "shop", "web-0", "n1", "10.1.1.11", "web")),
    );
    ex.handle_metadata(
        t,
        MetadataUpdate::Pod(pod("u3", "shop", "db-0", "n2", "10.1.2.20", "db")),
    );
    ex.handle_metadata(
        t,
        MetadataUpdate::Service(ServiceInfo {
            namespace: "shop".into(),
            name: "web".into(),
            cluster_ips: vec![ip("10.96.0.10")],
            ports: vec![ServicePortInfo {
                name: "http".into(),
                protocol: 6,
                port: 80,
                node_port: Some(30080),
            }],
            load_balancer_ips: vec![],
            backends: vec![ip("10.1.1.11")],
        }),
    );
    ex
}

/// A conntrack entry `src:sport → dst:dport`, DNATed to `real` when given.
fn entry(
    src: &str,
    sport: u16,
    dst: &str,
    dport: u16,
    real: Option<(&str, u16)>,
) -> ConntrackEntry {
    let orig = Tuple {
        src: ip(src),
        dst: ip(dst),
        src_port: sport,
        dst_port: dport,
        proto: 6,
    };
    let (rs, rp) = real.map_or((ip(dst), dport), |(a, p)| (ip(a), p));
    ConntrackEntry {
        orig,
        reply: Tuple {
            src: rs,
            dst: ip(src),
            src_port: rp,
            dst_port: sport,
            proto: 6,
        },
        id: 1,
        start: Some(secs(1)),
        tcp_state: Some(TcpState::Established),
        orig_counters: Some(Counters {
            packets: 10,
            bytes: 1000,
        }),
        reply_counters: Some(Counters {
            packets: 8,
            bytes: 6000,
        }),
        ..ConntrackEntry::default()
    }
}

fn drain(ex: &mut FlowExporter, now: Timestamp) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    while let Some(e) = ex.poll_record(now) {
        ex.ack(e.id).unwrap();
        out.push(e.record);
    }
    out
}

/// The only record of a connection that is dumped once then destroyed.
fn one_record(mut ex: FlowExporter, e: ConntrackEntry) -> (FlowExporter, FlowRecord) {
    ex.handle_dump(secs(2), &[e]);
    ex.handle_destroy(
        secs(3),
        &ConntrackEntry {
            stop: Some(secs(3)),
            ..e
        },
    );
    let recs = drain(&mut ex, secs(3));
    assert_eq!(recs.len(), 1, "{recs:?}");
    (ex, recs[0])
}

fn snapshot_of(ex: &FlowExporter, r: &FlowRecord) -> serde_json::Value {
    serde_json::to_value(r.resolved(ex.interner())).unwrap()
}

// --- snapshots -----------------------------------------------------------------------------

#[test]
fn snapshot_intra_node() {
    let (ex, r) = one_record(
        cluster(ExporterConfig::default()),
        entry("10.1.1.10", 40000, "10.1.1.11", 8080, None),
    );
    assert_eq!(r.flow_type, FlowType::IntraNode);
    insta::assert_json_snapshot!("intra_node", snapshot_of(&ex, &r));
}

#[test]
fn snapshot_inter_node() {
    let (ex, r) = one_record(
        cluster(ExporterConfig::default()),
        entry("10.1.1.10", 40001, "10.1.2.20", 5432, None),
    );
    assert_eq!(r.flow_type, FlowType::InterNode);
    insta::assert_json_snapshot!("inter_node", snapshot_of(&ex, &r));
}

#[test]
fn snapshot_pod_to_service() {
    let e = entry(
        "10.1.1.10",
        40002,
        "10.96.0.10",
        80,
        Some(("10.1.1.11", 8080)),
    );
    let (ex, r) = one_record(cluster(ExporterConfig::default()), e);
    assert_eq!(r.key.dst, ip("10.1.1.11"));
    assert_eq!(r.destination_cluster_ip, Some(ip("10.96.0.10")));
    insta::assert_json_snapshot!("pod_to_service", snapshot_of(&ex, &r));
}

#[test]
fn snapshot_pod_to_external() {
    let (ex, r) = one_record(
        cluster(ExporterConfig::default()),
        entry("10.1.1.10", 40003, "203.0.113.5", 443, None),
    );
    assert_eq!(r.flow_type, FlowType::ToExternal);
    insta::assert_json_snapshot!("pod_to_external", snapshot_of(&ex, &r));
}

#[test]
fn snapshot_from_external_via_node_port() {
    let e = entry(
        "198.51.100.7",
        50000,
        "192.168.0.1",
        30080,
        Some(("10.1.1.11", 8080)),
    );
    let (ex, r) = one_record(cluster(ExporterConfig::default()), e);
    assert_eq!(r.flow_type, FlowType::FromExternal);
    assert_eq!(r.destination_service_port, Some(30080));
    insta::assert_json_snapshot!("from_external", snapshot_of(&ex, &r));
}

fn web_policy() -> NetworkPolicy {
    NetworkPolicy {
        namespace: "shop".into(),
        name: "web-from-client".into(),
        pod_selector: LabelSelector::labels([("app", "web")]),
        ingress: vec![
            Rule {
                peers: vec![Peer::IpBlock {
                    cidr: "203.0.113.0/24".parse().unwrap(),
                    except: vec![],
                }],
                ports: vec![],
            },
            Rule {
                peers: vec![Peer::Pods {
                    pod_selector: Some(LabelSelector::labels([("app", "client")])),
                    namespace_selector: None,
                }],
                ports: vec![PolicyPort {
                    protocol: 6,
                    port: Some(PortSpec::Name("http".into())),
                    end_port: None,
                }],
            },
        ],
        egress: vec![],
        policy_types: PolicyTypes {
            ingress: true,
            egress: false,
        },
    }
}

fn client_egress_policy() -> NetworkPolicy {
    NetworkPolicy {
        namespace: "shop".into(),
        name: "client-egress".into(),
        pod_selector: LabelSelector::labels([("app", "client")]),
        ingress: vec![],
        egress: vec![Rule {
            peers: vec![Peer::Pods {
                pod_selector: None,
                namespace_selector: Some(LabelSelector::labels([("team", "shop")])),
            }],
            ports: vec![],
        }],
        policy_types: PolicyTypes {
            ingress: false,
            egress: true,
        },
    }
}

#[test]
fn snapshot_policy_allowed() {
    let mut ex = cluster(ExporterConfig::default());
    ex.handle_metadata(secs(0), MetadataUpdate::Policy(web_policy()));
    ex.handle_metadata(secs(0), MetadataUpdate::Policy(client_egress_policy()));
    let e = entry(
        "10.1.1.10",
        40004,
        "10.96.0.10",
        80,
        Some(("10.1.1.11", 8080)),
    );
    let (ex, r) = one_record(ex, e);
    assert_eq!(r.ingress_policy.action, Some(RuleAction::Allow));
    assert_eq!(r.egress_policy.action, Some(RuleAction::Allow));
    assert_eq!(
        ex.interner().resolve(r.ingress_policy.rule_name.unwrap()),
        "ingress-1"
    );
    insta::assert_json_snapshot!("policy_allowed", snapshot_of(&ex, &r));
}

#[test]
fn snapshot_policy_would_deny() {
    let mut ex = cluster(ExporterConfig::default());
    ex.handle_metadata(secs(0), MetadataUpdate::Policy(web_policy()));
    ex.handle_metadata(secs(0), MetadataUpdate::Policy(client_egress_policy()));
    // client → external: egress isolated, nothing admits it.
    let (ex, r) = one_record(ex, entry("10.1.1.10", 40005, "198.51.100.9", 443, None));
    assert_eq!(r.egress_policy.action, Some(RuleAction::Drop));
    assert_eq!(r.egress_policy.name, None);
    insta::assert_json_snapshot!("policy_would_deny", snapshot_of(&ex, &r));
}

// --- hand cases ----------------------------------------------------------------------------

#[test]
fn deltas_follow_acknowledged_totals_only() {
    let mut ex = cluster(ExporterConfig::default());
    let mut e = entry("10.1.1.10", 40000, "10.1.1.11", 8080, None);
    ex.handle_dump(secs(1), &[e]);
    assert!(
        ex.poll_record(secs(1)).is_none(),
        "nothing due before the idle timeout"
    );
    e.orig_counters = Some(Counters {
        packets: 20,
        bytes: 2000,
    });
    ex.handle_dump(secs(5), &[e]);
    ex.handle_timeout(secs(20));
    let first = ex.poll_record(secs(20)).unwrap();
    assert_eq!(first.record.flow_end_reason, FlowEndReason::IdleTimeout);
    assert_eq!(first.record.deltas.packets, 20);
    ex.nack(first.id).unwrap();
    assert_eq!(ex.nack(first.id), Err(AckError::UnknownExport(first.id)));
    // Retried one granularity later with the same delta.
    assert!(ex.poll_record(secs(20)).is_none());
    ex.handle_timeout(secs(21));
    let again = ex.poll_record(secs(21)).unwrap();
    assert_eq!(again.record.deltas, first.record.deltas);
    ex.ack(again.id).unwrap();
    e.orig_counters = Some(Counters {
        packets: 25,
        bytes: 2500,
    });
    ex.handle_dump(secs(25), &[e]);
    ex.handle_dump(secs(30), &[]);
    let end = ex.poll_record(secs(30)).unwrap();
    assert_eq!(end.record.flow_end_reason, FlowEndReason::EndOfFlow);
    assert_eq!(end.record.deltas.packets, 5);
    assert_eq!(end.record.deltas.reverse_octets, 0);
    ex.ack(end.id).unwrap();
    assert_eq!(ex.stats().tracked + ex.stats().ending, 0);
}

#[test]
fn reused_tuple_ends_the_old_connection_first() {
    let mut ex = cluster(ExporterConfig::default());
    let e = entry("10.1.1.10", 40000, "10.1.1.11", 8080, None);
    ex.handle_dump(secs(1), &[e]);
    let reused = ConntrackEntry {
        id: 2,
        start: Some(secs(2)),
        orig_counters: Some(Counters {
            packets: 1,
            bytes: 60,
        }),
        reply_counters: None,
        ..e
    };
    ex.handle_dump(secs(5), &[reused]);
    let old = ex.poll_record(secs(5)).unwrap();
    assert_eq!(old.record.flow_end_reason, FlowEndReason::EndOfFlow);
    assert_eq!(old.record.totals.packets, 10);
    ex.ack(old.id).unwrap();
    ex.handle_timeout(secs(30));
    let new = ex.poll_record(secs(30)).unwrap();
    assert_eq!(new.record.deltas.packets, 1);
    assert_eq!(new.record.flow_start, secs(2));
    assert_eq!(ex.stats().reused_tuples, 1);
}

#[test]
fn time_wait_ends_once_and_tail_is_not_recounted() {
    let mut ex = cluster(ExporterConfig::default());
    let mut e = entry("10.1.1.10", 40000, "10.1.1.11", 8080, None);
    ex.handle_dump(secs(1), &[e]);
    e.tcp_state = Some(TcpState::TimeWait);
    ex.handle_dump(secs(5), &[e]);
    let recs = drain(&mut ex, secs(5));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].tcp_state, Some(TcpState::TimeWait));
    for t in [10, 15, 60] {
        ex.handle_dump(secs(t), &[e]);
        ex.handle_timeout(secs(t));
        assert!(drain(&mut ex, secs(t)).is_empty());
    }
    // Kept through one dump without it (a destroy event may race behind that dump), then gone.
    ex.handle_dump(secs(65), &[]);
    assert_eq!(ex.stats().tombstones, 1);
    ex.handle_destroy(secs(66), &e);
    assert!(drain(&mut ex, secs(66)).is_empty());
    ex.handle_dump(secs(70), &[]);
    assert_eq!(ex.stats().tombstones, 0);
}

#[test]
fn short_connection_seen_only_by_destroy_is_exported_once() {
    let mut ex = cluster(ExporterConfig::default());
    let e = entry("10.1.1.10", 40000, "10.1.1.11", 8080, None);
    ex.handle_destroy(secs(2), &e);
    ex.handle_destroy(secs(2), &e);
    let recs = drain(&mut ex, secs(2));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].deltas.octets, 1000);
}

#[test]
fn unrelated_connections_are_ignored_and_counted() {
    let mut ex = cluster(ExporterConfig::default());
    ex.handle_dump(
        secs(1),
        &[entry("192.168.0.1", 22, "198.51.100.1", 5000, None)],
    );
    assert_eq!(ex.stats().ignored_entries, 1);
    assert_eq!(ex.stats().tracked, 0);
}

#[test]
fn full_store_evicts_with_reason_5_and_does_not_recount() {
    let mut ex = cluster(ExporterConfig {
        max_connections: 2,
        ..ExporterConfig::default()
    });
    let es: Vec<_> = (0..3)
        .map(|i| entry("10.1.1.10", 40000 + i, "10.1.1.11", 8080, None))
        .collect();
    ex.handle_dump(secs(1), &es[..2]);
    ex.handle_dump(secs(2), &es);
    let recs = drain(&mut ex, secs(2));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].flow_end_reason, FlowEndReason::LackOfResources);
    assert_eq!(ex.stats().evicted, 1);
    // The evicted connection is still in conntrack: skipped, not tracked again.
    ex.handle_dump(secs(3), &es);
    assert_eq!(ex.stats().tracked, 2);
    assert!(ex.stats().tombstoned_entries >= 1);
}

#[test]
fn shutdown_forces_end_of_every_connection() {
    let mut ex = cluster(ExporterConfig::default());
    let es: Vec<_> = (0..3)
        .map(|i| entry("10.1.1.10", 40000 + i, "10.1.1.11", 8080, None))
        .collect();
    ex.handle_dump(secs(1), &es);
    ex.shutdown(secs(2));
    let recs = drain(&mut ex, secs(2));
    assert_eq!(recs.len(), 3);
    assert!(
        recs.iter()
            .all(|r| r.flow_end_reason == FlowEndReason::ForcedEnd)
    );
    assert_eq!(ex.poll_timeout(), None);
}

#[test]
fn active_timeout_exports_a_busy_connection_every_minute() {
    let mut ex = cluster(ExporterConfig::default());
    let mut e = entry("10.1.1.10", 40000, "10.1.1.11", 8080, None);
    let mut times = Vec::new();
    for t in (0..=190).step_by(5) {
        e.orig_counters = Some(Counters {
            packets: t + 1,
            bytes: 100 * (t + 1),
        });
        ex.handle_dump(secs(t), &[e]);
        if ex.poll_timeout().is_some_and(|d| d <= secs(t)) {
            ex.handle_timeout(secs(t));
        }
        for r in drain(&mut ex, secs(t)) {
            assert_eq!(r.flow_end_reason, FlowEndReason::ActiveTimeout);
            times.push(t);
        }
    }
    assert_eq!(times, vec![60, 120, 180]);
}

// --- proptest over random traces -----------------------------------------------------------

const TUPLES: usize = 5;

#[derive(Clone, Debug)]
enum Op {
    Advance(u32),
    Dump(u64),
    Open(usize),
    Close(usize),
    Destroy(usize, u64),
    /// The connection goes; its destroy event arrives only after the next dump.
    LateDestroy(usize),
    TimeWait(usize),
    FailNext(u8),
    PodChurn(bool),
    /// Hold polled records unanswered (sends in progress) until `Hold(false)`.
    Hold(bool),
}

fn op() -> impl Strategy<Value = Op> {
    // The last tuple is long-lived (opened once, ended only by shutdown) so active timeouts
    // happen; the others churn.
    prop_oneof![
        8 => (100u32..5000).prop_map(Op::Advance),
        8 => any::<u64>().prop_map(Op::Dump),
        2 => (0..TUPLES).prop_map(Op::Open),
        1 => (0..TUPLES - 1).prop_map(Op::Close),
        1 => (0..TUPLES - 1, any::<u64>()).prop_map(|(i, s)| Op::Destroy(i, s)),
        1 => (0..TUPLES - 1).prop_map(Op::TimeWait),
        1 => (0..TUPLES - 1).prop_map(Op::LateDestroy),
        1 => (1u8..4).prop_map(Op::FailNext),
        1 => any::<bool>().prop_map(Op::PodChurn),
        1 => any::<bool>().prop_map(Op::Hold),
    ]
}

/// The kernel's view of one connection.
#[derive(Clone, Debug)]
struct KConn {
    tuple: usize,
    id: u32,
    start: Option<Timestamp>,
    c: BiCounters,
    tcp: Option<TcpState>,
}

/// What the test knows of one connection identity.
#[derive(Clone, Debug, Default)]
struct Ident {
    flow_start: Option<Timestamp>,
    last_delivered: BiCounters,
    acked: BiCounters,
    acked_sum: BiCounters,
    last_ack_at: Option<Timestamp>,
    first_delivered: Option<Timestamp>,
    finals: u32,
    acked_records: u32,
    nack_since_ack: bool,
    /// When the driver last acknowledged (a held record delays the next export).
    last_answer_at: Option<Timestamp>,
    evicted: bool,
    final_totals: BiCounters,
}

fn ktuple(i: usize) -> ConntrackEntry {
    let proto = if i % 3 == 2 { 17 } else { 6 };
    let src = ip(if i.is_multiple_of(2) {
        "10.1.1.10"
    } else {
        "10.1.1.11"
    });
    let sport = 40000 + i as u16;
    let (dst, dport, real, rport) = if i.is_multiple_of(2) {
        (ip("10.96.0.10"), 80, ip("10.1.1.11"), 8080)
    } else {
        (ip("203.0.113.5"), 443, ip("203.0.113.5"), 443)
    };
    ConntrackEntry {
        orig: Tuple {
            src,
            dst,
            src_port: sport,
            dst_port: dport,
            proto,
        },
        reply: Tuple {
            src: real,
            dst: src,
            src_port: rport,
            dst_port: sport,
            proto,
        },
        ..ConntrackEntry::default()
    }
}

fn kentry(k: &KConn) -> ConntrackEntry {
    let mut e = ktuple(k.tuple);
    e.id = k.id;
    e.start = k.start;
    e.orig_counters = Some(Counters {
        packets: k.c.packets,
        bytes: k.c.octets,
    });
    e.reply_counters = Some(Counters {
        packets: k.c.reverse_packets,
        bytes: k.c.reverse_octets,
    });
    e.tcp_state = if e.orig.proto == 6 {
        k.tcp.or(Some(TcpState::Established))
    } else {
        None
    };
    e
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn bump(c: &mut BiCounters, seed: &mut u64) {
    let r = xorshift(seed);
    if r.is_multiple_of(3) {
        return; // no traffic this time
    }
    let p = r >> 8 & 7;
    c.packets += p;
    c.octets += p * (r >> 16 & 0x3ff);
    c.reverse_packets += r >> 32 & 3;
    c.reverse_octets += (r >> 32 & 3) * 1400;
}

struct Harness {
    ex: FlowExporter,
    now: Timestamp,
    kernel: Vec<KConn>,
    idents: HashMap<(usize, u32), Ident>,
    next_id: u32,
    fail_budget: u8,
    ts_enabled: bool,
    max_step: Duration,
    pending: Vec<(ExportId, FlowRecord, (usize, u32), Timestamp)>,
    hold: bool,
    late: Vec<KConn>,
}

impl Harness {
    fn deliver(&mut self, k: &KConn) {
        let now = self.now;
        let id = self.idents.entry((k.tuple, k.id)).or_default();
        if id.first_delivered.is_none() {
            id.first_delivered = Some(now);
            id.flow_start = Some(k.start.unwrap_or(now));
        }
        id.last_delivered = k.c;
    }

    /// The identity a record belongs to. With conntrack timestamps its start names it; without,
    /// the start is when the exporter first tracked it (which is later than the first delivery
    /// when the store refused it at first): the latest identity of the tuple delivered by then.
    fn ident_of(&self, r: &FlowRecord) -> (usize, u32) {
        let tuple = (r.key.src_port - 40000) as usize;
        let mut found: Vec<_> = self
            .idents
            .iter()
            .filter(|((t, _), v)| {
                *t == tuple
                    && if self.ts_enabled {
                        v.flow_start == Some(r.flow_start)
                    } else {
                        v.first_delivered.is_some_and(|f| f <= r.flow_start)
                    }
            })
            .map(|(k, v)| (v.first_delivered, *k))
            .collect();
        found.sort();
        assert!(
            self.ts_enabled && found.len() == 1 || !self.ts_enabled && !found.is_empty(),
            "record {r:?} matches {found:?}"
        );
        found[found.len() - 1].1
    }

    /// What a driver does: timers, then poll everything; answer now unless holding.
    fn drive(&mut self) {
        if self.ex.poll_timeout().is_some_and(|t| t <= self.now) {
            self.ex.handle_timeout(self.now);
        }
        while let Some(x) = self.ex.poll_record(self.now) {
            let r = x.record;
            let key = self.ident_of(&r);
            assert!(
                self.pending.iter().all(|p| p.2 != key),
                "two records of one connection in flight: {r:?}"
            );
            let id = self.idents.get_mut(&key).unwrap();
            assert_eq!(
                r.totals.checked_sub(id.acked),
                Some(r.deltas),
                "delta against acked totals"
            );
            assert_eq!(id.finals, 0, "record after the final one: {r:?}");
            self.pending.push((x.id, r, key, self.now));
        }
        if !self.hold {
            self.answer_all();
        }
        // Upper bound: unexported traffic waits at most the active timeout, plus the timer
        // granularity and one step of this driver, unless a send failed or is held meanwhile.
        let cfg = self.ex.config().clone();
        let bound = cfg.active_timeout + cfg.timer_granularity + self.max_step;
        for k in &self.kernel {
            let key = (k.tuple, k.id);
            let Some(id) = self.idents.get(&key) else {
                continue;
            };
            // A connection the full store refused is not tracked yet: no bound applies.
            let maybe_refused = id.acked_records == 0 && self.ex.stats().refused_store_full > 0;
            if id.nack_since_ack
                || maybe_refused
                || id.finals > 0
                || id.last_delivered == id.acked
                || self.pending.iter().any(|p| p.2 == key)
            {
                continue;
            }
            let since = id.last_answer_at.or(id.first_delivered).unwrap();
            let waited = self.now.saturating_since(since);
            assert!(waited <= bound, "{k:?} waited {waited:?}");
        }
    }

    fn answer_all(&mut self) {
        for (xid, r, key, polled_at) in std::mem::take(&mut self.pending) {
            let id = self.idents.get_mut(&key).unwrap();
            if self.fail_budget > 0 {
                self.fail_budget -= 1;
                id.nack_since_ack = true;
                self.ex.nack(xid).unwrap();
                continue;
            }
            self.ex.ack(xid).unwrap();
            if !r.flow_end_reason.is_final() {
                if let Some(prev) = id.last_ack_at {
                    // Spacing: never closer than the idle timeout (< active timeout).
                    let gap = polled_at.saturating_since(prev);
                    assert!(
                        gap >= self.ex.config().idle_timeout,
                        "gap {gap:?} for {r:?}"
                    );
                }
            } else {
                id.finals += 1;
                id.final_totals = r.totals;
                if r.flow_end_reason == FlowEndReason::LackOfResources {
                    // The kernel goes on counting an evicted connection; we stop.
                    id.evicted = true;
                } else {
                    assert_eq!(r.totals, id.last_delivered, "final totals");
                }
            }
            id.acked = r.totals;
            id.acked_sum = id.acked_sum.saturating_add(r.deltas);
            id.last_ack_at = Some(polled_at);
            id.last_answer_at = Some(self.now);
            id.acked_records += 1;
            id.nack_since_ack = false;
        }
    }

    fn open(&mut self, tuple: usize) {
        // A reused tuple: the kernel replaced the old connection (no destroy seen).
        self.kernel.retain(|k| k.tuple != tuple);
        self.next_id += 1;
        let start = self
            .ts_enabled
            .then(|| self.now + Duration::from_nanos(self.next_id as u64));
        self.kernel.push(KConn {
            tuple,
            id: self.next_id,
            start,
            c: BiCounters::default(),
            tcp: None,
        });
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Advance(ms) => self.now = self.now + Duration::from_millis(ms as u64),
            Op::Dump(mut seed) => {
                let mut entries = Vec::new();
                let mut ks = std::mem::take(&mut self.kernel);
                for k in &mut ks {
                    if k.tcp != Some(TcpState::TimeWait) {
                        bump(&mut k.c, &mut seed);
                    }
                    self.deliver(k);
                    entries.push(kentry(k));
                }
                self.kernel = ks;
                self.ex.handle_dump(self.now, &entries);
                // A millisecond later, so that without conntrack timestamps a late destroy's
                // connection is told from a new one on the same tuple by its first-seen time.
                for k in std::mem::take(&mut self.late) {
                    self.now = self.now + Duration::from_millis(1);
                    self.deliver(&k);
                    self.ex.handle_destroy(self.now, &kentry(&k));
                }
            }
            Op::Open(t) if t == TUPLES - 1 && self.kernel.iter().any(|k| k.tuple == t) => {}
            Op::Open(t) => self.open(t),
            Op::Close(t) => self.kernel.retain(|k| k.tuple != t),
            Op::LateDestroy(t) => {
                if let Some(pos) = self.kernel.iter().position(|k| k.tuple == t) {
                    let k = self.kernel.remove(pos);
                    self.late.push(k);
                }
            }
            Op::Destroy(t, mut seed) => {
                if let Some(pos) = self.kernel.iter().position(|k| k.tuple == t) {
                    let mut k = self.kernel.remove(pos);
                    if k.tcp != Some(TcpState::TimeWait) {
                        bump(&mut k.c, &mut seed);
                    }
                    self.deliver(&k);
                    self.ex.handle_destroy(self.now, &kentry(&k));
                }
            }
            Op::TimeWait(t) => {
                for k in self
                    .kernel
                    .iter_mut()
                    .filter(|k| k.tuple == t && k.tuple % 3 != 2)
                {
                    k.tcp = Some(TcpState::TimeWait);
                }
            }
            Op::FailNext(n) => self.fail_budget = n,
            Op::Hold(h) => self.hold = h,
            Op::PodChurn(readd) => {
                let now = self.now;
                if readd {
                    let mut p = pod("u2b", "shop", "web-1", "n1", "10.1.1.11", "web");
                    p.created = now;
                    self.ex.handle_metadata(now, MetadataUpdate::Pod(p));
                } else {
                    self.ex
                        .handle_metadata(now, MetadataUpdate::PodDeleted { uid: "u2".into() });
                    self.ex
                        .handle_metadata(now, MetadataUpdate::PodDeleted { uid: "u2b".into() });
                }
            }
        }
        self.now = self.now + Duration::from_millis(1);
        self.drive();
    }
}

proptest! {
    // Modest for CI; `PROPTEST_CASES=N` runs more.
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96), ..ProptestConfig::default() })]

    #[test]
    fn traces_are_exact(
        ops in proptest::collection::vec(op(), 1..300),
        ts_enabled in any::<bool>(),
        max_connections in prop_oneof![3 => Just(1usize << 20), 1 => 2usize..5],
    ) {
        // Without conntrack timestamps the harness names a record's connection by when it was
        // first tracked, which a refusing (full) store makes ambiguous: small stores only with
        // timestamps.
        let max_connections = if ts_enabled { max_connections } else { 1 << 20 };
        let cfg = ExporterConfig { max_connections, ..ExporterConfig::default() };
        let mut h = Harness {
            ex: cluster(cfg),
            now: secs(0),
            kernel: Vec::new(),
            idents: HashMap::new(),
            next_id: 0,
            fail_budget: 0,
            ts_enabled,
            max_step: Duration::from_millis(5001),
            pending: Vec::new(),
            hold: false,
            late: Vec::new(),
        };
        for op in &ops {
            h.step(op);
        }
        h.ex.shutdown(h.now);
        h.hold = false;
        for _ in 0..20 {
            h.now = h.now + Duration::from_secs(1);
            h.drive();
        }
        let st = h.ex.stats();
        prop_assert_eq!(h.ex.in_flight(), 0);
        prop_assert_eq!(st.tracked + st.ending, 0, "{:?}", st);
        prop_assert_eq!(st.records_polled, st.records_acked + st.records_nacked);
        for (k, id) in &h.idents {
            if id.acked_records == 0 && st.refused_store_full > 0 {
                continue; // refused: counted, never tracked
            }
            prop_assert_eq!(id.finals, 1, "{:?} {:?}", k, id);
            let want = if id.evicted { id.final_totals } else { id.last_delivered };
            prop_assert_eq!(id.acked_sum, want, "{:?}", k);
        }
    }
}

#[test]
fn ipv6_service_flow_and_partial_updates() {
    let mut ex = cluster(ExporterConfig::default());
    ex.handle_metadata(
        secs(0),
        MetadataUpdate::Node(NodeInfo {
            name: "n1".into(),
            addresses: vec![ip("fd00::1")],
            pod_cidrs: vec!["fd00:1:1::/64".parse().unwrap()],
        }),
    );
    ex.handle_metadata(
        secs(0),
        MetadataUpdate::Pod(pod("u6", "shop", "web-6", "n1", "fd00:1:1::11", "web")),
    );
    ex.handle_metadata(
        secs(0),
        MetadataUpdate::Service(ServiceInfo {
            namespace: "shop".into(),
            name: "web6".into(),
            cluster_ips: vec![ip("fd00:96::10")],
            ports: vec![ServicePortInfo {
                name: String::new(),
                protocol: 6,
                port: 80,
                node_port: None,
            }],
            ..ServiceInfo::default()
        }),
    );
    let e = entry(
        "fd00:1:1::10",
        40000,
        "fd00:96::10",
        80,
        Some(("fd00:1:1::11", 8080)),
    );
    // A partial update never ends what it does not list.
    ex.handle_entries(secs(1), &[e]);
    ex.handle_entries(secs(2), &[]);
    assert_eq!(ex.stats().tracked, 1);
    ex.handle_dump(secs(3), &[]);
    let r = drain(&mut ex, secs(3));
    assert_eq!(r.len(), 1);
    let json = serde_json::to_value(r[0].resolved(ex.interner())).unwrap();
    assert_eq!(json["sourceIPv6Address"], "fd00:1:1::10");
    assert_eq!(json["destinationIPv6Address"], "fd00:1:1::11");
    assert_eq!(json["destinationClusterIPv6"], "fd00:96::10");
    assert_eq!(json["destinationServicePortName"], "shop/web6");
    // The source has no known Pod, but it is in this Node's Pod CIDR: tracked as local.
    assert!(json.get("sourcePodName").is_none());
    assert_eq!(json["sourceNodeName"], "n1");
    assert_eq!(json["flowType"], 1);
}

#[test]
fn records_name_the_pod_that_had_the_ip_when_the_connection_started() {
    let mut ex = cluster(ExporterConfig::default());
    // web-0 (10.1.1.11) talks to client; then web-0 is deleted and web-9 gets its IP.
    let old = entry("10.1.1.10", 40000, "10.1.1.11", 8080, None);
    ex.handle_dump(secs(2), &[old]);
    ex.handle_metadata(secs(10), MetadataUpdate::PodDeleted { uid: "u2".into() });
    let mut p = pod("u9", "shop", "web-9", "n1", "10.1.1.11", "web");
    p.created = secs(12);
    ex.handle_metadata(secs(12), MetadataUpdate::Pod(p));
    let new = ConntrackEntry {
        id: 2,
        start: Some(secs(13)),
        ..entry("10.1.1.10", 40001, "10.1.1.11", 8080, None)
    };
    ex.handle_dump(secs(14), &[old, new]);
    ex.shutdown(secs(15));
    let recs = drain(&mut ex, secs(15));
    let names: Vec<_> = recs
        .iter()
        .map(|r| {
            (
                r.key.src_port,
                ex.interner()
                    .resolve(r.destination_pod_name.unwrap())
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![(40000, "web-0".to_string()), (40001, "web-9".to_string())]
    );
}

#[test]
fn entries_without_counters_keep_the_last_totals() {
    let mut ex = cluster(ExporterConfig::default());
    let e = entry("10.1.1.10", 40000, "10.1.1.11", 8080, None);
    ex.handle_dump(secs(1), &[e]);
    let bare = ConntrackEntry {
        orig_counters: None,
        reply_counters: None,
        ..e
    };
    ex.handle_dump(secs(2), &[bare]);
    assert_eq!(ex.stats().reused_tuples, 0);
    ex.handle_destroy(secs(3), &bare);
    let r = drain(&mut ex, secs(3));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].totals.octets, 1000);
}

// --- robustness: arbitrary inputs never panic ---------------------------------------------

#[derive(Clone, Debug)]
enum AnyOp {
    Dump(Vec<ConntrackEntry>),
    Entries(Vec<ConntrackEntry>),
    Destroy(ConntrackEntry),
    Timeout,
    Poll(u8),
    Ack(u64),
    Nack(u64),
    Time(i64),
    Pod(u8, u8, bool),
    Shutdown,
}

fn any_entry() -> impl Strategy<Value = ConntrackEntry> {
    let addr = prop_oneof![
        (0u8..4).prop_map(|i| IpAddr::from([10, 1, 1, 10 + i])),
        (0u8..4).prop_map(|i| IpAddr::from([10, 1, 2, 20 + i])),
        Just(ip("203.0.113.5")),
        Just(ip("192.168.0.1")),
        Just(ip("fd00::1")),
    ];
    let tuple = (
        addr.clone(),
        addr,
        0u16..4,
        0u16..4,
        prop::sample::select(vec![6u8, 17, 1]),
    )
        .prop_map(|(src, dst, sp, dp, proto)| Tuple {
            src,
            dst,
            src_port: sp,
            dst_port: dp,
            proto,
        });
    let counters = proptest::option::of((0u64..4, 0u64..4).prop_map(|(p, b)| Counters {
        packets: p,
        bytes: b,
    }));
    (
        tuple.clone(),
        tuple,
        0u16..2,
        0u32..3,
        proptest::option::of((0u64..3).prop_map(secs)),
        counters.clone(),
        counters,
        proptest::option::of(
            (0u8..11).prop_map(|v| TcpState::from_kernel(v).unwrap_or(TcpState::None)),
        ),
    )
        .prop_map(
            |(orig, reply, zone, id, start, oc, rc, tcp)| ConntrackEntry {
                orig,
                reply,
                zone,
                id,
                start,
                orig_counters: oc,
                reply_counters: rc,
                tcp_state: tcp,
                ..ConntrackEntry::default()
            },
        )
}

fn any_op() -> impl Strategy<Value = AnyOp> {
    prop_oneof![
        proptest::collection::vec(any_entry(), 0..6).prop_map(AnyOp::Dump),
        proptest::collection::vec(any_entry(), 0..3).prop_map(AnyOp::Entries),
        any_entry().prop_map(AnyOp::Destroy),
        Just(AnyOp::Timeout),
        any::<u8>().prop_map(AnyOp::Poll),
        (0u64..20).prop_map(AnyOp::Ack),
        (0u64..20).prop_map(AnyOp::Nack),
        (-30i64..90).prop_map(AnyOp::Time),
        (any::<u8>(), any::<u8>(), any::<bool>()).prop_map(|(a, b, c)| AnyOp::Pod(a, b, c)),
        Just(AnyOp::Shutdown),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), ..ProptestConfig::default() })]

    /// Any sequence of calls, with time jumping back and forth, unknown acks and odd entries:
    /// no panic, and the bookkeeping stays consistent.
    #[test]
    fn arbitrary_inputs_never_panic(ops in proptest::collection::vec(any_op(), 0..80), max in 1usize..6) {
        let mut ex = cluster(ExporterConfig { max_connections: max, ..ExporterConfig::default() });
        let mut now = secs(10);
        for op in ops {
            match op {
                AnyOp::Dump(es) => ex.handle_dump(now, &es),
                AnyOp::Entries(es) => ex.handle_entries(now, &es),
                AnyOp::Destroy(e) => ex.handle_destroy(now, &e),
                AnyOp::Timeout => ex.handle_timeout(now),
                AnyOp::Poll(n) => {
                    for _ in 0..n % 4 {
                        if let Some(x) = ex.poll_record(now) {
                            prop_assert!(x.record.totals.checked_sub(x.record.deltas).is_some());
                            let _ = x.record.resolved(ex.interner());
                        }
                    }
                }
                AnyOp::Ack(id) => { let _ = ex.ack(ExportId(id)); }
                AnyOp::Nack(id) => { let _ = ex.nack(ExportId(id)); }
                AnyOp::Time(d) => {
                    now = Timestamp::from_nanos(now.as_nanos().saturating_add_signed(d * 1_000_000_000));
                }
                AnyOp::Pod(a, b, del) => {
                    let uid = format!("r{}", a % 4);
                    if del {
                        ex.handle_metadata(now, MetadataUpdate::PodDeleted { uid });
                    } else {
                        let node = if b % 2 == 0 { "n1" } else { "n2" };
                        let addr = format!("10.1.1.{}", 10 + b % 4);
                        ex.handle_metadata(now, MetadataUpdate::Pod(pod(&uid, "shop", &uid, node, &addr, "x")));
                    }
                }
                AnyOp::Shutdown => ex.shutdown(now),
            }
            let st = ex.stats();
            prop_assert!(st.tracked <= max, "{:?}", st);
            prop_assert!(st.tracked + st.ending <= 2 * max, "{:?}", st);
            prop_assert_eq!(st.records_polled, st.records_acked + st.records_nacked + ex.in_flight() as u64);
        }
    }
}

#[test]
fn a_dump_in_chunks_is_the_same_dump() {
    let entries: Vec<ConntrackEntry> = (0..40u16)
        .map(|i| ConntrackEntry {
            id: 100 + i as u32,
            ..entry("10.1.1.10", 40000 + i, "10.1.2.20", 5432, None)
        })
        .collect();
    let mut whole = cluster(ExporterConfig::default());
    let mut parts = cluster(ExporterConfig::default());
    for (t, list) in [
        (2, &entries[..]),
        (70, &entries[..25]),
        (140, &entries[..10]),
    ] {
        whole.handle_dump(secs(t), list);
        parts.begin_dump(secs(t));
        for c in list.chunks(7) {
            parts.dump_chunk(secs(t), c);
        }
        parts.end_dump(secs(t));
        let (a, b) = (drain(&mut whole, secs(t)), drain(&mut parts, secs(t)));
        assert_eq!(a, b, "at {t} s");
    }
    // Connections missing from the later dumps were ended in both, the same way.
    assert_eq!(whole.stats().tracked, 10);
    assert_eq!(parts.stats().tracked, 10);
}

/// Verdicts are cached per flow ends; every metadata change evaluation reads must show in the
/// next record: a policy added, a Pod's labels changed, a namespace's labels changed. A change
/// it does not read (a Service) keeps the cache, and records stay equal to a fresh exporter's.
#[test]
fn cached_verdicts_follow_metadata_changes() {
    let e = |port: u16| entry("10.1.1.10", port, "10.1.1.11", 8080, None);
    let ingress = |ex: &mut FlowExporter, port: u16, t: u64| {
        let (ex2, r) = one_record(
            std::mem::replace(ex, FlowExporter::new(ExporterConfig::default())),
            ConntrackEntry {
                start: Some(secs(t)),
                ..e(port)
            },
        );
        *ex = ex2;
        (
            r.ingress_policy.action,
            r.ingress_policy
                .rule_name
                .map(|s| ex.interner().resolve(s).to_string()),
        )
    };
    let mut ex = cluster(ExporterConfig::default());
    assert_eq!(ingress(&mut ex, 41000, 1), (None, None));
    // A policy isolating web: client is admitted by rule 1 (named port "http" on web).
    ex.handle_metadata(secs(1), MetadataUpdate::Policy(web_policy()));
    assert_eq!(
        ingress(&mut ex, 41001, 1),
        (Some(RuleAction::Allow), Some("ingress-1".into()))
    );
    // The client's labels change: no rule admits it any more.
    let mut client = pod("u1", "shop", "client", "n1", "10.1.1.10", "client");
    client.labels = Labels::new([("app", "other")]);
    ex.handle_metadata(secs(1), MetadataUpdate::Pod(client.clone()));
    assert_eq!(ingress(&mut ex, 41002, 1), (Some(RuleAction::Drop), None));
    // A Service change is not read by evaluation; the verdict stays.
    ex.handle_metadata(
        secs(1),
        MetadataUpdate::Service(ServiceInfo {
            namespace: "shop".into(),
            name: "other".into(),
            cluster_ips: vec![ip("10.96.0.99")],
            ports: vec![],
            load_balancer_ips: vec![],
            backends: vec![],
        }),
    );
    assert_eq!(ingress(&mut ex, 41003, 1), (Some(RuleAction::Drop), None));
    // A namespace-selector rule: admitted once the namespace carries the label.
    let mut p = web_policy();
    p.ingress.push(Rule {
        peers: vec![Peer::Pods {
            pod_selector: None,
            namespace_selector: Some(LabelSelector::labels([("team", "payments")])),
        }],
        ports: vec![],
    });
    ex.handle_metadata(secs(1), MetadataUpdate::Policy(p));
    assert_eq!(ingress(&mut ex, 41004, 1), (Some(RuleAction::Drop), None));
    ex.handle_metadata(
        secs(1),
        MetadataUpdate::Namespace(NamespaceInfo {
            name: "shop".into(),
            labels: Labels::new([("team", "payments")]),
        }),
    );
    assert_eq!(
        ingress(&mut ex, 41005, 1),
        (Some(RuleAction::Allow), Some("ingress-2".into()))
    );
    // The policy deleted: not isolated.
    ex.handle_metadata(
        secs(1),
        MetadataUpdate::PolicyDeleted {
            namespace: "shop".into(),
            name: "web-from-client".into(),
        },
    );
    assert_eq!(ingress(&mut ex, 41006, 1), (None, None));
}

/// Pod churn rebuilds the metadata's name table; records built after it carry the same names
/// (the Node, the cluster id, the Pods, the Service, the policy) as records built before.
#[test]
fn records_keep_their_names_across_a_name_table_rebuild() {
    let snapshot = |ex: FlowExporter| {
        let (ex, r) = one_record(
            ex,
            entry(
                "10.1.1.10",
                40000,
                "10.96.0.10",
                80,
                Some(("10.1.1.11", 8080)),
            ),
        );
        snapshot_of(&ex, &r)
    };
    let mut ex = cluster(ExporterConfig::default());
    ex.handle_metadata(secs(0), MetadataUpdate::Policy(web_policy()));
    for i in 0..20_000u32 {
        let uid = format!("churn-{i}");
        let addr = format!("10.1.2.{}", 100 + i % 100);
        // One Pod a second, each deleted at once and forgotten after the grace period.
        let t = secs(10 + i as u64);
        ex.handle_metadata(
            t,
            MetadataUpdate::Pod(pod(
                &uid,
                "batch",
                &format!("job-{i:06}"),
                "n2",
                &addr,
                "job",
            )),
        );
        ex.handle_metadata(t, MetadataUpdate::PodDeleted { uid });
    }
    assert!(ex.metadata().stats().compactions > 0);
    assert!(
        ex.metadata().stats().names < 10_000,
        "{:?}",
        ex.metadata().stats()
    );
    let mut with_policy = cluster(ExporterConfig::default());
    with_policy.handle_metadata(secs(0), MetadataUpdate::Policy(web_policy()));
    assert_eq!(snapshot(ex), snapshot(with_policy));
}
