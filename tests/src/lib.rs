//! Helpers shared by the integration tests in `tests/tests/`: external peers (required tools,
//! processes killed on drop, bounded waiting), synthetic captures (Ethernet/IP/UDP/TCP frames in
//! pcap files) and Antrea-layout records whose every field value is known, so a peer's decoding
//! can be compared field by field with what was encoded.
//!
//! Waiting on a peer is always for a condition (a file's content, a datagram) with a hard
//! deadline; nothing sleeps to synchronise.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use flowcore::ie::DataType;
use flowcore::ipfix::{EncodeError, Encoder, FieldSpec, Layout};
use flowcore::model::Timestamp;

pub mod abuse;
pub mod decode_cmp;
pub mod e2e;
pub mod pcap;
pub mod traffic;
pub mod tshark;

/// Export time used for the encoded test records (2025-11-24T16:00:00Z).
pub const NOW: Timestamp = Timestamp::from_secs(1_764_000_000);

/// Path of an external tool the interop tests need, or a panic that says how to install it.
/// These tests never skip silently: CI installs the tools (`.ci/run`, `tests/setup-debian.sh`).
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]) {
        let p = dir.join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "this interop test needs `{tool}` (Debian package `{package}`), which is not installed: \
         run `apt-get install {package}` or tests/setup-debian.sh"
    )
}

/// A child process, in a process group of its own, that is ended with its whole group when
/// dropped, also when the test panics: peers such as nfacctd (plugin processes) and tshark
/// (dumpcap) fork helpers that would outlive a kill of the parent alone.
pub struct ChildGuard {
    child: Child,
    what: String,
    /// The leader has been reaped: its id may be reused, so its group is no longer signalled.
    reaped: bool,
}

impl ChildGuard {
    pub fn spawn(cmd: &mut Command, what: &str) -> ChildGuard {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        ChildGuard {
            child,
            what: what.to_string(),
            reaped: false,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself, e.g. to take its piped stdin or stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether the process has exited (and with what), without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        let st = self.child.try_wait().expect("try_wait");
        self.reaped |= st.is_some();
        st
    }

    /// Waits at most `timeout` for the process to exit by itself; panics (after killing it) if
    /// it does not. Returns its exit status and whatever it wrote to stderr, if piped.
    pub fn wait_exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let what = self.what.clone();
        let status = wait_for(timeout, &format!("{what} to exit"), || self.try_wait());
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        (status, err)
    }
}

impl ChildGuard {
    /// Signals the child's process group (its id: the child leads the group), e.g. `"-INT"`.
    pub fn signal_group(&self, sig: &str) {
        assert!(
            !self.reaped,
            "{} has exited; its group id may be reused",
            self.what
        );
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // TERM first so peers can stop their helpers, then KILL for whatever is left. The
        // leader is not reaped before the KILL, so the group id cannot have been reused.
        self.signal_group("-TERM");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !exited(self.child.id()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal_group("-KILL");
        let _ = self.child.wait();
    }
}

/// Whether process `pid` (our unreaped child) has exited: a zombie, or gone.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// Polls `f` until it yields a value, at most `timeout`; panics naming `what` otherwise.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command to completion with a hard timeout; panics with its stderr if it fails.
pub fn run(cmd: &mut Command, what: &str, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn(cmd, what);
    // Read the pipes on threads so a chatty process cannot block on a full pipe.
    let mut out = child.child.stdout.take().expect("stdout");
    let mut err = child.child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let (status, _) = child.wait_exit(timeout);
    let output = Output {
        status,
        stdout: t_out.join().expect("stdout reader"),
        stderr: t_err.join().expect("stderr reader"),
    };
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A fresh directory for one test's files, removed on drop unless `FLOWLENS_KEEP_TMP` is set.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!(
            "flowlens-interop-{test}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("FLOWLENS_KEEP_TMP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The repository's `tests/fixtures` directory.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A UDP socket bound to an ephemeral port on 127.0.0.1.
pub fn udp_listener() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind UDP on loopback");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set_read_timeout");
    s
}

/// A free UDP port on 127.0.0.1 (bound then released; a peer binds it next).
pub fn free_udp_port() -> u16 {
    udp_listener().local_addr().expect("local_addr").port()
}

