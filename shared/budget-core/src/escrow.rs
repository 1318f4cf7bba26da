//! Escrow shards: one budget past one DynamoDB item (issue 11), as rules
//! on data, like `plan.rs`.
//!
//! A hot entity's windows are split over **slots**: a pool and N shards,
//! each its own item (its own partition key). Every window's part in a
//! slot is `{avail, reserved, spent}`, and for each window
//!
//! ```text
//!   Σ over all slots (avail + reserved + spent) = max_budget
//! ```
//!
//! after every write: a reservation moves `estimate` from `avail` to
//! `reserved` on one shard, and is admitted only if that shard's `avail`
//! covers it (`avail ≥ estimate` is the write's condition, so no
//! concurrency overspends); a settle moves the held amount out of
//! `reserved` into `spent` (the cost) and back to `avail` (what was not
//! used) on the shard that held; a transfer lowers the giver's `avail`
//! under the condition that it covers the amount and raises the taker's in
//! the same transaction, so a crash never creates budget; a roll-over
//! gives the new period's headroom (`max_budget − Σ reserved`) to the pool
//! and leaves every reservation in flight where it is. Only a settle that
//! costs more than it held can take a shard's `avail` below zero, exactly
//! as it takes a plain window past its limit today.
//!
//! What to do when (which shard a request uses, how much a refill moves,
//! when to collect) is policy, in the functions at the end; the guarantee
//! does not depend on it. `examples/hot_sim.rs` drives these rules under
//! DynamoDB's per-item write capacity.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::money::Money;

/// Which item of a sharded window set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotId {
    Pool,
    Shard(u32),
}

/// One window's part in one slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub avail: Money,
    pub reserved: Money,
    pub spent: Money,
    /// The boundary of the period the part counts in (`None`: lifetime).
    pub period: Option<DateTime<Utc>>,
    /// The window's generation (see `Window::generation`).
    pub generation: u64,
}

impl Part {
    pub fn empty(period: Option<DateTime<Utc>>, generation: u64) -> Part {
        Part {
            avail: Money::ZERO,
            reserved: Money::ZERO,
            spent: Money::ZERO,
            period,
            generation,
        }
    }

    /// `avail + reserved + spent`: what of the limit this part accounts for.
    pub fn total(&self) -> Money {
        self.avail
            .saturating_add(self.reserved)
            .saturating_add(self.spent)
    }
}

/// A slot as stored: each window's part, by window id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub id: SlotId,
    pub parts: BTreeMap<String, Part>,
}

/// What must hold in the stored slot for a write to happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotGuard {
    /// `avail ≥ amount` in the window's part.
    AvailAtLeast(String, Money),
    /// The part counts in this period (nobody rolled it meanwhile).
    PeriodIs(String, Option<DateTime<Utc>>),
    /// The part is of this generation of the window.
    Generation(String, u64),
    /// The part is exactly as read (a roll-over or collection computed
    /// from it).
    Is(String, Part),
}

/// What a write changes in one window's part of a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotChange {
    /// Adds each amount (negative to take away).
    Move {
        window: String,
        avail: Money,
        reserved: Money,
        spent: Money,
    },
    /// Replaces the part.
    Set(String, Part),
}

/// One conditional write to one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotWrite {
    pub slot: SlotId,
    pub guards: Vec<SlotGuard>,
    pub changes: Vec<SlotChange>,
}

/// Whether `guards` hold on `stored` (`None`: no such slot).
pub fn guards_hold(guards: &[SlotGuard], stored: Option<&Slot>) -> bool {
    let Some(slot) = stored else {
        return false;
    };
    guards.iter().all(|g| match g {
        SlotGuard::AvailAtLeast(w, m) => slot.parts.get(w).is_some_and(|p| p.avail >= *m),
        SlotGuard::PeriodIs(w, at) => slot.parts.get(w).is_some_and(|p| p.period == *at),
        SlotGuard::Generation(w, g) => slot.parts.get(w).is_some_and(|p| p.generation == *g),
        SlotGuard::Is(w, part) => slot.parts.get(w) == Some(part),
    })
}

/// Applies `changes` to `stored` (its guards held).
pub fn apply(changes: &[SlotChange], stored: &mut Slot) {
    for change in changes {
        match change {
            SlotChange::Move {
                window,
                avail,
                reserved,
                spent,
            } => {
                if let Some(p) = stored.parts.get_mut(window) {
                    p.avail = p.avail.saturating_add(*avail);
                    p.reserved = p.reserved.saturating_add(*reserved);
                    p.spent = p.spent.saturating_add(*spent);
                }
            }
            SlotChange::Set(window, part) => {
                stored.parts.insert(window.clone(), *part);
            }
        }
    }
}

