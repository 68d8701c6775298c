//! The wall clock, read only here in the binaries, as flowcore's `Timestamp`; and sleeping until
//! a core's `poll_timeout()`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowcore::model::Timestamp;

/// Now, as the cores take it.
pub fn now() -> Timestamp {
    Timestamp::from_nanos(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    )
}

/// Sleeps until `deadline` (forever when `None`): the timer of a sans-IO core's loop.
pub async fn sleep_until(deadline: Option<Timestamp>) {
    match deadline {
        Some(t) => {
            tokio::time::sleep(Duration::from_nanos(
                t.as_nanos().saturating_sub(now().as_nanos()),
            ))
            .await
        }
        None => std::future::pending().await,
    }
}
