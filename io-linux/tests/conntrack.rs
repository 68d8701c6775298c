//! Conntrack against the real kernel. Needs root, iproute2, conntrack (conntrack-tools),
//! nftables and iputils-ping. Every test works in namespaces it creates and deletes (a Drop
//! guard, so also when it fails), and waits on conditions with bounded retries, never on time.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flowcore::model::{ConntrackEntry, TcpState, Tuple};
use io_linux::netns::{NetNs, synthetic_entries};
use io_linux::{
    ConntrackSocket, DumpFilter, Error, EventGroups, EventKind, EventSocket, Extended, Family,
    SysctlPolicy, Warning, set_accounting, startup_checks,
};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let r = unsafe { libc::geteuid() } == 0;
    if !r {
        eprintln!("skipped: needs root (CAP_NET_ADMIN, network namespaces)");
    }
    r
}

/// Retries `f` until it returns `Some`, at most `tries` times, pausing between tries so a
/// condition in the kernel (an ACK, a timer) can come true. Panics with `what` if it never does.
fn wait_for<T>(what: &str, tries: u32, mut f: impl FnMut() -> Option<T>) -> T {
    for i in 0..tries {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20 * u64::from(i.min(10) + 1)));
    }
    panic!("gave up waiting for {what}");
}

/// Two namespaces joined by a veth pair: a = 10.77.0.1 / fd77::1, b = 10.77.0.2 / fd77::2.
/// Conntrack is switched on in `a` by an nftables rule that uses it.
struct Pair {
    a: NetNs,
    b: NetNs,
}

const A4: &str = "10.77.0.1";
const B4: &str = "10.77.0.2";
const A6: &str = "fd77::1";
const B6: &str = "fd77::2";

impl Pair {
    fn new() -> Pair {
        let a = NetNs::create("flt-a").unwrap();
        let b = NetNs::create("flt-b").unwrap();
        let (va, vb) = (
            format!("va{}", std::process::id() % 100_000),
            format!("vb{}", std::process::id() % 100_000),
        );
        a.ip(&[
            "link",
            "add",
            &va,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            b.name(),
        ])
        .unwrap();
        for (ns, dev, v4, v6) in [(&a, &va, A4, A6), (&b, &vb, B4, B6)] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])
                .unwrap();
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])
                .unwrap();
            ns.ip(&["link", "set", dev, "up"]).unwrap();
        }
        let rules = "table inet flt {
  chain out {
    type filter hook output priority 0;
    ct state new,established,related accept
  }
  chain inp {
    type filter hook input priority 0;
    ct state new,established,related accept
  }
}
";
        let mut nft = a.command("nft");
        nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
        let mut child = nft.spawn().expect("run nft (install nftables)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft rules in {}", a.name());
        let report = a
            .run(|| startup_checks(SysctlPolicy::Enable))
            .unwrap()
            .unwrap();
        assert!(report.accounting && report.timestamps, "{report:?}");
        Pair { a, b }
    }
}

fn dump(sock: &mut ConntrackSocket, filter: &DumpFilter) -> Vec<ConntrackEntry> {
    let mut v = Vec::new();
    sock.dump(filter, &mut v).unwrap();
    v
}

/// A line of `conntrack -L -o extended,id` without what changes on its own between two reads
/// (the timeout, delta-time) and what flowlens does not carry (use=).
fn normalize(line: &str) -> String {
    line.split_whitespace()
        .enumerate()
        .filter(|&(i, t)| i != 4 && !t.starts_with("delta-time=") && !t.starts_with("use="))
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(" ")
}

