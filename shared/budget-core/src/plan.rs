//! The budget rules as data: for each write the core decides a *plan* —
//! the guards the stored item must satisfy and the changes the write makes
//! — and a store executes it atomically (all guards hold and every change
//! is applied, or nothing is). The DynamoDB adapter renders plans into
//! condition and update expressions; the memory store evaluates them on
//! its own copy. Neither contains a budget rule of its own: to change a
//! rule, change it here.
//!
//! Guards are what the rule needs to be true *in the store* (not in the
//! copy the decision was made on): that is what makes a decision on a
//! cached or partly known chain safe.

use chrono::{DateTime, Utc};

use crate::duration::ResetClock;
use crate::model::{
    Chain, Entity, EntityKind, EntityRef, Reservation, ReservationState, Span, Window,
};
use crate::money::Money;
use crate::store::Finish;

/// A counter of a window. `Used` is always `Spent + Reserved`, stored
/// because a DynamoDB condition cannot add two attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Used,
    Spent,
    Reserved,
    /// An escrow slot's headroom (see `escrow.rs`).
    Avail,
    /// An escrow pool's headroom held back while in debt (only ever set).
    Parked,
    /// An escrow shard's last refill (only ever set).
    Topped,
}

/// What must hold in the stored item for a write to happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The entity's configuration is the one the decision was made on.
    Version(u64),
    /// The entity is the incarnation the decision was made on (0: an item
    /// written before incarnations, which has none).
    Incarnation(u64),
    /// `window.counter <= amount` (headroom for a reservation).
    AtMost(String, Counter, Money),
    /// `window.counter < amount` (a zero reservation still needs room).
    Below(String, Counter, Money),
    /// The window's boundary is still `at` (nobody rolled it meanwhile).
    ResetAtIs(String, DateTime<Utc>),
    /// The window's period is still the current one at this instant (its
    /// boundary was not read, only assumed).
    ResetAfter(String, DateTime<Utc>),
    /// The window is the very one a reservation was taken from.
    Generation(String, u64),
    /// No key points at this user or team, no team at this organization
    /// (it may be deleted).
    NoKeys,
    /// This team has no member budgets (it may be deleted).
    NoMembers,
    /// No key of this user or team changed since the decision was made
    /// (it stands in for a check of the key itself: see
    /// [`reserve_chain`]).
    KeyRevision(u64),
    /// `window.counter >= amount` (an escrow slot covers a reservation).
    AtLeast(String, Counter, Money),
    /// `window.counter == amount` (a slot is as read).
    Is(String, Counter, Money),
}

/// What a write changes in the stored item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `window.counter += amount` (negative to take away).
    Add(String, Counter, Money),
    /// `window.used = window.reserved + amount`: the period's spend goes
    /// (a roll-over), reservations in flight stay, `amount` joins them.
    UsedFromReserved(String, Money),
    /// `window.spent = amount`.
    SetSpent(String, Money),
    /// `window.reset_at = at`: the next boundary.
    SetResetAt(String, DateTime<Utc>),
    /// The entity's entry in the index of what is due (the reset job's
    /// only way to find it): the earliest boundary of its windows, `None`
    /// (out of the index) when it has no window that resets. Never later
    /// than a real boundary — that would be a missed roll-over — and at
    /// worst earlier (the job then looks once for nothing). See
    /// [`next_due`].
    SetNextDue(Option<DateTime<Utc>>),
    /// `window.counter = amount`.
    Set(String, Counter, Money),
    /// The window, as given (an escrow slot's part of a new window).
    PutWindow(Window),
    /// The window goes.
    DropWindow(String),
    /// `version = v` (an escrow slot's copy of its entity's version).
    SetVersion(u64),
    /// `entity.lifetime_spent += amount` (a settle's cost, once per
    /// entity whatever its number of windows).
    AddLifetimeSpent(Money),
}

/// The earliest boundary of `entity`'s windows (lifetime windows have
/// none): when the reset job has to look at it next. `None`: never.
pub fn next_due(entity: &Entity) -> Option<DateTime<Utc>> {
    entity.windows.iter().filter_map(|w| w.reset_at).min()
}

/// The index entry after `changes` on `entity` (as read, under the guards
/// of the write): the earliest boundary once they apply. Boundaries only
/// move forward between configuration changes (a roll-over sets the next
/// one, past now), and the writes that set it are conditional on the
/// version read (the windows as read are all the windows): a boundary read
/// is never later than the stored one, so neither is the entry. `None`
/// when a window's boundary is unknown (assumed, not read): the entry is
/// then left as it is, which is safe — it was never later than a real
/// boundary, and a roll-over only moves boundaries later.
fn due_after(entity: &Entity, changes: &[Change]) -> Option<Change> {
    let unknown = entity
        .windows
        .iter()
        .any(|w| w.reset_at.is_none() && matches!(w.span, Span::Every(_)));
    if unknown {
        return None;
    }
    let mut after = entity.clone();
    apply(changes, &mut after);
    Some(Change::SetNextDue(next_due(&after)))
}

/// One conditional write to one entity's item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityWrite {
    pub entity: EntityRef,
    pub guards: Vec<Guard>,
    /// Empty: a condition check only (the entity takes part in the
    /// transaction without a change, e.g. a key with no window).
    pub changes: Vec<Change>,
}

impl EntityWrite {
    fn new(entity: &Entity) -> EntityWrite {
        EntityWrite {
            entity: entity.entity.clone(),
            guards: Vec::new(),
            changes: Vec::new(),
        }
    }
}

