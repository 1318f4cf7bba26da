//! The request path and the job's part of sharded budgets (the rules are
//! `crate::escrow`): refill a dry shard from the pool, gather the shards'
//! headroom near the cap, deny on the totals, roll a sharded window over.
//! Each step is one transaction the rules make safe on any read; these
//! functions only choose the next step.

use chrono::{DateTime, Utc};

use crate::decision::Denial;
use crate::duration::ResetClock;
use crate::escrow;
use crate::model::{Chain, Entity, EntityRef, SlotId};
use crate::money::Money;
use crate::plan;
use crate::store::{BudgetStore, Isolated, PlanWrite, StoreError};

/// Isolated reads of all slots one step makes before the request is
/// answered `unavailable` ([`Next::Undecided`]): DynamoDB cancels one while
/// any of its items is in a transaction, which under load is brief but
/// frequent.
const ISOLATED_READS: usize = 3;

/// Every slot of `owner` as of one instant, read again after a short
/// jittered pause (1–2 ms, 2–4 ms) while a transaction holds one of them;
/// `None` when all [`ISOLATED_READS`] were busy (nothing may be decided on
/// a read that is not isolated).
async fn read_all<S: BudgetStore>(
    store: &S,
    refs: &[EntityRef],
) -> Result<Option<Vec<Entity>>, StoreError> {
    for attempt in 0..ISOLATED_READS {
        if attempt > 0 {
            let base = 1u64 << (attempt - 1);
            let jitter = rand::random::<u64>() % (base * 1000);
            tokio::time::sleep(std::time::Duration::from_micros(base * 1000 + jitter)).await;
        }
        if let Isolated::Read(slots) = store.load_isolated(refs).await? {
            return Ok(Some(slots));
        }
    }
    Ok(None)
}

/// The most sharded entities an instance keeps a read of (cleared when
/// full, like the chain cache): each holds its slots as read, up to 65
/// items.
const CEILINGS: usize = 256;

/// What an instance knows of one sharded entity past its pool.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// Its last read of every slot, when it still stands.
    last: Option<LastRead>,
    /// The reads of every slot it may still make ([`escrow::ScanBucket`]).
    scans: escrow::ScanBucket,
}

#[derive(Debug, Clone)]
struct LastRead {
    ceiling: escrow::Ceiling,
    /// The slots as read, with this instance's own transfers since
    /// applied (a hint: a transfer's conditions are what keep it exact).
    slots: Vec<Entity>,
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// Per instance: the last [`escrow::Ceiling`] read of each sharded entity,
/// so that once its totals are below what requests ask, they are denied on
/// one read of their own shard instead of a refill attempt and an isolated
/// read of every slot each — which, at thousands of requests a second
/// after the cap, DynamoDB would mostly cancel; the slots that read found,
/// which requests borrow from instead of reading every slot again once
/// the instance has read them as often as [`escrow::MICROS_PER_SCAN`]
/// allows; and that allowance.
#[derive(Debug, Default)]
pub(super) struct Ceilings(std::sync::Mutex<std::collections::HashMap<EntityRef, Seen>>);

impl Ceilings {
    fn with<T>(&self, entity: &EntityRef, f: impl FnOnce(&mut Seen) -> T) -> Option<T> {
        let mut m = self.0.lock().ok()?;
        if m.len() >= CEILINGS && !m.contains_key(entity) {
            m.clear();
        }
        Some(f(m.entry(entity.clone()).or_default()))
    }

    /// A read of every slot of `entity` is being made at `at`, costing
    /// `units` of the instance's allowance (1 plain, 2 isolated).
    fn scanning(&self, entity: &EntityRef, at: DateTime<Utc>, units: i64) {
        self.with(entity, |s| s.scans.take(micros(at), units));
    }

    /// What that read found: its bound and the slots.
    fn note(&self, entity: &EntityRef, ceiling: escrow::Ceiling, slots: &[Entity]) {
        let slots = slots.to_vec();
        self.with(entity, |s| s.last = Some(LastRead { ceiling, slots }));
    }

    fn get(&self, entity: &EntityRef) -> Option<escrow::Ceiling> {
        let m = self.0.lock().ok()?;
        Some(m.get(entity)?.last.as_ref()?.ceiling.clone())
    }

    /// The slots of `entity` as this instance last read them, only when it
    /// may not read them again at `now` (its allowance is spent): the read
    /// to borrow from instead. `None`: read them.
    fn instead_of_reading(&self, entity: &EntityRef, now: DateTime<Utc>) -> Option<Vec<Entity>> {
        let m = self.0.lock().ok()?;
        let seen = m.get(entity)?;
        match seen.scans.may_read(micros(now)) {
            true => None,
            false => Some(seen.last.as_ref()?.slots.clone()),
        }
    }

    /// The parts of a transfer this instance sent that stand, applied to
    /// its last read.
    fn sent<'w>(&self, entity: &EntityRef, writes: impl Iterator<Item = &'w plan::EntityWrite>) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(last) = m.get_mut(entity).and_then(|s| s.last.as_mut()) {
                escrow::sent_to(&mut last.slots, writes);
            }
        }
    }

    /// The pool has headroom again: the last read no longer stands (the
    /// allowance does).
    fn forget(&self, entity: &EntityRef) {
        if let Ok(mut m) = self.0.lock() {
            if let Some(s) = m.get_mut(entity) {
                s.last = None;
            }
        }
    }
}

