//! The agent's flow record: one export of one connection, as the exporter hands it to the IPFIX
//! encoder (or to JSON output).
//!
//! Every field maps 1:1 onto an IE of the reference's agent flow-record table plus the DESIGN.md
//! additions (policy type / rule name / rule action, Pod labels, clusterId); [`FlowRecord::visit`]
//! walks them by registry name so the template mapping and JSON output need no second list.
//!
//! Strings (Pod, Namespace, Node, Service, policy names, label JSON) are [`Sym`] handles into an
//! [`Interner`] owned by the metadata index: a record is plain `Copy` data, building one allocates
//! nothing, and the text lives once however many connections name it.
//!
//! Invariants: `*_delta` ≤ `*_total` component-wise (deltas are totals minus the last
//! acknowledged totals of the same connection); an `Option` is `None` exactly when the IE is
//! absent from the record.

use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::{TcpState, Timestamp};

/// Handle to an interned string. `Option<Sym>` is 4 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(NonZeroU32);

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sym({})", self.0)
    }
}

impl Sym {
    /// Position in the interner's table (symbols count from 1).
    pub(crate) fn index(self) -> usize {
        self.0.get() as usize - 1
    }

    /// Saturates rather than panics: four billion distinct names is not a real workload, and a
    /// wrong name is better than a crashed agent.
    pub(crate) fn from_index(i: usize) -> Sym {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        Sym(NonZeroU32::new(n).unwrap_or(NonZeroU32::MAX))
    }
}

/// Interned strings. A handle stays valid until it is [`remove`](Interner::remove)d; the agent's
/// metadata index never removes (its records may outlive metadata deletions), the aggregator's
/// reference-counting view ([`crate::aggregator::Interner`]) removes a name with its last user,
/// and a removed slot is reused by the next new name.
///
/// The one string table of flowcore: the agent's metadata index and the aggregator both use it.
/// The text is stored once, as `Arc<str>` so records can carry it without copying; the index
/// holds 4-byte handles found by the hash of the bytes (foldhash), so a name arriving off the
/// wire is found without UTF-8 validation or allocation — only a new name is validated and
/// stored. [`bytes`](Interner::bytes) is what the live names hold, for byte budgets.
pub struct Interner {
    /// `None` marks a removed slot (listed in `free`).
    strings: Vec<Option<Arc<str>>>,
    free: Vec<Sym>,
    index: hashbrown::HashTable<Sym>,
    /// Text bytes of the live names.
    bytes: usize,
    /// Names are not attacker-chosen keys in bulk the way 5-tuples are (callers that take names
    /// off the wire bound their length and their bytes), so a fast unkeyed hash is fine.
    hasher: foldhash::fast::FixedState,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            strings: Vec::new(),
            free: Vec::new(),
            index: hashbrown::HashTable::new(),
            bytes: 0,
            hasher: foldhash::fast::FixedState::default(),
        }
    }
}

