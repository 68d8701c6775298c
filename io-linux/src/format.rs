//! Text form of an entry, laid out like `conntrack -L -o extended` so the two can be read side by
//! side (and compared in tests). `delta-time=` appears when timestamps are on, as in conntrack.
//! Differences: `use=` is not printed (flowlens does not keep the
//! kernel's reference count), labels print as a hex bitmap, and `id=` only on request (as
//! conntrack's `-o id`).

use std::fmt;

use std::time::{SystemTime, UNIX_EPOCH};

use flowcore::model::{ConntrackEntry, ConntrackStatus, Timestamp, Tuple};

/// `Display`s an entry as `conntrack -L -o extended` does.
pub struct Extended<'a> {
    pub entry: &'a ConntrackEntry,
    /// Append ` id=N` (conntrack's `-o extended,id`).
    pub with_id: bool,
}

impl<'a> Extended<'a> {
    pub fn new(entry: &'a ConntrackEntry) -> Self {
        Extended {
            entry,
            with_id: false,
        }
    }
}

/// conntrack's protocol name for an IANA protocol number.
pub fn proto_name(p: u8) -> &'static str {
    match p {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        33 => "dccp",
        47 => "gre",
        58 => "icmpv6",
        132 => "sctp",
        136 => "udplite",
        _ => "unknown",
    }
}

impl fmt::Display for Extended<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = self.entry;
        let (l3, l3num) = if e.orig.src.is_ipv4() {
            ("ipv4", 2)
        } else {
            ("ipv6", 10)
        };
        write!(
            f,
            "{l3:<8} {l3num} {:<8} {} {} ",
            proto_name(e.orig.proto),
            e.orig.proto,
            e.timeout
        )?;
        if let Some(s) = e.tcp_state {
            write!(f, "{} ", s.name())?;
        }
        tuple(f, &e.orig)?;
        if let Some(c) = e.orig_counters {
            write!(f, "packets={} bytes={} ", c.packets, c.bytes)?;
        }
        if !e.status.has(ConntrackStatus::SEEN_REPLY) {
            f.write_str("[UNREPLIED] ")?;
        }
        tuple(f, &e.reply)?;
        if let Some(c) = e.reply_counters {
            write!(f, "packets={} bytes={} ", c.packets, c.bytes)?;
        }
        if e.status.has(ConntrackStatus::ASSURED) {
            f.write_str("[ASSURED] ")?;
        }
        write!(f, "mark={}", e.mark)?;
        if e.zone != 0 {
            write!(f, " zone={}", e.zone)?;
        }
        if let Some(start) = e.start {
            // As conntrack: seconds since the start, up to the stop for an ended connection.
            let end = e.stop.unwrap_or_else(now);
            write!(f, " delta-time={}", end.saturating_since(start).as_secs())?;
        }
        if e.labels != 0 {
            write!(f, " labels=0x{:x}", e.labels)?;
        }
        if self.with_id {
            write!(f, " id={}", e.id)?;
        }
        Ok(())
    }
}

fn now() -> Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn tuple(f: &mut fmt::Formatter<'_>, t: &Tuple) -> fmt::Result {
    write!(f, "src={} dst={} ", t.src, t.dst)?;
    match t.proto {
        1 | 58 => write!(
            f,
            "type={} code={} id={} ",
            t.dst_port >> 8,
            t.dst_port & 0xff,
            t.src_port
        ),
        6 | 17 | 33 | 132 | 136 => write!(f, "sport={} dport={} ", t.src_port, t.dst_port),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use flowcore::model::{Counters, TcpState};

    use super::*;

    #[test]
    fn tcp_line_matches_conntrack_layout() {
        let a = "10.0.0.1".parse().unwrap();
        let b = "10.0.0.2".parse().unwrap();
        let e = ConntrackEntry {
            orig: Tuple {
                src: a,
                dst: b,
                src_port: 1000,
                dst_port: 80,
                proto: 6,
            },
            reply: Tuple {
                src: b,
                dst: a,
                src_port: 80,
                dst_port: 1000,
                proto: 6,
            },
            timeout: 99,
            tcp_state: Some(TcpState::Established),
            status: ConntrackStatus(ConntrackStatus::SEEN_REPLY | ConntrackStatus::ASSURED),
            orig_counters: Some(Counters {
                packets: 3,
                bytes: 180,
            }),
            reply_counters: Some(Counters {
                packets: 2,
                bytes: 120,
            }),
            zone: 5,
            ..Default::default()
        };
        assert_eq!(
            Extended::new(&e).to_string(),
            "ipv4     2 tcp      6 99 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1000 dport=80 \
             packets=3 bytes=180 src=10.0.0.2 dst=10.0.0.1 sport=80 dport=1000 packets=2 bytes=120 \
             [ASSURED] mark=0 zone=5"
        );
    }

    #[test]
    fn icmp_unreplied_line() {
        let a = "10.0.0.1".parse().unwrap();
        let b = "10.0.0.2".parse().unwrap();
        let e = ConntrackEntry {
            orig: Tuple {
                src: a,
                dst: b,
                src_port: 77,
                dst_port: 8 << 8,
                proto: 1,
            },
            reply: Tuple {
                src: b,
                dst: a,
                src_port: 77,
                dst_port: 0,
                proto: 1,
            },
            timeout: 29,
            ..Default::default()
        };
        assert_eq!(
            Extended::new(&e).to_string(),
            "ipv4     2 icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=77 [UNREPLIED] \
             src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=77 mark=0"
        );
    }
}
