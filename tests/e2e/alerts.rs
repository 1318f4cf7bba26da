//! Budget alerts: the notify function on DynamoDB stream records (Lambda's
//! event shape, `aws_lambda_events`' DynamoDB event type, built from the
//! items as the emulator stores them before and after each settle), sending
//! to the emulator's EventBridge, whose rule delivers to an SQS queue the
//! test reads. Each crossing arrives exactly once, whatever the stream
//! redelivers or reorders.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_lambda_events::event::dynamodb::Event;
use aws_sdk_dynamodb::types::AttributeValue;
use budget_core::alerts::{Alert, DETAIL_TYPE, EVENT_SOURCE};
use budget_core::metrics::Emitter;
use edge_budget::{aws_json, hex_id};
use notify::{EventBridge, Publisher};
use serde_json::{json, Map, Value};

use crate::helpers::*;

/// An event bus of this test's own, with a rule for edge-budget's alerts
/// that delivers them to a queue.
struct Bus {
    publisher: EventBridge,
    queue_url: String,
}

impl Bus {
    async fn new() -> Bus {
        let endpoint = emulator();
        let config = aws_sdk_eventbridge::Config::builder()
            .behavior_version(aws_sdk_eventbridge::config::BehaviorVersion::latest())
            .region(aws_sdk_eventbridge::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_eventbridge::config::Credentials::new(
                "local", "local", None, None, "test",
            ))
            .endpoint_url(&endpoint)
            .build();
        let client = aws_sdk_eventbridge::Client::from_conf(config);
        let name = format!("alerts-{}", hex_id());
        client
            .create_event_bus()
            .name(&name)
            .send()
            .await
            .expect("create bus");
        let queue = aws_json(
            &endpoint,
            "sqs",
            "AmazonSQS.CreateQueue",
            &json!({"QueueName": name}),
        )
        .await;
        let queue_url = queue["QueueUrl"].as_str().expect("a queue").to_string();
        client
            .put_rule()
            .name("budget-alerts")
            .event_bus_name(&name)
            .event_pattern(
                // As the template's rule: this stack's alerts only.
                json!({"source": [EVENT_SOURCE], "detail-type": [DETAIL_TYPE],
                       "detail": {"stack": ["test-stack"]}})
                .to_string(),
            )
            .send()
            .await
            .expect("put rule");
        let target = aws_sdk_eventbridge::types::Target::builder()
            .id("queue")
            .arn(format!("arn:aws:sqs:us-east-1:123456789012:{name}"))
            .build()
            .unwrap();
        client
            .put_targets()
            .rule("budget-alerts")
            .event_bus_name(&name)
            .targets(target)
            .send()
            .await
            .expect("put targets");
        Bus {
            publisher: EventBridge {
                client,
                bus: name,
                stack: Some("test-stack".into()),
            },
            queue_url,
        }
    }

    /// Every event the rule delivered so far (their `detail`s).
    async fn received(&self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let answer = aws_json(
                &emulator(),
                "sqs",
                "AmazonSQS.ReceiveMessage",
                &json!({"QueueUrl": self.queue_url, "MaxNumberOfMessages": 10}),
            )
            .await;
            let messages = answer["Messages"].as_array().cloned().unwrap_or_default();
            if messages.is_empty() {
                return out;
            }
            for m in messages {
                let event: Value = serde_json::from_str(m["Body"].as_str().unwrap()).unwrap();
                assert_eq!(event["source"], EVENT_SOURCE);
                assert_eq!(event["detail-type"], DETAIL_TYPE);
                assert_eq!(event["detail"]["stack"], "test-stack");
                out.push(event["detail"].clone());
                aws_json(
                    &emulator(),
                    "sqs",
                    "AmazonSQS.DeleteMessage",
                    &json!({"QueueUrl": self.queue_url, "ReceiptHandle": m["ReceiptHandle"]}),
                )
                .await;
            }
        }
    }
}

