//! Templates: the field layout a data set's records follow (RFC 7011 §3.4).
//!
//! A [`Template`] knows its fields' registry entries and, when every field has a fixed length,
//! each field's offset, so a decoder can read field *i* of a record without walking it.

use crate::ie::{self, DataType, IeId, InfoElement, VARLEN};

use super::error::DecodeError;

/// Template id (≥ 256); also the set id of the data sets that use it.
pub type TemplateId = u16;

/// One field specifier: which IE, how many bytes (or `VARLEN`), and what the registry says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldSpec {
    pub ie: IeId,
    pub len: u16,
    /// The registry's type; `OctetArray` for elements the registry does not know, and for a
    /// registered element a peer sent with a length its type does not accept.
    pub data_type: DataType,
    /// The registry's name; `None` for unknown elements.
    pub name: Option<&'static str>,
}

impl FieldSpec {
    /// A field of a registered element at its default length.
    pub fn of(e: &InfoElement) -> FieldSpec {
        FieldSpec {
            ie: e.ie_id(),
            len: e.len,
            data_type: e.data_type,
            name: Some(e.name),
        }
    }

    /// A field of the element named `name` at its default length, `None` if unregistered.
    pub fn named(name: &str) -> Option<FieldSpec> {
        ie::by_name(name).map(FieldSpec::of)
    }

    /// A field as found on the wire: resolved through the registry, unknown elements as octets.
    pub fn from_wire(ie: IeId, len: u16) -> FieldSpec {
        match ie::lookup(ie) {
            Some(e) => FieldSpec {
                ie,
                len,
                data_type: e.data_type,
                name: Some(e.name),
            },
            None => FieldSpec {
                ie,
                len,
                data_type: DataType::OctetArray,
                name: None,
            },
        }
    }

    /// Same element, another length (reduced-size encoding, or a fixed length for a string).
    pub fn with_len(mut self, len: u16) -> FieldSpec {
        self.len = len;
        self
    }

    pub fn is_varlen(&self) -> bool {
        self.len == VARLEN
    }

    /// Bytes the specifier takes in a template record.
    pub fn wire_len(&self) -> usize {
        if self.ie.pen == 0 { 4 } else { 8 }
    }

    /// A display name: the registry's, or `e<PEN>id<ID>` / `id<ID>` for unknown elements.
    pub fn display_name(&self) -> std::borrow::Cow<'static, str> {
        match self.name {
            Some(n) => n.into(),
            None if self.ie.pen == 0 => format!("id{}", self.ie.id).into(),
            None => format!("e{}id{}", self.ie.pen, self.ie.id).into(),
        }
    }
}

/// A template or options template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub id: TemplateId,
    /// Shared so a record writer can hold the field list while it writes into the encoder.
    pub fields: std::sync::Arc<[FieldSpec]>,
    /// Number of leading scope fields; 0 for a data template (non-zero marks an options template).
    pub scope_count: u16,
    /// Smallest record: fixed fields plus one length byte per variable-length field.
    pub min_len: usize,
    /// Offsets of each field when every field is fixed-length; empty otherwise.
    pub offsets: Box<[u16]>,
    /// For templates with variable-length fields: the fixed bytes before each variable-length
    /// field, then the fixed bytes after the last one. Finding a record's end walks these
    /// instead of every field.
    pub(crate) varlen_runs: Box<[u32]>,
}

