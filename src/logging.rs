//! Logs: text or JSON lines on stderr, and a filter that `PUT /log-level` can change while
//! running. The subscriber is process-global, so its control is too: the binary installs it
//! once; a library user who installs their own sees `PUT /log-level` answer 501.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable lines (coloured on a terminal).
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

static FILTER: OnceLock<(
    reload::Handle<EnvFilter, Registry>,
    std::sync::Mutex<String>,
)> = OnceLock::new();

/// Installs the global subscriber: `RUST_LOG` if set, else `default`.
pub fn init(default: &str, format: Format) {
    let directives = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok())
        .unwrap_or_else(|| default.to_owned());
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let writer = std::io::stderr;
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        Format::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    // No colour codes in log files and CI output.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .try_init(),
        Format::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(writer),
            )
            .try_init(),
    };
    if installed.is_ok() {
        let _ = FILTER.set((handle, std::sync::Mutex::new(directives)));
    }
}

/// Why the filter was not changed.
#[derive(Debug, thiserror::Error)]
pub enum LevelError {
    /// Not a filter `RUST_LOG` would take.
    #[error("level: {0}")]
    Invalid(String),
    /// This process did not install fallacy's subscriber.
    #[error("the log level cannot be changed in this process (fallacy's logger is not installed)")]
    NotInstalled,
}

/// The filter in force (`RUST_LOG` syntax), if fallacy's subscriber is installed.
pub fn level() -> Option<String> {
    FILTER
        .get()
        .map(|(_, current)| current.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Replaces the filter: a level (`debug`) or directives (`info,fallacy::http=trace`).
pub fn set_level(directives: &str) -> Result<String, LevelError> {
    let directives = directives.trim();
    if directives.is_empty() {
        return Err(LevelError::Invalid(
            "empty; give a level (error, warn, info, debug, trace) or RUST_LOG directives".into(),
        ));
    }
    let filter = EnvFilter::try_new(directives)
        .map_err(|e| LevelError::Invalid(format!("{directives:?}: {e}")))?;
    let (handle, current) = FILTER.get().ok_or(LevelError::NotInstalled)?;
    handle
        .reload(filter)
        .map_err(|_| LevelError::NotInstalled)?;
    *current.lock().unwrap_or_else(|e| e.into_inner()) = directives.to_owned();
    Ok(directives.to_owned())
}