/// A denial without a write: a sharded entity of `chain` whose last full
/// read bounds its headroom below `estimate` is denied when one read (the
/// key's item and the request's own shard, one request) shows the key's
/// configuration unchanged and the shard still in the version and periods
/// of that read — the bound still holds (see [`escrow::Ceiling`]). A
/// request that carries an id (`retry`: the gateway's, which a repeat of
/// it carries again) is denied so only if no reservation of that id exists
/// — read at the same time, so still one round trip: a repeat of an
/// admitted request gets its first answer from the write path. `None` (and
/// the ceiling forgotten when the read showed it moved): decide as usual,
/// by the write.
pub(super) async fn early_denial<S: BudgetStore>(
    store: &S,
    ceilings: &Ceilings,
    chain: &Chain,
    estimate: Money,
    (id, retry): (&str, bool),
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Result<Option<Denial>, StoreError> {
    let pick = escrow::pick_of(id);
    for e in chain.entities().filter(|e| escrow::is_sharded(e)) {
        let Some(c) = ceilings.get(&e.entity) else {
            continue;
        };
        let (Some(w), Some(slot)) = (c.denies(e, estimate, now), escrow::shard_of(e, pick)) else {
            continue;
        };
        let slot = e.entity.at(slot);
        let key = &chain.key;
        let refs = [key.entity.clone(), slot.clone()];
        let (read, own) = tokio::join!(store.load_many(&refs), async {
            match retry {
                true => store.reservation(id).await,
                false => Ok(None),
            }
        });
        if own?.is_some() {
            return Ok(None);
        }
        let read = read?;
        let key_same = read
            .iter()
            .find(|x| x.entity == key.entity)
            .is_some_and(|k| k.version == key.version && k.incarnation == key.incarnation);
        let holds = read
            .iter()
            .find(|x| x.entity == slot)
            .is_some_and(|s| c.holds_on(s));
        if key_same && holds {
            return Ok(Some(Denial::of(&e.entity, w, estimate, now, clock)));
        }
        if !holds {
            ceilings.forget(&e.entity);
        }
        return Ok(None);
    }
    Ok(None)
}

/// After a settle on shard `slot`: top it up from the pool when it is low
/// ([`escrow::top_up`]), so the requests on it do not find it dry. One
/// read of the shard (spread over the shards, like the settles); the pool
/// is read and written only when the shard is low — about once a slice.
/// A shard an overrun left owing is covered at once: from the pool, or,
/// when the pool holds less, from every slot ([`escrow::cover`]).
/// `true` when it was topped up.
pub(super) async fn top_up<S: BudgetStore>(
    store: &S,
    slot: &EntityRef,
) -> Result<bool, StoreError> {
    let Some(shard) = store.load(slot).await? else {
        return Ok(false);
    };
    if !escrow::is_low(&shard) {
        return Ok(false);
    }
    let Some(pool) = store.load(&slot.owner().at(SlotId::Pool)).await? else {
        return Ok(false);
    };
    if let Some(writes) = escrow::top_up(&pool, &shard) {
        return Ok(store.write_all(&writes).await? == PlanWrite::Done);
    }
    if escrow::owed(&shard).is_zero() {
        return Ok(false);
    }
    // Owed more than the pool holds (near the cap): the other shards pay
    // the rest, read plainly (each giver's part is a condition).
    let Some(owner) = store.load(&slot.owner()).await? else {
        return Ok(false);
    };
    let slots = store.load_many(&escrow::slot_refs(&owner)).await?;
    let Some(writes) = escrow::cover(&slots, slot) else {
        return Ok(false);
    };
    Ok(store.write_all(&writes).await? == PlanWrite::Done)
}

/// What a request whose shard did not cover it does next.
#[derive(Debug)]
pub(super) enum Next {
    /// Write the reservation again (the shard was refilled, or headroom
    /// was gathered into the pool for the next refill).
    Retry,
    /// Back off, then write again.
    Busy,
    /// The configuration moved, or the slots rolled over: read the chain
    /// afresh.
    Reread,
    /// The entity's headroom over all its slots is below the estimate.
    Deny(Box<Denial>),
    /// Near the cap with reservations in flight (what is left may come
    /// back), and no isolated read of the slots could be had, or this
    /// instance's read of every slot moments ago has nothing left to lend
    /// (or this request already borrowed from it): answer `unavailable`
    /// now. Trying again at once is what keeps the slots busy for
    /// everyone's reads.
    Undecided,
}

/// What one request has done on one sharded entity's slots so far (a
/// request keeps one per sharded owner).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Ask {
    /// Escrow steps that asked for the write again.
    pub steps: usize,
    /// It read every slot itself: it goes on from its own reads.
    pub read_slots: bool,
    /// It borrowed from the instance's last read of every slot: short again
    /// after that, it is answered at once.
    pub borrowed_from_last: bool,
}

