//! Shutdown signals.
//!
//! One root [`CancellationToken`](tokio_util::sync::CancellationToken) means "shut down"; it is
//! cancelled by SIGTERM, SIGINT or `POST /shutdown`. [`crate::Server`] then stops accepting,
//! gives open connections the grace period to finish, and closes what is left.

/// SIGTERM and SIGINT, with their handlers installed from the moment this value exists.
///
/// Installing before waiting matters: a supervisor that sends SIGTERM right after fallacy says
/// it is ready must get a drain and exit 0, not the default disposition (immediate death).
pub struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers. Must run inside the runtime.
    pub fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// Completes on the first SIGTERM or SIGINT.
    pub async fn recv(self) {
        #[cfg(unix)]
        {
            async fn next(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(self.term) => {}
                _ = next(self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
