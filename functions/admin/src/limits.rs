//! An entity's budget windows as the management API states them:
//! `budget_limits: [{budget_duration, max_budget}]` plus the legacy pair
//! `max_budget` + `budget_duration` (one more window; `max_budget` alone is
//! a lifetime budget). Pure: reads JSON, checks it, and works out the
//! windows an entity has after a create or an update.
//!
//! Rules:
//! * A field that is absent keeps its current value (a new entity has
//!   none); a field that is `null` has no value (`max_budget: null` removes
//!   the legacy window, `budget_limits: null` is the empty list).
//! * `budget_limits` given replaces the list; the legacy window is changed
//!   by `max_budget` and/or `budget_duration`.
//! * Windows are identified by their canonical duration (`1w` is `7d`,
//!   `monthly` is `1mo`); two windows with the same one are a 400 naming
//!   `budget_limits`, the legacy window included.
//! * `budget_duration` given without any `max_budget` is a 400: a window
//!   needs a limit.
//! * An entity has at most [`MAX_WINDOWS`] windows.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use budget_core::duration::{BudgetDuration, ResetClock};
use budget_core::model::{Span, Window};
use budget_core::Money;
use http_api::{money_value, ApiError};

pub use budget_core::model::MAX_WINDOWS;
use budget_core::model::{check_window_spans, WindowSetError};

/// A field of a request body: absent, explicitly `null`, or a value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Patch<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<T> Patch<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Patch::Absent)
    }

    /// The value after applying this patch to `current`.
    pub fn apply(self, current: Option<T>) -> Option<T> {
        match self {
            Patch::Absent => current,
            Patch::Null => None,
            Patch::Value(v) => Some(v),
        }
    }
}

/// One window as asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub span: Span,
    pub max: Money,
    /// From the legacy `max_budget` + `budget_duration` pair.
    pub legacy: bool,
}

/// The budget fields of one request body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BudgetPatch {
    pub max_budget: Patch<Money>,
    pub budget_duration: Patch<BudgetDuration>,
    /// `(duration, max)` in the order given.
    pub budget_limits: Patch<Vec<(BudgetDuration, Money)>>,
}

/// A duration field: a string in the grammar, or a 400 naming `param`.
pub fn duration_value(param: &str, v: &Value) -> Result<BudgetDuration, ApiError> {
    match v {
        Value::String(s) => {
            BudgetDuration::parse(s).map_err(|e| ApiError::bad_request(param, e.to_string()))
        }
        _ => Err(ApiError::bad_request(
            param,
            format!("{param} must be a string such as \"1d\", \"7d\" or \"1mo\""),
        )),
    }
}

impl BudgetPatch {
    /// Reads `max_budget`, `budget_duration` and `budget_limits` from `body`.
    pub fn parse(body: &Map<String, Value>) -> Result<BudgetPatch, ApiError> {
        let max_budget = match body.get("max_budget") {
            None => Patch::Absent,
            Some(Value::Null) => Patch::Null,
            Some(v) => Patch::Value(money_value("max_budget", v)?),
        };
        let budget_duration = match body.get("budget_duration") {
            None => Patch::Absent,
            Some(Value::Null) => Patch::Null,
            Some(v) => Patch::Value(duration_value("budget_duration", v)?),
        };
        let budget_limits = match body.get("budget_limits") {
            None => Patch::Absent,
            Some(Value::Null) => Patch::Null,
            Some(Value::Array(items)) => {
                if items.len() > MAX_WINDOWS {
                    return Err(ApiError::bad_request(
                        "budget_limits",
                        format!("budget_limits has {} entries: at most {MAX_WINDOWS} windows per entity", items.len()),
                    ));
                }
                let mut limits = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    limits.push(limit_item(i, item)?);
                }
                Patch::Value(limits)
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "budget_limits",
                    "budget_limits must be a list of {\"budget_duration\", \"max_budget\"} objects",
                ))
            }
        };
        Ok(BudgetPatch {
            max_budget,
            budget_duration,
            budget_limits,
        })
    }

    /// Whether the body names no budget field at all.
    pub fn is_empty(&self) -> bool {
        self.max_budget.is_absent()
            && self.budget_duration.is_absent()
            && self.budget_limits.is_absent()
    }

    /// The windows an entity whose windows are `current` (empty for a new
    /// one) has after this patch, sorted by span; or a 400. Long on purpose:
    /// the rules of the module documentation, in their order, in one place.
    pub fn resolve(&self, current: &[Window]) -> Result<Vec<Limit>, ApiError> {
        let old_legacy = current.iter().find(|w| w.legacy);
        let max = self.max_budget.clone().apply(old_legacy.map(|w| w.max));
        let duration = self
            .budget_duration
            .clone()
            .apply(old_legacy.and_then(|w| match w.span {
                Span::Every(d) => Some(d),
                Span::Lifetime => None,
            }));
        let mut limits: Vec<Limit> = match &self.budget_limits {
            Patch::Absent => current
                .iter()
                .filter(|w| !w.legacy)
                .map(|w| Limit {
                    span: w.span,
                    max: w.max,
                    legacy: false,
                })
                .collect(),
            Patch::Null => Vec::new(),
            Patch::Value(list) => list
                .iter()
                .map(|(d, m)| Limit {
                    span: Span::Every(*d),
                    max: *m,
                    legacy: false,
                })
                .collect(),
        };
        match (max, duration) {
            (Some(max), duration) => limits.push(Limit {
                span: duration.map_or(Span::Lifetime, Span::Every),
                max,
                legacy: true,
            }),
            (None, Some(d)) if matches!(self.budget_duration, Patch::Value(_)) => {
                return Err(ApiError::bad_request(
                    "budget_duration",
                    format!(
                        "budget_duration \"{d}\" needs a max_budget: a window without a limit would enforce nothing (use budget_limits for more windows)"
                    ),
                ))
            }
            // The duration came from the legacy window that max_budget: null removes.
            (None, _) => {}
        }
        limits.sort_by_key(|l| l.span);
        match check_window_spans(limits.iter().map(|l| l.span).collect()) {
            Ok(()) => Ok(limits),
            Err(WindowSetError::Twice(span)) => Err(ApiError::bad_request(
                "budget_limits",
                format!(
                    "budget_duration \"{}\" is given twice: each window of an entity needs its own duration (budget_limits and the max_budget/budget_duration pair together; 1w is 7d, monthly is 1mo)",
                    span.id()
                ),
            )),
            Err(WindowSetError::TooMany(n)) => Err(ApiError::bad_request(
                "budget_limits",
                format!("{n} windows: at most {MAX_WINDOWS} windows per entity"),
            )),
        }
    }
}

