//! End-to-end: the authorize, settle-spend and reset handlers against a
//! real DynamoDB API server (the emulator started by scripts/test.sh),
//! driven by real API Gateway / EventBridge event shapes.

use std::sync::Arc;

use budget_core::model::{EntityKind, EntityRef};
use budget_core::service::Authorizer;
use budget_core::store::dynamo::DynamoStore;
use budget_core::Money;
use chrono::{DateTime, Duration, Utc};
use edge_budget::{
    at, hex_id, http_api_event, http_request, response_json, rest_request_event, rest_token_event,
    schedule_event, TestTable,
};
use serde_json::{json, Value};

fn authorizer(t: &TestTable) -> Authorizer<DynamoStore> {
    Authorizer::new(t.store.clone(), t.settings.clone())
}

async fn authorize(
    a: &Authorizer<DynamoStore>,
    key: &str,
    estimate: &str,
    now: DateTime<Utc>,
) -> Value {
    authorize::handle(a, http_api_event(key, Some(estimate), &hex_id()), now)
        .await
        .expect("an answer")
}

fn allowed(answer: &Value) -> bool {
    answer["isAuthorized"].as_bool().expect("simple response")
}

async fn settle(t: &TestTable, id: &str, cost: f64, now: DateTime<Utc>) -> (u16, Value) {
    let body = json!({"reservation_id": id, "cost": cost}).to_string();
    let r = settle_spend::handle(
        &t.store,
        &t.settings,
        http_request("POST", "/spend/settle", &body, &[]),
        now,
    )
    .await;
    response_json(r)
}

async fn release(t: &TestTable, id: &str, now: DateTime<Utc>) -> (u16, Value) {
    let body = json!({"reservation_id": id}).to_string();
    let r = settle_spend::handle(
        &t.store,
        &t.settings,
        http_request("POST", "/spend/release", &body, &[]),
        now,
    )
    .await;
    response_json(r)
}

fn usd(v: &Value) -> Money {
    Money::from_f64(v.as_f64().expect("a number")).expect("an amount")
}

const NOW: &str = "2026-11-28T15:08:00Z";

/// The seed example: a user with 1d: 150, 7d: 500 and the legacy
/// 1000 / 30d, and two keys. Spend through key 1 counts against key 2.
#[tokio::test]
async fn a_users_windows_cap_spend_across_all_of_its_keys() {
    let t = TestTable::new().await;
    let now = at(NOW);
    let user = EntityRef::user("user-123");
    t.create(
        user.clone(),
        &[("1d", 150.0), ("7d", 500.0), ("30d", 1000.0)],
        None,
        None,
        now,
    )
    .await;
    let key1 = t.key(&[], Some("user-123"), None, now).await;
    let key2 = t.key(&[], Some("user-123"), None, now).await;
    let a = authorizer(&t);

    let first = authorize(&a, &key1, "10", now).await;
    assert!(allowed(&first), "{first}");
    let id = first["context"]["reservation_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(first["context"]["user_id"], "user-123");
    assert_eq!(usd(&first["context"]["reserved"]), Money::usd(10));
    let (status, body) = settle(&t, &id, 145.0, now).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(usd(&body["cost"]), Money::usd(145));

    // Key 2 has no budget of its own, but the user has 5 left today.
    let denied = authorize(&a, &key2, "10", now).await;
    assert!(!allowed(&denied));
    let c = &denied["context"];
    assert_eq!(c["reason"], "budget_exceeded");
    assert_eq!(c["entity"], "user");
    assert_eq!(c["entity_id"], "user-123");
    assert_eq!(c["budget_duration"], "1d");
    assert_eq!(usd(&c["spend"]), Money::usd(145));
    assert_eq!(usd(&c["max_budget"]), Money::usd(150));
    assert_eq!(c["reset_at"], "2026-11-29T00:00:00Z");
    assert_eq!(c["retry_after"], 8 * 3600 + 52 * 60);
    assert_eq!(
        c["message"],
        "Budget exceeded: user=user-123 over 1d budget. Spend=$145.0000, Limit=$150.00, resets 2026-11-29T00:00:00Z"
    );
    let ok = authorize(&a, &key2, "5", now).await;
    assert!(allowed(&ok), "{ok}");
    assert_eq!(usd(&ok["context"]["remaining"]), Money::ZERO);
    assert_eq!(ok["context"]["tightest_window"], "user:user-123:1d");

    let day = t.window(&user, "1d").await;
    assert_eq!((day.spent, day.reserved), (Money::usd(145), Money::usd(5)));
    let month = t.window(&user, "30d").await;
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
    let t = TestTable::new().await;
    let now = at(NOW);
    let a = authorizer(&t);
    t.create(
        EntityRef::team("team-a"),
        &[("1h", 100.0), ("lifetime", 900.0)],
        None,
        None,
        now,
    )
    .await;
    t.create(
        EntityRef::user("user-a"),
        &[("1d", 200.0), ("7d", 300.0)],
        None,
        None,
        now,
    )
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
        let key = t
            .key(
                &[("10m", 50.0), ("1mo", 60.0)],
                Some("user-a"),
                Some("team-a"),
                now,
            )
            .await;
        let key_hash = budget_core::keys::hash_key(&key);
        let entity = match kind {
            EntityKind::Key => EntityRef::key(key_hash.clone()),
            EntityKind::User => EntityRef::user("user-a"),
            EntityKind::Team => EntityRef::team("team-a"),
        };
        // Fill exactly this window to its limit, out of band.
        let w = t.window(&entity, span).await;
        let fill = w.max.saturating_sub(w.spent.saturating_add(w.reserved));
        fill_window(&t, &entity, span, fill).await;
        let answer = authorize(&a, &key, "0.01", now).await;
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
        fill_window(&t, &entity, span, Money::ZERO.saturating_sub(fill)).await;
    }
}

