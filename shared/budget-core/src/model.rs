//! The budget world: keys and the scopes above them (users, teams,
//! organizations), each with its windows; and the reservations that hold
//! budget while a request is in flight.

use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::duration::{BudgetDuration, ResetClock};
use crate::money::Money;

/// What an entity is. The chain a request is charged to is its key, then
/// every scope above it in this order: the key's user and team, the user's
/// budget inside that team (a team member), the team's organization, the
/// end customer the request names, the key's budget for the model the
/// request names, and each tag the request names (see [`Chain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntityKind {
    Key,
    User,
    Team,
    TeamMember,
    Organization,
    Customer,
    /// A key's budget for one model (`model_max_budget`).
    Model,
    /// A tag's budget (`/tag/new`), charged by every request that names it.
    Tag,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Key => "key",
            EntityKind::User => "user",
            EntityKind::Team => "team",
            EntityKind::TeamMember => "team_member",
            EntityKind::Organization => "organization",
            EntityKind::Customer => "customer",
            EntityKind::Model => "model",
            EntityKind::Tag => "tag",
        }
    }

    /// A scope the request names (in a header) rather than the key: never
    /// part of what is cached or snapshotted for the key.
    pub fn from_request(self) -> bool {
        matches!(
            self,
            EntityKind::Customer | EntityKind::Model | EntityKind::Tag
        )
    }

    pub fn parse(s: &str) -> Option<EntityKind> {
        match s {
            "key" => Some(EntityKind::Key),
            "user" => Some(EntityKind::User),
            "team" => Some(EntityKind::Team),
            "team_member" => Some(EntityKind::TeamMember),
            "organization" => Some(EntityKind::Organization),
            "customer" => Some(EntityKind::Customer),
            "model" => Some(EntityKind::Model),
            "tag" => Some(EntityKind::Tag),
            _ => None,
        }
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which item of a sharded entity's budget (see `escrow.rs`): the pool,
/// or shard `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotId {
    Pool,
    Shard(u32),
}

/// Names one entity: a key by its SHA-256 hash, a user or team by its id —
/// or, with `slot`, one escrow slot of a sharded user's or team's budget
/// (an item of its own, holding part of its windows' headroom).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityRef {
    pub kind: EntityKind,
    pub id: String,
    pub slot: Option<SlotId>,
}

impl EntityRef {
    pub fn new(kind: EntityKind, id: impl Into<String>) -> EntityRef {
        EntityRef {
            kind,
            id: id.into(),
            slot: None,
        }
    }

    /// Slot `slot` of this entity's budget.
    pub fn at(&self, slot: SlotId) -> EntityRef {
        EntityRef {
            slot: Some(slot),
            ..self.owner()
        }
    }

    /// The entity itself (without a slot).
    pub fn owner(&self) -> EntityRef {
        EntityRef::new(self.kind, self.id.clone())
    }

    pub fn key(hash: impl Into<String>) -> EntityRef {
        EntityRef::new(EntityKind::Key, hash)
    }

    pub fn user(id: impl Into<String>) -> EntityRef {
        EntityRef::new(EntityKind::User, id)
    }

    pub fn team(id: impl Into<String>) -> EntityRef {
        EntityRef::new(EntityKind::Team, id)
    }

    pub fn organization(id: impl Into<String>) -> EntityRef {
        EntityRef::new(EntityKind::Organization, id)
    }

    /// A tag, named by a request header.
    pub fn tag(name: impl Into<String>) -> EntityRef {
        EntityRef::new(EntityKind::Tag, name)
    }

    /// An end customer (LiteLLM's end user), named by a request header.
    pub fn customer(id: impl Into<String>) -> EntityRef {
        EntityRef::new(EntityKind::Customer, id)
    }

    /// User `user`'s budget inside team `team`: id `<team>#<user>` (`#` is
    /// in no valid id, so no two pairs share one).
    pub fn team_member(team: &str, user: &str) -> EntityRef {
        EntityRef::new(EntityKind::TeamMember, format!("{team}#{user}"))
    }

    /// Key `key_hash`'s budget for model `model`: id `<hash>#<model>`.
    pub fn model(key_hash: &str, model: &str) -> EntityRef {
        EntityRef::new(EntityKind::Model, format!("{key_hash}#{model}"))
    }

    /// A model budget's key hash and model.
    pub fn model_of(&self) -> Option<(&str, &str)> {
        match self.kind {
            EntityKind::Model => self.id.split_once('#'),
            _ => None,
        }
    }

    /// A team member's team and user.
    pub fn member_of(&self) -> Option<(&str, &str)> {
        match self.kind {
            EntityKind::TeamMember => self.id.split_once('#'),
            _ => None,
        }
    }