impl fmt::Debug for Interner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interner")
            .field("len", &self.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Interner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The handle of `s`, adding it if new (allocates only then).
    pub fn intern(&mut self, s: &str) -> Sym {
        match self.find(s.as_bytes()) {
            Some(sym) => sym,
            None => self.insert_new(s),
        }
    }

    /// The handle of UTF-8 bytes from the wire, adding them if new (invalid sequences replaced).
    pub fn intern_bytes(&mut self, b: &[u8]) -> Sym {
        if let Some(sym) = self.find(b) {
            return sym;
        }
        match std::str::from_utf8(b) {
            Ok(s) => self.insert_new(s),
            Err(_) => self.intern(&String::from_utf8_lossy(b)),
        }
    }

    /// The handle of `s` if it was interned.
    pub fn get(&self, s: &str) -> Option<Sym> {
        self.find(s.as_bytes())
    }

    /// The handle of wire bytes if they were interned (no allocation, no UTF-8 check).
    pub fn get_bytes(&self, b: &[u8]) -> Option<Sym> {
        self.find(b)
    }

    /// The text of `sym`; `""` for a handle that is out of range or removed.
    pub fn resolve(&self, sym: Sym) -> &str {
        self.strings
            .get(sym.index())
            .and_then(|s| s.as_deref())
            .unwrap_or("")
    }

    /// The shared text of `sym`, for records that carry it (cloning it allocates nothing).
    pub fn resolve_shared(&self, sym: Sym) -> Option<&Arc<str>> {
        self.strings.get(sym.index())?.as_ref()
    }

    /// Forgets `sym`'s name; the handle may be given to another name afterwards. Returns the
    /// bytes freed (0 if it was not live).
    pub fn remove(&mut self, sym: Sym) -> usize {
        let Some(slot) = self.strings.get_mut(sym.index()) else {
            return 0;
        };
        let Some(text) = slot.take() else {
            return 0;
        };
        let h = self.hasher.hash_one(text.as_bytes());
        if let Ok(e) = self.index.find_entry(h, |&x| x == sym) {
            e.remove();
        }
        self.free.push(sym);
        self.bytes -= text.len();
        text.len()
    }

    /// Live names.
    pub fn len(&self) -> usize {
        self.strings.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Text bytes of the live names.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Releases the index's spare capacity once most names are gone.
    pub fn shrink(&mut self) {
        if self.index.capacity() > 4 * self.index.len() + 64 {
            let (strings, hasher) = (&self.strings, &self.hasher);
            self.index.shrink_to_fit(|x| {
                hasher.hash_one(strings[x.index()].as_deref().unwrap_or("").as_bytes())
            });
        }
        if self.free.capacity() > 4 * self.free.len() + 64 {
            self.free.shrink_to_fit();
        }
    }

    /// Handles ever made, live or removed (a bound for tables indexed by handle).
    pub fn capacity(&self) -> usize {
        self.strings.len()
    }

    fn find(&self, b: &[u8]) -> Option<Sym> {
        let strings = &self.strings;
        self.index
            .find(self.hasher.hash_one(b), |sym| {
                strings[sym.index()].as_deref().map(str::as_bytes) == Some(b)
            })
            .copied()
    }

    fn insert_new(&mut self, s: &str) -> Sym {
        let text: Arc<str> = Arc::from(s);
        let sym = match self.free.pop() {
            Some(sym) => {
                self.strings[sym.index()] = Some(text);
                sym
            }
            None => {
                self.strings.push(Some(text));
                Sym::from_index(self.strings.len() - 1)
            }
        };
        self.bytes += s.len();
        let (strings, hasher) = (&self.strings, &self.hasher);
        self.index
            .insert_unique(hasher.hash_one(s.as_bytes()), sym, |x| {
                hasher.hash_one(strings[x.index()].as_deref().unwrap_or("").as_bytes())
            });
        sym
    }
}

/// The flow key correlation joins on: source as the first packet saw it, destination the real
/// endpoint after DNAT (the conntrack reply tuple's source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

/// `flowType` (Antrea IE 137).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FlowType {
    /// Both ends are Pods on this Node.
    IntraNode = 1,
    /// The other end is a Pod on another Node.
    InterNode = 2,
    /// The destination is neither a Pod nor a Service.
    ToExternal = 3,
    /// The source is outside the cluster, the destination a Pod of this Node.
    FromExternal = 4,
}

impl FlowType {
    pub fn from_u8(v: u8) -> Option<FlowType> {
        Some(match v {
            1 => FlowType::IntraNode,
            2 => FlowType::InterNode,
            3 => FlowType::ToExternal,
            4 => FlowType::FromExternal,
            _ => return None,
        })
    }
}

/// `flowEndReason` (IANA IE 136).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FlowEndReason {
    /// No new traffic for `idleFlowExportTimeout`.
    IdleTimeout = 1,
    /// Traffic continued for `activeFlowExportTimeout` since the last export.
    ActiveTimeout = 2,
    /// The connection ended (TCP TIME_WAIT/CLOSE, gone from conntrack, destroy event).
    EndOfFlow = 3,
    /// The exporter stopped tracking it (shutdown / flush).
    ForcedEnd = 4,
    /// Evicted because the connection store was full.
    LackOfResources = 5,
}