/// Runs an exporter that sends IPFIX by UDP to 127.0.0.1 and exits by itself (softflowd reading
/// a capture, pmacctd with `pcap_savefile`); `args` may contain `{port}`, replaced by the port of
/// the socket that receives. Returns the datagrams, in arrival order, once it has exited: on
/// loopback every datagram is queued on the socket by the time its send returned.
pub fn capture_exporter(program: &Path, args: &[&str], what: &str) -> Vec<Vec<u8>> {
    let sock = udp_listener();
    let port = sock.local_addr().expect("local_addr").port().to_string();
    let args: Vec<String> = args.iter().map(|a| a.replace("{port}", &port)).collect();
    let out = run(
        Command::new(program).args(&args),
        what,
        Duration::from_secs(30),
    );
    sock.set_nonblocking(true).expect("set_nonblocking");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => got.push(buf[..n].to_vec()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("receiving from {what}: {e}"),
        }
    }
    assert!(
        !got.is_empty(),
        "{what} sent nothing; its output: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    got
}

/// Like [`capture_exporter`] for an exporter that connects by TCP (softflowd `-P tcp`): accepts
/// its connection and returns the bytes it sent until it closed the connection and exited.
pub fn capture_exporter_tcp(program: &Path, args: &[&str], what: &str) -> Vec<u8> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TCP on loopback");
    let port = listener
        .local_addr()
        .expect("local_addr")
        .port()
        .to_string();
    let args: Vec<String> = args.iter().map(|a| a.replace("{port}", &port)).collect();
    let mut child = ChildGuard::spawn(
        Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        what,
    );
    listener.set_nonblocking(true).expect("set_nonblocking");
    let mut conn = wait_for(
        Duration::from_secs(20),
        &format!("{what} to connect"),
        || match listener.accept() {
            Ok((c, _)) => Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(st) = child.try_wait() {
                    panic!("{what} exited ({st}) without connecting");
                }
                None
            }
            Err(e) => panic!("accepting {what}'s connection: {e}"),
        },
    );
    conn.set_nonblocking(false).expect("set_nonblocking");
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set_read_timeout");
    let mut data = Vec::new();
    let mut buf = vec![0u8; 65536];
    wait_for(
        Duration::from_secs(20),
        &format!("{what} to close its connection"),
        || match conn.read(&mut buf) {
            Ok(0) => Some(()),
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                None
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading from {what}: {e}"),
        },
    );
    let (st, err) = child.wait_exit(Duration::from_secs(20));
    assert!(st.success(), "{what} failed ({st}): {err}");
    data
}

/// Writes IPFIX datagrams as a capture of UDP 127.0.0.1:40000 → 127.0.0.1:4739, frames 1 ms
/// apart from the traffic capture's start: the same bytes give the same file.
pub fn write_ipfix_capture(path: &Path, msgs: &[Vec<u8>]) {
    let src: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let dst: SocketAddr = "127.0.0.1:4739".parse().expect("addr");
    pcap::write_udp_pcap(path, src, dst, traffic::START, msgs);
}

/// A value an Antrea-layout field is given, as the test expects peers to show it.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    U(u64),
    Ip(IpAddr),
    S(String),
    /// `dateTimeSeconds`, seconds since the Unix epoch.
    Secs(u64),
}

/// One record of a layout: each field with the value written for it, in template order.
#[derive(Clone, Debug)]
pub struct TestRecord {
    pub layout: Layout,
    pub fields: Vec<(FieldSpec, Val)>,
}

