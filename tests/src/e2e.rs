//! End-to-end harness: throw-away network namespaces joined by veths, the real `flowlens-agent`
//! and `flowlens-aggregator` binaries running inside them, real conntrack (read back with
//! `conntrack -L -o extended`), and traffic between "Pods" that are namespaces.
//!
//! Everything is cleaned up by drop guards, also when a test panics: processes (by their own
//! process group, see [`ChildGuard`]) before the namespaces they run in, and namespaces with
//! `ip netns del` (which also removes their veths). Ports live inside a test's own namespaces,
//! so tests never collide with each other or with the host. Waiting is always for a condition
//! with a deadline ([`wait_for`]).
//!
//! These tests need root (namespaces, veths, nftables, conntrack); [`require_root`] fails with a
//! message that says so.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{ChildGuard, TempDir, require_tool, run, target_dir, wait_for};

/// Panics unless the test runs as root (effective uid 0), and checks the tools it drives.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() != Some("0") {
        panic!(
            "this end-to-end test must run as root (effective uid {}): it creates network \
             namespaces, veths and nftables rules and reads conntrack. Run it as root, e.g. \
             `sudo -E env PATH=$PATH cargo test -p tests --test e2e_agent`",
            euid.as_deref().unwrap_or("unknown")
        );
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("conntrack", "conntrack"),
        ("curl", "curl"),
        ("python3", "python3"),
        ("openssl", "openssl"),
    ] {
        require_tool(tool, pkg);
    }
    // Build (or locate) the binaries before any namespace exists.
    bins();
}

