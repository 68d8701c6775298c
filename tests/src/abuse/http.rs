//! A small blocking HTTP/1.1 client for the suite's own requests (health, `/metrics`, the API)
//! and for hostile ones: one request per connection (`Connection: close`), from a chosen source
//! address, every step bounded by a timeout. Bodies may be `Content-Length`, chunked, or read to
//! the end of the connection.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use super::GOOD_ADDR;

/// An answer.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("{e}: {}", self.text()))
    }
}

/// A TCP connection from `src` (any port) to `dst`, within `timeout`.
pub fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    s.bind(&SockAddr::from(SocketAddr::new(src, 0)))?;
    s.connect_timeout(&SockAddr::from(dst), timeout)?;
    Ok(s.into())
}

/// `GET path` from 127.0.0.1.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Response> {
    get_from(GOOD_ADDR, addr, path, timeout)
}

/// `GET path` from `src`, the whole exchange within `timeout`.
pub fn get_from(
    src: IpAddr,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> io::Result<Response> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    request_raw(src, addr, req.as_bytes(), timeout)
}

/// Sends `raw` (a whole request) on a new connection and reads the answer.
pub fn request_raw(
    src: IpAddr,
    addr: SocketAddr,
    raw: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let deadline = Instant::now() + timeout;
    let mut s = connect_from(src, addr, timeout)?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(raw)?;
    read_response(&mut s, deadline)
}

fn left(deadline: Instant) -> io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "HTTP deadline"));
    }
    Ok(d)
}

/// Reads one response from `s` (which the server closes after it: `Connection: close`).
pub fn read_response(s: &mut TcpStream, deadline: Instant) -> io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        s.set_read_timeout(Some(left(deadline)?))?;
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status: {head}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut body = buf[head_end..].to_vec();
    let mut read_more = |body: &mut Vec<u8>| -> io::Result<bool> {
        s.set_read_timeout(Some(left(deadline)?))?;
        let n = s.read(&mut chunk)?;
        body.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    };
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            if !read_more(&mut body)? {
                break;
            }
        }
        body.truncate(len);
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            let Some(e) = find(&body[pos..], b"\r\n") else {
                if !read_more(&mut body)? {
                    break;
                }
                continue;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&body[pos..pos + e])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                break;
            }
            let start = pos + e + 2;
            while body.len() < start + size + 2 {
                if !read_more(&mut body)? {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunk",
                    ));
                }
            }
            out.extend_from_slice(&body[start..start + size]);
            pos = start + size + 2;
        }
        body = out;
    } else {
        while read_more(&mut body)? {}
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
