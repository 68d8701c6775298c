//! Prometheus counters of the collecting and exporting processes: everything a user would alert
//! on (sessions, throughput, malformed input by reason, loss the sequence numbers reveal, drops,
//! reconnects). Cheap to clone (each metric is an `Arc`); register once with a registry.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use flowcore::config::Transport;
use flowcore::ipfix::DecodeError;

/// Transport label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum TransportLabel {
    Tcp,
    Udp,
    Tls,
}

impl From<Transport> for TransportLabel {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Tcp => TransportLabel::Tcp,
            Transport::Udp => TransportLabel::Udp,
            Transport::Tls => TransportLabel::Tls,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: TransportLabel,
}

/// Why a message was malformed: the [`DecodeError`] variant, coarse enough for a label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum MalformedReason {
    Truncated,
    BadVersion,
    BadMessageLength,
    BadSetLength,
    BadTemplate,
    /// A template with more than `max_fields_per_template` fields.
    TooManyFields,
    /// One template more than `max_templates` in the session.
    TooManyTemplates,
    /// A template that would take the session's templates past `max_template_bytes`.
    TooManyTemplateBytes,
    TooManyDomains,
    RecordOverrun,
    StreamFraming,
}

impl From<&DecodeError> for MalformedReason {
    fn from(e: &DecodeError) -> Self {
        use DecodeError as E;
        match e {
            E::Truncated { .. } => MalformedReason::Truncated,
            E::BadVersion { .. } => MalformedReason::BadVersion,
            E::BadMessageLength { .. } => MalformedReason::BadMessageLength,
            E::BadSetLength { .. } => MalformedReason::BadSetLength,
            E::BadTemplateId { .. }
            | E::BadFieldLength { .. }
            | E::BadScopeCount { .. }
            | E::EmptyRecord { .. } => MalformedReason::BadTemplate,
            E::TooManyFields { .. } => MalformedReason::TooManyFields,
            E::TooManyTemplates { .. } => MalformedReason::TooManyTemplates,
            E::TooManyTemplateBytes { .. } => MalformedReason::TooManyTemplateBytes,
            E::TooManyDomains { .. } => MalformedReason::TooManyDomains,
            E::RecordOverrun { .. } => MalformedReason::RecordOverrun,
            E::StreamBadLength { .. } => MalformedReason::StreamFraming,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MalformedLabels {
    pub reason: MalformedReason,
}

/// Why a UDP datagram was not handed on.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UdpDropReason {
    /// Its session's queue (or the total) was full: the consumer is behind, and this exporter
    /// sends more than its share.
    QueueFull,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UdpDropLabels {
    pub reason: UdpDropReason,
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RejectReason {
    /// `maxSessions` open and none idle long enough to give way.
    Full,
    /// `maxSessionsPerAddress` open from the peer's address.
    PerAddress,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub reason: RejectReason,
}

/// Why the collecting process closed (or forgot) a session.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CloseReason {
    /// No complete message for `idleTimeout`.
    IdleTimeout,
    /// A message (or a TLS handshake) begun and not finished within `messageTimeout`.
    MessageTimeout,
    /// The longest-idle session, closed to make room for a new one when full.
    Evicted,
    /// The session's templates passed its share of `maxTemplateBytes` over all sessions.
    TemplateBudget,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub reason: CloseReason,
}

/// Why a UDP exporter's session was forgotten before its template lifetime.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UdpEvictReason {
    /// `maxSessions` tracked: the idlest gave way to a new exporter.
    Full,
    /// `maxSessionsPerAddress` from one address: that address's idlest gave way.
    PerAddress,
    /// Its templates passed its share of `maxTemplateBytes`.
    TemplateBudget,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UdpEvictLabels {
    pub reason: UdpEvictReason,
}

/// Label values in snake case (`per_address`), as Prometheus names go.
macro_rules! snake_label {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl prometheus_client::encoding::EncodeLabelValue for $t {
            fn encode(
                &self,
                e: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                e.write_str(match self {
                    $(<$t>::$v => $s,)*
                })
            }
        }
    };
}

snake_label!(UdpDropReason { QueueFull => "queue_full" });
snake_label!(RejectReason { Full => "full", PerAddress => "per_address" });
snake_label!(CloseReason {
    IdleTimeout => "idle_timeout",
    MessageTimeout => "message_timeout",
    Evicted => "evicted",
    TemplateBudget => "template_budget",
});
snake_label!(UdpEvictReason {
    Full => "full",
    PerAddress => "per_address",
    TemplateBudget => "template_budget",
});

/// An exporter by address, for per-exporter drop counters (series exist while its session does).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExporterLabels {
    pub exporter: String,
}

/// The collecting process.
#[derive(Clone, Debug, Default)]
pub struct CollectorMetrics {
    pub sessions_open: Gauge,
    pub sessions: Family<TransportLabels, Counter>,
    /// Connections refused at accept, by reason.
    pub sessions_rejected: Family<RejectLabels, Counter>,
    /// Sessions closed by the collecting process, by reason (besides malformed input).
    pub sessions_closed: Family<CloseLabels, Counter>,
    pub udp_sessions_evicted: Family<UdpEvictLabels, Counter>,
    pub tls_handshake_failures: Counter,
    pub messages: Counter,
    pub records: Counter,
    pub malformed: Family<MalformedLabels, Counter>,
    pub sequence_gaps: Counter,
    pub records_missing: Counter,
    /// Data sets skipped for want of a template (never sent, withdrawn, expired).
    pub sets_without_template: Counter,
    pub udp_dropped_messages: Family<UdpDropLabels, Counter>,
    pub udp_dropped_records: Counter,
    /// UDP data records dropped, by exporter address.
    pub exporter_dropped_records: Family<ExporterLabels, Counter>,
    /// Bytes of decoded messages queued for the consumer, over all sessions.
    pub queued_bytes: Gauge,
    /// Heap bytes of every session's templates.
    pub template_bytes: Gauge,
}

impl CollectorMetrics {
    /// Registers under `prefix` (e.g. `flowlens_collector`).
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        let r = registry.sub_registry_with_prefix(prefix);
        r.register(
            "sessions_open",
            "IPFIX sessions open now",
            self.sessions_open.clone(),
        );
        r.register("sessions", "IPFIX sessions opened", self.sessions.clone());
        r.register(
            "sessions_rejected",
            "Connections closed at accept, by reason: full (maxSessions open, none idle long enough to give way), per_address (maxSessionsPerAddress open from that address)",
            self.sessions_rejected.clone(),
        );
        r.register(
            "sessions_closed",
            "Sessions the collecting process closed, by reason: idle_timeout, message_timeout (a message or TLS handshake begun and not finished in time), evicted (idlest session, for a new one), template_budget",
            self.sessions_closed.clone(),
        );
        r.register(
            "udp_sessions_evicted",
            "UDP exporters forgotten early (their templates with them), by reason: full, per_address, template_budget",
            self.udp_sessions_evicted.clone(),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (bad or missing client certificate, timeout, not TLS)",
            self.tls_handshake_failures.clone(),
        );
        r.register("messages", "IPFIX messages decoded", self.messages.clone());
        r.register(
            "records",
            "IPFIX data records decoded",
            self.records.clone(),
        );
        r.register(
            "malformed",
            "Malformed IPFIX messages, each closing its session",
            self.malformed.clone(),
        );
        r.register(
            "sequence_gaps",
            "Messages whose sequence number was not the expected one",
            self.sequence_gaps.clone(),
        );
        r.register(
            "records_missing",
            "Data records the sequence numbers say were sent but never arrived",
            self.records_missing.clone(),
        );
        r.register(
            "sets_without_template",
            "Data sets skipped because their template was unknown or expired",
            self.sets_without_template.clone(),
        );
        r.register(
            "udp_dropped_messages",
            "UDP messages dropped before the consumer",
            self.udp_dropped_messages.clone(),
        );
        r.register(
            "udp_dropped_records",
            "Data records in UDP messages dropped because their exporter's queue was full",
            self.udp_dropped_records.clone(),
        );
        r.register(
            "exporter_dropped_records",
            "Data records in UDP messages dropped because their exporter's queue was full, by exporter address",
            self.exporter_dropped_records.clone(),
        );
        r.register(
            "queued_bytes",
            "Bytes of decoded messages waiting for the consumer",
            self.queued_bytes.clone(),
        );
        r.register(
            "template_bytes",
            "Heap bytes of the templates of every session",
            self.template_bytes.clone(),
        );
    }
}