/// The reserve write for one entity (as read, or as far as it is known):
/// every window has room for `estimate`, and takes it. A window past its
/// boundary is rolled over in the same write. `None` when the estimate can
/// never fit (it is larger than a window's limit).
pub fn reserve(
    entity: &Entity,
    estimate: Money,
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Option<EntityWrite> {
    let mut write = EntityWrite::new(entity);
    write.guards.push(Guard::Version(entity.version));
    write.guards.push(Guard::Incarnation(entity.incarnation));
    for w in &entity.windows {
        let id = w.id();
        let limit = w.max.saturating_sub(estimate);
        if limit < Money::ZERO {
            return None;
        }
        if w.is_due(now) {
            // Rolled over in this same write: the period's spend goes,
            // reservations in flight stay.
            write.guards.push(Guard::ResetAtIs(id.clone(), w.reset_at?));
            write
                .guards
                .push(Guard::AtMost(id.clone(), Counter::Reserved, limit));
            if estimate.is_zero() {
                write
                    .guards
                    .push(Guard::Below(id.clone(), Counter::Reserved, w.max));
            }
            write.changes.extend(roll(w, estimate, now, clock));
            write
                .changes
                .push(Change::Add(id, Counter::Reserved, estimate));
        } else {
            write
                .guards
                .push(Guard::AtMost(id.clone(), Counter::Used, limit));
            if estimate.is_zero() {
                write
                    .guards
                    .push(Guard::Below(id.clone(), Counter::Used, w.max));
            }
            if let Some(guard) = period_assumed(w, now) {
                write.guards.push(guard);
            }
            write
                .changes
                .push(Change::Add(id.clone(), Counter::Used, estimate));
            write
                .changes
                .push(Change::Add(id, Counter::Reserved, estimate));
        }
    }
    if write
        .changes
        .iter()
        .any(|c| matches!(c, Change::SetResetAt(..)))
    {
        // A boundary moved: the index entry follows (the version read is
        // guarded above).
        write.changes.extend(due_after(entity, &write.changes));
    }
    Some(write)
}

/// The write that ends `reservation` on `entity` (as read, or as the
/// reservation knows it): the held amount leaves `reserved` (only from the
/// very window it was taken from, and only if it still holds budget), the
/// cost joins `spent` of the period current now. `None` when nothing
/// changes here (another incarnation, no window left, nothing to move).
pub fn finish(
    reservation: &Reservation,
    entity: &Entity,
    how: Finish,
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Option<EntityWrite> {
    let mut write = EntityWrite::new(entity);
    let holds_budget = reservation.state.holds_budget();
    let cost = match how {
        Finish::Settle(c) => c,
        Finish::Expire => Money::ZERO,
    };
    for hold in reservation
        .holds
        .iter()
        // Another incarnation of the same id (deleted and re-created)
        // never took this reservation: it is left alone.
        .filter(|h| h.entity == entity.entity && h.incarnation == entity.incarnation)
    {
        let Some(w) = entity.window(&hold.window) else {
            continue; // the window was removed: nothing left to charge
        };
        let release = if holds_budget && w.generation == hold.generation {
            reservation.amount
        } else {
            Money::ZERO
        };
        if release.is_zero() && cost.is_zero() {
            continue;
        }
        if entity.entity.slot.is_some() {
            // An escrow slot: back to the shard that held (see escrow.rs).
            crate::escrow::finish_window(&mut write, w, release, cost, now);
            continue;
        }
        settle_window(&mut write, w, release, cost, now, clock)?;
    }
    if write.changes.is_empty() {
        return None;
    }
    if !cost.is_zero() {
        write.changes.push(Change::AddLifetimeSpent(cost));
    }
    write.guards.push(Guard::Incarnation(entity.incarnation));
    if write
        .changes
        .iter()
        .any(|c| matches!(c, Change::SetResetAt(..)))
    {
        // Rolled over (only on an entity as read: one as held has no
        // boundary, so nothing of it is due): the index entry follows, on
        // condition that the windows read are all the windows.
        write.guards.push(Guard::Version(entity.version));
        write.changes.extend(due_after(entity, &write.changes));
    }
    Some(write)
}

/// One window's part of ending a reservation: `release` leaves
/// `reserved`, `cost` joins `spent` of the period current now (rolled over
/// first if the window is due). `None` if the boundary is unknown for a
/// due window (never: due means a boundary was read).
fn settle_window(
    write: &mut EntityWrite,
    w: &Window,
    release: Money,
    cost: Money,
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Option<()> {
    let id = w.id();
    write
        .guards
        .push(Guard::Generation(id.clone(), w.generation));
    if let Some(guard) = period_assumed(w, now) {
        write.guards.push(guard);
    }
    let delta = cost.saturating_sub(release);
    let unreserve = Change::Add(
        id.clone(),
        Counter::Reserved,
        Money::ZERO.saturating_sub(release),
    );
    if w.is_due(now) && !cost.is_zero() {
        // The cost belongs to the period current now: roll first.
        write.guards.push(Guard::ResetAtIs(id.clone(), w.reset_at?));
        write.changes.extend([
            Change::UsedFromReserved(id.clone(), delta),
            unreserve,
            Change::SetSpent(id.clone(), cost),
            Change::SetResetAt(id, w.span.next_reset(now, clock).unwrap_or(now)),
        ]);
    } else {
        write.changes.extend([
            Change::Add(id.clone(), Counter::Used, delta),
            unreserve,
            Change::Add(id, Counter::Spent, cost),
        ]);
    }
    Some(())
}

/// The reset job's write for an entity the index says is due: rolls over
/// every window of `entity` (as read) that is due at `now`, each on
/// condition that nobody rolled it meanwhile, and moves its index entry
/// to its next boundary — on condition that the configuration read is
/// still the stored one (so the windows read are all the windows). With
/// nothing due (the entry was early, or another writer rolled first) it
/// only corrects the entry. Its `ResetAtIs` guards count the windows it
/// rolls.
pub fn roll_over(entity: &Entity, now: DateTime<Utc>, clock: &ResetClock) -> EntityWrite {
    let mut write = EntityWrite::new(entity);
    write.guards.push(Guard::Version(entity.version));
    write.guards.push(Guard::Incarnation(entity.incarnation));
    for w in entity.windows.iter().filter(|w| w.is_due(now)) {
        if let Some(at) = w.reset_at {
            write.guards.push(Guard::ResetAtIs(w.id(), at));
            write.changes.extend(roll(w, Money::ZERO, now, clock));
        }
    }
    write.changes.extend(due_after(entity, &write.changes));
    write
}

/// The changes that start `w`'s next period, with `joining` reserved in
/// it too: spent 0, used = reserved + joining, the next boundary.
fn roll(w: &Window, joining: Money, now: DateTime<Utc>, clock: &ResetClock) -> Vec<Change> {
    let id = w.id();
    vec![
        Change::UsedFromReserved(id.clone(), joining),
        Change::SetSpent(id.clone(), Money::ZERO),
        Change::SetResetAt(id, w.span.next_reset(now, clock).unwrap_or(now)),
    ]
}

/// A window whose boundary is not known (from an owner snapshot or a
/// receipt, not read): the write itself checks the period is current.
fn period_assumed(w: &Window, now: DateTime<Utc>) -> Option<Guard> {
    (w.reset_at.is_none() && matches!(w.span, Span::Every(_)))
        .then(|| Guard::ResetAfter(w.id(), now))
}

/// How an admin update treats each window: kept windows keep their
/// counters (requests may be moving them) and take the new limit; new
/// windows start empty; windows no longer given go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowEdit {
    Limit {
        id: String,
        max: Money,
        legacy: bool,
    },
    Open(Window),
    Drop(String),
}

/// The window edits that turn `old` (as read) into `new`, the guards the
/// write needs (the configuration and incarnation read), and the entity's
/// index entry after it: the earliest boundary of the windows it keeps
/// (as read: never later than stored) and of the ones it opens.
pub fn update(old: &Entity, new: &Entity) -> (Vec<Guard>, Vec<WindowEdit>, Change) {
    let guards = vec![
        Guard::Version(old.version),
        Guard::Incarnation(old.incarnation),
    ];
    let mut edits = Vec::new();
    for w in &new.windows {
        edits.push(match old.window(&w.id()) {
            Some(_) => WindowEdit::Limit {
                id: w.id(),
                max: w.max,
                legacy: w.legacy,
            },
            None => WindowEdit::Open(w.clone()),
        });
    }
    for w in &old.windows {
        if new.window(&w.id()).is_none() {
            edits.push(WindowEdit::Drop(w.id()));
        }
    }
    let due = edits
        .iter()
        .filter_map(|e| match e {
            WindowEdit::Limit { id, .. } => old.window(id).and_then(|w| w.reset_at),
            WindowEdit::Open(w) => w.reset_at,
            WindowEdit::Drop(_) => None,
        })
        .min();
    (guards, edits, Change::SetNextDue(due))
}

/// The guards of deleting `entity` (as read): the configuration and
/// incarnation read, and that nothing points at it (no key at a user or
/// team, no member budget in a team, no team in an organization).
pub fn delete(entity: &Entity) -> Vec<Guard> {
    let mut guards = vec![
        Guard::Version(entity.version),
        Guard::Incarnation(entity.incarnation),
    ];
    match entity.entity.kind {
        EntityKind::Key | EntityKind::TeamMember => {}
        EntityKind::Team => guards.extend([Guard::NoKeys, Guard::NoMembers]),
        EntityKind::User | EntityKind::Organization => guards.push(Guard::NoKeys),
        EntityKind::Customer | EntityKind::Model | EntityKind::Tag => {}
    }
    guards
}

/// Do `guards` hold on `stored` (`None`: the item does not exist)? The
/// meaning of every guard, for stores that evaluate plans themselves (the
/// memory store) and for tests of the ones that render them.
pub fn guards_hold(guards: &[Guard], stored: Option<&Entity>) -> bool {
    let Some(e) = stored else {
        return false;
    };
    let window = |id: &str| e.window(id);
    let counter = |w: &Window, c: Counter| match c {
        Counter::Used => w.spent.saturating_add(w.reserved),
        Counter::Spent => w.spent,
        Counter::Reserved => w.reserved,
        Counter::Avail => w.avail,
        Counter::Parked => w.parked,
        Counter::Topped => w.topped,
    };
    guards.iter().all(|g| match g {
        Guard::Version(v) => e.version == *v,
        Guard::Incarnation(i) => e.incarnation == *i,
        Guard::AtMost(id, c, m) => window(id).is_some_and(|w| counter(w, *c) <= *m),
        Guard::Below(id, c, m) => window(id).is_some_and(|w| counter(w, *c) < *m),
        Guard::ResetAtIs(id, at) => window(id).is_some_and(|w| w.reset_at == Some(*at)),
        Guard::ResetAfter(id, now) => {
            window(id).is_some_and(|w| w.reset_at.is_some_and(|at| at > *now))
        }
        Guard::Generation(id, g) => window(id).is_some_and(|w| w.generation == *g),
        Guard::NoKeys => e.key_count == 0,
        Guard::NoMembers => e.member_count == 0,
        Guard::KeyRevision(r) => e.key_revision == *r,
        Guard::AtLeast(id, c, m) => window(id).is_some_and(|w| counter(w, *c) >= *m),
        Guard::Is(id, c, m) => window(id).is_some_and(|w| counter(w, *c) == *m),
    })
}

/// Applies `changes` to `stored` (whose guards held). `used` is derived
/// here (spent + reserved), so the changes to it are implied by the others.
pub fn apply(changes: &[Change], stored: &mut Entity) {
    for change in changes {
        let id = match change {
            Change::Add(id, ..)
            | Change::UsedFromReserved(id, _)
            | Change::SetSpent(id, _)
            | Change::Set(id, ..)
            | Change::SetResetAt(id, _) => id,
            // Not part of the entity: stores keep their index themselves.
            Change::SetNextDue(_) => continue,
            Change::PutWindow(w) => {
                stored.windows.retain(|x| x.span != w.span);
                stored.windows.push(w.clone());
                stored.windows.sort_by_key(|x| x.span);
                continue;
            }
            Change::DropWindow(id) => {
                stored.windows.retain(|x| x.id() != *id);
                continue;
            }
            Change::SetVersion(v) => {
                stored.version = *v;
                continue;
            }
            Change::AddLifetimeSpent(m) => {
                stored.lifetime_spent = stored.lifetime_spent.saturating_add(*m);
                continue;
            }
        };
        let Some(w) = stored.windows.iter_mut().find(|w| w.id() == *id) else {
            continue;
        };
        match change {
            Change::Add(_, Counter::Spent, m) => w.spent = w.spent.saturating_add(*m),
            Change::Add(_, Counter::Reserved, m) => w.reserved = w.reserved.saturating_add(*m),
            Change::Add(_, Counter::Avail, m) => w.avail = w.avail.saturating_add(*m),
            Change::Add(_, Counter::Used, _) | Change::UsedFromReserved(..) => {}
            Change::SetSpent(_, m) | Change::Set(_, Counter::Spent, m) => w.spent = *m,
            Change::Set(_, Counter::Reserved, m) => w.reserved = *m,
            Change::Set(_, Counter::Avail, m) => w.avail = *m,
            Change::Add(_, Counter::Parked, m) => w.parked = w.parked.saturating_add(*m),
            Change::Set(_, Counter::Parked, m) => w.parked = *m,
            Change::Add(_, Counter::Topped, m) => w.topped = w.topped.saturating_add(*m),
            Change::Set(_, Counter::Topped, m) => w.topped = *m,
            Change::Set(_, Counter::Used, _) => {}
            Change::SetResetAt(_, at) => w.reset_at = Some(*at),
            Change::SetNextDue(_)
            | Change::AddLifetimeSpent(_)
            | Change::PutWindow(_)
            | Change::DropWindow(_)
            | Change::SetVersion(_) => {}
        }
    }
}

/// What must hold in the stored reservation for it to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationGuard {
    /// Still in the state it was read (or assumed) in.
    State(ReservationState),
    /// Built from a receipt: the receipt must be this reservation's.
    Digest(String),
}

/// The write that ends a reservation: from its state to `to`, with the
/// cost (settle) and the instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationEnd {
    pub id: String,
    pub guards: Vec<ReservationGuard>,
    pub to: ReservationState,
    /// Settled: the cost recorded.
    pub cost: Option<Money>,
    pub at: DateTime<Utc>,
}

