//! The `collectingProcess:` section of the aggregator's and the collector's configs: the IPFIX
//! listener's admission, deadlines, queues and template budgets (what each bounds, and why, is
//! in [`crate::transport::collector`]'s module docs).

use std::time::Duration;

use anyhow::bail;
use flowcore::config::Duration as GoDuration;
use flowcore::ipfix::DecoderConfig;

use crate::transport::collector::{CollectorConfig, SessionLimits};
use crate::transport::fair::FairConfig;

/// The section as written; every key optional.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CollectingFile {
    /// TCP+TLS connections open at once, and UDP exporters tracked. When full, a new connection
    /// closes the session idle longest (if idle `evictIdleAfter`), else it is refused; a new UDP
    /// exporter always replaces the idlest. 1024.
    pub max_sessions: usize,
    /// Sessions from one source address; a further connection is refused, a further UDP exporter
    /// replaces that address's idlest. 16.
    pub max_sessions_per_address: usize,
    /// A TLS handshake must finish within this. 10s.
    pub handshake_timeout: GoDuration,
    /// A connection without a complete message for this long is closed (after reading what its
    /// exporter already sent). 10m.
    pub idle_timeout: GoDuration,
    /// A message begun must be complete within this; a slower peer is cut off. 30s.
    pub message_timeout: GoDuration,
    /// When full, the idlest session gives way to a new connection if idle at least this. 30s.
    pub evict_idle_after: GoDuration,
    /// Bytes of decoded messages waiting for the aggregator core or the store, all sessions;
    /// a session with nothing queued may always queue one message. 67108864 (64 MiB).
    pub queue_bytes: u64,
    /// The same for one session: a TCP exporter past it waits (its window closes), a UDP
    /// exporter's messages are dropped and counted. 4194304 (4 MiB).
    pub session_queue_bytes: u64,
    /// Heap bytes of all sessions' templates; past it, a session over its share is closed.
    /// 67108864 (64 MiB).
    pub max_template_bytes: u64,
    /// Heap bytes of one session's templates (a 67-field template takes ~2.3 KiB). 262144.
    pub session_template_bytes: u64,
    /// Templates per session, over all its observation domains. 256.
    pub max_templates_per_session: usize,
    /// Fields per template. 512.
    pub max_fields_per_template: usize,
    /// Observation domains per session. 16.
    pub max_domains_per_session: usize,
    /// UDP: the template refresh interval exporters use; templates live three times this.
    /// 10m.
    pub udp_template_refresh: GoDuration,
    /// At shutdown, how long sessions keep reading what their exporters already sent. 5s.
    pub drain_timeout: GoDuration,
}

impl Default for CollectingFile {
    fn default() -> Self {
        let c = CollectorConfig::default();
        let l = c.limits;
        CollectingFile {
            max_sessions: l.max_sessions,
            max_sessions_per_address: l.max_sessions_per_address,
            handshake_timeout: l.handshake_timeout.into(),
            idle_timeout: l.idle_timeout.into(),
            message_timeout: l.message_timeout.into(),
            evict_idle_after: l.evict_idle_after.into(),
            queue_bytes: l.queue.max_bytes as u64,
            session_queue_bytes: l.queue.per_session_bytes as u64,
            max_template_bytes: l.max_template_bytes as u64,
            session_template_bytes: c.decoder.max_template_bytes as u64,
            max_templates_per_session: c.decoder.max_templates,
            max_fields_per_template: c.decoder.max_fields_per_template,
            max_domains_per_session: c.decoder.max_domains,
            udp_template_refresh: c.udp_template_refresh.into(),
            drain_timeout: l.drain_timeout.into(),
        }
    }
}

/// The validated section.
#[derive(Clone, Copy, Debug)]
pub struct Collecting {
    pub limits: SessionLimits,
    pub decoder: CollectingDecoder,
    pub udp_template_refresh: Duration,
}

/// The decoder bounds (a `Copy` mirror of [`DecoderConfig`]'s).
#[derive(Clone, Copy, Debug)]
pub struct CollectingDecoder {
    pub max_template_bytes: usize,
    pub max_templates: usize,
    pub max_fields_per_template: usize,
    pub max_domains: usize,
}

impl Default for Collecting {
    fn default() -> Self {
        CollectingFile::default()
            .validate()
            .expect("the defaults are valid")
    }
}

impl Collecting {
    /// The listener's configuration, addresses left for the caller.
    pub fn listener(&self) -> CollectorConfig {
        CollectorConfig {
            limits: self.limits,
            udp_template_refresh: self.udp_template_refresh,
            decoder: DecoderConfig {
                max_domains: self.decoder.max_domains,
                max_templates: self.decoder.max_templates,
                max_template_bytes: self.decoder.max_template_bytes,
                max_fields_per_template: self.decoder.max_fields_per_template,
                template_lifetime: None,
            },
            ..CollectorConfig::default()
        }
    }
}

