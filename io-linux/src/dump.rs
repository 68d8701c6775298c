//! Dumping the conntrack table: one `IPCTNL_MSG_CT_GET` + `NLM_F_DUMP` request, then a streaming
//! parse of every received datagram straight into a reused `ConntrackEntry`, handed to a
//! [`DumpSink`].
//!
//! Invariant: a dump that returns `Ok` delivered one complete, uninterrupted pass of the kernel's
//! table. An interrupted pass (`NLM_F_DUMP_INTR`, `ENOBUFS`, a truncated datagram, repeated
//! `EINTR`) calls [`DumpSink::restart`] and starts over, a bounded number of times, then fails with
//! [`Error::DumpInterrupted`] — so a caller never mistakes half a table for the whole one.
//!
//! Allocation: the receive buffer and request buffer are allocated once per socket; the loop
//! itself allocates nothing (a sink that stores entries allocates what it stores).

use std::io;

use flowcore::model::ConntrackEntry;

use crate::ct::{
    CTA_MARK, CTA_MARK_MASK, CTA_ZONE, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_GET_STATS,
    IPCTNL_MSG_CT_NEW, ct_msg_type, encode_delete, encode_new, parse_entry,
};
use crate::error::{Error, Result};
use crate::nl::{
    Attrs, MsgBuf, Msgs, NFGENMSG_LEN, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_EXCL, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, be_u32,
};
use crate::sock::NlSock;

/// Datagrams of a dump are at most ~32 KiB (the kernel caps its dump skb there); 128 KiB leaves
/// room for any event or future kernel, and `MSG_TRUNC` catches the rest.
const RECV_BUF: usize = 128 * 1024;
/// Kernel receive buffer of a dump socket.
const DUMP_RCVBUF: usize = 4 * 1024 * 1024;
/// How many times one `recv` may be interrupted by signals before the pass is abandoned.
const MAX_EINTR: u32 = 64;
/// Requests per `sendmsg` when creating or deleting entries.
const BATCH_BYTES: usize = 60 * 1024;

/// IP family of a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }
}

/// Which entries a dump returns. Filters go to the kernel (family via `nfgenmsg`, `CTA_ZONE`,
/// `CTA_MARK`/`CTA_MARK_MASK`) and are applied again in user space, which covers kernels that
/// ignore or reject them and zone 0 (which the kernel treats as "no zone filter").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpFilter {
    pub family: Option<Family>,
    pub zone: Option<u16>,
    /// `(value, mask)`: entries with `mark & mask == value`.
    pub mark: Option<(u32, u32)>,
}

impl DumpFilter {
    pub fn matches(&self, e: &ConntrackEntry) -> bool {
        self.family
            .is_none_or(|f| e.orig.src.is_ipv4() == (f == Family::V4))
            && self.zone.is_none_or(|z| z == e.zone)
            && self.mark.is_none_or(|(v, m)| e.mark & m == v)
    }
}

/// Receives the entries of a dump.
pub trait DumpSink {
    fn entry(&mut self, e: &ConntrackEntry);
    /// The pass so far is void (it was interrupted); forget everything received since the dump
    /// started.
    fn restart(&mut self);
}

/// A caller-owned, reused `Vec`: cleared on restart, so after `Ok` it holds exactly one pass.
impl DumpSink for Vec<ConntrackEntry> {
    fn entry(&mut self, e: &ConntrackEntry) {
        self.push(*e);
    }
    fn restart(&mut self) {
        self.clear();
    }
}

/// What one dump cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Entries handed to the sink in the final, complete pass.
    pub entries: u64,
    /// Datagrams and bytes received in the final pass.
    pub datagrams: u64,
    pub bytes: u64,
    /// Passes abandoned and restarted.
    pub retries: u32,
    /// Messages that did not parse into an entry (counted, skipped).
    pub malformed: u64,
    /// The kernel rejected the filter attributes; they were applied in user space only.
    pub kernel_filter_rejected: bool,
}

/// Conntrack's own numbers (`IPCTNL_MSG_CT_GET_STATS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub entries: u32,
    pub max_entries: u32,
}

/// A ctnetlink request socket in the network namespace of the thread that opened it.
pub struct ConntrackSocket {
    sock: NlSock,
    buf: Vec<u8>,
    req: MsgBuf,
    seq: u32,
    max_retries: u32,
}

