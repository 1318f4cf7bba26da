//! Faults between the functions and DynamoDB (a proxy on loopback that
//! drops, delays or throttles): authorize fails closed within its
//! deadline, settle answers a retryable 5xx and loses nothing once the
//! store is back, reset resumes where it stopped.

use std::time::{Duration, Instant};

use budget_core::model::EntityRef;
use budget_core::store::prelude::*;
use budget_core::Money;
use chrono::Duration as Span;
use edge_budget::fault_proxy::{Fault, FaultProxy};
use edge_budget::{at, response_json, schedule_event};
use serde_json::json;

use crate::helpers::{authorize_via, emulator, heavy_run, reservation_id, TestApp, NOW};

const DEADLINE: Duration = Duration::from_millis(600);

#[tokio::test]
async fn authorize_fails_closed_within_its_deadline() {
    let alone = heavy_run().await;
    let app = TestApp::alone(&alone, &[]).await;
    let key = app.key().window("1d", 100.0).create().await;
    let proxy = FaultProxy::start(&emulator()).await;
    // Delay last: a delayed request still reaches the store after the
    // authorizer gave up (as a timed-out write may commit on AWS); its
    // reservation is then held until settled or expired, never admitted.
    let faults = [
        Fault::Drop,
        Fault::Throttle,
        Fault::ProvisionedThroughputExceeded,
        Fault::Delay(Duration::from_secs(3)),
    ];
    for fault in faults {
        for warm in [false, true] {
            let a = app.authorizer_on(app.store_via(&proxy.endpoint(), DEADLINE));
            if warm {
                proxy.set(Fault::Pass);
                assert_eq!(
                    authorize_via(&a, &key, Some("1"), app.now).await["isAuthorized"],
                    true
                );
            }
            let before = app.snapshot().await;
            proxy.set(fault);
            let started = Instant::now();
            let answer = authorize_via(&a, &key, Some("1"), app.now).await;
            let took = started.elapsed();
            assert_eq!(answer["isAuthorized"], false, "{fault:?}: {answer}");
            assert_eq!(answer["context"]["reason"], "unavailable", "{fault:?}");
            println!(
                "fault {fault:?} ({}): denied with reason unavailable after {} ms (deadline {} ms)",
                if warm { "warm" } else { "cold" },
                took.as_millis(),
                DEADLINE.as_millis()
            );
            if !matches!(fault, Fault::Delay(_)) {
                // Refused before it reached the store: nothing written.
                assert_eq!(app.snapshot().await, before, "{fault:?}");
            }
        }
    }
    let (requests, faulted) = proxy.counts();
    println!("proxy: {requests} requests, {faulted} faulted");
}

#[tokio::test]
async fn settle_answers_retryable_and_loses_nothing() {
    let alone = heavy_run().await;
    let app = TestApp::alone(&alone, &[]).await;
    let now = at(NOW);
    let key = app.key().window("1d", 100.0).create().await;
    let hash = EntityRef::key(budget_core::keys::hash_key(&key));
    let proxy = FaultProxy::start(&emulator()).await;
    let proxied = app.store_via(&proxy.endpoint(), DEADLINE);

    for fault in [
        Fault::Drop,
        Fault::Throttle,
        Fault::Delay(Duration::from_secs(2)),
    ] {
        let answer = app.authorize(&key, Some("2")).await;
        let id = reservation_id(&answer);
        let body = json!({"reservation_id": id, "cost": 1.25}).to_string();
        proxy.set(fault);
        let response = app
            .settle_spend_via(&proxied, "/spend/settle", &body, now)
            .await;
        assert_eq!(
            response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap()),
            Some("1")
        );
        let (status, error) = response_json(response);
        assert_eq!(status, 503, "{fault:?}: {error}");
        assert_eq!(error["error"]["type"], "service_unavailable");

        // The queue delivers it again once the store is back.
        proxy.set(Fault::Pass);
        tokio::time::sleep(Duration::from_millis(2100)).await; // let a delayed write land
        let (status, done) = response_json(
            app.settle_spend_via(&proxied, "/spend/settle", &body, now)
                .await,
        );
        assert_eq!(status, 200, "{done}");
        assert_eq!(done["cost"], 1.25);
    }
    // Three settles of 1.25, each counted once, nothing still reserved.
    let w = app.window(&hash, "1d").await;
    assert_eq!(
        (w.spent, w.reserved),
        (Money::from_f64(3.75).unwrap(), Money::ZERO)
    );
}

#[tokio::test]
async fn reset_resumes_where_it_stopped() {
    let alone = heavy_run().await;
    let app = TestApp::alone(&alone, &[("RESERVATION_TTL_SECONDS", "5")]).await;
    let now = at(NOW);
    let mut keys = Vec::new();
    for _ in 0..12 {
        let key = app.key().window("10s", 10.0).create().await;
        let answer = app.authorize(&key, Some("1")).await;
        assert_eq!(answer["isAuthorized"], true);
        keys.push(EntityRef::key(budget_core::keys::hash_key(&key)));
    }
    let later = now + Span::seconds(30);
    let proxy = FaultProxy::start(&emulator()).await;
    let proxied = app.store_via(&proxy.endpoint(), DEADLINE);
    proxy.set(Fault::FailAfter(8));
    let first = reset::handle(&proxied, &app.settings, schedule_event(), later).await;
    println!("interrupted run: {first:?}");
    assert!(!first.errors.is_empty());
    assert!(first.windows_reset < 12);

    proxy.set(Fault::Pass);
    let second = reset::handle(&proxied, &app.settings, schedule_event(), later).await;
    println!("resumed run: {second:?}");
    assert!(second.errors.is_empty(), "{second:?}");
    assert_eq!(first.windows_reset + second.windows_reset, 12);
    assert_eq!(
        first.reservations_released + second.reservations_released,
        12
    );
    for k in &keys {
        let e = app.store.load(k).await.unwrap().unwrap();
        let w = &e.windows[0];
        assert_eq!((w.spent, w.reserved), (Money::ZERO, Money::ZERO));
        assert_eq!(w.reset_at, Some(at("2026-11-28T15:08:40Z")));
    }
}