impl TestRecord {
    /// The value of the field named `name`.
    pub fn get(&self, name: &str) -> &Val {
        self.fields
            .iter()
            .find(|(f, _)| f.name == Some(name))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("{name} is not in {:?}", self.layout))
    }

    pub fn u(&self, name: &str) -> u64 {
        match self.get(name) {
            Val::U(v) | Val::Secs(v) => *v,
            v => panic!("{name} is {v:?}, not a number"),
        }
    }

    pub fn ip(&self, name: &str) -> IpAddr {
        match self.get(name) {
            Val::Ip(a) => *a,
            v => panic!("{name} is {v:?}, not an address"),
        }
    }

    /// Writes the record into `enc` (whose templates include the layout's).
    pub fn write(&self, enc: &mut Encoder, now: Timestamp) -> Result<(), EncodeError> {
        let mut w = enc.record(now, self.layout.template_id())?;
        for (_, v) in &self.fields {
            match v {
                Val::U(n) => w.uint(*n),
                Val::Ip(a) => w.ip(*a),
                Val::S(s) => w.string(s),
                Val::Secs(s) => w.time(Timestamp::from_secs(*s)),
            };
        }
        w.finish()
    }
}

/// Record `i` of `layout` with realistic Antrea content and a distinct value in every counter
/// (so a peer that mixed two fields up would show it). Counters stay within `u32` so that a peer
/// printing them through a 32-bit path would still agree; addresses vary with `i`.
pub fn antrea_record(layout: Layout, i: u64) -> TestRecord {
    let v6 = matches!(layout, Layout::AgentV6 | Layout::AggregatedV6);
    let host = |net: u16, h: u64| -> IpAddr {
        if v6 {
            Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, net, h as u16).into()
        } else {
            Ipv4Addr::new(10, 10, net as u8, h as u8).into()
        }
    };
    let start = NOW.as_secs() - 60 - i;
    let fields = layout
        .fields()
        .iter()
        .enumerate()
        .map(|(k, f)| {
            let name = f.name.unwrap_or_default();
            let k = k as u64;
            let v = match f.data_type {
                DataType::DateTimeSeconds if name == "flowStartSeconds" => Val::Secs(start),
                DataType::DateTimeSeconds => Val::Secs(NOW.as_secs() - k),
                DataType::Ipv4Address | DataType::Ipv6Address => match name {
                    "sourceIPv4Address" | "sourceIPv6Address" => Val::Ip(host(1, 10 + i)),
                    "destinationIPv4Address" | "destinationIPv6Address" => {
                        Val::Ip(host(2, 20 + i % 3))
                    }
                    "destinationClusterIPv4" => Val::Ip(Ipv4Addr::new(10, 96, 0, 10).into()),
                    "destinationClusterIPv6" => {
                        Val::Ip(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 10).into())
                    }
                    "originalExporterIPv4Address" => Val::Ip(Ipv4Addr::new(192, 168, 49, 2).into()),
                    _ => Val::Ip(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2).into()),
                },
                DataType::String => Val::S(
                    match name {
                        "sourcePodName" => "frontend-7c9f8d6b5-x2k4p",
                        "sourcePodNamespace" | "destinationPodNamespace" => "shop",
                        "sourceNodeName" => "worker-node-01",
                        "destinationPodName" => "catalog-5d8f9c7b6-qwz9r",
                        "destinationNodeName" => "worker-node-02",
                        "destinationServicePortName" => "shop/catalog:http",
                        "ingressNetworkPolicyName" => "allow-frontend",
                        "ingressNetworkPolicyNamespace" => "shop",
                        "ingressNetworkPolicyRuleName" => "ingress-0",
                        "tcpState" => "ESTABLISHED",
                        "sourcePodLabels" => r#"{"app":"frontend","tier":"web"}"#,
                        "destinationPodLabels" => r#"{"app":"catalog"}"#,
                        "clusterId" => "cluster-a",
                        _ => "",
                    }
                    .to_string(),
                ),
                _ => Val::U(match name {
                    "flowEndReason" => 2 + i % 3,
                    "sourceTransportPort" => 40000 + i,
                    "destinationTransportPort" | "destinationServicePort" => 8080,
                    // TCP, UDP, TCP, …: both kinds of flow.
                    "protocolIdentifier" => [6, 17][(i % 2) as usize],
                    "flowType" => 2,
                    "ingressNetworkPolicyType" | "ingressNetworkPolicyRuleAction" => 1,
                    "egressNetworkPolicyType" | "egressNetworkPolicyRuleAction" => 0,
                    "originalObservationDomainId" => 0xC0FFEE,
                    n if n.contains("hroughput") => 8_000_000 + 1000 * k + i,
                    n if n.contains("ctet") => 150_000 + 1000 * k + 7 * i,
                    n if n.contains("acket") => 100 + 10 * k + i,
                    _ => k,
                }),
            };
            (*f, v)
        })
        .collect();
    TestRecord { layout, fields }
}

