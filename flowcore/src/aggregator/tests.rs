//! Aggregator tests: correlation, per-Node accounting, staleness, reuse, bounds, and a property
//! test over random interleavings, duplicates and delays.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::ipfix::{Decoder, DecoderConfig, Encoder, EncoderConfig, Layout};

const T0: Timestamp = Timestamp::from_secs(1_764_000_000);
const SRC_NODE: ExporterId = ExporterId {
    addr: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 1)),
    domain: 1,
};
const DST_NODE: ExporterId = ExporterId {
    addr: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2)),
    domain: 2,
};

fn key(i: u16, v6: bool) -> CorrelationKey {
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 1).into(),
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 1).into(),
        )
    } else {
        (
            Ipv4Addr::new(10, 0, 1, 1).into(),
            Ipv4Addr::new(10, 0, 2, 1).into(),
        )
    };
    CorrelationKey {
        src,
        dst,
        src_port: 40000 + i,
        dst_port: 80,
        proto: 6,
    }
}

/// An inter-Node half as the source (`from_source`) or destination Node's agent exports it.
fn half(
    agg: &mut Aggregator,
    k: CorrelationKey,
    from_source: bool,
    totals: [u64; 4],
    end_secs: u32,
    end_reason: u8,
) -> FlowHalf {
    let s = agg.strings();
    let mut h = FlowHalf {
        key: k,
        start_secs: 1_764_000_000,
        end_secs,
        end_reason,
        totals: Some(totals),
        // As an agent's first record of the connection: everything is new.
        deltas: totals,
        tcp_state: Some(crate::model::TcpState::Established),
        meta: FlowMeta {
            flow_type: FLOW_TYPE_INTER_NODE,
            ..FlowMeta::default()
        },
    };
    if from_source {
        h.meta.src_pod = s.intern("frontend-1");
        h.meta.src_namespace = s.intern("shop");
        h.meta.src_node = s.intern("node-a");
        h.meta.cluster_ip = Some(if k.src.is_ipv4() {
            Ipv4Addr::new(10, 96, 0, 10).into()
        } else {
            Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 10).into()
        });
        h.meta.service_port = 80;
        h.meta.service_port_name = s.intern("shop/catalog:http");
        h.meta.egress = PolicyRef {
            name: s.intern("allow-egress"),
            namespace: s.intern("shop"),
            kind: 1,
            rule: s.intern("egress-0"),
            action: 1,
        };
    } else {
        h.meta.dst_pod = s.intern("catalog-1");
        h.meta.dst_namespace = s.intern("shop");
        h.meta.dst_node = s.intern("node-b");
        h.meta.ingress = PolicyRef {
            name: s.intern("allow-frontend"),
            namespace: s.intern("shop"),
            kind: 1,
            rule: s.intern("ingress-0"),
            action: 1,
        };
    }
    h
}

fn drain(agg: &mut Aggregator) -> Vec<AggregatedRecord> {
    std::iter::from_fn(|| agg.poll_record()).collect()
}

#[test]
fn two_halves_correlate_into_one_complete_record() {
    let mut agg = Aggregator::new(AggregatorConfig {
        cluster_id: "c1".into(),
        ..Default::default()
    });
    let k = key(1, false);
    let h = half(
        &mut agg,
        k,
        false,
        [10, 1000, 8, 800],
        1_764_000_010,
        END_ACTIVE,
    );
    agg.handle_half(T0, DST_NODE, h);
    assert!(drain(&mut agg).is_empty(), "waits for the source half");
    let h = half(
        &mut agg,
        k,
        true,
        [11, 1100, 9, 900],
        1_764_000_010,
        END_ACTIVE,
    );
    agg.handle_half(T0 + Duration::from_secs(1), SRC_NODE, h);
    let recs = drain(&mut agg);
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert!(r.correlated);
    assert_eq!(&*r.src_pod, "frontend-1");
    assert_eq!(&*r.dst_pod, "catalog-1");
    assert_eq!(&*r.service_port_name, "shop/catalog:http");
    assert_eq!(&*r.ingress.name, "allow-frontend");
    assert_eq!(&*r.egress.rule, "egress-0");
    assert_eq!(
        r.totals,
        [11, 1100, 9, 900],
        "the source Node's counters lead"
    );
    assert_eq!(r.from_source.unwrap().deltas, [11, 1100, 9, 900]);
    assert_eq!(r.from_destination.unwrap().totals, [10, 1000, 8, 800]);
    assert_eq!(r.original_exporter, Some(SRC_NODE.addr));
    assert_eq!(agg.stats().correlated, 1);
    // More traffic: deltas are against what was exported, at the active timeout.
    let h = half(
        &mut agg,
        k,
        true,
        [21, 2100, 19, 1900],
        1_764_000_070,
        END_ACTIVE,
    );
    agg.handle_half(T0 + Duration::from_secs(30), SRC_NODE, h);
    assert!(drain(&mut agg).is_empty(), "not before the active timeout");
    agg.handle_timeout(T0 + Duration::from_secs(61));
    let r = &drain(&mut agg)[0];
    assert_eq!(r.from_source.unwrap().deltas, [10, 1000, 10, 1000]);
    assert_eq!(r.from_destination.unwrap().deltas, [0; 4]);
    assert_eq!(r.from_source.unwrap().throughput, 1000 * 8 / 60);
}