/// Adds `amount` to a window's spend directly in the table, as other
/// requests' settled spend would.
async fn fill_window(t: &TestTable, entity: &EntityRef, span: &str, amount: Money) {
    use aws_sdk_dynamodb::types::AttributeValue;
    t.client
        .update_item()
        .table_name(t.store.table())
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
    let t = TestTable::new().await;
    let now = at(NOW);
    t.create(
        EntityRef::team("team-c"),
        &[("1d", 1000.0)],
        None,
        None,
        now,
    )
    .await;
    t.create(
        EntityRef::user("user-c"),
        &[("1d", 100.0)],
        None,
        Some("team-c"),
        now,
    )
    .await;
    fill_window(&t, &EntityRef::user("user-c"), "1d", Money::usd(90)).await;
    let mut keys = Vec::new();
    for _ in 0..4 {
        keys.push(t.key(&[], Some("user-c"), Some("team-c"), now).await);
    }
    let instances: Vec<Arc<Authorizer<DynamoStore>>> =
        (0..8).map(|_| Arc::new(authorizer(&t))).collect();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let a = instances[i % instances.len()].clone();
        let key = keys[i % keys.len()].clone();
        tasks.push(tokio::spawn(async move {
            allowed(&authorize(&a, &key, "1", now).await)
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        if task.await.unwrap() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
    let w = t.window(&EntityRef::user("user-c"), "1d").await;
    assert_eq!((w.spent, w.reserved), (Money::usd(90), Money::usd(10)));
    let team = t.window(&EntityRef::team("team-c"), "1d").await;
    assert_eq!(team.reserved, Money::usd(10));
}

/// Settle twice counts once; a release frees the budget.
#[tokio::test]
async fn settle_is_idempotent_and_release_frees_the_budget() {
    let t = TestTable::new().await;
    let now = at(NOW);
    let a = authorizer(&t);
    let key = t.key(&[("1d", 10.0)], None, None, now).await;
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));

    let r1 = authorize(&a, &key, "4", now).await;
    let id1 = r1["context"]["reservation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s1, first) = settle(&t, &id1, 3.5, now).await;
    assert_eq!((s1, first["duplicate"].clone()), (200, json!(false)));
    let (s2, again) = settle(&t, &id1, 3.5, now).await;
    assert_eq!((s2, again["duplicate"].clone()), (200, json!(true)));
    assert_eq!(usd(&again["cost"]), usd(&first["cost"]));
    // A different cost on a repeat does not change the first result.
    let (_, other) = settle(&t, &id1, 9.0, now).await;
    assert_eq!(usd(&other["cost"]), Money::from_f64(3.5).unwrap());
    let w = t.window(&hash, "1d").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::from_f64(3.5).unwrap(), Money::ZERO)
    );

    // Hold the rest, then release it: the budget is free again.
    let r2 = authorize(&a, &key, "6.5", now).await;
    assert!(allowed(&r2));
    assert!(!allowed(&authorize(&a, &key, "0.01", now).await));
    let id2 = r2["context"]["reservation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, body) = release(&t, &id2, now).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(usd(&body["cost"]), Money::ZERO);
    assert!(allowed(&authorize(&a, &key, "6.5", now).await));
    let w = t.window(&hash, "1d").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::from_f64(3.5).unwrap(), Money::from_f64(6.5).unwrap())
    );
}

