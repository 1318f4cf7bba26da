//! The request path and the job's part of sharded budgets (the rules are
//! `crate::escrow`): refill a dry shard from the pool, gather the shards'
//! headroom near the cap, deny on the totals, roll a sharded window over.
//! Each step is one transaction the rules make safe on any read; these
//! functions only choose the next step.

use chrono::{DateTime, Utc};

use crate::decision::{retry_after_seconds, Denial};
use crate::duration::ResetClock;
use crate::escrow;
use crate::model::{Chain, Entity, EntityRef, SlotId};
use crate::money::Money;
use crate::plan;
use crate::store::{BudgetStore, PlanWrite, StoreError};

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
}

/// One step for a request of `estimate` whose write found `slot` of
/// sharded `owner` (as known) short: refill the shard from the pool when
/// the pool covers it (one two-item transaction; a shard takes a slice of
/// the limit, so this happens about 16 times per shard over the budget's
/// life); else
/// read every slot in one isolated read and deny if the totals are below
/// the estimate, or borrow what the shard lacks from the slots with the
/// most headroom.
pub(super) async fn step<S: BudgetStore>(
    store: &S,
    owner: &Entity,
    slot: &EntityRef,
    estimate: Money,
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Result<Next, StoreError> {
    let asked = estimate;
    let estimate = escrow::need(estimate);
    let pool_ref = owner.entity.at(SlotId::Pool);
    let read = store.load_many(&[pool_ref.clone(), slot.clone()]).await?;
    let (Some(pool), Some(shard)) = (
        read.iter().find(|s| s.entity == pool_ref),
        read.iter().find(|s| &s.entity == slot),
    ) else {
        return Ok(Next::Reread);
    };
    if shard.version != owner.version || shard.incarnation != owner.incarnation {
        return Ok(Next::Reread);
    }
    if !escrow::same_periods(owner, shard) || !escrow::same_periods(owner, pool) {
        // The entity's item rolled over (lazily) and its slots did not yet.
        return Ok(match roll(store, &owner.entity, now, clock).await {
            Err(StoreError::Unavailable(_)) => Next::Busy,
            other => {
                other?;
                Next::Reread
            }
        });
    }
    if escrow::headroom(shard) >= estimate {
        return Ok(Next::Retry);
    }
    let limit = owner
        .windows
        .iter()
        .map(|w| w.max)
        .min()
        .unwrap_or(Money::ZERO);
    if let Some(amount) =
        escrow::refill_amount(escrow::headroom(pool), estimate, limit, owner.shards)
    {
        if let Some(writes) = escrow::transfer(pool, slot, amount) {
            return Ok(match store.write_all(&writes).await? {
                PlanWrite::Done | PlanWrite::Refused => Next::Retry,
                PlanWrite::Busy => Next::Busy,
            });
        }
    }
    // Near the cap: the totals decide, from one isolated read of all slots.
    // Still cancelled after the store's own tries (every slot busy): back
    // off and start over, rather than answer unavailable.
    let slots = match store.load_isolated(&escrow::slot_refs(owner)).await {
        Err(StoreError::Unavailable(_)) => return Ok(Next::Busy),
        read => read?,
    };
    let totals = escrow::totals(owner, &slots);
    if let Some(w) = totals.windows.iter().find(|w| w.avail < estimate) {
        return Ok(Next::Deny(Box::new(Denial {
            entity: owner.entity.clone(),
            span: w.span,
            max: w.max,
            spend: w.spent,
            reserved: w.reserved,
            reset_at: w.reset_at,
            retry_after: w.reset_at.map(|at| retry_after_seconds(at, now)),
            estimate: asked,
        })));
    }
    // Borrow what the shard lacks from the slots with the most headroom
    // (the fewest that cover it: usually one, a two-item transaction).
    let Some(writes) = escrow::borrow(&slots, slot, estimate) else {
        return Ok(Next::Retry);
    };
    Ok(match store.write_all(&writes).await? {
        PlanWrite::Done | PlanWrite::Refused => Next::Retry,
        PlanWrite::Busy => Next::Busy,
    })
}

/// The sharded entity of `chain` with a window past its boundary, if any:
/// its slots roll over (one transaction) before a request may use them.
pub(super) fn due(chain: &Chain, now: DateTime<Utc>) -> Option<&Entity> {
    chain
        .entities()
        .find(|e| escrow::is_sharded(e) && e.windows.iter().any(|w| w.is_due(now)))
}

/// Rolls over `entity`'s due windows on its item and all its slots, in one
/// transaction (read afresh first). `Ok(false)`: nothing was written
/// (someone else rolled, or it moved: read again).
pub async fn roll<S: BudgetStore>(
    store: &S,
    entity: &EntityRef,
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Result<bool, StoreError> {
    let Some(e) = store.load(entity).await? else {
        return Ok(false);
    };
    // Rolled already: at a boundary every request of a hot budget finds
    // it due, and all but the first stop here, at two reads, instead of
    // reading every slot and sending a transaction that can only be
    // refused. The slots roll together, so the pool in step with the item
    // means all of them are.
    if !e.windows.iter().any(|w| w.is_due(now)) {
        let pool = store.load(&e.entity.at(SlotId::Pool)).await?;
        if pool.is_some_and(|p| escrow::same_periods(&e, &p)) {
            return Ok(false);
        }
    }
    let slots = store.load_isolated(&escrow::slot_refs(&e)).await?;
    let mut writes = vec![plan::roll_over(&e, now, clock)];
    writes.extend(escrow::roll(&e, &slots, |w| w.reset_at_as_of(now, clock)));
    Ok(store.write_all(&writes).await? == PlanWrite::Done)
}
