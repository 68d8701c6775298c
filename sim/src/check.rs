//! The invariants, and the per-(connection, Node) accounting they read.
//!
//! Stage by stage, for every connection and every Node whose conntrack table shows it:
//! 1. *observation*: the exporter was told the connection's final counters (by a dump or a
//!    destroy event), unless the event was lost or the agent was down — both counted;
//! 2. *exporter*: every record's deltas are its totals minus the last acknowledged totals
//!    (never negative), its totals never exceed the truth, its flowType is the truth; the last
//!    acknowledged record is final (reason 3/4/5) and carries the last observed totals, unless the
//!    store evicted it (reason 5, counted) or the agent restarted before exporting (counted);
//! 3. *transport*: records reach the aggregator unless a UDP datagram was lost or had no template
//!    (both counted, and the counts add up to what exporters sent);
//! 4. *aggregator*: per-Node totals never go down and deltas are totals minus the previous
//!    export; the last per-Node totals equal what the exporter sent last, unless a crash lost
//!    them; the per-Node deltas add up to the totals (no double count); flowType, Pods, Nodes,
//!    Service and policy fields equal the ground truth; every inter-Node flow is correlated
//!    unless a fault touched it.
//!
//! Known core issues (double counts after an aggregator restart or an agent re-export) are
//! counted separately and fail the run only with `strict`.

use flowcore::aggregator::AggregatedRecord;
use flowcore::exporter::Export;
use flowcore::model::{BiCounters, FlowEndReason, FlowType};

use crate::cluster::{SEC, Verdict};
use crate::run::Sim;
use crate::scenario::Transport;

/// The first invariant a run broke.
#[derive(Clone, Debug)]
pub struct Violation {
    pub step: u64,
    /// Virtual time since the run started, nanoseconds.
    pub time: u64,
    pub conn: Option<u32>,
    pub what: String,
    /// History of `conn` (from a traced re-run).
    pub trace: Vec<String>,
    /// `(Node name, flowlens-trace v1 text)`: what the source-side Node's conntrack showed of
    /// `conn` alone, for `flowlens replay FILE --node NAME`.
    pub replay: Option<(String, String)>,
}

/// What is known of one connection at one Node, stage by stage.
#[derive(Clone, Debug, Default)]
pub struct Track {
    /// Last counters shown to the exporter, and by which exporter incarnation.
    pub obs: Option<(u32, BiCounters)>,
    /// Totals of the last acknowledged record (the exporter's delta baseline).
    pub acked: BiCounters,
    pub final_acked: Option<(FlowEndReason, BiCounters)>,
    /// Exporter incarnations that exported it (bit per incarnation, saturating at 31).
    pub exporters: u32,
    pub evicted: bool,
    pub lost_net: bool,
    pub lost_restart: bool,
    pub missed_event: bool,
    pub meta_degraded: bool,
    pub delivered: Option<BiCounters>,
    pub crash_lost: bool,
    pub crash_touched: bool,
    /// Aggregator incarnation and per-Node totals of the last aggregated record.
    pub out: Option<(u32, [u64; 4])>,
    pub delta_sum: [u64; 4],
    /// Why the aggregator recounted totals it had already exported (a known issue), if it did.
    pub recount: Option<usize>,
    /// The aggregator's deltas fell short of the increment because of a counted fault.
    pub undercount: bool,
    /// When the aggregator last put out this Node's counters.
    pub out_at: u64,
    pub agg_evicted: bool,
    pub correlated: bool,
    /// (View 0 only) an aggregated record joined this connection with another on its 5-tuple.
    pub mixed: bool,
    /// (View 0 only) when the aggregator last received a record of the connection.
    pub conn_in_at: u64,
    /// (View 0 only) the longest gap between two records of the connection reaching the
    /// aggregator: past its inactive timeout it forgets the flow.
    pub forgotten_gap: u64,
}

fn arr(c: BiCounters) -> [u64; 4] {
    [c.packets, c.octets, c.reverse_packets, c.reverse_octets]
}

impl Track {
    pub fn observe(&mut self, inc: u32, c: BiCounters) {
        self.obs = Some((inc, c));
    }

