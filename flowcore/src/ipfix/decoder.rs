//! The collecting side: one [`Decoder`] per transport session (a TCP/TLS connection, or a UDP
//! exporter address). It keeps template state per observation domain (RFC 7011 §8), counts
//! sequence gaps (§3.1: the sequence number counts data records), and hands every data record
//! to a callback as a borrowed view — no allocation per record.
//!
//! Invariants: a template is only used for data sets of its own domain; a withdrawn, replaced or
//! expired template is never used again; every bound (domains, templates and template bytes per
//! session, fields per template) holds whatever the peer sends, and hitting one is an error that
//! names it; malformed input is an error naming what and where.
//!
//! Memory: the session's templates are accounted in bytes ([`Template::heap_bytes`]) as they are
//! defined, redefined, withdrawn and expired, so [`Decoder::template_bytes`] is always the sum over
//! the live templates and never above `max_template_bytes`. Templates are held as `Arc`s; a
//! consumer that clones one from a [`DataRecord`] keeps it alive past a withdrawal without a cache
//! of its own (that memory is the consumer's, bounded by how long it keeps records).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::model::Timestamp;

use super::error::DecodeError;
use super::template::{FieldSpec, Template, TemplateId, TemplateRecord, parse_template_record};
use super::value::FieldValue;
use super::{
    HEADER_LEN, MIN_DATA_SET_ID, OPTIONS_TEMPLATE_SET_ID, ObservationDomainId, SET_HEADER_LEN,
    TEMPLATE_SET_ID, VERSION,
};

/// Bounds and template lifetime for one session. The defaults keep one session's template state
/// under 1 MiB whatever the peer sends, with room to spare for every real exporter we know.
#[derive(Clone, Debug)]
pub struct DecoderConfig {
    /// Observation domains per session. Default 16: a flowlens agent or aggregator uses one per
    /// session, softflowd and pmacct one, a router one per line card; every domain costs a map
    /// entry and a template map even when it holds no template.
    pub max_domains: usize,
    /// Templates per session, over all its domains. Default 256: flowlens sends 4 data templates
    /// (agent and aggregated layouts, IPv4 and IPv6), Antrea as many, general-purpose exporters a
    /// few dozen at most; a peer defining hundreds is probing, not exporting.
    pub max_templates: usize,
    /// Heap bytes of the session's templates ([`Template::heap_bytes`]: field specifiers,
    /// offsets, variable-length runs, the struct and its map slot). Default 1 MiB: 256 templates
    /// of the largest Antrea layout (flowlens's aggregated one, 67 fields, ~2.3 KiB each) take
    /// ~585 KiB, while 256 templates of 512 fields (~17 KiB each) would take 4.3 MiB, so the
    /// byte budget is what stops a peer that sends few wire bytes for many heap bytes (a field
    /// specifier is 4 wire bytes and 34 heap bytes); it admits ~59 templates of 512 fields.
    pub max_template_bytes: usize,
    /// Fields per template. Default 512: Antrea's largest layout has ~70 fields and tshark's
    /// own default cap is 60, so 512 refuses nothing real while bounding a single template to
    /// ~17 KiB.
    pub max_fields_per_template: usize,
    /// For UDP: templates not refreshed within this time expire (RFC 7011 §8.4 suggests 3× the
    /// exporter's refresh interval). `None` for TCP/TLS, where templates live as long as the
    /// session.
    pub template_lifetime: Option<Duration>,
}

impl Default for DecoderConfig {
    fn default() -> Self {
        DecoderConfig {
            max_domains: 16,
            max_templates: 256,
            max_template_bytes: 1 << 20,
            max_fields_per_template: 512,
            template_lifetime: None,
        }
    }
}

/// What the decoder has seen; every drop has a counter here.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DecoderStats {
    pub messages: u64,
    pub templates: u64,
    pub options_templates: u64,
    pub template_withdrawals: u64,
    pub data_records: u64,
    pub options_records: u64,
    /// Data sets skipped because their template is unknown (never sent, withdrawn or expired).
    pub sets_without_template: u64,
    /// Bytes of those sets.
    pub bytes_without_template: u64,
    /// Sets with ids 4–255 (reserved), skipped.
    pub reserved_sets: u64,
    /// Messages whose sequence number was not the one expected.
    pub sequence_gaps: u64,
    /// Data records the sequence numbers say were sent but never arrived.
    pub records_missing: u64,
    pub templates_expired: u64,
    /// Fields of template definitions that gave a registered element a length its type does not
    /// accept (e.g. pmacct's 16-byte `flowStartMicroseconds`); their values decode as octets.
    /// Counted once per field per definition received.
    pub nonstandard_lengths: u64,
}

