//! Sharded budgets (issue 11) against the emulator: a team marked hot with
//! `budget_shards` has its windows' headroom split over a pool and shard
//! items; every request reserves on one shard, refills it from the pool
//! when dry, and is denied only when the team's total over all slots is
//! below its estimate. The emulator has no partition limits (throughput is
//! `examples/hot_sim.rs`'s), so these tests are about exactness.

use std::sync::Arc;

use budget_core::model::{EntityRef, SlotId};
use budget_core::service::Authorizer;
use budget_core::store::dynamo::DynamoStore;
use budget_core::store::prelude::*;
use budget_core::Money;
use serde_json::{json, Value};

use crate::helpers::{allowed, authorize_via, reservation_id, usd, TestApp};

/// Generous deadlines: the single-threaded emulator serves every request
/// of a test in turn, so 64 concurrent ones wait for each other.
const SLOW: &[(&str, &str)] = &[
    ("AUTHORIZE_DEADLINE_MS", "30000"),
    ("STORE_TIMEOUT_MS", "20000"),
];

/// A team of `shards` shards with one 1d window of `max` USD, a user in
/// it, and `keys` keys of both.
async fn hot_team(app: &TestApp, team: &str, shards: u32, max: f64, keys: usize) -> Vec<String> {
    app.post(
        "/team/new",
        json!({"team_id": team, "budget_shards": shards,
               "budget_limits": [{"budget_duration": "1d", "max_budget": max}]}),
    )
    .await;
    let user = format!("{team}-u");
    app.user(&user).create().await;
    let mut out = Vec::new();
    for _ in 0..keys {
        out.push(app.key().user(&user).team(team).create().await);
    }
    out
}

/// The team's 1d window as `/team/info` shows it.
async fn shown(app: &TestApp, team: &str) -> Value {
    let info = app.team_info(team).await;
    info["team_info"]["windows"][0].clone()
}