/// Reserve: one write per entity of the chain (all or none), and the
/// reservation recorded if its id is new. `None` when the estimate can
/// never fit a window of the chain.
///
/// The chain is any number of scopes (key, user, team, organization), each
/// with any number of windows: one item each, at most
/// [`crate::model::MAX_TRANSACTION_ITEMS`] with the reservation (`None`
/// past it; authorize refuses such a chain before, with a message).
///
/// A key with no window of its own would only be *checked* (its version and
/// incarnation: not blocked, not deleted, not changed since it was read) —
/// and a condition check costs what a write does, two write units. When an
/// owner is written anyway, the key is left out and that owner's write is
/// conditional on its [`Entity::key_revision`] instead, which every admin
/// change of one of its keys bumps: the same guarantee, for nothing.
///
/// A sharded user or team (see `escrow.rs`) reserves on one of its shards,
/// chosen by `pick`, instead of its own item.
pub fn reserve_chain(
    chain: &Chain,
    estimate: Money,
    now: DateTime<Utc>,
    clock: &ResetClock,
    pick: u32,
) -> Option<Vec<EntityWrite>> {
    if chain.reserve_items() > crate::model::MAX_TRANSACTION_ITEMS {
        return None; // never: authorize refuses such a chain first
    }
    let mut writes: Vec<EntityWrite> = chain
        .entities()
        .map(|e| match crate::escrow::shard_of(e, pick) {
            Some(shard) => crate::escrow::reserve(e, shard, estimate, now),
            None => reserve(e, estimate, now, clock),
        })
        .collect::<Option<_>>()?;
    let key_only_checked = writes[0].changes.is_empty();
    // The key revision lives on the key's own owners (its user and team:
    // only they count its changes; an organization does not), on the
    // owner's item, not on its shards.
    let owners = chain.key.owners();
    let carrier = chain
        .entities()
        .zip(writes.iter_mut())
        .skip(1)
        .find(|(e, w)| {
            owners.contains(&e.entity) && !w.changes.is_empty() && w.entity.slot.is_none()
        });
    if let (true, Some((owner, write))) = (key_only_checked, carrier) {
        write.guards.push(Guard::KeyRevision(owner.key_revision));
        writes.remove(0);
    }
    Some(writes)
}

