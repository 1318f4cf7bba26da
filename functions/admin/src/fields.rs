//! Reading the fields of LiteLLM-shaped bodies: ids, owners, flags,
//! expiry, custom keys, and the fields edge-budget keeps without acting on
//! them (`attributes`). Every problem is a 400 naming the field; nothing
//! here ever echoes a key.

use crate::limits::Patch;
use budget_core::duration::{BudgetDuration, Unit};
use budget_core::ids::{problem, MAX_ID_BYTES};
use budget_core::keys::{hash_key, is_key_hash};
use budget_core::Money;
use chrono::{DateTime, Months, Utc};
use http_api::{money_value, optional_str, ApiError};
use serde_json::{Map, Value};

/// Shortest custom key accepted (the `sk-` prefix included).
pub const MIN_CUSTOM_KEY_CHARS: usize = 32;
/// Fewest distinct characters after `sk-` in a custom key: a key of few
/// distinct characters can be brute-forced from its hash prefix in logs.
pub const MIN_CUSTOM_KEY_DISTINCT: usize = 8;
/// Longest custom key accepted.
pub const MAX_CUSTOM_KEY_CHARS: usize = 256;
/// Most ids in one delete request.
pub const MAX_IDS_PER_DELETE: usize = 100;

/// JSON types of LiteLLM fields that edge-budget keeps without acting on
/// them. A value of another type is a 400 naming the field (a typo caught
/// now, not a surprise later); `null` is always accepted. Other LiteLLM
/// fields are kept whatever their type; a field that is not LiteLLM's nor
/// ours never gets here (`known::check` refused it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Bool,
    Object,
    Array,
    Int,
    Number,
}

const LITELLM_FIELDS: &[(&str, Kind)] = &[
    ("key_alias", Kind::Str),
    ("team_alias", Kind::Str),
    ("user_alias", Kind::Str),
    ("user_email", Kind::Str),
    ("user_role", Kind::Str),
    ("budget_id", Kind::Str),
    ("organization_id", Kind::Str),
    ("metadata", Kind::Object),
    ("aliases", Kind::Object),
    ("config", Kind::Object),
    ("permissions", Kind::Object),
    ("model_max_budget", Kind::Object),
    ("model_rpm_limit", Kind::Object),
    ("model_tpm_limit", Kind::Object),
    ("models", Kind::Array),
    ("tags", Kind::Array),
    ("guardrails", Kind::Array),
    ("allowed_cache_controls", Kind::Array),
    ("members_with_roles", Kind::Array),
    ("teams", Kind::Array),
    ("tpm_limit", Kind::Int),
    ("rpm_limit", Kind::Int),
    ("max_parallel_requests", Kind::Int),
    ("soft_budget", Kind::Number),
    ("team_member_budget", Kind::Number),
    ("temp_budget_increase", Kind::Number),
    ("spend", Kind::Number),
    ("send_invite_email", Kind::Bool),
    ("auto_create_key", Kind::Bool),
];

fn type_ok(kind: Kind, v: &Value) -> bool {
    match (kind, v) {
        (_, Value::Null) => true,
        (Kind::Str, Value::String(_)) => true,
        (Kind::Bool, Value::Bool(_)) => true,
        (Kind::Object, Value::Object(_)) => true,
        (Kind::Array, Value::Array(_)) => true,
        (Kind::Int, Value::Number(n)) => n.is_i64() || n.is_u64(),
        (Kind::Number, Value::Number(_)) => true,
        _ => false,
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Str => "a string",
        Kind::Bool => "true or false",
        Kind::Object => "a JSON object",
        Kind::Array => "a list",
        Kind::Int => "a whole number",
        Kind::Number => "a number",
    }
}

