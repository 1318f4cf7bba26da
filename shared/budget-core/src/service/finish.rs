//! Settle, release and expire: end a reservation once, whatever is
//! delivered twice.

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::model::{Entity, EntityRef, Reservation, ReservationState};
use crate::money::Money;
use crate::store::{BudgetStore, Finish, FinishWrite, StoreError};

use super::stats::{retried, store_call};
use super::{backoff, MAX_ATTEMPTS};

/// What settle/release answered.
#[derive(Debug, Clone, PartialEq)]
pub enum SettleOutcome {
    Settled {
        reservation: Box<Reservation>,
        duplicate: bool,
    },
    NotFound,
}

/// Settles (cost) or releases (cost 0) a reservation, once: a repeat
/// returns the first result with `duplicate`.
pub async fn settle<S: BudgetStore>(
    store: &S,
    id: &str,
    cost: Money,
    now: DateTime<Utc>,
    settings: &Settings,
) -> Result<SettleOutcome, StoreError> {
    let already = |r: &Reservation| r.state == ReservationState::Settled;
    Ok(
        match finish_once(store, id, Finish::Settle(cost), already, now, settings).await? {
            Finished::NotFound => SettleOutcome::NotFound,
            Finished::Skipped(reservation) => SettleOutcome::Settled {
                reservation: Box::new(reservation),
                duplicate: true,
            },
            Finished::Done(reservation) => {
                top_up_shards(store, &reservation).await;
                SettleOutcome::Settled {
                    reservation: Box::new(Reservation {
                        state: ReservationState::Settled,
                        cost: Some(cost),
                        settled_at: Some(now),
                        ..reservation
                    }),
                    duplicate: false,
                }
            }
        },
    )
}

/// The shards `reservation` held on, topped up when low (`escrow::top_up`):
/// best effort — the settle is done whatever this finds; a shard left low
/// is refilled by the next request that finds it dry.
async fn top_up_shards<S: BudgetStore>(store: &S, reservation: &Reservation) {
    let mut slots: Vec<&EntityRef> = reservation
        .holds
        .iter()
        .map(|h| &h.entity)
        .filter(|e| matches!(e.slot, Some(crate::model::SlotId::Shard(_))))
        .collect();
    slots.sort();
    slots.dedup();
    for slot in slots {
        let _ = store_call(super::escrow::top_up(store, slot)).await;
    }
}

/// Releases one expired reservation (reset job). `true` when this call
/// released it.
pub async fn expire<S: BudgetStore>(
    store: &S,
    id: &str,
    now: DateTime<Utc>,
    settings: &Settings,
) -> Result<bool, StoreError> {
    let not_due = |r: &Reservation| r.state != ReservationState::Held || r.expires_at > now;
    Ok(matches!(
        finish_once(store, id, Finish::Expire, not_due, now, settings).await?,
        Finished::Done(_)
    ))
}

enum Finished {
    NotFound,
    /// `skip` said there is nothing to do (as read).
    Skipped(Reservation),
    /// This call wrote it (the reservation as it was before).
    Done(Reservation),
}

/// Ends a reservation unless `skip` says otherwise: from a fresh read of
/// the entities whenever the write's conditions find that something moved
/// (`Stale`), after a jittered pause when another transaction held an item
/// or DynamoDB throttled one (`Busy`: nothing moved that we know of).
async fn finish_once<S: BudgetStore>(
    store: &S,
    id: &str,
    finish: Finish,
    skip: impl Fn(&Reservation) -> bool,
    now: DateTime<Utc>,
    settings: &Settings,
) -> Result<Finished, StoreError> {
    // With a receipt: one write, no read (conditional on the receipt's
    // digest and on the reservation still being held).
    let mut busy = 0;
    if let Some(from_receipt) = crate::receipt::from_receipt(id, now) {
        if !skip(&from_receipt) {
            match store_call(store.finish(&from_receipt, None, finish, now, &settings.clock))
                .await?
            {
                FinishWrite::Done => return Ok(Finished::Done(from_receipt)),
                FinishWrite::Busy => {
                    backoff(busy).await;
                    busy += 1;
                }
                // Not as the receipt says (finished, or a window moved):
                // read the reservation.
                FinishWrite::Stale => {}
            }
        }
    }
    let id = crate::receipt::base_id(id);
    // First: no read of the entities (one request less); once a window
    // moved or was removed, read them before every write.
    let mut read_entities = false;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 || busy > 0 {
            retried();
        }
        // Read every time: a transaction that held us up may have been a
        // second delivery of this same settle, which finished it.
        let Some(reservation) = store_call(store.reservation(id)).await? else {
            return Ok(Finished::NotFound);
        };
        if skip(&reservation) {
            return Ok(Finished::Skipped(reservation));
        }
        let entities = if read_entities {
            let held = held_entities(&reservation);
            let mut read = store_call(store.load_many(&held)).await?;
            let due = due_owners(&read, finish, now);
            if !due.is_empty() {
                // A cost belongs to the period current now: the slots past
                // their boundary roll over first (`escrow::finish_window`).
                // A roll kept from its write by traffic backs off: the
                // settle's write would only fail its period guard.
                let mut rolled = true;
                for owner in &due {
                    let roll = super::escrow::roll(store, owner, now, &settings.clock);
                    rolled &= store_call(roll).await? != super::escrow::Rolled::Busy;
                }
                if !rolled {
                    backoff(busy).await;
                    busy += 1;
                    continue;
                }
                read = store_call(store.load_many(&held)).await?;
            }
            Some(read)
        } else {
            None
        };
        let write = store.finish(
            &reservation,
            entities.as_deref(),
            finish,
            now,
            &settings.clock,
        );
        match store_call(write).await? {
            FinishWrite::Done => return Ok(Finished::Done(reservation)),
            FinishWrite::Stale => read_entities = true,
            FinishWrite::Busy => {
                backoff(busy).await;
                busy += 1;
            }
        }
    }
    Err(StoreError::Unavailable(
        "reservation kept moving; try again".into(),
    ))
}

/// The owners of the escrow slots in `read` that are past a boundary, when
/// `finish` has a cost to charge: they roll over before it is written.
fn due_owners(read: &[Entity], finish: Finish, now: DateTime<Utc>) -> Vec<EntityRef> {
    if !matches!(finish, Finish::Settle(c) if !c.is_zero()) {
        return Vec::new();
    }
    let mut owners: Vec<EntityRef> = read
        .iter()
        .filter(|e| e.entity.slot.is_some() && e.windows.iter().any(|w| w.is_due(now)))
        .map(|e| e.entity.owner())
        .collect();
    owners.sort();
    owners.dedup();
    owners
}

fn held_entities(r: &Reservation) -> Vec<EntityRef> {
    let mut refs: Vec<EntityRef> = r.holds.iter().map(|h| h.entity.clone()).collect();
    refs.sort();
    refs.dedup();
    refs
}
