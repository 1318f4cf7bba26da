//! How keys, users, teams and organizations are shown: LiteLLM's flat fields (`spend`,
//! `max_budget`, `budget_duration`, `budget_reset_at`), the
//! `budget_limits` echo, and every window in full, lazily rolled as of
//! `now` (a window past its boundary shows spend 0 and its next reset).

use budget_core::decision::rfc3339;
use budget_core::duration::{BudgetDuration, ResetClock};
use budget_core::model::{Entity, EntityKind, SlotId, Span, Window};
use budget_core::Money;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

/// The attribute that keeps the durations as the operator wrote them
/// (`"1w"`, `"weekly"`), by canonical id (`"7d"`), for the ones that differ:
/// LiteLLM clients read back what they sent.
pub const DURATION_TEXTS: &str = "edge_budget_duration_texts";

/// The `budget_duration`s `body` names (its own and its `budget_limits`'),
/// merged over those kept in `old`; `None` when it names none. A text is
/// kept only where it differs from the canonical id.
pub fn duration_texts(old: &Map<String, Value>, body: &Map<String, Value>) -> Option<Value> {
    let mut sent: Vec<&str> = Vec::new();
    if let Some(Value::String(d)) = body.get("budget_duration") {
        sent.push(d);
    }
    if let Some(Value::Array(limits)) = body.get("budget_limits") {
        for l in limits {
            if let Some(Value::String(d)) = l.get("budget_duration") {
                sent.push(d);
            }
        }
    }
    if sent.is_empty() {
        return None;
    }
    let mut texts = match old.get(DURATION_TEXTS) {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for text in sent {
        let Ok(d) = text.trim().parse::<BudgetDuration>() else {
            continue;
        };
        let id = d.to_string();
        if text.trim() == id {
            texts.remove(&id);
        } else {
            texts.insert(id, json!(text.trim()));
        }
    }
    Some(Value::Object(texts))
}

/// A window's duration as the operator sent it (only a text that means
/// that same duration is ever shown), else its canonical id.
fn sent_duration(texts: &Map<String, Value>, w: &Window) -> String {
    let id = w.id();
    match texts.get(&id) {
        Some(Value::String(t))
            if t.parse::<BudgetDuration>()
                .map(|d| d.to_string())
                .as_deref()
                == Ok(id.as_str()) =>
        {
            t.clone()
        }
        _ => id,
    }
}

fn usd(m: Money) -> Value {
    json!(m.as_f64())
}

fn time(t: Option<DateTime<Utc>>) -> Value {
    t.map_or(Value::Null, |t| json!(rfc3339(t)))
}

/// One window: `budget_duration` (`"lifetime"` for a lifetime budget),
/// `max_budget`, `spend`, `reserved`, `remaining`, `reset_at`, and
/// whether it is the legacy `max_budget`/`budget_duration` window.
pub fn window(w: &Window, now: DateTime<Utc>, clock: &ResetClock) -> Value {
    let w = w.as_of(now, clock);
    json!({
        "budget_duration": w.id(),
        "max_budget": usd(w.max),
        "spend": usd(w.spent),
        "reserved": usd(w.reserved),
        "remaining": usd(w.remaining_at(now)),
        "reset_at": time(w.reset_at),
        "legacy": w.legacy,
    })
}

/// A sharded user or team (`totals`: its windows summed over its slots):
/// as [`entity`], with `budget_shards` and each window's part in each slot
/// (`shards`: `slot` is `"pool"` or the shard's number).
pub fn sharded(
    totals: &Entity,
    slots: &[Entity],
    now: DateTime<Utc>,
    clock: &ResetClock,
) -> Map<String, Value> {
    let mut m = entity(totals, now, clock);
    if let Some(Value::Array(windows)) = m.get_mut("windows") {
        for (shown, w) in windows.iter_mut().zip(&totals.windows) {
            let parts: Vec<Value> = slots
                .iter()
                .filter_map(|s| {
                    let p = s.window(&w.id())?;
                    let slot = match s.entity.slot {
                        Some(SlotId::Shard(k)) => json!(k),
                        _ => json!("pool"),
                    };
                    let mut part = json!({
                        "slot": slot,
                        "avail": usd(p.avail),
                        "reserved": usd(p.reserved),
                        "spend": usd(p.spent),
                    });
                    // Held back while the window is in debt.
                    if !p.parked.is_zero() {
                        part["parked"] = usd(p.parked);
                    }
                    Some(part)
                })
                .collect();
            if let Value::Object(o) = shown {
                o.insert("shards".into(), Value::Array(parts));
            }
        }
    }
    m
}

/// The entity as the `info` answers and the writes show it: the
/// attributes kept as given, overlaid with what edge-budget knows
/// (`reservation_floor` included, null when unset).
pub fn entity(e: &Entity, now: DateTime<Utc>, clock: &ResetClock) -> Map<String, Value> {
    let mut m = e.attributes.clone();
    let texts = match m.remove(DURATION_TEXTS) {
        Some(Value::Object(t)) => t,
        _ => Map::new(),
    };
    match e.entity.kind {
        EntityKind::Key => {
            m.insert("token".into(), json!(e.entity.id));
            m.insert("user_id".into(), json!(e.user_id));
            m.insert("team_id".into(), json!(e.team_id));
            m.insert("blocked".into(), json!(e.blocked));
            m.insert("expires".into(), time(e.expires));
        }
        EntityKind::User => {
            m.insert("user_id".into(), json!(e.entity.id));
            m.insert("key_count".into(), json!(e.key_count));
        }
        EntityKind::Team => {
            m.insert("team_id".into(), json!(e.entity.id));
            m.insert("organization_id".into(), json!(e.organization_id));
            m.insert("key_count".into(), json!(e.key_count));
        }
        EntityKind::Organization => {
            m.insert("organization_id".into(), json!(e.entity.id));
            m.insert("team_count".into(), json!(e.key_count));
        }
        EntityKind::Model => {
            if let Some((hash, model)) = e.entity.model_of() {
                m.insert("token".into(), json!(hash));
                m.insert("model".into(), json!(model));
            }
        }
        EntityKind::Tag => {
            m.insert("name".into(), json!(e.entity.id));
        }
        EntityKind::Customer => {
            m.insert("user_id".into(), json!(e.entity.id));
            m.insert("blocked".into(), json!(e.blocked));
        }
        EntityKind::TeamMember => {
            m.insert("user_id".into(), json!(e.user_id));
            m.insert("team_id".into(), json!(e.team_id));
        }
    }
    let legacy = e
        .windows
        .iter()
        .find(|w| w.legacy)
        .map(|w| w.as_of(now, clock));
    // LiteLLM's `spend`: the legacy window's (the period of its
    // budget_duration), else everything ever spent (budget_limits only).
    m.insert(
        "spend".into(),
        usd(legacy.as_ref().map_or(e.lifetime_spent, |w| w.spent)),
    );
    m.insert("lifetime_spend".into(), usd(e.lifetime_spent));
    m.insert(
        "max_budget".into(),
        legacy.as_ref().map_or(Value::Null, |w| usd(w.max)),
    );
    m.insert(
        "budget_duration".into(),
        match legacy.as_ref() {
            Some(w) if matches!(w.span, Span::Every(_)) => json!(sent_duration(&texts, w)),
            _ => Value::Null,
        },
    );
    m.insert(
        "budget_reset_at".into(),
        time(legacy.as_ref().and_then(|w| w.reset_at)),
    );
    if e.entity.kind == EntityKind::TeamMember {
        // LiteLLM's name for a member's cap.
        m.insert(
            "max_budget_in_team".into(),
            legacy.as_ref().map_or(Value::Null, |w| usd(w.max)),
        );
    }
    m.insert(
        "budget_limits".into(),
        Value::Array(
            e.windows
                .iter()
                .filter(|w| !w.legacy)
                .map(|w| json!({"budget_duration": sent_duration(&texts, w), "max_budget": usd(w.max)}))
                .collect(),
        ),
    );
    m.insert(
        "windows".into(),
        Value::Array(e.windows.iter().map(|w| window(w, now, clock)).collect()),
    );
    m.insert(
        "reservation_floor".into(),
        e.reservation_floor.map_or(Value::Null, usd),
    );
    if e.entity.kind != EntityKind::Key {
        m.insert(
            "budget_shards".into(),
            if budget_core::escrow::is_sharded(e) {
                json!(e.shards)
            } else {
                json!(1)
            },
        );
    }
    m.insert("created_at".into(), json!(rfc3339(e.created_at)));
    m.insert("updated_at".into(), json!(rfc3339(e.updated_at)));
    m
}
