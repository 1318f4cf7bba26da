//! The management API's writes: create, update and delete entities (with
//! the key counts of their owners), and the owner snapshots keys carry.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem};

use crate::model::{Entity, EntityKind, EntityRef, SlotId};
use crate::plan::{self, EntityWrite, WindowEdit};
use crate::store::table::PARTITION_KEY;
use crate::store::{AdminStore, AdminWrite, BudgetStore, Isolated, StoreError};

use super::codec::*;
use super::errors::*;
use super::expr::*;
use super::DynamoStore;

impl DynamoStore {
    /// The snapshots of `key`'s scopes (its owners and theirs, as they
    /// are now) for its item.
    pub(super) async fn owner_snapshots(&self, key: &Entity) -> Result<AttributeValue, StoreError> {
        let mut chain = crate::model::Chain::of(key.clone());
        self.read_scopes(&mut chain, Vec::new()).await?;
        Ok(owner_snapshots(&chain.scopes, &chain.pending(&[])))
    }

    /// After an admin update of a key: it re-reads its owners into its
    /// snapshot. A user's or team's update leaves its keys' snapshots as
    /// they are (rewriting them would cost a write per key inside the admin
    /// request): the first cold authorizer of each key that finds its
    /// snapshot out of date refreshes it (`BudgetStore::refresh_snapshot`).
    /// Best effort: a snapshot left stale costs a cold authorizer one more
    /// read, never a wrong admission.
    pub(super) async fn refresh_snapshots(&self, new: &Entity) {
        let result = match new.entity.kind {
            EntityKind::Key => match self.owner_snapshots(new).await {
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
            EntityKind::User
            | EntityKind::Team
            | EntityKind::TeamMember
            | EntityKind::Organization
            | EntityKind::Customer
            | EntityKind::Model
            | EntityKind::Tag => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "owner snapshot not refreshed");
        }
    }
}

impl DynamoStore {
    /// A pool's write of an admin change, which also (re)sets its entry in
    /// the index of sharded entities: a pool created before the entry
    /// existed joins it at its entity's next admin change.
    fn pool_write(&self, write: &EntityWrite) -> Result<TransactWriteItem, StoreError> {
        let mut ex = Expr::default();
        let Rendered {
            conds,
            mut sets,
            removes,
        } = render(&mut ex, write);
        for (name, value) in hot_entry(&write.entity) {
            let (p, v) = (ex.name(&name), ex.value(value));
            sets.push(format!("{p} = {v}"));
        }
        let update = self.update(entity_pk(&write.entity), sets, removes, conds, &ex)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// The attributes of `e` written to its meta item (the item removed
    /// when it has none), in the transaction of its admin write.
    fn meta_write(&self, e: &Entity) -> Result<TransactWriteItem, StoreError> {
        match meta_item(e) {
            Some(item) => {
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .build()
                    .map_err(build_error)?;
                Ok(TransactWriteItem::builder().put(put).build())
            }
            None => self.meta_delete(&e.entity),
        }
    }

    /// The delete of `entity` (as read), under `plan::delete`'s guards.
    fn delete_item(&self, entity: &Entity) -> Result<TransactWriteItem, StoreError> {
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
        Ok(TransactWriteItem::builder().delete(delete).build())
    }

    fn meta_delete(&self, entity: &EntityRef) -> Result<TransactWriteItem, StoreError> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key_of(meta_pk(entity))))
            .build()
            .map_err(build_error)?;
        Ok(TransactWriteItem::builder().delete(delete).build())
    }
}

