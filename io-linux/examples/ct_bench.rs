//! Conntrack dump benchmark (run as root):
//!
//!     cargo run --release -p io-linux --example ct_bench -- [SIZES…]   # default 10000 100000 1000000
//!
//! For each size it fills a fresh network namespace's table with that many TCP ESTABLISHED
//! entries (accounting and timestamps on, so messages are full-sized), then measures, in
//! interleaved rounds on the same table:
//! - `bare`: the dump request + a receive loop that only walks message headers (the kernel's own
//!   limit),
//! - `ours-vec`: `ConntrackSocket::dump` parsing into a reused caller-owned `Vec`,
//! - `ours-cb`: the same into a sink that only counts (the zero-storage streaming path),
//! - `conntrack -L > /dev/null` run in the namespace.
//!
//! Heap bytes come from a counting global allocator; our peak RSS from getrusage (with
//! `--no-vec` the Vec path is skipped, so it shows the streaming path alone); conntrack's peak
//! RSS from GNU time (package `time`). It raises
//! `net.netfilter.nf_conntrack_max` for the run and restores it on exit (also on panic).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flowcore::model::ConntrackEntry;
use io_linux::netns::{NetNs, synthetic_entries};
use io_linux::{ConntrackSocket, DumpFilter, DumpSink, set_accounting, set_timestamps};

struct Counting;
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);
static ALLOC_COUNT: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOC_BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        ALLOC_COUNT.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOC_BYTES.fetch_add(new.saturating_sub(l.size()) as u64, Ordering::Relaxed);
        ALLOC_COUNT.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn heap() -> (u64, u64) {
    (
        ALLOC_BYTES.load(Ordering::Relaxed),
        ALLOC_COUNT.load(Ordering::Relaxed),
    )
}

const MAX_PATH: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Restores nf_conntrack_max when dropped.
struct RestoreMax(String);
impl Drop for RestoreMax {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_PATH, &self.0);
        eprintln!("restored nf_conntrack_max = {}", self.0.trim());
    }
}

struct Count(u64);
impl DumpSink for Count {
    fn entry(&mut self, e: &ConntrackEntry) {
        self.0 += u64::from(e.orig.proto != 0);
    }
    fn restart(&mut self) {
        self.0 = 0;
    }
}

fn max_rss_kb(who: i32) -> i64 {
    // SAFETY: getrusage fills the zeroed struct.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut r);
        r.ru_maxrss
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn conntrack_l(ns: &NetNs) -> Duration {
    let f = File::open(format!("/run/netns/{}", ns.name())).unwrap();
    let fd = f.as_raw_fd();
    let mut c = Command::new("conntrack");
    c.arg("-L").stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: only setns (async-signal-safe) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let t = Instant::now();
    let st = c.status().expect("run conntrack (install conntrack)");
    let d = t.elapsed();
    assert!(st.success());
    d
}

/// Peak RSS of `conntrack -L` itself, measured by GNU time (which forks it from its own small
/// process; getrusage on our children would count our own memory copied into the fork).
fn conntrack_rss_kb(ns: &NetNs) -> Option<u64> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "/usr/bin/time",
            "-f",
            "%M",
            "conntrack",
            "-L",
        ])
        .stdout(Stdio::null())
        .output()
        .ok()?;
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines().last()?.trim().parse().ok()
}

