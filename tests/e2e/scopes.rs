//! The scopes above a key's user and team (issue 14): organizations, whose
//! windows govern every request of their teams' keys in the same atomic
//! write as the key's, user's and team's. Set up through the admin API, as
//! an operator would with LiteLLM's management calls.

use std::sync::Arc;

use budget_core::model::EntityRef;
use budget_core::service::Authorizer;
use budget_core::store::dynamo::DynamoStore;
use budget_core::store::Reads;
use budget_core::Money;
use chrono::Duration;
use edge_budget::{at, schedule_event};
use serde_json::{json, Value};

use crate::helpers::{allowed, authorize_via, money, reservation_id, TestApp, NOW};

/// Admits `estimate` on `key` and settles `cost`.
async fn spend(app: &TestApp, key: &str, estimate: &str, cost: f64) {
    let answer = app.authorize(key, Some(estimate)).await;
    assert!(allowed(&answer), "{answer}");
    let (status, body) = app.settle(&reservation_id(&answer), cost).await;
    assert_eq!(status, 200, "{body}");
}

/// The denial of `key` asking `estimate`: its entity, id and window.
async fn denied_by(app: &TestApp, key: &str, estimate: &str) -> (String, String, String, String) {
    let answer = app.authorize(key, Some(estimate)).await;
    assert!(!allowed(&answer), "{answer}");
    let c = &answer["context"];
    assert_eq!(c["reason"], "budget_exceeded", "{answer}");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&c["entity"]),
        text(&c["entity_id"]),
        text(&c["budget_duration"]),
        text(&c["message"]),
    )
}

/// A key made with /key/generate; its plaintext.
async fn new_key(app: &TestApp, body: Value) -> String {
    let answer = app.post("/key/generate", body).await;
    answer["key"].as_str().expect("a key").to_string()
}

fn window_of<'a>(info: &'a Value, duration: &str) -> &'a Value {
    info["windows"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["budget_duration"] == duration))
        .unwrap_or_else(|| panic!("no {duration} window in {info}"))
}