    /// How this entity is named to people: keys by a short hash prefix,
    /// never the key itself.
    pub fn display_id(&self) -> String {
        match (self.kind, self.member_of()) {
            (EntityKind::Key, _) => key_hash_prefix(&self.id),
            (EntityKind::TeamMember, Some((team, user))) => format!("{user}@{team}"),
            (EntityKind::Model, _) => match self.model_of() {
                Some((hash, model)) => format!("{model} on key {}", key_hash_prefix(hash)),
                None => self.id.clone(),
            },
            _ => self.id.clone(),
        }
    }
}

/// The first 12 hex digits of a key hash: enough to tell keys apart in
/// logs and answers, useless to spend with.
pub fn key_hash_prefix(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// How long a window runs: a calendar-aligned duration, or for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Span {
    Every(BudgetDuration),
    Lifetime,
}

impl Span {
    /// The window's identity inside its entity (`"1d"`, `"lifetime"`).
    pub fn id(&self) -> String {
        match self {
            Span::Every(d) => d.to_string(),
            Span::Lifetime => "lifetime".to_string(),
        }
    }

    pub fn parse_id(s: &str) -> Option<Span> {
        if s == "lifetime" {
            Some(Span::Lifetime)
        } else {
            BudgetDuration::parse(s).ok().map(Span::Every)
        }
    }

    /// The first reset after `now`; `None` for a lifetime budget.
    pub fn next_reset(&self, now: DateTime<Utc>, clock: &ResetClock) -> Option<DateTime<Utc>> {
        match self {
            Span::Every(d) => Some(d.next_reset(now, clock)),
            Span::Lifetime => None,
        }
    }
}

/// One budget window of one entity.
///
/// Invariant kept by every write: `used == spent + reserved`. `used` is
/// stored because a DynamoDB condition cannot add two attributes, and
/// admission has to compare their sum with a limit inside the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub span: Span,
    pub max: Money,
    pub spent: Money,
    pub reserved: Money,
    /// When the current period ends; `None` for lifetime budgets.
    pub reset_at: Option<DateTime<Utc>>,
    /// A number fixed when the window is created: a reservation releases
    /// its amount only from the very window it was taken from, never from
    /// a later window that happens to have the same duration.
    pub generation: u64,
    /// Came from the legacy `max_budget` + `budget_duration` pair.
    pub legacy: bool,
    /// Escrow slots only (see `escrow.rs`): the headroom this slot holds,
    /// what a reservation on it may take. Zero on ordinary windows, whose
    /// headroom is `max − used`.
    pub avail: Money,
    /// An escrow pool only: headroom held back while the window is in
    /// debt (a limit lowered below what is used, or a roll-over with more
    /// in flight than the limit), so that nothing is admitted until the
    /// reservations in flight have come back (`escrow::placement`). Part
    /// of the window's remaining; never reserved or transferred.
    pub parked: Money,
    /// An escrow shard only: what its last refill from the pool moved —
    /// the size of its slice, so that a settle can top it up before it
    /// runs dry (`escrow::top_up`) without knowing the entity's limits.
    pub topped: Money,
}

impl Window {
    /// A fresh window starting at `now`.
    pub fn open(
        span: Span,
        max: Money,
        legacy: bool,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Window {
        Window {
            span,
            max,
            spent: Money::ZERO,
            reserved: Money::ZERO,
            reset_at: span.next_reset(now, clock),
            generation: rand::random::<u32>() as u64,
            legacy,
            avail: Money::ZERO,
            parked: Money::ZERO,
            topped: Money::ZERO,
        }
    }

    pub fn id(&self) -> String {
        self.span.id()
    }

    /// Past its boundary: counts as rolled over (spent 0) even before any
    /// job has written that down.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        matches!(self.reset_at, Some(at) if at <= now)
    }

    /// Spend in the period that is current at `now`.
    pub fn spent_at(&self, now: DateTime<Utc>) -> Money {
        if self.is_due(now) {
            Money::ZERO
        } else {
            self.spent
        }
    }

    /// `spent + reserved` in the current period.
    pub fn used_at(&self, now: DateTime<Utc>) -> Money {
        self.spent_at(now).saturating_add(self.reserved)
    }

    /// What can still be reserved now (never negative).
    pub fn remaining_at(&self, now: DateTime<Utc>) -> Money {
        let left = self.max.saturating_sub(self.used_at(now));
        if left < Money::ZERO {
            Money::ZERO
        } else {
            left
        }
    }