/// An attribute value in DynamoDB's JSON, as a stream record carries it.
fn dynamo_json(v: &AttributeValue) -> Value {
    match v {
        AttributeValue::S(s) => json!({"S": s}),
        AttributeValue::N(n) => json!({"N": n}),
        AttributeValue::Bool(b) => json!({"BOOL": b}),
        AttributeValue::Null(b) => json!({"NULL": b}),
        AttributeValue::M(m) => json!({"M": image(m)}),
        AttributeValue::L(l) => json!({"L": l.iter().map(dynamo_json).collect::<Vec<_>>()}),
        AttributeValue::Ss(l) => json!({"SS": l}),
        AttributeValue::Ns(l) => json!({"NS": l}),
        other => panic!("unexpected attribute {other:?}"),
    }
}

fn image(item: &HashMap<String, AttributeValue>) -> Map<String, Value> {
    item.iter()
        .map(|(k, v)| (k.clone(), dynamo_json(v)))
        .collect()
}

/// A MODIFY record of the stream (`NEW_AND_OLD_IMAGES`), as Lambda hands
/// it over, from two stored versions of one item.
fn record(
    seq: u64,
    old: &HashMap<String, AttributeValue>,
    new: &HashMap<String, AttributeValue>,
) -> Value {
    json!({
        "eventID": format!("ev-{seq}"),
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1795878480,
            "Keys": {"pk": dynamo_json(&new["pk"])},
            "NewImage": image(new),
            "OldImage": image(old),
            "SequenceNumber": format!("{seq:030}"),
            "SizeBytes": 512,
            "StreamViewType": "NEW_AND_OLD_IMAGES"
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2026-11-28T00:00:00.000"
    })
}

fn batch(records: &[&Value]) -> Event {
    serde_json::from_value(json!({"Records": records})).expect("a DynamoDB stream event")
}

