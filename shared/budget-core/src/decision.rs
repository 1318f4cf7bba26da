//! Admission: may a request with estimate `e` go ahead, given every window
//! of every entity in its chain? Pure: the store turns the same rule into
//! the conditions of one atomic write.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::config::Settings;
use crate::duration::ResetClock;
use crate::model::{Chain, Entity, EntityRef, Span, Window};
use crate::money::Money;

/// Why a key is refused before any budget is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Blocked,
    Expired,
    /// The end customer the request names is blocked (`/customer/block`).
    CustomerBlocked,
    /// The key has per-model budgets and the request names no model
    /// (`x-litellm-model`): it is refused rather than charged to none.
    ModelRequired,
    /// The key has per-model budgets and the request names a model it has
    /// none for: refused, so no alias, case variant or other name of a
    /// budgeted model can run outside its cap.
    ModelNotBudgeted,
    /// The key has a budget for the model named, and it could not be read
    /// (its item is missing: an admin write failed half way): refused.
    ModelBudgetUnavailable,
}

impl KeyRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            KeyRefusal::Blocked => "key_blocked",
            KeyRefusal::Expired => "key_expired",
            KeyRefusal::CustomerBlocked => "customer_blocked",
            KeyRefusal::ModelRequired => "model_required",
            KeyRefusal::ModelNotBudgeted => "model_not_budgeted",
            KeyRefusal::ModelBudgetUnavailable => "model_budget_unavailable",
        }
    }
}

/// A key with per-model budgets is charged to the model its request names:
/// none named is refused (never charged to nothing while a cap exists), and
/// so is a model the key has no budget for (the key's models are the only
/// ones it may call: LiteLLM's aliases, wildcards and prefixes could route
/// another name to a budgeted model); a model with a budget on the key
/// must have it in the chain.
pub fn check_model(chain: &Chain, model: Option<&str>) -> Result<(), KeyRefusal> {
    if chain.key.model_budgets.is_empty() {
        return Ok(());
    }
    let Some(model) = model else {
        return Err(KeyRefusal::ModelRequired);
    };
    if !chain.key.model_budgets.iter().any(|m| m == model) {
        return Err(KeyRefusal::ModelNotBudgeted);
    }
    let wanted = crate::model::EntityRef::model(&chain.key.entity.id, model);
    if chain.scopes.iter().any(|e| e.entity == wanted) {
        Ok(())
    } else {
        Err(KeyRefusal::ModelBudgetUnavailable)
    }
}

/// The key's state, then every scope's that can refuse before any budget
/// is looked at (a blocked customer).
pub fn check_chain(chain: &Chain, now: DateTime<Utc>) -> Result<(), KeyRefusal> {
    check_key(&chain.key, now)?;
    if chain
        .scopes
        .iter()
        .any(|e| e.entity.kind == crate::model::EntityKind::Customer && e.blocked)
    {
        return Err(KeyRefusal::CustomerBlocked);
    }
    Ok(())
}

pub fn check_key(key: &Entity, now: DateTime<Utc>) -> Result<(), KeyRefusal> {
    if key.blocked {
        Err(KeyRefusal::Blocked)
    } else if key.is_expired(now) {
        Err(KeyRefusal::Expired)
    } else {
        Ok(())
    }
}

/// What a client asked to reserve. Only ever a request: the reservation
/// is this capped at `MAX_RESERVATION_USD` and raised to the floor (see
/// [`reservation_amount`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// No `x-budget-reserve`: the deployment's default.
    Default,
    Amount(Money),
}

impl From<Money> for Requested {
    fn from(m: Money) -> Requested {
        Requested::Amount(m)
    }
}

/// What a request reserves: what it asked for (or the default), capped at
/// `MAX_RESERVATION_USD`, and never below the floor — the deployment's
/// (`MIN_RESERVATION_USD`) or the highest `reservation_floor` of any entity
/// of the chain. So no header lowers a reservation below what its owners
/// allow, and with floor `f` at most ⌊remaining / f⌋ requests are in flight.
pub fn reservation_amount(requested: Requested, chain: &Chain, settings: &Settings) -> Money {
    let asked = match requested {
        Requested::Default => settings.default_reservation,
        Requested::Amount(m) => m.min(settings.max_reservation),
    };
    chain
        .entities()
        .filter_map(|e| e.reservation_floor)
        .fold(settings.min_reservation, Money::max)
        .max(asked)
}

/// The admission rule for one window: it has headroom left, and the
/// estimate fits in it.
pub fn window_admits(window: &Window, estimate: Money, now: DateTime<Utc>) -> bool {
    let used = window.used_at(now);
    used < window.max && used.saturating_add(estimate) <= window.max
}

/// The window that refused a request, with what a caller needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub entity: EntityRef,
    pub span: Span,
    pub max: Money,
    /// Spend in the current period (a window past its boundary shows 0).
    pub spend: Money,
    pub reserved: Money,
    /// What this request would have reserved: the amount that did not fit.
    pub estimate: Money,
    pub reset_at: Option<DateTime<Utc>>,
    /// Seconds until the window resets; `None` for lifetime budgets.
    pub retry_after: Option<i64>,
}