/// `n` concurrent authorizations of `estimate` over `instances`
/// authorizers and the keys in turn; how many were admitted, and their
/// reservation ids.
async fn burst(
    app: &TestApp,
    keys: &[String],
    n: usize,
    estimate: &str,
    instances: usize,
) -> Vec<String> {
    let authorizers: Vec<Arc<Authorizer<DynamoStore>>> =
        (0..instances).map(|_| Arc::new(app.authorizer())).collect();
    let mut tasks = Vec::new();
    for i in 0..n {
        let a = authorizers[i % instances].clone();
        let key = keys[i % keys.len()].clone();
        let (now, estimate) = (app.now, estimate.to_string());
        tasks.push(tokio::spawn(async move {
            authorize_via(&a, &key, Some(&estimate), now).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let answer = t.await.expect("task");
        if allowed(&answer) {
            ids.push(reservation_id(&answer));
        } else {
            assert_eq!(answer["context"]["reason"], "budget_exceeded", "{answer}");
            assert_eq!(answer["context"]["entity"], "team", "{answer}");
        }
    }
    ids
}

#[tokio::test]
async fn sixty_four_concurrent_requests_on_eight_shards_with_ten_dollars_left_admit_exactly_ten() {
    let app = TestApp::with_settings(SLOW).await;
    let keys = hot_team(&app, "hot-8", 8, 10.0, 4).await;
    let admitted = burst(&app, &keys, 64, "1", 8).await;
    assert_eq!(admitted.len(), 10, "exactly the $10 left");
    let w = shown(&app, "hot-8").await;
    assert_eq!(
        (usd(&w["reserved"]), usd(&w["remaining"])),
        (10.0, 0.0),
        "{w}"
    );
    // The headroom went to the shards the requests used, never beyond.
    let parts = w["shards"].as_array().expect("shards shown");
    assert_eq!(parts.len(), 9, "the pool and 8 shards: {w}");
    let avail: f64 = parts.iter().map(|p| usd(&p["avail"])).sum();
    assert_eq!(avail, 0.0, "{w}");

    // Settled at $0.50 each: the rest comes back to the shard that held.
    for id in &admitted {
        let (status, answer) = app.settle(id, 0.5).await;
        assert_eq!(status, 200, "{answer}");
    }
    let w = shown(&app, "hot-8").await;
    assert_eq!(
        (usd(&w["spend"]), usd(&w["reserved"]), usd(&w["remaining"])),
        (5.0, 0.0, 5.0),
        "{w}"
    );
    // And exactly $5 more is admitted, wherever it sits.
    let more = burst(&app, &keys, 16, "0.5", 4).await;
    assert_eq!(more.len(), 10, "{}", shown(&app, "hot-8").await);
    let w = shown(&app, "hot-8").await;
    assert_eq!(
        (usd(&w["reserved"]), usd(&w["remaining"])),
        (5.0, 0.0),
        "{w}"
    );
}

#[tokio::test]
async fn a_sharded_window_rolls_over_with_its_reservations_in_flight() {
    let app = TestApp::with_settings(SLOW).await;
    let keys = hot_team(&app, "hot-roll", 4, 10.0, 2).await;
    let ids = burst(&app, &keys, 6, "1", 2).await;
    assert_eq!(ids.len(), 6);
    let (status, _) = app.settle(&ids[0], 2.0).await;
    assert_eq!(status, 200);
    // The next day: the period's spend goes, the 5 in flight stay.
    let tomorrow = app.now + chrono::Duration::days(1);
    let a = app.authorizer();
    let answer = authorize_via(&a, &keys[0], Some("5"), tomorrow).await;
    assert!(allowed(&answer), "{answer}");
    let answer = authorize_via(&a, &keys[1], Some("0.5"), tomorrow).await;
    assert!(!allowed(&answer), "10 − 5 in flight − 5 = 0 left: {answer}");
    assert_eq!(answer["context"]["entity"], "team", "{answer}");
    // A late settle of yesterday's reservation lands in today's period.
    let (status, _) = app.settle_at(&ids[1], 0.25, tomorrow).await;
    assert_eq!(status, 200);
    let info = app
        .admin_at(tomorrow, "GET", "/team/info?team_id=hot-roll", Value::Null)
        .await
        .1;
    let w = &info["team_info"]["windows"][0];
    assert_eq!(
        (usd(&w["spend"]), usd(&w["reserved"]), usd(&w["remaining"])),
        (0.25, 9.0, 0.75),
        "{w}"
    );
}

#[tokio::test]
async fn a_cost_settled_past_the_boundary_before_any_roll_counts_in_the_new_period() {
    let app = TestApp::with_settings(SLOW).await;
    let keys = hot_team(&app, "hot-late", 4, 10.0, 1).await;
    let answer = app.authorize(&keys[0], Some("4")).await;
    assert!(allowed(&answer), "{answer}");
    // Settled the next day, before any request or the reset job rolled the
    // slots: the cost is today's (before, it joined yesterday's spend on
    // its shard, and the roll dropped it — $4 that no cap counted).
    let tomorrow = app.now + chrono::Duration::days(1);
    let (status, body) = app.settle_at(&reservation_id(&answer), 4.0, tomorrow).await;
    assert_eq!(status, 200, "{body}");
    let a = app.authorizer();
    let answer = authorize_via(&a, &keys[0], Some("6.5"), tomorrow).await;
    assert!(!allowed(&answer), "$4 of today's $10 is spent: {answer}");
    let answer = authorize_via(&a, &keys[0], Some("6"), tomorrow).await;
    assert!(allowed(&answer), "{answer}");
    let info = app
        .admin_at(tomorrow, "GET", "/team/info?team_id=hot-late", Value::Null)
        .await
        .1;
    let w = &info["team_info"]["windows"][0];
    assert_eq!(
        (usd(&w["spend"]), usd(&w["reserved"]), usd(&w["remaining"])),
        (4.0, 6.0, 0.0),
        "{w}"
    );
}

#[tokio::test]
async fn a_cost_over_its_reservation_and_its_shard_is_charged_to_the_whole_team() {
    let app = TestApp::with_settings(SLOW).await;
    let keys = hot_team(&app, "hot-over", 4, 10.0, 2).await;
    let answer = app.authorize(&keys[0], Some("1")).await;
    assert!(allowed(&answer), "{answer}");
    // $1 reserved, $7 spent: $6 more than its shard held. The settle covers
    // it from the pool at once, so $3 is left over all the slots, and no
    // shard admits more (before, the other shards and the pool still lent
    // the $6 the overrun had used).
    let (status, body) = app.settle(&reservation_id(&answer), 7.0).await;
    assert_eq!(status, 200, "{body}");
    let w = shown(&app, "hot-over").await;
    assert_eq!(
        (usd(&w["spend"]), usd(&w["reserved"]), usd(&w["remaining"])),
        (7.0, 0.0, 3.0),
        "{w}"
    );
    let negative: Vec<&Value> = w["shards"]
        .as_array()
        .expect("shards shown")
        .iter()
        .filter(|p| usd(&p["avail"]) < 0.0)
        .collect();
    assert!(negative.is_empty(), "no slot left owing: {w}");
    let admitted = burst(&app, &keys, 8, "1", 2).await;
    assert_eq!(admitted.len(), 3, "{}", shown(&app, "hot-over").await);
}

#[tokio::test]
async fn limits_and_shard_counts_change_without_losing_a_cent() {
    let app = TestApp::with_settings(SLOW).await;
    let keys = hot_team(&app, "hot-chg", 4, 10.0, 2).await;
    let ids = burst(&app, &keys, 8, "1", 2).await;
    assert_eq!(ids.len(), 8);
    // Lowered below what is in flight: nothing more is admitted.
    app.post(
        "/team/update",
        json!({"team_id": "hot-chg", "budget_limits": [{"budget_duration": "1d", "max_budget": 6}]}),
    )
    .await;
    assert!(burst(&app, &keys, 4, "0.1", 2).await.is_empty());
    // Raised and resharded (4 → 16): exactly the new headroom.
    let raised = app
        .post(
            "/team/update",
            json!({"team_id": "hot-chg", "budget_shards": 16,
                   "budget_limits": [{"budget_duration": "1d", "max_budget": 12}]}),
        )
        .await;
    assert_eq!(raised["budget_shards"], 16, "{raised}");
    assert_eq!(burst(&app, &keys, 12, "1", 4).await.len(), 4);
    // Lowered to 2 shards: the retired ones still settle.
    app.post(
        "/team/update",
        json!({"team_id": "hot-chg", "budget_shards": 2}),
    )
    .await;
    for id in &ids {
        let (status, answer) = app.settle(id, 0.5).await;
        assert_eq!(status, 200, "{answer}");
    }
    let w = shown(&app, "hot-chg").await;
    assert_eq!(
        (usd(&w["spend"]), usd(&w["reserved"]), usd(&w["remaining"])),
        (4.0, 4.0, 4.0),
        "{w}"
    );
    // Back to 1 is refused: its reservations live on its shards.
    app.refused(
        "POST",
        "/team/update",
        json!({"team_id": "hot-chg", "budget_shards": 1}),
        "budget_shards",
        "can be lowered to 2, not to 1",
    )
    .await;
}

#[tokio::test]
async fn a_team_with_spend_made_hot_keeps_its_spend_and_its_limit() {
    let app = TestApp::with_settings(SLOW).await;
    app.post(
        "/team/new",
        json!({"team_id": "warm", "budget_limits": [{"budget_duration": "1d", "max_budget": 10}]}),
    )
    .await;
    app.user("warm-u").create().await;
    let key = app.key().user("warm-u").team("warm").create().await;
    let a = app.authorizer();
    let first = authorize_via(&a, &key, Some("3"), app.now).await;
    let (status, _) = app.settle(&reservation_id(&first), 2.0).await;
    assert_eq!(status, 200);
    let held = authorize_via(&a, &key, Some("1"), app.now).await;
    assert!(allowed(&held));
    app.post(
        "/team/update",
        json!({"team_id": "warm", "budget_shards": 4}),
    )
    .await;
    // 10 − 2 spent − 1 in flight = 7, now over the shards.
    assert_eq!(
        burst(&app, std::slice::from_ref(&key), 10, "1", 2)
            .await
            .len(),
        7
    );
    let w = shown(&app, "warm").await;
    assert_eq!(
        (usd(&w["spend"]), usd(&w["reserved"]), usd(&w["remaining"])),
        (2.0, 8.0, 0.0),
        "{w}"
    );
    // The reservation made before it was sharded still settles (on the
    // team's own item).
    let (status, answer) = app.settle(&reservation_id(&held), 1.0).await;
    assert_eq!(status, 200, "{answer}");
    let w = shown(&app, "warm").await;
    assert_eq!((usd(&w["spend"]), usd(&w["reserved"])), (3.0, 7.0), "{w}");
}

#[tokio::test]
async fn a_sharded_team_costs_a_request_one_shard_not_its_own_item() {
    let app = TestApp::with_settings(SLOW).await;
    let keys = hot_team(&app, "hot-1rt", 8, 100.0, 1).await;
    let a = app.authorizer();
    // The first requests refill their shard; later ones on a shard with
    // headroom are the one transaction of any request.
    for _ in 0..20 {
        assert!(allowed(
            &authorize_via(&a, &keys[0], Some("0.05"), app.now).await
        ));
    }
    let team = app
        .store
        .load(&EntityRef::team("hot-1rt"))
        .await
        .unwrap()
        .unwrap();
    let w = team.window("1d").unwrap();
    assert_eq!(
        (w.spent, w.reserved),
        (Money::ZERO, Money::ZERO),
        "the team item is not written"
    );
    let pool = app
        .store
        .load(&EntityRef::team("hot-1rt").at(SlotId::Pool))
        .await
        .unwrap()
        .unwrap();
    assert!(pool.window("1d").unwrap().avail < Money::usd(100));
}

/// Reservations, settles above and below what they held, releases, reset
/// runs and a limit change, all at once on a sharded team: every cent is
/// accounted for at the end, and nothing was ever admitted past the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_is_conserved_when_everything_races_on_a_sharded_team() {
    let app = Arc::new(TestApp::with_settings(SLOW).await);
    let keys = hot_team(&app, "hot-race", 4, 20.0, 3).await;
    let authorizers: Vec<Arc<Authorizer<DynamoStore>>> =
        (0..4).map(|_| Arc::new(app.authorizer())).collect();
    let mut tasks = Vec::new();
    for i in 0..48usize {
        let (app, a, key) = (app.clone(), authorizers[i % 4].clone(), keys[i % 3].clone());
        tasks.push(tokio::spawn(async move {
            let answer = authorize_via(&a, &key, Some("0.5"), app.now).await;
            if !allowed(&answer) {
                return (false, Money::ZERO);
            }
            let id = reservation_id(&answer);
            // 0: released; 0.25 to 0.75: settled, some above what was held.
            let cost = [0.0, 0.25, 0.5, 0.75][i % 4];
            let (status, answer) = if cost == 0.0 {
                app.release(&id).await
            } else {
                app.settle(&id, cost).await
            };
            assert_eq!(status, 200, "{answer}");
            (true, Money::from_f64(cost).unwrap())
        }));
    }
    for _ in 0..3 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            reset::handle(
                &app.store,
                &app.settings,
                edge_budget::schedule_event(),
                app.now,
            )
            .await;
            (false, Money::ZERO)
        }));
    }
    {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.post(
                "/team/update",
                json!({"team_id": "hot-race", "budget_limits": [{"budget_duration": "1d", "max_budget": 22}]}),
            )
            .await;
            (false, Money::ZERO)
        }));
    }
    let (mut admitted, mut spent) = (0, Money::ZERO);
    for t in tasks {
        let (ok, cost) = t.await.expect("task");
        admitted += usize::from(ok);
        spent = spent.saturating_add(cost);
    }
    let w = shown(&app, "hot-race").await;
    assert_eq!(Money::from_f64(usd(&w["spend"])).unwrap(), spent, "{w}");
    assert_eq!(usd(&w["reserved"]), 0.0, "{w}");
    assert_eq!(usd(&w["max_budget"]), 22.0, "{w}");
    // Every slot accounts for the limit: spend + headroom = 22.
    let avail: f64 = w["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| usd(&p["avail"]))
        .sum();
    assert!((usd(&w["spend"]) + avail - 22.0).abs() < 1e-9, "{w}");
    assert!(admitted > 0, "{w}");
}

