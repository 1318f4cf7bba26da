//! How many DynamoDB requests each operation makes, counted by an SDK
//! interceptor on the client the store uses (one count per request sent,
//! retries included), against the emulator started by scripts/test.sh.
//!
//! The figures are the ones docs/performance.md explains: a warm
//! authorize is one conditional transaction; a cold one reads the key,
//! then its user and team, then writes; settle reads the reservation, then
//! writes. A changed limit takes effect on the very next request, cached
//! chain or not.

use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use budget_core::model::EntityRef;
use budget_core::service::Authorizer;
use budget_core::store::dynamo::DynamoStore;
use budget_core::store::{AdminWrite, Store};
use budget_core::Money;
use chrono::{DateTime, Utc};
use edge_budget::{at, hex_id, http_api_event, http_request, response_json, TestTable};
use serde_json::{json, Value};

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
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("?");
        let operation = target.rsplit('.').next().unwrap_or(target).to_string();
        self.0.lock().expect("request log").push(operation);
        Ok(())
    }
}

/// The test table's store, on a client that logs its requests.
fn counted_store(t: &TestTable) -> (DynamoStore, RequestLog) {
    let log = RequestLog::default();
    let config = t
        .client
        .config()
        .to_builder()
        .interceptor(log.clone())
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    (DynamoStore::new(client, t.store.table()), log)
}

const NOW: &str = "2026-11-28T15:08:00Z";

