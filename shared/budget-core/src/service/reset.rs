//! The reset job: release expired reservations, roll over due windows,
//! then give idle shards' headroom back to their pool — each found
//! through an index (of what is due, of sharded entities), never a scan.

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::duration::ResetClock;
use crate::model::Entity;
use crate::money::Money;
use crate::store::{PlanWrite, ResetStore};

use super::escrow::Rolled;
use super::{expire, MAX_ATTEMPTS};

/// What one run of the reset job did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResetSummary {
    pub windows_reset: usize,
    pub reservations_released: usize,
    /// Entities the index of what is due listed (each is read, then
    /// rolled or its entry corrected).
    pub entities_due: usize,
    /// Windows another writer rolled between our read and our write.
    pub already_rolled: usize,
    /// The run reached `RESET_DEADLINE_MS` and stopped starting new work;
    /// the next run continues where it stopped (the indexes still list
    /// what is left).
    pub stopped_at_deadline: bool,
    /// Expired reservations this run listed but did not release (the
    /// backlog), and how long the oldest of them has been expired.
    pub backlog_reservations: usize,
    pub oldest_expired_seconds: Option<i64>,
    /// Sharded entities visited for idle shards (at most
    /// [`SHARDED_PER_RUN`]), shards whose headroom went back to the pool,
    /// how much in all (summed over shards, each the same in every window),
    /// and idle shards whose transfer was refused or busy (a request or
    /// settle touched them meanwhile: the next run looks again).
    pub sharded_visited: usize,
    pub shards_returned: usize,
    pub headroom_returned: Money,
    pub shards_not_returned: usize,
    pub errors: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
}

/// Releases expired reservations, then rolls over every due window, then
/// gives the headroom of idle shards back to their pool. All are found
/// through indexes (held reservations by expiry, entities by their
/// earliest boundary, sharded entities by their pool), so one run reads
/// what is due and the sharded entities, not the table. Releases come
/// first: a held reservation that is never released shrinks its windows
/// for good, while a window not rolled is only late (authorize and settle
/// roll it themselves when they meet it), and a shard not shrunk only
/// makes the others borrow sooner near the cap.
/// Safe to run twice at once and alongside authorize and settle: every
/// write is conditional on what was read.
pub async fn reset<S: ResetStore>(
    store: &S,
    now: DateTime<Utc>,
    settings: &Settings,
) -> ResetSummary {
    let mut summary = ResetSummary {
        started_at: crate::decision::rfc3339(now),
        ..ResetSummary::default()
    };
    let deadline = Deadline(
        std::time::Instant::now() + std::time::Duration::from_millis(settings.reset_deadline_ms),
    );
    release_expired(store, now, settings, &deadline, &mut summary).await;
    if !deadline.passed(&mut summary) {
        roll_due(store, now, settings, &deadline, &mut summary).await;
    }
    if !deadline.passed(&mut summary) {
        shrink_idle(store, now, &deadline, &mut summary).await;
    }
    summary.finished_at = crate::decision::rfc3339(Utc::now().max(now));
    summary
}

/// When the run stops starting new work.
struct Deadline(std::time::Instant);

impl Deadline {
    /// Past it? (Records it in the summary.)
    fn passed(&self, summary: &mut ResetSummary) -> bool {
        if std::time::Instant::now() >= self.0 {
            summary.stopped_at_deadline = true;
        }
        summary.stopped_at_deadline
    }
}

/// Releases held reservations past their expiry, in batches from the
/// `held` index, until the deadline; what is left is the backlog.
async fn release_expired<S: ResetStore>(
    store: &S,
    now: DateTime<Utc>,
    settings: &Settings,
    deadline: &Deadline,
    summary: &mut ResetSummary,
) {
    const BATCH: usize = 500;
    const BATCHES: usize = 100;
    for _ in 0..BATCHES {
        let batch = match store.expired_reservations(now, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                summary
                    .errors
                    .push(format!("expired reservations not listed: {e}"));
                return;
            }
        };
        let mut released_now = 0;
        for (i, (id, _)) in batch.iter().enumerate() {
            if deadline.passed(summary) {
                let left = &batch[i..];
                summary.backlog_reservations = left.len();
                summary.oldest_expired_seconds =
                    left.iter().map(|(_, at)| (now - *at).num_seconds()).max();
                summary.reservations_released += released_now;
                return;
            }
            match expire(store, id, now, settings).await {
                Ok(true) => released_now += 1,
                Ok(false) => {}
                Err(e) => summary
                    .errors
                    .push(format!("reservation {id}: not released: {e}")),
            }
        }
        summary.reservations_released += released_now;
        if batch.len() < BATCH || released_now == 0 {
            return;
        }
    }
    summary.errors.push(format!(
        "more than {} expired reservations: the rest are left to the next run",
        BATCH * BATCHES
    ));
}