    /// The reset that applies at `now`: the stored one, or for a due
    /// window the next boundary after `now`.
    pub fn reset_at_as_of(&self, now: DateTime<Utc>, clock: &ResetClock) -> Option<DateTime<Utc>> {
        if self.is_due(now) {
            self.span.next_reset(now, clock)
        } else {
            self.reset_at
        }
    }

    /// The window as a reader at `now` sees it (lazily rolled).
    pub fn as_of(&self, now: DateTime<Utc>, clock: &ResetClock) -> Window {
        Window {
            spent: self.spent_at(now),
            reset_at: self.reset_at_as_of(now, clock),
            ..self.clone()
        }
    }
}

/// A key, user or team with its windows.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub entity: EntityRef,
    /// Bumped by every change of configuration (limits, blocking, owner,
    /// reservation floor — a cached floor is only current because of it);
    /// every reservation is conditional on it, so a cached copy can never
    /// admit against limits that have since changed.
    pub version: u64,
    /// Drawn at random when the entity is created and never changed: a
    /// deleted and re-created key, user or team (whose `version` starts
    /// again at 1) is never mistaken for the one before it. Every
    /// conditional write checks it. 0 only for items written before
    /// incarnations existed (the attribute is absent).
    pub incarnation: u64,
    /// The least a request charged to this entity reserves, whatever the
    /// client asks (`reservation_floor`, an edge-budget extension field);
    /// `None`: the deployment's floor.
    pub reservation_floor: Option<Money>,
    pub windows: Vec<Window>,
    /// Keys: the owning user and team.
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    /// Teams: the organization above it, whose windows govern every
    /// request of the team's keys.
    pub organization_id: Option<String>,
    /// Keys and customers: refused while blocked.
    pub blocked: bool,
    /// Keys: the models with a budget of their own on this key
    /// (`model_max_budget`), each a `model` entity. A request of such a key
    /// must name its model (`x-litellm-model`).
    pub model_budgets: Vec<String>,
    /// Keys: refused from this instant on.
    pub expires: Option<DateTime<Utc>>,
    /// Users and teams: how many keys point at them; organizations: how
    /// many teams. An entity something points at is never deleted.
    pub key_count: i64,
    /// Teams: how many member budgets (team members) they have.
    pub member_count: i64,
    /// Everything settled against this entity since it was created, in
    /// any window (what LiteLLM calls `spend` when there is no
    /// `budget_duration`): never reset, only added to by settles.
    pub lifetime_spent: Money,
    /// Users and teams: bumped by every admin change of one of their keys
    /// (update, block, delete; not creation: a new key is in no cache).
    /// A key with no window of its own then costs a reservation nothing:
    /// its owner's write, which happens anyway, is conditional on this
    /// instead of the key being checked too (see `plan::reserve_chain`).
    pub key_revision: u64,
    /// Users and teams: the escrow shards its windows are split over
    /// (`budget_shards`; 0 or 1: not sharded, the windows' counters are on
    /// this item), and how many shard items exist (never fewer: lowering
    /// `budget_shards` retires shards, whose reservations still settle
    /// there). See `escrow.rs`.
    pub shards: u32,
    pub shard_items: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Everything else the operator gave (aliases, metadata, models, …),
    /// kept as given so LiteLLM scripts read back what they wrote.
    pub attributes: Map<String, Value>,
}

impl Entity {
    pub fn new(entity: EntityRef, now: DateTime<Utc>) -> Entity {
        Entity {
            entity,
            version: 1,
            incarnation: new_incarnation(),
            reservation_floor: None,
            windows: Vec::new(),
            user_id: None,
            team_id: None,
            organization_id: None,
            blocked: false,
            model_budgets: Vec::new(),
            expires: None,
            key_count: 0,
            member_count: 0,
            lifetime_spent: Money::ZERO,
            key_revision: 0,
            shards: 0,
            shard_items: 0,
            created_at: now,
            updated_at: now,
            attributes: Map::new(),
        }
    }

    /// The same configuration as `other` as far as a reservation's guards
    /// see it (version, incarnation, key revision, floor, and each
    /// window's span, limit and generation): what a key's snapshot of its
    /// owners records. Counters and boundaries are not compared.
    pub fn same_configuration(&self, other: &Entity) -> bool {
        let shape = |e: &Entity| {
            e.windows
                .iter()
                .map(|w| (w.span, w.max, w.generation, w.legacy))
                .collect::<Vec<_>>()
        };
        self.entity == other.entity
            && self.version == other.version
            && self.incarnation == other.incarnation
            && self.key_revision == other.key_revision
            && self.shards == other.shards
            && self.shard_items == other.shard_items
            && self.reservation_floor == other.reservation_floor
            && shape(self) == shape(other)
    }