/// An expired reservation is freed by the reset job; a late settle still
/// records its spend exactly once and releases nothing twice.
#[tokio::test]
async fn reset_releases_expired_reservations_and_a_late_settle_counts_once() {
    let t = TestTable::with_settings(&[("RESERVATION_TTL_SECONDS", "60")]).await;
    let now = at(NOW);
    let a = authorizer(&t);
    t.create(EntityRef::user("u-late"), &[("7d", 100.0)], None, None, now)
        .await;
    let key = t.key(&[("1d", 10.0)], Some("u-late"), None, now).await;
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));
    let r = authorize(&a, &key, "8", now).await;
    let id = r["context"]["reservation_id"].as_str().unwrap().to_string();

    // Before expiry, reset leaves it alone.
    let early = reset::handle(
        &t.store,
        &t.settings,
        schedule_event(),
        now + Duration::seconds(30),
    )
    .await;
    assert_eq!(early.reservations_released, 0);
    assert_eq!(t.window(&hash, "1d").await.reserved, Money::usd(8));

    let later = now + Duration::seconds(61);
    let summary = reset::handle(&t.store, &t.settings, schedule_event(), later).await;
    assert_eq!(summary.reservations_released, 1, "{summary:?}");
    assert!(summary.errors.is_empty(), "{summary:?}");
    assert_eq!(t.window(&hash, "1d").await.reserved, Money::ZERO);
    assert_eq!(
        t.window(&EntityRef::user("u-late"), "7d").await.reserved,
        Money::ZERO
    );
    // Twice at once: nothing more to release.
    let (x, y) = tokio::join!(
        reset::handle(&t.store, &t.settings, schedule_event(), later),
        reset::handle(&t.store, &t.settings, schedule_event(), later)
    );
    assert_eq!(x.reservations_released + y.reservations_released, 0);

    let (status, body) = settle(&t, &id, 2.25, later).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["released_by_reset"], true);
    let (_, again) = settle(&t, &id, 2.25, later).await;
    assert_eq!(again["duplicate"], true);
    let w = t.window(&hash, "1d").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::from_f64(2.25).unwrap(), Money::ZERO)
    );
    let u = t.window(&EntityRef::user("u-late"), "7d").await;
    assert_eq!(
        (u.spent, u.reserved),
        (Money::from_f64(2.25).unwrap(), Money::ZERO)
    );
}