impl FlowEndReason {
    pub fn from_u8(v: u8) -> Option<FlowEndReason> {
        Some(match v {
            1 => FlowEndReason::IdleTimeout,
            2 => FlowEndReason::ActiveTimeout,
            3 => FlowEndReason::EndOfFlow,
            4 => FlowEndReason::ForcedEnd,
            5 => FlowEndReason::LackOfResources,
            _ => return None,
        })
    }

    /// The record is the connection's last: nothing of it is exported after.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            FlowEndReason::EndOfFlow | FlowEndReason::ForcedEnd | FlowEndReason::LackOfResources
        )
    }
}

/// `ingress/egressNetworkPolicyType` (Antrea IEs 115/118). flowlens evaluates only Kubernetes
/// NetworkPolicies; the other values are Antrea's, kept so decoded records round-trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum PolicyType {
    K8sNetworkPolicy = 1,
    AntreaNetworkPolicy = 2,
    AntreaClusterNetworkPolicy = 3,
}

/// `ingress/egressNetworkPolicyRuleAction` (Antrea IEs 139/140).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum RuleAction {
    Allow = 1,
    /// For Kubernetes policies: the Pod is isolated and no rule admits the flow ("would be
    /// denied" — the CNI may not enforce, or the policy is newer than the connection).
    Drop = 2,
    Reject = 3,
}

/// Packet and byte counters of both directions (RFC 5103: reverse = reply direction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BiCounters {
    pub packets: u64,
    pub octets: u64,
    pub reverse_packets: u64,
    pub reverse_octets: u64,
}

impl BiCounters {
    /// Component-wise `self - earlier`, `None` if any component went down (a different
    /// connection, never a negative delta).
    pub fn checked_sub(self, earlier: BiCounters) -> Option<BiCounters> {
        Some(BiCounters {
            packets: self.packets.checked_sub(earlier.packets)?,
            octets: self.octets.checked_sub(earlier.octets)?,
            reverse_packets: self.reverse_packets.checked_sub(earlier.reverse_packets)?,
            reverse_octets: self.reverse_octets.checked_sub(earlier.reverse_octets)?,
        })
    }

    pub fn saturating_add(self, o: BiCounters) -> BiCounters {
        BiCounters {
            packets: self.packets.saturating_add(o.packets),
            octets: self.octets.saturating_add(o.octets),
            reverse_packets: self.reverse_packets.saturating_add(o.reverse_packets),
            reverse_octets: self.reverse_octets.saturating_add(o.reverse_octets),
        }
    }
}

/// Which policy + rule admitted (or would deny) the flow in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyFields {
    /// `…NetworkPolicyName`; `None` when no policy selects the Pod, or it is isolated and
    /// nothing admits the flow (then `action` is `Drop`).
    pub name: Option<Sym>,
    pub namespace: Option<Sym>,
    pub policy_type: Option<PolicyType>,
    /// Kubernetes rules are unnamed: flowlens names them `ingress-<index>` / `egress-<index>`
    /// (position in the policy's rule list).
    pub rule_name: Option<Sym>,
    pub action: Option<RuleAction>,
}

