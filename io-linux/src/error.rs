//! Errors of io-linux. Each one says what went wrong and what the user can do about it.

use std::io;

/// Everything that can go wrong talking to conntrack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "permission denied by the kernel's conntrack netlink interface: reading conntrack needs \
         CAP_NET_ADMIN — run as root, or grant it (`setcap cap_net_admin+ep <binary>`, or \
         `securityContext.capabilities.add: [NET_ADMIN]` in Kubernetes)"
    )]
    PermissionDenied,

    #[error(
        "the kernel has no conntrack netlink support ({0}): load it with `modprobe \
         nf_conntrack_netlink` (needs CONFIG_NF_CT_NETLINK)"
    )]
    NotSupported(io::Error),

    #[error(
        "the conntrack dump was interrupted {attempts} times in a row ({reason}); no partial \
         table was returned — the table is churning or the receive buffer overflows, retry later"
    )]
    DumpInterrupted { attempts: u32, reason: &'static str },

    #[error("netlink {op} failed: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("the kernel refused the conntrack {op}: {source}")]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("malformed netlink data from the kernel: {0}")]
    Malformed(&'static str),

    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("network namespace {name}: {what}")]
    Netns { name: String, what: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, source: io::Error) -> Error {
        match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => Error::PermissionDenied,
            Some(libc::EPROTONOSUPPORT) => Error::NotSupported(source),
            _ => Error::Io { op, source },
        }
    }

    /// A negative errno from an `NLMSG_ERROR`.
    pub(crate) fn kernel(op: &'static str, neg_errno: i32) -> Error {
        let errno = neg_errno.saturating_neg();
        match errno {
            libc::EPERM | libc::EACCES => Error::PermissionDenied,
            libc::EOPNOTSUPP | libc::EPROTONOSUPPORT => {
                Error::NotSupported(std::io::Error::from_raw_os_error(errno))
            }
            _ => Error::Kernel {
                op,
                source: io::Error::from_raw_os_error(errno),
            },
        }
    }
}
