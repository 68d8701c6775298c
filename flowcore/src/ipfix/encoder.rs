//! The exporting side: one [`Encoder`] per observation domain and transport session.
//!
//! Records are written field by field straight into the message being built (no per-record
//! allocation); a record is never split across messages — if it does not fit, the message is
//! closed without it and the record starts the next one. Consecutive records of one template
//! share a set. Finished messages are polled with [`Encoder::poll_transmit`].
//!
//! Templates go out in a message of their own before the first data message of a session, again
//! after [`Encoder::reset_session`] (a reconnect), and for UDP every `template_refresh`
//! (RFC 7011 §8.4), driven by [`Encoder::poll_timeout`] / [`Encoder::handle_timeout`].
//!
//! Sequence numbers count the data records sent before each message in this session (§3.1).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::ie::{DataType, VARLEN};
use crate::model::Timestamp;

use super::error::EncodeError;
use super::template::{FieldSpec, Template, TemplateId};
use super::value::{ntp_from_unix_micros, ntp_from_unix_nanos};
use super::{
    HEADER_LEN, MAX_MESSAGE_LEN, OPTIONS_TEMPLATE_SET_ID, ObservationDomainId, SET_HEADER_LEN,
    TEMPLATE_SET_ID, VERSION,
};

/// How messages are built.
#[derive(Clone, Debug)]
pub struct EncoderConfig {
    pub domain: ObservationDomainId,
    /// Largest message, 512..=65535 bytes.
    pub max_message_size: usize,
    /// UDP: resend templates this often. `None` for TCP/TLS.
    pub template_refresh: Option<Duration>,
}

impl EncoderConfig {
    /// For a TCP or TLS session: large messages, templates once per session.
    pub fn stream(domain: ObservationDomainId) -> Self {
        EncoderConfig {
            domain,
            max_message_size: MAX_MESSAGE_LEN,
            template_refresh: None,
        }
    }

    /// For UDP over a path with this MTU: each message fits one datagram, whether the path is
    /// IPv4 or IPv6 (40-byte IPv6 + 8-byte UDP headers), and templates are refreshed.
    pub fn datagram(domain: ObservationDomainId, path_mtu: usize, refresh: Duration) -> Self {
        EncoderConfig {
            domain,
            max_message_size: path_mtu.saturating_sub(48).clamp(512, MAX_MESSAGE_LEN),
            template_refresh: Some(refresh),
        }
    }
}

/// Counters of what was built.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EncoderStats {
    pub messages: u64,
    pub template_messages: u64,
    pub records: u64,
    pub bytes: u64,
}

/// Builds IPFIX messages for one observation domain.
pub struct Encoder {
    cfg: EncoderConfig,
    templates: Vec<Template>,
    buf: BytesMut,
    /// A data message is being built in `buf`.
    msg_open: bool,
    /// Start offset and template id of the open set.
    set: Option<(usize, TemplateId)>,
    msg_records: u32,
    sequence: u32,
    /// Finished messages and how many data records each carries.
    out: VecDeque<(Bytes, u32)>,
    templates_due: bool,
    templates_sent: Option<Timestamp>,
    scratch: Vec<u8>,
    stats: EncoderStats,
}