/// The windows a reservation on a sharded entity takes part in: id,
/// current period, generation.
pub type Held = (String, Option<DateTime<Utc>>, u64);

/// Reserve `estimate` on `shard` in every window of `windows`: admitted
/// only where the shard's `avail` covers it, in the period the decision
/// was made for.
pub fn reserve(shard: SlotId, windows: &[Held], estimate: Money) -> SlotWrite {
    let mut w = SlotWrite {
        slot: shard,
        guards: Vec::new(),
        changes: Vec::new(),
    };
    for (id, period, generation) in windows {
        w.guards.push(SlotGuard::AvailAtLeast(id.clone(), estimate));
        w.guards.push(SlotGuard::PeriodIs(id.clone(), *period));
        w.guards
            .push(SlotGuard::Generation(id.clone(), *generation));
        w.changes.push(SlotChange::Move {
            window: id.clone(),
            avail: estimate.negated(),
            reserved: estimate,
            spent: Money::ZERO,
        });
    }
    w
}

/// End a reservation of `held` on `shard` at `cost` (`None`: released or
/// expired, nothing spent): the held amount leaves `reserved`, the cost
/// goes to `spent`, the rest back to `avail` — in whatever period the
/// part is in now (a roll-over carried the reservation into it).
pub fn finish(
    shard: SlotId,
    windows: &[(String, u64)],
    held: Money,
    cost: Option<Money>,
) -> SlotWrite {
    let cost = cost.unwrap_or(Money::ZERO);
    let mut w = SlotWrite {
        slot: shard,
        guards: Vec::new(),
        changes: Vec::new(),
    };
    for (id, generation) in windows {
        w.guards
            .push(SlotGuard::Generation(id.clone(), *generation));
        w.changes.push(SlotChange::Move {
            window: id.clone(),
            avail: held.saturating_sub(cost),
            reserved: held.negated(),
            spent: cost,
        });
    }
    w
}

/// Move `amounts` (by window) of `avail` from `from` (as read) to `to`:
/// the giver's write is conditional on covering each amount and both on
/// the period read, so the two writes — one transaction — never create
/// budget. `None` when `from` does not cover them as read.
pub fn transfer(from: &Slot, to: SlotId, amounts: &[(String, Money)]) -> Option<[SlotWrite; 2]> {
    let mut give = SlotWrite {
        slot: from.id,
        guards: Vec::new(),
        changes: Vec::new(),
    };
    let mut take = SlotWrite {
        slot: to,
        guards: Vec::new(),
        changes: Vec::new(),
    };
    for (id, amount) in amounts {
        let part = from.parts.get(id)?;
        if part.avail < *amount || *amount < Money::ZERO {
            return None;
        }
        give.guards
            .push(SlotGuard::AvailAtLeast(id.clone(), *amount));
        give.guards
            .push(SlotGuard::PeriodIs(id.clone(), part.period));
        take.guards
            .push(SlotGuard::PeriodIs(id.clone(), part.period));
        give.changes.push(SlotChange::Move {
            window: id.clone(),
            avail: amount.negated(),
            reserved: Money::ZERO,
            spent: Money::ZERO,
        });
        take.changes.push(SlotChange::Move {
            window: id.clone(),
            avail: *amount,
            reserved: Money::ZERO,
            spent: Money::ZERO,
        });
    }
    Some([give, take])
}

/// Every shard's `avail` of `window` back to the pool, `extra` added to it
/// (a raised limit; negative for a lowered one): one transaction over all
/// slots (as read), each conditional on its part being as read. `slots`
/// holds the pool and every shard.
pub fn collect(slots: &[Slot], window: &str, extra: Money) -> Vec<SlotWrite> {
    let mut gathered = extra;
    let mut writes = Vec::new();
    for s in slots.iter().filter(|s| s.id != SlotId::Pool) {
        let Some(part) = s.parts.get(window) else {
            continue;
        };
        gathered = gathered.saturating_add(part.avail);
        writes.push(SlotWrite {
            slot: s.id,
            guards: vec![SlotGuard::Is(window.to_string(), *part)],
            changes: vec![SlotChange::Set(
                window.to_string(),
                Part {
                    avail: Money::ZERO,
                    ..*part
                },
            )],
        });
    }
    if let Some(pool) = slots.iter().find(|s| s.id == SlotId::Pool) {
        if let Some(part) = pool.parts.get(window) {
            writes.push(SlotWrite {
                slot: SlotId::Pool,
                guards: vec![SlotGuard::Is(window.to_string(), *part)],
                changes: vec![SlotChange::Set(
                    window.to_string(),
                    Part {
                        avail: part.avail.saturating_add(gathered),
                        ..*part
                    },
                )],
            });
        }
    }
    writes
}

