//! Bad input of any kind: generated authorizer events, settle bodies, admin
//! bodies and durations. Nothing panics; every rejection is a clear 4xx
//! (or an `Unauthorized`/malformed-event error for the authorizer) and
//! writes nothing.
//!
//! `FUZZ_CASES` (default 256) sets the cases per target.

use budget_core::duration::BudgetDuration;
use edge_budget::{at, http_api_event, http_request, response_json, rest_request_event};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};

use crate::helpers::TestApp;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Any JSON value, nested a few levels, with the strings and numbers that
/// break parsers (huge, negative, NaN-like text, control characters).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            Just("NaN".to_string()),
            Just("-1".to_string()),
            Just("1e999".to_string()),
            Just("sk-".to_string()),
            Just("1d".to_string()),
            Just("Bearer ".to_string()),
            ".{0,24}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// Field names the functions know, and others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("type".to_string()),
        Just("version".to_string()),
        Just("headers".to_string()),
        Just("requestContext".to_string()),
        Just("methodArn".to_string()),
        Just("authorizationToken".to_string()),
        Just("reservation_id".to_string()),
        Just("cost".to_string()),
        Just("user_id".to_string()),
        Just("team_id".to_string()),
        Just("key".to_string()),
        Just("max_budget".to_string()),
        Just("budget_duration".to_string()),
        Just("budget_limits".to_string()),
        Just("duration".to_string()),
        Just("blocked".to_string()),
        Just("metadata".to_string()),
        "[a-z_]{1,12}",
    ]
}

/// Authorizer events: fixtures with one field replaced by anything, or
/// anything at all.
fn authorizer_event() -> impl Strategy<Value = Value> {
    let base = prop_oneof![
        Just(http_api_event("sk-not-a-key", Some("1"), "r")),
        Just(rest_request_event("sk-not-a-key", Some("1"), "r")),
        Just(json!({"type": "TOKEN", "authorizationToken": "Bearer sk-x", "methodArn": "arn:x"})),
    ];
    prop_oneof![
        (base, field_name(), json_value()).prop_map(|(mut e, k, v)| {
            e[k] = v;
            e
        }),
        json_value(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizer_events_never_panic_and_write_nothing() {
    let app = TestApp::new().await;
    let handle = tokio::runtime::Handle::current();
    let before = app.snapshot().await;
    let outcomes: [std::cell::Cell<usize>; 3] = Default::default();
    tokio::task::block_in_place(|| {
        runner()
            .run(&authorizer_event(), |event| {
                let answer = handle.block_on(authorize::handle(
                    &app.authorizer,
                    event,
                    at("2026-11-28T15:08:00Z"),
                ));
                match answer {
                    Ok(v) => {
                        let allowed = v["isAuthorized"] == true
                            || v["policyDocument"]["Statement"][0]["Effect"] == "Allow";
                        prop_assert!(!allowed, "an unknown key was allowed: {v}");
                        outcomes[0].set(outcomes[0].get() + 1);
                    }
                    Err(e) if e.to_string() == "Unauthorized" => {
                        outcomes[1].set(outcomes[1].get() + 1)
                    }
                    Err(e) => {
                        prop_assert!(
                            e.to_string().starts_with("malformed authorizer event"),
                            "{e}"
                        );
                        outcomes[2].set(outcomes[2].get() + 1);
                    }
                }
                Ok(())
            })
            .unwrap();
    });
    assert_eq!(app.snapshot().await, before, "nothing written");
    println!(
        "fuzz authorizer: {} events: {} denied, {} Unauthorized, {} malformed; no panic, nothing written",
        outcomes.iter().map(std::cell::Cell::get).sum::<usize>(),
        outcomes[0].get(),
        outcomes[1].get(),
        outcomes[2].get()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_bodies_get_4xx_and_write_nothing() {
    let app = TestApp::new().await;
    let handle = tokio::runtime::Handle::current();
    let before = app.snapshot().await;
    let body = prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        ".{0,64}",
        (json_value(), json_value())
            .prop_map(|(id, cost)| json!({"reservation_id": id, "cost": cost}).to_string()),
    ];
    let path = prop_oneof![
        Just("/spend/settle"),
        Just("/spend/release"),
        Just("/spend/other")
    ];
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::new());
    tokio::task::block_in_place(|| {
        runner()
            .run(&(path, body), |(path, body)| {
                let response = handle.block_on(settle_spend::handle(
                    &app.store,
                    &app.settings,
                    http_request("POST", path, &body, &[]),
                    at("2026-11-28T15:08:00Z"),
                ));
                let (status, answer) = response_json(response);
                prop_assert!(matches!(status, 400 | 404), "{status} for {body}: {answer}");
                prop_assert!(answer["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()));
                *statuses.borrow_mut().entry(status).or_insert(0usize) += 1;
                Ok(())
            })
            .unwrap();
    });
    assert_eq!(app.snapshot().await, before, "nothing written");
    println!(
        "fuzz settle: {:?} (status: count); no panic, nothing written",
        statuses.borrow()
    );
}

#[test]
fn the_duration_parser_never_panics() {
    let accepted = std::cell::Cell::new(0usize);
    let total = std::cell::Cell::new(0usize);
    let strategy = prop_oneof![
        ".{0,12}",
        "[0-9]{0,12}(s|m|h|d|w|mo|y|hr|)",
        "-?[0-9]{1,3}[a-z]{0,3}"
    ];
    runner()
        .run(&strategy, |text| {
            total.set(total.get() + 1);
            match BudgetDuration::parse(&text) {
                Ok(d) => {
                    accepted.set(accepted.get() + 1);
                    prop_assert_eq!(BudgetDuration::parse(&d.to_string()), Ok(d));
                }
                Err(e) => prop_assert!(e.to_string().contains("expected <N><unit>")),
            }
            Ok(())
        })
        .unwrap();
    println!(
        "fuzz durations: {} inputs, {} accepted; no panic",
        total.get(),
        accepted.get()
    );
}
