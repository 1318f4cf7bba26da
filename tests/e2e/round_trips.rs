//! How many DynamoDB requests each operation makes, counted by an SDK
//! interceptor on the client the store uses (one count per request sent,
//! retries included), against the emulator started by scripts/test.sh.
//!
//! The figures are the ones docs/performance.md explains: a warm
//! authorize is one conditional transaction; a cold one reads the key
//! (which carries a snapshot of its owners' limits), then writes; settle is
//! one write built from the receipt in the reservation id (a bare id reads
//! the reservation first). A changed limit takes effect on the very next
//! request, cached chain or not.

use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use budget_core::model::EntityRef;
use budget_core::store::dynamo::DynamoStore;
use budget_core::store::{prelude::*, AdminWrite};
use budget_core::Money;

use edge_budget::{at, response_json};
use serde_json::json;

use crate::helpers::{
    allowed, authorize_via, operation_of, reservation_id, store_with, TestApp, NOW,
};

/// Records the operation of every request the client sends (the
/// `X-Amz-Target` header, `DynamoDB_20120810.GetItem` → `GetItem`).
#[derive(Debug, Clone, Default)]
struct RequestLog(Arc<Mutex<Vec<String>>>);

impl RequestLog {
    /// The operations sent since the last call, in order.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().expect("request log"))
    }
}

impl Intercept for RequestLog {
    fn name(&self) -> &'static str {
        "RequestLog"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = operation_of(context);
        self.0.lock().expect("request log").push(operation);
        Ok(())
    }
}

/// The test table's store, on a client that logs its requests.
fn counted_store(app: &TestApp) -> (DynamoStore, RequestLog) {
    let log = RequestLog::default();
    (store_with(app, log.clone()), log)
}

/// A user and a team with three windows each, and a key of both with
/// three windows of its own (the tightest: 1d 100): the chain the figures
/// are about.
async fn chain(app: &TestApp, user: &str, team: &str) -> String {
    let owners = [("1d", 200.0), ("7d", 1000.0), ("30d", 2000.0)];
    app.user(user).windows(&owners).create().await;
    app.team(team).windows(&owners).create().await;
    let key = [("1d", 100.0), ("7d", 500.0), ("30d", 1000.0)];
    app.key().user(user).team(team).windows(&key).create().await
}

fn ops(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn cold_authorize_is_two_requests_warm_is_one_settle_is_one() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let key = chain(&app, "user-rt", "team-rt").await;
    let (store, log) = counted_store(&app);
    let authorizer = app.authorizer_on(store.clone());
    log.take();

    let first = authorize_via(&authorizer, &key, Some("1"), now).await;
    assert!(allowed(&first), "{first}");
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "cold authorize: read the key (it carries its owners' limits), reserve"
    );

    let second = authorize_via(&authorizer, &key, Some("1"), now).await;
    assert!(allowed(&second), "{second}");
    assert_eq!(
        log.take(),
        ops(&["TransactWriteItems"]),
        "warm authorize: the one conditional transaction"
    );

    for _ in 0..5 {
        assert!(allowed(
            &authorize_via(&authorizer, &key, Some("1"), now).await
        ));
        assert_eq!(log.take(), ops(&["TransactWriteItems"]));
    }

    let id = reservation_id(&second);
    let body = json!({"reservation_id": id, "cost": 0.25}).to_string();
    let (status, answer) = response_json(
        app.settle_spend_via(&store, "/spend/settle", &body, now)
            .await,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], json!(false));
    assert_eq!(
        log.take(),
        ops(&["TransactWriteItems"]),
        "settle: one write, built from the receipt in the reservation id"
    );

    // The same settle again: the receipt's write is refused (no longer
    // held), one read finds it settled; nothing is written.
    let (status, answer) = response_json(
        app.settle_spend_via(&store, "/spend/settle", &body, now)
            .await,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], json!(true));
    assert_eq!(log.take(), ops(&["TransactWriteItems", "GetItem"]));

    // A bare id (no receipt) still settles: read, then write.
    let third = authorize_via(&authorizer, &key, Some("1"), now).await;
    let bare = budget_core::receipt::base_id(third["context"]["reservation_id"].as_str().unwrap())
        .to_string();
    log.take();
    let body = json!({"reservation_id": bare, "cost": 0}).to_string();
    let (status, answer) = response_json(
        app.settle_spend_via(&store, "/spend/release", &body, now)
            .await,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(log.take(), ops(&["GetItem", "TransactWriteItems"]));

    // A forged receipt (another amount) on a real id changes nothing: its
    // write is refused by the digest, and the stored reservation is used.
    let fourth = authorize_via(&authorizer, &key, Some("1"), now).await;
    let real = reservation_id(&fourth);
    let mut forged = budget_core::receipt::from_receipt(&real, now).unwrap();
    forged.amount = Money::usd(5);
    forged.receipt_digest = Some("x".into());
    forged.receipt = None;
    let forged_id = format!(
        "{}.{}",
        forged.id,
        budget_core::receipt::external_id(&forged)
            .split_once('.')
            .unwrap()
            .1
    );
    assert_ne!(forged_id, real);
    log.take();
    let body = json!({"reservation_id": forged_id, "cost": 0}).to_string();
    let (status, answer) = response_json(
        app.settle_spend_via(&store, "/spend/settle", &body, now)
            .await,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        log.take(),
        ops(&["TransactWriteItems", "GetItem", "TransactWriteItems"])
    );

    let user = app.window(&EntityRef::user("user-rt"), "1d").await;
    assert_eq!(user.spent, Money::parse_decimal("0.25").unwrap());
    // 7 taken (1 each), the second settled: 6 held; the third and fourth
    // were released again, so 6 are still held.
    assert_eq!(user.reserved, Money::usd(6));
}

