//! Records what a request actually cost, once: `POST /spend/settle`
//! `{"reservation_id", "cost"}` and `POST /spend/release`
//! `{"reservation_id"}` (cost 0). Called by the upstream service or a
//! queue consumer, never by end users (the template puts IAM in front).
//!
//! Routes match by their whole path, optionally after one stage segment
//! (`/prod/spend/settle`) or `cargo lambda watch`'s
//! `/lambda-url/<function>` prefix (see `http_api::routes`); any other
//! path is a 404 (`/x/y/spend/settle` is not `/spend/settle`).

use budget_core::decision::rfc3339;
use budget_core::metrics::{settle_record, Emitter, SettleReport};
use budget_core::model::Reservation;
use budget_core::receipt::is_reservation_id;
use budget_core::service::{measured, settle, SettleOutcome};
use budget_core::store::{BudgetStore, StoreError};
use budget_core::{Money, Settings};
use chrono::{DateTime, Utc};
use http_api::routes::route_of;
use http_api::{json_object, money_value, ApiError};
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{json, Value};
use std::time::Instant;

/// Which operation a request asks for.
enum Operation {
    Settle,
    Release,
}

/// Answers one HTTP request. Never fails: every problem is an HTTP answer.
/// Writes the request's log line (with its metrics) to standard output.
pub async fn handle<S: BudgetStore>(
    store: &S,
    settings: &Settings,
    request: Request,
    now: DateTime<Utc>,
) -> Response<Body> {
    let emitter = Emitter::stdout(&settings.metrics_namespace);
    handle_logged(store, settings, &emitter, request, now).await
}

/// [`handle`], writing the request's line to `emitter`.
pub async fn handle_logged<S: BudgetStore>(
    store: &S,
    settings: &Settings,
    emitter: &Emitter,
    request: Request,
    now: DateTime<Utc>,
) -> Response<Body> {
    let started = Instant::now();
    let mut note = Note::default();
    let (result, stats) = measured(route(store, settings, &request, now, &mut note)).await;
    let (status, body, error) = match result {
        Ok(body) => (200, body, None),
        Err(e) => (e.status, e.body(), Some(e.message)),
    };
    let request_id = gateway_request_id(&request);
    let report = SettleReport {
        operation: note.operation,
        status,
        request_id: request_id.as_deref(),
        reservation_id: note.id.as_deref(),
        cost: note.cost,
        finished: note.finished.as_ref().map(|(r, d)| (r, *d)),
        error: error.as_deref(),
        latency: started.elapsed(),
        stats,
    };
    emitter.emit(&settle_record(&report), now);
    respond(status, &body)
}

/// What a request got to, for its log line.
struct Note {
    operation: &'static str,
    id: Option<String>,
    cost: Option<Money>,
    finished: Option<(Reservation, bool)>,
}

impl Default for Note {
    fn default() -> Note {
        Note {
            operation: "unknown",
            id: None,
            cost: None,
            finished: None,
        }
    }
}

/// The API Gateway request id, when the request came through one.
fn gateway_request_id(request: &Request) -> Option<String> {
    use lambda_http::request::RequestContext;
    match request.request_context_ref()? {
        RequestContext::ApiGatewayV2(c) => c.request_id.clone(),
        RequestContext::ApiGatewayV1(c) => c.request_id.clone(),
        _ => None,
    }
}

async fn route<S: BudgetStore>(
    store: &S,
    settings: &Settings,
    request: &Request,
    now: DateTime<Utc>,
    note: &mut Note,
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
    note.operation = match operation {
        Operation::Settle => "settle",
        Operation::Release => "release",
    };
    if request.method() != lambda_http::http::Method::POST {
        return Err(ApiError::method_not_allowed(
            request.method().as_str(),
            path,
        ));
    }
    let body = json_object(request.body().as_ref())?;
    let id = match body.get("reservation_id") {
        Some(Value::String(id)) if !id.trim().is_empty() => id.clone(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err(ApiError::bad_request(
                "reservation_id",
                "reservation_id is required",
            ))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "reservation_id",
                "reservation_id must be a string",
            ))
        }
    };
    // An id that authorize cannot have handed out is unknown without
    // asking the store (and is not logged: it is the caller's text).
    if !is_reservation_id(&id) {
        return Err(unknown(&id));
    }
    note.id = Some(id.clone());
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
    note.cost = Some(cost);
    match settle(store, &id, cost, now, settings).await {
        Ok(SettleOutcome::Settled {
            reservation,
            duplicate,
        }) => {
            let body = answer(&id, &reservation, duplicate);
            note.finished = Some((*reservation, duplicate));
            Ok(body)
        }
        Ok(SettleOutcome::NotFound) => Err(unknown(&id)),
        // Sending it again would be refused again: say so, no retry signal.
        Err(e @ StoreError::Rejected(_)) => Err(ApiError::store_rejected(format!(
            "could not record the settlement, nothing was written; retrying will not help: {e}"
        ))),
        Err(e) => Err(ApiError::unavailable(format!(
            "could not record the settlement, nothing was lost; retry: {e}"
        ))),
    }
}

/// The 404 of an unknown id, echoing at most its first 40 characters.
fn unknown(id: &str) -> ApiError {
    let shown: String = id.chars().take(40).collect();
    let more = if id.chars().count() > 40 { "…" } else { "" };
    ApiError::not_found(format!("unknown reservation_id \"{shown}{more}\""))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_have_the_form_authorize_hands_out() {
        let base = format!("r-{}", "0123456789abcdef".repeat(2));
        for ok in [
            base.clone(),
            format!("{base}.eyJhIjoxfQ"),
            format!("{base}.{}", "A-_z".repeat(300)),
            budget_core::service::reservation_id("h", Some("req-1")),
            budget_core::service::reservation_id("h", None),
        ] {
            assert!(is_reservation_id(&ok), "{ok}");
        }
        for bad in [
            "r-unknown".to_string(),
            "".into(),
            format!("r-{}", "0123456789ABCDEF".repeat(2)),
            format!("r-{}0", "0123456789abcdef".repeat(2)),
            format!("x-{}", "0123456789abcdef".repeat(2)),
            format!("{base}."),
            format!("{base}.a.b"),
            format!("{base}.a=b"),
            format!(
                "{base}.{}",
                "A".repeat(budget_core::receipt::MAX_RECEIPT + 1)
            ),
            format!("{base}\"}},\"x\":\""),
        ] {
            assert!(!is_reservation_id(&bad), "{bad}");
        }
    }

    #[test]
    fn unknown_ids_are_echoed_up_to_40_characters() {
        assert_eq!(unknown("r-1").message, "unknown reservation_id \"r-1\"");
        let long = "x".repeat(3000);
        assert_eq!(
            unknown(&long).message,
            format!("unknown reservation_id \"{}…\"", "x".repeat(40))
        );
    }
}