/// The seed scenario, one scope higher: two keys of one user in one team
/// of one organization; the key's, the user's, the team's and then each of
/// the organization's windows refuse in turn, each named.
#[tokio::test]
async fn each_scope_of_the_chain_refuses_in_turn_up_to_the_organization() {
    // Estimates up to $50 (the default cap on a reservation is lower).
    let app = TestApp::with_settings(&[("MAX_RESERVATION_USD", "50")]).await;
    let org = app
        .post(
            "/organization/new",
            json!({
                "organization_id": "org-1",
                "organization_alias": "Acme",
                "max_budget": 100.0,
                "budget_duration": "1d",
                "budget_limits": [{"budget_duration": "7d", "max_budget": 120.0}],
            }),
        )
        .await;
    assert_eq!(org["organization_id"], "org-1");
    assert_eq!(org["organization_alias"], "Acme");
    app.post(
        "/team/new",
        json!({"team_id": "team-1", "organization_id": "org-1", "max_budget": 80.0, "budget_duration": "1d"}),
    )
    .await;
    app.post(
        "/user/new",
        json!({"user_id": "user-1", "max_budget": 50.0, "budget_duration": "1d"}),
    )
    .await;
    let key1 = new_key(
        &app,
        json!({"user_id": "user-1", "team_id": "team-1", "max_budget": 20.0, "budget_duration": "1d"}),
    )
    .await;
    let key2 = new_key(&app, json!({"user_id": "user-1", "team_id": "team-1"})).await;

    // The key's own window.
    spend(&app, &key1, "15", 15.0).await;
    let (entity, _, window, _) = denied_by(&app, &key1, "10").await;
    assert_eq!((entity.as_str(), window.as_str()), ("key", "1d"));
    // The user's, across both keys.
    spend(&app, &key2, "30", 30.0).await;
    let (entity, id, _, _) = denied_by(&app, &key2, "10").await;
    assert_eq!((entity.as_str(), id.as_str()), ("user", "user-1"));
    // The team's, once the user may spend more.
    app.post(
        "/user/update",
        json!({"user_id": "user-1", "max_budget": 1000.0}),
    )
    .await;
    spend(&app, &key2, "30", 30.0).await;
    let (entity, id, _, _) = denied_by(&app, &key2, "10").await;
    assert_eq!((entity.as_str(), id.as_str()), ("team", "team-1"));
    // The organization's day: 75 spent of 100.
    app.post(
        "/team/update",
        json!({"team_id": "team-1", "max_budget": 1000.0}),
    )
    .await;
    let (entity, id, window, message) = denied_by(&app, &key2, "30").await;
    assert_eq!(
        (entity.as_str(), id.as_str(), window.as_str()),
        ("organization", "org-1", "1d")
    );
    assert_eq!(
        message,
        "Budget exceeded: organization=org-1 over 1d budget. Spend=$75.0000, Estimate=$30.0000, Limit=$100.00, resets 2026-11-29T00:00:00Z"
    );
    // Its week, once its day is raised: 95 of 120.
    spend(&app, &key2, "20", 20.0).await;
    app.post(
        "/organization/update",
        json!({"organization_id": "org-1", "max_budget": 1000.0}),
    )
    .await;
    let (entity, _, window, _) = denied_by(&app, &key2, "30").await;
    assert_eq!((entity.as_str(), window.as_str()), ("organization", "7d"));
    assert!(allowed(&app.authorize(&key2, Some("25")).await));

    // Info shows the windows (95 spent, 25 held), the teams, and the
    // budget table LiteLLM clients read.
    let info = app.get("/organization/info?organization_id=org-1").await;
    let week = window_of(&info, "7d");
    assert_eq!(money(&week["spend"]), Money::usd(95));
    assert_eq!(money(&week["reserved"]), Money::usd(25));
    assert_eq!(money(&week["remaining"]), Money::ZERO);
    assert_eq!(money(&info["spend"]), Money::usd(95));
    assert_eq!(info["teams"], json!([{"team_id": "team-1"}]));
    assert_eq!(
        money(&info["litellm_budget_table"]["max_budget"]),
        Money::usd(1000)
    );
    assert_eq!(info["team_count"], 1);
    assert_eq!(
        app.team_info("team-1").await["team_info"]["organization_id"],
        "org-1"
    );

    // The reset job rolls the organization's day like any other window.
    let tomorrow = at(NOW) + Duration::days(1);
    let summary = reset::handle(&app.store, &app.settings, schedule_event(), tomorrow).await;
    assert!(summary.errors.is_empty(), "{summary:?}");
    let day = app.window(&EntityRef::organization("org-1"), "1d").await;
    assert_eq!(day.spent, Money::ZERO);
    assert_eq!(day.reset_at, Some(at("2026-11-30T00:00:00Z")));
}