impl Template {
    /// Builds a template, checking each field's length against its type.
    pub fn new(
        id: TemplateId,
        fields: Vec<FieldSpec>,
        scope_count: u16,
    ) -> Result<Template, DecodeError> {
        if id < super::MIN_DATA_SET_ID {
            return Err(DecodeError::BadTemplateId {
                template_id: id,
                offset: 0,
            });
        }
        let mut min_len = 0usize;
        let mut all_fixed = true;
        for f in &fields {
            if f.len == VARLEN {
                all_fixed = false;
                min_len += 1;
            } else {
                if !f.data_type.accepts_len(f.len) || f.len == 0 {
                    return Err(DecodeError::BadFieldLength {
                        template_id: id,
                        field: f.ie,
                        name: f.name.unwrap_or("unknown"),
                        data_type: f.data_type,
                        len: f.len,
                    });
                }
                min_len += f.len as usize;
            }
        }
        if min_len == 0 {
            return Err(DecodeError::EmptyRecord { template_id: id });
        }
        let offsets = if all_fixed && min_len <= u16::MAX as usize {
            let mut off = 0u16;
            fields
                .iter()
                .map(|f| {
                    let o = off;
                    off += f.len;
                    o
                })
                .collect()
        } else {
            Box::default()
        };
        let mut varlen_runs = Vec::new();
        if !all_fixed {
            let mut run = 0u32;
            for f in &fields {
                if f.len == VARLEN {
                    varlen_runs.push(run);
                    run = 0;
                } else {
                    run += f.len as u32;
                }
            }
            varlen_runs.push(run);
        }
        Ok(Template {
            id,
            fields: fields.into(),
            scope_count,
            min_len,
            offsets,
            varlen_runs: varlen_runs.into_boxed_slice(),
        })
    }

    pub fn is_options(&self) -> bool {
        self.scope_count > 0
    }

    /// Record length when every field is fixed-length.
    pub fn fixed_len(&self) -> Option<usize> {
        (!self.offsets.is_empty()).then_some(self.min_len)
    }

    /// Index of the first field carrying `ie`.
    pub fn position(&self, ie: IeId) -> Option<usize> {
        self.fields.iter().position(|f| f.ie == ie)
    }

    /// Heap bytes this template costs a [`super::Decoder`] that holds it: the `Arc`'d struct,
    /// the `Arc`'d field list, the offsets and variable-length runs, and the decoder's hash map
    /// slot (key, entry and one control byte). Every part is allocated at its exact length (the
    /// slices are built from exact-size iterators or shrunk), so the figure is what the allocator
    /// was asked for; allocator rounding and a map's spare slots are not counted (the map's
    /// spare slots are bounded by `max_templates`, a few KiB at most).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        // An `Arc` allocation holds the strong and weak counts before the value.
        const ARC_COUNTS: usize = 2 * size_of::<usize>();
        ARC_COUNTS
            + size_of::<Template>()
            + ARC_COUNTS
            + std::mem::size_of_val::<[FieldSpec]>(&self.fields)
            + std::mem::size_of_val::<[u16]>(&self.offsets)
            + std::mem::size_of_val::<[u32]>(&self.varlen_runs)
            + super::decoder::MAP_SLOT_BYTES
    }

    /// Bytes this template takes as a template record.
    pub fn record_wire_len(&self) -> usize {
        let head = if self.is_options() { 6 } else { 4 };
        head + self.fields.iter().map(FieldSpec::wire_len).sum::<usize>()
    }

    /// Appends this template as a template record (without set header).
    pub fn write_record(&self, out: &mut impl bytes::BufMut) {
        out.put_u16(self.id);
        out.put_u16(self.fields.len() as u16);
        if self.is_options() {
            out.put_u16(self.scope_count);
        }
        for f in self.fields.iter() {
            if f.ie.pen == 0 {
                out.put_u16(f.ie.id & 0x7FFF);
                out.put_u16(f.len);
            } else {
                out.put_u16(f.ie.id | 0x8000);
                out.put_u16(f.len);
                out.put_u32(f.ie.pen);
            }
        }
    }
}

/// What a template record in a template or options template set says.
pub(crate) enum TemplateRecord {
    /// A (re)definition, and how many of its fields gave a registered element a length its type
    /// does not accept (carried as octets, see [`parse_template_record`]).
    Define {
        template: Template,
        nonstandard_lengths: u32,
    },
    /// Field count 0 (RFC 7011 §8.1). `id` equal to the set id withdraws every template of that
    /// kind.
    Withdraw(TemplateId),
}

