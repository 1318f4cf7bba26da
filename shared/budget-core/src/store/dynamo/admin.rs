//! The management API's writes: create, update and delete entities (with
//! the key counts of their owners), and the owner snapshots keys carry.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, TransactWriteItem};

use crate::model::{Entity, EntityKind, EntityRef};
use crate::plan::{self, WindowEdit};
use crate::store::table::PARTITION_KEY;
use crate::store::{AdminStore, AdminWrite, Reads, StoreError};

use super::codec::*;
use super::errors::*;
use super::expr::*;
use super::DynamoStore;

impl DynamoStore {
    /// The snapshots of `owners` (as they are now) for a key item.
    pub(super) async fn owner_snapshots(
        &self,
        owners: &[EntityRef],
    ) -> Result<AttributeValue, StoreError> {
        let loaded = self.load_many(owners).await?;
        Ok(AttributeValue::M(
            loaded
                .iter()
                .map(|o| (o.entity.kind.as_str().to_string(), owner_snapshot(o)))
                .collect(),
        ))
    }

    /// After an admin update: a user or team refreshes the snapshot in
    /// each of its keys (never replacing a newer one), a key re-reads its
    /// owners. Best effort: a snapshot left stale costs a cold authorizer
    /// one more read, never a wrong admission.
    pub(super) async fn refresh_snapshots(&self, old: &Entity, new: &Entity) {
        let result = match new.entity.kind {
            EntityKind::Key => match self.owner_snapshots(&new.owners()).await {
                Ok(snapshots) => {
                    let mut ex = Expr::default();
                    let owners = ex.name(OWNERS);
                    let v = ex.value(snapshots);
                    let pk = ex.name(PARTITION_KEY);
                    let request = self
                        .client
                        .update_item()
                        .table_name(&self.table)
                        .set_key(Some(key_of(entity_pk(&new.entity))))
                        .update_expression(format!("SET {owners} = {v}"))
                        .condition_expression(format!("attribute_exists({pk})"))
                        .set_expression_attribute_names(ex.names())
                        .set_expression_attribute_values(ex.values());
                    send_plain(|| request.clone().send())
                        .await
                        .map(|_| ())
                        .map_err(|e| unavailable("refresh key snapshot", e))
                }
                Err(e) => Err(e),
            },
            EntityKind::User | EntityKind::Team => {
                // The stored form: kept windows keep their generation.
                let mut stored = new.clone();
                stored.version = old.version + 1;
                for w in &mut stored.windows {
                    if let Some(o) = old.window(&w.id()) {
                        w.generation = o.generation;
                    }
                }
                self.push_snapshot(&stored).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "owner snapshot not refreshed");
        }
    }

    pub(super) async fn push_snapshot(&self, owner: &Entity) -> Result<(), StoreError> {
        let snapshot = owner_snapshot(owner);
        for key in self.keys_of(&owner.entity).await? {
            let mut ex = Expr::default();
            let owners = ex.name(OWNERS);
            let kind = ex.name(owner.entity.kind.as_str());
            let ver = ex.name("ver");
            let v = ex.value(n(owner.version as i64));
            let inc = ex.name(INCARNATION);
            let inc_value = ex.value(n(owner.incarnation as i64));
            let snap = ex.value(snapshot.clone());
            let request = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_of(entity_pk(&EntityRef::key(key)))))
                .update_expression(format!("SET {owners}.{kind} = {snap}"))
                .condition_expression(format!(
                    "attribute_exists({owners}) AND (attribute_not_exists({owners}.{kind}) OR {owners}.{kind}.{ver} < {v} OR {owners}.{kind}.{inc} <> {inc_value} OR attribute_not_exists({owners}.{kind}.{inc}))"
                ))
                .set_expression_attribute_names(ex.names())
                .set_expression_attribute_values(ex.values());
            let result = send_plain(|| request.clone().send()).await;
            match result {
                Ok(_) => {}
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(unavailable("push owner snapshot", e)),
            }
        }
        Ok(())
    }
}

#[async_trait]
impl AdminStore for DynamoStore {
    async fn create(&self, entity: &Entity) -> Result<AdminWrite, StoreError> {
        let mut item = entity_item(entity);
        let owners = entity.owners();
        if !owners.is_empty() {
            item.insert(OWNERS.into(), self.owner_snapshots(&owners).await?);
        }
        let put = self.put(item, "attribute_not_exists(pk)")?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        for owner in &owners {
            items.push(count_key(self, owner, 1)?);
        }
        match transact(&self.client, items).await? {
            TxOutcome::Committed => Ok(AdminWrite::Done),
            TxOutcome::Busy => Ok(AdminWrite::Conflict),
            TxOutcome::Failed(failed) => Ok(admin_cancellation(
                &failed,
                &owners,
                AdminWrite::AlreadyExists,
            )),
        }
    }

