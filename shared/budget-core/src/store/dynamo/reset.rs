//! The scheduled job's reads and writes: roll over due windows, list
//! entities and expired reservations.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use crate::duration::ResetClock;
use crate::model::Entity;
use crate::plan::{self, Guard};
use crate::store::table::{HELD_SHARDS, PARTITION_KEY};
use crate::store::{Cursor, ResetStore, StoreError};

use super::codec::*;
use super::errors::*;
use super::expr::*;
use super::DynamoStore;

#[async_trait]
impl ResetStore for DynamoStore {
    async fn roll_over(
        &self,
        entity: &Entity,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<Option<usize>, StoreError> {
        let Some(write) = plan::roll_over(entity, now, clock) else {
            return Ok(Some(0));
        };
        let rolled = write
            .guards
            .iter()
            .filter(|g| matches!(g, Guard::ResetAtIs(..)))
            .count();
        let mut ex = Expr::default();
        let (conds, sets) = render(&mut ex, &write);
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(entity_pk(&entity.entity))))
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression(conds.join(" AND "))
            .set_expression_attribute_names(ex.names())
            .set_expression_attribute_values(ex.values());
        let result = send_plain(|| request.clone().send()).await;
        match result {
            Ok(_) => Ok(Some(rolled)),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(None)
            }
            Err(e) => Err(unavailable("roll over", e)),
        }
    }

    async fn scan_entities(&self, cursor: Cursor) -> Result<(Vec<Entity>, Cursor), StoreError> {
        let mut ex = Expr::default();
        let kind = ex.name("kind");
        let (k, u, t) = (ex.value(s("key")), ex.value(s("user")), ex.value(s("team")));
        let page = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression(format!("{kind} IN ({k}, {u}, {t})"))
            .set_expression_attribute_names(ex.names())
            .set_expression_attribute_values(ex.values())
            .consistent_read(true)
            .set_exclusive_start_key(cursor.map(key_of))
            .send()
            .await
            .map_err(|e| unavailable("scan", e))?;
        let entities = page
            .items()
            .iter()
            .map(entity_from_item)
            .collect::<Result<Vec<_>, _>>()?;
        // The table's key is its partition key alone: the cursor is it.
        let next = page
            .last_evaluated_key()
            .and_then(|k| match k.get(PARTITION_KEY) {
                Some(AttributeValue::S(pk)) => Some(pk.clone()),
                _ => None,
            });
        Ok((entities, next))
    }

    async fn expired_reservations(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // The index holds keys only (no write amplification on every
        // counter update); the sort key already says the expiry is due.
        let mut out = Vec::new();
        for shard in 0..HELD_SHARDS {
            let items = self
                .query_all(
                    "gsi1",
                    "gsi1pk",
                    format!("held#{shard}"),
                    Some(("gsi1sk", expiry_sort_key(now))),
                    limit,
                )
                .await?;
            out.extend(
                items
                    .iter()
                    .filter_map(|item| match item.get(PARTITION_KEY) {
                        Some(AttributeValue::S(pk)) => pk.strip_prefix("res#").map(str::to_string),
                        _ => None,
                    }),
            );
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
