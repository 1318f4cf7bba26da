//! A store in memory that executes the core's plans with the same
//! atomicity as DynamoDB's transactions (one lock: every guard holds and
//! every change applies, or nothing does). For unit tests of the service,
//! the CPU bench and simulations — never the proof of end-to-end
//! behaviour, which is the emulator's. Behind the `memory` feature.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    AdminStore, AdminWrite, BudgetStore, Finish, FinishWrite, Isolated, PlanWrite, Reads,
    ReserveWrite, ResetStore, ShardedVisit, StoreError,
};
use crate::duration::ResetClock;
use crate::model::{Chain, Entity, EntityKind, EntityRef, Reservation, ReservationState};
use crate::plan::{self, ReservationGuard, WindowEdit};

/// A fault to answer the next write with (tests of retries and backoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Another transaction touched the same items (DynamoDB's
    /// `TransactionConflict`): nothing written.
    Conflict,
    /// The store cannot be reached.
    Unavailable,
}

#[derive(Default)]
struct State {
    entities: BTreeMap<EntityRef, Entity>,
    reservations: BTreeMap<String, Reservation>,
    /// The index of what is due (DynamoDB's `due` index): each entity's
    /// earliest boundary as the plans set it; absent, never due.
    due: BTreeMap<EntityRef, DateTime<Utc>>,
    /// What the reset job recorded on each pool at its last visit (an
    /// attribute of the pool item in DynamoDB; gone with the pool).
    seen: BTreeMap<EntityRef, String>,
}

/// See the module documentation. Clones share one store (as instances of
/// a function share one table).
#[derive(Default, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    faults: Mutex<VecDeque<Injected>>,
    /// Isolated reads still to answer `Busy` (a transaction held an item).
    busy_reads: Mutex<usize>,
    requests: Mutex<usize>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// The next `times` writes (reserve, finish, roll-over) answer `fault`.
    pub fn inject(&self, fault: Injected, times: usize) {
        let mut faults = self.inner.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.extend(std::iter::repeat_n(fault, times));
    }

    /// The next `times` isolated reads answer [`Isolated::Busy`], as
    /// DynamoDB cancels a `TransactGetItems` while a transaction holds one
    /// of its items.
    pub fn inject_busy_reads(&self, times: usize) {
        *self
            .inner
            .busy_reads
            .lock()
            .unwrap_or_else(|e| e.into_inner()) += times;
    }

    /// Requests served so far (reads and writes), as DynamoDB would bill
    /// them one per call.
    pub fn requests(&self) -> usize {
        *self
            .inner
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The entity as stored (tests).
    pub fn entity(&self, e: &EntityRef) -> Option<Entity> {
        self.state().entities.get(e).cloned()
    }

    /// The entity's entry in the index of what is due (tests).
    pub fn next_due(&self, e: &EntityRef) -> Option<DateTime<Utc>> {
        self.state().due.get(e).copied()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        *self
            .inner
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner()) += 1;
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fault(&self) -> Result<Option<Injected>, StoreError> {
        let next = self
            .inner
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        match next {
            Some(Injected::Unavailable) => Err(StoreError::Unavailable("injected".into())),
            other => Ok(other),
        }
    }
}

impl State {
    fn holds(&self, write: &plan::EntityWrite) -> bool {
        plan::guards_hold(&write.guards, self.entities.get(&write.entity))
    }

    fn apply(&mut self, write: &plan::EntityWrite) {
        if let Some(e) = self.entities.get_mut(&write.entity) {
            plan::apply(&write.changes, e);
        }
        for change in &write.changes {
            if let plan::Change::SetNextDue(due) = change {
                self.set_due(&write.entity, *due);
            }
        }
    }

    fn set_due(&mut self, entity: &EntityRef, due: Option<DateTime<Utc>>) {
        match due {
            Some(at) => self.due.insert(entity.clone(), at),
            None => self.due.remove(entity),
        };
    }

    fn chain(&self, key_hash: &str) -> Option<Chain> {
        let key = self.entities.get(&EntityRef::key(key_hash))?.clone();
        let mut chain = Chain::of(key);
        let mut tried = Vec::new();
        for _ in 0..crate::model::MAX_CHAIN_DEPTH {
            for owner in chain.pending(&tried) {
                match self.entities.get(&owner) {
                    Some(e) => chain.set_owner(e.clone()),
                    None => tried.push(owner),
                }
            }
        }
        Some(chain)
    }

