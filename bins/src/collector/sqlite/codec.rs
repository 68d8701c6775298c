//! The `flows.rest` BLOB: every record field no Flow Records filter needs, packed as LEB128
//! varints (names as `dict` ids) behind a version byte. Binding one BLOB instead of ~50
//! columns is most of what makes a row cheap to insert; the API reads `rest` only for the
//! page of rows it returns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowcore::aggregator::{AggregatedRecord, NodeCounters};

const VERSION: u8 = 1;

/// The unpacked `rest`: names are still `dict` ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rest {
    pub inserted_at: u64,
    pub start_secs: u64,
    pub end_reason: u64,
    pub totals: [u64; 4],
    pub deltas: [u64; 4],
    pub throughput: u64,
    pub reverse_throughput: u64,
    pub service_port: u64,
    pub cluster_ip: Option<IpAddr>,
    /// kind, rule id, action.
    pub ingress: [u64; 3],
    pub egress: [u64; 3],
    pub tcp_state: u64,
    pub src_labels: u64,
    pub dst_labels: u64,
    pub correlated: bool,
    pub exporter: Option<IpAddr>,
    pub domain: u64,
    pub cluster_id: u64,
    /// totals[4], deltas[4], throughput, reverse throughput, end secs.
    pub from_source: Option<[u64; 11]>,
    pub from_destination: Option<[u64; 11]>,
}

/// Ids of the names packed into `rest`, interned by the caller.
pub struct RestIds {
    pub in_rule: u64,
    pub eg_rule: u64,
    pub tcp_state: u64,
    pub src_labels: u64,
    pub dst_labels: u64,
    pub cluster_id: u64,
}

fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_ip(out: &mut Vec<u8>, ip: Option<IpAddr>) {
    match ip {
        None => out.push(0),
        Some(IpAddr::V4(a)) => {
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        Some(IpAddr::V6(a)) => {
            out.push(16);
            out.extend_from_slice(&a.octets());
        }
    }
}

fn put_node(out: &mut Vec<u8>, c: Option<&NodeCounters>) {
    let Some(c) = c else {
        out.push(0);
        return;
    };
    out.push(1);
    for v in c.totals.iter().chain(&c.deltas) {
        put(out, *v);
    }
    put(out, c.throughput);
    put(out, c.reverse_throughput);
    put(out, c.end_secs as u64);
}

/// Appends `r`'s packed `rest` to `out`.
pub fn encode(out: &mut Vec<u8>, r: &AggregatedRecord, received_at: u64, ids: &RestIds) {
    out.push(VERSION);
    put(out, received_at);
    put(out, r.start_secs as u64);
    put(out, r.end_reason as u64);
    for v in r.totals.iter().chain(&r.deltas) {
        put(out, *v);
    }
    put(out, r.throughput);
    put(out, r.reverse_throughput);
    put(out, r.service_port as u64);
    put_ip(out, r.cluster_ip);
    for (p, rule) in [(&r.ingress, ids.in_rule), (&r.egress, ids.eg_rule)] {
        put(out, p.kind as u64);
        put(out, rule);
        put(out, p.action as u64);
    }
    put(out, ids.tcp_state);
    put(out, ids.src_labels);
    put(out, ids.dst_labels);
    out.push(r.correlated as u8);
    put_ip(out, r.original_exporter);
    put(out, r.original_domain as u64);
    put(out, ids.cluster_id);
    put_node(out, r.from_source.as_ref());
    put_node(out, r.from_destination.as_ref());
}

#[derive(Debug, thiserror::Error)]
#[error("flows.rest: {0}")]
pub struct Corrupt(&'static str);

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, Corrupt> {
        let (&b, rest) = self.0.split_first().ok_or(Corrupt("truncated"))?;
        self.0 = rest;
        Ok(b)
    }

    fn uint(&mut self) -> Result<u64, Corrupt> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(Corrupt("varint longer than 64 bits"))
    }

    fn ip(&mut self) -> Result<Option<IpAddr>, Corrupt> {
        match self.byte()? {
            0 => Ok(None),
            4 => Ok(Some(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)))),
            16 => Ok(Some(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)))),
            _ => Err(Corrupt("bad address tag")),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Corrupt> {
        if self.0.len() < N {
            return Err(Corrupt("truncated"));
        }
        let (a, rest) = self.0.split_at(N);
        self.0 = rest;
        Ok(a.try_into().unwrap_or([0; N]))
    }

    fn node(&mut self) -> Result<Option<[u64; 11]>, Corrupt> {
        if self.byte()? == 0 {
            return Ok(None);
        }
        let mut v = [0u64; 11];
        for x in &mut v {
            *x = self.uint()?;
        }
        Ok(Some(v))
    }
}

