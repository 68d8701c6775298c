//! Conntrack events: the kernel multicasts NEW/UPDATE/DESTROY messages to subscribed sockets.
//! DESTROY carries the final counters (and stop timestamp) of a connection, so one that opens
//! and closes between two dumps is still seen.
//!
//! Multicast has no flow control: when the socket's receive buffer is full the kernel drops
//! events and the next `recv` fails with `ENOBUFS`. We count that ([`EventSocket::lost`]) and
//! report it ([`Received::Lost`]); the caller reconciles with its next dump.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use flowcore::model::ConntrackEntry;

use crate::ct::{IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_NEW, ct_msg_type, parse_entry};
use crate::error::{Error, Result};
use crate::nl::{Msgs, NLM_F_CREATE};
use crate::sock::NlSock;

const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_UPDATE: u32 = 2;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

/// Default kernel receive buffer for events: enough for bursts of ~100k events.
pub const DEFAULT_EVENT_RCVBUF: usize = 32 * 1024 * 1024;

/// Which event groups to join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventGroups {
    pub new: bool,
    pub update: bool,
    pub destroy: bool,
}

impl EventGroups {
    pub const DESTROY: EventGroups = EventGroups {
        new: false,
        update: false,
        destroy: true,
    };
    pub const ALL: EventGroups = EventGroups {
        new: true,
        update: true,
        destroy: true,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    New,
    Update,
    Destroy,
}

impl EventKind {
    /// As `conntrack -E` labels them.
    pub fn label(self) -> &'static str {
        match self {
            EventKind::New => "[NEW]",
            EventKind::Update => "[UPDATE]",
            EventKind::Destroy => "[DESTROY]",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackEvent {
    pub kind: EventKind,
    pub entry: ConntrackEntry,
}

/// Outcome of one [`EventSocket::recv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// This many events were handed to the callback.
    Events(usize),
    /// Nothing arrived before the timeout.
    Timeout,
    /// The kernel dropped events (ENOBUFS); reconcile with a dump. Events received before the
    /// overrun in this call were still delivered.
    Lost,
}

/// A socket subscribed to conntrack events in the calling thread's network namespace.
pub struct EventSocket {
    sock: NlSock,
    buf: Vec<u8>,
    lost: u64,
    malformed: u64,
}

impl EventSocket {
    /// Joins `groups` with a kernel receive buffer of `rcvbuf` bytes.
    pub fn subscribe(groups: EventGroups, rcvbuf: usize) -> Result<EventSocket> {
        let mut g = Vec::with_capacity(3);
        if groups.new {
            g.push(NFNLGRP_CONNTRACK_NEW);
        }
        if groups.update {
            g.push(NFNLGRP_CONNTRACK_UPDATE);
        }
        if groups.destroy {
            g.push(NFNLGRP_CONNTRACK_DESTROY);
        }
        let sock = NlSock::open(&g)?;
        sock.set_rcvbuf(rcvbuf)?;
        Ok(EventSocket {
            sock,
            buf: vec![0; 128 * 1024],
            lost: 0,
            malformed: 0,
        })
    }

    /// Times the kernel reported dropped events (each may stand for many events).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Event messages that did not parse (skipped).
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Waits up to `timeout` (`None`: forever) for events, then delivers everything queued
    /// without blocking again.
    pub fn recv(
        &mut self,
        timeout: Option<Duration>,
        mut f: impl FnMut(&ConntrackEvent),
    ) -> Result<Received> {
        match self.sock.wait_readable(timeout) {
            Ok(true) => {}
            Ok(false) => return Ok(Received::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Received::Events(0)),
            Err(e) => return Err(Error::io("poll events", e)),
        }
        let mut count = 0;
        let mut ev = ConntrackEvent {
            kind: EventKind::New,
            entry: ConntrackEntry::default(),
        };
        loop {
            let n = match self.sock.recv(&mut self.buf, true) {
                Ok(n) => n.min(self.buf.len()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(Received::Events(count));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.lost += 1;
                    return Ok(Received::Lost);
                }
                Err(e) => return Err(Error::io("recv events", e)),
            };
            for m in Msgs::new(&self.buf[..n]).map_while(|m| m.ok()) {
                ev.kind = if m.ty == ct_msg_type(IPCTNL_MSG_CT_DELETE) {
                    EventKind::Destroy
                } else if m.ty == ct_msg_type(IPCTNL_MSG_CT_NEW) {
                    // The kernel marks a new connection with CREATE|EXCL; an update has neither.
                    if m.flags & NLM_F_CREATE != 0 {
                        EventKind::New
                    } else {
                        EventKind::Update
                    }
                } else {
                    continue;
                };
                match parse_entry(m.payload, &mut ev.entry) {
                    Ok(()) => {
                        f(&ev);
                        count += 1;
                    }
                    Err(_) => self.malformed += 1,
                }
            }
        }
    }
}

impl AsRawFd for EventSocket {
    /// For registering with an event loop (e.g. tokio's `AsyncFd`); call `recv` with a zero
    /// timeout when it is readable.
    fn as_raw_fd(&self) -> RawFd {
        self.sock.fd()
    }
}
