//! End-to-end: the authorize, settle-spend and reset handlers against a
//! real DynamoDB API server (the emulator started by scripts/test.sh),
//! driven by real API Gateway / EventBridge event shapes.

use std::sync::Arc;

use budget_core::model::{EntityKind, EntityRef};
use budget_core::service::Authorizer;
use budget_core::store::dynamo::DynamoStore;
use budget_core::Money;
use chrono::Duration;
use edge_budget::{
    at, http_api_event, http_request, response_json, rest_request_event, rest_token_event,
    schedule_event,
};
use serde_json::json;

use crate::helpers::{allowed, authorize_via, money, reservation_id, TestApp, NOW};

/// The seed example: a user with 1d: 150, 7d: 500 and the legacy
/// 1000 / 30d, and two keys. Spend through key 1 counts against key 2.
#[tokio::test]
async fn a_users_windows_cap_spend_across_all_of_its_keys() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let user = EntityRef::user("user-123");
    app.create(
        user.clone(),
        &[("1d", 150.0), ("7d", 500.0), ("30d", 1000.0)],
        None,
        None,
        now,
    )
    .await;
    let key1 = app.key().user("user-123").create().await;
    let key2 = app.key().user("user-123").create().await;

    let first = app.authorize(&key1, Some("10")).await;
    assert!(allowed(&first), "{first}");
    let id = reservation_id(&first);
    assert_eq!(first["context"]["user_id"], "user-123");
    assert_eq!(money(&first["context"]["reserved"]), Money::usd(10));
    let (status, body) = app.settle(&id, 145.0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(money(&body["cost"]), Money::usd(145));

    // Key 2 has no budget of its own, but the user has 5 left today.
    let denied = app.authorize(&key2, Some("10")).await;
    assert!(!allowed(&denied));
    let c = &denied["context"];
    assert_eq!(c["reason"], "budget_exceeded");
    assert_eq!(c["entity"], "user");
    assert_eq!(c["entity_id"], "user-123");
    assert_eq!(c["budget_duration"], "1d");
    assert_eq!(money(&c["spend"]), Money::usd(145));
    assert_eq!(money(&c["max_budget"]), Money::usd(150));
    assert_eq!(c["reset_at"], "2026-11-29T00:00:00Z");
    assert_eq!(c["retry_after"], 8 * 3600 + 52 * 60);
    // The estimate that did not fit is in the denial.
    assert_eq!(money(&c["estimate"]), Money::usd(10));
    assert_eq!(
        c["message"],
        "Budget exceeded: user=user-123 over 1d budget. Spend=$145.0000, Estimate=$10.0000, Limit=$150.00, resets 2026-11-29T00:00:00Z"
    );
    let ok = app.authorize(&key2, Some("5")).await;
    assert!(allowed(&ok), "{ok}");
    assert_eq!(money(&ok["context"]["remaining"]), Money::ZERO);
    assert_eq!(ok["context"]["tightest_window"], "user:user-123:1d");

    let day = app.window(&user, "1d").await;
    assert_eq!((day.spent, day.reserved), (Money::usd(145), Money::usd(5)));
    let month = app.window(&user, "30d").await;
    assert_eq!(month.reset_at, Some(at("2026-12-01T00:00:00Z")));
    assert_eq!(
        (month.spent, month.reserved),
        (Money::usd(145), Money::usd(5))
    );
}

