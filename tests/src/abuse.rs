//! The abuse suite's harness: one hostile or broken peer must never take flowlens down.
//!
//! A [`scenario::Scenario`] starts the real release binaries on loopback — a `flowlens collector`
//! (SQLite store in a temporary directory, IPFIX over TCP, HTTP API) and a `flowlens-aggregator`
//! (agents' IPFIX over TCP, UDP or TLS, exporting to the collector with
//! `externalFlowCollectorAddr`), each under `prlimit --as` with its output in a log file — runs a
//! well-behaved agent-like exporter from 127.0.0.1 throughout ([`exporter`]), lets one attacker
//! ([`attacks`], from 127.0.0.2) loose, and measures what the issue asks for: peak and settled
//! RSS of each daemon (`/proc/PID/status`), whether every well-behaved flow was stored exactly
//! once with its counters (the collector's `/api/flows`), whether a daemon died, and which
//! counters moved (`/metrics`). [`scenarios`] holds one scenario per attack at two sizes: CI
//! (seconds) and the full size (for the before/after table in `tests/ABUSE.md`).
//!
//! Waiting is always for a condition with a deadline ([`crate::wait_for`] and the helpers
//! here); the exporter and the attackers pace themselves, which is not synchronisation.

use std::time::Duration;

pub mod attacks;
pub mod daemons;
pub mod exporter;
pub mod http;
pub mod metrics;
pub mod records;
pub mod scenario;
pub mod scenarios;

/// Where the well-behaved exporter and the checking clients connect from.
pub const GOOD_ADDR: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
/// Where every attacker connects from (a distinct loopback address, as a distinct host would).
pub const ATTACKER_ADDR: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// The hard RSS bound of each daemon during any attack.
pub const RSS_LIMIT_BYTES: u64 = 1 << 30;
/// After the attack, RSS must come back under the pre-attack baseline plus this …
pub const RSS_SETTLE_SLACK_BYTES: u64 = 64 << 20;
/// … within this long.
pub const RSS_SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// Address space each daemon may map (`prlimit --as`), so a runaway cannot take the machine
/// down.
pub const ADDRESS_SPACE_BYTES: u64 = 4 << 30;
/// Open files each daemon may hold (`prlimit --nofile`): the common default soft limit, so that
/// descriptor exhaustion is reachable the way it is on a host.
pub const NOFILE: u64 = 1024;

/// How long a well-behaved exporter under attack may wait for its records to be stored (from
/// the end of a generation of flows it sent during the attack).
pub const DURING_DEADLINE: Duration = Duration::from_secs(20);
/// How long, once the attack has stopped, every well-behaved flow may take to be stored.
pub const AFTER_DEADLINE: Duration = Duration::from_secs(30);
/// A connection that stopped inside an IPFIX message (header sent, body not) must be closed by
/// the daemon within this long: the default `collectingProcess.messageTimeout` (30 s), plus 2 s
/// for the close itself (the daemon shuts its side, then reads until the peer's EOF or a short
/// drain).
pub const MESSAGE_TIMEOUT_BOUND: Duration = Duration::from_secs(32);
/// At most this many log lines per second of a malformed-message flood (rate-limited logging: a
/// few lines per second per reason), plus [`LOG_LINES_SLACK`].
pub const LOG_LINES_PER_SEC: f64 = 5.0;
pub const LOG_LINES_SLACK: usize = 20;

/// Metric names the suite reads, in one place so that they are easy to adjust. A name is matched
/// as a substring of the sample's name (the collecting process's counters carry the daemon's
/// prefix, `flowlens_aggregator_` or `flowlens_collector_`); labels must all be present.
/// prometheus-client adds `_total` to counters. Names marked *planned* do not exist yet: they are
/// what the hardening work will add.
pub mod names {
    /// Connections refused at accept, `reason` = `full` | `per_address` (*planned*; today an
    /// unlabelled `sessions_rejected_total`).
    pub const SESSIONS_REJECTED: &str = "_ipfix_collect_sessions_rejected_total";
    /// Sessions the daemon closed, `reason` = `idle_timeout` | `message_timeout` | `evicted` |
    /// `template_budget` (*planned*).
    pub const SESSIONS_CLOSED: &str = "_ipfix_collect_sessions_closed_total";
    /// UDP sessions evicted to make room for a new exporter (*planned*).
    pub const UDP_SESSIONS_EVICTED: &str = "_ipfix_collect_udp_sessions_evicted_total";
    /// Malformed IPFIX messages, by `reason`.
    pub const MALFORMED: &str = "_ipfix_collect_malformed_total";
    /// TLS handshakes that failed or timed out.
    pub const TLS_HANDSHAKE_FAILURES: &str = "_ipfix_collect_tls_handshake_failures_total";
    /// Data records decoded by a collecting process.
    pub const IPFIX_RECORDS: &str = "_ipfix_collect_records_total";
    /// Names refused in agent records, by `reason` (`too_long`, `over_budget`, `tcp_state`).
    pub const NAMES_REFUSED: &str = "flowlens_aggregator_names_refused_total";
    /// Flows evicted by exporter (`exporter` = `address/domain`).
    pub const EXPORTER_FLOWS_EVICTED: &str = "flowlens_aggregator_exporter_flows_evicted_total";
    /// Agent records received by the aggregator.
    pub const AGGREGATOR_RECORDS_IN: &str = "flowlens_aggregator_records_in_total";
    /// HTTP connections and requests refused, by `reason`.
    pub const HTTP_REFUSED: &str = "_http_refused_total";
    /// Store queries refused or stopped, by `reason` (`busy`, `deadline`, `too_large`).
    pub const QUERY_REFUSED: &str = "flowlens_collector_query_refused_total";
    /// Records the collector stored.
    pub const RECORDS_STORED: &str = "flowlens_collector_records_stored_total";
    /// Aggregated records a sink gave up on, by `sink` and `reason`.
    pub const SINK_DROPPED: &str = "flowlens_aggregator_sink_dropped_total";
}

/// How big an attack is: CI-sized (seconds, for `tests/tests/abuse_*.rs`) or the full
/// size (for the measurements in `tests/ABUSE.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    Ci,
    Full,
}

impl Size {
    /// `ci` for CI, `full` for the size.
    pub fn pick<T>(self, ci: T, full: T) -> T {
        match self {
            Size::Ci => ci,
            Size::Full => full,
        }
    }
}
