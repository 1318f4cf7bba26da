//! Escrow shards: one budget past one DynamoDB item (issue 11), as plans
//! (`plan.rs`'s guards and changes) like every other rule.
//!
//! A sharded user's or team's windows keep their configuration (limit,
//! boundary, generation) on the entity's item; their headroom is split
//! over **slots**, each an item of its own (its own partition key): a pool
//! and N shards. A slot is stored like an entity whose windows hold
//! `{avail, reserved, spent}`, and for each window
//!
//! ```text
//!   Σ over all slots (avail + reserved + spent) + the entity item's (reserved + spent) ≤ max_budget
//! ```
//!
//! with equality as long as nothing was reserved on the entity item itself
//! (only an entity that was sharded after it took reservations has those,
//! and what they do not spend comes back at the next roll-over). Every
//! write keeps it: a reservation moves `estimate` from `avail` to
//! `reserved` on one shard and is admitted only if that shard's `avail`
//! covers it — the write's own condition, so no concurrency overspends; a
//! settle moves the held amount out of `reserved`, the cost into `spent`
//! and the rest back to `avail`, on the shard that held; a transfer lowers
//! the giver's `avail` on condition that it covers the amount and raises
//! the taker's in the same transaction, so a crash never creates budget; a
//! roll-over gives the new period's headroom (`max − Σ reserved`) to the
//! pool and leaves every reservation in flight on its shard; an admin
//! change gathers every shard's headroom into the pool and adds the change
//! of limit to it. Only a settle that costs more than it held takes a
//! shard's `avail` below zero, as it takes a plain window past its limit.
//!
//! What to do when — which shard a request uses, how much a refill moves,
//! when to gather — is policy ([`shard_of`], [`refill_amount`]); the
//! guarantee does not depend on it. `examples/hot_sim.rs` drives these
//! rules under DynamoDB's per-item write capacity.

use chrono::{DateTime, Utc};

use crate::model::{Entity, EntityKind, EntityRef, SlotId, Span, Window};
use crate::money::Money;
use crate::plan::{Change, Counter, EntityWrite, Guard};

/// The most shards an entity may have: an admin change writes the entity,
/// its pool and every shard in one transaction (DynamoDB takes 100 items).
pub const MAX_SHARDS: u32 = 64;

/// Whether `e`'s windows are split over escrow slots.
pub fn is_sharded(e: &Entity) -> bool {
    e.shards >= 2 && e.entity.kind != EntityKind::Key && e.entity.slot.is_none()
}

/// The number a request's shard is chosen by (a hash of its reservation
/// id: a retry lands on the same shard).
pub fn pick_of(reservation_id: &str) -> u32 {
    reservation_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
}

/// The shard of `e` a request with `pick` uses (`None`: not sharded).
pub fn shard_of(e: &Entity, pick: u32) -> Option<SlotId> {
    is_sharded(e).then(|| SlotId::Shard(pick % e.shards))
}

/// Every slot item of `e`: the pool and each shard item that exists
/// (retired ones included: reservations may still settle there).
pub fn slot_refs(e: &Entity) -> Vec<EntityRef> {
    if !is_sharded(e) && e.shard_items == 0 {
        return Vec::new();
    }
    std::iter::once(e.entity.at(SlotId::Pool))
        .chain((0..e.shard_items.max(e.shards)).map(|k| e.entity.at(SlotId::Shard(k))))
        .collect()
}

/// A new slot of `e` (its configuration copied: version, incarnation,
/// each window's period and generation), holding `avail` of each window.
pub fn new_slot(e: &Entity, slot: SlotId, avail: impl Fn(&Window) -> Money) -> Entity {
    let mut s = Entity::new(e.entity.at(slot), e.created_at);
    s.version = e.version;
    s.incarnation = e.incarnation;
    s.windows = e.windows.iter().map(|w| part(w, avail(w))).collect();
    s
}

/// A slot's part of window `w` holding `avail`.
fn part(w: &Window, avail: Money) -> Window {
    Window {
        max: Money::ZERO,
        spent: Money::ZERO,
        reserved: Money::ZERO,
        avail,
        ..w.clone()
    }
}

/// The headroom a reservation of `estimate` needs on a slot, and over all
/// slots not to be denied: the estimate, and never less than one nano — a
/// zero estimate still needs room, as `decision::window_admits` asks of a
/// plain window (`used < max`).
pub fn need(estimate: Money) -> Money {
    estimate.max(Money::from_nanos(1))
}

/// The reservation of `estimate` on slot `slot` of `e` (as known: its
/// configuration, not its counters): every window's part there covers it,
/// in the period known. `None` when a window is past its boundary (the
/// slots roll over first: [`roll`]) or the estimate can never fit.
pub fn reserve(
    e: &Entity,
    slot: SlotId,
    estimate: Money,
    now: DateTime<Utc>,
) -> Option<EntityWrite> {
    let mut write = EntityWrite {
        entity: e.entity.at(slot),
        guards: vec![Guard::Version(e.version), Guard::Incarnation(e.incarnation)],
        changes: Vec::new(),
    };
    for w in &e.windows {
        if w.is_due(now) || estimate > w.max {
            return None;
        }
        let id = w.id();
        write
            .guards
            .push(Guard::AtLeast(id.clone(), Counter::Avail, need(estimate)));
        write
            .guards
            .push(Guard::Generation(id.clone(), w.generation));
        match w.reset_at {
            Some(at) => write.guards.push(Guard::ResetAtIs(id.clone(), at)),
            None if matches!(w.span, Span::Every(_)) => {
                write.guards.push(Guard::ResetAfter(id.clone(), now))
            }
            None => {}
        }
        write
            .changes
            .push(Change::Add(id.clone(), Counter::Avail, estimate.negated()));
        write
            .changes
            .push(Change::Add(id, Counter::Reserved, estimate));
    }
    Some(write)
}

/// One window's part of ending a reservation on a slot: `release` leaves
/// `reserved`, `cost` joins `spent`, and what was released but not spent
/// returns to `avail` — in whatever period the part is in now (a roll-over
/// carried the reservation into it). A cost is only written into a period
/// still current at `now`: a slot past its boundary refuses it, and the
/// slots roll over first (`service::escrow::roll`), as a plain window
/// rolls in the settle's own write. Without that, a cost settled after the
/// boundary but before the roll would be counted in the period that ended
/// — and dropped by the roll: spend no cap ever saw. A release (no cost)
/// needs no such guard: what it gives back is counted by the roll either way.
pub fn finish_window(
    write: &mut EntityWrite,
    w: &Window,
    release: Money,
    cost: Money,
    now: DateTime<Utc>,
) {
    let id = w.id();
    write
        .guards
        .push(Guard::Generation(id.clone(), w.generation));
    if !cost.is_zero() && matches!(w.span, Span::Every(_)) {
        write.guards.push(Guard::ResetAfter(id.clone(), now));
    }
    write.changes.extend([
        Change::Add(id.clone(), Counter::Reserved, release.negated()),
        Change::Add(id.clone(), Counter::Spent, cost),
        Change::Add(id, Counter::Avail, release.saturating_sub(cost)),
    ]);
}

/// Moves `amount` of `avail` of every window from `from` (a slot as read)
/// to slot `to`: the giver's write is conditional on covering it, both on
/// the periods read, so the transaction never creates budget. `None` when
/// `from` does not cover it as read.
pub fn transfer(from: &Entity, to: &EntityRef, amount: Money) -> Option<[EntityWrite; 2]> {
    Some([give(from, amount)?, receive(from, to, amount)])
}

/// A refill of shard `to` from the pool (as read): [`transfer`], the shard
/// noting what it took (`topped`: the size of its slice, for [`top_up`]).
pub fn refill(pool: &Entity, to: &EntityRef, amount: Money) -> Option<[EntityWrite; 2]> {
    let [give, mut take] = transfer(pool, to, amount)?;
    for w in &pool.windows {
        take.changes
            .push(Change::Set(w.id(), Counter::Topped, amount));
    }
    Some([give, take])
}

