//! Collector addresses in Antrea's `HOST:[PORT][:PROTO]` form (`flowCollectorAddr`,
//! `externalFlowCollectorAddr`), and the transport protocol names (`aggregatorTransportProtocol`).
//!
//! Accepted forms: `host`, `host:`, `host:port`, `host::proto`, `host:port:proto`, where `host` is
//! an IPv4 address, an IPv6 address in brackets (`[fd00::1]:4739:tls`), or a DNS name such as
//! `flow-aggregator.flow-aggregator.svc`; an empty or absent port is 4739, the IANA IPFIX port;
//! `proto` is `tls`, `tcp` or `udp` in any case (Antrea's docs write `UDP`).
//!
//! ## PROTO and `enableTLSToFlowAggregator`
//!
//! Antrea's agent default is `flow-aggregator.flow-aggregator.svc:4739:tcp` with
//! `enableTLSToFlowAggregator: true`, and it then speaks TLS: the flag layers TLS over TCP. flowlens
//! keeps that meaning and adds `tls` as an explicit spelling ([`CollectorAddr::agent_transport`]):
//!
//! | PROTO        | enableTLS true | enableTLS false |
//! |--------------|----------------|-----------------|
//! | none or tcp  | TLS            | TCP             |
//! | tls          | TLS            | error           |
//! | udp          | error          | UDP             |
//!
//! The two errors are contradictions that would otherwise silently drop the encryption the
//! operator asked for (`udp`: flowlens has no DTLS) or add one they turned off; the message names
//! both keys. The aggregator's `externalFlowCollectorAddr` has no such flag: an absent PROTO
//! there is TCP ([`CollectorAddr::transport_or_tcp`]).

use core::fmt;
use core::str::FromStr;
use std::net::{IpAddr, Ipv6Addr};

use crate::ipfix::DEFAULT_PORT;

/// What a user is told a collector address should look like.
pub const COLLECTOR_ADDR_FORM: &str = "HOST:[PORT][:PROTO] with HOST an IPv4 address, a DNS name or an IPv6 address in brackets, PORT 1-65535 (default 4739), PROTO tls, tcp or udp — e.g. flow-aggregator.flow-aggregator.svc:4739:tls or [fd00::1]:4739:tcp";

/// What a user is told a transport protocol should look like.
pub const TRANSPORT_FORM: &str = "one of tls, tcp, udp";

/// The transport an IPFIX session runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Tls,
    Tcp,
    Udp,
}

impl Transport {
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    /// TCP and TLS carry IPFIX as a byte stream; UDP as datagrams with template refresh.
    pub const fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport name that is not tls, tcp or udp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid transport protocol {input:?}: expected {TRANSPORT_FORM}")]
pub struct TransportError {
    pub input: String,
}

impl FromStr for Transport {
    type Err = TransportError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tls" => Ok(Transport::Tls),
            "tcp" => Ok(Transport::Tcp),
            "udp" => Ok(Transport::Udp),
            _ => Err(TransportError {
                input: s.to_owned(),
            }),
        }
    }
}

/// Where a collector is: an address to connect to, or a name to resolve at connect time (and
/// again on every reconnect, so a moved Service is followed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, lower-cased (DNS is case-insensitive), without a trailing dot.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A parsed `HOST:[PORT][:PROTO]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CollectorAddr {
    pub host: Host,
    /// 4739 when the input had none.
    pub port: u16,
    /// `None` when the input named no protocol; see the module docs for what that means.
    pub transport: Option<Transport>,
}

/// A collector address that could not be read, naming the input and the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid collector address {input:?}: {reason}; expected {COLLECTOR_ADDR_FORM}")]
pub struct CollectorAddrError {
    pub input: String,
    pub reason: CollectorAddrErrorReason,
}