/// A network namespace `fle2e-<tag>-<pid>-<n>`, loopback up, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fle2e-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS…`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["-n", self.name.as_str()];
        v.extend_from_slice(args);
        ip(&v);
    }

    /// A command that runs `program` inside the namespace.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `program args…` inside the namespace to completion (30 s at most); its stdout.
    pub fn output(&self, program: &str, args: &[&str]) -> String {
        let out = run(
            self.cmd(program).args(args),
            &format!("{program} {} in {}", args.join(" "), self.name),
            Duration::from_secs(30),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Turns on conntrack for the namespace's own traffic (an nftables table with `ct` rules on
    /// the input and output hooks: conntrack only tracks in a namespace where some hook needs
    /// it) with packet/byte accounting and timestamps. Must run before the traffic starts.
    pub fn enable_conntrack(&self, dir: &TempDir) {
        for s in [
            "net.netfilter.nf_conntrack_acct=1",
            "net.netfilter.nf_conntrack_timestamp=1",
        ] {
            self.output("sysctl", &["-q", "-w", s]);
        }
        let rules = dir.join(&format!("{}.nft", self.name));
        std::fs::write(
            &rules,
            "table inet flowlens_e2e {\n\
             \tchain out { type filter hook output priority 0; ct state new,established,related accept; }\n\
             \tchain in { type filter hook input priority 0; ct state new,established,related accept; }\n\
             }\n",
        )
        .expect("write nft rules");
        self.output("nft", &["-f", rules.to_str().expect("utf-8 path")]);
    }

    /// `GET url` from inside the namespace; the body if the status is 2xx.
    pub fn http_get(&self, url: &str) -> Option<String> {
        let out = self
            .cmd("curl")
            .args(["-sf", "--max-time", "3", url])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Spawns `program args…` inside the namespace with stdout and stderr to `log`.
    pub fn spawn(&self, program: &Path, args: &[&str], log: &Path, what: &str) -> Proc {
        self.spawn_with(self.cmd(program).args(args), log, what)
    }

    fn spawn_with(&self, cmd: &mut Command, log: &Path, what: &str) -> Proc {
        let f = std::fs::File::create(log).expect("create log file");
        let guard = ChildGuard::spawn(
            cmd.env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(f.try_clone().expect("dup log"))
                .stderr(f),
            what,
        );
        Proc {
            guard,
            log: log.to_path_buf(),
            what: what.to_string(),
        }
    }

    /// Every conntrack entry of the namespace whose original destination port is `dport`.
    pub fn conntrack(&self, dport: u16) -> Vec<CtEntry> {
        let out = self
            .cmd("conntrack")
            .args([
                "-L",
                "-o",
                "extended",
                "-p",
                "tcp",
                "--dport",
                &dport.to_string(),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run conntrack -L");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(CtEntry::parse)
            .collect()
    }

    /// Waits until the namespace has exactly `n` conntrack entries to `dport`, all in
    /// TIME_WAIT (closed by both sides, last ACK seen: their counters are final), and returns
    /// them.
    pub fn final_conntrack(&self, dport: u16, n: usize) -> Vec<CtEntry> {
        wait_for(
            Duration::from_secs(20),
            &format!(
                "{n} conntrack entries to port {dport} in TIME_WAIT in {}",
                self.name
            ),
            || {
                let e = self.conntrack(dport);
                (e.len() == n && e.iter().all(|e| e.state == "TIME_WAIT")).then_some(e)
            },
        )
    }

    /// Waits until something listens on TCP `port` in the namespace.
    pub fn wait_listening(&self, port: u16) {
        wait_for(
            Duration::from_secs(15),
            &format!("a listener on port {port} in {}", self.name),
            || {
                let out = self.output("ss", &["-Hltn", &format!("sport = :{port}")]);
                (!out.trim().is_empty()).then_some(())
            },
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) {
    run(
        Command::new("ip").args(args),
        &format!("ip {}", args.join(" ")),
        Duration::from_secs(10),
    );
}

/// A veth pair: `a_if` with `a_addr` (CIDR) in `a`, `b_if` with `b_addr` in `b`, both up.
pub fn veth(a: &Netns, a_if: &str, a_addr: &str, b: &Netns, b_if: &str, b_addr: &str) {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
    }
}

/// A process of a test (killed with its group on drop), its output in a log file.
pub struct Proc {
    pub guard: ChildGuard,
    pub log: PathBuf,
    pub what: String,
}

impl Proc {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.guard.try_wait() {
            panic!("{} exited ({st}); its log:\n{}", self.what, self.log());
        }
    }

    /// Sends `sig` (e.g. `"-TERM"`, `"-KILL"`) and waits for the exit; returns the status.
    pub fn stop(&mut self, sig: &str) -> std::process::ExitStatus {
        self.guard.signal_group(sig);
        self.guard.wait_exit(Duration::from_secs(20)).0
    }
}

/// The binaries under test: `$FLOWLENS_AGENT_BIN` / `$FLOWLENS_AGGREGATOR_BIN` if set, else
/// built first (`cargo build -p bins --bin flowlens-agent --bin flowlens-aggregator`).
pub struct Bins {
    pub agent: PathBuf,
    pub aggregator: PathBuf,
}

pub fn bins() -> &'static Bins {
    static BINS: std::sync::OnceLock<Bins> = std::sync::OnceLock::new();
    BINS.get_or_init(|| {
        let agent = std::env::var_os("FLOWLENS_AGENT_BIN");
        let aggregator = std::env::var_os("FLOWLENS_AGGREGATOR_BIN");
        if let (Some(a), Some(g)) = (agent, aggregator) {
            return Bins {
                agent: a.into(),
                aggregator: g.into(),
            };
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let st = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "bins",
                "--bin",
                "flowlens-agent",
                "--bin",
                "flowlens-aggregator",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p bins");
        assert!(
            st.success(),
            "cargo build -p bins --bin flowlens-agent --bin flowlens-aggregator failed"
        );
        Bins {
            agent: target_dir().join("debug/flowlens-agent"),
            aggregator: target_dir().join("debug/flowlens-aggregator"),
        }
    })
}

/// Static metadata: node-a with Pod `shop/client` at `client_ip`, node-b with Pod `shop/server`
/// at `server_ip` (each Node's podCIDR a /31 around its Pod).
pub fn metadata_yaml(client_ip: &str, server_ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: node-a}}\nspec: {{podCIDR: {client_ip}/32}}\n\
         status: {{addresses: [{{type: InternalIP, address: 192.168.77.1}}]}}\n---\n\
         apiVersion: v1\nkind: Node\nmetadata: {{name: node-b}}\nspec: {{podCIDR: {server_ip}/32}}\n\
         status: {{addresses: [{{type: InternalIP, address: 192.168.77.2}}]}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {{name: shop}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: shop, uid: u-client, labels: {{app: client}}}}\n\
         spec: {{nodeName: node-a}}\nstatus: {{phase: Running, podIP: {client_ip}, podIPs: [{{ip: {client_ip}}}]}}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: shop, uid: u-server, labels: {{app: server}}}}\n\
         spec: {{nodeName: node-b}}\nstatus: {{phase: Running, podIP: {server_ip}, podIPs: [{{ip: {server_ip}}}]}}\n"
    )
}