#[test]
fn a_missing_partner_is_exported_uncorrelated_after_the_timeout() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let h = half(
        &mut agg,
        key(2, false),
        false,
        [5, 500, 5, 500],
        1_764_000_005,
        END_ACTIVE,
    );
    agg.handle_half(T0, DST_NODE, h);
    assert_eq!(agg.poll_timeout(), Some(T0 + Duration::from_secs(10)));
    agg.handle_timeout(T0 + Duration::from_secs(10));
    let recs = drain(&mut agg);
    assert_eq!(recs.len(), 1);
    assert!(!recs[0].correlated);
    assert_eq!(&*recs[0].dst_pod, "catalog-1");
    assert_eq!(agg.stats().uncorrelated, 1);
}

#[test]
fn stale_and_duplicate_halves_change_nothing() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let k = key(3, false);
    for (t, totals, end) in [
        (0, [5, 500, 5, 500], 10),
        (1, [3, 300, 3, 300], 8),
        (2, [5, 500, 5, 500], 10),
    ] {
        let h = half(&mut agg, k, true, totals, 1_764_000_000 + end, END_ACTIVE);
        agg.handle_half(T0 + Duration::from_secs(t), SRC_NODE, h);
    }
    assert_eq!(agg.stats().records_stale, 1);
    assert_eq!(agg.stats().records_duplicate, 1);
}

#[test]
fn end_of_flow_is_sticky_and_forgets_the_flow() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let k = key(4, false);
    let h = half(
        &mut agg,
        k,
        true,
        [5, 500, 5, 500],
        1_764_000_005,
        END_OF_FLOW,
    );
    agg.handle_half(T0, SRC_NODE, h);
    let h = half(
        &mut agg,
        k,
        false,
        [5, 500, 5, 500],
        1_764_000_005,
        END_OF_FLOW,
    );
    agg.handle_half(T0, DST_NODE, h);
    let recs = drain(&mut agg);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].end_reason, END_OF_FLOW);
    assert!(agg.is_empty());
}

#[test]
fn a_reused_five_tuple_ends_the_old_flow_first() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let k = key(5, false);
    let h = half(
        &mut agg,
        k,
        true,
        [5, 500, 5, 500],
        1_764_000_005,
        END_ACTIVE,
    );
    agg.handle_half(T0, SRC_NODE, h);
    let mut h = half(&mut agg, k, true, [1, 60, 1, 60], 1_764_000_100, END_ACTIVE);
    h.start_secs = 1_764_000_090;
    agg.handle_half(T0 + Duration::from_secs(100), SRC_NODE, h);
    let recs = drain(&mut agg);
    assert_eq!(agg.stats().reused, 1);
    assert!(
        recs.iter()
            .any(|r| r.end_reason == END_OF_FLOW
                && r.from_source.unwrap().totals == [5, 500, 5, 500])
    );
    assert!(
        recs.iter().all(|r| r.deltas.iter().all(|d| *d < 1 << 60)),
        "no negative delta"
    );
}

#[test]
fn a_full_store_evicts_with_reason_5() {
    let mut agg = Aggregator::new(AggregatorConfig {
        max_flows: 2,
        ..Default::default()
    });
    for i in 0..3 {
        let h = half(
            &mut agg,
            key(10 + i, false),
            false,
            [1, 100, 1, 100],
            1_764_000_001,
            END_ACTIVE,
        );
        agg.handle_half(T0, DST_NODE, h);
    }
    let recs = drain(&mut agg);
    assert_eq!(agg.stats().evicted, 1);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].end_reason, END_LACK_OF_RESOURCES);
    assert_eq!(agg.len(), 2);
    // Tombstones are bounded by `max_flows` too, and forgetting one early is counted.
    agg.flush_all(T0);
    assert_eq!(agg.stats().tombstones_evicted, 1);
}

fn encode(recs: &[AggregatedRecord]) -> Vec<bytes::Bytes> {
    let mut enc = Encoder::new(EncoderConfig::stream(9)).unwrap();
    for l in [Layout::AggregatedV4, Layout::AggregatedV6] {
        enc.add_template(l.template_id(), l.fields()).unwrap();
    }
    for r in recs {
        r.write_ipfix(&mut enc, T0).unwrap();
    }
    enc.flush(T0);
    std::iter::from_fn(|| enc.poll_transmit()).collect()
}

#[test]
fn aggregated_records_snapshot_and_round_trip_through_ipfix() {
    for v6 in [false, true] {
        let mut agg = Aggregator::new(AggregatorConfig {
            cluster_id: "prod-eu".into(),
            ..Default::default()
        });
        let k = key(7, v6);
        let h = half(
            &mut agg,
            k,
            true,
            [11, 1100, 9, 900],
            1_764_000_010,
            END_ACTIVE,
        );
        agg.handle_half(T0, SRC_NODE, h);
        let h = half(
            &mut agg,
            k,
            false,
            [10, 1000, 8, 800],
            1_764_000_010,
            END_ACTIVE,
        );
        agg.handle_half(T0, DST_NODE, h);
        let recs = drain(&mut agg);
        insta::assert_json_snapshot!(
            if v6 {
                "aggregated_ipv6"
            } else {
                "aggregated_ipv4"
            },
            recs[0]
        );
        // Encoded and decoded by the codec, then parsed back as a half: the 5-tuple and the
        // Kubernetes fields survive.
        let msgs = encode(&recs);
        let mut dec = Decoder::new(DecoderConfig::default());
        let mut back = Aggregator::new(AggregatorConfig::default());
        for m in &msgs {
            dec.decode(T0, m, |r| back.handle_record(T0, SRC_NODE, &r).unwrap())
                .unwrap();
        }
        let mut strings = Interner::default();
        for m in &msgs {
            dec.decode(T0, m, |r| {
                assert_eq!(
                    AggregatedRecord::from_ipfix(&r, &mut strings).unwrap(),
                    recs[0]
                )
            })
            .unwrap();
        }
        assert_eq!(back.stats().records_in, 1);
        back.flush_all(T0);
        let again = drain(&mut back);
        assert_eq!(again[0].key, k);
        assert_eq!(&*again[0].dst_pod, "catalog-1");
        assert_eq!(again[0].totals, recs[0].totals);
    }
}