/// The most entities one run rolls over; the rest stay in the index for
/// the next run.
const DUE_PER_RUN: usize = 5_000;

/// Rolls over the entities the `due` index lists at `now` (one pass).
async fn roll_due<S: ResetStore>(
    store: &S,
    now: DateTime<Utc>,
    settings: &Settings,
    deadline: &Deadline,
    summary: &mut ResetSummary,
) {
    let due = match store.due_entities(now, DUE_PER_RUN).await {
        Ok(d) => d,
        Err(e) => {
            summary.errors.push(format!(
                "due entities not listed, windows left unrolled: {e}"
            ));
            return;
        }
    };
    summary.entities_due += due.len();
    for entity in due {
        if deadline.passed(summary) {
            return;
        }
        roll_one(store, entity, now, &settings.clock, summary).await;
    }
    if summary.entities_due >= DUE_PER_RUN {
        summary.errors.push(format!(
            "{DUE_PER_RUN} or more entities due: the rest are left to the next run"
        ));
    }
}

/// Rolls one entity (as read), re-reading it when another writer moved it.
async fn roll_one<S: ResetStore>(
    store: &S,
    entity: Entity,
    now: DateTime<Utc>,
    clock: &ResetClock,
    summary: &mut ResetSummary,
) {
    let name = format!("{} {}", entity.entity.kind, entity.entity.display_id());
    if crate::escrow::is_sharded(&entity) {
        // Its slots roll with it, in one transaction.
        let due = entity.windows.iter().filter(|w| w.is_due(now)).count();
        for attempt in 0..MAX_ATTEMPTS {
            match super::escrow::roll(store, &entity.entity, now, clock).await {
                Ok(Rolled::Done) => {
                    summary.windows_reset += due;
                    return;
                }
                // A request rolled it first (at the boundary, it usually does).
                Ok(Rolled::Already) => {
                    summary.already_rolled += due;
                    return;
                }
                Ok(Rolled::Busy) => super::backoff(attempt).await,
                Err(e) => return not_rolled(summary, &name, e),
            }
        }
        return not_rolled(
            summary,
            &name,
            format_args!("it kept moving ({MAX_ATTEMPTS} attempts)"),
        );
    }
    let mut current = entity;
    for _ in 0..MAX_ATTEMPTS {
        match store.roll_over(&current, now, clock).await {
            Ok(Some(n)) => {
                summary.windows_reset += n;
                return;
            }
            Ok(None) => {
                let due_before = current.windows.iter().filter(|w| w.is_due(now)).count();
                match store.load(&current.entity).await {
                    Ok(Some(e)) => {
                        let due_now = e.windows.iter().filter(|w| w.is_due(now)).count();
                        summary.already_rolled += due_before.saturating_sub(due_now);
                        current = e;
                    }
                    Ok(None) => return,
                    Err(e) => return not_rolled(summary, &name, e),
                }
            }
            Err(e) => return not_rolled(summary, &name, e),
        }
    }
    not_rolled(
        summary,
        &name,
        format_args!("it kept moving ({MAX_ATTEMPTS} attempts)"),
    );
}

/// The most sharded entities one run visits for idle shards; with more,
/// each run takes the next [`SHARDED_PER_RUN`] of them in turn (so an
/// entity's previous visit is that many runs back).
pub const SHARDED_PER_RUN: usize = 100;

/// The most sharded entities one run lists from the index.
const SHARDED_LISTED: usize = 10_000;