/// The item of `pk` as the emulator stores it now.
async fn item(app: &TestApp, pk: &str) -> HashMap<String, AttributeValue> {
    app.client
        .get_item()
        .table_name(app.store.table())
        .key("pk", AttributeValue::S(pk.to_string()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item
        .expect("the item")
}

/// Spends `cost` on `key` (authorize, then settle).
async fn spend(app: &TestApp, key: &str, cost: f64) {
    let answer = app.authorize(key, Some(&cost.to_string())).await;
    assert!(allowed(&answer), "{answer}");
    assert_eq!(app.settle(&reservation_id(&answer), cost).await.0, 200);
}

async fn run(app: &TestApp, bus: &Bus, event: Event) -> notify::BatchSummary {
    let emitter = Emitter::memory("EdgeBudget");
    let (response, summary) = notify::handle(
        &app.store,
        &bus.publisher,
        &app.settings,
        &emitter,
        event,
        app.now,
    )
    .await;
    assert!(response.batch_item_failures.is_empty(), "{summary:?}");
    let line = &emitter.lines()[0];
    assert_eq!(line["AlertsSent"], summary.sent as f64);
    summary
}

fn crossed(details: &[Value]) -> Vec<(String, String, u64)> {
    let mut out: Vec<_> = details
        .iter()
        .map(|d| {
            (
                d["entity_id"].as_str().unwrap().to_string(),
                d["window"].as_str().unwrap().to_string(),
                d["threshold_percent"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    out
}

/// Three settles take a user's day from 0 to 6, 9 and 10 of 10 USD: the
/// 50, 80 and 100 % alerts, each once, though every record is delivered
/// twice and the batch again in reverse order.
#[tokio::test]
async fn each_threshold_is_sent_once_under_redelivery_and_reordering() {
    let app = TestApp::new().await;
    let bus = Bus::new().await;
    app.user("u-alert").window("1d", 10.0).create().await;
    let key = app.key().user("u-alert").create().await;
    let pk = "user#u-alert";
    let v0 = item(&app, pk).await;
    spend(&app, &key, 6.0).await;
    let v1 = item(&app, pk).await;
    spend(&app, &key, 3.0).await;
    let v2 = item(&app, pk).await;
    spend(&app, &key, 1.0).await;
    let v3 = item(&app, pk).await;
    let (r1, r2, r3) = (
        record(1, &v0, &v1),
        record(2, &v1, &v2),
        record(3, &v2, &v3),
    );

    // Out of order, and r2 twice in one batch.
    let first = run(&app, &bus, batch(&[&r2, &r1, &r2])).await;
    assert_eq!((first.sent, first.duplicates), (2, 1), "{first:?}");
    let got = bus.received().await;
    assert_eq!(
        crossed(&got),
        [
            ("u-alert".into(), "1d".into(), 50),
            ("u-alert".into(), "1d".into(), 80)
        ]
    );
    let eighty = got.iter().find(|d| d["threshold_percent"] == 80).unwrap();
    assert_eq!(
        (eighty["spend"].as_f64(), eighty["limit"].as_f64()),
        (Some(9.0), Some(10.0))
    );
    assert_eq!(eighty["threshold_usd"], 8.0);
    assert_eq!(eighty["entity"], "user");
    assert!(eighty["reset_at"].as_str().unwrap().ends_with('Z'));

    // The whole batch redelivered, then the last record twice: only 100 %
    // is new.
    let again = run(&app, &bus, batch(&[&r1, &r2, &r3, &r3])).await;
    assert_eq!((again.sent, again.duplicates), (1, 3), "{again:?}");
    assert_eq!(
        crossed(&bus.received().await),
        [("u-alert".into(), "1d".into(), 100)]
    );
    // A record that spans everything (old image before any spend) finds
    // all three taken.
    let span = run(&app, &bus, batch(&[&record(4, &v0, &v3)])).await;
    assert_eq!((span.sent, span.duplicates), (0, 3));
    assert!(bus.received().await.is_empty());
}

/// Per-entity thresholds and LiteLLM's soft budget, set through the admin
/// API; a record of another item kind alerts nothing.
#[tokio::test]
async fn an_owner_chooses_thresholds_and_a_soft_budget() {
    let app = TestApp::new().await;
    let bus = Bus::new().await;
    let (status, body) = app
        .admin(
            "POST",
            "/team/new",
            json!({"team_id": "t-alert", "max_budget": 100, "budget_duration": "30d",
                   "soft_budget": 20, "budget_alert_thresholds": [90, 25]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let info = app.team_info("t-alert").await;
    assert_eq!(
        info["team_info"]["budget_alert_thresholds"],
        json!([25, 90]),
        "{info}"
    );
    let key = app.key().team("t-alert").create().await;
    let pk = "team#t-alert";
    let v0 = item(&app, pk).await;
    spend(&app, &key, 30.0).await;
    let v1 = item(&app, pk).await;
    let summary = run(&app, &bus, batch(&[&record(1, &v0, &v1)])).await;
    assert_eq!(summary.sent, 2);
    let got = bus.received().await;
    let kinds: Vec<&str> = got.iter().map(|d| d["alert"].as_str().unwrap()).collect();
    assert!(
        kinds.contains(&"soft_budget") && kinds.contains(&"threshold"),
        "{got:?}"
    );
    assert_eq!(crossed(&got)[1], ("t-alert".into(), "30d".into(), 25));

    // The owner turns alerts off (an update): the next crossings (50 %
    // and 90 %) send nothing.
    let (status, body) = app
        .admin(
            "POST",
            "/team/update",
            json!({"team_id": "t-alert", "budget_alert_thresholds": [], "soft_budget": null}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let v2 = item(&app, pk).await;
    spend(&app, &key, 65.0).await;
    let v3 = item(&app, pk).await;
    let off = run(&app, &bus, batch(&[&record(3, &v2, &v3)])).await;
    assert_eq!((off.sent, off.duplicates), (0, 0), "{off:?}");
    assert!(bus.received().await.is_empty());

    // The reservation's item changed too: nothing to say about it.
    let reservation = record(2, &v0, &v0);
    let mut other = reservation.clone();
    other["dynamodb"]["NewImage"]["pk"] = json!({"S": "res#r-0"});
    assert_eq!(run(&app, &bus, batch(&[&other])).await.sent, 0);
    // Nor a slot item of a team that is not sharded (a sharded budget's
    // slots alert on its totals: a_sharded_budget_alerts_on_its_totals_once).
    let mut slot = record(4, &v0, &v1);
    slot["dynamodb"]["NewImage"]["pk"] = json!({"S": "slot#team#t-alert#pool"});
    slot["dynamodb"]["OldImage"]["pk"] = json!({"S": "slot#team#t-alert#pool"});
    let skipped = run(&app, &bus, batch(&[&slot])).await;
    assert_eq!(
        (skipped.sent, skipped.duplicates, skipped.unreadable),
        (0, 0, 0),
        "{skipped:?}"
    );

    for bad in [
        json!([0]),
        json!("80"),
        json!([50.5]),
        json!((1..=11).collect::<Vec<_>>()),
    ] {
        app.refused(
            "POST",
            "/team/update",
            json!({"team_id": "t-alert", "budget_alert_thresholds": bad}),
            "budget_alert_thresholds",
            "budget_alert_thresholds must be a list",
        )
        .await;
    }
    app.refused(
        "POST",
        "/team/update",
        json!({"team_id": "t-alert", "soft_budget": -1}),
        "soft_budget",
        "soft_budget",
    )
    .await;
}

/// EventBridge refusing: the record is reported failed and its marker
/// given back, so the stream's redelivery sends the alert — once.
#[tokio::test]
async fn an_alert_that_could_not_be_sent_is_sent_on_redelivery() {
    struct Down;
    #[async_trait]
    impl Publisher for Down {
        async fn publish(&self, _: &Alert) -> Result<(), String> {
            Err("PutEvents: service unavailable".into())
        }
    }
    let app = TestApp::new().await;
    let bus = Bus::new().await;
    app.user("u-alert-down").window("1d", 10.0).create().await;
    let key = app.key().user("u-alert-down").create().await;
    let pk = "user#u-alert-down";
    let v0 = item(&app, pk).await;
    spend(&app, &key, 5.0).await;
    let v1 = item(&app, pk).await;
    let r = record(7, &v0, &v1);
    let emitter = Emitter::memory("EdgeBudget");
    let (response, summary) = notify::handle(
        &app.store,
        &Down,
        &app.settings,
        &emitter,
        batch(&[&r]),
        app.now,
    )
    .await;
    assert_eq!(summary.sent, 0);
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap())
        .collect();
    assert_eq!(failed, [format!("{:030}", 7)]);
    assert_eq!(emitter.lines()[0]["AlertErrors"], 1.0);
    assert_eq!(emitter.lines()[0]["level"], "ERROR");

    let retried = run(&app, &bus, batch(&[&r])).await;
    assert_eq!(retried.sent, 1);
    assert_eq!(
        crossed(&bus.received().await),
        [("u-alert-down".into(), "1d".into(), 50)]
    );
    assert_eq!(run(&app, &bus, batch(&[&r])).await.duplicates, 1);
}

/// The records of the table's own stream (read through the emulator's
/// DynamoDB Streams API, as Lambda's poller reads them), every write of
/// the flow included — the key's, the reservations', the owners' — in
/// Lambda's event shape: the alerts of the user's day, once, and nothing
/// more when the whole stream is delivered again.
#[tokio::test]
async fn the_tables_own_stream_alerts_each_crossing_once() {
    let app = TestApp::with_stream().await;
    let bus = Bus::new().await;
    app.user("u-stream").window("1d", 10.0).create().await;
    let key = app
        .key()
        .user("u-stream")
        .window("1d", 100.0)
        .create()
        .await;
    for cost in [4.0, 2.0, 3.0] {
        spend(&app, &key, cost).await;
    }
    let records = stream_records(&app).await;
    assert!(records.len() >= 8, "the flow's writes: {}", records.len());
    let all: Vec<&Value> = records.iter().collect();
    let first = run(&app, &bus, batch(&all)).await;
    assert_eq!(first.unreadable, 0, "{first:?}");
    assert_eq!(
        crossed(&bus.received().await),
        [
            ("u-stream".into(), "1d".into(), 50),
            ("u-stream".into(), "1d".into(), 80)
        ],
        "the user's day at 9 of 10; the key's 9 of 100 crosses nothing"
    );
    let again = run(&app, &bus, batch(&all)).await;
    assert_eq!((again.sent, again.duplicates), (0, 2));
    assert!(bus.received().await.is_empty());
}

/// The wider chain's scopes alert as users and teams do (issue 14): an
/// organization's day crossing 50 and 80 % through its team's key, and a
/// tag's, each once.
#[tokio::test]
async fn an_organizations_and_a_tags_windows_alert_each_crossing_once() {
    let app = TestApp::with_stream().await;
    let bus = Bus::new().await;
    app.post(
        "/organization/new",
        json!({"organization_id": "org-alert", "max_budget": 10.0, "budget_duration": "1d"}),
    )
    .await;
    app.post(
        "/team/new",
        json!({"team_id": "t-org-alert", "organization_id": "org-alert"}),
    )
    .await;
    app.post(
        "/tag/new",
        json!({"name": "tag-alert", "max_budget": 20.0, "budget_duration": "1d"}),
    )
    .await;
    let key = app.key().team("t-org-alert").create().await;
    for cost in [4.0, 2.0, 3.0] {
        let mut event =
            edge_budget::http_api_event(&key, Some(&cost.to_string()), &edge_budget::hex_id());
        event["headers"]["x-litellm-tags"] = json!("tag-alert");
        let answer = authorize::handle(&app.authorizer, event, app.now)
            .await
            .expect("an answer");
        assert!(allowed(&answer), "{answer}");
        assert_eq!(app.settle(&reservation_id(&answer), cost).await.0, 200);
    }
    let records = stream_records(&app).await;
    let all: Vec<&Value> = records.iter().collect();
    let first = run(&app, &bus, batch(&all)).await;
    assert_eq!(first.unreadable, 0, "{first:?}");
    assert_eq!(
        crossed(&bus.received().await),
        [
            ("org-alert".into(), "1d".into(), 50),
            ("org-alert".into(), "1d".into(), 80)
        ],
        "the organization's day at 9 of 10; the tag's 9 of 20 crosses nothing"
    );
}

/// Every record of the table's own stream so far (read through the
/// emulator's DynamoDB Streams API, as Lambda's poller reads them), in
/// Lambda's event shape.
async fn stream_records(app: &TestApp) -> Vec<Value> {
    let table = app
        .client
        .describe_table()
        .table_name(app.store.table())
        .send()
        .await
        .expect("describe")
        .table
        .expect("table");
    let arn = table
        .latest_stream_arn()
        .expect("the table has a stream")
        .to_string();
    let streams = |target: &str, body: Value| {
        let target = format!("DynamoDBStreams_20120810.{target}");
        async move { aws_json(&emulator(), "dynamodb", &target, &body).await }
    };
    let stream = streams("DescribeStream", json!({"StreamArn": arn})).await;
    let shard = stream["StreamDescription"]["Shards"][0]["ShardId"].clone();
    let iterator = streams(
        "GetShardIterator",
        json!({"StreamArn": arn, "ShardId": shard, "ShardIteratorType": "TRIM_HORIZON"}),
    )
    .await;
    let got = streams(
        "GetRecords",
        json!({"ShardIterator": iterator["ShardIterator"], "Limit": 1000}),
    )
    .await;
    let records: Vec<Value> = got["Records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            let mut r = r.clone();
            // Lambda hands over epoch seconds and the stream's ARN.
            r["dynamodb"]["ApproximateCreationDateTime"] = json!(1795878480);
            r["eventSourceARN"] = json!(arn);
            r
        })
        .collect();
    records
}

/// A sharded team spends on its escrow slots, not on its own item: the
/// slots' stream records make notify read the team's totals and send the
/// 50 and 80 % of its day once, whether the records come one per batch in
/// reverse order or all again in one batch.
#[tokio::test]
async fn a_sharded_budget_alerts_on_its_totals_once() {
    let app = TestApp::with_stream().await;
    let bus = Bus::new().await;
    app.post(
        "/team/new",
        json!({"team_id": "t-hot-alert", "budget_shards": 4,
               "budget_limits": [{"budget_duration": "1d", "max_budget": 10}]}),
    )
    .await;
    app.user("u-hot-alert").create().await;
    let keys = [
        app.key()
            .user("u-hot-alert")
            .team("t-hot-alert")
            .create()
            .await,
        app.key()
            .user("u-hot-alert")
            .team("t-hot-alert")
            .create()
            .await,
    ];
    for (i, cost) in [4.0, 2.0, 3.0].into_iter().enumerate() {
        spend(&app, &keys[i % 2], cost).await;
    }
    let window = &app.team_info("t-hot-alert").await["team_info"]["windows"][0];
    assert_eq!(window["spend"], 9.0, "{window}");
    let records = stream_records(&app).await;
    let slots = records
        .iter()
        .filter(|r| {
            r["dynamodb"]["Keys"]["pk"]["S"]
                .as_str()
                .is_some_and(|pk| pk.starts_with("slot#"))
        })
        .count();
    assert!(slots >= 3, "the settles wrote slots: {slots}");
    let mut sent = 0;
    for r in records.iter().rev() {
        let one = run(&app, &bus, batch(&[r])).await;
        assert_eq!(one.unreadable, 0, "{one:?}");
        sent += one.sent;
    }
    assert_eq!(sent, 2);
    let got = bus.received().await;
    assert_eq!(
        crossed(&got),
        [
            ("t-hot-alert".into(), "1d".into(), 50),
            ("t-hot-alert".into(), "1d".into(), 80)
        ],
        "the team's day at 9 of 10 over its slots: {got:?}"
    );
    assert!(
        got.iter()
            .all(|d| d["entity"] == "team" && d["limit"] == 10.0),
        "{got:?}"
    );
    let all: Vec<&Value> = records.iter().collect();
    let again = run(&app, &bus, batch(&all)).await;
    assert_eq!(again.sent, 0, "{again:?}");
    assert!(bus.received().await.is_empty());
}

/// A sender that died after claiming an alert (its marker `pending`, the
/// event never sent): a redelivery within the lease is retried rather than
/// counted sent, and the first one past the lease sends it — once.
#[tokio::test]
async fn an_alert_whose_sender_died_is_sent_after_the_lease() {
    let app = TestApp::new().await;
    let bus = Bus::new().await;
    app.user("u-alert-died").window("1d", 10.0).create().await;
    let key = app.key().user("u-alert-died").create().await;
    let pk = "user#u-alert-died";
    let v0 = item(&app, pk).await;
    spend(&app, &key, 5.0).await;
    let v1 = item(&app, pk).await;
    let r = record(9, &v0, &v1);
    // What the dead sender did: claim, then nothing.
    let (entity, _) = budget_core::store::dynamo::entity_from_image(&v1)
        .unwrap()
        .expect("the user");
    let alert = budget_core::alerts::crossings(None, &entity, &Default::default(), &[50], app.now)
        .pop()
        .expect("the 50 % alert");
    assert_eq!(
        app.store
            .claim_alert(&alert.id, alert.reset_at, app.now)
            .await
            .unwrap(),
        budget_core::store::dynamo::Claim::Taken
    );
    let at = |seconds: i64| app.now + chrono::Duration::seconds(seconds);
    let handle = |now| {
        let emitter = Emitter::memory("EdgeBudget");
        let event = batch(&[&r]);
        let (store, publisher, settings) = (&app.store, &bus.publisher, &app.settings);
        async move { notify::handle(store, publisher, settings, &emitter, event, now).await }
    };
    let (within, summary) = handle(at(30)).await;
    assert_eq!(within.batch_item_failures.len(), 1, "{summary:?}");
    assert_eq!(summary.sent, 0);
    assert!(bus.received().await.is_empty());
    let (past, summary) = handle(at(61)).await;
    assert!(past.batch_item_failures.is_empty(), "{summary:?}");
    assert_eq!(summary.sent, 1);
    assert_eq!(
        crossed(&bus.received().await),
        [("u-alert-died".into(), "1d".into(), 50)]
    );
    let (_, again) = handle(at(200)).await;
    assert_eq!((again.sent, again.duplicates), (0, 1));
}