/// Parses one template record starting at `buf[pos]`; returns it and the position after it.
/// `base` is the offset of `buf` in the message, for error reporting.
///
/// Lenient where real exporters deviate harmlessly: a registered element given a fixed length its
/// type does not accept (pmacct's nfprobe sends `flowStart/EndMicroseconds` as 16-byte
/// `struct timeval`s, not 8-byte NTP times) is carried as opaque octets under its own id and name,
/// so the rest of the record still decodes, as tshark does. Length 0 stays an error: such a field
/// says nothing and is most likely a corrupt template. [`Template::new`], which the encoder uses,
/// stays strict so flowlens never sends such lengths itself.
pub(crate) fn parse_template_record(
    buf: &[u8],
    pos: usize,
    base: usize,
    options: bool,
    max_fields: usize,
) -> Result<(TemplateRecord, usize), DecodeError> {
    let head = if options { 6 } else { 4 };
    let trunc = |need: usize, at: usize| DecodeError::Truncated {
        what: "template record",
        offset: base + at,
        need,
        have: buf.len().saturating_sub(at),
    };
    if buf.len() < pos + 4 {
        return Err(trunc(4, pos));
    }
    let id = u16::from_be_bytes([buf[pos], buf[pos + 1]]);
    let count = u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]);
    if count == 0 {
        // Withdrawal: only the 4-byte header, even in an options template set.
        if id != super::TEMPLATE_SET_ID
            && id != super::OPTIONS_TEMPLATE_SET_ID
            && id < super::MIN_DATA_SET_ID
        {
            return Err(DecodeError::BadTemplateId {
                template_id: id,
                offset: base + pos,
            });
        }
        return Ok((TemplateRecord::Withdraw(id), pos + 4));
    }
    if id < super::MIN_DATA_SET_ID {
        return Err(DecodeError::BadTemplateId {
            template_id: id,
            offset: base + pos,
        });
    }
    if count as usize > max_fields {
        return Err(DecodeError::TooManyFields {
            template_id: id,
            count: count as usize,
            max: max_fields,
        });
    }
    if buf.len() < pos + head {
        return Err(trunc(head, pos));
    }
    let scope_count = if options {
        let s = u16::from_be_bytes([buf[pos + 4], buf[pos + 5]]);
        if s == 0 || s > count {
            return Err(DecodeError::BadScopeCount {
                template_id: id,
                scope_count: s,
                field_count: count,
            });
        }
        s
    } else {
        0
    };
    let mut p = pos + head;
    let mut fields = Vec::with_capacity(count as usize);
    let mut nonstandard_lengths = 0u32;
    for _ in 0..count {
        if buf.len() < p + 4 {
            return Err(trunc(4, p));
        }
        let raw_id = u16::from_be_bytes([buf[p], buf[p + 1]]);
        let len = u16::from_be_bytes([buf[p + 2], buf[p + 3]]);
        p += 4;
        let ie = if raw_id & 0x8000 != 0 {
            if buf.len() < p + 4 {
                return Err(trunc(4, p));
            }
            let pen = u32::from_be_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
            p += 4;
            IeId::new(pen, raw_id & 0x7FFF)
        } else {
            IeId::iana(raw_id)
        };
        let mut spec = FieldSpec::from_wire(ie, len);
        if len != VARLEN && len != 0 && !spec.data_type.accepts_len(len) {
            spec.data_type = DataType::OctetArray;
            nonstandard_lengths += 1;
        }
        fields.push(spec);
    }
    let mut t = Template::new(id, fields, scope_count);
    if let Err(DecodeError::BadTemplateId { offset, .. }) = &mut t {
        *offset = base + pos;
    }
    Ok((
        TemplateRecord::Define {
            template: t?,
            nonstandard_lengths,
        },
        p,
    ))
}