impl Encoder {
    pub fn new(cfg: EncoderConfig) -> Result<Encoder, EncodeError> {
        if !(512..=MAX_MESSAGE_LEN).contains(&cfg.max_message_size) {
            return Err(EncodeError::BadMaxMessageSize(cfg.max_message_size));
        }
        Ok(Encoder {
            buf: BytesMut::with_capacity(cfg.max_message_size),
            cfg,
            templates: Vec::new(),
            msg_open: false,
            set: None,
            msg_records: 0,
            sequence: 0,
            out: VecDeque::new(),
            templates_due: true,
            templates_sent: None,
            scratch: Vec::new(),
            stats: EncoderStats::default(),
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &EncoderStats {
        &self.stats
    }

    /// Defines (or redefines) a data template; it is sent before the next data message.
    pub fn add_template(
        &mut self,
        id: TemplateId,
        fields: &[FieldSpec],
    ) -> Result<(), EncodeError> {
        self.insert_template(id, fields.to_vec(), 0)
    }

    /// Defines an options template whose first `scope.len()` fields are scope fields.
    pub fn add_options_template(
        &mut self,
        id: TemplateId,
        scope: &[FieldSpec],
        fields: &[FieldSpec],
    ) -> Result<(), EncodeError> {
        if scope.is_empty() {
            return Err(EncodeError::BadTemplate {
                template_id: id,
                reason: "an options template needs at least one scope field".into(),
            });
        }
        let all = scope.iter().chain(fields).copied().collect();
        self.insert_template(id, all, scope.len() as u16)
    }

    fn insert_template(
        &mut self,
        id: TemplateId,
        fields: Vec<FieldSpec>,
        scope: u16,
    ) -> Result<(), EncodeError> {
        if id < super::MIN_DATA_SET_ID {
            return Err(EncodeError::BadTemplateId(id));
        }
        let t = Template::new(id, fields, scope).map_err(|e| EncodeError::BadTemplate {
            template_id: id,
            reason: e.to_string(),
        })?;
        if t.record_wire_len() + HEADER_LEN + SET_HEADER_LEN > self.cfg.max_message_size {
            return Err(EncodeError::BadTemplate {
                template_id: id,
                reason: "the template record alone does not fit in a message".into(),
            });
        }
        match self.templates.iter_mut().find(|x| x.id == id) {
            Some(x) => *x = t,
            None => self.templates.push(t),
        }
        self.templates_due = true;
        Ok(())
    }

    pub fn template(&self, id: TemplateId) -> Option<&Template> {
        self.templates.iter().find(|t| t.id == id)
    }

    /// Withdraws a template (TCP/TLS only; RFC 7011 §8.1) in a message of its own.
    pub fn withdraw_template(&mut self, now: Timestamp, id: TemplateId) -> Result<(), EncodeError> {
        let i = self
            .templates
            .iter()
            .position(|t| t.id == id)
            .ok_or(EncodeError::UnknownTemplate(id))?;
        let options = self.templates.remove(i).is_options();
        self.flush(now);
        self.open_message();
        self.buf.put_u16(if options {
            OPTIONS_TEMPLATE_SET_ID
        } else {
            TEMPLATE_SET_ID
        });
        self.buf.put_u16(8);
        self.buf.put_u16(id);
        self.buf.put_u16(0);
        self.close_message(now);
        Ok(())
    }

    /// A new transport session (a reconnect): templates are sent again before the next data, and
    /// sequence numbers restart. A message under construction is kept and goes out after them.
    pub fn reset_session(&mut self) {
        self.templates_due = true;
        self.sequence = 0;
    }

    /// Starts a data record of template `id`. Write every field in template order, then call
    /// [`RecordWriter::finish`]; a writer dropped unfinished leaves no trace.
    #[inline]
    pub fn record(
        &mut self,
        now: Timestamp,
        id: TemplateId,
    ) -> Result<RecordWriter<'_>, EncodeError> {
        let fields = self
            .templates
            .iter()
            .find(|t| t.id == id)
            .ok_or(EncodeError::UnknownTemplate(id))?
            .fields
            .clone();
        if self.templates_due {
            self.send_templates(now);
        }
        if !self.msg_open {
            self.open_message();
        }
        if self.set.is_none_or(|(_, t)| t != id) {
            self.open_set(id);
        }
        let rec_start = self.buf.len();
        Ok(RecordWriter {
            enc: self,
            fields,
            tid: id,
            field: 0,
            rec_start,
            now,
            err: None,
            done: false,
        })
    }

    /// Closes the message under construction, if any, so it can be polled.
    pub fn flush(&mut self, now: Timestamp) {
        if self.msg_open {
            self.close_message(now);
        }
    }

    /// The next finished message.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front().map(|(m, _)| m)
    }

    /// The next finished message and the number of data records in it. Records go into messages
    /// in the order they were written, so a caller that tracks per-record state (acknowledgements)
    /// takes that many from the front of its own queue.
    pub fn poll_message(&mut self) -> Option<(Bytes, u32)> {
        self.out.pop_front()
    }

    /// Finished messages not yet polled.
    pub fn queued(&self) -> usize {
        self.out.len()
    }

    /// When the templates are next due for a refresh (UDP).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let refresh = self.cfg.template_refresh?;
        Some(self.templates_sent? + refresh)
    }

