//! The API Gateway Lambda authorizer: finds the key, checks every window of
//! every scope of its chain (key, user, team, organization), and reserves
//! the estimate in one atomic write.
//!
//! Accepts HTTP API payload 2.0 REQUEST events (answered with a simple
//! response), and REST REQUEST and TOKEN events (answered with an IAM
//! policy for the `methodArn`).

use aws_lambda_events::apigw::{
    ApiGatewayCustomAuthorizerPolicy, ApiGatewayCustomAuthorizerRequest,
    ApiGatewayCustomAuthorizerRequestTypeRequest, ApiGatewayCustomAuthorizerResponse,
    ApiGatewayV2CustomAuthorizerSimpleResponse, ApiGatewayV2CustomAuthorizerV2Request,
};
use aws_lambda_events::http::HeaderMap;
use aws_lambda_events::iam::{IamPolicyEffect, IamPolicyStatement};
use budget_core::decision::{rfc3339, Denial};
use budget_core::metrics::{authorize_record, AuthorizeContext, Emitter};
use budget_core::model::key_hash_prefix;
use budget_core::money::MoneyError;
use budget_core::service::{measured, AuthorizeOutcome, Authorizer, RequestScopes, Requested};
use budget_core::store::BudgetStore;
use budget_core::Money;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Why an event could not be answered at all. `Unauthorized` is the exact
/// message API Gateway turns into a 401 for REST authorizers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthorizeError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("malformed authorizer event: {0}")]
    Malformed(String),
}

/// What the Lambda runtime reports: API Gateway reads `errorMessage`
/// (`Unauthorized` → 401); `errorType` names the kind for logs.
impl From<AuthorizeError> for lambda_runtime::Diagnostic {
    fn from(e: AuthorizeError) -> lambda_runtime::Diagnostic {
        let error_type = match e {
            AuthorizeError::Unauthorized => "Unauthorized",
            AuthorizeError::Malformed(_) => "MalformedEvent",
        };
        lambda_runtime::Diagnostic {
            error_type: error_type.to_string(),
            error_message: e.to_string(),
        }
    }
}

/// The three event shapes this function answers.
#[derive(Debug)]
enum Event {
    HttpApi(Box<ApiGatewayV2CustomAuthorizerV2Request>),
    RestRequest(Box<ApiGatewayCustomAuthorizerRequestTypeRequest>),
    RestToken(ApiGatewayCustomAuthorizerRequest),
}

fn parse_event(event: Value) -> Result<Event, AuthorizeError> {
    let Value::Object(map) = &event else {
        return Err(AuthorizeError::Malformed("expected a JSON object".into()));
    };
    let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
    let malformed = |e: serde_json::Error| AuthorizeError::Malformed(e.to_string());
    match (text("version").as_deref(), text("type").as_deref()) {
        (Some("2.0"), Some("REQUEST")) => Ok(Event::HttpApi(Box::new(
            serde_json::from_value(event).map_err(malformed)?,
        ))),
        (_, Some("TOKEN")) => {
            let e: ApiGatewayCustomAuthorizerRequest =
                serde_json::from_value(event).map_err(malformed)?;
            if e.method_arn.is_none() {
                return Err(AuthorizeError::Malformed("TOKEN event without methodArn".into()));
            }
            Ok(Event::RestToken(e))
        }
        (_, Some("REQUEST")) => {
            let e: ApiGatewayCustomAuthorizerRequestTypeRequest =
                serde_json::from_value(event).map_err(malformed)?;
            if e.method_arn.is_none() {
                return Err(AuthorizeError::Malformed("REQUEST event without methodArn".into()));
            }
            Ok(Event::RestRequest(Box::new(e)))
        }
        (version, kind) => Err(AuthorizeError::Malformed(format!(
            "expected an API Gateway authorizer event (type REQUEST or TOKEN), got type {kind:?} version {version:?}"
        ))),
    }
}

/// `Authorization: Bearer <key>` or `x-api-key: <key>` (names are
/// case-insensitive; `HeaderMap` already is). Only a `Bearer` credential
/// is a key: another scheme (`Basic`, a SigV4 signature) falls through to
/// `x-api-key`.
fn key_from_headers(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        if let Some(key) = bearer(v) {
            return Some(key);
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_string)
}

