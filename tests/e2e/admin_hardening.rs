//! The admin API and settle-spend against an untrusted client: exact
//! routes, no silently kept typos, ids safe everywhere, custom keys that
//! cannot be guessed, the reservation floor, reservation ids checked
//! before the store. Real API Gateway requests against a fresh table in
//! the DynamoDB emulator. Run with
//! `bash scripts/test.sh -p edge-budget --test e2e admin_hardening::`.

use std::time::Duration;

use budget_core::model::{EntityKind, EntityRef};
use budget_core::store::prelude::*;
use budget_core::Money;
use edge_budget::fault_proxy::FaultProxy;
use edge_budget::{http_request, response_json};
use serde_json::{json, Value};

use crate::helpers::{emulator, TestApp};

// ---- 1. exact routes ----

#[tokio::test]
async fn a_team_delete_hidden_behind_a_key_path_is_404_and_the_team_still_exists() {
    let app = TestApp::new().await;
    app.post("/team/new", json!({"team_id": "team-a"})).await;
    let before = app.snapshot().await;
    for path in [
        "/key/x/team/delete",
        "/key/team/delete",
        "/user/team/delete",
        "/a/b/team/delete",
        "/lambda-url/key/team/delete",
        "/team/delete/x",
    ] {
        let (status, answer) = app
            .admin("POST", path, json!({"team_ids": ["team-a"]}))
            .await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    assert_eq!(app.snapshot().await, before, "nothing was deleted");
    assert_eq!(app.team_info("team-a").await["team_id"], "team-a");
}

#[tokio::test]
async fn a_stage_prefix_and_the_cargo_lambda_function_url_prefix_still_route() {
    let app = TestApp::new().await;
    app.post("/prod/team/new", json!({"team_id": "team-a"}))
        .await;
    app.post("/lambda-url/admin/user/new", json!({"user_id": "user-a"}))
        .await;
    assert_eq!(
        app.get("/prod/team/info?team_id=team-a").await["team_id"],
        "team-a"
    );
    assert_eq!(
        app.get("/lambda-url/admin/user/info?user_id=user-a").await["user_id"],
        "user-a"
    );
}

#[tokio::test]
async fn settle_paths_with_a_foreign_prefix_are_404_and_write_nothing() {
    let app = TestApp::new().await;
    let before = app.snapshot().await;
    let id = format!("r-{}", "0".repeat(32));
    for path in [
        "/x/y/spend/settle",
        "/spend/spend/settle",
        "/a/b/spend/release",
        "/spend/settle/now",
    ] {
        let (status, answer) = app
            .settle_spend(path, json!({"reservation_id": id, "cost": 1}))
            .await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("no route"),
            "{answer}"
        );
    }
    // The accepted prefixes reach the route (an unknown id is its 404).
    for path in [
        "/prod/spend/settle",
        "/lambda-url/settle-spend/spend/settle",
    ] {
        let (status, answer) = app
            .settle_spend(path, json!({"reservation_id": id, "cost": 1}))
            .await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("unknown reservation_id"),
            "{answer}"
        );
    }
    assert_eq!(app.snapshot().await, before);
}

// ---- 2. no silent typos ----

#[tokio::test]
async fn a_user_with_a_typo_in_budget_limits_is_400_with_the_field_it_meant() {
    let app = TestApp::new().await;
    app.refused(
        "POST",
        "/user/new",
        json!({"user_id": "u", "budget_limit": [{"budget_duration": "1d", "max_budget": 5}]}),
        "budget_limit",
        "unknown field \"budget_limit\": did you mean \"budget_limits\"?",
    )
    .await;
    let (status, _) = app.admin("GET", "/user/info?user_id=u", Value::Null).await;
    assert_eq!(status, 404, "no uncapped user was stored");
}