/// Every window of every entity can be the one that denies, and the
/// denial names it.
#[tokio::test]
async fn each_window_of_each_entity_can_deny_and_is_named() {
    let app = TestApp::new().await;
    app.team("team-a")
        .windows(&[("1h", 100.0), ("lifetime", 900.0)])
        .create()
        .await;
    app.user("user-a")
        .windows(&[("1d", 200.0), ("7d", 300.0)])
        .create()
        .await;
    let cases: [(EntityKind, &str, &str); 6] = [
        (EntityKind::Key, "10m", "2026-11-28T15:10:00Z"),
        (EntityKind::Key, "1mo", "2026-12-01T00:00:00Z"),
        (EntityKind::User, "1d", "2026-11-29T00:00:00Z"),
        (EntityKind::User, "7d", "2026-11-30T00:00:00Z"),
        (EntityKind::Team, "1h", "2026-11-28T16:00:00Z"),
        (EntityKind::Team, "lifetime", ""),
    ];
    for (kind, span, reset_at) in cases {
        let key = app
            .key()
            .user("user-a")
            .team("team-a")
            .windows(&[("10m", 50.0), ("1mo", 60.0)])
            .create()
            .await;
        let key_hash = budget_core::keys::hash_key(&key);
        let entity = match kind {
            EntityKind::Key => EntityRef::key(key_hash.clone()),
            EntityKind::User => EntityRef::user("user-a"),
            _ => EntityRef::team("team-a"),
        };
        // Fill exactly this window to its limit, out of band.
        let w = app.window(&entity, span).await;
        let fill = w.max.saturating_sub(w.spent.saturating_add(w.reserved));
        fill_window(&app, &entity, span, fill).await;
        let answer = app.authorize(&key, Some("0.01")).await;
        assert!(!allowed(&answer), "{kind} {span}: {answer}");
        let c = &answer["context"];
        assert_eq!(c["entity"], kind.as_str(), "{answer}");
        assert_eq!(c["budget_duration"], span, "{answer}");
        assert_eq!(c["entity_id"].as_str().unwrap(), entity.display_id());
        assert_eq!(c["reset_at"], reset_at);
        assert_eq!(c.get("retry_after").is_some(), !reset_at.is_empty());
        assert!(c["message"]
            .as_str()
            .unwrap()
            .contains(&format!("over {span} budget")));
        // Free it again for the next case.
        fill_window(&app, &entity, span, Money::ZERO.saturating_sub(fill)).await;
    }
}

/// Adds `amount` to a window's spend directly in the table, as other
/// requests' settled spend would.
async fn fill_window(app: &TestApp, entity: &EntityRef, span: &str, amount: Money) {
    use aws_sdk_dynamodb::types::AttributeValue;
    app.client
        .update_item()
        .table_name(app.store.table())
        .key(
            "pk",
            AttributeValue::S(budget_core::store::dynamo::entity_pk(entity)),
        )
        .update_expression("SET #w.#s.#spent = #w.#s.#spent + :a, #w.#s.#used = #w.#s.#used + :a")
        .expression_attribute_names("#w", "w")
        .expression_attribute_names("#s", span)
        .expression_attribute_names("#spent", "spent")
        .expression_attribute_names("#used", "used")
        .expression_attribute_values(":a", AttributeValue::N(amount.nanos().to_string()))
        .send()
        .await
        .expect("fill window");
}