/// Starts `flowlens-aggregator --config DIR/<name>.yaml` in `ns` with `yaml` as its config and
/// waits until `/readyz` on `metrics` (an address inside `ns`) answers.
pub fn start_aggregator(ns: &Netns, dir: &TempDir, name: &str, yaml: &str, metrics: &str) -> Proc {
    let cfg = dir.join(&format!("{name}.yaml"));
    std::fs::write(&cfg, yaml).expect("write aggregator config");
    let log = dir.join(&format!("{name}.log"));
    let mut p = ns.spawn_with(
        ns.cmd(&bins().aggregator).arg("--config").arg(&cfg),
        &log,
        name,
    );
    wait_for(
        Duration::from_secs(20),
        &format!("{name} to answer /readyz"),
        || {
            p.assert_running();
            ns.http_get(&format!("http://{metrics}/readyz")).map(|_| ())
        },
    );
    p
}

/// Starts `flowlens-agent --config DIR/<name>.yaml` in `ns`.
pub fn start_agent(ns: &Netns, dir: &TempDir, name: &str, yaml: &str) -> Proc {
    let cfg = dir.join(&format!("{name}.yaml"));
    std::fs::write(&cfg, yaml).expect("write agent config");
    let log = dir.join(&format!("{name}.log"));
    ns.spawn(
        &bins().agent,
        &["--config", cfg.to_str().expect("utf-8 path")],
        &log,
        name,
    )
}

/// An aggregator config: listening on `listen` over `transport` (`tcp`, `udp`, `tls`), with
/// `[activeFlowRecordTimeout, correlationTimeout, inactiveFlowRecordTimeout]`, metrics on
/// `metrics`, static metadata from `meta` and JSON lines to `jsonl`. TLS settings (`tlsDir`, …)
/// are appended by the caller.
pub fn aggregator_yaml(
    listen: &str,
    transport: &str,
    [active, correlation, inactive]: [&str; 3],
    metrics: &str,
    meta: &Path,
    jsonl: &Path,
) -> String {
    format!(
        "listenAddr: \"{listen}\"\naggregatorTransportProtocol: {transport}\n\
         activeFlowRecordTimeout: {active}\ncorrelationTimeout: {correlation}\n\
         inactiveFlowRecordTimeout: {inactive}\n\
         metricsAddr: \"{metrics}\"\nmetadataFile: {}\njsonLines: {{path: {}}}\n",
        meta.display(),
        jsonl.display()
    )
}

/// An agent config for Node `node`: exporting to `collector` (`ADDR:PORT:TRANSPORT`), polling
/// every second, with `[activeFlowExportTimeout, idleFlowExportTimeout]`, metrics on `metrics`,
/// static metadata from `meta`; with `tls` (`[caCert, cert, key]`) TLS to the aggregator is on.
pub fn agent_yaml(
    collector: &str,
    [active, idle]: [&str; 2],
    node: &str,
    metrics: &str,
    meta: &Path,
    tls: Option<[&str; 3]>,
) -> String {
    let mut y = format!(
        "flowCollectorAddr: \"{collector}\"\nenableTLSToFlowAggregator: {}\n\
         flowPollInterval: 1s\nactiveFlowExportTimeout: {active}\nidleFlowExportTimeout: {idle}\n\
         nodeName: {node}\nmetricsAddr: \"{metrics}\"\nmetadataFile: {}\n",
        tls.is_some(),
        meta.display()
    );
    if let Some([ca, cert, key]) = tls {
        y += &format!("tls: {{caCert: {ca}, cert: {cert}, key: {key}}}\n");
    }
    y
}

