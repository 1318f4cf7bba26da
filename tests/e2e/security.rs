//! Keys are secrets: a full flow's logs (at TRACE, SDK included) never
//! contain a plaintext key; a key only ever moves its own chain's budgets.

use std::io::Write;
use std::sync::{Arc, Mutex};

use budget_core::model::EntityRef;
use budget_core::Money;
use chrono::Duration;
use edge_budget::{at, hex_id, http_api_event, rest_token_event};
use serde_json::json;

use crate::helpers::TestApp;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_of_a_full_flow_never_contain_a_key() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::with_settings(&[("RESERVATION_TTL_SECONDS", "30")]).await;
    let now = at("2026-11-28T15:08:00Z");
    app.user("u-sec").window("1d", 5.0).create().await;
    let key = app.key().user("u-sec").create().await;
    let allowed = app.authorize(&key, Some("3")).await;
    assert_eq!(allowed["isAuthorized"], true);
    let denied = app.authorize(&key, Some("3")).await;
    assert_eq!(denied["isAuthorized"], false);
    let (a, e) = (&app.authorizer, &app.emitter);
    let token = rest_token_event(&format!("Bearer {key}"));
    let _ = authorize::handle_logged(a, e, token, now).await;
    let unknown = "sk-this-key-does-not-exist-0123456789";
    let event = http_api_event(unknown, None, &hex_id());
    let _ = authorize::handle_logged(a, e, event, now).await;
    let id = allowed["context"]["reservation_id"].as_str().unwrap();
    let body = json!({"reservation_id": id, "cost": 1.5}).to_string();
    app.settle_spend_via(&app.store, "/spend/settle", &body, now)
        .await;
    app.reset_at(now + Duration::seconds(60)).await;

    // Both: what `tracing` wrote (the SDK's and the runtime's lines
    // included) and the functions' own lines with their metrics.
    let mut logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    for line in app.lines() {
        logs.push_str(&line.to_string());
        logs.push('\n');
    }
    assert!(
        logs.len() > 1000,
        "the flow was logged ({} bytes)",
        logs.len()
    );
    assert!(
        logs.contains("\"admitted\"") && logs.contains("\"denied\""),
        "the decisions were logged"
    );
    for secret in [key.as_str(), unknown, &key[3..]] {
        assert!(!logs.contains(secret), "a key appears in the logs");
    }
    println!(
        "security: {} bytes of TRACE logs of a full flow, no plaintext key in them",
        logs.len()
    );
}

#[tokio::test]
async fn a_key_moves_only_its_own_chain() {
    let app = TestApp::new().await;
    let now = at("2026-11-28T15:08:00Z");
    app.team("t-a").window("1d", 100.0).create().await;
    app.team("t-b").window("1d", 100.0).create().await;
    app.user("u-a")
        .team("t-a")
        .window("1d", 50.0)
        .create()
        .await;
    app.user("u-b")
        .team("t-b")
        .window("1d", 50.0)
        .create()
        .await;
    let key_a = app.key().user("u-a").team("t-a").create().await;
    let key_b = app
        .key()
        .user("u-b")
        .team("t-b")
        .window("1d", 10.0)
        .create()
        .await;
    let b_before = [
        app.window(&EntityRef::user("u-b"), "1d").await,
        app.window(&EntityRef::team("t-b"), "1d").await,
        app.window(&EntityRef::key(budget_core::keys::hash_key(&key_b)), "1d")
            .await,
    ];
    for _ in 0..3 {
        let answer = app.authorize_at(&key_a, Some("10"), now).await;
        assert_eq!(answer["isAuthorized"], true);
        let id = answer["context"]["reservation_id"].as_str().unwrap();
        let body = json!({"reservation_id": id, "cost": 10}).to_string();
        app.settle_spend_via(&app.store, "/spend/settle", &body, now)
            .await;
    }
    assert_eq!(
        app.window(&EntityRef::user("u-a"), "1d").await.spent,
        Money::usd(30)
    );
    assert_eq!(
        app.window(&EntityRef::team("t-a"), "1d").await.spent,
        Money::usd(30)
    );
    let b_after = [
        app.window(&EntityRef::user("u-b"), "1d").await,
        app.window(&EntityRef::team("t-b"), "1d").await,
        app.window(&EntityRef::key(budget_core::keys::hash_key(&key_b)), "1d")
            .await,
    ];
    assert_eq!(b_before, b_after, "user b's budgets were not touched");
    // And the authorizer answer names only the key's own chain.
    let answer = app.authorize_at(&key_a, Some("1"), now).await;
    assert_eq!(answer["context"]["user_id"], "u-a");
    assert_eq!(answer["context"]["team_id"], "t-a");
}

#[tokio::test]
async fn at_rust_log_trace_other_crates_cannot_log_a_key() {
    use tracing_subscriber::layer::SubscriberExt;
    // The filters `init_logging` installs, with RUST_LOG=trace.
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::registry()
        .with(budget_core::telemetry::env_filter(Some("trace")))
        .with(budget_core::telemetry::secrets_filter())
        .with(tracing_subscriber::fmt::layer().with_writer(move || writer.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = TestApp::new().await;
    let now = at("2026-11-28T15:08:00Z");
    let key = app.key().window("1d", 5.0).create().await;
    let event = http_api_event(&key, Some("1"), &hex_id());
    // What the Lambda runtime and the SDK do at debug and trace: log the
    // raw event (with the key) and the requests they send.
    tracing::trace!(target: "lambda_runtime::layers::api_client", "incoming event {event}");
    tracing::debug!(target: "lambda_runtime", "invoking handler with {event}");
    tracing::debug!(target: "aws_smithy_runtime::client::http", "request body {key}");
    tracing::info!(target: "lambda_runtime", "runtime info lines still pass");
    let answer = authorize::handle_logged(&app.authorizer, &app.emitter, event, now)
        .await
        .unwrap();
    assert_eq!(answer["isAuthorized"], true);
    tracing::trace!(target: "budget_core::service", "our own trace lines pass");

    let mut logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).to_string();
    assert!(logs.contains("runtime info lines still pass"), "{logs}");
    assert!(logs.contains("our own trace lines pass"), "{logs}");
    logs.push_str(&format!("{:?}", app.lines()));
    assert!(logs.contains("\"admitted\""), "{logs}");
    assert!(!logs.contains(&key[3..]), "a key appears in the logs");
}
