//! What DynamoDB answers and the emulator does not: per-item throttling and
//! validation errors inside a cancelled transaction, a plain write meeting
//! a transaction, a transaction still in progress, batch reads past 100
//! keys or handed back unprocessed. The fault proxy answers as DynamoDB
//! does for the first N requests of an operation; each test asserts what a
//! user sees, and counts (never times) what was sent.

use std::time::Duration;

use budget_core::keys::hash_key;
use budget_core::model::EntityRef;
use budget_core::service::AuthorizeOutcome;
use budget_core::store::dynamo::DynamoStore;
use budget_core::store::prelude::*;
use budget_core::Money;
use chrono::Duration as Span;
use edge_budget::fault_proxy::{Answer, Reason};
use edge_budget::{at, hex_id, response_json, schedule_event};
use serde_json::{json, Value};

use crate::helpers::{authorize_via, reservation_id, TestApp, NOW};

/// Long enough for the SDK's own retries of a throttling-class error (it
/// backs off up to seconds): these tests are about what comes after.
const DEADLINE: Duration = Duration::from_secs(20);
const TOO_LARGE: &str = "Item size has exceeded the maximum allowed size";
const KEY_TOO_LONG: &str = "One or more parameter values were invalid: Size of hashkey has exceeded the maximum size limit of 2048 bytes";

/// A key of a user and a team, each with a $100 day: reserving writes
/// three entities and the reservation in one transaction.
const CHAIN: &[(&str, f64)] = &[("1d", 100.0)];

async fn reserved(app: &TestApp, refs: &[EntityRef]) -> Vec<(Money, Money)> {
    let mut out = Vec::new();
    for r in refs {
        let w = app.window(r, "1d").await;
        out.push((w.spent, w.reserved));
    }
    out
}

/// Settles through `store`; the status, the body and whether it carries
/// `Retry-After`.
async fn settle_via(app: &TestApp, store: &DynamoStore, id: &str, cost: f64) -> (u16, Value, bool) {
    let body = json!({"reservation_id": id, "cost": cost});
    let response = app
        .settle_spend_via(store, "/spend/settle", body, app.now)
        .await;
    let retry_after = response.headers().contains_key("retry-after");
    let (status, answer) = response_json(response);
    (status, answer, retry_after)
}

/// Reserves $2 for `key` through a new (cold) authorizer; the reservation id.
async fn admit(app: &TestApp, key: &str) -> String {
    let answer = authorize_via(&app.authorizer(), key, Some("2"), app.now).await;
    assert_eq!(answer["isAuthorized"], true, "{answer}");
    reservation_id(&answer)
}

#[tokio::test]
async fn throttled_items_are_retried_then_admitted() {
    let app = TestApp::new().await;
    let (key, refs) = app.chain(CHAIN).await;
    let (proxy, store) = app.proxied(DEADLINE).await;
    // As DynamoDB answers a hot partition: the transaction is cancelled,
    // one item throttled, the others `None`.
    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![Reason::None, Reason::ThrottlingError]),
        1,
    );
    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![Reason::ProvisionedThroughputExceeded]),
        1,
    );
    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![
            Reason::None,
            Reason::None,
            Reason::TransactionConflict,
        ]),
        1,
    );
    let a = app.authorizer_on(store);
    let answer = authorize_via(&a, &key, Some("2"), at(NOW)).await;
    assert_eq!(answer["isAuthorized"], true, "{answer}");
    assert_eq!(proxy.injected(), 3);
    // Four transactions: three cancelled, the fourth committed, once.
    assert_eq!(proxy.seen("TransactWriteItems"), 4);
    let two = Money::usd(2);
    assert_eq!(reserved(&app, &refs).await, vec![(Money::ZERO, two); 3]);
    println!(
        "throttled, throttled, conflict, then admitted: {} requests",
        proxy.counts().0
    );
}

