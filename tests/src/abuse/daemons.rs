//! The daemons under attack: release `flowlens collector` and `flowlens-aggregator` processes on
//! loopback, each under `prlimit --as … --nofile …` with stdout and stderr in a log file, killed
//! with their process group on drop ([`ChildGuard`]). Also what the suite reads from them:
//! memory (`VmRSS`, `VmHWM`) and open descriptors from `/proc/PID`, and log lines.
//!
//! Configs use only keys that the base commit already knew (both config parsers reject unknown
//! keys), plus what a scenario adds in `extra_yaml`, so the same scenario runs against the
//! "before" and the current binaries.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{ADDRESS_SPACE_BYTES, NOFILE, http};
use crate::{ChildGuard, cargo_build, target_dir, wait_for};

/// The release binaries under test.
#[derive(Clone, Debug)]
pub struct ReleaseBins {
    /// `flowlens` (the collector is `flowlens collector`).
    pub flowlens: PathBuf,
    pub aggregator: PathBuf,
}

/// `$FLOWLENS_RELEASE_DIR/{flowlens,flowlens-aggregator}` if that is set (CI builds them once;
/// the "before" measurements point it at the base commit's build), else built here with `cargo
/// build --release -p bins` into this workspace's target directory.
pub fn release_bins() -> &'static ReleaseBins {
    static BINS: std::sync::OnceLock<ReleaseBins> = std::sync::OnceLock::new();
    BINS.get_or_init(|| {
        let dir = match std::env::var_os("FLOWLENS_RELEASE_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                cargo_build(&[
                    "--release",
                    "-p",
                    "bins",
                    "--bin",
                    "flowlens",
                    "--bin",
                    "flowlens-aggregator",
                ]);
                target_dir().join("release")
            }
        };
        let bins = ReleaseBins {
            flowlens: dir.join("flowlens"),
            aggregator: dir.join("flowlens-aggregator"),
        };
        for b in [&bins.flowlens, &bins.aggregator] {
            assert!(
                b.is_file(),
                "{} does not exist: set FLOWLENS_RELEASE_DIR to a directory holding release \
                 builds of flowlens and flowlens-aggregator, or unset it to build them",
                b.display()
            );
        }
        bins
    })
}

/// Lets this test process hold the thousands of sockets an attack opens (the daemons keep their
/// own, lower limit). Root may raise its own hard limit; if that fails the attack finds out.
pub fn raise_own_nofile() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let _ = Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                "--nofile=65536:65536",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    });
}

/// A free TCP port on 127.0.0.1 (bound then released; the daemon binds it next).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a TCP port on loopback")
        .port()
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP port on loopback")
        .port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Resident and peak resident memory of a process, bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss: u64,
    pub hwm: u64,
}

/// `VmRSS` and `VmHWM` of `pid` (None once it has exited).
pub fn mem_of(pid: u32) -> Option<Mem> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    Some(Mem {
        rss: kb("VmRSS:")?,
        hwm: kb("VmHWM:")?,
    })
}

/// Open file descriptors of `pid`.
pub fn fds_of(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Bytes as MiB, for messages.
pub fn mib(b: u64) -> u64 {
    b >> 20
}

/// One daemon process.
pub struct Daemon {
    guard: ChildGuard,
    pub what: String,
    pub log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `bin args…` under `prlimit` with output to `log`.
    pub fn spawn(bin: &Path, args: &[&str], log: &Path, what: &str) -> Daemon {
        let f = std::fs::File::create(log).expect("create log file");
        let mut cmd = Command::new("prlimit");
        cmd.arg(format!("--as={ADDRESS_SPACE_BYTES}"))
            .arg(format!("--nofile={NOFILE}:{NOFILE}"))
            .arg("--")
            .arg(bin)
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log"))
            .stderr(f);
        Daemon {
            // prlimit sets the limits on itself and execs the daemon: same pid.
            guard: ChildGuard::spawn(&mut cmd, what),
            what: what.to_string(),
            log: log.to_path_buf(),
            exit: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    /// The exit status if the process has exited (remembered).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.guard.try_wait();
        }
        self.exit
    }

    /// Memory now; None once the process has exited.
    pub fn mem(&mut self) -> Option<Mem> {
        if self.exited().is_some() {
            return None;
        }
        mem_of(self.pid())
    }

    pub fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn log_lines(&self) -> usize {
        std::fs::read(&self.log)
            .unwrap_or_default()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let t = self.log_text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Panics with the log if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(st) = self.exited() {
            panic!(
                "{} exited ({st}); its log ends:\n{}",
                self.what,
                self.log_tail(30)
            );
        }
    }

    /// SIGTERM, then waits (30 s at most) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(st) = self.exited() {
            return st;
        }
        self.guard.signal_group("-TERM");
        let what = self.what.clone();
        let st = wait_for(Duration::from_secs(30), &format!("{what} to exit"), || {
            self.guard.try_wait()
        });
        self.exit = Some(st);
        st
    }
}

/// Waits until `GET http://addr{path}` answers 200, checking that `d` still runs.
fn wait_http_ok(d: &mut Daemon, addr: SocketAddr, path: &str) {
    let what = format!("{} to answer {path} on {addr}", d.what);
    wait_for(Duration::from_secs(30), &what, || {
        d.assert_running();
        http::get(addr, path, Duration::from_secs(2))
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ())
    });
}