// ---- property test ----

#[derive(Clone, Debug)]
struct Report {
    flow: u16,
    from_source: bool,
    /// Step number: totals grow with it.
    step: u64,
    /// When it is delivered, in seconds after T0.
    at: u64,
    ended: bool,
}

fn arb_reports() -> impl Strategy<Value = Vec<Report>> {
    // Per flow: which sides report (inter-Node flows usually both), how many reports, and delays.
    // Delays below the 20 s step keep each Node's records in order, as one TCP session delivers
    // them; flows and Nodes still interleave freely, and duplicates arrive late.
    proptest::collection::vec(
        (
            0u8..4,
            1u64..6,
            proptest::collection::vec(0u64..20, 12),
            any::<bool>(),
        ),
        1..12,
    )
    .prop_map(|flows| {
        let mut out = Vec::new();
        for (i, (sides, n, delays, ends)) in flows.into_iter().enumerate() {
            for (side, from_source) in [(1u8, true), (2u8, false)] {
                if sides & side == 0 && sides != 0 {
                    continue;
                }
                for step in 1..=n {
                    let at = step * 20 + delays[(step as usize + side as usize) % delays.len()];
                    let r = Report {
                        flow: i as u16,
                        from_source,
                        step,
                        at,
                        ended: ends && step == n,
                    };
                    // Duplicates: every third report is delivered twice.
                    if step % 3 == 0 {
                        out.push(Report {
                            at: at + 3,
                            ..r.clone()
                        });
                    }
                    out.push(r);
                }
            }
        }
        out.sort_by_key(|r| r.at);
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn per_node_totals_are_exported_exactly_and_every_flow_is_exported(reports in arb_reports(), corr in 5u64..60) {
        let cfg = AggregatorConfig {
            active_timeout: Duration::from_secs(30),
            inactive_timeout: Duration::from_secs(200),
            correlation_timeout: Duration::from_secs(corr),
            ..Default::default()
        };
        let mut agg = Aggregator::new(cfg);
        let mut out = Vec::new();
        // Highest totals each (flow, side) reported, and when each side first arrived.
        let mut want: HashMap<(u16, bool), u64> = HashMap::new();
        let mut first: HashMap<(u16, bool), u64> = HashMap::new();
        for r in &reports {
            let now = T0 + Duration::from_secs(r.at);
            agg.handle_timeout(now);
            let t = r.step * 10;
            let mut h = half(&mut agg, key(r.flow, r.flow % 2 == 1), r.from_source, [t, t * 100, t / 2, t * 50], 1_764_000_000 + r.step as u32 * 20, if r.ended { END_OF_FLOW } else { END_ACTIVE });
            // The agent's delta since its previous record of this side (10 packets a step).
            h.deltas = [10, 1000, 5, 500];
            agg.handle_half(now, if r.from_source { SRC_NODE } else { DST_NODE }, h);
            let w = want.entry((r.flow, r.from_source)).or_default();
            *w = (*w).max(t);
            first.entry((r.flow, r.from_source)).or_insert(r.at);
            out.extend(drain(&mut agg));
        }
        let end = T0 + Duration::from_secs(reports.last().map_or(0, |r| r.at) + 1);
        agg.handle_timeout(end);
        agg.flush_all(end);
        out.extend(drain(&mut agg));
        prop_assert!(agg.is_empty());
        // Once the tombstones expire, every name and metadata entry is gone with its flows.
        agg.handle_timeout(end + Duration::from_secs(86_400));
        prop_assert_eq!(agg.stats().names, Aggregator::new(AggregatorConfig::default()).stats().names);
        prop_assert_eq!(agg.stats().metadata_entries, 0);

        let mut got: HashMap<(u16, bool), u64> = HashMap::new();
        let mut exported: HashMap<u16, bool> = HashMap::new();
        let mut correlated: HashMap<u16, bool> = HashMap::new();
        for r in &out {
            let flow = r.key.src_port - 40000;
            *exported.entry(flow).or_default() = true;
            *correlated.entry(flow).or_default() |= r.correlated;
            for (side, c) in [(true, r.from_source), (false, r.from_destination)] {
                if let Some(c) = c {
                    *got.entry((flow, side)).or_default() += c.deltas[0];
                    prop_assert_eq!(c.deltas[1], c.deltas[0] * 100);
                }
            }
        }
        for (&(flow, side), &t) in &want {
            prop_assert_eq!(got.get(&(flow, side)).copied().unwrap_or(0), t, "flow {} side {}", flow, side);
            prop_assert!(exported.get(&flow).copied().unwrap_or(false));
        }
        // Both halves arrived within the correlation timeout of the first: correlated.
        for flow in exported.keys() {
            if let (Some(a), Some(b)) = (first.get(&(*flow, true)), first.get(&(*flow, false)))
                && a.max(b) - a.min(b) < corr
            {
                prop_assert!(correlated[flow], "flow {} halves {} and {} apart", flow, a, b);
            }
        }
    }
}

#[test]
fn flowlens_agents_filling_both_ends_are_told_apart_by_observation_domain() {
    use crate::ipfix::node_observation_domain;
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let k = key(20, false);
    let node_a = ExporterId {
        addr: SRC_NODE.addr,
        domain: node_observation_domain("node-a"),
    };
    let node_b = ExporterId {
        addr: DST_NODE.addr,
        domain: node_observation_domain("node-b"),
    };
    for ex in [node_b, node_a] {
        let mut h = half(
            &mut agg,
            k,
            true,
            [5, 500, 5, 500],
            1_764_000_005,
            END_ACTIVE,
        );
        // Both agents know both Pods (cluster-wide metadata).
        let s = agg.strings();
        h.meta.dst_pod = s.intern("catalog-1");
        h.meta.dst_node = s.intern("node-b");
        assert!(
            h.is_from_source_node(),
            "Antrea's rule alone would call both halves the source"
        );
        agg.handle_half(T0, ex, h);
    }
    let recs = drain(&mut agg);
    assert_eq!(recs.len(), 1);
    assert!(recs[0].correlated);
    assert_eq!(agg.stats().correlated, 1);
}

#[test]
fn visit_names_every_element_from_the_registry() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let h = half(
        &mut agg,
        key(30, false),
        true,
        [1, 2, 3, 4],
        1_764_000_001,
        END_OF_FLOW,
    );
    agg.handle_half(T0, SRC_NODE, h);
    agg.flush_all(T0);
    let r = drain(&mut agg).pop().unwrap();
    let mut names = Vec::new();
    r.visit(|n, _| names.push(n));
    for n in &names {
        assert!(
            crate::ie::by_name(n).is_some(),
            "{n} is not in the registry"
        );
    }
    // Every aggregated-layout element of the flow's family appears.
    for n in Layout::AggregatedV4.names() {
        assert!(
            names.contains(&n) || n == "originalExporterIPv6Address",
            "{n} missing from visit"
        );
    }
}

#[test]
fn an_uncorrelated_flow_is_filled_from_the_aggregators_metadata() {
    use crate::metadata::{MetadataUpdate, PodInfo, PodPhase};
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let k = key(40, false);
    agg.handle_metadata(
        T0,
        MetadataUpdate::Pod(PodInfo {
            uid: "u-1".into(),
            namespace: "shop".into(),
            name: "frontend-1".into(),
            node: "node-a".into(),
            ips: vec![k.src],
            labels: Default::default(),
            ports: vec![],
            host_network: false,
            phase: PodPhase::Running,
            created: Timestamp::from_secs(1_700_000_000),
            deleted: None,
        }),
    );
    // Only the destination Node reports; the source Node's record never comes.
    let h = half(
        &mut agg,
        k,
        false,
        [5, 500, 5, 500],
        1_764_000_005,
        END_ACTIVE,
    );
    agg.handle_half(T0, DST_NODE, h);
    agg.handle_timeout(T0 + Duration::from_secs(10));
    let r = drain(&mut agg).pop().unwrap();
    assert!(!r.correlated);
    assert_eq!(&*r.src_pod, "frontend-1");
    assert_eq!(&*r.src_node, "node-a");
    assert_eq!(&*r.dst_pod, "catalog-1");
    assert_eq!(agg.stats().filled_from_metadata, 1);
}

#[test]
fn in_flight_lists_live_flows_without_exporting_them() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let h = half(
        &mut agg,
        key(50, false),
        false,
        [5, 500, 5, 500],
        1_764_000_005,
        END_ACTIVE,
    );
    agg.handle_half(T0, DST_NODE, h);
    let live: Vec<_> = agg.in_flight(T0).collect();
    assert_eq!(live.len(), 1);
    assert_eq!(&*live[0].dst_pod, "catalog-1");
    assert!(drain(&mut agg).is_empty());
    assert_eq!(agg.stats().records_out, 0);
}

