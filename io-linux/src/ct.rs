//! ctnetlink: message types, `CTA_*` attributes, and the two directions of translation between
//! a ctnetlink message and `flowcore::model::ConntrackEntry`.
//!
//! Numbers follow include/uapi/linux/netfilter/nfnetlink_conntrack.h. Parsing never allocates and
//! never panics: unknown attributes are skipped, short ones are ignored, and a message without an
//! original tuple is rejected as a whole (the caller counts it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowcore::model::{ConntrackEntry, ConntrackStatus, Counters, TcpState, Timestamp, Tuple};

use crate::nl::{Attrs, MsgBuf, NFGENMSG_LEN, be_u16, be_u32, be_u64};

pub(crate) const NFNL_SUBSYS_CTNETLINK: u16 = 1;
pub(crate) const IPCTNL_MSG_CT_NEW: u16 = 0;
pub(crate) const IPCTNL_MSG_CT_GET: u16 = 1;
pub(crate) const IPCTNL_MSG_CT_DELETE: u16 = 2;
pub(crate) const IPCTNL_MSG_CT_GET_STATS: u16 = 5;

/// nfnetlink message type of a ctnetlink message.
pub(crate) const fn ct_msg_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | msg
}

// enum ctattr_type
pub(crate) const CTA_TUPLE_ORIG: u16 = 1;
pub(crate) const CTA_TUPLE_REPLY: u16 = 2;
pub(crate) const CTA_STATUS: u16 = 3;
pub(crate) const CTA_PROTOINFO: u16 = 4;
pub(crate) const CTA_TIMEOUT: u16 = 7;
pub(crate) const CTA_MARK: u16 = 8;
pub(crate) const CTA_COUNTERS_ORIG: u16 = 9;
pub(crate) const CTA_COUNTERS_REPLY: u16 = 10;
pub(crate) const CTA_ID: u16 = 12;
pub(crate) const CTA_ZONE: u16 = 18;
pub(crate) const CTA_TIMESTAMP: u16 = 20;
pub(crate) const CTA_MARK_MASK: u16 = 21;
pub(crate) const CTA_LABELS: u16 = 22;

// enum ctattr_tuple
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;

// enum ctattr_ip
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;

// enum ctattr_l4proto
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

// enum ctattr_protoinfo / ctattr_protoinfo_tcp
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;

// enum ctattr_counters
const CTA_COUNTERS_PACKETS: u16 = 1;
const CTA_COUNTERS_BYTES: u16 = 2;
const CTA_COUNTERS32_PACKETS: u16 = 3;
const CTA_COUNTERS32_BYTES: u16 = 4;

// enum ctattr_tstamp
const CTA_TIMESTAMP_START: u16 = 1;
const CTA_TIMESTAMP_STOP: u16 = 2;

pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;

/// Why a ctnetlink message could not become an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    Truncated,
    NoOrigTuple,
}

/// Parses the payload of a ctnetlink `IPCTNL_MSG_CT_NEW`/`DELETE` message (after the netlink
/// header, starting at `nfgenmsg`) into `out`. `out` is overwritten entirely.
pub(crate) fn parse_entry(payload: &[u8], out: &mut ConntrackEntry) -> Result<(), ParseError> {
    let attrs = payload.get(NFGENMSG_LEN..).ok_or(ParseError::Truncated)?;
    *out = ConntrackEntry::default();
    let mut have_orig = false;
    for a in Attrs::new(attrs) {
        let (ty, v) = a.map_err(|()| ParseError::Truncated)?;
        match ty {
            CTA_TUPLE_ORIG => {
                parse_tuple(v, &mut out.orig)?;
                have_orig = true;
            }
            CTA_TUPLE_REPLY => parse_tuple(v, &mut out.reply)?,
            CTA_STATUS => out.status = ConntrackStatus(be_u32(v).unwrap_or(0)),
            CTA_PROTOINFO => out.tcp_state = parse_protoinfo(v),
            CTA_TIMEOUT => out.timeout = be_u32(v).unwrap_or(0),
            CTA_MARK => out.mark = be_u32(v).unwrap_or(0),
            CTA_COUNTERS_ORIG => out.orig_counters = parse_counters(v),
            CTA_COUNTERS_REPLY => out.reply_counters = parse_counters(v),
            CTA_ID => out.id = be_u32(v).unwrap_or(0),
            CTA_ZONE => out.zone = be_u16(v).unwrap_or(0),
            CTA_TIMESTAMP => parse_timestamp(v, out),
            CTA_LABELS => out.labels = parse_labels(v),
            _ => {}
        }
    }
    if !have_orig {
        return Err(ParseError::NoOrigTuple);
    }
    // The kernel omits CTA_PROTOINFO in some events; a TCP entry still has a state to report.
    if out.orig.proto == IPPROTO_TCP && out.tcp_state.is_none() {
        out.tcp_state = Some(TcpState::None);
    }
    Ok(())
}

