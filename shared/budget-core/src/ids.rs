//! Caller-supplied user and team ids: 1 to [`MAX_ID_BYTES`] bytes of ASCII
//! letters, digits and `. _ - : @ +`. Such an id is valid inside a JSON
//! string without escaping (the REST API's 429 template substitutes it
//! unescaped), in a header, a log line and a URL query, and stays far
//! below DynamoDB's 2,048-byte partition key limit. Generated UUIDs and
//! email-like ids (`alice@example.com`) pass.

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

/// Why `id` is not a valid id (`None`: it is), without echoing it: it may
/// be long or hold characters that need escaping.
/// A model name (`openai/gpt-4o`,
/// `bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0`): 1 to 128 ASCII
/// letters, digits and `._-:@+/` — an id that may also hold `/`, and never
/// `#` (which separates a model budget's key from its model).
pub fn is_model_name(name: &str) -> bool {
    (1..=MAX_ID_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:@+/".contains(&b))
}

/// A tag name: an id (tags are created with `/tag/new`, whose `name` is
/// an id).
pub fn is_tag_name(name: &str) -> bool {
    is_valid_id(name)
}

pub fn problem(id: &str) -> Option<String> {
    if is_valid_id(id) {
        None
    } else if id.is_empty() {
        Some("it is empty".to_string())
    } else if id.len() > MAX_ID_BYTES {
        Some(format!("it has {} bytes", id.len()))
    } else {
        Some("it has other characters".to_string())
    }
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
            assert_eq!(problem(ok), None);
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
            let why = problem(bad).unwrap();
            if bad.len() > 1 {
                assert!(!why.contains(bad), "the id is not echoed");
            }
        }
        assert_eq!(problem(&"a".repeat(3000)).unwrap(), "it has 3000 bytes");
    }
}