#[tokio::test]
async fn a_team_with_max_budgets_is_400_with_the_field_it_meant() {
    let app = TestApp::new().await;
    app.refused(
        "POST",
        "/team/new",
        json!({"team_id": "team-a", "max_budgets": 10}),
        "max_budgets",
        "unknown field \"max_budgets\": did you mean \"max_budget\"?",
    )
    .await;
}

#[tokio::test]
async fn typos_on_updates_deletes_and_blocks_are_400_too() {
    let app = TestApp::new().await;
    app.post("/team/new", json!({"team_id": "team-a", "max_budget": 5}))
        .await;
    let key = app
        .post("/key/generate", json!({"team_id": "team-a"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_string();
    app.refused(
        "POST",
        "/team/update",
        json!({"team_id": "team-a", "max_budegt": 1000}),
        "max_budegt",
        "did you mean \"max_budget\"?",
    )
    .await;
    app.refused(
        "POST",
        "/key/update",
        json!({"key": key, "budget_limts": []}),
        "budget_limts",
        "did you mean \"budget_limits\"?",
    )
    .await;
    app.refused(
        "POST",
        "/key/delete",
        json!({"key": [key]}),
        "key",
        "did you mean \"keys\"?",
    )
    .await;
    app.refused(
        "POST",
        "/team/delete",
        json!({"team_id": ["team-a"]}),
        "team_id",
        "did you mean \"team_ids\"?",
    )
    .await;
}

#[tokio::test]
async fn litellm_fields_edge_budget_does_not_act_on_are_still_accepted_and_kept() {
    let app = TestApp::new().await;
    let team = app
        .post(
            "/team/new",
            json!({"team_id": "team-a", "team_alias": "A", "soft_budget": 5, "models": ["gpt-4o"],
               "metadata": {"cost_center": "42"}, "tpm_limit": 4,
               "members_with_roles": [], "tags": ["x"]}),
        )
        .await;
    assert_eq!(team["soft_budget"], 5);
    let user = app
        .post(
            "/user/new",
            json!({"user_id": "user-a", "user_email": "a@example.com", "user_role": "internal_user",
               "models": [], "metadata": {}, "auto_create_key": false, "max_parallel_requests": 2}),
        )
        .await;
    assert_eq!(user["user_email"], "a@example.com");
    let key = app
        .post(
            "/key/generate",
            json!({"user_id": "user-a", "team_id": "team-a", "key_alias": "ci", "duration": "30d",
               "models": ["gpt-4o"], "metadata": {"env": "prod"}, "max_parallel_requests": 8,
               "soft_budget": 1, "tpm_limit": 1000, "rpm_limit": 10, "key_type": "llm_api",
               "allowed_routes": [], "budget_id": null}),
        )
        .await;
    assert_eq!(key["key_alias"], "ci");
    assert_eq!(key["max_parallel_requests"], 8);
    assert!(key["expires"].is_string(), "duration still sets expires");
    let updated = app
        .post(
            "/key/update",
            json!({"key": key["key"], "key_alias": "ci-2", "soft_budget": 2,
               "temp_budget_increase": null, "metadata": {"env": "dev"}}),
        )
        .await;
    assert_eq!(updated["key_alias"], "ci-2");
    assert_eq!(updated["metadata"], json!({"env": "dev"}));
}

// ---- 3. ids safe everywhere ----

/// Ids no user or team may have: 3 KB, a quote, a backslash, a space,
/// non-ASCII, empty.
fn bad_ids() -> Vec<String> {
    vec![
        "u".repeat(3 * 1024),
        "a\"b".into(),
        "a\\b".into(),
        "a b".into(),
        "ü".into(),
        "".into(),
    ]
}

#[tokio::test]
async fn creating_a_user_or_team_with_a_bad_id_is_400_and_writes_nothing() {
    let app = TestApp::new().await;
    for id in bad_ids() {
        app.refused(
            "POST",
            "/user/new",
            json!({"user_id": id}),
            "user_id",
            "user_id must be 1 to 128",
        )
        .await;
        app.refused(
            "POST",
            "/team/new",
            json!({"team_id": id, "max_budget": 5}),
            "team_id",
            "team_id must be 1 to 128",
        )
        .await;
        app.refused(
            "POST",
            "/user/new",
            json!({"user_id": "u", "team_id": id}),
            "team_id",
            "team_id must be 1 to 128",
        )
        .await;
    }
}

#[tokio::test]
async fn a_key_for_a_bad_owner_id_is_400_and_writes_nothing() {
    let app = TestApp::new().await;
    app.post("/user/new", json!({"user_id": "u"})).await;
    let key = app.post("/key/generate", json!({"user_id": "u"})).await["key"]
        .as_str()
        .unwrap()
        .to_string();
    for id in bad_ids() {
        app.refused(
            "POST",
            "/key/generate",
            json!({"user_id": id}),
            "user_id",
            "user_id must be",
        )
        .await;
        app.refused(
            "POST",
            "/key/generate",
            json!({"team_id": id}),
            "team_id",
            "team_id must be",
        )
        .await;
        app.refused(
            "POST",
            "/key/update",
            json!({"key": key, "user_id": id}),
            "user_id",
            "user_id must be",
        )
        .await;
    }
}

#[tokio::test]
async fn updating_reading_or_deleting_by_a_bad_id_is_400() {
    let app = TestApp::new().await;
    app.post("/user/new", json!({"user_id": "u"})).await;
    for id in ["u".repeat(3 * 1024), "a\"b".to_string()] {
        app.refused(
            "POST",
            "/user/update",
            json!({"user_id": id, "max_budget": 1}),
            "user_id",
            "user_id must be",
        )
        .await;
        app.refused(
            "POST",
            "/team/update",
            json!({"team_id": id}),
            "team_id",
            "team_id must be",
        )
        .await;
        app.refused(
            "POST",
            "/user/delete",
            json!({"user_ids": ["u", id]}),
            "user_ids",
            "user_ids[1] must be",
        )
        .await;
        app.refused(
            "POST",
            "/team/delete",
            json!({"team_ids": [id]}),
            "team_ids",
            "team_ids[0] must be",
        )
        .await;
    }
    let long = "u".repeat(3 * 1024);
    app.refused(
        "GET",
        &format!("/user/info?user_id={long}"),
        Value::Null,
        "user_id",
        "user_id must be",
    )
    .await;
    app.refused(
        "GET",
        "/team/info?team_id=a%22b",
        Value::Null,
        "team_id",
        "team_id must be",
    )
    .await;
    assert_eq!(app.user_info("u").await["user_id"], "u");
}

#[tokio::test]
async fn generated_and_email_like_ids_are_accepted() {
    let app = TestApp::new().await;
    let user = app.post("/user/new", json!({})).await;
    let id = user["user_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36, "a UUID");
    app.post("/team/new", json!({"team_id": "org:team.a+b_c-d"}))
        .await;
    app.post(
        "/user/new",
        json!({"user_id": "alice@example.com", "team_id": "org:team.a+b_c-d"}),
    )
    .await;
    let key = app
        .post(
            "/key/generate",
            json!({"user_id": id, "team_id": "org:team.a+b_c-d"}),
        )
        .await;
    assert_eq!(key["user_id"], json!(id));
}

#[tokio::test]
async fn a_key_longer_than_256_characters_is_400_on_info_update_delete_and_block() {
    let app = TestApp::new().await;
    let long = format!("sk-{}", "a".repeat(300));
    app.refused(
        "GET",
        &format!("/key/info?key={long}"),
        Value::Null,
        "key",
        "at most 256 characters",
    )
    .await;
    app.refused(
        "POST",
        "/key/update",
        json!({"key": long, "max_budget": 1}),
        "key",
        "at most 256 characters",
    )
    .await;
    app.refused(
        "POST",
        "/key/block",
        json!({"key": long}),
        "key",
        "at most 256 characters",
    )
    .await;
    app.refused(
        "POST",
        "/key/unblock",
        json!({"token": long}),
        "token",
        "at most 256 characters",
    )
    .await;
    app.refused(
        "POST",
        "/key/delete",
        json!({"keys": [long]}),
        "keys",
        "at most 256 characters",
    )
    .await;
}

// ---- 4. custom keys ----

#[tokio::test]
async fn a_custom_key_shorter_than_32_characters_is_400_and_not_echoed() {
    let app = TestApp::new().await;
    let short = "sk-0123456789abcdefghijklmnopqr"; // 31
    app.refused(
        "POST",
        "/key/generate",
        json!({"key": short}),
        "key",
        "32 to 256 characters",
    )
    .await;
    let (_, answer) = app
        .admin("POST", "/key/generate", json!({"key": short}))
        .await;
    assert!(!answer.to_string().contains(short));
    let ok = "sk-0123456789abcdefghijklmnopqrs"; // 32
    assert_eq!(
        app.post("/key/generate", json!({"key": ok})).await["key"],
        ok
    );
}

#[tokio::test]
async fn a_custom_key_of_fewer_than_8_distinct_characters_is_400_and_not_echoed() {
    let app = TestApp::new().await;
    for weak in [
        format!("sk-{}", "a".repeat(40)),
        format!("sk-{}", "1234567".repeat(6)),
    ] {
        app.refused(
            "POST",
            "/key/generate",
            json!({"key": weak}),
            "key",
            "at least 8 distinct characters after sk-",
        )
        .await;
        let (_, answer) = app
            .admin("POST", "/key/generate", json!({"key": weak}))
            .await;
        assert!(!answer.to_string().contains(&weak));
    }
    let ok = format!("sk-{}", "12345678".repeat(5));
    assert_eq!(
        app.post("/key/generate", json!({"key": ok})).await["key"],
        json!(ok)
    );
}

// ---- 5. the reservation floor ----

#[tokio::test]
async fn the_reservation_floor_round_trips_through_new_update_and_info() {
    let app = TestApp::new().await;
    let stored = |kind: EntityKind, id: String| {
        let store = &app.store;
        async move {
            store
                .load(&EntityRef::new(kind, id))
                .await
                .unwrap()
                .unwrap()
                .reservation_floor
        }
    };
    let team = app
        .post(
            "/team/new",
            json!({"team_id": "team-a", "reservation_floor": 0.5}),
        )
        .await;
    assert_eq!(team["reservation_floor"], 0.5);
    let user = app.post("/user/new", json!({"user_id": "user-a"})).await;
    assert_eq!(user["reservation_floor"], Value::Null, "unset is null");
    let key = app
        .post(
            "/key/generate",
            json!({"user_id": "user-a", "team_id": "team-a", "reservation_floor": 0.0123}),
        )
        .await;
    assert_eq!(key["reservation_floor"], 0.0123);
    let token = key["token"].as_str().unwrap().to_string();
    assert_eq!(
        stored(EntityKind::Key, token.clone()).await,
        Some(Money::from_nanos(12_300_000)),
        "exact nanos in the table"
    );
    assert_eq!(
        app.team_info("team-a").await["team_info"]["reservation_floor"],
        0.5
    );
    assert_eq!(
        app.key_info(&token).await["info"]["reservation_floor"],
        0.0123
    );

    // Set, changed, kept when absent, cleared by null.
    app.post(
        "/user/update",
        json!({"user_id": "user-a", "reservation_floor": 2}),
    )
    .await;
    assert_eq!(
        app.user_info("user-a").await["user_info"]["reservation_floor"],
        2.0
    );
    app.post(
        "/user/update",
        json!({"user_id": "user-a", "max_budget": 10}),
    )
    .await;
    assert_eq!(
        stored(EntityKind::User, "user-a".into()).await,
        Some(Money::usd(2))
    );
    let k = app
        .post("/key/update", json!({"key": token, "reservation_floor": 1}))
        .await;
    assert_eq!(k["reservation_floor"], 1.0);
    let k = app.post("/key/block", json!({"key": token})).await;
    assert_eq!(k["reservation_floor"], 1.0, "blocking keeps the floor");
    app.post(
        "/team/update",
        json!({"team_id": "team-a", "reservation_floor": null}),
    )
    .await;
    assert_eq!(
        app.team_info("team-a").await["team_info"]["reservation_floor"],
        Value::Null
    );
    assert_eq!(stored(EntityKind::Team, "team-a".into()).await, None);
}

#[tokio::test]
async fn a_reservation_floor_that_is_not_a_number_up_to_a_million_is_400() {
    let app = TestApp::new().await;
    app.post("/team/new", json!({"team_id": "team-a"})).await;
    for bad in [json!(1_000_000.5), json!(-0.01), json!("0.5"), json!({})] {
        app.refused(
            "POST",
            "/team/update",
            json!({"team_id": "team-a", "reservation_floor": bad}),
            "reservation_floor",
            "reservation_floor",
        )
        .await;
        app.refused(
            "POST",
            "/key/generate",
            json!({"reservation_floor": bad}),
            "reservation_floor",
            "reservation_floor",
        )
        .await;
        app.refused(
            "POST",
            "/user/new",
            json!({"user_id": "u", "reservation_floor": bad}),
            "reservation_floor",
            "reservation_floor",
        )
        .await;
    }
    let (status, answer) = app
        .admin(
            "POST",
            "/team/update",
            json!({"team_id": "team-a", "reservation_floor": 1_000_000}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

// ---- 6. reservation ids checked before the store ----

#[tokio::test]
async fn malformed_reservation_ids_are_404_without_a_store_request() {
    let app = TestApp::new().await;
    let emulator = emulator();
    let proxy = FaultProxy::start(&emulator).await;
    let store = app.store_via(&proxy.endpoint(), Duration::from_secs(5));
    let before = app.snapshot().await;
    let base = format!("r-{}", "0123456789abcdef".repeat(2));
    let huge = "r".repeat(3000);
    for (id, shown) in [
        ("r-unknown".to_string(), "r-unknown".to_string()),
        (huge.clone(), format!("{}…", "r".repeat(40))),
        (base.to_uppercase(), base.to_uppercase()),
        (
            format!(
                "{base}.{}",
                "A".repeat(budget_core::receipt::MAX_RECEIPT + 1)
            ),
            format!("{base}.AAAAA…"),
        ),
        (format!("{base}.not/base64"), format!("{base}.not/b…")),
        (format!("{base}\"x"), format!("{base}\"x")),
    ] {
        for (path, body) in [
            ("/spend/settle", json!({"reservation_id": id, "cost": 1})),
            ("/spend/release", json!({"reservation_id": id})),
        ] {
            let request = http_request("POST", path, &body.to_string(), &[]);
            let (status, answer) =
                response_json(settle_spend::handle(&store, &app.settings, request, app.now).await);
            assert_eq!(status, 404, "{path} {id}: {answer}");
            assert_eq!(
                answer["error"]["message"],
                format!("unknown reservation_id \"{shown}\""),
                "{answer}"
            );
        }
    }
    assert_eq!(proxy.counts().0, 0, "no store request was made");
    assert_eq!(app.snapshot().await, before, "nothing was written");

    // An id of the right form does reach the store (and is unknown there).
    let request = http_request(
        "POST",
        "/spend/settle",
        &json!({"reservation_id": base, "cost": 1}).to_string(),
        &[],
    );
    let (status, _) =
        response_json(settle_spend::handle(&store, &app.settings, request, app.now).await);
    assert_eq!(status, 404);
    assert!(proxy.counts().0 > 0, "the proxy counts store requests");
}
