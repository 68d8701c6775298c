//! A small, deterministic traffic capture for third-party exporters to turn into flows: TCP
//! connections (handshake, data both ways, FIN close) and UDP request/response exchanges, over
//! IPv4 and IPv6, with fixed timestamps. softflowd and pmacct's nfprobe read it offline.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::TempDir;
use crate::pcap::{ACK, FIN, Frame, PSH, SYN, tcp_frame, udp_frame, write_pcap};

/// Capture time of the first packet (2025-11-24T16:00:00Z).
pub const START: Duration = Duration::from_secs(1_764_000_000);

/// One expected flow of the capture, in the client → server direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Packets and IP bytes (IP header included) client → server and back.
    pub packets: (u64, u64),
    pub octets: (u64, u64),
}

fn v4(a: u8, b: u8) -> IpAddr {
    Ipv4Addr::new(10, a, 0, b).into()
}

fn v6(a: u16, b: u16) -> IpAddr {
    Ipv6Addr::new(0xfd00, a, 0, 0, 0, 0, 0, b).into()
}

struct Builder {
    frames: Vec<Frame>,
    t: Duration,
    flows: Vec<Flow>,
}

impl Builder {
    fn push(&mut self, data: Vec<u8>) -> u64 {
        self.t += Duration::from_micros(1250);
        // IP bytes: the frame less its 14-byte Ethernet header.
        let ip_len = (data.len() - 14) as u64;
        self.frames.push(Frame { ts: self.t, data });
        ip_len
    }

    fn tcp(&mut self, client: SocketAddr, server: SocketAddr, exchanges: &[(usize, usize)]) {
        let mut f = Flow {
            proto: 6,
            client,
            server,
            packets: (0, 0),
            octets: (0, 0),
        };
        let (mut cs, mut ss) = (1000u32, 5000u32);
        let up = |b: &mut Builder, f: &mut Flow, d: Vec<u8>| {
            f.packets.0 += 1;
            f.octets.0 += b.push(d);
        };
        let down = |b: &mut Builder, f: &mut Flow, d: Vec<u8>| {
            f.packets.1 += 1;
            f.octets.1 += b.push(d);
        };
        up(self, &mut f, tcp_frame(client, server, cs, 0, SYN, &[]));
        down(
            self,
            &mut f,
            tcp_frame(server, client, ss, cs + 1, SYN | ACK, &[]),
        );
        cs += 1;
        ss += 1;
        up(self, &mut f, tcp_frame(client, server, cs, ss, ACK, &[]));
        for (i, (req, resp)) in exchanges.iter().enumerate() {
            let q = vec![b'a' + (i % 26) as u8; *req];
            up(
                self,
                &mut f,
                tcp_frame(client, server, cs, ss, PSH | ACK, &q),
            );
            cs += *req as u32;
            let r = vec![b'A' + (i % 26) as u8; *resp];
            down(
                self,
                &mut f,
                tcp_frame(server, client, ss, cs, PSH | ACK, &r),
            );
            ss += *resp as u32;
        }
        up(
            self,
            &mut f,
            tcp_frame(client, server, cs, ss, FIN | ACK, &[]),
        );
        down(
            self,
            &mut f,
            tcp_frame(server, client, ss, cs + 1, FIN | ACK, &[]),
        );
        up(
            self,
            &mut f,
            tcp_frame(client, server, cs + 1, ss + 1, ACK, &[]),
        );
        self.flows.push(f);
    }

    fn udp(&mut self, client: SocketAddr, server: SocketAddr, exchanges: &[(usize, usize)]) {
        let mut f = Flow {
            proto: 17,
            client,
            server,
            packets: (0, 0),
            octets: (0, 0),
        };
        for (i, (req, resp)) in exchanges.iter().enumerate() {
            f.packets.0 += 1;
            f.octets.0 += self.push(udp_frame(client, server, &vec![i as u8; *req]));
            if *resp > 0 {
                f.packets.1 += 1;
                f.octets.1 += self.push(udp_frame(server, client, &vec![!(i as u8); *resp]));
            }
        }
        self.flows.push(f);
    }
}

/// The capture written to `DIR/traffic.pcap` for an exporter to read: its path and the flows
/// in it.
pub fn capture_file(dir: &TempDir) -> (PathBuf, Vec<Flow>) {
    let (frames, flows) = capture();
    let path = dir.join("traffic.pcap");
    write_pcap(&path, &frames);
    (path, flows)
}

/// The capture's frames and the flows in it.
pub fn capture() -> (Vec<Frame>, Vec<Flow>) {
    let mut b = Builder {
        frames: Vec::new(),
        t: START,
        flows: Vec::new(),
    };
    let sa = SocketAddr::new;
    b.tcp(
        sa(v4(1, 10), 40001),
        sa(v4(2, 20), 80),
        &[(120, 1400), (80, 600)],
    );
    b.udp(
        sa(v4(1, 11), 53001),
        sa(v4(2, 53), 53),
        &[(40, 120), (41, 200)],
    );
    b.tcp(
        sa(v4(1, 12), 40002),
        sa(v4(2, 21), 443),
        &[(517, 1200), (64, 3000), (90, 40)],
    );
    b.tcp(sa(v6(1, 10), 40003), sa(v6(2, 20), 8080), &[(300, 900)]);
    b.udp(
        sa(v6(1, 11), 53002),
        sa(v6(2, 53), 53),
        &[(45, 130), (46, 0)],
    );
    b.udp(
        sa(v4(1, 13), 5000),
        sa(v4(2, 22), 5001),
        &[(1000, 0), (1000, 0), (1000, 0)],
    );
    // Many short UDP exchanges, so exporters need several messages (templates once, sequence
    // numbers advancing).
    for k in 0..40u16 {
        let c = if k % 4 == 3 {
            sa(v6(3, k), 30000 + k)
        } else {
            sa(v4(3, k as u8), 30000 + k)
        };
        let s = if k % 4 == 3 {
            sa(v6(4, 1), 9000)
        } else {
            sa(v4(4, 1), 9000)
        };
        b.udp(c, s, &[(20 + k as usize, 30 + 2 * k as usize)]);
    }
    (b.frames, b.flows)
}