/// The fields of `body` that are not in `acted_on`, type-checked where
/// LiteLLM's type is known, to keep as given.
pub fn attributes(
    body: &Map<String, Value>,
    acted_on: &[&str],
) -> Result<Map<String, Value>, ApiError> {
    let mut out = Map::new();
    for (name, value) in body {
        if acted_on.contains(&name.as_str()) {
            continue;
        }
        if let Some((_, kind)) = LITELLM_FIELDS.iter().find(|(n, _)| n == name) {
            if !type_ok(*kind, value) {
                return Err(ApiError::bad_request(
                    name,
                    format!("{name} must be {} or null", kind_name(*kind)),
                ));
            }
        }
        let value = alert_field(name, value)?;
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// `soft_budget` (an amount, acted on by budget alerts) and
/// `budget_alert_thresholds` (an edge-budget extension: percentages of
/// `max_budget`, whole numbers from 1 to 1000, at most 10), checked and
/// normalised (thresholds sorted, without repeats).
fn alert_field(name: &str, value: &Value) -> Result<Value, ApiError> {
    use budget_core::alerts::{
        checked, MAX_THRESHOLDS, MAX_THRESHOLD_PERCENT, SOFT_BUDGET_FIELD, THRESHOLDS_FIELD,
    };
    if value.is_null() {
        return Ok(Value::Null);
    }
    if name == SOFT_BUDGET_FIELD {
        money_value(name, value)?;
    }
    if name != THRESHOLDS_FIELD {
        return Ok(value.clone());
    }
    let message = format!(
        "{name} must be a list of at most {MAX_THRESHOLDS} whole percentages of max_budget from 1 to {MAX_THRESHOLD_PERCENT} (e.g. [50, 80, 100]), or null"
    );
    let bad = || ApiError::bad_request(name, message.clone());
    let list = value.as_array().ok_or_else(bad)?;
    let percents = list
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| (1..=MAX_THRESHOLD_PERCENT).contains(p))
        })
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(bad)?;
    let percents = checked(percents).map_err(|_| bad())?;
    Ok(Value::from(percents))
}

/// `id` if valid, or a 400 naming `field` (the message does not echo the
/// id: it may be long or hold characters that need escaping).
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    match problem(id) {
        None => Ok(()),
        Some(why) => Err(ApiError::bad_request(
            field,
            format!(
                "{field} must be 1 to {MAX_ID_BYTES} ASCII letters, digits or . _ - : @ + ({why})"
            ),
        )),
    }
}

/// A string field: absent, `null`, or a non-empty string of at most 256
/// characters without control characters.
pub fn str_patch(body: &Map<String, Value>, field: &str) -> Result<Patch<String>, ApiError> {
    match body.get(field) {
        None => Ok(Patch::Absent),
        Some(Value::Null) => Ok(Patch::Null),
        Some(_) => Ok(optional_str(body, field)?.map_or(Patch::Null, Patch::Value)),
    }
}

/// A user or team id field (`user_id`, `team_id`): absent, `null`, or an
/// id valid by `budget_core::ids` (1 to 128 bytes of ASCII letters,
/// digits and `. _ - : @ +`).
pub fn id_patch(body: &Map<String, Value>, field: &str) -> Result<Patch<String>, ApiError> {
    match body.get(field) {
        None => Ok(Patch::Absent),
        Some(Value::Null) => Ok(Patch::Null),
        Some(Value::String(id)) => {
            check_id(field, id)?;
            Ok(Patch::Value(id.clone()))
        }
        Some(_) => Err(ApiError::bad_request(
            field,
            format!("{field} must be a string"),
        )),
    }
}

/// A required user or team id field.
pub fn required_id(body: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match id_patch(body, field)? {
        Patch::Value(id) => Ok(id),
        _ => Err(ApiError::bad_request(field, format!("{field} is required"))),
    }
}

/// A list of user or team ids (`user_ids`, `team_ids`), as [`id_list`],
/// each entry a valid id.
pub fn owner_id_list(body: &Map<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
    let ids = id_list(body, field)?;
    for (i, id) in ids.iter().enumerate() {
        check_id(&format!("{field}[{i}]"), id).map_err(|mut e| {
            e.param = Some(field.to_string());
            e
        })?;
    }
    Ok(ids)
}

/// A key named by plaintext or token, checked before it is hashed: at
/// most [`MAX_CUSTOM_KEY_CHARS`] characters (no key is longer).
pub fn check_named_key(field: &str, key: &str) -> Result<(), ApiError> {
    if key.chars().count() > MAX_CUSTOM_KEY_CHARS {
        return Err(ApiError::bad_request(
            field,
            format!("{field} must be at most {MAX_CUSTOM_KEY_CHARS} characters"),
        ));
    }
    Ok(())
}

/// The largest `reservation_floor` accepted, in USD.
pub const MAX_RESERVATION_FLOOR_USD: i64 = 1_000_000;

