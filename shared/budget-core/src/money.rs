//! Exact USD amounts.
//!
//! Money is an integer count of nano-dollars (1e-9 USD): exact addition and
//! comparison, no binary floating point anywhere in arithmetic or storage.
//! DynamoDB stores the same integer, so its atomic `+`/`-` updates stay exact.
//!
//! JSON carries amounts as numbers. A JSON number is read through its shortest
//! decimal form (what a person wrote: `0.0123` is exactly 12 300 000 nanos);
//! digits beyond the ninth decimal are rounded half away from zero.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Nano-dollars per dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// The largest amount edge-budget accepts anywhere: one billion dollars.
/// Anything larger is taken for a mistake (a cost in the wrong unit, a
/// typo), and keeps every sum of amounts far from `i64` overflow.
pub const MAX_USD: i64 = 1_000_000_000;

/// An exact amount of US dollars, in nano-dollars. May be negative only as
/// the result of arithmetic (a settle delta); inputs are never negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a number")]
    NotANumber,
    #[error("must not be negative")]
    Negative,
    #[error("must be at most {MAX_USD} USD")]
    TooLarge,
    #[error("is not a decimal amount of USD (e.g. 0.25)")]
    Malformed,
    #[error("is longer than {MAX_DECIMAL_CHARS} characters")]
    TooLong,
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_nanos(nanos: i64) -> Money {
        Money(nanos)
    }

    pub const fn nanos(self) -> i64 {
        self.0
    }

    /// Whole dollars, for constants and tests.
    pub const fn usd(dollars: i64) -> Money {
        Money(dollars * NANOS_PER_USD)
    }

    /// Reads a user-supplied amount: finite, not negative, at most [`MAX_USD`].
    pub fn from_f64(value: f64) -> Result<Money, MoneyError> {
        if !value.is_finite() {
            return Err(MoneyError::NotANumber);
        }
        // `{:e}` prints the shortest digits that read back as the same f64
        // (the number as it was written in the JSON), in scientific form:
        // short whatever the magnitude (`1e300`, `1e-300`).
        Money::parse_decimal(&format!("{value:e}"))
    }

    /// Reads a decimal string such as `"0.25"` or `"150"` (also `1e-3`).
    ///
    /// Work is bounded by the input's length, whatever it says: text longer
    /// than [`MAX_DECIMAL_CHARS`] is refused before it is looked at, and the
    /// exponent only moves the decimal point (no loop runs over it).
    pub fn parse_decimal(text: &str) -> Result<Money, MoneyError> {
        parse_decimal_counted(text).0
    }
    /// For JSON answers: the nearest f64 (exact for every amount up to
    /// about 9 million dollars at nano resolution).
    pub fn as_f64(self) -> f64 {
        // Through the decimal text, so 0.1 prints as 0.1.
        self.to_string().parse().unwrap_or(f64::NAN)
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// The opposite amount (a delta that takes away).
    pub const fn negated(self) -> Money {
        Money(self.0.saturating_neg())
    }

    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `$150.0000` style, as in denial messages (at least four decimals,
    /// more when the amount has them).
    pub fn display_usd(self) -> String {
        let plain = self.to_string();
        let (int, frac) = plain.split_once('.').unwrap_or((&plain, ""));
        let mut frac = frac.to_string();
        while frac.len() < 4 {
            frac.push('0');
        }
        format!("${int}.{frac}")
    }
}

/// The longest decimal text read as an amount (after trimming): far more
/// than any real amount needs (`1000000000.000000001` is 20).
pub const MAX_DECIMAL_CHARS: usize = 64;

/// [`Money::parse_decimal`], and the number of digit steps it took (tests
/// show the work stays within a constant times the input's length).
fn parse_decimal_counted(text: &str) -> (Result<Money, MoneyError>, usize) {
    let mut steps = 0usize;
    let result = parse_bounded(text, &mut steps);
    (result, steps)
}

fn parse_bounded(text: &str, steps: &mut usize) -> Result<Money, MoneyError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(MoneyError::Malformed);
    }
    if text.len() > MAX_DECIMAL_CHARS {
        return Err(MoneyError::TooLong);
    }
    let lower = text.to_ascii_lowercase();
    if lower == "nan" || lower.contains("inf") {
        return Err(MoneyError::NotANumber);
    }
    let (mantissa, exponent) = match lower.split_once('e') {
        Some((m, e)) => (m, exponent_of(e)?),
        None => (lower.as_str(), 0),
    };
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().all(|b| b.is_ascii_digit())
        || !frac_part.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(MoneyError::Malformed);
    }
    // The significant digits (leading zeros dropped) and where the decimal
    // point sits before the first of them: value = 0.d1d2d3... * 10^point.
    let mut point = int_part.len() as i64 + i64::from(exponent);
    let mut digits = Vec::with_capacity(int_part.len() + frac_part.len());
    for b in int_part.bytes().chain(frac_part.bytes()) {
        *steps += 1;
        if digits.is_empty() && b == b'0' {
            point -= 1;
        } else {
            digits.push(b - b'0');
        }
    }
    if digits.is_empty() {
        return Ok(Money::ZERO); // 0, -0, 0e2147483647
    }
    let too_large = if negative {
        MoneyError::Negative
    } else {
        MoneyError::TooLarge
    };
    // 10^10 USD and more: above MAX_USD whatever the digits are.
    if point > 10 {
        return Err(too_large);
    }
    // Nanos = the digits up to position point+9, rounded half away from zero.
    let keep = point + 9;
    if keep < 0 {
        return Ok(Money::ZERO); // below half a nano-dollar
    }
    let keep = keep as usize; // at most 19
    let mut nanos: i128 = 0;
    for i in 0..keep {
        *steps += 1;
        nanos = nanos * 10 + i128::from(digits.get(i).copied().unwrap_or(0));
    }
    if digits.get(keep).is_some_and(|d| *d >= 5) {
        nanos += 1;
    }
    if negative && nanos != 0 {
        return Err(MoneyError::Negative);
    }
    if nanos > i128::from(MAX_USD) * i128::from(NANOS_PER_USD) {
        return Err(too_large);
    }
    Ok(Money(nanos as i64))
}