/// An exhausted sharded team refuses even a request that reserves nothing
/// (a deployment whose floor is 0), as an unsharded one does: a shard
/// admits only while it holds headroom.
#[tokio::test]
async fn an_exhausted_sharded_team_refuses_a_zero_estimate() {
    let app = TestApp::with_settings(&[("MIN_RESERVATION_USD", "0")]).await;
    let keys = hot_team(&app, "hot-zero", 4, 1.0, 1).await;
    let answer = app.authorize(&keys[0], Some("1")).await;
    assert!(allowed(&answer), "{answer}");
    assert_eq!(app.settle(&reservation_id(&answer), 1.0).await.0, 200);
    let w = shown(&app, "hot-zero").await;
    assert_eq!((usd(&w["spend"]), usd(&w["remaining"])), (1.0, 0.0), "{w}");
    let zero = app.authorize(&keys[0], Some("0")).await;
    assert!(!allowed(&zero), "a zero estimate on a spent budget: {zero}");
    assert_eq!(zero["context"]["reason"], "budget_exceeded", "{zero}");
}

/// DynamoDB cancels the isolated read of all slots while any slot is in a
/// transaction: the read is tried again, and the request near the cap gets
/// the budget's answer (here a denial on the totals), not `unavailable`.
#[tokio::test]
async fn a_cancelled_isolated_read_is_tried_again_and_the_totals_decide() {
    use edge_budget::fault_proxy::{Answer, Reason};
    let app = TestApp::new().await;
    let keys = hot_team(&app, "hot-busy", 2, 1.0, 1).await;
    let answer = app.authorize(&keys[0], Some("1")).await;
    assert!(allowed(&answer), "{answer}");
    // Still in flight: the dollar may come back, so only the totals of an
    // isolated read can deny.
    let (proxy, store) = app.proxied(std::time::Duration::from_secs(20)).await;
    let conflict = Answer::Cancelled(vec![
        Reason::None,
        Reason::TransactionConflict,
        Reason::None,
    ]);
    proxy.inject("TransactGetItems", conflict, 2);
    let a = app.authorizer_on(store);
    let denied = authorize_via(&a, &keys[0], Some("0.5"), app.now).await;
    assert!(!allowed(&denied), "{denied}");
    assert_eq!(denied["context"]["reason"], "budget_exceeded", "{denied}");
    assert_eq!(proxy.injected(), 2);
    let reads = proxy.seen("TransactGetItems");
    assert!(reads >= 3, "two cancelled, then read: {reads}");
    println!("isolated reads of the slots: {reads} (2 cancelled)");
    // Spent: what the team can ever have again is below the ask, which a
    // plain read of the slots shows — no isolated read at all.
    assert_eq!(app.settle(&reservation_id(&answer), 1.0).await.0, 200);
    let cold =
        app.authorizer_on(app.store_via(&proxy.endpoint(), std::time::Duration::from_secs(20)));
    let before = proxy.seen("TransactGetItems");
    let denied = authorize_via(&cold, &keys[0], Some("0.5"), app.now).await;
    assert_eq!(denied["context"]["reason"], "budget_exceeded", "{denied}");
    assert_eq!(proxy.seen("TransactGetItems"), before);
}