/// Waits (20 s at most) until the agent whose metrics are at `metrics` in `ns` has its IPFIX
/// export session up, checking on every poll that it still runs.
pub fn wait_session_up(ns: &Netns, metrics: &str, agent: &mut Proc) {
    wait_metric(
        ns,
        metrics,
        "flowlens_agent_ipfix_export_session_up",
        1.0,
        Duration::from_secs(20),
        || agent.assert_running(),
    );
}

/// Waits (20 s at most) until the agent whose metrics are at `metrics` in `ns` has polled
/// conntrack `n` more times than now, checking on every poll that it still runs.
pub fn wait_more_polls(ns: &Netns, metrics: &str, n: u32, agent: &mut Proc) {
    const POLLS: &str = "flowlens_agent_conntrack_polls_total";
    let polls = scrape(ns, metrics, POLLS);
    wait_metric(
        ns,
        metrics,
        POLLS,
        polls + f64::from(n),
        Duration::from_secs(20),
        || agent.assert_running(),
    );
}

/// The sum of the samples of Prometheus metric `name` (any labels) in `text`; `None` if absent.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Metric `name` from `http://ADDR/metrics` inside `ns` (0 when the endpoint or metric is absent).
pub fn scrape(ns: &Netns, addr: &str, name: &str) -> f64 {
    ns.http_get(&format!("http://{addr}/metrics"))
        .and_then(|t| metric(&t, name))
        .unwrap_or(0.0)
}

/// Waits until metric `name` at `http://ADDR/metrics` inside `ns` is at least `at_least`,
/// calling `alive` (e.g. to check the processes still run) on every poll; returns its value.
pub fn wait_metric(
    ns: &Netns,
    addr: &str,
    name: &str,
    at_least: f64,
    timeout: Duration,
    mut alive: impl FnMut(),
) -> f64 {
    wait_for(timeout, &format!("{name} ≥ {at_least} at {addr}"), || {
        alive();
        let v = scrape(ns, addr, name);
        (v >= at_least).then_some(v)
    })
}

/// Every record of a JSON-lines file (none if it does not exist yet). A last line still being
/// written (no newline yet) is left out.
pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// An IPv4 TCP/UDP 5-tuple as conntrack's original direction shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple5 {
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl Tuple5 {
    /// The TCP connection `src:sport` → `dst:dport`.
    pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16) -> Tuple5 {
        Tuple5 {
            src: src.into(),
            dst: dst.into(),
            sport,
            dport,
            proto: 6,
        }
    }

    /// This flow's records in the JSON lines at `path`, in file order.
    pub fn records_in(&self, path: &Path) -> Vec<Value> {
        read_jsonl(path)
            .into_iter()
            .filter(|r| self.matches(r))
            .collect()
    }

    /// Whether an aggregated JSON record is this flow's.
    pub fn matches(&self, r: &Value) -> bool {
        r["sourceIPv4Address"] == self.src.as_str()
            && r["destinationIPv4Address"] == self.dst.as_str()
            && r["sourceTransportPort"] == self.sport
            && r["destinationTransportPort"] == self.dport
            && r["protocolIdentifier"] == self.proto
    }
}

/// One line of `conntrack -L -o extended`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtEntry {
    pub tuple: Tuple5,
    /// TCP state as conntrack prints it (`TIME_WAIT`, …); empty for other protocols.
    pub state: String,
    pub packets: u64,
    pub bytes: u64,
    pub reverse_packets: u64,
    pub reverse_bytes: u64,
}

