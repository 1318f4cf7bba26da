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
//!
//! A sharded budget (`budget_shards` ≥ 2) spends on its escrow slots, not
//! on its own item: a slot write that raised a window's spend makes notify
//! read the owner's totals (all slots, one isolated read, at most once per
//! owner per batch) and send every level the totals have reached that is
//! not sent yet. "Reached" rather than "crossed by this write": the totals
//! are read after the write, maybe after later ones too, so the write that
//! crossed may not be told apart — the marker still keeps each alert to
//! one per period, and levels already sent are remembered by the instance
//! so a busy budget does not retry their markers on every batch.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use aws_lambda_events::event::dynamodb::{Event, EventRecord};
use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use aws_sdk_dynamodb::types::AttributeValue;
use budget_core::alerts::{crossings, Alert, DETAIL_TYPE, EVENT_SOURCE};
use budget_core::metrics::{Emitter, Record, Unit};
use budget_core::model::{Entity, EntityRef};
use budget_core::store::dynamo::{
    entity_from_image, slot_spend_rose, Claim, DynamoStore, CLAIM_LEASE_SECONDS,
};
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
    /// `ALERT_STACK`: put in each event's `detail.stack`, so the rules of
    /// two stacks in one account tell their alerts apart.
    pub stack: Option<String>,
}

#[async_trait]
impl Publisher for EventBridge {
    async fn publish(&self, alert: &Alert) -> Result<(), String> {
        let mut detail = alert.detail();
        if let (Some(stack), Some(map)) = (&self.stack, detail.as_object_mut()) {
            map.insert("stack".into(), stack.clone().into());
        }
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .source(EVENT_SOURCE)
            .detail_type(DETAIL_TYPE)
            .detail(detail.to_string())
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

/// What one record asks of notify.
enum Work {
    /// The alerts its write crossed (a key, user or team item).
    Alerts(Vec<Alert>),
    /// A sharded budget's slot whose spend rose: its owner's totals decide.
    Sharded(EntityRef),
}

/// The work of one record: the entity before and after the write.
fn record_work(
    record: &EventRecord,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<Work, String> {
    if record.change.new_image.is_empty() {
        return Ok(Work::Alerts(Vec::new())); // a delete
    }
    let new_image = image(&record.change.new_image);
    let old_image = image(&record.change.old_image);
    if let Some(owner) = slot_spend_rose(&old_image, &new_image).map_err(|e| e.to_string())? {
        return Ok(Work::Sharded(owner));
    }
    let new = entity_from_image(&new_image).map_err(|e| e.to_string())?;
    let Some((new, config)) = new else {
        return Ok(Work::Alerts(Vec::new())); // not a key, user or team
    };
    let old: Option<Entity> = if old_image.is_empty() {
        None
    } else {
        entity_from_image(&old_image)
            .map_err(|e| e.to_string())?
            .map(|(e, _)| e)
    };
    Ok(Work::Alerts(crossings(
        old.as_ref(),
        &new,
        &config,
        &settings.alert_thresholds,
        now,
    )))
}

/// The levels a sharded budget's totals have reached (every level at or
/// below its spend in the current period).
async fn sharded_alerts(
    store: &DynamoStore,
    owner: &EntityRef,
    settings: &Settings,
    now: DateTime<Utc>,
) -> Result<Vec<Alert>, String> {
    // The store reads the slots again a few times while they are busy.
    let read = store
        .sharded_totals(owner)
        .await
        .map_err(|e| e.to_string())?;
    let Some((totals, config)) = read else {
        return Ok(Vec::new());
    };
    Ok(crossings(
        None,
        &totals,
        &config,
        &settings.alert_thresholds,
        now,
    ))
}

/// Alert ids this instance has sent or found sent (sharded budgets only,
/// whose levels are looked at again on every batch); forgotten wholesale
/// past [`SENT_CACHE`] entries — a forgotten one costs one refused marker
/// write.
fn sent_cache() -> &'static Mutex<HashSet<String>> {
    static SENT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SENT.get_or_init(|| Mutex::new(HashSet::new()))
}
const SENT_CACHE: usize = 50_000;

fn remember_sent(id: &str) {
    let mut sent = sent_cache().lock().unwrap_or_else(|p| p.into_inner());
    if sent.len() >= SENT_CACHE {
        sent.clear();
    }
    sent.insert(id.to_string());
}

fn known_sent(id: &str) -> bool {
    sent_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(id)
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
    // Sharded owners already looked at in this batch: their totals were
    // read after every write of the batch that came before.
    let mut owners_seen: HashSet<String> = HashSet::new();
    'records: for record in &event.records {
        let record_id = || {
            record
                .change
                .sequence_number
                .clone()
                .unwrap_or_else(|| record.event_id.clone())
        };
        let (alerts, sharded) = match record_work(record, settings, now) {
            Ok(Work::Alerts(a)) => (a, false),
            Ok(Work::Sharded(owner)) => {
                if !owners_seen.insert(format!("{}#{}", owner.kind.as_str(), owner.id)) {
                    continue;
                }
                match sharded_alerts(store, &owner, settings, now).await {
                    Ok(a) => (a, true),
                    Err(e) => {
                        // Not retried from here: a hot budget could hold
                        // the stream's shard (and every other entity's
                        // alerts on it) back. Its next settle reads the
                        // totals again; the error is counted (AlertErrors).
                        summary
                            .errors
                            .push(format!("record {}: sharded totals: {e}", record.event_id));
                        continue;
                    }
                }
            }
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
            if sharded && known_sent(&alert.id) {
                summary.duplicates += 1;
                continue;
            }
            match deliver(store, publisher, alert, now).await {
                Ok(delivered) => {
                    match delivered {
                        Delivered::Sent => summary.sent += 1,
                        Delivered::Duplicate => summary.duplicates += 1,
                    }
                    if sharded {
                        remember_sent(&alert.id);
                    }
                }
                Err(e) => {
                    summary.errors.push(format!("alert {}: {e}", alert.id));
                    failed = Some(record_id());
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

/// What became of one alert.
enum Delivered {
    Sent,
    /// Sent before (or being sent by a live invocation: see [`Claim`]).
    Duplicate,
}

/// Claims `alert`, then sends it, then marks it sent; gives the claim back
/// if it was not sent. A marker another sender holds is an error (the
/// record is retried): that sender may have died mid-send, and its lease
/// runs out. An event sent whose marker could not be marked sent is
/// counted sent (the marker stays `pending`; a later record past the
/// lease may send it once more — deduplicate on `alert_id`).
async fn deliver<P: Publisher>(
    store: &DynamoStore,
    publisher: &P,
    alert: &Alert,
    now: DateTime<Utc>,
) -> Result<Delivered, String> {
    match store
        .claim_alert(&alert.id, alert.reset_at, now)
        .await
        .map_err(|e| e.to_string())?
    {
        Claim::Taken => {}
        Claim::Sent => return Ok(Delivered::Duplicate),
        Claim::InFlight => {
            return Err(format!(
                "claimed by another sender less than {CLAIM_LEASE_SECONDS} s ago; retried"
            ))
        }
    }
    if let Err(e) = publisher.publish(alert).await {
        if let Err(r) = store.release_alert(&alert.id).await {
            return Err(format!(
                "{e}; and its marker could not be released (it is sent after the lease): {r}"
            ));
        }
        return Err(e);
    }
    if let Err(e) = store.alert_sent(&alert.id).await {
        tracing::warn!(alert = %alert.id, error = %e, "alert sent, marker left pending");
    }
    Ok(Delivered::Sent)
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