/// The roll-over of `window` (limit `max`) into the period ending at
/// `next`: the period's spend goes, reservations in flight stay on their
/// shard, shards keep no headroom, and the pool gets `max − Σ reserved`.
/// One transaction over all slots (as read).
pub fn roll(
    slots: &[Slot],
    window: &str,
    max: Money,
    next: Option<DateTime<Utc>>,
) -> Vec<SlotWrite> {
    let reserved: Money = slots
        .iter()
        .filter_map(|s| s.parts.get(window))
        .fold(Money::ZERO, |a, p| a.saturating_add(p.reserved));
    slots
        .iter()
        .filter_map(|s| {
            let part = s.parts.get(window)?;
            let avail = if s.id == SlotId::Pool {
                max.saturating_sub(reserved)
            } else {
                Money::ZERO
            };
            Some(SlotWrite {
                slot: s.id,
                guards: vec![SlotGuard::Is(window.to_string(), *part)],
                changes: vec![SlotChange::Set(
                    window.to_string(),
                    Part {
                        avail,
                        reserved: part.reserved,
                        spent: Money::ZERO,
                        period: next,
                        generation: part.generation,
                    },
                )],
            })
        })
        .collect()
}

/// One window over all slots: the entity's figures (`/…/info` shows these).
pub fn totals(slots: &[Slot], window: &str) -> Option<Part> {
    let mut parts = slots.iter().filter_map(|s| s.parts.get(window));
    let first = *parts.next()?;
    Some(parts.fold(first, |a, p| Part {
        avail: a.avail.saturating_add(p.avail),
        reserved: a.reserved.saturating_add(p.reserved),
        spent: a.spent.saturating_add(p.spent),
        ..a
    }))
}

// ---- policy: nothing below affects exactness ----

/// The shard a request uses: spread by its reservation id, so retries of
/// one request land on the same shard.
pub fn shard_for(reservation_id: &str, shards: u32) -> SlotId {
    let h = reservation_id
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    SlotId::Shard(h % shards.max(1))
}