    pub fn on_agent_down(&mut self, inc: u32) {
        if let Some((i, c)) = self.obs
            && i == inc
            && self.final_acked.is_none_or(|(_, f)| f != c)
        {
            self.lost_restart = true;
        }
        // The next exporter starts from nothing: its first delta is its first total.
        self.acked = BiCounters::default();
    }

    pub fn on_aggregator_crash(&mut self) {
        let Some(d) = self.delivered else { return };
        self.crash_touched = true;
        if self.out.is_none_or(|(_, o)| o != arr(d)) {
            self.crash_lost = true;
        }
    }
}

fn name_of(v: Verdict, sim: &Sim, egress: bool) -> (String, String, u8, String, u8) {
    match v {
        None => (String::new(), String::new(), 0, String::new(), 0),
        Some(None) => (String::new(), String::new(), 0, String::new(), 2),
        Some(Some((p, r))) => {
            let pol = &sim.cl.policies[p];
            (
                pol.name.clone(),
                sim.cl.namespaces[pol.ns].clone(),
                1,
                format!("{}-{r}", if egress { "egress" } else { "ingress" }),
                1,
            )
        }
    }
}

impl Sim {
    pub(crate) fn check_exporter_record(&mut self, n: usize, (c, vi): (u32, u8), ex: &Export) {
        let r = &ex.record;
        let t = &self.tracks[c as usize][vi as usize];
        let conn = &self.conns[c as usize];
        self.summary.invariants_checked += 4;
        let want = r.totals.checked_sub(t.acked);
        let truth = conn.counters(self.now);
        let err = if want != Some(r.deltas) {
            Some(format!(
                "exporter delta {:?} is not totals {:?} minus last acknowledged {:?}",
                r.deltas, r.totals, t.acked
            ))
        } else if truth.checked_sub(r.totals).is_none() {
            Some(format!(
                "exporter totals {:?} exceed the truth {truth:?}",
                r.totals
            ))
        } else if r.flow_type != conn.flow_type && !t.meta_degraded {
            Some(format!(
                "exporter flowType {:?}, truth {:?}",
                r.flow_type, conn.flow_type
            ))
        } else if r.flow_end_reason == FlowEndReason::EndOfFlow
            && !conn.destroyed
            && self.now < conn.tl.t_close
        {
            Some("end-of-flow record for a connection still open".to_string())
        } else {
            None
        };
        let inc = self.node_incarnation(n);
        self.tracks[c as usize][vi as usize].exporters |= 1 << inc.min(31);
        let id = ex.id;
        let reason = r.flow_end_reason;
        let (tot, del) = (r.totals, r.deltas);
        if self.traced(c) {
            let line = {
                format!(
                    "node {n} exporter record {id:?} reason {reason:?} totals {tot:?} deltas {del:?}"
                )
            };
            self.push_trace(line);
        }
        if let Some(e) = err {
            self.fail(Some(c), format!("node {} ({}): {e}", n, self.node_name(n)));
        }
    }

    pub(crate) fn on_ack(&mut self, n: usize, (c, vi): (u32, u8), ex: &Export) {
        let inc = self.node_incarnation(n);
        let t = &mut self.tracks[c as usize][vi as usize];
        t.acked = ex.record.totals;
        t.exporters |= 1 << inc.min(31);
        if ex.record.flow_end_reason.is_final() {
            t.final_acked = Some((ex.record.flow_end_reason, ex.record.totals));
        }
        if ex.record.flow_end_reason == FlowEndReason::LackOfResources {
            t.evicted = true;
        }
        self.acked_total += 1;
    }

    pub(crate) fn on_delivered(&mut self, c: u32, vi: u8, totals: BiCounters) {
        self.tracks[c as usize][vi as usize].delivered = Some(totals);
        let now = self.now;
        let t0 = &mut self.tracks[c as usize][0];
        if t0.conn_in_at > 0 {
            t0.forgotten_gap = t0.forgotten_gap.max(now - t0.conn_in_at);
        }
        t0.conn_in_at = now;
        self.delivered_total += 1;
        if self.traced(c) {
            let line = format!(
                "delivered to aggregator (view {vi}): {totals:?}; aggregator {:?}",
                self.agg_stats()
            );
            self.push_trace(line);
        }
    }

