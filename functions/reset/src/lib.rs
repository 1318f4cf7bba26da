//! The scheduled job: rolls over every window past its boundary and
//! releases reservations nobody settled in time. Budgets never wait for
//! it (authorize rolls windows lazily); it keeps the table tidy and frees
//! budget held by requests that died.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use budget_core::metrics::{reset_record, Emitter};
use budget_core::service::{reset, ResetSummary};
use budget_core::store::ResetStore;
use budget_core::Settings;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// Where the run was triggered from, for the log.
fn trigger(event: &Value) -> String {
    match serde_json::from_value::<EventBridgeEvent<Value>>(event.clone()) {
        Ok(e) => format!("{} / {}", e.source, e.detail_type),
        // EventBridge Scheduler passes its `Input` as is; a manual run
        // may pass anything.
        Err(_) => "direct invocation".to_string(),
    }
}

/// Runs the job once. Accepts any JSON event. Writes the run's log line
/// (with its metrics) to standard output.
pub async fn handle<S: ResetStore>(
    store: &S,
    settings: &Settings,
    event: Value,
    now: DateTime<Utc>,
) -> ResetSummary {
    let emitter = Emitter::stdout(&settings.metrics_namespace);
    handle_logged(store, settings, &emitter, event, now).await
}

/// [`handle`], writing the run's line to `emitter`.
pub async fn handle_logged<S: ResetStore>(
    store: &S,
    settings: &Settings,
    emitter: &Emitter,
    event: Value,
    now: DateTime<Utc>,
) -> ResetSummary {
    let started = std::time::Instant::now();
    let summary = reset(store, now, settings).await;
    emitter.emit(
        &reset_record(&summary, &trigger(&event), started.elapsed()),
        now,
    );
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_its_trigger() {
        let scheduled = serde_json::json!({
            "version": "0", "id": "x", "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "1", "time": "2026-11-28T00:00:00Z",
            "region": "us-east-1", "resources": [], "detail": {}
        });
        assert_eq!(trigger(&scheduled), "aws.events / Scheduled Event");
        assert_eq!(trigger(&serde_json::json!({"any": 1})), "direct invocation");
    }
}
