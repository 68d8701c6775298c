//! SIGINT / SIGTERM as a future: the signal for a clean shutdown (flush, then exit), and the
//! [`Deadline`] that bounds it.

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

/// Runs a service to completion: logging as configured, a tokio runtime, its operations
/// registry (metrics prefix `metrics_prefix`), and a shutdown token cancelled on SIGINT/SIGTERM.
pub fn run_service<C, F, Fut>(
    metrics_prefix: &str,
    log: &crate::config::LogConfig,
    cfg: C,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(C, std::sync::Arc<crate::ops::Ops>, tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    crate::config::init_logging(log);
    crate::memory::configure();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let prefix = metrics_prefix.to_string();
    rt.block_on(async move {
        let ops = crate::ops::Ops::new(&prefix);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let sig = shutdown.clone();
        tokio::spawn(async move {
            wait().await;
            sig.cancel();
        });
        crate::memory::spawn_trimmer();
        run(cfg, ops, shutdown).await
    })
}

/// The process exit for a binary's result, printing the whole error chain.
pub fn exit(name: &str, res: anyhow::Result<()>) -> std::process::ExitCode {
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// When a shutdown must be done: set once, when it begins, to that moment plus the grace period;
/// every part of the shutdown (a flush, a sink's final drain) reads the same one, so the whole
/// fits the grace period rather than each part having its own. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Deadline(std::sync::Arc<std::sync::OnceLock<tokio::time::Instant>>);

impl Deadline {
    /// Starts the clock (the first call wins).
    pub fn start(&self, grace: std::time::Duration) {
        let _ = self.0.set(tokio::time::Instant::now() + grace);
    }

    /// The deadline once the shutdown has begun.
    pub fn get(&self) -> Option<tokio::time::Instant> {
        self.0.get().copied()
    }

    /// The deadline, or `grace` from now if the shutdown clock was not started (a sink stopped
    /// by other means).
    pub fn or_from_now(&self, grace: std::time::Duration) -> tokio::time::Instant {
        self.get()
            .unwrap_or_else(|| tokio::time::Instant::now() + grace)
    }
}