// ---- regressions found by the simulator (sim/tests/core_bugs.rs) ----

/// A half as its agent exports it: `deltas` since its previous record, `start` its connection's
/// start second on that Node.
#[allow(clippy::too_many_arguments)]
fn half_at(
    agg: &mut Aggregator,
    k: CorrelationKey,
    from_source: bool,
    start: u32,
    totals: [u64; 4],
    deltas: [u64; 4],
    end: u32,
    reason: u8,
) -> FlowHalf {
    let mut h = half(agg, k, from_source, totals, end, reason);
    h.start_secs = start;
    h.deltas = deltas;
    h
}

/// Sum of per-Node deltas of side `source` over `recs`.
fn delta_sum(recs: &[AggregatedRecord], source: bool) -> [u64; 4] {
    let mut sum = [0; 4];
    for r in recs {
        if let Some(c) = if source {
            r.from_source
        } else {
            r.from_destination
        } {
            for (s, d) in sum.iter_mut().zip(c.deltas) {
                *s += d;
            }
        }
    }
    sum
}

/// Default seed 0: a correlated flow goes quiet, is finished (inactive timeout), and both Nodes'
/// end-of-flow halves come after. The destination's must not lose the Service the source Node
/// reported, and nothing is counted twice.
#[test]
fn late_halves_of_a_finished_flow_keep_its_fields() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let k = key(60, false);
    let s0 = 1_764_000_000;
    let sec = Duration::from_secs;
    let full = [10, 1000, 10, 1000];
    let h = half_at(&mut agg, k, true, s0, full, full, s0 + 5, END_ACTIVE);
    agg.handle_half(T0 + sec(5), SRC_NODE, h);
    let h = half_at(&mut agg, k, false, s0, full, full, s0 + 6, END_ACTIVE);
    agg.handle_half(T0 + sec(6), DST_NODE, h);
    agg.handle_timeout(T0 + sec(200));
    assert!(agg.is_empty(), "finished after the inactive timeout");
    let end = [12, 1100, 12, 1100];
    let (late_t, d) = (T0 + sec(210), [2, 100, 2, 100]);
    let h = half_at(&mut agg, k, true, s0, end, d, s0 + 209, END_OF_FLOW);
    agg.handle_half(late_t, SRC_NODE, h);
    let h = half_at(&mut agg, k, false, s0, end, d, s0 + 210, END_OF_FLOW);
    agg.handle_half(late_t + sec(1), DST_NODE, h);
    let recs = drain(&mut agg);
    assert!(recs.len() >= 2);
    for r in &recs {
        assert_eq!(&*r.service_port_name, "shop/catalog:http", "{r:?}");
        assert!(r.cluster_ip.is_some());
        assert_eq!(&*r.dst_pod, "catalog-1");
    }
    assert_eq!(delta_sum(&recs, true), end);
    assert_eq!(delta_sum(&recs, false), end);
    assert_eq!(recs.last().unwrap().end_reason, END_OF_FLOW);
}

