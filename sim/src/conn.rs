//! Ground truth of one connection: its endpoints, what each Node's conntrack table shows of it
//! (a [`View`] per Node), and its counters and TCP state as exact functions of time.
//!
//! Counters are computed, not accumulated, so a dump at any instant reads the same numbers the
//! invariants later compare against. Invariants: counters never decrease in `t`; they are frozen
//! from `t_close` on (TIME_WAIT / UDP silence); both Nodes of an inter-Node connection count the
//! same packets (no in-network loss is modelled); a connection exists in a table exactly in
//! `[t_start, t_destroy)`.

use std::net::{IpAddr, Ipv4Addr};

use flowcore::model::{
    BiCounters, ConntrackEntry, ConntrackStatus, Counters, FlowKey, FlowType, TcpState, Timestamp,
    Tuple,
};

use crate::cluster::{MS, Nanos, SEC, TCP, Verdict};

/// How the connection was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    PodToPod,
    PodToService,
    ToExternal,
    /// Through a NodePort, to a backend on the Node that received it.
    FromExternal,
}

/// One Node's conntrack entry of the connection.
#[derive(Clone, Copy, Debug)]
pub struct View {
    pub node: usize,
    /// Which per-Node counters of the aggregated record this Node's half fills (0 source,
    /// 1 destination; non-inter-Node flows only have source).
    pub side: usize,
    pub orig: Tuple,
    pub reply: Tuple,
    pub nat: u32,
    pub ct_id: u32,
    /// Conntrack start timestamp, in this Node's (possibly skewed) clock.
    pub start_node: Nanos,
}

/// A connection's timeline and traffic: everything its counters and TCP state are functions of.
/// Small and `Copy`, so a Node's list of live entries carries its own copy and a dump reads
/// nothing else (a dump lists every live connection of the Node, every poll interval).
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    pub proto: u8,
    /// Ended by RST (state CLOSE) rather than FIN (TIME_WAIT).
    pub rst: bool,
    /// Data packets per second and bytes per packet, original / reply direction.
    pub pps: [u32; 2],
    pub size: [u32; 2],
    pub t_start: Nanos,
    /// Reply seen (TCP handshake done / first UDP reply); `None`: never answered.
    pub t_est: Option<Nanos>,
    pub t_traffic_end: Nanos,
    pub t_close: Nanos,
    pub t_destroy: Nanos,
    /// `counters(t_close)`, kept by [`Timeline::seal`].
    pub final_counters: BiCounters,
}

#[derive(Clone, Debug)]
pub struct Conn {
    pub kind: Kind,
    pub proto: u8,
    pub key: FlowKey,
    pub flow_type: FlowType,
    /// `(slot, incarnation)` of the Pods at either end.
    pub src_pod: Option<(usize, usize)>,
    pub dst_pod: Option<(usize, usize)>,
    /// `(service, port index)` when dialled through a Service.
    pub service: Option<(usize, usize)>,
    /// The address the client dialled when it was a Service (ClusterIP or Node address).
    pub dialled: Option<(IpAddr, u16)>,
    pub ingress: Verdict,
    pub egress: Verdict,
    pub tl: Timeline,
    pub views: Vec<View>,
    pub destroyed: bool,
    /// The 5-tuple was taken over by a later connection (which ended this one).
    pub reused_by: Option<u32>,
}

fn data(t: Nanos, from: Nanos, to: Nanos, pps: u32) -> u64 {
    if t <= from {
        return 0;
    }
    let span = t.min(to).saturating_sub(from) as u128;
    (span * pps as u128 / SEC as u128) as u64
}

impl Timeline {
    /// Both directions' counters at `t`, as conntrack accounting shows them.
    pub fn counters(&self, t: Nanos) -> BiCounters {
        // Half the entries of a dump are TIME_WAIT tails: their counters are frozen.
        if t >= self.t_close {
            return self.final_counters;
        }
        self.compute(t)
    }

    /// Recomputes the frozen final counters; call after changing the timeline.
    pub fn seal(&mut self) {
        self.final_counters = self.compute(self.t_close);
    }