#[tokio::test]
async fn transaction_in_progress_is_retried_then_admitted() {
    let app = TestApp::new().await;
    let (key, refs) = app.chain(CHAIN).await;
    let (proxy, store) = app.proxied(DEADLINE).await;
    // The SDK retries TransactionInProgressException itself (3 attempts,
    // same client token); past those, authorize backs off and sends a
    // new transaction.
    proxy.inject(
        "TransactWriteItems",
        Answer::TransactionInProgressException,
        3,
    );
    let a = app.authorizer_on(store);
    let answer = authorize_via(&a, &key, Some("2"), at(NOW)).await;
    assert_eq!(answer["isAuthorized"], true, "{answer}");
    assert_eq!(proxy.injected(), 3);
    assert_eq!(proxy.seen("TransactWriteItems"), 4);
    let two = Money::usd(2);
    assert_eq!(reserved(&app, &refs).await, vec![(Money::ZERO, two); 3]);
}

#[tokio::test]
async fn a_validation_error_denies_at_once_and_writes_nothing() {
    let app = TestApp::new().await;
    let (key, _) = app.chain(CHAIN).await;
    let (proxy, store) = app.proxied(DEADLINE).await;
    let a = app.authorizer_on(store);
    let before = app.snapshot().await;
    // Every transaction would be refused: the first refusal is the answer.
    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![
            Reason::ConditionalCheckFailed,
            Reason::ValidationError,
        ]),
        100,
    );
    let answer = authorize_via(&a, &key, Some("2"), at(NOW)).await;
    assert_eq!(answer["isAuthorized"], false, "{answer}");
    assert_eq!(answer["context"]["reason"], "unavailable");
    assert_eq!(proxy.seen("TransactWriteItems"), 1, "not retried");
    // What the log line says (the outcome's message).
    match a
        .authorize(&key, Money::usd(2), Some(&hex_id()), at(NOW))
        .await
    {
        AuthorizeOutcome::Unavailable(m) => {
            assert!(m.contains("store rejected the request"), "{m}");
            assert!(m.contains(TOO_LARGE), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(proxy.seen("TransactWriteItems"), 2);
    // A plain ValidationException on a read: the same.
    proxy.inject(
        "GetItem",
        Answer::ValidationException(KEY_TOO_LONG.into()),
        100,
    );
    let cold = app.authorizer_on(app.store_via(&proxy.endpoint(), DEADLINE));
    match cold
        .authorize(&key, Money::usd(2), Some(&hex_id()), at(NOW))
        .await
    {
        AuthorizeOutcome::Unavailable(m) => {
            assert!(m.contains("store rejected the request"), "{m}");
            assert!(m.contains(KEY_TOO_LONG), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn settle_answers_500_on_a_validation_error_and_keeps_the_reservation() {
    let app = TestApp::new().await;
    let (key, refs) = app.chain(CHAIN).await;
    let id = admit(&app, &key).await;
    let (proxy, store) = app.proxied(DEADLINE).await;
    let before = app.snapshot().await;

    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![Reason::None, Reason::ValidationError]),
        100,
    );
    let (status, answer, retry_after) = settle_via(&app, &store, &id, 1.25).await;
    println!("settle, validation error: {status} {answer}");
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["type"], "store_rejected");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("store rejected the request"), "{message}");
    assert!(message.contains(TOO_LARGE), "{message}");
    assert!(!retry_after, "no retry signal");
    assert_eq!(proxy.seen("TransactWriteItems"), 1, "not retried");
    assert_eq!(app.snapshot().await, before, "nothing written");

    // A plain ValidationException (e.g. a key past 2,048 bytes) on the read.
    proxy.inject(
        "GetItem",
        Answer::ValidationException(KEY_TOO_LONG.into()),
        100,
    );
    // (The bare id: it is read from the store, not built from a receipt.)
    let plain = budget_core::receipt::base_id(&id).to_string();
    let (status, answer, retry_after) = settle_via(&app, &store, &plain, 1.25).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["type"], "store_rejected");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains(KEY_TOO_LONG));
    assert!(!retry_after);
    assert_eq!(app.snapshot().await, before, "nothing written");

    // Once DynamoDB takes it, the reservation settles as usual.
    let (status, answer, _) = settle_via(&app, &app.store, &id, 1.25).await;
    assert_eq!(status, 200, "{answer}");
    let spent = Money::from_f64(1.25).unwrap();
    assert_eq!(reserved(&app, &refs).await, vec![(spent, Money::ZERO); 3]);
}