/// Partition seed 7: the old connection on a 5-tuple was exported uncorrelated (its destination
/// Node partitioned); a new connection on the same 5-tuple is in flight from the source Node when
/// the old connection's destination half finally arrives. It must not be joined to the new one.
#[test]
fn an_older_connections_late_half_is_not_joined_to_a_reused_tuple() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let k = key(61, false);
    let (s_old, s_new) = (1_764_000_240, 1_764_000_255);
    let sec = Duration::from_secs;
    let old = [79, 4900, 20, 1600];
    let new = [130, 10000, 21, 2900];
    let h = half_at(&mut agg, k, true, s_old, old, old, s_old + 4, END_OF_FLOW);
    agg.handle_half(T0 + sec(245), SRC_NODE, h);
    agg.handle_timeout(T0 + sec(256));
    let first = drain(&mut agg);
    assert_eq!(first.len(), 1, "exported uncorrelated after the timeout");
    let h = half_at(&mut agg, k, true, s_new, new, new, s_new + 4, END_OF_FLOW);
    agg.handle_half(T0 + sec(260), SRC_NODE, h);
    // The old connection's destination half, late.
    let h = half_at(&mut agg, k, false, s_old, old, old, s_old + 4, END_OF_FLOW);
    agg.handle_half(T0 + sec(264), DST_NODE, h);
    let h = half_at(&mut agg, k, false, s_new, new, new, s_new + 4, END_OF_FLOW);
    agg.handle_half(T0 + sec(264), DST_NODE, h);
    agg.handle_timeout(T0 + sec(300));
    let recs: Vec<_> = first.into_iter().chain(drain(&mut agg)).collect();
    for r in &recs {
        if let (Some(s), Some(d)) = (r.from_source, r.from_destination) {
            assert_eq!(s.totals, d.totals, "one connection per record: {r:?}");
        }
    }
    let sum = |a: [u64; 4], b: [u64; 4]| [0, 1, 2, 3].map(|i| a[i] + b[i]);
    assert_eq!(delta_sum(&recs, true), sum(old, new));
    assert_eq!(delta_sum(&recs, false), sum(old, new));
    assert!(
        recs.iter().any(|r| r.correlated && r.start_secs == s_new),
        "the new connection's halves still meet"
    );
}

/// Partition seed 9698 / lost-events seed 2658: a new connection on the 5-tuple finishes the old
/// flow (reuse) before the old connection's end-of-flow half from the same Node arrives. That
/// half carries an older start second than the side in flight: it belongs to the finished flow
/// (delta 0 here), not to the new connection, whose counters it would otherwise recount.
#[test]
fn an_older_start_from_the_same_node_is_not_the_connection_in_flight() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let k = key(62, false);
    let (s_old, s_new) = (1_764_000_033, 1_764_000_107);
    let sec = Duration::from_secs;
    let old = [19, 24282, 82, 8692];
    for (src, t) in [(true, 50), (false, 52)] {
        let h = half_at(&mut agg, k, src, s_old, old, old, s_old + 3, END_IDLE);
        agg.handle_half(T0 + sec(t), if src { SRC_NODE } else { DST_NODE }, h);
    }
    let h = half_at(
        &mut agg,
        k,
        true,
        s_old,
        old,
        [0; 4],
        s_old + 74,
        END_OF_FLOW,
    );
    agg.handle_half(T0 + sec(107), SRC_NODE, h);
    // The destination Node's next connection on the 5-tuple arrives before its old end of flow.
    let new = [1, 1054, 0, 0];
    let h = half_at(&mut agg, k, false, s_new, new, new, s_new, END_IDLE);
    agg.handle_half(T0 + sec(127), DST_NODE, h);
    let h = half_at(
        &mut agg,
        k,
        false,
        s_old,
        old,
        [0; 4],
        s_old + 74,
        END_OF_FLOW,
    );
    agg.handle_half(T0 + sec(128), DST_NODE, h);
    agg.handle_timeout(T0 + sec(400));
    let recs = drain(&mut agg);
    assert_eq!(delta_sum(&recs, true), old);
    assert_eq!(
        delta_sum(&recs, false),
        [0, 1, 2, 3].map(|i| old[i] + new[i])
    );
    assert_eq!(agg.stats().reused, 1);
}

