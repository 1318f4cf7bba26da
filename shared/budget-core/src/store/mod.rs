//! The store ports, one per role ([`BudgetStore`] for requests,
//! [`ResetStore`] for the scheduled job, [`AdminStore`] for management,
//! over [`Reads`]): what the budget logic needs from persistence, with no
//! SDK type in any signature. Implementations execute the core's plans
//! (`crate::plan`) atomically: [`dynamo::DynamoStore`] by rendering them
//! into conditional writes, [`memory::MemoryStore`] (feature `memory`) by
//! evaluating them.

pub mod dynamo;
#[cfg(any(test, feature = "memory"))]
pub mod memory;
pub mod table;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::duration::ResetClock;
use crate::model::{Chain, Entity, EntityRef, Reservation};
use crate::money::Money;
use crate::plan::EntityWrite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered with an error: callers
    /// fail closed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// DynamoDB refused the request as invalid (`ValidationException`, a
    /// `ValidationError` cancellation reason: an item past 400 KB, a key
    /// past 2,048 bytes). Nothing was written, and sending it again will
    /// not help: callers answer a non-retryable error.
    #[error("store rejected the request: {0}")]
    Rejected(String),
    /// An item in the table does not have the shape this code writes.
    #[error("corrupt item {pk}: {message}")]
    Corrupt { pk: String, message: String },
}

/// The outcome of one attempt at the atomic reserve write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveWrite {
    /// Every window of every entity reserved the estimate.
    Reserved,
    /// A condition failed: a window is full, or the configuration or a
    /// window boundary moved since the chain was read. Re-read and decide.
    Stale,
    /// A reservation with this id exists already (a retried request).
    Duplicate,
    /// Another transaction touched the same items at the same moment, or
    /// DynamoDB throttled an item: back off, then try again.
    Conflict,
    /// Only conditions on this escrow slot failed: the shard does not
    /// cover the estimate (or its copy of the configuration moved). Refill
    /// it, or decide on the entity's totals (`service::authorize`).
    Short(EntityRef),
}

/// What a refused reservation means, from which of its `writes` failed
/// (`failed[i]`): only escrow slots → [`ReserveWrite::Short`], else stale.
pub fn reserve_refused(writes: &[EntityWrite], failed: &[bool]) -> ReserveWrite {
    let mut short = None;
    for (w, f) in writes.iter().zip(failed) {
        if !*f {
            continue;
        }
        if w.entity.slot.is_none() {
            return ReserveWrite::Stale;
        }
        short.get_or_insert_with(|| w.entity.clone());
    }
    short.map_or(ReserveWrite::Stale, ReserveWrite::Short)
}

/// What a plain plan write (`BudgetStore::write_all`) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanWrite {
    Done,
    /// A guard failed: nothing was written.
    Refused,
    /// Contended or throttled: nothing was written; try again later.
    Busy,
}

/// What an isolated read (`BudgetStore::load_isolated`) found.
#[derive(Debug, Clone, PartialEq)]
pub enum Isolated {
    /// The items that exist, all as of one instant.
    Read(Vec<Entity>),
    /// A transaction held one of the items (or one was throttled): nothing
    /// was read. Back off, read again; never decide on a partial read.
    Busy,
}

/// How a reservation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The request's actual cost is known (cost 0 = release).
    Settle(Money),
    /// The reset job gives up on it: its amount is released, no spend.
    Expire,
}

/// The outcome of one attempt at finishing a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishWrite {
    Done,
    /// The reservation or a window moved since they were read: re-read.
    Stale,
    /// Another transaction held an item, or DynamoDB throttled one; no
    /// condition failed: back off, then try again.
    Busy,
}

/// Answer of an admin write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminWrite {
    Done,
    /// Create: the id is taken.
    AlreadyExists,
    /// An owner (user or team) named by a key does not exist, or an entity
    /// to update or delete is gone.
    Missing(EntityRef),
    /// The entity changed since it was read (version), or (delete) still
    /// has keys.
    Conflict,
}