impl CtEntry {
    /// `ipv4 2 tcp 6 117 TIME_WAIT src=… dst=… sport=… dport=… packets=6 bytes=398 src=… …
    /// packets=6 bytes=1041 [ASSURED] mark=0 use=1`: the first src/dst/ports/counters are the
    /// original direction, the second the reply.
    pub fn parse(line: &str) -> Option<CtEntry> {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let proto: u8 = toks.get(3)?.parse().ok()?;
        let state = toks
            .get(5)
            .filter(|t| !t.contains('='))
            .map_or(String::new(), |s| s.to_string());
        let mut first: HashMap<&str, &str> = HashMap::new();
        let mut second: HashMap<&str, &str> = HashMap::new();
        for t in &toks {
            if let Some((k, v)) = t.split_once('=') {
                if first.contains_key(k) {
                    second.entry(k).or_insert(v);
                } else {
                    first.insert(k, v);
                }
            }
        }
        let num = |m: &HashMap<&str, &str>, k: &str| -> Option<u64> { m.get(k)?.parse().ok() };
        Some(CtEntry {
            tuple: Tuple5 {
                src: first.get("src")?.to_string(),
                dst: first.get("dst")?.to_string(),
                sport: num(&first, "sport")? as u16,
                dport: num(&first, "dport")? as u16,
                proto,
            },
            state,
            packets: num(&first, "packets")?,
            bytes: num(&first, "bytes")?,
            reverse_packets: num(&second, "packets")?,
            reverse_bytes: num(&second, "bytes")?,
        })
    }
}

/// `r[key]` as a number (panics naming the key otherwise).
pub fn num(r: &Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {r}"))
}

/// The four counter IEs as (total, delta) pairs, with conntrack's matching field.
pub const COUNTERS: [(&str, &str); 4] = [
    ("packetTotalCount", "packetDeltaCount"),
    ("octetTotalCount", "octetDeltaCount"),
    ("reversePacketTotalCount", "reversePacketDeltaCount"),
    ("reverseOctetTotalCount", "reverseOctetDeltaCount"),
];

/// conntrack's value of the counter whose total IE is `total`.
pub fn ct_counter(e: &CtEntry, total: &str) -> u64 {
    match total {
        "packetTotalCount" => e.packets,
        "octetTotalCount" => e.bytes,
        "reversePacketTotalCount" => e.reverse_packets,
        "reverseOctetTotalCount" => e.reverse_bytes,
        _ => panic!("unknown counter {total}"),
    }
}

/// Waits until the JSON lines at `path` hold an end-of-flow record (flowEndReason 3) for every
/// tuple; returns all records by tuple, in file order.
pub fn wait_end_of_flow(
    path: &Path,
    tuples: &[Tuple5],
    timeout: Duration,
    mut alive: impl FnMut(),
) -> HashMap<Tuple5, Vec<Value>> {
    wait_for(
        timeout,
        "an end-of-flow record of every connection in the JSON lines",
        || {
            alive();
            let recs = read_jsonl(path);
            let by: HashMap<Tuple5, Vec<Value>> = tuples
                .iter()
                .map(|t| {
                    (
                        t.clone(),
                        recs.iter().filter(|r| t.matches(r)).cloned().collect(),
                    )
                })
                .collect();
            by.values()
                .all(|v| v.iter().any(|r| r["flowEndReason"] == 3))
                .then_some(by)
        },
    )
}

/// `python3 -m http.server PORT --bind ADDR` in `ns`, waited for.
pub fn http_server(ns: &Netns, dir: &TempDir, addr: &str, port: u16) -> Proc {
    let log = dir.join(&format!("http-{}.log", ns.name()));
    let py = require_tool("python3", "python3");
    let p = ns.spawn(
        &py,
        &["-m", "http.server", &port.to_string(), "--bind", addr],
        &log,
        "http server",
    );
    ns.wait_listening(port);
    p
}

/// `n` HTTP GETs from `ns` to `url`, one connection each (curl), all succeeding.
pub fn curl_n(ns: &Netns, url: &str, n: usize) {
    for _ in 0..n {
        ns.output("curl", &["-sf", "--max-time", "5", "-o", "/dev/null", url]);
    }
}