/// The bookkeeping an admin write of a key does on one of its owners, in
/// the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerBookkeeping {
    pub owner: EntityRef,
    /// `key_count += this` (the owner must exist): keys of a user or team,
    /// teams of an organization.
    pub key_count: i64,
    /// `key_revision += 1`: the key changed, so reservations decided on
    /// what was known of it before must fail (see [`reserve_chain`]).
    pub revision: bool,
    /// `member_count += this`: a team's member budgets.
    pub members: i64,
    /// `version += 1`: a member budget of this team was created, changed
    /// or deleted. A chain is read with its team, so a chain cached
    /// without the member (or with its old limits) fails on the team's
    /// version, is re-read, and finds it: no request is admitted past a
    /// member budget that exists.
    pub version: bool,
}

/// Whether `books` may be kept on `owner` as stored: a member budget's
/// change bumps its team's version, which a sharded team's slots would not
/// follow (every request on its shards would then fail on the version), so
/// it is refused on a team that became sharded since it was checked.
pub fn books_hold(books: &OwnerBookkeeping, owner: &Entity) -> bool {
    !(books.version && crate::escrow::is_sharded(owner))
}

/// The bookkeeping of several key writes in one transaction: one write per
/// owner (a transaction may touch an item once), counts summed.
pub fn merge_bookkeeping(all: impl IntoIterator<Item = OwnerBookkeeping>) -> Vec<OwnerBookkeeping> {
    let mut out: Vec<OwnerBookkeeping> = Vec::new();
    for b in all {
        match out.iter_mut().find(|o| o.owner == b.owner) {
            Some(o) => {
                o.key_count += b.key_count;
                o.revision |= b.revision;
                o.members += b.members;
                o.version |= b.version;
            }
            None => out.push(b),
        }
    }
    out
}

