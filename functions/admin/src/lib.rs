//! The management API: keys, users, teams and organizations with their
//! budget windows,
//! with LiteLLM's routes, field names and shapes so existing scripts keep
//! working.
//!
//! Every route requires `Authorization: Bearer <MASTER_KEY>` (or, as in
//! LiteLLM, `x-litellm-api-key: <MASTER_KEY>`: behind IAM authorization the
//! `Authorization` header holds the SigV4 signature), compared in constant
//! time before anything else is looked at. A route matches by method and
//! its whole path, optionally after ONE prefix: an API Gateway stage
//! segment (`/prod/key/info`; letters, digits, `-`, `_`, and not `key`,
//! `user`, `team` or `organization`) or `cargo lambda watch`'s Function URL prefix
//! `/lambda-url/<function>` (see `http_api::routes`). Any other path is
//! a 404 and writes nothing (`/key/x/team/delete` is not `/team/delete`):
//!
//! | route | method | body / query |
//! |---|---|---|
//! | `/key/generate` | POST | `key_alias`, `user_id`, `team_id`, `max_budget`, `budget_duration`, `budget_limits`, `reservation_floor`, `duration`, `expires`, `blocked`, `metadata`, `key`, … |
//! | `/key/update` | POST | `key` or `token`, then any field of `/key/generate` |
//! | `/key/info` | GET | `?key=` plaintext or token |
//! | `/key/delete` | POST | `keys: [...]` plaintexts or tokens |
//! | `/key/block`, `/key/unblock` | POST | `key` |
//! | `/user/new`, `/user/update` | POST | `user_id`, `max_budget`, `budget_duration`, `budget_limits`, `reservation_floor`, … |
//! | `/user/info` | GET | `?user_id=` |
//! | `/user/delete` | POST | `user_ids: [...]` |
//! | `/team/new`, `/team/update` | POST | `team_id`, `team_alias`, `max_budget`, `budget_duration`, `budget_limits`, `reservation_floor`, … |
//! | `/team/info` | GET | `?team_id=` |
//! | `/team/delete` | POST | `team_ids: [...]` |
//! | `/organization/new`, `/organization/update` | POST | `organization_id`, `organization_alias`, `max_budget`, `budget_duration`, `budget_limits`, `reservation_floor`, … |
//! | `/organization/info` | GET | `?organization_id=` |
//! | `/organization/delete` | POST | `organization_ids: [...]` |
//!
//! | `/customer/new`, `/customer/update` (and `/end_user/…`) | POST | `user_id` (the customer's id), `alias`, `blocked`, `max_budget`, `budget_duration`, `budget_limits`, `reservation_floor`, … |
//! | `/customer/info` | GET | `?end_user_id=` |
//! | `/customer/delete` | POST | `user_ids: [...]` |
//! | `/customer/block`, `/customer/unblock` | POST | `user_ids: [...]` |
//! | `/tag/new`, `/tag/update` | POST | `name`, `description`, `max_budget`, `budget_duration`, `budget_limits`, `reservation_floor`, … |
//! | `/tag/info` | POST | `names: [...]` |
//! | `/tag/delete` | POST | `name` |
//! | `/team/member_add` | POST | `team_id`, `member` (one or a list, each with `user_id`), `max_budget_in_team`, `budget_duration`, `budget_limits` |
//! | `/team/member_update` | POST | `team_id`, `user_id`, `max_budget_in_team`, `budget_duration`, `budget_limits` |
//! | `/team/member_delete` | POST | `team_id`, `user_id` |
//!
//! A team joins an organization with `organization_id` on `/team/new` or
//! `/team/update` (the organization must exist; `null` leaves it).
//!
//! Errors are `{"error": {"message", "type", "param"}}`: 400 invalid (the
//! param names the field, or none when DynamoDB refused the write itself),
//! 401, 404, 405, 409, 500 `store_rejected` (DynamoDB refused a read: not
//! retryable), 503 (store unavailable, retry). A refused request writes
//! nothing.

pub mod fields;
pub mod known;
pub mod limits;
mod ops;
pub mod view;

