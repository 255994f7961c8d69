//! The one shutdown signal: SIGTERM or SIGINT, whichever comes first.

/// Resolves when the process receives SIGTERM or SIGINT.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(message = "Cannot listen for SIGTERM; only Ctrl-C will stop.", error = %e);
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(message = "SIGTERM received; draining."),
        _ = tokio::signal::ctrl_c() => tracing::info!(message = "SIGINT received; draining."),
    }
}
