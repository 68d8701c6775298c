//! A replay buffer in front of an [`Exporter`], for callers that cannot re-create what they
//! export (the aggregator: once a record left its core, nothing else holds it).
//!
//! Every data message the caller's encoder finishes is kept here until the exporter reports it
//! written. When the session is lost, the messages not written are sent again, in order, on the
//! next session, after that session's templates; so a collector restart loses nothing that was
//! produced while it was away, within the bound. Beyond `max_bytes` the oldest messages not yet
//! handed to the exporter are dropped, and their records counted.
//!
//! ## How it works
//! - The caller's encoder is never reset per session. Messages with no data records are the
//!   encoder's template messages: the newest is kept and leads every session (and, for UDP, a
//!   refresh from `Encoder::handle_timeout` is sent on the current session).
//! - Sequence numbers are this module's: each message is copied on send with the header's
//!   sequence number rewritten to the data records sent before it on the session (RFC 7011 §3.1),
//!   so replayed messages are in sequence and the collector sees no gap.
//! - Messages in flight (queued in the exporter, not reported yet) are at the front of the
//!   buffer. A new session is used only once every message of the old one has reported: a
//!   message the old session wrote is never written again, one it failed is written on the new
//!   session, both in order.
//!
//! ## What is not covered
//! IPFIX has no acknowledgements: "written" means handed to the kernel. Data a collector
//! accepted into its socket buffer but never read before it died is lost (see
//! [`super::exporter`]'s delivery guarantee); a collector that drains its sessions when it stops
//! (flowlens's does) loses nothing.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use flowcore::ipfix::HEADER_LEN;
use tokio::sync::{mpsc, watch};

use super::exporter::{Exporter, Outcome, SessionId, SessionState};

/// Bounds of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Bytes of IPFIX held at most (messages in flight count too).
    pub max_bytes: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            max_bytes: 64 << 20,
        }
    }
}

/// What the buffer did, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Data messages / records reported written.
    pub messages_written: u64,
    pub records_written: u64,
    /// Data messages sent again on a later session.
    pub messages_replayed: u64,
    /// Records dropped because the buffer was full.
    pub records_dropped: u64,
}

struct Entry {
    tag: u64,
    msg: Bytes,
    records: u32,
    /// Handed to the exporter, outcome not reported yet.
    in_flight: bool,
    /// Handed to the exporter at least once before.
    tried: bool,
}

/// The buffer and the exporter it feeds (module docs).
pub struct ReplayExporter {
    exporter: Exporter,
    outcomes: mpsc::Receiver<Outcome>,
    state: watch::Receiver<SessionState>,
    cfg: ReplayConfig,
    capacity: usize,
    templates: Option<Bytes>,
    /// Oldest first: in-flight entries, then entries waiting for a session.
    buf: VecDeque<Entry>,
    bytes: usize,
    records: u64,
    in_flight: usize,
    /// Bytes of the copies queued in the exporter (a copy per handover: the sequence number is
    /// rewritten), at most [`IN_FLIGHT_BYTES`] beyond one message.
    in_flight_bytes: usize,
    next_tag: u64,
    /// The session messages are being sent on, and the data records sent on it so far.
    session: Option<(SessionId, u32)>,
    stats: ReplayStats,
}

/// Bytes handed to the exporter at once at most (plus one message): enough to keep a socket
/// busy, small beside the buffer, since each handover is a copy.
const IN_FLIGHT_BYTES: usize = 4 << 20;

/// Tags of template messages, whose outcomes need no bookkeeping.
const TEMPLATE_TAG: u64 = u64::MAX;

impl ReplayExporter {
    /// `capacity` is the exporter's queue capacity (`ExporterConfig::queue_capacity`): no more
    /// than that is handed over at once, so a handover never fails for a full queue.
    pub fn new(
        exporter: Exporter,
        outcomes: mpsc::Receiver<Outcome>,
        capacity: usize,
        cfg: ReplayConfig,
    ) -> ReplayExporter {
        ReplayExporter {
            state: exporter.sessions(),
            exporter,
            outcomes,
            cfg,
            capacity: capacity.max(2),
            templates: None,
            buf: VecDeque::new(),
            bytes: 0,
            records: 0,
            in_flight: 0,
            in_flight_bytes: 0,
            next_tag: 0,
            session: None,
            stats: ReplayStats::default(),
        }
    }

    pub fn stats(&self) -> ReplayStats {
        self.stats
    }

    /// Bytes and records held (in flight or waiting).
    pub fn held(&self) -> (usize, u64) {
        (self.bytes, self.records)
    }

