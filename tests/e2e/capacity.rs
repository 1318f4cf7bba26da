//! What each operation costs in DynamoDB capacity units, metered from the
//! requests it sends and the items they touch (issue 10). No emulator
//! reports consumed capacity from item sizes (moto answers constants), so
//! an SDK interceptor records every request's body, the test reads the
//! touched items before and after, and applies DynamoDB's billing rules
//! (`budget_core::store::dynamo::size`): a write costs one unit per KB of
//! the larger of the item's sizes before and after, twice in a
//! transaction, condition checks included; each index entry written or
//! removed one more (the indexes project keys only: entries are far under
//! 1 KB); a strongly consistent read one unit per 4 KB.
//!
//! `bash scripts/test.sh -p edge-budget --test e2e capacity:: -- --nocapture`
//! prints the figures of docs/performance.md ("Capacity").

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::types::AttributeValue;
use budget_core::store::dynamo::size::{item_size, write_units};
use budget_core::store::dynamo::DynamoStore;
use budget_core::store::table::{INDEXES, PARTITION_KEY};
use serde_json::{json, Value};

use edge_budget::response_json;

use crate::helpers::{allowed, authorize_via, operation_of, reservation_id, store_with, TestApp};

type Item = HashMap<String, AttributeValue>;

/// The requests a client sent: operation and JSON body.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<(String, Value)>>>);

impl Recorder {
    fn take(&self) -> Vec<(String, Value)> {
        std::mem::take(&mut *self.0.lock().expect("recorder"))
    }
}

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "Recorder"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let body = context
            .request()
            .body()
            .bytes()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        let operation = operation_of(context);
        self.0.lock().expect("recorder").push((operation, body));
        Ok(())
    }
}

/// What one operation cost.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Bill {
    /// Write units by what they paid for (`user#u` …, `index gsi1`).
    writes: BTreeMap<String, u64>,
    read_units: u64,
    requests: usize,
}

impl Bill {
    fn write_units(&self) -> u64 {
        self.writes.values().sum()
    }

    fn line(&self) -> String {
        let parts: Vec<String> = self
            .writes
            .iter()
            .map(|(what, units)| format!("{what} {units}"))
            .collect();
        format!(
            "{} WRU ({}), {} RRU, {} request{}",
            self.write_units(),
            parts.join(", "),
            self.read_units,
            self.requests,
            if self.requests == 1 { "" } else { "s" }
        )
    }
}

/// Every item of the (small) test table by partition key.
async fn items(app: &TestApp) -> HashMap<String, Item> {
    let mut out = HashMap::new();
    let mut start = None;
    loop {
        let page = app
            .client
            .scan()
            .table_name(app.store.table())
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan the test table");
        for item in page.items() {
            if let Some(AttributeValue::S(pk)) = item.get(PARTITION_KEY) {
                out.insert(pk.clone(), item.clone());
            }
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return out;
        }
    }
}

