//! Log output: human-readable text for terminals, JSON lines for containers.

use tracing_subscriber::EnvFilter;

use crate::config::{Config, ConfigError, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log_level`.
pub fn init(config: &Config) -> Result<(), ConfigError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => {
            EnvFilter::try_new(f).map_err(|e| ConfigError::new("RUST_LOG", e.to_string()))?
        }
        _ => {
            EnvFilter::try_new(&config.log_level).map_err(|e| ConfigError::new("log_level", e.to_string()))?
        }
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
    }
    Ok(())
}
