//! What the HTTP functions (settle-spend, admin) share: the error body and
//! reading JSON bodies field by field with messages that name the field.
//! Plain JSON here; the function crates own the HTTP types.

pub mod routes;

use serde_json::{json, Map, Value};

use budget_core::Money;

/// An answer that is not a success, with its HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
}

impl ApiError {
    pub fn bad_request(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 404,
            message: message.into(),
            kind: "not_found_error",
            param: None,
        }
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 409,
            message: message.into(),
            kind: "conflict_error",
            param: None,
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 401,
            message: message.into(),
            kind: "auth_error",
            param: None,
        }
    }

    /// The store failed: retryable.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 503,
            message: message.into(),
            kind: "service_unavailable",
            param: None,
        }
    }

    /// The store refused the request as invalid (DynamoDB's validation):
    /// not retryable, so not a 503, and no `Retry-After`.
    pub fn store_rejected(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "store_rejected",
            param: None,
        }
    }

    pub fn method_not_allowed(method: &str, path: &str) -> ApiError {
        ApiError {
            status: 405,
            message: format!("{method} is not allowed on {path}"),
            kind: "invalid_request_error",
            param: None,
        }
    }

    /// `{"error": {"message", "type", "param"}}`
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param}})
    }
}

/// The body as a JSON object, or a 400 saying what is wrong with it.
pub fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "body",
            "request body is empty: expected a JSON object",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "body",
            "request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(
            "body",
            format!("request body is not valid JSON: {e}"),
        )),
    }
}

/// A required, non-empty string field of at most 256 characters.
pub fn required_str(body: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    required_str_max(body, field, 256)
}

/// A required, non-empty string field of at most `max` characters.
pub fn required_str_max(
    body: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<String, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => {
            Err(ApiError::bad_request(field, format!("{field} is required")))
        }
        Some(v) => str_value(field, v, max)?
            .ok_or_else(|| ApiError::bad_request(field, format!("{field} is required"))),
    }
}

/// An optional string field: absent or null is `None`; anything but a
/// non-empty string of at most 256 characters is a 400.
pub fn optional_str(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => str_value(field, v, 256),
    }
}

fn str_value(field: &str, v: &Value, max: usize) -> Result<Option<String>, ApiError> {
    match v {
        Value::String(s) if s.trim().is_empty() => Err(ApiError::bad_request(
            field,
            format!("{field} must not be empty"),
        )),
        Value::String(s) if s.chars().count() > max => Err(ApiError::bad_request(
            field,
            format!("{field} must be at most {max} characters"),
        )),
        Value::String(s) if s.chars().any(char::is_control) => Err(ApiError::bad_request(
            field,
            format!("{field} must not contain control characters"),
        )),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(ApiError::bad_request(
            field,
            format!("{field} must be a string"),
        )),
    }
}

/// An amount of USD: a JSON number, finite, not negative, not absurd.
pub fn money_value(field: &str, v: &Value) -> Result<Money, ApiError> {
    match v {
        Value::Number(n) => {
            let f = n.as_f64().ok_or_else(|| {
                ApiError::bad_request(field, format!("{field} must be a number of USD"))
            })?;
            Money::from_f64(f).map_err(|e| ApiError::bad_request(field, format!("{field} {e}")))
        }
        _ => Err(ApiError::bad_request(
            field,
            format!("{field} must be a number of USD (e.g. 0.0123)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_fields_get_clear_errors() {
        assert_eq!(json_object(b"").unwrap_err().param.as_deref(), Some("body"));
        assert!(json_object(b"{")
            .unwrap_err()
            .message
            .starts_with("request body is not valid JSON"));
        assert_eq!(
            json_object(b"[1]").unwrap_err().message,
            "request body must be a JSON object"
        );
        let body = json_object(br#"{"a": 1, "b": "", "c": "x", "d": -1, "e": 1e300}"#).unwrap();
        assert_eq!(
            required_str(&body, "a").unwrap_err().message,
            "a must be a string"
        );
        assert_eq!(
            required_str(&body, "b").unwrap_err().message,
            "b must not be empty"
        );
        assert_eq!(
            required_str(&body, "z").unwrap_err().message,
            "z is required"
        );
        assert_eq!(required_str(&body, "c").unwrap(), "x");
        assert_eq!(
            money_value("d", &body["d"]).unwrap_err().message,
            "d must not be negative"
        );
        assert_eq!(
            money_value("e", &body["e"]).unwrap_err().message,
            "e must be at most 1000000000 USD"
        );
        assert_eq!(
            money_value("c", &body["c"]).unwrap_err().message,
            "c must be a number of USD (e.g. 0.0123)"
        );
        assert_eq!(
            ApiError::not_found("x").body(),
            json!({"error": {"message": "x", "type": "not_found_error", "param": null}})
        );
    }
}