fn parse_tuple(buf: &[u8], t: &mut Tuple) -> Result<(), ParseError> {
    let mut icmp_type = 0u8;
    let mut icmp_code = 0u8;
    let mut is_icmp = false;
    for a in Attrs::new(buf) {
        let (ty, v) = a.map_err(|()| ParseError::Truncated)?;
        match ty {
            CTA_TUPLE_IP => {
                for a in Attrs::new(v) {
                    let (ty, v) = a.map_err(|()| ParseError::Truncated)?;
                    match ty {
                        CTA_IP_V4_SRC => t.src = v4(v)?,
                        CTA_IP_V4_DST => t.dst = v4(v)?,
                        CTA_IP_V6_SRC => t.src = v6(v)?,
                        CTA_IP_V6_DST => t.dst = v6(v)?,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in Attrs::new(v) {
                    let (ty, v) = a.map_err(|()| ParseError::Truncated)?;
                    match ty {
                        CTA_PROTO_NUM => t.proto = v.first().copied().unwrap_or(0),
                        CTA_PROTO_SRC_PORT => t.src_port = be_u16(v).unwrap_or(0),
                        CTA_PROTO_DST_PORT => t.dst_port = be_u16(v).unwrap_or(0),
                        CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => {
                            t.src_port = be_u16(v).unwrap_or(0);
                            is_icmp = true;
                        }
                        CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => {
                            icmp_type = v.first().copied().unwrap_or(0);
                            is_icmp = true;
                        }
                        CTA_PROTO_ICMP_CODE | CTA_PROTO_ICMPV6_CODE => {
                            icmp_code = v.first().copied().unwrap_or(0);
                            is_icmp = true;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if is_icmp {
        // flowcore's convention, the same key conntrack uses: id as source, type/code as dest.
        t.dst_port = u16::from(icmp_type) << 8 | u16::from(icmp_code);
    }
    Ok(())
}

fn v4(v: &[u8]) -> Result<IpAddr, ParseError> {
    let o: [u8; 4] = v
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or(ParseError::Truncated)?;
    Ok(IpAddr::V4(Ipv4Addr::from(o)))
}

fn v6(v: &[u8]) -> Result<IpAddr, ParseError> {
    let o: [u8; 16] = v
        .get(..16)
        .and_then(|s| s.try_into().ok())
        .ok_or(ParseError::Truncated)?;
    Ok(IpAddr::V6(Ipv6Addr::from(o)))
}

fn parse_protoinfo(buf: &[u8]) -> Option<TcpState> {
    for (ty, v) in Attrs::new(buf).map_while(Result::ok) {
        if ty == CTA_PROTOINFO_TCP {
            for (ty, v) in Attrs::new(v).map_while(Result::ok) {
                if ty == CTA_PROTOINFO_TCP_STATE {
                    return v.first().and_then(|&s| TcpState::from_kernel(s));
                }
            }
        }
    }
    None
}

fn parse_counters(buf: &[u8]) -> Option<Counters> {
    let mut c = Counters::default();
    for (ty, v) in Attrs::new(buf).map_while(Result::ok) {
        match ty {
            CTA_COUNTERS_PACKETS => c.packets = be_u64(v).unwrap_or(0),
            CTA_COUNTERS_BYTES => c.bytes = be_u64(v).unwrap_or(0),
            CTA_COUNTERS32_PACKETS => c.packets = be_u32(v).map_or(0, u64::from),
            CTA_COUNTERS32_BYTES => c.bytes = be_u32(v).map_or(0, u64::from),
            _ => {}
        }
    }
    Some(c)
}

fn parse_timestamp(buf: &[u8], out: &mut ConntrackEntry) {
    for (ty, v) in Attrs::new(buf).map_while(Result::ok) {
        match ty {
            // The kernel stamps with ktime_get_real_ns(): wall-clock nanoseconds since the epoch.
            CTA_TIMESTAMP_START => out.start = be_u64(v).map(Timestamp::from_nanos),
            CTA_TIMESTAMP_STOP => out.stop = be_u64(v).map(Timestamp::from_nanos),
            _ => {}
        }
    }
}

/// `CTA_LABELS` is the kernel's label bitmap (an array of host-endian `unsigned long`); bit n of
/// the bitmap becomes bit n of the `u128`.
fn parse_labels(v: &[u8]) -> u128 {
    let mut out = 0u128;
    for (i, w) in v.chunks_exact(8).take(2).enumerate() {
        let w = u64::from_ne_bytes(w.try_into().unwrap_or([0; 8]));
        out |= u128::from(w) << (64 * i);
    }
    out
}

/// Appends an `IPCTNL_MSG_CT_NEW` creating `e` (tuples, timeout, mark, zone, TCP state and the
/// SEEN_REPLY/ASSURED status bits; other bits are the kernel's to set).
pub(crate) fn encode_new(m: &mut MsgBuf, e: &ConntrackEntry, seq: u32, flags: u16) {
    let family = if e.orig.src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    m.begin_msg(ct_msg_type(IPCTNL_MSG_CT_NEW), flags, seq, family);
    encode_tuple(m, CTA_TUPLE_ORIG, &e.orig);
    encode_tuple(m, CTA_TUPLE_REPLY, &e.reply);
    m.attr_be32(CTA_TIMEOUT, e.timeout);
    let status = e.status.0 & (ConntrackStatus::SEEN_REPLY | ConntrackStatus::ASSURED);
    if status != 0 {
        // The kernel confirms the new entry before applying CTA_STATUS and answers EBUSY to a
        // status that would clear CONFIRMED, so it has to be part of what we send.
        m.attr_be32(CTA_STATUS, status | ConntrackStatus::CONFIRMED);
    }
    if e.mark != 0 {
        m.attr_be32(CTA_MARK, e.mark);
    }
    if e.zone != 0 {
        m.attr_be16(CTA_ZONE, e.zone);
    }
    if let Some(s) = e.tcp_state {
        m.begin_nest(CTA_PROTOINFO);
        m.begin_nest(CTA_PROTOINFO_TCP);
        m.attr_u8(CTA_PROTOINFO_TCP_STATE, s as u8);
        m.end_nest();
        m.end_nest();
    }
    m.end_msg();
}

/// Appends an `IPCTNL_MSG_CT_DELETE` for the entry whose original tuple is `t` in `zone`.
pub(crate) fn encode_delete(m: &mut MsgBuf, t: &Tuple, zone: u16, seq: u32, flags: u16) {
    let family = if t.src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    } as u8;
    m.begin_msg(ct_msg_type(IPCTNL_MSG_CT_DELETE), flags, seq, family);
    encode_tuple(m, CTA_TUPLE_ORIG, t);
    if zone != 0 {
        m.attr_be16(CTA_ZONE, zone);
    }
    m.end_msg();
}

fn encode_tuple(m: &mut MsgBuf, ty: u16, t: &Tuple) {
    m.begin_nest(ty);
    m.begin_nest(CTA_TUPLE_IP);
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            m.attr(CTA_IP_V4_SRC, &s.octets());
            m.attr(CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            m.attr(CTA_IP_V6_SRC, &to_v6(s).octets());
            m.attr(CTA_IP_V6_DST, &to_v6(d).octets());
        }
    }
    m.end_nest();
    m.begin_nest(CTA_TUPLE_PROTO);
    m.attr_u8(CTA_PROTO_NUM, t.proto);
    match t.proto {
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let v6 = t.proto == IPPROTO_ICMPV6;
            let (id, ty, code) = if v6 {
                (
                    CTA_PROTO_ICMPV6_ID,
                    CTA_PROTO_ICMPV6_TYPE,
                    CTA_PROTO_ICMPV6_CODE,
                )
            } else {
                (CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE)
            };
            m.attr_be16(id, t.src_port);
            m.attr_u8(ty, (t.dst_port >> 8) as u8);
            m.attr_u8(code, t.dst_port as u8);
        }
        _ => {
            m.attr_be16(CTA_PROTO_SRC_PORT, t.src_port);
            m.attr_be16(CTA_PROTO_DST_PORT, t.dst_port);
        }
    }
    m.end_nest();
    m.end_nest();
}

fn to_v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V4(v) => v.to_ipv6_mapped(),
        IpAddr::V6(v) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::{Msgs, NLM_F_REQUEST};

    fn sample(proto: u8, v6: bool) -> ConntrackEntry {
        let (a, b): (IpAddr, IpAddr) = if v6 {
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
        } else {
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())
        };
        let (sp, dp, rsp, rdp) = if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
            (77, 8 << 8, 77, 0)
        } else {
            (1000, 80, 80, 1000)
        };
        ConntrackEntry {
            orig: Tuple {
                src: a,
                dst: b,
                src_port: sp,
                dst_port: dp,
                proto,
            },
            reply: Tuple {
                src: b,
                dst: a,
                src_port: rsp,
                dst_port: rdp,
                proto,
            },
            zone: 3,
            mark: 9,
            timeout: 100,
            status: ConntrackStatus(
                ConntrackStatus::SEEN_REPLY | ConntrackStatus::ASSURED | ConntrackStatus::CONFIRMED,
            ),
            tcp_state: (proto == IPPROTO_TCP).then_some(TcpState::Established),
            ..Default::default()
        }
    }

    #[test]
    fn encode_then_parse_round_trips_the_fields_new_carries() {
        for (proto, v6) in [(6, false), (17, false), (1, false), (6, true), (58, true)] {
            let e = sample(proto, v6);
            let mut m = MsgBuf::default();
            encode_new(&mut m, &e, 1, NLM_F_REQUEST);
            let msg = Msgs::new(&m.buf).next().unwrap().unwrap();
            let mut got = ConntrackEntry::default();
            parse_entry(msg.payload, &mut got).unwrap();
            assert_eq!(got, e, "proto {proto} v6 {v6}");
        }
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let e = sample(6, true);
        let mut m = MsgBuf::default();
        encode_new(&mut m, &e, 1, NLM_F_REQUEST);
        let payload = &m.buf[16..];
        let mut out = ConntrackEntry::default();
        for cut in 0..payload.len() {
            let _ = parse_entry(&payload[..cut], &mut out);
        }
        assert_eq!(
            parse_entry(&payload[..4], &mut out),
            Err(ParseError::NoOrigTuple)
        );
    }

    #[test]
    fn unknown_attributes_are_skipped() {
        let e = sample(17, false);
        let mut m = MsgBuf::default();
        m.begin_msg(ct_msg_type(IPCTNL_MSG_CT_NEW), 0, 1, 2);
        m.attr_be32(999, 5);
        m.end_msg();
        let mut m2 = MsgBuf::default();
        encode_new(&mut m2, &e, 1, 0);
        // splice the unknown attribute in front of the real ones
        let mut buf = m.buf.clone();
        buf.extend_from_slice(&m2.buf[20..]);
        let len = buf.len() as u32;
        buf[..4].copy_from_slice(&len.to_ne_bytes());
        let msg = Msgs::new(&buf).next().unwrap().unwrap();
        let mut got = ConntrackEntry::default();
        parse_entry(msg.payload, &mut got).unwrap();
        assert_eq!(got, e);
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::nl::Msgs;

    proptest! {
        /// Arbitrary bytes from "the kernel" never panic the parser.
        #[test]
        fn arbitrary_payload_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut out = ConntrackEntry::default();
            let _ = parse_entry(&bytes, &mut out);
            for m in Msgs::new(&bytes).flatten() {
                let _ = parse_entry(m.payload, &mut out);
                let _ = m.error_code();
            }
        }

        /// A real message with bytes flipped never panics either (structure mostly intact, so
        /// the nested parsers are reached).
        #[test]
        fn corrupted_message_never_panics(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..8)) {
            let e = ConntrackEntry {
                orig: Tuple { src: "fd00::1".parse().unwrap(), dst: "fd00::2".parse().unwrap(), src_port: 1, dst_port: 2, proto: 6 },
                tcp_state: Some(TcpState::Established),
                ..Default::default()
            };
            let mut m = MsgBuf::default();
            encode_new(&mut m, &e, 1, 0);
            let mut b = m.buf.clone();
            for (i, v) in flips {
                let n = b.len();
                b[i % n] = v;
            }
            let mut out = ConntrackEntry::default();
            for m in Msgs::new(&b).flatten() {
                let _ = parse_entry(m.payload, &mut out);
            }
            let _ = parse_entry(b.get(16..).unwrap_or(&[]), &mut out);
        }
    }
}
