//! The admin API and settle-spend against an untrusted client: exact
//! routes, no silently kept typos, ids safe everywhere, custom keys that
//! cannot be guessed, the reservation floor, reservation ids checked
//! before the store. Real API Gateway requests against a fresh table in
//! the DynamoDB emulator. Run with
//! `bash scripts/test.sh -p edge-budget --test admin_hardening`.

use chrono::{DateTime, Utc};
use edge_budget::{at, http_request, response_json, TestTable};
use serde_json::{json, Value};

const MASTER: &str = "sk-master-hardening-0123456789abcdef";

fn now() -> DateTime<Utc> {
    at("2026-11-28T15:08:00Z")
}

/// `method path` with `body` and the master key.
async fn call(t: &TestTable, method: &str, path: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {MASTER}");
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let request = http_request(method, path, &text, &[("authorization", &auth)]);
    response_json(admin::handle(&t.store, &t.settings, MASTER, request, now()).await)
}

async fn post(t: &TestTable, path: &str, body: Value) -> Value {
    let (status, answer) = call(t, "POST", path, body.clone()).await;
    assert_eq!(status, 200, "POST {path} {body}: {answer}");
    answer
}

async fn get(t: &TestTable, path: &str) -> Value {
    let (status, answer) = call(t, "GET", path, Value::Null).await;
    assert_eq!(status, 200, "GET {path}: {answer}");
    answer
}

async fn settle_call(t: &TestTable, path: &str, body: Value) -> (u16, Value) {
    let request = http_request("POST", path, &body.to_string(), &[]);
    response_json(settle_spend::handle(&t.store, &t.settings, request, now()).await)
}

// ---- 1. exact routes ----

#[tokio::test]
async fn a_team_delete_hidden_behind_a_key_path_is_404_and_the_team_still_exists() {
    let t = TestTable::new().await;
    post(&t, "/team/new", json!({"team_id": "team-a"})).await;
    let before = t.snapshot().await;
    for path in [
        "/key/x/team/delete",
        "/key/team/delete",
        "/user/team/delete",
        "/a/b/team/delete",
        "/lambda-url/key/team/delete",
        "/team/delete/x",
    ] {
        let (status, answer) = call(&t, "POST", path, json!({"team_ids": ["team-a"]})).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    assert_eq!(t.snapshot().await, before, "nothing was deleted");
    assert_eq!(
        get(&t, "/team/info?team_id=team-a").await["team_id"],
        "team-a"
    );
}

#[tokio::test]
async fn a_stage_prefix_and_the_cargo_lambda_function_url_prefix_still_route() {
    let t = TestTable::new().await;
    post(&t, "/prod/team/new", json!({"team_id": "team-a"})).await;
    post(
        &t,
        "/lambda-url/admin/user/new",
        json!({"user_id": "user-a"}),
    )
    .await;
    assert_eq!(
        get(&t, "/prod/team/info?team_id=team-a").await["team_id"],
        "team-a"
    );
    assert_eq!(
        get(&t, "/lambda-url/admin/user/info?user_id=user-a").await["user_id"],
        "user-a"
    );
}

#[tokio::test]
async fn settle_paths_with_a_foreign_prefix_are_404_and_write_nothing() {
    let t = TestTable::new().await;
    let before = t.snapshot().await;
    let id = format!("r-{}", "0".repeat(32));
    for path in [
        "/x/y/spend/settle",
        "/spend/spend/settle",
        "/a/b/spend/release",
        "/spend/settle/now",
    ] {
        let (status, answer) =
            settle_call(&t, path, json!({"reservation_id": id, "cost": 1})).await;
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
        let (status, answer) =
            settle_call(&t, path, json!({"reservation_id": id, "cost": 1})).await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("unknown reservation_id"),
            "{answer}"
        );
    }
    assert_eq!(t.snapshot().await, before);
}