/// 64 concurrent authorizations of estimate 1 against a remaining budget
/// of 10 admit exactly 10 — across 8 function instances with their own
/// caches.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_authorizations_never_overspend() {
    let app = TestApp::new().await;
    let now = at(NOW);
    app.team("team-c").window("1d", 1000.0).create().await;
    app.user("user-c")
        .team("team-c")
        .window("1d", 100.0)
        .create()
        .await;
    fill_window(&app, &EntityRef::user("user-c"), "1d", Money::usd(90)).await;
    let mut keys = Vec::new();
    for _ in 0..4 {
        keys.push(app.key().user("user-c").team("team-c").create().await);
    }
    let instances: Vec<Arc<Authorizer<DynamoStore>>> =
        (0..8).map(|_| Arc::new(app.authorizer())).collect();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let a = instances[i % instances.len()].clone();
        let key = keys[i % keys.len()].clone();
        tasks.push(tokio::spawn(async move {
            allowed(&authorize_via(&a, &key, Some("1"), now).await)
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        if task.await.unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
    let w = app.window(&EntityRef::user("user-c"), "1d").await;
    assert_eq!((w.spent, w.reserved), (Money::usd(90), Money::usd(10)));
    let team = app.window(&EntityRef::team("team-c"), "1d").await;
    assert_eq!(team.reserved, Money::usd(10));
}

/// Settle twice counts once; a release frees the budget.
#[tokio::test]
async fn settle_is_idempotent_and_release_frees_the_budget() {
    let app = TestApp::new().await;
    let key = app.key().window("1d", 10.0).create().await;
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));

    let r1 = app.authorize(&key, Some("4")).await;
    let id1 = reservation_id(&r1);
    let (s1, first) = app.settle(&id1, 3.5).await;
    assert_eq!((s1, first["duplicate"].clone()), (200, json!(false)));
    let (s2, again) = app.settle(&id1, 3.5).await;
    assert_eq!((s2, again["duplicate"].clone()), (200, json!(true)));
    assert_eq!(money(&again["cost"]), money(&first["cost"]));
    // A different cost on a repeat does not change the first result.
    let (_, other) = app.settle(&id1, 9.0).await;
    assert_eq!(money(&other["cost"]), Money::from_f64(3.5).unwrap());
    let w = app.window(&hash, "1d").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::from_f64(3.5).unwrap(), Money::ZERO)
    );

    // Hold the rest, then release it: the budget is free again.
    let r2 = app.authorize(&key, Some("6.5")).await;
    assert!(allowed(&r2));
    assert!(!allowed(&app.authorize(&key, Some("0.01")).await));
    let id2 = reservation_id(&r2);
    let (s, body) = app.release(&id2).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(money(&body["cost"]), Money::ZERO);
    assert!(allowed(&app.authorize(&key, Some("6.5")).await));
    let w = app.window(&hash, "1d").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::from_f64(3.5).unwrap(), Money::from_f64(6.5).unwrap())
    );
}

/// An expired reservation is freed by the reset job; a late settle still
/// records its spend exactly once and releases nothing twice.
#[tokio::test]
async fn reset_releases_expired_reservations_and_a_late_settle_counts_once() {
    let app = TestApp::with_settings(&[("RESERVATION_TTL_SECONDS", "60")]).await;
    let now = at(NOW);
    app.user("u-late").window("7d", 100.0).create().await;
    let key = app.key().user("u-late").window("1d", 10.0).create().await;
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));
    let r = app.authorize(&key, Some("8")).await;
    let id = reservation_id(&r);

    // Before expiry, reset leaves it alone.
    let early = reset::handle(
        &app.store,
        &app.settings,
        schedule_event(),
        now + Duration::seconds(30),
    )
    .await;
    assert_eq!(early.reservations_released, 0);
    assert_eq!(app.window(&hash, "1d").await.reserved, Money::usd(8));

    let later = now + Duration::seconds(61);
    let summary = reset::handle(&app.store, &app.settings, schedule_event(), later).await;
    assert_eq!(summary.reservations_released, 1, "{summary:?}");
    assert!(summary.errors.is_empty(), "{summary:?}");
    assert_eq!(app.window(&hash, "1d").await.reserved, Money::ZERO);
    assert_eq!(
        app.window(&EntityRef::user("u-late"), "7d").await.reserved,
        Money::ZERO
    );
    // Twice at once: nothing more to release.
    let (x, y) = tokio::join!(
        reset::handle(&app.store, &app.settings, schedule_event(), later),
        reset::handle(&app.store, &app.settings, schedule_event(), later)
    );
    assert_eq!(x.reservations_released + y.reservations_released, 0);

    let (status, body) = app.settle_at(&id, 2.25, later).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["released_by_reset"], true);
    let (_, again) = app.settle_at(&id, 2.25, later).await;
    assert_eq!(again["duplicate"], true);
    let w = app.window(&hash, "1d").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::from_f64(2.25).unwrap(), Money::ZERO)
    );
    let u = app.window(&EntityRef::user("u-late"), "7d").await;
    assert_eq!(
        (u.spent, u.reserved),
        (Money::from_f64(2.25).unwrap(), Money::ZERO)
    );
}

