//! IPFIX over the network, shared by the agent (exporting process) and the aggregator and
//! collector (collecting process): sockets, TLS, reconnects and back-pressure around flowcore's
//! sans-IO codec.
//!
//! - [`tls`]: rustls configurations from PEM files (mutual TLS, TLS 1.2 minimum, ring provider),
//!   CA and certificate generation with rcgen, expiry checks, and a file watcher that rebuilds a
//!   configuration when mounted Secrets change.
//! - [`collector`]: TCP, UDP and TLS listeners; one `Decoder` per session; decoded messages to
//!   the consumer through a bounded channel, with TCP back-pressure and counted UDP drops.
//! - [`exporter`]: a client actor that keeps one session to a collector up (reconnect with
//!   exponential backoff and full jitter), writes messages in order from a bounded queue, and
//!   reports per message whether it was written.
//! - [`replay`]: a bounded buffer in front of an exporter that sends what a lost session did
//!   not write again on the next one, for callers that cannot re-create their records.
//! - [`metrics`]: the Prometheus counters of both sides.
//!
//! Invariants: nothing a peer sends can panic or grow memory without bound (frames are at most
//! 64 KiB, sessions are capped, queues are bounded); every drop is counted.

pub mod backoff;
pub mod collector;
pub mod exporter;
pub mod fair;
pub mod metrics;
pub mod replay;
pub mod tls;

pub use flowcore::config::{CollectorAddr, Transport};