/// Reading entities: what every role needs.
#[async_trait]
pub trait Reads: Send + Sync {
    /// One entity, strongly consistent.
    async fn load(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError>;

    /// Several entities in one request, strongly consistent; missing ones
    /// are left out.
    async fn load_many(&self, entities: &[EntityRef]) -> Result<Vec<Entity>, StoreError>;
}

/// The budget operations of a request: authorize (read a chain, reserve)
/// and settle (end a reservation).
#[async_trait]
pub trait BudgetStore: Reads {
    /// A key and every scope above it (its user and team, the team's
    /// organization). `None` for an unknown key.
    async fn load_chain(&self, key_hash: &str) -> Result<Option<Chain>, StoreError>;

    /// [`BudgetStore::load_chain`], and the reservation `id` (if any) with it,
    /// in as many requests as the chain alone where the store can: a
    /// denial looks for the request's own reservation (a retry) for free.
    async fn load_chain_and_reservation(
        &self,
        key_hash: &str,
        id: &str,
    ) -> Result<(Option<Chain>, Option<Reservation>), StoreError> {
        let chain = self.load_chain(key_hash).await?;
        let reservation = match chain {
            Some(_) => self.reservation(id).await?,
            None => None,
        };
        Ok((chain, reservation))
    }

    /// A key and its user and team in as few requests as possible: the
    /// key item carries a snapshot of its owners' limits (one request);
    /// their counters and boundaries are unknown, so the reservation's
    /// conditions check them. Owners without a usable snapshot are read.
    async fn load_chain_quick(&self, key_hash: &str) -> Result<Option<Chain>, StoreError> {
        self.load_chain(key_hash).await
    }

    /// Writes the owners of `chain` (as just read) into its key's snapshot
    /// (the one `load_chain_quick` reads), if the key is still the one
    /// read. Admin changes of a user or team do not rewrite the snapshots
    /// of all its keys (that would cost a write per key inside one admin
    /// request): an authorizer that found a snapshot out of date refreshes
    /// it, once, after its fresh read. Only ever a hint: every reservation
    /// is conditional on the owners' real versions.
    async fn refresh_snapshot(&self, _chain: &Chain) -> Result<(), StoreError> {
        Ok(())
    }