/// The credential of `Bearer <credential>` (scheme case-insensitive).
fn bearer(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(char::is_whitespace)?;
    let key = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then(|| key.to_string())
}

/// A TOKEN authorizer's token: `Bearer <key>`, or the bare key when the
/// identity source is a header that carries only the key (`x-api-key`).
/// Any other scheme is no key.
fn token_key(value: &str) -> Option<String> {
    let value = value.trim();
    if value.contains(char::is_whitespace) {
        bearer(value)
    } else {
        (!value.is_empty()).then(|| value.to_string())
    }
}

/// Reads `x-budget-reserve`. A negative amount asks for nothing (and gets
/// the floor); an amount past `MAX_USD` asks for the most; text that is
/// not a decimal amount is refused with a message that does not quote it.
pub fn requested_from_header(header: Option<&str>) -> Result<Requested, String> {
    match header.map(str::trim) {
        None | Some("") => Ok(Requested::Default),
        Some(text) => match Money::parse_decimal(text) {
            Ok(m) => Ok(Requested::Amount(m)),
            Err(MoneyError::Negative) => Ok(Requested::Amount(Money::ZERO)),
            Err(MoneyError::TooLarge) => Ok(Requested::Amount(Money::from_nanos(i64::MAX))),
            // No client text in the message: the REST API's 429 template
            // substitutes it into a JSON body without escaping.
            Err(e) => Err(format!("x-budget-reserve {e}")),
        },
    }
}

/// What the allow context (and the upstream's `x-budget-customer-id`,
/// `x-budget-model`, `x-budget-tags`) says when the request named no
/// customer, model or tags: `(none)` has characters no id, model name or
/// tag may have.
pub const NOT_NAMED: &str = "(none)";

/// The headers that name the request's end customer (LiteLLM's own): the
/// customer is charged as named — the header is the client's claim, and
/// the LiteLLM integration checks it against the body.
pub const CUSTOMER_HEADERS: [&str; 2] = ["x-litellm-customer-id", "x-litellm-end-user-id"];

/// The scopes a request names in its headers, checked in bounded time
/// (each header at most once, an id of at most 128 ASCII letters, digits
/// and `._-:@+` — the ids DynamoDB keys are made of): a customer id, or
/// none when neither header is sent (or both are empty). A bad value is
/// refused with a message that does not quote it; both headers naming
/// different customers is refused too.
pub fn scopes_from_headers(headers: &HeaderMap) -> Result<RequestScopes, String> {
    let mut customer: Option<String> = None;
    for name in CUSTOMER_HEADERS {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(format!("{name} is given more than once"));
        }
        let text = value
            .to_str()
            .map_err(|_| format!("{name} must be plain ASCII"))?
            .trim();
        if text.is_empty() {
            continue;
        }
        if let Some(problem) = budget_core::ids::problem(text) {
            return Err(format!(
                "{name} must be 1 to {} ASCII letters, digits or {} ({problem})",
                budget_core::ids::MAX_ID_BYTES,
                budget_core::ids::ID_PUNCTUATION
            ));
        }
        match &customer {
            Some(c) if c != text => {
                return Err(format!(
                    "{} and {} name different customers",
                    CUSTOMER_HEADERS[0], CUSTOMER_HEADERS[1]
                ))
            }
            _ => customer = Some(text.to_string()),
        }
    }
    let model = model_from_headers(headers)?;
    let tags = tags_from_headers(headers)?;
    Ok(RequestScopes {
        customer,
        model,
        tags,
    })
}

/// The header that names a request's tags (LiteLLM's), comma separated.
pub const TAGS_HEADER: &str = "x-litellm-tags";