    pub fn window(&self, id: &str) -> Option<&Window> {
        self.windows.iter().find(|w| w.id() == id)
    }

    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        matches!(self.expires, Some(at) if at <= now)
    }

    /// The scopes directly above this entity, which count it (and must
    /// exist while it does): a key's user and team, a team's organization,
    /// a team member's team.
    pub fn owners(&self) -> Vec<EntityRef> {
        match self.entity.kind {
            EntityKind::TeamMember => self
                .entity
                .member_of()
                .map(|(team, _)| vec![EntityRef::team(team)])
                .unwrap_or_default(),
            EntityKind::Key => self
                .user_id
                .iter()
                .map(|u| EntityRef::user(u.clone()))
                .chain(self.team_id.iter().map(|t| EntityRef::team(t.clone())))
                .collect(),
            EntityKind::Team => self
                .organization_id
                .iter()
                .map(|o| EntityRef::organization(o.clone()))
                .collect(),
            EntityKind::User
            | EntityKind::Organization
            | EntityKind::Customer
            | EntityKind::Model
            | EntityKind::Tag => Vec::new(),
        }
    }
}

/// A fresh incarnation: random, non-zero, below 2^53 (exact as a DynamoDB
/// number, in JSON and in an `i64`).
pub fn new_incarnation() -> u64 {
    (rand::random::<u64>() >> 11).max(1)
}

/// The most items one atomic write may touch: DynamoDB's limit for a
/// transaction. A reservation writes one item per entity of its chain and
/// one for the reservation itself (see [`Chain::reserve_items`]).
pub const MAX_TRANSACTION_ITEMS: usize = 100;

/// The most windows one entity may have: every window adds conditions to
/// the one atomic write of admission.
pub const MAX_WINDOWS: usize = 10;

/// Why a set of windows cannot be one entity's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowSetError {
    /// Two windows of one span (canonical: `1w` is `7d`): a window is
    /// identified by its span ([`Window::id`]), so the second would be lost.
    Twice(Span),
    /// More than [`MAX_WINDOWS`].
    TooMany(usize),
}

/// Checks that `spans` can be one entity's windows: each span once, at most
/// [`MAX_WINDOWS`] of them.
pub fn check_window_spans(mut spans: Vec<Span>) -> Result<(), WindowSetError> {
    spans.sort();
    if let Some(pair) = spans.windows(2).find(|p| p[0] == p[1]) {
        return Err(WindowSetError::Twice(pair[0]));
    }
    if spans.len() > MAX_WINDOWS {
        return Err(WindowSetError::TooMany(spans.len()));
    }
    Ok(())
}

/// How many owners deep a chain goes above its key (key → team →
/// organization): what a store follows when it reads a chain, so a
/// malformed table can never make it loop.
pub const MAX_CHAIN_DEPTH: usize = 2;

/// What a request is charged to: its key, then every scope that governs it
/// — the key's user and team, the team's organization — each with any
/// number of windows, all under the same rules (see `plan::reserve_chain`).
/// Scopes are kept in [`EntityKind`] order, one per entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    pub key: Entity,
    pub scopes: Vec<Entity>,
}

impl Chain {
    /// A key alone (its scopes are added with [`Chain::set_owner`]).
    pub fn of(key: Entity) -> Chain {
        Chain {
            key,
            scopes: Vec::new(),
        }
    }

    pub fn entities(&self) -> impl Iterator<Item = &Entity> {
        std::iter::once(&self.key).chain(self.scopes.iter())
    }

    pub fn entities_mut(&mut self) -> impl Iterator<Item = &mut Entity> {
        std::iter::once(&mut self.key).chain(self.scopes.iter_mut())
    }

    /// The scope of `kind`, if the chain has one (the first: a chain has
    /// one user, one team, one organization).
    pub fn scope(&self, kind: EntityKind) -> Option<&Entity> {
        self.scopes.iter().find(|e| e.entity.kind == kind)
    }

    pub fn user(&self) -> Option<&Entity> {
        self.scope(EntityKind::User)
    }

    pub fn team(&self) -> Option<&Entity> {
        self.scope(EntityKind::Team)
    }

    /// Puts a scope in its place in the chain, replacing the one read
    /// before of the same entity (a key is ignored: it is the chain's).
    pub fn set_owner(&mut self, owner: Entity) {
        if owner.entity.kind == EntityKind::Key {
            return;
        }
        self.scopes.retain(|e| e.entity != owner.entity);
        self.scopes.push(owner);
        self.scopes
            .sort_by(|a, b| (a.entity.kind, &a.entity.id).cmp(&(b.entity.kind, &b.entity.id)));
    }