/// Gives back to the pool the headroom of every shard that sat idle since
/// the previous visit (`escrow::idle_returns`): a shard a burst filled (or
/// settles refilled) and that no request has used since holds budget the
/// busy shards then have to borrow near the cap. One isolated two-item
/// transfer per idle shard, conditional on the shard's headroom as read;
/// one write of the visit's record on the pool, only when it changed.
async fn shrink_idle<S: ResetStore>(
    store: &S,
    now: DateTime<Utc>,
    deadline: &Deadline,
    summary: &mut ResetSummary,
) {
    let listed = match store.sharded_entities(SHARDED_LISTED).await {
        Ok(l) => l,
        Err(e) => {
            summary.errors.push(format!(
                "sharded entities not listed, idle shards not shrunk: {e}"
            ));
            return;
        }
    };
    if listed.is_empty() {
        return;
    }
    // This run's turn of them: all when there are few; else a group picked
    // by a hash of the run's time (whatever the schedule's period, every
    // group comes up: a turn by minute would skip some under a schedule of
    // several minutes).
    let turn = if listed.len() <= SHARDED_PER_RUN {
        listed
    } else {
        let mut x = now.timestamp() as u64 ^ 0x9e37_79b9_7f4a_7c15;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        let groups = listed.len().div_ceil(SHARDED_PER_RUN);
        let start = (x % groups as u64) as usize * SHARDED_PER_RUN;
        listed
            .into_iter()
            .skip(start)
            .take(SHARDED_PER_RUN)
            .collect()
    };
    let visits = match store.visit_sharded(&turn).await {
        Ok(v) => v,
        Err(e) => {
            summary.errors.push(format!(
                "sharded entities not read, idle shards not shrunk: {e}"
            ));
            return;
        }
    };
    for visit in visits {
        if deadline.passed(summary) {
            return;
        }
        summary.sharded_visited += 1;
        let name = format!(
            "{} {}",
            visit.entity.entity.kind,
            visit.entity.entity.display_id()
        );
        let mut after = visit.slots.clone();
        for back in
            crate::escrow::idle_returns(&visit.entity, &visit.slots, visit.seen.as_deref(), now)
        {
            match store.write_all(&back.writes).await {
                Ok(PlanWrite::Done) => {
                    summary.shards_returned += 1;
                    summary.headroom_returned =
                        summary.headroom_returned.saturating_add(back.amount);
                    // The record holds the shard as this transfer left it.
                    for w in &back.writes {
                        if let Some(s) = after.iter_mut().find(|s| s.entity == w.entity) {
                            crate::plan::apply(&w.changes, s);
                        }
                    }
                }
                Ok(PlanWrite::Refused | PlanWrite::Busy) => summary.shards_not_returned += 1,
                Err(e) => {
                    summary.shards_not_returned += 1;
                    summary
                        .errors
                        .push(format!("{name}: idle shard not shrunk: {e}"));
                }
            }
        }
        let record = crate::escrow::visit_record(&after);
        if visit.seen.as_deref() == Some(record.as_str()) {
            continue;
        }
        let Some(pool) = after
            .iter()
            .find(|s| s.entity.slot == Some(crate::model::SlotId::Pool))
        else {
            continue;
        };
        if let Err(e) = store.record_visit(pool, &record).await {
            summary
                .errors
                .push(format!("{name}: visit not recorded: {e}"));
        }
    }
}

/// The error line of an entity the job could not roll.
fn not_rolled(summary: &mut ResetSummary, name: &str, why: impl std::fmt::Display) {
    summary
        .errors
        .push(format!("{name}: windows not rolled: {why}"));
}

#[cfg(test)]
mod tests {
    //! The job over the memory store (which keeps the `due` index as the
    //! plans set it): it reads what is due, and every write keeps the
    //! index right.