use budget_core::keys::secrets_equal;
use budget_core::model::EntityKind;
use budget_core::store::AdminStore;
use budget_core::Settings;
use chrono::{DateTime, Utc};
use http_api::ApiError;
use lambda_http::http::{header, HeaderValue, Method, StatusCode};
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::Value;

/// Largest request body read (LiteLLM payloads are a few hundred bytes).
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The master key from `MASTER_KEY` (surrounding white space dropped), or
/// the message to stop the function with.
pub fn master_key_from_env() -> Result<String, String> {
    master_key_from(std::env::var("MASTER_KEY").ok())
}

fn master_key_from(value: Option<String>) -> Result<String, String> {
    match value.map(|v| v.trim().to_string()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err("MASTER_KEY is required but not set: every admin route needs Authorization: Bearer <MASTER_KEY>, so the admin function refuses to start without one".into()),
    }
}

/// The master key, or the process ends with a message naming `MASTER_KEY`
/// (Lambda reports it as an init error).
pub fn master_key_or_exit() -> String {
    match master_key_from_env() {
        Ok(k) => k,
        Err(message) => {
            eprintln!("edge-budget admin: cannot start: {message}");
            std::process::exit(2);
        }
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    KeyGenerate,
    KeyUpdate,
    KeyInfo,
    KeyDelete,
    KeyBlock(bool),
    CustomerBlock(bool),
    TagInfo,
    TagDelete,
    New(EntityKind),
    Update(EntityKind),
    Info(EntityKind),
    Delete(EntityKind),
    MemberAdd,
    MemberUpdate,
    MemberDelete,
}

const ROUTES: &[(&str, Method, Op)] = &[
    ("/key/generate", Method::POST, Op::KeyGenerate),
    ("/key/update", Method::POST, Op::KeyUpdate),
    ("/key/info", Method::GET, Op::KeyInfo),
    ("/key/delete", Method::POST, Op::KeyDelete),
    ("/key/block", Method::POST, Op::KeyBlock(true)),
    ("/key/unblock", Method::POST, Op::KeyBlock(false)),
    ("/user/new", Method::POST, Op::New(EntityKind::User)),
    ("/user/update", Method::POST, Op::Update(EntityKind::User)),
    ("/user/info", Method::GET, Op::Info(EntityKind::User)),
    ("/user/delete", Method::POST, Op::Delete(EntityKind::User)),
    ("/team/new", Method::POST, Op::New(EntityKind::Team)),
    ("/team/update", Method::POST, Op::Update(EntityKind::Team)),
    ("/team/info", Method::GET, Op::Info(EntityKind::Team)),
    ("/team/delete", Method::POST, Op::Delete(EntityKind::Team)),
    ("/customer/new", Method::POST, Op::New(EntityKind::Customer)),
    (
        "/customer/update",
        Method::POST,
        Op::Update(EntityKind::Customer),
    ),
    (
        "/customer/info",
        Method::GET,
        Op::Info(EntityKind::Customer),
    ),
    (
        "/customer/delete",
        Method::POST,
        Op::Delete(EntityKind::Customer),
    ),
    ("/customer/block", Method::POST, Op::CustomerBlock(true)),
    ("/customer/unblock", Method::POST, Op::CustomerBlock(false)),
    ("/end_user/new", Method::POST, Op::New(EntityKind::Customer)),
    (
        "/end_user/update",
        Method::POST,
        Op::Update(EntityKind::Customer),
    ),
    (
        "/end_user/info",
        Method::GET,
        Op::Info(EntityKind::Customer),
    ),
    (
        "/end_user/delete",
        Method::POST,
        Op::Delete(EntityKind::Customer),
    ),
    ("/end_user/block", Method::POST, Op::CustomerBlock(true)),
    ("/end_user/unblock", Method::POST, Op::CustomerBlock(false)),
    ("/tag/new", Method::POST, Op::New(EntityKind::Tag)),
    ("/tag/update", Method::POST, Op::Update(EntityKind::Tag)),
    ("/tag/info", Method::POST, Op::TagInfo),
    ("/tag/delete", Method::POST, Op::TagDelete),
    ("/team/member_add", Method::POST, Op::MemberAdd),
    ("/team/member_update", Method::POST, Op::MemberUpdate),
    ("/team/member_delete", Method::POST, Op::MemberDelete),
    (
        "/organization/new",
        Method::POST,
        Op::New(EntityKind::Organization),
    ),
    (
        "/organization/update",
        Method::POST,
        Op::Update(EntityKind::Organization),
    ),
    (
        "/organization/info",
        Method::GET,
        Op::Info(EntityKind::Organization),
    ),
    (
        "/organization/delete",
        Method::POST,
        Op::Delete(EntityKind::Organization),
    ),
];

/// The route a request path names (`/key/info`, `/prod/key/info`,
/// `/lambda-url/admin/key/info`), if any.
fn route_path(path: &str) -> Option<&'static str> {
    const PATHS: [&str; ROUTES.len()] = {
        let mut out = [""; ROUTES.len()];
        let mut i = 0;
        while i < ROUTES.len() {
            out[i] = ROUTES[i].0;
            i += 1;
        }
        out
    };
    http_api::routes::route_of(path, &PATHS)
}