/// Whether `shard` (as read) is low: it is [`owed`] (an overrun took
/// more than it held), or every window holds less than half of its last
/// refill (never refilled: not low).
pub fn is_low(shard: &Entity) -> bool {
    let below_half =
        |w: &Window| w.topped > Money::ZERO && w.avail < Money::from_nanos(w.topped.nanos() / 2);
    !owed(shard).is_zero() || (!shard.windows.is_empty() && shard.windows.iter().all(below_half))
}

/// What `shard` (as read) owes: the most any of its windows is below zero
/// (a settle's cost over its reservation, `finish_window`, beyond the
/// shard's headroom). Until it is covered, the other slots' headroom still
/// admits what a single counter would already deny.
pub fn owed(shard: &Entity) -> Money {
    shard
        .windows
        .iter()
        .map(|w| Money::ZERO.saturating_sub(w.avail))
        .fold(Money::ZERO, Money::max)
}

/// A settle's top-up of `shard` from `pool` (both as read). What a shard
/// [`owed`] is covered at once: the debt and one more slice when the pool
/// holds both, else the debt — conditional on the shard not having gained
/// since read (settles that race cover it once); a pool holding less
/// leaves it to [`cover`], from every slot.
/// Otherwise, before the shard runs dry: when it [`is_low`], one more
/// refill of its last size, conditional on the pool covering it and on the
/// shard still being low. `None`: not low, or the pool does not cover it
/// as read. What a request does when it finds its shard dry, done by the
/// settle instead, off the request's path.
pub fn top_up(pool: &Entity, shard: &Entity) -> Option<[EntityWrite; 2]> {
    if !is_low(shard) || !same_periods(pool, shard) {
        return None;
    }
    let slice = shard
        .windows
        .iter()
        .map(|w| w.topped)
        .min()?
        .max(Money::ZERO);
    let owed = owed(shard);
    if !owed.is_zero() {
        let held = pool.windows.iter().map(|w| w.avail).min()?;
        let amount = [owed.saturating_add(slice), owed]
            .into_iter()
            .find(|a| *a <= held)?;
        let [give, mut take] = transfer(pool, &shard.entity, amount)?;
        unchanged_since_read(&mut take, shard);
        return Some([give, take]);
    }
    let [give, mut take] = refill(pool, &shard.entity, slice)?;
    for w in &shard.windows {
        let half = Money::from_nanos(w.topped.nanos() / 2);
        take.guards.push(Guard::Below(w.id(), Counter::Avail, half));
    }
    Some([give, take])
}

/// What `to` (as read among `slots`) [`owed`], paid by the other slots
/// when the pool alone does not hold it ([`top_up`]): from those with the
/// most headroom, each giving what it holds up to what is still owed, and
/// all of it when together they hold less (the entity is then spent past
/// its limit: nothing of it may be lent any more). One transaction; every
/// giver conditional on covering its part, the debtor on not having gained
/// since read. `None`: nothing owed, or nothing to give.
pub fn cover(slots: &[Entity], to: &EntityRef) -> Option<Vec<EntityWrite>> {
    let target = slots.iter().find(|s| &s.entity == to)?;
    let missing = owed(target);
    let mut givers: Vec<&Entity> = slots
        .iter()
        .filter(|s| &s.entity != to && same_periods(s, target))
        .collect();
    givers.sort_by_key(|s| std::cmp::Reverse(headroom(s)));
    let (mut writes, taken, _) = givers_parts(&givers, missing, |held, missing| held.min(missing))?;
    if taken <= Money::ZERO {
        return None;
    }
    let mut take = receive(target, to, taken);
    unchanged_since_read(&mut take, target);
    writes.push(take);
    Some(writes)
}

/// Conditions `take` on `slot` not having gained headroom since read (a
/// racing settle's cover, or its return, fails it: that one covers).
fn unchanged_since_read(take: &mut EntityWrite, slot: &Entity) {
    for w in &slot.windows {
        take.guards
            .push(Guard::AtMost(w.id(), Counter::Avail, w.avail));
    }
}

/// The giver's side of a transfer: `amount` of every window's `avail` of
/// `from` (as read), conditional on covering it in the period read.
fn give(from: &Entity, amount: Money) -> Option<EntityWrite> {
    if amount < Money::ZERO {
        return None;
    }
    let mut give = EntityWrite {
        entity: from.entity.clone(),
        guards: vec![Guard::Incarnation(from.incarnation)],
        changes: Vec::new(),
    };
    for w in &from.windows {
        if w.avail < amount {
            return None;
        }
        let id = w.id();
        give.guards
            .push(Guard::AtLeast(id.clone(), Counter::Avail, amount));
        period_guards(&mut give, w);
        give.changes
            .push(Change::Add(id, Counter::Avail, amount.negated()));
    }
    Some(give)
}

/// The taker's side: `amount` more `avail` in every window of slot `to`,
/// in the periods (and generations) of `like` (a slot as read).
fn receive(like: &Entity, to: &EntityRef, amount: Money) -> EntityWrite {
    let mut take = EntityWrite {
        entity: to.clone(),
        guards: vec![Guard::Incarnation(like.incarnation)],
        changes: Vec::new(),
    };
    for w in &like.windows {
        period_guards(&mut take, w);
        take.changes
            .push(Change::Add(w.id(), Counter::Avail, amount));
    }
    take
}

fn period_guards(write: &mut EntityWrite, w: &Window) {
    write.guards.push(Guard::Generation(w.id(), w.generation));
    if let Some(at) = w.reset_at {
        write.guards.push(Guard::ResetAtIs(w.id(), at));
    }
}

/// Where `headroom` (the whole headroom of one window, possibly negative:
/// a limit lowered below what is used, or more in flight at a roll-over
/// than the new period's limit) goes when the slots are re-balanced, by
/// slot (in `slots`' order), as `(avail, parked)`.
///
/// Not in debt: all of it to the pool's `avail`. In debt, nothing may be
/// admitted anywhere until what comes back pays it: a shard could admit
/// what its releases return while another slot still owes, which is the
/// overspend a plain window never allows. So every shard is charged all it
/// holds in flight (`avail = −reserved`: its releases bring it back to
/// `−cost` at most, never above zero) and what that leaves over goes to
/// the pool's `parked` — part of the total, but neither reserved nor
/// transferred — or, when the debt is larger than everything in flight, to
/// the pool's `avail` as the rest of the debt. Refills and borrows then
/// have nothing to move; the request path decides on the totals, and
/// re-balances again ([`regather`]) once they cover a request.
fn placement(slots: &[&Entity], window: &str, headroom: Money) -> Vec<(Money, Money)> {
    let mut out: Vec<(Money, Money)> = slots.iter().map(|_| (Money::ZERO, Money::ZERO)).collect();
    let pool = slots
        .iter()
        .position(|s| s.entity.slot == Some(SlotId::Pool));
    if headroom >= Money::ZERO {
        if let Some(p) = pool {
            out[p].0 = headroom;
        }
        return out;
    }
    let mut rest = headroom;
    for (i, s) in slots.iter().enumerate() {
        if Some(i) == pool {
            continue;
        }
        let held = s
            .window(window)
            .map_or(Money::ZERO, |w| w.reserved.max(Money::ZERO));
        out[i].0 = held.negated();
        rest = rest.saturating_add(held);
    }
    if let Some(p) = pool {
        out[p] = (rest.min(Money::ZERO), rest.max(Money::ZERO));
    }
    out
}

/// Whether a window of `slot` is in debt or owes: a negative headroom (a
/// debt placed by [`placement`], or a settle that cost more than it held)
/// or headroom parked. Refills and borrows wait for a re-balancing then.
pub fn owes(slot: &Entity) -> bool {
    slot.windows
        .iter()
        .any(|w| w.avail < Money::ZERO || !w.parked.is_zero())
}

/// Whether `slots` (all of an entity's, as read at one instant) must be
/// placed again before anything is lent: a debt placed (the pool below
/// zero, or headroom parked), or a slot whose windows are out of step — a
/// reservation made before a window was added gives back to the old
/// windows only, and a shard's headroom is the least over its windows, so
/// what it gave back would be stranded there. A plain overrun (a shard
/// below zero by a settle over what it held, and not covered by the pool
/// (`top_up`)) is not: the slots with
/// headroom lend as usual.
pub fn must_regather(slots: &[Entity]) -> bool {
    slots.iter().any(|s| {
        let pool_owes = s.entity.slot == Some(SlotId::Pool)
            && s.windows
                .iter()
                .any(|w| w.avail < Money::ZERO || !w.parked.is_zero());
        let skewed = s.windows.windows(2).any(|p| p[0].avail != p[1].avail);
        pool_owes || skewed
    })
}

