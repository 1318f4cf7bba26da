//! What the `notify` function needs from the table: entities as a stream
//! record carries them, and the marker that makes each budget alert go out
//! once (`alert#<id>`, written only if absent).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use crate::alerts::AlertConfig;
use crate::escrow;
use crate::model::{Entity, EntityRef};
use crate::store::table::{PARTITION_KEY, TTL_ATTRIBUTE};
use crate::store::{BudgetStore, Isolated, StoreError};

use super::codec::{alert_config_of, entity_from_item, entity_pk, entity_ref_from_pk};
use super::errors::{backoff, unavailable};
use super::expr::{key_of, n, s};
use super::DynamoStore;

/// Markers outlive their window period by this much: past the stream's 24
/// hours of retention (and notify's one hour of record age), a record of
/// the period can no longer arrive.
const MARKER_RETENTION_SECONDS: i64 = 2 * 24 * 3600;
/// Isolated reads of a sharded owner's slots before its totals count as
/// unavailable (each cancelled read backs off 5–10 ms, 10–20 ms, …).
const ALERT_READ_TRIES: usize = 5;

/// A marker claimed this long ago and still `pending` belongs to a sender
/// that died before it could say the event went out (twice notify's 30 s
/// timeout: no live invocation holds it).
pub const CLAIM_LEASE_SECONDS: i64 = 60;

/// What claiming an alert's marker found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This caller holds it (`pending`) and sends the event.
    Taken,
    /// The event went out before.
    Sent,
    /// Another sender holds it, claimed less than [`CLAIM_LEASE_SECONDS`]
    /// ago: try again later (it may have died mid-send).
    InFlight,
}

/// The key, user or team in a stream image with what it asks to be alerted
/// on; `None` for any other item (a reservation, a meta item, a marker, an
/// escrow slot of a sharded budget: a slot's part of a window is no
/// budget of its own).
pub fn entity_from_image(
    item: &HashMap<String, AttributeValue>,
) -> Result<Option<(crate::model::Entity, AlertConfig)>, StoreError> {
    let is_entity = matches!(item.get(PARTITION_KEY), Some(AttributeValue::S(pk))
        if entity_ref_from_pk(pk).is_some_and(|e| e.slot.is_none()));
    if !is_entity {
        return Ok(None);
    }
    Ok(Some((entity_from_item(item)?, alert_config_of(item))))
}

/// The owner of the escrow slot in a stream write (`old` → `new`) whose
/// write raised a window's spend in its period (a settle on a shard of a
/// sharded budget); `None` for any other write and any other item. The
/// owner's alerts are then decided on its totals
/// ([`DynamoStore::sharded_totals`]): a slot's part of a window is no
/// budget of its own.
pub fn slot_spend_rose(
    old: &HashMap<String, AttributeValue>,
    new: &HashMap<String, AttributeValue>,
) -> Result<Option<EntityRef>, StoreError> {
    let Some(AttributeValue::S(pk)) = new.get(PARTITION_KEY) else {
        return Ok(None);
    };
    let Some(slot) = entity_ref_from_pk(pk).filter(|e| e.slot.is_some()) else {
        return Ok(None);
    };
    let after = entity_from_item(new)?;
    let before = if old.is_empty() {
        None
    } else {
        Some(entity_from_item(old)?)
    };
    let rose = after.windows.iter().any(|w| {
        let was = before
            .as_ref()
            .and_then(|b| {
                b.windows
                    .iter()
                    .find(|x| x.id() == w.id() && x.reset_at == w.reset_at)
            })
            .map_or(crate::money::Money::ZERO, |x| x.spent);
        w.spent > was
    });
    Ok(rose.then(|| slot.owner()))
}

fn marker_pk(alert_id: &str) -> String {
    format!("alert#{alert_id}")
}