/// Why a collector address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectorAddrErrorReason {
    #[error("it is empty")]
    Empty,
    #[error("the host is empty")]
    EmptyHost,
    #[error("{host:?} is not an IPv6 address")]
    BadIpv6 { host: String },
    #[error("an IPv6 address must be written in brackets, as [{host}]")]
    UnbracketedIpv6 { host: String },
    #[error("{host:?} is neither an IPv4 address nor a DNS name")]
    BadHost { host: String },
    #[error("port {port:?} is not a number from 1 to 65535")]
    BadPort { port: String },
    #[error("protocol {proto:?} is not tls, tcp or udp")]
    BadProto { proto: String },
    #[error("unexpected {extra:?} after the address")]
    TrailingText { extra: String },
}

/// `flowCollectorAddr`'s protocol contradicts `enableTLSToFlowAggregator`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportConflict {
    #[error(
        "flowCollectorAddr {addr} asks for tls but enableTLSToFlowAggregator is false; set enableTLSToFlowAggregator: true, or use :tcp for plain TCP"
    )]
    TlsDisabled { addr: String },
    #[error(
        "flowCollectorAddr {addr} asks for udp but enableTLSToFlowAggregator is true, and IPFIX over UDP cannot be encrypted (no DTLS); set enableTLSToFlowAggregator: false, or use :tls"
    )]
    UdpWithTls { addr: String },
}

impl CollectorAddr {
    pub fn new(host: Host, port: u16, transport: Option<Transport>) -> Self {
        CollectorAddr {
            host,
            port,
            transport,
        }
    }

    /// The agent's transport from this address and `enableTLSToFlowAggregator` (table in the
    /// module docs).
    pub fn agent_transport(&self, enable_tls: bool) -> Result<Transport, TransportConflict> {
        match (self.transport, enable_tls) {
            (None | Some(Transport::Tcp), true) | (Some(Transport::Tls), true) => {
                Ok(Transport::Tls)
            }
            (None | Some(Transport::Tcp), false) => Ok(Transport::Tcp),
            (Some(Transport::Udp), false) => Ok(Transport::Udp),
            (Some(Transport::Tls), false) => Err(TransportConflict::TlsDisabled {
                addr: self.to_string(),
            }),
            (Some(Transport::Udp), true) => Err(TransportConflict::UdpWithTls {
                addr: self.to_string(),
            }),
        }
    }

    /// The transport where no TLS flag applies: as written, TCP when absent (Antrea's default).
    pub fn transport_or_tcp(&self) -> Transport {
        self.transport.unwrap_or(Transport::Tcp)
    }

    /// `host:port` for a resolver or `connect` (brackets around IPv6).
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Writes the full form `host:port[:proto]`, which parses back to the same value.
impl fmt::Display for CollectorAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)?;
        if let Some(t) = self.transport {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

impl FromStr for CollectorAddr {
    type Err = CollectorAddrError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse_collector_addr(input)
    }
}

