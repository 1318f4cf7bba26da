//! The reset job: release expired reservations, then roll over due
//! windows — each found through an index of what is due, never a scan.

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::duration::ResetClock;
use crate::model::Entity;
use crate::store::ResetStore;

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
    release_expired(store, now, settings, &mut summary).await;
    roll_due(store, now, settings, &mut summary).await;
    summary.finished_at = crate::decision::rfc3339(Utc::now().max(now));
    summary
}

/// Releases held reservations past their expiry, in batches from the
/// `held` index.
async fn release_expired<S: ResetStore>(
    store: &S,
    now: DateTime<Utc>,
    settings: &Settings,
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
        for id in &batch {
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
                    Err(e) => {
                        summary
                            .errors
                            .push(format!("{name}: windows not rolled: {e}"));
                        return;
                    }
                }
            }
            Err(e) => {
                summary
                    .errors
                    .push(format!("{name}: windows not rolled: {e}"));
                return;
            }
        }
    }
    summary.errors.push(format!(
        "{name}: windows not rolled: it kept moving ({MAX_ATTEMPTS} attempts)"
    ));
}
