//! One JSON log line per operation — an authorize decision, a settle or
//! release, a run of the reset job, a batch of budget alerts — carrying its
//! CloudWatch metrics in the embedded metric format (EMF): CloudWatch Logs
//! turns the `_aws` member of the line into metrics, so no function makes a
//! request of its own to publish them (nothing on the hot path).
//!
//! Every rule of what a line says is here, once; the functions build a
//! [`Record`] with the `*_record` functions and hand it to an [`Emitter`].
//!
//! Dimensions are bounded by construction: a dimension value is a
//! `&'static str`, so it can only be one of the words written in this
//! crate (a function name, a denial reason, an operation), never a key, an
//! id, a window or anything else a client or an operator sends. Two
//! dimension sets exist: `[Function]` for every metric, and
//! `[Function, Reason]` for `Denied` (six reasons) — at most a few dozen
//! metrics per stack, whatever the number of keys.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use crate::decision::{rfc3339, KeyRefusal};
use crate::keys::hash_key;
use crate::model::{key_hash_prefix, Reservation};
use crate::money::Money;
use crate::service::stats::OpStats;
use crate::service::{AuthorizeOutcome, ResetSummary, MAX_KEY_BYTES};

/// Every metric name a line can carry (the template's alarms and dashboard
/// may name only these; `tests/e2e/template.rs` checks).
pub const METRIC_NAMES: &[&str] = &[
    "Admitted",
    "Denied",
    "ReservedUsd",
    "Settled",
    "Duplicates",
    "SettledUsd",
    "LateSettles",
    "Errors5xx",
    "ReservationsReleased",
    "WindowsReset",
    "EntitiesDue",
    "ResetBacklog",
    "ResetLagSeconds",
    "ResetErrors",
    "ResetStoppedAtDeadline",
    "AlertsSent",
    "AlertDuplicates",
    "AlertErrors",
    "Latency",
    "StoreLatency",
    "StoreRetries",
];

/// Every value of the `Reason` dimension.
pub const REASONS: &[&str] = &[
    "budget",
    "blocked",
    "expired",
    "invalid_key",
    "invalid_request",
    "unavailable",
];

/// The unit of a metric, as EMF names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Seconds,
    /// Amounts (USD): CloudWatch has no currency unit.
    None,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
            Unit::None => "None",
        }
    }
}