/// Adds another session's counters (a summary over sessions). Lives beside the struct so a new
/// counter is summed where it is declared.
impl std::ops::AddAssign<&DecoderStats> for DecoderStats {
    fn add_assign(&mut self, b: &DecoderStats) {
        self.messages += b.messages;
        self.templates += b.templates;
        self.options_templates += b.options_templates;
        self.template_withdrawals += b.template_withdrawals;
        self.data_records += b.data_records;
        self.options_records += b.options_records;
        self.sets_without_template += b.sets_without_template;
        self.bytes_without_template += b.bytes_without_template;
        self.reserved_sets += b.reserved_sets;
        self.sequence_gaps += b.sequence_gaps;
        self.records_missing += b.records_missing;
        self.templates_expired += b.templates_expired;
        self.nonstandard_lengths += b.nonstandard_lengths;
    }
}

/// The message header (RFC 7011 §3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageHeader {
    pub length: u16,
    /// Seconds since the Unix epoch, as the exporter stamped the message.
    pub export_time: u32,
    pub sequence: u32,
    pub domain: ObservationDomainId,
}

impl MessageHeader {
    /// Parses and checks the 16-byte header against the buffer it came in.
    pub fn parse(msg: &[u8]) -> Result<MessageHeader, DecodeError> {
        if msg.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                what: "message header",
                offset: 0,
                need: HEADER_LEN,
                have: msg.len(),
            });
        }
        let version = u16::from_be_bytes([msg[0], msg[1]]);
        if version != VERSION {
            return Err(DecodeError::BadVersion { found: version });
        }
        let length = u16::from_be_bytes([msg[2], msg[3]]);
        if (length as usize) < HEADER_LEN || length as usize != msg.len() {
            return Err(DecodeError::BadMessageLength {
                header: length,
                actual: msg.len(),
            });
        }
        Ok(MessageHeader {
            length,
            export_time: u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]),
            sequence: u32::from_be_bytes([msg[8], msg[9], msg[10], msg[11]]),
            domain: u32::from_be_bytes([msg[12], msg[13], msg[14], msg[15]]),
        })
    }
}

/// One data record: its template and its bytes, borrowed from the message.
#[derive(Clone, Copy, Debug)]
pub struct DataRecord<'a> {
    pub header: &'a MessageHeader,
    /// The decoder's own `Arc`: clone it to keep the template past the callback (a redefinition
    /// or withdrawal then leaves the clone as it was).
    pub template: &'a Arc<Template>,
    pub data: &'a [u8],
}

/// One field of a data record.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    pub spec: &'a FieldSpec,
    pub raw: &'a [u8],
}

impl<'a> Field<'a> {
    #[inline]
    pub fn value(&self) -> FieldValue<'a> {
        FieldValue::decode(self.spec, self.raw)
    }
}

impl<'a> DataRecord<'a> {
    pub fn template_id(&self) -> TemplateId {
        self.template.id
    }

    pub fn is_options(&self) -> bool {
        self.template.is_options()
    }

    /// Fields in template order.
    pub fn fields(&self) -> FieldIter<'a> {
        FieldIter {
            specs: self.template.fields.iter(),
            data: self.data,
        }
    }

    /// Field `i`: direct for fixed-length templates, a walk otherwise.
    #[inline]
    pub fn field(&self, i: usize) -> Option<Field<'a>> {
        let spec = self.template.fields.get(i)?;
        if let Some(&off) = self.template.offsets.get(i) {
            let off = off as usize;
            return Some(Field {
                spec,
                raw: self.data.get(off..off + spec.len as usize)?,
            });
        }
        self.fields().nth(i)
    }
}

