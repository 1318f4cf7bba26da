//! A held reservation is never removed by DynamoDB's TTL (it holds budget
//! until released); a finished one is, a week after it finished (so late
//! duplicate settles are still recognised).

use aws_sdk_dynamodb::types::AttributeValue;
use budget_core::service::Authorizer;
use budget_core::store::dynamo::reservation_pk;
use budget_core::store::table::{PARTITION_KEY, TTL_ATTRIBUTE};
use edge_budget::{at, hex_id, http_api_event, http_request};

use crate::helpers::TestApp;
use serde_json::json;

async fn ttl_of(t: &TestApp, id: &str) -> Option<i64> {
    let out = t
        .client
        .get_item()
        .table_name(t.store.table())
        .key(PARTITION_KEY, AttributeValue::S(reservation_pk(id)))
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let item = out.item().expect("the reservation is stored");
    match item.get(TTL_ATTRIBUTE) {
        Some(AttributeValue::N(v)) => Some(v.parse().unwrap()),
        _ => None,
    }
}

#[tokio::test]
async fn held_reservations_have_no_ttl_finished_ones_expire_a_week_later() {
    // Through TestApp: it takes its turn at the emulator (see helpers.rs).
    let t = TestApp::new().await;
    let now = at("2026-11-28T15:08:00Z");
    let key = t.key().window("1d", 5.0).create().await;
    let a = Authorizer::new(t.store.clone(), t.settings.clone());
    let answer = authorize::handle(&a, http_api_event(&key, Some("1"), &hex_id()), now)
        .await
        .unwrap();
    let id = answer["context"]["reservation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let base = budget_core::receipt::base_id(&id).to_string();
    assert_eq!(ttl_of(&t, &base).await, None, "held: never removed by TTL");
    let settled_at = now + chrono::Duration::minutes(3);
    let body = json!({"reservation_id": id, "cost": 0.5}).to_string();
    let response = settle_spend::handle(
        &t.store,
        &t.settings,
        http_request("POST", "/spend/settle", &body, &[]),
        settled_at,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        ttl_of(&t, &base).await,
        Some(settled_at.timestamp() + 7 * 24 * 3600),
        "finished: removed a week after it finished"
    );
}