/// One log line: fields for people and queries, metrics for CloudWatch.
#[derive(Debug, Clone)]
pub struct Record {
    function: &'static str,
    level: &'static str,
    message: &'static str,
    fields: Map<String, Value>,
    metrics: Vec<(&'static str, Unit, f64)>,
    /// A second dimension (name, value) and the metrics broken down by it.
    breakdown: Option<(&'static str, &'static str, Vec<&'static str>)>,
}

impl Record {
    /// A line of `function` (the `Function` dimension) saying `message`.
    pub fn new(function: &'static str, message: &'static str) -> Record {
        Record {
            function,
            level: "INFO",
            message,
            fields: Map::new(),
            metrics: Vec::new(),
            breakdown: None,
        }
    }

    pub fn level(mut self, level: &'static str) -> Record {
        self.level = level;
        self
    }

    /// A field for the log only (not a metric, not a dimension).
    pub fn field(mut self, name: &str, value: impl Into<Value>) -> Record {
        self.fields.insert(name.to_string(), value.into());
        self
    }

    /// A field whose value may be absent (left out then).
    pub fn opt(self, name: &str, value: Option<impl Into<Value>>) -> Record {
        match value {
            Some(v) => self.field(name, v),
            None => self,
        }
    }

    /// An amount, exact, as a decimal string (`"0.05"`).
    pub fn usd(self, name: &str, amount: Money) -> Record {
        self.field(name, amount.to_string())
    }

    pub fn metric(mut self, name: &'static str, unit: Unit, value: f64) -> Record {
        debug_assert!(
            METRIC_NAMES.contains(&name),
            "{name} is not in METRIC_NAMES"
        );
        self.metrics.retain(|(n, _, _)| *n != name);
        self.metrics.push((name, unit, value));
        self
    }

    /// Also publish `metrics` under the dimension `name` = `value`.
    pub fn breakdown(
        mut self,
        name: &'static str,
        value: &'static str,
        metrics: &[&'static str],
    ) -> Record {
        self.breakdown = Some((name, value, metrics.to_vec()));
        self
    }

    /// The JSON line (without its newline).
    pub fn render(&self, namespace: &str, at: DateTime<Utc>) -> String {
        let mut line = Map::new();
        let definitions = |names: &mut dyn Iterator<Item = &'static str>| -> Vec<Value> {
            names
                .map(|n| {
                    let unit = self
                        .metrics
                        .iter()
                        .find(|(m, _, _)| *m == n)
                        .map_or(Unit::None, |(_, u, _)| *u);
                    json!({"Name": n, "Unit": unit.as_str()})
                })
                .collect()
        };
        let mut directives = vec![json!({
            "Namespace": namespace,
            "Dimensions": [["Function"]],
            "Metrics": definitions(&mut self.metrics.iter().map(|(n, _, _)| *n)),
        })];
        if let Some((dim, value, names)) = &self.breakdown {
            directives.push(json!({
                "Namespace": namespace,
                "Dimensions": [["Function", dim]],
                "Metrics": definitions(&mut names.iter().copied()),
            }));
            line.insert((*dim).to_string(), json!(value));
        }
        line.insert(
            "_aws".into(),
            json!({"Timestamp": at.timestamp_millis(), "CloudWatchMetrics": directives}),
        );
        line.insert(
            "timestamp".into(),
            json!(at.to_rfc3339_opts(SecondsFormat::Millis, true)),
        );
        line.insert("level".into(), json!(self.level));
        line.insert("message".into(), json!(self.message));
        line.insert("Function".into(), json!(self.function));
        for (k, v) in &self.fields {
            line.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (name, _, value) in &self.metrics {
            line.insert((*name).to_string(), json!(value));
        }
        Value::Object(line).to_string()
    }
}

/// Why `namespace` is not a CloudWatch namespace, if it is not one.
pub fn namespace_problem(namespace: &str) -> Option<String> {
    let ok = (1..=255).contains(&namespace.len())
        && !namespace.starts_with("AWS/")
        && namespace
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_/#:".contains(&b));
    (!ok).then(|| {
        format!(
            "\"{}\" is not a CloudWatch namespace (1 to 255 letters, digits or . - _ / # :, not starting with AWS/)",
            namespace.chars().take(40).collect::<String>()
        )
    })
}

/// Where lines go: standard output (Lambda sends it to CloudWatch Logs),
/// memory (tests read them back), or nowhere once rendered (benches).
#[derive(Debug, Clone)]
pub struct Emitter {
    namespace: String,
    memory: Option<Arc<Mutex<Vec<String>>>>,
    discard: bool,
}

impl Emitter {
    /// Lines to standard output, metrics in `namespace`.
    pub fn stdout(namespace: &str) -> Emitter {
        Emitter {
            namespace: namespace.to_string(),
            memory: None,
            discard: false,
        }
    }

    /// Lines rendered (their cost is paid) and dropped.
    pub fn discard(namespace: &str) -> Emitter {
        Emitter {
            discard: true,
            ..Emitter::stdout(namespace)
        }
    }

    /// Lines kept in memory (read them with [`Emitter::lines`]).
    pub fn memory(namespace: &str) -> Emitter {
        Emitter {
            namespace: namespace.to_string(),
            memory: Some(Arc::default()),
            discard: false,
        }
    }

    pub fn emit(&self, record: &Record, at: DateTime<Utc>) {
        let line = record.render(&self.namespace, at);
        match &self.memory {
            Some(lines) => {
                if let Ok(mut l) = lines.lock() {
                    l.push(line);
                }
            }
            None if self.discard => drop(line),
            None => println!("{line}"),
        }
    }

    /// The lines emitted so far, parsed (memory emitters only).
    pub fn lines(&self) -> Vec<Value> {
        self.memory
            .as_ref()
            .and_then(|m| m.lock().ok().map(|l| l.clone()))
            .unwrap_or_default()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The non-reversible name of a presented key: the first 12 hex digits of
/// its SHA-256 (what the admin API and the authorizer's context call it).
/// A value too long to be a key is not hashed.
pub fn key_id(presented: &str) -> String {
    if presented.len() > MAX_KEY_BYTES {
        "oversized".to_string()
    } else {
        key_hash_prefix(&hash_key(presented))
    }
}

fn with_stats(r: Record, latency: Duration, stats: &OpStats) -> Record {
    r.field("latency_ms", ms(latency))
        .field("store_calls", stats.store_calls)
        .field("store_ms", ms(stats.store_time))
        .field("retries", stats.retries)
        .metric("Latency", Unit::Milliseconds, ms(latency))
        .metric("StoreLatency", Unit::Milliseconds, ms(stats.store_time))
        .metric("StoreRetries", Unit::Count, stats.retries as f64)
}

/// The reason dimension of a refused authorization.
pub fn denial_reason(outcome: &AuthorizeOutcome) -> Option<&'static str> {
    match outcome {
        AuthorizeOutcome::Allowed { .. } => None,
        AuthorizeOutcome::Denied(_) => Some("budget"),
        AuthorizeOutcome::Refused(KeyRefusal::Blocked) => Some("blocked"),
        AuthorizeOutcome::Refused(KeyRefusal::Expired) => Some("expired"),
        AuthorizeOutcome::InvalidKey => Some("invalid_key"),
        AuthorizeOutcome::InvalidEstimate(_) => Some("invalid_request"),
        AuthorizeOutcome::Unavailable(_) => Some("unavailable"),
    }
}

/// What is known of one authorization besides its outcome.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeContext<'a> {
    /// The gateway's request id (none for TOKEN events).
    pub request_id: Option<&'a str>,
    /// The key as presented (only its hash prefix is logged).
    pub key: Option<&'a str>,
    /// The event's shape: `http_api`, `rest_request`, `rest_token`.
    pub event: &'static str,
    pub latency: Duration,
    pub stats: OpStats,
}

/// The line of one authorize decision. Metrics: `Admitted`, `Denied`
/// (also by `Reason`), `ReservedUsd`, `Latency`, `StoreLatency`,
/// `StoreRetries`.
pub fn authorize_record(outcome: &AuthorizeOutcome, cx: &AuthorizeContext<'_>) -> Record {
    let reason = denial_reason(outcome);
    let mut r = Record::new(
        "authorize",
        if reason.is_none() {
            "admitted"
        } else {
            "denied"
        },
    )
    .field("event", cx.event)
    .opt("request_id", cx.request_id)
    .opt("key", cx.key.map(key_id))
    .field(
        "decision",
        if reason.is_none() {
            "admitted"
        } else {
            "denied"
        },
    )
    .metric("Admitted", Unit::Count, reason.is_none() as u8 as f64)
    .metric("Denied", Unit::Count, reason.is_some() as u8 as f64)
    .metric("ReservedUsd", Unit::None, 0.0);
    if let Some(reason) = reason {
        r = r.breakdown("Reason", reason, &["Denied"]);
    }
    r = match outcome {
        AuthorizeOutcome::Allowed {
            reservation,
            admission,
            duplicate,
        } => {
            let mut r = r
                .field("reservation_id", reservation.id.as_str())
                .field("key", key_hash_prefix(&reservation.key_hash))
                .opt("user_id", reservation.user_id.as_deref())
                .opt("team_id", reservation.team_id.as_deref())
                .usd("reserved_usd", reservation.amount)
                .field("duplicate", *duplicate);
            if let Some(rem) = admission.remaining {
                r = r.usd("remaining_usd", rem);
            }
            if let Some((entity, span)) = &admission.tightest {
                r = r
                    .field("entity", entity.kind.as_str())
                    .field("entity_id", entity.display_id())
                    .field("window", span.id());
            }
            // A retry's reservation was counted when it was taken.
            let reserved = if *duplicate {
                0.0
            } else {
                reservation.amount.as_f64()
            };
            r.metric("ReservedUsd", Unit::None, reserved)
        }
        AuthorizeOutcome::Denied(d) => r
            .field("reason", "budget_exceeded")
            .field("entity", d.entity.kind.as_str())
            .field("entity_id", d.entity.display_id())
            .field("window", d.span.id())
            .usd("limit_usd", d.max)
            .usd("spend_usd", d.spend)
            .usd("reserved_usd", d.reserved)
            .opt("reset_at", d.reset_at.map(rfc3339)),
        AuthorizeOutcome::Refused(k) => r.field("reason", k.reason()),
        AuthorizeOutcome::InvalidKey => r.field("reason", "invalid_key"),
        AuthorizeOutcome::InvalidEstimate(m) => r
            .field("reason", "invalid_request")
            .field("error", m.as_str()),
        AuthorizeOutcome::Unavailable(e) => r
            .level("ERROR")
            .field("reason", "unavailable")
            .field("error", e.as_str()),
    };
    with_stats(r, cx.latency, &cx.stats)
}

/// What one settle or release request came to.
#[derive(Debug, Clone)]
pub struct SettleReport<'a> {
    /// `settle` or `release` (`unknown` for a path that is neither).
    pub operation: &'static str,
    pub status: u16,
    pub request_id: Option<&'a str>,
    /// The id as sent (only its part before the receipt is logged).
    pub reservation_id: Option<&'a str>,
    pub cost: Option<Money>,
    /// The reservation it finished, and whether it had been finished before.
    pub finished: Option<(&'a Reservation, bool)>,
    pub error: Option<&'a str>,
    pub latency: Duration,
    pub stats: OpStats,
}

/// The line of one settle or release. Metrics: `Settled` (first time),
/// `Duplicates`, `SettledUsd` (cost recorded the first time),
/// `LateSettles` (after the reset job released the reservation),
/// `Errors5xx`, `Latency`, `StoreLatency`, `StoreRetries`.
pub fn settle_record(s: &SettleReport<'_>) -> Record {
    let first = matches!(s.finished, Some((_, false)));
    let duplicate = matches!(s.finished, Some((_, true)));
    let message = match (s.finished, s.status) {
        (Some((_, true)), _) => "settle duplicate",
        (Some(_), _) => "settled",
        (None, 500..) => "settle failed",
        (None, _) => "settle refused",
    };
    let level = match s.status {
        500.. => "ERROR",
        _ => "INFO",
    };
    let mut r = Record::new("settle-spend", message)
        .level(level)
        .field("operation", s.operation)
        .field("status", s.status)
        .opt("request_id", s.request_id)
        .opt(
            "reservation_id",
            s.reservation_id.map(|id| {
                crate::receipt::base_id(id)
                    .chars()
                    .take(40)
                    .collect::<String>()
            }),
        )
        .opt("error", s.error)
        .metric("Settled", Unit::Count, first as u8 as f64)
        .metric("Duplicates", Unit::Count, duplicate as u8 as f64)
        .metric("SettledUsd", Unit::None, 0.0)
        .metric("LateSettles", Unit::Count, 0.0)
        .metric("Errors5xx", Unit::Count, (s.status >= 500) as u8 as f64);
    if let Some(cost) = s.cost {
        r = r.usd("cost_usd", cost);
    }
    if let Some((res, duplicate)) = s.finished {
        r = r
            .field("key", key_hash_prefix(&res.key_hash))
            .opt("user_id", res.user_id.as_deref())
            .opt("team_id", res.team_id.as_deref())
            .usd("reserved_usd", res.amount)
            .field("duplicate", duplicate);
        if !duplicate {
            let cost = s.cost.unwrap_or(Money::ZERO);
            r = r.metric("SettledUsd", Unit::None, cost.as_f64()).metric(
                "LateSettles",
                Unit::Count,
                res.expired_at.is_some() as u8 as f64,
            );
        }
    }
    with_stats(r, s.latency, &s.stats)
}

/// The line of one run of the reset job. Metrics: `ReservationsReleased`
/// (expired reservations it released: requests that never settled),
/// `WindowsReset`, `EntitiesDue`, `ResetBacklog` (expired reservations
/// left for the next run), `ResetLagSeconds` (how long the oldest of them
/// has been expired; 0 without a backlog), `ResetErrors`,
/// `ResetStoppedAtDeadline`, `Latency`.
pub fn reset_record(summary: &ResetSummary, trigger: &str, latency: Duration) -> Record {
    let errors = summary.errors.len();
    let r = Record::new("reset", "reset done")
        .level(if errors > 0 { "ERROR" } else { "INFO" })
        .field("trigger", trigger)
        .field("windows_reset", summary.windows_reset)
        .field("reservations_released", summary.reservations_released)
        .field("entities_due", summary.entities_due)
        .field("already_rolled", summary.already_rolled)
        .field("stopped_at_deadline", summary.stopped_at_deadline)
        .field("backlog_reservations", summary.backlog_reservations)
        .opt("oldest_expired_seconds", summary.oldest_expired_seconds)
        // The first few errors: enough to act on, bounded in size.
        .field(
            "errors",
            summary.errors.iter().take(5).cloned().collect::<Vec<_>>(),
        )
        .field("error_count", errors)
        .metric(
            "ReservationsReleased",
            Unit::Count,
            summary.reservations_released as f64,
        )
        .metric("WindowsReset", Unit::Count, summary.windows_reset as f64)
        .metric("EntitiesDue", Unit::Count, summary.entities_due as f64)
        .metric(
            "ResetBacklog",
            Unit::Count,
            summary.backlog_reservations as f64,
        )
        .metric(
            "ResetLagSeconds",
            Unit::Seconds,
            summary.oldest_expired_seconds.unwrap_or(0).max(0) as f64,
        )
        .metric("ResetErrors", Unit::Count, errors as f64)
        .metric(
            "ResetStoppedAtDeadline",
            Unit::Count,
            summary.stopped_at_deadline as u8 as f64,
        );
    r.field("latency_ms", ms(latency))
        .metric("Latency", Unit::Milliseconds, ms(latency))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::Denial;
    use crate::model::{EntityRef, Span};
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap()
    }

    fn cx(key: Option<&str>) -> AuthorizeContext<'_> {
        AuthorizeContext {
            request_id: Some("req-1"),
            key,
            event: "http_api",
            latency: Duration::from_micros(2500),
            stats: OpStats {
                store_calls: 2,
                store_time: Duration::from_millis(2),
                retries: 1,
            },
        }
    }

    /// The metric names each directive of `line` declares, with their
    /// dimension sets, after checking every declared metric is a number
    /// at the root and every dimension a string (what CloudWatch needs to
    /// extract them).
    fn declared(line: &Value) -> Vec<(Vec<String>, Vec<String>)> {
        let aws = &line["_aws"];
        assert!(aws["Timestamp"].is_i64(), "{line}");
        aws["CloudWatchMetrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                assert_eq!(d["Namespace"], "EdgeBudget");
                let dims: Vec<String> = d["Dimensions"][0]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                for dim in &dims {
                    assert!(line[dim].is_string(), "dimension {dim} in {line}");
                }
                let names: Vec<String> = d["Metrics"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["Name"].as_str().unwrap().to_string())
                    .collect();
                for n in &names {
                    assert!(line[n].is_number(), "metric {n} in {line}");
                }
                (dims, names)
            })
            .collect()
    }

