//! Budget alerts for owners: a window's spend crossing a percentage of its
//! `max_budget` (`budget_alert_thresholds`, default `BUDGET_ALERT_THRESHOLDS`)
//! or LiteLLM's `soft_budget`. Pure: the `notify` function feeds it the
//! entity as it was before and after a write (a DynamoDB stream record) and
//! sends what it returns, once per window period (each alert has an id of
//! its own, which the store claims before the event is sent).

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::decision::rfc3339;
use crate::model::{Entity, EntityRef, Span, Window};
use crate::money::Money;

/// Percentages of `max_budget` alerted on when neither the entity nor
/// `BUDGET_ALERT_THRESHOLDS` says otherwise.
pub const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];

/// The highest threshold accepted, in percent of `max_budget`.
pub const MAX_THRESHOLD_PERCENT: u32 = 1000;

/// Most thresholds per entity or deployment.
pub const MAX_THRESHOLDS: usize = 10;

/// The admin API's extension field of an entity's thresholds.
pub const THRESHOLDS_FIELD: &str = "budget_alert_thresholds";
/// LiteLLM's soft budget field.
pub const SOFT_BUDGET_FIELD: &str = "soft_budget";

/// The EventBridge `source` of every alert.
pub const EVENT_SOURCE: &str = "edge-budget";
/// The EventBridge `detail-type` of every alert.
pub const DETAIL_TYPE: &str = "Budget Threshold Crossed";

/// `"50,80,100"` (percentages, whole numbers from 1 to 1000, at most 10),
/// sorted and without repeats; `"none"` is the empty list.
pub fn parse_thresholds(text: &str) -> Result<Vec<u32>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        match part.trim().parse::<u32>() {
            Ok(p) if (1..=MAX_THRESHOLD_PERCENT).contains(&p) => out.push(p),
            _ => {
                return Err(format!(
                    "expected percentages of max_budget from 1 to {MAX_THRESHOLD_PERCENT} separated by commas (or none), got \"{}\"",
                    part.trim().chars().take(20).collect::<String>()
                ))
            }
        }
    }
    checked(out)
}

/// Sorted, without repeats, at most [`MAX_THRESHOLDS`].
pub fn checked(mut list: Vec<u32>) -> Result<Vec<u32>, String> {
    list.sort_unstable();
    list.dedup();
    if list.len() > MAX_THRESHOLDS {
        return Err(format!("at most {MAX_THRESHOLDS} thresholds"));
    }
    Ok(list)
}

/// What an entity asks to be alerted on (from its attributes, which the
/// admin API has checked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertConfig {
    /// `budget_alert_thresholds`; `None`: the deployment's.
    pub thresholds: Option<Vec<u32>>,
    /// `soft_budget` (positive).
    pub soft_budget: Option<Money>,
}

impl AlertConfig {
    /// The configuration in `attributes` (values the admin API would not
    /// accept are ignored).
    pub fn from_attributes(attributes: &Map<String, Value>) -> AlertConfig {
        let thresholds = attributes
            .get(THRESHOLDS_FIELD)
            .and_then(Value::as_array)
            .and_then(|list| {
                list.iter()
                    .map(|v| v.as_u64().and_then(|p| u32::try_from(p).ok()))
                    .collect::<Option<Vec<u32>>>()
            })
            .and_then(|l| checked(l).ok());
        let soft_budget = attributes
            .get(SOFT_BUDGET_FIELD)
            .and_then(Value::as_f64)
            .and_then(|f| Money::from_f64(f).ok())
            .filter(|m| *m > Money::ZERO);
        AlertConfig {
            thresholds,
            soft_budget,
        }
    }

    pub fn is_default(&self) -> bool {
        *self == AlertConfig::default()
    }
}

/// What crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// A percentage of `max_budget`.
    Threshold(u32),
    /// LiteLLM's `soft_budget`.
    SoftBudget,
}

/// One crossing, to be sent once.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// The same for every observation of this crossing in this window
    /// period, so a redelivered or reordered stream record finds it taken.
    pub id: String,
    pub kind: AlertKind,
    pub entity: EntityRef,
    /// The key's alias, user and team (for routing), when known.
    pub owners: (Option<String>, Option<String>),
    pub window: String,
    pub spend: Money,
    pub limit: Money,
    /// The spend at which it fires.
    pub level: Money,
    /// When the window's period ends (`None`: a lifetime budget).
    pub reset_at: Option<DateTime<Utc>>,
}

