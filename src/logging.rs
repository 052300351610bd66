//! tracing setup: plain or JSON lines on stderr, one line per event.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber. `level` is an EnvFilter directive ("info",
/// "pgtenant=debug,info"); RUST_LOG, when set and valid, wins so that a developer can
/// turn up one module without editing the config.
///
/// Safe to call more than once: only the first call installs anything (a later one, e.g.
/// from a test, is ignored rather than panicking). Log level changes on reload are not
/// applied; that would need a reload handle.
pub fn init(format: LogFormat, level: &str) {
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let from_env = rust_log.as_deref().and_then(|v| EnvFilter::try_new(v).ok());
    let bad_rust_log = rust_log.is_some() && from_env.is_none();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));

    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are noise in a file or a Kubernetes log collector.
        .with_ansi(std::io::stderr().is_terminal());
    let installed = match format {
        LogFormat::Plain => builder.try_init().is_ok(),
        LogFormat::Json => builder.json().try_init().is_ok(),
    };
    if installed && bad_rust_log {
        tracing::warn!(
            fallback = level,
            "RUST_LOG is not a valid filter; ignoring it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_twice_does_not_panic() {
        init(LogFormat::Json, "info");
        init(LogFormat::Plain, "not a = valid filter");
        tracing::info!("logging works");
    }
}
