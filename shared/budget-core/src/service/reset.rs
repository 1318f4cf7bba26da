//! The reset job: roll over due windows, release expired reservations.

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::store::ResetStore;

use super::{expire, MAX_ATTEMPTS};

/// What one run of the reset job did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResetSummary {
    pub windows_reset: usize,
    pub reservations_released: usize,
    pub entities_scanned: usize,
    /// Windows another writer rolled between our read and our write.
    pub already_rolled: usize,
    pub errors: Vec<String>,
    pub started_at: String,
    pub finished_at: String,
}

/// Rolls over every due window, then releases expired reservations. Safe
/// to run twice at once and alongside authorize and settle: every write is
/// conditional on what was read. (Its length: the two phases in order;
/// the job is to be rebuilt around indexes of what is due, issue 10.)
pub async fn reset<S: ResetStore>(
    store: &S,
    now: DateTime<Utc>,
    settings: &Settings,
) -> ResetSummary {
    let mut summary = ResetSummary {
        started_at: crate::decision::rfc3339(now),
        ..ResetSummary::default()
    };
    let clock = &settings.clock;
    let mut cursor = None;
    loop {
        let (page, next) = match store.scan_entities(cursor).await {
            Ok(p) => p,
            Err(e) => {
                summary
                    .errors
                    .push(format!("scan stopped, entities left unchecked: {e}"));
                break;
            }
        };
        for entity in page {
            summary.entities_scanned += 1;
            let name = format!("{} {}", entity.entity.kind, entity.entity.display_id());
            let mut current = entity;
            let mut finished = false;
            for _ in 0..MAX_ATTEMPTS {
                match store.roll_over(&current, now, clock).await {
                    Ok(Some(n)) => {
                        summary.windows_reset += n;
                        finished = true;
                        break;
                    }
                    Ok(None) => {
                        let due_before = current.windows.iter().filter(|w| w.is_due(now)).count();
                        match store.load(&current.entity).await {
                            Ok(Some(e)) => {
                                let due_now = e.windows.iter().filter(|w| w.is_due(now)).count();
                                summary.already_rolled += due_before.saturating_sub(due_now);
                                current = e;
                            }
                            Ok(None) => {
                                finished = true;
                                break;
                            }
                            Err(e) => {
                                summary
                                    .errors
                                    .push(format!("{name}: windows not rolled: {e}"));
                                finished = true;
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        summary
                            .errors
                            .push(format!("{name}: windows not rolled: {e}"));
                        finished = true;
                        break;
                    }
                }
            }
            if !finished {
                summary.errors.push(format!(
                    "{name}: windows not rolled: it kept moving ({MAX_ATTEMPTS} attempts)"
                ));
            }
        }
        cursor = next;
        if cursor.is_none() {
            break;
        }
    }
    const BATCH: usize = 500;
    const BATCHES: usize = 100;
    let mut ended = false;
    for _ in 0..BATCHES {
        let batch = match store.expired_reservations(now, BATCH).await {
            Ok(b) => b,
            Err(e) => {
                summary
                    .errors
                    .push(format!("expired reservations not listed: {e}"));
                ended = true; // and said why
                break;
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
            ended = true;
            break;
        }
    }
    if !ended {
        summary.errors.push(format!(
            "more than {} expired reservations: the rest are left to the next run",
            BATCH * BATCHES
        ));
    }
    summary.finished_at = crate::decision::rfc3339(Utc::now().max(now));
    summary
}