    async fn update(&self, old: &Entity, new: &Entity) -> Result<AdminWrite, StoreError> {
        let (guards, edits, due) = plan::update(old, new);
        let mut ex = Expr::default();
        let conds = guards.iter().map(|g| render_guard(&mut ex, g)).collect();
        let (ver, one) = (ex.name("ver"), ex.value(n(1)));
        let mut sets = vec![format!("{ver} = {ver} + {one}")];
        let mut removes = Vec::new();
        let config = entity_config_attributes(new);
        for (name, value) in &config {
            let p = ex.name(name);
            let v = ex.value(value.clone());
            sets.push(format!("{p} = {v}"));
        }
        for name in OPTIONAL_CONFIG {
            if !config.iter().any(|(n, _)| n == name) {
                removes.push(ex.name(name));
            }
        }
        for edit in &edits {
            match edit {
                WindowEdit::Limit { id, max, legacy } => {
                    let (max_path, legacy_path) =
                        (ex.path(&["w", id, "max"]), ex.path(&["w", id, "legacy"]));
                    let (mv, lv) = (
                        ex.value(money(*max)),
                        ex.value(AttributeValue::Bool(*legacy)),
                    );
                    sets.push(format!("{max_path} = {mv}"));
                    sets.push(format!("{legacy_path} = {lv}"));
                }
                WindowEdit::Open(w) => {
                    let path = ex.path(&["w", &w.id()]);
                    let v = ex.value(window_item(w));
                    sets.push(format!("{path} = {v}"));
                }
                WindowEdit::Drop(id) => removes.push(ex.path(&["w", id])),
            }
        }
        if let plan::Change::SetNextDue(at) = due {
            let (set, remove) = render_due(&mut ex, &old.entity, at);
            sets.extend(set);
            removes.extend(remove);
        }
        let update = self.update(entity_pk(&old.entity), sets, removes, conds, &ex)?;
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        // A key that changes owner moves its count from the old to the new.
        let (left, joined) = plan::owners_moved(old, new);
        for owner in &left {
            items.push(count_key(self, owner, -1)?);
        }
        let mut added = Vec::new();
        for owner in joined {
            items.push(count_key(self, &owner, 1)?);
            added.push((items.len() - 1, owner));
        }
        match transact(&self.client, items).await? {
            TxOutcome::Committed => {
                self.refresh_snapshots(old, new).await;
                Ok(AdminWrite::Done)
            }
            TxOutcome::Busy => Ok(AdminWrite::Conflict),
            TxOutcome::Failed(failed) => {
                for (i, owner) in &added {
                    if failed.get(*i) == Some(&true) {
                        return Ok(AdminWrite::Missing(owner.clone()));
                    }
                }
                Ok(AdminWrite::Conflict)
            }
        }
    }

    async fn delete(&self, entity: &Entity) -> Result<AdminWrite, StoreError> {
        let mut ex = Expr::default();
        let condition = plan::delete(entity)
            .iter()
            .map(|g| render_guard(&mut ex, g))
            .collect::<Vec<_>>()
            .join(" AND ");
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key_of(entity_pk(&entity.entity))))
            .condition_expression(condition)
            .set_expression_attribute_names(ex.names())
            .set_expression_attribute_values(ex.values())
            .build()
            .map_err(build_error)?;
        let mut items = vec![TransactWriteItem::builder().delete(delete).build()];
        if entity.entity.kind == EntityKind::Key {
            for owner in entity
                .user_id
                .iter()
                .map(|u| EntityRef::user(u.clone()))
                .chain(entity.team_id.iter().map(|t| EntityRef::team(t.clone())))
            {
                items.push(count_key(self, &owner, -1)?);
            }
        }
        match transact(&self.client, items).await? {
            TxOutcome::Committed => Ok(AdminWrite::Done),
            TxOutcome::Busy | TxOutcome::Failed(_) => Ok(AdminWrite::Conflict),
        }
    }

    async fn keys_of(&self, owner: &EntityRef) -> Result<Vec<String>, StoreError> {
        let (index, attr) = match owner.kind {
            EntityKind::User => ("gsi1", "gsi1pk"),
            EntityKind::Team => ("gsi2", "gsi2pk"),
            EntityKind::Key => return Ok(Vec::new()),
        };
        let items = self
            .query_all(index, attr, owner_index_pk(owner), None, usize::MAX)
            .await?;
        // The index's sort key is the key's hash (the index holds keys only).
        let sort_key = if owner.kind == EntityKind::User {
            "gsi1sk"
        } else {
            "gsi2sk"
        };
        let mut keys: Vec<String> = items
            .iter()
            .filter_map(|i| match i.get(sort_key) {
                Some(AttributeValue::S(id)) => Some(id.clone()),
                _ => None,
            })
            .collect();
        keys.sort();
        Ok(keys)
    }
}

/// `key_count += delta` on an owner that must exist.
pub(super) fn count_key(
    store: &DynamoStore,
    owner: &EntityRef,
    delta: i64,
) -> Result<TransactWriteItem, StoreError> {
    let mut ex = Expr::default();
    let kc = ex.name("key_count");
    let d = ex.value(n(delta));
    let zero = ex.value(n(0));
    let pk = ex.name(PARTITION_KEY);
    let update = store.update(
        entity_pk(owner),
        vec![format!("{kc} = if_not_exists({kc}, {zero}) + {d}")],
        vec![],
        vec![format!("attribute_exists({pk})")],
        &ex,
    )?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// What failed conditions (per item) mean for a create.
pub(super) fn admin_cancellation(
    failed: &[bool],
    owners: &[EntityRef],
    first: AdminWrite,
) -> AdminWrite {
    if failed.first() == Some(&true) {
        return first;
    }
    for (i, owner) in owners.iter().enumerate() {
        if failed.get(i + 1) == Some(&true) {
            return AdminWrite::Missing(owner.clone());
        }
    }
    AdminWrite::Conflict
}
