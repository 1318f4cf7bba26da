//! A key holder is untrusted: it controls every header it sends. Each test
//! is an attack tried against main before the hardening (see
//! docs/security.md), and what a user sees now. The admin-side attacks
//! (suffix routes, typos in money fields, hostile ids) are in
//! tests/e2e/admin_hardening.rs.

use std::time::Duration;

use budget_core::model::{Entity, EntityRef};
use budget_core::service::Authorizer;
use budget_core::store::{prelude::*, AdminWrite};
use budget_core::Money;
use edge_budget::fault_proxy::{Fault, FaultProxy};
use edge_budget::{at, hex_id, http_api_event};
use serde_json::{json, Value};

use crate::helpers::{authorize_via, emulator, reservation_id, usd, TestApp, NOW};

/// Sets an entity's reservation floor through the store.
async fn set_floor(app: &TestApp, entity: &EntityRef, floor: Money) {
    let old = app.store.load(entity).await.unwrap().unwrap();
    let new = Entity {
        reservation_floor: Some(floor),
        ..old.clone()
    };
    assert_eq!(
        app.store.update(&old, &new).await.unwrap(),
        AdminWrite::Done
    );
}

#[tokio::test]
async fn a_zero_estimate_reserves_the_floor_so_concurrency_cannot_overspend_past_the_bound() {
    // Before: 20 concurrent requests with `x-budget-reserve: 0` on a $1
    // window were all admitted and, settled at $0.50 each, spent $10.
    let app = TestApp::new().await;
    let now = at(NOW);
    let user = EntityRef::user("u-floor");
    app.create(user.clone(), &[("1d", 1.0)], None, None, now)
        .await;
    set_floor(&app, &user, Money::from_f64(0.25).unwrap()).await;
    let key = app.key().user("u-floor").create().await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (store, settings, key) = (app.store.clone(), app.settings.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            // Each request on an instance of its own (cold, concurrent).
            let a = Authorizer::new(store, settings);
            authorize_via(&a, &key, Some("0"), at(NOW)).await
        }));
    }
    let mut admitted = Vec::new();
    for task in tasks {
        let answer = task.await.unwrap();
        if answer["isAuthorized"] == true {
            assert_eq!(usd(&answer["context"]["reserved"]), 0.25);
            admitted.push(reservation_id(&answer));
        } else {
            // Contention may make a request give up (fail closed); nothing
            // else refuses it but the budget.
            let reason = answer["context"]["reason"].as_str().unwrap_or_default();
            assert!(
                ["budget_exceeded", "unavailable"].contains(&reason),
                "{answer}"
            );
        }
    }
    // floor f = $0.25 on $1 remaining: at most ⌊1 / 0.25⌋ = 4 in flight.
    assert!(admitted.len() <= 4, "admitted {}", admitted.len());
    // One at a time, the rest of the room is taken, then the budget denies.
    loop {
        let answer = app.authorize(&key, Some("0")).await;
        if answer["isAuthorized"] != true {
            assert_eq!(answer["context"]["reason"], "budget_exceeded", "{answer}");
            break;
        }
        admitted.push(reservation_id(&answer));
    }
    assert_eq!(admitted.len(), 4, "admitted {}", admitted.len());
    for id in &admitted {
        assert_eq!(app.settle(id, 0.5).await.0, 200);
    }
    let w = app.window(&user, "1d").await;
    // The overspend is what those 4 cost beyond their reservations: $1.
    assert_eq!(w.spent, Money::usd(2));
    assert_eq!(w.reserved, Money::ZERO);
}

