//! Shutdown signals.
//!
//! One root [`CancellationToken`](tokio_util::sync::CancellationToken) means "shut down"; it is
//! cancelled by SIGTERM, SIGINT or `POST /shutdown`. [`crate::run`] then stops accepting,
//! gives open connections the grace period to finish, and closes what is left.

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