#[tokio::test]
async fn settle_backs_off_on_throttles_and_conflicts_without_rereading() {
    let app = TestApp::new().await;
    let (key, refs) = app.chain(CHAIN).await;
    let id = admit(&app, &key).await;
    let (proxy, store) = app.proxied(DEADLINE).await;
    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![Reason::ThrottlingError]),
        2,
    );
    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![Reason::None, Reason::TransactionConflict]),
        1,
    );
    let (status, answer, _) = settle_via(&app, &store, &id, 1.25).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], false);
    assert_eq!(proxy.injected(), 3);
    assert_eq!(proxy.seen("TransactWriteItems"), 4);
    // Nothing had moved: the same write again after a pause, no read of
    // the entities (a failed condition would read them).
    assert_eq!(proxy.seen("BatchGetItem"), 0);
    let spent = Money::from_f64(1.25).unwrap();
    assert_eq!(reserved(&app, &refs).await, vec![(spent, Money::ZERO); 3]);

    // Throttled every time: a retryable 503, nothing lost.
    let id = admit(&app, &key).await;
    let before = app.snapshot().await;
    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![Reason::ProvisionedThroughputExceeded]),
        1000,
    );
    let (status, answer, retry_after) = settle_via(&app, &store, &id, 1.0).await;
    assert_eq!(status, 503, "{answer}");
    assert!(retry_after);
    assert_eq!(proxy.seen("BatchGetItem"), 0);
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn a_failed_condition_on_settle_rereads() {
    let app = TestApp::new().await;
    let (key, refs) = app.chain(CHAIN).await;
    let id = admit(&app, &key).await;
    let (proxy, store) = app.proxied(DEADLINE).await;
    // As if a window had moved: the receipt's write and the first write
    // from the read fail their conditions; the next one reads the entities.
    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![Reason::ConditionalCheckFailed]),
        2,
    );
    let (status, answer, _) = settle_via(&app, &store, &id, 1.25).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(proxy.seen("BatchGetItem"), 1);
    let spent = Money::from_f64(1.25).unwrap();
    assert_eq!(reserved(&app, &refs).await, vec![(spent, Money::ZERO); 3]);
}

/// A GET (null body) or POST to the admin function through `store`.
async fn admin_call(store: &DynamoStore, app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let method = if body.is_null() { "GET" } else { "POST" };
    app.admin_via(store, app.now, method, path, body).await
}