/// The exporting process.
#[derive(Clone, Debug, Default)]
pub struct ExporterMetrics {
    /// 1 while a session is up.
    pub session_up: Gauge,
    pub sessions: Counter,
    pub connect_failures: Counter,
    /// Sessions that ended by error or by the collector closing them.
    pub disconnects: Counter,
    pub messages_sent: Counter,
    pub bytes_sent: Counter,
    /// Messages refused because the send queue was full.
    pub queue_drops: Counter,
    /// Messages not written: built for a session that has since ended, or no session was up.
    pub messages_failed: Counter,
}

impl ExporterMetrics {
    /// Registers under `prefix` (e.g. `flowlens_agent_export`).
    pub fn register(&self, registry: &mut Registry, prefix: &str) {
        let r = registry.sub_registry_with_prefix(prefix);
        r.register(
            "session_up",
            "1 while a session to the collector is up",
            self.session_up.clone(),
        );
        r.register(
            "sessions",
            "Sessions established to the collector",
            self.sessions.clone(),
        );
        r.register(
            "connect_failures",
            "Failed attempts to connect to the collector",
            self.connect_failures.clone(),
        );
        r.register(
            "disconnects",
            "Sessions lost to an error or closed by the collector",
            self.disconnects.clone(),
        );
        r.register(
            "messages_sent",
            "IPFIX messages written to the socket",
            self.messages_sent.clone(),
        );
        r.register(
            "bytes_sent",
            "IPFIX bytes written to the socket",
            self.bytes_sent.clone(),
        );
        r.register(
            "queue_drops",
            "Messages refused because the send queue was full",
            self.queue_drops.clone(),
        );
        r.register(
            "messages_failed",
            "Messages not written because their session ended or none was up",
            self.messages_failed.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each session bound is its own label, so an alert can tell a hostile peer from a buggy one.
    #[test]
    fn bounds_have_their_own_reasons() {
        let reason = |e: DecodeError| MalformedReason::from(&e);
        assert_eq!(
            reason(DecodeError::TooManyTemplateBytes {
                template_id: 256,
                domain: 1,
                bytes: 10,
                in_use: 5,
                max: 12
            }),
            MalformedReason::TooManyTemplateBytes
        );
        assert_eq!(
            reason(DecodeError::TooManyTemplates {
                template_id: 256,
                domain: 1,
                max: 1
            }),
            MalformedReason::TooManyTemplates
        );
        assert_eq!(
            reason(DecodeError::TooManyFields {
                template_id: 256,
                count: 9,
                max: 8
            }),
            MalformedReason::TooManyFields
        );
        assert_eq!(
            reason(DecodeError::TooManyDomains { domain: 3, max: 2 }),
            MalformedReason::TooManyDomains
        );
    }

    #[test]
    fn both_sets_register_and_encode() {
        let mut r = Registry::default();
        let c = CollectorMetrics::default();
        let e = ExporterMetrics::default();
        c.register(&mut r, "flowlens_aggregator_ipfix");
        e.register(&mut r, "flowlens_agent_export");
        c.records.inc_by(3);
        c.malformed
            .get_or_create(&MalformedLabels {
                reason: MalformedReason::BadSetLength,
            })
            .inc();
        e.queue_drops.inc();
        c.sessions_rejected
            .get_or_create(&RejectLabels {
                reason: RejectReason::PerAddress,
            })
            .inc();
        c.sessions_closed
            .get_or_create(&CloseLabels {
                reason: CloseReason::MessageTimeout,
            })
            .inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        for want in [
            "flowlens_aggregator_ipfix_records_total 3",
            "flowlens_aggregator_ipfix_malformed_total{reason=\"BadSetLength\"} 1",
            "flowlens_aggregator_ipfix_sessions_rejected_total{reason=\"per_address\"} 1",
            "flowlens_aggregator_ipfix_sessions_closed_total{reason=\"message_timeout\"} 1",
            "flowlens_agent_export_queue_drops_total 1",
            "flowlens_agent_export_session_up 0",
        ] {
            assert!(out.contains(want), "{want} missing from\n{out}");
        }
    }
}