/// Parses `HOST:[PORT][:PROTO]`.
pub fn parse_collector_addr(input: &str) -> Result<CollectorAddr, CollectorAddrError> {
    use CollectorAddrErrorReason as R;
    let err = |reason| CollectorAddrError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err(R::Empty));
    }
    // Split the host off first: an IPv6 host has colons of its own, hence the brackets.
    let (host, rest) = if let Some(after) = s.strip_prefix('[') {
        let Some(end) = after.find(']') else {
            return Err(err(R::BadIpv6 { host: s.to_owned() }));
        };
        let text = &after[..end];
        let ip: Ipv6Addr = text.parse().map_err(|_| {
            err(R::BadIpv6 {
                host: text.to_owned(),
            })
        })?;
        let rest = &after[end + 1..];
        if !rest.is_empty() && !rest.starts_with(':') {
            return Err(err(R::TrailingText {
                extra: rest.to_owned(),
            }));
        }
        (Host::Ip(IpAddr::V6(ip)), rest)
    } else {
        if looks_like_bare_ipv6(s) {
            return Err(err(R::UnbracketedIpv6 { host: s.to_owned() }));
        }
        let end = s.find(':').unwrap_or(s.len());
        let text = &s[..end];
        if text.is_empty() {
            return Err(err(R::EmptyHost));
        }
        let rest = &s[end..];
        (
            parse_host(text).ok_or_else(|| err(R::BadHost { host: text.into() }))?,
            rest,
        )
    };
    // `rest` is empty or `:PORT`, `:PORT:PROTO`, `::PROTO`.
    let mut parts = rest.strip_prefix(':').unwrap_or(rest).splitn(3, ':');
    let port = match parts.next() {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| err(R::BadPort { port: p.to_owned() }))?,
    };
    let transport = match parts.next() {
        None => None,
        Some(p) => Some(p.parse::<Transport>().map_err(|_| {
            err(R::BadProto {
                proto: p.to_owned(),
            })
        })?),
    };
    if let Some(extra) = parts.next() {
        return Err(err(R::TrailingText {
            extra: format!(":{extra}"),
        }));
    }
    Ok(CollectorAddr {
        host,
        port,
        transport,
    })
}

/// An IPv6 address written without brackets, possibly followed by `:PORT` or `:PORT:PROTO`: the
/// colons make it ambiguous, so it gets its own error instead of a confusing port message.
fn looks_like_bare_ipv6(s: &str) -> bool {
    let mut candidate = s;
    for _ in 0..3 {
        if candidate.parse::<Ipv6Addr>().is_ok() {
            return true;
        }
        match candidate.rfind(':') {
            Some(i) => candidate = &candidate[..i],
            None => return false,
        }
    }
    false
}