    #[test]
    fn a_budget_denial_counts_under_its_reason_and_names_the_window() {
        let d = Denial {
            entity: EntityRef::user("u-1"),
            span: Span::parse_id("1d").unwrap(),
            max: Money::usd(150),
            spend: Money::usd(150),
            reserved: Money::ZERO,
            reset_at: Some(at()),
            retry_after: Some(1),
        };
        let outcome = AuthorizeOutcome::Denied(Box::new(d));
        let line: Value = serde_json::from_str(
            &authorize_record(&outcome, &cx(Some("sk-secret-key"))).render("EdgeBudget", at()),
        )
        .unwrap();
        let directives = declared(&line);
        assert_eq!(directives[1].0, vec!["Function", "Reason"]);
        assert_eq!(directives[1].1, vec!["Denied"]);
        assert_eq!(
            (line["Denied"].as_f64(), line["Admitted"].as_f64()),
            (Some(1.0), Some(0.0))
        );
        assert_eq!(line["Reason"], "budget");
        assert_eq!(line["entity_id"], "u-1");
        assert_eq!(line["window"], "1d");
        assert_eq!(line["limit_usd"], "150");
        assert_eq!(line["StoreRetries"], 1.0);
        assert_eq!(line["latency_ms"], 2.5);
        let text = line.to_string();
        assert!(!text.contains("sk-secret-key"), "{text}");
        assert_eq!(line["key"], key_id("sk-secret-key"));
        assert_eq!(line["key"].as_str().unwrap().len(), 12);
    }