impl ConntrackSocket {
    /// Opens a socket in the calling thread's network namespace. The socket stays bound to that
    /// namespace wherever it is used afterwards.
    pub fn open() -> Result<ConntrackSocket> {
        let sock = NlSock::open(&[])?;
        sock.set_rcvbuf(DUMP_RCVBUF)?;
        sock.tune();
        Ok(ConntrackSocket {
            sock,
            buf: vec![0; RECV_BUF],
            req: MsgBuf::default(),
            seq: std::process::id().wrapping_mul(0x9e37_79b9),
            max_retries: 3,
        })
    }

    /// How many interrupted passes a dump restarts before giving up (default 3).
    pub fn set_max_retries(&mut self, n: u32) {
        self.max_retries = n;
    }

    /// Dumps the table into `sink`. See the module doc for the all-or-error guarantee.
    pub fn dump<S: DumpSink>(&mut self, filter: &DumpFilter, sink: &mut S) -> Result<DumpStats> {
        run_dump(
            &mut Wire(&self.sock),
            &mut self.buf,
            &mut self.req,
            &mut self.seq,
            filter,
            self.max_retries,
            Some(sink),
        )
    }

    /// The benchmark baseline: the same request and receive loop, walking only message headers
    /// (no attribute parsing, no sink). Its time is the kernel's own dump time plus `recv`.
    pub fn dump_bare(&mut self, filter: &DumpFilter) -> Result<DumpStats> {
        run_dump::<_, Vec<ConntrackEntry>>(
            &mut Wire(&self.sock),
            &mut self.buf,
            &mut self.req,
            &mut self.seq,
            filter,
            self.max_retries,
            None,
        )
    }

    /// Entry count and limit of this namespace's table. Also the cheapest way to learn whether
    /// we may talk to ctnetlink at all ([`Error::PermissionDenied`] otherwise).
    pub fn table_stats(&mut self) -> Result<TableStats> {
        self.seq = self.seq.wrapping_add(1);
        self.req.clear();
        self.req.begin_msg(
            ct_msg_type(IPCTNL_MSG_CT_GET_STATS),
            NLM_F_REQUEST | NLM_F_ACK,
            self.seq,
            0,
        );
        self.req.end_msg();
        self.sock
            .send(&self.req.buf)
            .map_err(|e| Error::io("send stats request", e))?;
        let mut out = TableStats::default();
        loop {
            let n = self.recv_blocking("recv stats")?;
            for m in Msgs::new(&self.buf[..n]) {
                let m = m.map_err(|()| Error::Malformed("truncated stats reply"))?;
                if m.seq != self.seq {
                    continue;
                }
                if m.ty == ct_msg_type(IPCTNL_MSG_CT_GET_STATS) {
                    let attrs = m.payload.get(NFGENMSG_LEN..).unwrap_or(&[]);
                    for (ty, v) in Attrs::new(attrs).map_while(|a| a.ok()) {
                        match ty {
                            1 => out.entries = be_u32(v).unwrap_or(0),
                            2 => out.max_entries = be_u32(v).unwrap_or(0),
                            _ => {}
                        }
                    }
                } else if let Some(code) = m.error_code() {
                    return if code == 0 {
                        Ok(out)
                    } else {
                        Err(Error::kernel("stats request", code))
                    };
                }
            }
        }
    }

    /// Creates entries (`IPCTNL_MSG_CT_NEW`), many requests per `sendmsg`. For tests and
    /// benchmarks: fills a table quickly without generating traffic. Fails on the first entry
    /// the kernel refuses (e.g. `EEXIST`, or `ENOMEM` when `nf_conntrack_max` is reached).
    pub fn create_entries<I: IntoIterator<Item = ConntrackEntry>>(
        &mut self,
        entries: I,
    ) -> Result<u64> {
        let mut n = 0u64;
        let mut it = entries.into_iter().peekable();
        while it.peek().is_some() {
            self.req.clear();
            while self.req.len() < BATCH_BYTES {
                let Some(e) = it.next() else { break };
                self.seq = self.seq.wrapping_add(1);
                // No NLM_F_ACK: success is silent, so the kernel only writes back failures.
                encode_new(
                    &mut self.req,
                    &e,
                    self.seq,
                    NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
                );
                n += 1;
            }
            self.send_batch("create")?;
        }
        Ok(n)
    }