    /// The owner of `books` whose item refuses them (`plan::books_hold`),
    /// as DynamoDB's condition does.
    fn refused_books(&self, books: &[plan::OwnerBookkeeping]) -> Option<EntityRef> {
        books
            .iter()
            .find(|b| {
                self.entities
                    .get(&b.owner)
                    .is_some_and(|o| !plan::books_hold(b, o))
            })
            .map(|b| b.owner.clone())
    }

    fn keep_books(&mut self, books: &[plan::OwnerBookkeeping]) {
        for b in books {
            if let Some(e) = self.entities.get_mut(&b.owner) {
                e.key_count += b.key_count;
                e.key_revision += u64::from(b.revision);
                e.member_count += b.members;
                e.version += u64::from(b.version);
            }
        }
    }
}

fn without_attributes(e: &Entity) -> Entity {
    Entity {
        attributes: Default::default(),
        ..e.clone()
    }
}

#[async_trait]
impl Reads for MemoryStore {
    /// As DynamoDB's: without the attributes (kept apart from the
    /// counters there; see `AdminStore::load_described`).
    async fn load(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        Ok(self.state().entities.get(entity).map(without_attributes))
    }

    async fn load_many(&self, entities: &[EntityRef]) -> Result<Vec<Entity>, StoreError> {
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let state = self.state();
        let mut found: Vec<Entity> = entities
            .iter()
            .filter_map(|e| state.entities.get(e).map(without_attributes))
            .collect();
        found.sort_by(|a, b| a.entity.cmp(&b.entity));
        found.dedup_by(|a, b| a.entity == b.entity);
        Ok(found)
    }
}

#[async_trait]
impl BudgetStore for MemoryStore {
    async fn load_chain(&self, key_hash: &str) -> Result<Option<Chain>, StoreError> {
        Ok(self.state().chain(key_hash))
    }

    async fn load_chain_and_reservation(
        &self,
        key_hash: &str,
        id: &str,
    ) -> Result<(Option<Chain>, Option<Reservation>), StoreError> {
        let state = self.state();
        let chain = state.chain(key_hash);
        let reservation = chain
            .as_ref()
            .and_then(|_| state.reservations.get(id).cloned());
        Ok((chain, reservation))
    }

    async fn reserve(
        &self,
        chain: &Chain,
        reservation: &Reservation,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<ReserveWrite, StoreError> {
        if self.fault()? == Some(Injected::Conflict) {
            return Ok(ReserveWrite::Conflict);
        }
        let pick = crate::escrow::pick_of(&reservation.id);
        let Some(writes) = plan::reserve_chain(chain, reservation.amount, now, clock, pick) else {
            return Ok(ReserveWrite::Stale);
        };
        let mut state = self.state();
        if state.reservations.contains_key(&reservation.id) {
            return Ok(ReserveWrite::Duplicate);
        }
        let failed: Vec<bool> = writes.iter().map(|w| !state.holds(w)).collect();
        if failed.iter().any(|f| *f) {
            return Ok(crate::store::reserve_refused(&writes, &failed));
        }
        for w in &writes {
            state.apply(w);
        }
        let mut stored = reservation.clone();
        stored.receipt = None;
        state.reservations.insert(stored.id.clone(), stored);
        Ok(ReserveWrite::Reserved)
    }

    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, StoreError> {
        Ok(self.state().reservations.get(id).cloned())
    }

    async fn load_isolated(&self, entities: &[EntityRef]) -> Result<Isolated, StoreError> {
        {
            let mut busy = self
                .inner
                .busy_reads
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if *busy > 0 {
                *busy -= 1;
                *self
                    .inner
                    .requests
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) += 1;
                return Ok(Isolated::Busy);
            }
        }
        Ok(Isolated::Read(self.load_many(entities).await?))
    }

    async fn write_all(&self, writes: &[plan::EntityWrite]) -> Result<PlanWrite, StoreError> {
        if self.fault()? == Some(Injected::Conflict) {
            return Ok(PlanWrite::Busy);
        }
        let mut state = self.state();
        if !writes.iter().all(|w| state.holds(w)) {
            return Ok(PlanWrite::Refused);
        }
        for w in writes {
            state.apply(w);
        }
        Ok(PlanWrite::Done)
    }

