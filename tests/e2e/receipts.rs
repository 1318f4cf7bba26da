//! A settle answered from the receipt carried in the reservation id says
//! the same as one answered from the stored reservation.

use budget_core::model::EntityRef;
use budget_core::service::Authorizer;
use edge_budget::{at, hex_id, http_api_event, http_request, response_json};

use crate::helpers::TestApp;
use serde_json::json;

#[tokio::test]
async fn a_settle_from_the_receipt_names_owners_without_windows_like_its_repeat() {
    // Through TestApp: it takes its turn at the emulator (see helpers.rs).
    let t = TestApp::new().await;
    let now = at("2026-11-28T15:08:00Z");
    // The team has no window of its own: the reservation holds nothing there.
    t.create(EntityRef::team("t-plain"), &[], None, None, now)
        .await;
    t.create(
        EntityRef::user("u-plain"),
        &[("1d", 5.0)],
        None,
        Some("t-plain"),
        now,
    )
    .await;
    let key = t.key().user("u-plain").team("t-plain").create().await;
    let a = Authorizer::new(t.store.clone(), t.settings.clone());
    let answer = authorize::handle(&a, http_api_event(&key, Some("1"), &hex_id()), now)
        .await
        .unwrap();
    let id = answer["context"]["reservation_id"].as_str().unwrap();
    let body = json!({"reservation_id": id, "cost": 0.5}).to_string();
    let settle = || {
        settle_spend::handle(
            &t.store,
            &t.settings,
            http_request("POST", "/spend/settle", &body, &[]),
            now,
        )
    };
    let (status, first) = response_json(settle().await);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["duplicate"], false);
    let (_, repeat) = response_json(settle().await);
    assert_eq!(repeat["duplicate"], true);
    for field in ["user_id", "team_id", "reserved", "cost", "state"] {
        assert_eq!(first[field], repeat[field], "{field}: {first} vs {repeat}");
    }
    assert_eq!(first["team_id"], "t-plain");
}