fn main() {
    // --no-vec: skip the Vec path, so peak RSS shows the streaming path alone.
    let no_vec = std::env::args().any(|a| a == "--no-vec");
    let sizes: Vec<u32> = {
        let a: Vec<u32> = std::env::args()
            .skip(1)
            .filter(|a| a != "--no-vec")
            .map(|s| s.parse().expect("sizes are numbers"))
            .collect();
        if a.is_empty() {
            vec![10_000, 100_000, 1_000_000]
        } else {
            a
        }
    };
    let rounds = 5;
    let old_max = std::fs::read_to_string(MAX_PATH).expect("read nf_conntrack_max (root?)");
    let _restore = RestoreMax(old_max.clone());
    let biggest = *sizes.iter().max().unwrap() as u64;
    let want = (biggest + biggest / 10 + 1000).max(old_max.trim().parse().unwrap_or(0));
    std::fs::write(MAX_PATH, want.to_string()).unwrap();
    let buckets =
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_buckets").unwrap_or_default();
    println!(
        "nf_conntrack_max {} -> {want}; nf_conntrack_buckets {}; size_of::<ConntrackEntry>() = {} B; {rounds} rounds, medians",
        old_max.trim(),
        buckets.trim(),
        size_of::<ConntrackEntry>()
    );
    println!();
    println!(
        "| entries | fill | bare recv | ours (Vec) | ours (callback) | conntrack -L | ours/bare | conntrack/ours | heap B/entry (Vec, 1st / reused) | heap B/entry (callback) | peak RSS ours / conntrack |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        let ns = NetNs::create("flbench").unwrap();
        let mut sock = ns
            .run(|| {
                set_accounting(true)?;
                set_timestamps(true)?;
                ConntrackSocket::open()
            })
            .unwrap()
            .unwrap();
        let t = Instant::now();
        sock.create_entries(synthetic_entries(n, 1, true)).unwrap();
        let fill = t.elapsed();
        let f = DumpFilter::default();

        // First dump into a fresh Vec: what a caller pays once (the Vec's growth).
        let (b0, _) = heap();
        let mut v: Vec<ConntrackEntry> = Vec::new();
        if !no_vec {
            let st = sock.dump(&f, &mut v).unwrap();
            assert_eq!(
                st.entries,
                u64::from(n),
                "table holds exactly the entries we made"
            );
        }
        let first_heap = heap().0 - b0;
        v.clear();

        let (mut bare, mut ours, mut cb, mut tool) = (vec![], vec![], vec![], vec![]);
        let (mut reused_heap, mut cb_heap) = (0u64, 0u64);
        for _ in 0..rounds {
            let t = Instant::now();
            let st = sock.dump_bare(&f).unwrap();
            bare.push(t.elapsed());
            assert_eq!(st.entries, u64::from(n));

            if !no_vec {
                let (b0, _) = heap();
                let t = Instant::now();
                let st = sock.dump(&f, &mut v).unwrap();
                ours.push(t.elapsed());
                reused_heap += heap().0 - b0;
                assert_eq!(st.entries, u64::from(n));
                v.clear();
            } else {
                ours.push(Duration::ZERO);
            }

            let mut c = Count(0);
            let (b0, _) = heap();
            let t = Instant::now();
            sock.dump(&f, &mut c).unwrap();
            cb.push(t.elapsed());
            cb_heap += heap().0 - b0;
            assert_eq!(c.0, u64::from(n));

            tool.push(conntrack_l(&ns));
        }
        let (bare, ours, cb, tool) = (median(bare), median(ours), median(cb), median(tool));
        // The comparisons use the Vec path (the slower of ours), or the callback with --no-vec.
        let ours_cmp = if no_vec { cb } else { ours };
        let rate = |d: Duration| {
            format!(
                "{:.2} ms ({:.2} M/s)",
                d.as_secs_f64() * 1e3,
                f64::from(n) / d.as_secs_f64() / 1e6
            )
        };
        let per = |b: u64| b as f64 / f64::from(n);
        println!(
            "| {n} | {:.2} s | {} | {} | {} | {} | {:.3}× | {:.2}× | {:.1} / {:.2} | {:.3} | {} MiB / {} MiB |",
            fill.as_secs_f64(),
            rate(bare),
            rate(ours),
            rate(cb),
            rate(tool),
            ours_cmp.as_secs_f64() / bare.as_secs_f64(),
            tool.as_secs_f64() / ours_cmp.as_secs_f64(),
            per(first_heap),
            per(reused_heap) / f64::from(rounds),
            per(cb_heap) / f64::from(rounds),
            max_rss_kb(libc::RUSAGE_SELF) / 1024,
            conntrack_rss_kb(&ns).map_or("?".into(), |k| (k / 1024).to_string()),
        );
        drop(v);
        drop(sock);
        drop(ns);
    }
}