    async fn finish(
        &self,
        reservation: &Reservation,
        entities: Option<&[Entity]>,
        finish: Finish,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<FinishWrite, StoreError> {
        if self.fault()? == Some(Injected::Conflict) {
            return Ok(FinishWrite::Busy);
        }
        let (writes, end) = plan::end_reservation(reservation, entities, finish, now, clock);
        let mut state = self.state();
        let Some(stored) = state.reservations.get(&end.id) else {
            return Ok(FinishWrite::Stale);
        };
        let reservation_holds = end.guards.iter().all(|g| match g {
            ReservationGuard::State(s) => stored.state == *s,
            ReservationGuard::Digest(d) => stored.receipt_digest.as_deref() == Some(d),
        });
        if !reservation_holds || !writes.iter().all(|w| state.holds(w)) {
            return Ok(FinishWrite::Stale);
        }
        for w in &writes {
            state.apply(w);
        }
        if let Some(r) = state.reservations.get_mut(&end.id) {
            r.state = end.to;
            match end.to {
                ReservationState::Expired => r.expired_at = Some(end.at),
                _ => {
                    r.settled_at = Some(end.at);
                    r.cost = end.cost;
                }
            }
        }
        Ok(FinishWrite::Done)
    }
}

#[async_trait]
impl ResetStore for MemoryStore {
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
        let mut state = self.state();
        if !state.holds(&write) {
            return Ok(None);
        }
        state.apply(&write);
        Ok(Some(
            write
                .guards
                .iter()
                .filter(|g| matches!(g, plan::Guard::ResetAtIs(..)))
                .count(),
        ))
    }

    async fn due_entities(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Entity>, StoreError> {
        let state = self.state();
        Ok(state
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .filter_map(|(e, _)| state.entities.get(e).cloned())
            .take(limit)
            .collect())
    }

    async fn expired_reservations(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let mut due: Vec<(String, DateTime<Utc>)> = self
            .state()
            .reservations
            .values()
            .filter(|r| r.state == ReservationState::Held && r.expires_at <= now)
            .map(|r| (r.id.clone(), r.expires_at))
            .collect();
        due.sort_by_key(|(_, at)| *at);
        due.truncate(limit);
        Ok(due)
    }

    /// The pools (only sharded entities have one) stand for DynamoDB's
    /// index entries.
    async fn sharded_entities(&self, limit: usize) -> Result<Vec<EntityRef>, StoreError> {
        Ok(self
            .state()
            .entities
            .keys()
            .filter(|e| e.slot == Some(crate::model::SlotId::Pool))
            .map(EntityRef::owner)
            .take(limit)
            .collect())
    }

    async fn visit_sharded(&self, entities: &[EntityRef]) -> Result<Vec<ShardedVisit>, StoreError> {
        let state = self.state();
        Ok(entities
            .iter()
            .filter_map(|r| {
                let e = state.entities.get(r).map(without_attributes)?;
                if !crate::escrow::is_sharded(&e) {
                    return None;
                }
                let slots = crate::escrow::slot_refs(&e)
                    .iter()
                    .filter_map(|s| state.entities.get(s).cloned())
                    .collect();
                let seen = state.seen.get(&r.at(crate::model::SlotId::Pool)).cloned();
                Some(ShardedVisit {
                    entity: e,
                    slots,
                    seen,
                })
            })
            .collect())
    }

    async fn record_visit(&self, pool: &Entity, record: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        let same = state
            .entities
            .get(&pool.entity)
            .is_some_and(|p| p.incarnation == pool.incarnation);
        if same {
            state.seen.insert(pool.entity.clone(), record.to_string());
        }
        Ok(same)
    }
}

#[async_trait]
impl AdminStore for MemoryStore {
    async fn create(&self, entity: &Entity) -> Result<AdminWrite, StoreError> {
        let mut state = self.state();
        if state.entities.contains_key(&entity.entity) {
            return Ok(AdminWrite::AlreadyExists);
        }
        let owners = entity.owners();
        if let Some(missing) = owners.iter().find(|o| !state.entities.contains_key(o)) {
            return Ok(AdminWrite::Missing(missing.clone()));
        }
        let books = plan::key_bookkeeping(None, Some(entity));
        if let Some(refused) = state.refused_books(&books) {
            return Ok(AdminWrite::Missing(refused));
        }
        state.keep_books(&books);
        state.entities.insert(entity.entity.clone(), entity.clone());
        for slot in crate::escrow::slots_of_new(entity) {
            state.entities.insert(slot.entity.clone(), slot);
        }
        state.set_due(&entity.entity, plan::next_due(entity));
        Ok(AdminWrite::Done)
    }