#[tokio::test]
async fn a_limit_lowered_below_what_is_in_flight_admits_only_what_the_releases_pay_back() {
    let app = TestApp::with_settings(SLOW).await;
    let keys = hot_team(&app, "hot-debt", 4, 10.0, 4).await;
    let ids = burst(&app, &keys, 10, "1", 4).await;
    assert_eq!(ids.len(), 10);
    // $10 in flight over the shards; the limit lowered to $7: $3 of debt.
    app.post(
        "/team/update",
        json!({"team_id": "hot-debt", "budget_limits": [{"budget_duration": "1d", "max_budget": 7}]}),
    )
    .await;
    // Five reservations come back unspent: $2 is left of the $7 (five still
    // in flight), wherever the releases landed. Before the fix the shards
    // those releases reached admitted what came back while the debt was
    // charged elsewhere.
    for id in &ids[..5] {
        let (status, answer) = app.settle(id, 0.0).await;
        assert_eq!(status, 200, "{answer}");
    }
    let w = shown(&app, "hot-debt").await;
    assert_eq!(
        (usd(&w["reserved"]), usd(&w["remaining"])),
        (5.0, 2.0),
        "{w}"
    );
    let more = burst(&app, &keys, 16, "1", 4).await;
    assert_eq!(
        more.len(),
        2,
        "exactly the $2 left: {}",
        shown(&app, "hot-debt").await
    );
    let w = shown(&app, "hot-debt").await;
    assert_eq!(
        (usd(&w["spend"]), usd(&w["reserved"]), usd(&w["remaining"])),
        (0.0, 7.0, 0.0),
        "{w}"
    );
    let parked: f64 = w["shards"]
        .as_array()
        .expect("shards shown")
        .iter()
        .map(|p| p.get("parked").map_or(0.0, usd))
        .sum();
    assert_eq!(parked, 0.0, "nothing left parked once re-placed: {w}");
}

