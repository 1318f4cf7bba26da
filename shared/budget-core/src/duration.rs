//! Budget durations (`budget_duration`) and calendar-aligned window resets.
//!
//! Pure domain code: no I/O and no clock reads. `now` is always passed in.
//!
//! # Grammar
//!
//! `<N><unit>`: `N` is one or more ASCII digits with a value of at least 1
//! (leading zeros are accepted, so `007d` is `7d`); `unit` is one of `s`, `m`,
//! `h`, `d`, `w`, `mo`, lowercase. The aliases `hourly`, `daily`, `weekly` and
//! `monthly` are `1h`, `1d`, `1w` and `1mo`. Nothing is trimmed, so `" 1d"` is
//! invalid. `Nw` is stored as `7·N` days, so it prints as `7d`, `14d`, ...
//!
//! Upper limits (anything larger is invalid, as a mistake rather than a
//! window anyone means): 100 000 for `s`, `m` and `h`; 36 500 for `d`; 5 200
//! for `w`; 1 200 for `mo`.
//!
//! # Reset alignment
//!
//! Resets are calendar-aligned, not rolling. Everything is worked out in the
//! wall-clock time of [`ResetClock::tz`]; windows of a day or longer reset at
//! [`ResetClock::reset_time`]. [`BudgetDuration::next_reset`] gives the first
//! boundary strictly after `now`:
//!
//! * `Ns`, `Nm`, `Nh`: the boundaries are local midnight plus `k·N` units of
//!   wall-clock time, for each `k` that stays before the next local midnight,
//!   plus that midnight (the reset time of day does not apply). `5h` gives
//!   00:00, 05:00, 10:00, 15:00 and 20:00; `7m` at 23:58 gives 00:00 the next
//!   day. A step of a day or more (`24h`, `48h`, `100000s`) leaves only the
//!   midnights, so it resets every local midnight (LiteLLM's rule too).
//! * `1d`: the next reset time of day (today's if it is still ahead).
//! * `7d` (`1w`, `weekly`): the next Monday at the reset time (today's if
//!   today is a Monday and the reset time is still ahead).
//! * `30d` and `1mo`: the 1st of the month at the reset time: this month's if
//!   it is still ahead, else the next month's.
//! * `Nmo` with `N > 1`: the 1st of the month `N` months after the current
//!   local month, at the reset time. Our reading of "the 1st, N months on":
//!   the count starts from the current month even when this month's 1st at
//!   the reset time is still ahead (then `2mo` on the 1st at 05:00 with a
//!   09:30 reset time is the 1st of the month after next, not today).
//! * Any other `Nd` (`2w` = `14d` included): the local date `N` days after
//!   today, at the reset time, whatever the time of day now.
//!
//! Daylight saving: a wall-clock time that does not exist (a gap) is the
//! first valid instant after the gap, the transition itself; a wall-clock
//! time that happens twice (a fold) is the later of the two instants. The
//! result is the earliest such instant strictly after `now`. Because a folded
//! boundary means its later instant, a boundary can lie behind the current
//! wall-clock time and still be ahead in real time: in New York at 01:30 EDT
//! on the fall-back day, the next `1h` boundary is 01:00 EST (half an hour
//! later), and at 00:30 EDT it is also 01:00 EST (the first 01:00, EDT, is
//! skipped). Sub-day boundaries are wall-clock times, so around a transition
//! a window can be longer or shorter in real time than `N` units.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Utc,
};
use chrono_tz::Tz;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest `N` for `s`, `m` and `h`.
const MAX_SUB_DAY: u32 = 100_000;
/// Largest `N` for `d` (about a century).
const MAX_DAYS: u32 = 36_500;
/// Largest `N` for `w`.
const MAX_WEEKS: u32 = 5_200;
/// Largest `N` for `mo` (a century).
const MAX_MONTHS: u32 = 1_200;

const SECONDS_PER_DAY: i64 = 86_400;

/// The unit of a [`BudgetDuration`]. Weeks are normalised to days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Month,
}

impl Unit {
    /// The suffix of the canonical form.
    const fn suffix(self) -> &'static str {
        match self {
            Unit::Second => "s",
            Unit::Minute => "m",
            Unit::Hour => "h",
            Unit::Day => "d",
            Unit::Month => "mo",
        }
    }

    /// Nominal length in seconds (a month counts as 30 days).
    const fn seconds(self) -> i64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => SECONDS_PER_DAY,
            Unit::Month => 30 * SECONDS_PER_DAY,
        }
    }
}

/// A window length such as `1h`, `7d` or `1mo`, as written in
/// `budget_duration`. Always valid: the only way to get one is [`parse`]
/// (or deserializing, which parses).
///
/// [`parse`]: BudgetDuration::parse
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetDuration {
    n: u32,
    unit: Unit,
}

/// A `budget_duration` that is not in the grammar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The input, verbatim. The message quotes it with Rust string escapes
    /// (identical to the input for ordinary text; control characters and
    /// quotes are escaped so the message stays one clean line).
    #[error(
        "invalid budget_duration {input:?}: expected <N><unit> with N >= 1 \
         and unit s, m, h, d, w or mo (e.g. \"30s\", \"10m\", \"1h\", \"1d\", \"7d\", \"2w\", \
         \"1mo\"), or one of hourly, daily, weekly, monthly"
    )]
    Invalid { input: String },
}

impl BudgetDuration {
    /// Parses the grammar described in the [module docs](self).
    ///
    /// # Errors
    ///
    /// [`DurationError::Invalid`] for anything outside the grammar.
    pub fn parse(s: &str) -> Result<BudgetDuration, DurationError> {
        // Bounded work and a bounded message whatever the input's length:
        // no valid duration is longer than a few characters.
        const MAX_CHARS: usize = 64;
        let invalid = || DurationError::Invalid {
            input: s.chars().take(MAX_CHARS).collect(),
        };
        if s.len() > MAX_CHARS {
            return Err(invalid());
        }
        let alias = |n, unit| Ok(BudgetDuration { n, unit });
        match s {
            "hourly" => return alias(1, Unit::Hour),
            "daily" => return alias(1, Unit::Day),
            "weekly" => return alias(7, Unit::Day),
            "monthly" => return alias(1, Unit::Month),
            _ => {}
        }
        // The first byte that is not an ASCII digit starts a character, as
        // every byte before it is ASCII.
        let split = s
            .bytes()
            .position(|b| !b.is_ascii_digit())
            .ok_or_else(invalid)?;
        let (digits, suffix) = s.split_at(split);
        if digits.is_empty() {
            return Err(invalid());
        }
        let (unit, factor, max) = match suffix {
            "s" => (Unit::Second, 1, MAX_SUB_DAY),
            "m" => (Unit::Minute, 1, MAX_SUB_DAY),
            "h" => (Unit::Hour, 1, MAX_SUB_DAY),
            "d" => (Unit::Day, 1, MAX_DAYS),
            "w" => (Unit::Day, 7, MAX_WEEKS),
            "mo" => (Unit::Month, 1, MAX_MONTHS),
            _ => return Err(invalid()),
        };
        // Only digits here, so a parse error can only be an overflow.
        let n: u32 = digits.parse().map_err(|_| invalid())?;
        if n == 0 || n > max {
            return Err(invalid());
        }
        Ok(BudgetDuration {
            n: n * factor,
            unit,
        })
    }

    /// The count, after normalisation (`1w` has `n() == 7`).
    #[must_use]
    pub fn n(&self) -> u32 {
        self.n
    }

    /// The unit, after normalisation (`1w` has `unit() == Unit::Day`).
    #[must_use]
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// Nominal length in seconds (`1mo` = 30 days) — for sanity limits and
    /// sorting only, never for resets.
    #[must_use]
    pub fn approx_seconds(&self) -> i64 {
        i64::from(self.n) * self.unit.seconds()
    }