    pub(crate) fn on_output(&mut self, o: AggregatedRecord) {
        self.summary.aggregator_out += 1;
        if let Some(tc) = self.trace_conn()
            && self
                .conns
                .get(tc as usize)
                .is_some_and(|c| c.key.src_port == o.key.src_port && c.key.src == o.key.src)
            && self.traced(tc)
        {
            let line = format!(
                "aggregator output for this 5-tuple: start {} reason {} correlated {} src {:?} dst {:?}",
                o.start_secs, o.end_reason, o.correlated, o.from_source, o.from_destination
            );
            self.push_trace(line);
        }
        let Some(c) = self.by_key.get(&o.key).and_then(|v| {
            v.iter().rev().copied().find(|&c| {
                self.conns[c as usize]
                    .views
                    .iter()
                    .any(|v| (v.start_node / SEC) as u32 == o.start_secs)
            })
        }) else {
            self.fail(
                None,
                format!(
                    "aggregated record for no known connection: {:?} start {}",
                    o.key, o.start_secs
                ),
            );
            return;
        };
        if self.traced(c) {
            let line = {
                format!(
                    "aggregated reason {} correlated {} src {:?} dst {:?}",
                    o.end_reason, o.correlated, o.from_source, o.from_destination
                )
            };
            self.push_trace(line);
        }
        let inc = self.agg_incarnation;
        let now = self.now;
        // A gap in the aggregator's input longer than its inactive timeout: it finished the flow
        // and kept only a tombstone (for another inactive timeout), or nothing.
        // Which connection each side's counters are from: the record's, unless another
        // connection on the same 5-tuple delivered exactly these totals for that side (the
        // aggregator joined halves of two connections).
        let sides = [o.from_source, o.from_destination];
        let owner: Vec<u32> = (0..2)
            .map(|side| {
                let Some(nc) = sides[side] else { return c };
                let delivered = |k: u32| {
                    let conn = &self.conns[k as usize];
                    conn.view_for_side(side).is_some_and(|vi| {
                        self.tracks[k as usize][vi]
                            .delivered
                            .is_some_and(|d| arr(d) == nc.totals)
                    })
                };
                if delivered(c) {
                    return c;
                }
                self.by_key
                    .get(&o.key)
                    .and_then(|v| v.iter().rev().copied().find(|&k| k != c && delivered(k)))
                    .unwrap_or(c)
            })
            .collect();
        let mixed = owner.iter().any(|&k| k != c);
        let udp = self.transport() == crate::scenario::Transport::Udp;
        let mut reordered_under = false;
        if mixed {
            self.known[6] += 1;
            for &k in &owner {
                self.tracks[k as usize][0].mixed = true;
            }
            self.tracks[c as usize][0].mixed = true;
        }
        for (side, nc) in sides.into_iter().enumerate() {
            let Some(nc) = nc else { continue };
            let c = owner[side];
            // A gap in the aggregator's input longer than its inactive timeout: it finished the
            // flow and kept only a tombstone (for another inactive timeout), or nothing.
            let gap = self.tracks[c as usize][0].forgotten_gap;
            // The Nodes' conntrack start seconds differ (clock skew): the aggregator's tombstone
            // keeps the earliest, so a late half from the Node whose clock is ahead misses it.
            let skewed = {
                let v = &self.conns[c as usize].views;
                v.iter()
                    .any(|a| a.start_node / SEC != v[0].start_node / SEC)
            };
            // A newer connection on the same 5-tuple already went through the aggregator: its
            // tombstone can swallow this (older) connection's late half.
            let conn_mixed = self.tracks[c as usize][0].mixed
                || self.by_key.get(&o.key).is_some_and(|v| {
                    v.iter()
                        .any(|&k| k > c && self.tracks[k as usize].iter().any(|t| t.out.is_some()))
                });
            // The aggregator evicted flows (its store is full): it forgets flows and tombstones.
            let agg_bounded = self.agg_stats().evicted > 0
                || self.agg_stats().tombstones_evicted > 0
                || self.summary.faults.aggregator_evicted > 0;
            let Some(vi) = self.conns[c as usize].view_for_side(side) else {
                self.fail(
                    Some(c),
                    format!(
                        "aggregated record has side {side} counters but no Node of that side saw the connection"
                    ),
                );
                return;
            };
            self.summary.invariants_checked += 3;
            let t = &mut self.tracks[c as usize][vi];
            // What a perfect aggregator exported last for this Node, whatever happened to it.
            let prev = t.out.map_or([0; 4], |o| o.1);
            let went_down = (0..4).any(|i| nc.totals[i] < prev[i]);
            let want: [u64; 4] = std::array::from_fn(|i| nc.totals[i].saturating_sub(prev[i]));
            let mut err = None;
            if went_down {
                err = Some(format!(
                    "per-Node totals went down: {:?} after {prev:?}",
                    nc.totals
                ));
            } else if nc.deltas != want
                && (0..4).all(|i| nc.deltas[i] <= want[i])
                && (t.lost_net
                    || t.crash_lost
                    || t.crash_touched
                    || t.lost_restart
                    || t.evicted
                    || udp)
            {
                if !(t.lost_net || t.crash_lost || t.crash_touched || t.lost_restart || t.evicted) {
                    // UDP reordering: a later record baselined the flow at the agent's totals −
                    // deltas; the earlier one then arrives stale (records_stale) and is lost.
                    reordered_under = true;
                }
                // Less than the increment since the last export: what a counted fault lost (an
                // aggregator that baselines an unknown flow at the agent's totals − deltas does
                // not recount it, it misses what never arrived).
                t.undercount = true;
            } else if nc.deltas != want {
                let cause = if mixed || conn_mixed {
                    Some(6)
                } else if nc.deltas != nc.totals {
                    None
                } else if t.exporters.count_ones() > 1 {
                    // A later agent incarnation re-exported the connection: its first record
                    // carries deltas = totals, and an aggregator that baselines an unknown flow
                    // at totals − deltas counts it all again unless it still remembers the flow.
                    // After an aggregator restart in between, nothing remembers the first export.
                    // A full aggregator store evicts flows and tombstones (counted) before
                    // conntrack forgets the connection: the re-export finds nothing.
                    if t.out.is_some_and(|o| o.0 != inc) {
                        Some(9)
                    } else if t.agg_evicted || agg_bounded {
                        Some(3)
                    } else {
                        Some(1)
                    }
                } else if t.crash_touched && t.out.is_some_and(|o| o.0 != inc) {
                    // One agent incarnation: its deltas were against what it had delivered, so
                    // deltas = totals here means the aggregator ignored them.
                    Some(0)
                } else if gap >= 180 * SEC {
                    Some(2)
                } else if t.agg_evicted || agg_bounded {
                    Some(3)
                } else if gap >= 90 * SEC || skewed {
                    Some(5)
                } else {
                    None
                };
                match cause {
                    Some(k) => t.recount = t.recount.or(Some(k)),
                    None if nc.deltas == nc.totals => {
                        err = Some(format!(
                            "per-Node deltas {:?} recount the totals already exported ({prev:?}): double count",
                            nc.deltas
                        ))
                    }
                    None => {
                        err = Some(format!(
                            "per-Node deltas {:?}, expected {want:?}",
                            nc.deltas
                        ))
                    }
                }
            }
            for i in 0..4 {
                t.delta_sum[i] += nc.deltas[i];
            }
            t.out = Some((inc, nc.totals));
            t.out_at = now;
            if o.end_reason == 5 {
                t.agg_evicted = true;
            }
            if let Some(e) = err {
                self.fail(Some(c), e);
                return;
            }
        }
        if reordered_under {
            self.known[8] += 1;
        }
        if mixed {
            // Fields of two connections merged: neither's truth applies (counted above).
            return;
        }
        if o.correlated && o.flow_type == FlowType::InterNode as u8 {
            self.tracks[c as usize][0].correlated = true;
        }
        self.check_fields(c, &o);
    }