    /// Deletes the entries with these original tuples (`IPCTNL_MSG_CT_DELETE`), batched. Entries
    /// already gone (`ENOENT`) are not an error: with churn that is the expected race.
    pub fn delete_entries<I: IntoIterator<Item = (flowcore::model::Tuple, u16)>>(
        &mut self,
        tuples: I,
    ) -> Result<u64> {
        let mut n = 0u64;
        let mut it = tuples.into_iter().peekable();
        while it.peek().is_some() {
            self.req.clear();
            while self.req.len() < BATCH_BYTES {
                let Some((t, zone)) = it.next() else { break };
                self.seq = self.seq.wrapping_add(1);
                encode_delete(&mut self.req, &t, zone, self.seq, NLM_F_REQUEST);
                n += 1;
            }
            self.send_batch("delete")?;
        }
        Ok(n)
    }

    /// Sends the built requests. nfnetlink handles them synchronously inside `sendmsg`, so once
    /// it returns every failure is already queued for us; collect them without blocking.
    fn send_batch(&mut self, op: &'static str) -> Result<()> {
        self.sock
            .send(&self.req.buf)
            .map_err(|e| Error::io(op, e))?;
        loop {
            let n = match self.sock.recv(&mut self.buf, true) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(op, e)),
            };
            for m in Msgs::new(&self.buf[..n]).map_while(|m| m.ok()) {
                match m.error_code() {
                    Some(0) | None => {}
                    Some(c) if c == -libc::ENOENT && op == "delete" => {}
                    Some(c) => return Err(Error::kernel(op, c)),
                }
            }
        }
    }

    fn recv_blocking(&mut self, op: &'static str) -> Result<usize> {
        for _ in 0..MAX_EINTR {
            match self.sock.recv(&mut self.buf, false) {
                Ok(n) => return Ok(n.min(self.buf.len())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(op, e)),
            }
        }
        Err(Error::io(op, io::Error::from(io::ErrorKind::Interrupted)))
    }
}

/// The two socket operations a dump needs, so the loop can be driven by scripted datagrams in
/// tests.
pub(crate) trait Transport {
    fn send(&mut self, buf: &[u8]) -> io::Result<()>;
    /// One datagram; returns its full length even if `buf` was shorter (`MSG_TRUNC`).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
}

struct Wire<'a>(&'a NlSock);

