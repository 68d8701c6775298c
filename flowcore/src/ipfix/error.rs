//! What can go wrong on the wire, said precisely enough to find the bad byte.

use crate::ie::{DataType, IeId};

/// A malformed or unacceptable IPFIX message. Offsets are from the start of the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated {what} at offset {offset}: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("not IPFIX: version {found} in the message header (IPFIX is version 10)")]
    BadVersion { found: u16 },
    #[error("message header says length {header}, but {actual} bytes were given (minimum 16)")]
    BadMessageLength { header: u16, actual: usize },
    #[error(
        "set {set_id} at offset {offset} has length {length}; a set is at least 4 bytes and must end inside the message ({remaining} bytes remain)"
    )]
    BadSetLength {
        set_id: u16,
        offset: usize,
        length: u16,
        remaining: usize,
    },
    #[error(
        "template record at offset {offset} has template id {template_id}; template ids start at 256"
    )]
    BadTemplateId { template_id: u16, offset: usize },
    #[error(
        "template {template_id}: field {field} ({name}) has length {len}, which {data_type} does not allow"
    )]
    BadFieldLength {
        template_id: u16,
        field: IeId,
        name: &'static str,
        data_type: DataType,
        len: u16,
    },
    #[error(
        "template {template_id} has {count} fields; at most max_fields_per_template = {max} are accepted"
    )]
    TooManyFields {
        template_id: u16,
        count: usize,
        max: usize,
    },
    #[error(
        "template {template_id} of observation domain {domain} would be one more than the session's max_templates = {max}"
    )]
    TooManyTemplates {
        template_id: u16,
        domain: u32,
        max: usize,
    },
    #[error(
        "template {template_id} of observation domain {domain} takes {bytes} bytes of memory; with the {in_use} bytes of the session's other templates that exceeds max_template_bytes = {max}"
    )]
    TooManyTemplateBytes {
        template_id: u16,
        domain: u32,
        bytes: usize,
        in_use: usize,
        max: usize,
    },
    #[error("observation domain {domain} would be one more than the session's max_domains = {max}")]
    TooManyDomains { domain: u32, max: usize },
    #[error(
        "options template {template_id} has scope field count {scope_count} with {field_count} fields; need 1 ≤ scope ≤ fields"
    )]
    BadScopeCount {
        template_id: u16,
        scope_count: u16,
        field_count: u16,
    },
    #[error("template {template_id} describes records of zero length, which cannot be decoded")]
    EmptyRecord { template_id: u16 },
    #[error(
        "data record of template {template_id} at offset {offset} runs past the end of its set"
    )]
    RecordOverrun { template_id: u16, offset: usize },
    #[error("stream framing: message length {length} in the header is below the 16-byte minimum")]
    StreamBadLength { length: u16 },
}

/// An encoder misuse or a record that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("maximum message size {0} is outside the accepted range 512..=65535")]
    BadMaxMessageSize(usize),
    #[error("template id {0} is below 256 (ids 0-255 are reserved for set ids)")]
    BadTemplateId(u16),
    #[error("template {0} is not defined on this encoder")]
    UnknownTemplate(u16),
    #[error("template {template_id}: {reason}")]
    BadTemplate { template_id: u16, reason: String },
    #[error(
        "record of template {template_id} is {len} bytes, larger than a message of at most {max} bytes can carry"
    )]
    RecordTooLarge {
        template_id: u16,
        len: usize,
        max: usize,
    },
    #[error(
        "record of template {template_id}: field #{index} ({name}) written as {wrote}, template says {expected}"
    )]
    FieldMismatch {
        template_id: u16,
        index: usize,
        name: &'static str,
        wrote: &'static str,
        expected: String,
    },
    #[error("record of template {template_id}: {written} fields written, template has {expected}")]
    FieldCount {
        template_id: u16,
        written: usize,
        expected: usize,
    },
    #[error(
        "record of template {template_id}: value {value} of field #{index} ({name}) does not fit in {len} bytes"
    )]
    ValueTooLarge {
        template_id: u16,
        index: usize,
        name: &'static str,
        value: u64,
        len: u16,
    },
}
