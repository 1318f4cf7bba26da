//! Budget alerts for owners, off the request path: reads the table's
//! DynamoDB stream (old and new image of every write), finds the windows
//! whose spend crossed a threshold of `max_budget` or the soft budget
//! (`budget_core::alerts`), and puts one EventBridge event per crossing
//! per window period.
//!
//! Exactly once per crossing, whatever the stream does: each alert has an
//! id fixed by entity, window, period and level; a conditional write of
//! the marker `alert#<id>` claims it before the event is sent, so a
//! redelivered batch or a record that arrives after a later one finds it
//! taken. An event that cannot be sent gives its marker back and reports
//! the record as failed (`ReportBatchItemFailures`), so the stream delivers
//! it again from there.

use std::collections::HashMap;
use std::time::Instant;

use async_trait::async_trait;
use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use aws_sdk_dynamodb::types::AttributeValue;
use budget_core::alerts::{crossings, Alert, DETAIL_TYPE, EVENT_SOURCE};
use budget_core::metrics::{Emitter, Record, Unit};
use budget_core::model::Entity;
use budget_core::store::dynamo::{entity_from_image, DynamoStore};
use budget_core::Settings;
use chrono::{DateTime, Utc};

/// Where alerts go.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Sends one alert; an error means it was not sent.
    async fn publish(&self, alert: &Alert) -> Result<(), String>;
}

/// EventBridge: `source` [`EVENT_SOURCE`], `detail-type` [`DETAIL_TYPE`],
/// the alert's [`Alert::detail`] as `detail`, on bus `bus`.
pub struct EventBridge {
    pub client: aws_sdk_eventbridge::Client,
    pub bus: String,
}

#[async_trait]
impl Publisher for EventBridge {
    async fn publish(&self, alert: &Alert) -> Result<(), String> {
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .source(EVENT_SOURCE)
            .detail_type(DETAIL_TYPE)
            .detail(alert.detail().to_string())
            .event_bus_name(&self.bus)
            .build();
        let out = self
            .client
            .put_events()
            .entries(entry)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "PutEvents: {}",
                    aws_sdk_eventbridge::error::DisplayErrorContext(&e)
                )
            })?;
        if out.failed_entry_count() > 0 {
            let why = out
                .entries()
                .iter()
                .filter_map(|e| e.error_code())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!("PutEvents refused the event: {why}"));
        }
        Ok(())
    }
}

/// The stream's attribute values as the SDK's (same DynamoDB JSON).
fn sdk_value(v: serde_dynamo::AttributeValue) -> AttributeValue {
    use serde_dynamo::AttributeValue as D;
    match v {
        D::N(n) => AttributeValue::N(n),
        D::S(s) => AttributeValue::S(s),
        D::Bool(b) => AttributeValue::Bool(b),
        D::B(b) => AttributeValue::B(b.into()),
        D::Null(b) => AttributeValue::Null(b),
        D::M(m) => AttributeValue::M(m.into_iter().map(|(k, v)| (k, sdk_value(v))).collect()),
        D::L(l) => AttributeValue::L(l.into_iter().map(sdk_value).collect()),
        D::Ss(v) => AttributeValue::Ss(v),
        D::Ns(v) => AttributeValue::Ns(v),
        D::Bs(v) => AttributeValue::Bs(v.into_iter().map(Into::into).collect()),
    }
}

fn image(item: &serde_dynamo::Item) -> HashMap<String, AttributeValue> {
    item.iter()
        .map(|(k, v)| (k.clone(), sdk_value(v.clone())))
        .collect()
}

/// What one batch came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BatchSummary {
    pub records: usize,
    /// Alerts this batch sent.
    pub sent: usize,
    /// Crossings already sent (a redelivered or reordered record).
    pub duplicates: usize,
    /// Records that could not be read (skipped, logged).
    pub unreadable: usize,
    pub errors: Vec<String>,
}