    fn compute(&self, t: Nanos) -> BiCounters {
        if t < self.t_start {
            return BiCounters::default();
        }
        let t = t.min(self.t_close);
        let (mut op, mut ob, mut rp, mut rb) = (0u64, 0u64, 0u64, 0u64);
        if self.proto == TCP {
            // SYN, then retransmissions at +1s, +3s, +7s … while unanswered.
            op += 1;
            ob += 60;
            match self.t_est {
                Some(e) if t >= e => {
                    rp += 1;
                    rb += 60;
                    op += 1;
                    ob += 52;
                }
                Some(_) => {}
                None => {
                    let mut retry = SEC;
                    while self.t_start + retry <= t && retry < 64 * SEC {
                        op += 1;
                        ob += 60;
                        retry = retry * 2 + SEC;
                    }
                }
            }
        } else {
            op += 1;
            ob += self.size[0] as u64;
            if let Some(e) = self.t_est
                && t >= e
            {
                rp += 1;
                rb += self.size[1] as u64;
            }
        }
        if let Some(e) = self.t_est {
            let d0 = data(t, e, self.t_traffic_end, self.pps[0]);
            let d1 = data(t, e, self.t_traffic_end, self.pps[1]);
            op += d0;
            ob += d0 * self.size[0] as u64;
            rp += d1;
            rb += d1 * self.size[1] as u64;
            if self.proto == TCP && t >= self.t_close {
                if self.rst {
                    op += 1;
                    ob += 40;
                } else {
                    op += 2;
                    ob += 104;
                    rp += 2;
                    rb += 104;
                }
            }
        }
        BiCounters {
            packets: op,
            octets: ob,
            reverse_packets: rp,
            reverse_octets: rb,
        }
    }

    pub fn tcp_state(&self, t: Nanos) -> Option<TcpState> {
        if self.proto != TCP {
            return None;
        }
        Some(match self.t_est {
            None => TcpState::SynSent,
            Some(e) if t < e => TcpState::SynSent,
            Some(_) if t < self.t_close.saturating_sub(MS) => TcpState::Established,
            Some(_) if t < self.t_close => TcpState::FinWait,
            Some(_) if self.rst => TcpState::Close,
            Some(_) => TcpState::TimeWait,
        })
    }

    /// The conntrack entry `view` shows at true time `t`; `skew` maps to the Node's clock.
    pub fn entry(&self, view: &View, t: Nanos, skew: i64) -> ConntrackEntry {
        let c = self.counters(t);
        let mut status = ConntrackStatus::CONFIRMED | view.nat;
        if self.t_est.is_some_and(|e| t >= e) {
            status |= ConntrackStatus::SEEN_REPLY | ConntrackStatus::ASSURED;
        }
        let stop = (t >= self.t_destroy).then(|| Timestamp::from_nanos(node_clock(t, skew)));
        ConntrackEntry {
            orig: view.orig,
            reply: view.reply,
            zone: 0,
            mark: 0,
            labels: 0,
            status: ConntrackStatus(status),
            timeout: 120,
            id: view.ct_id,
            orig_counters: Some(Counters {
                packets: c.packets,
                bytes: c.octets,
            }),
            reply_counters: Some(Counters {
                packets: c.reverse_packets,
                bytes: c.reverse_octets,
            }),
            start: Some(Timestamp::from_nanos(view.start_node)),
            stop,
            tcp_state: self.tcp_state(t),
        }
    }
}

impl Conn {
    /// Both directions' counters at `t`, as conntrack accounting shows them.
    pub fn counters(&self, t: Nanos) -> BiCounters {
        self.tl.counters(t)
    }

    /// Recomputes the frozen final counters; call after changing the timeline.
    pub fn seal(&mut self) {
        self.tl.seal();
    }

    /// Final counters (what the last record must carry).
    pub fn final_counters(&self) -> BiCounters {
        self.tl.final_counters
    }

    pub fn tcp_state(&self, t: Nanos) -> Option<TcpState> {
        self.tl.tcp_state(t)
    }

    /// The conntrack entry `view` shows at true time `t`; `skew` maps to the Node's clock.
    pub fn entry(&self, view: &View, t: Nanos, skew: i64) -> ConntrackEntry {
        self.tl.entry(view, t, skew)
    }

    /// The view whose half fills aggregated side `side`.
    pub fn view_for_side(&self, side: usize) -> Option<usize> {
        self.views.iter().position(|v| v.side == side)
    }
}

/// A Node's clock at true time `t`.
pub fn node_clock(t: Nanos, skew: i64) -> Nanos {
    t.saturating_add_signed(skew)
}

/// Tuple helper.
pub fn tuple(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> Tuple {
    Tuple {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        src_port: sport,
        dst_port: dport,
        proto,
    }
}