    /// Takes a finished message from the encoder (`Encoder::poll_message`). Call
    /// [`pump`](Self::pump) afterwards.
    pub fn push(&mut self, msg: Bytes, records: u32) {
        if records == 0 {
            // A template message: it leads every session; a refresh goes out now.
            if let Some((s, seq)) = self.session {
                self.send_raw(s, TEMPLATE_TAG, &msg, seq);
            }
            self.templates = Some(msg);
            return;
        }
        self.bytes += msg.len();
        self.records += u64::from(records);
        self.buf.push_back(Entry {
            tag: self.next_tag,
            msg,
            records,
            in_flight: false,
            tried: false,
        });
        self.next_tag += 1;
        // Over the bound: drop the oldest messages not handed over yet (the ones in flight may
        // still be written). The newest stays, so what is kept is the most recent window.
        while self.bytes > self.cfg.max_bytes {
            let Some(i) = self.buf.iter().position(|e| !e.in_flight) else {
                break;
            };
            if i + 1 == self.buf.len() && self.buf.len() > 1 {
                // Only the new message is waiting; everything older is in flight. Keep it:
                // the bound is exceeded by at most one message while that lasts.
                break;
            }
            let e = self.buf.remove(i).expect("index from position");
            self.bytes -= e.msg.len();
            self.records -= u64::from(e.records);
            self.stats.records_dropped += u64::from(e.records);
        }
    }

    /// Processes reported outcomes and hands waiting messages to the exporter while the current
    /// session has room. Cheap to call often.
    pub fn pump(&mut self) {
        while let Ok(o) = self.outcomes.try_recv() {
            self.outcome(o);
        }
        let current = self.state.borrow_and_update().current;
        if self.session.map(|s| s.0) != current {
            // Switch only once the old session's messages have all reported (module docs).
            if self.in_flight > 0 {
                return;
            }
            self.session = current.map(|s| (s, 0));
            if let Some(s) = current
                && let Some(t) = self.templates.clone()
            {
                self.send_raw(s, TEMPLATE_TAG, &t, 0);
            }
        }
        let Some((session, _)) = self.session else {
            return;
        };
        // Template messages take queue slots too; keep one spare.
        while self.in_flight + 1 < self.capacity && self.in_flight_bytes < IN_FLIGHT_BYTES {
            let Some(i) = self.buf.iter().position(|e| !e.in_flight) else {
                break;
            };
            let (tag, msg, records, tried) = {
                let e = &self.buf[i];
                (e.tag, e.msg.clone(), e.records, e.tried)
            };
            let seq = self.session.map_or(0, |s| s.1);
            if !self.send_raw(session, tag, &msg, seq) {
                break;
            }
            let e = &mut self.buf[i];
            e.in_flight = true;
            e.tried = true;
            self.in_flight += 1;
            self.in_flight_bytes += msg.len();
            if tried {
                self.stats.messages_replayed += 1;
            }
            if let Some(s) = self.session.as_mut() {
                s.1 = s.1.wrapping_add(records);
            }
        }
    }

    /// Waits for something that lets [`pump`](Self::pump) make progress: an outcome or a session
    /// change. Returns `false` once the exporter has shut down.
    pub async fn wait(&mut self) -> bool {
        tokio::select! {
            o = self.outcomes.recv() => match o {
                Some(o) => { self.outcome(o); true }
                None => false,
            },
            r = self.state.changed() => r.is_ok(),
        }
    }

    /// Messages handed to the exporter whose outcome has not been reported yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Messages waiting or in flight.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Whether the caller should hand over more now: while the collector is connected, only
    /// while the buffer is under half full (a slow collector then slows the caller down rather
    /// than filling the buffer and dropping); while it is away, always (the buffer keeps the
    /// newest window and counts what it drops).
    pub fn accepting(&self) -> bool {
        self.state.borrow().current.is_none() || self.bytes < self.cfg.max_bytes / 2
    }

    /// Gives up on everything held (shutdown); returns the records dropped.
    pub fn abandon(&mut self) -> u64 {
        let n = self.buf.drain(..).map(|e| u64::from(e.records)).sum();
        self.bytes = 0;
        self.records = 0;
        n
    }

    fn outcome(&mut self, o: Outcome) {
        if o.tag == TEMPLATE_TAG {
            return;
        }
        let Some(i) = self.buf.iter().position(|e| e.tag == o.tag) else {
            return;
        };
        if !self.buf[i].in_flight {
            return;
        }
        self.in_flight -= 1;
        self.in_flight_bytes -= self.buf[i].msg.len();
        if o.result.is_ok() {
            let e = self.buf.remove(i).expect("index from position");
            self.bytes -= e.msg.len();
            self.records -= u64::from(e.records);
            self.stats.messages_written += 1;
            self.stats.records_written += u64::from(e.records);
        } else {
            // Sent again on the next session.
            self.buf[i].in_flight = false;
        }
    }

    /// Copies `msg` with its sequence number set to `seq` and queues it; false if the exporter
    /// refused it (it stays waiting).
    fn send_raw(&mut self, session: SessionId, tag: u64, msg: &Bytes, seq: u32) -> bool {
        if msg.len() < HEADER_LEN {
            return false;
        }
        let mut b = BytesMut::from(&msg[..]);
        b[8..12].copy_from_slice(&seq.to_be_bytes());
        self.exporter.try_send(session, tag, b.freeze()).is_ok()
    }
}