/// What writing a key as `new` over `old` (`None`: created, or deleted)
/// does to its owners: a new key counts itself on them; a deleted one
/// uncounts itself and bumps their key revision; an updated one moves its
/// count from the owners it leaves to those it joins, and bumps the key
/// revision of all of them. A team does the same on its organization. A
/// team member (a user's budget in a team) counts itself in its team's
/// `member_count` and bumps the team's version instead (see
/// [`OwnerBookkeeping::version`]); users and organizations have no owners.
pub fn key_bookkeeping(old: Option<&Entity>, new: Option<&Entity>) -> Vec<OwnerBookkeeping> {
    let owners = |e: Option<&Entity>| e.map(Entity::owners).unwrap_or_default();
    let (before, after) = (owners(old), owners(new));
    let mut out: Vec<OwnerBookkeeping> = Vec::new();
    for o in before.iter().chain(&after) {
        if out.iter().any(|b| &b.owner == o) {
            continue;
        }
        let count = i64::from(after.contains(o)) - i64::from(before.contains(o));
        let revision = match (old, new) {
            (Some(o), Some(n)) => reserves_differently(o, n),
            (Some(_), None) => true,
            _ => false,
        };
        // Nothing to write: the owner's item (which every request of its
        // keys writes) is left out of the admin transaction.
        if count == 0 && !revision {
            continue;
        }
        let member = old.or(new).map(|e| e.entity.kind) == Some(EntityKind::TeamMember);
        out.push(if member {
            OwnerBookkeeping {
                owner: o.clone(),
                key_count: 0,
                revision: false,
                members: count,
                version: true,
            }
        } else {
            OwnerBookkeeping {
                owner: o.clone(),
                key_count: count,
                revision,
                members: 0,
                version: false,
            }
        });
    }
    out
}

/// Whether a key written as `new` over `old` may reserve otherwise: its
/// state, owners, floor or windows changed (not its metadata or alias,
/// which no reservation reads). Only then do its owners' key revisions
/// move, so an update of a key's metadata leaves the cached chains of
/// every other key of its team alone.
fn reserves_differently(old: &Entity, new: &Entity) -> bool {
    let windows = |e: &Entity| {
        e.windows
            .iter()
            .map(|w| (w.span, w.max, w.legacy))
            .collect::<Vec<_>>()
    };
    old.blocked != new.blocked
        || old.model_budgets != new.model_budgets
        || old.expires != new.expires
        || old.owners() != new.owners()
        || old.reservation_floor != new.reservation_floor
        || windows(old) != windows(new)
}

