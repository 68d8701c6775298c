//! SIGINT / SIGTERM as a future: the signal for a clean shutdown (flush, then exit).

/// Resolves on the first SIGINT or SIGTERM.
pub async fn wait() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("signal received; shutting down");
}