#[tokio::test]
async fn admin_answers_a_refused_write_with_400_and_writes_nothing() {
    let app = TestApp::new().await;
    let (proxy, store) = app.proxied(DEADLINE).await;
    let user = format!("u-{}", hex_id());
    let before = app.snapshot().await;
    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![Reason::ValidationError]),
        100,
    );
    let (status, answer) = admin_call(
        &store,
        &app,
        "/user/new",
        json!({"user_id": user, "max_budget": 10, "budget_duration": "1d"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains(TOO_LARGE));
    assert_eq!(proxy.seen("TransactWriteItems"), 1, "not retried");
    assert_eq!(app.snapshot().await, before);

    // Created, then an update refused: 400, not "kept changing" (409).
    app.user(&user).window("1d", 10.0).create().await;
    let before = app.snapshot().await;
    let (status, answer) = admin_call(
        &store,
        &app,
        "/user/update",
        json!({"user_id": user, "max_budget": 20}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(proxy.seen("TransactWriteItems"), 2);
    assert_eq!(app.snapshot().await, before);

    // A read refused (info reads the counters and the metadata in one
    // TransactGetItems): 500 store_rejected, no retry signal.
    proxy.inject(
        "TransactGetItems",
        Answer::ValidationException(KEY_TOO_LONG.into()),
        100,
    );
    let (status, answer) = admin_call(
        &store,
        &app,
        &format!("/user/info?user_id={user}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"]["type"], "store_rejected");
}

#[tokio::test]
async fn plain_writes_retry_a_transaction_conflict() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let mut keys = Vec::new();
    for _ in 0..3 {
        let key = app.key().window("10s", 10.0).create().await;
        keys.push(EntityRef::key(hash_key(&key)));
    }
    let (proxy, store) = app.proxied(DEADLINE).await;
    // The reset job's roll-over is a plain UpdateItem: a transaction
    // (authorize, settle) on the same item answers it
    // TransactionConflictException, which the SDK does not retry.
    proxy.inject("UpdateItem", Answer::TransactionConflictException, 4);
    let later = now + Span::seconds(30);
    let summary = reset::handle(&store, &app.settings, schedule_event(), later).await;
    assert!(summary.errors.is_empty(), "{summary:?}");
    assert_eq!(summary.windows_reset, 3);
    assert_eq!(proxy.injected(), 4);
    assert_eq!(proxy.seen("UpdateItem"), 3 + 4);
    for k in &keys {
        let w = app.window(k, "10s").await;
        assert_eq!(w.reset_at, Some(at("2026-11-28T15:08:40Z")));
    }
}

#[tokio::test]
async fn reset_names_every_entity_and_reservation_it_could_not_finish() {
    let app = TestApp::with_settings(&[("RESERVATION_TTL_SECONDS", "5")]).await;
    let now = at(NOW);
    let mut names = Vec::new();
    for _ in 0..3 {
        let key = app.key().window("10s", 10.0).create().await;
        let answer = app.authorize(&key, Some("1")).await;
        assert_eq!(answer["isAuthorized"], true);
        names.push(budget_core::model::key_hash_prefix(&hash_key(&key)));
    }
    let (proxy, store) = app.proxied(DEADLINE).await;
    // Every roll-over finds its entity moved (re-read, try again, ...), and
    // every release is throttled.
    proxy.inject("UpdateItem", Answer::ConditionalCheckFailedException, 1000);
    proxy.inject(
        "TransactWriteItems",
        Answer::Cancelled(vec![Reason::ThrottlingError]),
        1000,
    );
    let later = now + Span::seconds(30);
    let summary = reset::handle(&store, &app.settings, schedule_event(), later).await;
    println!("{summary:#?}");
    assert_eq!(summary.windows_reset, 0);
    assert_eq!(summary.reservations_released, 0);
    assert_eq!(summary.errors.len(), 6, "{summary:?}");
    for name in &names {
        assert!(
            summary
                .errors
                .iter()
                .any(|e| e.contains(name.as_str()) && e.contains("not rolled")),
            "{name}: {summary:?}"
        );
    }
    assert_eq!(
        summary
            .errors
            .iter()
            .filter(|e| e.starts_with("reservation ") && e.contains("not released"))
            .count(),
        3
    );
}

#[tokio::test]
async fn load_many_reads_past_100_keys_and_unprocessed_keys() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let mut refs = Vec::new();
    for i in 0..250 {
        let r = EntityRef::user(format!("u-{i:03}-{}", hex_id()));
        app.create(r.clone(), &[("1d", 1.0)], None, None, now).await;
        refs.push(r);
    }
    refs.sort();
    let loaded = app.store.load_many(&refs).await.expect("250 entities");
    assert_eq!(
        loaded.iter().map(|e| e.entity.clone()).collect::<Vec<_>>(),
        refs
    );

    // DynamoDB hands keys back unprocessed (throttling, 16 MB): asked again.
    let (proxy, store) = app.proxied(DEADLINE).await;
    proxy.inject("BatchGetItem", Answer::Unprocessed, 2);
    let loaded = store.load_many(&refs).await.expect("250 entities");
    assert_eq!(loaded.len(), 250);
    // 3 requests of at most 100 keys, 2 of them answered "unprocessed"
    // and sent again.
    assert_eq!(proxy.seen("BatchGetItem"), 5);

    // Never processed: an error, not a short answer.
    proxy.inject("BatchGetItem", Answer::Unprocessed, 1000);
    let error = store.load_many(&refs).await.unwrap_err();
    assert!(error.to_string().contains("unprocessed"), "{error}");
}
