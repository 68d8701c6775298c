//! The web UI in a real browser: a collector (API + UI) on 127.0.0.1 over a SQLite store
//! seeded with synthetic records from the last hour, driven by `bins/tests/ui/browser.mjs`
//! (playwright-core on Debian's headless Chromium). The script opens each of the seven
//! dashboards, checks that their charts draw data, that a filter narrows them and that
//! clicking a sankey link or heatmap cell opens the matching flow records; it saves a
//! screenshot of each under `$CARGO_TARGET_TMPDIR/ui-screenshots/`.
//!
//! Needs `chromium` and `nodejs`/`npm` from Debian; playwright-core is fetched from the npm
//! registry on first run (`sh bins/ui/vendor.sh --test-tools`). Without them the test is
//! skipped with a note, except under CI (`CI` set), where it fails.
//! `FLOWLENS_UI_SERVE=1` keeps the seeded server up after the run, for looking at the UI by hand.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowlens_bins::collector::synth::Synth;
use flowlens_bins::collector::ui::ui_router;
use flowlens_bins::collector::{SqliteConfig, SqliteStore, Store, router};

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the browser run needs, or why it cannot run.
fn tools() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("FLOWLENS_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium, or set FLOWLENS_CHROMIUM)",
            chromium.display()
        ));
    }
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node_ok {
        return Err("no `node` on PATH (apt-get install nodejs npm)".into());
    }
    let pw = manifest().join("ui/vendor/node_modules/playwright-core");
    if !pw.join("package.json").exists() {
        // Fetch it from the npm registry like build.rs fetches ECharts.
        let _ = Command::new("sh")
            .arg(manifest().join("ui/vendor.sh"))
            .arg("--test-tools")
            .status();
    }
    if !pw.join("package.json").exists() {
        return Err(format!(
            "no playwright-core at {} (run: sh bins/ui/vendor.sh --test-tools)",
            pw.display()
        ));
    }
    Ok((chromium, pw))
}

fn seeded_store(dir: &Path, now: u64) -> Arc<dyn Store> {
    let _ = std::fs::remove_dir_all(dir);
    let store = SqliteStore::open(SqliteConfig::new(dir)).expect("open store");
    // 5 Nodes, 40 Pods, records ending over the last 50 minutes: the UI's default range
    // (the last hour) shows all of them.
    let start = (now - 50 * 60) as u32;
    let recs = Synth::new(7, 5, 40).batch(4000, start, 50 * 60);
    store.insert(&recs, now).expect("seed store");
    Arc::new(store)
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create screenshot dir");
    dir
}

#[test]
fn dashboards_in_headless_chromium() {
    let (chromium, playwright) = match tools() {
        Ok(t) => t,
        Err(why) if std::env::var_os("CI").is_some() => panic!("browser test cannot run: {why}"),
        Err(why) => {
            eprintln!("SKIPPED dashboards_in_headless_chromium: {why}");
            return;
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let dir = std::env::temp_dir().join(format!("flowlens-ui-{}", std::process::id()));
    let store = seeded_store(&dir, now);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local addr");
    let app = router(store).merge(ui_router());
    rt.spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/");

    let shots = screenshots_dir();
    let mut child = Command::new("node")
        .arg(manifest().join("tests/ui/browser.mjs"))
        .env("FLOWLENS_URL", &url)
        .env("FLOWLENS_SHOTS", &shots)
        .env("FLOWLENS_CHROMIUM", &chromium)
        .env("PLAYWRIGHT_CORE", &playwright)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node");
    let out_pipe = child.stdout.take().expect("stdout");
    let err_pipe = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || std::io::read_to_string(out_pipe).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(err_pipe).unwrap_or_default());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for node") {
            break Some(s);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    println!("{out}");
    eprintln!("{err}");
    println!("screenshots: {}", shots.display());

    if std::env::var_os("FLOWLENS_UI_SERVE").is_some() {
        eprintln!("serving the seeded UI at {url} until killed");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    // Stops the server (its tasks hold the store), then removes the store's files.
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
    match status {
        Some(s) => assert!(s.success(), "browser checks failed ({s}); output above"),
        None => panic!("browser checks timed out after {SCRIPT_TIMEOUT:?}; output above"),
    }
}