/// A TCP echo server (`python3`) on `addr:port` in `ns`, waited for.
pub fn echo_server(ns: &Netns, dir: &TempDir, addr: &str, port: u16) -> Proc {
    const SERVER: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let log = dir.join(&format!("echo-{}.log", ns.name()));
    let py = require_tool("python3", "python3");
    let p = ns.spawn(
        &py,
        &["-c", SERVER, addr, &port.to_string()],
        &log,
        "echo server",
    );
    ns.wait_listening(port);
    p
}

/// One long-lived TCP connection to an echo server, driven by the test: each [`send`] writes
/// `n` bytes and waits until they have come back.
///
/// [`send`]: EchoClient::send
pub struct EchoClient {
    _proc: Proc,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// The client's source port.
    pub port: u16,
}

impl EchoClient {
    pub fn connect(ns: &Netns, addr: &str, port: u16) -> EchoClient {
        const CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
print("port", c.getsockname()[1], flush=True)
for line in sys.stdin:
    n = int(line)
    c.sendall(b"x" * n)
    got = 0
    while got < n:
        d = c.recv(65536)
        if not d:
            sys.exit("the server closed the connection")
        got += len(d)
    print("ok", n, flush=True)
c.shutdown(socket.SHUT_WR)
while c.recv(65536):
    pass
c.close()
print("closed", flush=True)
"#;
        let py = require_tool("python3", "python3");
        let mut guard = ChildGuard::spawn(
            ns.cmd(&py)
                .args(["-c", CLIENT, addr, &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
            "echo client",
        );
        let stdin = guard.child_mut().stdin.take();
        let stdout = guard.child_mut().stdout.take().expect("client stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut c = EchoClient {
            _proc: Proc {
                guard,
                log: PathBuf::new(),
                what: "echo client".into(),
            },
            stdin,
            lines,
            port: 0,
        };
        let l = c.line(Duration::from_secs(10), "the echo client to connect");
        c.port = l
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected echo client output {l:?}"));
        c
    }

    fn line(&mut self, timeout: Duration, what: &str) -> String {
        self.lines
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("timed out after {timeout:?} waiting for {what}: {e}"))
    }

    /// Sends `n` bytes and waits for their echo.
    pub fn send(&mut self, n: usize) {
        let stdin = self.stdin.as_mut().expect("connection already closed");
        writeln!(stdin, "{n}").expect("write to the echo client");
        stdin.flush().expect("flush");
        let l = self.line(Duration::from_secs(10), "an echo");
        assert_eq!(l, format!("ok {n}"), "echo client");
    }

    /// Closes the connection (FIN from the client, then the server's) and waits until done.
    pub fn close(&mut self) {
        drop(self.stdin.take());
        let l = self.line(Duration::from_secs(10), "the echo client to close");
        assert_eq!(l, "closed", "echo client");
    }
}

/// Traffic over one [`EchoClient`] on a thread of its own, started by [`traffic`]. Dropped
/// without [`Traffic::finish`] (a failing test), it stops the thread and waits for it.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(EchoClient, u64)>>,
}

impl Traffic {
    /// Stops sending and hands back the client and how many echoes went through.
    pub fn finish(mut self) -> (EchoClient, u64) {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().expect("running").join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `bytes` every `every` over `client` until [`Traffic::finish`]. Pacing, not
/// synchronisation: the test waits for conditions, the traffic just has to keep flowing
/// meanwhile.
pub fn traffic(mut client: EchoClient, bytes: usize, every: Duration) -> Traffic {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        let mut sent = 0u64;
        while !s.load(Ordering::Relaxed) {
            let t = Instant::now();
            client.send(bytes);
            sent += 1;
            std::thread::sleep(every.saturating_sub(t.elapsed()));
        }
        (client, sent)
    });
    Traffic {
        stop,
        thread: Some(thread),
    }
}