/// A 10s window denies, then admits again after its boundary without the
/// reset job; then the reset job reports the roll-over it finds.
#[tokio::test]
async fn a_short_window_reopens_at_its_boundary_without_the_reset_job() {
    let app = TestApp::new().await;
    let now = at("2026-11-28T15:08:03Z");
    let key = app.key().window("10s", 1.0).at(now).create().await;
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));
    assert_eq!(
        app.window(&hash, "10s").await.reset_at,
        Some(at("2026-11-28T15:08:10Z"))
    );
    let r = app.authorize_at(&key, Some("1"), now).await;
    app.settle_at(r["context"]["reservation_id"].as_str().unwrap(), 1.0, now)
        .await;
    let denied = app
        .authorize_at(&key, Some("0.5"), now + Duration::seconds(5))
        .await;
    assert!(!allowed(&denied));
    assert_eq!(denied["context"]["reset_at"], "2026-11-28T15:08:10Z");
    assert_eq!(denied["context"]["retry_after"], 2);

    let after = at("2026-11-28T15:08:10Z");
    let ok = app.authorize_at(&key, Some("0.5"), after).await;
    assert!(allowed(&ok), "{ok}");
    let w = app.window(&hash, "10s").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::ZERO, Money::from_f64(0.5).unwrap())
    );
    assert_eq!(w.reset_at, Some(at("2026-11-28T15:08:20Z")));

    // Nothing is due now: the reset job finds nothing; past the next
    // boundary it rolls the window and says so.
    let none = reset::handle(&app.store, &app.settings, schedule_event(), after).await;
    assert_eq!(none.windows_reset, 0);
    let later = at("2026-11-28T15:08:25Z");
    let summary = reset::handle(&app.store, &app.settings, schedule_event(), later).await;
    assert_eq!(summary.windows_reset, 1, "{summary:?}");
    let w = app.window(&hash, "10s").await;
    assert_eq!(w.reset_at, Some(at("2026-11-28T15:08:30Z")));
    assert_eq!(
        (w.spent, w.reserved),
        (Money::ZERO, Money::from_f64(0.5).unwrap())
    );
}

/// REST REQUEST and TOKEN events get IAM policies for their methodArn;
/// unknown keys get `Unauthorized` (API Gateway's 401).
#[tokio::test]
async fn rest_events_get_iam_policies() {
    let app = TestApp::new().await;
    let now = at(NOW);
    app.user("u-rest").create().await;
    let key = app.key().user("u-rest").window("1d", 1.0).create().await;

    let allow = authorize::handle(
        &app.authorizer,
        rest_request_event(&key, Some("0.4"), "req-1"),
        now,
    )
    .await
    .unwrap();
    assert_eq!(allow["policyDocument"]["Statement"][0]["Effect"], "Allow");
    assert_eq!(
        allow["policyDocument"]["Statement"][0]["Resource"][0],
        "arn:aws:execute-api:us-east-1:123456789012:s4x3opwd6i/test/GET/request"
    );
    assert_eq!(allow["principalId"], "u-rest");
    // The same request id again (API Gateway retrying a lost answer) finds
    // its reservation instead of taking a second.
    let again = authorize::handle(
        &app.authorizer,
        rest_request_event(&key, Some("0.4"), "req-1"),
        now,
    )
    .await
    .unwrap();
    assert_eq!(
        again["context"]["reservation_id"],
        allow["context"]["reservation_id"]
    );
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));
    assert_eq!(
        app.window(&hash, "1d").await.reserved,
        Money::from_f64(0.4).unwrap()
    );

    let token = authorize::handle(
        &app.authorizer,
        rest_token_event(&format!("Bearer {key}")),
        now,
    )
    .await
    .unwrap();
    assert_eq!(token["policyDocument"]["Statement"][0]["Effect"], "Allow");
    // The default estimate (0.05) was reserved.
    assert_eq!(
        app.window(&hash, "1d").await.reserved,
        Money::from_f64(0.45).unwrap()
    );
    let deny = authorize::handle(
        &app.authorizer,
        rest_request_event(&key, Some("0.6"), "req-2"),
        now,
    )
    .await
    .unwrap();
    assert_eq!(deny["policyDocument"]["Statement"][0]["Effect"], "Deny");
    assert_eq!(deny["context"]["reason"], "budget_exceeded");

    for event in [
        rest_token_event("sk-unknown"),
        rest_request_event("sk-unknown", None, "r"),
    ] {
        let err = authorize::handle(&app.authorizer, event, now)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "Unauthorized");
    }
}

