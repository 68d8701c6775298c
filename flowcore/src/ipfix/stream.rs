//! Framing for IPFIX over a byte stream (TCP, TLS; RFC 7011 §10.4): feed chunks as they arrive,
//! take whole messages out. Memory is bounded by one message (64 KiB) plus one chunk.

use super::error::DecodeError;
use super::{HEADER_LEN, VERSION};

/// Reassembles messages from a stream.
#[derive(Default)]
pub struct StreamDeframer {
    buf: Vec<u8>,
    start: usize,
}

impl StreamDeframer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes buffered but not yet returned as a message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole message, `None` until one is complete. A header that cannot start an IPFIX
    /// message is an error: the stream has lost framing and the session must be closed.
    pub fn next_message(&mut self) -> Result<Option<&[u8]>, DecodeError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let version = u16::from_be_bytes([avail[0], avail[1]]);
        if version != VERSION {
            return Err(DecodeError::BadVersion { found: version });
        }
        let length = u16::from_be_bytes([avail[2], avail[3]]);
        if (length as usize) < HEADER_LEN {
            return Err(DecodeError::StreamBadLength { length });
        }
        if avail.len() < length as usize {
            return Ok(None);
        }
        let s = self.start;
        self.start += length as usize;
        Ok(Some(&self.buf[s..s + length as usize]))
    }
}