#[tokio::test]
async fn headers_that_ask_for_nothing_reserve_the_floor() {
    let app = TestApp::with_settings(&[("MIN_RESERVATION_USD", "0.1")]).await;
    let key = app.key().window("1d", 100.0).create().await;
    for header in ["0", "-1", "1e-12", "0e2147483647", "-0", "0.0000000001"] {
        let answer = app.authorize(&key, Some(header)).await;
        assert_eq!(answer["isAuthorized"], true, "{header}");
        assert_eq!(usd(&answer["context"]["reserved"]), 0.1, "{header}");
    }
    // Raising is allowed, up to the maximum; huge values get the maximum.
    let answer = app.authorize(&key, Some("2.5")).await;
    assert_eq!(usd(&answer["context"]["reserved"]), 2.5);
    for huge in ["1e2147483647", "1e99999999999", "5000000000"] {
        let answer = app.authorize(&key, Some(huge)).await;
        assert_eq!(answer["isAuthorized"], true, "{answer}");
        assert_eq!(
            usd(&answer["context"]["reserved"]),
            10.0,
            "{huge}: the maximum"
        );
    }
    // A floor on the key lifts it for that key only.
    set_floor(
        &app,
        &EntityRef::key(budget_core::keys::hash_key(&key)),
        Money::from_f64(0.3).unwrap(),
    )
    .await;
    // A new instance: a cold cache reads the floor.
    let a = app.authorizer();
    let answer = authorize_via(&a, &key, Some("0"), app.now).await;
    assert_eq!(usd(&answer["context"]["reserved"]), 0.3);
}

#[tokio::test]
async fn hostile_estimate_text_is_refused_with_a_short_message() {
    let app = TestApp::new().await;
    let key = app.key().window("1d", 10.0).create().await;
    let digits = "9".repeat(100_000);
    for header in ["abc", "1e+-5", "0x10", digits.as_str()] {
        let answer = app.authorize(&key, Some(header)).await;
        assert_eq!(answer["isAuthorized"], false);
        assert_eq!(answer["context"]["reason"], "invalid_request");
        let message = answer["context"]["message"].as_str().unwrap();
        assert!(message.len() < 200, "{} bytes", message.len());
    }
    // An unknown key with the header that took 2.4 s of CPU before (its
    // work is counted in money.rs, its CPU in benches/cpu.rs): refused as
    // an unknown key.
    let answer = app
        .authorize("sk-unknown-key-0123456789abcdef", Some("0e2147483647"))
        .await;
    assert_eq!(answer["context"]["reason"], "invalid_key");
}

#[tokio::test]
async fn a_recreated_key_is_never_taken_for_the_one_before_it() {
    // Before: a warm authorizer admitted the re-created (blocked) key and
    // charged the old user's window, where nothing ever released it.
    let app = TestApp::new().await;
    let now = at(NOW);
    app.user("u-old").window("1d", 10.0).create().await;
    app.user("u-new").window("1d", 10.0).create().await;
    let key = "sk-custom-key-recreated-0123456789abcdef";
    let key_ref = EntityRef::key(budget_core::keys::hash_key(key));
    let mut k = Entity::new(key_ref.clone(), now);
    k.user_id = Some("u-old".into());
    assert_eq!(app.store.create(&k).await.unwrap(), AdminWrite::Done);
    let first = app.authorize(key, Some("1")).await;
    assert_eq!(first["isAuthorized"], true);
    let id = reservation_id(&first);
    assert_eq!(app.settle(&id, 1.0).await.0, 200);

    let old = app.store.load(&key_ref).await.unwrap().unwrap();
    assert_eq!(app.store.delete(&old).await.unwrap(), AdminWrite::Done);
    let mut again = Entity::new(key_ref.clone(), now);
    again.user_id = Some("u-new".into());
    again.blocked = true;
    assert_eq!(app.store.create(&again).await.unwrap(), AdminWrite::Done);

    let answer = app.authorize(key, Some("1")).await;
    assert_eq!(answer["isAuthorized"], false, "{answer}");
    assert_eq!(answer["context"]["reason"], "key_blocked");
    let w = app.window(&EntityRef::user("u-old"), "1d").await;
    assert_eq!((w.spent, w.reserved), (Money::usd(1), Money::ZERO));
    let w = app.window(&EntityRef::user("u-new"), "1d").await;
    assert_eq!((w.spent, w.reserved), (Money::ZERO, Money::ZERO));
}

