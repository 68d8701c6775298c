//! `flowlens demo` end to end: it starts, the collector stores records that came through the
//! agents' export path and the aggregator, the API serves them, and SIGINT stops it cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_json(url: &str) -> Option<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    agent.get(url).call().ok()?.body_mut().read_json().ok()
}

#[test]
fn demo_serves_live_data_and_stops_on_sigint() {
    let bin = env!("CARGO_BIN_EXE_flowlens");
    let data = std::env::temp_dir().join(format!("flowlens-demo-test-{}", std::process::id()));
    let child = Command::new(bin)
        .args([
            "demo",
            "--http",
            "127.0.0.1:0",
            "--nodes",
            "3",
            "--pods",
            "30",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting flowlens demo");
    let mut child = Kill(child);
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The first line names the dashboard URL.
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("demo printed its URL");
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a URL in the first line")
        .trim_end_matches('/')
        .to_string();

    // Records arrive in the store through agents → aggregator → collector.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut records = 0;
    while Instant::now() < deadline {
        if let Some(v) = get_json(&format!("{url}/api/stats")) {
            records = v["records"].as_u64().unwrap_or(0);
            if records > 0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(records > 0, "no records stored within 90 s");
    let flows = get_json(&format!("{url}/api/flows?limit=50")).expect("/api/flows answers");
    let rows = flows["flows"].as_array().expect("flows array");
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .any(|r| !r["sourcePodName"].as_str().unwrap_or("").is_empty()),
        "records name Pods"
    );
    let index = ureq::get(&format!("{url}/"))
        .call()
        .expect("the UI is served");
    assert_eq!(index.status(), 200);

    // SIGINT: a clean exit.
    let pid = child.0.id() as i32;
    assert_eq!(unsafe { libc_kill(pid, 2) }, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("waiting for the demo") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "demo did not exit within 60 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "demo exited with {status}");
    let _ = std::fs::remove_dir_all(&data);
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