impl Denial {
    /// The denial of `estimate` by `window` of `entity` at `now`: the
    /// window as a reader at `now` sees it (a sharded entity's: its totals
    /// over its slots), so every path that denies names it alike.
    pub fn of(
        entity: &EntityRef,
        window: &Window,
        estimate: Money,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Denial {
        let reset_at = window.reset_at_as_of(now, clock);
        Denial {
            entity: entity.clone(),
            span: window.span,
            max: window.max,
            spend: window.spent_at(now),
            reserved: window.reserved,
            estimate,
            reset_at,
            retry_after: reset_at.map(|at| retry_after_seconds(at, now)),
        }
    }

    /// `Budget exceeded: user=user-123 over 1d budget. Spend=$140.0000
    /// (+$5.0000 reserved), Estimate=$10.0000, Limit=$150.00, resets
    /// 2026-11-29T00:00:00Z`: what is spent, what is held, what this
    /// request asked for, against the limit.
    pub fn message(&self) -> String {
        let window = match self.span {
            Span::Lifetime => "lifetime".to_string(),
            Span::Every(d) => d.to_string(),
        };
        let reserved = if self.reserved.is_zero() {
            String::new()
        } else {
            format!(" (+{} reserved)", self.reserved.display_usd())
        };
        let resets = match self.reset_at {
            Some(at) => format!("resets {}", rfc3339(at)),
            None => "never resets".to_string(),
        };
        format!(
            "Budget exceeded: {}={} over {} budget. Spend={}{}, Estimate={}, Limit={}, {}",
            self.entity.kind,
            self.entity.display_id(),
            window,
            self.spend.display_usd(),
            reserved,
            self.estimate.display_usd(),
            limit_usd(self.max),
            resets
        )
    }
}

/// `$150.00` — limits are usually round, show cents at least.
fn limit_usd(m: Money) -> String {
    let plain = m.to_string();
    let (int, frac) = plain.split_once('.').unwrap_or((&plain, ""));
    let mut frac = frac.to_string();
    while frac.len() < 2 {
        frac.push('0');
    }
    format!("${int}.{frac}")
}

/// Whole seconds until `at`, rounded up, at least 1.
pub fn retry_after_seconds(at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let ms = (at - now).num_milliseconds();
    ((ms + 999) / 1000).max(1)
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The window with the least headroom after this reservation.
#[derive(Debug, Clone, PartialEq)]
pub struct Admission {
    pub tightest: Option<(EntityRef, Span)>,
    /// Headroom of the tightest window after the reservation; `None` when
    /// no entity in the chain has a budget.
    pub remaining: Option<Money>,
}

/// Admit iff every window of every entity admits. On denial, names the
/// window that keeps the request out longest (its reset is the latest;
/// lifetime windows first), so `retry_after` is honest.
pub fn admit(
    chain: &Chain,
    estimate: Money,
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Result<Admission, Denial> {
    let mut worst: Option<Denial> = None;
    let mut tightest: Option<(EntityRef, Span, Money)> = None;
    for entity in chain.entities() {
        let sharded = crate::escrow::is_sharded(entity);
        for window in &entity.windows {
            // A sharded entity's headroom is on its shards, whose writes
            // decide (and whose totals deny: `service::authorize`).
            if sharded && estimate <= window.max {
                continue;
            }
            if window_admits(window, estimate, now) {
                let left = window
                    .remaining_at(now)
                    .saturating_sub(estimate)
                    .max(Money::ZERO);
                if tightest.as_ref().is_none_or(|(_, _, l)| left < *l) {
                    tightest = Some((entity.entity.clone(), window.span, left));
                }
                continue;
            }
            let denial = Denial::of(&entity.entity, window, estimate, now, clock);
            let later = match (&worst, denial.reset_at) {
                (None, _) => true,
                (Some(w), Some(at)) => w.reset_at.is_some_and(|prev| at > prev),
                (Some(w), None) => w.reset_at.is_some(),
            };
            if later {
                worst = Some(denial);
            }
        }
    }
    match worst {
        Some(denial) => Err(denial),
        None => Ok(Admission {
            remaining: tightest.as_ref().map(|(_, _, l)| *l),
            tightest: tightest.map(|(e, s, _)| (e, s)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::BudgetDuration;
    use crate::model::EntityKind;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(d: &str, max: i64, spent: i64, reserved: i64, reset: &str) -> Window {
        Window {
            span: Span::Every(BudgetDuration::parse(d).unwrap()),
            max: Money::usd(max),
            spent: Money::usd(spent),
            reserved: Money::usd(reserved),
            reset_at: Some(at(reset)),
            generation: 1,
            legacy: false,
            avail: Money::ZERO,
            parked: Money::ZERO,
            topped: Money::ZERO,
        }
    }

    fn chain(key: Vec<Window>, user: Vec<Window>) -> Chain {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 0, 0, 0).unwrap();
        let mut k = Entity::new(EntityRef::key("abcdef0123456789"), now);
        k.windows = key;
        let mut u = Entity::new(EntityRef::user("user-123"), now);
        u.windows = user;
        Chain {
            key: k,
            scopes: vec![u],
        }
    }

    #[test]
    fn admits_up_to_the_limit_exactly() {
        let now = at("2026-11-28T15:00:00Z");
        let c = chain(
            vec![],
            vec![window("1d", 150, 140, 0, "2026-11-29T00:00:00Z")],
        );
        let clock = ResetClock::default();
        let ok = admit(&c, Money::usd(10), now, &clock).unwrap();
        assert_eq!(ok.remaining, Some(Money::ZERO));
        let denied = admit(&c, Money::from_nanos(10 * 1_000_000_000 + 1), now, &clock).unwrap_err();
        assert_eq!(denied.entity, EntityRef::user("user-123"));
        assert_eq!(denied.retry_after, Some(9 * 3600));
        assert_eq!(
            denied.message(),
            "Budget exceeded: user=user-123 over 1d budget. Spend=$140.0000, Estimate=$10.000000001, Limit=$150.00, resets 2026-11-29T00:00:00Z"
        );
    }

    #[test]
    fn a_full_window_denies_even_a_zero_estimate() {
        let now = at("2026-11-28T15:00:00Z");
        let c = chain(
            vec![window("1d", 150, 150, 0, "2026-11-29T00:00:00Z")],
            vec![],
        );
        let d = admit(&c, Money::ZERO, now, &ResetClock::default()).unwrap_err();
        assert_eq!(d.entity.kind, EntityKind::Key);
        assert_eq!(d.entity.display_id(), "abcdef012345");
    }

    #[test]
    fn a_window_past_its_boundary_counts_as_rolled_over() {
        let now = at("2026-11-29T00:00:00Z");
        let c = chain(
            vec![],
            vec![window("1d", 150, 150, 0, "2026-11-29T00:00:00Z")],
        );
        assert!(admit(&c, Money::usd(150), now, &ResetClock::default()).is_ok());
        // Reservations survive the roll-over: they belong to requests in flight.
        let c = chain(
            vec![],
            vec![window("1d", 150, 150, 100, "2026-11-29T00:00:00Z")],
        );
        let d = admit(&c, Money::usd(51), now, &ResetClock::default()).unwrap_err();
        assert_eq!(d.spend, Money::ZERO);
        assert_eq!(d.reserved, Money::usd(100));
        assert_eq!(d.reset_at, Some(at("2026-11-30T00:00:00Z")));
    }

    #[test]
    fn names_the_window_that_keeps_the_request_out_longest() {
        let now = at("2026-11-28T15:00:00Z");
        let c = chain(
            vec![window("1d", 10, 10, 0, "2026-11-29T00:00:00Z")],
            vec![window("7d", 500, 500, 0, "2026-11-30T00:00:00Z")],
        );
        let d = admit(&c, Money::usd(1), now, &ResetClock::default()).unwrap_err();
        assert_eq!(d.entity, EntityRef::user("user-123"));
        assert_eq!(d.span.id(), "7d");
    }

    #[test]
    fn lifetime_budgets_never_reset() {
        let now = at("2026-11-28T15:00:00Z");
        let mut c = chain(vec![], vec![]);
        c.key.windows.push(Window {
            span: Span::Lifetime,
            max: Money::usd(5),
            spent: Money::usd(5),
            reserved: Money::ZERO,
            reset_at: None,
            generation: 1,
            legacy: true,
            avail: Money::ZERO,
            parked: Money::ZERO,
            topped: Money::ZERO,
        });
        let d = admit(&c, Money::ZERO, now, &ResetClock::default()).unwrap_err();
        assert_eq!(d.retry_after, None);
        assert!(d.message().ends_with(
            "over lifetime budget. Spend=$5.0000, Estimate=$0.0000, Limit=$5.00, never resets"
        ));
    }

    #[test]
    fn no_budget_anywhere_admits() {
        let c = chain(vec![], vec![]);
        let ok = admit(
            &c,
            Money::usd(1000),
            at("2026-11-28T15:00:00Z"),
            &ResetClock::default(),
        )
        .unwrap();
        assert_eq!(ok.remaining, None);
    }

    #[test]
    fn blocked_and_expired_keys_are_refused() {
        let now = at("2026-11-28T15:00:00Z");
        let mut k = Entity::new(EntityRef::key("h"), now);
        assert_eq!(check_key(&k, now), Ok(()));
        k.expires = Some(now);
        assert_eq!(check_key(&k, now), Err(KeyRefusal::Expired));
        k.blocked = true;
        assert_eq!(check_key(&k, now), Err(KeyRefusal::Blocked));
    }
}
