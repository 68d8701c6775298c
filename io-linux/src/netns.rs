//! Throw-away network namespaces for tests and benchmarks.
//!
//! [`NetNs::create`] makes a uniquely named namespace with `ip netns add` and deletes it on drop
//! (also while unwinding from a panic). [`NetNs::run`] runs a closure on a scoped thread that has
//! entered the namespace with `setns(CLONE_NEWNET)`, so the caller's own thread never moves;
//! sockets opened inside keep talking to that namespace after the closure returns.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use flowcore::model::{ConntrackEntry, ConntrackStatus, TcpState, Tuple};

use crate::dump::ConntrackSocket;
use crate::error::{Error, Result};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace under /run/netns, deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<prefix>-<pid>-<n>`; needs root and iproute2.
    pub fn create(prefix: &str) -> Result<NetNs> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name], &name)?;
        let ns = NetNs { name };
        // Loopback up: local traffic inside the namespace works like on a host.
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        run_ip(&v, &self.name)
    }

    /// A command that runs inside the namespace (`ip netns exec NAME PROGRAM`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a thread inside the namespace and returns its result. A panic in `f` is
    /// re-raised here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|e| self.err(format!("open {path}: {e}")))?;
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                // SAFETY: a valid namespace fd; affects only this (fresh, scoped) thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(self.err(format!("setns: {}", std::io::Error::last_os_error())));
                }
                Ok(f())
            });
            match h.join() {
                Ok(r) => r,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    fn err(&self, what: String) -> Error {
        Error::Netns {
            name: self.name.clone(),
            what,
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ip(args: &[&str], name: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::Netns {
            name: name.into(),
            what: format!("running ip (install iproute2): {e}"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Netns {
            name: name.into(),
            what: format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// `n` distinct synthetic entries for filling a table: UDP, or TCP ESTABLISHED/ASSURED when
/// `tcp`; original tuple `10.<net>.x.y:port → 10.255.0.1:80` with x.y and the port derived
/// from the index, so up to 2^32 entries are unique per `net`. Timeout 1 hour.
pub fn synthetic_entries(n: u32, net: u8, tcp: bool) -> impl Iterator<Item = ConntrackEntry> {
    use std::net::{IpAddr, Ipv4Addr};
    let dst = IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1));
    (0..n).map(move |i| {
        let src = IpAddr::V4(Ipv4Addr::new(10, net, (i >> 8) as u8, i as u8));
        let sport = 1024u16.wrapping_add((i >> 16) as u16);
        let proto = if tcp { 6 } else { 17 };
        ConntrackEntry {
            orig: Tuple {
                src,
                dst,
                src_port: sport,
                dst_port: 80,
                proto,
            },
            reply: Tuple {
                src: dst,
                dst: src,
                src_port: 80,
                dst_port: sport,
                proto,
            },
            timeout: 3600,
            status: if tcp {
                ConntrackStatus(ConntrackStatus::SEEN_REPLY | ConntrackStatus::ASSURED)
            } else {
                ConntrackStatus(0)
            },
            tcp_state: tcp.then_some(TcpState::Established),
            ..Default::default()
        }
    })
}

/// A fresh namespace with a ctnetlink socket in it, its table filled with `n` synthetic
/// entries (see [`synthetic_entries`]). The namespace goes away when this is dropped.
pub struct FilledNs {
    pub sock: ConntrackSocket,
    pub ns: NetNs,
}

impl FilledNs {
    pub fn create(prefix: &str, n: u32, tcp: bool) -> Result<FilledNs> {
        let ns = NetNs::create(prefix)?;
        let mut sock = ns.run(ConntrackSocket::open)??;
        sock.create_entries(synthetic_entries(n, 1, tcp))?;
        Ok(FilledNs { sock, ns })
    }
}