/// `reservation_floor` (an edge-budget extension): the least a request
/// charged to this entity reserves. Absent, `null` (cleared: the
/// deployment's floor applies), or a JSON number of USD, 0 to
/// [`MAX_RESERVATION_FLOOR_USD`].
pub fn floor_patch(body: &Map<String, Value>) -> Result<Patch<Money>, ApiError> {
    const FIELD: &str = "reservation_floor";
    match body.get(FIELD) {
        None => Ok(Patch::Absent),
        Some(Value::Null) => Ok(Patch::Null),
        Some(v) => {
            let floor = money_value(FIELD, v)?;
            if floor > Money::usd(MAX_RESERVATION_FLOOR_USD) {
                return Err(ApiError::bad_request(
                    FIELD,
                    format!("{FIELD} must be at most {MAX_RESERVATION_FLOOR_USD} USD"),
                ));
            }
            Ok(Patch::Value(floor))
        }
    }
}

/// `budget_shards` (an edge-budget extension): how many escrow shards a
/// user's or team's windows are split over, 1 to
/// [`budget_core::escrow::MAX_SHARDS`]; absent or `null`: unchanged (1 on
/// creation, not sharded).
pub fn shards_field(body: &Map<String, Value>) -> Result<Option<u32>, ApiError> {
    const FIELD: &str = "budget_shards";
    let max = budget_core::escrow::MAX_SHARDS;
    match body.get(FIELD) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(k) if (1..=u64::from(max)).contains(&k) => Ok(Some(k as u32)),
            _ => Err(ApiError::bad_request(
                FIELD,
                format!("{FIELD} must be a whole number from 1 to {max}"),
            )),
        },
        Some(_) => Err(ApiError::bad_request(
            FIELD,
            format!("{FIELD} must be a whole number from 1 to {max}"),
        )),
    }
}

/// A boolean field: absent, `null`, or `true`/`false`.
pub fn bool_patch(body: &Map<String, Value>, field: &str) -> Result<Patch<bool>, ApiError> {
    match body.get(field) {
        None => Ok(Patch::Absent),
        Some(Value::Null) => Ok(Patch::Null),
        Some(Value::Bool(b)) => Ok(Patch::Value(*b)),
        Some(_) => Err(ApiError::bad_request(
            field,
            format!("{field} must be true or false"),
        )),
    }
}

/// A key's expiry from `expires` (RFC 3339) or `duration` (its lifetime
/// from `now`, LiteLLM's `"24h"`, `"30d"`): absent, `null` (never expires)
/// or an instant. Both at once is a 400.
pub fn expiry_patch(
    body: &Map<String, Value>,
    now: DateTime<Utc>,
) -> Result<Patch<DateTime<Utc>>, ApiError> {
    let duration = match body.get("duration") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(expiry_from_duration(s, now)?),
        Some(_) => {
            return Err(ApiError::bad_request(
                "duration",
                "duration must be a string such as \"24h\" or \"30d\"",
            ))
        }
    };
    let expires = match body.get("expires") {
        None => Patch::Absent,
        Some(Value::Null) => Patch::Null,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Patch::Value(t.with_timezone(&Utc)),
            Err(e) => {
                return Err(ApiError::bad_request(
                    "expires",
                    format!(
                        "expires must be an RFC 3339 time such as \"2026-12-31T23:59:59Z\": {e}"
                    ),
                ))
            }
        },
        Some(_) => {
            return Err(ApiError::bad_request(
                "expires",
                "expires must be an RFC 3339 time such as \"2026-12-31T23:59:59Z\"",
            ))
        }
    };
    match (duration, expires) {
        (Some(_), Patch::Value(_)) => Err(ApiError::bad_request(
            "duration",
            "give either duration or expires, not both",
        )),
        (Some(at), _) => Ok(Patch::Value(at)),
        (None, expires) => Ok(expires),
    }
}

/// `now` plus a LiteLLM key `duration`: `Ns`, `Nm`, `Nh`, `Nd`, `Nw` are
/// exact seconds; `Nmo` is N calendar months (the day of month kept, or
/// the month's last day when it has fewer).
pub fn expiry_from_duration(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let d = BudgetDuration::parse(text).map_err(|e| {
        let message = e
            .to_string()
            .replacen("invalid budget_duration", "invalid duration", 1);
        ApiError::bad_request("duration", message)
    })?;
    let at = match d.unit() {
        Unit::Month => now.checked_add_months(Months::new(d.n())),
        _ => now.checked_add_signed(chrono::Duration::seconds(d.approx_seconds())),
    };
    at.ok_or_else(|| ApiError::bad_request("duration", "duration is too long"))
}