/// Iterator over a record's fields.
pub struct FieldIter<'a> {
    specs: std::slice::Iter<'a, FieldSpec>,
    data: &'a [u8],
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = Field<'a>;

    #[inline]
    fn next(&mut self) -> Option<Field<'a>> {
        let spec = self.specs.next()?;
        let (len, skip) = field_len(spec, self.data)?;
        let raw = self.data.get(skip..skip + len)?;
        self.data = &self.data[skip + len..];
        Some(Field { spec, raw })
    }
}

/// Length of the field at the start of `data` and how many length-prefix bytes precede it
/// (RFC 7011 §7: one byte, or 255 followed by two bytes).
#[inline]
fn field_len(spec: &FieldSpec, data: &[u8]) -> Option<(usize, usize)> {
    if !spec.is_varlen() {
        return Some((spec.len as usize, 0));
    }
    match *data.first()? {
        255 => Some((
            u16::from_be_bytes([*data.get(1)?, *data.get(2)?]) as usize,
            3,
        )),
        n => Some((n as usize, 1)),
    }
}

/// Length of the record at the start of `data`, or `None` if it runs past the end.
#[inline]
fn record_len(t: &Template, data: &[u8]) -> Option<usize> {
    if let Some(n) = t.fixed_len() {
        return (n <= data.len()).then_some(n);
    }
    let (last, runs) = t.varlen_runs.split_last()?;
    let mut pos = 0usize;
    for &run in runs {
        pos += run as usize;
        pos += match *data.get(pos)? {
            255 => 3 + u16::from_be_bytes([*data.get(pos + 1)?, *data.get(pos + 2)?]) as usize,
            n => 1 + n as usize,
        };
    }
    pos += *last as usize;
    (pos <= data.len()).then_some(pos)
}

struct TemplateEntry {
    template: Arc<Template>,
    refreshed: Timestamp,
}

/// What one entry of a domain's template map takes: key, entry and hashbrown's control byte.
pub(crate) const MAP_SLOT_BYTES: usize = std::mem::size_of::<(TemplateId, TemplateEntry)>() + 1;

#[derive(Default)]
struct Domain {
    templates: HashMap<TemplateId, TemplateEntry>,
    next_sequence: Option<u32>,
}

/// The session's template count and bytes, kept equal to the sums over its live templates.
#[derive(Default)]
struct Usage {
    templates: usize,
    bytes: usize,
}

impl Usage {
    fn release(&mut self, t: &Template) {
        self.templates -= 1;
        self.bytes -= t.heap_bytes();
    }
}

/// Whether a template last refreshed at `refreshed` is past `lifetime` at `now`.
fn is_expired(now: Timestamp, refreshed: Timestamp, lifetime: Duration) -> bool {
    now.saturating_since(refreshed) > lifetime
}

/// Defines (or redefines) `t` in `domain`, within the session's bounds. A refused template
/// leaves everything as it was, including a template of the same id it would have replaced.
fn define(
    cfg: &DecoderConfig,
    usage: &mut Usage,
    next_expiry: &mut Option<Timestamp>,
    domain: &mut Domain,
    domain_id: ObservationDomainId,
    t: Template,
    now: Timestamp,
) -> Result<(), DecodeError> {
    // Refreshed at `now`, the template expires after `now + lifetime`; an earlier bound of an
    // older refresh stays (a bound only has to be no later than every template's expiry).
    let mut note_refresh = || {
        if let Some(lifetime) = cfg.template_lifetime {
            let due = now.saturating_add(lifetime);
            *next_expiry = Some(next_expiry.map_or(due, |d| d.min(due)));
        }
    };
    let old_bytes = match domain.templates.get_mut(&t.id) {
        // A refresh (the same template again, as UDP exporters send periodically) keeps the
        // `Arc`, so consumers holding it see one template, and nothing is allocated.
        Some(e) if *e.template == t => {
            e.refreshed = now;
            note_refresh();
            return Ok(());
        }
        Some(e) => Some(e.template.heap_bytes()),
        None => None,
    };
    if old_bytes.is_none() && usage.templates >= cfg.max_templates {
        return Err(DecodeError::TooManyTemplates {
            template_id: t.id,
            domain: domain_id,
            max: cfg.max_templates,
        });
    }
    let bytes = t.heap_bytes();
    let in_use = usage.bytes - old_bytes.unwrap_or(0);
    if in_use + bytes > cfg.max_template_bytes {
        return Err(DecodeError::TooManyTemplateBytes {
            template_id: t.id,
            domain: domain_id,
            bytes,
            in_use,
            max: cfg.max_template_bytes,
        });
    }
    if old_bytes.is_none() {
        usage.templates += 1;
    }
    usage.bytes = in_use + bytes;
    note_refresh();
    domain.templates.insert(
        t.id,
        TemplateEntry {
            template: Arc::new(t),
            refreshed: now,
        },
    );
    Ok(())
}