/// An organization that still has teams is not deleted (as a team with
/// keys is not); a team cannot join one that does not exist; leaving an
/// organization frees both.
#[tokio::test]
async fn an_organization_with_teams_is_never_deleted_and_must_exist_to_be_joined() {
    let app = TestApp::new().await;
    app.post("/organization/new", json!({"organization_id": "org-d"}))
        .await;
    let (status, body) = app
        .admin(
            "POST",
            "/team/new",
            json!({"team_id": "t-x", "organization_id": "org-none"}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["param"], "organization_id");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("organization org-none does not exist"),
        "{body}"
    );
    app.post(
        "/team/new",
        json!({"team_id": "t-d", "organization_id": "org-d"}),
    )
    .await;
    let before = app.snapshot().await;
    let (status, body) = app
        .admin(
            "POST",
            "/organization/delete",
            json!({"organization_ids": ["org-d"]}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still has 1 team"),
        "{body}"
    );
    assert_eq!(app.snapshot().await, before, "nothing was deleted");
    // Sharding is for users and teams only.
    let (status, body) = app
        .admin(
            "POST",
            "/organization/update",
            json!({"organization_id": "org-d", "budget_shards": 4}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "budget_shards");
    // The team leaves: the organization may go.
    let team = app
        .post(
            "/team/update",
            json!({"team_id": "t-d", "organization_id": null}),
        )
        .await;
    assert_eq!(team["organization_id"], Value::Null);
    assert_eq!(
        app.get("/organization/info?organization_id=org-d").await["teams"],
        json!([])
    );
    let deleted = app
        .post(
            "/organization/delete",
            json!({"organization_ids": ["org-d"]}),
        )
        .await;
    assert_eq!(deleted["deleted_organizations"], json!(["org-d"]));
}

/// A warm authorizer whose cached chain still has the team's old
/// organization never admits on it: the team's move bumps its version,
/// which the reservation's write is conditional on.
#[tokio::test]
async fn a_team_moved_to_another_organization_is_charged_there_at_once() {
    let app = TestApp::new().await;
    app.post(
        "/organization/new",
        json!({"organization_id": "org-a", "max_budget": 100.0, "budget_duration": "1d"}),
    )
    .await;
    app.post(
        "/organization/new",
        json!({"organization_id": "org-b", "max_budget": 1.0, "budget_duration": "1d"}),
    )
    .await;
    app.post(
        "/team/new",
        json!({"team_id": "t-move", "organization_id": "org-a"}),
    )
    .await;
    let key = app.key().team("t-move").create().await;
    assert!(allowed(&app.authorize(&key, Some("5")).await));
    app.post(
        "/team/update",
        json!({"team_id": "t-move", "organization_id": "org-b"}),
    )
    .await;
    let (entity, id, _, _) = denied_by(&app, &key, "5").await;
    assert_eq!((entity.as_str(), id.as_str()), ("organization", "org-b"));
    assert_eq!(
        app.window(&EntityRef::organization("org-a"), "1d")
            .await
            .reserved,
        Money::usd(5)
    );
    // A cold instance (the key's snapshot) decides the same.
    let cold = app.authorizer();
    let answer = authorize_via(&cold, &key, Some("5"), at(NOW)).await;
    assert!(!allowed(&answer), "{answer}");
    assert_eq!(answer["context"]["entity_id"], "org-b");
    assert!(allowed(
        &authorize_via(&cold, &key, Some("0.5"), at(NOW)).await
    ));
    assert_eq!(
        app.window(&EntityRef::organization("org-b"), "1d")
            .await
            .reserved,
        Money::from_f64(0.5).unwrap()
    );
}

/// 48 concurrent requests of 1 through keys of three teams of one
/// organization with 10 left, over 6 authorizer instances: exactly 10 are
/// admitted, and every scope of the chain holds exactly what they took.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_across_an_organizations_teams_admit_exactly_what_it_affords() {
    let app = TestApp::new().await;
    let now = at(NOW);
    app.post(
        "/organization/new",
        json!({"organization_id": "org-c", "budget_limits": [{"budget_duration": "1d", "max_budget": 10.0}]}),
    )
    .await;
    app.user("u-c").create().await;
    let mut keys = Vec::new();
    for t in ["t-c1", "t-c2", "t-c3"] {
        app.post(
            "/team/new",
            json!({"team_id": t, "organization_id": "org-c", "max_budget": 100.0, "budget_duration": "1d"}),
        )
        .await;
        for _ in 0..2 {
            keys.push(app.key().user("u-c").team(t).create().await);
        }
    }
    let instances: Vec<Arc<Authorizer<DynamoStore>>> =
        (0..6).map(|_| Arc::new(app.authorizer())).collect();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let a = instances[i % instances.len()].clone();
        let key = keys[i % keys.len()].clone();
        tasks.push(tokio::spawn(async move {
            allowed(&authorize_via(&a, &key, Some("1"), now).await)
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap());
    }
    assert_eq!(admitted, 10);
    let org = app.window(&EntityRef::organization("org-c"), "1d").await;
    assert_eq!((org.spent, org.reserved), (Money::ZERO, Money::usd(10)));
    let mut teams = Money::ZERO;
    for t in ["t-c1", "t-c2", "t-c3"] {
        teams = teams.saturating_add(app.window(&EntityRef::team(t), "1d").await.reserved);
    }
    assert_eq!(
        teams,
        Money::usd(10),
        "the teams hold what the organization holds"
    );
}

/// Team-member budgets: one user's cap inside one team, added with
/// `/team/member_add` (the team's `team_member_budget` by default, or
/// `max_budget_in_team`), charged by every key of that user in that team
/// and named `team_member=<user>@<team>` when it refuses.
#[tokio::test]
async fn a_members_budget_in_a_team_caps_all_of_the_users_keys_there() {
    let app = TestApp::with_settings(&[("MAX_RESERVATION_USD", "50")]).await;
    app.post(
        "/team/new",
        json!({"team_id": "t-m", "max_budget": 1000.0, "budget_duration": "1d",
               "team_member_budget": 30.0, "team_member_budget_duration": "1d"}),
    )
    .await;
    app.user("u-m").create().await;
    app.user("v-m").create().await;
    let k1 = new_key(&app, json!({"user_id": "u-m", "team_id": "t-m"})).await;
    let k2 = new_key(&app, json!({"user_id": "u-m", "team_id": "t-m"})).await;
    let kv = new_key(&app, json!({"user_id": "v-m", "team_id": "t-m"})).await;
    // Warm before any member budget exists.
    assert!(allowed(&app.authorize(&k2, Some("1")).await));
    let added = app
        .post(
            "/team/member_add",
            json!({"team_id": "t-m", "member": {"user_id": "u-m", "role": "user"}}),
        )
        .await;
    let m = &added["updated_team_memberships"][0];
    assert_eq!(money(&m["max_budget_in_team"]), Money::usd(30), "{added}");
    assert_eq!(m["budget_duration"], "1d");
    app.post(
        "/team/member_add",
        json!({"team_id": "t-m", "member": [{"user_id": "v-m"}], "max_budget_in_team": 5.0}),
    )
    .await;

    // The warm instance sees the new member budget at once: 1 held before
    // it existed does not count there, 20 settled through k1 does.
    spend(&app, &k1, "20", 20.0).await;
    let (entity, id, window, message) = denied_by(&app, &k2, "15").await;
    assert_eq!(
        (entity.as_str(), id.as_str(), window.as_str()),
        ("team_member", "u-m@t-m", "1d")
    );
    assert!(
        message.starts_with("Budget exceeded: team_member=u-m@t-m over 1d budget. Spend=$20.0000"),
        "{message}"
    );
    let (entity, id, _, _) = denied_by(&app, &kv, "6").await;
    assert_eq!((entity.as_str(), id.as_str()), ("team_member", "v-m@t-m"));

    let updated = app
        .post(
            "/team/member_update",
            json!({"team_id": "t-m", "user_id": "u-m", "max_budget_in_team": 100.0}),
        )
        .await;
    assert_eq!(money(&updated["max_budget_in_team"]), Money::usd(100));
    assert!(allowed(&app.authorize(&k2, Some("15")).await));

    // Info shows the members' windows.
    let info = app.team_info("t-m").await;
    let members = info["team_memberships"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{info}");
    let u = members.iter().find(|m| m["user_id"] == "u-m").unwrap();
    let day = window_of(u, "1d");
    assert_eq!(money(&day["spend"]), Money::usd(20));
    assert_eq!(money(&day["reserved"]), Money::usd(15));
    assert_eq!(money(&day["max_budget"]), Money::usd(100));

    // A team with member budgets is neither sharded nor deleted while they
    // exist; removing one frees the user of it.
    let (status, body) = app
        .admin(
            "POST",
            "/team/update",
            json!({"team_id": "t-m", "budget_shards": 4}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    app.post(
        "/key/delete",
        json!({"keys": [k1.clone(), k2.clone(), kv.clone()]}),
    )
    .await;
    let (status, body) = app
        .admin("POST", "/team/delete", json!({"team_ids": ["t-m"]}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("still has 2 member budgets"),
        "{body}"
    );
    for user in ["u-m", "v-m"] {
        app.post(
            "/team/member_delete",
            json!({"team_id": "t-m", "user_id": user}),
        )
        .await;
    }
    assert_eq!(app.team_info("t-m").await["team_memberships"], json!([]));
    app.post("/team/delete", json!({"team_ids": ["t-m"]})).await;
}

/// A member budget refuses what the user's other scopes would allow, and
/// bad member requests write nothing.
#[tokio::test]
async fn member_requests_are_checked_before_anything_is_written() {
    let app = TestApp::new().await;
    app.post("/team/new", json!({"team_id": "t-r"})).await;
    for (body, param) in [
        (json!({"team_id": "t-r"}), "member"),
        (
            json!({"team_id": "t-r", "member": {"user_email": "a@b.c"}}),
            "member",
        ),
        (
            json!({"team_id": "t-r", "member": {"user_id": "a#b"}}),
            "member",
        ),
        (
            json!({"team_id": "t-r", "member": {"user_id": "u"}, "max_budget_in_team": -1}),
            "max_budget_in_team",
        ),
        (
            json!({"team_id": "t-r", "member": {"user_id": "u"}, "max_budget_in_teams": 1}),
            "max_budget_in_teams",
        ),
    ] {
        app.refused("POST", "/team/member_add", body, param, "")
            .await;
    }
    app.refused(
        "POST",
        "/team/new",
        json!({"team_id": "t-bad", "team_member_budget": 5, "team_member_budget_duration": "1y"}),
        "team_member_budget_duration",
        "",
    )
    .await;
    let (status, _) = app
        .admin(
            "POST",
            "/team/member_add",
            json!({"team_id": "t-none", "member": {"user_id": "u"}, "max_budget_in_team": 1}),
        )
        .await;
    assert_eq!(status, 404);
    app.post(
        "/team/member_add",
        json!({"team_id": "t-r", "member": {"user_id": "u"}, "max_budget_in_team": 1, "budget_duration": "1h"}),
    )
    .await;
    let (status, body) = app
        .admin(
            "POST",
            "/team/member_add",
            json!({"team_id": "t-r", "member": {"user_id": "u"}, "max_budget_in_team": 2}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

/// One request of `key` asking `estimate`, with `headers` added (the
/// customer headers a client sends), through the app's authorizer.
async fn authorize_with(
    app: &TestApp,
    key: &str,
    estimate: &str,
    headers: &[(&str, &str)],
) -> Value {
    let mut event = edge_budget::http_api_event(key, Some(estimate), &edge_budget::hex_id());
    for (name, value) in headers {
        event["headers"][*name] = json!(value);
    }
    authorize::handle(&app.authorizer, event, app.now)
        .await
        .expect("an answer")
}

/// End customers (LiteLLM's end users): named by the request's
/// `x-litellm-customer-id` / `x-litellm-end-user-id`, charged as named
/// beside the key's chain, refused while blocked; no header, no customer.
#[tokio::test]
async fn a_customer_named_by_a_header_is_charged_and_can_be_blocked() {
    let app = TestApp::new().await;
    let created = app
        .post(
            "/customer/new",
            json!({"user_id": "cust-1", "alias": "Globex", "max_budget": 10.0, "budget_duration": "1d"}),
        )
        .await;
    assert_eq!(created["user_id"], "cust-1");
    assert_eq!(created["blocked"], false);
    app.user("u-cust").window("1d", 100.0).create().await;
    let k1 = app.key().user("u-cust").create().await;
    let k2 = app.key().user("u-cust").create().await;
    let named = [("x-litellm-customer-id", "cust-1")];

    let first = authorize_with(&app, &k1, "8", &named).await;
    assert!(allowed(&first), "{first}");
    assert_eq!(first["context"]["customer_id"], "cust-1");
    let (status, _) = app.settle(&reservation_id(&first), 8.0).await;
    assert_eq!(status, 200);
    // Through the user's other key, and by LiteLLM's other header.
    for headers in [named, [("x-litellm-end-user-id", "cust-1")]] {
        let denied = authorize_with(&app, &k2, "5", &headers).await;
        assert!(!allowed(&denied), "{denied}");
        let c = &denied["context"];
        assert_eq!(
            (c["entity"].as_str(), c["entity_id"].as_str()),
            (Some("customer"), Some("cust-1"))
        );
        assert!(c["message"]
            .as_str()
            .unwrap()
            .starts_with("Budget exceeded: customer=cust-1 over 1d budget."));
    }
    // No header: no customer (documented), only the key's own chain.
    let plain = authorize_with(&app, &k2, "5", &[]).await;
    assert!(allowed(&plain), "{plain}");
    assert_eq!(plain["context"]["customer_id"], "(none)");
    assert_eq!(plain["context"]["model"], "(none)");
    assert_eq!(plain["context"]["tags"], "(none)");
    // A customer nobody created has no budget: charged nothing, nothing written for it.
    let ghost = authorize_with(&app, &k2, "1", &[("x-litellm-customer-id", "ghost")]).await;
    assert!(allowed(&ghost), "{ghost}");
    assert!(app
        .store
        .load(&EntityRef::customer("ghost"))
        .await
        .unwrap()
        .is_none());

    // A customer created after a warm instance saw none by that name is
    // charged from the next request on.
    assert!(allowed(
        &authorize_with(&app, &k2, "1", &[("x-litellm-customer-id", "late")]).await
    ));
    app.post(
        "/customer/new",
        json!({"user_id": "late", "max_budget": 0.5}),
    )
    .await;
    let late = authorize_with(&app, &k2, "1", &[("x-litellm-customer-id", "late")]).await;
    assert!(!allowed(&late), "{late}");
    assert_eq!(late["context"]["entity_id"], "late");

    // Blocked: refused, warm cache or not; unblocked: admitted again.
    assert!(allowed(&authorize_with(&app, &k1, "1", &named).await));
    app.post("/customer/block", json!({"user_ids": ["cust-1"]}))
        .await;
    let blocked = authorize_with(&app, &k1, "1", &named).await;
    assert!(!allowed(&blocked), "{blocked}");
    assert_eq!(blocked["context"]["reason"], "customer_blocked");
    app.post("/end_user/unblock", json!({"user_ids": ["cust-1"]}))
        .await;
    assert!(allowed(&authorize_with(&app, &k1, "0.5", &named).await));

    // Info shows the customer's windows (8 spent, 1.5 held), both ways.
    let info = app.get("/customer/info?end_user_id=cust-1").await;
    let day = window_of(&info, "1d");
    assert_eq!(money(&day["spend"]), Money::usd(8));
    assert_eq!(money(&day["reserved"]), Money::from_f64(1.5).unwrap());
    assert_eq!(info["alias"], "Globex");
    assert_eq!(
        money(&info["litellm_budget_table"]["max_budget"]),
        Money::usd(10)
    );
    assert_eq!(
        app.get("/end_user/info?end_user_id=cust-1").await["user_id"],
        "cust-1"
    );
    let deleted = app
        .post("/customer/delete", json!({"user_ids": ["cust-1"]}))
        .await;
    assert_eq!(deleted["deleted_customers"], json!(["cust-1"]));
}

/// The customer headers are the client's: a bad one is refused in bounded
/// time with a message that does not quote it, and nothing is written.
#[tokio::test]
async fn malformed_customer_headers_are_refused_and_write_nothing() {
    let app = TestApp::new().await;
    let key = app.key().window("1d", 10.0).create().await;
    let long = "c".repeat(129);
    let before = app.snapshot().await;
    for headers in [
        vec![("x-litellm-customer-id", "team#t")],
        vec![("x-litellm-customer-id", "key#abc\"}")],
        vec![("x-litellm-customer-id", long.as_str())],
        vec![
            ("x-litellm-customer-id", "a"),
            ("x-litellm-end-user-id", "b"),
        ],
    ] {
        let answer = authorize_with(&app, &key, "1", &headers).await;
        assert!(!allowed(&answer), "{answer}");
        assert_eq!(answer["context"]["reason"], "invalid_request", "{answer}");
        let message = answer["context"]["message"].as_str().unwrap();
        assert!(
            !message.contains('#') && !message.contains('"'),
            "{message}"
        );
    }
    assert_eq!(app.snapshot().await, before, "nothing was written");
}

/// Per-model budgets on a key (LiteLLM's `model_max_budget`): a request
/// naming the model in `x-litellm-model` is charged to the key's budget
/// for it (denial `model=gpt-4o on key <prefix>`); another model only to
/// the key's other caps; no model at all is refused, never charged to none.
#[tokio::test]
async fn a_keys_model_budget_caps_the_model_the_request_names() {
    let app = TestApp::new().await;
    app.user("u-model").window("1d", 100.0).create().await;
    let generated = app
        .post(
            "/key/generate",
            json!({"user_id": "u-model", "model_max_budget": {
                "gpt-4o": {"budget_limit": 5.0, "time_period": "1d"},
                "openai/o1": {"budget_limit": 1.0}
            }}),
        )
        .await;
    let key = generated["key"].as_str().unwrap().to_string();
    let prefix = budget_core::model::key_hash_prefix(&budget_core::keys::hash_key(&key));
    let gpt = [("x-litellm-model", "gpt-4o")];

    let first = authorize_with(&app, &key, "4", &gpt).await;
    assert!(allowed(&first), "{first}");
    assert_eq!(first["context"]["model"], "gpt-4o");
    app.settle(&reservation_id(&first), 4.0).await;
    let denied = authorize_with(&app, &key, "2", &gpt).await;
    assert!(!allowed(&denied), "{denied}");
    let c = &denied["context"];
    assert_eq!(c["entity"], "model");
    assert_eq!(c["entity_id"], format!("gpt-4o on key {prefix}"));
    assert!(
        c["message"].as_str().unwrap().starts_with(&format!(
            "Budget exceeded: model=gpt-4o on key {prefix} over 1d budget."
        )),
        "{denied}"
    );
    // The lifetime budget of the other model; a model without a budget.
    let o1 = authorize_with(&app, &key, "2", &[("x-litellm-model", "openai/o1")]).await;
    assert_eq!(
        o1["context"]["entity_id"],
        format!("openai/o1 on key {prefix}"),
        "{o1}"
    );
    // A model the key has no budget for (another name, a case variant, an
    // alias LiteLLM might route to a budgeted one): refused.
    for other in ["gpt-4o-mini", "GPT-4o", "openai/gpt-4o"] {
        let refused = authorize_with(&app, &key, "2", &[("x-litellm-model", other)]).await;
        assert!(!allowed(&refused), "{other}: {refused}");
        assert_eq!(
            refused["context"]["reason"], "model_not_budgeted",
            "{refused}"
        );
    }
    // No model named: refused, nothing reserved.
    let none = authorize_with(&app, &key, "1", &[]).await;
    assert!(!allowed(&none), "{none}");
    assert_eq!(none["context"]["reason"], "model_required");
    // A bad model header is refused before anything is read.
    let bad = authorize_with(&app, &key, "1", &[("x-litellm-model", "gpt#4o")]).await;
    assert_eq!(bad["context"]["reason"], "invalid_request", "{bad}");

    // Raised: admitted again; info shows each model's windows.
    app.post(
        "/key/update",
        json!({"key": key, "model_max_budget": {"gpt-4o": {"budget_limit": 50.0, "time_period": "1d"}}}),
    )
    .await;
    assert!(allowed(&authorize_with(&app, &key, "2", &gpt).await));
    let info = app.key_info(&key).await;
    let models = info["info"]["model_budgets"].as_array().unwrap();
    assert_eq!(models.len(), 1, "openai/o1 was dropped: {info}");
    let day = window_of(&models[0], "1d");
    assert_eq!(
        (
            money(&day["spend"]),
            money(&day["max_budget"]),
            money(&day["reserved"])
        ),
        (Money::usd(4), Money::usd(50), Money::usd(2))
    );
    let hash = budget_core::keys::hash_key(&key);
    assert!(app
        .store
        .load(&EntityRef::model(&hash, "openai/o1"))
        .await
        .unwrap()
        .is_none());
    // Without model budgets, the key needs no model header again; deleting
    // the key deletes its model budgets.
    app.post("/key/update", json!({"key": key, "model_max_budget": null}))
        .await;
    assert!(allowed(&authorize_with(&app, &key, "1", &[]).await));
    app.post(
        "/key/update",
        json!({"key": key, "model_max_budget": {"gpt-4o": {"budget_limit": 1.0}}}),
    )
    .await;
    app.post("/key/delete", json!({"keys": [key]})).await;
    assert!(app
        .store
        .load(&EntityRef::model(&hash, "gpt-4o"))
        .await
        .unwrap()
        .is_none());
    app.refused(
        "POST",
        "/key/generate",
        json!({"model_max_budget": {"gpt-4o": {"time_period": "1d"}}}),
        "model_max_budget",
        "budget_limit is required",
    )
    .await;
}

/// Tag budgets: `/tag/new` gives a tag windows; every request naming it in
/// `x-litellm-tags` is charged (denial `tag=<tag>`); at most 8 tags a
/// request, each an id, or the request is refused with nothing written.
#[tokio::test]
async fn each_tag_a_request_names_is_charged_and_tags_are_bounded() {
    let app = TestApp::new().await;
    let tag = app
        .post(
            "/tag/new",
            json!({"name": "prod", "description": "production", "max_budget": 3.0, "budget_duration": "1d"}),
        )
        .await;
    assert_eq!(tag["name"], "prod");
    app.post("/tag/new", json!({"name": "search", "max_budget": 100.0}))
        .await;
    app.user("u-tag").create().await;
    let k1 = app.key().user("u-tag").create().await;
    let k2 = app.key().user("u-tag").create().await;
    let tags = [("x-litellm-tags", "search, prod,prod")];
    let first = authorize_with(&app, &k1, "2", &tags).await;
    assert!(allowed(&first), "{first}");
    assert_eq!(first["context"]["tags"], "prod,search");
    app.settle(&reservation_id(&first), 2.0).await;
    let denied = authorize_with(&app, &k2, "2", &[("x-litellm-tags", "prod")]).await;
    assert!(!allowed(&denied), "{denied}");
    assert_eq!(denied["context"]["entity"], "tag");
    assert!(denied["context"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Budget exceeded: tag=prod over 1d budget."));
    // An unknown tag has no budget; other tags are not charged.
    assert!(allowed(
        &authorize_with(&app, &k2, "2", &[("x-litellm-tags", "search,unknown")]).await
    ));
    let info = app
        .post("/tag/info", json!({"names": ["prod", "search"]}))
        .await;
    assert_eq!(
        money(&window_of(&info["prod"], "1d")["spend"]),
        Money::usd(2)
    );
    assert_eq!(
        money(&window_of(&info["search"], "lifetime")["reserved"]),
        Money::usd(2)
    );
    // Bounded: nine tags or a bad one are refused (API Gateway joins a
    // repeated header with commas: more tags, bounded the same).
    let nine = (0..9)
        .map(|i| format!("t{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let before = app.snapshot().await;
    for headers in [
        vec![("x-litellm-tags", nine.as_str())],
        vec![("x-litellm-tags", "ok,team#x")],
    ] {
        let answer = authorize_with(&app, &k2, "1", &headers).await;
        assert_eq!(answer["context"]["reason"], "invalid_request", "{answer}");
    }
    assert_eq!(app.snapshot().await, before, "nothing was written");
    app.post("/tag/update", json!({"name": "prod", "max_budget": 10.0}))
        .await;
    assert!(allowed(
        &authorize_with(&app, &k2, "2", &[("x-litellm-tags", "prod")]).await
    ));
    let deleted = app.post("/tag/delete", json!({"name": "prod"})).await;
    assert_eq!(deleted["deleted_tags"], json!(["prod"]));
}