    fn check_fields(&mut self, c: u32, o: &AggregatedRecord) {
        let conn = &self.conns[c as usize];
        let degraded = self.tracks[c as usize].iter().any(|t| t.meta_degraded);
        self.summary.invariants_checked += 6;
        let mut errs: Vec<String> = Vec::new();
        if o.flow_type != conn.flow_type as u8 {
            errs.push(format!(
                "flowType {} != {}",
                o.flow_type, conn.flow_type as u8
            ));
        }
        let cl = &self.cl;
        let pod = |p: Option<(usize, usize)>| -> (&str, &str, &str) {
            match p {
                Some((s, i)) => {
                    let slot = &cl.slots[s];
                    (
                        &slot.incarnations[i].name,
                        &cl.namespaces[cl.apps[slot.app].ns],
                        &cl.nodes[slot.node].name,
                    )
                }
                None => ("", "", ""),
            }
        };
        let (sp, sns, snode) = pod(conn.src_pod);
        let (dp, dns, dnode) = pod(conn.dst_pod);
        if !degraded
            && (*o.src_pod != *sp
                || *o.src_namespace != *sns
                || *o.dst_pod != *dp
                || *o.dst_namespace != *dns
                || *o.src_node != *snode
                || *o.dst_node != *dnode)
        {
            errs.push(format!(
                "Pods/Nodes {}/{}@{} -> {}/{}@{}, truth {sns}/{sp}@{snode} -> {dns}/{dp}@{dnode}",
                o.src_namespace, o.src_pod, o.src_node, o.dst_namespace, o.dst_pod, o.dst_node
            ));
        }
        // `namespace/name:port` without building it (this runs for every aggregated record).
        let name_is = |got: &str, s: usize, p: usize| {
            let svc = &cl.services[s];
            let (ns, port) = (&cl.namespaces[svc.ns], &svc.ports[p].name);
            got.len() == ns.len() + svc.name.len() + port.len() + 2
                && got.starts_with(ns.as_str())
                && got[ns.len()..].starts_with('/')
                && got[ns.len() + 1..].starts_with(svc.name.as_str())
                && got[ns.len() + 1 + svc.name.len()..].starts_with(':')
                && got.ends_with(port.as_str())
        };
        let svc = conn.service;
        let have_source = o.from_source.is_some() || conn.flow_type != FlowType::InterNode;
        let (want_ip, want_port) = match (conn.dialled, svc) {
            (Some((ip, port)), Some(_)) => (Some(ip), port),
            _ => (None, 0),
        };
        let name_ok = match svc {
            Some((s, p)) if want_ip.is_some() => name_is(&o.service_port_name, s, p),
            _ => o.service_port_name.is_empty(),
        };
        let svc_ok = (o.cluster_ip == want_ip && o.service_port == want_port && name_ok)
            // Only the source Node sees the DNAT: a destination-only record has no Service.
            || (!have_source && o.cluster_ip.is_none() && o.service_port == 0);
        let late_destination = o.from_source.is_some_and(|s| s.deltas == [0; 4])
            && o.from_destination.is_some()
            && o.cluster_ip.is_none();
        if !svc_ok && late_destination {
            self.known[4] += 1;
        } else if !svc_ok {
            let want_name = svc.map(|(s, p)| {
                let s = &self.cl.services[s];
                s.port_name(&self.cl, &s.ports[p])
            });
            errs.push(format!(
                "Service {:?}:{} {:?}, truth {want_ip:?}:{want_port} {want_name:?}",
                o.cluster_ip, o.service_port, o.service_port_name
            ));
        }
        if !degraded {
            for (egress, got, v) in [
                (false, &o.ingress, conn.ingress),
                (true, &o.egress, conn.egress),
            ] {
                let ok = match v {
                    None => got.name.is_empty() && got.namespace.is_empty() && got.action == 0,
                    Some(None) => got.name.is_empty() && got.kind == 0 && got.action == 2,
                    Some(Some((p, r))) => {
                        let pol = &self.cl.policies[p];
                        let prefix = if egress { "egress-" } else { "ingress-" };
                        *got.name == *pol.name
                            && *got.namespace == *self.cl.namespaces[pol.ns]
                            && got.kind == 1
                            && got.action == 1
                            && got
                                .rule
                                .strip_prefix(prefix)
                                .and_then(|x| x.parse::<usize>().ok())
                                == Some(r)
                    }
                };
                let (name, ns, kind, rule, action) = if ok {
                    continue;
                } else {
                    name_of(v, self, egress)
                };
                if *got.name != *name
                    || *got.namespace != *ns
                    || got.kind != kind
                    || *got.rule != *rule
                    || got.action != action
                {
                    errs.push(format!(
                        "{} policy {:?}, truth {ns}/{name} kind {kind} rule {rule} action {action}",
                        if egress { "egress" } else { "ingress" },
                        got
                    ));
                }
            }
        }
        if !errs.is_empty() {
            self.fail(
                Some(c),
                format!(
                    "aggregated record fields differ from the truth: {}",
                    errs.join("; ")
                ),
            );
        }
    }