fn limit_item(i: usize, item: &Value) -> Result<(BudgetDuration, Money), ApiError> {
    let Value::Object(m) = item else {
        return Err(ApiError::bad_request(
            &format!("budget_limits[{i}]"),
            format!("budget_limits[{i}] must be an object {{\"budget_duration\", \"max_budget\"}}"),
        ));
    };
    let dp = format!("budget_limits[{i}].budget_duration");
    let duration = match m.get("budget_duration") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(&dp, format!("{dp} is required")))
        }
        Some(v) => duration_value(&dp, v)?,
    };
    let mp = format!("budget_limits[{i}].max_budget");
    let max = match m.get("max_budget") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(&mp, format!("{mp} is required")))
        }
        Some(v) => money_value(&mp, v)?,
    };
    Ok((duration, max))
}

/// The windows to write for `limits` over `current`: a window whose
/// duration is kept keeps its counters and `reset_at` (the store keeps the
/// table's) with the new limit; a new duration opens a fresh window at
/// `now`; windows not in `limits` are gone.
pub fn apply(
    current: &[Window],
    limits: &[Limit],
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Vec<Window> {
    limits
        .iter()
        .map(|l| match current.iter().find(|w| w.span == l.span) {
            Some(w) => Window {
                max: l.max,
                legacy: l.legacy,
                ..w.clone()
            },
            None => Window::open(l.span, l.max, l.legacy, now, clock),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 15, 8, 0).unwrap()
    }

    fn ids(limits: &[Limit]) -> Vec<(String, String, bool)> {
        limits
            .iter()
            .map(|l| (l.span.id(), l.max.to_string(), l.legacy))
            .collect()
    }

    #[test]
    fn seed_example_gives_three_windows() {
        let p = BudgetPatch::parse(&body(json!({
            "user_id": "user-123", "max_budget": 1000, "budget_duration": "30d",
            "budget_limits": [{"budget_duration": "1d", "max_budget": 150}, {"budget_duration": "7d", "max_budget": 500}]
        })))
        .unwrap();
        let limits = p.resolve(&[]).unwrap();
        assert_eq!(
            ids(&limits),
            vec![
                ("1d".into(), "150".into(), false),
                ("7d".into(), "500".into(), false),
                ("30d".into(), "1000".into(), true)
            ]
        );
        let clock = ResetClock::utc_midnight();
        let windows = apply(&[], &limits, now(), &clock);
        assert_eq!(
            windows[0].reset_at,
            Some(Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap())
        );
        assert_eq!(
            windows[1].reset_at,
            Some(Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap())
        );
        assert_eq!(
            windows[2].reset_at,
            Some(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap())
        );
    }

    #[test]
    fn max_budget_alone_is_lifetime_and_null_is_none() {
        let p = BudgetPatch::parse(&body(json!({"max_budget": 5}))).unwrap();
        assert_eq!(
            ids(&p.resolve(&[]).unwrap()),
            vec![("lifetime".into(), "5".into(), true)]
        );
        let p = BudgetPatch::parse(&body(json!({"max_budget": null, "budget_duration": null})))
            .unwrap();
        assert!(p.resolve(&[]).unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                json!({"budget_duration": "1y", "max_budget": 1}),
                "budget_duration",
            ),
            (
                json!({"budget_duration": 5, "max_budget": 1}),
                "budget_duration",
            ),
            (json!({"max_budget": -1}), "max_budget"),
            (json!({"max_budget": "NaN"}), "max_budget"),
            (json!({"max_budget": 1e12}), "max_budget"),
            (json!({"budget_limits": {}}), "budget_limits"),
            (json!({"budget_limits": [1]}), "budget_limits[0]"),
            (
                json!({"budget_limits": [{"max_budget": 1}]}),
                "budget_limits[0].budget_duration",
            ),
            (
                json!({"budget_limits": [{"budget_duration": "1hr", "max_budget": 1}]}),
                "budget_limits[0].budget_duration",
            ),
            (
                json!({"budget_limits": [{"budget_duration": "1d"}]}),
                "budget_limits[0].max_budget",
            ),
            (
                json!({"budget_limits": [{"budget_duration": "1d", "max_budget": -2}]}),
                "budget_limits[0].max_budget",
            ),
        ];
        for (b, param) in cases {
            let e = BudgetPatch::parse(&body(b.clone())).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{b}: {e:?}");
            assert_eq!(e.status, 400);
        }
        let e = BudgetPatch::parse(&body(json!({"budget_duration": "1y"}))).unwrap_err();
        assert!(
            e.message.contains("unit s, m, h, d, w or mo"),
            "{}",
            e.message
        );
    }

    #[test]
    fn duplicates_are_refused_by_canonical_id() {
        for b in [
            json!({"budget_limits": [{"budget_duration": "1d", "max_budget": 1}, {"budget_duration": "daily", "max_budget": 2}]}),
            json!({"budget_limits": [{"budget_duration": "1w", "max_budget": 1}], "max_budget": 3, "budget_duration": "7d"}),
        ] {
            let e = BudgetPatch::parse(&body(b))
                .unwrap()
                .resolve(&[])
                .unwrap_err();
            assert_eq!(e.param.as_deref(), Some("budget_limits"));
        }
    }

    #[test]
    fn duration_without_a_limit_is_refused() {
        let e = BudgetPatch::parse(&body(json!({"budget_duration": "1d"})))
            .unwrap()
            .resolve(&[])
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("budget_duration"));
    }

    #[test]
    fn updates_merge_with_current_windows() {
        let clock = ResetClock::utc_midnight();
        let created = BudgetPatch::parse(&body(json!({
            "max_budget": 100, "budget_duration": "30d",
            "budget_limits": [{"budget_duration": "1d", "max_budget": 10}]
        })))
        .unwrap();
        let mut current = apply(&[], &created.resolve(&[]).unwrap(), now(), &clock);
        current[0].spent = Money::usd(4);
        // Only max_budget: the legacy window keeps its duration.
        let p = BudgetPatch::parse(&body(json!({"max_budget": 200}))).unwrap();
        assert_eq!(
            ids(&p.resolve(&current).unwrap()),
            vec![
                ("1d".into(), "10".into(), false),
                ("30d".into(), "200".into(), true)
            ]
        );
        // Only budget_duration: the legacy window keeps its limit.
        let p = BudgetPatch::parse(&body(json!({"budget_duration": "1mo"}))).unwrap();
        assert_eq!(
            ids(&p.resolve(&current).unwrap()),
            vec![
                ("1d".into(), "10".into(), false),
                ("1mo".into(), "100".into(), true)
            ]
        );
        // max_budget: null removes the legacy window.
        let p = BudgetPatch::parse(&body(json!({"max_budget": null}))).unwrap();
        assert_eq!(
            ids(&p.resolve(&current).unwrap()),
            vec![("1d".into(), "10".into(), false)]
        );
        // budget_limits replaces the list; a kept duration keeps its counters.
        let p = BudgetPatch::parse(&body(json!({
            "budget_limits": [{"budget_duration": "1d", "max_budget": 20}, {"budget_duration": "1h", "max_budget": 1}]
        })))
        .unwrap();
        let limits = p.resolve(&current).unwrap();
        let later = now() + chrono::Duration::minutes(5);
        let next = apply(&current, &limits, later, &clock);
        let day = next.iter().find(|w| w.id() == "1d").unwrap();
        assert_eq!(
            (day.spent, day.max, day.reset_at),
            (Money::usd(4), Money::usd(20), current[0].reset_at)
        );
        let hour = next.iter().find(|w| w.id() == "1h").unwrap();
        assert_eq!(hour.spent, Money::ZERO);
        assert!(next.iter().any(|w| w.id() == "30d" && w.legacy));
        // budget_limits: null removes all but the legacy window.
        let p = BudgetPatch::parse(&body(json!({"budget_limits": null}))).unwrap();
        assert_eq!(
            ids(&p.resolve(&current).unwrap()),
            vec![("30d".into(), "100".into(), true)]
        );
    }

    #[test]
    fn too_many_windows() {
        let list: Vec<Value> = (1..=11)
            .map(|n| json!({"budget_duration": format!("{n}h"), "max_budget": 1}))
            .collect();
        let e = BudgetPatch::parse(&body(json!({"budget_limits": list}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("budget_limits"));
        let list: Vec<Value> = (1..=10)
            .map(|n| json!({"budget_duration": format!("{n}h"), "max_budget": 1}))
            .collect();
        let e = BudgetPatch::parse(&body(json!({"budget_limits": list, "max_budget": 1})))
            .unwrap()
            .resolve(&[])
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("budget_limits"));
    }
}