/// A user and a team with three windows each, and a key of both with
/// three windows of its own (the tightest: 1d 100): the chain the figures
/// are about.
async fn chain(t: &TestTable, now: DateTime<Utc>, user: &str, team: &str) -> String {
    let owners = [("1d", 200.0), ("7d", 1000.0), ("30d", 2000.0)];
    t.create(EntityRef::user(user), &owners, None, None, now)
        .await;
    t.create(EntityRef::team(team), &owners, None, None, now)
        .await;
    let key = [("1d", 100.0), ("7d", 500.0), ("30d", 1000.0)];
    t.key(&key, Some(user), Some(team), now).await
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

fn ops(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn cold_authorize_is_two_requests_warm_is_one_settle_is_one() {
    let t = TestTable::new().await;
    let now = at(NOW);
    let key = chain(&t, now, "user-rt", "team-rt").await;
    let (store, log) = counted_store(&t);
    let authorizer = Authorizer::new(store.clone(), t.settings.clone());
    log.take();

    let first = authorize(&authorizer, &key, "1", now).await;
    assert!(allowed(&first), "{first}");
    assert_eq!(
        log.take(),
        ops(&["GetItem", "TransactWriteItems"]),
        "cold authorize: read the key (it carries its owners' limits), reserve"
    );

    let second = authorize(&authorizer, &key, "1", now).await;
    assert!(allowed(&second), "{second}");
    assert_eq!(
        log.take(),
        ops(&["TransactWriteItems"]),
        "warm authorize: the one conditional transaction"
    );

    for _ in 0..5 {
        assert!(allowed(&authorize(&authorizer, &key, "1", now).await));
        assert_eq!(log.take(), ops(&["TransactWriteItems"]));
    }

    let id = second["context"]["reservation_id"]
        .as_str()
        .expect("reservation id")
        .to_string();
    let body = json!({"reservation_id": id, "cost": 0.25}).to_string();
    let (status, answer) = response_json(
        settle_spend::handle(
            &store,
            &t.settings,
            http_request("POST", "/spend/settle", &body, &[]),
            now,
        )
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
        settle_spend::handle(
            &store,
            &t.settings,
            http_request("POST", "/spend/settle", &body, &[]),
            now,
        )
        .await,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["duplicate"], json!(true));
    assert_eq!(log.take(), ops(&["TransactWriteItems", "GetItem"]));

    // A bare id (no receipt) still settles: read, then write.
    let third = authorize(&authorizer, &key, "1", now).await;
    let bare = budget_core::receipt::base_id(third["context"]["reservation_id"].as_str().unwrap())
        .to_string();
    log.take();
    let body = json!({"reservation_id": bare, "cost": 0}).to_string();
    let (status, answer) = response_json(
        settle_spend::handle(
            &store,
            &t.settings,
            http_request("POST", "/spend/release", &body, &[]),
            now,
        )
        .await,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(log.take(), ops(&["GetItem", "TransactWriteItems"]));

    // A forged receipt (another amount) on a real id changes nothing: its
    // write is refused by the digest, and the stored reservation is used.
    let fourth = authorize(&authorizer, &key, "1", now).await;
    let real = fourth["context"]["reservation_id"]
        .as_str()
        .unwrap()
        .to_string();
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
        settle_spend::handle(
            &store,
            &t.settings,
            http_request("POST", "/spend/settle", &body, &[]),
            now,
        )
        .await,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        log.take(),
        ops(&["TransactWriteItems", "GetItem", "TransactWriteItems"])
    );

    let user = t.window(&EntityRef::user("user-rt"), "1d").await;
    assert_eq!(user.spent, Money::parse_decimal("0.25").unwrap());
    // 6 held before; the third and fourth reservations (1 each) released.
    assert_eq!(user.reserved, Money::usd(6));
}

#[tokio::test]
async fn a_lowered_limit_denies_the_very_next_warm_request() {
    let t = TestTable::new().await;
    let now = at(NOW);
    let key = chain(&t, now, "user-lim", "team-lim").await;
    let (store, log) = counted_store(&t);
    let authorizer = Authorizer::new(store.clone(), t.settings.clone());
    for _ in 0..2 {
        assert!(allowed(&authorize(&authorizer, &key, "10", now).await));
    }
    log.take();

    // An admin lowers the team's 1d limit below what is reserved (20) —
    // through another client: this function instance is not told.
    let team = EntityRef::team("team-lim");
    let old = t
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
        t.store.update(&old, &new).await.expect("update"),
        AdminWrite::Done
    );

    // The cache still says 1d: 100 (20 used) and would admit 10 more; the
    // write is conditional on the team's version, so it is refused, the
    // chain is read again, and the request is denied against the new 25.
    let answer = authorize(&authorizer, &key, "10", now).await;
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
    assert_eq!(t.window(&team, "1d").await.reserved, Money::usd(20));

    // Memory now holds the new limit: a request that fits is one write.
    let answer = authorize(&authorizer, &key, "5", now).await;
    assert!(allowed(&answer), "{answer}");
    assert_eq!(log.take(), ops(&["TransactWriteItems"]));

    // The team is now full (25 of 25). A new (cold) instance reads the key
    // and its snapshot of the team's limits, and still cannot admit.
    let cold = Authorizer::new(store.clone(), t.settings.clone());
    let answer = authorize(&cold, &key, "0.5", now).await;
    assert!(!allowed(&answer), "{answer}");
    assert_eq!(answer["context"]["max_budget"], json!(25.0), "{answer}");
    log.take();

    // Raised again: the update refreshed the snapshot in the key, so a
    // cold instance admits with one read and one write (a stale snapshot
    // would fail the version condition and cost a re-read).
    let old = t.store.load(&team).await.expect("load").expect("team");
    let mut new = old.clone();
    for w in &mut new.windows {
        if w.id() == "1d" {
            w.max = Money::usd(100);
        }
    }
    assert_eq!(
        t.store.update(&old, &new).await.expect("update"),
        AdminWrite::Done
    );
    log.take();
    let cold = Authorizer::new(store.clone(), t.settings.clone());
    let answer = authorize(&cold, &key, "0.5", now).await;
    assert!(allowed(&answer), "{answer}");
    assert_eq!(log.take(), ops(&["GetItem", "TransactWriteItems"]));
}

#[tokio::test]
async fn spend_by_another_instance_costs_a_warm_instance_one_refused_write() {
    let t = TestTable::new().await;
    let now = at(NOW);
    let key = chain(&t, now, "user-two", "team-two").await;
    let (store, log) = counted_store(&t);
    let warm = Authorizer::new(store, t.settings.clone());
    assert!(allowed(&authorize(&warm, &key, "10", now).await));

    // Another instance (its own memory) takes the rest of the key's 1d.
    let other = Authorizer::new(t.store.clone(), t.settings.clone());
    for _ in 0..9 {
        assert!(allowed(&authorize(&other, &key, "10", now).await));
    }
    log.take();

    let answer = authorize(&warm, &key, "10", now).await;
    assert!(!allowed(&answer), "{answer}");
    assert_eq!(answer["context"]["entity"], json!("key"), "{answer}");
    assert_eq!(
        log.take(),
        ops(&["TransactWriteItems", "GetItem", "BatchGetItem"]),
        "the full window refuses the write; a fresh read names it"
    );

    // Now memory knows the window is full: a denial without a write, from
    // a fresh read (memory alone never denies).
    let answer = authorize(&warm, &key, "10", now).await;
    assert!(!allowed(&answer), "{answer}");
    assert_eq!(log.take(), ops(&["GetItem", "BatchGetItem"]));
}
