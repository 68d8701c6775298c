//! Flow records in flowlens's own layouts with every value chosen by the caller: the agent layout
//! ([`Layout::AgentV4`], what an agent sends the aggregator) for the well-behaved exporter and
//! the attackers that pose as agents, the aggregated layout ([`Layout::AggregatedV4`]) for those
//! that talk to the collector directly. Written through flowcore's [`Encoder`], so the bytes are
//! exactly what a real exporter would send; the names may be anything (that is the point).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::SystemTime;

use flowcore::ie::DataType;
use flowcore::ipfix::{EncodeError, Encoder, EncoderConfig, Layout};
use flowcore::model::Timestamp;

/// Packet and octet counters, both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    pub packets: u64,
    pub octets: u64,
    pub rev_packets: u64,
    pub rev_octets: u64,
}

impl Counters {
    pub fn minus(self, o: Counters) -> Counters {
        Counters {
            packets: self.packets - o.packets,
            octets: self.octets - o.octets,
            rev_packets: self.rev_packets - o.rev_packets,
            rev_octets: self.rev_octets - o.rev_octets,
        }
    }

    fn get(self, i: u8) -> u64 {
        [self.packets, self.octets, self.rev_packets, self.rev_octets][i as usize]
    }
}

/// One flow record's values.
#[derive(Clone, Debug)]
pub struct Rec<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub start_secs: u64,
    pub end_secs: u64,
    /// 1 idle, 2 active, 3 end of flow, …
    pub end_reason: u8,
    /// 1 IntraNode, 2 InterNode, 3 ToExternal, 4 FromExternal.
    pub flow_type: u8,
    pub totals: Counters,
    pub deltas: Counters,
    pub src_pod: &'a str,
    pub src_ns: &'a str,
    pub src_node: &'a str,
    pub dst_pod: &'a str,
    pub dst_ns: &'a str,
    pub dst_node: &'a str,
    pub tcp_state: &'a str,
    pub src_labels: &'a str,
    pub dst_labels: &'a str,
}

impl Default for Rec<'_> {
    fn default() -> Self {
        let now = now_secs();
        Rec {
            src: Ipv4Addr::new(10, 66, 0, 1),
            dst: Ipv4Addr::new(10, 66, 0, 2),
            sport: 40000,
            dport: 8080,
            proto: 6,
            start_secs: now,
            end_secs: now,
            end_reason: 2,
            flow_type: 1,
            totals: Counters::default(),
            deltas: Counters::default(),
            src_pod: "",
            src_ns: "",
            src_node: "",
            dst_pod: "",
            dst_ns: "",
            dst_node: "",
            tcp_state: "ESTABLISHED",
            src_labels: "",
            dst_labels: "",
        }
    }
}

/// What goes into one field of a layout.
#[derive(Clone, Copy, Debug)]
enum Slot {
    Start,
    End,
    Reason,
    Sport,
    Dport,
    Proto,
    Total(u8),
    Delta(u8),
    Src,
    Dst,
    SrcPod,
    SrcNs,
    SrcNode,
    DstPod,
    DstNs,
    DstNode,
    TcpState,
    FlowType,
    SrcLabels,
    DstLabels,
    EmptyString,
    Zero,
    ZeroV4,
    ZeroV6,
}

/// Which counter a counter IE name is: packets 0, octets 1, reverse packets 2, reverse octets 3.
fn counter_index(name: &str) -> u8 {
    let rev = name.starts_with("reverse");
    let oct = name.contains("ctet");
    (rev as u8) * 2 + oct as u8
}

fn slot(name: &str, t: DataType) -> Slot {
    match name {
        "flowStartSeconds" => Slot::Start,
        "flowEndSeconds" | "flowEndSecondsFromSourceNode" => Slot::End,
        "flowEndReason" => Slot::Reason,
        "sourceTransportPort" => Slot::Sport,
        "destinationTransportPort" => Slot::Dport,
        "protocolIdentifier" => Slot::Proto,
        "sourceIPv4Address" => Slot::Src,
        "destinationIPv4Address" => Slot::Dst,
        "sourcePodName" => Slot::SrcPod,
        "sourcePodNamespace" => Slot::SrcNs,
        "sourceNodeName" => Slot::SrcNode,
        "destinationPodName" => Slot::DstPod,
        "destinationPodNamespace" => Slot::DstNs,
        "destinationNodeName" => Slot::DstNode,
        "tcpState" => Slot::TcpState,
        "flowType" => Slot::FlowType,
        "sourcePodLabels" => Slot::SrcLabels,
        "destinationPodLabels" => Slot::DstLabels,
        // The flow's own counters, and the source Node's in the aggregated layout (an intra-Node
        // flow is seen by its one Node).
        n if (n.ends_with("TotalCount") || n.ends_with("TotalCountFromSourceNode")) => {
            Slot::Total(counter_index(n))
        }
        n if (n.ends_with("DeltaCount") || n.ends_with("DeltaCountFromSourceNode")) => {
            Slot::Delta(counter_index(n))
        }
        _ => match t {
            DataType::String => Slot::EmptyString,
            DataType::Ipv4Address => Slot::ZeroV4,
            DataType::Ipv6Address => Slot::ZeroV6,
            DataType::DateTimeSeconds => Slot::End,
            _ => Slot::Zero,
        },
    }
}