/// Like [`antrea_record`], with Pod labels of `label_len` bytes: from 255 on, variable-length
/// fields take the 3-byte length form (RFC 7011 §7).
pub fn antrea_record_with_labels(layout: Layout, i: u64, label_len: usize) -> TestRecord {
    let mut r = antrea_record(layout, i);
    for (spec, v) in r.fields.iter_mut() {
        if matches!(spec.name, Some("sourcePodLabels" | "destinationPodLabels")) {
            // {"k00":"vvvv…"}: valid JSON of exactly label_len bytes (label_len ≥ 10).
            let pad = label_len.saturating_sub(10);
            *v = Val::S(format!("{{\"k{:02}\":\"{}\"}}", i % 100, "v".repeat(pad)));
        }
    }
    r
}

/// A UDP-datagram encoder (1500-byte path) with all four flowlens layouts defined.
pub fn encoder_with_layouts(domain: u32) -> Encoder {
    let mut enc = Encoder::new(flowcore::ipfix::EncoderConfig::datagram(
        domain,
        1500,
        Duration::from_secs(600),
    ))
    .expect("encoder config");
    for l in ALL_LAYOUTS {
        enc.add_template(l.template_id(), l.fields())
            .expect("template");
    }
    enc
}

pub const ALL_LAYOUTS: [Layout; 4] = [
    Layout::AgentV4,
    Layout::AgentV6,
    Layout::AggregatedV4,
    Layout::AggregatedV6,
];

/// Encodes `records` (in order) and returns every message, template messages first.
pub fn encode(enc: &mut Encoder, records: &[TestRecord]) -> Vec<Vec<u8>> {
    for r in records {
        r.write(enc, NOW).expect("encode record");
    }
    enc.flush(NOW);
    std::iter::from_fn(|| enc.poll_transmit())
        .map(|b| b.to_vec())
        .collect()
}

/// The cargo target directory the workspace builds into.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => d.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
    }
}

/// The `flowlens` binary: `$FLOWLENS_BIN` if set, else built first (`cargo build -p bins --bin
/// flowlens`, a no-op when it is up to date).
pub fn flowlens_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("FLOWLENS_BIN") {
                return p.into();
            }
            cargo_build(&["-p", "bins", "--bin", "flowlens"]);
            target_dir().join("debug/flowlens")
        })
        .clone()
}

/// Runs `cargo build -q ARGS…` for this workspace (a no-op when up to date); panics if it fails.
pub fn cargo_build(args: &[&str]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-q"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // Cargo runs tests with this package's CARGO_MANIFEST_DIR, CARGO_PKG_* … set; build
    // scripts that watch them (ring's watches CARGO_MANIFEST_DIR) would otherwise be
    // rebuilt here, and again by the next ordinary build.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&k.as_ref())
        {
            cmd.env_remove(k.as_ref());
        }
    }
    let st = cmd.status().expect("run cargo build");
    assert!(st.success(), "cargo build {} failed", args.join(" "));
}

impl Val {
    /// The value's bytes on the wire for a field of `spec` (content only for variable-length
    /// fields), as lowercase hex: what a peer that does not know the IE shows as raw bytes.
    pub fn wire_hex(&self, spec: &FieldSpec) -> String {
        let bytes: Vec<u8> = match self {
            Val::U(n) => n.to_be_bytes()[8 - spec.len as usize..].to_vec(),
            Val::Secs(s) => (*s as u32).to_be_bytes().to_vec(),
            Val::Ip(IpAddr::V4(a)) => a.octets().to_vec(),
            Val::Ip(IpAddr::V6(a)) => a.octets().to_vec(),
            Val::S(s) => s.as_bytes().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The value as a peer prints it in text: decimal, address text, the string itself.
    pub fn text(&self) -> String {
        match self {
            Val::U(n) | Val::Secs(n) => n.to_string(),
            Val::Ip(a) => a.to_string(),
            Val::S(s) => s.clone(),
        }
    }
}