fn ours_text(entries: &[ConntrackEntry]) -> Vec<String> {
    let mut v: Vec<_> = entries
        .iter()
        .map(|e| {
            normalize(
                &Extended {
                    entry: e,
                    with_id: true,
                }
                .to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

fn conntrack_tool(ns: &NetNs, args: &[&str]) -> Vec<String> {
    let out = ns
        .command("conntrack")
        .args(args)
        .output()
        .expect("run conntrack (install conntrack)");
    assert!(
        out.status.success(),
        "conntrack {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<_> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(normalize)
        .collect();
    v.sort();
    v
}

fn ping(ns: &NetNs, dst: &str) {
    let out = ns
        .command("ping")
        .args(["-c", "2", "-i", "0.2", "-W", "5", dst])
        .output()
        .expect("run ping (install iputils-ping)");
    assert!(
        out.status.success(),
        "ping {dst}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Request/response over TCP from `a` to `b`; returns both ends, still open.
fn tcp_exchange(p: &Pair, server: &str) -> (TcpStream, TcpStream) {
    let sa: SocketAddr = SocketAddr::new(server.parse().unwrap(), 0);
    let listener = p.b.run(|| TcpListener::bind(sa)).unwrap().unwrap();
    let addr = listener.local_addr().unwrap();
    let mut c = p.a.run(|| TcpStream::connect(addr)).unwrap().unwrap();
    let (mut s, _) = listener.accept().unwrap();
    c.write_all(&[1u8; 100]).unwrap();
    let mut buf = [0u8; 200];
    s.read_exact(&mut buf[..100]).unwrap();
    s.write_all(&[2u8; 200]).unwrap();
    c.read_exact(&mut buf).unwrap();
    (c, s)
}

fn udp_exchange(p: &Pair, client: &str, server: &str) {
    let s =
        p.b.run(|| UdpSocket::bind(SocketAddr::new(server.parse().unwrap(), 0)))
            .unwrap()
            .unwrap();
    let c =
        p.a.run(|| UdpSocket::bind(SocketAddr::new(client.parse().unwrap(), 0)))
            .unwrap()
            .unwrap();
    c.send_to(b"ping", s.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    let (n, from) = s.recv_from(&mut buf).unwrap();
    s.send_to(&buf[..n], from).unwrap();
    c.recv_from(&mut buf).unwrap();
}

#[test]
fn dump_equals_conntrack_tool_on_real_traffic() {
    if !root() {
        return;
    }
    let p = Pair::new();
    let mut sock = p.a.run(ConntrackSocket::open).unwrap().unwrap();
    let _tcp4 = tcp_exchange(&p, B4);
    let _tcp6 = tcp_exchange(&p, B6);
    udp_exchange(&p, A4, B4);
    udp_exchange(&p, A6, B6);
    ping(&p.a, B4);
    ping(&p.a, B6);

    // The table is quiet once every ACK has gone out: two equal dumps of ours around the tool's
    // read mean nothing changed in between, and then the tool must agree exactly.
    let (ours, tool) = wait_for("a quiet conntrack table", 100, || {
        let d1 = ours_text(&dump(&mut sock, &DumpFilter::default()));
        let tool = conntrack_tool(&p.a, &["-L", "-o", "extended,id"]);
        let d2 = ours_text(&dump(&mut sock, &DumpFilter::default()));
        (d1 == d2).then_some((d1, tool))
    });
    assert_eq!(ours, tool, "flowlens dump vs conntrack -L -o extended,id");

    let entries = dump(&mut sock, &DumpFilter::default());
    let has = |proto: u8, v6: bool| {
        entries
            .iter()
            .any(|e| e.orig.proto == proto && e.orig.src.is_ipv6() == v6)
    };
    for (proto, v6) in [
        (6, false),
        (6, true),
        (17, false),
        (17, true),
        (1, false),
        (58, true),
    ] {
        assert!(
            has(proto, v6),
            "no proto {proto} v6={v6} entry in {ours:#?}"
        );
    }
    let tcp = entries
        .iter()
        .find(|e| e.orig.proto == 6 && e.orig.src.is_ipv4())
        .unwrap();
    assert_eq!(tcp.tcp_state, Some(TcpState::Established));
    let oc = tcp.orig_counters.expect("accounting is on");
    let rc = tcp.reply_counters.expect("accounting is on");
    assert!(oc.packets >= 3 && rc.packets >= 2, "{tcp:?}");
    assert!(tcp.start.is_some(), "timestamps are on");
    // IPv4 / IPv6 dumps split the same table.
    let v4 = dump(
        &mut sock,
        &DumpFilter {
            family: Some(Family::V4),
            ..Default::default()
        },
    );
    let v6 = dump(
        &mut sock,
        &DumpFilter {
            family: Some(Family::V6),
            ..Default::default()
        },
    );
    assert!(v4.iter().all(|e| e.orig.src.is_ipv4()) && v6.iter().all(|e| e.orig.src.is_ipv6()));
    assert_eq!(v4.len() + v6.len(), entries.len());
}

#[test]
fn short_connection_arrives_as_destroy_event_with_final_counters() {
    if !root() {
        return;
    }
    let p = Pair::new();
    p.a.run(|| {
        std::fs::write(
            "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait",
            "2",
        )
    })
    .unwrap()
    .unwrap();
    let mut events =
        p.a.run(|| EventSocket::subscribe(EventGroups::DESTROY, 1 << 20))
            .unwrap()
            .unwrap();
    let mut sock = p.a.run(ConntrackSocket::open).unwrap().unwrap();
    let before = dump(&mut sock, &DumpFilter::default());

    let (c, s) = tcp_exchange(&p, B4);
    let orig = Tuple {
        src: c.local_addr().unwrap().ip(),
        dst: c.peer_addr().unwrap().ip(),
        src_port: c.local_addr().unwrap().port(),
        dst_port: c.peer_addr().unwrap().port(),
        proto: 6,
    };
    assert!(!before.iter().any(|e| e.orig == orig));
    drop(c);
    drop(s);
    // Closed from both sides: the entry reaches TIME_WAIT, after which no packet changes it.
    let last = wait_for("TIME_WAIT", 200, || {
        dump(&mut sock, &DumpFilter::default())
            .into_iter()
            .find(|e| e.orig == orig && e.tcp_state == Some(TcpState::TimeWait))
    });

    let ev = wait_for("the DESTROY event", 500, || {
        // A dump reaps entries whose timeout has run out (the kernel evicts expired entries it
        // walks past), so the event does not wait for the periodic garbage collector.
        dump(&mut sock, &DumpFilter::default());
        let mut found = None;
        events
            .recv(Some(Duration::from_millis(100)), |ev| {
                if ev.entry.orig == orig {
                    found = Some(*ev);
                }
            })
            .unwrap();
        found
    });
    assert_eq!(ev.kind, EventKind::Destroy);
    assert_eq!(ev.entry.id, last.id);
    assert_eq!(ev.entry.orig_counters, last.orig_counters, "final counters");
    assert_eq!(
        ev.entry.reply_counters, last.reply_counters,
        "final counters"
    );
    assert!(ev.entry.orig_counters.unwrap().bytes >= 100 + 3 * 40);
    assert!(
        ev.entry.stop.is_some() && ev.entry.start == last.start,
        "{ev:?}"
    );
    assert_eq!(events.lost(), 0);
    let after = dump(&mut sock, &DumpFilter::default());
    assert!(
        !after.iter().any(|e| e.orig == orig),
        "gone from the next dump"
    );
}

#[test]
fn zone_mark_and_family_filters() {
    if !root() {
        return;
    }
    let ns = NetNs::create("flt-filter").unwrap();
    let mut sock = ns.run(ConntrackSocket::open).unwrap().unwrap();
    let mut want = Vec::new();
    for (k, mut e) in synthetic_entries(90, 3, false).enumerate() {
        e.zone = (k % 3) as u16;
        e.mark = (k / 3 % 3) as u32 | 0x100;
        want.push(e);
    }
    let v6: Vec<_> = want
        .iter()
        .take(9)
        .map(|e| {
            let mut e = *e;
            let six = |a: IpAddr| match a {
                IpAddr::V4(v) => IpAddr::V6(v.to_ipv6_mapped()),
                v => v,
            };
            e.orig.src = six(e.orig.src);
            e.orig.dst = six(e.orig.dst);
            e.reply.src = six(e.reply.src);
            e.reply.dst = six(e.reply.dst);
            e
        })
        .collect();
    want.extend(v6);
    sock.create_entries(want.iter().copied()).unwrap();
    let all = dump(&mut sock, &DumpFilter::default());
    assert_eq!(all.len(), want.len());

    let filters = [
        DumpFilter {
            zone: Some(0),
            ..Default::default()
        },
        DumpFilter {
            zone: Some(2),
            ..Default::default()
        },
        DumpFilter {
            mark: Some((0x101, u32::MAX)),
            ..Default::default()
        },
        DumpFilter {
            mark: Some((0x2, 0xf)),
            zone: Some(1),
            ..Default::default()
        },
        DumpFilter {
            family: Some(Family::V6),
            zone: Some(1),
            ..Default::default()
        },
        DumpFilter {
            family: Some(Family::V4),
            ..Default::default()
        },
    ];
    for f in filters {
        let got = dump(&mut sock, &f);
        let mut expect: Vec<_> = all.iter().filter(|e| f.matches(e)).copied().collect();
        let mut got_sorted = got.clone();
        let key = |e: &ConntrackEntry| (e.orig.src, e.orig.dst, e.orig.src_port, e.zone);
        expect.sort_by_key(key);
        got_sorted.sort_by_key(key);
        assert!(!expect.is_empty(), "{f:?} selects something");
        assert_eq!(got_sorted.len(), expect.len(), "{f:?}");
        // Timeouts tick between dumps; everything else must be identical.
        for (g, e) in got_sorted.iter().zip(&expect) {
            assert_eq!(
                ConntrackEntry { timeout: 0, ..*g },
                ConntrackEntry { timeout: 0, ..*e },
                "{f:?}"
            );
        }
    }
    // conntrack's own zone filter agrees.
    let tool = conntrack_tool(&ns, &["-L", "-o", "extended,id", "-w", "2"]);
    let ours = ours_text(&dump(
        &mut sock,
        &DumpFilter {
            zone: Some(2),
            ..Default::default()
        },
    ));
    assert_eq!(ours, tool);
}

#[test]
fn accounting_off_means_no_counters_and_a_warning() {
    if !root() {
        return;
    }
    let ns = NetNs::create("flt-acct").unwrap();
    let report = ns
        .run(|| {
            set_accounting(false)?;
            startup_checks(SysctlPolicy::ReadOnly)
        })
        .unwrap()
        .unwrap();
    assert!(!report.accounting);
    let w = report
        .warnings
        .iter()
        .find(|w| matches!(w, Warning::AccountingOff { .. }))
        .expect("a warning");
    assert!(w.to_string().contains("nf_conntrack_acct"), "{w}");

    let mut sock = ns.run(ConntrackSocket::open).unwrap().unwrap();
    sock.create_entries(synthetic_entries(10, 4, true)).unwrap();
    let d = dump(&mut sock, &DumpFilter::default());
    assert_eq!(d.len(), 10);
    assert!(
        d.iter()
            .all(|e| e.orig_counters.is_none() && e.reply_counters.is_none())
    );

    // Enabling works when permitted, and then new entries carry counters.
    let report = ns
        .run(|| startup_checks(SysctlPolicy::Enable))
        .unwrap()
        .unwrap();
    assert!(
        report.accounting
            && report
                .warnings
                .iter()
                .all(|w| !matches!(w, Warning::AccountingOff { .. }))
    );
    assert!(
        report
            .enabled_now
            .contains(&"net.netfilter.nf_conntrack_acct")
    );
    sock.create_entries(synthetic_entries(10, 5, true)).unwrap();
    let d = dump(&mut sock, &DumpFilter::default());
    assert_eq!(d.iter().filter(|e| e.orig_counters.is_some()).count(), 10);
}

#[test]
fn missing_cap_net_admin_is_one_clear_error() {
    if !root() {
        return;
    }
    let ns = NetNs::create("flt-cap").unwrap();
    let r = ns
        .run(|| {
            drop_cap_net_admin();
            startup_checks(SysctlPolicy::ReadOnly)
        })
        .unwrap();
    let e = r.expect_err("no CAP_NET_ADMIN");
    assert!(matches!(e, Error::PermissionDenied), "{e:?}");
    assert!(e.to_string().contains("CAP_NET_ADMIN"));
}

/// Drops CAP_NET_ADMIN from the calling thread's effective set (capabilities are per thread).
fn drop_cap_net_admin() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const V3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut h = Header {
        version: V3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: header and two data structs as capget/capset v3 expect.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()), 0);
        d[0].effective &= !(1 << CAP_NET_ADMIN);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()), 0);
    }
}

#[test]
fn churn_during_dump_gives_a_complete_table_or_a_typed_error() {
    if !root() {
        return;
    }
    const STABLE: u32 = 20_000;
    let ns = NetNs::create("flt-churn").unwrap();
    let mut sock = ns.run(ConntrackSocket::open).unwrap().unwrap();
    sock.create_entries(synthetic_entries(STABLE, 6, false))
        .unwrap();
    let stable: HashSet<Tuple> = synthetic_entries(STABLE, 6, false)
        .map(|e| e.orig)
        .collect();

    let stop = AtomicBool::new(false);
    let churned = AtomicU64::new(0);
    let mut churner = ns.run(ConntrackSocket::open).unwrap().unwrap();
    let mut outcomes: HashMap<&str, u32> = HashMap::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let batch: Vec<_> = synthetic_entries(5_000, 7, false).collect();
            while !stop.load(Ordering::Relaxed) {
                churner.create_entries(batch.iter().copied()).unwrap();
                churner
                    .delete_entries(batch.iter().map(|e| (e.orig, 0)))
                    .unwrap();
                churned.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Make sure churn is under way before the first dump.
        wait_for("churn to start", 500, || {
            (churned.load(Ordering::Relaxed) > 0).then_some(())
        });
        for _ in 0..20 {
            let mut v = Vec::new();
            match sock.dump(&DumpFilter::default(), &mut v) {
                Ok(st) => {
                    let seen: HashSet<Tuple> = v
                        .iter()
                        .map(|e| e.orig)
                        .filter(|t| stable.contains(t))
                        .collect();
                    assert_eq!(
                        seen.len(),
                        stable.len(),
                        "an Ok dump holds every stable entry"
                    );
                    assert_eq!(st.entries as usize, v.len());
                    *outcomes
                        .entry(if st.retries > 0 {
                            "ok-after-retry"
                        } else {
                            "ok"
                        })
                        .or_default() += 1;
                }
                Err(Error::DumpInterrupted { .. }) => {
                    assert!(v.is_empty(), "no partial table after an interrupted dump");
                    *outcomes.entry("interrupted").or_default() += 1;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!(
        "churn outcomes: {outcomes:?}, churn rounds: {}",
        churned.load(Ordering::Relaxed)
    );
}

#[test]
fn event_overrun_is_counted_as_lost() {
    if !root() {
        return;
    }
    let ns = NetNs::create("flt-lost").unwrap();
    // The smallest receive buffer the kernel allows, and nobody reading: NEW events for
    // thousands of entries cannot all fit.
    let mut events = ns
        .run(|| EventSocket::subscribe(EventGroups::ALL, 0))
        .unwrap()
        .unwrap();
    let mut sock = ns.run(ConntrackSocket::open).unwrap().unwrap();
    sock.create_entries(synthetic_entries(5_000, 8, false))
        .unwrap();
    let mut seen = 0usize;
    wait_for("ENOBUFS", 100, || {
        match events
            .recv(Some(Duration::from_millis(100)), |_| seen += 1)
            .unwrap()
        {
            io_linux::Received::Lost => Some(()),
            _ => None,
        }
    });
    assert!(events.lost() >= 1);
    // Read what was queued before the overrun, until the socket is empty.
    wait_for("the queue to drain", 1000, || {
        let r = events
            .recv(Some(Duration::from_millis(50)), |_| seen += 1)
            .unwrap();
        (r == io_linux::Received::Timeout).then_some(())
    });
    assert!(
        seen < 5_000,
        "events were dropped, so fewer than all arrived ({seen})"
    );
    // The socket keeps working after an overrun.
    sock.create_entries(synthetic_entries(1, 9, false)).unwrap();
    let got = wait_for("an event after the overrun", 100, || {
        let mut got = None;
        events
            .recv(Some(Duration::from_millis(100)), |ev| {
                if ev.entry.orig.src == "10.9.0.0".parse::<IpAddr>().unwrap() {
                    got = Some(ev.kind);
                }
            })
            .unwrap();
        got
    });
    assert_eq!(got, EventKind::New);
}