/// Blocked, expired and unknown keys are refused before any budget; an
/// unreachable store fails closed.
#[tokio::test]
async fn refusals_and_fail_closed() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let blocked = budget_core::keys::generate_key();
    let mut e =
        budget_core::model::Entity::new(EntityRef::key(budget_core::keys::hash_key(&blocked)), now);
    e.blocked = true;
    budget_core::store::AdminStore::create(&app.store, &e)
        .await
        .unwrap();
    let expired = budget_core::keys::generate_key();
    let mut e =
        budget_core::model::Entity::new(EntityRef::key(budget_core::keys::hash_key(&expired)), now);
    e.expires = Some(now - Duration::seconds(1));
    budget_core::store::AdminStore::create(&app.store, &e)
        .await
        .unwrap();
    let before = app.snapshot().await;

    for (key, reason) in [
        (blocked.as_str(), "key_blocked"),
        (expired.as_str(), "key_expired"),
        ("sk-nope", "invalid_key"),
    ] {
        let answer = app.authorize(key, Some("1")).await;
        assert!(!allowed(&answer));
        assert_eq!(answer["context"]["reason"], reason);
    }
    let mut no_key = http_api_event("x", None, "r");
    no_key["headers"]
        .as_object_mut()
        .unwrap()
        .remove("authorization");
    let answer = authorize::handle(&app.authorizer, no_key, now)
        .await
        .unwrap();
    assert_eq!(answer["context"]["reason"], "invalid_key");
    assert_eq!(app.snapshot().await, before, "refusals write nothing");

    // A store that cannot be reached: denied with reason unavailable.
    let dead = aws_sdk_dynamodb::Client::from_conf(
        app.client
            .config()
            .to_builder()
            .endpoint_url("http://127.0.0.1:9")
            .timeout_config(
                aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(std::time::Duration::from_millis(500))
                    .build(),
            )
            .build(),
    );
    let dead = Authorizer::new(
        DynamoStore::new(dead, app.store.table()),
        app.settings.clone(),
    );
    let answer = authorize_via(&dead, &blocked, Some("1"), now).await;
    assert!(!allowed(&answer));
    assert_eq!(answer["context"]["reason"], "unavailable");
}

