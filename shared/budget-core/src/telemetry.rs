//! Start-up shared by every function: logging, and settings that stop the
//! function with a clear message when they are missing or malformed.

use crate::config::Settings;

/// Plain-text logs to stdout (CloudWatch adds the time), level from
/// `RUST_LOG` (default `info`). Nothing logged anywhere contains a key:
/// keys are named by a hash prefix.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .try_init();
}

/// The settings, or the process ends with the message naming the setting
/// (Lambda reports it as an init error).
pub fn settings_or_exit(function: &str) -> Settings {
    match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("edge-budget {function}: cannot start: {e}");
            std::process::exit(2);
        }
    }
}
