//! Start-up shared by every function: logging, and settings that stop the
//! function with a clear message when they are missing or malformed. (The
//! one line per operation with its metrics is `crate::metrics`.)

use crate::config::Settings;

/// Logs to stdout, level from `RUST_LOG` (default `info`): one JSON object
/// per line when Lambda's log format is JSON (`AWS_LAMBDA_LOG_FORMAT`,
/// which the template sets), plain text otherwise (CloudWatch adds the
/// time). Nothing logged anywhere contains a key:
/// keys are named by a hash prefix. Other crates (the Lambda runtime, the
/// AWS SDK, hyper) log raw events, headers and bodies at debug and trace —
/// an authorizer event carries the key, an admin request the master key —
/// so they never log below `info`, whatever `RUST_LOG` says.
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_target(false);
    let registry = tracing_subscriber::registry()
        .with(env_filter(std::env::var("RUST_LOG").ok().as_deref()))
        .with(secrets_filter());
    let _ = if json {
        registry.with(fmt.json().flatten_event(true)).try_init()
    } else {
        registry.with(fmt.without_time()).try_init()
    };
}

/// The level filter of `RUST_LOG` (default `info`; a malformed value is
/// `info` too).
pub fn env_filter(rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    rust_log
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"))
}

/// Our own crates log at any level; every other crate at `info` and above.
pub fn secrets_filter() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::FilterFn::new(allowed)
}

fn allowed(meta: &tracing::Metadata<'_>) -> bool {
    is_ours(meta.target()) || *meta.level() <= tracing::Level::INFO
}

/// Targets of edge-budget's own crates (none of which logs a secret).
pub fn is_ours(target: &str) -> bool {
    const OURS: [&str; 7] = [
        "budget_core",
        "authorize",
        "settle_spend",
        "reset",
        "admin",
        "edge_budget",
        "notify",
    ];
    let krate = target.split("::").next().unwrap_or(target);
    OURS.contains(&krate)
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