/// Summary of one decoded message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageSummary {
    pub header: MessageHeader,
    pub data_records: u32,
    pub templates: u32,
}

/// Template state and counters for one transport session.
pub struct Decoder {
    cfg: DecoderConfig,
    domains: HashMap<ObservationDomainId, Domain>,
    stats: DecoderStats,
    usage: Usage,
    /// With a `template_lifetime`: no live template expires before this (a lower bound, exact
    /// after [`Decoder::expire`]), so a message only looks for expired templates when one may be.
    next_expiry: Option<Timestamp>,
}

impl Decoder {
    pub fn new(cfg: DecoderConfig) -> Decoder {
        Decoder {
            cfg,
            domains: HashMap::new(),
            stats: DecoderStats::default(),
            usage: Usage::default(),
            next_expiry: None,
        }
    }

    pub fn stats(&self) -> &DecoderStats {
        &self.stats
    }

    /// The template `id` of `domain`, if known.
    pub fn template(&self, domain: ObservationDomainId, id: TemplateId) -> Option<&Arc<Template>> {
        self.domains
            .get(&domain)?
            .templates
            .get(&id)
            .map(|e| &e.template)
    }

    /// Every live template with its domain, in no particular order.
    pub fn templates(&self) -> impl Iterator<Item = (ObservationDomainId, &Arc<Template>)> {
        self.domains
            .iter()
            .flat_map(|(&d, dom)| dom.templates.values().map(move |e| (d, &e.template)))
    }

    /// Heap bytes of the live templates ([`Template::heap_bytes`] summed), at most
    /// `max_template_bytes`.
    pub fn template_bytes(&self) -> usize {
        self.usage.bytes
    }

    /// Drops every template not refreshed within `template_lifetime` (none without one) and
    /// returns how many. [`Decoder::decode`] does this itself before each message when a template
    /// may have expired; call it from a timer to free the templates of a UDP exporter that has
    /// gone quiet.
    pub fn expire(&mut self, now: Timestamp) -> usize {
        let Some(lifetime) = self.cfg.template_lifetime else {
            return 0;
        };
        let usage = &mut self.usage;
        let mut expired = 0;
        let mut next: Option<Timestamp> = None;
        for d in self.domains.values_mut() {
            d.templates.retain(|_, e| {
                if is_expired(now, e.refreshed, lifetime) {
                    usage.release(&e.template);
                    expired += 1;
                    false
                } else {
                    let due = e.refreshed.saturating_add(lifetime);
                    next = Some(next.map_or(due, |n| n.min(due)));
                    true
                }
            });
        }
        self.next_expiry = next;
        self.stats.templates_expired += expired as u64;
        expired
    }