/// A 5-tuple reused by a run of connections, each Node's records delivered in order but each
/// Node delayed independently (partitions): per-Node deltas add up to every connection's final
/// totals, and no record joins two connections.
#[derive(Clone, Debug)]
struct ReuseCase {
    /// Per connection: reports per Node (1..=4), the destination Node's start offset (clock).
    conns: Vec<(u64, u32)>,
    /// Per Node, per record: extra delivery delay in seconds (kept in order per Node).
    delays: [Vec<u64>; 2],
}

fn arb_reuse() -> impl Strategy<Value = ReuseCase> {
    (
        proptest::collection::vec((1u64..5, 0u32..3), 1..6),
        proptest::collection::vec(0u64..150, 24),
        proptest::collection::vec(0u64..150, 24),
    )
        .prop_map(|(conns, a, b)| ReuseCase {
            conns,
            delays: [a, b],
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn reused_tuples_late_halves_are_counted_once_and_never_mixed(case in arb_reuse()) {
        let k = key(70, false);
        let mut agg = Aggregator::new(AggregatorConfig::default());
        // (delivery second, source?, half) per Node in order.
        let mut deliveries: Vec<(u64, bool, FlowHalf)> = Vec::new();
        let mut want = [[0u64; 4]; 2];
        for (node, from_source) in [(0usize, true), (1, false)] {
            let mut at = 0u64;
            let mut idx = 0usize;
            for (c, &(n, skew)) in case.conns.iter().enumerate() {
                let t0 = c as u64 * 100;
                let start = 1_764_000_000 + t0 as u32 + if from_source { 0 } else { skew };
                let mut prev = [0u64; 4];
                for step in 1..=n {
                    // Connection `c`'s packets are c·1000 + 10·step: a record names its connection.
                    let p = c as u64 * 1000 + 10 * step;
                    let totals = [p, p * 100, p, p * 50];
                    let deltas = [0, 1, 2, 3].map(|i| totals[i] - prev[i]);
                    prev = totals;
                    let t = t0 + 20 * step;
                    at = at.max(t + case.delays[node][idx % 24]);
                    idx += 1;
                    let reason = if step == n { END_OF_FLOW } else { END_ACTIVE };
                    let h = half_at(&mut agg, k, from_source, start, totals, deltas, start + 20 * step as u32, reason);
                    deliveries.push((at, from_source, h));
                }
                for i in 0..4 {
                    want[node][i] += prev[i];
                }
            }
        }
        deliveries.sort_by_key(|d| d.0);
        let mut out = Vec::new();
        for (at, from_source, h) in deliveries {
            let now = T0 + Duration::from_secs(at);
            agg.handle_timeout(now);
            agg.handle_half(now, if from_source { SRC_NODE } else { DST_NODE }, h);
            out.extend(drain(&mut agg));
        }
        agg.flush_all(T0 + Duration::from_secs(100_000));
        out.extend(drain(&mut agg));
        prop_assert_eq!(delta_sum(&out, true), want[0]);
        prop_assert_eq!(delta_sum(&out, false), want[1]);
        for r in &out {
            if let (Some(s), Some(d)) = (r.from_source, r.from_destination) {
                prop_assert_eq!(s.totals[0] / 1000, d.totals[0] / 1000, "mixed: {:?}", r);
            }
        }
    }
}

/// An intra-Node flow needs no partner: its first record goes out at once, not an active timeout
/// later (a flow's "last export" must start out as never).
#[test]
fn an_intra_node_flow_is_exported_on_its_first_record() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let mut h = half(
        &mut agg,
        key(80, false),
        true,
        [3, 300, 3, 300],
        1_764_000_003,
        END_ACTIVE,
    );
    h.meta.flow_type = FLOW_TYPE_INTRA_NODE;
    agg.handle_half(T0, SRC_NODE, h);
    let recs = drain(&mut agg);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].from_source.unwrap().deltas, [3, 300, 3, 300]);
}

/// Restart seed 1 (sim finding 2): a flow finished at its end of flow; 110 s later the source
/// Node's restarted agent lists the TIME_WAIT entry again and exports it from zero (deltas =
/// totals). The tombstone outlives conntrack's TIME_WAIT, so nothing is counted twice.
#[test]
fn a_restarted_agents_re_export_of_a_time_wait_entry_is_not_counted_again() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let k = key(81, false);
    let s0 = 1_764_000_000;
    let full = [8, 800, 4, 400];
    for (src, ex) in [(true, SRC_NODE), (false, DST_NODE)] {
        let h = half_at(&mut agg, k, src, s0, full, full, s0 + 4, END_OF_FLOW);
        agg.handle_half(T0 + Duration::from_secs(5), ex, h);
    }
    let first = drain(&mut agg);
    assert_eq!(first.len(), 1);
    assert!(agg.is_empty());
    let h = half_at(&mut agg, k, true, s0, full, full, s0 + 115, END_OF_FLOW);
    agg.handle_half(T0 + Duration::from_secs(115), SRC_NODE, h);
    let recs: Vec<_> = first.into_iter().chain(drain(&mut agg)).collect();
    assert_eq!(delta_sum(&recs, true), full);
    assert_eq!(delta_sum(&recs, false), full);
}

// ---- bounds and fair shares (one exporter's flood costs the others nothing) ----

const FLOODER: ExporterId = ExporterId {
    addr: IpAddr::V4(Ipv4Addr::new(192, 168, 0, 66)),
    domain: 66,
};