    /// Sends the templates again when the refresh interval has passed.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.poll_timeout().is_some_and(|t| now >= t) {
            self.send_templates(now);
        }
    }

    fn send_templates(&mut self, now: Timestamp) {
        self.flush(now);
        self.templates_due = false;
        self.templates_sent = Some(now);
        if self.templates.is_empty() {
            return;
        }
        for options in [false, true] {
            let set_id = if options {
                OPTIONS_TEMPLATE_SET_ID
            } else {
                TEMPLATE_SET_ID
            };
            for i in 0..self.templates.len() {
                let t = &self.templates[i];
                if t.is_options() != options {
                    continue;
                }
                let need = t.record_wire_len();
                if self.msg_open && self.buf.len() + need > self.cfg.max_message_size {
                    self.close_message(now);
                }
                if !self.msg_open {
                    self.open_message();
                }
                if self.set.is_none_or(|(_, s)| s != set_id) {
                    self.open_set(set_id);
                }
                self.templates[i].write_record(&mut self.buf);
            }
        }
        if self.msg_open {
            self.stats.template_messages += 1;
            self.close_message(now);
        }
    }

    fn open_message(&mut self) {
        debug_assert!(!self.msg_open && self.buf.is_empty());
        // No large reserve here: once the previous message's `Bytes` is dropped, growth reclaims
        // its buffer, so steady state allocates nothing.
        self.buf.put_bytes(0, HEADER_LEN);
        self.msg_open = true;
    }

    fn close_set(&mut self) {
        if let Some((start, _)) = self.set.take() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Opens a set with id `id`; its length is filled in by `close_set`.
    fn open_set(&mut self, id: u16) {
        self.close_set();
        self.set = Some((self.buf.len(), id));
        self.buf.put_u16(id);
        self.buf.put_u16(0);
    }

    fn close_message(&mut self, now: Timestamp) {
        self.close_set();
        let len = self.buf.len() as u16;
        let h = &mut self.buf[..HEADER_LEN];
        h[0..2].copy_from_slice(&VERSION.to_be_bytes());
        h[2..4].copy_from_slice(&len.to_be_bytes());
        h[4..8].copy_from_slice(&(now.as_secs() as u32).to_be_bytes());
        h[8..12].copy_from_slice(&self.sequence.to_be_bytes());
        h[12..16].copy_from_slice(&self.cfg.domain.to_be_bytes());
        let records = self.msg_records;
        self.sequence = self.sequence.wrapping_add(self.msg_records);
        self.stats.messages += 1;
        self.stats.records += self.msg_records as u64;
        self.stats.bytes += len as u64;
        self.msg_records = 0;
        self.msg_open = false;
        self.out.push_back((self.buf.split().freeze(), records));
    }
}

/// Writes one data record's fields, in template order, into the message under construction.
///
/// Each method checks the value against the next field's type and length; the first mismatch is
/// kept and returned by [`RecordWriter::finish`], which then removes the partial record.
pub struct RecordWriter<'e> {
    enc: &'e mut Encoder,
    fields: std::sync::Arc<[FieldSpec]>,
    tid: TemplateId,
    field: usize,
    rec_start: usize,
    now: Timestamp,
    err: Option<EncodeError>,
    done: bool,
}

