//! The budget operations of a request: read a chain, reserve, end a
//! reservation — each one plan of the core, written in one transaction.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};
use chrono::{DateTime, Utc};

use crate::duration::ResetClock;
use crate::model::{Chain, Entity, EntityRef, Reservation, ReservationState};
use crate::plan::{self, EntityWrite, ReservationEnd, ReservationGuard};
use crate::store::table::TTL_ATTRIBUTE;
use crate::store::{
    reserve_refused, BudgetStore, Finish, FinishWrite, Isolated, PlanWrite, Reads, ReserveWrite,
    StoreError,
};

use super::codec::*;
use super::errors::*;
use super::expr::*;
use super::DynamoStore;

impl DynamoStore {
    /// Reads the scopes `chain` names and does not hold yet (other than
    /// `tried`: read already, not found), round after round (a team read
    /// names its organization), at most [`crate::model::MAX_CHAIN_DEPTH`]
    /// rounds.
    pub(super) async fn read_scopes(
        &self,
        chain: &mut Chain,
        mut tried: Vec<EntityRef>,
    ) -> Result<(), StoreError> {
        for _ in 0..crate::model::MAX_CHAIN_DEPTH {
            let pending = chain.pending(&tried);
            if pending.is_empty() {
                break;
            }
            for e in self.load_many(&pending).await? {
                chain.set_owner(e);
            }
            tried.extend(pending);
        }
        Ok(())
    }

    /// One entity's write of a plan, as a transaction item (a condition
    /// check when it changes nothing).
    pub(super) fn entity_write(
        &self,
        write: &EntityWrite,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut ex = Expr::default();
        let Rendered {
            conds,
            sets,
            removes,
        } = render(&mut ex, write);
        let pk = entity_pk(&write.entity);
        if sets.is_empty() && removes.is_empty() {
            let check = self.condition_check(pk, conds, &ex)?;
            return Ok(TransactWriteItem::builder().condition_check(check).build());
        }
        let update = self.update(pk, sets, removes, conds, &ex)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// A reservation's end (state, cost, instant) as a transaction item;
    /// it leaves the index of held reservations.
    pub(super) fn reservation_end(
        &self,
        end: &ReservationEnd,
    ) -> Result<TransactWriteItem, StoreError> {
        let mut ex = Expr::default();
        let state = ex.name("state");
        let to = ex.value(s(end.to.as_str()));
        let at = ex.value(epoch(end.at));
        let mut sets = vec![format!("{state} = {to}")];
        let when = if end.to == ReservationState::Expired {
            "expired_at"
        } else {
            "settled_at"
        };
        sets.push(format!("{} = {at}", ex.name(when)));
        if let Some(cost) = end.cost {
            let c = ex.value(money(cost));
            sets.push(format!("{} = {c}", ex.name("cost")));
        }
        // Finished: from now on removed by TTL after the retention.
        let ttl = ex.value(n(retention_until(end.at)));
        sets.push(format!("{} = {ttl}", ex.name(TTL_ATTRIBUTE)));
        let removes = vec![ex.name("gsi1pk"), ex.name("gsi1sk")];
        let conds = end
            .guards
            .iter()
            .map(|g| match g {
                ReservationGuard::State(from) => {
                    let v = ex.value(s(from.as_str()));
                    format!("{state} = {v}")
                }
                ReservationGuard::Digest(d) => {
                    let (name, v) = (ex.name("digest"), ex.value(s(d.clone())));
                    format!("{name} = {v}")
                }
            })
            .collect();
        let update = self.update(reservation_pk(&end.id), sets, removes, conds, &ex)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}

#[async_trait]
impl BudgetStore for DynamoStore {
    async fn load_chain(&self, key_hash: &str) -> Result<Option<Chain>, StoreError> {
        let Some(key) = self.load(&EntityRef::key(key_hash)).await? else {
            return Ok(None);
        };
        let mut chain = Chain::of(key);
        self.read_scopes(&mut chain, Vec::new()).await?;
        Ok(Some(chain))
    }

    async fn load_chain_and_reservation(
        &self,
        key_hash: &str,
        id: &str,
    ) -> Result<(Option<Chain>, Option<Reservation>), StoreError> {
        let Some(key) = self.load(&EntityRef::key(key_hash)).await? else {
            return Ok((None, None));
        };
        // The scopes the key names (its user and team, the user's budget in
        // the team) and the reservation in one BatchGetItem.
        let mut chain = Chain::of(key);
        let owners = chain.pending(&[]);
        let mut pks: Vec<String> = owners.iter().map(entity_pk).collect();
        pks.push(reservation_pk(id));
        let mut reservation = None;
        for item in self.batch_get(pks).await? {
            if matches!(item.get("kind"), Some(AttributeValue::S(k)) if k == "reservation") {
                reservation = Some(reservation_from_item(&item)?);
            } else {
                chain.set_owner(entity_from_item(&item)?);
            }
        }
        // The scopes above them (a team's organization): one more read.
        self.read_scopes(&mut chain, owners).await?;
        Ok((Some(chain), reservation))
    }

    async fn load_chain_quick(&self, key_hash: &str) -> Result<Option<Chain>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(entity_pk(&EntityRef::key(key_hash)))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get item", e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let mut chain = Chain::of(entity_from_item(item)?);
        // Every scope the snapshot knows (the organization of a team it
        // knows too); the others are read.
        let (mut missing, mut absent) = (Vec::new(), Vec::new());
        for _ in 0..crate::model::MAX_CHAIN_DEPTH {
            let skip: Vec<EntityRef> = missing.iter().chain(&absent).cloned().collect();
            for owner in chain.pending(&skip) {
                match snapshot_of(item, owner.kind, &owner.id) {
                    Snapshot::Known(e) => chain.set_owner(*e),
                    Snapshot::Absent => absent.push(owner),
                    Snapshot::Unknown => missing.push(owner),
                }
            }
        }
        let mut read = Vec::new();
        for e in self.load_many(&missing).await? {
            read.push(e.entity.clone());
            chain.set_owner(e);
        }
        let tried: Vec<EntityRef> = missing
            .into_iter()
            .filter(|m| !read.contains(m))
            .chain(absent)
            .collect();
        self.read_scopes(&mut chain, tried).await?;
        Ok(Some(chain))
    }

    async fn reserve(
        &self,
        chain: &Chain,
        reservation: &Reservation,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<ReserveWrite, StoreError> {
        let pick = crate::escrow::pick_of(&reservation.id);
        let Some(writes) = plan::reserve_chain(chain, reservation.amount, now, clock, pick) else {
            return Ok(ReserveWrite::Stale);
        };
        let mut items = writes
            .iter()
            .map(|w| self.entity_write(w))
            .collect::<Result<Vec<_>, _>>()?;
        // Recorded only if its id is new (a retry finds it).
        let put = self.put(reservation_item(reservation), "attribute_not_exists(pk)")?;
        items.push(TransactWriteItem::builder().put(put).build());
        let last = items.len() - 1;
        match transact(&self.client, items).await? {
            TxOutcome::Committed => Ok(ReserveWrite::Reserved),
            TxOutcome::Busy => Ok(ReserveWrite::Conflict),
            // The reservation's own put: its id exists already.
            TxOutcome::Failed(failed) if failed.get(last) == Some(&true) => {
                Ok(ReserveWrite::Duplicate)
            }
            TxOutcome::Failed(failed) => Ok(reserve_refused(&writes, &failed)),
        }
    }

    async fn load_isolated(&self, entities: &[EntityRef]) -> Result<Isolated, StoreError> {
        if entities.is_empty() {
            return Ok(Isolated::Read(Vec::new()));
        }
        let mut request = self.client.transact_get_items();
        for e in entities {
            let get = aws_sdk_dynamodb::types::Get::builder()
                .table_name(&self.table)
                .set_key(Some(key_of(entity_pk(e))))
                .build()
                .map_err(build_error)?;
            request = request.transact_items(
                aws_sdk_dynamodb::types::TransactGetItem::builder()
                    .get(get)
                    .build(),
            );
        }
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) => return isolated_refused(e),
        };
        out.responses()
            .iter()
            .filter_map(|r| r.item())
            .map(entity_from_item)
            .collect::<Result<_, _>>()
            .map(Isolated::Read)
    }

