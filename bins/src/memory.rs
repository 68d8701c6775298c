//! Giving freed memory back to the system.
//!
//! glibc's allocator keeps what a burst freed in its arenas (it only returns the top of the
//! main heap, and raises its mmap threshold after large frees, so later large blocks live in
//! the arenas too). A daemon that a flood made hold 500 MiB for a minute would then stay at
//! 500 MiB resident long after its tables shrank. So, at start ([`configure`]), blocks of
//! [`MMAP_THRESHOLD`] and more are mapped on their own, always (tables, batches, response
//! bodies: returned to the system when freed), and threads share at most [`ARENA_MAX`] arenas
//! (query threads come and go; each arena they leave keeps its free pages); and every
//! [`TRIM_EVERY`], `malloc_trim(0)` hands the free pages of every arena back (`MADV_DONTNEED`):
//! on one blocking thread, nothing on the paths that move records.

use std::time::Duration;

/// How often the daemons trim.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);
/// Blocks at least this large get their own mapping (glibc's initial threshold, kept fixed).
pub const MMAP_THRESHOLD: usize = 128 << 10;
/// Malloc arenas at most (glibc's default is 8 per core).
pub const ARENA_MAX: usize = 4;

/// Sets the allocator up as the module docs say; call once, before the threads start.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's tunables; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX as libc::c_int);
    }
}

/// Returns the allocator's free pages to the system (a no-op where the allocator is not
/// glibc's).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Trims every [`TRIM_EVERY`] until the runtime stops.
pub fn spawn_trimmer() -> tokio::task::JoinHandle<()> {
    spawn_every(TRIM_EVERY, trim)
}

/// Runs `f` on the blocking pool every `period` (the first time one period from now) until the
/// returned handle is aborted or the runtime stops.
pub fn spawn_every(
    period: Duration,
    f: impl Fn() + Clone + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(f.clone()).await;
        }
    })
}
