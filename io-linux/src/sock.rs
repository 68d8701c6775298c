//! The netlink socket itself. neli opens, binds and subscribes it; sending and receiving go
//! straight through `libc::send`/`recv` because neli's `recv` returns an owned `Groups` (a heap
//! `Vec`) on every call, which the dump loop cannot afford.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use neli::consts::socket::NlFamily;
use neli::socket::NlSocket;
use neli::utils::Groups;

use crate::error::{Error, Result};

pub(crate) struct NlSock {
    sock: NlSocket,
}

impl NlSock {
    /// A `NETLINK_NETFILTER` socket in the calling thread's network namespace, joined to
    /// `groups` (nfnetlink group numbers, e.g. `NFNLGRP_CONNTRACK_DESTROY`).
    pub fn open(groups: &[u32]) -> Result<NlSock> {
        let sock = NlSocket::connect(NlFamily::Netfilter, None, Groups::new_groups(groups))
            .map_err(|e| Error::io("socket open/bind", e))?;
        Ok(NlSock { sock })
    }

    /// Sets the kernel receive buffer. Root may exceed `net.core.rmem_max` with SO_RCVBUFFORCE;
    /// everyone else gets what SO_RCVBUF allows.
    pub fn set_rcvbuf(&self, bytes: usize) -> Result<()> {
        let v = bytes.min(i32::MAX as usize / 2) as libc::c_int;
        // SAFETY: valid fd and a pointer to a live c_int of the advertised size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&v as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        self.sock
            .set_recv_buffer_size(v as usize)
            .map_err(|e| Error::io("setsockopt SO_RCVBUF", e))
    }

    /// Ask the kernel not to echo the request in error messages and to be strict about
    /// dump-request attributes; both are optional, so failures are ignored.
    pub fn tune(&self) {
        let one: libc::c_int = 1;
        for opt in [libc::NETLINK_CAP_ACK, libc::NETLINK_GET_STRICT_CHK] {
            // SAFETY: valid fd and pointer to a live c_int.
            unsafe {
                libc::setsockopt(
                    self.fd(),
                    libc::SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    pub fn send(&self, buf: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: buf is a valid readable slice for its length.
            let n = unsafe { libc::send(self.fd(), buf.as_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return if n as usize == buf.len() {
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "short netlink send",
                    ))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// One datagram into `buf`. EINTR is returned to the caller, which bounds its retries.
    pub fn recv(&self, buf: &mut [u8], nonblocking: bool) -> io::Result<usize> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        // SAFETY: buf is a valid writable slice for its length.
        let n = unsafe { libc::recv(self.fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Waits until the socket is readable; `false` on timeout.
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let ms = timeout.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as libc::c_int);
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        match rc {
            0 => Ok(false),
            n if n > 0 => Ok(true),
            _ => Err(io::Error::last_os_error()),
        }
    }
}