impl Alert {
    /// The EventBridge `detail`.
    pub fn detail(&self) -> Value {
        let (alert, percent) = match self.kind {
            AlertKind::Threshold(p) => ("threshold", Some(p)),
            AlertKind::SoftBudget => ("soft_budget", None),
        };
        json!({
            "alert_id": self.id,
            "alert": alert,
            "threshold_percent": percent,
            "threshold_usd": self.level.as_f64(),
            "entity": self.entity.kind.as_str(),
            "entity_id": self.entity.display_id(),
            "user_id": self.owners.0,
            "team_id": self.owners.1,
            "window": self.window,
            "spend": self.spend.as_f64(),
            "limit": self.limit.as_f64(),
            "reset_at": self.reset_at.map(rfc3339),
        })
    }
}

/// `max × percent / 100`, exactly (rounded up to the nano).
fn share(max: Money, percent: u32) -> Money {
    let nanos = (max.nanos() as i128 * percent as i128 + 99) / 100;
    Money::from_nanos(nanos.min(i64::MAX as i128) as i64)
}

/// The spend a window had in the same period before this write: the old
/// image's window of the same generation and period, else nothing spent.
fn spent_before(old: Option<&Entity>, w: &Window) -> Money {
    old.and_then(|o| {
        o.windows
            .iter()
            .find(|x| x.span == w.span && x.generation == w.generation && x.reset_at == w.reset_at)
    })
    .map_or(Money::ZERO, |x| x.spent)
}