/// Answers one HTTP request. Never fails: every problem is an HTTP answer.
pub async fn handle<S: AdminStore>(
    store: &S,
    settings: &Settings,
    master_key: &str,
    request: Request,
    now: DateTime<Utc>,
) -> Response<Body> {
    let path = request.uri().path().trim_end_matches('/').to_string();
    match route(store, settings, master_key, &request, &path, now).await {
        Ok(body) => respond(200, &body),
        Err(e) => {
            if e.status >= 500 {
                tracing::error!(path = %path, error = %e.message, "admin request failed");
            } else {
                tracing::info!(path = %path, status = e.status, param = ?e.param, "admin request refused");
            }
            respond(e.status, &e.body())
        }
    }
}

async fn route<S: AdminStore>(
    store: &S,
    settings: &Settings,
    master_key: &str,
    request: &Request,
    path: &str,
    now: DateTime<Utc>,
) -> Result<Value, ApiError> {
    if !authorized(request, master_key) {
        return Err(ApiError::unauthorized(
            "missing or wrong master key: send Authorization: Bearer <MASTER_KEY> (or x-litellm-api-key: <MASTER_KEY>)",
        ));
    }
    let found = route_path(path).and_then(|p| ROUTES.iter().find(|(r, _, _)| *r == p));
    let Some((_, method, op)) = found else {
        return Err(ApiError::not_found(format!(
            "no route {path}: the admin API has /key/generate|update|info|delete|block|unblock, /user/new|update|info|delete, /team/new|update|info|delete|member_add|member_update|member_delete /organization/new|update|info|delete and /customer/new|update|info|delete|block|unblock (or /end_user/...) and /tag/new|update|info|delete"
        )));
    };
    if request.method() != method {
        return Err(ApiError::method_not_allowed(
            request.method().as_str(),
            path,
        ));
    }
    let admin = ops::Admin {
        store,
        settings,
        now,
    };
    if *method == Method::GET {
        let query = request.query_string_parameters();
        let param = |name: &str| query.first(name).map(str::to_string);
        return match *op {
            Op::KeyInfo => admin.key_info(param("key")).await,
            // LiteLLM names a customer by `end_user_id` here.
            Op::Info(EntityKind::Customer) => {
                let id = param("end_user_id").or_else(|| param("user_id"));
                admin.info(EntityKind::Customer, id).await
            }
            Op::Info(kind) => admin.info(kind, param(ops::id_field(kind))).await,
            _ => Err(ApiError::not_found(format!("no route GET {path}"))),
        };
    }
    let raw = request.body().as_ref();
    if raw.len() > MAX_BODY_BYTES {
        return Err(ApiError::bad_request(
            "body",
            format!("request body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    let body = http_api::json_object(raw)?;
    let form = match *op {
        Op::KeyGenerate => known::Form::KeyGenerate,
        Op::KeyUpdate => known::Form::KeyUpdate,
        Op::KeyDelete => known::Form::KeyDelete,
        Op::KeyBlock(_) => known::Form::KeyBlock,
        Op::CustomerBlock(_) => known::Form::CustomerBlock,
        Op::TagInfo => known::Form::TagInfo,
        Op::TagDelete => known::Form::Delete(EntityKind::Tag),
        Op::New(kind) => known::Form::New(kind),
        Op::Update(kind) => known::Form::Update(kind),
        Op::Delete(kind) => known::Form::Delete(kind),
        Op::MemberAdd => known::Form::MemberAdd,
        Op::MemberUpdate => known::Form::MemberUpdate,
        Op::MemberDelete => known::Form::MemberDelete,
        Op::KeyInfo | Op::Info(_) => {
            return Err(ApiError::not_found(format!("no route POST {path}")))
        }
    };
    known::check(form, &body)?;
    match *op {
        Op::KeyGenerate => admin.key_generate(&body).await,
        Op::KeyUpdate => admin.key_update(&body).await,
        Op::KeyDelete => admin.key_delete(&body).await,
        Op::KeyBlock(blocked) => admin.key_block(&body, blocked).await,
        Op::CustomerBlock(blocked) => admin.customer_block(&body, blocked).await,
        Op::TagInfo => admin.tag_info(&body).await,
        Op::TagDelete => admin.tag_delete(&body).await,
        Op::New(kind) => admin.new_owner(kind, &body).await,
        Op::Update(kind) => admin.update_owner(kind, &body).await,
        Op::Delete(kind) => admin.delete_owners(kind, &body).await,
        Op::MemberAdd => admin.member_add(&body).await,
        Op::MemberUpdate => admin.member_update(&body).await,
        Op::MemberDelete => admin.member_delete(&body).await,
        Op::KeyInfo | Op::Info(_) => Err(ApiError::not_found(format!("no route POST {path}"))),
    }
}

/// The header LiteLLM also reads the master key from, with or without
/// `Bearer `. Behind IAM authorization the `Authorization` header carries
/// the SigV4 signature, so the master key travels here.
pub const MASTER_KEY_HEADER: &str = "x-litellm-api-key";

/// `Authorization: Bearer <MASTER_KEY>` (scheme case-insensitive) or
/// `x-litellm-api-key: [Bearer ]<MASTER_KEY>`, compared in constant time.
fn authorized(request: &Request, master_key: &str) -> bool {
    let header = |name| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let bearer = header(header::AUTHORIZATION.as_str()).and_then(|v| match v.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => Some(v[7..].trim()),
        _ => None,
    });
    let litellm = header(MASTER_KEY_HEADER).map(|v| match v.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
        _ => v,
    });
    !master_key.is_empty()
        && [bearer, litellm]
            .into_iter()
            .flatten()
            .any(|token| secrets_equal(token, master_key))
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == 503 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_key_must_be_set() {
        assert!(master_key_from(None).unwrap_err().contains("MASTER_KEY"));
        assert!(master_key_from(Some("  ".into())).is_err());
        assert_eq!(
            master_key_from(Some(" sk-master \n".into())).unwrap(),
            "sk-master"
        );
    }

    #[test]
    fn routes_match_the_whole_path_after_at_most_one_prefix() {
        let find = |p: &str| {
            route_path(p).and_then(|r| ROUTES.iter().find(|(s, _, _)| *s == r).map(|r| r.2))
        };
        assert_eq!(find("/key/generate"), Some(Op::KeyGenerate));
        assert_eq!(find("/prod/key/info"), Some(Op::KeyInfo));
        assert_eq!(
            find("/lambda-url/admin/team/delete"),
            Some(Op::Delete(EntityKind::Team))
        );
        assert_eq!(find("/key/unblock"), Some(Op::KeyBlock(false)));
        assert_eq!(find("/key/block"), Some(Op::KeyBlock(true)));
        assert_eq!(find("/keys/generatex"), None);
        assert_eq!(find("/key/x/team/delete"), None);
        assert_eq!(find("/key/team/delete"), None);
        assert_eq!(find("/user/team/delete"), None);
        assert_eq!(find("/a/b/user/info"), None);
    }
}