/// One exported record of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    /// `flowStartSeconds`: conntrack's start timestamp, else when the exporter first saw it.
    pub flow_start: Timestamp,
    /// `flowEndSeconds`: the last time traffic was observed (at dump granularity), or the end.
    pub flow_end: Timestamp,
    pub flow_end_reason: FlowEndReason,
    pub key: FlowKey,
    /// `packetTotalCount`, `octetTotalCount`, `reverse…TotalCount`.
    pub totals: BiCounters,
    /// `packetDeltaCount`, `octetDeltaCount`, `reverse…DeltaCount`.
    pub deltas: BiCounters,
    pub source_pod_namespace: Option<Sym>,
    pub source_pod_name: Option<Sym>,
    pub destination_pod_namespace: Option<Sym>,
    pub destination_pod_name: Option<Sym>,
    pub source_node_name: Option<Sym>,
    pub destination_node_name: Option<Sym>,
    /// `destinationClusterIPv4/6`: the Service address the client dialled (ClusterIP, Node
    /// address for a NodePort, LoadBalancer IP).
    pub destination_cluster_ip: Option<IpAddr>,
    /// `destinationServicePort`: the port the client dialled.
    pub destination_service_port: Option<u16>,
    /// `destinationServicePortName`: `namespace/name:portName`.
    pub destination_service_port_name: Option<Sym>,
    pub ingress_policy: PolicyFields,
    pub egress_policy: PolicyFields,
    /// `tcpState`; `None` for non-TCP.
    pub tcp_state: Option<TcpState>,
    pub flow_type: FlowType,
    /// `sourcePodLabels` / `destinationPodLabels`: JSON object text.
    pub source_pod_labels: Option<Sym>,
    pub destination_pod_labels: Option<Sym>,
    pub cluster_id: Option<Sym>,
}

/// A field value as the IE's abstract type carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeValue<'a> {
    Unsigned8(u8),
    Unsigned16(u16),
    Unsigned64(u64),
    /// `dateTimeSeconds`, seconds since the Unix epoch.
    DateTimeSeconds(u64),
    Ip(IpAddr),
    String(&'a str),
}

