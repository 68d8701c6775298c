//! A real ClickHouse server for tests: Debian's `clickhouse-server` (18.16 here) on 127.0.0.1,
//! with a temporary data directory, free HTTP/TCP/interserver ports written into a generated
//! config.xml, UTC as its time zone, and two users: `default` (no password) and `flowlens`
//! (password `secret`).
//!
//! Ready means `GET /ping` answers `Ok.` (polled, with a deadline). The server is killed by PID
//! when the [`ClickHouse`] is dropped, also when a test panics. [`shared`] keeps one per test
//! binary: statics are never dropped, so that one runs under a watchdog shell that kills it when
//! the test process exits (its stdin pipe closes), however the process ends.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct ClickHouse {
    pub http_port: u16,
    pub dir: PathBuf,
    child: Child,
}

/// A loopback TCP port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server binary: Debian's /usr/sbin/clickhouse-server, or a `clickhouse` multi-call
/// binary on PATH (`clickhouse server`).
fn server_command() -> Vec<String> {
    for p in ["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"] {
        if Path::new(p).exists() {
            return vec![p.into()];
        }
    }
    if let Ok(path) = std::env::var("PATH") {
        for d in path.split(':') {
            if Path::new(d).join("clickhouse-server").exists() {
                return vec![format!("{d}/clickhouse-server")];
            }
            if Path::new(d).join("clickhouse").exists() {
                return vec![format!("{d}/clickhouse"), "server".into()];
            }
        }
    }
    panic!(
        "clickhouse-server not found (install Debian's clickhouse-server: tests/setup-debian.sh)"
    );
}

fn config_xml(dir: &Path, http: u16, tcp: u16, inter: u16) -> String {
    let d = dir.display();
    format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <interserver_http_port>{inter}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
</yandex>
"#
    )
}

const USERS_XML: &str = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>8000000000</max_memory_usage></default></profiles>
  <users>
    <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
    <flowlens><password>secret</password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></flowlens>
  </users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#;

/// One HTTP/1.0 request to the server; the status line and body.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

impl ClickHouse {
    /// Starts a server and waits until it answers `/ping`. `watchdog`: run it under a shell that
    /// kills it when this process's end of the shell's stdin closes.
    pub fn start(watchdog: bool) -> ClickHouse {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "flowlens-ch-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (http_port, tcp, inter) = (free_port(), free_port(), free_port());
        std::fs::write(
            dir.join("config.xml"),
            config_xml(&dir, http_port, tcp, inter),
        )
        .unwrap();
        std::fs::write(dir.join("users.xml"), USERS_XML).unwrap();
        let mut cmd = server_command();
        cmd.push(format!(
            "--config-file={}",
            dir.join("config.xml").display()
        ));
        let log = std::fs::File::create(dir.join("stdout.log")).unwrap();
        let child = if watchdog {
            // `exec` keeps the shell's PID for the server's parent; the server is killed when
            // `read` returns (EOF on stdin: this process is gone) and also by Drop.
            let quoted: Vec<String> = cmd.iter().map(|a| format!("'{a}'")).collect();
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "{} & pid=$!; echo $pid > '{d}/server.pid'; read _ ; kill $pid; wait $pid; rm -rf '{d}'",
                    quoted.join(" "),
                    d = dir.display()
                ))
                .stdin(Stdio::piped())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting clickhouse-server")
        } else {
            Command::new(&cmd[0])
                .args(&cmd[1..])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting clickhouse-server")
        };
        let mut ch = ClickHouse {
            http_port,
            dir,
            child,
        };
        ch.wait_ready();
        ch
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((status, body)) = http(self.http_port, "GET", "/ping", "")
                && status.contains(" 200 ")
                && body.trim() == "Ok."
            {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "clickhouse-server exited ({st}) before it was ready; log:\n{}",
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "clickhouse-server not ready after 60s on port {}; log:\n{}",
                self.http_port,
                self.log_tail()
            );
            // Polling interval, not synchronisation: readiness is the /ping answer above.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        for f in ["stdout.log", "server.err.log"] {
            let t = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            s.push_str(&lines[lines.len().saturating_sub(20)..].join("\n"));
            s.push('\n');
        }
        s
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// Runs SQL through the HTTP interface (TabSeparated answer); panics on an error answer.
    pub fn sql(&self, q: &str) -> String {
        let (status, body) = http(self.http_port, "POST", "/", q).unwrap();
        assert!(status.contains(" 200 "), "{q}: {status}: {body}");
        body
    }

    /// The server's PID (not the watchdog shell's).
    pub fn server_pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("server.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(self.child.id())
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        let pid = self.server_pid();
        if pid != self.child.id() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One server per test binary, started on first use.
pub fn shared() -> &'static ClickHouse {
    static CH: OnceLock<ClickHouse> = OnceLock::new();
    CH.get_or_init(|| ClickHouse::start(true))
}