/// A custom key given to `/key/generate`: `sk-`, then at least 29 more
/// printable ASCII characters (32 to 256 in all), at least 8 of them
/// distinct. The message never contains the key.
pub fn custom_key(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let key = match body.get("key") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(ApiError::bad_request(
                "key",
                "key must be a string starting with sk-",
            ))
        }
    };
    if !key.starts_with("sk-") {
        return Err(ApiError::bad_request(
            "key",
            "a custom key must start with sk-",
        ));
    }
    let chars = key.chars().count();
    if !(MIN_CUSTOM_KEY_CHARS..=MAX_CUSTOM_KEY_CHARS).contains(&chars) {
        return Err(ApiError::bad_request(
            "key",
            format!(
                "a custom key must have {MIN_CUSTOM_KEY_CHARS} to {MAX_CUSTOM_KEY_CHARS} characters (it has {chars}); better, let /key/generate make one"
            ),
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "key",
            "a custom key may only contain printable ASCII characters without spaces",
        ));
    }
    let mut distinct: Vec<u8> = key.as_bytes()[3..].to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_CUSTOM_KEY_DISTINCT {
        return Err(ApiError::bad_request(
            "key",
            format!(
                "a custom key must have at least {MIN_CUSTOM_KEY_DISTINCT} distinct characters after sk- (it has {}): a key that simple can be guessed; better, let /key/generate make one",
                distinct.len()
            ),
        ));
    }
    Ok(Some(key.clone()))
}

/// A key named by a request: its plaintext (`sk-…`) or its `token` (the
/// SHA-256 hash). Returns the hash.
pub fn key_hash_of(named: &str) -> String {
    if is_key_hash(named) {
        named.to_string()
    } else {
        hash_key(named)
    }
}

/// `"sk-...abcd"`: how LiteLLM names a key without showing it.
pub fn key_name(key: &str) -> String {
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("sk-...{tail}")
}

/// A non-empty list of ids (`keys`, `user_ids`, `team_ids`), each a string,
/// duplicates dropped (first occurrence kept).
pub fn id_list(body: &Map<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
    let items = match body.get(field) {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request(field, format!("{field} is required")))
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ApiError::bad_request(
                field,
                format!("{field} must be a list of strings"),
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::bad_request(
            field,
            format!("{field} must name at least one"),
        ));
    }
    if items.len() > MAX_IDS_PER_DELETE {
        return Err(ApiError::bad_request(
            field,
            format!(
                "{field} names {} entries: at most {MAX_IDS_PER_DELETE} per request",
                items.len()
            ),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item {
            Value::String(s) if !s.trim().is_empty() && s.chars().count() <= 256 => {
                if !out.contains(s) {
                    out.push(s.clone());
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    field,
                    format!("{field}[{i}] must be a non-empty string of at most 256 characters"),
                ))
            }
        }
    }
    Ok(out)
}