/// An exponent's value; one past `i32` counts as `i32::MAX` or `i32::MIN`
/// (its sign decides: far too large, or far below a nano-dollar).
fn exponent_of(text: &str) -> Result<i32, MoneyError> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MoneyError::Malformed);
    }
    Ok(text.parse::<i32>().unwrap_or(if text.starts_with('-') {
        i32::MIN
    } else {
        i32::MAX
    }))
}

/// Plain decimal, no trailing zeros: `150`, `0.0123`, `-0.5`.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let int = abs / NANOS_PER_USD as u64;
        let frac = abs % NANOS_PER_USD as u64;
        if frac == 0 {
            write!(f, "{sign}{int}")
        } else {
            let frac = format!("{frac:09}");
            write!(f, "{sign}{int}.{}", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        let value = f64::deserialize(deserializer)?;
        Money::from_f64(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_people_write_exactly() {
        assert_eq!(Money::from_f64(0.0123).unwrap().nanos(), 12_300_000);
        assert_eq!(Money::from_f64(0.1).unwrap().nanos(), 100_000_000);
        assert_eq!(Money::from_f64(150.0).unwrap(), Money::usd(150));
        assert_eq!(Money::from_f64(1e-9).unwrap().nanos(), 1);
        assert_eq!(Money::from_f64(2.5e-5).unwrap().nanos(), 25_000);
        assert_eq!(Money::parse_decimal("1000").unwrap(), Money::usd(1000));
        assert_eq!(Money::parse_decimal("0.000000001").unwrap().nanos(), 1);
        assert_eq!(Money::parse_decimal(".5").unwrap().nanos(), 500_000_000);
        assert_eq!(Money::parse_decimal("1.5E2").unwrap(), Money::usd(150));
    }

    #[test]
    fn sums_are_exact_where_floats_are_not() {
        let a = Money::from_f64(0.1).unwrap();
        let b = Money::from_f64(0.2).unwrap();
        assert_eq!(a.checked_add(b), Some(Money::from_f64(0.3).unwrap()));
        assert_ne!(0.1_f64 + 0.2_f64, 0.3_f64);
    }

    #[test]
    fn rounds_beyond_nanos_half_away_from_zero() {
        assert_eq!(Money::parse_decimal("0.0000000014").unwrap().nanos(), 1);
        assert_eq!(Money::parse_decimal("0.0000000015").unwrap().nanos(), 2);
        assert_eq!(Money::parse_decimal("1e-12").unwrap().nanos(), 0);
    }

    #[test]
    fn refuses_bad_amounts() {
        assert_eq!(Money::from_f64(f64::NAN), Err(MoneyError::NotANumber));
        assert_eq!(Money::from_f64(f64::INFINITY), Err(MoneyError::NotANumber));
        assert_eq!(Money::from_f64(-0.01), Err(MoneyError::Negative));
        assert_eq!(Money::from_f64(1e10), Err(MoneyError::TooLarge));
        assert_eq!(Money::from_f64(1e300), Err(MoneyError::TooLarge));
        assert_eq!(Money::parse_decimal("-1"), Err(MoneyError::Negative));
        assert_eq!(Money::parse_decimal("abc"), Err(MoneyError::Malformed));
        assert_eq!(Money::parse_decimal(""), Err(MoneyError::Malformed));
        assert_eq!(Money::parse_decimal("1.2.3"), Err(MoneyError::Malformed));
        assert_eq!(Money::parse_decimal("nan"), Err(MoneyError::NotANumber));
        assert_eq!(
            Money::parse_decimal("1e99999999999"),
            Err(MoneyError::TooLarge)
        );
        assert_eq!(Money::parse_decimal("1e-99999999999"), Ok(Money::ZERO));
        assert_eq!(Money::parse_decimal("1e"), Err(MoneyError::Malformed));
        assert_eq!(Money::parse_decimal("1e+-2"), Err(MoneyError::Malformed));
        assert!(Money::from_f64(1e9).is_ok());
        assert_eq!(Money::from_f64(1e-300), Ok(Money::ZERO));
        assert_eq!(Money::from_f64(-1e300), Err(MoneyError::Negative));
        assert_eq!(Money::from_f64(-0.0), Ok(Money::ZERO));
    }

    #[test]
    fn prints_plain_and_for_messages() {
        assert_eq!(Money::usd(150).to_string(), "150");
        assert_eq!(Money::from_nanos(12_300_000).to_string(), "0.0123");
        assert_eq!(Money::from_nanos(-500_000_000).to_string(), "-0.5");
        assert_eq!(Money::usd(150).display_usd(), "$150.0000");
        assert_eq!(Money::from_nanos(1).display_usd(), "$0.000000001");
        assert_eq!(Money::from_f64(0.0123).unwrap().as_f64(), 0.0123);
    }

    #[test]
    fn json_round_trip() {
        let m: Money = serde_json::from_str("0.0123").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "0.0123");
        assert!(serde_json::from_str::<Money>("-1").is_err());
        assert!(serde_json::from_str::<Money>("\"1\"").is_err());
    }

    #[test]
    fn hostile_amounts_answer_in_work_bounded_by_their_length() {
        let huge_digits = "9".repeat(100_000);
        let long_zeros = format!("0.{}1", "0".repeat(60));
        let cases: Vec<(&str, Result<Money, MoneyError>)> = vec![
            ("0e2147483647", Ok(Money::ZERO)),
            ("1e2147483647", Err(MoneyError::TooLarge)),
            ("1e-2147483648", Ok(Money::ZERO)),
            ("-1e2147483647", Err(MoneyError::Negative)),
            (
                "0.000000000000000000000000000001e25",
                Ok(Money::from_nanos(10_000)),
            ),
            ("1e-12", Ok(Money::ZERO)),
            ("5e-10", Ok(Money::from_nanos(1))),
            ("999999999.9999999995", Ok(Money::usd(1_000_000_000))),
            ("1000000000.0000000005", Err(MoneyError::TooLarge)),
            ("1000000000", Ok(Money::usd(1_000_000_000))),
            ("1e9", Ok(Money::usd(1_000_000_000))),
            ("1.000000000000000001e9", Err(MoneyError::TooLarge)),
            ("1.0000000000000000001e9", Ok(Money::usd(1_000_000_000))),
            (huge_digits.as_str(), Err(MoneyError::TooLong)),
            (long_zeros.as_str(), Ok(Money::ZERO)),
        ];
        for (text, expected) in cases {
            let (result, steps) = parse_decimal_counted(text);
            assert_eq!(result, expected, "{}", &text[..text.len().min(40)]);
            // A constant times the length (at most 64 characters are read).
            assert!(steps <= 2 * MAX_DECIMAL_CHARS, "{steps} steps");
        }
    }

    proptest::proptest! {
        #[test]
        fn work_is_linear_in_the_length(
            text in "[+-]?[0-9]{0,40}(\\.[0-9]{0,20})?([eE][+-]?[0-9]{1,12})?"
        ) {
            let (_, steps) = parse_decimal_counted(&text);
            proptest::prop_assert!(steps <= 2 * text.trim().len() + 20);
        }

        #[test]
        fn decimal_text_round_trips(nanos in 0i64..=MAX_USD * NANOS_PER_USD) {
            let m = Money::from_nanos(nanos);
            proptest::prop_assert_eq!(Money::parse_decimal(&m.to_string()), Ok(m));
        }

        #[test]
        fn never_panics_on_text(text in ".{0,40}") {
            let _ = Money::parse_decimal(&text);
        }
    }
}
