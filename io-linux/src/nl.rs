//! Netlink and nfnetlink framing: headers, attribute walking and message building over plain byte
//! slices.
//!
//! Why not neli's typed messages: neli decodes every message into owned `Vec`-backed structures
//! (`Nlmsghdr<_, Buffer>`, `GenlBuffer`, `Groups`), which costs several heap allocations per
//! conntrack entry — the opposite of what a 1M-entry dump needs. neli still opens, binds and
//! subscribes the socket (`crate::sock`); the hot path here reads the kernel's receive buffer in
//! place with these small helpers. Every read is bounds-checked: kernel input never panics, and an
//! attribute we do not know is skipped.

/// `struct nlmsghdr` is 16 bytes, native endian.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family u8, version u8, res_id be16.
pub(crate) const NFGENMSG_LEN: usize = 4;
pub(crate) const NLA_HDRLEN: usize = 4;

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
/// Set by the kernel when the dumped set changed while it was being dumped.
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;

pub(crate) const NLA_TYPE_MASK: u16 = 0x3fff;
pub(crate) const NLA_F_NESTED: u16 = 0x8000;

pub(crate) const NFNETLINK_V0: u8 = 0;

/// Round up to the 4-byte netlink alignment.
#[inline]
pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

#[inline]
pub(crate) fn ne_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
#[inline]
pub(crate) fn ne_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
#[inline]
pub(crate) fn be_u16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}
#[inline]
pub(crate) fn be_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}
#[inline]
pub(crate) fn be_u64(b: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(..8)?.try_into().ok()?))
}

/// One netlink message inside a received datagram.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the 16-byte header, up to `nlmsg_len`.
    pub payload: &'a [u8],
}

impl Msg<'_> {
    /// The negative errno of an `NLMSG_ERROR` (0 is an ACK), if this is one and it is readable.
    pub fn error_code(&self) -> Option<i32> {
        (self.ty == NLMSG_ERROR).then(|| ne_u32(self.payload, 0).map(|v| v as i32))?
    }
}

/// Walks the messages of one datagram. Yields `Err(())` once and stops if a header lies about its
/// length (a truncated or corrupt datagram), so the caller can treat the dump as broken.
pub(crate) struct Msgs<'a> {
    buf: &'a [u8],
}

impl<'a> Msgs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Msgs { buf }
    }
}

impl<'a> Iterator for Msgs<'a> {
    type Item = Result<Msg<'a>, ()>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let b = self.buf;
        let len = ne_u32(b, 0)? as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            self.buf = &[];
            return Some(Err(()));
        }
        let msg = Msg {
            ty: ne_u16(b, 4)?,
            flags: ne_u16(b, 6)?,
            seq: ne_u32(b, 8)?,
            payload: &b[NLMSG_HDRLEN..len],
        };
        self.buf = b.get(align4(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    }
}

/// Walks the attributes of one attribute block. Yields `(type without flags, payload)`; stops at
/// the first attribute whose length does not fit (and reports it with `Err`).
#[derive(Clone)]
pub(crate) struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), ()>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < NLA_HDRLEN {
            return None;
        }
        let b = self.buf;
        let len = ne_u16(b, 0)? as usize;
        let ty = ne_u16(b, 2)? & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > b.len() {
            self.buf = &[];
            return Some(Err(()));
        }
        self.buf = b.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((ty, &b[NLA_HDRLEN..len])))
    }
}

/// Builds netlink messages into a reusable byte buffer, several per datagram.
#[derive(Default)]
pub(crate) struct MsgBuf {
    pub buf: Vec<u8>,
    msg_start: usize,
    nests: Vec<usize>,
}

impl MsgBuf {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.nests.clear();
    }

    /// Starts a new nfnetlink message; finish it with [`MsgBuf::end_msg`].
    pub fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8) {
        self.msg_start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in end_msg
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id 0: the kernel
        self.buf.extend_from_slice(&[family, NFNETLINK_V0, 0, 0]);
    }

    pub fn end_msg(&mut self) {
        let len = (self.buf.len() - self.msg_start) as u32;
        self.buf[self.msg_start..self.msg_start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// Length in bytes of everything built so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = (NLA_HDRLEN + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    pub fn attr_u8(&mut self, ty: u16, v: u8) {
        self.attr(ty, &[v]);
    }
    pub fn attr_be16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_be_bytes());
    }
    pub fn attr_be32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_be_bytes());
    }

    pub fn begin_nest(&mut self, ty: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    pub fn end_nest(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn pad(&mut self) {
        let n = align4(self.buf.len()) - self.buf.len();
        self.buf.extend_from_slice(&[0u8; 3][..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_walks_nested_attributes() {
        let mut m = MsgBuf::default();
        m.begin_msg(0x0101, NLM_F_REQUEST, 7, 2);
        m.begin_nest(1);
        m.attr_u8(1, 6);
        m.attr_be16(2, 80);
        m.end_nest();
        m.attr_be32(3, 0xdead_beef);
        m.end_msg();
        let msgs: Vec<_> = Msgs::new(&m.buf).collect();
        assert_eq!(msgs.len(), 1);
        let msg = msgs[0].unwrap();
        assert_eq!((msg.ty, msg.seq), (0x0101, 7));
        let attrs: Vec<_> = Attrs::new(&msg.payload[NFGENMSG_LEN..])
            .map(Result::unwrap)
            .collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].0, 1);
        let inner: Vec<_> = Attrs::new(attrs[0].1).map(Result::unwrap).collect();
        assert_eq!(inner, vec![(1, &[6u8][..]), (2, &[0, 80][..])]);
        assert_eq!(be_u32(attrs[1].1), Some(0xdead_beef));
    }

    #[test]
    fn lying_lengths_stop_iteration_without_panic() {
        let mut b = vec![0u8; 20];
        b[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(Msgs::new(&b).collect::<Vec<_>>().len(), 1);
        assert!(Msgs::new(&b).next().unwrap().is_err());
        let a = [200u8, 0, 1, 0, 9, 9];
        assert!(Attrs::new(&a).next().unwrap().is_err());
        assert!(Attrs::new(&[1u8, 0]).next().is_none());
    }
}