/// Past the cap each instance denies on one read of the key and its shard
/// (the bound of its last full read); a raise marks every slot, so the
/// same warm instances admit exactly the new headroom, no more, no less.
#[tokio::test]
async fn past_the_cap_warm_instances_deny_on_the_bound_and_a_raise_is_admitted_exactly() {
    deny_then_raise("hot-cap", 1).await;
}

/// The same at one instant: an instance that has read every slot as often
/// as it may answers `unavailable` rather than decide on an older read,
/// and still admits exactly the raise.
#[tokio::test]
async fn at_one_instant_past_the_cap_a_raise_is_admitted_exactly() {
    deny_then_raise("hot-cap-now", 0).await;
}

/// Requests `apart` seconds apart after the raise.
async fn deny_then_raise(team: &str, apart: i64) {
    let app = TestApp::with_settings(SLOW).await;
    let keys = hot_team(&app, team, 4, 4.0, 4).await;
    // Through a counting proxy: what each denial costs.
    let timeout = std::time::Duration::from_secs(20);
    let (proxy, _) = app.proxied(timeout).await;
    let authorizers: Vec<Authorizer<DynamoStore>> = (0..4)
        .map(|_| app.authorizer_on(app.store_via(&proxy.endpoint(), timeout)))
        .collect();
    let mut ids = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let answer = authorize_via(&authorizers[i], key, Some("1"), app.now).await;
        assert!(allowed(&answer), "{answer}");
        ids.push(reservation_id(&answer));
    }
    for id in &ids {
        let (status, answer) = app.settle(id, 1.0).await;
        assert_eq!(status, 200, "{answer}");
    }
    // Every instance is denied, the first time by the full read, then on
    // its bound: the same denial, the team's spend and limit named.
    let seen = |op: &str| proxy.seen(op);
    let mut before = (0, 0);
    for round in 0..3 {
        for (i, key) in keys.iter().enumerate() {
            let answer = authorize_via(&authorizers[i], key, Some("0.01"), app.now).await;
            assert_eq!(
                answer["context"]["reason"], "budget_exceeded",
                "round {round}: {answer}"
            );
            assert_eq!(answer["context"]["entity"], "team", "{answer}");
        }
        let now = (seen("TransactWriteItems"), seen("TransactGetItems"));
        if round > 0 {
            // Reads only: no reservation written, no isolated read.
            assert_eq!(now, before, "round {round}");
        }
        before = now;
    }
    app.post(
        "/team/update",
        json!({"team_id": team, "budget_limits": [{"budget_duration": "1d", "max_budget": 6}]}),
    )
    .await;
    let mut admitted = 0;
    for round in 0..4 {
        // Apart, as traffic is, an instance decides each on its own reads
        // of every slot (at most 10 a second, a burst of 6); at one
        // instant, past that, it answers `unavailable`.
        let at = app.now + chrono::Duration::seconds(apart * (round + 1));
        for (i, key) in keys.iter().enumerate() {
            let answer = authorize_via(&authorizers[i], key, Some("0.5"), at).await;
            let reason = &answer["context"]["reason"];
            if allowed(&answer) {
                admitted += 1;
            } else if apart > 0 || reason != "unavailable" {
                assert_eq!(reason, "budget_exceeded", "round {round}: {answer}");
            }
        }
    }
    assert_eq!(
        admitted,
        4,
        "exactly the $2 raised: {}",
        shown(&app, team).await
    );
}