/// An intra-Node half (no partner awaited) on 5-tuple `i` with source Pod `pod`.
fn lone_half(agg: &mut Aggregator, i: u32, pod: &str) -> FlowHalf {
    let k = CorrelationKey {
        src: Ipv4Addr::from(0x0a00_0000 + i).into(),
        dst: Ipv4Addr::new(10, 1, 0, 1).into(),
        src_port: 40000,
        dst_port: 80,
        proto: 6,
    };
    let mut h = half(agg, k, true, [1, 100, 1, 100], 1_764_000_001, END_ACTIVE);
    h.meta.flow_type = FLOW_TYPE_INTRA_NODE;
    h.meta.src_pod = agg.strings().intern(pod);
    h
}

fn counters_of(agg: &Aggregator, e: ExporterId) -> ExporterCounters {
    agg.exporters()
        .find(|(id, _)| *id == e)
        .map(|(_, c)| *c)
        .unwrap_or_default()
}

#[test]
fn a_flooding_exporter_evicts_its_own_flows_and_not_the_others() {
    let mut agg = Aggregator::new(AggregatorConfig {
        max_flows: 100,
        ..Default::default()
    });
    for i in 0..10 {
        let h = lone_half(&mut agg, i, "frontend-1");
        agg.handle_half(T0, SRC_NODE, h);
    }
    for i in 1000..2000 {
        let h = lone_half(&mut agg, i, "flood");
        agg.handle_half(T0 + Duration::from_secs(1), FLOODER, h);
    }
    assert_eq!(agg.len(), 100);
    assert_eq!(agg.stats().evicted, 910);
    assert_eq!(counters_of(&agg, FLOODER).flows_evicted, 910);
    assert_eq!(counters_of(&agg, SRC_NODE).flows_evicted, 0);
    assert_eq!(counters_of(&agg, SRC_NODE).flows, 10);
    let live: Vec<_> = agg
        .in_flight(T0)
        .filter(|r| &*r.src_pod == "frontend-1")
        .collect();
    assert_eq!(
        live.len(),
        10,
        "the well-behaved exporter's flows are all still in flight"
    );
}

#[test]
fn names_and_metadata_go_with_their_last_flow_and_memory_is_given_back() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let baseline = agg.stats().clone();
    for i in 0..20_000 {
        let h = lone_half(&mut agg, i, &format!("pod-{i:06}"));
        agg.handle_half(T0, SRC_NODE, h);
    }
    drain(&mut agg);
    assert!(agg.stats().names > 20_000, "{}", agg.stats().names);
    agg.flush_all(T0 + Duration::from_secs(1));
    drain(&mut agg);
    // The tombstones keep the names until they expire.
    assert!(agg.stats().names > 20_000);
    // Driven only by its timers, as the daemon does once no record comes: the expiry of the
    // tombstones, then the tidy that gives their memory back, then nothing more to wake for.
    // A tidy just before the expiry: the next one is not due when the tombstones go.
    let expiry = agg.poll_timeout().expect("tombstone expiry is a timer");
    agg.handle_timeout(Timestamp::from_millis(expiry.as_millis() - 1000));
    let mut wakes = 0;
    while let Some(t) = agg.poll_timeout() {
        agg.handle_timeout(t);
        wakes += 1;
        assert!(wakes < 100, "a timer that never settles");
    }
    let s = agg.stats();
    assert_eq!(
        (s.names, s.name_bytes),
        (baseline.names, baseline.name_bytes)
    );
    assert_eq!(s.metadata_entries, 0);
    assert!(
        agg.flows.capacity() < 20_000,
        "flow slots compacted: {}",
        agg.flows.capacity()
    );
    assert!(agg.tombstones.slots() < 20_000);
}

/// One record as an agent sends it over the wire: an intra-Node flow on 5-tuple `i` with source
/// Pod `pod`, through the decoder into `handle_record`.
fn send(agg: &mut Aggregator, now: Timestamp, ex: ExporterId, i: u32, pod: &str) {
    use crate::ipfix::FieldSpec;
    let fields: Vec<FieldSpec> = [
        "sourceIPv4Address",
        "destinationIPv4Address",
        "sourceTransportPort",
        "destinationTransportPort",
        "protocolIdentifier",
        "flowStartSeconds",
        "packetTotalCount",
        "packetDeltaCount",
        "flowType",
        "sourcePodName",
    ]
    .iter()
    .map(|n| FieldSpec::named(n).unwrap())
    .collect();
    let mut enc = Encoder::new(EncoderConfig::stream(ex.domain)).unwrap();
    enc.add_template(300, &fields).unwrap();
    enc.record(now, 300)
        .unwrap()
        .ip(Ipv4Addr::from(0x0a00_0000 + i).into())
        .ip(Ipv4Addr::new(10, 1, 0, 1).into())
        .uint(40000)
        .uint(80)
        .uint(6)
        .time(Timestamp::from_secs(1_764_000_000))
        .uint(1)
        .uint(1)
        .uint(FLOW_TYPE_INTRA_NODE as u64)
        .string(pod)
        .finish()
        .unwrap();
    enc.flush(now);
    let mut dec = Decoder::new(DecoderConfig::default());
    while let Some(msg) = enc.poll_transmit() {
        dec.decode(now, &msg, |rec| agg.handle_record(now, ex, &rec).unwrap())
            .unwrap();
    }
}

