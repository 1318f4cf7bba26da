//! `local-gateway`: API Gateway's part in `make local` (see lib.rs).
//!
//! Settings (environment): `LAMBDA_URL` (required: cargo lambda watch's
//! address), `GATEWAY_PORT` (0 or unset: any free port), `GATEWAY_API`
//! (`rest`, the default, or `http`), `GATEWAY_STAGE` (REST stage, `api`),
//! `UPSTREAM_URL` (http only; unset: the built-in mock upstream, which
//! settles `MOCK_COST_USD`, default 0.002, per answer), `GATEWAY_SECRET`
//! (sent in `x-edge-budget-gateway`; unset: random), `UPSTREAM_TIMEOUT_MS`
//! (until the upstream's headers; 900000). Prints `listening on <port>` and
//! `mock upstream on <port>` once it accepts connections.

use std::time::Duration;

use local_gateway::{mock, serve, Api, Config, Gateway};
use tokio::net::TcpListener;

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn bad(name: &str, why: &str) -> ! {
    eprintln!("local-gateway: {name} {why}");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(false)
        .init();
    let lambda_url = setting("LAMBDA_URL").unwrap_or_else(|| bad("LAMBDA_URL", "is not set"));
    let api = match setting("GATEWAY_API").as_deref() {
        None | Some("rest") => Api::Rest {
            stage: setting("GATEWAY_STAGE").unwrap_or_else(|| "api".to_string()),
        },
        Some("http") => Api::Http,
        Some(_) => bad("GATEWAY_API", "must be rest or http"),
    };
    if let Api::Rest { stage } = &api {
        if stage.is_empty() || !stage.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bad("GATEWAY_STAGE", "must be letters, digits and _");
        }
    }
    let port: u16 = match setting("GATEWAY_PORT") {
        None => 0,
        Some(p) => p
            .parse()
            .unwrap_or_else(|_| bad("GATEWAY_PORT", "is not a port number")),
    };
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| bad("GATEWAY_PORT", &format!("{port} cannot be bound: {e}")));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    let prefix = match &api {
        Api::Rest { stage } => format!("/{stage}"),
        Api::Http => String::new(),
    };

    let mut mock_task = None;
    let upstream = match setting("UPSTREAM_URL") {
        Some(url) => {
            if !url.starts_with("http://") {
                bad(
                    "UPSTREAM_URL",
                    "must be an http:// URL (the local gateway speaks no TLS)",
                );
            }
            url
        }
        None => {
            let mock_listener = TcpListener::bind(("127.0.0.1", 0))
                .await
                .unwrap_or_else(|e| bad("mock upstream", &format!("cannot listen: {e}")));
            let mock_port = mock_listener.local_addr().map(|a| a.port()).unwrap_or(0);
            let cost = setting("MOCK_COST_USD").unwrap_or_else(|| "0.002".to_string());
            if cost
                .parse::<f64>()
                .map_or(true, |c| !(0.0..=1000.0).contains(&c))
            {
                bad("MOCK_COST_USD", "must be a USD amount from 0 to 1000");
            }
            let m = mock::Mock::new(
                format!("http://127.0.0.1:{port}{prefix}/spend/settle"),
                cost,
                Duration::from_millis(40),
            );
            mock_task = Some(tokio::spawn(mock::serve(mock_listener, m)));
            println!("mock upstream on {mock_port}");
            format!("http://127.0.0.1:{mock_port}")
        }
    };
    let mut config = Config::new(api, &lambda_url, &upstream);
    if let Some(secret) = setting("GATEWAY_SECRET") {
        config.gateway_secret = secret;
    }
    if let Some(ms) = setting("UPSTREAM_TIMEOUT_MS") {
        let ms: u64 = ms
            .parse()
            .unwrap_or_else(|_| bad("UPSTREAM_TIMEOUT_MS", "is not a number of milliseconds"));
        config.upstream_timeout = Duration::from_millis(ms);
    }
    let gateway = Gateway::new(config);
    println!("listening on {port}");
    let server = tokio::spawn(serve(listener, gateway));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| bad("signal handler", &e.to_string()));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.abort();
    if let Some(m) = mock_task {
        m.abort();
    }
}