    async fn write_all(&self, writes: &[EntityWrite]) -> Result<PlanWrite, StoreError> {
        if writes.is_empty() {
            return Ok(PlanWrite::Done);
        }
        let items = writes
            .iter()
            .map(|w| self.entity_write(w))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(match transact(&self.client, items).await? {
            TxOutcome::Committed => PlanWrite::Done,
            TxOutcome::Busy => PlanWrite::Busy,
            TxOutcome::Failed(_) => PlanWrite::Refused,
        })
    }

    async fn refresh_snapshot(&self, chain: &Chain) -> Result<(), StoreError> {
        // The key's scopes only: a customer is the request's, not the key's.
        let owners: Vec<Entity> = chain
            .scopes
            .iter()
            .filter(|e| !e.entity.kind.from_request())
            .cloned()
            .collect();
        let mut ex = Expr::default();
        let absent = chain.pending(&[]);
        let (name, v) = (ex.name(OWNERS), ex.value(owner_snapshots(&owners, &absent)));
        let (ver, kv) = (ex.name("ver"), ex.value(n(chain.key.version as i64)));
        let conds = [
            format!("{ver} = {kv}"),
            incarnation_is(&mut ex, chain.key.incarnation),
        ];
        let pk = entity_pk(&chain.key.entity);
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(pk)))
            .update_expression(format!("SET {name} = {v}"))
            .condition_expression(conds.join(" AND "))
            .set_expression_attribute_names(ex.names())
            .set_expression_attribute_values(ex.values());
        // One attempt, no retry: it is only a hint, and this request waits.
        match request.send().await {
            Ok(_) => Ok(()),
            // The key changed meanwhile: its own update wrote a snapshot.
            Err(aws_sdk_dynamodb::error::SdkError::ServiceError(e))
                if e.err().is_conditional_check_failed_exception() =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable("refresh owner snapshot", e)),
        }
    }

    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(reservation_pk(id))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get reservation", e))?;
        match out.item() {
            Some(item) if matches!(item.get("kind"), Some(AttributeValue::S(k)) if k == "reservation") => {
                reservation_from_item(item).map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn finish(
        &self,
        reservation: &Reservation,
        entities: Option<&[Entity]>,
        finish: Finish,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<FinishWrite, StoreError> {
        let (writes, end) = plan::end_reservation(reservation, entities, finish, now, clock);
        let mut items = writes
            .iter()
            .map(|w| self.entity_write(w))
            .collect::<Result<Vec<_>, _>>()?;
        items.push(self.reservation_end(&end)?);
        match transact(&self.client, items).await? {
            TxOutcome::Committed => Ok(FinishWrite::Done),
            TxOutcome::Busy => Ok(FinishWrite::Busy),
            TxOutcome::Failed(_) => Ok(FinishWrite::Stale),
        }
    }
}