#[test]
fn a_name_flood_is_refused_and_evicted_for_the_flooder_only() {
    let max = 256 << 10;
    let mut agg = Aggregator::new(AggregatorConfig {
        max_name_bytes: max,
        ..Default::default()
    });
    for round in 0..20u32 {
        let now = T0 + Duration::from_secs(round as u64);
        // The flooder: unique 250-byte Pod names.
        for j in 0..200u32 {
            let name = format!("{:0>250}", round * 1000 + j);
            send(&mut agg, now, FLOODER, 100_000 + round * 1000 + j, &name);
            assert!(
                agg.stats().name_bytes <= 2 * max as u64,
                "{:?}",
                agg.stats()
            );
        }
        // The well-behaved exporter: its own few Pods, every round.
        for k in 0..50 {
            send(&mut agg, now, SRC_NODE, k, &format!("frontend-{k}"));
        }
    }
    let recs = drain(&mut agg);
    let (good, bad) = (counters_of(&agg, SRC_NODE), counters_of(&agg, FLOODER));
    assert_eq!((good.names_refused, good.flows_evicted), (0, 0), "{good:?}");
    assert!(agg.stats().evicted_for_names > 0, "{:?}", agg.stats());
    assert!(bad.names_refused + bad.flows_evicted > 0, "{bad:?}");
    let first: Vec<_> = recs
        .iter()
        .filter(|r| r.src_pod.starts_with("frontend-"))
        .collect();
    assert_eq!(
        first.len(),
        50,
        "every well-behaved flow exported once, with its Pod name"
    );
    let live: Vec<_> = agg
        .in_flight(T0)
        .filter(|r| r.src_pod.starts_with("frontend-"))
        .collect();
    assert_eq!(live.len(), 50, "and all still in flight with their names");
}

#[test]
fn over_long_names_and_unknown_tcp_states_are_refused_and_counted() {
    use crate::ipfix::FieldSpec;
    let fields: Vec<FieldSpec> = [
        "sourceIPv4Address",
        "destinationIPv4Address",
        "sourceTransportPort",
        "destinationTransportPort",
        "protocolIdentifier",
        "sourcePodName",
        "sourcePodNamespace",
        "tcpState",
        "sourcePodLabels",
    ]
    .iter()
    .map(|n| FieldSpec::named(n).unwrap())
    .collect();
    let mut enc = Encoder::new(EncoderConfig::stream(1)).unwrap();
    enc.add_template(300, &fields).unwrap();
    let long_ns = "n".repeat(MAX_LABEL + 1);
    let labels = format!("{{\"a\":\"{}\"}}", "x".repeat(DEFAULT_MAX_LABEL_BYTES));
    enc.record(T0, 300)
        .unwrap()
        .ip(Ipv4Addr::new(10, 0, 1, 1).into())
        .ip(Ipv4Addr::new(10, 0, 2, 1).into())
        .uint(40000)
        .uint(80)
        .uint(6)
        .string(&"p".repeat(MAX_SUBDOMAIN))
        .string(&long_ns)
        .string("LISTENING")
        .string(&labels)
        .finish()
        .unwrap();
    enc.flush(T0);
    let mut agg = Aggregator::new(AggregatorConfig::default());
    let before = agg.stats().name_bytes;
    let mut dec = Decoder::new(DecoderConfig::default());
    while let Some(msg) = enc.poll_transmit() {
        dec.decode(T0, &msg, |rec| {
            agg.handle_record(T0, SRC_NODE, &rec).unwrap()
        })
        .unwrap();
    }
    let s = agg.stats().clone();
    assert_eq!(s.names_too_long, 2, "namespace and labels");
    assert_eq!(s.tcp_states_invalid, 1);
    assert_eq!(counters_of(&agg, SRC_NODE).names_refused, 3);
    assert_eq!(
        s.name_bytes - before,
        (MAX_SUBDOMAIN + intern::NAME_OVERHEAD) as u64
    );
    let rec = agg.in_flight(T0).next().unwrap();
    assert_eq!(
        rec.src_pod.len(),
        MAX_SUBDOMAIN,
        "a name at the limit is kept"
    );
    assert_eq!(
        (&*rec.src_namespace, &*rec.tcp_state, &*rec.src_labels),
        ("", "", "")
    );
}

/// Shutdown streams the table out in batches: every flow in flight with something unexported
/// gets one last record with reason 4; one with nothing new since its last export gets none (a
/// restart ends no connection); no tombstone is kept (the process is going).
#[test]
fn a_shutdown_flush_in_batches_ends_every_flow_once() {
    let mut agg = Aggregator::new(AggregatorConfig::default());
    for i in 0..10_000 {
        let h = lone_half(&mut agg, i, "frontend-1");
        agg.handle_half(T0, SRC_NODE, h);
    }
    // Intra-Node flows went out on their first record: nothing is new now.
    assert_eq!(drain(&mut agg).len(), 10_000);
    // Half of them move on.
    for i in (0..10_000).step_by(2) {
        let mut h = lone_half(&mut agg, i, "frontend-1");
        (h.totals, h.deltas) = (Some([2, 200, 2, 200]), [1, 100, 1, 100]);
        h.end_secs += 1;
        agg.handle_half(T0, SRC_NODE, h);
    }
    let mut ended = std::collections::HashSet::new();
    let mut batches = 0;
    loop {
        let more = agg.flush_some(T0 + Duration::from_secs(1), 1000);
        batches += 1;
        for r in drain(&mut agg) {
            assert_eq!(r.end_reason, END_FORCED);
            assert_eq!(
                r.deltas,
                [1, 100, 1, 100],
                "what was new since the last export"
            );
            assert!(ended.insert(r.key), "one last record per flow");
        }
        if !more {
            break;
        }
    }
    assert_eq!((ended.len(), batches), (5_000, 10));
    assert!(agg.is_empty());
    assert_eq!(agg.tombstones.len(), 0);
}