/// A LiteLLM-style generated id (a random UUID v4) for `/user/new` and
/// `/team/new` without an id.
pub fn new_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
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

    #[test]
    fn fields_not_acted_on_are_kept_and_litellm_ones_type_checked() {
        let b =
            body(json!({"user_id": "u", "models": ["gpt-4o"], "whatever": {"x": 1}, "tags": null}));
        let a = attributes(&b, &["user_id"]).unwrap();
        assert_eq!(
            Value::Object(a),
            json!({"models": ["gpt-4o"], "whatever": {"x": 1}, "tags": null})
        );
        for (b, field) in [
            (json!({"metadata": "x"}), "metadata"),
            (json!({"models": "gpt-4o"}), "models"),
            (json!({"tpm_limit": 1.5}), "tpm_limit"),
            (json!({"key_alias": 3}), "key_alias"),
        ] {
            assert_eq!(
                attributes(&body(b), &[]).unwrap_err().param.as_deref(),
                Some(field)
            );
        }
    }

    #[test]
    fn reservation_floors() {
        assert_eq!(floor_patch(&body(json!({}))).unwrap(), Patch::Absent);
        assert_eq!(
            floor_patch(&body(json!({"reservation_floor": null}))).unwrap(),
            Patch::Null
        );
        assert_eq!(
            floor_patch(&body(json!({"reservation_floor": 0.25}))).unwrap(),
            Patch::Value(Money::from_nanos(250_000_000))
        );
        assert_eq!(
            floor_patch(&body(json!({"reservation_floor": 1_000_000}))).unwrap(),
            Patch::Value(Money::usd(1_000_000))
        );
        for bad in [
            json!(1_000_000.01),
            json!(-1),
            json!("0.5"),
            json!(true),
            json!([1]),
        ] {
            let e = floor_patch(&body(json!({"reservation_floor": bad}))).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("reservation_floor"), "{bad}");
        }
    }

    #[test]
    fn durations_set_expiry() {
        let now = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
        assert_eq!(
            expiry_from_duration("24h", now).unwrap(),
            now + chrono::Duration::hours(24)
        );
        assert_eq!(
            expiry_from_duration("30d", now).unwrap(),
            now + chrono::Duration::days(30)
        );
        assert_eq!(
            expiry_from_duration("1mo", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 2, 28, 12, 0, 0).unwrap()
        );
        let e = expiry_from_duration("1y", now).unwrap_err();
        assert!(
            e.message.starts_with("invalid duration \"1y\""),
            "{}",
            e.message
        );
        let e = expiry_patch(
            &body(json!({"duration": "1d", "expires": "2027-01-01T00:00:00Z"})),
            now,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("duration"));
        assert_eq!(
            expiry_patch(&body(json!({"expires": "2027-01-01T00:00:00+01:00"})), now).unwrap(),
            Patch::Value(Utc.with_ymd_and_hms(2026, 12, 31, 23, 0, 0).unwrap())
        );
        assert_eq!(
            expiry_patch(&body(json!({"expires": null})), now).unwrap(),
            Patch::Null
        );
        assert_eq!(
            expiry_patch(&body(json!({"expires": "tomorrow"})), now)
                .unwrap_err()
                .param
                .as_deref(),
            Some("expires")
        );
    }

    #[test]
    fn bad_ids_are_400_naming_the_field_without_echoing_the_id() {
        assert_eq!(check_id("user_id", "alice@example.com"), Ok(()));
        for bad in ["", "a\"b", "a b", &"a".repeat(3000)] {
            let e = check_id("team_id", bad).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, Some("team_id")));
            assert!(
                e.message.starts_with("team_id must be 1 to 128"),
                "{}",
                e.message
            );
            if bad.len() > 1 {
                assert!(!e.message.contains(bad), "the id is not echoed");
            }
        }
        assert!(check_id("user_id", &"a".repeat(3000))
            .unwrap_err()
            .message
            .ends_with("(it has 3000 bytes)"));
    }

    #[test]
    fn custom_keys() {
        assert_eq!(custom_key(&body(json!({}))).unwrap(), None);
        let ok = "sk-custom-0123456789abcdef-ghijk";
        assert_eq!(ok.len(), MIN_CUSTOM_KEY_CHARS);
        assert_eq!(
            custom_key(&body(json!({"key": ok}))).unwrap().as_deref(),
            Some(ok)
        );
        for bad in [
            json!("pk-0123456789abcdefghij"),
            json!("sk-short"),
            json!("sk-with space 0123456789abcdefghij"),
            json!("sk-custom-0123456789abcdef-ghij"),
            json!(format!("sk-{}", "ab".repeat(40))),
            json!(format!("sk-{}", "abcdefg".repeat(10))),
            json!(5),
        ] {
            let e = custom_key(&body(json!({"key": bad}))).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("key"));
            if let Value::String(s) = &bad {
                assert!(!e.message.contains(s.as_str()));
            }
        }
        assert_eq!(key_name("sk-0123456789abcdef"), "sk-...cdef");
        let h = hash_key(ok);
        assert_eq!(key_hash_of(ok), h);
        assert_eq!(key_hash_of(&h), h);
    }

    #[test]
    fn id_lists() {
        assert_eq!(
            id_list(&body(json!({"ids": ["a", "b", "a"]})), "ids").unwrap(),
            vec!["a", "b"]
        );
        for b in [
            json!({}),
            json!({"ids": []}),
            json!({"ids": "a"}),
            json!({"ids": [1]}),
            json!({"ids": [""]}),
        ] {
            assert_eq!(
                id_list(&body(b), "ids").unwrap_err().param.as_deref(),
                Some("ids")
            );
        }
        let id = new_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(new_id(), id);
    }
}
