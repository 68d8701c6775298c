//! A conntrack entry as the kernel reports it, in fixed-size form (no heap), so io-linux can parse
//! a netlink dump straight into a reused buffer of these.

use std::net::{IpAddr, Ipv4Addr};

use super::Timestamp;

/// One direction of a conntrack entry. For ICMP, `src_port` holds the echo id and `dst_port`
/// holds `type << 8 | code`, as conntrack itself keys them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IANA protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP …).
    pub proto: u8,
}

impl Default for Tuple {
    fn default() -> Self {
        Tuple {
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            src_port: 0,
            dst_port: 0,
            proto: 0,
        }
    }
}

/// Packet and byte counters of one direction (present only with `nf_conntrack_acct=1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

/// TCP conntrack states, numbered as the kernel numbers them (`enum tcp_conntrack`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    #[default]
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait = 4,
    CloseWait = 5,
    LastAck = 6,
    TimeWait = 7,
    Close = 8,
    /// Kernel value 9 (`TCP_CONNTRACK_SYN_SENT2`, formerly LISTEN).
    SynSent2 = 9,
}

impl TcpState {
    pub fn from_kernel(v: u8) -> Option<TcpState> {
        use TcpState::*;
        Some(match v {
            0 => None,
            1 => SynSent,
            2 => SynRecv,
            3 => Established,
            4 => FinWait,
            5 => CloseWait,
            6 => LastAck,
            7 => TimeWait,
            8 => Close,
            9 => SynSent2,
            _ => return Option::None,
        })
    }

    /// The kernel's name, as `conntrack -L` prints it and as the `tcpState` IE carries it.
    pub fn name(self) -> &'static str {
        use TcpState::*;
        match self {
            None => "NONE",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            Established => "ESTABLISHED",
            FinWait => "FIN_WAIT",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            SynSent2 => "SYN_SENT2",
        }
    }

    pub fn from_name(s: &str) -> Option<TcpState> {
        TcpState::from_name_bytes(s.as_bytes())
    }

    /// [`TcpState::from_name`] of bytes off the wire (runs per record in the aggregator).
    pub fn from_name_bytes(b: &[u8]) -> Option<TcpState> {
        use TcpState::*;
        Some(match b {
            b"NONE" => None,
            b"SYN_SENT" => SynSent,
            b"SYN_RECV" => SynRecv,
            b"ESTABLISHED" => Established,
            b"FIN_WAIT" => FinWait,
            b"CLOSE_WAIT" => CloseWait,
            b"LAST_ACK" => LastAck,
            b"TIME_WAIT" => TimeWait,
            b"CLOSE" => Close,
            b"SYN_SENT2" => SynSent2,
            _ => return Option::None,
        })
    }

    /// The connection is over from TCP's point of view: the exporter sends its end-of-flow record.
    pub fn is_closed(self) -> bool {
        matches!(self, TcpState::TimeWait | TcpState::Close)
    }
}

/// `enum ip_conntrack_status` bits (include/uapi/linux/netfilter/nf_conntrack_common.h).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConntrackStatus(pub u32);

impl ConntrackStatus {
    pub const EXPECTED: u32 = 1 << 0;
    pub const SEEN_REPLY: u32 = 1 << 1;
    pub const ASSURED: u32 = 1 << 2;
    pub const CONFIRMED: u32 = 1 << 3;
    pub const SRC_NAT: u32 = 1 << 4;
    pub const DST_NAT: u32 = 1 << 5;
    pub const DYING: u32 = 1 << 9;
    pub const UNTRACKED: u32 = 1 << 12;

    pub fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }
}

/// One conntrack entry, everything flowlens reads from the kernel. `Copy` and heap-free.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConntrackEntry {
    /// Original direction: as the first packet was seen (before DNAT).
    pub orig: Tuple,
    /// Reply direction: its source is the real endpoint after DNAT.
    pub reply: Tuple,
    pub zone: u16,
    pub mark: u32,
    /// `CTA_LABELS`, 128 bits.
    pub labels: u128,
    pub status: ConntrackStatus,
    /// Seconds until the kernel expires the entry.
    pub timeout: u32,
    /// Kernel conntrack id; with `start` it tells a reused 5-tuple from the same connection.
    pub id: u32,
    pub orig_counters: Option<Counters>,
    pub reply_counters: Option<Counters>,
    /// Present only with `nf_conntrack_timestamp=1`.
    pub start: Option<Timestamp>,
    pub stop: Option<Timestamp>,
    /// `Some` for TCP entries.
    pub tcp_state: Option<TcpState>,
}