    #[test]
    fn every_reason_is_one_of_six_fixed_words() {
        let outcomes = [
            AuthorizeOutcome::InvalidKey,
            AuthorizeOutcome::InvalidEstimate("x-budget-reserve bad".into()),
            AuthorizeOutcome::Refused(KeyRefusal::Blocked),
            AuthorizeOutcome::Refused(KeyRefusal::Expired),
            AuthorizeOutcome::Unavailable("store unavailable: timeout".into()),
        ];
        let reasons: Vec<_> = outcomes.iter().filter_map(denial_reason).collect();
        assert_eq!(
            reasons,
            [
                "invalid_key",
                "invalid_request",
                "blocked",
                "expired",
                "unavailable"
            ]
        );
        let line: Value = serde_json::from_str(
            &authorize_record(&outcomes[4], &cx(None)).render("EdgeBudget", at()),
        )
        .unwrap();
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["Reason"], "unavailable");
        assert!(line.get("key").is_none());
    }

    #[test]
    fn an_oversized_key_is_not_hashed() {
        assert_eq!(key_id(&"k".repeat(MAX_KEY_BYTES + 1)), "oversized");
    }

    #[test]
    fn a_reset_run_reports_its_backlog_and_lag() {
        let summary = ResetSummary {
            reservations_released: 3,
            backlog_reservations: 7,
            oldest_expired_seconds: Some(125),
            stopped_at_deadline: true,
            errors: vec!["e".into(); 9],
            ..ResetSummary::default()
        };
        let line: Value = serde_json::from_str(
            &reset_record(
                &summary,
                "aws.events / Scheduled Event",
                Duration::from_secs(1),
            )
            .render("EdgeBudget", at()),
        )
        .unwrap();
        let directives = declared(&line);
        assert_eq!(directives.len(), 1);
        assert_eq!(line["ReservationsReleased"], 3.0);
        assert_eq!(line["ResetBacklog"], 7.0);
        assert_eq!(line["ResetLagSeconds"], 125.0);
        assert_eq!(line["ResetErrors"], 9.0);
        assert_eq!(line["errors"].as_array().unwrap().len(), 5);
        assert_eq!(line["level"], "ERROR");
    }

    #[test]
    fn namespaces_are_checked() {
        assert_eq!(namespace_problem("EdgeBudget/prod-1"), None);
        assert!(namespace_problem("").is_some());
        assert!(namespace_problem("AWS/Lambda").is_some());
        assert!(namespace_problem("a b").is_some());
    }

    #[test]
    fn memory_emitters_keep_their_lines_apart() {
        let a = Emitter::memory("EdgeBudget");
        let b = Emitter::memory("EdgeBudget");
        a.emit(&Record::new("reset", "x"), at());
        assert_eq!(a.lines().len(), 1);
        assert!(b.lines().is_empty());
    }
}