/// A 10s window denies, then admits again after its boundary without the
/// reset job; then the reset job reports the roll-over it finds.
#[tokio::test]
async fn a_short_window_reopens_at_its_boundary_without_the_reset_job() {
    let t = TestTable::new().await;
    let now = at("2026-11-28T15:08:03Z");
    let a = authorizer(&t);
    let key = t.key(&[("10s", 1.0)], None, None, now).await;
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));
    assert_eq!(
        t.window(&hash, "10s").await.reset_at,
        Some(at("2026-11-28T15:08:10Z"))
    );
    let r = authorize(&a, &key, "1", now).await;
    settle(
        &t,
        r["context"]["reservation_id"].as_str().unwrap(),
        1.0,
        now,
    )
    .await;
    let denied = authorize(&a, &key, "0.5", now + Duration::seconds(5)).await;
    assert!(!allowed(&denied));
    assert_eq!(denied["context"]["reset_at"], "2026-11-28T15:08:10Z");
    assert_eq!(denied["context"]["retry_after"], 2);

    let after = at("2026-11-28T15:08:10Z");
    let ok = authorize(&a, &key, "0.5", after).await;
    assert!(allowed(&ok), "{ok}");
    let w = t.window(&hash, "10s").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::ZERO, Money::from_f64(0.5).unwrap())
    );
    assert_eq!(w.reset_at, Some(at("2026-11-28T15:08:20Z")));

    // Nothing is due now: the reset job finds nothing; past the next
    // boundary it rolls the window and says so.
    let none = reset::handle(&t.store, &t.settings, schedule_event(), after).await;
    assert_eq!(none.windows_reset, 0);
    let later = at("2026-11-28T15:08:25Z");
    let summary = reset::handle(&t.store, &t.settings, schedule_event(), later).await;
    assert_eq!(summary.windows_reset, 1, "{summary:?}");
    let w = t.window(&hash, "10s").await;
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
    let t = TestTable::new().await;
    let now = at(NOW);
    let a = authorizer(&t);
    t.create(EntityRef::user("u-rest"), &[], None, None, now)
        .await;
    let key = t.key(&[("1d", 1.0)], Some("u-rest"), None, now).await;

    let allow = authorize::handle(&a, rest_request_event(&key, Some("0.4"), "req-1"), now)
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
    let again = authorize::handle(&a, rest_request_event(&key, Some("0.4"), "req-1"), now)
        .await
        .unwrap();
    assert_eq!(
        again["context"]["reservation_id"],
        allow["context"]["reservation_id"]
    );
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));
    assert_eq!(
        t.window(&hash, "1d").await.reserved,
        Money::from_f64(0.4).unwrap()
    );

    let token = authorize::handle(&a, rest_token_event(&format!("Bearer {key}")), now)
        .await
        .unwrap();
    assert_eq!(token["policyDocument"]["Statement"][0]["Effect"], "Allow");
    // The default estimate (0.05) was reserved.
    assert_eq!(
        t.window(&hash, "1d").await.reserved,
        Money::from_f64(0.45).unwrap()
    );
    let deny = authorize::handle(&a, rest_request_event(&key, Some("0.6"), "req-2"), now)
        .await
        .unwrap();
    assert_eq!(deny["policyDocument"]["Statement"][0]["Effect"], "Deny");
    assert_eq!(deny["context"]["reason"], "budget_exceeded");

    for event in [
        rest_token_event("sk-unknown"),
        rest_request_event("sk-unknown", None, "r"),
    ] {
        let err = authorize::handle(&a, event, now).await.unwrap_err();
        assert_eq!(err.to_string(), "Unauthorized");
    }
}