/// The partition keys a request's body names, each with whether it was
/// written in a transaction.
fn touched(operation: &str, body: &Value) -> Vec<(String, bool)> {
    let pk_of = |v: &Value| {
        v.get("Key")
            .or_else(|| v.get("Item"))
            .and_then(|k| k.get(PARTITION_KEY))
            .and_then(|k| k.get("S"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match operation {
        "TransactWriteItems" => body["TransactItems"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let inner = ["Update", "Put", "Delete", "ConditionCheck"]
                    .iter()
                    .find_map(|k| t.get(*k))?;
                Some((pk_of(inner)?, true))
            })
            .collect(),
        "UpdateItem" | "PutItem" | "DeleteItem" => {
            pk_of(body).map(|pk| (pk, false)).into_iter().collect()
        }
        _ => Vec::new(),
    }
}

/// The name a bill line gives an item (`res#r-…` → `reservation`).
fn label(pk: &str) -> String {
    if pk.starts_with("res#") {
        "reservation".into()
    } else if let Some(rest) = pk.strip_prefix("key#") {
        format!("key#{}…", &rest[..6.min(rest.len())])
    } else {
        pk.to_string()
    }
}

/// The bill of the requests in `sent`, from the table before and after.
fn bill(
    sent: &[(String, Value)],
    before: &HashMap<String, Item>,
    after: &HashMap<String, Item>,
) -> Bill {
    let mut b = Bill {
        requests: sent.len(),
        ..Bill::default()
    };
    let size = |pk: &str| {
        let of = |m: &HashMap<String, Item>| m.get(pk).map(item_size).unwrap_or(0);
        of(before).max(of(after))
    };
    for (operation, body) in sent {
        for (pk, transactional) in touched(operation, body) {
            *b.writes.entry(label(&pk)).or_default() += write_units(size(&pk), transactional);
            for (index, ipk, isk) in INDEXES {
                let entry = |m: &HashMap<String, Item>| {
                    let item = m.get(&pk)?;
                    Some((item.get(ipk)?.clone(), item.get(isk)?.clone()))
                };
                let units = match (entry(before), entry(after)) {
                    (None, None) => 0,
                    (Some(x), Some(y)) if x == y => 0,
                    (Some(_), Some(_)) => 2,
                    _ => 1,
                };
                if units > 0 {
                    *b.writes.entry(format!("index {index}")).or_default() += units;
                }
            }
        }
        let reads: Vec<String> = match operation.as_str() {
            "GetItem" => body["Key"][PARTITION_KEY]["S"]
                .as_str()
                .map(str::to_string)
                .into_iter()
                .collect(),
            "BatchGetItem" => body["RequestItems"]
                .as_object()
                .into_iter()
                .flat_map(|t| t.values())
                .flat_map(|t| t["Keys"].as_array().cloned().unwrap_or_default())
                .filter_map(|k| k[PARTITION_KEY]["S"].as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        for pk in reads {
            let bytes = before.get(&pk).map(item_size).unwrap_or(0);
            b.read_units += bytes.div_ceil(4096).max(1) as u64;
        }
    }
    b
}

/// Runs `op` on a recording store and bills what it sent.
async fn metered<F, Fut, T>(app: &TestApp, store: &DynamoStore, rec: &Recorder, op: F) -> (T, Bill)
where
    F: FnOnce(DynamoStore) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let before = items(app).await;
    rec.take();
    let out = op(store.clone()).await;
    let sent = rec.take();
    let after = items(app).await;
    (out, bill(&sent, &before, &after))
}

/// The counter items' sizes (bytes) as stored.
async fn sizes(app: &TestApp) -> BTreeMap<String, usize> {
    items(app)
        .await
        .iter()
        .map(|(pk, item)| (label(pk), item_size(item)))
        .collect()
}

/// Prices assumed (us-east-1, as of writing — check current pricing):
/// DynamoDB on-demand per million write / read request units, Lambda per
/// million invocations and per GB-second (arm64), API Gateway per million
/// HTTP API / REST API requests, DynamoDB storage per GB-month.
const WRU_PER_M: f64 = 0.625;
const LAMBDA_PER_M: f64 = 0.20;
const LAMBDA_GB_S: f64 = 0.000_013_333_4;
const HTTP_API_PER_M: f64 = 1.00;
const REST_API_PER_M: f64 = 3.50;
const STORAGE_GB_MONTH: f64 = 0.25;

/// The monthly bill of a steady load whose requests (authorize + settle)
/// cost `wru` write units each, as docs/performance.md tabulates it.
/// Lambda: two invocations a request (authorizer, settle) of 10 ms billed
/// at 128 MB; API Gateway: the proxied request and the settle call; storage:
/// each reservation kept a week after it ends, `reservation_bytes` plus
/// DynamoDB's 100 bytes of overhead per item.
fn print_bill(label: &str, wru: u64, reservation_bytes: usize) {
    println!("monthly bill, {label} ({wru} WRU a request):");
    println!("  req/s | DynamoDB writes | storage | Lambda | HTTP API | total (HTTP API) | total (REST API)");
    let seconds = 30.0 * 24.0 * 3600.0;
    for rate in [1.0, 10.0, 100.0, 1000.0] {
        let millions = rate * seconds / 1e6;
        let dynamo = millions * wru as f64 * WRU_PER_M;
        let stored_gb = rate * 7.0 * 24.0 * 3600.0 * (reservation_bytes + 100) as f64 / 1e9;
        let storage = stored_gb * STORAGE_GB_MONTH;
        let lambda = millions * 2.0 * (LAMBDA_PER_M + 1e6 * 0.125 * 0.010 * LAMBDA_GB_S);
        let http = millions * 2.0 * HTTP_API_PER_M;
        let rest = millions * 2.0 * REST_API_PER_M;
        let base = dynamo + storage + lambda;
        println!(
            "  {rate:>5} | ${dynamo:>14.2} | ${storage:>6.2} | ${lambda:>5.2} | ${http:>7.2} | ${:>15.2} | ${:>15.2}",
            base + http,
            base + rest
        );
    }
}

/// One warm authorize and its settle, billed: (authorize, settle).
async fn request_bill(app: &TestApp, key: &str) -> (Bill, Bill) {
    let rec = Recorder::default();
    let store = store_with(app, rec.clone());
    let authorizer = app.authorizer_on(store.clone());
    let now = app.now;
    // Warm the instance (the cold one reads the key first).
    let first = authorize_via(&authorizer, key, Some("0.05"), now).await;
    assert!(allowed(&first), "{first}");
    let (answer, authorize) = metered(app, &store, &rec, |_| {
        authorize_via(&authorizer, key, Some("0.05"), now)
    })
    .await;
    assert!(allowed(&answer), "{answer}");
    let id = reservation_id(&answer);
    let body = json!({"reservation_id": id, "cost": 0.03}).to_string();
    let ((status, settled), settle) = metered(app, &store, &rec, |s| async move {
        response_json(app.settle_spend_via(&s, "/spend/settle", &body, now).await)
    })
    .await;
    assert_eq!(status, 200, "{settled}");
    (authorize, settle)
}

#[tokio::test]
async fn a_request_governed_by_one_users_windows() {
    let app = TestApp::new().await;
    app.user("cap-u")
        .window("1d", 150.0)
        .window("30d", 1000.0)
        .create()
        .await;
    let key = app.key().user("cap-u").create().await;
    let (authorize, settle) = request_bill(&app, &key).await;
    println!("one user's windows, key without windows of its own:");
    println!("  authorize: {}", authorize.line());
    println!("  settle:    {}", settle.line());
    println!(
        "  total:     {} WRU",
        authorize.write_units() + settle.write_units()
    );
    let sizes = sizes(&app).await;
    println!("  items: {sizes:?}");
    let total = authorize.write_units() + settle.write_units();
    print_bill("one user's windows", total, sizes["reservation"]);
    // The key has no window: it costs the request nothing.
    assert!(
        !authorize.writes.keys().any(|k| k.starts_with("key#")),
        "{}",
        authorize.line()
    );
    assert_eq!(authorize.writes.get("user#cap-u"), Some(&2));
    assert_eq!(authorize.writes.get("reservation"), Some(&2));
    assert_eq!(settle.writes.get("user#cap-u"), Some(&2));
    assert_eq!(settle.writes.get("reservation"), Some(&2));
    assert_eq!(authorize.write_units() + settle.write_units(), 10);
}

#[tokio::test]
async fn a_request_governed_by_key_user_and_team() {
    let app = TestApp::new().await;
    let owners = [("1d", 200.0), ("7d", 1000.0), ("30d", 2000.0)];
    app.user("cap-u3").windows(&owners).create().await;
    app.team("cap-t3").windows(&owners).create().await;
    let key = app
        .key()
        .user("cap-u3")
        .team("cap-t3")
        .windows(&[("1d", 100.0), ("7d", 500.0), ("30d", 1000.0)])
        .create()
        .await;
    let (authorize, settle) = request_bill(&app, &key).await;
    println!("key, user and team, three windows each:");
    println!("  authorize: {}", authorize.line());
    println!("  settle:    {}", settle.line());
    println!(
        "  total:     {} WRU",
        authorize.write_units() + settle.write_units()
    );
    let sizes = sizes(&app).await;
    println!("  items: {sizes:?}");
    let total = authorize.write_units() + settle.write_units();
    print_bill(
        "key, user and team, 3 windows each",
        total,
        sizes["reservation"],
    );
    assert_eq!(total, 18);
}

#[tokio::test]
async fn a_team_with_64_kb_of_metadata_costs_a_request_what_one_without_does() {
    let app = TestApp::new().await;
    app.user("cap-mu").window("1d", 150.0).create().await;
    let metadata = json!({"notes": "x".repeat(63 * 1024)});
    for (team, meta) in [("cap-plain", Value::Null), ("cap-heavy", metadata)] {
        let mut body = json!({"team_id": team, "budget_limits": [{"budget_duration": "1d", "max_budget": 500.0}]});
        if !meta.is_null() {
            body["metadata"] = meta;
        }
        app.post("/team/new", body).await;
    }
    let mut bills = Vec::new();
    for team in ["cap-plain", "cap-heavy"] {
        let key = app.key().user("cap-mu").team(team).create().await;
        let (authorize, settle) = request_bill(&app, &key).await;
        println!(
            "team {team}: authorize {}; settle {}",
            authorize.line(),
            settle.line()
        );
        bills.push((authorize.write_units(), settle.write_units()));
    }
    let sizes = sizes(&app).await;
    println!("  items: {sizes:?}");
    assert_eq!(
        bills[0], bills[1],
        "64 KB of metadata costs a request nothing"
    );
    assert!(sizes["team#cap-heavy"] < 1024, "{sizes:?}");
    assert!(sizes["meta#team#cap-heavy"] > 63 * 1024, "{sizes:?}");
    // And the metadata is all there for the admin API.
    let info = app.team_info("cap-heavy").await;
    assert_eq!(
        info["team_info"]["metadata"]["notes"]
            .as_str()
            .map(str::len),
        Some(63 * 1024)
    );
}

#[tokio::test]
async fn a_team_update_costs_the_same_with_one_key_or_forty() {
    let app = TestApp::new().await;
    let rec = Recorder::default();
    let store = store_with(&app, rec.clone());
    let mut bills = Vec::new();
    for (team, keys) in [("cap-one", 1), ("cap-forty", 40)] {
        app.team(team).window("1d", 100.0).create().await;
        for _ in 0..keys {
            app.key().team(team).create().await;
        }
        let body = json!({"team_id": team, "budget_limits": [{"budget_duration": "1d", "max_budget": 50}]});
        let app = &app;
        let ((status, answer), bill) = metered(app, &store, &rec, |s| async move {
            app.admin_via(&s, app.now, "POST", "/team/update", body)
                .await
        })
        .await;
        assert_eq!(status, 200, "{answer}");
        println!("/team/update of a team with {keys} key(s): {}", bill.line());
        bills.push(bill);
    }
    assert_eq!(bills[0].requests, bills[1].requests, "{bills:?}");
    assert_eq!(bills[0].write_units(), bills[1].write_units(), "{bills:?}");
}

/// Tables written before the metadata moved out of the counter items keep
/// working: the old copy is read until the attributes change, then moves.
#[tokio::test]
async fn metadata_written_inline_by_an_older_version_is_kept_and_moved_out() {
    let app = TestApp::new().await;
    app.post("/team/new", json!({"team_id": "cap-old", "max_budget": 10}))
        .await;
    let pk = "team#cap-old";
    let legacy = json!({"metadata": {"owner": "finance"}}).to_string();
    app.client
        .update_item()
        .table_name(app.store.table())
        .key(PARTITION_KEY, AttributeValue::S(pk.into()))
        .update_expression("SET attrs = :a")
        .expression_attribute_values(":a", AttributeValue::S(legacy))
        .send()
        .await
        .expect("write an item as an older version did");
    let metadata = |info: &Value| info["team_info"]["metadata"].clone();
    assert_eq!(
        metadata(&app.team_info("cap-old").await),
        json!({"owner": "finance"})
    );

    // A change of something else keeps it.
    app.post(
        "/team/update",
        json!({"team_id": "cap-old", "max_budget": 20}),
    )
    .await;
    assert_eq!(
        metadata(&app.team_info("cap-old").await),
        json!({"owner": "finance"})
    );

    // A change of the metadata moves it out of the counter item.
    app.post(
        "/team/update",
        json!({"team_id": "cap-old", "metadata": {"owner": "ops"}}),
    )
    .await;
    assert_eq!(
        metadata(&app.team_info("cap-old").await),
        json!({"owner": "ops"})
    );
    let stored = items(&app).await;
    assert!(!stored[pk].contains_key("attrs"), "{:?}", stored[pk]);
    assert!(stored.contains_key("meta#team#cap-old"));

    // Deleting the team deletes its metadata too.
    app.post("/team/delete", json!({"team_ids": ["cap-old"]}))
        .await;
    let stored = items(&app).await;
    assert!(
        !stored.contains_key("meta#team#cap-old"),
        "{:?}",
        stored.keys()
    );
}

#[tokio::test]
async fn deleting_a_hundred_keys_takes_three_transactions() {
    let app = TestApp::new().await;
    app.user("cap-del").window("1d", 10.0).create().await;
    let mut keys = Vec::new();
    for _ in 0..100 {
        keys.push(app.key().user("cap-del").create().await);
    }
    let rec = Recorder::default();
    let store = store_with(&app, rec.clone());
    let app = &app;
    let body = json!({"keys": keys});
    let ((status, answer), bill) = metered(app, &store, &rec, |s| async move {
        app.admin_via(&s, app.now, "POST", "/key/delete", body)
            .await
    })
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["deleted_keys"].as_array().map(Vec::len), Some(100));
    println!(
        "/key/delete of 100 keys of one user: {} WRU, {} RRU, {} requests",
        bill.write_units(),
        bill.read_units,
        bill.requests
    );
    // 49 keys a transaction: each key and its meta item, plus the user once.
    let info = app.user_info("cap-del").await;
    assert_eq!(info["keys"], json!([]), "{info}");
    assert_eq!(info["user_info"]["key_count"], json!(0), "{info}");
    let left = items(app).await;
    assert!(
        !left.keys().any(|pk| pk.starts_with("key#")),
        "{:?}",
        left.keys()
    );
    assert_eq!(
        bill.requests,
        1 + 3,
        "one BatchGetItem, three transactions: {}",
        bill.line()
    );
}
