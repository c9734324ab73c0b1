//! Tracing subscriber set-up.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber: `log.level` as the filter (`RUST_LOG` wins when set, for a
/// one-off debug session), pretty or JSON lines on stderr.
pub fn init(log: &LogConfig) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives)?,
        _ => EnvFilter::try_new(&log.level)
            .map_err(|e| anyhow::anyhow!("log.level {:?}: {e}", log.level))?,
    };
    // Colour codes only for a person at a terminal: never into pipes, files or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match log.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the tracing subscriber: {e}"))
}