/// Blocked, expired and unknown keys are refused before any budget; an
/// unreachable store fails closed.
#[tokio::test]
async fn refusals_and_fail_closed() {
    let t = TestTable::new().await;
    let now = at(NOW);
    let a = authorizer(&t);
    let blocked = budget_core::keys::generate_key();
    let mut e =
        budget_core::model::Entity::new(EntityRef::key(budget_core::keys::hash_key(&blocked)), now);
    e.blocked = true;
    budget_core::store::Store::create(&t.store, &e)
        .await
        .unwrap();
    let expired = budget_core::keys::generate_key();
    let mut e =
        budget_core::model::Entity::new(EntityRef::key(budget_core::keys::hash_key(&expired)), now);
    e.expires = Some(now - Duration::seconds(1));
    budget_core::store::Store::create(&t.store, &e)
        .await
        .unwrap();
    let before = t.snapshot().await;

    for (key, reason) in [
        (blocked.as_str(), "key_blocked"),
        (expired.as_str(), "key_expired"),
        ("sk-nope", "invalid_key"),
    ] {
        let answer = authorize(&a, key, "1", now).await;
        assert!(!allowed(&answer));
        assert_eq!(answer["context"]["reason"], reason);
    }
    let mut no_key = http_api_event("x", None, "r");
    no_key["headers"]
        .as_object_mut()
        .unwrap()
        .remove("authorization");
    let answer = authorize::handle(&a, no_key, now).await.unwrap();
    assert_eq!(answer["context"]["reason"], "invalid_key");
    assert_eq!(t.snapshot().await, before, "refusals write nothing");

    // A store that cannot be reached: denied with reason unavailable.
    let dead = aws_sdk_dynamodb::Client::from_conf(
        t.client
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
    let dead = Authorizer::new(DynamoStore::new(dead, t.store.table()), t.settings.clone());
    let answer = authorize(&dead, &blocked, "1", now).await;
    assert!(!allowed(&answer));
    assert_eq!(answer["context"]["reason"], "unavailable");
}

/// Malformed events, bad JSON, negative/NaN costs and unknown reservation
/// ids get clear errors and write nothing.
#[tokio::test]
async fn bad_input_gets_clear_errors_and_writes_nothing() {
    let t = TestTable::new().await;
    let now = at(NOW);
    let a = authorizer(&t);
    let key = t.key(&[("1d", 10.0)], None, None, now).await;
    let r = authorize(&a, &key, "1", now).await;
    let id = r["context"]["reservation_id"].as_str().unwrap().to_string();
    let before = t.snapshot().await;

    for event in [
        json!(null),
        json!([1, 2]),
        json!({"type": "WEIRD"}),
        json!({"version": "2.0", "type": "REQUEST", "headers": 5}),
    ] {
        let err = authorize::handle(&a, event, now).await.unwrap_err();
        assert!(
            err.to_string().starts_with("malformed authorizer event"),
            "{err}"
        );
    }
    // (`-1` is no error: it asks for nothing and gets the floor, see
    // tests/adversarial.rs.)
    for bad in ["NaN", "abc", "0x10", "1.2.3"] {
        let answer = authorize(&a, &key, bad, now).await;
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
                &t.store,
                &t.settings,
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
            &t.store,
            &t.settings,
            http_request("GET", "/spend/settle", "", &[]),
            now,
        )
        .await,
    );
    assert_eq!(s, 405);
    let (s, answer) = release(&t, "r-unknown", now).await;
    assert_eq!(
        (s, answer["error"]["type"].clone()),
        (404, json!("not_found_error"))
    );
    assert_eq!(t.snapshot().await, before, "nothing was written");
}

/// A replayed request id whose reservation is already settled gets a
/// decision of its own: it cannot ride on the finished reservation.
#[tokio::test]
async fn a_replayed_request_id_after_settle_is_decided_afresh() {
    let t = TestTable::new().await;
    let now = at(NOW);
    let a = authorizer(&t);
    let key = t.key(&[("1d", 1.0)], None, None, now).await;
    let first = authorize::handle(&a, http_api_event(&key, Some("0.6"), "req-replay"), now)
        .await
        .unwrap();
    assert!(allowed(&first));
    let id = first["context"]["reservation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = settle(&t, &id, 0.6, now).await;
    assert_eq!(status, 200);
    let replay = authorize::handle(&a, http_api_event(&key, Some("0.6"), "req-replay"), now)
        .await
        .unwrap();
    assert!(!allowed(&replay), "{replay}");
    assert_eq!(replay["context"]["reason"], "budget_exceeded");
    let fits = authorize::handle(&a, http_api_event(&key, Some("0.4"), "req-replay"), now)
        .await
        .unwrap();
    assert!(allowed(&fits), "{fits}");
    assert_ne!(
        fits["context"]["reservation_id"],
        first["context"]["reservation_id"]
    );
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));
    let w = t.window(&hash, "1d").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::from_f64(0.6).unwrap(), Money::from_f64(0.4).unwrap())
    );
}