impl DynamoStore {
    /// A sharded entity as `/…/info` shows it (each window's spend summed
    /// over its slots, read in one isolated read) with what it asks to be
    /// alerted on; `None` if it no longer exists or is no longer sharded
    /// (its own item's records alert then).
    pub async fn sharded_totals(
        &self,
        owner: &EntityRef,
    ) -> Result<Option<(Entity, AlertConfig)>, StoreError> {
        let out = self
            .client()
            .get_item()
            .table_name(self.table())
            .set_key(Some(key_of(entity_pk(owner))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get item", e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let entity = entity_from_item(item)?;
        let refs = escrow::slot_refs(&entity);
        if refs.is_empty() {
            return Ok(None);
        }
        // Cancelled while a slot is in a transaction (a hot budget's
        // usually are): read again a few times, jittered, before failing.
        let mut slots = None;
        for attempt in 0..ALERT_READ_TRIES {
            match self.load_isolated(&refs).await? {
                Isolated::Read(read) => {
                    slots = Some(read);
                    break;
                }
                Isolated::Busy => backoff(attempt).await,
            }
        }
        let Some(slots) = slots else {
            return Err(StoreError::Unavailable(format!(
                "isolated read of the slots: busy {ALERT_READ_TRIES} times"
            )));
        };
        Ok(Some((
            escrow::totals(&entity, &slots),
            alert_config_of(item),
        )))
    }

    /// Claims the alert `alert_id` for this caller (one conditional write
    /// of a `pending` marker): absent, or `pending` for longer than the
    /// lease, it is [`Claim::Taken`]; otherwise the marker says whether it
    /// was sent or is being sent. `period_end` (none for lifetime budgets)
    /// bounds how long the marker stays.
    pub async fn claim_alert(
        &self,
        alert_id: &str,
        period_end: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Claim, StoreError> {
        let mut put = self
            .client()
            .put_item()
            .table_name(self.table())
            .item(PARTITION_KEY, s(marker_pk(alert_id)))
            .item("kind", s("alert"))
            .item("state", s("pending"))
            .item("at", n(now.timestamp()))
            .condition_expression(
                "attribute_not_exists(#pk) OR (#state = :pending AND #at < :stale)",
            )
            .expression_attribute_names("#pk", PARTITION_KEY)
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#at", "at")
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":stale", n(now.timestamp() - CLAIM_LEASE_SECONDS));
        if let Some(end) = period_end {
            put = put.item(TTL_ATTRIBUTE, n(end.timestamp() + MARKER_RETENTION_SECONDS));
        }
        match put.send().await {
            Ok(_) => Ok(Claim::Taken),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                let marker = self
                    .client()
                    .get_item()
                    .table_name(self.table())
                    .set_key(Some(key_of(marker_pk(alert_id))))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| unavailable("read alert marker", e))?;
                // A marker of an older version has no state: it was sent.
                let pending = marker
                    .item()
                    .and_then(|i| i.get("state"))
                    .is_some_and(|v| matches!(v, AttributeValue::S(s) if s == "pending"));
                Ok(if pending {
                    Claim::InFlight
                } else {
                    Claim::Sent
                })
            }
            Err(e) => Err(unavailable("claim alert", e)),
        }
    }

    /// Marks a claimed alert sent: no later claim takes it.
    pub async fn alert_sent(&self, alert_id: &str) -> Result<(), StoreError> {
        self.client()
            .update_item()
            .table_name(self.table())
            .set_key(Some(key_of(marker_pk(alert_id))))
            .update_expression("SET #state = :sent")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":sent", s("sent"))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("mark alert sent", e))
    }

    /// Gives a claimed alert back (its event could not be sent), so a
    /// redelivery of the record sends it.
    pub async fn release_alert(&self, alert_id: &str) -> Result<(), StoreError> {
        self.client()
            .delete_item()
            .table_name(self.table())
            .key(PARTITION_KEY, s(marker_pk(alert_id)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("release alert", e))
    }
}
