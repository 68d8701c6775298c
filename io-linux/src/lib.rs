//! Linux IO for flowlens: conntrack over netlink (dump, destroy events, zone/mark filters) and
//! sysctl checks. Parses straight into `flowcore::model::ConntrackEntry`.
//!
//! - [`ConntrackSocket::dump`]: the whole table (or a filtered part) in one pass, streamed into a
//!   [`DumpSink`] with no allocation per entry; interrupted passes are retried or reported,
//!   never handed on as complete.
//! - [`EventSocket`]: NEW/UPDATE/DESTROY events; lost events are counted.
//! - [`startup_checks`]: CAP_NET_ADMIN, `nf_conntrack_acct`, `nf_conntrack_timestamp`.
//! - [`Extended`]: the `conntrack -L -o extended` text form.
//! - [`netns::NetNs`] and [`ConntrackSocket::create_entries`]: namespaces and bulk entries for
//!   tests and benchmarks.
//!
//! All sockets belong to the network namespace of the thread that opened them.

mod ct;
mod dump;
mod error;
mod events;
mod format;
pub mod netns;
mod nl;
mod sock;
mod sysctl;

pub use dump::{ConntrackSocket, DumpFilter, DumpSink, DumpStats, Family, TableStats};
pub use error::{Error, Result};
pub use events::{
    ConntrackEvent, DEFAULT_EVENT_RCVBUF, EventGroups, EventKind, EventSocket, Received,
};
pub use format::{Extended, proto_name};
pub use sysctl::{
    StartupReport, SysctlPolicy, Warning, read_bool, set_accounting, set_timestamps, startup_checks,
};