    /// The scopes the chain's entities name that it does not hold yet and
    /// that are not in `tried` (read already and not found): what a store
    /// reads next, until nothing is pending (at most [`MAX_CHAIN_DEPTH`]
    /// rounds). A key of a user in a team also names the user's budget in
    /// that team, which exists only if one was given (`/team/member_add`):
    /// read with the user and team, left out when absent.
    pub fn pending(&self, tried: &[EntityRef]) -> Vec<EntityRef> {
        let member = match (&self.key.user_id, &self.key.team_id) {
            (Some(u), Some(t)) => Some(EntityRef::team_member(t, u)),
            _ => None,
        };
        let mut out: Vec<EntityRef> = Vec::new();
        for owner in self.entities().flat_map(Entity::owners).chain(member) {
            if !tried.contains(&owner)
                && !out.contains(&owner)
                && !self.entities().any(|e| e.entity == owner)
            {
                out.push(owner);
            }
        }
        out
    }

    /// The items a reservation on this chain writes at most: one per
    /// entity (a sharded one reserves on one shard), and the reservation.
    pub fn reserve_items(&self) -> usize {
        1 + self.scopes.len() + 1
    }
}

/// Where a reservation holds budget: one window of one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub entity: EntityRef,
    /// The incarnation of the entity that was charged: a re-created entity
    /// of the same id is not this one, and is left alone.
    pub incarnation: u64,
    pub window: String,
    pub generation: u64,
}

/// The life of a reservation. Held → Settled (by settle or release), or
/// Held → Expired (released by the reset job) → Settled (late settle: the
/// spend is recorded, the amount is not released twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    Held,
    Expired,
    Settled,
}

impl ReservationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationState::Held => "held",
            ReservationState::Expired => "expired",
            ReservationState::Settled => "settled",
        }
    }

    /// Whether a reservation in this state still holds its amount.
    pub fn holds_budget(self) -> bool {
        self == ReservationState::Held
    }

    pub fn parse(s: &str) -> Option<ReservationState> {
        match s {
            "held" => Some(ReservationState::Held),
            "expired" => Some(ReservationState::Expired),
            "settled" => Some(ReservationState::Settled),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub id: String,
    pub amount: Money,
    pub holds: Vec<Hold>,
    pub key_hash: String,
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub state: ReservationState,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Set once settled.
    pub cost: Option<Money>,
    pub settled_at: Option<DateTime<Utc>>,
    /// The reset job released it before it was settled.
    pub expired_at: Option<DateTime<Utc>>,
    /// Digest of the receipt handed out with the id (see `receipt`): a
    /// settle that builds its write from the receipt is conditional on it.
    pub receipt_digest: Option<String>,
    /// The receipt itself, when this process made it (not stored: the id
    /// handed out carries it).
    pub receipt: Option<String>,
    /// What authorize answered when it took this reservation (headroom of
    /// the tightest window after it, and that window), so a retry of the
    /// same request is answered the same.
    pub remaining: Option<Money>,
    pub tightest: Option<(EntityRef, Span)>,
}

impl Chain {
    /// Every window of every entity of the chain, as a reservation holds it
    /// (a sharded entity's on the shard the request uses, chosen by `pick`:
    /// see `escrow::shard_of`).
    pub fn holds(&self, pick: u32) -> Vec<Hold> {
        self.entities()
            .flat_map(|e| {
                let at = crate::escrow::shard_of(e, pick)
                    .map_or_else(|| e.entity.clone(), |s| e.entity.at(s));
                e.windows.iter().map(move |w| Hold {
                    entity: at.clone(),
                    incarnation: e.incarnation,
                    window: w.id(),
                    generation: w.generation,
                })
            })
            .collect()
    }
}

impl Reservation {
    /// A reservation of `amount` just taken on `holds` for the key
    /// `key_hash` of `user_id` and `team_id`: held from `created_at` until
    /// `expires_at`, nothing settled, no receipt, no answer recorded yet.
    pub fn held(
        id: impl Into<String>,
        amount: Money,
        holds: Vec<Hold>,
        key_hash: impl Into<String>,
        (user_id, team_id): (Option<String>, Option<String>),
        created_at: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Reservation {
        Reservation {
            id: id.into(),
            amount,
            holds,
            key_hash: key_hash.into(),
            user_id,
            team_id,
            state: ReservationState::Held,
            created_at,
            expires_at,
            cost: None,
            settled_at: None,
            expired_at: None,
            receipt_digest: None,
            receipt: None,
            remaining: None,
            tightest: None,
        }
    }
}