pub fn decode(b: &[u8]) -> Result<Rest, Corrupt> {
    let mut r = Reader(b);
    if r.byte()? != VERSION {
        return Err(Corrupt("unknown version"));
    }
    let mut out = Rest {
        inserted_at: r.uint()?,
        start_secs: r.uint()?,
        end_reason: r.uint()?,
        ..Rest::default()
    };
    for v in out.totals.iter_mut().chain(out.deltas.iter_mut()) {
        *v = r.uint()?;
    }
    out.throughput = r.uint()?;
    out.reverse_throughput = r.uint()?;
    out.service_port = r.uint()?;
    out.cluster_ip = r.ip()?;
    for p in [&mut out.ingress, &mut out.egress] {
        for v in p.iter_mut() {
            *v = r.uint()?;
        }
    }
    out.tcp_state = r.uint()?;
    out.src_labels = r.uint()?;
    out.dst_labels = r.uint()?;
    out.correlated = r.byte()? != 0;
    out.exporter = r.ip()?;
    out.domain = r.uint()?;
    out.cluster_id = r.uint()?;
    out.from_source = r.node()?;
    out.from_destination = r.node()?;
    Ok(out)
}

/// An address as its 4 or 16 bytes (the `flows` and rollup BLOB form).
pub fn ip_bytes(ip: &IpAddr, buf: &mut [u8; 16]) -> usize {
    match ip {
        IpAddr::V4(a) => {
            buf[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            *buf = a.octets();
            16
        }
    }
}

/// The inverse of [`ip_bytes`]; None for any other length (the empty "no address" BLOB).
pub fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(|a| IpAddr::V4(a.into())),
        16 => <[u8; 16]>::try_from(b).ok().map(|a| IpAddr::V6(a.into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::synth::Synth;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let mut s = Synth::new(3, 3, 20);
        let ids = RestIds {
            in_rule: 1,
            eg_rule: 300,
            tcp_state: 2,
            src_labels: 70_000,
            dst_labels: 0,
            cluster_id: u64::MAX,
        };
        for r in s.batch(200, 1_700_000_000, 600) {
            let mut b = Vec::new();
            encode(&mut b, &r, 1_700_000_123, &ids);
            let d = decode(&b).unwrap();
            assert_eq!(d.inserted_at, 1_700_000_123);
            assert_eq!(d.start_secs, r.start_secs as u64);
            assert_eq!((d.totals, d.deltas), (r.totals, r.deltas));
            assert_eq!(d.cluster_ip, r.cluster_ip);
            assert_eq!(d.exporter, r.original_exporter);
            assert_eq!(
                d.egress,
                [r.egress.kind as u64, 300, r.egress.action as u64]
            );
            assert_eq!((d.src_labels, d.cluster_id), (70_000, u64::MAX));
            assert_eq!(d.from_source.is_some(), r.from_source.is_some());
            assert_eq!(
                d.from_destination.map(|n| n[10]),
                r.from_destination.map(|n| n.end_secs as u64)
            );
            for cut in 0..b.len() {
                assert!(decode(&b[..cut]).is_err());
            }
        }
        assert!(decode(&[9, 0, 0]).is_err());
        assert!(
            decode(&[
                VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ])
            .is_err()
        );
    }
}
