//! The agent's [`FlowRecord`] on the wire, in the [`Layout::AgentV4`] / [`Layout::AgentV6`] field
//! order. Templates are fixed, so an IE the record lacks goes out as its zero value (empty string,
//! 0, the unspecified address) — which is also how Antrea's agents send absent fields.
//!
//! `clusterId` is not part of the agent layout: the aggregator stamps its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{FlowRecord, Interner, PolicyFields, Sym, Timestamp};

use super::{EncodeError, Encoder, Layout};

/// The layout a record is sent in (by the flow's address family).
pub fn agent_layout(rec: &FlowRecord) -> Layout {
    if rec.key.src.is_ipv4() {
        Layout::AgentV4
    } else {
        Layout::AgentV6
    }
}

/// Writes `rec` into `enc`, whose templates must include [`agent_layout`]'s.
pub fn write_flow_record(
    enc: &mut Encoder,
    now: Timestamp,
    rec: &FlowRecord,
    names: &Interner,
) -> Result<(), EncodeError> {
    let layout = agent_layout(rec);
    let v4 = layout == Layout::AgentV4;
    let s = |sym: Option<Sym>| sym.map_or("", |x| names.resolve(x));
    let k = &rec.key;
    let cluster_ip = match (rec.destination_cluster_ip, v4) {
        (Some(a @ IpAddr::V4(_)), true) | (Some(a @ IpAddr::V6(_)), false) => a,
        (_, true) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (_, false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let mut w = enc.record(now, layout.template_id())?;
    w.time(rec.flow_start)
        .time(rec.flow_end)
        .uint(rec.flow_end_reason as u64)
        .uint(k.src_port as u64)
        .uint(k.dst_port as u64)
        .uint(k.proto as u64)
        .uint(rec.totals.packets)
        .uint(rec.totals.octets)
        .uint(rec.deltas.packets)
        .uint(rec.deltas.octets)
        .ip(k.src)
        .ip(k.dst)
        .uint(rec.totals.reverse_packets)
        .uint(rec.totals.reverse_octets)
        .uint(rec.deltas.reverse_packets)
        .uint(rec.deltas.reverse_octets)
        .string(s(rec.source_pod_name))
        .string(s(rec.source_pod_namespace))
        .string(s(rec.source_node_name))
        .string(s(rec.destination_pod_name))
        .string(s(rec.destination_pod_namespace))
        .string(s(rec.destination_node_name))
        .ip(cluster_ip)
        .uint(rec.destination_service_port.unwrap_or(0) as u64)
        .string(s(rec.destination_service_port_name));
    for p in [&rec.ingress_policy, &rec.egress_policy] {
        policy(&mut w, p, &s);
    }
    w.string(rec.tcp_state.map_or("", |t| t.name()))
        .uint(rec.flow_type as u64)
        .string(s(rec.source_pod_labels))
        .string(s(rec.destination_pod_labels));
    w.finish()
}

fn policy<'n>(
    w: &mut super::RecordWriter<'_>,
    p: &PolicyFields,
    s: &impl Fn(Option<Sym>) -> &'n str,
) {
    w.string(s(p.name))
        .string(s(p.namespace))
        .uint(p.policy_type.map_or(0, |t| t as u64))
        .string(s(p.rule_name))
        .uint(p.action.map_or(0, |a| a as u64));
}
