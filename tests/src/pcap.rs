//! Synthetic captures: Ethernet frames carrying IPv4/IPv6 UDP or IPv4 TCP, written to classic
//! pcap files, and UDP payloads read back out of them.
//!
//! IPv4 header, UDP and TCP checksums are valid. Ethernet addresses are fixed and meaningless.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};

const ETH_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const ETH_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// One frame and its capture time.
pub struct Frame {
    pub ts: Duration,
    pub data: Vec<u8>,
}

fn ones_complement(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP/UDP checksum over the IPv4 or IPv6 pseudo-header and `l4` (checksum field zero).
fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + l4.len() + 1);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            data.extend_from_slice(&s.octets());
            data.extend_from_slice(&d.octets());
            data.extend_from_slice(&[0, proto]);
            data.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            data.extend_from_slice(&s.octets());
            data.extend_from_slice(&d.octets());
            data.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            data.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families {src} -> {dst}"),
    }
    data.extend_from_slice(l4);
    ones_complement(&data)
}

/// Ethernet + IP header for `proto` with `l4` (the transport header and payload) after it.
fn ip_frame(src: IpAddr, dst: IpAddr, proto: u8, ttl: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(54 + l4.len());
    f.extend_from_slice(&ETH_DST);
    f.extend_from_slice(&ETH_SRC);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = (20 + l4.len()) as u16;
            let mut h = [0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[6] = 0x40; // don't fragment
            h[8] = ttl;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = ones_complement(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.push(proto);
            f.push(ttl);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed address families {src} -> {dst}"),
    }
    f.extend_from_slice(l4);
    f
}

/// An Ethernet/IP/UDP frame.
pub fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    // The IPv4 total length and the UDP length are 16-bit.
    assert!(
        payload.len() <= 65_535 - 28,
        "a {}-byte payload does not fit one UDP datagram",
        payload.len()
    );
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    let c = l4_checksum(src.ip(), dst.ip(), 17, &l4);
    // 0 means "no checksum" in UDP; a computed 0 is sent as all ones (RFC 768).
    l4[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    ip_frame(src.ip(), dst.ip(), 17, 64, &l4)
}

/// TCP flag bits.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// An Ethernet/IP/TCP frame (no options).
pub fn tcp_frame(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20 + payload.len());
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    l4.extend_from_slice(&seq.to_be_bytes());
    l4.extend_from_slice(&ack.to_be_bytes());
    l4.push(5 << 4);
    l4.push(flags);
    l4.extend_from_slice(&65535u16.to_be_bytes());
    l4.extend_from_slice(&[0, 0, 0, 0]);
    l4.extend_from_slice(payload);
    let c = l4_checksum(src.ip(), dst.ip(), 6, &l4);
    l4[16..18].copy_from_slice(&c.to_be_bytes());
    ip_frame(src.ip(), dst.ip(), 6, 64, &l4)
}

/// Writes `frames` to a classic (microsecond, Ethernet) pcap file.
pub fn write_pcap(path: &Path, frames: &[Frame]) {
    let file = std::fs::File::create(path).expect("create pcap");
    let mut w = PcapWriter::new(std::io::BufWriter::new(file)).expect("pcap header");
    for f in frames {
        w.write_packet(&PcapPacket::new(f.ts, f.data.len() as u32, &f.data))
            .expect("write packet");
    }
    use std::io::Write;
    w.into_writer().flush().expect("flush pcap");
}

/// Writes IPFIX messages as UDP datagrams from `src` to `dst`, one frame per message, 1 ms apart
/// starting at `start`.
pub fn write_udp_pcap(
    path: &Path,
    src: SocketAddr,
    dst: SocketAddr,
    start: Duration,
    msgs: &[Vec<u8>],
) {
    let frames: Vec<Frame> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| Frame {
            ts: start + Duration::from_millis(i as u64),
            data: udp_frame(src, dst, m),
        })
        .collect();
    write_pcap(path, &frames);
}

/// The UDP payloads of an Ethernet/IPv4 pcap written by this module (or any simple capture).
pub fn read_udp_payloads(path: &Path) -> Vec<Vec<u8>> {
    let file = std::fs::File::open(path).expect("open pcap");
    let mut r = PcapReader::new(file).expect("pcap header");
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.expect("pcap packet");
        let d = &p.data;
        let (proto, l4) = match u16::from_be_bytes([d[12], d[13]]) {
            0x0800 => {
                let ihl = (d[14] & 0x0f) as usize * 4;
                (d[23], &d[14 + ihl..])
            }
            0x86dd => (d[20], &d[54..]),
            t => panic!("unexpected ethertype {t:#06x}"),
        };
        if proto == 17 {
            out.push(l4[8..].to_vec());
        }
    }
    out
}

/// Writes `data` as one TCP connection from `client` to `server`: handshake, the bytes in
/// segments of at most `mss` (cut without regard to what they carry, so a reader must
/// reassemble), an ACK from the server every other segment, and a FIN exchange. Frames are
/// 100 µs apart from `start`.
pub fn write_tcp_stream_pcap(
    path: &Path,
    client: SocketAddr,
    server: SocketAddr,
    start: Duration,
    data: &[u8],
    mss: usize,
) {
    let mut frames = Vec::new();
    let mut t = start;
    let mut push = |d: Vec<u8>| {
        frames.push(Frame { ts: t, data: d });
        t += Duration::from_micros(100);
    };
    let (c0, s0) = (100_000u32, 900_000u32);
    push(tcp_frame(client, server, c0, 0, SYN, &[]));
    push(tcp_frame(server, client, s0, c0 + 1, SYN | ACK, &[]));
    push(tcp_frame(client, server, c0 + 1, s0 + 1, ACK, &[]));
    let mut seq = c0 + 1;
    for (k, chunk) in data.chunks(mss.max(1)).enumerate() {
        push(tcp_frame(client, server, seq, s0 + 1, PSH | ACK, chunk));
        seq += chunk.len() as u32;
        if k % 2 == 1 {
            push(tcp_frame(server, client, s0 + 1, seq, ACK, &[]));
        }
    }
    push(tcp_frame(client, server, seq, s0 + 1, FIN | ACK, &[]));
    push(tcp_frame(server, client, s0 + 1, seq + 1, FIN | ACK, &[]));
    push(tcp_frame(client, server, seq + 1, s0 + 2, ACK, &[]));
    write_pcap(path, &frames);
}
