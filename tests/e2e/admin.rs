//! The admin function end to end: real API Gateway HTTP API (payload 2.0)
//! requests into `admin::handle`, against a fresh table in the DynamoDB
//! emulator; the full flow goes on through the authorizer and settle.
//! Run with `bash scripts/test.sh -p edge-budget --test e2e admin::`.

use budget_core::keys::hash_key;
use budget_core::model::EntityRef;
use budget_core::service::{settle, Authorizer, SettleOutcome};
use budget_core::store::dynamo::DynamoStore;
use budget_core::store::prelude::*;
use budget_core::Money;
use edge_budget::{at, http_request, response_json};
use serde_json::{json, Value};

use crate::helpers::{authorize_via, reservation_id, TestApp, MASTER};

/// The window with `budget_duration` `id` of an entity view.
fn window<'a>(view: &'a Value, id: &str) -> &'a Value {
    view["windows"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["budget_duration"] == id))
        .unwrap_or_else(|| panic!("no window {id} in {view}"))
}

fn durations(view: &Value) -> Vec<String> {
    view["windows"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .map(|w| w["budget_duration"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Authorizes and settles one request; panics unless it was admitted.
async fn spend(
    app: &TestApp,
    authorizer: &Authorizer<DynamoStore>,
    key: &str,
    estimate: &str,
    cost: f64,
) {
    let answer = authorize_via(authorizer, key, Some(estimate), app.now).await;
    assert_eq!(answer["isAuthorized"], true, "{answer}");
    let id = reservation_id(&answer);
    let cost = Money::from_f64(cost).expect("cost");
    match settle(&app.store, &id, cost, app.now, &app.settings)
        .await
        .expect("settle")
    {
        SettleOutcome::Settled { duplicate, .. } => assert!(!duplicate),
        SettleOutcome::NotFound => panic!("reservation {id} not found"),
    }
}

fn seed() -> Value {
    json!({"user_id": "user-123", "max_budget": 1000, "budget_duration": "30d",
           "budget_limits": [{"budget_duration": "1d", "max_budget": 150}, {"budget_duration": "7d", "max_budget": 500}]})
}

#[tokio::test]
async fn seed_example_is_accepted_as_is_and_info_shows_three_windows() {
    let app = TestApp::new().await;
    let created = app.post("/user/new", seed()).await;
    assert_eq!(created["user_id"], "user-123");
    assert_eq!(durations(&created), ["1d", "7d", "30d"]);

    // Through a stage prefix and a Function URL prefix alike.
    for path in [
        "/user/info?user_id=user-123",
        "/prod/user/info?user_id=user-123",
        "/lambda-url/admin/user/info?user_id=user-123",
    ] {
        let info = app.get(path).await;
        assert_eq!(info["user_id"], "user-123");
        assert_eq!(info["keys"], json!([]));
        let u = &info["user_info"];
        assert_eq!(durations(u), ["1d", "7d", "30d"]);
        // 2026-11-28 is a Saturday: 1d at midnight, 7d on Monday, 30d on the 1st.
        for (id, max, reset) in [
            ("1d", 150.0, "2026-11-29T00:00:00Z"),
            ("7d", 500.0, "2026-11-30T00:00:00Z"),
            ("30d", 1000.0, "2026-12-01T00:00:00Z"),
        ] {
            let w = window(u, id);
            assert_eq!(w["max_budget"], max, "{w}");
            assert_eq!(w["spend"], 0.0);
            assert_eq!(w["reserved"], 0.0);
            assert_eq!(w["remaining"], max);
            assert_eq!(w["reset_at"], reset, "{w}");
        }
        assert_eq!(u["max_budget"], 1000.0);
        assert_eq!(u["budget_duration"], "30d");
        assert_eq!(u["budget_reset_at"], "2026-12-01T00:00:00Z");
        assert_eq!(u["spend"], 0.0);
        assert_eq!(
            u["budget_limits"],
            json!([{"budget_duration": "1d", "max_budget": 150.0}, {"budget_duration": "7d", "max_budget": 500.0}])
        );
    }
    // The windows are in the table as the authorizer reads them.
    let w = app.window(&EntityRef::user("user-123"), "7d").await;
    assert_eq!(w.max, Money::usd(500));
    assert_eq!(w.reset_at, Some(at("2026-11-30T00:00:00Z")));

    // A lifetime budget and an id LiteLLM-style generated when absent.
    let team = app
        .post(
            "/team/new",
            json!({"team_alias": "research", "max_budget": 20, "members_with_roles": []}),
        )
        .await;
    let team_id = team["team_id"].as_str().expect("generated team_id");
    assert_eq!(team_id.len(), 36);
    assert_eq!(team["budget_duration"], Value::Null);
    assert_eq!(team["team_alias"], "research");
    let w = window(&team, "lifetime");
    assert_eq!(
        (w["max_budget"].clone(), w["reset_at"].clone()),
        (json!(20.0), Value::Null)
    );
}

#[tokio::test]
async fn master_key_is_checked_before_anything_and_nothing_is_written() {
    let app = TestApp::new().await;
    let before = app.snapshot().await;
    let body = seed().to_string();
    let wrong = [
        vec![],
        vec![("authorization", "Bearer sk-not-the-master-key")],
        vec![("authorization", format!("Bearer {MASTER}x").leak() as &str)],
        vec![("authorization", format!("Basic {MASTER}").leak() as &str)],
        vec![("authorization", MASTER)],
        vec![("authorization", "Bearer ")],
        vec![("x-api-key", MASTER)],
        vec![
            ("x-litellm-api-key", "sk-not-the-master-key"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=x"),
        ],
    ];
    for headers in &wrong {
        for (method, path) in [
            ("POST", "/user/new"),
            ("POST", "/key/generate"),
            ("GET", "/user/info?user_id=user-123"),
            ("GET", "/no/such/route"),
        ] {
            let request = http_request(method, path, &body, headers);
            let (status, answer) = response_json(app.admin_handle(&app.store, request).await);
            assert_eq!(status, 401, "{headers:?} {method} {path}: {answer}");
            assert_eq!(answer["error"]["type"], "auth_error");
        }
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "a refused request wrote nothing"
    );

    // The scheme is case-insensitive; then routes and methods are checked.
    let request = http_request(
        "POST",
        "/user/new",
        &body,
        &[("Authorization", &format!("bearer {MASTER}"))],
    );
    let (status, _) = response_json(app.admin_handle(&app.store, request).await);
    assert_eq!(status, 200);
    // Behind IAM the Authorization header holds the SigV4 signature: the
    // master key travels in x-litellm-api-key, as LiteLLM accepts it.
    for value in [MASTER.to_string(), format!("Bearer {MASTER}")] {
        let request = http_request(
            "GET",
            "/user/info?user_id=user-123",
            "",
            &[
                (
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIA/20261128/us-east-1/execute-api/aws4_request",
                ),
                ("x-litellm-api-key", &value),
            ],
        );
        let (status, answer) = response_json(app.admin_handle(&app.store, request).await);
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) = app.admin("GET", "/no/such/route", Value::Null).await;
    assert_eq!(status, 404, "{answer}");
    let (status, answer) = app.admin("GET", "/user/new", Value::Null).await;
    assert_eq!(status, 405, "{answer}");
    let (status, answer) = app.admin("POST", "/key/info", json!({"key": "x"})).await;
    assert_eq!(status, 405, "{answer}");
}

#[tokio::test]
async fn validation_errors_name_the_param_and_write_nothing() {
    let app = TestApp::new().await;
    app.post("/user/new", seed()).await;
    app.post(
        "/team/new",
        json!({"team_id": "team-1", "budget_limits": [{"budget_duration": "1d", "max_budget": 5}]}),
    )
    .await;
    let key = app
        .post("/key/generate", json!({"user_id": "user-123"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let before = app.snapshot().await;

    let limits = |d: &str, m: Value| json!([{"budget_duration": d, "max_budget": m}]);
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        // Durations.
        (
            "POST",
            "/user/new",
            json!({"user_id": "u2", "max_budget": 1, "budget_duration": "1y"}),
            "budget_duration",
        ),
        (
            "POST",
            "/user/new",
            json!({"user_id": "u2", "max_budget": 1, "budget_duration": "0d"}),
            "budget_duration",
        ),
        (
            "POST",
            "/user/new",
            json!({"user_id": "u2", "max_budget": 1, "budget_duration": 30}),
            "budget_duration",
        ),
        (
            "POST",
            "/user/new",
            json!({"user_id": "u2", "budget_limits": limits("1hr", json!(1))}),
            "budget_limits[0].budget_duration",
        ),
        (
            "POST",
            "/user/new",
            json!({"user_id": "u2", "budget_duration": "1d"}),
            "budget_duration",
        ),
        (
            "POST",
            "/user/update",
            json!({"user_id": "user-123", "budget_duration": "-1d"}),
            "budget_duration",
        ),
        // Duplicate durations, the legacy window included.
        (
            "POST",
            "/user/new",
            json!({"user_id": "u2", "budget_limits": [{"budget_duration": "1d", "max_budget": 1}, {"budget_duration": "daily", "max_budget": 2}]}),
            "budget_limits",
        ),
        (
            "POST",
            "/team/new",
            json!({"team_id": "t2", "max_budget": 3, "budget_duration": "7d", "budget_limits": limits("1w", json!(1))}),
            "budget_limits",
        ),
        (
            "POST",
            "/user/update",
            json!({"user_id": "user-123", "budget_limits": limits("30d", json!(9))}),
            "budget_limits",
        ),
        // Budgets.
        (
            "POST",
            "/user/new",
            json!({"user_id": "u2", "max_budget": -1}),
            "max_budget",
        ),
        (
            "POST",
            "/user/new",
            json!({"user_id": "u2", "max_budget": "NaN"}),
            "max_budget",
        ),
        (
            "POST",
            "/user/new",
            json!({"user_id": "u2", "max_budget": 1e12}),
            "max_budget",
        ),
        (
            "POST",
            "/key/generate",
            json!({"budget_limits": limits("1d", json!(-0.5))}),
            "budget_limits[0].max_budget",
        ),
        (
            "POST",
            "/key/generate",
            json!({"budget_limits": limits("1d", Value::Null)}),
            "budget_limits[0].max_budget",
        ),
        (
            "POST",
            "/key/generate",
            json!({"budget_limits": {"1d": 5}}),
            "budget_limits",
        ),
        (
            "POST",
            "/team/update",
            json!({"team_id": "team-1", "max_budget": -3}),
            "max_budget",
        ),
        // Known fields of the wrong type.
        ("POST", "/user/new", json!({"user_id": 123}), "user_id"),
        ("POST", "/user/new", json!({"user_id": ""}), "user_id"),
        (
            "POST",
            "/user/new",
            json!({"user_id": "u2", "metadata": "vip"}),
            "metadata",
        ),
        (
            "POST",
            "/team/new",
            json!({"team_id": "t2", "models": "gpt-4o"}),
            "models",
        ),
        (
            "POST",
            "/team/new",
            json!({"team_id": "t2", "blocked": true}),
            "blocked",
        ),
        ("POST", "/key/generate", json!({"user_id": 5}), "user_id"),
        (
            "POST",
            "/key/generate",
            json!({"blocked": "yes"}),
            "blocked",
        ),
        (
            "POST",
            "/key/generate",
            json!({"tpm_limit": "many"}),
            "tpm_limit",
        ),
        (
            "POST",
            "/key/generate",
            json!({"key_alias": ["a"]}),
            "key_alias",
        ),
        (
            "POST",
            "/key/generate",
            json!({"duration": "1y"}),
            "duration",
        ),
        (
            "POST",
            "/key/generate",
            json!({"duration": "1d", "expires": "2027-01-01T00:00:00Z"}),
            "duration",
        ),
        (
            "POST",
            "/key/generate",
            json!({"expires": "next week"}),
            "expires",
        ),
        (
            "POST",
            "/key/generate",
            json!({"key": "pk-0123456789abcdefghijkl"}),
            "key",
        ),
        ("POST", "/key/generate", json!({"key": "sk-short"}), "key"),
        (
            "POST",
            "/key/update",
            json!({"key": key, "blocked": 1}),
            "blocked",
        ),
        (
            "POST",
            "/key/update",
            json!({"key": key, "max_budget": -1}),
            "max_budget",
        ),
        (
            "POST",
            "/key/delete",
            json!({"keys": [key], "key_aliases": ["prod"]}),
            "key_aliases",
        ),
        // Missing ids.
        ("POST", "/user/update", json!({"max_budget": 5}), "user_id"),
        ("POST", "/team/update", json!({}), "team_id"),
        ("POST", "/key/update", json!({"max_budget": 5}), "key"),
        ("POST", "/key/block", json!({}), "key"),
        ("POST", "/key/delete", json!({"keys": []}), "keys"),
        ("POST", "/key/delete", json!({"keys": key}), "keys"),
        ("POST", "/user/delete", json!({}), "user_ids"),
        ("POST", "/team/delete", json!({"team_ids": [7]}), "team_ids"),
        ("GET", "/key/info", Value::Null, "key"),
        ("GET", "/user/info", Value::Null, "user_id"),
        ("GET", "/team/info?team_id=", Value::Null, "team_id"),
    ];
    for (method, path, body, param) in cases {
        let (status, answer) = app.admin(method, path, body.clone()).await;
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        assert_eq!(
            answer["error"]["param"], param,
            "{method} {path} {body}: {answer}"
        );
        assert_eq!(answer["error"]["type"], "invalid_request_error");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty());
        assert!(!message.contains(&key), "an error never echoes a key");
    }
    // Bodies that are not JSON objects (NaN is not JSON).
    for raw in ["", "{", "[1]", r#"{"user_id": "u2", "max_budget": NaN}"#] {
        let request = http_request(
            "POST",
            "/user/new",
            raw,
            &[("authorization", &format!("Bearer {MASTER}"))],
        );
        let (status, answer) = response_json(app.admin_handle(&app.store, request).await);
        assert_eq!(
            (status, answer["error"]["param"].clone()),
            (400, json!("body")),
            "{raw}: {answer}"
        );
    }
    // Durations name the accepted forms.
    let (_, answer) = app
        .admin(
            "POST",
            "/user/new",
            json!({"user_id": "u2", "max_budget": 1, "budget_duration": "1hr"}),
        )
        .await;
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unit s, m, h, d, w or mo"),
        "{answer}"
    );
    assert_eq!(
        app.snapshot().await,
        before,
        "no refused request wrote anything"
    );
}

#[tokio::test]
async fn existing_ids_are_409_unknown_ones_404_and_nothing_is_written() {
    let app = TestApp::new().await;
    app.post("/user/new", seed()).await;
    app.post("/team/new", json!({"team_id": "team-1"})).await;
    let custom = "sk-custom-key-for-tests-0001-abcd";
    app.post(
        "/key/generate",
        json!({"key": custom, "user_id": "user-123"}),
    )
    .await;
    let other = app.post("/key/generate", json!({})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let before = app.snapshot().await;

    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "POST",
            "/user/new",
            json!({"user_id": "user-123"}),
            409,
            "user_id",
        ),
        (
            "POST",
            "/team/new",
            json!({"team_id": "team-1", "max_budget": 5}),
            409,
            "team_id",
        ),
        ("POST", "/key/generate", json!({"key": custom}), 409, "key"),
        (
            "POST",
            "/user/update",
            json!({"user_id": "nobody", "max_budget": 5}),
            404,
            "user_id",
        ),
        (
            "POST",
            "/team/update",
            json!({"team_id": "no-team", "max_budget": 5}),
            404,
            "team_id",
        ),
        (
            "GET",
            "/user/info?user_id=nobody",
            Value::Null,
            404,
            "user_id",
        ),
        (
            "GET",
            "/team/info?team_id=no-team",
            Value::Null,
            404,
            "team_id",
        ),
        (
            "GET",
            "/key/info?key=sk-never-generated-0000000000",
            Value::Null,
            404,
            "key",
        ),
        (
            "POST",
            "/key/update",
            json!({"key": "sk-never-generated-0000000000", "max_budget": 1}),
            404,
            "key",
        ),
        (
            "POST",
            "/key/block",
            json!({"key": hash_key("sk-never-generated-0000000000")}),
            404,
            "key",
        ),
        // A key for an owner that does not exist is a 404, not an orphan.
        (
            "POST",
            "/key/generate",
            json!({"user_id": "nobody"}),
            404,
            "user_id",
        ),
        (
            "POST",
            "/key/generate",
            json!({"user_id": "user-123", "team_id": "no-team"}),
            404,
            "team_id",
        ),
        (
            "POST",
            "/key/update",
            json!({"key": custom, "team_id": "no-team"}),
            404,
            "team_id",
        ),
        // One unknown entry and nothing in the list is deleted.
        (
            "POST",
            "/key/delete",
            json!({"keys": [other, "sk-never-generated-0000000000"]}),
            404,
            "keys",
        ),
        (
            "POST",
            "/user/delete",
            json!({"user_ids": ["nobody"]}),
            404,
            "user_ids",
        ),
        (
            "POST",
            "/team/delete",
            json!({"team_ids": ["team-1", "no-team"]}),
            404,
            "team_ids",
        ),
    ];
    for (method, path, body, expected, param) in cases {
        let (status, answer) = app.admin(method, path, body.clone()).await;
        assert_eq!(status, expected, "{method} {path} {body}: {answer}");
        assert_eq!(
            answer["error"]["param"], param,
            "{method} {path} {body}: {answer}"
        );
        assert!(!answer.to_string().contains(custom) && !answer.to_string().contains(&other));
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "no refused request wrote anything"
    );
}

#[tokio::test]
async fn update_keeps_spend_and_reset_at_of_kept_durations() {
    let app = TestApp::new().await;
    app.post("/user/new", json!({"user_id": "u1", "max_budget": 100,
        "budget_limits": [{"budget_duration": "1d", "max_budget": 10}, {"budget_duration": "7d", "max_budget": 50}]})).await;
    let key = app.post("/key/generate", json!({"user_id": "u1"})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let authorizer = app.authorizer_on(app.another_store());
    spend(&app, &authorizer, &key, "2", 3.0).await;

    let later = at("2026-11-28T16:30:00Z");
    let (status, updated) = app.admin_at(later, "POST", "/user/update", json!({"user_id": "u1", "max_budget": 200,
        "budget_limits": [{"budget_duration": "1d", "max_budget": 20}, {"budget_duration": "1h", "max_budget": 5}]})).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(durations(&updated), ["1h", "1d", "lifetime"]);
    let (status, info) = app
        .admin_at(later, "GET", "/user/info?user_id=u1", Value::Null)
        .await;
    assert_eq!(status, 200);
    let u = &info["user_info"];
    // Kept duration: spend and reset_at as they were, the new limit at once.
    let day = window(u, "1d");
    assert_eq!(
        (day["spend"].clone(), day["max_budget"].clone()),
        (json!(3.0), json!(20.0))
    );
    assert_eq!(day["reset_at"], "2026-11-29T00:00:00Z");
    assert_eq!(day["remaining"], 17.0);
    // The legacy lifetime window keeps its spend too.
    let life = window(u, "lifetime");
    assert_eq!(
        (life["spend"].clone(), life["max_budget"].clone()),
        (json!(3.0), json!(200.0))
    );
    assert_eq!(u["spend"], 3.0);
    // A new duration starts fresh from the moment of the update.
    let hour = window(u, "1h");
    assert_eq!(
        (hour["spend"].clone(), hour["reset_at"].clone()),
        (json!(0.0), json!("2026-11-28T17:00:00Z"))
    );
    // A removed one is gone, from the table too.
    let stored = app
        .store
        .load(&EntityRef::user("u1"))
        .await
        .unwrap()
        .unwrap();
    assert!(stored.window("7d").is_none());
    assert_eq!(stored.window("1d").unwrap().spent, Money::usd(3));

    // Fields absent from an update keep their value.
    let (_, kept) = app
        .admin_at(
            later,
            "POST",
            "/user/update",
            json!({"user_id": "u1", "user_email": "a@b.c"}),
        )
        .await;
    assert_eq!(durations(&kept), ["1h", "1d", "lifetime"]);
    assert_eq!(kept["user_email"], "a@b.c");
    // Only budget_duration: the legacy window changes duration, keeps its limit, starts fresh.
    let (_, moved) = app
        .admin_at(
            later,
            "POST",
            "/user/update",
            json!({"user_id": "u1", "budget_duration": "1mo"}),
        )
        .await;
    assert_eq!(durations(&moved), ["1h", "1d", "1mo"]);
    assert_eq!(window(&moved, "1mo")["max_budget"], 200.0);
    assert_eq!(window(&moved, "1mo")["reset_at"], "2026-12-01T00:00:00Z");
    // max_budget: null removes the legacy window; budget_limits: null the others.
    let (_, cleared) = app
        .admin_at(
            later,
            "POST",
            "/user/update",
            json!({"user_id": "u1", "max_budget": null}),
        )
        .await;
    assert_eq!(durations(&cleared), ["1h", "1d"]);
    assert_eq!(cleared["max_budget"], Value::Null);
    let (_, none) = app
        .admin_at(
            later,
            "POST",
            "/user/update",
            json!({"user_id": "u1", "budget_limits": null}),
        )
        .await;
    assert_eq!(durations(&none), Vec::<String>::new());

    // The key's windows are updated the same way.
    let (status, k) = app.admin_at(later, "POST", "/key/update", json!({"key": key, "budget_limits": [{"budget_duration": "1d", "max_budget": 1}], "key_alias": "renamed"})).await;
    assert_eq!(status, 200, "{k}");
    assert_eq!(durations(&k), ["1d"]);
    assert_eq!(k["key_alias"], "renamed");
    assert_eq!(k["user_id"], "u1");
}

#[tokio::test]
async fn concurrent_updates_are_all_applied() {
    let app = TestApp::new().await;
    app.post("/user/new", json!({"user_id": "u1", "max_budget": 1}))
        .await;
    // Four updates, each of another kept LiteLLM field.
    let fields = [
        ("tpm_limit", json!(0)),
        ("rpm_limit", json!(1)),
        ("max_parallel_requests", json!(2)),
        ("user_alias", json!("3")),
    ];
    let update = |i: usize| {
        let (field, value) = fields[i].clone();
        app.admin(
            "POST",
            "/user/update",
            json!({"user_id": "u1", field: value}),
        )
    };
    let (a, b, c, d) = tokio::join!(update(0), update(1), update(2), update(3));
    for (status, answer) in [a, b, c, d] {
        assert_eq!(status, 200, "{answer}");
    }
    let info = app.user_info("u1").await;
    for (field, value) in &fields {
        assert_eq!(
            &info["user_info"][field], value,
            "no update was lost: {info}"
        );
    }
    let stored = app
        .store
        .load(&EntityRef::user("u1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, 5);
}

#[tokio::test]
async fn blocked_keys_are_refused_by_the_authorizer_until_unblocked() {
    let app = TestApp::new().await;
    let key = app.post("/key/generate", json!({"max_budget": 10})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let authorizer = app.authorizer_on(app.another_store());
    assert_eq!(
        authorize_via(&authorizer, &key, Some("0.1"), app.now).await["isAuthorized"],
        true
    );

    let blocked = app.post("/key/block", json!({"key": key})).await;
    assert_eq!(blocked["blocked"], true);
    // The authorizer has the key in memory, unblocked: its write is
    // conditional on the version, so it still sees the block.
    let answer = authorize_via(&authorizer, &key, Some("0.1"), app.now).await;
    assert_eq!(answer["isAuthorized"], false, "{answer}");
    assert_eq!(answer["context"]["reason"], "key_blocked");
    let info = app.key_info(&key).await;
    assert_eq!(info["info"]["blocked"], true);

    // Unblock by token.
    let unblocked = app
        .post("/key/unblock", json!({"key": hash_key(&key)}))
        .await;
    assert_eq!(unblocked["blocked"], false);
    assert_eq!(
        authorize_via(&authorizer, &key, Some("0.1"), app.now).await["isAuthorized"],
        true
    );

    // blocked: true through /key/update works the same.
    app.post(
        "/key/update",
        json!({"token": hash_key(&key), "blocked": true}),
    )
    .await;
    let answer = authorize_via(&authorizer, &key, Some("0.1"), app.now).await;
    assert_eq!(answer["context"]["reason"], "key_blocked");
}

#[tokio::test]
async fn expired_keys_are_refused_and_duration_sets_expires() {
    let app = TestApp::new().await;
    let g = app.post("/key/generate", json!({"duration": "24h"})).await;
    assert_eq!(g["expires"], "2026-11-29T15:08:00Z");
    let key = g["key"].as_str().unwrap().to_string();
    let authorizer = app.authorizer_on(app.another_store());
    assert_eq!(
        authorize_via(&authorizer, &key, Some("0"), app.now).await["isAuthorized"],
        true
    );
    let answer = authorize_via(&authorizer, &key, Some("0"), at("2026-11-29T15:08:00Z")).await;
    assert_eq!(answer["context"]["reason"], "key_expired", "{answer}");
    // expires: null makes it valid again; an RFC 3339 expires is taken as is.
    let u = app
        .post("/key/update", json!({"key": key, "expires": null}))
        .await;
    assert_eq!(u["expires"], Value::Null);
    let u = app
        .post(
            "/key/update",
            json!({"key": key, "expires": "2027-01-01T01:00:00+01:00"}),
        )
        .await;
    assert_eq!(u["expires"], "2027-01-01T00:00:00Z");
    let u = app
        .post("/key/update", json!({"key": key, "duration": "1mo"}))
        .await;
    assert_eq!(u["expires"], "2026-12-28T15:08:00Z");
}

#[tokio::test]
async fn deleting_an_owner_with_keys_is_refused() {
    let app = TestApp::new().await;
    app.post("/user/new", json!({"user_id": "u1"})).await;
    app.post("/team/new", json!({"team_id": "t1"})).await;
    let k1 = app
        .post("/key/generate", json!({"user_id": "u1", "team_id": "t1"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let k2 = app.post("/key/generate", json!({"team_id": "t1"})).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let before = app.snapshot().await;

    let (status, answer) = app
        .admin("POST", "/user/delete", json!({"user_ids": ["u1"]}))
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still has 1 key"),
        "{answer}"
    );
    let (status, answer) = app
        .admin("POST", "/team/delete", json!({"team_ids": ["t1"]}))
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still has 2 keys"),
        "{answer}"
    );
    assert_eq!(app.snapshot().await, before, "nothing was deleted");

    let info = app.team_info("t1").await;
    let mut keys = vec![hash_key(&k1), k2.clone()];
    keys.sort();
    assert_eq!(info["keys"], json!(keys));
    assert_eq!(info["team_info"]["key_count"], 2);

    // Deleting the keys (one by plaintext, one by token) uncounts them.
    let deleted = app
        .post(
            "/key/delete",
            json!({"keys": [k1, k2], "key_aliases": null}),
        )
        .await;
    assert_eq!(deleted["deleted_keys"].as_array().unwrap().len(), 2);
    assert!(
        !deleted.to_string().contains(&k1),
        "the answer names keys by token"
    );
    let info = app.user_info("u1").await;
    assert_eq!(
        (info["user_info"]["key_count"].clone(), info["keys"].clone()),
        (json!(0), json!([]))
    );
    let (status, _) = app
        .admin("GET", &format!("/key/info?key={k1}"), Value::Null)
        .await;
    assert_eq!(status, 404);

    let d = app.post("/user/delete", json!({"user_ids": ["u1"]})).await;
    assert_eq!(d["deleted_users"], json!(["u1"]));
    let d = app.post("/team/delete", json!({"team_ids": ["t1"]})).await;
    assert_eq!(d["deleted_teams"], json!(["t1"]));
    let (status, _) = app.admin("GET", "/user/info?user_id=u1", Value::Null).await;
    assert_eq!(status, 404);
    assert_eq!(
        app.snapshot().await,
        Vec::<String>::new(),
        "the table is empty again"
    );
}

#[tokio::test]
async fn key_info_by_plaintext_and_by_token_keeps_litellm_fields() {
    let app = TestApp::new().await;
    app.post(
        "/user/new",
        json!({"user_id": "u1", "user_email": "u1@example.com"}),
    )
    .await;
    let g = app.post("/key/generate", json!({
        "user_id": "u1", "key_alias": "ci-bot", "metadata": {"env": "prod"}, "models": ["gpt-4o"],
        "aliases": {}, "config": {}, "tags": ["a"], "tpm_limit": 1000, "soft_budget": null,
        "budget_limits": [{"budget_duration": "1h", "max_budget": 1}], "max_budget": 10, "budget_duration": "1d"
    })).await;
    let key = g["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk-") && key.len() == 67, "256 random bits");
    let token = g["token"].as_str().unwrap().to_string();
    assert_eq!(token, hash_key(&key));
    assert_eq!(g["key_name"], format!("sk-...{}", &key[key.len() - 4..]));
    assert_eq!(g["user_id"], "u1");
    assert_eq!(g["team_id"], Value::Null);

    // Only the hash is stored.
    assert!(!app.snapshot().await.iter().any(|item| item.contains(&key)));

    let by_key = app.key_info(&key).await;
    let by_token = app.key_info(&token).await;
    assert_eq!(by_key, by_token);
    assert!(
        !by_key.to_string().contains(&key),
        "info never shows the key"
    );
    assert_eq!(by_key["key"], token);
    let info = &by_key["info"];
    assert_eq!(info["token"], token);
    assert_eq!(info["key_alias"], "ci-bot");
    assert_eq!(info["metadata"], json!({"env": "prod"}));
    assert_eq!(info["models"], json!(["gpt-4o"]));
    assert_eq!(info["tpm_limit"], 1000);
    assert_eq!(info["soft_budget"], Value::Null);
    assert_eq!(info["max_budget"], 10.0);
    assert_eq!(info["budget_duration"], "1d");
    assert_eq!(info["budget_reset_at"], "2026-11-29T00:00:00Z");
    assert_eq!(
        info["budget_limits"],
        json!([{"budget_duration": "1h", "max_budget": 1.0}])
    );
    assert_eq!(window(info, "1h")["reset_at"], "2026-11-28T16:00:00Z");
    assert_eq!(info["blocked"], false);
    assert_eq!(info["expires"], Value::Null);

    // A custom key is hashed the same way and found by plaintext.
    let custom = "sk-my-own-key-0123456789-abcdefgh";
    let c = app.post("/key/generate", json!({"key": custom})).await;
    assert_eq!(c["key"], custom);
    assert_eq!(app.key_info(custom).await["key"], hash_key(custom));

    // Moving a key between owners moves its count.
    app.post("/user/new", json!({"user_id": "u2"})).await;
    let moved = app
        .post("/key/update", json!({"key": key, "user_id": "u2"}))
        .await;
    assert_eq!(moved["user_id"], "u2");
    assert_eq!(app.user_info("u1").await["user_info"]["key_count"], 0);
    assert_eq!(app.user_info("u2").await["keys"], json!([token]));
    let detached = app
        .post("/key/update", json!({"key": key, "user_id": null}))
        .await;
    assert_eq!(detached["user_id"], Value::Null);
    assert_eq!(app.user_info("u2").await["user_info"]["key_count"], 0);
}

#[tokio::test]
async fn full_flow_admin_then_authorize_and_settle_then_info_shows_spend() {
    let app = TestApp::new().await;
    app.post(
        "/team/new",
        json!({"team_id": "team-a", "team_alias": "A",
        "budget_limits": [{"budget_duration": "1d", "max_budget": 100}]}),
    )
    .await;
    app.post(
        "/user/new",
        json!({"user_id": "user-a", "max_budget": 50, "budget_duration": "30d",
        "budget_limits": [{"budget_duration": "1d", "max_budget": 20}]}),
    )
    .await;
    let k1 = app
        .post(
            "/key/generate",
            json!({"user_id": "user-a", "team_id": "team-a", "max_budget": 10}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    let k2 = app
        .post(
            "/key/generate",
            json!({"user_id": "user-a", "team_id": "team-a"}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();

    let authorizer = app.authorizer_on(app.another_store());
    spend(&app, &authorizer, &k1, "1", 0.75).await;
    spend(&app, &authorizer, &k2, "2", 1.25).await;
    // One request still in flight.
    let held = authorize_via(&authorizer, &k2, Some("3"), app.now).await;
    assert_eq!(held["isAuthorized"], true, "{held}");

    let key1 = app.key_info(&k1).await;
    let life = window(&key1["info"], "lifetime");
    assert_eq!(
        (
            life["spend"].clone(),
            life["reserved"].clone(),
            life["remaining"].clone()
        ),
        (json!(0.75), json!(0.0), json!(9.25))
    );
    assert_eq!(key1["info"]["spend"], 0.75);

    let user = app.user_info("user-a").await;
    let u = &user["user_info"];
    assert_eq!(u["spend"], 2.0);
    let day = window(u, "1d");
    assert_eq!(
        (
            day["spend"].clone(),
            day["reserved"].clone(),
            day["remaining"].clone()
        ),
        (json!(2.0), json!(3.0), json!(15.0))
    );
    assert_eq!(window(u, "30d")["spend"], 2.0);
    let mut tokens = vec![hash_key(&k1), hash_key(&k2)];
    tokens.sort();
    assert_eq!(user["keys"], json!(tokens));

    let team = app.team_info("team-a").await;
    let day = window(&team["team_info"], "1d");
    assert_eq!(
        (day["spend"].clone(), day["reserved"].clone()),
        (json!(2.0), json!(3.0))
    );
    assert_eq!(team["team_info"]["team_alias"], "A");
    assert_eq!(team["keys"], json!(tokens));

    // After midnight the daily windows show as rolled over, before any reset job ran.
    let (_, user) = app
        .admin_at(
            at("2026-11-29T01:00:00Z"),
            "GET",
            "/user/info?user_id=user-a",
            Value::Null,
        )
        .await;
    let day = window(&user["user_info"], "1d");
    assert_eq!(
        (day["spend"].clone(), day["reset_at"].clone()),
        (json!(0.0), json!("2026-11-30T00:00:00Z"))
    );
    assert_eq!(window(&user["user_info"], "30d")["spend"], 2.0);

    // Lowering the user's daily limit below its spend denies the next request.
    app.post(
        "/user/update",
        json!({"user_id": "user-a", "budget_limits": [{"budget_duration": "1d", "max_budget": 2}]}),
    )
    .await;
    let denied = authorize_via(&authorizer, &k1, Some("0.5"), app.now).await;
    assert_eq!(denied["isAuthorized"], false, "{denied}");
    assert_eq!(denied["context"]["entity"], "user");
    assert_eq!(denied["context"]["budget_duration"], "1d");
}

#[tokio::test]
async fn store_failures_are_503() {
    let app = TestApp::new().await;
    let missing = DynamoStore::new(app.client.clone(), "edge-budget-no-such-table");
    for (method, path, body) in [
        ("GET", "/user/info?user_id=u1", String::new()),
        ("POST", "/user/new", json!({"user_id": "u1"}).to_string()),
    ] {
        let request = http_request(
            method,
            path,
            &body,
            &[("authorization", &format!("Bearer {MASTER}"))],
        );
        let response = app.admin_handle(&missing, request).await;
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or("")),
            Some("1")
        );
        let (status, answer) = response_json(response);
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["error"]["type"], "service_unavailable");
    }
}

/// A key with no window of its own is not part of the reservation's write
/// (it would cost a condition check): its user's write carries the guard.
/// Blocking, moving or deleting the key must still be seen by an instance
/// that has it in memory.
#[tokio::test]
async fn a_key_without_windows_is_still_refused_the_moment_it_is_blocked_or_deleted() {
    let app = TestApp::new().await;
    app.user("kw-u").window("1d", 10.0).create().await;
    app.team("kw-t").window("1d", 10.0).create().await;
    let g = app.post("/key/generate", json!({"user_id": "kw-u"})).await;
    let key = g["key"].as_str().unwrap().to_string();
    let sibling = app.key().user("kw-u").create().await;
    let authorizer = app.authorizer_on(app.another_store());
    for k in [&key, &sibling] {
        let a = authorize_via(&authorizer, k, Some("0.1"), app.now).await;
        assert_eq!(a["isAuthorized"], true, "{a}");
    }

    app.post("/key/block", json!({"key": key})).await;
    let answer = authorize_via(&authorizer, &key, Some("0.1"), app.now).await;
    assert_eq!(answer["context"]["reason"], "key_blocked", "{answer}");
    // The sibling's cached chain is out of date too (the user's key
    // revision moved): refused write, fresh read, admitted.
    let answer = authorize_via(&authorizer, &sibling, Some("0.1"), app.now).await;
    assert_eq!(answer["isAuthorized"], true, "{answer}");
    app.post("/key/unblock", json!({"key": key})).await;

    // Moved to a team: charged there on the very next request.
    app.post(
        "/key/update",
        json!({"key": key, "user_id": null, "team_id": "kw-t"}),
    )
    .await;
    let answer = authorize_via(&authorizer, &key, Some("0.5"), app.now).await;
    assert_eq!(answer["isAuthorized"], true, "{answer}");
    let team = app.window(&EntityRef::team("kw-t"), "1d").await;
    assert_eq!(team.reserved, Money::parse_decimal("0.5").unwrap());

    app.post("/key/delete", json!({"keys": [key]})).await;
    let answer = authorize_via(&authorizer, &key, Some("0.1"), app.now).await;
    assert_eq!(answer["isAuthorized"], false, "{answer}");
    assert_eq!(answer["context"]["reason"], "invalid_key", "{answer}");
    let team = app.window(&EntityRef::team("kw-t"), "1d").await;
    assert_eq!(
        team.reserved,
        Money::parse_decimal("0.5").unwrap(),
        "nothing more"
    );
}