impl FlowRecord {
    /// Calls `f(ie_name, value)` for every IE present in the record, in the reference table's
    /// order; names are the registry's (`crate::ie::by_name` finds id, PEN and type).
    pub fn visit<'a>(&self, interner: &'a Interner, mut f: impl FnMut(&'static str, IeValue<'a>)) {
        self.visit_all(interner, |name, v| {
            if let Some(v) = v {
                f(name, v)
            }
        })
    }

    /// Calls `f(ie_name, value)` for every IE a flow record can carry — the same names in the
    /// same order for every record, `None` where this one lacks it (the other address family,
    /// no Service, no policy…). A fixed IPFIX template is this list; absent values go on the wire
    /// as zero / empty.
    pub fn visit_all<'a>(
        &self,
        interner: &'a Interner,
        mut f: impl FnMut(&'static str, Option<IeValue<'a>>),
    ) {
        use IeValue::*;
        let s = |sym: Option<Sym>| sym.map(|s| String(interner.resolve(s)));
        let v4 = |ip: IpAddr| ip.is_ipv4().then_some(Ip(ip));
        let v6 = |ip: IpAddr| ip.is_ipv6().then_some(Ip(ip));
        let k = &self.key;
        let (t, d) = (&self.totals, &self.deltas);
        let (i, e) = (&self.ingress_policy, &self.egress_policy);
        let cip = self.destination_cluster_ip;
        let u8v = |v: Option<u8>| v.map(Unsigned8);
        // IANA, as the reference's table lists them.
        f(
            "flowStartSeconds",
            Some(DateTimeSeconds(self.flow_start.as_secs())),
        );
        f(
            "flowEndSeconds",
            Some(DateTimeSeconds(self.flow_end.as_secs())),
        );
        f("flowEndReason", Some(Unsigned8(self.flow_end_reason as u8)));
        f("sourceIPv4Address", v4(k.src));
        f("destinationIPv4Address", v4(k.dst));
        f("sourceIPv6Address", v6(k.src));
        f("destinationIPv6Address", v6(k.dst));
        f("sourceTransportPort", Some(Unsigned16(k.src_port)));
        f("destinationTransportPort", Some(Unsigned16(k.dst_port)));
        f("protocolIdentifier", Some(Unsigned8(k.proto)));
        f("packetTotalCount", Some(Unsigned64(t.packets)));
        f("octetTotalCount", Some(Unsigned64(t.octets)));
        f("packetDeltaCount", Some(Unsigned64(d.packets)));
        f("octetDeltaCount", Some(Unsigned64(d.octets)));
        // RFC 5103 reverse.
        f(
            "reversePacketTotalCount",
            Some(Unsigned64(t.reverse_packets)),
        );
        f("reverseOctetTotalCount", Some(Unsigned64(t.reverse_octets)));
        f(
            "reversePacketDeltaCount",
            Some(Unsigned64(d.reverse_packets)),
        );
        f("reverseOctetDeltaCount", Some(Unsigned64(d.reverse_octets)));
        // Antrea.
        f("sourcePodNamespace", s(self.source_pod_namespace));
        f("sourcePodName", s(self.source_pod_name));
        f("destinationPodNamespace", s(self.destination_pod_namespace));
        f("destinationPodName", s(self.destination_pod_name));
        f("sourceNodeName", s(self.source_node_name));
        f("destinationNodeName", s(self.destination_node_name));
        f("destinationClusterIPv4", cip.and_then(v4));
        f("destinationClusterIPv6", cip.and_then(v6));
        f(
            "destinationServicePort",
            self.destination_service_port.map(Unsigned16),
        );
        f(
            "destinationServicePortName",
            s(self.destination_service_port_name),
        );
        f("ingressNetworkPolicyName", s(i.name));
        f("ingressNetworkPolicyNamespace", s(i.namespace));
        f("egressNetworkPolicyName", s(e.name));
        f("egressNetworkPolicyNamespace", s(e.namespace));
        f("tcpState", self.tcp_state.map(|t| String(t.name())));
        f("flowType", Some(Unsigned8(self.flow_type as u8)));
        // DESIGN.md additions.
        f(
            "ingressNetworkPolicyType",
            u8v(i.policy_type.map(|t| t as u8)),
        );
        f(
            "egressNetworkPolicyType",
            u8v(e.policy_type.map(|t| t as u8)),
        );
        f("ingressNetworkPolicyRuleName", s(i.rule_name));
        f("egressNetworkPolicyRuleName", s(e.rule_name));
        f(
            "ingressNetworkPolicyRuleAction",
            u8v(i.action.map(|a| a as u8)),
        );
        f(
            "egressNetworkPolicyRuleAction",
            u8v(e.action.map(|a| a as u8)),
        );
        f("sourcePodLabels", s(self.source_pod_labels));
        f("destinationPodLabels", s(self.destination_pod_labels));
        f("clusterId", s(self.cluster_id));
    }

    /// A view that serializes as a map from IE name to value (strings resolved), the shape of
    /// `flowlens decode` JSON lines.
    pub fn resolved<'a>(&'a self, interner: &'a Interner) -> ResolvedRecord<'a> {
        ResolvedRecord {
            record: self,
            interner,
        }
    }
}

/// See [`FlowRecord::resolved`].
pub struct ResolvedRecord<'a> {
    record: &'a FlowRecord,
    interner: &'a Interner,
}