/// One step for a request of `estimate` whose write found `slot` of
/// sharded `owner` (as known) short (`ask`: its earlier steps on
/// `owner`), in this order:
/// 0. when this instance last saw the pool short and may not read every
///    slot again yet ([`escrow::MICROS_PER_SCAN`]), and the request read
///    none itself: borrow once from the instance's last read; when that
///    read has nothing to lend, or the request already borrowed from it,
///    [`Next::Undecided`] — no read;
/// 1. read the pool and the shard (every slot instead, when this instance
///    last saw the pool short) and refill the shard from the pool when the
///    pool covers it (one two-item transaction; a shard takes a slice of
///    the limit, so this happens about 16 times per shard over the
///    budget's life);
/// 2. near the cap, a plain read of every slot: deny when its bound
///    ([`escrow::Ceiling`]: `max − Σ spent`) is below the estimate, else
///    borrow what the shard lacks ([`escrow::borrow`]);
/// 3. else one isolated read of the entity and every slot: deny when the
///    totals are below the estimate, re-place everything when a slot owes
///    ([`escrow::regather`]), or borrow; [`Next::Undecided`] when that read
///    stays cancelled.
pub(super) async fn step<S: BudgetStore>(
    store: &S,
    ceilings: &Ceilings,
    owner: &Entity,
    slot: &EntityRef,
    (estimate, ask): (Money, &mut Ask),
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Result<Next, StoreError> {
    // What the shard must hold: a zero estimate still needs room.
    let need = escrow::need(estimate);
    let pool_ref = owner.entity.at(SlotId::Pool);
    // An instance that last saw the pool short, in this configuration,
    // reads every slot at once (a refill is still tried from that read):
    // past the cap every request would otherwise read the one pool item,
    // past its 3,000 read units a second.
    let scan_first = ceilings.get(&owner.entity).is_some_and(|c| {
        c.version == owner.version
            && c.pool_avail < need
            && c.windows
                .iter()
                .all(|w| w.totals.reset_at.is_none_or(|at| at > now))
    });
    let last = match scan_first && !ask.read_slots {
        true => ceilings.instead_of_reading(&owner.entity, now),
        false => None,
    };
    if let Some(last) = last {
        // This instance read every slot moments ago, as often as it may,
        // and the pool was short: borrow from that read, once a request,
        // or answer now.
        let borrow = match ask.borrowed_from_last {
            false => escrow::borrow_from_read(&last, slot, need, rand::random()),
            true => None,
        };
        ask.borrowed_from_last = true;
        let Some(mut writes) = borrow else {
            return Ok(Next::Undecided);
        };
        // That read may be from before an admin change this request's
        // chain does not know of yet (its write fails on the version as on
        // headroom): nothing moves into a shard of another configuration.
        for w in &mut writes {
            w.guards.push(plan::Guard::Version(owner.version));
        }
        return lend(store, ceilings, &owner.entity, slot, &writes).await;
    }
    let refs = match scan_first {
        true => escrow::slot_refs(owner),
        false => vec![pool_ref.clone(), slot.clone()],
    };
    if scan_first {
        ceilings.scanning(&owner.entity, now, 1);
        ask.read_slots = true;
    }
    let read = store.load_many(&refs).await?;
    let (Some(pool), Some(shard)) = (
        read.iter().find(|s| s.entity == pool_ref),
        read.iter().find(|s| &s.entity == slot),
    ) else {
        return Ok(Next::Reread);
    };
    if shard.version != owner.version || shard.incarnation != owner.incarnation {
        return Ok(Next::Reread);
    }
    if escrow::behind(shard, now) || escrow::behind(pool, now) {
        // A boundary passed and the slots are still in the old period.
        return Ok(match roll(store, &owner.entity, now, clock).await? {
            Rolled::Busy => Next::Busy,
            Rolled::Done | Rolled::Already => Next::Reread,
        });
    }
    if !escrow::same_periods(owner, shard) || !escrow::same_periods(owner, pool) {
        // The slots are current and what we know of the owner is not (a
        // boundary we hold from before a roll-over): read it again. A
        // boundary we do not know (an owner from the key's snapshot) is
        // no difference: the slots' own guard their period.
        return Ok(Next::Reread);
    }
    if escrow::headroom(shard) >= need {
        return Ok(Next::Retry);
    }
    let limit = owner
        .windows
        .iter()
        .map(|w| w.max)
        .min()
        .unwrap_or(Money::ZERO);
    // What the shard lacks (more than the estimate if it owes an overrun).
    let lacks = need.saturating_sub(escrow::headroom(shard));
    if let Some(amount) = escrow::refill_amount(escrow::headroom(pool), lacks, limit, owner.shards)
    {
        if scan_first {
            // The pool has headroom again (a re-placement or an idle
            // shard's return put it there): read the pool alone again.
            ceilings.forget(&owner.entity);
        }
        if let Some(writes) = escrow::refill(pool, slot, amount) {
            return next_after(store, &writes).await;
        }
    }
    // Near the cap. First a plain read of every slot (one request, never
    // cancelled by transactions in flight): its bound denies a request
    // above what the entity can ever have again in this period, and its
    // headroom can be borrowed (each giver's part is a condition of the
    // transfer, so any read will do).
    let slots = match scan_first {
        true => read,
        false => {
            ceilings.scanning(&owner.entity, now, 1);
            ask.read_slots = true;
            store.load_many(&escrow::slot_refs(owner)).await?
        }
    };
    if let Some(c) = escrow::ceiling(&escrow::config_of(owner), &slots) {
        let denies = c.denies(owner, estimate, now).cloned();
        ceilings.note(&owner.entity, c, &slots);
        if let Some(w) = denies {
            return Ok(Next::Deny(Box::new(Denial::of(
                &owner.entity,
                &w,
                estimate,
                now,
                clock,
            ))));
        }
        // (In debt no slot has headroom to give: the shards are at or
        // below zero and what is parked is never lent.)
        if let Some(writes) = escrow::borrow(&slots, slot, need, rand::random()) {
            return lend(store, ceilings, &owner.entity, slot, &writes).await;
        }
    }
    // Then the totals decide, from one isolated read of all slots and the
    // entity's own item (its counters as stored, not the hints a cached
    // chain carries: they are part of the totals a denial names).
    let refs: Vec<EntityRef> = std::iter::once(owner.entity.clone())
        .chain(escrow::slot_refs(owner))
        .collect();
    ceilings.scanning(&owner.entity, now, 2);
    let Some(mut read) = read_all(store, &refs).await? else {
        return Ok(Next::Undecided);
    };
    let Some(at) = read.iter().position(|e| e.entity == owner.entity) else {
        return Ok(Next::Reread);
    };
    let item = read.swap_remove(at);
    let slots = read;
    if item.version != owner.version || item.incarnation != owner.incarnation {
        return Ok(Next::Reread);
    }
    if let Some(c) = escrow::ceiling(&item, &slots) {
        ceilings.note(&owner.entity, c, &slots);
    }
    let totals = escrow::totals(&item, &slots);
    if let Some(w) = totals.windows.iter().find(|w| w.avail < need) {
        // Named as a plain window's denial is (`decision::admit`).
        let denial = Denial::of(&owner.entity, w, estimate, now, clock);
        return Ok(Next::Deny(Box::new(denial)));
    }
    // A slot owes (a debt placed while it was below zero, or an overrun):
    // the totals now cover the request, so place everything again — into
    // the pool, once nothing is owed — before anything moves.
    let again = escrow::regather(&item, &slots);
    if !again.is_empty() {
        return next_after(store, &again).await;
    }
    // Borrow what the shard lacks (the fewest slots that cover it:
    // usually one, a two-item transaction).
    let Some(writes) = escrow::borrow(&slots, slot, need, rand::random()) else {
        return Ok(Next::Retry);
    };
    lend(store, ceilings, &owner.entity, slot, &writes).await
}

/// A borrow into `slot`, written, and applied to this instance's last read
/// of `owner`'s slots: the givers hold less whether it was written or not
/// (others took it first); `slot` holds more only if it was.
async fn lend<S: BudgetStore>(
    store: &S,
    ceilings: &Ceilings,
    owner: &EntityRef,
    slot: &EntityRef,
    writes: &[plan::EntityWrite],
) -> Result<Next, StoreError> {
    let written = store.write_all(writes).await?;
    let taken = writes
        .iter()
        .filter(|w| written == PlanWrite::Done || &w.entity != slot);
    ceilings.sent(owner, taken);
    Ok(next_of(written))
}

/// A step's transfer or re-placement written: write the reservation again
/// (whether it moved headroom or found the slots moved first), or back off
/// when contended.
async fn next_after<S: BudgetStore>(
    store: &S,
    writes: &[plan::EntityWrite],
) -> Result<Next, StoreError> {
    Ok(next_of(store.write_all(writes).await?))
}

fn next_of(written: PlanWrite) -> Next {
    match written {
        PlanWrite::Done | PlanWrite::Refused => Next::Retry,
        PlanWrite::Busy => Next::Busy,
    }
}

/// The sharded entity of `chain` with a window past its boundary, if any:
/// its slots roll over (one transaction) before a request may use them.
pub(super) fn due(chain: &Chain, now: DateTime<Utc>) -> Option<&Entity> {
    chain
        .entities()
        .find(|e| escrow::is_sharded(e) && e.windows.iter().any(|w| w.is_due(now)))
}

/// What [`roll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rolled {
    /// This call rolled the entity and its slots over.
    Done,
    /// Nothing was due any more: someone else rolled (or it is gone).
    Already,
    /// Another writer held or moved an item meanwhile: back off, try again.
    Busy,
}