/// `x-litellm-tags: a, b`: once, plain ASCII, then the core's rules for a
/// list of tags (`budget_core::service::request_tags`: bounded, each an
/// id, distinct, sorted, at most `MAX_REQUEST_TAGS`).
fn tags_from_headers(headers: &HeaderMap) -> Result<Vec<String>, String> {
    let mut values = headers.get_all(TAGS_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(Vec::new());
    };
    if values.next().is_some() {
        return Err(format!("{TAGS_HEADER} is given more than once"));
    }
    if value.len() > budget_core::service::MAX_REQUEST_TAGS_BYTES {
        return Err(format!(
            "{TAGS_HEADER} is longer than {} bytes",
            budget_core::service::MAX_REQUEST_TAGS_BYTES
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| format!("{TAGS_HEADER} must be plain ASCII"))?;
    budget_core::service::request_tags(text, TAGS_HEADER)
}

/// The header that names the model a request calls (LiteLLM's hint).
pub const MODEL_HEADER: &str = "x-litellm-model";

fn model_from_headers(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all(MODEL_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("{MODEL_HEADER} is given more than once"));
    }
    let text = value
        .to_str()
        .map_err(|_| format!("{MODEL_HEADER} must be plain ASCII"))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    if !budget_core::ids::is_model_name(text) {
        return Err(format!(
            "{MODEL_HEADER} must be 1 to {} ASCII letters, digits or ._-:@+/",
            budget_core::ids::MAX_ID_BYTES
        ));
    }
    Ok(Some(text.to_string()))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Answers one authorizer event: the three event shapes in, the three
/// answer shapes out (the match on each is why it is this long). Writes
/// the decision's log line (with its metrics) to standard output.
pub async fn handle<S: BudgetStore>(
    authorizer: &Authorizer<S>,
    event: Value,
    now: DateTime<Utc>,
) -> Result<Value, AuthorizeError> {
    handle_logged(
        authorizer,
        &Emitter::stdout(&authorizer.settings.metrics_namespace),
        event,
        now,
    )
    .await
}

/// [`handle`], writing the decision's line to `emitter`. An event that
/// is not an authorizer event at all is an error and no decision (the
/// runtime logs it; Lambda counts it in `Errors`).
pub async fn handle_logged<S: BudgetStore>(
    authorizer: &Authorizer<S>,
    emitter: &Emitter,
    event: Value,
    now: DateTime<Utc>,
) -> Result<Value, AuthorizeError> {
    let started = Instant::now();
    let event = parse_event(event)?;
    let (key, estimate_header, request_id, shape) = match &event {
        Event::HttpApi(e) => (
            key_from_headers(&e.headers),
            header(&e.headers, "x-budget-reserve").map(str::to_string),
            e.request_context.request_id.clone(),
            "http_api",
        ),
        Event::RestRequest(e) => (
            key_from_headers(&e.headers),
            header(&e.headers, "x-budget-reserve").map(str::to_string),
            e.request_context.request_id.clone(),
            "rest_request",
        ),
        Event::RestToken(e) => (
            e.authorization_token.as_deref().and_then(token_key),
            None,
            None,
            "rest_token",
        ),
    };
    let named = match &event {
        Event::HttpApi(e) => scopes_from_headers(&e.headers),
        // `headers` keeps only the last value of a repeated header, which
        // need not be the one the upstream reads: the scopes are read
        // from every value (`multiValueHeaders`), so a repeat is refused.
        Event::RestRequest(e) if !e.multi_value_headers.is_empty() => {
            scopes_from_headers(&e.multi_value_headers)
        }
        Event::RestRequest(e) => scopes_from_headers(&e.headers),
        Event::RestToken(_) => Ok(RequestScopes::default()),
    };
    let decide = async {
        match (&key, &named) {
            (None, _) => AuthorizeOutcome::InvalidKey,
            // Nothing is read or written on a bad header.
            (Some(_), Err(message)) => AuthorizeOutcome::InvalidEstimate(message.clone()),
            (Some(key), Ok(named)) => match requested_from_header(estimate_header.as_deref()) {
                Err(message) => AuthorizeOutcome::InvalidEstimate(message),
                Ok(requested) => {
                    authorizer
                        .authorize_for(key, named, requested, request_id.as_deref(), now)
                        .await
                }
            },
        }
    };
    let (outcome, stats) = measured(decide).await;
    let context = AuthorizeContext {
        request_id: request_id.as_deref(),
        key: key.as_deref(),
        event: shape,
        latency: started.elapsed(),
        stats,
    };
    emitter.emit(&authorize_record(&outcome, &context), now);
    let (allowed, principal, mut context) = answer(&outcome);
    if allowed {
        // What was charged, for the upstream (the gateway passes it on in
        // headers of its own, which a client cannot set). Never empty: a
        // mapping of an empty value might leave a client's header in place,
        // so "none" is NOT_NAMED, which no id, model or tag can be.
        let named = named.ok().unwrap_or_default();
        let or_none = |v: Option<String>| v.unwrap_or_else(|| NOT_NAMED.to_string());
        context.insert("customer_id".into(), json!(or_none(named.customer)));
        context.insert("model".into(), json!(or_none(named.model)));
        let tags = (!named.tags.is_empty()).then(|| named.tags.join(","));
        context.insert("tags".into(), json!(or_none(tags)));
    }
    match event {
        Event::HttpApi(_) => {
            let mut response = ApiGatewayV2CustomAuthorizerSimpleResponse::<Value>::default();
            response.is_authorized = allowed;
            response.context = Value::Object(context);
            serde_json::to_value(response).map_err(|e| AuthorizeError::Malformed(e.to_string()))
        }
        Event::RestRequest(_) | Event::RestToken(_) if outcome == AuthorizeOutcome::InvalidKey => {
            Err(AuthorizeError::Unauthorized)
        }
        Event::RestRequest(e) => rest_policy(
            allowed,
            principal,
            e.method_arn.unwrap_or_default(),
            context,
        ),
        Event::RestToken(e) => rest_policy(
            allowed,
            principal,
            e.method_arn.unwrap_or_default(),
            context,
        ),
    }
}

fn rest_policy(
    allowed: bool,
    principal: String,
    method_arn: String,
    context: Map<String, Value>,
) -> Result<Value, AuthorizeError> {
    let mut statement = IamPolicyStatement::default();
    statement.action = vec!["execute-api:Invoke".to_string()];
    statement.effect = if allowed {
        IamPolicyEffect::Allow
    } else {
        IamPolicyEffect::Deny
    };
    statement.resource = vec![method_arn];
    let mut policy = ApiGatewayCustomAuthorizerPolicy::default();
    policy.version = Some("2012-10-17".to_string());
    policy.statement = vec![statement];
    let mut response = ApiGatewayCustomAuthorizerResponse::<Value>::default();
    response.principal_id = Some(principal);
    response.policy_document = policy;
    response.context = Value::Object(context);
    serde_json::to_value(response).map_err(|e| AuthorizeError::Malformed(e.to_string()))
}

fn usd(m: budget_core::Money) -> Value {
    json!(m.as_f64())
}

/// Allowed?, the principal, and the flat context (strings and numbers only,
/// as API Gateway requires).
fn answer(outcome: &AuthorizeOutcome) -> (bool, String, Map<String, Value>) {
    let mut c = Map::new();
    match outcome {
        AuthorizeOutcome::Allowed {
            reservation,
            admission,
            ..
        } => {
            allowed_context(&mut c, reservation, admission);
            let principal = reservation
                .user_id
                .clone()
                .unwrap_or_else(|| key_hash_prefix(&reservation.key_hash));
            (true, principal, c)
        }
        AuthorizeOutcome::Denied(d) => {
            deny_context(&mut c, d);
            (false, d.entity.display_id(), c)
        }
        AuthorizeOutcome::Refused(r) => {
            c.insert("reason".into(), json!(r.reason()));
            let message = match r {
                budget_core::decision::KeyRefusal::Blocked => "This key is blocked.",
                budget_core::decision::KeyRefusal::Expired => "This key has expired.",
                budget_core::decision::KeyRefusal::CustomerBlocked => {
                    "The customer this request names is blocked."
                }
                budget_core::decision::KeyRefusal::ModelRequired => {
                    "This key has per-model budgets: name the model in x-litellm-model."
                }
                budget_core::decision::KeyRefusal::ModelNotBudgeted => {
                    "This key has per-model budgets and none for the model named in x-litellm-model: it may call only the models it has budgets for."
                }
                budget_core::decision::KeyRefusal::ModelBudgetUnavailable => {
                    "The budget of this model on this key could not be read; refused (fail closed)."
                }
            };
            c.insert("message".into(), json!(message));
            (false, "key".into(), c)
        }
        AuthorizeOutcome::InvalidKey => {
            c.insert("reason".into(), json!("invalid_key"));
            c.insert("message".into(), json!("Missing or unknown API key."));
            (false, "anonymous".into(), c)
        }
        AuthorizeOutcome::InvalidEstimate(message) => {
            c.insert("reason".into(), json!("invalid_request"));
            c.insert("message".into(), json!(message));
            (false, "anonymous".into(), c)
        }
        AuthorizeOutcome::TooManyScopes { items } => {
            c.insert("reason".into(), json!("too_many_scopes"));
            c.insert(
                "message".into(),
                json!(format!(
                    "This request is governed by more budget scopes than one atomic write can check ({items} items, at most {}); refused, nothing was reserved.",
                    budget_core::model::MAX_TRANSACTION_ITEMS
                )),
            );
            (false, "anonymous".into(), c)
        }
        AuthorizeOutcome::Unavailable(_) => {
            c.insert("reason".into(), json!("unavailable"));
            c.insert(
                "message".into(),
                json!("Budget store unavailable; request refused (fail closed). Try again."),
            );
            (false, "anonymous".into(), c)
        }
    }
}

/// The context of an allowed request: what the upstream and settle need.
fn allowed_context(
    c: &mut Map<String, Value>,
    reservation: &budget_core::model::Reservation,
    admission: &budget_core::decision::Admission,
) {
    // The id with its receipt: settle can then write without reading.
    c.insert(
        "reservation_id".into(),
        json!(budget_core::receipt::external_id(reservation)),
    );
    // The id alone, for the access logs: the receipt names the key's
    // whole hash.
    c.insert("reservation".into(), json!(reservation.id));
    c.insert(
        "key_hash".into(),
        json!(key_hash_prefix(&reservation.key_hash)),
    );
    c.insert(
        "user_id".into(),
        json!(reservation.user_id.clone().unwrap_or_default()),
    );
    c.insert(
        "team_id".into(),
        json!(reservation.team_id.clone().unwrap_or_default()),
    );
    c.insert("reserved".into(), usd(reservation.amount));
    if let Some(remaining) = admission.remaining {
        c.insert("remaining".into(), usd(remaining));
    }
    if let Some((entity, span)) = &admission.tightest {
        c.insert(
            "tightest_window".into(),
            json!(format!(
                "{}:{}:{}",
                entity.kind,
                entity.display_id(),
                span.id()
            )),
        );
    }
}

fn deny_context(c: &mut Map<String, Value>, d: &Denial) {
    c.insert("reason".into(), json!("budget_exceeded"));
    c.insert("entity".into(), json!(d.entity.kind.as_str()));
    c.insert("entity_id".into(), json!(d.entity.display_id()));
    c.insert("budget_duration".into(), json!(d.span.id()));
    c.insert("max_budget".into(), usd(d.max));
    c.insert("spend".into(), usd(d.spend));
    c.insert("reserved".into(), usd(d.reserved));
    c.insert("estimate".into(), usd(d.estimate));
    c.insert(
        "reset_at".into(),
        json!(d.reset_at.map(rfc3339).unwrap_or_default()),
    );
    if let Some(after) = d.retry_after {
        c.insert("retry_after".into(), json!(after));
    }
    c.insert("message".into(), json!(d.message()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_only_a_request() {
        assert_eq!(requested_from_header(None), Ok(Requested::Default));
        assert_eq!(requested_from_header(Some(" ")), Ok(Requested::Default));
        assert_eq!(
            requested_from_header(Some("-1")),
            Ok(Requested::Amount(Money::ZERO))
        );
        assert_eq!(
            requested_from_header(Some("1e30")),
            Ok(Requested::Amount(Money::from_nanos(i64::MAX)))
        );
        let e = requested_from_header(Some("\"}{")).unwrap_err();
        assert!(!e.contains('"'), "{e}");
    }

    /// API Gateway's REST event keeps a repeated header's last value in
    /// `headers` and every value in `multiValueHeaders`: a model named
    /// twice (first the budgeted one the upstream reads, last a cheap one)
    /// is refused, not charged to the last.
    #[test]
    fn a_repeated_scope_header_of_a_rest_request_is_refused() {
        let event = parse_event(serde_json::json!({
            "type": "REQUEST",
            "methodArn": "arn:aws:execute-api:us-east-1:123456789012:abc/api/POST/v1/chat",
            "headers": {"x-litellm-model": "cheap", "authorization": "Bearer sk-x"},
            "multiValueHeaders": {
                "x-litellm-model": ["gpt-4o", "cheap"],
                "authorization": ["Bearer sk-x"]
            },
            "requestContext": {"requestId": "r"}
        }))
        .expect("a REST request event");
        let Event::RestRequest(e) = &event else {
            panic!("not read as a REST request");
        };
        assert!(
            scopes_from_headers(&e.headers).is_ok(),
            "the last value alone"
        );
        let err = scopes_from_headers(&e.multi_value_headers).unwrap_err();
        assert!(err.contains("more than once"), "{err}");
    }

    #[test]
    fn customer_headers_are_checked_and_never_quoted() {
        let with = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(*n, v.parse().unwrap());
            }
            scopes_from_headers(&h)
        };
        assert_eq!(with(&[]).unwrap().customer, None);
        assert_eq!(
            with(&[("x-litellm-customer-id", " ")]).unwrap().customer,
            None
        );
        assert_eq!(
            with(&[("x-litellm-customer-id", "cust-1")])
                .unwrap()
                .customer
                .as_deref(),
            Some("cust-1")
        );
        assert_eq!(
            with(&[
                ("x-litellm-end-user-id", "cust-2"),
                ("x-litellm-customer-id", "cust-2")
            ])
            .unwrap()
            .customer
            .as_deref(),
            Some("cust-2")
        );
        let long = "a".repeat(129);
        for bad in [
            vec![("x-litellm-customer-id", "a#b")],
            vec![("x-litellm-customer-id", "\"}{")],
            vec![("x-litellm-customer-id", long.as_str())],
            vec![
                ("x-litellm-customer-id", "a"),
                ("x-litellm-customer-id", "b"),
            ],
            vec![
                ("x-litellm-customer-id", "a"),
                ("x-litellm-end-user-id", "b"),
            ],
        ] {
            let e = with(&bad).unwrap_err();
            assert!(!e.contains('"') && !e.contains("}{"), "{e}");
        }
    }

    #[test]
    fn keys_come_from_bearer_or_x_api_key() {
        let mut h = HeaderMap::new();
        h.insert("Authorization", "Bearer sk-abc".parse().unwrap());
        assert_eq!(key_from_headers(&h).as_deref(), Some("sk-abc"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "bearer   sk-abc ".parse().unwrap());
        assert_eq!(key_from_headers(&h).as_deref(), Some("sk-abc"));
        let mut h = HeaderMap::new();
        h.insert("X-Api-Key", "sk-xyz".parse().unwrap());
        assert_eq!(key_from_headers(&h).as_deref(), Some("sk-xyz"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(key_from_headers(&h), None);
        // Another scheme is not a key: x-api-key is used instead.
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(key_from_headers(&h), None);
        h.insert("x-api-key", "sk-xyz".parse().unwrap());
        assert_eq!(key_from_headers(&h).as_deref(), Some("sk-xyz"));
        let mut h = HeaderMap::new();
        h.insert("authorization", "sk-bare".parse().unwrap());
        assert_eq!(key_from_headers(&h), None);
        assert_eq!(token_key("sk-raw").as_deref(), Some("sk-raw"));
        assert_eq!(token_key("Bearer sk-raw").as_deref(), Some("sk-raw"));
        assert_eq!(token_key("Basic sk-raw"), None);
    }

    #[test]
    fn malformed_events_are_named() {
        for (event, expected) in [
            (json!("text"), "expected a JSON object"),
            (json!({}), "expected an API Gateway authorizer event"),
            (json!({"type": "TOKEN"}), "TOKEN event without methodArn"),
            (
                json!({"version": "2.0", "type": "REQUEST"}),
                "missing field `requestContext`",
            ),
            (
                json!({"type": "REQUEST", "requestContext": {}}),
                "REQUEST event without methodArn",
            ),
        ] {
            let err = parse_event(event).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