fn alert_id(entity: &EntityRef, w: &Window, kind: AlertKind) -> String {
    let kind = match kind {
        AlertKind::Threshold(p) => format!("t{p}"),
        AlertKind::SoftBudget => "soft".to_string(),
    };
    let period = w.reset_at.map_or("lifetime".to_string(), rfc3339);
    let text = format!(
        "{}#{}\n{}\n{}\n{}\n{}",
        entity.kind.as_str(),
        entity.id,
        w.id(),
        w.generation,
        period,
        kind
    );
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

/// Windows shorter than this get no alerts from the deployment's default
/// thresholds, only from the entity's own `budget_alert_thresholds`.
pub const DEFAULTS_MIN_SECONDS: i64 = 3600;

/// The alerts this write (`old` → `new`) crosses at `now`: for every
/// window still in its period, every threshold (the entity's, else
/// `defaults`) and the soft budget (on the window of `max_budget` +
/// `budget_duration`, LiteLLM's own) whose level the window's spend passed
/// from below. A window whose period is over by `now` (a late record)
/// alerts nothing: its spend no longer counts.
pub fn crossings(
    old: Option<&Entity>,
    new: &Entity,
    config: &AlertConfig,
    defaults: &[u32],
    now: DateTime<Utc>,
) -> Vec<Alert> {
    let mut out = Vec::new();
    for w in &new.windows {
        if w.is_due(now) || w.max <= Money::ZERO {
            continue;
        }
        // The deployment's thresholds skip windows shorter than an hour
        // (a `1m` window would alert its owner thousands of times a day);
        // the entity's own list applies to every window.
        let short = matches!(w.span, Span::Every(d) if d.approx_seconds() < DEFAULTS_MIN_SECONDS);
        let thresholds = config
            .thresholds
            .as_deref()
            .unwrap_or(if short { &[] } else { defaults });
        let before = spent_before(old, w);
        let mut levels: Vec<(AlertKind, Money)> = thresholds
            .iter()
            .map(|p| (AlertKind::Threshold(*p), share(w.max, *p)))
            .collect();
        if let (Some(soft), true) = (config.soft_budget, w.legacy) {
            levels.push((AlertKind::SoftBudget, soft));
        }
        for (kind, level) in levels {
            if before < level && level <= w.spent {
                out.push(Alert {
                    id: alert_id(&new.entity, w, kind),
                    kind,
                    entity: new.entity.clone(),
                    owners: (new.user_id.clone(), new.team_id.clone()),
                    window: w.id(),
                    spend: w.spent,
                    limit: w.max,
                    level,
                    reset_at: w.reset_at,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::ResetClock;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap()
    }

    fn user(spent: &[(&str, i64, i64)]) -> Entity {
        let mut e = Entity::new(EntityRef::user("u"), now());
        for (span, max, s) in spent {
            let mut w = Window::open(
                Span::parse_id(span).unwrap(),
                Money::usd(*max),
                *span == "30d",
                now(),
                &ResetClock::utc_midnight(),
            );
            w.generation = 7;
            w.spent = Money::usd(*s);
            e.windows.push(w);
        }
        e
    }

    fn kinds(alerts: &[Alert]) -> Vec<(String, AlertKind)> {
        alerts.iter().map(|a| (a.window.clone(), a.kind)).collect()
    }

    #[test]
    fn a_write_alerts_the_levels_it_passes_from_below() {
        let cfg = AlertConfig::default();
        let old = user(&[("1d", 100, 40)]);
        let new = user(&[("1d", 100, 85)]);
        let alerts = crossings(Some(&old), &new, &cfg, &DEFAULT_THRESHOLDS, now());
        assert_eq!(
            kinds(&alerts),
            [
                ("1d".to_string(), AlertKind::Threshold(50)),
                ("1d".to_string(), AlertKind::Threshold(80))
            ]
        );
        assert_eq!(alerts[1].level, Money::usd(80));
        assert_eq!(alerts[1].detail()["spend"], 85.0);
        // Already past both: nothing more.
        let later = user(&[("1d", 100, 90)]);
        assert!(crossings(Some(&new), &later, &cfg, &DEFAULT_THRESHOLDS, now()).is_empty());
        // Exactly at the level counts as crossed.
        let at = user(&[("1d", 100, 100)]);
        assert_eq!(
            kinds(&crossings(
                Some(&later),
                &at,
                &cfg,
                &DEFAULT_THRESHOLDS,
                now()
            )),
            [("1d".to_string(), AlertKind::Threshold(100))]
        );
    }

    #[test]
    fn default_thresholds_skip_windows_under_an_hour_an_owners_own_do_not() {
        let old = user(&[("1m", 100, 0), ("1h", 100, 0)]);
        let new = user(&[("1m", 100, 90), ("1h", 100, 90)]);
        let defaults = crossings(Some(&old), &new, &AlertConfig::default(), &[80], now());
        assert_eq!(
            kinds(&defaults),
            [("1h".to_string(), AlertKind::Threshold(80))]
        );
        let own = AlertConfig {
            thresholds: Some(vec![80]),
            ..AlertConfig::default()
        };
        assert_eq!(
            kinds(&crossings(Some(&old), &new, &own, &[50], now())),
            [
                ("1m".to_string(), AlertKind::Threshold(80)),
                ("1h".to_string(), AlertKind::Threshold(80))
            ]
        );
    }

    #[test]
    fn the_same_crossing_has_the_same_id_and_a_new_period_a_new_one() {
        let cfg = AlertConfig::default();
        let old = user(&[("1d", 100, 0)]);
        let new = user(&[("1d", 100, 60)]);
        let a = crossings(Some(&old), &new, &cfg, &[50], now());
        let b = crossings(None, &new, &cfg, &[50], now());
        assert_eq!(a[0].id, b[0].id);
        let mut next = new.clone();
        next.windows[0].reset_at = next.windows[0]
            .reset_at
            .map(|t| t + chrono::Duration::days(1));
        let c = crossings(Some(&new), &next, &cfg, &[50], now());
        assert_eq!(c.len(), 1, "a new period starts from nothing spent");
        assert_ne!(c[0].id, a[0].id);
        // A record read after its period ended alerts nothing.
        let late = now() + chrono::Duration::days(2);
        assert!(crossings(Some(&old), &new, &cfg, &[50], late).is_empty());
    }

    #[test]
    fn soft_budget_applies_to_the_max_budget_window_and_thresholds_per_entity() {
        let attrs = json!({"soft_budget": 300, "budget_alert_thresholds": [90]});
        let cfg = AlertConfig::from_attributes(attrs.as_object().unwrap());
        assert_eq!(cfg.thresholds, Some(vec![90]));
        assert_eq!(cfg.soft_budget, Some(Money::usd(300)));
        let old = user(&[("1d", 100, 0), ("30d", 1000, 0)]);
        let new = user(&[("1d", 100, 95), ("30d", 1000, 950)]);
        assert_eq!(
            kinds(&crossings(
                Some(&old),
                &new,
                &cfg,
                &DEFAULT_THRESHOLDS,
                now()
            )),
            [
                ("1d".to_string(), AlertKind::Threshold(90)),
                ("30d".to_string(), AlertKind::Threshold(90)),
                ("30d".to_string(), AlertKind::SoftBudget)
            ]
        );
        let none = AlertConfig::from_attributes(
            json!({"budget_alert_thresholds": []}).as_object().unwrap(),
        );
        assert!(crossings(Some(&old), &new, &none, &DEFAULT_THRESHOLDS, now()).is_empty());
    }

    #[test]
    fn shares_are_exact() {
        assert_eq!(share(Money::usd(30), 80), Money::usd(24));
        assert_eq!(share(Money::from_nanos(3), 50), Money::from_nanos(2));
    }

    #[test]
    fn thresholds_parse() {
        assert_eq!(
            parse_thresholds("100, 50,80,80").unwrap(),
            vec![50, 80, 100]
        );
        assert!(parse_thresholds("0").is_err());
        assert!(parse_thresholds("1001").is_err());
        assert!(parse_thresholds("1,2,3,4,5,6,7,8,9,10,11").is_err());
        assert_eq!(parse_thresholds("NONE").unwrap(), Vec::<u32>::new());
    }
}
