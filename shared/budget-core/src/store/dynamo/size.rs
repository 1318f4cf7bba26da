//! What DynamoDB bills for an item: its size by DynamoDB's rules, and the
//! write units a write of it costs. Used by the capacity figures of
//! `docs/performance.md` (`tests/e2e/capacity.rs` prints them), since no
//! emulator reports consumed capacity from item sizes.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

/// The size of `item` in bytes as DynamoDB counts it: each attribute's
/// name (UTF-8 bytes) plus its value — strings and binaries their bytes,
/// numbers one byte per two significant digits plus one, booleans and
/// nulls one byte, lists and maps three bytes plus one per element plus
/// their elements (a map's element names included).
pub fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => number_size(n),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::L(l) => 3 + l.iter().map(|e| 1 + value_size(e)).sum::<usize>(),
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, e)| 1 + k.len() + value_size(e))
                .sum::<usize>()
        }
        AttributeValue::Ss(l) => l.iter().map(String::len).sum(),
        AttributeValue::Ns(l) => l.iter().map(|n| number_size(n)).sum(),
        AttributeValue::Bs(l) => l.iter().map(|b| b.as_ref().len()).sum(),
        _ => 0,
    }
}

/// Leading and trailing zeros do not count.
fn number_size(n: &str) -> usize {
    let digits: String = n.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    significant.div_ceil(2) + 1
}

/// Write units of one write of an item of `bytes` (the larger of its
/// size before and after): one per KB started, doubled in a transaction.
pub fn write_units(bytes: usize, transactional: bool) -> u64 {
    let units = bytes.div_ceil(1024).max(1) as u64;
    if transactional {
        2 * units
    } else {
        units
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_dynamodb_rules() {
        let item = HashMap::from([
            ("pk".to_string(), AttributeValue::S("user#u".into())),
            ("n".to_string(), AttributeValue::N("150000000000".into())),
            ("b".to_string(), AttributeValue::Bool(true)),
            (
                "w".to_string(),
                AttributeValue::M(HashMap::from([(
                    "1d".to_string(),
                    AttributeValue::N("-12.50".into()),
                )])),
            ),
        ]);
        // pk: 2 + 6; n: 1 + (2 digits → 1 + 1); b: 1 + 1; w: 1 + 3 + 1 + 2 + (3 digits → 2 + 1)
        assert_eq!(item_size(&item), 8 + 3 + 2 + 10);
        assert_eq!(write_units(1, true), 2);
        assert_eq!(write_units(1024, false), 1);
        assert_eq!(write_units(1025, true), 4);
        assert_eq!(write_units(0, false), 1);
    }
}