    pub(crate) fn final_checks(&mut self) {
        let mut short: [u64; 6] = [0; 6];
        let mut known = self.known;
        let mut uncorrelated = 0u64;
        let refused_any = self.summary.faults.exporter_refused > 0 || self.nodes_refused();
        // `SIM_STRICT_CAUSE=k`: with `strict`, only known issue `k` (index into `issues` below)
        // fails the run — to get the history of one kind.
        let strict_only = self
            .strict()
            .then(|| {
                std::env::var("SIM_STRICT_CAUSE")
                    .ok()?
                    .parse::<usize>()
                    .ok()
            })
            .flatten();
        for c in 0..self.conns.len() {
            let conn = &self.conns[c];
            let truth = conn.final_counters();
            let mut faulted = false;
            // Another connection used this 5-tuple (the aggregator may confuse the two).
            let newer_on_key = {
                let k = &conn.key;
                self.by_key
                    .get(&flowcore::aggregator::CorrelationKey {
                        src: k.src,
                        dst: k.dst,
                        src_port: k.src_port,
                        dst_port: k.dst_port,
                        proto: k.proto,
                    })
                    .is_some_and(|v| v.len() > 1)
            };
            for vi in 0..conn.views.len() {
                let t = &self.tracks[c][vi];
                self.summary.invariants_checked += 4;
                let obs = t.obs.map(|o| o.1);
                let node = conn.views[vi].node;
                let fail = |what: String| Some(format!("node {node}: {what}"));
                let mut err = None;
                if obs != Some(truth) {
                    if t.missed_event || t.lost_restart {
                        short[0] += 1;
                    } else {
                        err = fail(format!(
                            "the exporter was never shown the final counters {truth:?} (last {obs:?})"
                        ));
                    }
                }
                match (t.final_acked, obs) {
                    (None, None) => {}
                    (None, Some(_)) => {
                        if t.lost_restart {
                            short[1] += 1;
                        } else if refused_any && t.exporters == 0 {
                            short[2] += 1;
                        } else {
                            err = err.or(fail(
                                "observed, but no final record was acknowledged".into(),
                            ));
                        }
                    }
                    (Some((_, f)), Some(o)) if f != o => {
                        if t.evicted {
                            short[3] += 1;
                        } else if t.lost_restart {
                            short[1] += 1;
                        } else {
                            err = err.or(fail(format!(
                                "final record totals {f:?}, last observed {o:?}"
                            )));
                        }
                    }
                    _ => {}
                }
                let sent = t.final_acked.map(|f| arr(f.1));
                let out = t.out.map(|o| o.1);
                if sent.is_some() && out != sent {
                    if t.lost_net {
                        short[4] += 1;
                    } else if t.crash_lost {
                        short[5] += 1;
                    } else if t.lost_restart && t.exporters == 0 {
                        short[1] += 1;
                    } else if newer_on_key {
                        known[7] += 1;
                    } else {
                        err = err.or(fail(format!(
                            "aggregated per-Node totals {out:?}, exporter's final {sent:?}"
                        )));
                    }
                }
                if let Some(o) = out
                    && t.delta_sum != o
                {
                    let under = (0..4).all(|i| t.delta_sum[i] <= o[i]);
                    match t.recount {
                        Some(k) => known[k] += 1,
                        None if under && t.undercount => {}
                        None => {
                            err = err.or(fail(format!(
                                "per-Node deltas add up to {:?}, totals {o:?}",
                                t.delta_sum
                            )))
                        }
                    }
                    if self.strict()
                        && err.is_none()
                        && t.recount
                            .is_some_and(|k| strict_only.is_none_or(|c| c == k))
                    {
                        err = fail(format!(
                            "double count (known issue {:?}): deltas add up to {:?}, totals {o:?}",
                            t.recount, t.delta_sum
                        ));
                    }
                }
                faulted |= t.lost_net
                    || t.lost_restart
                    || t.missed_event
                    || t.evicted
                    || t.crash_lost
                    || t.agg_evicted
                    || t.mixed
                    || newer_on_key
                    || t.exporters == 0;
                if let Some(e) = err {
                    self.now = conn.tl.t_destroy;
                    self.fail(Some(c as u32), e);
                    return;
                }
            }
            if conn.flow_type == FlowType::InterNode && !self.tracks[c][0].correlated {
                let (from, to) = (
                    conn.tl.t_start.saturating_sub(15 * SEC),
                    conn.tl.t_destroy + 120 * SEC,
                );
                let nodes: Vec<usize> = conn.views.iter().map(|v| v.node).collect();
                faulted |= self
                    .fault_windows
                    .iter()
                    .any(|&(n, a, b)| a <= to && from <= b && n.is_none_or(|n| nodes.contains(&n)));
                if !faulted {
                    self.fail(
                        Some(c as u32),
                        "inter-Node flow never correlated and no fault explains it".into(),
                    );
                    return;
                }
                uncorrelated += 1;
            }
        }
        // Transport accounting: every record sent is delivered or counted as dropped.
        self.summary.invariants_checked += 1;
        let lost = self.summary.faults.records_dropped + self.summary.faults.records_undecodable;
        if self.acked_total != self.delivered_total + lost {
            self.fail(
                None,
                format!(
                    "records acknowledged {} != delivered {} + dropped {lost} ({:?})",
                    self.acked_total,
                    self.delivered_total,
                    self.transport()
                ),
            );
        }
        if self.transport() == Transport::Tcp && lost != 0 {
            self.fail(None, "records lost over TCP".into());
        }
        let names = [
            "lost or missed destroy event",
            "agent restarted before exporting",
            "exporter store full (refused)",
            "exporter store full (evicted)",
            "UDP datagram lost / no template",
            "aggregator crashed before exporting",
        ];
        self.summary.shortfalls = names
            .iter()
            .zip(short)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        if uncorrelated > 0 {
            self.summary
                .shortfalls
                .push(("inter-Node flow uncorrelated (fault)".into(), uncorrelated));
        }
        let issues = [
            "double count after aggregator restart (deltas recounted from zero)",
            "double count after agent restart re-export (aggregator forgot the flow)",
            "double count: aggregator forgot a quiet flow (inactive timeout + tombstone) and recounted its late record",
            "double count after the aggregator evicted the flow or its tombstone (store full)",
            "late destination half of a finished flow: record without Service fields",
            "double count: late half of a finished flow not matched to its tombstone (Node clocks differ, or tombstone gone)",
            "mixed record: late half of an older connection joined to a reused 5-tuple's tombstone",
            "half of a connection lost among others on a reused 5-tuple (taken as stale or merged)",
            "UDP reordering: an earlier record arrives after a later one baselined the flow at the agent's totals − deltas, and is dropped as stale",
            "double count inherent to two faults: an agent re-exported a connection after its restart, and the aggregator had restarted since the first export (neither remembers it)",
        ];
        self.summary.known_issues = issues
            .iter()
            .zip(known)
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| (s.to_string(), n))
            .collect();
    }
}
