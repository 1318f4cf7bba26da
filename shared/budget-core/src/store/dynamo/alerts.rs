//! What the `notify` function needs from the table: entities as a stream
//! record carries them, and the marker that makes each budget alert go out
//! once (`alert#<id>`, written only if absent).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use crate::alerts::AlertConfig;
use crate::store::table::{PARTITION_KEY, TTL_ATTRIBUTE};
use crate::store::StoreError;

use super::codec::{alert_config_of, entity_from_item, entity_ref_from_pk};
use super::errors::unavailable;
use super::expr::{n, s};
use super::DynamoStore;

/// Markers outlive their window period by this much (a record redelivered
/// later than that is past its period and alerts nothing anyway).
const MARKER_RETENTION_SECONDS: i64 = 35 * 24 * 3600;

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

fn marker_pk(alert_id: &str) -> String {
    format!("alert#{alert_id}")
}

impl DynamoStore {
    /// Takes the alert `alert_id` for this caller: `true` if nobody had
    /// (one conditional write), `false` if it was sent or is being sent.
    /// `period_end` (none for lifetime budgets) bounds how long the marker
    /// stays.
    pub async fn claim_alert(
        &self,
        alert_id: &str,
        period_end: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut put = self
            .client()
            .put_item()
            .table_name(self.table())
            .item(PARTITION_KEY, s(marker_pk(alert_id)))
            .item("kind", s("alert"))
            .item("at", n(now.timestamp()))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PARTITION_KEY);
        if let Some(end) = period_end {
            put = put.item(TTL_ATTRIBUTE, n(end.timestamp() + MARKER_RETENTION_SECONDS));
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(unavailable("claim alert", e)),
        }
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
