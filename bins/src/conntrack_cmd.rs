//! `flowlens conntrack …`: the live conntrack table and its events through io-linux.
//!
//! Text output follows `conntrack -L -o extended` / `conntrack -E` so the two can be compared
//! line by line; `--json` prints one JSON object per entry (JSON lines).

use std::io::{BufWriter, Write};

use anyhow::{Context, bail};
use flowcore::model::{ConntrackEntry, Tuple};
use io_linux::{
    ConntrackSocket, DumpFilter, EventGroups, EventSocket, Extended, Family, Received,
    SysctlPolicy, proto_name, startup_checks,
};
use serde_json::{Value, json};

/// Subcommands of `flowlens conntrack`.
#[derive(Debug, clap::Subcommand)]
pub enum ConntrackCmd {
    /// Print the live conntrack table (laid out like `conntrack -L -o extended`).
    Dump(DumpArgs),
    /// Print conntrack events as they happen (like `conntrack -E`); Ctrl-C stops.
    Watch(WatchArgs),
    /// Record dumps and destroy events as a trace for `flowlens replay` and the simulator.
    Record(crate::sim_cmd::RecordArgs),
}

#[derive(Debug, clap::Args)]
pub struct DumpArgs {
    /// One JSON object per entry instead of text.
    #[arg(long)]
    json: bool,
    /// Only entries in this conntrack zone (0–65535).
    #[arg(long, value_name = "Z")]
    zone: Option<u16>,
    /// Only IPv4 (4) or IPv6 (6) entries.
    #[arg(long, value_name = "4|6", value_parser = parse_family)]
    family: Option<Family>,
    /// Only entries whose mark matches: VALUE or VALUE/MASK (decimal or 0x hex).
    #[arg(long, value_name = "VALUE[/MASK]", value_parser = parse_mark)]
    mark: Option<(u32, u32)>,
    /// Append the conntrack id (like `conntrack -L -o extended,id`).
    #[arg(long)]
    id: bool,
    /// Switch on nf_conntrack_acct / nf_conntrack_timestamp if they are off (affects only
    /// connections created afterwards).
    #[arg(long)]
    enable_accounting: bool,
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// One JSON object per event instead of text.
    #[arg(long)]
    json: bool,
    /// Only DESTROY events (ended connections with their final counters).
    #[arg(long)]
    destroy_only: bool,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

fn parse_family(s: &str) -> Result<Family, String> {
    match s {
        "4" | "ipv4" => Ok(Family::V4),
        "6" | "ipv6" => Ok(Family::V6),
        _ => Err(format!("`{s}` is not a family: use 4 or 6")),
    }
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("`{s}` is not a 32-bit number (decimal or 0x hex)"))
}

fn parse_mark(s: &str) -> Result<(u32, u32), String> {
    match s.split_once('/') {
        Some((v, m)) => Ok((parse_u32(v)?, parse_u32(m)?)),
        None => Ok((parse_u32(s)?, u32::MAX)),
    }
}

impl ConntrackCmd {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            ConntrackCmd::Dump(a) => dump(a),
            ConntrackCmd::Watch(a) => watch(a),
            ConntrackCmd::Record(a) => crate::sim_cmd::record(a),
        }
    }
}

/// Runs the start-up checks and reports warnings on `err`.
fn checks(enable: bool, err: &mut impl Write) -> anyhow::Result<()> {
    let policy = if enable {
        SysctlPolicy::Enable
    } else {
        SysctlPolicy::ReadOnly
    };
    let report = startup_checks(policy)?;
    for w in &report.warnings {
        writeln!(err, "flowlens: warning: {w}")?;
    }
    for s in &report.enabled_now {
        writeln!(
            err,
            "flowlens: switched on {s} (connections from now on carry it)"
        )?;
    }
    Ok(())
}

fn dump(a: DumpArgs) -> anyhow::Result<()> {
    let out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
    dump_to(&a, out, &mut std::io::stderr())
}

/// `dump` with its output streams passed in, so tests can read them.
fn dump_to(a: &DumpArgs, mut out: impl Write, err: &mut impl Write) -> anyhow::Result<()> {
    checks(a.enable_accounting, err)?;
    let filter = DumpFilter {
        family: a.family,
        zone: a.zone,
        mark: a.mark,
    };
    let mut sock = ConntrackSocket::open()?;
    let mut entries = Vec::new();
    // The whole table first: an interrupted dump is an error, never a half-printed table.
    let stats = sock.dump(&filter, &mut entries)?;
    for e in &entries {
        if a.json {
            serde_json::to_writer(&mut out, &entry_json(e))?;
            out.write_all(b"\n")?;
        } else {
            writeln!(
                out,
                "{}",
                Extended {
                    entry: e,
                    with_id: a.id
                }
            )?;
        }
    }
    out.flush().context("writing to stdout")?;
    writeln!(
        err,
        "flowlens: {} flow entries have been shown.",
        stats.entries
    )?;
    if stats.kernel_filter_rejected {
        writeln!(
            err,
            "flowlens: note: the kernel refused the filter; it was applied in user space"
        )?;
    }
    Ok(())
}