    /// Decodes one whole message (a UDP datagram, or one message out of [`super::StreamDeframer`]),
    /// applying its templates and calling `on_record` for each data record, in order.
    ///
    /// On error, records of the sets before the malformed one have been delivered and templates
    /// before it applied; the caller decides whether the session survives (over TCP it should not:
    /// the stream can no longer be trusted).
    pub fn decode<F>(
        &mut self,
        now: Timestamp,
        msg: &[u8],
        mut on_record: F,
    ) -> Result<MessageSummary, DecodeError>
    where
        F: FnMut(DataRecord<'_>),
    {
        let header = MessageHeader::parse(msg)?;
        if !self.domains.contains_key(&header.domain) && self.domains.len() >= self.cfg.max_domains
        {
            return Err(DecodeError::TooManyDomains {
                domain: header.domain,
                max: self.cfg.max_domains,
            });
        }
        // Expiring here, once per message, means no data set below can meet an expired template:
        // every template is either refreshed at `now` in this message or was live at its start.
        if self.next_expiry.is_some_and(|due| now > due) {
            self.expire(now);
        }
        self.stats.messages += 1;
        let domain = self.domains.entry(header.domain).or_default();
        let mut summary = MessageSummary {
            header,
            data_records: 0,
            templates: 0,
        };
        let mut pos = HEADER_LEN;
        while pos < msg.len() {
            let remaining = msg.len() - pos;
            if remaining < SET_HEADER_LEN {
                return Err(DecodeError::Truncated {
                    what: "set header",
                    offset: pos,
                    need: SET_HEADER_LEN,
                    have: remaining,
                });
            }
            let set_id = u16::from_be_bytes([msg[pos], msg[pos + 1]]);
            let set_len = u16::from_be_bytes([msg[pos + 2], msg[pos + 3]]);
            if (set_len as usize) < SET_HEADER_LEN || set_len as usize > remaining {
                return Err(DecodeError::BadSetLength {
                    set_id,
                    offset: pos,
                    length: set_len,
                    remaining,
                });
            }
            let body = &msg[pos + SET_HEADER_LEN..pos + set_len as usize];
            let body_off = pos + SET_HEADER_LEN;
            match set_id {
                TEMPLATE_SET_ID | OPTIONS_TEMPLATE_SET_ID => {
                    let options = set_id == OPTIONS_TEMPLATE_SET_ID;
                    let mut p = 0;
                    // Anything shorter than a template record header is padding (§3.3.1).
                    while body.len() - p >= 4 {
                        let (rec, next) = parse_template_record(
                            body,
                            p,
                            body_off,
                            options,
                            self.cfg.max_fields_per_template,
                        )?;
                        p = next;
                        match rec {
                            TemplateRecord::Define {
                                template,
                                nonstandard_lengths,
                            } => {
                                define(
                                    &self.cfg,
                                    &mut self.usage,
                                    &mut self.next_expiry,
                                    domain,
                                    header.domain,
                                    template,
                                    now,
                                )?;
                                if options {
                                    self.stats.options_templates += 1;
                                } else {
                                    self.stats.templates += 1;
                                }
                                self.stats.nonstandard_lengths += nonstandard_lengths as u64;
                                summary.templates += 1;
                            }
                            TemplateRecord::Withdraw(id) => {
                                self.stats.template_withdrawals += 1;
                                let usage = &mut self.usage;
                                if id == set_id {
                                    domain.templates.retain(|_, e| {
                                        let keep = e.template.is_options() != options;
                                        if !keep {
                                            usage.release(&e.template);
                                        }
                                        keep
                                    });
                                } else if let Some(e) = domain.templates.remove(&id) {
                                    usage.release(&e.template);
                                }
                            }
                        }
                    }
                }
                id if id >= MIN_DATA_SET_ID => {
                    let Some(entry) = domain.templates.get(&id) else {
                        self.stats.sets_without_template += 1;
                        self.stats.bytes_without_template += body.len() as u64;
                        pos += set_len as usize;
                        continue;
                    };
                    let t = &entry.template;
                    let mut p = 0;
                    let mut n = 0u32;
                    // What is left once fewer bytes remain than the smallest record is padding.
                    while body.len() - p >= t.min_len {
                        let len = record_len(t, &body[p..]).ok_or(DecodeError::RecordOverrun {
                            template_id: id,
                            offset: body_off + p,
                        })?;
                        on_record(DataRecord {
                            header: &header,
                            template: t,
                            data: &body[p..p + len],
                        });
                        p += len;
                        n += 1;
                    }
                    if t.is_options() {
                        self.stats.options_records += n as u64;
                    } else {
                        self.stats.data_records += n as u64;
                    }
                    summary.data_records += n;
                }
                _ => self.stats.reserved_sets += 1,
            }
            pos += set_len as usize;
        }
        if let Some(expected) = domain.next_sequence
            && expected != header.sequence
        {
            self.stats.sequence_gaps += 1;
            let ahead = header.sequence.wrapping_sub(expected);
            // Behind (a reordered or duplicated message) is a gap but no loss.
            if ahead < 1 << 31 {
                self.stats.records_missing += ahead as u64;
            }
        }
        domain.next_sequence = Some(header.sequence.wrapping_add(summary.data_records));
        Ok(summary)
    }
}
