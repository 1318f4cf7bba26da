//! The scheduled job's reads and writes: roll over due windows, list the
//! entities that are due and the expired reservations (from indexes: never
//! a scan of the table).

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, TimeZone, Utc};

use crate::duration::ResetClock;
use crate::model::{Entity, EntityRef, SlotId};
use crate::plan::{self, Guard};
use crate::store::table::{
    DUE_INDEX, DUE_PK, DUE_SHARDS, DUE_SK, HELD_SHARDS, HOT_SHARDS, PARTITION_KEY,
};
use crate::store::{ResetStore, ShardedVisit, StoreError};

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
        let write = plan::roll_over(entity, now, clock);
        if write.changes.is_empty() {
            return Ok(Some(0));
        }
        let rolled = write
            .guards
            .iter()
            .filter(|g| matches!(g, Guard::ResetAtIs(..)))
            .count();
        let mut ex = Expr::default();
        let Rendered {
            conds,
            sets,
            removes,
        } = render(&mut ex, &write);
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(entity_pk(&entity.entity))))
            .update_expression(update_expression(&sets, &removes))
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

    async fn due_entities(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Entity>, StoreError> {
        // The index holds keys only (a counter update never rewrites an
        // index entry): its sort key says the entity is due, the items
        // themselves are then read (strongly consistent, 100 a request).
        let mut pks = Vec::new();
        for shard in 0..DUE_SHARDS {
            let items = self
                .query_all(
                    DUE_INDEX,
                    DUE_PK,
                    format!("due#{shard}"),
                    Some((DUE_SK, expiry_sort_key(now))),
                    limit - pks.len(),
                )
                .await?;
            pks.extend(
                items
                    .iter()
                    .filter_map(|item| match item.get(PARTITION_KEY) {
                        Some(AttributeValue::S(pk)) => Some(pk.clone()),
                        _ => None,
                    }),
            );
            if pks.len() >= limit {
                pks.truncate(limit);
                break;
            }
        }
        if pks.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = self
            .batch_get(pks)
            .await?
            .iter()
            .map(entity_from_item)
            .collect::<Result<Vec<_>, _>>()?;
        found.sort_by(|a, b| a.entity.cmp(&b.entity));
        Ok(found)
    }

    async fn expired_reservations(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        // The index holds keys only (no write amplification on every
        // counter update); the sort key is the expiry.
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
            out.extend(items.iter().filter_map(|item| {
                match (item.get(PARTITION_KEY), item.get("gsi1sk")) {
                    (Some(AttributeValue::S(pk)), Some(AttributeValue::S(sk))) => {
                        let id = pk.strip_prefix("res#")?.to_string();
                        let at = Utc.timestamp_opt(sk.parse().ok()?, 0).single()?;
                        Some((id, at))
                    }
                    _ => None,
                }
            }));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn sharded_entities(&self, limit: usize) -> Result<Vec<EntityRef>, StoreError> {
        // The pools' `hot#<shard>` entries (keys only): one query per
        // shard of the index, a page holding thousands of entries.
        let mut out = Vec::new();
        for shard in 0..HOT_SHARDS {
            let items = self
                .query_all("gsi1", "gsi1pk", format!("hot#{shard}"), None, limit)
                .await?;
            out.extend(items.iter().filter_map(|item| {
                match item.get(PARTITION_KEY) {
                    Some(AttributeValue::S(pk)) => entity_ref_from_pk(pk)
                        .filter(|r| r.slot == Some(SlotId::Pool))
                        .map(|r| r.owner()),
                    _ => None,
                }
            }));
        }
        out.sort();
        out.dedup();
        out.truncate(limit);
        Ok(out)
    }

    async fn visit_sharded(&self, entities: &[EntityRef]) -> Result<Vec<ShardedVisit>, StoreError> {
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        // The entities' items (100 a request, in order), then all their
        // slots.
        let mut owners = crate::store::Reads::load_many(self, entities).await?;
        owners.retain(crate::escrow::is_sharded);
        let slot_pks: Vec<String> = owners
            .iter()
            .flat_map(crate::escrow::slot_refs)
            .map(|r| entity_pk(&r))
            .collect();
        let slot_items = self.batch_get(slot_pks).await?;
        let mut slots = Vec::with_capacity(slot_items.len());
        let mut seen = std::collections::HashMap::new();
        for item in &slot_items {
            let slot = entity_from_item(item)?;
            if slot.entity.slot == Some(SlotId::Pool) {
                if let Some(AttributeValue::S(record)) = item.get(VISIT) {
                    seen.insert(slot.entity.owner(), record.clone());
                }
            }
            slots.push(slot);
        }
        Ok(owners
            .into_iter()
            .map(|e| {
                let mine: Vec<Entity> = slots
                    .iter()
                    .filter(|s| s.entity.owner() == e.entity)
                    .cloned()
                    .collect();
                ShardedVisit {
                    seen: seen.remove(&e.entity),
                    slots: mine,
                    entity: e,
                }
            })
            .collect())
    }

    async fn record_visit(&self, pool: &Entity, record: &str) -> Result<bool, StoreError> {
        // Only on the pool as read (never creating an item for a pool
        // deleted meanwhile); a plain write of one attribute, no index
        // entry moved.
        let mut ex = Expr::default();
        let pk = ex.name(PARTITION_KEY);
        let conds = [
            format!("attribute_exists({pk})"),
            incarnation_is(&mut ex, pool.incarnation),
        ];
        let (visit, value) = (ex.name(VISIT), ex.value(s(record.to_string())));
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(entity_pk(&pool.entity))))
            .update_expression(format!("SET {visit} = {value}"))
            .condition_expression(conds.join(" AND "))
            .set_expression_attribute_names(ex.names())
            .set_expression_attribute_values(ex.values());
        match request.send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e))
                if e.err().is_conditional_check_failed_exception()
                    || e.err().is_transaction_conflict_exception() =>
            {
                Ok(false)
            }
            Err(e) => Err(unavailable("record visit", e)),
        }
    }
}
