//! Records what a request actually cost, once: `POST /spend/settle`
//! `{"reservation_id", "cost"}` and `POST /spend/release`
//! `{"reservation_id"}` (cost 0). Called by the upstream service or a
//! queue consumer, never by end users (the template puts IAM in front).
//!
//! Routes match by their whole path, optionally after one stage segment
//! (`/prod/spend/settle`) or `cargo lambda watch`'s
//! `/lambda-url/<function>` prefix (see `budget_core::routes`); any other
//! path is a 404 (`/x/y/spend/settle` is not `/spend/settle`).

use budget_core::api::{json_object, money_value, required_str_max, ApiError};
use budget_core::decision::rfc3339;
use budget_core::model::Reservation;
use budget_core::routes::route_of;
use budget_core::service::{settle, SettleOutcome};
use budget_core::store::Store;
use budget_core::{Money, Settings};
use chrono::{DateTime, Utc};
use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};

/// Which operation a request asks for.
enum Operation {
    Settle,
    Release,
}

/// Answers one HTTP request. Never fails: every problem is an HTTP answer.
pub async fn handle<S: Store>(
    store: &S,
    settings: &Settings,
    request: Request,
    now: DateTime<Utc>,
) -> Response<Body> {
    match route(store, settings, &request, now).await {
        Ok(body) => respond(200, &body),
        Err(e) => {
            if e.status >= 500 {
                tracing::error!(error = %e.message, "settle failed");
            }
            respond(e.status, &e.body())
        }
    }
}

async fn route<S: Store>(
    store: &S,
    settings: &Settings,
    request: &Request,
    now: DateTime<Utc>,
) -> Result<Value, ApiError> {
    let path = request.uri().path();
    let operation = match route_of(path, &["/spend/settle", "/spend/release"]) {
        Some("/spend/settle") => Operation::Settle,
        Some(_) => Operation::Release,
        None => {
            return Err(ApiError::not_found(format!(
                "no route {}: use POST /spend/settle or POST /spend/release",
                path.chars().take(200).collect::<String>()
            )))
        }
    };
    if request.method() != lambda_http::http::Method::POST {
        return Err(ApiError::method_not_allowed(
            request.method().as_str(),
            path,
        ));
    }
    let body = json_object(request.body().as_ref())?;
    // Ids carry their receipt (see budget_core::receipt): up to ~1.3 KB.
    let id = required_str_max(&body, "reservation_id", 2048)?;
    let cost = match operation {
        Operation::Release => match body.get("cost") {
            None | Some(Value::Null) => Money::ZERO,
            Some(v) if money_value("cost", v)?.is_zero() => Money::ZERO,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "cost",
                    "a release records no cost: use /spend/settle to record one",
                ))
            }
        },
        Operation::Settle => match body.get("cost") {
            None | Some(Value::Null) => {
                return Err(ApiError::bad_request("cost", "cost is required"))
            }
            Some(v) => money_value("cost", v)?,
        },
    };
    match settle(store, &id, cost, now, settings).await {
        Ok(SettleOutcome::Settled {
            reservation,
            duplicate,
        }) => {
            tracing::info!(reservation_id = %id, cost = %cost, duplicate, "settled");
            Ok(answer(&id, &reservation, duplicate))
        }
        Ok(SettleOutcome::NotFound) => Err(ApiError::not_found(format!(
            "unknown reservation_id \"{id}\""
        ))),
        Err(e) => Err(ApiError::unavailable(format!(
            "could not record the settlement, nothing was lost; retry: {e}"
        ))),
    }
}

fn answer(id: &str, r: &Reservation, duplicate: bool) -> Value {
    json!({
        "reservation_id": id,
        "state": r.state.as_str(),
        "reserved": r.amount.as_f64(),
        "cost": r.cost.unwrap_or(Money::ZERO).as_f64(),
        "duplicate": duplicate,
        "released_by_reset": r.expired_at.is_some(),
        "settled_at": r.settled_at.map(rfc3339),
        "user_id": r.user_id,
        "team_id": r.team_id,
    })
}

fn respond(status: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = lambda_http::http::StatusCode::from_u16(status)
        .unwrap_or(lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        lambda_http::http::header::CONTENT_TYPE,
        lambda_http::http::HeaderValue::from_static("application/json"),
    );
    if status == 503 {
        response.headers_mut().insert(
            lambda_http::http::header::RETRY_AFTER,
            lambda_http::http::HeaderValue::from_static("1"),
        );
    }
    response
}