    async fn update(&self, old: &Entity, new: &Entity) -> Result<AdminWrite, StoreError> {
        let (mut guards, edits, due) = plan::update(old, new);
        guards.extend(crate::escrow::conversion_guards(old, new));
        let mut state = self.state();
        if let Some(refused) = state.refused_books(&plan::key_bookkeeping(Some(old), Some(new))) {
            return Ok(AdminWrite::Missing(refused));
        }
        if !plan::guards_hold(&guards, state.entities.get(&old.entity)) {
            return Ok(AdminWrite::Conflict);
        }
        let slots: Vec<Entity> = crate::escrow::slot_refs(old)
            .iter()
            .filter_map(|r| state.entities.get(r).cloned())
            .collect();
        let (slot_writes, create) =
            if crate::escrow::is_sharded(old) || crate::escrow::is_sharded(new) {
                crate::escrow::admin_change(old, new, &slots)
            } else {
                (Vec::new(), Vec::new())
            };
        if !slot_writes.iter().all(|w| state.holds(w)) {
            return Ok(AdminWrite::Conflict);
        }
        for w in &slot_writes {
            state.apply(w);
        }
        for slot in create {
            state.entities.insert(slot.entity.clone(), slot);
        }
        let books = plan::key_bookkeeping(Some(old), Some(new));
        if let Some(missing) = books
            .iter()
            .find(|b| !state.entities.contains_key(&b.owner))
        {
            return Ok(AdminWrite::Missing(missing.owner.clone()));
        }
        state.keep_books(&books);
        let Some(stored) = state.entities.get_mut(&old.entity) else {
            return Ok(AdminWrite::Missing(old.entity.clone()));
        };
        let mut windows = Vec::new();
        for edit in edits {
            match edit {
                WindowEdit::Limit { id, max, legacy } => {
                    if let Some(mut w) = stored.window(&id).cloned() {
                        w.max = max;
                        w.legacy = legacy;
                        windows.push(w);
                    }
                }
                WindowEdit::Open(w) => windows.push(w),
                WindowEdit::Drop(_) => {}
            }
        }
        windows.sort_by_key(|w| w.span);
        // As DynamoDB's: the attributes are written only when they change.
        let attributes = if old.attributes == new.attributes {
            stored.attributes.clone()
        } else {
            new.attributes.clone()
        };
        *stored = Entity {
            attributes,
            version: stored.version + 1,
            incarnation: stored.incarnation,
            key_count: stored.key_count,
            member_count: stored.member_count,
            lifetime_spent: stored.lifetime_spent,
            key_revision: stored.key_revision,
            created_at: stored.created_at,
            windows,
            ..new.clone()
        };
        if let plan::Change::SetNextDue(due) = due {
            state.set_due(&old.entity, due);
        }
        Ok(AdminWrite::Done)
    }

    async fn delete(&self, entity: &Entity) -> Result<AdminWrite, StoreError> {
        let mut state = self.state();
        if !plan::guards_hold(&plan::delete(entity), state.entities.get(&entity.entity)) {
            return Ok(AdminWrite::Conflict);
        }
        state.entities.remove(&entity.entity);
        for slot in crate::escrow::slot_refs(entity) {
            state.entities.remove(&slot);
            state.seen.remove(&slot);
        }
        state.due.remove(&entity.entity);
        state.keep_books(&plan::key_bookkeeping(Some(entity), None));
        Ok(AdminWrite::Done)
    }

    async fn load_described(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        Ok(self.state().entities.get(entity).cloned())
    }

    async fn members_of(&self, team: &str) -> Result<Vec<String>, StoreError> {
        let state = self.state();
        let mut users: Vec<String> = state
            .entities
            .keys()
            .filter_map(|r| r.member_of())
            .filter(|(t, _)| *t == team)
            .map(|(_, u)| u.to_string())
            .collect();
        users.sort();
        Ok(users)
    }

    async fn keys_of(&self, owner: &EntityRef) -> Result<Vec<String>, StoreError> {
        let state = self.state();
        Ok(state
            .entities
            .values()
            .filter(|e| {
                // A user's or team's keys, an organization's teams (as
                // DynamoDB's indexes hold them; not a team's member budgets).
                let counted = match owner.kind {
                    EntityKind::Organization => EntityKind::Team,
                    _ => EntityKind::Key,
                };
                e.entity.slot.is_none() && e.entity.kind == counted && e.owners().contains(owner)
            })
            .map(|e| e.entity.id.clone())
            .collect())
    }
}