#[async_trait]
impl AdminStore for DynamoStore {
    async fn create(&self, entity: &Entity) -> Result<AdminWrite, StoreError> {
        let mut item = entity_item(entity);
        let owners = entity.owners();
        if !owners.is_empty() && entity.entity.kind == EntityKind::Key {
            item.insert(OWNERS.into(), self.owner_snapshots(entity).await?);
        }
        let put = self.put(item, "attribute_not_exists(pk)")?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        for books in plan::key_bookkeeping(None, Some(entity)) {
            items.push(keep_books(self, &books)?);
        }
        // Last, so the indexes of the owners' counts stay those above.
        items.push(self.meta_write(entity)?);
        // A sharded user or team: its pool and shards, created with it.
        for slot in crate::escrow::slots_of_new(entity) {
            let put = self.put(entity_item(&slot), "attribute_not_exists(pk)")?;
            items.push(TransactWriteItem::builder().put(put).build());
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
        let (mut guards, edits, due) = plan::update(old, new);
        guards.extend(crate::escrow::conversion_guards(old, new));
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
                    let v = ex.value(window_item(w, false));
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
        // Changed attributes go to the meta item (and an item written
        // before they moved out of it loses its own copy).
        let attributes_changed = old.attributes != new.attributes;
        if attributes_changed {
            removes.push(ex.name(ATTRS));
        }
        let update = self.update(entity_pk(&old.entity), sets, removes, conds, &ex)?;
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        if attributes_changed {
            items.push(self.meta_write(new)?);
        }
        // A sharded user or team: every slot takes the change (one
        // transaction: the escrow's invariant holds across it).
        if crate::escrow::is_sharded(old) || crate::escrow::is_sharded(new) {
            let slots = match self.load_isolated(&crate::escrow::slot_refs(old)).await? {
                Isolated::Read(slots) => slots,
                // A transaction held a slot: the caller backs off and retries.
                Isolated::Busy => return Ok(AdminWrite::Conflict),
            };
            let (writes, create) = crate::escrow::admin_change(old, new, &slots);
            for w in &writes {
                items.push(if w.entity.slot == Some(SlotId::Pool) {
                    self.pool_write(w)?
                } else {
                    self.entity_write(w)?
                });
            }
            for slot in create {
                let put = self.put(entity_item(&slot), "attribute_not_exists(pk)")?;
                items.push(TransactWriteItem::builder().put(put).build());
            }
        }
        // A key moves its count from the owners it leaves to those it
        // joins, and tells all of them it changed.
        let mut added = Vec::new();
        for books in plan::key_bookkeeping(Some(old), Some(new)) {
            items.push(keep_books(self, &books)?);
            if books.key_count > 0 || books.members > 0 {
                added.push((items.len() - 1, books.owner));
            }
        }
        match transact(&self.client, items).await? {
            TxOutcome::Committed => {
                self.refresh_snapshots(new).await;
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
        let mut items = vec![self.delete_item(entity)?, self.meta_delete(&entity.entity)?];
        for slot in crate::escrow::slot_refs(entity) {
            let delete = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key_of(entity_pk(&slot))))
                .build()
                .map_err(build_error)?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }
        for books in plan::key_bookkeeping(Some(entity), None) {
            items.push(keep_books(self, &books)?);
        }
        match transact(&self.client, items).await? {
            TxOutcome::Committed => Ok(AdminWrite::Done),
            TxOutcome::Busy | TxOutcome::Failed(_) => Ok(AdminWrite::Conflict),
        }
    }

    async fn delete_keys(&self, keys: &[Entity]) -> Result<Vec<Entity>, StoreError> {
        let mut left = Vec::new();
        let mut rest = keys;
        while !rest.is_empty() {
            // As many keys as fit in one transaction: two items each (the
            // key and its meta item) and one per distinct owner.
            let mut n = 0;
            while n < rest.len() {
                let owners = plan::merge_bookkeeping(
                    rest[..=n]
                        .iter()
                        .flat_map(|k| plan::key_bookkeeping(Some(k), None)),
                );
                if 2 * (n + 1) + owners.len() > TRANSACTION_ITEMS {
                    break;
                }
                n += 1;
            }
            let (chunk, after) = rest.split_at(n.max(1));
            rest = after;
            let mut items = Vec::new();
            for key in chunk {
                items.push(self.delete_item(key)?);
                items.push(self.meta_delete(&key.entity)?);
            }
            let books = plan::merge_bookkeeping(
                chunk
                    .iter()
                    .flat_map(|k| plan::key_bookkeeping(Some(k), None)),
            );
            for b in &books {
                items.push(keep_books(self, b)?);
            }
            match transact(&self.client, items).await? {
                TxOutcome::Committed => {}
                TxOutcome::Busy | TxOutcome::Failed(_) => left.extend(chunk.iter().cloned()),
            }
        }
        Ok(left)
    }

    async fn load_described(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        // One isolated read of both items (a BatchGetItem could see an
        // admin transaction's counter item and not its meta item, and an
        // update merged into that would lose the other's metadata).
        let get = |pk: String| {
            aws_sdk_dynamodb::types::Get::builder()
                .table_name(&self.table)
                .set_key(Some(key_of(pk)))
                .build()
                .map(|g| {
                    aws_sdk_dynamodb::types::TransactGetItem::builder()
                        .get(g)
                        .build()
                })
                .map_err(build_error)
        };
        let out = self
            .client
            .transact_get_items()
            .transact_items(get(entity_pk(entity))?)
            .transact_items(get(meta_pk(entity))?)
            .send()
            .await
            .map_err(|e| unavailable("read with attributes", e))?;
        let mut items = out.responses().iter().map(|r| r.item());
        let Some(counters) = items.next().flatten() else {
            return Ok(None);
        };
        let mut e = entity_from_item(counters)?;
        if let Some(meta) = items.next().flatten() {
            e.attributes = attributes_of(meta)?;
        }
        Ok(Some(e))
    }

    async fn members_of(&self, team: &str) -> Result<Vec<String>, StoreError> {
        let items = self
            .query_all("gsi2", "gsi2pk", members_index_pk(team), None, usize::MAX)
            .await?;
        let mut users: Vec<String> = items
            .iter()
            .filter_map(|i| match i.get("gsi2sk") {
                Some(AttributeValue::S(u)) => Some(u.clone()),
                _ => None,
            })
            .collect();
        users.sort();
        Ok(users)
    }

    async fn keys_of(&self, owner: &EntityRef) -> Result<Vec<String>, StoreError> {
        // A user's keys and an organization's teams share an index (their
        // partitions differ by kind); a team's keys have their own.
        let (index, attr, sort_key) = match owner.kind {
            EntityKind::User | EntityKind::Organization => ("gsi1", "gsi1pk", "gsi1sk"),
            EntityKind::Team => ("gsi2", "gsi2pk", "gsi2sk"),
            EntityKind::Key
            | EntityKind::TeamMember
            | EntityKind::Customer
            | EntityKind::Model
            | EntityKind::Tag => return Ok(Vec::new()),
        };
        let items = self
            .query_all(index, attr, owner_index_pk(owner), None, usize::MAX)
            .await?;
        // The index's sort key is the key's hash (the team's id).
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

/// An owner's bookkeeping for a write of one of its keys (the owner must
/// exist): `key_count += delta`, `key_revision += 1`.
pub(super) fn keep_books(
    store: &DynamoStore,
    books: &plan::OwnerBookkeeping,
) -> Result<TransactWriteItem, StoreError> {
    let mut ex = Expr::default();
    let zero = ex.value(n(0));
    let pk = ex.name(PARTITION_KEY);
    let mut sets = Vec::new();
    if books.key_count != 0 || books.members == 0 {
        let (kc, d) = (ex.name("key_count"), ex.value(n(books.key_count)));
        sets.push(format!("{kc} = if_not_exists({kc}, {zero}) + {d}"));
    }
    if books.members != 0 {
        let (mc, d) = (ex.name(MEMBER_COUNT), ex.value(n(books.members)));
        sets.push(format!("{mc} = if_not_exists({mc}, {zero}) + {d}"));
    }
    if books.revision {
        let (kv, one) = (ex.name(KEY_REVISION), ex.value(n(1)));
        sets.push(format!("{kv} = if_not_exists({kv}, {zero}) + {one}"));
    }
    if books.version {
        let (ver, one) = (ex.name("ver"), ex.value(n(1)));
        sets.push(format!("{ver} = {ver} + {one}"));
    }
    let mut conds = vec![format!("attribute_exists({pk})")];
    if books.version {
        // As `plan::books_hold`: never on a team that became sharded.
        let (sh, two) = (ex.name(SHARDS), ex.value(n(2)));
        conds.push(format!("(attribute_not_exists({sh}) OR {sh} < {two})"));
    }
    let update = store.update(entity_pk(&books.owner), sets, vec![], conds, &ex)?;
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
