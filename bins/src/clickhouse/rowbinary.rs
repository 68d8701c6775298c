//! RowBinary, ClickHouse's plain binary row format, for the types the schema uses: integers
//! little-endian, `DateTime` as a UInt32 of Unix seconds, `String` as a LEB128 length and bytes.
//!
//! The record encoder writes straight from an [`AggregatedRecord`] into a reused buffer (no
//! per-record allocation); IP addresses are formatted into a stack buffer. Columns are in
//! [`schema::FLOW_COLUMNS`](super::schema::FLOW_COLUMNS) order — `encoded_record_matches_columns`
//! checks the count.

use std::io::Write as _;
use std::net::IpAddr;

use flowcore::aggregator::{AggregatedRecord, NodeCounters};

#[inline]
fn leb128(buf: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf.push(b);
            return;
        }
        buf.push(b | 0x80);
    }
}

#[inline]
pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    leb128(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

#[inline]
fn put_ip(buf: &mut Vec<u8>, ip: Option<&IpAddr>) {
    // The longest IPv6 text is 45 bytes (IPv4-mapped with full groups).
    let mut tmp = [0u8; 48];
    let n = match ip {
        Some(ip) => {
            let mut w = &mut tmp[..];
            let _ = write!(w, "{ip}");
            48 - w.len()
        }
        None => 0,
    };
    buf.push(n as u8);
    buf.extend_from_slice(&tmp[..n]);
}

#[inline]
fn u16le(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_le_bytes());
}
#[inline]
fn u32le(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}
#[inline]
fn u64le(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// `DateTime` is a UInt32; a time past 2106 (only a corrupt peer sends one) saturates.
fn datetime(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

fn node(buf: &mut Vec<u8>, c: Option<&NodeCounters>) {
    let c = match c {
        Some(c) => {
            buf.push(1);
            *c
        }
        None => {
            buf.push(0);
            NodeCounters::default()
        }
    };
    for v in c.totals.iter().chain(&c.deltas) {
        u64le(buf, *v);
    }
    u64le(buf, c.throughput);
    u64le(buf, c.reverse_throughput);
    u32le(buf, c.end_secs);
}

/// Appends one record as a RowBinary row of the record table.
pub fn encode_record(buf: &mut Vec<u8>, r: &AggregatedRecord, id: u64, inserted_at: u64) {
    u64le(buf, id);
    u32le(buf, datetime(inserted_at));
    u32le(buf, r.start_secs);
    u32le(buf, r.end_secs);
    buf.push(r.end_reason);
    buf.push(r.flow_type);
    put_ip(buf, Some(&r.key.src));
    put_ip(buf, Some(&r.key.dst));
    u16le(buf, r.key.src_port);
    u16le(buf, r.key.dst_port);
    buf.push(r.key.proto);
    for v in r.totals.iter().chain(&r.deltas) {
        u64le(buf, *v);
    }
    u64le(buf, r.throughput);
    u64le(buf, r.reverse_throughput);
    for s in [
        &r.src_pod,
        &r.src_namespace,
        &r.src_node,
        &r.dst_pod,
        &r.dst_namespace,
        &r.dst_node,
    ] {
        put_str(buf, s);
    }
    put_ip(buf, r.cluster_ip.as_ref());
    u16le(buf, r.service_port);
    put_str(buf, &r.service_port_name);
    for p in [&r.ingress, &r.egress] {
        put_str(buf, &p.name);
        put_str(buf, &p.namespace);
        buf.push(p.kind);
        put_str(buf, &p.rule);
        buf.push(p.action);
    }
    put_str(buf, &r.tcp_state);
    put_str(buf, &r.src_labels);
    put_str(buf, &r.dst_labels);
    buf.push(r.correlated as u8);
    put_ip(buf, r.original_exporter.as_ref());
    u32le(buf, r.original_domain);
    put_str(buf, &r.cluster_id);
    node(buf, r.from_source.as_ref());
    node(buf, r.from_destination.as_ref());
}

/// Reads RowBinary values in order. Every read is bounds-checked: a short or garbled answer is
/// an error, never a panic.
pub struct Reader<'a> {
    buf: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
#[error("malformed RowBinary answer: {0}")]
pub struct DecodeError(pub &'static str);

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let mut len = 0u64;
        let mut shift = 0;
        loop {
            let b = self.u8()?;
            len |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return Err(DecodeError("string length overflows"));
            }
        }
        let bytes = self.take(usize::try_from(len).map_err(|_| DecodeError("string too long"))?)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::synth::Synth;

    /// Counts the values a row holds by walking it with the column types.
    fn walk(r: &mut Reader<'_>) -> usize {
        let mut n = 0;
        for (_, ty) in super::super::schema::FLOW_COLUMNS {
            match *ty {
                "UInt8" => drop(r.u8().unwrap()),
                "UInt16" => drop(r.u16().unwrap()),
                "UInt32" | "DateTime" => drop(r.u32().unwrap()),
                "UInt64" => drop(r.u64().unwrap()),
                "String" => drop(r.string().unwrap()),
                t => panic!("type {t} has no reader"),
            }
            n += 1;
        }
        n
    }

    #[test]
    fn encoded_record_matches_columns() {
        let recs = Synth::new(1, 3, 10).batch(200, 1_767_225_600, 600);
        let mut buf = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            encode_record(&mut buf, r, i as u64, 5);
        }
        let mut rd = Reader::new(&buf);
        for _ in &recs {
            walk(&mut rd);
        }
        assert!(rd.is_empty(), "{} bytes left over", rd.buf.len());
    }

    #[test]
    fn strings_use_leb128_lengths() {
        let mut b = Vec::new();
        put_str(&mut b, &"x".repeat(300));
        assert_eq!(&b[..2], &[0xac, 0x02]);
        assert_eq!(Reader::new(&b).string().unwrap().len(), 300);
        assert!(Reader::new(&b[..100]).string().is_err());
        assert!(Reader::new(&[0xff; 12]).string().is_err());
    }
}
