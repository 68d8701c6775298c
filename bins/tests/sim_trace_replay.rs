//! A trace recorded from a real network namespace replays (issue 7): TCP and UDP loopback
//! traffic in a fresh namespace with conntrack on, `flowlens conntrack record` writes the
//! `flowlens-trace v1` file, `flowlens replay` turns it into records through one exporter core.
//!
//! Checked against the kernel itself: every TCP connection `conntrack -L` lists when recording
//! starts (all in TIME_WAIT by then, counters final) gets exactly one end-of-flow record whose
//! totals are conntrack's counters, and every connection's deltas add up to its last totals.
//!
//! Needs root (network namespace, nftables, conntrack); the namespace is deleted by name on
//! drop, also when the test fails.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use serde_json::Value;

const PORT: u16 = 18080;
const UDP_PORT: u16 = 15353;

struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("flsimtr-{}", std::process::id());
        // A namespace left by an earlier crashed run of the same pid: start clean.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]));
        ns
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs to completion; panics with its output unless it succeeds. Returns stdout.
fn run(c: &mut Command) -> String {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().nth(1).map(str::to_string));
    assert_eq!(
        euid.as_deref(),
        Some("0"),
        "this test must run as root: it creates a network namespace and reads its conntrack \
         (`sudo -E env PATH=$PATH cargo test -p bins --test sim_trace_replay`)"
    );
}

/// `n` TCP request/response exchanges to a server in the namespace, and `n` UDP datagrams (half
/// answered), from one Python process; every connection is closed when it returns.
const TRAFFIC: &str = r#"
import socket, sys, threading
n, tport, uport = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", tport)); srv.listen(64)
usrv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); usrv.bind(("127.0.0.1", uport))
def serve():
    for i in range(n):
        c, _ = srv.accept()
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(4096)
            if not chunk: break
            data += chunk
        c.sendall(b"x" * (1000 * (i + 1)))
        c.close()
def userve():
    for i in range(n):
        data, peer = usrv.recvfrom(2048)
        if i % 2 == 0: usrv.sendto(b"pong" * 10, peer)
t = threading.Thread(target=serve); t.start()
u = threading.Thread(target=userve); u.start()
for i in range(n):
    c = socket.create_connection(("127.0.0.1", tport))
    c.sendall(b"y" * (100 * (i + 1)) + b"\n")
    while c.recv(65536): pass
    c.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"ping" * (i + 1), ("127.0.0.1", uport))
    s.close()
t.join()
"#;

/// One conntrack entry as `conntrack -L -o extended` prints it: original source port and the
/// four counters.
fn conntrack_tcp(ns: &Netns) -> BTreeMap<u16, [u64; 4]> {
    let out = run(ns
        .cmd("conntrack")
        .args(["-L", "-p", "tcp", "--dport", &PORT.to_string()]));
    let mut m = BTreeMap::new();
    for line in out.lines() {
        let kv = |key: &str, nth: usize| -> Option<u64> {
            line.split_whitespace()
                .filter_map(|w| w.strip_prefix(key))
                .nth(nth)
                .and_then(|v| v.parse().ok())
        };
        let (Some(sport), Some(p0), Some(b0), Some(p1), Some(b1)) = (
            kv("sport=", 0),
            kv("packets=", 0),
            kv("bytes=", 0),
            kv("packets=", 1),
            kv("bytes=", 1),
        ) else {
            continue;
        };
        m.insert(sport as u16, [p0, b0, p1, b1]);
    }
    m
}

fn num(r: &Value, k: &str) -> u64 {
    r[k].as_u64()
        .unwrap_or_else(|| panic!("record without numeric {k}: {r}"))
}