#[tokio::test]
async fn a_lowered_limit_denies_the_very_next_warm_request() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let key = chain(&app, "user-lim", "team-lim").await;
    let (store, log) = counted_store(&app);
    let authorizer = app.authorizer_on(store.clone());
    for _ in 0..2 {
        assert!(allowed(
            &authorize_via(&authorizer, &key, Some("10"), now).await
        ));
    }
    log.take();

    // An admin lowers the team's 1d limit below what is reserved (20) —
    // through another client: this function instance is not told.
    let team = EntityRef::team("team-lim");
    let old = app
        .store
        .load(&team)
        .await
        .expect("load")
        .expect("team exists");
    let mut new = old.clone();
    for w in &mut new.windows {
        if w.id() == "1d" {
            w.max = Money::usd(25);
        }
    }
    assert_eq!(
        app.store.update(&old, &new).await.expect("update"),
        AdminWrite::Done
    );

    // The cache still says 1d: 100 (20 used) and would admit 10 more; the
    // write is conditional on the team's version, so it is refused, the
    // chain is read again, and the request is denied against the new 25.
    let answer = authorize_via(&authorizer, &key, Some("10"), now).await;
    assert!(!allowed(&answer), "{answer}");
    let c = &answer["context"];
    assert_eq!(c["reason"], json!("budget_exceeded"), "{answer}");
    assert_eq!(c["entity"], json!("team"), "{answer}");
    assert_eq!(c["budget_duration"], json!("1d"), "{answer}");
    assert_eq!(c["max_budget"], json!(25.0), "{answer}");
    assert_eq!(
        log.take(),
        ops(&["TransactWriteItems", "GetItem", "BatchGetItem"]),
        "stale cache: the refused write, then a fresh read of the chain (and of the request's own reservation, if a retry)"
    );
    assert_eq!(app.window(&team, "1d").await.reserved, Money::usd(20));

    // Memory now holds the new limit: a request that fits is one write.
    let answer = authorize_via(&authorizer, &key, Some("5"), now).await;
    assert!(allowed(&answer), "{answer}");
    assert_eq!(log.take(), ops(&["TransactWriteItems"]));

    // The team is now full (25 of 25). A new (cold) instance reads the key
    // and its snapshot of the team's limits, and still cannot admit.
    let cold = app.authorizer_on(store.clone());
    let answer = authorize_via(&cold, &key, Some("0.5"), now).await;
    assert!(!allowed(&answer), "{answer}");
    assert_eq!(answer["context"]["max_budget"], json!(25.0), "{answer}");
    log.take();

    // Raised again. The update does not rewrite the snapshots of the
    // team's keys (that would be a write per key inside the admin
    // request): the first cold instance finds the snapshot out of date —
    // its write is refused by the team's version — reads the chain,
    // refreshes the key's snapshot (one UpdateItem) and admits; every cold
    // instance after it admits with one read and one write again.
    let old = app.store.load(&team).await.expect("load").expect("team");
    let mut new = old.clone();
    for w in &mut new.windows {
        if w.id() == "1d" {
            w.max = Money::usd(100);
        }
    }
    assert_eq!(
        app.store.update(&old, &new).await.expect("update"),
        AdminWrite::Done
    );
    log.take();
    let cold = app.authorizer_on(store.clone());
    let answer = authorize_via(&cold, &key, Some("0.5"), now).await;
    assert!(allowed(&answer), "{answer}");
    assert_eq!(
        log.take(),
        ops(&[
            "GetItem",
            "TransactWriteItems",
            "GetItem",
            "BatchGetItem",
            "UpdateItem",
            "TransactWriteItems"
        ])
    );
    let cold = app.authorizer_on(store.clone());
    let answer = authorize_via(&cold, &key, Some("0.5"), now).await;
    assert!(allowed(&answer), "{answer}");
    assert_eq!(log.take(), ops(&["GetItem", "TransactWriteItems"]));
}