impl Transport for Wire<'_> {
    fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.send(buf)
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is a valid writable slice for its length.
        let n = unsafe {
            libc::recv(
                self.0.fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Why a pass was abandoned.
enum PassEnd {
    Complete,
    Interrupted(&'static str),
    /// The kernel refused the filter attributes: retry with user-space filtering only.
    FilterRejected,
}

pub(crate) fn run_dump<T: Transport, S: DumpSink>(
    t: &mut T,
    buf: &mut Vec<u8>,
    req: &mut MsgBuf,
    seq: &mut u32,
    filter: &DumpFilter,
    max_retries: u32,
    mut sink: Option<&mut S>,
) -> Result<DumpStats> {
    let mut stats = DumpStats::default();
    let mut kernel_filter = true;
    let mut attempt = 0u32;
    loop {
        *seq = seq.wrapping_add(1);
        build_request(req, *seq, filter, kernel_filter);
        t.send(&req.buf)
            .map_err(|e| Error::io("send dump request", e))?;
        stats.entries = 0;
        stats.datagrams = 0;
        stats.bytes = 0;
        let end = read_pass(
            t,
            buf,
            *seq,
            filter,
            sink.as_deref_mut(),
            &mut stats,
            kernel_filter,
        )?;
        let reason = match end {
            PassEnd::Complete => return Ok(stats),
            PassEnd::FilterRejected => {
                kernel_filter = false;
                stats.kernel_filter_rejected = true;
                if let Some(s) = sink.as_deref_mut() {
                    s.restart();
                }
                continue;
            }
            PassEnd::Interrupted(r) => r,
        };
        if let Some(s) = sink.as_deref_mut() {
            s.restart();
        }
        if attempt >= max_retries {
            return Err(Error::DumpInterrupted {
                attempts: attempt + 1,
                reason,
            });
        }
        attempt += 1;
        stats.retries = attempt;
    }
}

fn build_request(req: &mut MsgBuf, seq: u32, f: &DumpFilter, kernel_filter: bool) {
    req.clear();
    let family = f.family.map_or(libc::AF_UNSPEC as u8, Family::af);
    req.begin_msg(
        ct_msg_type(IPCTNL_MSG_CT_GET),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
    );
    if kernel_filter {
        // Zone 0 in the request means "no zone filter" to the kernel; user space handles it.
        if let Some(z) = f.zone.filter(|&z| z != 0) {
            req.attr_be16(CTA_ZONE, z);
        }
        if let Some((v, m)) = f.mark {
            req.attr_be32(CTA_MARK, v);
            req.attr_be32(CTA_MARK_MASK, m);
        }
    }
    req.end_msg();
}

fn read_pass<T: Transport, S: DumpSink>(
    t: &mut T,
    buf: &mut Vec<u8>,
    seq: u32,
    filter: &DumpFilter,
    mut sink: Option<&mut S>,
    stats: &mut DumpStats,
    kernel_filter: bool,
) -> Result<PassEnd> {
    let mut entry = ConntrackEntry::default();
    let mut eintr = 0u32;
    // Once the pass is known to be void we stop parsing but keep reading to its end, so the
    // kernel's dump finishes and the next request is not refused with EBUSY.
    let mut void: Option<&'static str> = None;
    let filtered_in_kernel =
        kernel_filter && (filter.mark.is_some() || filter.zone.is_some_and(|z| z != 0));
    loop {
        let n = match t.recv(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                eintr += 1;
                if eintr > MAX_EINTR {
                    // The dump is still running in the kernel: drain it before a new pass.
                    void = Some("recv interrupted by signals");
                    eintr = 0;
                }
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // Messages were dropped: the pass has a hole. Keep reading to its end.
                void.get_or_insert("receive buffer overrun (ENOBUFS)");
                continue;
            }
            Err(e) => return Err(Error::io("recv dump", e)),
        };
        if n > buf.len() {
            // Truncated datagram (MSG_TRUNC): entries were cut off. Grow for the next pass.
            buf.resize(n, 0);
            void.get_or_insert("datagram larger than the receive buffer");
            continue;
        }
        stats.datagrams += 1;
        stats.bytes += n as u64;
        for m in Msgs::new(&buf[..n]) {
            let Ok(m) = m else {
                void.get_or_insert("malformed datagram");
                break;
            };
            if m.seq != seq {
                continue; // a leftover of an earlier, abandoned request
            }
            if m.flags & NLM_F_DUMP_INTR != 0 {
                void.get_or_insert("NLM_F_DUMP_INTR: the table changed during the dump");
            }
            match m.ty {
                NLMSG_DONE => {
                    return Ok(match void {
                        Some(r) => PassEnd::Interrupted(r),
                        None => PassEnd::Complete,
                    });
                }
                NLMSG_ERROR => {
                    let code = m.error_code().unwrap_or(-libc::EIO);
                    return match -code {
                        0 => continue,
                        libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ENOBUFS => {
                            Ok(PassEnd::Interrupted("the kernel aborted the dump"))
                        }
                        libc::EINVAL | libc::EOPNOTSUPP if filtered_in_kernel => {
                            Ok(PassEnd::FilterRejected)
                        }
                        _ => Err(Error::kernel("dump", code)),
                    };
                }
                NLMSG_OVERRUN => {
                    void.get_or_insert("NLMSG_OVERRUN");
                }
                ty if ty == ct_msg_type(IPCTNL_MSG_CT_NEW) && void.is_none() => {
                    match sink.as_deref_mut() {
                        Some(s) => match parse_entry(m.payload, &mut entry) {
                            Ok(()) if filter.matches(&entry) => {
                                s.entry(&entry);
                                stats.entries += 1;
                            }
                            Ok(()) => {}
                            Err(_) => stats.malformed += 1,
                        },
                        None => stats.entries += 1,
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use flowcore::model::{ConntrackStatus, Tuple};

    use super::*;
    use crate::nl::NLM_F_REQUEST;

    /// Replays scripted passes; each `send` starts the next script, re-stamped with the
    /// request's sequence number.
    struct Script {
        passes: VecDeque<Vec<Vec<u8>>>,
        current: VecDeque<Vec<u8>>,
        seq: u32,
        sent: usize,
    }

    impl Transport for Script {
        fn send(&mut self, buf: &[u8]) -> io::Result<()> {
            self.seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
            self.current = self.passes.pop_front().unwrap_or_default().into();
            self.sent += 1;
            Ok(())
        }
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut d = self
                .current
                .pop_front()
                .expect("recv past the end of the script");
            let mut off = 0;
            while off + 16 <= d.len() {
                let len = u32::from_ne_bytes(d[off..off + 4].try_into().unwrap()) as usize;
                d[off + 8..off + 12].copy_from_slice(&self.seq.to_ne_bytes());
                off += crate::nl::align4(len);
            }
            buf[..d.len()].copy_from_slice(&d);
            Ok(d.len())
        }
    }

    fn entry(i: u16) -> ConntrackEntry {
        let a = "10.0.0.1".parse().unwrap();
        let b = "10.0.0.2".parse().unwrap();
        ConntrackEntry {
            orig: Tuple {
                src: a,
                dst: b,
                src_port: i,
                dst_port: 53,
                proto: 17,
            },
            reply: Tuple {
                src: b,
                dst: a,
                src_port: 53,
                dst_port: i,
                proto: 17,
            },
            timeout: 30,
            status: ConntrackStatus(0),
            ..Default::default()
        }
    }

    fn datagram(entries: &[ConntrackEntry], flags: u16, done: bool) -> Vec<u8> {
        let mut m = MsgBuf::default();
        for e in entries {
            encode_new(&mut m, e, 0, flags);
        }
        if done {
            m.begin_msg(NLMSG_DONE, flags, 0, 0);
            m.end_msg();
        }
        m.buf
    }

    fn dump(
        passes: Vec<Vec<Vec<u8>>>,
        retries: u32,
    ) -> (Result<DumpStats>, Vec<ConntrackEntry>, usize) {
        let mut s = Script {
            passes: passes.into(),
            current: VecDeque::new(),
            seq: 0,
            sent: 0,
        };
        let mut out = Vec::new();
        let mut buf = vec![0; RECV_BUF];
        let r = run_dump(
            &mut s,
            &mut buf,
            &mut MsgBuf::default(),
            &mut 0,
            &DumpFilter::default(),
            retries,
            Some(&mut out),
        );
        (r, out, s.sent)
    }

    #[test]
    fn complete_pass_streams_every_entry() {
        let es: Vec<_> = (1..=5).map(entry).collect();
        let pass = vec![
            datagram(&es[..3], NLM_F_REQUEST, false),
            datagram(&es[3..], NLM_F_REQUEST, true),
        ];
        let (r, out, sent) = dump(vec![pass], 3);
        assert_eq!(r.unwrap().entries, 5);
        assert_eq!(out, es);
        assert_eq!(sent, 1);
    }

    #[test]
    fn dump_intr_restarts_and_never_keeps_the_partial_pass() {
        let es: Vec<_> = (1..=4).map(entry).collect();
        let interrupted = vec![
            datagram(&es[..2], 0, false),
            datagram(&es[2..3], NLM_F_DUMP_INTR, true),
        ];
        let good = vec![datagram(&es, 0, true)];
        let (r, out, sent) = dump(vec![interrupted, good], 3);
        let st = r.unwrap();
        assert_eq!((st.entries, st.retries), (4, 1));
        assert_eq!(out, es, "only the complete pass is kept");
        assert_eq!(sent, 2);
    }

    #[test]
    fn persistent_interruption_is_a_typed_error_and_an_empty_sink() {
        let es: Vec<_> = (1..=2).map(entry).collect();
        let bad = || vec![datagram(&es, NLM_F_DUMP_INTR, true)];
        let (r, out, sent) = dump(vec![bad(), bad(), bad()], 2);
        assert!(
            matches!(r, Err(Error::DumpInterrupted { attempts: 3, .. })),
            "{r:?}"
        );
        assert!(out.is_empty());
        assert_eq!(sent, 3);
    }

    #[test]
    fn eperm_is_permission_denied() {
        let mut m = MsgBuf::default();
        m.begin_msg(NLMSG_ERROR, 0, 0, 0);
        m.buf.truncate(m.buf.len() - 4);
        m.buf.extend_from_slice(&(-libc::EPERM).to_ne_bytes());
        m.buf.extend_from_slice(&[0u8; 16]);
        m.end_msg();
        let (r, _, _) = dump(vec![vec![m.buf]], 3);
        assert!(matches!(r, Err(Error::PermissionDenied)), "{r:?}");
    }

    #[test]
    fn filter_matches_family_zone_and_mark() {
        let mut e = entry(1);
        e.zone = 4;
        e.mark = 0x12;
        let f = |family, zone, mark| DumpFilter { family, zone, mark }.matches(&e);
        assert!(f(None, None, None));
        assert!(f(Some(Family::V4), Some(4), Some((0x2, 0xf))));
        assert!(!f(Some(Family::V6), None, None));
        assert!(!f(None, Some(0), None));
        assert!(!f(None, None, Some((0x1, 0xf))));
    }
}