fn watch(a: WatchArgs) -> anyhow::Result<()> {
    checks(false, &mut std::io::stderr())?;
    let groups = if a.destroy_only {
        EventGroups::DESTROY
    } else {
        EventGroups::ALL
    };
    let mut sock = EventSocket::subscribe(groups, io_linux::DEFAULT_EVENT_RCVBUF)?;
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    let limit = a.count.unwrap_or(u64::MAX);
    let mut write_err = None;
    while seen < limit {
        let r = sock.recv(None, |ev| {
            if seen >= limit || write_err.is_some() {
                return;
            }
            seen += 1;
            let res = if a.json {
                let mut v = entry_json(&ev.entry);
                v["event"] = json!(format!("{:?}", ev.kind).to_lowercase());
                writeln!(out, "{v}")
            } else {
                writeln!(out, "{:>9} {}", ev.kind.label(), Extended::new(&ev.entry))
            };
            if let Err(e) = res.and_then(|()| out.flush()) {
                write_err = Some(e);
            }
        })?;
        if let Some(e) = write_err.take() {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            bail!("writing to stdout: {e}");
        }
        if r == Received::Lost {
            eprintln!(
                "flowlens: warning: the kernel dropped conntrack events (receive buffer full; {} \
                 overruns so far) — run `flowlens conntrack dump` to see the current table",
                sock.lost()
            );
        }
    }
    Ok(())
}

fn tuple_json(t: &Tuple) -> Value {
    if t.proto == 1 || t.proto == 58 {
        json!({"src": t.src.to_string(), "dst": t.dst.to_string(),
               "type": t.dst_port >> 8, "code": t.dst_port & 0xff, "id": t.src_port})
    } else {
        json!({"src": t.src.to_string(), "dst": t.dst.to_string(),
               "sport": t.src_port, "dport": t.dst_port})
    }
}

fn entry_json(e: &ConntrackEntry) -> Value {
    let mut v = json!({
        "family": if e.orig.src.is_ipv4() { "ipv4" } else { "ipv6" },
        "proto": proto_name(e.orig.proto),
        "protonum": e.orig.proto,
        "timeout": e.timeout,
        "orig": tuple_json(&e.orig),
        "reply": tuple_json(&e.reply),
        "status": e.status.0,
        "mark": e.mark,
        "zone": e.zone,
        "id": e.id,
    });
    if let Some(s) = e.tcp_state {
        v["state"] = json!(s.name());
    }
    if let Some(c) = e.orig_counters {
        v["orig"]["packets"] = json!(c.packets);
        v["orig"]["bytes"] = json!(c.bytes);
    }
    if let Some(c) = e.reply_counters {
        v["reply"]["packets"] = json!(c.packets);
        v["reply"]["bytes"] = json!(c.bytes);
    }
    if e.labels != 0 {
        v["labels"] = json!(format!("0x{:x}", e.labels));
    }
    if let Some(t) = e.start {
        v["start_ns"] = json!(t.as_nanos());
    }
    if let Some(t) = e.stop {
        v["stop_ns"] = json!(t.as_nanos());
    }
    v
}

#[cfg(test)]
mod tests {
    use io_linux::netns::{NetNs, synthetic_entries};

    use super::*;

    fn args(json: bool, zone: Option<u16>) -> DumpArgs {
        DumpArgs {
            json,
            zone,
            family: None,
            mark: None,
            id: false,
            enable_accounting: false,
        }
    }

    /// Root only (skipped otherwise): the command in a fresh namespace with accounting off.
    #[test]
    fn dump_prints_table_json_and_accounting_warning() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1));
        if euid != Some("0") {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = NetNs::create("flcli").unwrap();
        let (text, json, err) = ns
            .run(|| {
                io_linux::set_accounting(false).unwrap();
                let mut sock = ConntrackSocket::open().unwrap();
                sock.create_entries(synthetic_entries(3, 2, true)).unwrap();
                let mut e = synthetic_entries(4, 3, false).last().unwrap();
                e.zone = 9;
                sock.create_entries([e]).unwrap();
                let (mut text, mut json, mut err) = (Vec::new(), Vec::new(), Vec::new());
                dump_to(&args(false, None), &mut text, &mut err).unwrap();
                dump_to(&args(true, Some(9)), &mut json, &mut Vec::new()).unwrap();
                (
                    String::from_utf8(text).unwrap(),
                    String::from_utf8(json).unwrap(),
                    String::from_utf8(err).unwrap(),
                )
            })
            .unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        assert!(
            text.contains("ipv4     2 tcp      6 3") && text.contains("ESTABLISHED src=10.2.0.0"),
            "{text}"
        );
        assert!(
            !text.contains("packets="),
            "accounting off: no counters\n{text}"
        );
        assert!(
            err.contains("warning: net.netfilter.nf_conntrack_acct is 0"),
            "{err}"
        );
        assert!(err.contains("4 flow entries"), "{err}");
        let rows: Vec<Value> = json
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["zone"], 9);
        assert_eq!(rows[0]["orig"]["src"], "10.3.0.3");
        assert_eq!(rows[0]["proto"], "udp");
    }

    #[test]
    fn mark_and_family_arguments() {
        assert_eq!(parse_mark("0x10/0xff"), Ok((16, 255)));
        assert_eq!(parse_mark("7"), Ok((7, u32::MAX)));
        assert!(parse_mark("x").unwrap_err().contains("not a 32-bit number"));
        assert_eq!(parse_family("6"), Ok(Family::V6));
        assert!(parse_family("5").is_err());
    }
}
