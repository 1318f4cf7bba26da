//! The reset job: release expired reservations, then roll over due
//! windows — each found through an index of what is due, never a scan.

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::duration::ResetClock;
use crate::model::Entity;
use crate::store::ResetStore;

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
    pub errors: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
}

/// Releases expired reservations, then rolls over every due window. Both
/// are found through indexes of what is due (held reservations by expiry,
/// entities by their earliest boundary), so one run reads what is due and
/// not the table. Releases come first: a held reservation that is never
/// released shrinks its windows for good, while a window not rolled is
/// only late (authorize and settle roll it themselves when they meet it).
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
}