impl RecordWriter<'_> {
    /// The next field's spec, if the template has one and it is of an accepted kind.
    #[inline]
    fn next(&mut self, wrote: &'static str, ok: impl Fn(DataType) -> bool) -> Option<FieldSpec> {
        if self.err.is_some() {
            return None;
        }
        let i = self.field;
        self.field += 1;
        match self.fields.get(i) {
            Some(spec) if ok(spec.data_type) => Some(*spec),
            _ => {
                self.mismatch(i, wrote);
                None
            }
        }
    }

    #[cold]
    fn mismatch(&mut self, i: usize, wrote: &'static str) {
        match self.fields.get(i) {
            Some(spec) => {
                self.err = Some(EncodeError::FieldMismatch {
                    template_id: self.tid,
                    index: i,
                    name: spec.name.unwrap_or("unknown"),
                    wrote,
                    expected: format!("{} ({} bytes)", spec.data_type, spec.len),
                });
            }
            None => {
                self.err = Some(EncodeError::FieldCount {
                    template_id: self.tid,
                    written: i + 1,
                    expected: self.fields.len(),
                });
            }
        }
    }

    #[inline]
    fn put_uint(&mut self, v: u64, spec: FieldSpec) {
        let len = spec.len as usize;
        if len < 8 && v >> (8 * len) != 0 {
            self.value_too_large(v, spec);
            return;
        }
        // Branch-free for every reduced size: write 8 bytes with the value's bytes first, then
        // drop the surplus. Lengths vary field by field, and a jump table on them mispredicts.
        let buf = &mut self.enc.buf;
        buf.put_u64(v << (64 - 8 * len));
        buf.truncate(buf.len() - (8 - len));
    }

    #[cold]
    fn value_too_large(&mut self, v: u64, spec: FieldSpec) {
        self.err = Some(EncodeError::ValueTooLarge {
            template_id: self.tid,
            index: self.field - 1,
            name: spec.name.unwrap_or("unknown"),
            value: v,
            len: spec.len,
        });
    }

    /// An unsigned integer field (any size the template gives it, reduced-size included).
    #[inline]
    pub fn uint(&mut self, v: u64) -> &mut Self {
        use DataType::*;
        if let Some(spec) = self.next("unsigned", |t| {
            matches!(t, Unsigned8 | Unsigned16 | Unsigned32 | Unsigned64)
        }) {
            self.put_uint(v, spec);
        }
        self
    }

    /// A signed integer field.
    #[inline]
    pub fn int(&mut self, v: i64) -> &mut Self {
        use DataType::*;
        if let Some(spec) = self.next("signed", |t| {
            matches!(t, Signed8 | Signed16 | Signed32 | Signed64)
        }) {
            let len = spec.len as usize;
            self.enc.buf.put_slice(&v.to_be_bytes()[8 - len..]);
        }
        self
    }

    /// A float32/float64 field (float64 may be reduced to 4 bytes).
    #[inline]
    pub fn float(&mut self, v: f64) -> &mut Self {
        if let Some(spec) = self.next("float", |t| {
            matches!(t, DataType::Float32 | DataType::Float64)
        }) {
            if spec.len == 4 {
                self.enc.buf.put_f32(v as f32);
            } else {
                self.enc.buf.put_f64(v);
            }
        }
        self
    }

    #[inline]
    pub fn boolean(&mut self, v: bool) -> &mut Self {
        if self.next("boolean", |t| t == DataType::Boolean).is_some() {
            self.enc.buf.put_u8(if v { 1 } else { 2 });
        }
        self
    }

    #[inline]
    pub fn mac(&mut self, v: [u8; 6]) -> &mut Self {
        if self
            .next("macAddress", |t| t == DataType::MacAddress)
            .is_some()
        {
            self.enc.buf.put_slice(&v);
        }
        self
    }

    /// An IPv4 or IPv6 address field; the address family must match the field's type.
    #[inline]
    pub fn ip(&mut self, v: IpAddr) -> &mut Self {
        match v {
            IpAddr::V4(a) => {
                if self
                    .next("ipv4Address", |t| t == DataType::Ipv4Address)
                    .is_some()
                {
                    self.enc.buf.put_slice(&a.octets());
                }
            }
            IpAddr::V6(a) => {
                if self
                    .next("ipv6Address", |t| t == DataType::Ipv6Address)
                    .is_some()
                {
                    self.enc.buf.put_slice(&a.octets());
                }
            }
        }
        self
    }

    /// A string field: variable-length fields get a length prefix; fixed-length ones are padded
    /// with zero bytes, and a longer value is an error rather than a silent cut.
    #[inline]
    pub fn string(&mut self, v: &str) -> &mut Self {
        if let Some(spec) = self.next("string", |t| t == DataType::String) {
            self.put_octets(v.as_bytes(), spec);
        }
        self
    }

    /// An octetArray field (also unknown elements and lists, carried as octets).
    #[inline]
    pub fn octets(&mut self, v: &[u8]) -> &mut Self {
        use DataType::*;
        if let Some(spec) = self.next("octetArray", |t| {
            matches!(
                t,
                OctetArray | BasicList | SubTemplateList | SubTemplateMultiList
            )
        }) {
            self.put_octets(v, spec);
        }
        self
    }

    #[inline]
    fn put_octets(&mut self, v: &[u8], spec: FieldSpec) {
        let buf = &mut self.enc.buf;
        if spec.len == VARLEN {
            if v.len() < 255 {
                buf.put_u8(v.len() as u8);
            } else {
                // Longer than any message can carry is caught by `finish` as RecordTooLarge.
                buf.put_u8(255);
                buf.put_u16(v.len().min(u16::MAX as usize) as u16);
            }
            buf.put_slice(&v[..v.len().min(u16::MAX as usize)]);
        } else if v.len() <= spec.len as usize {
            buf.put_slice(v);
            buf.put_bytes(0, spec.len as usize - v.len());
        } else {
            self.err = Some(EncodeError::ValueTooLarge {
                template_id: self.tid,
                index: self.field - 1,
                name: spec.name.unwrap_or("unknown"),
                value: v.len() as u64,
                len: spec.len,
            });
        }
    }

    /// A dateTime* field from a timestamp, in the field's own unit and format.
    #[inline]
    pub fn time(&mut self, t: Timestamp) -> &mut Self {
        use DataType::*;
        if let Some(spec) = self.next("timestamp", |t| {
            matches!(
                t,
                DateTimeSeconds | DateTimeMilliseconds | DateTimeMicroseconds | DateTimeNanoseconds
            )
        }) {
            let buf = &mut self.enc.buf;
            match spec.data_type {
                DateTimeSeconds => buf.put_u32(t.as_secs() as u32),
                DateTimeMilliseconds => buf.put_u64(t.as_millis()),
                DateTimeMicroseconds => buf.put_u64(ntp_from_unix_micros(t.as_nanos() / 1000)),
                _ => buf.put_u64(ntp_from_unix_nanos(t.as_nanos())),
            }
        }
        self
    }

    /// Any field from a raw, already-encoded value of exactly the field's length (or, for a
    /// variable-length field, its content). For relaying fields a decoder produced.
    #[inline]
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        if let Some(spec) = self.next("raw", |_| true) {
            if spec.len == VARLEN || v.len() == spec.len as usize {
                self.put_octets(v, spec);
            } else {
                self.err = Some(EncodeError::FieldMismatch {
                    template_id: self.tid,
                    index: self.field - 1,
                    name: spec.name.unwrap_or("unknown"),
                    wrote: "raw bytes of another length",
                    expected: format!("{} bytes", spec.len),
                });
            }
        }
        self
    }

    /// Any field from a decoded value (for relaying and tests); the value's kind must fit the
    /// field's type.
    pub fn value(&mut self, v: &super::FieldValue<'_>) -> &mut Self {
        use super::FieldValue as V;
        match *v {
            V::Unsigned(x) => self.uint(x),
            V::Signed(x) => self.int(x),
            V::Float(x) => self.float(x),
            V::Bool(x) => self.boolean(x),
            V::Mac(x) => self.mac(x),
            V::Ipv4(a) => self.ip(IpAddr::V4(a)),
            V::Ipv6(a) => self.ip(IpAddr::V6(a)),
            V::String(b) => {
                if let Some(spec) = self.next("string", |t| t == DataType::String) {
                    self.put_octets(b, spec);
                }
                self
            }
            V::Octets(b) => self.raw(b),
            V::DateTimeSeconds(x) => self.time(Timestamp::from_secs(x as u64)),
            V::DateTimeMillis(x) => self.time(Timestamp::from_millis(x)),
            V::DateTimeMicros(x) => self.time(Timestamp::from_nanos(
                (x.max(0) as u64).saturating_mul(1000),
            )),
            V::DateTimeNanos(x) => self.time(Timestamp::from_nanos(x.max(0) as u64)),
        }
    }

    /// Completes the record. On error the partial record is removed and the message is as before.
    /// Calling it again does nothing.
    pub fn finish(&mut self) -> Result<(), EncodeError> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        let expected = self.fields.len();
        if self.err.is_none() && self.field != expected {
            self.err = Some(EncodeError::FieldCount {
                template_id: self.tid,
                written: self.field,
                expected,
            });
        }
        if let Some(e) = self.err.take() {
            self.rollback();
            return Err(e);
        }
        let enc = &mut *self.enc;
        if enc.buf.len() <= enc.cfg.max_message_size {
            enc.msg_records += 1;
            return Ok(());
        }
        // Does not fit: close the message without it and start the next one with it.
        let tid = self.tid;
        let rec_len = enc.buf.len() - self.rec_start;
        if rec_len + HEADER_LEN + SET_HEADER_LEN > enc.cfg.max_message_size {
            self.rollback();
            return Err(EncodeError::RecordTooLarge {
                template_id: tid,
                len: rec_len,
                max: self.enc.cfg.max_message_size,
            });
        }
        enc.scratch.clear();
        enc.scratch.extend_from_slice(&enc.buf[self.rec_start..]);
        self.rollback();
        let enc = &mut *self.enc;
        enc.close_message(self.now);
        enc.open_message();
        enc.open_set(tid);
        enc.buf.extend_from_slice(&enc.scratch);
        enc.msg_records += 1;
        Ok(())
    }

    /// Removes the partial record (and a set it opened, and a message with nothing in it).
    fn rollback(&mut self) {
        let enc = &mut *self.enc;
        enc.buf.truncate(self.rec_start);
        if let Some((start, _)) = enc.set
            && enc.buf.len() == start + SET_HEADER_LEN
        {
            enc.buf.truncate(start);
            enc.set = None;
        }
        if enc.buf.len() == HEADER_LEN && enc.msg_records == 0 {
            enc.buf.clear();
            enc.msg_open = false;
        }
    }
}

impl Drop for RecordWriter<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.rollback();
        }
    }
}
