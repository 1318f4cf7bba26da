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
use serde_json::Value;

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
    "customer_blocked",
    "model_required",
    "model_not_budgeted",
    "model_budget_unavailable",
    "invalid_key",
    "invalid_request",
    "too_many_scopes",
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

/// A field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Str(String),
    Num(f64),
    Int(i64),
    Bool(bool),
    List(Vec<String>),
}

impl From<&str> for FieldValue {
    fn from(v: &str) -> FieldValue {
        FieldValue::Str(v.to_string())
    }
}
impl From<String> for FieldValue {
    fn from(v: String) -> FieldValue {
        FieldValue::Str(v)
    }
}
impl From<f64> for FieldValue {
    fn from(v: f64) -> FieldValue {
        FieldValue::Num(v)
    }
}
impl From<bool> for FieldValue {
    fn from(v: bool) -> FieldValue {
        FieldValue::Bool(v)
    }
}
impl From<Vec<String>> for FieldValue {
    fn from(v: Vec<String>) -> FieldValue {
        FieldValue::List(v)
    }
}
macro_rules! int_field {
    ($($t:ty),*) => {$(
        impl From<$t> for FieldValue {
            fn from(v: $t) -> FieldValue {
                FieldValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_field!(u16, u32, u64, usize, i64);

/// One log line: fields for people and queries, metrics for CloudWatch.
/// Rendered straight into one string (no intermediate JSON tree): it is
/// on the authorizer's path.
#[derive(Debug, Clone)]
pub struct Record {
    function: &'static str,
    level: &'static str,
    message: &'static str,
    fields: Vec<(&'static str, FieldValue)>,
    metrics: Vec<(&'static str, Unit, f64)>,
    /// A second dimension (name, value) and the metrics broken down by it.
    breakdown: Option<(&'static str, &'static str, &'static [&'static str])>,
}

/// Names every line has whatever its fields say.
const RESERVED: [&str; 5] = ["_aws", "timestamp", "level", "message", "Function"];

impl Record {
    /// A line of `function` (the `Function` dimension) saying `message`.
    pub fn new(function: &'static str, message: &'static str) -> Record {
        Record {
            function,
            level: "INFO",
            message,
            fields: Vec::with_capacity(24),
            metrics: Vec::with_capacity(8),
            breakdown: None,
        }
    }

    pub fn level(mut self, level: &'static str) -> Record {
        self.level = level;
        self
    }

    /// A field for the log only (not a metric, not a dimension); a second
    /// value for the same name replaces the first.
    pub fn field(mut self, name: &'static str, value: impl Into<FieldValue>) -> Record {
        let value = value.into();
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name, value)),
        }
        self
    }

    /// A field whose value may be absent (left out then).
    pub fn opt(self, name: &'static str, value: Option<impl Into<FieldValue>>) -> Record {
        match value {
            Some(v) => self.field(name, v),
            None => self,
        }
    }

    /// An amount, exact, as a decimal string (`"0.05"`).
    pub fn usd(self, name: &'static str, amount: Money) -> Record {
        self.field(name, amount.to_string())
    }

    pub fn metric(mut self, name: &'static str, unit: Unit, value: f64) -> Record {
        debug_assert!(
            METRIC_NAMES.contains(&name),
            "{name} is not in METRIC_NAMES"
        );
        match self.metrics.iter_mut().find(|(n, _, _)| *n == name) {
            Some(slot) => *slot = (name, unit, value),
            None => self.metrics.push((name, unit, value)),
        }
        self
    }

    /// Also publish `metrics` under the dimension `name` = `value`.
    pub fn breakdown(
        mut self,
        name: &'static str,
        value: &'static str,
        metrics: &'static [&'static str],
    ) -> Record {
        self.breakdown = Some((name, value, metrics));
        self
    }

    fn unit_of(&self, name: &str) -> Unit {
        self.metrics
            .iter()
            .find(|(m, _, _)| *m == name)
            .map_or(Unit::None, |(_, u, _)| *u)
    }

    /// The JSON line (without its newline).
    pub fn render(&self, namespace: &str, at: DateTime<Utc>) -> String {
        let mut o = String::with_capacity(1024);
        o.push_str("{\"_aws\":{\"Timestamp\":");
        push_int(&mut o, at.timestamp_millis());
        o.push_str(",\"CloudWatchMetrics\":[");
        self.directive(
            &mut o,
            namespace,
            None,
            &mut self.metrics.iter().map(|m| m.0),
        );
        if let Some((dim, _, names)) = self.breakdown {
            o.push(',');
            self.directive(&mut o, namespace, Some(dim), &mut names.iter().copied());
        }
        o.push_str("]},\"timestamp\":");
        push_str(&mut o, &at.to_rfc3339_opts(SecondsFormat::Millis, true));
        o.push_str(",\"level\":");
        push_str(&mut o, self.level);
        o.push_str(",\"message\":");
        push_str(&mut o, self.message);
        o.push_str(",\"Function\":");
        push_str(&mut o, self.function);
        if let Some((dim, value, _)) = self.breakdown {
            o.push(',');
            push_str(&mut o, dim);
            o.push(':');
            push_str(&mut o, value);
        }
        let taken = |n: &str| {
            RESERVED.contains(&n)
                || self.breakdown.is_some_and(|(d, _, _)| d == n)
                || self.metrics.iter().any(|(m, _, _)| *m == n)
        };
        for (name, value) in self.fields.iter().filter(|(n, _)| !taken(n)) {
            o.push(',');
            push_str(&mut o, name);
            o.push(':');
            match value {
                FieldValue::Str(v) => push_str(&mut o, v),
                FieldValue::Num(v) => push_num(&mut o, *v),
                FieldValue::Int(v) => push_int(&mut o, *v),
                FieldValue::Bool(v) => o.push_str(if *v { "true" } else { "false" }),
                FieldValue::List(list) => {
                    o.push('[');
                    for (i, v) in list.iter().enumerate() {
                        if i > 0 {
                            o.push(',');
                        }
                        push_str(&mut o, v);
                    }
                    o.push(']');
                }
            }
        }
        for (name, _, value) in &self.metrics {
            o.push(',');
            push_str(&mut o, name);
            o.push(':');
            push_num(&mut o, *value);
        }
        o.push('}');
        o
    }

    fn directive(
        &self,
        o: &mut String,
        namespace: &str,
        dim: Option<&str>,
        names: &mut dyn Iterator<Item = &'static str>,
    ) {
        o.push_str("{\"Namespace\":");
        push_str(o, namespace);
        o.push_str(",\"Dimensions\":[[\"Function\"");
        if let Some(d) = dim {
            o.push(',');
            push_str(o, d);
        }
        o.push_str("]],\"Metrics\":[");
        for (i, n) in names.enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"Name\":");
            push_str(o, n);
            o.push_str(",\"Unit\":\"");
            o.push_str(self.unit_of(n).as_str());
            o.push_str("\"}");
        }
        o.push_str("]}");
    }
}