#[tokio::test]
async fn spend_by_another_instance_costs_a_warm_instance_one_refused_write() {
    let app = TestApp::new().await;
    let now = at(NOW);
    let key = chain(&app, "user-two", "team-two").await;
    let (store, log) = counted_store(&app);
    let warm = app.authorizer_on(store);
    assert!(allowed(&authorize_via(&warm, &key, Some("10"), now).await));

    // Another instance (its own memory) takes the rest of the key's 1d.
    let other = app.authorizer();
    for _ in 0..9 {
        assert!(allowed(&authorize_via(&other, &key, Some("10"), now).await));
    }
    log.take();

    let answer = authorize_via(&warm, &key, Some("10"), now).await;
    assert!(!allowed(&answer), "{answer}");
    assert_eq!(answer["context"]["entity"], json!("key"), "{answer}");
    assert_eq!(
        log.take(),
        ops(&["TransactWriteItems", "GetItem", "BatchGetItem"]),
        "the full window refuses the write; a fresh read names it"
    );

    // Now memory knows the window is full: a denial without a write, from
    // a fresh read (memory alone never denies).
    let answer = authorize_via(&warm, &key, Some("10"), now).await;
    assert!(!allowed(&answer), "{answer}");
    assert_eq!(log.take(), ops(&["GetItem", "BatchGetItem"]));
}

/// The wider chain costs a cold authorizer nothing more: the key's
/// snapshot carries its team's organization and the user's budget in the
/// team (or that there is none), so a request is still one read and one
/// write, however many scopes govern it.
#[tokio::test]
async fn a_chain_up_to_the_organization_is_still_one_read_and_one_write() {
    let app = TestApp::new().await;
    let now = at(NOW);
    app.post(
        "/organization/new",
        json!({"organization_id": "org-rt", "max_budget": 10.0, "budget_duration": "1d"}),
    )
    .await;
    app.post(
        "/team/new",
        json!({"team_id": "team-ort", "organization_id": "org-rt"}),
    )
    .await;
    app.user("user-ort").window("1d", 10.0).create().await;
    app.user("user-mrt").create().await;
    // (A member budget's creation bumps its team's version: keys made
    // before it refresh their snapshot once, on their next cold read.)
    app.post(
        "/team/member_add",
        json!({"team_id": "team-ort", "member": {"user_id": "user-mrt"}, "max_budget_in_team": 5.0}),
    )
    .await;
    let without_member = app.key().user("user-ort").team("team-ort").create().await;
    let with_member = app.key().user("user-mrt").team("team-ort").create().await;
    for key in [without_member, with_member] {
        let (store, log) = counted_store(&app);
        let authorizer = app.authorizer_on(store);
        log.take();
        let first = authorize_via(&authorizer, &key, Some("1"), now).await;
        assert!(allowed(&first), "{first}");
        assert_eq!(log.take(), ops(&["GetItem", "TransactWriteItems"]));
    }
    let org = app.window(&EntityRef::organization("org-rt"), "1d").await;
    assert_eq!(org.reserved, Money::usd(2));
}