/// Malformed events, bad JSON, negative/NaN costs and unknown reservation
/// ids get clear errors and write nothing.
#[tokio::test]
async fn bad_input_gets_clear_errors_and_writes_nothing() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let key = app.key().window("1d", 10.0).create().await;
    let r = app.authorize(&key, Some("1")).await;
    let id = reservation_id(&r);
    let before = app.snapshot().await;

    for event in [
        json!(null),
        json!([1, 2]),
        json!({"type": "WEIRD"}),
        json!({"version": "2.0", "type": "REQUEST", "headers": 5}),
    ] {
        let err = authorize::handle(&app.authorizer, event, now)
            .await
            .unwrap_err();
        assert!(
            err.to_string().starts_with("malformed authorizer event"),
            "{err}"
        );
    }
    // (`-1` is no error: it asks for nothing and gets the floor, see
    // tests/e2e/adversarial.rs.)
    for bad in ["NaN", "abc", "0x10", "1.2.3"] {
        let answer = app.authorize(&key, Some(bad)).await;
        assert!(!allowed(&answer));
        assert_eq!(answer["context"]["reason"], "invalid_request", "{bad}");
        assert!(answer["context"]["message"]
            .as_str()
            .unwrap()
            .starts_with("x-budget-reserve"));
    }

    let cases: [(&str, &str, u16, &str); 9] = [
        (
            "/spend/settle",
            "{not json",
            400,
            "request body is not valid JSON",
        ),
        ("/spend/settle", "", 400, "request body is empty"),
        (
            "/spend/settle",
            "[]",
            400,
            "request body must be a JSON object",
        ),
        (
            "/spend/settle",
            r#"{"cost": 1}"#,
            400,
            "reservation_id is required",
        ),
        (
            "/spend/settle",
            &format!(r#"{{"reservation_id": "{id}"}}"#),
            400,
            "cost is required",
        ),
        (
            "/spend/settle",
            &format!(r#"{{"reservation_id": "{id}", "cost": -0.5}}"#),
            400,
            "cost must not be negative",
        ),
        (
            "/spend/settle",
            &format!(r#"{{"reservation_id": "{id}", "cost": "NaN"}}"#),
            400,
            "cost must be a number",
        ),
        (
            "/spend/settle",
            &format!(r#"{{"reservation_id": "{id}", "cost": 1e12}}"#),
            400,
            "cost must be at most",
        ),
        (
            "/spend/settle",
            r#"{"reservation_id": "r-unknown", "cost": 1}"#,
            404,
            "unknown reservation_id \"r-unknown\"",
        ),
    ];
    for (path, body, status, message) in cases {
        let (s, answer) = response_json(
            settle_spend::handle(
                &app.store,
                &app.settings,
                http_request("POST", path, body, &[]),
                now,
            )
            .await,
        );
        assert_eq!(s, status, "{body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(message),
            "{answer}"
        );
    }
    let (s, _) = response_json(
        settle_spend::handle(
            &app.store,
            &app.settings,
            http_request("GET", "/spend/settle", "", &[]),
            now,
        )
        .await,
    );
    assert_eq!(s, 405);
    let (s, answer) = app.release("r-unknown").await;
    assert_eq!(
        (s, answer["error"]["type"].clone()),
        (404, json!("not_found_error"))
    );
    assert_eq!(app.snapshot().await, before, "nothing was written");
}

/// A replayed request id whose reservation is already settled gets a
/// decision of its own: it cannot ride on the finished reservation.
#[tokio::test]
async fn a_replayed_request_id_after_settle_is_decided_afresh() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let key = app.key().window("1d", 1.0).create().await;
    let first = authorize::handle(
        &app.authorizer,
        http_api_event(&key, Some("0.6"), "req-replay"),
        now,
    )
    .await
    .unwrap();
    assert!(allowed(&first));
    let id = reservation_id(&first);
    let (status, _) = app.settle(&id, 0.6).await;
    assert_eq!(status, 200);
    let replay = authorize::handle(
        &app.authorizer,
        http_api_event(&key, Some("0.6"), "req-replay"),
        now,
    )
    .await
    .unwrap();
    assert!(!allowed(&replay), "{replay}");
    assert_eq!(replay["context"]["reason"], "budget_exceeded");
    let fits = authorize::handle(
        &app.authorizer,
        http_api_event(&key, Some("0.4"), "req-replay"),
        now,
    )
    .await
    .unwrap();
    assert!(allowed(&fits), "{fits}");
    assert_ne!(
        fits["context"]["reservation_id"],
        first["context"]["reservation_id"]
    );
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));
    let w = app.window(&hash, "1d").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::from_f64(0.6).unwrap(), Money::from_f64(0.4).unwrap())
    );
}