    /// The first boundary strictly after `now` (UTC in, UTC out), per the
    /// alignment rules in the [module docs](self).
    ///
    /// Never panics. Only within about a century of either end of chrono's
    /// range (the years ±262 143) can the boundary not be worked out; the
    /// result is then [`DateTime::<Utc>::MAX_UTC`].
    #[must_use]
    pub fn next_reset(&self, now: DateTime<Utc>, clock: &ResetClock) -> DateTime<Utc> {
        self.try_next_reset(now, clock)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    fn try_next_reset(&self, now: DateTime<Utc>, clock: &ResetClock) -> Option<DateTime<Utc>> {
        let tz = clock.tz;
        let at = clock.reset_time;
        let today = local_time(tz, now)?.date();
        let day = i64::from(today.num_days_from_ce());
        let month = i64::from(today.year()) * 12 + i64::from(today.month0());
        let n = i64::from(self.n);
        match (self.unit, self.n) {
            (Unit::Second | Unit::Minute | Unit::Hour, _) => {
                let step = n * self.unit.seconds();
                let per_day = (SECONDS_PER_DAY + step - 1) / step;
                let wall = |g: i64| {
                    let secs = u32::try_from(g.rem_euclid(per_day) * step).ok()?;
                    let time = NaiveTime::from_num_seconds_from_midnight_opt(secs, 0)?;
                    Some(date_from_day(g.div_euclid(per_day))?.and_time(time))
                };
                // From yesterday's midnight: a day of lookback covers any
                // fold, whose later instants may still be ahead of `now`.
                first_after(now, tz, (day - 1) * per_day, wall)
            }
            (Unit::Day, 1) => {
                first_after(now, tz, day - 1, |g| Some(date_from_day(g)?.and_time(at)))
            }
            (Unit::Day, 7) => {
                // Day 1 of the common era, 0001-01-01, is a Monday.
                let monday_of = |g: i64| date_from_day(g.checked_mul(7)?.checked_add(1)?);
                let this_week = (day - 1).div_euclid(7);
                first_after(now, tz, this_week - 1, |g| Some(monday_of(g)?.and_time(at)))
            }
            (Unit::Day, 30) | (Unit::Month, 1) => first_after(now, tz, month - 1, |g| {
                Some(first_of_month(g)?.and_time(at))
            }),
            (Unit::Month, _) => first_after(now, tz, month + n, |g| {
                Some(first_of_month(g)?.and_time(at))
            }),
            (Unit::Day, _) => {
                first_after(now, tz, day + n, |g| Some(date_from_day(g)?.and_time(at)))
            }
        }
    }
}

/// The wall-clock time of `t` in `tz`; `None` only past the ends of
/// chrono's range (where `naive_local` would panic).
fn local_time(tz: Tz, t: DateTime<Utc>) -> Option<NaiveDateTime> {
    let offset = tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    t.naive_utc()
        .checked_add_signed(TimeDelta::seconds(i64::from(offset.local_minus_utc())))
}

/// The date with the given `num_days_from_ce`.
fn date_from_day(g: i64) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(i32::try_from(g).ok()?)
}

/// The 1st of the month with index `year * 12 + month0`.
fn first_of_month(g: i64) -> Option<NaiveDate> {
    let year = i32::try_from(g.div_euclid(12)).ok()?;
    let month = u32::try_from(g.rem_euclid(12)).ok()? + 1;
    NaiveDate::from_ymd_opt(year, month, 1)
}

/// The instant of the boundary with the smallest index `g >= lo` that falls
/// strictly after `now`. `wall` maps an index to its wall-clock time and
/// must be strictly increasing; as [`resolve`] is non-decreasing in the wall
/// time, "after `now`" is then monotone in `g` and an exponential search
/// followed by bisection finds the first index in O(log) resolutions.
fn first_after(
    now: DateTime<Utc>,
    tz: Tz,
    lo: i64,
    wall: impl Fn(i64) -> Option<NaiveDateTime>,
) -> Option<DateTime<Utc>> {
    let instant = |g: i64| resolve(tz, wall(g)?);
    let first = instant(lo)?;
    if first > now {
        return Some(first);
    }
    // Invariant: `lo` is not after `now`; `hi` (once found) is.
    let mut lo = lo;
    let mut span: i64 = 1;
    let (mut hi, mut found) = loop {
        let hi = lo.checked_add(span)?;
        let t = instant(hi)?;
        if t > now {
            break (hi, t);
        }
        lo = hi;
        span = span.checked_mul(2)?;
    };
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let t = instant(mid)?;
        if t > now {
            hi = mid;
            found = t;
        } else {
            lo = mid;
        }
    }
    Some(found)
}

/// The instant of a wall-clock time in `tz`: the later instant in a fold,
/// the end of the gap (the transition instant) in a gap.
fn resolve(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.max(b).with_timezone(&Utc)),
        LocalResult::None => gap_end(tz, wall),
    }
}

/// The first instant whose wall-clock time in `tz` is later than `wall`,
/// which lies in a gap: the transition that skips over it. UTC offsets are
/// under a day, so the transition is within 27 hours of `wall` read as UTC;
/// bisect on whole seconds (transitions fall on whole seconds).
fn gap_end(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    const SPAN: i64 = 27 * 3_600;
    let local_at = |secs: i64| local_time(tz, DateTime::from_timestamp(secs, 0)?);
    let w = wall.and_utc().timestamp();
    let (mut lo, mut hi) = (w.checked_sub(SPAN)?, w.checked_add(SPAN)?);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if local_at(mid)? > wall {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    DateTime::from_timestamp(hi, 0)
}

impl fmt::Display for BudgetDuration {
    /// The canonical form: `10s`, `5m`, `1h`, `1d`, `7d`, `1mo`, `3mo`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.n, self.unit.suffix())
    }
}

impl FromStr for BudgetDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BudgetDuration::parse(s)
    }
}

impl Serialize for BudgetDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BudgetDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;

        impl Visitor<'_> for DurationVisitor {
            type Value = BudgetDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a budget_duration string such as \"1h\", \"1d\" or \"1mo\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                BudgetDuration::parse(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(DurationVisitor)
    }
}

/// Where and when day-and-longer windows reset: `BUDGET_TIMEZONE` and
/// `BUDGET_RESET_TIME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetClock {
    /// The zone whose calendar and wall clock align every window.
    pub tz: Tz,
    /// The wall-clock time at which windows of a day or longer reset.
    pub reset_time: NaiveTime,
}

/// A `BUDGET_TIMEZONE` or `BUDGET_RESET_TIME` that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    #[error("unknown IANA time zone \"{0}\" (e.g. \"UTC\", \"America/New_York\")")]
    Timezone(String),
    #[error("expected HH:MM between 00:00 and 23:59, got \"{0}\"")]
    ResetTime(String),
}

impl ResetClock {
    /// UTC, resetting at 00:00 — the defaults.
    #[must_use]
    pub fn utc_midnight() -> ResetClock {
        ResetClock {
            tz: Tz::UTC,
            reset_time: NaiveTime::MIN,
        }
    }

    /// `tz` is an IANA zone name, exactly as spelt in the tz database
    /// (case-sensitive); `reset_time` is `HH:MM` with exactly two digits
    /// each, from `00:00` to `23:59`.
    ///
    /// # Errors
    ///
    /// [`ClockError::Timezone`] for an unknown zone (checked first), else
    /// [`ClockError::ResetTime`] for a malformed or out-of-range time.
    pub fn new(tz: &str, reset_time: &str) -> Result<ResetClock, ClockError> {
        let zone: Tz = tz
            .parse()
            .map_err(|_| ClockError::Timezone(tz.to_owned()))?;
        let time =
            parse_hh_mm(reset_time).ok_or_else(|| ClockError::ResetTime(reset_time.to_owned()))?;
        Ok(ResetClock {
            tz: zone,
            reset_time: time,
        })
    }
}

impl Default for ResetClock {
    fn default() -> Self {
        ResetClock::utc_midnight()
    }
}