impl Serialize for ResolvedRecord<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let mut err = None;
        self.record.visit(self.interner, |name, v| {
            if err.is_some() {
                return;
            }
            let r = match v {
                IeValue::Unsigned8(x) => map.serialize_entry(name, &x),
                IeValue::Unsigned16(x) => map.serialize_entry(name, &x),
                IeValue::Unsigned64(x) | IeValue::DateTimeSeconds(x) => {
                    map.serialize_entry(name, &x)
                }
                IeValue::Ip(ip) => map.serialize_entry(name, &ip),
                IeValue::String(s) => map.serialize_entry(name, s),
            };
            if let Err(e) = r {
                err = Some(e);
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interner_round_trips_and_dedups() {
        let mut i = Interner::new();
        let a = i.intern("default");
        let b = i.intern("kube-system");
        assert_eq!(i.intern("default"), a);
        assert_ne!(a, b);
        assert_eq!(i.resolve(b), "kube-system");
        assert_eq!(i.get("nope"), None);
        assert_eq!(std::mem::size_of::<Option<Sym>>(), 4);
    }

    #[test]
    fn removed_names_free_their_bytes_and_slots() {
        let mut i = Interner::new();
        let a = i.intern("frontend-1");
        let b = i.intern("shop");
        assert_eq!(i.bytes(), 14);
        assert_eq!(i.remove(a), 10);
        assert_eq!(i.remove(a), 0, "a second removal frees nothing");
        assert_eq!((i.len(), i.bytes()), (1, 4));
        assert_eq!(i.get("frontend-1"), None);
        assert_eq!(i.resolve(a), "");
        // The slot is reused, and the other name is untouched.
        let c = i.intern("catalog-1");
        assert_eq!(c, a);
        assert_eq!(i.resolve(c), "catalog-1");
        assert_eq!(i.get("shop"), Some(b));
        assert_eq!(i.capacity(), 2);
    }

    #[test]
    fn every_visited_name_is_in_the_registry_with_a_matching_type() {
        use crate::ie::DataType;
        let mut i = Interner::new();
        let s = Some(i.intern("x"));
        let pf = PolicyFields {
            name: s,
            namespace: s,
            policy_type: Some(PolicyType::K8sNetworkPolicy),
            rule_name: s,
            action: Some(RuleAction::Allow),
        };
        for ip in ["10.0.0.1", "fd00::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let r = FlowRecord {
                flow_start: Timestamp::ZERO,
                flow_end: Timestamp::ZERO,
                flow_end_reason: FlowEndReason::EndOfFlow,
                key: FlowKey {
                    src: ip,
                    dst: ip,
                    src_port: 1,
                    dst_port: 2,
                    proto: 6,
                },
                totals: BiCounters::default(),
                deltas: BiCounters::default(),
                source_pod_namespace: s,
                source_pod_name: s,
                destination_pod_namespace: s,
                destination_pod_name: s,
                source_node_name: s,
                destination_node_name: s,
                destination_cluster_ip: Some(ip),
                destination_service_port: Some(80),
                destination_service_port_name: s,
                ingress_policy: pf,
                egress_policy: pf,
                tcp_state: Some(TcpState::Established),
                flow_type: FlowType::IntraNode,
                source_pod_labels: s,
                destination_pod_labels: s,
                cluster_id: s,
            };
            let mut n = 0;
            r.visit(&i, |name, v| {
                n += 1;
                let ie =
                    crate::ie::by_name(name).unwrap_or_else(|| panic!("{name} not in registry"));
                let ok = match v {
                    IeValue::Unsigned8(_) => ie.data_type == DataType::Unsigned8,
                    IeValue::Unsigned16(_) => ie.data_type == DataType::Unsigned16,
                    IeValue::Unsigned64(_) => ie.data_type == DataType::Unsigned64,
                    IeValue::DateTimeSeconds(_) => ie.data_type == DataType::DateTimeSeconds,
                    IeValue::Ip(IpAddr::V4(_)) => ie.data_type == DataType::Ipv4Address,
                    IeValue::Ip(IpAddr::V6(_)) => ie.data_type == DataType::Ipv6Address,
                    IeValue::String(_) => ie.data_type == DataType::String,
                };
                assert!(ok, "{name}: {v:?} vs {:?}", ie.data_type);
            });
            let mut all = Vec::new();
            r.visit_all(&i, |name, _| all.push(name));
            assert_eq!(all.len(), 34 + 6 + 2 + 1, "visit_all is the fixed list");
            let mut none = Vec::new();
            FlowRecord {
                ingress_policy: PolicyFields::default(),
                ..r
            }
            .visit_all(&i, |name, _| none.push(name));
            assert_eq!(all, none);
            // The reference's 34 IEs less the other family's source, destination and ClusterIP,
            // + 2×3 policy fields + 2 label sets + clusterId.
            assert_eq!(n, 34 - 3 + 6 + 2 + 1);
        }
    }
}