/// Collector settings a scenario may change.
#[derive(Clone, Debug, Default)]
pub struct CollectorOpts {
    /// `maxStoreBytes` (default: the collector's own, 20 GiB).
    pub max_store_bytes: Option<u64>,
    /// YAML lines appended to the config as they are.
    pub extra_yaml: String,
}

/// A running `flowlens collector`.
pub struct Collector {
    pub daemon: Daemon,
    /// Its IPFIX listener (TCP).
    pub ipfix: SocketAddr,
    /// Its HTTP API, UI and `/metrics`.
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub config: PathBuf,
}

impl Collector {
    /// Starts a collector with its store in `dir/store`, on fresh loopback ports.
    pub fn start(dir: &Path, opts: &CollectorOpts) -> Collector {
        Self::start_named(dir, opts, "collector")
    }

    fn start_named(dir: &Path, opts: &CollectorOpts, name: &str) -> Collector {
        let (ipfix, http) = (loopback(free_tcp_port()), loopback(free_tcp_port()));
        let data_dir = dir.join("store");
        let mut yaml = format!(
            "listenAddr: \"{ipfix}\"\ntransport: tcp\ndataDir: {}\nhttpAddr: \"{http}\"\n\
             log:\n  level: info\n",
            data_dir.display()
        );
        if let Some(b) = opts.max_store_bytes {
            yaml += &format!("maxStoreBytes: {b}\n");
        }
        yaml += &opts.extra_yaml;
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).expect("write collector config");
        let mut daemon = Daemon::spawn(
            &release_bins().flowlens,
            &[
                "collector",
                "--config",
                config.to_str().expect("utf-8 path"),
            ],
            &dir.join(format!("{name}.log")),
            name,
        );
        wait_http_ok(&mut daemon, http, "/healthz");
        Collector {
            daemon,
            ipfix,
            http,
            data_dir,
            config,
        }
    }

    /// A new collector process on the same store (after a crash, or to run the start-up
    /// retention pass), on fresh ports.
    pub fn restart(&mut self, dir: &Path, opts: &CollectorOpts) {
        if self.daemon.exited().is_none() {
            self.daemon.stop();
        }
        let n = std::fs::read_dir(dir)
            .map(|d| d.count())
            .unwrap_or_default();
        *self = Self::start_named(dir, opts, &format!("collector-restart-{n}"));
    }
}

/// How the agents reach the aggregator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    Tls,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Tls => "tls",
        }
    }
}

/// Aggregator settings a scenario may change.
#[derive(Clone, Debug)]
pub struct AggregatorOpts {
    pub transport: Transport,
    /// `maxFlows` (default: the aggregator's own, 1,000,000).
    pub max_flows: Option<u64>,
    /// `sinkQueueRecords` (default: the aggregator's own).
    pub sink_queue_records: Option<u64>,
    /// YAML lines appended to the config as they are.
    pub extra_yaml: String,
}

impl Default for AggregatorOpts {
    fn default() -> Self {
        AggregatorOpts {
            transport: Transport::Tcp,
            max_flows: None,
            sink_queue_records: None,
            extra_yaml: String::new(),
        }
    }
}

/// A running `flowlens-aggregator`.
pub struct Aggregator {
    pub daemon: Daemon,
    pub transport: Transport,
    /// Where agents send (TCP, UDP or TLS per `transport`).
    pub listen: SocketAddr,
    /// `/metrics`, `/readyz`, `/api/flows`.
    pub metrics: SocketAddr,
    /// With TLS: where it generated its CA, server and client certificates.
    pub tls_dir: Option<PathBuf>,
}

impl Aggregator {
    /// Starts an aggregator that exports to `collector_ipfix` over TCP, with a 1 s active
    /// timeout so that records of live flows go out soon.
    pub fn start(dir: &Path, opts: &AggregatorOpts, collector_ipfix: SocketAddr) -> Aggregator {
        let listen = match opts.transport {
            Transport::Udp => loopback(free_udp_port()),
            _ => loopback(free_tcp_port()),
        };
        let metrics = loopback(free_tcp_port());
        let mut yaml = format!(
            "listenAddr: \"{listen}\"\naggregatorTransportProtocol: {}\n\
             externalFlowCollectorAddr: \"{collector_ipfix}:tcp\"\n\
             activeFlowRecordTimeout: 1s\nmetricsAddr: \"{metrics}\"\nlog:\n  level: info\n",
            opts.transport.name()
        );
        let tls_dir = (opts.transport == Transport::Tls).then(|| dir.join("tls"));
        if let Some(d) = &tls_dir {
            yaml += &format!(
                "flowAggregatorAddress: localhost\ntlsDir: {}\n",
                d.display()
            );
        }
        if let Some(n) = opts.max_flows {
            yaml += &format!("maxFlows: {n}\n");
        }
        if let Some(n) = opts.sink_queue_records {
            yaml += &format!("sinkQueueRecords: {n}\n");
        }
        yaml += &opts.extra_yaml;
        let config = dir.join("aggregator.yaml");
        std::fs::write(&config, yaml).expect("write aggregator config");
        let mut daemon = Daemon::spawn(
            &release_bins().aggregator,
            &["--config", config.to_str().expect("utf-8 path")],
            &dir.join("aggregator.log"),
            "aggregator",
        );
        wait_http_ok(&mut daemon, metrics, "/readyz");
        Aggregator {
            daemon,
            transport: opts.transport,
            listen,
            metrics,
            tls_dir,
        }
    }
}