fn slots(layout: Layout) -> &'static [Slot] {
    static CACHE: [OnceLock<Vec<Slot>>; 4] = [const { OnceLock::new() }; 4];
    CACHE[layout as usize].get_or_init(|| {
        layout
            .fields()
            .iter()
            .map(|f| slot(f.name.unwrap_or_default(), f.data_type))
            .collect()
    })
}

impl Rec<'_> {
    /// Writes the record into `enc`, whose templates include `layout`'s (IPv4 layouts only).
    pub fn write(&self, enc: &mut Encoder, layout: Layout) -> Result<(), EncodeError> {
        let now = Timestamp::from_secs(self.end_secs);
        let mut w = enc.record(now, layout.template_id())?;
        for s in slots(layout) {
            match *s {
                Slot::Start => w.time(Timestamp::from_secs(self.start_secs)),
                Slot::End => w.time(Timestamp::from_secs(self.end_secs)),
                Slot::Reason => w.uint(self.end_reason.into()),
                Slot::Sport => w.uint(self.sport.into()),
                Slot::Dport => w.uint(self.dport.into()),
                Slot::Proto => w.uint(self.proto.into()),
                Slot::Total(i) => w.uint(self.totals.get(i)),
                Slot::Delta(i) => w.uint(self.deltas.get(i)),
                Slot::Src => w.ip(IpAddr::V4(self.src)),
                Slot::Dst => w.ip(IpAddr::V4(self.dst)),
                Slot::SrcPod => w.string(self.src_pod),
                Slot::SrcNs => w.string(self.src_ns),
                Slot::SrcNode => w.string(self.src_node),
                Slot::DstPod => w.string(self.dst_pod),
                Slot::DstNs => w.string(self.dst_ns),
                Slot::DstNode => w.string(self.dst_node),
                Slot::TcpState => w.string(self.tcp_state),
                Slot::FlowType => w.uint(self.flow_type.into()),
                Slot::SrcLabels => w.string(self.src_labels),
                Slot::DstLabels => w.string(self.dst_labels),
                Slot::EmptyString => w.string(""),
                Slot::Zero => w.uint(0),
                Slot::ZeroV4 => w.ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                Slot::ZeroV6 => w.ip(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            };
        }
        w.finish()
    }
}

/// A stream (TCP/TLS) encoder for observation domain `domain` with `layout`'s template.
pub fn stream_encoder(domain: u32, layout: Layout) -> Encoder {
    let mut enc = Encoder::new(EncoderConfig::stream(domain)).expect("encoder config");
    enc.add_template(layout.template_id(), layout.fields())
        .expect("layout template");
    enc
}

/// A datagram (UDP) encoder: 1500-byte path, templates refreshed every second.
pub fn datagram_encoder(domain: u32, layout: Layout) -> Encoder {
    let mut enc = Encoder::new(EncoderConfig::datagram(
        domain,
        1500,
        std::time::Duration::from_secs(1),
    ))
    .expect("encoder config");
    enc.add_template(layout.template_id(), layout.fields())
        .expect("layout template");
    enc
}

/// The wall clock, whole seconds.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The wall clock as a flowcore timestamp.
pub fn now() -> Timestamp {
    Timestamp::from_secs(now_secs())
}

/// A small deterministic generator (xorshift64*) for attack contents: sizes and names vary, a
/// seed reproduces them.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }
}

/// A unique name of exactly `len` bytes (at least 13): `prefix` + a counter + padding, lowercase
/// letters and digits, so it is also a valid DNS label shape where a name must be one.
pub fn unique_name(prefix: &str, n: u64, len: usize) -> String {
    let mut s = format!("{prefix}{n:012x}");
    let pad = len.saturating_sub(s.len());
    s.extend(std::iter::repeat_n('x', pad));
    s
}

/// Unique Pod-labels JSON of exactly `len` bytes (at least 20).
pub fn unique_labels(n: u64, len: usize) -> String {
    let head = format!("{{\"app\":\"a{n:012x}\",\"pad\":\"");
    let pad = len.saturating_sub(head.len() + 2);
    let mut s = head;
    s.extend(std::iter::repeat_n('v', pad));
    s.push_str("\"}");
    s
}