/// How much a dry shard takes from the pool: at least what the request
/// needs, normally a share of the pool (so a shard refills about once per
/// `2 × shards`-th of the pool it spends, a second or two at a steady
/// rate), never more than the pool has. `None`: the pool cannot cover the
/// request (borrow from other shards, or deny).
pub fn refill_amount(pool_avail: Money, need: Money, shards: u32) -> Option<Money> {
    if pool_avail < need {
        return None;
    }
    let share = Money::from_nanos(pool_avail.nanos() / (2 * i64::from(shards.max(1))));
    Some(share.max(need).min(pool_avail))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn slots(n: u32, max: Money) -> Vec<Slot> {
        let mut out = vec![Slot {
            id: SlotId::Pool,
            parts: BTreeMap::from([(
                "1d".to_string(),
                Part {
                    avail: max,
                    ..Part::empty(None, 1)
                },
            )]),
        }];
        for k in 0..n {
            out.push(Slot {
                id: SlotId::Shard(k),
                parts: BTreeMap::from([("1d".to_string(), Part::empty(None, 1))]),
            });
        }
        out
    }

    /// Runs `writes` as one transaction: all guards hold, then all apply.
    fn run(store: &mut [Slot], writes: &[SlotWrite]) -> bool {
        let ok = writes
            .iter()
            .all(|w| guards_hold(&w.guards, store.iter().find(|s| s.id == w.slot)));
        if ok {
            for w in writes {
                if let Some(s) = store.iter_mut().find(|s| s.id == w.slot) {
                    apply(&w.changes, s);
                }
            }
        }
        ok
    }

    #[derive(Debug, Clone)]
    enum Op {
        Reserve(u32, i64),
        Settle(usize, i64),
        Refill(u32, i64),
        Borrow(u32, u32, i64),
        Collect(i64),
        Roll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..4, 0i64..4).prop_map(|(s, e)| Op::Reserve(s, e)),
            (0usize..8, 0i64..5).prop_map(|(i, c)| Op::Settle(i, c)),
            (0u32..4, 0i64..6).prop_map(|(s, x)| Op::Refill(s, x)),
            (0u32..4, 0u32..4, 0i64..3).prop_map(|(a, b, x)| Op::Borrow(a, b, x)),
            (-2i64..3).prop_map(Op::Collect),
            Just(Op::Roll),
        ]
    }

    proptest! {
        /// Whatever runs in whatever order — reservations, settles (also
        /// over what they held), refills, borrows, collections with a
        /// changed limit, roll-overs, each read possibly stale — the slots
        /// always account for the limit exactly, and no `avail` is taken
        /// below zero except by a settle that cost more than it held.
        #[test]
        fn the_slots_always_account_for_the_limit(ops in proptest::collection::vec(op(), 1..60)) {
            let mut max = Money::usd(10);
            let mut store = slots(4, max);
            // What a slow reader saw: the slots as of the last roll-over
            // or collection.
            let mut stale = store.clone();
            let mut held: Vec<(SlotId, Money)> = Vec::new();
            let mut overrun = Money::ZERO;
            // What lowered limits took from the pool since the last roll.
            let mut lowered = Money::ZERO;
            for op in ops {
                match op {
                    Op::Reserve(s, e) => {
                        let e = Money::usd(e);
                        let period = store[0].parts["1d"].period;
                        let w = reserve(SlotId::Shard(s), &[("1d".into(), period, 1)], e);
                        let before = store.iter().find(|x| x.id == SlotId::Shard(s)).unwrap().parts["1d"].avail;
                        if run(&mut store, &[w]) {
                            prop_assert!(before >= e);
                            held.push((SlotId::Shard(s), e));
                        }
                    }
                    Op::Settle(i, c) => {
                        if i < held.len() {
                            let (slot, amount) = held.remove(i);
                            let cost = Money::usd(c);
                            overrun = overrun.saturating_add(cost.saturating_sub(amount).max(Money::ZERO));
                            prop_assert!(run(&mut store, &[finish(slot, &[("1d".into(), 1)], amount, Some(cost))]));
                        }
                    }
                    Op::Refill(s, x) => {
                        // From a stale read sometimes: the guards decide.
                        let pool = if x % 2 == 0 { stale[0].clone() } else { store[0].clone() };
                        let x = x / 2 * 2 + 1;
                        if let Some(t) = transfer(&pool, SlotId::Shard(s), &[("1d".into(), Money::usd(x))]) {
                            run(&mut store, &t);
                        }
                    }
                    Op::Borrow(a, b, x) => {
                        let read = if x % 2 == 0 { &stale } else { &store };
                        let from = read.iter().find(|s| s.id == SlotId::Shard(a)).unwrap().clone();
                        if let Some(t) = transfer(&from, SlotId::Shard(b), &[("1d".into(), Money::usd(x))]) {
                            if a != b {
                                run(&mut store, &t);
                            }
                        }
                    }
                    Op::Collect(d) => {
                        let snapshot = store.clone();
                        stale = snapshot.clone();
                        if run(&mut store, &collect(&snapshot, "1d", Money::usd(d))) {
                            max = max.saturating_add(Money::usd(d));
                            lowered = lowered.saturating_add(Money::usd(d).negated().max(Money::ZERO));
                        }
                    }
                    Op::Roll => {
                        let snapshot = store.clone();
                        let next = Some(chrono::DateTime::<Utc>::from_timestamp(86_400 * (held.len() as i64 + 1), 0).unwrap());
                        stale = snapshot.clone();
                        prop_assert!(run(&mut store, &roll(&snapshot, "1d", max, next)));
                        overrun = Money::ZERO;
                        lowered = in_flight_of(&held).saturating_sub(max).max(Money::ZERO);
                    }
                }
                let total = totals(&store, "1d").unwrap();
                prop_assert_eq!(total.total(), max, "{:?}", store);
                // Below zero only by overruns (cumulative within the period;
                // a collection may move a shard's debt to the pool) and by
                // lowered limits: no transfer ever gives away what is not
                // there.
                let negative = store
                    .iter()
                    .map(|s| s.parts["1d"].avail.min(Money::ZERO))
                    .fold(Money::ZERO, |a, b| a.saturating_add(b));
                prop_assert!(negative.negated() <= overrun.saturating_add(lowered), "{:?}", store);
                let in_flight = held.iter().fold(Money::ZERO, |a, (_, m)| a.saturating_add(*m));
                prop_assert_eq!(total.reserved, in_flight);
            }
        }
    }

    fn in_flight_of(held: &[(SlotId, Money)]) -> Money {
        held.iter()
            .fold(Money::ZERO, |a, (_, m)| a.saturating_add(*m))
    }

    #[test]
    fn a_refill_takes_a_share_of_the_pool_and_never_more_than_it_has() {
        let usd = Money::usd;
        assert_eq!(refill_amount(usd(80), usd(1), 4), Some(usd(10)));
        assert_eq!(refill_amount(usd(4), usd(1), 4), Some(usd(1)));
        assert_eq!(refill_amount(usd(1), usd(2), 4), None);
        assert_eq!(refill_amount(usd(2), usd(2), 64), Some(usd(2)));
        assert_eq!(shard_for("r-1", 8), shard_for("r-1", 8));
    }
}