/// The alerts of one record: the entity before and after the write.
fn record_alerts(
    record: &EventRecord,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<Vec<Alert>, String> {
    if record.change.new_image.is_empty() {
        return Ok(Vec::new()); // a delete
    }
    let new = entity_from_image(&image(&record.change.new_image)).map_err(|e| e.to_string())?;
    let Some((new, config)) = new else {
        return Ok(Vec::new()); // not a key, user or team
    };
    let old: Option<Entity> = if record.change.old_image.is_empty() {
        None
    } else {
        entity_from_image(&image(&record.change.old_image))
            .map_err(|e| e.to_string())?
            .map(|(e, _)| e)
    };
    Ok(crossings(
        old.as_ref(),
        &new,
        &config,
        &settings.alert_thresholds,
        now,
    ))
}

/// Handles one batch of stream records, in order. Stops at the first
/// record whose alert could not be sent and reports it (and so every later
/// one) for redelivery.
pub async fn handle<P: Publisher>(
    store: &DynamoStore,
    publisher: &P,
    settings: &Settings,
    emitter: &Emitter,
    event: Event,
    now: DateTime<Utc>,
) -> (DynamoDbEventResponse, BatchSummary) {
    let started = Instant::now();
    let mut summary = BatchSummary {
        records: event.records.len(),
        ..BatchSummary::default()
    };
    let mut failed: Option<String> = None;
    'records: for record in &event.records {
        let alerts = match record_alerts(record, settings, now) {
            Ok(a) => a,
            Err(e) => {
                // A corrupt image will not read better next time: skip it.
                summary.unreadable += 1;
                summary
                    .errors
                    .push(format!("record {}: {e}", record.event_id));
                continue;
            }
        };
        for alert in &alerts {
            match deliver(store, publisher, alert, now).await {
                Ok(true) => summary.sent += 1,
                Ok(false) => summary.duplicates += 1,
                Err(e) => {
                    summary.errors.push(format!("alert {}: {e}", alert.id));
                    failed = Some(
                        record
                            .change
                            .sequence_number
                            .clone()
                            .unwrap_or_else(|| record.event_id.clone()),
                    );
                    break 'records;
                }
            }
        }
    }
    let mut response = DynamoDbEventResponse::default();
    if let Some(id) = failed {
        let mut f = DynamoDbBatchItemFailure::default();
        f.item_identifier = Some(id);
        response.batch_item_failures.push(f);
    }
    emitter.emit(&batch_record(&summary, started), now);
    (response, summary)
}

/// Claims `alert`, then sends it; gives the claim back if it was not sent.
/// `Ok(false)`: it had been claimed before.
async fn deliver<P: Publisher>(
    store: &DynamoStore,
    publisher: &P,
    alert: &Alert,
    now: DateTime<Utc>,
) -> Result<bool, String> {
    if !store
        .claim_alert(&alert.id, alert.reset_at, now)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(false);
    }
    if let Err(e) = publisher.publish(alert).await {
        if let Err(r) = store.release_alert(&alert.id).await {
            return Err(format!("{e}; and its marker could not be released: {r}"));
        }
        return Err(e);
    }
    Ok(true)
}

/// The batch's log line. Metrics: `AlertsSent`, `AlertDuplicates`,
/// `AlertErrors`, `Latency`.
fn batch_record(s: &BatchSummary, started: Instant) -> Record {
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    Record::new("notify", "alerts batch")
        .level(if s.errors.is_empty() { "INFO" } else { "ERROR" })
        .field("records", s.records)
        .field("sent", s.sent)
        .field("duplicates", s.duplicates)
        .field("unreadable", s.unreadable)
        .field(
            "errors",
            s.errors.iter().take(5).cloned().collect::<Vec<_>>(),
        )
        .field("latency_ms", latency)
        .metric("AlertsSent", Unit::Count, s.sent as f64)
        .metric("AlertDuplicates", Unit::Count, s.duplicates as f64)
        .metric("AlertErrors", Unit::Count, s.errors.len() as f64)
        .metric("Latency", Unit::Milliseconds, latency)
}