#[test]
fn trace_recorded_in_a_namespace_replays() {
    require_root();
    let flowlens = env!("CARGO_BIN_EXE_flowlens");
    let dir = std::env::temp_dir().join(format!("flsimtr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ns = Netns::new();
    // Conntrack only tracks in a namespace where a hook needs it; accounting and timestamps on.
    for s in [
        "net.netfilter.nf_conntrack_acct=1",
        "net.netfilter.nf_conntrack_timestamp=1",
    ] {
        run(ns.cmd("sysctl").args(["-q", "-w", s]));
    }
    let rules = dir.join("ct.nft");
    std::fs::write(
        &rules,
        "table inet flowlens_simtr {\n\
         \tchain out { type filter hook output priority 0; ct state new,established,related accept; }\n\
         \tchain in { type filter hook input priority 0; ct state new,established,related accept; }\n\
         }\n",
    )
    .expect("write nft rules");
    run(ns
        .cmd("nft")
        .args(["-f", rules.to_str().expect("utf-8 path")]));

    // Traffic first: the connections sit in TIME_WAIT (UDP entries for 30 s) with final
    // counters while the recorder runs, so what it must see does not race its start.
    let n = 12;
    run(ns.cmd("python3").args([
        "-c",
        TRAFFIC,
        &n.to_string(),
        &PORT.to_string(),
        &UDP_PORT.to_string(),
    ]));
    let truth = conntrack_tcp(&ns);
    assert_eq!(
        truth.len(),
        n,
        "conntrack lists every TCP connection: {truth:?}"
    );

    let trace = dir.join("live.trace");
    run(ns.cmd(flowlens).args([
        "conntrack",
        "record",
        "--out",
        trace.to_str().expect("utf-8 path"),
        "--duration",
        "2s",
        "--interval",
        "1s",
        "--enable-accounting",
    ]));
    let text = std::fs::read_to_string(&trace).expect("trace written");
    let parsed = sim::trace::Trace::parse(&text).expect("the recorded trace parses");
    assert!(parsed.events.len() >= 3, "{} events", parsed.events.len());

    let out = run(Command::new(flowlens).args(["replay", trace.to_str().expect("utf-8 path")]));
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    // Per connection (5-tuple, start): Σ deltas, last totals, final records.
    type Acc = ([u64; 4], [u64; 4], u32);
    let mut per: BTreeMap<(String, u64, u64, u64), Acc> = BTreeMap::new();
    let field = |r: &Value, names: [&str; 4]| names.map(|k| num(r, k));
    for r in &records {
        let key = (
            r["sourceIPv4Address"].to_string(),
            num(r, "sourceTransportPort"),
            num(r, "destinationTransportPort"),
            num(r, "flowStartSeconds"),
        );
        let e = per.entry(key).or_default();
        let d = field(
            r,
            [
                "packetDeltaCount",
                "octetDeltaCount",
                "reversePacketDeltaCount",
                "reverseOctetDeltaCount",
            ],
        );
        for (sum, d) in e.0.iter_mut().zip(d) {
            *sum += d;
        }
        e.1 = field(
            r,
            [
                "packetTotalCount",
                "octetTotalCount",
                "reversePacketTotalCount",
                "reverseOctetTotalCount",
            ],
        );
        e.2 += matches!(num(r, "flowEndReason"), 3..=5) as u32;
    }
    for (k, (sum, last, _)) in &per {
        assert_eq!(sum, last, "{k:?}: deltas do not add up to the totals");
    }
    for (sport, counters) in &truth {
        let mine: Vec<_> = per
            .iter()
            .filter(|(k, _)| k.1 == *sport as u64 && k.2 == PORT as u64)
            .collect();
        assert_eq!(mine.len(), 1, "port {sport}: {mine:?}");
        let (_, (_, last, finals)) = mine[0];
        assert_eq!(*finals, 1, "port {sport}: one end-of-flow record");
        assert_eq!(last, counters, "port {sport}: totals are conntrack's");
    }
    let udp = records
        .iter()
        .filter(|r| num(r, "destinationTransportPort") == UDP_PORT as u64)
        .count();
    assert!(udp >= n, "{udp} UDP records of {n} datagrams");
    let _ = std::fs::remove_dir_all(&dir);
}