#[tokio::test]
async fn a_settle_after_re_creation_leaves_the_new_entity_alone() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let user = EntityRef::user("u-reborn");
    app.create(user.clone(), &[("1d", 10.0)], None, None, now)
        .await;
    let key = app.key().user("u-reborn").create().await;
    let answer = app.authorize(&key, Some("2")).await;
    let id = reservation_id(&answer);
    // The key, then its user, are deleted; the user is created again.
    let key_ref = EntityRef::key(budget_core::keys::hash_key(&key));
    let k = app.store.load(&key_ref).await.unwrap().unwrap();
    assert_eq!(app.store.delete(&k).await.unwrap(), AdminWrite::Done);
    let u = app.store.load(&user).await.unwrap().unwrap();
    assert_eq!(app.store.delete(&u).await.unwrap(), AdminWrite::Done);
    app.create(user.clone(), &[("1d", 10.0)], None, None, now)
        .await;
    // The old request settles (with its receipt, and by bare id).
    let (status, first) = app.settle(&id, 3.0).await;
    assert_eq!(
        (status, &first["duplicate"]),
        (200, &json!(false)),
        "{first}"
    );
    let (status, again) = app.settle(budget_core::receipt::base_id(&id), 3.0).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );
    let w = app.window(&user, "1d").await;
    assert_eq!((w.spent, w.reserved), (Money::ZERO, Money::ZERO));
}

#[tokio::test]
async fn huge_settles_leave_the_user_readable_denied_and_repairable() {
    // Before: ten settles of $1e9 made the user item unreadable (503
    // "corrupt item"), every key of the user `unavailable`, and the admin
    // API unable to repair it.
    let app = TestApp::new().await;
    let (status, _) = app.admin("POST",
        "/user/new",
        json!({"user_id": "u-huge", "budget_limits": [{"budget_duration": "1d", "max_budget": 1000000}]}),
    )
    .await;
    assert_eq!(status, 200);
    let key = app.key().user("u-huge").create().await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let answer = app.authorize(&key, Some("1")).await;
        assert_eq!(answer["isAuthorized"], true);
        ids.push(reservation_id(&answer));
    }
    for id in &ids {
        assert_eq!(app.settle(id, 1e9).await.0, 200);
    }
    let (status, info) = app
        .admin("GET", "/user/info?user_id=u-huge", Value::Null)
        .await;
    assert_eq!(status, 200, "{info}");
    let answer = app.authorize(&key, Some("1")).await;
    assert_eq!(answer["context"]["reason"], "budget_exceeded", "{answer}");
    // Repair: the window removed, then given again, starts empty.
    let (status, _) = app
        .admin(
            "POST",
            "/user/update",
            json!({"user_id": "u-huge", "budget_limits": []}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.admin("POST",
        "/user/update",
        json!({"user_id": "u-huge", "budget_limits": [{"budget_duration": "1d", "max_budget": 100}]}),
    )
    .await;
    assert_eq!(status, 200);
    let answer = app.authorize(&key, Some("1")).await;
    assert_eq!(answer["isAuthorized"], true, "{answer}");
}

#[tokio::test]
async fn a_retried_authorization_gets_its_first_answer_whatever_the_budget_says() {
    // Before: the retry of a $1 request on a $1 window was denied by its
    // own reservation; on a larger window its `remaining` subtracted the
    // estimate twice.
    let app = TestApp::new().await;
    let now = at(NOW);
    let full = app.key().window("1d", 1.0).create().await;
    let roomy = app.key().window("1d", 5.0).create().await;
    for (key, remaining) in [(&full, 0.0), (&roomy, 4.0)] {
        let request_id = hex_id();
        let warm = app.authorizer();
        let event = http_api_event(key, Some("1"), &request_id);
        let first = authorize::handle(&warm, event.clone(), now).await.unwrap();
        assert_eq!(first["isAuthorized"], true);
        assert_eq!(usd(&first["context"]["remaining"]), remaining);
        // The same instance, and another (cold) one, see the retry.
        let cold = app.authorizer();
        for a in [&warm, &cold] {
            let retry = authorize::handle(a, event.clone(), now).await.unwrap();
            assert_eq!(retry["isAuthorized"], true, "{retry}");
            assert_eq!(
                retry["context"]["reservation_id"],
                first["context"]["reservation_id"]
            );
            assert_eq!(usd(&retry["context"]["remaining"]), remaining);
            assert_eq!(
                retry["context"]["tightest_window"],
                first["context"]["tightest_window"]
            );
        }
        let w = app
            .window(&EntityRef::key(budget_core::keys::hash_key(key)), "1d")
            .await;
        assert_eq!(w.reserved, Money::usd(1), "reserved once");
    }
}

#[tokio::test]
async fn only_bearer_credentials_are_keys() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let key = app.key().window("1d", 5.0).create().await;
    let mut event = http_api_event(&key, None, &hex_id());
    event["headers"]["authorization"] = json!(format!("Basic {key}"));
    let answer = authorize::handle(&app.authorizer, event.clone(), now)
        .await
        .unwrap();
    assert_eq!(answer["context"]["reason"], "invalid_key");
    event["headers"]["x-api-key"] = json!(key);
    let answer = authorize::handle(&app.authorizer, event, now)
        .await
        .unwrap();
    assert_eq!(answer["isAuthorized"], true);
    // A key longer than any key can be is refused without a lookup.
    let emulator = emulator();
    let proxy = FaultProxy::start(&emulator).await;
    let counted = Authorizer::new(
        app.store_via(&proxy.endpoint(), Duration::from_secs(5)),
        app.settings.clone(),
    );
    let long = format!("sk-{}", "a".repeat(10_000));
    let answer = authorize_via(&counted, &long, None, app.now).await;
    assert_eq!(answer["context"]["reason"], "invalid_key");
    assert_eq!(proxy.seen("GetItem"), 0, "no lookup");
    // (An unknown key of a plausible length is looked up: the count moves.)
    let answer = authorize_via(
        &counted,
        "sk-plausible-but-unknown-0123456789",
        None,
        app.now,
    )
    .await;
    assert_eq!(answer["context"]["reason"], "invalid_key");
    assert_eq!(proxy.seen("GetItem"), 1);
}