const KEY: &str = "collectingProcess";

impl CollectingFile {
    pub fn validate(&self) -> anyhow::Result<Collecting> {
        let dur = |key: &str, d: GoDuration, min: Duration, max: Duration| {
            if d.0 < min || d.0 > max {
                bail!(
                    "{KEY}.{key} is {d}; it must be from {} to {} (Go duration syntax, e.g. \"30s\")",
                    GoDuration(min),
                    GoDuration(max)
                );
            }
            Ok(d.0)
        };
        let s = Duration::from_secs;
        let handshake = dur("handshakeTimeout", self.handshake_timeout, s(1), s(300))?;
        let idle = dur("idleTimeout", self.idle_timeout, s(10), s(86_400))?;
        let message = dur("messageTimeout", self.message_timeout, s(1), s(600))?;
        let evict = dur("evictIdleAfter", self.evict_idle_after, s(1), s(86_400))?;
        let refresh = dur(
            "udpTemplateRefresh",
            self.udp_template_refresh,
            s(1),
            s(86_400),
        )?;
        let drain = dur("drainTimeout", self.drain_timeout, Duration::ZERO, s(600))?;
        let num = |key: &str, v: u64, min: u64, max: u64| {
            if v < min || v > max {
                bail!("{KEY}.{key} is {v}; it must be from {min} to {max}");
            }
            Ok(v as usize)
        };
        let max_sessions = num("maxSessions", self.max_sessions as u64, 1, 1 << 20)?;
        let per_address = num(
            "maxSessionsPerAddress",
            self.max_sessions_per_address as u64,
            1,
            1 << 20,
        )?;
        // One message (64 KiB) must fit a session's queue.
        let queue_bytes = num("queueBytes", self.queue_bytes, 1 << 16, 1 << 34)?;
        let session_queue = num(
            "sessionQueueBytes",
            self.session_queue_bytes,
            1 << 17,
            1 << 34,
        )?;
        let max_template_bytes = num(
            "maxTemplateBytes",
            self.max_template_bytes,
            1 << 16,
            1 << 34,
        )?;
        let session_template_bytes = num(
            "sessionTemplateBytes",
            self.session_template_bytes,
            1 << 12,
            1 << 30,
        )?;
        if session_template_bytes > max_template_bytes {
            bail!(
                "{KEY}.sessionTemplateBytes ({session_template_bytes}) is above {KEY}.maxTemplateBytes ({max_template_bytes})"
            );
        }
        let max_templates = num(
            "maxTemplatesPerSession",
            self.max_templates_per_session as u64,
            1,
            65_280,
        )?;
        let max_fields = num(
            "maxFieldsPerTemplate",
            self.max_fields_per_template as u64,
            1,
            65_535,
        )?;
        let max_domains = num(
            "maxDomainsPerSession",
            self.max_domains_per_session as u64,
            1,
            1 << 20,
        )?;
        Ok(Collecting {
            limits: SessionLimits {
                max_sessions,
                max_sessions_per_address: per_address,
                handshake_timeout: handshake,
                idle_timeout: idle,
                message_timeout: message,
                evict_idle_after: evict,
                max_template_bytes,
                queue: FairConfig {
                    max_bytes: queue_bytes,
                    per_session_bytes: session_queue,
                },
                drain_timeout: drain,
            },
            decoder: CollectingDecoder {
                max_template_bytes: session_template_bytes,
                max_templates,
                max_fields_per_template: max_fields,
                max_domains,
            },
            udp_template_refresh: refresh,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_errors_name_the_key_and_range() {
        let c = CollectingFile::default().validate().unwrap();
        assert_eq!(c.limits.max_sessions, 1024);
        assert_eq!(c.decoder.max_template_bytes, 256 << 10);
        for (f, want) in [
            (
                CollectingFile {
                    max_sessions_per_address: 0,
                    ..Default::default()
                },
                "collectingProcess.maxSessionsPerAddress is 0; it must be from 1",
            ),
            (
                CollectingFile {
                    message_timeout: Duration::from_millis(10).into(),
                    ..Default::default()
                },
                "collectingProcess.messageTimeout is 10ms",
            ),
            (
                CollectingFile {
                    session_template_bytes: 1 << 30,
                    ..Default::default()
                },
                "sessionTemplateBytes (1073741824) is above",
            ),
        ] {
            let e = f.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