/// The headroom a slot of the window shown holds (`"pool"` or a shard's
/// number).
fn slot_avail(w: &Value, slot: Value) -> f64 {
    w["shards"]
        .as_array()
        .expect("shards shown")
        .iter()
        .find(|p| p["slot"] == slot)
        .map_or(0.0, |p| usd(&p["avail"]))
}

/// Traffic falls: two reset runs with no request between them give every
/// idle shard's headroom back to the pool (found through the pool's index
/// entry, moved in transfers conditional on the shard as read); the
/// team's totals are unchanged, and the next request refills its shard.
#[tokio::test]
async fn idle_shards_give_their_headroom_back_to_the_pool_and_refill_on_the_next_request() {
    let app = TestApp::with_settings(SLOW).await;
    let keys = hot_team(&app, "hot-idle", 4, 10.0, 2).await;
    let ids = burst(&app, &keys, 8, "1", 2).await;
    assert_eq!(ids.len(), 8);
    for id in &ids {
        let (status, answer) = app.settle(id, 0.25).await;
        assert_eq!(status, 200, "{answer}");
    }
    let before = shown(&app, "hot-idle").await;
    let on_shards: f64 = (0..4).map(|k| slot_avail(&before, json!(k))).sum();
    assert!(
        on_shards > 0.0,
        "the burst left headroom on the shards: {before}"
    );

    let first = app.reset_at(app.now + chrono::Duration::minutes(1)).await;
    assert!(first.errors.is_empty(), "{first:?}");
    assert_eq!(
        (first.sharded_visited, first.shards_returned),
        (1, 0),
        "{first:?}"
    );
    let second = app.reset_at(app.now + chrono::Duration::minutes(2)).await;
    assert!(second.errors.is_empty(), "{second:?}");
    assert!(second.shards_returned > 0, "{second:?}");
    assert!(
        (second.headroom_returned.as_f64() - on_shards).abs() < 1e-9,
        "{second:?}"
    );
    let after = shown(&app, "hot-idle").await;
    for k in 0..4 {
        assert_eq!(slot_avail(&after, json!(k)), 0.0, "shard {k}: {after}");
    }
    assert_eq!(
        slot_avail(&after, json!("pool")),
        usd(&before["remaining"]),
        "{after}"
    );
    for field in ["spend", "reserved", "remaining", "max_budget"] {
        assert_eq!(usd(&after[field]), usd(&before[field]), "{field}: {after}");
    }
    // A third run finds nothing to move.
    let third = app.reset_at(app.now + chrono::Duration::minutes(3)).await;
    assert_eq!(third.shards_returned, 0, "{third:?}");

    // The next request refills its shard from the pool and is admitted.
    let a = app.authorizer();
    let answer = authorize_via(&a, &keys[0], Some("1"), app.now).await;
    assert!(allowed(&answer), "{answer}");
    let w = shown(&app, "hot-idle").await;
    assert_eq!(usd(&w["reserved"]), 1.0, "{w}");
    assert_eq!(usd(&w["remaining"]), usd(&before["remaining"]) - 1.0, "{w}");
}

