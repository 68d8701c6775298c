//! Start-up checks: the conntrack settings flowlens depends on, and whether we may use
//! ctnetlink at all.
//!
//! `nf_conntrack_acct` gives per-direction packet/byte counters and `nf_conntrack_timestamp`
//! start/stop times. Both are per network namespace, read through /proc/sys of the calling
//! thread's namespace, and only apply to connections created after they are switched on.

use std::fmt;
use std::fs;
use std::io;

use crate::dump::{ConntrackSocket, TableStats};
use crate::error::{Error, Result};

const ACCT: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";
const TSTAMP: &str = "/proc/sys/net/netfilter/nf_conntrack_timestamp";

/// Whether start-up may change sysctls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysctlPolicy {
    /// Write 1 to a setting that is off, when permitted.
    Enable,
    /// Only read; warn about what is off.
    ReadOnly,
}

/// A condition flowlens runs with, degraded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Warning {
    /// Counters will be absent from every entry.
    AccountingOff { why: String },
    /// Start/stop times will be absent.
    TimestampsOff { why: String },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::AccountingOff { why } => write!(
                f,
                "net.netfilter.nf_conntrack_acct is 0 ({why}): conntrack entries will have no \
                 packet/byte counters; set it with `sysctl -w net.netfilter.nf_conntrack_acct=1` \
                 in the node's network namespace"
            ),
            Warning::TimestampsOff { why } => write!(
                f,
                "net.netfilter.nf_conntrack_timestamp is 0 ({why}): conntrack entries will have \
                 no start/stop times; set it with `sysctl -w net.netfilter.nf_conntrack_timestamp=1`"
            ),
        }
    }
}

/// What start-up found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartupReport {
    pub accounting: bool,
    pub timestamps: bool,
    /// Settings this check switched on (existing connections keep lacking them).
    pub enabled_now: Vec<&'static str>,
    pub table: TableStats,
    pub warnings: Vec<Warning>,
}

/// Checks ctnetlink access (one clear [`Error::PermissionDenied`] without CAP_NET_ADMIN) and the
/// accounting/timestamp sysctls of the calling thread's network namespace.
pub fn startup_checks(policy: SysctlPolicy) -> Result<StartupReport> {
    let table = ConntrackSocket::open()?.table_stats()?;
    let mut r = StartupReport {
        table,
        ..Default::default()
    };
    match ensure(ACCT, policy)? {
        Ok(changed) => {
            r.accounting = true;
            if changed {
                r.enabled_now.push("net.netfilter.nf_conntrack_acct");
            }
        }
        Err(why) => r.warnings.push(Warning::AccountingOff { why }),
    }
    match ensure(TSTAMP, policy)? {
        Ok(changed) => {
            r.timestamps = true;
            if changed {
                r.enabled_now.push("net.netfilter.nf_conntrack_timestamp");
            }
        }
        Err(why) => r.warnings.push(Warning::TimestampsOff { why }),
    }
    Ok(r)
}

/// `Ok(Ok(changed))`: the setting is on. `Ok(Err(why))`: it is off and stays off.
fn ensure(path: &'static str, policy: SysctlPolicy) -> Result<Result<bool, String>> {
    match read_bool(path) {
        Ok(true) => return Ok(Ok(false)),
        Ok(false) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Err(
                "the nf_conntrack module is not loaded in this namespace".into(),
            ));
        }
        Err(source) => return Err(Error::Sysctl { path, source }),
    }
    if policy == SysctlPolicy::ReadOnly {
        return Ok(Err("left off: read-only start-up".into()));
    }
    match fs::write(path, b"1") {
        Ok(()) => Ok(Ok(true)),
        Err(e) => Ok(Err(format!("could not switch it on: {e}"))),
    }
}

/// Reads a 0/1 sysctl.
pub fn read_bool(path: &str) -> io::Result<bool> {
    Ok(fs::read_to_string(path)?.trim() != "0")
}

/// Sets `nf_conntrack_acct` of the calling thread's namespace (tests and tools).
pub fn set_accounting(on: bool) -> Result<()> {
    fs::write(ACCT, if on { "1" } else { "0" })
        .map_err(|source| Error::Sysctl { path: ACCT, source })
}

/// Sets `nf_conntrack_timestamp` of the calling thread's namespace (tests and tools).
pub fn set_timestamps(on: bool) -> Result<()> {
    fs::write(TSTAMP, if on { "1" } else { "0" }).map_err(|source| Error::Sysctl {
        path: TSTAMP,
        source,
    })
}
