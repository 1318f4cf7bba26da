//! The log lines of authorize, settle-spend and reset, against DynamoDB:
//! one line per decision, settle and run, each a JSON object whose
//! embedded metrics (CloudWatch EMF) say what happened, and none of which
//! holds the key.

use chrono::Duration;
use serde_json::{json, Value};

use crate::helpers::*;

/// Checks `line` is what CloudWatch extracts metrics from: every metric a
/// directive declares is a number at the root, every dimension a string.
/// Returns the declared metric names with their dimension sets.
fn emf(line: &Value) -> Vec<(Vec<String>, String)> {
    let directives = line["_aws"]["CloudWatchMetrics"]
        .as_array()
        .unwrap_or_else(|| panic!("no EMF directive in {line}"));
    assert!(line["_aws"]["Timestamp"].is_i64(), "{line}");
    let mut out = Vec::new();
    for d in directives {
        let dims: Vec<String> = d["Dimensions"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        for dim in &dims {
            assert!(line[dim].is_string(), "dimension {dim} missing in {line}");
        }
        for m in d["Metrics"].as_array().unwrap() {
            let name = m["Name"].as_str().unwrap().to_string();
            assert!(line[&name].is_number(), "metric {name} missing in {line}");
            out.push((dims.clone(), name));
        }
    }
    out
}

fn metric(line: &Value, name: &str) -> f64 {
    line[name]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} in {line}"))
}

#[tokio::test]
async fn each_decision_is_one_line_with_its_metrics_and_no_key() {
    let app = TestApp::new().await;
    app.user("u-obs").window("1d", 1.0).create().await;
    let key = app.key().user("u-obs").create().await;

    let admitted = app.authorize(&key, Some("0.6")).await;
    assert!(allowed(&admitted));
    let denied = app.authorize(&key, Some("0.6")).await;
    assert!(!allowed(&denied));
    let unknown = app.authorize("sk-not-a-key-0123456789", None).await;
    assert!(!allowed(&unknown));

    let lines = app.lines();
    assert_eq!(lines.len(), 3, "one line per decision: {lines:?}");
    for line in &lines {
        let text = line.to_string();
        assert!(!text.contains(&key), "the key is in a log line: {text}");
        assert_eq!(line["Function"], "authorize");
        let declared = emf(line);
        assert!(declared.contains(&(vec!["Function".into()], "Admitted".into())));
        assert!(metric(line, "Latency") >= 0.0);
        assert!(line["request_id"].is_string(), "{line}");
    }
    let (a, d, u) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!((metric(a, "Admitted"), metric(a, "Denied")), (1.0, 0.0));
    assert_eq!(metric(a, "ReservedUsd"), 0.6);
    assert_eq!(a["reserved_usd"], "0.6");
    assert_eq!(
        a["reservation_id"],
        reservation_id(&admitted).split('.').next().unwrap()
    );
    assert_eq!(a["key"], admitted["context"]["key_hash"]);
    assert!(metric(a, "StoreLatency") > 0.0, "the store was called: {a}");
    assert!(a["store_calls"].as_u64().unwrap() >= 1, "{a}");

    // The denial: counted by reason, the window that decided named.
    assert_eq!((metric(d, "Admitted"), metric(d, "Denied")), (0.0, 1.0));
    assert_eq!(d["Reason"], "budget");
    assert!(emf(d).contains(&(vec!["Function".into(), "Reason".into()], "Denied".into())));
    assert_eq!(
        (d["entity"].as_str(), d["entity_id"].as_str()),
        (Some("user"), Some("u-obs"))
    );
    assert_eq!(
        (d["window"].as_str(), d["limit_usd"].as_str()),
        (Some("1d"), Some("1"))
    );
    assert_eq!(d["key"], a["key"]);
    assert_eq!(metric(d, "ReservedUsd"), 0.0);

    assert_eq!(u["Reason"], "invalid_key");
    assert_eq!(u["key"].as_str().map(str::len), Some(12));
    assert_ne!(u["key"], a["key"]);
}

#[tokio::test]
async fn settles_count_once_and_duplicates_apart() {
    let app = TestApp::new().await;
    app.user("u-obs-s").window("1d", 10.0).create().await;
    let key = app.key().user("u-obs-s").create().await;
    let id = reservation_id(&app.authorize(&key, Some("2")).await);
    assert_eq!(app.settle(&id, 1.25).await.0, 200);
    assert_eq!(app.settle(&id, 1.25).await.0, 200);
    assert_eq!(app.settle("r-unknown", 1.0).await.0, 404);

    let lines: Vec<Value> = app
        .lines()
        .into_iter()
        .filter(|l| l["Function"] == "settle-spend")
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        emf(l);
    }
    let (first, again, unknown) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(
        (metric(first, "Settled"), metric(first, "Duplicates")),
        (1.0, 0.0)
    );
    assert_eq!(metric(first, "SettledUsd"), 1.25);
    assert_eq!(first["cost_usd"], "1.25");
    assert_eq!(first["reserved_usd"], "2");
    assert_eq!(first["reservation_id"], id.split('.').next().unwrap());
    assert_eq!(
        (metric(again, "Settled"), metric(again, "Duplicates")),
        (0.0, 1.0)
    );
    assert_eq!(
        metric(again, "SettledUsd"),
        0.0,
        "a duplicate adds no spend"
    );
    assert_eq!(unknown["status"], 404);
    assert_eq!(metric(unknown, "Errors5xx"), 0.0);
    assert!(unknown.get("reservation_id").is_none(), "{unknown}");
}

#[tokio::test]
async fn a_reset_run_counts_what_it_released_by_expiry() {
    let app = TestApp::with_settings(&[("RESERVATION_TTL_SECONDS", "60")]).await;
    app.user("u-obs-r").window("1d", 10.0).create().await;
    let key = app.key().user("u-obs-r").create().await;
    for _ in 0..2 {
        assert!(allowed(&app.authorize(&key, Some("1")).await));
    }
    app.reset_at(app.now + Duration::seconds(61)).await;
    let run = app
        .lines()
        .into_iter()
        .find(|l| l["Function"] == "reset")
        .expect("a reset line");
    emf(&run);
    assert_eq!(metric(&run, "ReservationsReleased"), 2.0);
    assert_eq!(metric(&run, "ResetBacklog"), 0.0);
    assert_eq!(metric(&run, "ResetLagSeconds"), 0.0);
    assert_eq!(metric(&run, "ResetErrors"), 0.0);
    assert_eq!(run["level"], "INFO");
    assert_eq!(run["trigger"], json!("aws.events / Scheduled Event"));
}