    use super::*;
    use crate::model::{EntityRef, Span, Window};
    use crate::money::Money;
    use crate::plan;
    use crate::store::memory::MemoryStore;
    use crate::store::{AdminStore, AdminWrite};
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap()
    }

    fn settings() -> Settings {
        Settings::from_lookup(|k| (k == "TABLE_NAME").then(|| "t".to_string())).unwrap()
    }

    fn user(id: &str, spans: &[&str]) -> Entity {
        let mut e = Entity::new(EntityRef::user(id), now());
        for s in spans {
            e.windows.push(Window::open(
                Span::parse_id(s).unwrap(),
                Money::usd(10),
                false,
                now(),
                &settings().clock,
            ));
        }
        e
    }

    #[tokio::test]
    async fn the_job_reads_only_what_is_due_and_moves_the_entry() {
        let store = MemoryStore::new();
        let due = user("due", &["1h", "30d"]);
        assert_eq!(store.create(&due).await.unwrap(), AdminWrite::Done);
        for i in 0..100 {
            let idle = user(&format!("idle-{i}"), &[["30d", "lifetime"][i % 2]]);
            assert_eq!(store.create(&idle).await.unwrap(), AdminWrite::Done);
        }
        assert_eq!(
            store.next_due(&due.entity),
            due.windows.iter().filter_map(|w| w.reset_at).min()
        );
        assert_eq!(store.next_due(&EntityRef::user("idle-1")), None);

        let later = now() + chrono::Duration::hours(2);
        let first = reset(&store, later, &settings()).await;
        assert!(first.errors.is_empty(), "{first:?}");
        assert_eq!((first.entities_due, first.windows_reset), (1, 1));
        let stored = store.entity(&due.entity).unwrap();
        assert_eq!(store.next_due(&due.entity), plan::next_due(&stored));
        assert!(store.next_due(&due.entity).unwrap() > later);

        let second = reset(&store, later, &settings()).await;
        assert_eq!((second.entities_due, second.windows_reset), (0, 0));

        // An admin update that opens an hourly window on a lifetime-only
        // user puts it in the index.
        let old = store.entity(&EntityRef::user("idle-1")).unwrap();
        let mut new = old.clone();
        new.windows.push(Window::open(
            Span::parse_id("1h").unwrap(),
            Money::usd(1),
            false,
            later,
            &settings().clock,
        ));
        assert_eq!(store.update(&old, &new).await.unwrap(), AdminWrite::Done);
        assert_eq!(
            store.next_due(&old.entity),
            Some(
                Span::parse_id("1h")
                    .unwrap()
                    .next_reset(later, &settings().clock)
                    .unwrap()
            )
        );
        let much_later = later + chrono::Duration::hours(2);
        let third = reset(&store, much_later, &settings()).await;
        assert_eq!(third.entities_due, 2, "{third:?}");
        assert_eq!(third.windows_reset, 2, "{third:?}");
    }

    #[tokio::test]
    async fn a_run_stopped_at_its_deadline_reports_the_backlog_and_the_next_run_drains_it() {
        use crate::service::Authorizer;
        let store = MemoryStore::new();
        let u = user("u-backlog", &["1d"]);
        assert_eq!(store.create(&u).await.unwrap(), AdminWrite::Done);
        let key = crate::keys::generate_key();
        let mut k = Entity::new(EntityRef::key(crate::keys::hash_key(&key)), now());
        k.user_id = Some("u-backlog".into());
        assert_eq!(store.create(&k).await.unwrap(), AdminWrite::Done);
        let a = Authorizer::new(store.clone(), settings());
        for _ in 0..3 {
            let r = a.authorize(&key, Money::usd(1), None, now()).await;
            assert!(
                matches!(r, crate::service::AuthorizeOutcome::Allowed { .. }),
                "{r:?}"
            );
        }
        // 15 minutes (the TTL) and 10 seconds later, all three are expired.
        let later = now() + chrono::Duration::seconds(settings().reservation_ttl_seconds + 10);
        let mut summary = ResetSummary::default();
        let past = Deadline(std::time::Instant::now());
        release_expired(&store, later, &settings(), &past, &mut summary).await;
        assert!(summary.stopped_at_deadline);
        assert_eq!(summary.reservations_released, 0);
        assert_eq!(summary.backlog_reservations, 3);
        assert_eq!(summary.oldest_expired_seconds, Some(10));
        assert_eq!(
            store.entity(&u.entity).unwrap().windows[0].reserved,
            Money::usd(3)
        );
        // The next run (with time to spare) continues where it stopped.
        let next = reset(&store, later, &settings()).await;
        assert!(!next.stopped_at_deadline);
        assert_eq!(
            (next.reservations_released, next.backlog_reservations),
            (3, 0)
        );
        assert_eq!(
            store.entity(&u.entity).unwrap().windows[0].reserved,
            Money::ZERO
        );
    }

    /// A team of 4 shards with a 1d window of $100 and a key of it, a
    /// burst of `n` $1 requests each settled at $0.25 (the rest back on
    /// the shard that held): returns the key.
    async fn burst_on_hot_team(store: &MemoryStore, n: usize) -> String {
        use crate::service::{settle, AuthorizeOutcome, Authorizer};
        let mut team = Entity::new(EntityRef::team("hot"), now());
        team.shards = 4;
        team.shard_items = 4;
        team.windows.push(Window::open(
            Span::parse_id("1d").unwrap(),
            Money::usd(100),
            false,
            now(),
            &settings().clock,
        ));
        assert_eq!(store.create(&team).await.unwrap(), AdminWrite::Done);
        let key = crate::keys::generate_key();
        let mut k = Entity::new(EntityRef::key(crate::keys::hash_key(&key)), now());
        k.team_id = Some("hot".into());
        assert_eq!(store.create(&k).await.unwrap(), AdminWrite::Done);
        let a = Authorizer::new(store.clone(), settings());
        for i in 0..n {
            let id = format!("burst-{i}");
            let r = a.authorize(&key, Money::usd(1), Some(&id), now()).await;
            let AuthorizeOutcome::Allowed { reservation, .. } = r else {
                panic!("{r:?}");
            };
            settle(
                store,
                &reservation.id,
                Money::from_nanos(250_000_000),
                now(),
                &settings(),
            )
            .await
            .unwrap();
        }
        key
    }

    fn hot_slots(store: &MemoryStore) -> (Entity, Vec<Entity>) {
        let team = store.entity(&EntityRef::team("hot")).unwrap();
        let slots = crate::escrow::slot_refs(&team)
            .iter()
            .filter_map(|r| store.entity(r))
            .collect();
        (team, slots)
    }

    fn avail_of(store: &MemoryStore, slot: crate::model::SlotId) -> Money {
        store
            .entity(&EntityRef::team("hot").at(slot))
            .unwrap()
            .windows[0]
            .avail
    }

    #[tokio::test]
    async fn idle_shards_give_their_headroom_back_to_the_pool_after_two_runs() {
        use crate::model::SlotId;
        let store = MemoryStore::new();
        burst_on_hot_team(&store, 24).await;
        let (team, slots) = hot_slots(&store);
        let before = crate::escrow::totals(&team, &slots);
        let on_shards = (0..4)
            .map(|k| avail_of(&store, SlotId::Shard(k)))
            .fold(Money::ZERO, Money::saturating_add);
        assert!(
            on_shards > Money::ZERO,
            "the burst left headroom on the shards"
        );

        // The first visit only records what the shards hold.
        let first = reset(&store, now() + chrono::Duration::minutes(1), &settings()).await;
        assert!(first.errors.is_empty(), "{first:?}");
        assert_eq!((first.sharded_visited, first.shards_returned), (1, 0));
        // No traffic since: every shard with headroom gives it back.
        let second = reset(&store, now() + chrono::Duration::minutes(2), &settings()).await;
        assert!(second.errors.is_empty(), "{second:?}");
        assert!(second.shards_returned > 0, "{second:?}");
        assert_eq!(second.headroom_returned, on_shards, "{second:?}");
        for k in 0..4 {
            assert_eq!(avail_of(&store, SlotId::Shard(k)), Money::ZERO, "shard {k}");
        }
        let (team, slots) = hot_slots(&store);
        let after = crate::escrow::totals(&team, &slots);
        assert_eq!(after, before, "nothing created or lost");
        assert_eq!(avail_of(&store, SlotId::Pool), before.windows[0].avail);
        // Idle and empty now: later runs move and write nothing.
        let writes = store.requests();
        let third = reset(&store, now() + chrono::Duration::minutes(3), &settings()).await;
        assert_eq!((third.shards_returned, third.shards_not_returned), (0, 0));
        assert_eq!(
            store.requests() - writes,
            // due, held, the listing, the visit: reads only.
            4,
            "{third:?}"
        );
    }

    #[tokio::test]
    async fn a_shard_touched_between_runs_keeps_its_headroom() {
        use crate::model::SlotId;
        use crate::service::{settle, AuthorizeOutcome, Authorizer};
        let store = MemoryStore::new();
        let key = burst_on_hot_team(&store, 24).await;
        let first = reset(&store, now() + chrono::Duration::minutes(1), &settings()).await;
        assert_eq!(first.shards_returned, 0, "{first:?}");
        // A request and its settle on one shard between the runs.
        let a = Authorizer::new(store.clone(), settings());
        let r = a.authorize(&key, Money::usd(1), Some("touch"), now()).await;
        let AuthorizeOutcome::Allowed { reservation, .. } = r else {
            panic!("{r:?}");
        };
        let touched = reservation.holds[0].entity.slot.unwrap();
        settle(
            &store,
            &reservation.id,
            Money::from_nanos(100_000_000),
            now(),
            &settings(),
        )
        .await
        .unwrap();
        let held = avail_of(&store, touched);
        assert!(held > Money::ZERO);
        let (team, slots) = hot_slots(&store);
        let before = crate::escrow::totals(&team, &slots);
        let second = reset(&store, now() + chrono::Duration::minutes(2), &settings()).await;
        assert!(second.errors.is_empty(), "{second:?}");
        assert_eq!(avail_of(&store, touched), held, "the busy shard keeps it");
        for k in 0..4 {
            if SlotId::Shard(k) != touched {
                assert_eq!(avail_of(&store, SlotId::Shard(k)), Money::ZERO, "shard {k}");
            }
        }
        let (team, slots) = hot_slots(&store);
        assert_eq!(crate::escrow::totals(&team, &slots), before);
        // Idle for a run after that, it returns too.
        reset(&store, now() + chrono::Duration::minutes(3), &settings()).await;
        assert_eq!(avail_of(&store, touched), Money::ZERO);
    }

    #[test]
    fn only_idle_shards_with_headroom_move_and_never_a_debt() {
        use crate::escrow::{idle_returns, visit_record};
        use crate::model::SlotId;
        let mut team = Entity::new(EntityRef::team("t"), now());
        team.shards = 2;
        team.shard_items = 3;
        team.windows.push(Window::open(
            Span::parse_id("1d").unwrap(),
            Money::usd(10),
            false,
            now(),
            &settings().clock,
        ));
        let mut slots = crate::escrow::slots_of_new(&team);
        slots.push(crate::escrow::new_slot(&team, SlotId::Shard(2), |_| {
            Money::ZERO
        }));
        slots[1].windows[0].avail = Money::usd(2);
        // Shard 1 owes: a settle cost more than it held.
        slots[2].windows[0].avail = Money::usd(-1);
        // Shard 2 is retired (k >= shards) and holds headroom.
        slots[3].windows[0].avail = Money::usd(3);
        assert!(
            idle_returns(&team, &slots, None, now()).is_empty(),
            "first visit"
        );
        let seen = visit_record(&slots);
        let moves = idle_returns(&team, &slots, Some(&seen), now());
        let moved: Vec<(SlotId, Money)> = moves.iter().map(|m| (m.shard, m.amount)).collect();
        assert_eq!(
            moved,
            [
                (SlotId::Shard(0), Money::usd(2)),
                (SlotId::Shard(2), Money::usd(3))
            ]
        );
        // A shard that moved since the record stays.
        slots[1].windows[0].reserved = Money::usd(1);
        slots[1].windows[0].avail = Money::usd(1);
        let moves = idle_returns(&team, &slots, Some(&seen), now());
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].shard, SlotId::Shard(2));
        // Past a boundary: the roll-over first, nothing moves.
        let late = now() + chrono::Duration::days(2);
        assert!(idle_returns(&team, &slots, Some(&visit_record(&slots)), late).is_empty());
    }

    #[tokio::test]
    async fn past_the_per_run_bound_runs_take_the_sharded_entities_in_groups() {
        let store = MemoryStore::new();
        let n = SHARDED_PER_RUN + SHARDED_PER_RUN / 2;
        for i in 0..n {
            let mut team = Entity::new(EntityRef::team(format!("t-{i:03}")), now());
            team.shards = 2;
            team.shard_items = 2;
            team.windows.push(Window::open(
                Span::parse_id("1d").unwrap(),
                Money::usd(1),
                false,
                now(),
                &settings().clock,
            ));
            assert_eq!(store.create(&team).await.unwrap(), AdminWrite::Done);
        }
        // Every 5 minutes: both groups come up (a turn by the minute would
        // give a schedule of 2 minutes one group only).
        let mut visited = Vec::new();
        for run in 1..=8 {
            let at = now() + chrono::Duration::minutes(5 * run);
            let summary = reset(&store, at, &settings()).await;
            assert!(summary.errors.is_empty(), "{:?}", summary.errors);
            visited.push(summary.sharded_visited);
        }
        assert!(visited
            .iter()
            .all(|v| [n - SHARDED_PER_RUN, SHARDED_PER_RUN].contains(v)));
        assert!(
            visited.contains(&SHARDED_PER_RUN) && visited.contains(&(n - SHARDED_PER_RUN)),
            "{visited:?}"
        );
    }
}
