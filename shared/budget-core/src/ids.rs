//! Caller-supplied user and team ids: 1 to [`MAX_ID_BYTES`] bytes of ASCII
//! letters, digits and `. _ - : @ +`. Such an id is valid inside a JSON
//! string without escaping (the REST API's 429 template substitutes it
//! unescaped), in a header, a log line and a URL query, and stays far
//! below DynamoDB's 2,048-byte partition key limit. Generated UUIDs and
//! email-like ids (`alice@example.com`) pass.

use crate::api::ApiError;

/// The longest user or team id, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// The characters an id may have besides ASCII letters and digits.
pub const ID_PUNCTUATION: &str = "._-:@+";

/// Whether `id` is a valid user or team id.
pub fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || ID_PUNCTUATION.as_bytes().contains(&b))
}

/// `id` if valid, or a 400 naming `field` (the message does not echo the
/// id: it may be long or hold characters that need escaping).
pub fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        return Ok(());
    }
    let why = if id.is_empty() {
        "it is empty".to_string()
    } else if id.len() > MAX_ID_BYTES {
        format!("it has {} bytes", id.len())
    } else {
        "it has other characters".to_string()
    };
    Err(ApiError::bad_request(
        field,
        format!("{field} must be 1 to {MAX_ID_BYTES} ASCII letters, digits or . _ - : @ + ({why})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_plain_ascii() {
        for ok in [
            "u",
            "user-123",
            "demo_team",
            "alice@example.com",
            "org:team.a+b",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            &"a".repeat(128),
        ] {
            assert!(is_valid_id(ok), "{ok}");
            assert_eq!(check_id("user_id", ok), Ok(()));
        }
        for bad in [
            "",
            "a\"b",
            "a\\b",
            "a b",
            "a/b",
            "a\nb",
            "ü",
            "{x}",
            "a%b",
            &"a".repeat(129),
            &"a".repeat(3000),
        ] {
            assert!(!is_valid_id(bad), "{bad:?}");
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
}