/// `text` as a JSON string.
fn push_str(o: &mut String, text: &str) {
    use std::fmt::Write;
    o.push('"');
    for c in text.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
}

fn push_int(o: &mut String, v: i64) {
    use std::fmt::Write;
    let _ = write!(o, "{v}");
}

/// A JSON number (a non-finite value, which JSON cannot say, as 0).
fn push_num(o: &mut String, v: f64) {
    use std::fmt::Write;
    if v.is_finite() {
        let _ = write!(o, "{v}");
    } else {
        o.push('0');
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
        AuthorizeOutcome::Refused(KeyRefusal::CustomerBlocked) => Some("customer_blocked"),
        AuthorizeOutcome::Refused(KeyRefusal::ModelRequired) => Some("model_required"),
        AuthorizeOutcome::Refused(KeyRefusal::ModelNotBudgeted) => Some("model_not_budgeted"),
        AuthorizeOutcome::Refused(KeyRefusal::ModelBudgetUnavailable) => {
            Some("model_budget_unavailable")
        }
        AuthorizeOutcome::InvalidKey => Some("invalid_key"),
        AuthorizeOutcome::InvalidEstimate(_) => Some("invalid_request"),
        AuthorizeOutcome::TooManyScopes { .. } => Some("too_many_scopes"),
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
        AuthorizeOutcome::TooManyScopes { items } => r
            .level("WARN")
            .field("reason", "too_many_scopes")
            .field("items", *items),
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
        .field("sharded_visited", summary.sharded_visited)
        .field("shards_returned", summary.shards_returned)
        .field("headroom_returned_usd", summary.headroom_returned.as_f64())
        .field("shards_not_returned", summary.shards_not_returned)
        // The first few errors: enough to act on, bounded in size.
        .field(
            "errors",
            summary
                .errors
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<String>>(),
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
            estimate: Money::usd(1),
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

    /// Every refusal `denial_reason` names is in `REASONS` (the list the
    /// dashboard is checked against), and no two share a word.
    #[test]
    fn every_refusal_has_its_own_word_in_reasons() {
        let outcomes = [
            AuthorizeOutcome::InvalidKey,
            AuthorizeOutcome::InvalidEstimate("bad".into()),
            AuthorizeOutcome::Refused(KeyRefusal::Blocked),
            AuthorizeOutcome::Refused(KeyRefusal::Expired),
            AuthorizeOutcome::Refused(KeyRefusal::CustomerBlocked),
            AuthorizeOutcome::Refused(KeyRefusal::ModelRequired),
            AuthorizeOutcome::Refused(KeyRefusal::ModelNotBudgeted),
            AuthorizeOutcome::Refused(KeyRefusal::ModelBudgetUnavailable),
            AuthorizeOutcome::TooManyScopes { items: 101 },
            AuthorizeOutcome::Unavailable("timeout".into()),
        ];
        let mut words: Vec<&str> = outcomes.iter().filter_map(denial_reason).collect();
        words.push("budget"); // Denied: its Denial needs a whole entity
        for w in &words {
            assert!(REASONS.contains(w), "{w} is not in REASONS");
        }
        words.sort();
        words.dedup();
        assert_eq!(words.len(), REASONS.len(), "{words:?}");
    }

    #[test]
    fn reasons_are_fixed_words_and_unavailable_is_an_error() {
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
    fn any_text_in_a_field_comes_back_as_it_was() {
        let nasty = "a\"b\\c\n\u{1}\u{2028}é🦀}{";
        let line = Record::new("reset", "x")
            .field("error", nasty)
            .field("errors", vec![nasty.to_string()])
            .field("count", 3usize)
            .field("ok", true)
            .field("level", "not the level")
            .metric("ResetErrors", Unit::Count, f64::NAN)
            .render("EdgeBudget", at());
        let v: Value = serde_json::from_str(&line).expect(&line);
        assert_eq!(v["error"], nasty);
        assert_eq!(v["errors"][0], nasty);
        assert_eq!(
            (v["count"].as_i64(), v["ok"].as_bool()),
            (Some(3), Some(true))
        );
        assert_eq!(v["level"], "INFO", "a field cannot replace the line's own");
        assert_eq!(
            v["ResetErrors"], 0.0,
            "a non-finite metric is 0, not invalid JSON"
        );
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