/// The whole headroom of window `id` over `slots`: what they hold and
/// what the pool has parked.
fn held_back(slots: &[Entity], id: &str) -> Money {
    slots
        .iter()
        .filter_map(|s| s.window(id))
        .fold(Money::ZERO, |a, w| {
            a.saturating_add(w.avail).saturating_add(w.parked)
        })
}

/// The guards and changes that place `to` (`(avail, parked)`) on window
/// `w` of a slot as read: conditional on both being as read.
fn place(write: &mut EntityWrite, w: &Window, to: (Money, Money)) {
    let id = w.id();
    write
        .guards
        .push(Guard::Is(id.clone(), Counter::Avail, w.avail));
    write
        .guards
        .push(Guard::Is(id.clone(), Counter::Parked, w.parked));
    write
        .changes
        .push(Change::Set(id.clone(), Counter::Avail, to.0));
    if to.1 != w.parked {
        write.changes.push(Change::Set(id, Counter::Parked, to.1));
    }
}

/// One write per slot (as read), conditional on its incarnation, starting
/// with `changes`: what a re-balancing of all slots fills in.
fn slot_writes(slots: &[Entity], changes: &[Change]) -> Vec<EntityWrite> {
    slots
        .iter()
        .map(|s| EntityWrite {
            entity: s.entity.clone(),
            guards: vec![Guard::Incarnation(s.incarnation)],
            changes: changes.to_vec(),
        })
        .collect()
}

/// Every shard's headroom back to the pool, each window's `extra` added to
/// it (a changed limit), the slots' copy of the entity's version set to
/// `version`: one transaction over all `slots` (as read, the pool among
/// them), each conditional on its headroom being as read. A window whose
/// headroom turns negative (a limit lowered below what is used) is placed
/// by [`placement`].
pub fn gather(slots: &[Entity], extra: impl Fn(&str) -> Money, version: u64) -> Vec<EntityWrite> {
    let refs: Vec<&Entity> = slots.iter().collect();
    let mut writes = slot_writes(slots, &[Change::SetVersion(version)]);
    let ids: Vec<String> = slots
        .first()
        .map(|s| s.windows.iter().map(Window::id).collect())
        .unwrap_or_default();
    for id in ids {
        let headroom = held_back(slots, &id).saturating_add(extra(&id));
        for ((write, s), to) in writes
            .iter_mut()
            .zip(slots)
            .zip(placement(&refs, &id, headroom))
        {
            let Some(w) = s.window(&id) else { continue };
            place(write, w, to);
            // A shard is topped up again only after a request refilled it
            // (a retired one never is).
            if !w.topped.is_zero() {
                write
                    .changes
                    .push(Change::Set(id.clone(), Counter::Topped, Money::ZERO));
            }
        }
    }
    writes
}

/// The re-balancing of `e`'s slots (all of them, as read in one isolated
/// read) when they must be ([`must_regather`]): every window's whole
/// headroom placed again by [`placement`] — into the pool once the debt is
/// paid — in the periods read, the version unchanged. One transaction,
/// each slot conditional on being as read, so it never creates budget.
/// Empty when nothing needs it.
pub fn regather(e: &Entity, slots: &[Entity]) -> Vec<EntityWrite> {
    if !must_regather(slots) {
        return Vec::new();
    }
    let refs: Vec<&Entity> = slots.iter().collect();
    let mut writes: Vec<EntityWrite> = slots
        .iter()
        .map(|s| EntityWrite {
            entity: s.entity.clone(),
            guards: vec![Guard::Version(e.version), Guard::Incarnation(s.incarnation)],
            changes: Vec::new(),
        })
        .collect();
    for w in &e.windows {
        let id = w.id();
        let headroom = held_back(slots, &id);
        for ((write, s), to) in writes
            .iter_mut()
            .zip(slots)
            .zip(placement(&refs, &id, headroom))
        {
            let Some(part) = s.window(&id) else { continue };
            period_guards(write, part);
            place(write, part, to);
        }
    }
    writes
}

/// The roll-over of `e`'s windows on its slots (as read) into the period
/// current at `now` (`period(w)`: that period's boundary), for every window
/// whose slots are still in an older one: the period's spend goes,
/// reservations in flight stay on their slot, and the new period's headroom
/// (`max − Σ reserved`, the entity item's own reservations included) is
/// placed by [`placement`] (all to the pool, unless more is in flight than
/// the limit). The windows not due are gathered into the pool at the same
/// time, so every shard's windows stay in step (a shard's headroom is the
/// same slice in each). One transaction over all slots, each conditional on
/// being as read. The entity item itself rolls by `plan::roll_over` (or
/// has already, lazily: this follows it, and its spend in the new period,
/// from such a settle, is counted).
pub fn roll(
    e: &Entity,
    slots: &[Entity],
    period: impl Fn(&Window) -> Option<DateTime<Utc>>,
) -> Vec<EntityWrite> {
    let pool = slots.iter().find(|s| s.entity.slot == Some(SlotId::Pool));
    let due: Vec<(&Window, Option<DateTime<Utc>>)> = e
        .windows
        .iter()
        .map(|w| (w, period(w)))
        .filter(|(w, at)| {
            pool.and_then(|p| p.window(&w.id()))
                .is_some_and(|p| p.reset_at != *at)
        })
        .collect();
    if due.is_empty() {
        return Vec::new();
    }
    let refs: Vec<&Entity> = slots.iter().collect();
    let mut writes = slot_writes(slots, &[]);
    for w in &e.windows {
        let id = w.id();
        let next = due.iter().find(|(d, _)| d.id() == id).map(|(_, at)| *at);
        let headroom = match next {
            // The new period: the limit less what is in flight (and what
            // the entity item already spent in it, rolled lazily).
            Some(at) => {
                let in_flight = slots
                    .iter()
                    .filter_map(|x| x.window(&id))
                    .fold(w.reserved, |a, p| a.saturating_add(p.reserved));
                let item_spent = if w.reset_at == at {
                    w.spent
                } else {
                    Money::ZERO
                };
                w.max.saturating_sub(in_flight).saturating_sub(item_spent)
            }
            // Not due: what the slots hold, gathered.
            None => held_back(slots, &id),
        };
        let places = placement(&refs, &id, headroom);
        for ((write, s), to) in writes.iter_mut().zip(slots).zip(places) {
            let Some(mine) = s.window(&id) else { continue };
            if let Some(at) = next {
                if let Some(old) = mine.reset_at {
                    write.guards.push(Guard::ResetAtIs(id.clone(), old));
                }
                write
                    .guards
                    .push(Guard::Is(id.clone(), Counter::Reserved, mine.reserved));
                write
                    .changes
                    .push(Change::Set(id.clone(), Counter::Spent, Money::ZERO));
                if let Some(at) = at {
                    write.changes.push(Change::SetResetAt(id.clone(), at));
                }
            }
            place(write, mine, to);
        }
    }
    writes
}

/// Whether `slot`'s parts are in the periods `e` (as known) is in; a
/// boundary `e` does not know (an owner from a key's snapshot, whose
/// boundaries were not read) is taken as the slot's.
pub fn same_periods(e: &Entity, slot: &Entity) -> bool {
    e.windows.iter().all(|w| {
        slot.window(&w.id())
            .is_some_and(|p| w.reset_at.is_none() || p.reset_at == w.reset_at)
    })
}

/// Whether a window of `slot` is past its boundary at `now`: the slots
/// must roll over before anything else is done on them.
pub fn behind(slot: &Entity, now: DateTime<Utc>) -> bool {
    slot.windows.iter().any(|w| w.is_due(now))
}