/// `HH:MM`, two ASCII digits each, 00:00 to 23:59.
fn parse_hh_mm(s: &str) -> Option<NaiveTime> {
    let &[h1, h0, b':', m1, m0] = s.as_bytes() else {
        return None;
    };
    let two = |hi: u8, lo: u8| {
        (hi.is_ascii_digit() && lo.is_ascii_digit())
            .then(|| u32::from(hi - b'0') * 10 + u32::from(lo - b'0'))
    };
    NaiveTime::from_hms_opt(two(h1, h0)?, two(m1, m0)?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;
    use proptest::prelude::*;

    // ---------------------------------------------------------------- helpers

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("bad RFC 3339 {s:?} in a test: {e}"))
            .with_timezone(&Utc)
    }

    fn dur(s: &str) -> BudgetDuration {
        BudgetDuration::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn clock(tz: &str, reset_time: &str) -> ResetClock {
        ResetClock::new(tz, reset_time).unwrap_or_else(|e| panic!("{e}"))
    }

    fn utc() -> ResetClock {
        ResetClock::utc_midnight()
    }

    /// Each case is `"<duration> <now> -> <expected next reset>"`, both
    /// instants in RFC 3339 (any offset; compared as instants).
    fn check(clock: &ResetClock, cases: &[&str]) {
        for case in cases {
            let (d, rest) = case.split_once(' ').unwrap();
            let (now, expected) = rest.split_once(" -> ").unwrap();
            let got = dur(d).next_reset(t(now), clock);
            assert_eq!(
                got,
                t(expected),
                "{d} at {now} in {} (reset {}): got {}, expected {expected}",
                clock.tz,
                clock.reset_time,
                got.to_rfc3339(),
            );
        }
    }

    fn message(input: &str) -> String {
        format!(
            "invalid budget_duration \"{input}\": expected <N><unit> with N >= 1 and unit s, m, h, \
             d, w or mo (e.g. \"30s\", \"10m\", \"1h\", \"1d\", \"7d\", \"2w\", \"1mo\"), or one \
             of hourly, daily, weekly, monthly"
        )
    }

    // ---------------------------------------------------------------- grammar

    #[test]
    fn parses_every_unit() {
        let cases = [
            ("1s", 1, Unit::Second),
            ("30s", 30, Unit::Second),
            ("1m", 1, Unit::Minute),
            ("10m", 10, Unit::Minute),
            ("1h", 1, Unit::Hour),
            ("5h", 5, Unit::Hour),
            ("1d", 1, Unit::Day),
            ("7d", 7, Unit::Day),
            ("30d", 30, Unit::Day),
            ("1w", 7, Unit::Day),
            ("2w", 14, Unit::Day),
            ("1mo", 1, Unit::Month),
            ("3mo", 3, Unit::Month),
            ("12mo", 12, Unit::Month),
        ];
        for (s, n, unit) in cases {
            let d = dur(s);
            assert_eq!((d.n(), d.unit()), (n, unit), "{s}");
        }
    }

    #[test]
    fn parses_aliases() {
        assert_eq!(dur("hourly"), dur("1h"));
        assert_eq!(dur("daily"), dur("1d"));
        assert_eq!(dur("weekly"), dur("1w"));
        assert_eq!(dur("weekly"), dur("7d"));
        assert_eq!(dur("monthly"), dur("1mo"));
    }

    #[test]
    fn weeks_are_normalised_to_days() {
        assert_eq!(dur("1w"), dur("7d"));
        assert_eq!(dur("2w"), dur("14d"));
        assert_eq!(dur("5200w"), dur("36400d"));
        assert_eq!(dur("1w").to_string(), "7d");
    }

    #[test]
    fn accepts_leading_zeros() {
        assert_eq!(dur("007d"), dur("7d"));
        assert_eq!(dur("01h"), dur("1h"));
        assert_eq!(dur("0001mo"), dur("1mo"));
        assert_eq!(dur("000000000000000000000000000000005m"), dur("5m"));
    }

    #[test]
    fn long_input_is_refused_at_once_with_a_short_message() {
        let long = format!("{}d", "0".repeat(100_000));
        let err = BudgetDuration::parse(&long).unwrap_err();
        assert_eq!(
            err,
            DurationError::Invalid {
                input: "0".repeat(64)
            }
        );
    }

    #[test]
    fn accepts_the_upper_limits() {
        for (s, n, unit) in [
            ("100000s", 100_000, Unit::Second),
            ("100000m", 100_000, Unit::Minute),
            ("100000h", 100_000, Unit::Hour),
            ("36500d", 36_500, Unit::Day),
            ("5200w", 36_400, Unit::Day),
            ("1200mo", 1_200, Unit::Month),
        ] {
            let d = dur(s);
            assert_eq!((d.n(), d.unit()), (n, unit), "{s}");
        }
    }

    #[test]
    fn rejects_everything_else_with_the_message() {
        let invalid = [
            "",
            "1y",
            "1hr",
            "0d",
            "-1d",
            " 1d",
            "1d ",
            "\t1d",
            "1d\n",
            "1D",
            "1H",
            "1M",
            "1Mo",
            "1MO",
            "1W",
            "1.5d",
            "1,5d",
            "1_000s",
            "d",
            "mo",
            "1",
            "10",
            "+1d",
            "1 d",
            "0s",
            "0m",
            "0h",
            "00d",
            "0w",
            "0mo",
            "100001s",
            "100001m",
            "100001h",
            "36501d",
            "5201w",
            "1201mo",
            "4294967295d",
            "4294967296d",
            "99999999999999999999999s",
            "1e3s",
            "0x10s",
            "1ms",
            "1mos",
            "1month",
            "1min",
            "1sec",
            "1wk",
            "1w2d",
            "1d1h",
            "1h30m",
            "1yr",
            "yearly",
            "Hourly",
            "DAILY",
            "weekly ",
            "month",
            "1\u{0}d",
            "\u{661}d",   // ARABIC-INDIC DIGIT ONE
            "1\u{ff44}",  // FULLWIDTH LATIN SMALL LETTER D
            "\u{ff11}d",  // FULLWIDTH DIGIT ONE
            "1d\u{200b}", // ZERO WIDTH SPACE
            "é",
        ];
        for s in invalid {
            let err = BudgetDuration::parse(s).expect_err(s);
            assert_eq!(
                err,
                DurationError::Invalid {
                    input: s.to_owned()
                }
            );
            assert_eq!(err.to_string(), message(&s.escape_debug().to_string()));
            assert_eq!(s.parse::<BudgetDuration>(), Err(err));
        }
    }

    #[test]
    fn error_message_is_exact() {
        let err = BudgetDuration::parse("1y").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid budget_duration \"1y\": expected <N><unit> with N >= 1 and unit s, m, h, d, \
             w or mo (e.g. \"30s\", \"10m\", \"1h\", \"1d\", \"7d\", \"2w\", \"1mo\"), or one of \
             hourly, daily, weekly, monthly"
        );
        assert_eq!(
            BudgetDuration::parse("").unwrap_err().to_string(),
            message("")
        );
        // Control characters and quotes are escaped, keeping the message on one line.
        assert_eq!(
            BudgetDuration::parse("1\"d\n").unwrap_err().to_string(),
            message("1\\\"d\\n")
        );
    }

    #[test]
    fn from_str_is_parse() {
        assert_eq!("1mo".parse::<BudgetDuration>(), Ok(dur("1mo")));
        assert_eq!("weekly".parse::<BudgetDuration>(), Ok(dur("7d")));
        assert!("1y".parse::<BudgetDuration>().is_err());
    }

    #[test]
    fn display_is_canonical() {
        for (input, shown) in [
            ("10s", "10s"),
            ("5m", "5m"),
            ("1h", "1h"),
            ("1d", "1d"),
            ("7d", "7d"),
            ("30d", "30d"),
            ("1mo", "1mo"),
            ("3mo", "3mo"),
            ("1w", "7d"),
            ("2w", "14d"),
            ("hourly", "1h"),
            ("daily", "1d"),
            ("weekly", "7d"),
            ("monthly", "1mo"),
            ("007d", "7d"),
            ("0100000s", "100000s"),
        ] {
            let d = dur(input);
            assert_eq!(d.to_string(), shown, "{input}");
            assert_eq!(dur(&d.to_string()), d, "{input} round trip");
        }
    }

    #[test]
    fn approx_seconds() {
        for (s, secs) in [
            ("10s", 10),
            ("5m", 300),
            ("1h", 3_600),
            ("1d", 86_400),
            ("1w", 604_800),
            ("30d", 2_592_000),
            ("1mo", 2_592_000),
            ("3mo", 7_776_000),
            ("100000h", 360_000_000),
            ("36500d", 3_153_600_000),
            ("1200mo", 3_110_400_000),
        ] {
            assert_eq!(dur(s).approx_seconds(), secs, "{s}");
        }
    }

    #[test]
    fn serde_uses_the_canonical_string() {
        assert_eq!(serde_json::to_string(&dur("1w")).unwrap(), "\"7d\"");
        assert_eq!(serde_json::to_string(&dur("monthly")).unwrap(), "\"1mo\"");
        let back: BudgetDuration = serde_json::from_str("\"monthly\"").unwrap();
        assert_eq!(back, dur("1mo"));
        let list: Vec<BudgetDuration> = serde_json::from_str(r#"["1h","2w","3mo"]"#).unwrap();
        assert_eq!(list, vec![dur("1h"), dur("14d"), dur("3mo")]);
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"["1h","14d","3mo"]"#
        );
        // An owned (escaped) string goes through the same path.
        let escaped: BudgetDuration = serde_json::from_str(r#""1\u0064""#).unwrap();
        assert_eq!(escaped, dur("1d"));
    }

    #[test]
    fn serde_rejects_with_the_duration_message() {
        let err = serde_json::from_str::<BudgetDuration>("\"1y\"").unwrap_err();
        assert!(err.to_string().starts_with(&message("1y")), "{err}");
        let err = serde_json::from_str::<BudgetDuration>("7").unwrap_err();
        assert!(err.to_string().contains("budget_duration string"), "{err}");
    }

    // ------------------------------------------------------------ ResetClock

    #[test]
    fn reset_clock_defaults() {
        let c = ResetClock::utc_midnight();
        assert_eq!(c.tz, Tz::UTC);
        assert_eq!(c.reset_time, NaiveTime::from_hms_opt(0, 0, 0).unwrap());
        assert_eq!(ResetClock::default(), c);
        assert_eq!(ResetClock::new("UTC", "00:00"), Ok(c));
    }

    #[test]
    fn reset_clock_parses_zone_and_time() {
        let c = clock("America/New_York", "09:30");
        assert_eq!(c.tz, chrono_tz::America::New_York);
        assert_eq!(c.reset_time, NaiveTime::from_hms_opt(9, 30, 0).unwrap());
        let c = clock("Europe/Berlin", "23:59");
        assert_eq!(c.tz, chrono_tz::Europe::Berlin);
        assert_eq!(c.reset_time, NaiveTime::from_hms_opt(23, 59, 0).unwrap());
        assert_eq!(clock("Etc/UTC", "00:00").tz, chrono_tz::Etc::UTC);
        assert_eq!(
            clock("Asia/Kathmandu", "12:00").tz,
            chrono_tz::Asia::Kathmandu
        );
    }

    #[test]
    fn reset_clock_rejects_bad_times() {
        for s in [
            "25:00",
            "24:00",
            "9:00",
            "12:60",
            "12:5",
            "12:000",
            "012:00",
            "1200",
            "",
            " 9:00",
            "09:30 ",
            "-1:00",
            "+9:00",
            "09-30",
            "09.30",
            "09:3a",
            "ab:cd",
            "99:99",
            "09:30:00",
            "\u{660}\u{669}:\u{663}\u{660}",
            "０９:３０",
        ] {
            let err = ResetClock::new("UTC", s).unwrap_err();
            assert_eq!(err, ClockError::ResetTime(s.to_owned()));
            assert_eq!(
                err.to_string(),
                format!("expected HH:MM between 00:00 and 23:59, got \"{s}\"")
            );
        }
    }

    #[test]
    fn reset_clock_rejects_unknown_zones() {
        for s in [
            "Mars/Olympus",
            "",
            "utc",
            "america/new_york",
            "America/New York",
            " UTC",
            "UTC ",
            "+01:00",
            "EST5EDT6",
        ] {
            let err = ResetClock::new(s, "00:00").unwrap_err();
            assert_eq!(err, ClockError::Timezone(s.to_owned()));
            assert_eq!(
                err.to_string(),
                format!(
                    "unknown IANA time zone \"{s}\" \
                     (e.g. \"UTC\", \"America/New_York\")"
                )
            );
        }
        // The zone is checked before the time.
        assert_eq!(
            ResetClock::new("Mars/Olympus", "25:00"),
            Err(ClockError::Timezone("Mars/Olympus".into()))
        );
    }

    #[test]
    fn reset_clock_accepts_the_range_of_times() {
        for h in 0..24 {
            for m in 0..60 {
                let s = format!("{h:02}:{m:02}");
                let c = clock("UTC", &s);
                assert_eq!(
                    c.reset_time,
                    NaiveTime::from_hms_opt(h, m, 0).unwrap(),
                    "{s}"
                );
            }
        }
    }

    // ------------------------------------------------- alignment: UTC, s/m/h

    #[test]
    fn seconds_in_utc() {
        check(
            &utc(),
            &[
                "1s 2026-01-15T12:34:56Z -> 2026-01-15T12:34:57Z",
                "1s 2026-01-15T12:34:56.5Z -> 2026-01-15T12:34:57Z",
                "10s 2026-01-15T12:34:56Z -> 2026-01-15T12:35:00Z",
                "10s 2026-01-15T12:34:50Z -> 2026-01-15T12:35:00Z",
                "10s 2026-01-15T12:34:49.999999999Z -> 2026-01-15T12:34:50Z",
                "10s 2026-01-15T12:34:50.000000001Z -> 2026-01-15T12:35:00Z",
                "30s 2026-01-15T23:59:45Z -> 2026-01-16T00:00:00Z",
                "30s 2026-01-15T23:59:29Z -> 2026-01-15T23:59:30Z",
                // 7s: the last multiple of the day is 86 394 s = 23:59:54.
                "7s 2026-01-15T23:59:53Z -> 2026-01-15T23:59:54Z",
                "7s 2026-01-15T23:59:54Z -> 2026-01-16T00:00:00Z",
                "7s 2026-01-16T00:00:00Z -> 2026-01-16T00:00:07Z",
                "86400s 2026-01-15T12:00:00Z -> 2026-01-16T00:00:00Z",
                "100000s 2026-01-15T00:00:00Z -> 2026-01-16T00:00:00Z",
                "1s 2026-12-31T23:59:59Z -> 2027-01-01T00:00:00Z",
            ],
        );
    }

    #[test]
    fn minutes_in_utc() {
        check(
            &utc(),
            &[
                "1m 2026-01-15T12:00:59.999Z -> 2026-01-15T12:01:00Z",
                "1m 2026-01-15T12:01:00Z -> 2026-01-15T12:02:00Z",
                "5m 2026-01-15T12:03:00Z -> 2026-01-15T12:05:00Z",
                "5m 2026-01-15T12:05:00Z -> 2026-01-15T12:10:00Z",
                "10m 2026-01-15T23:55:00Z -> 2026-01-16T00:00:00Z",
                // 7m: ..., 23:48, 23:55, then midnight.
                "7m 2026-01-15T23:50:00Z -> 2026-01-15T23:55:00Z",
                "7m 2026-01-15T23:55:00Z -> 2026-01-16T00:00:00Z",
                "7m 2026-01-15T23:58:00Z -> 2026-01-16T00:00:00Z",
                "7m 2026-01-16T00:00:00Z -> 2026-01-16T00:07:00Z",
                // 45m: 22:30 is the 30th multiple, 23:15 the last of the day.
                "45m 2026-01-15T22:30:00Z -> 2026-01-15T23:15:00Z",
                "45m 2026-01-15T23:15:00Z -> 2026-01-16T00:00:00Z",
                "60m 2026-01-15T12:30:00Z -> 2026-01-15T13:00:00Z",
                "90m 2026-01-15T02:00:00Z -> 2026-01-15T03:00:00Z",
                "1440m 2026-01-15T00:00:00Z -> 2026-01-16T00:00:00Z",
                "100000m 2026-01-15T18:00:00Z -> 2026-01-16T00:00:00Z",
                "1m 2028-02-28T23:59:30Z -> 2028-02-29T00:00:00Z",
            ],
        );
    }

    #[test]
    fn hours_in_utc() {
        check(
            &utc(),
            &[
                // The examples of semantics.md.
                "5h 2026-01-15T15:08:00Z -> 2026-01-15T20:00:00Z",
                "5h 2026-01-15T20:00:00Z -> 2026-01-16T00:00:00Z",
                "5h 2026-01-15T21:00:00Z -> 2026-01-16T00:00:00Z",
                "5h 2026-01-16T00:00:00Z -> 2026-01-16T05:00:00Z",
                "5h 2026-01-15T04:59:59.999999999Z -> 2026-01-15T05:00:00Z",
                "1h 2026-01-15T12:00:00Z -> 2026-01-15T13:00:00Z",
                "1h 2026-01-15T12:59:59Z -> 2026-01-15T13:00:00Z",
                "1h 2026-01-15T23:30:00Z -> 2026-01-16T00:00:00Z",
                "hourly 2026-01-15T07:15:00Z -> 2026-01-15T08:00:00Z",
                "12h 2026-01-15T11:59:59Z -> 2026-01-15T12:00:00Z",
                "12h 2026-01-15T12:00:00Z -> 2026-01-16T00:00:00Z",
                "7h 2028-02-28T22:00:00Z -> 2028-02-29T00:00:00Z",
                "7h 2028-02-29T13:00:00Z -> 2028-02-29T14:00:00Z",
                "1h 2026-01-31T23:00:00Z -> 2026-02-01T00:00:00Z",
                "1h 2026-12-31T23:30:00Z -> 2027-01-01T00:00:00Z",
                // A step of a day or more leaves only the midnights.
                "24h 2026-02-28T10:00:00Z -> 2026-03-01T00:00:00Z",
                "25h 2026-02-28T10:00:00Z -> 2026-03-01T00:00:00Z",
                "48h 2026-02-28T10:00:00Z -> 2026-03-01T00:00:00Z",
                "100000h 2026-04-30T00:00:00Z -> 2026-05-01T00:00:00Z",
            ],
        );
    }

    #[test]
    fn sub_day_ignores_the_reset_time() {
        let c = clock("UTC", "09:30");
        check(
            &c,
            &[
                "1h 2026-01-15T09:10:00Z -> 2026-01-15T10:00:00Z",
                "5h 2026-01-15T15:08:00Z -> 2026-01-15T20:00:00Z",
                "30m 2026-01-15T09:29:00Z -> 2026-01-15T09:30:00Z",
                "24h 2026-01-15T09:29:00Z -> 2026-01-16T00:00:00Z",
            ],
        );
    }

    // ------------------------------------------------------- alignment: 1d

    #[test]
    fn one_day_in_utc() {
        check(
            &utc(),
            &[
                "1d 2026-01-15T12:00:00Z -> 2026-01-16T00:00:00Z",
                "1d 2026-01-16T00:00:00Z -> 2026-01-17T00:00:00Z",
                "1d 2026-01-15T23:59:59.999999999Z -> 2026-01-16T00:00:00Z",
                "1d 2026-01-16T00:00:00.000000001Z -> 2026-01-17T00:00:00Z",
                "daily 2026-01-15T12:00:00Z -> 2026-01-16T00:00:00Z",
                // Month ends.
                "1d 2026-01-31T08:00:00Z -> 2026-02-01T00:00:00Z",
                "1d 2026-04-30T08:00:00Z -> 2026-05-01T00:00:00Z",
                "1d 2026-06-30T23:00:00Z -> 2026-07-01T00:00:00Z",
                // Leap years: 2028 and 2000 are, 2026 and 2100 are not.
                "1d 2026-02-28T08:00:00Z -> 2026-03-01T00:00:00Z",
                "1d 2028-02-28T08:00:00Z -> 2028-02-29T00:00:00Z",
                "1d 2028-02-29T08:00:00Z -> 2028-03-01T00:00:00Z",
                "1d 2100-02-28T08:00:00Z -> 2100-03-01T00:00:00Z",
                "1d 2000-02-28T08:00:00Z -> 2000-02-29T00:00:00Z",
                "1d 2000-02-29T08:00:00Z -> 2000-03-01T00:00:00Z",
                // Year end.
                "1d 2026-12-31T00:00:00Z -> 2027-01-01T00:00:00Z",
                "1d 2026-12-31T23:59:59Z -> 2027-01-01T00:00:00Z",
            ],
        );
    }

    #[test]
    fn one_day_at_a_reset_time() {
        let c = clock("UTC", "09:30");
        check(
            &c,
            &[
                "1d 2026-01-15T08:00:00Z -> 2026-01-15T09:30:00Z",
                "1d 2026-01-15T09:29:59.999Z -> 2026-01-15T09:30:00Z",
                "1d 2026-01-15T09:30:00Z -> 2026-01-16T09:30:00Z",
                "1d 2026-01-15T10:00:00Z -> 2026-01-16T09:30:00Z",
                "1d 2026-01-15T00:00:00Z -> 2026-01-15T09:30:00Z",
                "1d 2026-02-28T12:00:00Z -> 2026-03-01T09:30:00Z",
                "1d 2026-12-31T23:00:00Z -> 2027-01-01T09:30:00Z",
            ],
        );
        let late = clock("UTC", "23:59");
        check(
            &late,
            &[
                "1d 2026-01-15T23:58:00Z -> 2026-01-15T23:59:00Z",
                "1d 2026-01-15T23:59:00Z -> 2026-01-16T23:59:00Z",
                "1d 2026-01-16T00:00:00Z -> 2026-01-16T23:59:00Z",
            ],
        );
    }

    #[test]
    fn one_day_in_a_zone_without_dst() {
        // India is +05:30 all year.
        let c = clock("Asia/Kolkata", "00:00");
        check(
            &c,
            &[
                // 20:00Z is 01:30 IST on the 16th: the next midnight is the 17th.
                "1d 2026-01-15T20:00:00Z -> 2026-01-17T00:00:00+05:30",
                "1d 2026-01-15T18:29:59Z -> 2026-01-16T00:00:00+05:30",
                "1d 2026-01-15T18:30:00Z -> 2026-01-17T00:00:00+05:30",
                "1h 2026-01-15T10:10:00Z -> 2026-01-15T16:00:00+05:30",
            ],
        );
        // Nepal is +05:45.
        check(
            &clock("Asia/Kathmandu", "09:30"),
            &[
                "1h 2026-01-15T10:00:00Z -> 2026-01-15T16:00:00+05:45",
                "1d 2026-01-15T03:44:00Z -> 2026-01-15T09:30:00+05:45",
                "1d 2026-01-15T03:45:00Z -> 2026-01-16T09:30:00+05:45",
            ],
        );
    }

    // --------------------------------------------------- alignment: 7d / 1w

    #[test]
    fn week_starts_on_monday() {
        // 2026-01-19 is a Monday.
        check(
            &utc(),
            &[
                "7d 2026-01-15T12:00:00Z -> 2026-01-19T00:00:00Z", // Thursday
                "7d 2026-01-18T23:59:59Z -> 2026-01-19T00:00:00Z", // Sunday
                "7d 2026-01-19T00:00:00Z -> 2026-01-26T00:00:00Z", // on the boundary
                "7d 2026-01-19T12:00:00Z -> 2026-01-26T00:00:00Z", // Monday, after
                "7d 2026-01-20T00:00:00Z -> 2026-01-26T00:00:00Z", // Tuesday
                "1w 2026-01-15T12:00:00Z -> 2026-01-19T00:00:00Z",
                "weekly 2026-01-15T12:00:00Z -> 2026-01-19T00:00:00Z",
                // Across a month end, a year end and a leap day.
                "7d 2026-05-31T12:00:00Z -> 2026-06-01T00:00:00Z",
                "7d 2026-12-29T00:00:00Z -> 2027-01-04T00:00:00Z",
                "7d 2028-02-27T12:00:00Z -> 2028-02-28T00:00:00Z",
                "7d 2028-02-28T12:00:00Z -> 2028-03-06T00:00:00Z",
                "7d 2000-02-28T12:00:00Z -> 2000-03-06T00:00:00Z",
            ],
        );
    }

    #[test]
    fn week_at_a_reset_time() {
        let c = clock("UTC", "09:30");
        check(
            &c,
            &[
                "7d 2026-01-18T23:00:00Z -> 2026-01-19T09:30:00Z", // Sunday
                "7d 2026-01-19T00:00:00Z -> 2026-01-19T09:30:00Z", // Monday, before
                "7d 2026-01-19T09:29:59Z -> 2026-01-19T09:30:00Z",
                "7d 2026-01-19T09:30:00Z -> 2026-01-26T09:30:00Z", // on the boundary
                "7d 2026-01-19T10:00:00Z -> 2026-01-26T09:30:00Z", // Monday, after
                "1w 2026-01-15T12:00:00Z -> 2026-01-19T09:30:00Z",
            ],
        );
    }

    #[test]
    fn week_follows_the_local_calendar() {
        // Sunday 2026-01-18 22:00 in New York is Monday 03:00 UTC.
        check(
            &clock("America/New_York", "00:00"),
            &[
                "7d 2026-01-19T03:00:00Z -> 2026-01-19T00:00:00-05:00",
                "7d 2026-01-19T05:00:00Z -> 2026-01-26T00:00:00-05:00",
            ],
        );
        // Monday 00:30 in Tokyo is still Sunday in UTC.
        check(
            &clock("Asia/Tokyo", "00:00"),
            &["7d 2026-01-18T15:30:00Z -> 2026-01-26T00:00:00+09:00"],
        );
    }

    // ---------------------------------------------------- alignment: Nd

    #[test]
    fn other_day_counts_start_from_local_midnight() {
        check(
            &utc(),
            &[
                "2d 2026-01-15T12:00:00Z -> 2026-01-17T00:00:00Z",
                "2d 2026-01-15T00:00:00Z -> 2026-01-17T00:00:00Z",
                "2d 2026-01-15T23:59:59Z -> 2026-01-17T00:00:00Z",
                "3d 2026-01-30T06:00:00Z -> 2026-02-02T00:00:00Z",
                "6d 2026-01-15T12:00:00Z -> 2026-01-21T00:00:00Z",
                "8d 2026-01-15T12:00:00Z -> 2026-01-23T00:00:00Z",
                "14d 2026-01-15T12:00:00Z -> 2026-01-29T00:00:00Z",
                "2w 2026-01-15T12:00:00Z -> 2026-01-29T00:00:00Z",
                "28d 2026-02-01T00:00:00Z -> 2026-03-01T00:00:00Z",
                "29d 2026-02-01T00:00:00Z -> 2026-03-02T00:00:00Z",
                "29d 2028-02-01T00:00:00Z -> 2028-03-01T00:00:00Z",
                "31d 2026-01-31T12:00:00Z -> 2026-03-03T00:00:00Z",
                "365d 2026-03-01T12:00:00Z -> 2027-03-01T00:00:00Z",
                "365d 2028-01-01T00:00:00Z -> 2028-12-31T00:00:00Z",
                "366d 2028-01-01T00:00:00Z -> 2029-01-01T00:00:00Z",
                "2d 2026-12-30T18:00:00Z -> 2027-01-01T00:00:00Z",
                "2d 2100-02-27T18:00:00Z -> 2100-03-01T00:00:00Z",
                "36500d 2026-01-01T00:00:00Z -> 2125-12-08T00:00:00Z",
            ],
        );
    }

    #[test]
    fn other_day_counts_at_a_reset_time() {
        let c = clock("UTC", "09:30");
        check(
            &c,
            &[
                // Today's 09:30 is still ahead, but N days means N days on.
                "3d 2026-01-15T05:00:00Z -> 2026-01-18T09:30:00Z",
                "3d 2026-01-15T09:30:00Z -> 2026-01-18T09:30:00Z",
                "3d 2026-01-15T23:00:00Z -> 2026-01-18T09:30:00Z",
                "2w 2026-01-15T23:00:00Z -> 2026-01-29T09:30:00Z",
            ],
        );
    }

    // ------------------------------------------------ alignment: 1mo / 30d

    #[test]
    fn month_starts_on_the_first() {
        check(
            &utc(),
            &[
                "1mo 2026-01-15T12:00:00Z -> 2026-02-01T00:00:00Z",
                "1mo 2026-01-31T23:59:59Z -> 2026-02-01T00:00:00Z",
                "1mo 2026-02-01T00:00:00Z -> 2026-03-01T00:00:00Z", // on the boundary
                "1mo 2026-02-01T00:00:00.000000001Z -> 2026-03-01T00:00:00Z",
                "1mo 2026-02-28T12:00:00Z -> 2026-03-01T00:00:00Z",
                "1mo 2026-04-30T12:00:00Z -> 2026-05-01T00:00:00Z", // 30-day month
                "1mo 2026-11-30T12:00:00Z -> 2026-12-01T00:00:00Z",
                "1mo 2026-12-15T12:00:00Z -> 2027-01-01T00:00:00Z", // year end
                "1mo 2028-02-29T12:00:00Z -> 2028-03-01T00:00:00Z", // leap day
                "1mo 2100-02-28T12:00:00Z -> 2100-03-01T00:00:00Z",
                "1mo 2000-02-29T12:00:00Z -> 2000-03-01T00:00:00Z",
                "monthly 2026-01-15T12:00:00Z -> 2026-02-01T00:00:00Z",
                // 30d is the same rule.
                "30d 2026-01-15T12:00:00Z -> 2026-02-01T00:00:00Z",
                "30d 2026-02-01T00:00:00Z -> 2026-03-01T00:00:00Z",
                "30d 2026-12-31T23:59:59Z -> 2027-01-01T00:00:00Z",
            ],
        );
    }

    #[test]
    fn month_at_a_reset_time() {
        let c = clock("UTC", "09:30");
        check(
            &c,
            &[
                // This month's 1st is still ahead.
                "1mo 2026-02-01T08:00:00Z -> 2026-02-01T09:30:00Z",
                "1mo 2026-02-01T09:29:59Z -> 2026-02-01T09:30:00Z",
                "1mo 2026-02-01T09:30:00Z -> 2026-03-01T09:30:00Z",
                "1mo 2026-02-01T10:00:00Z -> 2026-03-01T09:30:00Z",
                "1mo 2026-01-31T23:00:00Z -> 2026-02-01T09:30:00Z",
                "30d 2026-02-01T08:00:00Z -> 2026-02-01T09:30:00Z",
                "30d 2026-12-01T09:30:00Z -> 2027-01-01T09:30:00Z",
            ],
        );
    }

    #[test]
    fn months_counted_from_the_current_month() {
        check(
            &utc(),
            &[
                "2mo 2026-01-15T12:00:00Z -> 2026-03-01T00:00:00Z",
                "3mo 2026-01-15T12:00:00Z -> 2026-04-01T00:00:00Z",
                "3mo 2026-01-01T00:00:00Z -> 2026-04-01T00:00:00Z",
                "3mo 2026-01-31T23:59:59Z -> 2026-04-01T00:00:00Z",
                "2mo 2026-11-20T12:00:00Z -> 2027-01-01T00:00:00Z",
                "2mo 2026-12-31T23:59:59Z -> 2027-02-01T00:00:00Z",
                "12mo 2026-06-10T12:00:00Z -> 2027-06-01T00:00:00Z",
                "13mo 2026-12-31T12:00:00Z -> 2028-01-01T00:00:00Z",
                "1200mo 2026-01-15T12:00:00Z -> 2126-01-01T00:00:00Z",
            ],
        );
        // Our reading: the count starts from the current month even when
        // this month's 1st at the reset time is still ahead.
        check(
            &clock("UTC", "09:30"),
            &[
                "2mo 2026-01-01T05:00:00Z -> 2026-03-01T09:30:00Z",
                "2mo 2026-01-20T05:00:00Z -> 2026-03-01T09:30:00Z",
            ],
        );
    }

    #[test]
    fn month_follows_the_local_calendar() {
        // 2026-01-31T23:30 in New York is already February in UTC.
        check(
            &clock("America/New_York", "00:00"),
            &[
                "1mo 2026-02-01T04:30:00Z -> 2026-02-01T00:00:00-05:00",
                "1mo 2026-02-01T05:00:00Z -> 2026-03-01T00:00:00-05:00",
                "2mo 2026-02-01T04:30:00Z -> 2026-03-01T00:00:00-05:00",
            ],
        );
        check(
            &clock("Europe/Berlin", "09:30"),
            &[
                "1mo 2026-05-31T23:30:00Z -> 2026-06-01T09:30:00+02:00",
                "1mo 2026-06-01T07:30:00Z -> 2026-07-01T09:30:00+02:00",
            ],
        );
    }

    // ---------------------------------------------- daylight saving: New York

    #[test]
    fn new_york_spring_forward_hours() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00Z); 02:xx does not exist.
        let c = clock("America/New_York", "00:00");
        check(
            &c,
            &[
                "1h 2026-03-08T00:59:59-05:00 -> 2026-03-08T01:00:00-05:00",
                "1h 2026-03-08T01:00:00-05:00 -> 2026-03-08T03:00:00-04:00",
                "1h 2026-03-08T01:30:00-05:00 -> 2026-03-08T03:00:00-04:00",
                "1h 2026-03-08T03:00:00-04:00 -> 2026-03-08T04:00:00-04:00",
                "1h 2026-03-08T03:30:00-04:00 -> 2026-03-08T04:00:00-04:00",
                "30m 2026-03-08T01:45:00-05:00 -> 2026-03-08T03:00:00-04:00",
                "30m 2026-03-08T03:00:00-04:00 -> 2026-03-08T03:30:00-04:00",
                "5h 2026-03-08T01:00:00-05:00 -> 2026-03-08T05:00:00-04:00",
                "5h 2026-03-07T22:00:00-05:00 -> 2026-03-08T00:00:00-05:00",
                "24h 2026-03-08T00:00:00-05:00 -> 2026-03-09T00:00:00-04:00",
                "1d 2026-03-07T12:00:00-05:00 -> 2026-03-08T00:00:00-05:00",
                "1d 2026-03-08T12:00:00-04:00 -> 2026-03-09T00:00:00-04:00",
            ],
        );
    }

    #[test]
    fn new_york_reset_time_in_the_gap() {
        // 02:30 does not exist on 2026-03-08: it resolves to the transition.
        let c = clock("America/New_York", "02:30");
        check(
            &c,
            &[
                "1d 2026-03-07T12:00:00-05:00 -> 2026-03-08T03:00:00-04:00",
                "1d 2026-03-08T01:59:59-05:00 -> 2026-03-08T03:00:00-04:00",
                "1d 2026-03-08T03:00:00-04:00 -> 2026-03-09T02:30:00-04:00",
                "1d 2026-03-08T03:10:00-04:00 -> 2026-03-09T02:30:00-04:00",
                "2d 2026-03-06T10:00:00-05:00 -> 2026-03-08T03:00:00-04:00",
                "1d 2026-03-06T12:00:00-05:00 -> 2026-03-07T02:30:00-05:00",
            ],
        );
    }

    #[test]
    fn new_york_fall_back_hours() {
        // 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00Z); 01:xx happens
        // twice (05:00Z-06:00Z EDT, then 06:00Z-07:00Z EST). Folded
        // boundaries are the later instant.
        let c = clock("America/New_York", "00:00");
        check(
            &c,
            &[
                "1h 2026-11-01T00:00:00-04:00 -> 2026-11-01T01:00:00-05:00",
                "1h 2026-11-01T00:30:00-04:00 -> 2026-11-01T01:00:00-05:00",
                "1h 2026-11-01T01:30:00-04:00 -> 2026-11-01T01:00:00-05:00",
                "1h 2026-11-01T01:59:59-04:00 -> 2026-11-01T01:00:00-05:00",
                "1h 2026-11-01T01:00:00-05:00 -> 2026-11-01T02:00:00-05:00",
                "1h 2026-11-01T01:30:00-05:00 -> 2026-11-01T02:00:00-05:00",
                "30m 2026-11-01T01:10:00-04:00 -> 2026-11-01T01:00:00-05:00",
                "30m 2026-11-01T01:00:00-05:00 -> 2026-11-01T01:30:00-05:00",
                "30m 2026-11-01T01:30:00-05:00 -> 2026-11-01T02:00:00-05:00",
                // Folded boundaries behind the wall clock are still ahead.
                "15m 2026-11-01T01:50:00-04:00 -> 2026-11-01T01:00:00-05:00",
                "1s 2026-11-01T01:59:59-04:00 -> 2026-11-01T01:00:00-05:00",
                "1s 2026-11-01T01:00:00-05:00 -> 2026-11-01T01:00:01-05:00",
                "5h 2026-11-01T00:00:00-04:00 -> 2026-11-01T05:00:00-05:00",
                "24h 2026-11-01T00:00:00-04:00 -> 2026-11-02T00:00:00-05:00",
                "1d 2026-11-01T00:30:00-04:00 -> 2026-11-02T00:00:00-05:00",
            ],
        );
    }

    #[test]
    fn new_york_reset_time_in_the_fold() {
        let c = clock("America/New_York", "01:30");
        check(
            &c,
            &[
                "1d 2026-10-31T12:00:00-04:00 -> 2026-11-01T01:30:00-05:00",
                // After the first 01:30 (EDT), the second (EST) is still ahead.
                "1d 2026-11-01T01:40:00-04:00 -> 2026-11-01T01:30:00-05:00",
                "1d 2026-11-01T01:29:00-05:00 -> 2026-11-01T01:30:00-05:00",
                "1d 2026-11-01T01:30:00-05:00 -> 2026-11-02T01:30:00-05:00",
                "1d 2026-11-02T01:00:00-05:00 -> 2026-11-02T01:30:00-05:00",
            ],
        );
    }

    // ------------------------------------------------ daylight saving: Berlin

    #[test]
    fn berlin_spring_forward() {
        // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00Z).
        let c = clock("Europe/Berlin", "00:00");
        check(
            &c,
            &[
                "1h 2026-03-29T01:00:00+01:00 -> 2026-03-29T03:00:00+02:00",
                "1h 2026-03-29T01:30:00+01:00 -> 2026-03-29T03:00:00+02:00",
                "1h 2026-03-29T03:00:00+02:00 -> 2026-03-29T04:00:00+02:00",
                "3h 2026-03-29T00:30:00+01:00 -> 2026-03-29T03:00:00+02:00",
                "3h 2026-03-29T03:00:00+02:00 -> 2026-03-29T06:00:00+02:00",
                "15m 2026-03-29T01:50:00+01:00 -> 2026-03-29T03:00:00+02:00",
                "15m 2026-03-29T03:00:00+02:00 -> 2026-03-29T03:15:00+02:00",
                "1d 2026-03-29T01:30:00+01:00 -> 2026-03-30T00:00:00+02:00",
                "7d 2026-03-28T12:00:00+01:00 -> 2026-03-30T00:00:00+02:00",
                "1mo 2026-03-29T12:00:00+02:00 -> 2026-04-01T00:00:00+02:00",
            ],
        );
        let c = clock("Europe/Berlin", "02:30");
        check(
            &c,
            &[
                "1d 2026-03-28T12:00:00+01:00 -> 2026-03-29T03:00:00+02:00",
                "1d 2026-03-29T03:00:00+02:00 -> 2026-03-30T02:30:00+02:00",
                "1d 2026-03-28T01:00:00+01:00 -> 2026-03-28T02:30:00+01:00",
                "2d 2026-03-27T12:00:00+01:00 -> 2026-03-29T03:00:00+02:00",
            ],
        );
    }

    #[test]
    fn berlin_fall_back() {
        // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00Z); 02:xx happens
        // twice (00:00Z-01:00Z CEST, then 01:00Z-02:00Z CET).
        let c = clock("Europe/Berlin", "00:00");
        check(
            &c,
            &[
                "1h 2026-10-25T01:30:00+02:00 -> 2026-10-25T02:00:00+01:00",
                "1h 2026-10-25T02:00:00+02:00 -> 2026-10-25T02:00:00+01:00",
                "1h 2026-10-25T02:30:00+02:00 -> 2026-10-25T02:00:00+01:00",
                "1h 2026-10-25T02:00:00+01:00 -> 2026-10-25T03:00:00+01:00",
                "1h 2026-10-25T02:30:00+01:00 -> 2026-10-25T03:00:00+01:00",
                "1h 2026-10-25T03:00:00+01:00 -> 2026-10-25T04:00:00+01:00",
                "10m 2026-10-25T02:55:00+02:00 -> 2026-10-25T02:00:00+01:00",
                "10m 2026-10-25T02:00:00+01:00 -> 2026-10-25T02:10:00+01:00",
                "24h 2026-10-25T00:00:00+02:00 -> 2026-10-26T00:00:00+01:00",
                "1d 2026-10-25T00:00:00+02:00 -> 2026-10-26T00:00:00+01:00",
                "7d 2026-10-25T12:00:00+01:00 -> 2026-10-26T00:00:00+01:00",
                "1mo 2026-10-25T12:00:00+01:00 -> 2026-11-01T00:00:00+01:00",
            ],
        );
        let c = clock("Europe/Berlin", "02:30");
        check(
            &c,
            &[
                "1d 2026-10-24T12:00:00+02:00 -> 2026-10-25T02:30:00+01:00",
                "1d 2026-10-25T02:40:00+02:00 -> 2026-10-25T02:30:00+01:00",
                "1d 2026-10-25T02:30:00+01:00 -> 2026-10-26T02:30:00+01:00",
            ],
        );
    }

    // ------------------------------------------------ daylight saving: others

    #[test]
    fn lord_howe_half_hour_dst() {
        // Lord Howe Island: +10:30 standard, +11:00 in summer. 2026-04-05 at
        // 02:00 +11 the clocks go back to 01:30 (01:30-02:00 twice); 2026-10-04
        // at 02:00 +10:30 they go forward to 02:30 (02:00-02:30 missing).
        let c = clock("Australia/Lord_Howe", "00:00");
        check(
            &c,
            &[
                "1h 2026-10-04T01:40:00+10:30 -> 2026-10-04T02:30:00+11:00",
                "1h 2026-10-04T02:30:00+11:00 -> 2026-10-04T03:00:00+11:00",
                "30m 2026-10-04T01:40:00+10:30 -> 2026-10-04T02:30:00+11:00",
                "30m 2026-10-04T02:30:00+11:00 -> 2026-10-04T03:00:00+11:00",
                "30m 2026-04-05T01:10:00+11:00 -> 2026-04-05T01:30:00+10:30",
                "30m 2026-04-05T01:40:00+11:00 -> 2026-04-05T01:30:00+10:30",
                "30m 2026-04-05T01:30:00+10:30 -> 2026-04-05T02:00:00+10:30",
                "1h 2026-04-05T01:10:00+11:00 -> 2026-04-05T02:00:00+10:30",
            ],
        );
        check(
            &clock("Australia/Lord_Howe", "02:15"),
            &["1d 2026-10-03T12:00:00+10:30 -> 2026-10-04T02:30:00+11:00"],
        );
    }

    #[test]
    fn havana_dst_at_midnight() {
        // Cuba changes at midnight: 2026-03-08 00:00 CST becomes 01:00 CDT (a
        // missing midnight); 2026-11-01 01:00 CDT becomes 00:00 CST (midnight
        // twice, 04:00Z and 05:00Z).
        let c = clock("America/Havana", "00:00");
        check(
            &c,
            &[
                "1d 2026-03-07T12:00:00-05:00 -> 2026-03-08T01:00:00-04:00",
                "1h 2026-03-07T23:30:00-05:00 -> 2026-03-08T01:00:00-04:00",
                "1h 2026-03-08T01:00:00-04:00 -> 2026-03-08T02:00:00-04:00",
                "1d 2026-03-08T01:00:00-04:00 -> 2026-03-09T00:00:00-04:00",
                "1d 2026-10-31T12:00:00-04:00 -> 2026-11-01T00:00:00-05:00",
                // The first midnight has passed, the second is still ahead.
                "1d 2026-11-01T00:30:00-04:00 -> 2026-11-01T00:00:00-05:00",
                "1h 2026-10-31T23:30:00-04:00 -> 2026-11-01T00:00:00-05:00",
                "1h 2026-11-01T00:30:00-04:00 -> 2026-11-01T00:00:00-05:00",
                "1h 2026-11-01T00:00:00-05:00 -> 2026-11-01T01:00:00-05:00",
            ],
        );
    }

    #[test]
    fn santiago_dst_at_midnight() {
        // Chile: 2026-04-05 00:00 -03 goes back to 23:00 -04 on the 4th
        // (23:00-24:00 twice, 02:00Z-03:00Z then 03:00Z-04:00Z); 2026-09-06
        // 00:00 -04 goes forward to 01:00 -03 (a missing midnight).
        check(
            &clock("America/Santiago", "23:30"),
            &[
                "1d 2026-04-04T12:00:00-03:00 -> 2026-04-04T23:30:00-04:00",
                "1d 2026-04-04T23:40:00-03:00 -> 2026-04-04T23:30:00-04:00",
                "1d 2026-04-04T23:30:00-04:00 -> 2026-04-05T23:30:00-04:00",
            ],
        );
        check(
            &clock("America/Santiago", "00:00"),
            &[
                "1d 2026-09-05T12:00:00-04:00 -> 2026-09-06T01:00:00-03:00",
                "7d 2026-09-05T12:00:00-04:00 -> 2026-09-07T00:00:00-03:00",
                "1h 2026-09-05T23:30:00-04:00 -> 2026-09-06T01:00:00-03:00",
                "1h 2026-09-06T01:00:00-03:00 -> 2026-09-06T02:00:00-03:00",
                "1d 2026-09-06T01:00:00-03:00 -> 2026-09-07T00:00:00-03:00",
            ],
        );
    }

    #[test]
    fn samoa_skipped_a_whole_day() {
        // Samoa skipped 2011-12-30: 23:59:59 on the 29th (-10:00) was followed
        // by 00:00 on the 31st (+14:00), at 10:00Z.
        let c = clock("Pacific/Apia", "00:00");
        check(
            &c,
            &[
                "1d 2011-12-29T12:00:00-10:00 -> 2011-12-31T00:00:00+14:00",
                "1h 2011-12-29T23:30:00-10:00 -> 2011-12-31T00:00:00+14:00",
                "1d 2011-12-31T00:00:00+14:00 -> 2012-01-01T00:00:00+14:00",
                "2d 2011-12-29T12:00:00-10:00 -> 2011-12-31T00:00:00+14:00",
            ],
        );
    }

    // --------------------------------------------------- far from the present

    #[test]
    fn never_panics_at_the_ends_of_time() {
        let max = DateTime::<Utc>::MAX_UTC;
        for d in ["1s", "1h", "1d", "7d", "36500d", "1mo", "1200mo"] {
            assert_eq!(dur(d).next_reset(max, &utc()), max, "{d}");
            let near = max - TimeDelta::days(40_000);
            assert!(dur(d).next_reset(near, &utc()) > near, "{d}");
        }
        let min = DateTime::<Utc>::MIN_UTC;
        for d in ["1s", "1h", "1d", "7d", "3d", "1mo", "3mo"] {
            assert!(dur(d).next_reset(min, &utc()) > min, "{d}");
        }
        for zone in ["Asia/Tokyo", "Pacific/Pago_Pago", "Pacific/Kiritimati"] {
            let c = clock(zone, "23:59");
            for d in ["1s", "1h", "1d", "7d", "3d", "1mo", "3mo"] {
                assert!(dur(d).next_reset(min, &c) > min, "{d} in {zone}");
                assert_eq!(dur(d).next_reset(max, &c), max, "{d} in {zone}");
            }
        }
    }

    // ------------------------------------------------------------ properties

    const ZONES: &[&str] = &[
        "UTC",
        "America/New_York",
        "Europe/Berlin",
        "Australia/Lord_Howe",
        "America/Havana",
        "Pacific/Apia",
        "Asia/Kathmandu",
        "America/St_Johns",
        "Antarctica/Troll",
        "America/Santiago",
        "Africa/Casablanca",
        "Pacific/Kiritimati",
        "Pacific/Pago_Pago",
    ];

    fn any_zone() -> impl Strategy<Value = Tz> {
        prop::sample::select(ZONES).prop_map(|z| z.parse::<Tz>().unwrap())
    }

    fn any_clock() -> impl Strategy<Value = ResetClock> {
        (any_zone(), 0u32..24, 0u32..60).prop_map(|(tz, h, m)| ResetClock {
            tz,
            reset_time: NaiveTime::from_hms_opt(h, m, 0).unwrap(),
        })
    }

    fn any_duration() -> impl Strategy<Value = BudgetDuration> {
        let d = |unit: Unit| move |n: u32| BudgetDuration { n, unit };
        prop_oneof![
            (1..=120u32).prop_map(d(Unit::Second)),
            (1..=MAX_SUB_DAY).prop_map(d(Unit::Second)),
            (1..=120u32).prop_map(d(Unit::Minute)),
            (1..=MAX_SUB_DAY).prop_map(d(Unit::Minute)),
            (1..=48u32).prop_map(d(Unit::Hour)),
            (1..=MAX_SUB_DAY).prop_map(d(Unit::Hour)),
            prop::sample::select(vec![1u32, 7, 30]).prop_map(d(Unit::Day)),
            (1..=MAX_DAYS).prop_map(d(Unit::Day)),
            (1..=MAX_WEEKS).prop_map(|w| BudgetDuration {
                n: 7 * w,
                unit: Unit::Day
            }),
            (1..=24u32).prop_map(d(Unit::Month)),
            (1..=MAX_MONTHS).prop_map(d(Unit::Month)),
        ]
    }

    /// Durations whose boundaries form one fixed calendar grid.
    fn grid_duration() -> impl Strategy<Value = BudgetDuration> {
        prop::sample::select(vec![
            "1s", "7s", "10s", "1m", "7m", "15m", "45m", "1h", "3h", "5h", "7h", "1d", "7d", "30d",
            "1mo",
        ])
        .prop_map(dur)
    }

    /// 1970..2200, with extra weight on the days around the 2026 transitions
    /// of the zones above.
    fn any_instant() -> impl Strategy<Value = DateTime<Utc>> {
        let around = |day: &str| {
            let mid = t(day).timestamp();
            (mid - 3 * 86_400..mid + 3 * 86_400, 0u32..1_000_000_000)
        };
        prop_oneof![
            (0i64..7_258_118_400, 0u32..1_000_000_000),
            around("2026-03-08T12:00:00Z"),
            around("2026-03-29T12:00:00Z"),
            around("2026-04-05T12:00:00Z"),
            around("2026-10-04T12:00:00Z"),
            around("2026-10-25T12:00:00Z"),
            around("2026-11-01T12:00:00Z"),
            around("2011-12-30T12:00:00Z"),
        ]
        .prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap())
    }

    /// Day-and-longer durations, one of each rule.
    fn long_duration() -> impl Strategy<Value = BudgetDuration> {
        prop::sample::select(vec!["1d", "7d", "30d", "1mo", "3mo", "2d", "14d"]).prop_map(dur)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn next_reset_is_strictly_after_now(
            d in any_duration(),
            now in any_instant(),
            c in any_clock(),
        ) {
            let next = d.next_reset(now, &c);
            prop_assert!(next > now, "{} at {} in {}: {}", d, now, c.tz, next);
            prop_assert_eq!(next.nanosecond(), 0);
        }

        #[test]
        fn parse_display_round_trips(d in any_duration()) {
            prop_assert_eq!(BudgetDuration::parse(&d.to_string()), Ok(d));
            prop_assert_eq!(d.to_string().parse::<BudgetDuration>(), Ok(d));
        }

        #[test]
        fn parse_accepts_exactly_the_grammar(n in 0u64..200_000, suffix in "s|m|h|d|w|mo|y|hr|M|") {
            let s = format!("{n}{suffix}");
            let max = match suffix.as_str() {
                "s" | "m" | "h" => u64::from(MAX_SUB_DAY),
                "d" => u64::from(MAX_DAYS),
                "w" => u64::from(MAX_WEEKS),
                "mo" => u64::from(MAX_MONTHS),
                _ => 0,
            };
            match BudgetDuration::parse(&s) {
                Ok(d) => {
                    prop_assert!((1..=max).contains(&n), "{} accepted", s);
                    let factor = if suffix == "w" { 7 } else { 1 };
                    prop_assert_eq!(u64::from(d.n()), n * factor);
                    prop_assert_eq!(BudgetDuration::parse(&d.to_string()), Ok(d));
                }
                Err(e) => {
                    prop_assert!(!(1..=max).contains(&n), "{} rejected", s);
                    prop_assert_eq!(e, DurationError::Invalid { input: s });
                }
            }
        }

        /// Between `now` and the next boundary there is no other boundary:
        /// asking again from any point in between gives the same answer.
        #[test]
        fn grid_boundaries_are_stable(
            d in grid_duration(),
            now in any_instant(),
            c in any_clock(),
            millionths in 0i128..1_000_000,
        ) {
            let next = d.next_reset(now, &c);
            let gap_ns = i128::from((next - now).num_nanoseconds().unwrap());
            let into = i64::try_from(gap_ns * millionths / 1_000_000).unwrap();
            let mid = now + TimeDelta::nanoseconds(into);
            prop_assert!(mid < next);
            prop_assert_eq!(d.next_reset(mid, &c), next);
            prop_assert!(d.next_reset(next, &c) > next);
        }

        /// In UTC the sub-day rule has a closed form.
        #[test]
        fn sub_day_in_utc_matches_arithmetic(
            n in 1u32..=1_500,
            unit in prop::sample::select(vec![Unit::Second, Unit::Minute, Unit::Hour]),
            now in any_instant(),
        ) {
            let d = BudgetDuration { n, unit };
            let step = d.approx_seconds();
            let midnight = now.timestamp().div_euclid(SECONDS_PER_DAY) * SECONDS_PER_DAY;
            let into_day = now.timestamp() - midnight;
            let expected = midnight + (into_day / step + 1) * step;
            let expected = expected.min(midnight + SECONDS_PER_DAY);
            prop_assert_eq!(d.next_reset(now, &utc()).timestamp(), expected);
        }

        /// Day-and-longer boundaries are the reset time on the right local
        /// date (Monday, the 1st), or the end of the gap that swallowed it.
        #[test]
        fn long_boundaries_land_on_the_reset_time(
            d in long_duration(),
            now in any_instant(),
            c in any_clock(),
        ) {
            let next = d.next_reset(now, &c);
            let local = local_time(c.tz, next).unwrap().date();
            // The boundary's own date: that of `next`, or the day before when
            // a gap carried it past midnight.
            let source = [local, local.pred_opt().unwrap()]
                .into_iter()
                .find(|day| resolve(c.tz, day.and_time(c.reset_time)) == Some(next));
            prop_assert!(source.is_some(), "{} at {} in {}: {}", d, now, c.tz, next);
            let day = source.unwrap();
            match (d.unit(), d.n()) {
                (Unit::Day, 7) => prop_assert_eq!(day.weekday(), chrono::Weekday::Mon),
                (Unit::Day, 30) | (Unit::Month, _) => prop_assert_eq!(day.day(), 1),
                _ => {}
            }
        }
    }
}
