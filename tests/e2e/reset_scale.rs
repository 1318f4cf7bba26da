//! The reset job reads what is due, not the table (issue 10): one run,
//! counted through an SDK interceptor on the store's client (requests by
//! operation, and the items each read answered), reads the same with 0,
//! 1,000 and 10,000 idle entities and finished reservations in the table.
//!
//! The idle entities are copies of what admin create writes (a user with
//! a 30-day window, so it is in the `due` index but not due; every other
//! one with a lifetime window only, so it is not in the index at all); the
//! finished reservations are copies of a settled one. They are seeded with
//! plain BatchWriteItem, 25 items a request (the emulator copies the whole
//! table on every transaction).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::{
    AfterDeserializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;
use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemOutput;
use aws_sdk_dynamodb::operation::get_item::GetItemOutput;
use aws_sdk_dynamodb::operation::query::QueryOutput;
use aws_sdk_dynamodb::operation::scan::ScanOutput;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use budget_core::model::EntityRef;
use budget_core::service::{reset, settle, Authorizer, ResetSummary};
use budget_core::store::dynamo::{entity_pk, DynamoStore};
use budget_core::Money;
use chrono::{DateTime, Duration, Utc};
use edge_budget::{at, hex_id, http_api_event, TestTable};

use crate::helpers::{heavy_run, operation_of, store_with, TestApp};

/// Requests by operation, and the items the reads answered (Query and
/// Scan: items evaluated; GetItem: 0 or 1; BatchGetItem: items returned).
#[derive(Debug, Clone, Default)]
struct Meter(Arc<Mutex<Figures>>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Figures {
    requests: BTreeMap<String, usize>,
    items_read: usize,
}

impl Meter {
    fn take(&self) -> Figures {
        std::mem::take(&mut *self.0.lock().expect("meter"))
    }
}

impl Intercept for Meter {
    fn name(&self) -> &'static str {
        "Meter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = operation_of(context);
        *self
            .0
            .lock()
            .expect("meter")
            .requests
            .entry(operation)
            .or_default() += 1;
        Ok(())
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Ok(output) = context.output_or_error() else {
            return Ok(());
        };
        let items = if let Some(q) = output.downcast_ref::<QueryOutput>() {
            q.scanned_count().max(q.count()) as usize
        } else if let Some(s) = output.downcast_ref::<ScanOutput>() {
            s.scanned_count().max(s.count()) as usize
        } else if let Some(g) = output.downcast_ref::<GetItemOutput>() {
            usize::from(g.item().is_some())
        } else if let Some(b) = output.downcast_ref::<BatchGetItemOutput>() {
            b.responses()
                .map(|r| r.values().map(Vec::len).sum())
                .unwrap_or(0)
        } else {
            0
        };
        self.0.lock().expect("meter").items_read += items;
        Ok(())
    }
}

fn metered_store(t: &TestTable) -> (DynamoStore, Meter) {
    let meter = Meter::default();
    (store_with(t, meter.clone()), meter)
}

const NOW: &str = "2026-11-28T15:08:00Z";

/// The work that is due, the same at every size: three keys whose 10 s
/// windows are past their boundary at `later`, and two reservations of
/// theirs past their expiry (RESERVATION_TTL_SECONDS = 5).
async fn due_work(t: &TestTable, now: DateTime<Utc>) {
    let a = Authorizer::new(t.store.clone(), t.settings.clone());
    for i in 0..3 {
        let key = t.key(&[("10s", 10.0)], None, None, now).await;
        if i < 2 {
            let answer = authorize::handle(&a, http_api_event(&key, Some("1"), &hex_id()), now)
                .await
                .expect("an answer");
            assert_eq!(answer["isAuthorized"], true, "{answer}");
        }
    }
}

type Item = HashMap<String, AttributeValue>;

async fn raw_item(t: &TestTable, pk: String) -> Item {
    t.client
        .get_item()
        .table_name(t.store.table())
        .key("pk", AttributeValue::S(pk))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item()
        .cloned()
        .expect("item")
}