#[tokio::test]
async fn one_authorization_ends_within_its_deadline() {
    let app = TestApp::with_settings(&[("AUTHORIZE_DEADLINE_MS", "300")]).await;
    let key = app.key().window("1d", 5.0).create().await;
    let emulator = emulator();
    let proxy = FaultProxy::start(&emulator).await;
    // Each store request may take 10 s; the authorization may not.
    let store = app.store_via(&proxy.endpoint(), Duration::from_secs(10));
    let a = app.authorizer_on(store);
    // Without the deadline this waits the 2 s out and admits.
    proxy.set(Fault::Delay(Duration::from_secs(2)));
    let answer = authorize_via(&a, &key, None, app.now).await;
    assert_eq!(answer["isAuthorized"], false);
    assert_eq!(answer["context"]["reason"], "unavailable");
    proxy.set(Fault::Pass);
}

#[tokio::test]
async fn a_retry_after_the_key_was_blocked_is_refused() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let key = app.key().window("1d", 5.0).create().await;
    let event = http_api_event(&key, Some("1"), &hex_id());
    let first = authorize::handle(&app.authorizer, event.clone(), now)
        .await
        .unwrap();
    assert_eq!(first["isAuthorized"], true);
    let key_ref = EntityRef::key(budget_core::keys::hash_key(&key));
    let old = app.store.load(&key_ref).await.unwrap().unwrap();
    let blocked = Entity {
        blocked: true,
        ..old.clone()
    };
    assert_eq!(
        app.store.update(&old, &blocked).await.unwrap(),
        AdminWrite::Done
    );
    let retry = authorize::handle(&app.authorizer, event, now)
        .await
        .unwrap();
    assert_eq!(retry["context"]["reason"], "key_blocked", "{retry}");
}