/// Settle, release or expire `reservation` (as read or as its receipt
/// says) on `entities` (as read; `None`: as the reservation knows them,
/// see [`entities_as_held`]): the entity writes, and the reservation's end.
pub fn end_reservation(
    reservation: &Reservation,
    entities: Option<&[Entity]>,
    how: Finish,
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> (Vec<EntityWrite>, ReservationEnd) {
    let assumed;
    let entities = match entities {
        Some(read) => read,
        None => {
            assumed = entities_as_held(reservation);
            assumed.as_slice()
        }
    };
    let writes = entities
        .iter()
        .filter_map(|e| finish(reservation, e, how, now, clock))
        .collect();
    let mut guards = vec![ReservationGuard::State(reservation.state)];
    if let Some(d) = &reservation.receipt_digest {
        guards.push(ReservationGuard::Digest(d.clone()));
    }
    let (to, cost) = match how {
        Finish::Settle(c) => (ReservationState::Settled, Some(c)),
        Finish::Expire => (ReservationState::Expired, None),
    };
    let end = ReservationEnd {
        id: reservation.id.clone(),
        guards,
        to,
        cost,
        at: now,
    };
    (writes, end)
}

/// The entities a reservation holds, as far as the reservation knows them:
/// its windows with their generations and incarnations, assumed open (no
/// boundary passed, limits unknown). Lets settle write without reading the
/// entities first; the guards of the writes check the assumption.
pub fn entities_as_held(reservation: &Reservation) -> Vec<Entity> {
    let mut out: Vec<Entity> = Vec::new();
    for hold in &reservation.holds {
        let Some(span) = Span::parse_id(&hold.window) else {
            continue;
        };
        let window = Window {
            span,
            max: Money::ZERO,
            spent: Money::ZERO,
            reserved: Money::ZERO,
            reset_at: None,
            generation: hold.generation,
            legacy: false,
            avail: Money::ZERO,
            parked: Money::ZERO,
            topped: Money::ZERO,
        };
        match out
            .iter_mut()
            .find(|e| e.entity == hold.entity && e.incarnation == hold.incarnation)
        {
            Some(e) => e.windows.push(window),
            None => {
                let mut e = Entity::new(hold.entity.clone(), reservation.created_at);
                e.incarnation = hold.incarnation;
                e.windows.push(window);
                out.push(e);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::admit;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap()
    }

    /// A window from small numbers: max, spent, reserved in dollars, and
    /// whether its boundary is past (due), future, or unknown (snapshot).
    fn window(span: &str, max: i64, spent: i64, reserved: i64, boundary: u8) -> Window {
        let span = Span::parse_id(span).unwrap();
        Window {
            span,
            max: Money::usd(max),
            spent: Money::usd(spent),
            reserved: Money::usd(reserved),
            reset_at: match boundary {
                0 => Some(now() - chrono::Duration::hours(1)),
                _ => Some(now() + chrono::Duration::hours(1)),
            },
            generation: 7,
            legacy: false,
            avail: Money::ZERO,
            parked: Money::ZERO,
            topped: Money::ZERO,
        }
    }

    fn entity(kind: EntityKind, windows: Vec<Window>) -> Entity {
        let mut e = Entity::new(EntityRef::new(kind, "x"), now());
        e.windows = windows;
        e
    }

    /// The entity of `chain` that `write` is for.
    fn stored_as<'a>(chain: &'a Chain, write: &EntityWrite) -> &'a Entity {
        chain
            .entities()
            .find(|e| e.entity == write.entity)
            .expect("a write for an entity of the chain")
    }

    #[test]
    fn a_key_without_windows_is_guarded_by_its_owners_key_revision() {
        let clock = ResetClock::utc_midnight();
        let mut user = entity(EntityKind::User, vec![window("1d", 5, 0, 0, 1)]);
        user.key_revision = 3;
        let mut key = entity(EntityKind::Key, vec![]);
        key.user_id = Some("x".into());
        let chain = Chain {
            key,
            scopes: vec![user.clone()],
        };
        let writes = reserve_chain(&chain, Money::usd(1), now(), &clock, 0).unwrap();
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert!(writes[0].guards.contains(&Guard::KeyRevision(3)));
        // A key of the user changed since: the write is refused.
        user.key_revision = 4;
        assert!(!guards_hold(&writes[0].guards, Some(&user)));
        // Alone, the key is checked itself.
        let alone = Chain::of(entity(EntityKind::Key, vec![]));
        let writes = reserve_chain(&alone, Money::usd(1), now(), &clock, 0).unwrap();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].entity.kind, EntityKind::Key);
        assert!(writes[0].changes.is_empty());
        // What a key change does to its owners' books.
        let mut key = entity(EntityKind::Key, vec![]);
        key.user_id = Some("u".into());
        let mut moved = key.clone();
        moved.user_id = None;
        moved.team_id = Some("t".into());
        let books = |b: Vec<OwnerBookkeeping>| {
            b.into_iter()
                .map(|b| {
                    (
                        format!("{} {}", b.owner.kind.as_str(), b.owner.id),
                        b.key_count,
                        b.revision,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            books(key_bookkeeping(None, Some(&key))),
            [("user u".to_string(), 1, false)]
        );
        assert_eq!(
            books(key_bookkeeping(Some(&key), Some(&moved))),
            [
                ("user u".to_string(), -1, true),
                ("team t".to_string(), 1, true)
            ]
        );
        assert_eq!(books(key_bookkeeping(Some(&key), Some(&key))), []);
        let blocked = Entity {
            blocked: true,
            ..key.clone()
        };
        assert_eq!(
            books(key_bookkeeping(Some(&key), Some(&blocked))),
            [("user u".to_string(), 0, true)]
        );
        assert_eq!(
            books(key_bookkeeping(Some(&key), None)),
            [("user u".to_string(), -1, true)]
        );
    }

    #[test]
    fn a_chain_wider_than_one_transaction_is_never_planned() {
        let clock = ResetClock::utc_midnight();
        let scope = |i: usize| {
            let mut e = entity(EntityKind::Team, vec![window("1d", 5, 0, 0, 1)]);
            e.entity.id = format!("t{i}");
            e
        };
        let mut chain = Chain::of(entity(EntityKind::Key, vec![]));
        // 98 scopes, the key and the reservation: 100 items, the most.
        chain.scopes = (0..98).map(scope).collect();
        assert_eq!(chain.reserve_items(), crate::model::MAX_TRANSACTION_ITEMS);
        let writes = reserve_chain(&chain, Money::usd(1), now(), &clock, 0).unwrap();
        assert_eq!(writes.len() + 1, crate::model::MAX_TRANSACTION_ITEMS);
        chain.scopes.push(scope(98));
        assert_eq!(reserve_chain(&chain, Money::usd(1), now(), &clock, 0), None);
    }

    #[test]
    fn only_the_keys_own_owners_carry_its_revision() {
        // A key with no window, a user and team with none either, an
        // organization with one: the key is checked itself (the
        // organization does not count the key's changes).
        let clock = ResetClock::utc_midnight();
        let mut key = entity(EntityKind::Key, vec![]);
        key.team_id = Some("x".into());
        let mut team = entity(EntityKind::Team, vec![]);
        team.organization_id = Some("x".into());
        let org = entity(EntityKind::Organization, vec![window("1d", 5, 0, 0, 1)]);
        let chain = Chain {
            key,
            scopes: vec![team, org],
        };
        let writes = reserve_chain(&chain, Money::usd(1), now(), &clock, 0).unwrap();
        assert_eq!(writes.len(), 3, "{writes:?}");
        assert_eq!(writes[0].entity.kind, EntityKind::Key);
        assert!(writes
            .iter()
            .all(|w| !w.guards.iter().any(|g| matches!(g, Guard::KeyRevision(_)))));
    }

    fn windows() -> impl Strategy<Value = Vec<Window>> {
        let spans = ["1h", "1d", "lifetime"];
        proptest::collection::vec((0..3usize, 0i64..6, 0i64..6, 0i64..6, 0u8..2), 0..3).prop_map(
            move |ws| {
                let mut out: Vec<Window> = Vec::new();
                for (s, max, spent, reserved, boundary) in ws {
                    let boundary = if spans[s] == "lifetime" { 1 } else { boundary };
                    let mut w = window(spans[s], max, spent, reserved, boundary);
                    if spans[s] == "lifetime" {
                        w.reset_at = None;
                    }
                    if !out.iter().any(|o| o.span == w.span) {
                        out.push(w);
                    }
                }
                out
            },
        )
    }

    proptest! {
        /// The store's guards hold exactly when the core's rule admits, and
        /// the changes reserve the estimate in every window (rolled over
        /// where due).
        #[test]
        fn reserve_guards_hold_exactly_when_the_rule_admits(
            key in windows(),
            user in windows(),
            team in windows(),
            organization in windows(),
            estimate in 0i64..7,
        ) {
            let clock = ResetClock::utc_midnight();
            let mut key = entity(EntityKind::Key, key);
            (key.user_id, key.team_id) = (Some("x".into()), Some("x".into()));
            let chain = Chain {
                key,
                scopes: vec![
                    entity(EntityKind::User, user),
                    entity(EntityKind::Team, team),
                    entity(EntityKind::Organization, organization),
                ],
            };
            let e = Money::usd(estimate);
            let admits = admit(&chain, e, now(), &clock).is_ok();
            let plan = reserve_chain(&chain, e, now(), &clock, 0);
            let holds = plan.as_ref().is_some_and(|writes| {
                writes
                    .iter()
                    .all(|w| guards_hold(&w.guards, Some(stored_as(&chain, w))))
            });
            prop_assert_eq!(admits, holds);
            if let Some(writes) = &plan {
                // A key with no window is left out when one of its own
                // owners (user, team; not the organization) is written.
                let key_written = writes.iter().any(|w| w.entity.kind == EntityKind::Key);
                let owner_changed = writes.iter().any(|w| {
                    matches!(w.entity.kind, EntityKind::User | EntityKind::Team)
                        && !w.changes.is_empty()
                });
                prop_assert_eq!(key_written, !chain.key.windows.is_empty() || !owner_changed);
            }
            if let (true, Some(writes)) = (holds, plan) {
                for w in &writes {
                    let before = stored_as(&chain, w);
                    let mut after = before.clone();
                    apply(&w.changes, &mut after);
                    for (b, a) in before.windows.iter().zip(&after.windows) {
                        prop_assert_eq!(a.reserved, b.reserved.saturating_add(e));
                        prop_assert_eq!(a.spent, b.spent_at(now()));
                        prop_assert!(!a.is_due(now()));
                    }
                }
            }
        }

        /// A decision on a chain known only from an owner snapshot (limits
        /// and generations; counters zero, boundaries unknown) is safe: its
        /// guards hold on the stored entities only if the rule admits on
        /// them, and exactly then when no stored window is past its
        /// boundary (a due one makes the write re-read instead).
        #[test]
        fn a_decision_on_a_snapshot_is_safe(
            user in windows(),
            team in windows(),
            organization in windows(),
            estimate in 0i64..7,
        ) {
            let clock = ResetClock::utc_midnight();
            let stored = Chain {
                key: entity(EntityKind::Key, vec![]),
                scopes: vec![
                    entity(EntityKind::User, user),
                    entity(EntityKind::Team, team),
                    entity(EntityKind::Organization, organization),
                ],
            };
            let mut known = stored.clone();
            for e in known.entities_mut() {
                for w in &mut e.windows {
                    (w.spent, w.reserved, w.reset_at) = (Money::ZERO, Money::ZERO, None);
                }
            }
            let e = Money::usd(estimate);
            let admits = admit(&stored, e, now(), &clock).is_ok();
            let holds = reserve_chain(&known, e, now(), &clock, 0).is_some_and(|writes| {
                writes
                    .iter()
                    .all(|w| guards_hold(&w.guards, Some(stored_as(&stored, w))))
            });
            prop_assert!(!holds || admits, "admitted on a snapshot, refused on the store");
            let any_due = stored.entities().any(|x| x.windows.iter().any(|w| w.is_due(now())));
            if !any_due {
                prop_assert_eq!(holds, admits);
            }
        }

        #[test]
        /// Every write that moves a boundary moves the entity's index
        /// entry with it, and the entry is never later than a boundary of
        /// the stored entity, even when the plan was made on a stale read
        /// (boundaries seen earlier than they are: another writer rolled
        /// meanwhile): a late entry would be a missed roll-over.
        fn the_due_entry_is_never_later_than_a_boundary(
            ws in windows(),
            stale in proptest::collection::vec(any::<bool>(), 3),
            estimate in 0i64..3,
        ) {
            let clock = ResetClock::utc_midnight();
            let stored = entity(EntityKind::User, ws);
            let mut read = stored.clone();
            for (w, s) in read.windows.iter_mut().zip(&stale) {
                if *s {
                    w.reset_at = w.reset_at.map(|at| at - chrono::Duration::minutes(30));
                }
            }
            let due_of = |w: &EntityWrite| {
                w.changes.iter().find_map(|c| match c {
                    Change::SetNextDue(d) => Some(*d),
                    _ => None,
                })
            };
            let roll = roll_over(&read, now(), &clock);
            let reserve_write = reserve(&read, Money::usd(estimate), now(), &clock);
            for write in std::iter::once(roll).chain(reserve_write) {
                let rolls = write
                    .changes
                    .iter()
                    .any(|c| matches!(c, Change::SetResetAt(..)));
                prop_assert!(!rolls || due_of(&write).is_some(), "{write:?}");
                if !guards_hold(&write.guards, Some(&stored)) {
                    continue;
                }
                let mut after = stored.clone();
                apply(&write.changes, &mut after);
                if let Some(due) = due_of(&write) {
                    for w in &after.windows {
                        if let Some(at) = w.reset_at {
                            prop_assert!(due.is_some_and(|d| d <= at), "{due:?} after {at}");
                        }
                    }
                    if !stale.iter().any(|s| *s) {
                        prop_assert_eq!(due, next_due(&after));
                    }
                }
            }
            // The job's write leaves nothing due behind it.
            let write = roll_over(&stored, now(), &clock);
            prop_assert!(guards_hold(&write.guards, Some(&stored)));
            let mut after = stored.clone();
            apply(&write.changes, &mut after);
            prop_assert!(after.windows.iter().all(|w| !w.is_due(now())));
            prop_assert_eq!(due_of(&write), Some(next_due(&after)));
            prop_assert!(next_due(&after).is_none_or(|d| d > now()));
        }

        /// Settling on the entity as read releases the amount once and
        /// records the cost in the current period; as held (not read), the
        /// guards hold on the stored entity exactly when its period is
        /// current and the window is the one reserved.
        #[test]
        fn finish_moves_the_amount_once_into_the_current_period(
            ws in windows(),
            amount in 0i64..4,
            cost in 0i64..4,
            generation_moved in any::<bool>(),
            expired in any::<bool>(),
            expire in any::<bool>(),
        ) {
            let clock = ResetClock::utc_midnight();
            let stored = entity(EntityKind::User, ws);
            let holds = stored
                .windows
                .iter()
                .map(|w| crate::model::Hold {
                    entity: stored.entity.clone(),
                    incarnation: stored.incarnation,
                    window: w.id(),
                    generation: if generation_moved { 8 } else { w.generation },
                })
                .collect();
            let owners = (Some("x".into()), None);
            let mut reservation =
                Reservation::held("r", Money::usd(amount), holds, "", owners, now(), now());
            if expired {
                // Released by the reset job already: a late settle records
                // its cost and releases nothing.
                reservation.state = ReservationState::Expired;
            }
            let cost = if expire { 0 } else { cost };
            let how = if expire { Finish::Expire } else { Finish::Settle(Money::usd(cost)) };
            let (writes, _) = end_reservation(&reservation, Some(std::slice::from_ref(&stored)), how, now(), &clock);
            let mut after = stored.clone();
            for w in &writes {
                prop_assert!(guards_hold(&w.guards, Some(&stored)));
                apply(&w.changes, &mut after);
            }
            let released = if generation_moved || expired { 0 } else { amount };
            for (b, a) in stored.windows.iter().zip(&after.windows) {
                prop_assert_eq!(a.reserved, b.reserved.saturating_sub(Money::usd(released)));
                let spent_now = if cost > 0 { b.spent_at(now()) } else { b.spent };
                prop_assert_eq!(a.spent, spent_now.saturating_add(Money::usd(cost)));
            }
            // Not read: the assumed entity's guards check the stored one.
            let (writes, _) = end_reservation(&reservation, None, how, now(), &clock);
            let current = stored.windows.iter().all(|w| !w.is_due(now()));
            let all_hold = writes.iter().all(|w| guards_hold(&w.guards, Some(&stored)));
            let moves = (amount > 0 && !expired) || cost > 0;
            if !generation_moved && moves && !stored.windows.is_empty() {
                prop_assert_eq!(all_hold, current);
            }
            // The window replaced since (a new generation) is not the one
            // the reservation was taken from: the write is refused.
            if !generation_moved && !writes.is_empty() {
                let mut replaced = stored.clone();
                for w in &mut replaced.windows {
                    w.generation += 1;
                }
                prop_assert!(writes.iter().all(|w| !guards_hold(&w.guards, Some(&replaced))));
            }
        }
    }
}