/// Templates of the idle data, written by the real code paths: a user
/// with a 30-day window (in the `due` index, not due), a user with a
/// lifetime window (not in the index), a settled reservation.
async fn templates(t: &TestTable, now: DateTime<Utc>) -> (Item, Item, Item) {
    let timed = t
        .create(
            EntityRef::user("tpl-30d"),
            &[("30d", 100.0)],
            None,
            None,
            now,
        )
        .await;
    let lifetime = t
        .create(
            EntityRef::user("tpl-life"),
            &[("lifetime", 100.0)],
            None,
            None,
            now,
        )
        .await;
    let key = t
        .key(&[("lifetime", 100.0)], Some("tpl-life"), None, now)
        .await;
    let a = Authorizer::new(t.store.clone(), t.settings.clone());
    let answer = authorize::handle(&a, http_api_event(&key, Some("1"), &hex_id()), now)
        .await
        .expect("an answer");
    let id = answer["context"]["reservation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a reservation id in {answer}"))
        .to_string();
    settle(&t.store, &id, Money::usd(1), now, &t.settings)
        .await
        .expect("settled");
    let timed_item = raw_item(t, entity_pk(&timed.entity)).await;
    assert!(timed_item.contains_key("due_pk"), "{timed_item:?}");
    let lifetime_item = raw_item(t, entity_pk(&lifetime.entity)).await;
    assert!(!lifetime_item.contains_key("due_pk"), "{lifetime_item:?}");
    // Set-up only (not measured): the one reservation of the table.
    let finished = t
        .client
        .scan()
        .table_name(t.store.table())
        .filter_expression("kind = :r")
        .expression_attribute_values(":r", AttributeValue::S("reservation".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("scan")
        .items()
        .first()
        .cloned()
        .expect("the settled reservation");
    assert_eq!(
        finished.get("state"),
        Some(&AttributeValue::S("settled".into())),
        "{finished:?}"
    );
    assert!(!finished.contains_key("gsi1pk"), "{finished:?}");
    (timed_item, lifetime_item, finished)
}

/// `n` idle entities and `n` finished reservations, 25 items a
/// BatchWriteItem, a few requests at a time.
async fn seed(t: &TestTable, n: usize, templates: &(Item, Item, Item)) {
    let (timed, lifetime, finished) = templates;
    let mut items = Vec::with_capacity(2 * n);
    for i in 0..n {
        let id = format!("idle-{i:05}");
        let mut e = if i % 2 == 0 { timed } else { lifetime }.clone();
        e.insert("pk".into(), AttributeValue::S(format!("user#{id}")));
        e.insert("id".into(), AttributeValue::S(id));
        items.push(e);
        let mut r = finished.clone();
        r.insert("pk".into(), AttributeValue::S(format!("res#done-{i:05}")));
        items.push(r);
    }
    let batches: Vec<Vec<WriteRequest>> = items
        .chunks(25)
        .map(|chunk| {
            chunk
                .iter()
                .map(|item| {
                    WriteRequest::builder()
                        .put_request(
                            PutRequest::builder()
                                .set_item(Some(item.clone()))
                                .build()
                                .expect("put"),
                        )
                        .build()
                })
                .collect()
        })
        .collect();
    for group in batches.chunks(8) {
        let mut sends = tokio::task::JoinSet::new();
        for batch in group {
            let (client, table) = (t.client.clone(), t.store.table().to_string());
            let mut pending = batch.clone();
            sends.spawn(async move {
                while !pending.is_empty() {
                    let out = client
                        .batch_write_item()
                        .request_items(&table, pending)
                        .send()
                        .await
                        .expect("batch write");
                    pending = out
                        .unprocessed_items()
                        .and_then(|u| u.get(&table))
                        .cloned()
                        .unwrap_or_default();
                }
            });
        }
        while let Some(done) = sends.join_next().await {
            done.expect("seeding task");
        }
    }
}

/// One run of the job on a table with `n` idle entities and `n` finished
/// reservations besides the due work: what it read, and what it did.
async fn one_run(n: usize) -> (Figures, ResetSummary) {
    // Seeding 20,000 items: the emulator to itself (see helpers.rs).
    let alone = heavy_run().await;
    let t = TestApp::alone(&alone, &[("RESERVATION_TTL_SECONDS", "5")]).await;
    let now = at(NOW);
    let tpl = templates(&t, now).await;
    // The due work first: the emulator's transactions slow down with the
    // size of the table (it copies it), past authorize's deadline.
    due_work(&t, now).await;
    seed(&t, n, &tpl).await;
    let (store, meter) = metered_store(&t);
    let later = now + Duration::seconds(30);
    meter.take();
    let summary = reset(&store, later, &t.settings).await;
    (meter.take(), summary)
}

#[tokio::test]
async fn one_run_reads_the_same_with_0_1000_and_10000_idle_items() {
    let mut runs = Vec::new();
    for n in [0, 1_000, 10_000] {
        let (figures, summary) = one_run(n).await;
        println!(
            "reset job, {n:>6} idle entities + {n:>6} finished reservations: {} items read, requests {:?}; {} windows rolled, {} reservations released, {} entities due",
            figures.items_read,
            figures.requests,
            summary.windows_reset,
            summary.reservations_released,
            summary.entities_due,
        );
        assert!(summary.errors.is_empty(), "{summary:?}");
        assert_eq!(summary.windows_reset, 3, "{summary:?}");
        assert_eq!(summary.reservations_released, 2, "{summary:?}");
        assert_eq!(summary.entities_due, 3, "{summary:?}");
        assert!(!figures.requests.contains_key("Scan"), "{figures:?}");
        runs.push((n, figures));
    }
    let (_, first) = &runs[0];
    for (n, figures) in &runs[1..] {
        assert_eq!(
            figures, first,
            "with {n} idle items the job read differently from an empty table"
        );
    }
}

fn due_sk(item: &Item) -> Option<String> {
    match item.get("due_sk") {
        Some(AttributeValue::S(s)) => Some(s.clone()),
        _ => None,
    }
}

fn epoch_key(t: DateTime<Utc>) -> String {
    format!("{:012}", t.timestamp())
}

/// The `due` entry as DynamoDB stores it follows every write that moves a
/// boundary: create, authorize's lazy roll-over, the job's roll-over,
/// settle's roll-over, and admin updates (out of the index when no window resets any more).
#[tokio::test]
async fn the_due_entry_follows_every_boundary_in_dynamodb() {
    use budget_core::store::prelude::*;
    let t = TestApp::new().await;
    let now = at(NOW);
    let clock = t.clock();
    let user = EntityRef::user("due-user");
    t.create(
        user.clone(),
        &[("1h", 100.0), ("30d", 100.0)],
        None,
        None,
        now,
    )
    .await;
    let key = TestTable::key(&t, &[("lifetime", 100.0)], Some("due-user"), None, now).await;
    let pk = entity_pk(&user);
    let hour = |at: DateTime<Utc>| {
        budget_core::model::Span::parse_id("1h")
            .expect("span")
            .next_reset(at, &clock)
            .expect("boundary")
    };
    assert_eq!(
        due_sk(&raw_item(&t, pk.clone()).await),
        Some(epoch_key(hour(now)))
    );

    // Authorize past the boundary rolls the hour lazily, and the entry.
    let later = now + Duration::minutes(90);
    let a = Authorizer::new(t.store.clone(), t.settings.clone());
    let answer = authorize::handle(&a, http_api_event(&key, Some("1"), &hex_id()), later)
        .await
        .expect("an answer");
    assert_eq!(answer["isAuthorized"], true, "{answer}");
    assert_eq!(
        due_sk(&raw_item(&t, pk.clone()).await),
        Some(epoch_key(hour(later)))
    );

    // The job rolls it at the next boundary, and moves the entry.
    let next = later + Duration::hours(1);
    let summary = reset(&t.store, next, &t.settings).await;
    assert!(summary.errors.is_empty(), "{summary:?}");
    assert_eq!(summary.entities_due, 1, "{summary:?}");
    assert_eq!(
        due_sk(&raw_item(&t, pk.clone()).await),
        Some(epoch_key(hour(next)))
    );

    // Settle past the boundary rolls the hour (on the entities as read),
    // and the entry.
    let answer = authorize::handle(&a, http_api_event(&key, Some("1"), &hex_id()), next)
        .await
        .expect("an answer");
    let id = answer["context"]["reservation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a reservation id in {answer}"))
        .to_string();
    let past = hour(next) + Duration::minutes(5);
    settle(&t.store, &id, Money::usd(1), past, &t.settings)
        .await
        .expect("settled");
    assert_eq!(
        t.window(&user, "1h").await.reset_at,
        Some(hour(past)),
        "settle rolled the hour"
    );
    assert_eq!(
        due_sk(&raw_item(&t, pk.clone()).await),
        Some(epoch_key(hour(past)))
    );

    // Dropping every window that resets takes it out of the index.
    let old = t.store.load(&user).await.expect("load").expect("user");
    let mut new = old.clone();
    new.windows.retain(|w| w.reset_at.is_none());
    assert_eq!(
        t.store.update(&old, &new).await.expect("update"),
        budget_core::store::AdminWrite::Done
    );
    let item = raw_item(&t, pk.clone()).await;
    assert!(
        !item.contains_key("due_pk") && !item.contains_key("due_sk"),
        "{item:?}"
    );
    let summary = reset(&t.store, next + Duration::days(60), &t.settings).await;
    assert_eq!(summary.entities_due, 0, "{summary:?}");
}