/// `e` (its item as read) with each window's `spent`, `reserved` and
/// `avail` (with what is parked) summed over its slots: the figures
/// `/…/info` shows and a denial names.
pub fn totals(e: &Entity, slots: &[Entity]) -> Entity {
    let mut out = e.clone();
    // Settles on a shard count its lifetime spend there.
    for s in slots {
        out.lifetime_spent = out.lifetime_spent.saturating_add(s.lifetime_spent);
    }
    for w in &mut out.windows {
        let id = w.id();
        for p in slots.iter().filter_map(|s| s.window(&id)) {
            w.spent = w.spent.saturating_add(p.spent);
            w.reserved = w.reserved.saturating_add(p.reserved);
            // What is parked is headroom too, only not yet usable.
            w.avail = w.avail.saturating_add(p.avail).saturating_add(p.parked);
        }
    }
    out
}

/// What a read of all of a sharded entity's slots proves for as long as
/// its configuration and periods stay as read: per window, `max − Σ spent`
/// over the slots bounds all the headroom the window can ever have again
/// (`avail + reserved + parked`, by the invariant). Within one version and
/// period no write lowers a slot's `spent` — settles only add their cost,
/// reservations, transfers and re-placements leave it — while an admin
/// change writes a new version on every slot and a roll-over a new
/// boundary on every slot. So the bound needs no isolated read: slots read
/// one after the other, all in the same version and periods, give a bound
/// for every instant after the last of them. A request above it is denied
/// on a read of any one slot that still shows that version and those
/// periods — no write, no read of the others (`service::escrow`).
#[derive(Debug, Clone, PartialEq)]
pub struct Ceiling {
    pub version: u64,
    pub incarnation: u64,
    /// Per window: the totals as read (the figures a denial names), the
    /// generation and boundary the slots were in, and the bound.
    pub windows: Vec<CeilingWindow>,
    /// The pool's headroom as read (a hint: whether refills are over).
    pub pool_avail: Money,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CeilingWindow {
    /// With the slots' boundary (`totals.reset_at`).
    pub totals: Window,
    pub generation: u64,
    pub bound: Money,
}

/// `e` with none of its item's counters: its configuration alone (what a
/// cached chain knows of a sharded owner's counters are hints, never the
/// stored figures).
pub fn config_of(e: &Entity) -> Entity {
    let mut c = e.clone();
    for w in &mut c.windows {
        w.spent = Money::ZERO;
        w.reserved = Money::ZERO;
        w.avail = Money::ZERO;
        w.parked = Money::ZERO;
    }
    c
}

/// The [`Ceiling`] of `e` (its configuration, known or read: its limits)
/// over `slots` — every slot of it ([`slot_refs`]), read in any order.
/// `None` unless all are there, all in `e`'s version and incarnation (the
/// bound is `e`'s limits less what was spent: slots of another version
/// have other limits) and in one set of periods (a change or a roll-over
/// came between the reads).
pub fn ceiling(e: &Entity, slots: &[Entity]) -> Option<Ceiling> {
    let pool = slots.iter().find(|s| s.entity.slot == Some(SlotId::Pool))?;
    let refs = slot_refs(e);
    if refs.len() != slots.len() || !refs.iter().all(|r| slots.iter().any(|s| &s.entity == r)) {
        return None;
    }
    let same = |s: &Entity| {
        s.version == e.version
            && s.incarnation == e.incarnation
            && e.windows.iter().all(|w| {
                let (Some(a), Some(b)) = (s.window(&w.id()), pool.window(&w.id())) else {
                    return false;
                };
                a.generation == b.generation && a.reset_at == b.reset_at
            })
    };
    if !slots.iter().all(same) {
        return None;
    }
    let sums = totals(e, slots);
    let windows = sums
        .windows
        .iter()
        .map(|t| {
            let part = pool.window(&t.id())?;
            let spent = slots
                .iter()
                .filter_map(|s| s.window(&t.id()))
                .fold(Money::ZERO, |a, w| a.saturating_add(w.spent));
            Some(CeilingWindow {
                totals: Window {
                    reset_at: part.reset_at,
                    ..t.clone()
                },
                generation: part.generation,
                bound: t.max.saturating_sub(spent),
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Ceiling {
        version: pool.version,
        incarnation: pool.incarnation,
        windows,
        pool_avail: headroom(pool),
    })
}

impl Ceiling {
    /// The window (its totals as read) whose bound is below what a
    /// request of `estimate` needs, if `owner` (as known) is the
    /// configuration it was read under and the period has not ended.
    pub fn denies(&self, owner: &Entity, estimate: Money, now: DateTime<Utc>) -> Option<&Window> {
        if owner.version != self.version || owner.incarnation != self.incarnation {
            return None;
        }
        self.windows
            .iter()
            .find(|w| w.bound < need(estimate) && w.totals.reset_at.is_none_or(|at| at > now))
            .map(|w| &w.totals)
    }

    /// Whether `slot` (one slot, read now) is still in the configuration
    /// and periods of the read: then the bound still holds.
    pub fn holds_on(&self, slot: &Entity) -> bool {
        slot.version == self.version
            && slot.incarnation == self.incarnation
            && self.windows.iter().all(|c| {
                slot.window(&c.totals.id()).is_some_and(|w| {
                    w.generation == c.generation && w.reset_at == c.totals.reset_at
                })
            })
    }
}

/// The slot writes of an admin change of a sharded entity from `old` (its
/// item as read) to `new` (version `old.version + 1`), on its `slots` (as
/// read): every slot takes the new version and the new set of windows,
/// every shard's headroom goes back to the pool, which also gets each
/// window's change of limit (a new window: its whole limit; a new entity
/// made sharded: `max − used` of its item). And the slot items to create
/// (the pool of a newly sharded entity, shards added).
pub fn admin_change(
    old: &Entity,
    new: &Entity,
    slots: &[Entity],
) -> (Vec<EntityWrite>, Vec<Entity>) {
    let version = old.version + 1;
    if let Some(writes) = limit_change(old, new, slots, version) {
        return (writes, Vec::new());
    }
    let mut stored = new.clone();
    stored.version = version;
    let mut create = Vec::new();
    let exists = |slot: SlotId| slots.iter().any(|s| s.entity.slot == Some(slot));
    if !exists(SlotId::Pool) {
        create.push(new_slot(&stored, SlotId::Pool, |w| {
            match old.window(&w.id()) {
                Some(o) => w.max.saturating_sub(o.spent.saturating_add(o.reserved)),
                None => w.max,
            }
        }));
    }
    for k in 0..stored.shard_items.max(stored.shards) {
        if !exists(SlotId::Shard(k)) {
            create.push(new_slot(&stored, SlotId::Shard(k), |_| Money::ZERO));
        }
    }
    let mut writes = gather(
        slots,
        |id| match (old.window(id), new.window(id)) {
            (Some(o), Some(n)) => n.max.saturating_sub(o.max),
            _ => Money::ZERO,
        },
        version,
    );
    for (write, slot) in writes.iter_mut().zip(slots) {
        let pool = slot.entity.slot == Some(SlotId::Pool);
        // Windows no longer given go; new ones join (the pool holds all of
        // a new window's limit).
        for w in &slot.windows {
            if new.window(&w.id()).is_none() {
                write
                    .changes
                    .retain(|c| !matches!(c, Change::Set(id, ..) if *id == w.id()));
                write.changes.push(Change::DropWindow(w.id()));
            }
        }
        for w in &new.windows {
            if slot.window(&w.id()).is_none() {
                let avail = if pool { w.max } else { Money::ZERO };
                write.changes.push(Change::PutWindow(part(w, avail)));
            }
        }
    }
    (writes, create)
}

/// An admin change that moves only limits (same shards, same windows in
/// the same generations) as writes that need no slot to be as read: the
/// pool takes each window's change of limit — a raise always, a cut
/// conditional on the pool covering it — and every slot takes the new
/// version, nothing else. So the traffic on the shards, which moves their
/// counters all the time, never refuses it (a gathering is conditional on
/// every slot's headroom as read). `None`: the change needs the gathering
/// (a cut the pool does not cover as read, or anything but limits).
fn limit_change(
    old: &Entity,
    new: &Entity,
    slots: &[Entity],
    version: u64,
) -> Option<Vec<EntityWrite>> {
    if !is_sharded(old)
        || !is_sharded(new)
        || old.shards != new.shards
        || old.shard_items != new.shard_items
        || old.windows.len() != new.windows.len()
    {
        return None;
    }
    let pool = slots.iter().find(|s| s.entity.slot == Some(SlotId::Pool))?;
    // In debt (or a slot owing an overrun), a raise on the pool alone
    // would be admitted while another slot still owes: re-place it all.
    if slots.len() != slot_refs(old).len() || slots.iter().any(owes) {
        return None;
    }
    let mut take = EntityWrite {
        entity: pool.entity.clone(),
        guards: vec![Guard::Incarnation(pool.incarnation)],
        changes: vec![Change::SetVersion(version)],
    };
    for (o, n) in old.windows.iter().zip(&new.windows) {
        let part = pool.window(&o.id())?;
        if o.id() != n.id() || o.generation != n.generation || part.generation != o.generation {
            return None;
        }
        take.guards
            .push(Guard::Is(o.id(), Counter::Parked, Money::ZERO));
        let change = n.max.saturating_sub(o.max);
        if change.is_zero() {
            continue;
        }
        if change < Money::ZERO && part.avail < change.negated() {
            return None;
        }
        let id = o.id();
        take.guards
            .push(Guard::Generation(id.clone(), o.generation));
        if change < Money::ZERO {
            take.guards
                .push(Guard::AtLeast(id.clone(), Counter::Avail, change.negated()));
        }
        take.changes.push(Change::Add(id, Counter::Avail, change));
    }
    Some(
        slots
            .iter()
            .map(|s| {
                if s.entity == pool.entity {
                    take.clone()
                } else {
                    // Not owing (no condition on what the traffic moves:
                    // a shard only goes below zero by a debt placed, or
                    // a settle over what it held).
                    let mut guards = vec![Guard::Incarnation(s.incarnation)];
                    guards.extend(
                        s.windows
                            .iter()
                            .map(|w| Guard::AtLeast(w.id(), Counter::Avail, Money::ZERO)),
                    );
                    EntityWrite {
                        entity: s.entity.clone(),
                        guards,
                        changes: vec![Change::SetVersion(version)],
                    }
                }
            })
            .collect(),
    )
}

/// The slot items of `e` created sharded: the pool holding every window's
/// whole limit, and its shards, empty.
pub fn slots_of_new(e: &Entity) -> Vec<Entity> {
    if !is_sharded(e) {
        return Vec::new();
    }
    std::iter::once(new_slot(e, SlotId::Pool, |w| w.max))
        .chain((0..e.shards).map(|k| new_slot(e, SlotId::Shard(k), |_| Money::ZERO)))
        .collect()
}

/// The guards an entity's own item needs when it becomes sharded: its
/// counters as read, since the pool starts with `max − used` of them.
pub fn conversion_guards(old: &Entity, new: &Entity) -> Vec<Guard> {
    if is_sharded(old) || !is_sharded(new) {
        return Vec::new();
    }
    old.windows
        .iter()
        .flat_map(|w| {
            [
                Guard::Is(w.id(), Counter::Spent, w.spent),
                Guard::Is(w.id(), Counter::Reserved, w.reserved),
            ]
        })
        .collect()
}

// ---- policy: nothing below affects exactness ----

/// How much a dry shard takes from the pool: a fixed slice of the limit,
/// `limit / (16 × shards)` (at least what the request needs, never more
/// than the pool has). Fixed slices spread the refills evenly over the
/// budget's life — a shard refills once per 1/16th of its share — and
/// leave at most 1/16th of the limit spread over the shards when the pool
/// runs out, which the last requests borrow (a few round trips, only in
/// the last sixteenth of the budget). `None`: the pool cannot cover the
/// request (borrow from the shards, or deny).
pub fn refill_amount(pool_avail: Money, need: Money, limit: Money, shards: u32) -> Option<Money> {
    if pool_avail < need {
        return None;
    }
    let slice = Money::from_nanos(limit.nanos() / (16 * i64::from(shards.max(1))));
    Some(slice.max(need).min(pool_avail))
}

/// Near the cap (the pool cannot cover a request): what `to` (as read
/// among `slots`) lacks to cover `need`, taken from the slots with the most
/// headroom, the fewest that cover it — one transaction of those givers
/// and `to`, each giver conditional on covering its part. A giver holding
/// less than `need` (a fragment no request of its own can use alone: what
/// settles gave back) gives all of it, so the fragments left after the cap
/// are gathered on fewer slots as they are borrowed, and later borrows need
/// fewer givers. `None`: the slots with headroom, as read, do not cover it
/// together (the totals decide, on an isolated read).
///
/// When several slots could cover it alone, `seed` (random, per request)
/// chooses among them instead of the one with the most: requests on many
/// instances read the same slots, and all asking the same giver would meet
/// on it — one transfer wins, the others find its condition failed or its
/// item busy.
pub fn borrow(
    slots: &[Entity],
    to: &EntityRef,
    need: Money,
    seed: u32,
) -> Option<Vec<EntityWrite>> {
    let target = slots.iter().find(|s| &s.entity == to)?;
    let missing = need.saturating_sub(headroom(target));
    if missing <= Money::ZERO {
        return Some(Vec::new());
    }
    let mut givers: Vec<&Entity> = slots.iter().filter(|s| &s.entity != to).collect();
    givers.sort_by_key(|s| std::cmp::Reverse(headroom(s)));
    let alone = givers.iter().take_while(|g| headroom(g) >= missing).count();
    if alone > 1 {
        let chosen = seed as usize % alone;
        givers.swap(0, chosen);
    }
    let (mut writes, taken, missing) = givers_parts(&givers, missing, |held, missing| {
        if held < need {
            held
        } else {
            held.min(missing)
        }
    })?;
    if missing > Money::ZERO {
        return None;
    }
    writes.push(receive(target, to, taken));
    Some(writes)
}

/// The givers' side of moving `missing` to one slot: `givers` in order,
/// each giving `part(its headroom, what is still missing)` (conditional on
/// covering it), until nothing is missing or a giver has nothing to give.
/// Their writes, what they give together, and what is still missing.
/// `None`: a giver's part is more than it holds as read.
fn givers_parts(
    givers: &[&Entity],
    mut missing: Money,
    part: impl Fn(Money, Money) -> Money,
) -> Option<(Vec<EntityWrite>, Money, Money)> {
    let mut writes = Vec::new();
    let mut taken = Money::ZERO;
    for g in givers {
        if missing <= Money::ZERO {
            break;
        }
        let p = part(headroom(g), missing);
        if p <= Money::ZERO {
            break;
        }
        writes.push(give(g, p)?);
        missing = missing.saturating_sub(p);
        taken = taken.saturating_add(p);
    }
    Some((writes, taken, missing))
}

/// The least headroom any window of `slot` holds.
pub fn headroom(slot: &Entity) -> Money {
    slot.windows
        .iter()
        .map(|w| w.avail)
        .min()
        .unwrap_or(Money::ZERO)
}

/// Past the pool, how often an authorizer instance reads every slot of one
/// sharded entity: one read every `MICROS_PER_SCAN` (10 a second), a burst
/// of [`SCAN_BURST`]; a plain read costs 1, an isolated one 2 (what each
/// costs every slot in read units). DynamoDB serves an item about 3,000
/// read units a second: at 8,000 requests a second, each reading all the
/// slots, no slot could be read; at 10 units a second per instance, ~160
/// instances ask ~1,600 of each slot. Past it, a request borrows from the
/// instance's last read instead ([`borrow_from_read`]).
pub const MICROS_PER_SCAN: i64 = 100_000;
/// See [`MICROS_PER_SCAN`]: enough for a quiet instance to decide two
/// requests in a row on its own reads (a plain and an isolated one each).
pub const SCAN_BURST: i64 = 6;

/// The reads of every slot one instance may still make ([`MICROS_PER_SCAN`]):
/// a token bucket kept as the time it would be empty (GCRA), in
/// microseconds of any clock that does not go back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanBucket {
    empty_at_us: i64,
}

impl Default for ScanBucket {
    /// Full.
    fn default() -> Self {
        ScanBucket {
            empty_at_us: i64::MIN,
        }
    }
}

impl ScanBucket {
    /// Whether a read of every slot may be made at `now_us`.
    pub fn may_read(&self, now_us: i64) -> bool {
        self.empty_at_us.max(now_us).saturating_sub(now_us)
            <= (SCAN_BURST - 1).saturating_mul(MICROS_PER_SCAN)
    }

    /// A read of every slot made at `now_us`, costing `units` (1 plain, 2
    /// isolated); never more than a full bucket's worth behind.
    pub fn take(&mut self, now_us: i64, units: i64) {
        let most = now_us.saturating_add(SCAN_BURST.saturating_mul(MICROS_PER_SCAN));
        self.empty_at_us = self
            .empty_at_us
            .max(now_us)
            .saturating_add(units.saturating_mul(MICROS_PER_SCAN))
            .min(most);
    }
}

/// The writes of a transfer an instance sent, applied to its read of the
/// slots (the caller passes the givers' whether it was written or not:
/// either way they hold less than read, or others took it first; the
/// taker's only when it was written).
pub fn sent_to<'w>(slots: &mut [Entity], writes: impl IntoIterator<Item = &'w EntityWrite>) {
    for w in writes {
        if let Some(s) = slots.iter_mut().find(|s| s.entity == w.entity) {
            crate::plan::apply(&w.changes, s);
        }
    }
}

/// What a request whose shard `to` is short borrows from an instance's
/// last read of every slot ([`borrow`] with `to` taken as holding nothing:
/// its write said it is short, whatever that read showed). Each giver's
/// part is a condition of the transfer, so a read this old is as safe as
/// any. `None`: that read has nothing to lend.
pub fn borrow_from_read(
    read: &[Entity],
    to: &EntityRef,
    need: Money,
    seed: u32,
) -> Option<Vec<EntityWrite>> {
    let mut slots = read.to_vec();
    if let Some(own) = slots.iter_mut().find(|s| &s.entity == to) {
        for w in &mut own.windows {
            w.avail = w.avail.min(Money::ZERO);
        }
    }
    // (With `to` at zero and `need` above it, a borrow is never empty.)
    borrow(&slots, to, need, seed)
}

// ---- policy: shrinking idle shards back into the pool ----

/// An idle shard's headroom going back to the pool: what
/// [`idle_returns`] proposes, one two-item transaction each.
#[derive(Debug, Clone, PartialEq)]
pub struct IdleReturn {
    pub shard: SlotId,
    pub amount: Money,
    pub writes: [EntityWrite; 2],
}

/// A fingerprint of a shard's counters (every window's `avail`,
/// `reserved`, `spent`, generation and boundary): equal at two visits of
/// the reset job means no request, settle or transfer touched the shard
/// in between. FNV-1a folded to 32 bits (a collision only makes a busy
/// shard's transfer attempted, which its condition refuses or keeps
/// exact), so the record stays small and comparable across builds.
fn fingerprint(slot: &Entity) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(&slot.incarnation.to_le_bytes());
    for w in &slot.windows {
        eat(w.id().as_bytes());
        eat(&[0]);
        for m in [w.avail, w.reserved, w.spent] {
            eat(&m.nanos().to_le_bytes());
        }
        eat(&w.generation.to_le_bytes());
        eat(&w.reset_at.map_or(i64::MIN, |t| t.timestamp()).to_le_bytes());
    }
    (h ^ (h >> 32)) as u32
}

/// What the reset job records (on the pool) at a visit of a sharded
/// entity: `v1`, then `;k=hex` with the fingerprint of each shard that
/// holds headroom, shards in order. A shard with none has nothing to give
/// back, so it is left out (the record of an entity whose shards are all
/// dry is `v1`, and stays so while they are); the pool's own counters are
/// not part of it.
pub fn visit_record(slots: &[Entity]) -> String {
    let mut shards: Vec<(u32, u32)> = slots
        .iter()
        .filter(|s| headroom(s) > Money::ZERO)
        .filter_map(|s| match s.entity.slot {
            Some(SlotId::Shard(k)) => Some((k, fingerprint(s))),
            _ => None,
        })
        .collect();
    shards.sort_unstable();
    std::iter::once("v1".to_string())
        .chain(shards.iter().map(|(k, f)| format!("{k}={f:08x}")))
        .collect::<Vec<_>>()
        .join(";")
}

/// The fingerprint `record` (a [`visit_record`]) holds for shard `k`.
fn recorded(record: &str, k: u32) -> Option<u32> {
    let mut parts = record.split(';');
    if parts.next() != Some("v1") {
        return None;
    }
    parts.find_map(|part| {
        let (shard, f) = part.split_once('=')?;
        (shard.parse::<u32>().ok()? == k)
            .then(|| u32::from_str_radix(f, 16).ok())
            .flatten()
    })
}

/// The shards of sharded `e` (its item as read) that are idle — their
/// counters as `slots` (as read) show them are those `seen` (the record
/// of the job's previous visit) holds — and still hold headroom, each
/// with the transfer of all of it (the least `avail` over its windows,
/// only when positive) back to the pool: conditional on the shard still
/// covering it, so a request that takes headroom there meanwhile makes the
/// transfer refused (a settle that adds some leaves it for the next visit),
/// never wrong. Retired shards
/// (`k >= shards`) return the same way. Nothing while a slot is past a
/// boundary (the roll-over comes first) or the pool is missing; nothing
/// on a first visit (`seen` is `None`). A shard that shrank refills from
/// the pool at its next request, as any dry shard does.
pub fn idle_returns(
    e: &Entity,
    slots: &[Entity],
    seen: Option<&str>,
    now: DateTime<Utc>,
) -> Vec<IdleReturn> {
    let Some(seen) = seen else {
        return Vec::new();
    };
    let Some(pool) = slots.iter().find(|s| s.entity.slot == Some(SlotId::Pool)) else {
        return Vec::new();
    };
    if !is_sharded(e) || slots.iter().any(|s| behind(s, now)) {
        return Vec::new();
    }
    slots
        .iter()
        .filter_map(|s| {
            let Some(SlotId::Shard(k)) = s.entity.slot else {
                return None;
            };
            if s.incarnation != pool.incarnation || recorded(seen, k) != Some(fingerprint(s)) {
                return None;
            }
            let amount = headroom(s);
            if amount <= Money::ZERO {
                return None;
            }
            Some(IdleReturn {
                shard: SlotId::Shard(k),
                amount,
                writes: transfer(s, &pool.entity, amount)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{apply, guards_hold};
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_000_000, 0).unwrap()
    }

    /// A team sharded over `n` with a 1d window of `max` dollars, and its
    /// slots (the pool holding everything).
    fn team(n: u32, max: i64) -> (Entity, Vec<Entity>) {
        let mut e = Entity::new(EntityRef::team("t"), t0());
        e.shards = n;
        e.shard_items = n;
        e.windows.push(Window {
            span: Span::parse_id("1d").unwrap(),
            max: Money::usd(max),
            spent: Money::ZERO,
            reserved: Money::ZERO,
            reset_at: Some(t0() + chrono::Duration::days(1)),
            generation: 1,
            legacy: false,
            avail: Money::ZERO,
            parked: Money::ZERO,
            topped: Money::ZERO,
        });
        let old = Entity {
            shards: 0,
            shard_items: 0,
            ..e.clone()
        };
        let (_, create) = admin_change(&old, &e, &[]);
        e.version += 1;
        (e, create)
    }

    #[test]
    fn an_instance_reads_every_slot_a_burst_then_ten_times_a_second() {
        let mut b = ScanBucket::default();
        let t = 5_000_000_i64;
        let mut reads = 0;
        while b.may_read(t) {
            b.take(t, 1);
            reads += 1;
        }
        assert_eq!(reads, SCAN_BURST);
        assert!(!b.may_read(t + MICROS_PER_SCAN - 1));
        assert!(b.may_read(t + MICROS_PER_SCAN));
        // An isolated read costs two.
        let mut two = ScanBucket::default();
        two.take(t, 2);
        let mut reads = 0;
        while two.may_read(t) {
            two.take(t, 1);
            reads += 1;
        }
        assert_eq!(reads, SCAN_BURST - 2);
        // Never further behind than a full bucket, whatever is taken; a
        // clock that goes back, or the ends of time, neither panic nor
        // open it.
        b.take(t, i64::MAX);
        assert!(!b.may_read(t));
        assert!(b.may_read(t + (SCAN_BURST + 1) * MICROS_PER_SCAN));
        assert!(!b.may_read(t - 1_000_000));
        let mut edge = ScanBucket::default();
        edge.take(i64::MAX, 1);
        edge.take(i64::MIN, 3);
        assert!(!edge.may_read(i64::MIN));
        assert!(ScanBucket::default().may_read(i64::MIN));
    }

    #[test]
    fn a_borrow_from_an_old_read_takes_the_shard_as_empty_and_picks_a_giver_by_seed() {
        let (e, mut slots) = team(4, 4);
        // $1 on each shard, the pool empty.
        for k in 0..4 {
            let to = e.entity.at(SlotId::Shard(k));
            let pool = slots
                .iter()
                .find(|s| s.entity.slot == Some(SlotId::Pool))
                .unwrap()
                .clone();
            assert!(run(
                &mut slots,
                &transfer(&pool, &to, Money::usd(1)).unwrap()
            ));
        }
        // Shard 0's write said it is short: its dollar as read is not
        // counted, it takes all of `need` from one giver.
        let to = e.entity.at(SlotId::Shard(0));
        let need = Money::from_nanos(500_000_000);
        let mut givers = std::collections::BTreeSet::new();
        for seed in 0..3 {
            let writes = borrow_from_read(&slots, &to, need, seed).expect("lent");
            assert_eq!(writes.len(), 2);
            let mut after = slots.clone();
            assert!(run(&mut after, &writes));
            let own = after.iter().find(|s| s.entity == to).unwrap();
            assert_eq!(own.windows[0].avail, Money::usd(1).saturating_add(need));
            givers.insert(writes[0].entity.clone());
        }
        assert_eq!(givers.len(), 3, "each seed its own giver: {givers:?}");
        // $3 is gathered from three givers; $4 is not there to lend.
        assert_eq!(
            borrow_from_read(&slots, &to, Money::usd(3), 0)
                .unwrap()
                .len(),
            4
        );
        assert!(borrow_from_read(&slots, &to, Money::usd(4), 0).is_none());
    }

    /// Runs `writes` as one transaction: all guards hold, then all apply.
    fn run(store: &mut [Entity], writes: &[EntityWrite]) -> bool {
        let ok = writes
            .iter()
            .all(|w| guards_hold(&w.guards, store.iter().find(|s| s.entity == w.entity)));
        if ok {
            for w in writes {
                if let Some(s) = store.iter_mut().find(|s| s.entity == w.entity) {
                    apply(&w.changes, s);
                }
            }
        }
        ok
    }

    fn slot(store: &[Entity], k: SlotId) -> &Entity {
        store.iter().find(|s| s.entity.slot == Some(k)).unwrap()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u32, i64),
        Settle(usize, i64),
        Refill(u32, i64, bool),
        Borrow(u32, u32, i64, bool),
        Change(i64),
        Roll,
        Regather(bool),
        TopUp(u32, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..4, 0i64..4).prop_map(|(s, e)| Op::Reserve(s, e)),
            (0usize..8, 0i64..5).prop_map(|(i, c)| Op::Settle(i, c)),
            (0u32..4, 0i64..6, any::<bool>()).prop_map(|(s, x, st)| Op::Refill(s, x, st)),
            (0u32..4, 0u32..4, 0i64..3, any::<bool>())
                .prop_map(|(a, b, x, st)| Op::Borrow(a, b, x, st)),
            (-3i64..4).prop_map(Op::Change),
            Just(Op::Roll),
            any::<bool>().prop_map(Op::Regather),
            (0u32..4, any::<bool>()).prop_map(|(s, st)| Op::TopUp(s, st)),
        ]
    }

    proptest! {
        /// Whatever runs in whatever order — reservations, settles (also
        /// over what they held), refills and borrows from stale reads,
        /// limit changes, roll-overs — the slots account for the limit
        /// exactly after every step, what is reserved is what is in flight,
        /// no headroom goes below zero except by a settle that cost more
        /// than it held or a debt placed (a limit lowered below what was
        /// used), and nothing is admitted that takes the total past the
        /// limit by more than what settles cost over what they held.
        #[test]
        fn the_slots_always_account_for_the_limit(ops in proptest::collection::vec(op(), 1..60)) {
            let (mut e, mut store) = team(4, 10);
            let mut stale = store.clone();
            let mut held: Vec<(SlotId, Money)> = Vec::new();
            let mut debt = Money::ZERO;
            // What settles cost over what they held since the last
            // roll-over: the only way past the limit, as on a plain window.
            let mut overrun = Money::ZERO;
            let mut bounds: Vec<Ceiling> = Vec::new();
            let mut now = t0();
            for op in ops {
                match op {
                    Op::Reserve(s, x) => {
                        let x = Money::usd(x);
                        let w = reserve(&e, SlotId::Shard(s), x, now);
                        let before = headroom(slot(&store, SlotId::Shard(s)));
                        if let Some(w) = w {
                            if run(&mut store, &[w]) {
                                prop_assert!(before >= x);
                                held.push((SlotId::Shard(s), x));
                                let left = totals(&e, &store).windows[0].avail;
                                prop_assert!(left >= overrun.negated(), "admitted in debt: {:?}", store);
                            }
                        }
                    }
                    Op::Settle(i, c) => {
                        if i < held.len() {
                            let (k, amount) = held.remove(i);
                            let cost = Money::usd(c);
                            let over = cost.saturating_sub(amount).max(Money::ZERO);
                            debt = debt.saturating_add(over);
                            overrun = overrun.saturating_add(over);
                            let s = slot(&store, k);
                            let mut write = EntityWrite { entity: s.entity.clone(), guards: vec![], changes: vec![] };
                            finish_window(&mut write, &s.windows[0], amount, cost, now);
                            prop_assert!(run(&mut store, &[write]));
                        }
                    }
                    Op::Refill(s, x, st) => {
                        let read = if st { &stale } else { &store };
                        let pool = slot(read, SlotId::Pool).clone();
                        if let Some(t) = refill(&pool, &e.entity.at(SlotId::Shard(s)), Money::usd(x)) {
                            run(&mut store, &t);
                        }
                    }
                    Op::Borrow(a, b, x, st) => {
                        let read = if st { &stale } else { &store };
                        let from = slot(read, SlotId::Shard(a)).clone();
                        if a != b {
                            if let Some(t) = transfer(&from, &e.entity.at(SlotId::Shard(b)), Money::usd(x)) {
                                run(&mut store, &t);
                            }
                        }
                    }
                    Op::Change(d) => {
                        let mut new = e.clone();
                        new.windows[0].max = e.windows[0].max.saturating_add(Money::usd(d)).max(Money::ZERO);
                        let lowered = e.windows[0].max.saturating_sub(new.windows[0].max).max(Money::ZERO);
                        stale = store.clone();
                        let (writes, create) = admin_change(&e, &new, &store);
                        prop_assert!(create.is_empty());
                        prop_assert!(run(&mut store, &writes));
                        debt = debt.saturating_add(lowered);
                        // The old limits never bound the new version.
                        prop_assert!(ceiling(&e, &store).is_none());
                        e = Entity { version: e.version + 1, ..new };
                    }
                    Op::Roll => {
                        now = e.windows[0].reset_at.unwrap();
                        let next = now + chrono::Duration::days(1);
                        stale = store.clone();
                        let writes = roll(&e, &store, |_| Some(next));
                        prop_assert!(run(&mut store, &writes));
                        e.windows[0].reset_at = Some(next);
                        let in_flight = held.iter().fold(Money::ZERO, |a, (_, m)| a.saturating_add(*m));
                        debt = in_flight.saturating_sub(e.windows[0].max).max(Money::ZERO);
                        overrun = Money::ZERO;
                    }
                    Op::TopUp(k, st) => {
                        let read = if st { &stale } else { &store };
                        let (pool, shard) = (slot(read, SlotId::Pool).clone(), slot(read, SlotId::Shard(k)).clone());
                        if let Some(t) = top_up(&pool, &shard) {
                            run(&mut store, &t);
                        }
                    }
                    Op::Regather(st) => {
                        let read = if st { stale.clone() } else { store.clone() };
                        let writes = regather(&e, &read);
                        if !st && !writes.is_empty() {
                            prop_assert!(run(&mut store, &writes));
                        } else {
                            run(&mut store, &writes);
                        }
                    }
                }
                let total = totals(&e, &store).windows[0].clone();
                prop_assert_eq!(
                    total.avail.saturating_add(total.reserved).saturating_add(total.spent),
                    e.windows[0].max,
                    "{:?}", store
                );
                let in_flight = held.iter().fold(Money::ZERO, |a, (_, m)| a.saturating_add(*m));
                prop_assert_eq!(total.reserved, in_flight);
                let negative = store
                    .iter()
                    .map(|s| s.windows[0].avail.min(Money::ZERO))
                    .fold(Money::ZERO, |a, b| a.saturating_add(b));
                // A bound from slots read at different times (some as the
                // stale read saw them, some now) is never below what the
                // window holds now, while the bound still holds on a slot.
                let mixed: Vec<Entity> = store
                    .iter()
                    .enumerate()
                    .map(|(i, s)| match stale.iter().find(|x| x.entity == s.entity) {
                        Some(old) if i % 2 == 0 => old.clone(),
                        _ => s.clone(),
                    })
                    .collect();
                bounds.extend(ceiling(&e, &mixed));
                let held = total.avail.saturating_add(total.reserved);
                for c in &bounds {
                    if store.iter().all(|s| c.holds_on(s)) {
                        prop_assert!(held <= c.windows[0].bound, "{:?} over {:?}", total, c);
                    }
                }
                let parked = slot(&store, SlotId::Pool).windows[0].parked;
                prop_assert!(negative.negated() <= debt.saturating_add(parked), "{:?}", store);
            }
        }
    }

    #[test]
    fn in_debt_no_shard_admits_what_a_release_gives_back_until_the_debt_is_paid() {
        let usd = Money::usd;
        let (e, mut store) = team(4, 10);
        let (a, b) = (e.entity.at(SlotId::Shard(0)), e.entity.at(SlotId::Shard(1)));
        for to in [&a, &b] {
            let t = transfer(slot(&store, SlotId::Pool), to, usd(5)).unwrap();
            assert!(run(&mut store, &t));
            let r = reserve(&e, to.slot.unwrap(), usd(5), t0()).unwrap();
            assert!(run(&mut store, &[r]));
        }
        // $10 in flight; the limit lowered to $7: $3 of debt.
        let mut lowered = e.clone();
        lowered.windows[0].max = usd(7);
        let (writes, _) = admin_change(&e, &lowered, &store);
        assert!(run(&mut store, &writes));
        let e = Entity {
            version: e.version + 1,
            ..lowered
        };
        // Shard 1's reservation comes back unspent: $2 is left of $7 (the
        // $5 on shard 0 still in flight), so $5 must not be admitted on
        // shard 1 — nor, before the totals re-place it, anything at all.
        let mut release = EntityWrite {
            entity: b.clone(),
            guards: vec![],
            changes: vec![],
        };
        finish_window(
            &mut release,
            &slot(&store, SlotId::Shard(1)).windows[0],
            usd(5),
            Money::ZERO,
            t0(),
        );
        assert!(run(&mut store, &[release]));
        for x in [5, 2] {
            let r = reserve(&e, SlotId::Shard(1), usd(x), t0()).unwrap();
            assert!(!run(&mut store, &[r]), "${x} admitted in debt: {store:?}");
        }
        let pool = slot(&store, SlotId::Pool).clone();
        assert!(
            transfer(&pool, &b, usd(1)).is_none(),
            "the pool gives nothing in debt"
        );
        assert_eq!(totals(&e, &store).windows[0].avail, usd(2));
        // Re-placed on the totals: the $2 into the pool, shard 0 no longer
        // charged (its release may come back: $7 is the most it can be).
        let again = regather(&e, &store);
        assert!(run(&mut store, &again));
        assert!(!slot(&store, SlotId::Pool)
            .windows
            .iter()
            .any(|w| !w.parked.is_zero()));
        assert_eq!(slot(&store, SlotId::Pool).windows[0].avail, usd(2));
        let t = transfer(slot(&store, SlotId::Pool), &b, usd(2)).unwrap();
        assert!(run(&mut store, &t));
        let r = reserve(&e, SlotId::Shard(1), usd(2), t0()).unwrap();
        assert!(run(&mut store, &[r]), "the $2 left is admitted");
        assert!(regather(&e, &store).is_empty(), "nothing owes");
        let w = totals(&e, &store).windows[0].clone();
        assert_eq!(w.reserved, usd(7));
        assert_eq!(w.avail, Money::ZERO);
    }

    /// A guard on a counter the traffic moves being as read.
    fn counter_is(g: &Guard) -> bool {
        matches!(g, Guard::Is(_, c, _) if *c != Counter::Parked)
    }

    #[test]
    fn a_limit_change_on_a_busy_team_touches_only_the_pool_where_it_can() {
        let (e, mut store) = team(4, 10);
        // Read by the admin call; then the shards move (a refill and a
        // reservation), as they do on a busy team.
        let read = store.clone();
        let shard = e.entity.at(SlotId::Shard(1));
        let t = transfer(slot(&store, SlotId::Pool), &shard, Money::usd(2)).unwrap();
        assert!(run(&mut store, &t));
        let r = reserve(&e, SlotId::Shard(1), Money::usd(1), t0()).unwrap();
        assert!(run(&mut store, &[r]));
        let with_max = |max: i64| {
            let mut n = e.clone();
            n.windows[0].max = Money::usd(max);
            n
        };
        let sum = |store: &[Entity], e: &Entity| {
            let w = totals(e, store).windows[0].clone();
            w.avail.saturating_add(w.reserved).saturating_add(w.spent)
        };
        // Raised: the pool takes it; no slot needs to be as read.
        let (writes, create) = admin_change(&e, &with_max(15), &read);
        assert!(create.is_empty());
        assert!(writes.iter().all(|w| !w.guards.iter().any(counter_is)));
        assert!(
            run(&mut store, &writes),
            "committed over the shards' traffic"
        );
        let raised = Entity {
            version: e.version + 1,
            ..with_max(15)
        };
        assert_eq!(sum(&store, &raised), Money::usd(15));
        assert!(store.iter().all(|s| s.version == raised.version));
        // Lowered by what the pool holds (8 + 5 = 13 there): the pool alone.
        let read = store.clone();
        let (writes, _) = admin_change(&raised, &with_max(4), &read);
        assert!(writes.iter().all(|w| !w.guards.iter().any(counter_is)));
        assert!(run(&mut store, &writes));
        let lowered = Entity {
            version: raised.version + 1,
            ..with_max(4)
        };
        assert_eq!(sum(&store, &lowered), Money::usd(4));
        // Lowered by more than the pool holds (2): the full gathering.
        let (writes, _) = admin_change(&lowered, &with_max(1), &store);
        assert!(writes.iter().any(|w| w.guards.iter().any(counter_is)));
        assert!(run(&mut store, &writes));
        let last = Entity {
            version: lowered.version + 1,
            ..with_max(1)
        };
        assert_eq!(sum(&store, &last), Money::usd(1));
    }

    #[test]
    fn a_refill_takes_a_share_of_the_pool_and_never_more_than_it_has() {
        let usd = Money::usd;
        assert_eq!(refill_amount(usd(80), usd(1), usd(640), 4), Some(usd(10)));
        assert_eq!(refill_amount(usd(4), usd(1), usd(640), 4), Some(usd(4)));
        assert_eq!(refill_amount(usd(80), usd(20), usd(640), 4), Some(usd(20)));
        assert_eq!(refill_amount(usd(1), usd(2), usd(640), 4), None);
    }

    #[test]
    fn a_newly_sharded_entity_takes_what_it_has_left_into_the_pool() {
        let (mut e, _) = team(0, 10);
        e.windows[0].spent = Money::usd(3);
        e.windows[0].reserved = Money::usd(1);
        let new = Entity {
            shards: 2,
            shard_items: 2,
            ..e.clone()
        };
        let (writes, create) = admin_change(&e, &new, &[]);
        assert!(writes.is_empty());
        let ids: Vec<Option<SlotId>> = create.iter().map(|s| s.entity.slot).collect();
        assert_eq!(
            ids,
            [
                Some(SlotId::Pool),
                Some(SlotId::Shard(0)),
                Some(SlotId::Shard(1))
            ]
        );
        assert_eq!(create[0].windows[0].avail, Money::usd(6));
        assert_eq!(create[0].version, e.version + 1);
    }
}
