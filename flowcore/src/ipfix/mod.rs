//! IPFIX (RFC 7011) messages: a sans-IO encoder and decoder, and framing for byte streams.
//!
//! - [`template`]: field specifiers and templates, as parsed from and written to template sets.
//! - [`value`]: typed views of field bytes (RFC 7011 §6 encodings, reduced-size integers, NTP
//!   timestamps).
//! - [`decoder`]: template state per observation domain for one transport session, sequence-gap
//!   accounting, hostile-input bounds; data records are handed to a callback as zero-copy views.
//! - [`encoder`]: packs records into messages up to a size limit, one set per template run,
//!   templates (re)sent per session or refresh interval; outputs are polled.
//! - [`stream`]: TCP/TLS framing — feed arbitrary chunks, take whole messages out.
//!
//! Neither side allocates per record in steady state: the decoder hands out borrowed views and
//! the encoder writes straight into the message buffer.

pub mod decoder;
pub mod encoder;
mod error;
pub mod example;
pub mod flow_record;
pub mod layout;
pub mod stream;
pub mod template;
pub mod value;

pub use decoder::{DataRecord, Decoder, DecoderConfig, DecoderStats, Field, MessageHeader};
pub use encoder::{Encoder, EncoderConfig, RecordWriter};
pub use error::{DecodeError, EncodeError};
pub use layout::Layout;
pub use stream::StreamDeframer;
pub use template::{FieldSpec, Template, TemplateId};
pub use value::FieldValue;

/// IPFIX version number in the message header.
pub const VERSION: u16 = 10;
/// Message header length (RFC 7011 §3.1).
pub const HEADER_LEN: usize = 16;
/// Set header length (RFC 7011 §3.3.2).
pub const SET_HEADER_LEN: usize = 4;
/// Set id of template sets.
pub const TEMPLATE_SET_ID: u16 = 2;
/// Set id of options template sets.
pub const OPTIONS_TEMPLATE_SET_ID: u16 = 3;
/// Lowest template id (and data set id).
pub const MIN_DATA_SET_ID: u16 = 256;
/// The IANA-registered IPFIX port.
pub const DEFAULT_PORT: u16 = 4739;
/// Largest IPFIX message (the header's 16-bit length).
pub const MAX_MESSAGE_LEN: usize = 65535;

/// Observation domain id of a message (RFC 7011 §3.1): which metering process, per exporter.
pub type ObservationDomainId = u32;

/// The observation domain a flowlens agent uses: FNV-1a of its Node name (never 0). Stable across
/// restarts, and lets the aggregator tell which Node of a flow sent a record even when the agent
/// filled in both ends' Pods (see `aggregator::Aggregator::handle_half`).
pub fn node_observation_domain(node_name: &str) -> ObservationDomainId {
    let mut h: u32 = 0x811c_9dc5;
    for b in node_name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

#[cfg(test)]
mod template_tests;
#[cfg(test)]
mod tests;