/// The per-counter sum of the deltas of `recs`, keyed by the counter's total IE (see
/// [`COUNTERS`]).
pub fn sum_deltas(recs: &[Value]) -> HashMap<&'static str, u64> {
    COUNTERS
        .iter()
        .map(|(total, delta)| (*total, recs.iter().map(|r| num(r, delta)).sum()))
        .collect()
}

/// For each counter where `last`'s total or the sum of the deltas of `recs` (all of the flow's
/// records) differs from conntrack's `ct`: a line saying so.
pub fn counter_mismatches(recs: &[Value], last: &Value, ct: &CtEntry) -> Vec<String> {
    let sums = sum_deltas(recs);
    COUNTERS
        .iter()
        .filter_map(|(total, _)| {
            let (got, sum, want) = (num(last, total), sums[total], ct_counter(ct, total));
            (got != want || sum != want)
                .then(|| format!("{total}: total {got}, sum of deltas {sum}, conntrack {want}"))
        })
        .collect()
}

/// A CA and a client certificate signed by it, made by `openssl` in `dir` (unrelated to the
/// aggregator's CA): `other-ca.crt`, `other-client.crt`, `other-client.key`.
pub fn openssl_other_ca(dir: &TempDir) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = require_tool("openssl", "openssl");
    let p = |n: &str| dir.join(n).to_str().expect("utf-8 path").to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(
        Command::new(&openssl)
            .args(["req", "-x509"])
            .args(ec)
            .args(["-keyout", &p("other-ca.key"), "-out", &p("other-ca.crt")])
            .args(["-subj", "/CN=not-the-flowlens-ca", "-days", "2"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
        "openssl CA",
        Duration::from_secs(30),
    );
    run(
        Command::new(&openssl)
            .arg("req")
            .args(ec)
            .args([
                "-keyout",
                &p("other-client.key"),
                "-out",
                &p("other-client.csr"),
            ])
            .args(["-subj", "/CN=intruder"]),
        "openssl client CSR",
        Duration::from_secs(30),
    );
    std::fs::write(
        dir.join("other-client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .expect("write extfile");
    run(
        Command::new(&openssl)
            .args(["x509", "-req", "-in", &p("other-client.csr")])
            .args(["-CA", &p("other-ca.crt"), "-CAkey", &p("other-ca.key")])
            .args(["-CAcreateserial", "-days", "2"])
            .args(["-extfile", &p("other-client.ext")])
            .args(["-out", &p("other-client.crt")]),
        "openssl sign client cert",
        Duration::from_secs(30),
    );
    (
        dir.join("other-ca.crt"),
        dir.join("other-client.crt"),
        dir.join("other-client.key"),
    )
}

/// The common test cluster: a client Pod namespace (conntrack on; agent and aggregator run there)
/// and a server Pod namespace joined by a veth, the metadata file naming both Pods, and where the
/// aggregator's JSON lines go. Fields drop in order: server, client (namespaces deleted), dir.
pub struct PodPair {
    pub server: Netns,
    pub client: Netns,
    pub dir: TempDir,
    pub meta: PathBuf,
    pub jsonl: PathBuf,
}

impl PodPair {
    /// `test` names the temporary directory, `ns` prefixes the namespaces (`<ns>-cl`, `<ns>-sv`).
    pub fn new(test: &str, ns: &str, client_ip: &str, server_ip: &str) -> PodPair {
        let dir = TempDir::new(test);
        let client = Netns::new(&format!("{ns}-cl"));
        let server = Netns::new(&format!("{ns}-sv"));
        veth(
            &client,
            "pod0",
            &format!("{client_ip}/24"),
            &server,
            "pod0",
            &format!("{server_ip}/24"),
        );
        client.enable_conntrack(&dir);
        let meta = dir.join("meta.yaml");
        std::fs::write(&meta, metadata_yaml(client_ip, server_ip)).unwrap();
        let jsonl = dir.join("flows.jsonl");
        PodPair {
            server,
            client,
            dir,
            meta,
            jsonl,
        }
    }
}