/// The job finds sharded entities through their pool's `gsi1` entry, not
/// a scan: a pool written before the entry existed is not visited, and
/// joins the index at its entity's next admin change.
#[tokio::test]
async fn a_pool_without_its_index_entry_joins_it_at_the_next_admin_change() {
    let app = TestApp::with_settings(SLOW).await;
    hot_team(&app, "hot-old", 2, 10.0, 1).await;
    let pool = budget_core::store::dynamo::entity_pk(&EntityRef::team("hot-old").at(SlotId::Pool));
    app.client
        .update_item()
        .table_name(app.store.table())
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(pool.clone()),
        )
        .update_expression("REMOVE gsi1pk, gsi1sk")
        .send()
        .await
        .expect("remove the entry");
    let run = app.reset_at(app.now + chrono::Duration::minutes(1)).await;
    assert_eq!(run.sharded_visited, 0, "{run:?}");
    app.post(
        "/team/update",
        json!({"team_id": "hot-old", "budget_limits": [{"budget_duration": "1d", "max_budget": 12}]}),
    )
    .await;
    let run = app.reset_at(app.now + chrono::Duration::minutes(2)).await;
    assert!(run.errors.is_empty(), "{run:?}");
    assert_eq!(run.sharded_visited, 1, "{run:?}");
}