/// Rolls over `entity`'s due windows on its item and all its slots, in one
/// transaction. At a boundary every request of every instance finds the
/// slots due at once: each first reads only the entity and its pool (one
/// request), and all but the one that wins see them rolled there and go on
/// — the isolated read of every slot and the transaction over all of them
/// are only the roller's.
pub async fn roll<S: BudgetStore>(
    store: &S,
    entity: &EntityRef,
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Result<Rolled, StoreError> {
    let first = store
        .load_many(&[entity.clone(), entity.at(SlotId::Pool)])
        .await?;
    let Some(e) = first.iter().find(|x| &x.entity == entity) else {
        return Ok(Rolled::Already);
    };
    let pool = first.iter().find(|x| x.entity == entity.at(SlotId::Pool));
    let item_due = e.windows.iter().any(|w| w.is_due(now));
    if !item_due && pool.is_none_or(|p| !escrow::behind(p, now)) {
        return Ok(Rolled::Already);
    }
    let Some(slots) = read_all(store, &escrow::slot_refs(e)).await? else {
        return Ok(Rolled::Busy);
    };
    let mut writes = vec![plan::roll_over(e, now, clock)];
    writes.extend(escrow::roll(e, &slots, |w| w.reset_at_as_of(now, clock)));
    Ok(match store.write_all(&writes).await? {
        PlanWrite::Done => Rolled::Done,
        PlanWrite::Busy | PlanWrite::Refused => Rolled::Busy,
    })
}

#[cfg(test)]
mod tests {
    //! The request path of a sharded team over the memory store (which
    //! executes the same plans as DynamoDB).

    use chrono::TimeZone;

    use super::*;
    use crate::config::Settings;
    use crate::keys::{generate_key, hash_key};
    use crate::model::{Span, Window};
    use crate::service::{AuthorizeOutcome, Authorizer};
    use crate::store::memory::MemoryStore;
    use crate::store::{AdminStore, AdminWrite};

    pub(crate) fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap()
    }

    /// `n` seconds after [`now`]: requests far enough apart that each may
    /// read the slots afresh ([`escrow::MICROS_PER_SCAN`]).
    fn later(n: i64) -> DateTime<Utc> {
        now() + chrono::Duration::seconds(n)
    }

    pub(crate) fn settings() -> Settings {
        // No floor: a zero estimate stays zero.
        Settings::from_lookup(|k| match k {
            "TABLE_NAME" => Some("t".to_string()),
            "MIN_RESERVATION_USD" => Some("0".to_string()),
            _ => None,
        })
        .unwrap()
    }

    /// A team of `shards` shards with a 1d window of `max` USD, and a key
    /// of it; returns the key.
    pub(crate) async fn hot_team(store: &MemoryStore, shards: u32, max: i64) -> String {
        let clock = settings().clock;
        let mut team = Entity::new(EntityRef::team("t"), now());
        team.shards = shards;
        team.shard_items = shards;
        team.windows.push(Window::open(
            Span::parse_id("1d").unwrap(),
            Money::usd(max),
            false,
            now(),
            &clock,
        ));
        assert_eq!(store.create(&team).await.unwrap(), AdminWrite::Done);
        let key = generate_key();
        let mut k = Entity::new(EntityRef::key(hash_key(&key)), now());
        k.team_id = Some("t".into());
        assert_eq!(store.create(&k).await.unwrap(), AdminWrite::Done);
        key
    }

    fn admitted(outcome: &AuthorizeOutcome) -> bool {
        matches!(outcome, AuthorizeOutcome::Allowed { .. })
    }

    #[tokio::test]
    async fn a_busy_isolated_read_is_read_again_and_the_denial_comes_from_the_totals() {
        let store = MemoryStore::new();
        let key = hot_team(&store, 4, 1).await;
        let a = Authorizer::new(store.clone(), settings());
        assert!(admitted(
            &a.authorize(&key, Money::usd(1), None, now()).await
        ));
        // A transaction holds a slot at the first two isolated reads.
        store.inject_busy_reads(2);
        let denied = a.authorize(&key, Money::usd(1), None, now()).await;
        match denied {
            AuthorizeOutcome::Denied(d) => {
                assert_eq!(d.entity, EntityRef::team("t"));
                assert_eq!(d.max, Money::usd(1));
            }
            other => panic!("not denied on the totals: {other:?}"),
        }
    }

    #[tokio::test]
    async fn isolated_reads_that_stay_busy_fail_closed_and_never_deny() {
        let store = MemoryStore::new();
        let key = hot_team(&store, 4, 1).await;
        let a = Authorizer::new(store.clone(), settings());
        assert!(admitted(
            &a.authorize(&key, Money::usd(1), None, now()).await
        ));
        store.inject_busy_reads(1_000);
        let before = store.requests();
        let outcome = a.authorize(&key, Money::usd(1), None, now()).await;
        let AuthorizeOutcome::Unavailable(why) = &outcome else {
            panic!("{outcome:?}");
        };
        assert!(why.contains("held by requests in flight"), "{why}");
        // The write, the pool and shard, every slot, three isolated reads:
        // answered then, not tried again.
        assert_eq!(store.requests() - before, 6);
    }

    #[tokio::test]
    async fn a_busy_isolated_read_still_borrows_what_another_shard_holds() {
        let store = MemoryStore::new();
        let key = hot_team(&store, 2, 1).await;
        // The whole limit on shard 0, none in the pool.
        let pool = store
            .entity(&EntityRef::team("t").at(SlotId::Pool))
            .unwrap();
        let to = EntityRef::team("t").at(SlotId::Shard(0));
        let moved = escrow::transfer(&pool, &to, Money::usd(1)).unwrap();
        assert_eq!(store.write_all(&moved).await.unwrap(), PlanWrite::Done);
        let a = Authorizer::new(store.clone(), settings());
        store.inject_busy_reads(2);
        for _ in 0..4 {
            let outcome = a
                .authorize(&key, Money::from_nanos(250_000_000), None, now())
                .await;
            assert!(admitted(&outcome), "{outcome:?}");
        }
    }

    #[tokio::test]
    async fn a_zero_estimate_is_denied_on_an_exhausted_sharded_team_as_on_a_plain_one() {
        let store = MemoryStore::new();
        let key = hot_team(&store, 4, 1).await;
        let a = Authorizer::new(store.clone(), settings());
        // Room left: a zero estimate is admitted on any shard (one with
        // nothing yet refills first).
        let outcome = a.authorize(&key, Money::ZERO, None, now()).await;
        assert!(admitted(&outcome), "{outcome:?}");
        assert!(admitted(
            &a.authorize(&key, Money::usd(1), None, now()).await
        ));
        // Exhausted: every shard holds 0, and 0 >= 0 must not admit.
        for i in 1..=8 {
            let outcome = a.authorize(&key, Money::ZERO, None, later(i)).await;
            assert!(
                matches!(outcome, AuthorizeOutcome::Denied(_)),
                "{outcome:?}"
            );
        }
    }

    /// What the second of two $1 requests on a team of $1 is answered,
    /// the team sharded over `shards` (0: a plain team).
    async fn second_dollar(shards: u32) -> AuthorizeOutcome {
        let store = MemoryStore::new();
        let key = hot_team(&store, shards, 1).await;
        let a = Authorizer::new(store.clone(), settings());
        assert!(admitted(
            &a.authorize(&key, Money::usd(1), None, now()).await
        ));
        // A cold instance too: it knows the team from nothing but the key.
        let cold = Authorizer::new(store.clone(), settings());
        let other = cold.authorize(&key, Money::usd(1), None, now()).await;
        let warm = a.authorize(&key, Money::usd(1), None, now()).await;
        assert_eq!(other, warm);
        warm
    }

    #[tokio::test]
    async fn an_exhausted_sharded_team_is_denied_as_a_plain_one_is() {
        let plain = second_dollar(0).await;
        let AuthorizeOutcome::Denied(d) = &plain else {
            panic!("{plain:?}");
        };
        assert_eq!(d.reserved, Money::usd(1));
        for shards in [2, 8] {
            assert_eq!(second_dollar(shards).await, plain, "{shards} shards");
        }
    }

    #[tokio::test]
    async fn an_owner_from_a_snapshot_refills_without_taking_the_roll_path() {
        let store = MemoryStore::new();
        hot_team(&store, 4, 10).await;
        // As a key's snapshot knows the team: its configuration, no
        // boundaries.
        let mut owner = store.entity(&EntityRef::team("t")).unwrap();
        for w in &mut owner.windows {
            w.reset_at = None;
        }
        let slot = owner.entity.at(SlotId::Shard(1));
        let before = store.requests();
        let clock = settings().clock;
        let next = step(
            &store,
            &Ceilings::default(),
            &owner,
            &slot,
            (Money::usd(1), &mut Ask::default()),
            now(),
            &clock,
        )
        .await
        .unwrap();
        assert!(matches!(next, Next::Retry), "{next:?}");
        // The pool and the shard read, the refill written: nothing else.
        assert_eq!(store.requests() - before, 2);
        assert!(store.entity(&slot).unwrap().windows[0].avail >= Money::usd(1));
    }

    /// A team of two shards, its $1 all on shard 0, none in the pool: the
    /// team and shard 1, which must borrow.
    async fn all_on_shard_0(store: &MemoryStore) -> (Entity, EntityRef) {
        hot_team(store, 2, 1).await;
        let pool = store
            .entity(&EntityRef::team("t").at(SlotId::Pool))
            .unwrap();
        let giver = EntityRef::team("t").at(SlotId::Shard(0));
        let moved = escrow::transfer(&pool, &giver, Money::usd(1)).unwrap();
        assert_eq!(store.write_all(&moved).await.unwrap(), PlanWrite::Done);
        let owner = store.entity(&EntityRef::team("t")).unwrap();
        let slot = owner.entity.at(SlotId::Shard(1));
        (owner, slot)
    }

    /// [`all_on_shard_0`], and an instance that borrowed a quarter into
    /// shard 1 at `now()` and then spent its reads of every slot.
    async fn after_a_borrow(store: &MemoryStore, ceilings: &Ceilings) -> (Entity, EntityRef) {
        let (owner, slot) = all_on_shard_0(store).await;
        let next = quarter_at(store, ceilings, (&owner, &slot), &mut Ask::default(), 0).await;
        assert!(matches!(next, Next::Retry), "{next:?}");
        ceilings.scanning(&owner.entity, now(), escrow::SCAN_BURST);
        (owner, slot)
    }

    /// A step of a request of $0.25 on `slot` of `owner`, `ms` after `now()`.
    async fn quarter_at(
        store: &MemoryStore,
        ceilings: &Ceilings,
        (owner, slot): (&Entity, &EntityRef),
        ask: &mut Ask,
        ms: i64,
    ) -> Next {
        let at = now() + chrono::Duration::milliseconds(ms);
        let quarter = Money::from_nanos(250_000_000);
        let clock = settings().clock;
        step(store, ceilings, owner, slot, (quarter, ask), at, &clock)
            .await
            .unwrap()
    }

    fn slots_in(store: &MemoryStore, owner: &Entity) -> Vec<Entity> {
        escrow::slot_refs(owner)
            .iter()
            .map(|r| store.entity(r).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_borrow_from_a_read_the_giver_has_since_spent_moves_nothing() {
        let (store, ceilings) = (MemoryStore::new(), Ceilings::default());
        let (owner, slot) = after_a_borrow(&store, &ceilings).await;
        // Shard 0's $0.75 goes back to the pool behind the instance's back.
        let held = store.entity(&owner.entity.at(SlotId::Shard(0))).unwrap();
        let pool = owner.entity.at(SlotId::Pool);
        let back = escrow::transfer(&held, &pool, Money::from_nanos(750_000_000)).unwrap();
        assert_eq!(store.write_all(&back).await.unwrap(), PlanWrite::Done);
        let before = slots_in(&store, &owner);
        let mut ask = Ask::default();
        let next = quarter_at(&store, &ceilings, (&owner, &slot), &mut ask, 50).await;
        assert!(matches!(next, Next::Retry), "{next:?}");
        assert_eq!(slots_in(&store, &owner), before, "refused whole");
        // Its shard still short, the request is answered at once; the
        // instance's read does not show the quarter it asked for on shard 1.
        let next = quarter_at(&store, &ceilings, (&owner, &slot), &mut ask, 50).await;
        assert!(matches!(next, Next::Undecided), "{next:?}");
        let at = now() + chrono::Duration::milliseconds(50);
        let last = ceilings.instead_of_reading(&owner.entity, at).unwrap();
        let own = last.iter().find(|s| s.entity == slot).unwrap();
        assert_eq!(own.windows[0].avail, Money::from_nanos(250_000_000));
    }

    #[tokio::test]
    async fn a_borrow_from_a_read_older_than_an_admin_change_moves_nothing() {
        let (store, ceilings) = (MemoryStore::new(), Ceilings::default());
        let (owner, slot) = after_a_borrow(&store, &ceilings).await;
        // The limit is raised: every slot takes the new version.
        let mut raised = owner.clone();
        raised.windows[0].max = Money::usd(2);
        let done = store.update(&owner, &raised).await.unwrap();
        assert_eq!(done, AdminWrite::Done);
        let before = slots_in(&store, &owner);
        // A request whose chain is from before it (as the read is).
        let next = quarter_at(&store, &ceilings, (&owner, &slot), &mut Ask::default(), 50).await;
        assert!(matches!(next, Next::Retry), "{next:?}");
        assert_eq!(slots_in(&store, &owner), before, "nothing moved");
    }

    #[tokio::test]
    async fn past_the_pool_an_instance_borrows_from_its_recent_read_once_a_request() {
        let store = MemoryStore::new();
        let (owner, slot) = all_on_shard_0(&store).await;
        let giver = owner.entity.at(SlotId::Shard(0));
        let (clock, ceilings) = (settings().clock, Ceilings::default());
        let quarter = Money::from_nanos(250_000_000);
        let avail = |r: &EntityRef| store.entity(r).unwrap().windows[0].avail;
        let at = |ms: i64| now() + chrono::Duration::milliseconds(ms);
        let step_at = |estimate: Money, ask: Ask, ms: i64| {
            let (store, ceilings, owner, slot, clock) = (&store, &ceilings, &owner, &slot, &clock);
            let mut ask = ask;
            async move {
                let next = step(
                    store,
                    ceilings,
                    owner,
                    slot,
                    (estimate, &mut ask),
                    at(ms),
                    clock,
                )
                .await
                .unwrap();
                (next, ask)
            }
        };
        let fresh = Ask::default();
        // A cold instance reads pool and shard, then (the pool short) every
        // slot, and borrows a quarter from shard 0.
        let (next, _) = step_at(quarter, fresh, 0).await;
        assert!(matches!(next, Next::Retry), "{next:?}");
        assert_eq!(avail(&slot), quarter);
        // More reads of every slot at that instant spend the allowance.
        ceilings.scanning(&owner.entity, at(0), escrow::SCAN_BURST - 1);
        // Another request 50 ms later borrows from the last read: the
        // transfer is its one request, no read.
        let before = store.requests();
        let (next, ask) = step_at(quarter, fresh, 50).await;
        assert!(matches!(next, Next::Retry), "{next:?}");
        assert_eq!(store.requests() - before, 1);
        let half = Money::from_nanos(500_000_000);
        assert_eq!((avail(&giver), avail(&slot)), (half, half));
        // Short again (others took it), the same request is answered
        // unavailable at once; so is one the read cannot cover, though the
        // slots together could: never denied on that read.
        let before = store.requests();
        let (next, _) = step_at(quarter, Ask { steps: 1, ..ask }, 60).await;
        assert!(matches!(next, Next::Undecided), "{next:?}");
        let more = Money::from_nanos(600_000_000);
        let (next, _) = step_at(more, fresh, 70).await;
        assert!(matches!(next, Next::Undecided), "{next:?}");
        assert_eq!(store.requests() - before, 0);
        // 200 ms on, the instance may read them again: that request does,
        // and gathers.
        let (next, _) = step_at(more, fresh, 200).await;
        assert!(matches!(next, Next::Retry), "{next:?}");
        assert!(store.requests() - before > 1);
        assert!(avail(&slot) >= more);
        assert_eq!(avail(&giver).saturating_add(avail(&slot)), Money::usd(1));
        // A request that read every slot itself goes on from its own
        // reads, whatever the allowance says.
        ceilings.scanning(&owner.entity, at(200), escrow::SCAN_BURST);
        let before = store.requests();
        let own = Ask {
            read_slots: true,
            ..fresh
        };
        let (next, _) = step_at(quarter, own, 210).await;
        assert!(matches!(next, Next::Retry), "{next:?}");
        assert!(store.requests() > before);
    }

    #[tokio::test]
    async fn at_a_boundary_one_roller_rolls_and_the_others_see_it_for_one_read() {
        let store = MemoryStore::new();
        let key = hot_team(&store, 4, 10).await;
        let a = Authorizer::new(store.clone(), settings());
        assert!(admitted(
            &a.authorize(&key, Money::usd(3), None, now()).await
        ));
        let clock = settings().clock;
        let tomorrow = now() + chrono::Duration::days(1);
        let team = EntityRef::team("t");
        assert_eq!(
            roll(&store, &team, tomorrow, &clock).await.unwrap(),
            Rolled::Done
        );
        let before = store.requests();
        for _ in 0..3 {
            assert_eq!(
                roll(&store, &team, tomorrow, &clock).await.unwrap(),
                Rolled::Already
            );
        }
        assert_eq!(store.requests() - before, 3, "one read each");
        // The warm instance's chain still has yesterday's boundary: it
        // finds the roll-over done and is admitted on the new period.
        let outcome = a.authorize(&key, Money::usd(7), None, tomorrow).await;
        assert!(admitted(&outcome), "10 − 3 in flight: {outcome:?}");
        let denied = a.authorize(&key, Money::usd(1), None, tomorrow).await;
        assert!(matches!(denied, AuthorizeOutcome::Denied(_)), "{denied:?}");
    }

    #[tokio::test]
    async fn once_the_totals_are_below_the_ask_a_denial_is_one_read_and_no_write() {
        let store = MemoryStore::new();
        let key = hot_team(&store, 4, 1).await;
        let a = Authorizer::new(store.clone(), settings());
        let AuthorizeOutcome::Allowed { reservation, .. } =
            a.authorize(&key, Money::usd(1), None, now()).await
        else {
            panic!("the first dollar");
        };
        // In flight, the dollar may come back: denied on the totals, but
        // not early (what is reserved is part of the bound).
        let denied = a.authorize(&key, Money::usd(1), None, later(1)).await;
        assert!(matches!(denied, AuthorizeOutcome::Denied(_)), "{denied:?}");
        let before = store.requests();
        let again = a.authorize(&key, Money::usd(1), None, later(2)).await;
        let AuthorizeOutcome::Denied(d) = &again else {
            panic!("{again:?}");
        };
        assert_eq!(
            (d.entity.clone(), d.max),
            (EntityRef::team("t"), Money::usd(1))
        );
        assert!(
            store.requests() - before > 1,
            "the full path while in flight"
        );
        // Spent: the next full read bounds it at $0, and from then on a
        // denial is one read, the same denial as the full path's.
        crate::service::settle(&store, &reservation.id, Money::usd(1), now(), &settings())
            .await
            .unwrap();
        let full = a.authorize(&key, Money::usd(1), None, later(3)).await;
        assert!(matches!(full, AuthorizeOutcome::Denied(_)), "{full:?}");
        let before = store.requests();
        for _ in 0..5 {
            let early = a
                .authorize(&key, Money::from_nanos(1), None, later(4))
                .await;
            let AuthorizeOutcome::Denied(d) = &early else {
                panic!("{early:?}");
            };
            assert_eq!(
                (d.entity.clone(), d.spend),
                (EntityRef::team("t"), Money::usd(1))
            );
        }
        assert_eq!(store.requests() - before, 5, "one read each");
        // With the gateway's request id, the reservation of that id is
        // read beside them (a repeat of an admitted request is answered by
        // the write path): two reads, one round trip.
        let before = store.requests();
        let early = a
            .authorize(&key, Money::from_nanos(1), Some("gw-1"), later(5))
            .await;
        assert!(matches!(early, AuthorizeOutcome::Denied(_)), "{early:?}");
        assert_eq!(store.requests() - before, 2);
        // A raise moves every slot's version: the bound no longer holds,
        // and the request is admitted on the new headroom.
        let team = store.entity(&EntityRef::team("t")).unwrap();
        let mut raised = team.clone();
        raised.windows[0].max = Money::usd(2);
        assert_eq!(
            store.update(&team, &raised).await.unwrap(),
            AdminWrite::Done
        );
        let outcome = a.authorize(&key, Money::usd(1), None, later(6)).await;
        assert!(admitted(&outcome), "after the raise: {outcome:?}");
    }

    #[tokio::test]
    async fn what_comes_back_to_windows_out_of_step_is_placed_again_not_stranded() {
        let store = MemoryStore::new();
        let key = hot_team(&store, 2, 10).await;
        let a = Authorizer::new(store.clone(), settings());
        let AuthorizeOutcome::Allowed { reservation, .. } =
            a.authorize(&key, Money::usd(4), None, now()).await
        else {
            panic!("the first $4");
        };
        // A 30d window joins while the $4 is in flight: it holds only the
        // 1d window, so its release gives back to that one alone.
        let team = store.entity(&EntityRef::team("t")).unwrap();
        let mut wider = team.clone();
        wider.windows.push(Window::open(
            Span::parse_id("30d").unwrap(),
            Money::usd(10),
            false,
            now(),
            &settings().clock,
        ));
        assert_eq!(store.update(&team, &wider).await.unwrap(), AdminWrite::Done);
        crate::service::settle(&store, &reservation.id, Money::ZERO, now(), &settings())
            .await
            .unwrap();
        // $10 left in both windows: $8 is admitted, then $2, then nothing.
        let cold = Authorizer::new(store.clone(), settings());
        // Each a second apart, so none is answered from the last one's read.
        for (i, x) in [8, 2].into_iter().enumerate() {
            let outcome = cold
                .authorize(&key, Money::usd(x), None, later(i as i64 + 1))
                .await;
            assert!(admitted(&outcome), "${x}: {outcome:?}");
        }
        let outcome = cold
            .authorize(&key, Money::from_nanos(1), None, later(3))
            .await;
        assert!(
            matches!(outcome, AuthorizeOutcome::Denied(_)),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_settle_tops_a_low_shard_up_before_it_runs_dry() {
        let store = MemoryStore::new();
        // $16 over 2 shards: a slice is $0.50.
        let key = hot_team(&store, 2, 16).await;
        let a = Authorizer::new(store.clone(), settings());
        let AuthorizeOutcome::Allowed { reservation, .. } = a
            .authorize(&key, Money::from_nanos(400_000_000), None, now())
            .await
        else {
            panic!("$0.40");
        };
        let slot = reservation
            .holds
            .iter()
            .find_map(|h| h.entity.slot.map(|_| h.entity.clone()))
            .expect("a shard held");
        let avail = |r: &EntityRef| store.entity(r).unwrap().windows[0].avail;
        // Refilled with a slice, $0.10 left: under half a slice.
        assert_eq!(avail(&slot), Money::from_nanos(100_000_000));
        crate::service::settle(
            &store,
            &reservation.id,
            Money::from_nanos(400_000_000),
            now(),
            &settings(),
        )
        .await
        .unwrap();
        assert_eq!(
            avail(&slot),
            Money::from_nanos(600_000_000),
            "topped up by the settle"
        );
        let pool = EntityRef::team("t").at(SlotId::Pool);
        assert_eq!(avail(&pool), Money::usd(15));
        // Not low any more: the next settle leaves it.
        let AuthorizeOutcome::Allowed { reservation, .. } = a
            .authorize(&key, Money::from_nanos(100_000_000), None, now())
            .await
        else {
            panic!("$0.10");
        };
        let before = avail(&pool);
        crate::service::settle(&store, &reservation.id, Money::ZERO, now(), &settings())
            .await
            .unwrap();
        assert_eq!(avail(&pool), before, "not low: the pool is not touched");
    }

    /// A cost settled after the boundary, before anything rolled the
    /// slots, counts in the new day — as on a plain team — whether the
    /// settle comes with its receipt (no read) or with the bare id.
    #[tokio::test]
    async fn a_cost_settled_after_the_boundary_counts_in_the_new_period() {
        for (shards, receipt) in [(0, true), (4, true), (4, false)] {
            let store = MemoryStore::new();
            let key = hot_team(&store, shards, 10).await;
            let a = Authorizer::new(store.clone(), settings());
            let AuthorizeOutcome::Allowed { reservation, .. } =
                a.authorize(&key, Money::usd(4), None, now()).await
            else {
                panic!("$4 of $10");
            };
            let id = if receipt {
                crate::receipt::external_id(&reservation)
            } else {
                reservation.id.clone()
            };
            let new_day = Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 5).unwrap();
            let settled = crate::service::settle(&store, &id, Money::usd(4), new_day, &settings())
                .await
                .unwrap();
            assert!(matches!(
                settled,
                crate::service::SettleOutcome::Settled {
                    duplicate: false,
                    ..
                }
            ));
            let mut admitted_after = 0;
            for i in 0..10 {
                let t = new_day + chrono::Duration::seconds(10 + i);
                if admitted(&a.authorize(&key, Money::usd(1), None, t).await) {
                    admitted_after += 1;
                }
            }
            assert_eq!(
                admitted_after, 6,
                "{shards} shards, receipt {receipt}: $4 settled in the new day of $10"
            );
        }
    }

    /// A cost over its reservation, beyond what its shard holds, is owed
    /// by the shard; the settle covers it from the pool at once, so the
    /// other shards and the pool do not admit what a single counter would
    /// deny (before, $9 more was admitted on a $10 team after a $1
    /// reservation cost $10).
    #[tokio::test]
    async fn an_overrun_past_its_shard_is_covered_from_the_pool_at_once() {
        for (shards, cost, more) in [(0, 10, 0), (4, 10, 0), (4, 6, 4), (8, 7, 3)] {
            let store = MemoryStore::new();
            let key = hot_team(&store, shards, 10).await;
            let a = Authorizer::new(store.clone(), settings());
            let AuthorizeOutcome::Allowed { reservation, .. } =
                a.authorize(&key, Money::usd(1), None, now()).await
            else {
                panic!("$1 of $10");
            };
            let id = crate::receipt::external_id(&reservation);
            crate::service::settle(&store, &id, Money::usd(cost), later(1), &settings())
                .await
                .unwrap();
            let mut admitted_after = 0;
            for i in 0..10 {
                if admitted(&a.authorize(&key, Money::usd(1), None, later(2 + i)).await) {
                    admitted_after += 1;
                }
            }
            assert_eq!(
                admitted_after, more,
                "{shards} shards: ${cost} spent of $10, then $1 requests"
            );
        }
    }

    /// An overrun the pool cannot cover is paid by the other shards: here
    /// an $8 request released leaves $8 on its shard, then a $1 request
    /// on another shard costs $10. A single counter is spent; so is the
    /// team: no fresh instance is admitted anything on any shard (before,
    /// the $8 shard went on lending).
    #[tokio::test]
    async fn an_overrun_the_pool_cannot_cover_is_paid_by_the_other_shards() {
        let store = MemoryStore::new();
        let key = hot_team(&store, 4, 10).await;
        let a = Authorizer::new(store.clone(), settings());
        let AuthorizeOutcome::Allowed {
            reservation: big, ..
        } = a.authorize(&key, Money::usd(8), None, now()).await
        else {
            panic!("$8 of $10");
        };
        let rich = big
            .holds
            .iter()
            .find_map(|h| h.entity.slot.map(|_| h.entity.clone()))
            .expect("a shard held");
        let settle = |id: String, cost: i64, at: DateTime<Utc>| {
            let store = store.clone();
            async move {
                crate::service::settle(&store, &id, Money::usd(cost), at, &settings())
                    .await
                    .unwrap()
            }
        };
        settle(crate::receipt::external_id(&big), 0, now()).await;
        // A $1 reservation on another shard than the one holding $8.
        let mut t = 0;
        let small = loop {
            t += 1;
            let AuthorizeOutcome::Allowed { reservation, .. } =
                a.authorize(&key, Money::usd(1), None, later(t)).await
            else {
                panic!("$1 of $10");
            };
            let id = crate::receipt::external_id(&reservation);
            if reservation.holds.iter().any(|h| h.entity == rich) {
                settle(id, 0, later(t)).await;
                continue;
            }
            break id;
        };
        settle(small, 10, later(100)).await;
        let owner = store.entity(&EntityRef::team("t")).unwrap();
        for s in slots_in(&store, &owner) {
            assert!(s.windows[0].avail >= Money::ZERO, "{s:?} still owes");
        }
        let mut admitted_after = 0;
        for i in 0..40 {
            let cold = Authorizer::new(store.clone(), settings());
            if admitted(
                &cold
                    .authorize(&key, Money::usd(1), None, later(200 + i))
                    .await,
            ) {
                admitted_after += 1;
            }
        }
        assert_eq!(admitted_after, 0, "$10 spent of $10");
    }

    /// A settle with a cost past the boundary, whose roll traffic keeps
    /// cancelling, writes nothing and says so (the caller retries): it
    /// backs off between attempts instead of sending a write its period
    /// guard must refuse.
    #[tokio::test]
    async fn a_settle_whose_roll_stays_busy_writes_nothing_and_is_unavailable() {
        let store = MemoryStore::new();
        let key = hot_team(&store, 4, 10).await;
        let a = Authorizer::new(store.clone(), settings());
        let AuthorizeOutcome::Allowed { reservation, .. } =
            a.authorize(&key, Money::usd(4), None, now()).await
        else {
            panic!("$4 of $10");
        };
        store.inject_busy_reads(1_000);
        let before = store.requests();
        let new_day = Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 5).unwrap();
        let answer =
            crate::service::settle(&store, &reservation.id, Money::usd(4), new_day, &settings())
                .await;
        println!(
            "a settle whose roll stays busy: {} store requests",
            store.requests() - before
        );
        assert!(
            matches!(answer, Err(StoreError::Unavailable(_))),
            "{answer:?}"
        );
        let stored = store.reservation(&reservation.id).await.unwrap().unwrap();
        assert_eq!(stored.state, crate::model::ReservationState::Held);
        let owner = store.entity(&EntityRef::team("t")).unwrap();
        let spent: Money = slots_in(&store, &owner)
            .iter()
            .map(|s| s.windows[0].spent)
            .fold(Money::ZERO, |a, b| a.saturating_add(b));
        assert_eq!(spent, Money::ZERO, "nothing written");
    }
}
