//! Budget alerts for owners: thresholds of a window's `max_budget`.

/// Percentages of `max_budget` alerted on when neither the entity nor
/// `BUDGET_ALERT_THRESHOLDS` says otherwise.
pub const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];

/// The highest threshold accepted, in percent of `max_budget`.
pub const MAX_THRESHOLD_PERCENT: u32 = 1000;

/// Most thresholds per entity or deployment.
pub const MAX_THRESHOLDS: usize = 10;

/// `"50,80,100"` (percentages, whole numbers from 1 to 1000, at most 10),
/// sorted and without repeats; `"none"` is the empty list.
pub fn parse_thresholds(text: &str) -> Result<Vec<u32>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        match part.trim().parse::<u32>() {
            Ok(p) if (1..=MAX_THRESHOLD_PERCENT).contains(&p) => out.push(p),
            _ => {
                return Err(format!(
                    "expected percentages of max_budget from 1 to {MAX_THRESHOLD_PERCENT} separated by commas (or none), got \"{}\"",
                    part.trim().chars().take(20).collect::<String>()
                ))
            }
        }
    }
    checked(out)
}

/// Sorted, without repeats, at most [`MAX_THRESHOLDS`].
pub fn checked(mut list: Vec<u32>) -> Result<Vec<u32>, String> {
    list.sort_unstable();
    list.dedup();
    if list.len() > MAX_THRESHOLDS {
        return Err(format!("at most {MAX_THRESHOLDS} thresholds"));
    }
    Ok(list)
}