/// A member budget written as if its check ran before the team was made
/// sharded (the admin race): the team's item refuses the bookkeeping —
/// a version bump its slots would not follow — and requests go on.
#[tokio::test]
async fn a_member_budget_racing_the_sharding_of_its_team_is_refused_and_requests_go_on() {
    use budget_core::model::{Entity, Span, Window};
    use budget_core::store::AdminWrite;
    let app = TestApp::new().await;
    let keys = hot_team(&app, "hot-mem", 4, 10.0, 1).await;
    let team = EntityRef::team("hot-mem");
    let before = app.store.load(&team).await.unwrap().unwrap().version;
    let mut member = Entity::new(EntityRef::team_member("hot-mem", "hot-mem-u"), app.now);
    member.windows.push(Window::open(
        Span::parse_id("1d").unwrap(),
        Money::usd(5),
        false,
        app.now,
        &app.settings.clock,
    ));
    let written = app.store.create(&member).await.unwrap();
    assert_eq!(written, AdminWrite::Missing(team.clone()));
    assert!(app.store.load(&member.entity).await.unwrap().is_none());
    assert_eq!(
        app.store.load(&team).await.unwrap().unwrap().version,
        before
    );
    let answer = app.authorize(&keys[0], Some("1")).await;
    assert!(allowed(&answer), "{answer}");
}

/// A settle tops a low shard up from the pool (a slice, once), so the
/// requests on it do not find it dry.
#[tokio::test]
async fn a_settle_tops_a_low_shard_up_from_the_pool() {
    let app = TestApp::new().await;
    // $16 over 2 shards: a slice is $0.50.
    let keys = hot_team(&app, "hot-top", 2, 16.0, 1).await;
    let answer = app.authorize(&keys[0], Some("0.4")).await;
    assert!(allowed(&answer), "{answer}");
    let w = shown(&app, "hot-top").await;
    let held = |w: &Value| -> Value {
        w["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| usd(&p["reserved"]) == 0.4 || usd(&p["spend"]) == 0.4)
            .cloned()
            .expect("the shard that held")
    };
    assert_eq!(usd(&held(&w)["avail"]), 0.1, "{w}");
    let (status, body) = app.settle(&reservation_id(&answer), 0.4).await;
    assert_eq!(status, 200, "{body}");
    let w = shown(&app, "hot-top").await;
    assert_eq!(usd(&held(&w)["avail"]), 0.6, "topped up by one slice: {w}");
    let pool = w["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["slot"] == "pool")
        .cloned()
        .unwrap();
    assert_eq!(usd(&pool["avail"]), 15.0, "{w}");
    assert_eq!((usd(&w["spend"]), usd(&w["remaining"])), (0.4, 15.6), "{w}");
}
