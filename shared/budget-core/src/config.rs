//! Settings from the environment, read once at start-up. A missing or
//! malformed setting stops the function with a message naming it.

use crate::duration::ResetClock;
use crate::money::Money;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required but not set")]
    Missing(&'static str),
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// Everything the functions read from their environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `TABLE_NAME` (required).
    pub table_name: String,
    /// `BUDGET_TIMEZONE` (default `UTC`) and `BUDGET_RESET_TIME` (default `00:00`).
    pub clock: ResetClock,
    /// `DEFAULT_RESERVATION_USD` (default 0.05): reserved when a request
    /// names no estimate.
    pub default_reservation: Money,
    /// `MAX_RESERVATION_USD` (default 10): estimates are capped here.
    pub max_reservation: Money,
    /// `MIN_RESERVATION_USD` (default: `DEFAULT_RESERVATION_USD`): the
    /// deployment's reservation floor. No header lowers a reservation below
    /// it (nor below the floor of any entity of the chain), so with floor
    /// `f` at most ⌊remaining / f⌋ requests are in flight on a window. 0
    /// turns that bound off (a client may then reserve nothing).
    pub min_reservation: Money,
    /// `AUTHORIZE_DEADLINE_MS` (default 2500): everything one authorization
    /// does — reads, writes, retries, backoff — ends within it; past it the
    /// request is denied `unavailable`. Keep it well under the authorize
    /// function's timeout (template.yaml, checked by tests/e2e/template.rs).
    pub authorize_deadline_ms: u64,
    /// `RESERVATION_TTL_SECONDS` (default 1800): after this an unsettled
    /// reservation is released by the reset job. Twice the longest request
    /// the default gateway allows (a 15-minute stream), so a reservation is
    /// never released while its request runs or its settle is retried.
    pub reservation_ttl_seconds: i64,
    /// `STORE_TIMEOUT_MS` (default 2000): the deadline of one store
    /// operation, retries included; past it authorize fails closed.
    pub store_timeout_ms: u64,
    /// `RESET_DEADLINE_MS` (default 45000): the reset job stops starting
    /// new work past this (keep it under the reset function's timeout,
    /// 60 s in template.yaml); what is left is done by the next run.
    pub reset_deadline_ms: u64,
    /// `METRICS_NAMESPACE` (default `EdgeBudget`): the CloudWatch namespace
    /// of the metrics embedded in the log lines (`metrics`).
    pub metrics_namespace: String,
    /// `BUDGET_ALERT_THRESHOLDS` (default `50,80,100`): percentages of a
    /// window's `max_budget` whose crossing sends one budget alert per
    /// window period (`alerts`), unless the entity names its own
    /// (`budget_alert_thresholds`). Empty list: `none`.
    pub alert_thresholds: Vec<u32>,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup` (tests pass a map). Long on purpose:
    /// one setting after another, each with its default and limits, so the
    /// whole list reads in one place.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let table_name = get("TABLE_NAME").ok_or(ConfigError::Missing("TABLE_NAME"))?;
        let tz = get("BUDGET_TIMEZONE").unwrap_or_else(|| "UTC".into());
        let reset_time = get("BUDGET_RESET_TIME").unwrap_or_else(|| "00:00".into());
        let clock = ResetClock::new(tz.trim(), reset_time.trim()).map_err(|e| {
            let name = match e {
                crate::duration::ClockError::Timezone(_) => "BUDGET_TIMEZONE",
                crate::duration::ClockError::ResetTime(_) => "BUDGET_RESET_TIME",
            };
            ConfigError::Invalid {
                name,
                message: e.to_string(),
            }
        })?;
        let money = |name: &'static str, default: &str| -> Result<Money, ConfigError> {
            let text = get(name).unwrap_or_else(|| default.into());
            Money::parse_decimal(&text).map_err(|e| ConfigError::Invalid {
                name,
                message: format!("\"{text}\" {e}"),
            })
        };
        let default_reservation = money("DEFAULT_RESERVATION_USD", "0.05")?;
        let max_reservation = money("MAX_RESERVATION_USD", "10")?;
        // The floor defaults to the default reservation (a request that
        // names no estimate reserves exactly the floor).
        let default_text = default_reservation.min(max_reservation).to_string();
        let min_reservation = money("MIN_RESERVATION_USD", &default_text)?;
        if min_reservation > max_reservation {
            return Err(ConfigError::Invalid {
                name: "MIN_RESERVATION_USD",
                message: format!(
                    "{min_reservation} is above MAX_RESERVATION_USD ({max_reservation})"
                ),
            });
        }
        if get("DEFAULT_RESERVATION_USD").is_some() && default_reservation < min_reservation {
            return Err(ConfigError::Invalid {
                name: "DEFAULT_RESERVATION_USD",
                message: format!(
                    "{default_reservation} is below MIN_RESERVATION_USD ({min_reservation}): it would never be reserved"
                ),
            });
        }
        let int =
            |name: &'static str, default: i64, min: i64, max: i64| -> Result<i64, ConfigError> {
                match get(name) {
                    None => Ok(default),
                    Some(text) => match text.trim().parse::<i64>() {
                        Ok(v) if (min..=max).contains(&v) => Ok(v),
                        _ => Err(ConfigError::Invalid {
                            name,
                            message: format!(
                                "expected a whole number from {min} to {max}, got \"{text}\""
                            ),
                        }),
                    },
                }
            };
        let reservation_ttl_seconds = int("RESERVATION_TTL_SECONDS", 1800, 1, 7 * 24 * 3600)?;
        let store_timeout_ms = int("STORE_TIMEOUT_MS", 2000, 50, 60_000)? as u64;
        let authorize_deadline_ms = int("AUTHORIZE_DEADLINE_MS", 2500, 50, 30_000)? as u64;
        let reset_deadline_ms = int("RESET_DEADLINE_MS", 45_000, 100, 900_000)? as u64;
        let metrics_namespace = get("METRICS_NAMESPACE").unwrap_or_else(|| "EdgeBudget".into());
        if let Some(message) = crate::metrics::namespace_problem(&metrics_namespace) {
            return Err(ConfigError::Invalid {
                name: "METRICS_NAMESPACE",
                message,
            });
        }
        let alert_thresholds = match get("BUDGET_ALERT_THRESHOLDS") {
            None => crate::alerts::DEFAULT_THRESHOLDS.to_vec(),
            Some(text) => {
                crate::alerts::parse_thresholds(&text).map_err(|message| ConfigError::Invalid {
                    name: "BUDGET_ALERT_THRESHOLDS",
                    message,
                })?
            }
        };
        Ok(Settings {
            metrics_namespace,
            alert_thresholds,
            table_name,
            clock,
            default_reservation: default_reservation
                .min(max_reservation)
                .max(min_reservation),
            max_reservation,
            min_reservation,
            authorize_deadline_ms,
            reset_deadline_ms,
            reservation_ttl_seconds,
            store_timeout_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let s = settings(&[("TABLE_NAME", "t")]).unwrap();
        assert_eq!(s.clock, ResetClock::utc_midnight());
        assert_eq!(s.default_reservation, Money::parse_decimal("0.05").unwrap());
        assert_eq!(s.max_reservation, Money::usd(10));
        assert_eq!(s.reservation_ttl_seconds, 1800);
        assert_eq!(s.min_reservation, s.default_reservation);
        assert_eq!(s.authorize_deadline_ms, 2500);
        assert_eq!(s.metrics_namespace, "EdgeBudget");
        assert_eq!(s.alert_thresholds, vec![50, 80, 100]);
        let s = settings(&[("TABLE_NAME", "t"), ("MIN_RESERVATION_USD", "0.5")]).unwrap();
        assert_eq!(s.default_reservation, Money::parse_decimal("0.5").unwrap());
    }

    #[test]
    fn errors_name_the_setting() {
        assert_eq!(
            settings(&[]).unwrap_err().to_string(),
            "TABLE_NAME is required but not set"
        );
        let e = settings(&[("TABLE_NAME", "t"), ("BUDGET_TIMEZONE", "Mars/Olympus")]).unwrap_err();
        // The name once (it used to read "BUDGET_TIMEZONE: BUDGET_TIMEZONE: …").
        assert_eq!(
            e.to_string(),
            "BUDGET_TIMEZONE: unknown IANA time zone \"Mars/Olympus\" (e.g. \"UTC\", \"America/New_York\")"
        );
        let e = settings(&[("TABLE_NAME", "t"), ("BUDGET_RESET_TIME", "25:00")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "BUDGET_RESET_TIME: expected HH:MM between 00:00 and 23:59, got \"25:00\""
        );
        let e = settings(&[("TABLE_NAME", "t"), ("MAX_RESERVATION_USD", "-3")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MAX_RESERVATION_USD: \"-3\" must not be negative"
        );
        let e = settings(&[("TABLE_NAME", "t"), ("MIN_RESERVATION_USD", "11")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "MIN_RESERVATION_USD: 11 is above MAX_RESERVATION_USD (10)"
        );
        let e = settings(&[
            ("TABLE_NAME", "t"),
            ("DEFAULT_RESERVATION_USD", "0.01"),
            ("MIN_RESERVATION_USD", "0.05"),
        ])
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("DEFAULT_RESERVATION_USD: 0.01 is below"),
            "{e}"
        );
        let e = settings(&[("TABLE_NAME", "t"), ("METRICS_NAMESPACE", "a b")]).unwrap_err();
        assert!(e.to_string().starts_with("METRICS_NAMESPACE"), "{e}");
        let e = settings(&[("TABLE_NAME", "t"), ("BUDGET_ALERT_THRESHOLDS", "80,x")]).unwrap_err();
        assert!(e.to_string().starts_with("BUDGET_ALERT_THRESHOLDS"), "{e}");
        let s = settings(&[("TABLE_NAME", "t"), ("BUDGET_ALERT_THRESHOLDS", "none")]).unwrap();
        assert!(s.alert_thresholds.is_empty());
        let s = settings(&[("TABLE_NAME", "t"), ("BUDGET_ALERT_THRESHOLDS", " 90, 75 ")]).unwrap();
        assert_eq!(s.alert_thresholds, vec![75, 90]);
        let e = settings(&[("TABLE_NAME", "t"), ("RESERVATION_TTL_SECONDS", "0")]).unwrap_err();
        assert!(e.to_string().starts_with("RESERVATION_TTL_SECONDS"), "{e}");
    }
}