    /// The one atomic write of admission: every window of every entity of
    /// `chain` (as read) admits `reservation.amount` and reserves it, a
    /// window past its boundary is rolled over in the same write, and the
    /// reservation is recorded — or nothing is written.
    async fn reserve(
        &self,
        chain: &Chain,
        reservation: &Reservation,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<ReserveWrite, StoreError>;

    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, StoreError>;

    /// `entities` in one isolated read (a snapshot: no transaction is seen
    /// half done), at most 100: what the escrow's totals are decided on.
    /// [`Isolated::Busy`] when a transaction held one of them (DynamoDB
    /// cancels a `TransactGetItems` then): nothing was read, try again.
    async fn load_isolated(&self, entities: &[EntityRef]) -> Result<Isolated, StoreError> {
        Ok(Isolated::Read(self.load_many(entities).await?))
    }

    /// `writes` in one atomic write: every guard holds and every change
    /// applies, or nothing is written (the escrow's transfers, gatherings
    /// and roll-overs; at most 100 items).
    async fn write_all(&self, writes: &[EntityWrite]) -> Result<PlanWrite, StoreError>;

    /// Ends `reservation` (as read) on `entities` (as read), in one atomic
    /// write. With `None`, writes without having read the entities: every
    /// held window is assumed to exist and be in its current period, and
    /// the write's conditions check that (`Stale` if not: read, retry).
    async fn finish(
        &self,
        reservation: &Reservation,
        entities: Option<&[Entity]>,
        finish: Finish,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<FinishWrite, StoreError>;
}

/// The scheduled job's operations.
#[async_trait]
pub trait ResetStore: BudgetStore {
    /// Rolls over every window of `entity` (as read) that is due at `now`
    /// and moves its entry in the index of what is due to its next
    /// boundary (`plan::roll_over`), conditional on its boundaries and
    /// configuration not having moved. Returns how many windows it rolled
    /// (0: only the entry was corrected), `None` when the entity moved
    /// (re-read).
    async fn roll_over(
        &self,
        entity: &Entity,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<Option<usize>, StoreError>;

    /// Up to `limit` keys, users and teams whose index entry (the
    /// earliest boundary of their windows) is at or before `now`, as they
    /// are stored (strongly consistent reads; the index itself may lag a
    /// write by a moment: check the windows before acting). Reads what is
    /// due, never the whole table.
    async fn due_entities(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Entity>, StoreError>;

    /// Held reservations whose expiry is at or before `now`, with that
    /// expiry (read from an index: check the reservation itself before
    /// acting).
    async fn expired_reservations(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError>;

    /// Up to `limit` sharded users and teams, in a stable order, listed
    /// from the index entry their pool carries (only sharded entities
    /// have a pool): never the table.
    async fn sharded_entities(&self, limit: usize) -> Result<Vec<EntityRef>, StoreError>;

    /// `entities` (from [`ResetStore::sharded_entities`]) as the job
    /// visits them: each one's item, all its slots (each strongly
    /// consistent, not one isolated read: what is decided on them is
    /// conditional on them) and what its pool recorded at the previous
    /// visit. Entities gone or no longer sharded are left out.
    async fn visit_sharded(&self, entities: &[EntityRef]) -> Result<Vec<ShardedVisit>, StoreError>;

    /// Records `record` (`escrow::visit_record`) on `pool` (as read), if
    /// that pool still exists in the same incarnation. `false`: not
    /// written (gone, recreated, or held by a transaction: the next visit
    /// records again).
    async fn record_visit(&self, pool: &Entity, record: &str) -> Result<bool, StoreError>;
}

/// A sharded entity as the reset job reads it to shrink idle shards.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedVisit {
    /// The entity's own item.
    pub entity: Entity,
    /// Its pool and every shard item (retired ones included).
    pub slots: Vec<Entity>,
    /// What the pool recorded at the job's previous visit.
    pub seen: Option<String>,
}

/// The management API's writes and queries.
#[async_trait]
pub trait AdminStore: Reads {
    /// Creates `entity`; a key also counts itself on its user and team,
    /// which must exist.
    async fn create(&self, entity: &Entity) -> Result<AdminWrite, StoreError>;

    /// Writes the configuration of `new` over `old` (as read, with
    /// [`AdminStore::load_described`]): limits, owners, flags, and the
    /// attributes when they differ from `old`'s. Counters of windows that are kept are
    /// left as they are in the table (requests may be moving them); new
    /// windows start empty; removed windows go.
    async fn update(&self, old: &Entity, new: &Entity) -> Result<AdminWrite, StoreError>;

    /// Deletes `entity` (as read). A user or team with keys is refused
    /// (`Conflict`); a key uncounts itself from its owners.
    async fn delete(&self, entity: &Entity) -> Result<AdminWrite, StoreError>;

    /// Deletes `keys` (as read, each once) in as few writes as the store
    /// allows, each write all or nothing (a failure part way leaves the
    /// writes before it done); answers the keys it did not delete (changed
    /// since they were read, or a store that deletes one at a time: the
    /// default), for the caller to delete one by one.
    async fn delete_keys(&self, keys: &[Entity]) -> Result<Vec<Entity>, StoreError> {
        Ok(keys.to_vec())
    }

    /// `entity` with its attributes (LiteLLM's `metadata` and the like),
    /// which the budget reads ([`Reads::load`]) leave out because they are
    /// stored apart from the counters: what the management API shows and
    /// changes.
    async fn load_described(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        self.load(entity).await
    }

    /// The users with a budget in team `team` (its team members).
    async fn members_of(&self, team: &str) -> Result<Vec<String>, StoreError>;

    /// Hashes of the keys that belong to a user or team; the ids of the
    /// teams of an organization.
    async fn keys_of(&self, owner: &EntityRef) -> Result<Vec<String>, StoreError>;
}

/// Every store trait, for callers that use several roles (tests, tools).
pub mod prelude {
    pub use super::{AdminStore, BudgetStore, Reads, ResetStore, Store};
}

/// Every role at once (what a complete store such as DynamoDB offers).
pub trait Store: ResetStore + AdminStore {}

impl<T: ResetStore + AdminStore> Store for T {}