/// An IPv4 address or a DNS name (RFC 1123 labels; `_` allowed as in SRV-style names).
fn parse_host(text: &str) -> Option<Host> {
    if let Ok(ip) = text.parse::<std::net::Ipv4Addr>() {
        return Some(Host::Ip(IpAddr::V4(ip)));
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // An all-numeric dotted name is a mistyped IPv4 address, not a name.
    let numeric = name.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    (!name.is_empty() && name.len() <= 253 && !numeric && name.split('.').all(label_ok))
        .then(|| Host::Name(name.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn p(s: &str) -> CollectorAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepted_forms() {
        let name = |n: &str| Host::Name(n.into());
        let svc = "flow-aggregator.flow-aggregator.svc";
        assert_eq!(p(svc), CollectorAddr::new(name(svc), 4739, None));
        assert_eq!(
            p(&format!("{svc}:")),
            CollectorAddr::new(name(svc), 4739, None)
        );
        assert_eq!(
            p(&format!("{svc}:4739:tcp")),
            CollectorAddr::new(name(svc), 4739, Some(Transport::Tcp))
        );
        assert_eq!(
            p(&format!("{svc}::tls")),
            CollectorAddr::new(name(svc), 4739, Some(Transport::Tls))
        );
        assert_eq!(
            p("192.168.86.86:4739:UDP"),
            CollectorAddr::new(
                Host::Ip(Ipv4Addr::new(192, 168, 86, 86).into()),
                4739,
                Some(Transport::Udp)
            )
        );
        assert_eq!(
            p("[fd00::1]:4740:tls"),
            CollectorAddr::new(
                Host::Ip("fd00::1".parse().unwrap()),
                4740,
                Some(Transport::Tls)
            )
        );
        assert_eq!(
            p("[::1]"),
            CollectorAddr::new(Host::Ip("::1".parse().unwrap()), 4739, None)
        );
        assert_eq!(
            p("Collector.Example.COM.:99"),
            CollectorAddr::new(name("collector.example.com"), 99, None)
        );
        assert_eq!(p("[::1]:4739:tls").to_string(), "[::1]:4739:tls");
        assert_eq!(p("a:1").host_port(), "a:1");
    }

    #[test]
    fn errors_name_input_and_form() {
        for (input, want) in [
            ("", "it is empty"),
            (":4739", "the host is empty"),
            ("fd00::1", "must be written in brackets"),
            ("fd00::1:4739:tcp", "must be written in brackets"),
            ("[fd00::zz]:1", "is not an IPv6 address"),
            ("[::1", "is not an IPv6 address"),
            ("[::1]x", "unexpected \"x\" after"),
            ("host:70000", "port \"70000\""),
            ("host:0", "port \"0\""),
            ("host:http", "port \"http\""),
            ("host:4739:sctp", "protocol \"sctp\""),
            ("host:4739:tcp:x", "unexpected \":x\" after"),
            ("::1", "must be written in brackets"),
            ("bad_host!:1", "neither an IPv4 address nor a DNS name"),
            ("300.1.1.1", "neither an IPv4"),
            ("-a.b", "neither an IPv4"),
        ] {
            let e = input.parse::<CollectorAddr>().expect_err(input).to_string();
            assert!(e.contains(want), "{input}: {e}");
            assert!(e.contains(&format!("{input:?}")), "{input}: {e}");
            assert!(e.contains("HOST:[PORT][:PROTO]"), "{input}: {e}");
        }
    }

    #[test]
    fn tls_flag_combines_with_proto() {
        let t = |s: &str, tls| p(s).agent_transport(tls);
        assert_eq!(t("a", true), Ok(Transport::Tls));
        assert_eq!(t("a:1:tcp", true), Ok(Transport::Tls));
        assert_eq!(t("a:1:tls", true), Ok(Transport::Tls));
        assert_eq!(t("a", false), Ok(Transport::Tcp));
        assert_eq!(t("a:1:tcp", false), Ok(Transport::Tcp));
        assert_eq!(t("a:1:udp", false), Ok(Transport::Udp));
        let e = t("a:1:udp", true).unwrap_err().to_string();
        assert!(
            e.contains("enableTLSToFlowAggregator") && e.contains("a:1:udp"),
            "{e}"
        );
        let e = t("a:1:tls", false).unwrap_err().to_string();
        assert!(
            e.contains("enableTLSToFlowAggregator") && e.contains("a:1:tls"),
            "{e}"
        );
        assert_eq!(p("a").transport_or_tcp(), Transport::Tcp);
    }

    #[test]
    fn transport_names() {
        assert_eq!("TLS".parse(), Ok(Transport::Tls));
        let e = "quic".parse::<Transport>().unwrap_err().to_string();
        assert!(e.contains("\"quic\"") && e.contains("tls, tcp, udp"), "{e}");
    }

    fn arb_host() -> impl Strategy<Value = Host> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| Host::Ip(IpAddr::from(b))),
            any::<[u8; 16]>().prop_map(|b| Host::Ip(IpAddr::from(b))),
            "[a-z][a-z0-9-]{0,10}[a-z0-9](\\.[a-z][a-z0-9_]{0,8}){0,3}".prop_map(Host::Name),
        ]
    }

    fn arb_transport() -> impl Strategy<Value = Option<Transport>> {
        prop_oneof![
            Just(None),
            Just(Some(Transport::Tls)),
            Just(Some(Transport::Tcp)),
            Just(Some(Transport::Udp)),
        ]
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(host in arb_host(), port in 1u16.., transport in arb_transport()) {
            let a = CollectorAddr::new(host, port, transport);
            prop_assert_eq!(a.to_string().parse::<CollectorAddr>(), Ok(a));
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<CollectorAddr>();
        }

        #[test]
        fn near_miss_garbage_never_panics(s in "[\\[\\]:0-9a-fA-Fx.tcpuls-]{0,30}") {
            if let Err(e) = s.parse::<CollectorAddr>() {
                prop_assert!(e.to_string().contains("HOST:[PORT][:PROTO]"));
            }
        }
    }
}
