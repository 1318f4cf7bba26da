//! Items: how keys, users, teams and reservations are stored (attribute
//! names, integer nano-USD, epoch seconds) and read back, and the owner
//! snapshot a key carries.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::alerts::AlertConfig;
use crate::model::{
    Entity, EntityKind, EntityRef, Hold, Reservation, ReservationState, SlotId, Span, Window,
};
use crate::money::Money;
use crate::store::table::{
    DUE_PK, DUE_SHARDS, DUE_SK, HELD_SHARDS, HOT_SHARDS, PARTITION_KEY, TTL_ATTRIBUTE,
};
use crate::store::StoreError;

use super::expr::*;

/// Finished reservations stay this long, so a settle delivered again days
/// later (an upstream's queue redelivering, a retry after an outage) is
/// still recognised as a duplicate; then DynamoDB's TTL removes them.
/// Held reservations have no TTL: they hold budget until released.
pub(super) const FINISHED_RETENTION_SECONDS: i64 = 7 * 24 * 3600;

/// When a reservation finished at `at` may be removed (epoch seconds).
pub(super) fn retention_until(at: DateTime<Utc>) -> i64 {
    at.timestamp() + FINISHED_RETENTION_SECONDS
}

/// The partition key of an entity (`team#t`), or of one escrow slot of
/// its budget (`slot#team#t#pool`, `slot#team#t#3`).
pub fn entity_pk(entity: &EntityRef) -> String {
    let base = format!("{}#{}", entity.kind.as_str(), entity.id);
    match entity.slot {
        None => base,
        Some(SlotId::Pool) => format!("slot#{base}#pool"),
        Some(SlotId::Shard(k)) => format!("slot#{base}#{k}"),
    }
}

/// The partition key of the item that holds an entity's rarely-read
/// attributes (LiteLLM's `metadata`, aliases, models, …): kept off the
/// counter item, so what every request writes stays small however much
/// metadata an entity carries (see [`meta_item`]).
pub fn meta_pk(entity: &EntityRef) -> String {
    format!("meta#{}", entity_pk(entity))
}

/// The attribute that holds the JSON of an entity's attributes.
pub(super) const ATTRS: &str = "attrs";

/// The item of an entity's attributes (`None`: it has none, and no item).
pub(super) fn meta_item(e: &Entity) -> Option<HashMap<String, AttributeValue>> {
    if e.attributes.is_empty() {
        return None;
    }
    let mut item = key_of(meta_pk(&e.entity));
    item.insert("kind".into(), s("meta"));
    item.insert(
        ATTRS.into(),
        s(Value::Object(e.attributes.clone()).to_string()),
    );
    Some(item)
}

/// The attributes in `item` (an entity's meta item, or a counter item
/// written before they moved out of it).
pub(super) fn attributes_of(
    item: &HashMap<String, AttributeValue>,
) -> Result<Map<String, Value>, StoreError> {
    let pk = match item.get(PARTITION_KEY) {
        Some(AttributeValue::S(pk)) => pk.as_str(),
        _ => "?",
    };
    let r = ItemReader { pk };
    match r.opt_s(item, ATTRS)? {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(r.corrupt("attrs is not a JSON object")),
        },
        None => Ok(Map::new()),
    }
}

pub fn reservation_pk(id: &str) -> String {
    format!("res#{id}")
}

pub(super) fn entity_ref_from_pk(pk: &str) -> Option<EntityRef> {
    if let Some(rest) = pk.strip_prefix("slot#") {
        let (base, slot) = rest.rsplit_once('#')?;
        let slot = match slot {
            "pool" => SlotId::Pool,
            k => SlotId::Shard(k.parse().ok()?),
        };
        return Some(entity_ref_from_pk(base)?.at(slot));
    }
    let (kind, id) = pk.split_once('#')?;
    Some(EntityRef::new(EntityKind::parse(kind)?, id))
}

pub(super) fn owner_index_pk(owner: &EntityRef) -> String {
    format!("{}#keys", entity_pk(owner))
}

/// The index partition of a team's member budgets (`team#<id>#members`).
pub(super) fn members_index_pk(team: &str) -> String {
    format!("{}#members", entity_pk(&EntityRef::team(team)))
}

/// A window as stored; a slot's part also carries its `avail` (the
/// changes add to it, so it must exist).
pub(super) fn window_item(w: &Window, slot: bool) -> AttributeValue {
    let mut m = HashMap::from([
        ("max".to_string(), money(w.max)),
        ("spent".to_string(), money(w.spent)),
        ("reserved".to_string(), money(w.reserved)),
        (
            "used".to_string(),
            money(w.spent.saturating_add(w.reserved)),
        ),
        ("gen".to_string(), n(w.generation as i64)),
        ("legacy".to_string(), AttributeValue::Bool(w.legacy)),
    ]);
    if let Some(at) = w.reset_at {
        m.insert("reset_at".to_string(), epoch(at));
    }
    if slot || !w.avail.is_zero() {
        m.insert("avail".to_string(), money(w.avail));
    }
    if !w.parked.is_zero() {
        m.insert("parked".to_string(), money(w.parked));
    }
    if !w.topped.is_zero() {
        m.insert("topped".to_string(), money(w.topped));
    }
    AttributeValue::M(m)
}

pub(super) struct ItemReader<'a> {
    pk: &'a str,
}

impl<'a> ItemReader<'a> {
    pub(super) fn corrupt(&self, message: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            pk: self.pk.to_string(),
            message: message.into(),
        }
    }

    pub(super) fn opt_s(
        &self,
        m: &'a HashMap<String, AttributeValue>,
        name: &str,
    ) -> Result<Option<&'a str>, StoreError> {
        match m.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.as_str())),
            Some(_) => Err(self.corrupt(format!("{name} is not a string"))),
        }
    }

    pub(super) fn opt_n(
        &self,
        m: &HashMap<String, AttributeValue>,
        name: &str,
    ) -> Result<Option<i64>, StoreError> {
        match m.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| self.corrupt(format!("{name} is not an integer: {v}"))),
            Some(_) => Err(self.corrupt(format!("{name} is not a number"))),
        }
    }

    /// A counter (`spent`, `reserved`): DynamoDB's numbers have 38 digits,
    /// so a sum of accepted amounts can pass `i64` (~9.2 billion USD in
    /// nanos). Read saturated, so such an item stays readable (and over
    /// any budget) instead of corrupt.
    pub(super) fn counter(
        &self,
        m: &HashMap<String, AttributeValue>,
        name: &str,
    ) -> Result<Money, StoreError> {
        match m.get(name) {
            Some(AttributeValue::N(v)) => Ok(Money::from_nanos(
                saturating_integer(v)
                    .ok_or_else(|| self.corrupt(format!("{name} is not an integer: {v}")))?,
            )),
            _ => self.n(m, name).map(Money::from_nanos),
        }
    }

    pub(super) fn n(
        &self,
        m: &HashMap<String, AttributeValue>,
        name: &str,
    ) -> Result<i64, StoreError> {
        self.opt_n(m, name)?
            .ok_or_else(|| self.corrupt(format!("{name} is missing")))
    }

    pub(super) fn time(
        &self,
        m: &HashMap<String, AttributeValue>,
        name: &str,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        match self.opt_n(m, name)? {
            None => Ok(None),
            Some(secs) => Utc
                .timestamp_opt(secs, 0)
                .single()
                .map(Some)
                .ok_or_else(|| self.corrupt(format!("{name} is out of range"))),
        }
    }

    pub(super) fn bool(&self, m: &HashMap<String, AttributeValue>, name: &str) -> bool {
        matches!(m.get(name), Some(AttributeValue::Bool(true)))
    }
}

/// An integer in DynamoDB's number form, clamped to `i64`; `None` if it
/// is not an integer.
pub(super) fn saturating_integer(text: &str) -> Option<i64> {
    if let Ok(v) = text.parse::<i64>() {
        return Some(v);
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(if text.starts_with('-') {
        i64::MIN
    } else {
        i64::MAX
    })
}

pub(super) fn entity_item(e: &Entity) -> HashMap<String, AttributeValue> {
    let mut item = key_of(entity_pk(&e.entity));
    let slot = e.entity.slot.is_some();
    item.insert(
        "kind".into(),
        s(if slot { "slot" } else { e.entity.kind.as_str() }),
    );
    item.insert("id".into(), s(e.entity.id.clone()));
    item.insert("ver".into(), n(e.version as i64));
    if e.incarnation != 0 {
        item.insert(INCARNATION.into(), n(e.incarnation as i64));
    }
    item.insert(
        "w".into(),
        AttributeValue::M(
            e.windows
                .iter()
                .map(|w| (w.id(), window_item(w, slot)))
                .collect(),
        ),
    );
    item.extend(entity_config_attributes(e));
    item.insert("key_count".into(), n(e.key_count));
    if e.member_count != 0 {
        item.insert(MEMBER_COUNT.into(), n(e.member_count));
    }
    if !e.lifetime_spent.is_zero() {
        item.insert(super::expr::LIFETIME_SPENT.into(), money(e.lifetime_spent));
    }
    if e.key_revision != 0 {
        item.insert(KEY_REVISION.into(), n(e.key_revision as i64));
    }
    item.insert("created_at".into(), epoch(e.created_at));
    if e.entity.kind == EntityKind::Key {
        item.insert(OWNERS.into(), AttributeValue::M(HashMap::new()));
    }
    // Slots roll with their entity: only the entity is in the index.
    if let Some(at) = crate::plan::next_due(e).filter(|_| !slot) {
        let (pk, sk) = due_keys(&e.entity, at);
        item.insert(DUE_PK.into(), s(pk));
        item.insert(DUE_SK.into(), s(sk));
    }
    // A pool (only sharded entities have one) lists its entity for the
    // reset job's shrinking of idle shards; gone with the pool.
    if e.entity.slot == Some(SlotId::Pool) {
        item.extend(hot_entry(&e.entity));
    }
    item
}

/// The `gsi1` entry of a pool item: `hot#<shard>` (a hash of its entity's
/// key) and the entity's key. A slot has no other `gsi1` entry.
pub(super) fn hot_entry(pool: &EntityRef) -> [(String, AttributeValue); 2] {
    let owner = entity_pk(&pool.owner());
    let shard = owner
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
        % HOT_SHARDS;
    [
        ("gsi1pk".into(), s(format!("hot#{shard}"))),
        ("gsi1sk".into(), s(owner)),
    ]
}

/// The pool's attribute holding the reset job's record of its last visit
/// (`escrow::visit_record`).
pub(super) const VISIT: &str = "visit";

/// The entity's entry in the `due` index: its shard (a hash of its key,
/// so it stays in one) and its earliest boundary.
pub(super) fn due_keys(entity: &EntityRef, at: DateTime<Utc>) -> (String, String) {
    let shard = entity_pk(entity)
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
        % DUE_SHARDS;
    (format!("due#{shard}"), expiry_sort_key(at))
}

/// Keys carry a snapshot of their user's and team's configuration (id,
/// version, each window's limit and generation) under this attribute, so a
/// cold authorizer learns the whole chain from the key item alone. It is
/// only ever a hint: the reservation is conditional on the versions in it,
/// and a window's counters and boundary are checked by the write itself.
pub(super) const OWNERS: &str = "owners";

/// The attribute that holds an entity's incarnation (see
/// [`Entity::incarnation`]).
pub(super) const INCARNATION: &str = "inc";

/// The attributes of a sharded user's or team's escrow shards (see
/// [`Entity::shards`]); absent means 0 (not sharded).
pub(super) const SHARDS: &str = "shards";
pub(super) const SHARD_ITEMS: &str = "shard_items";

/// The attribute of a user's or team's key revision (see
/// [`Entity::key_revision`]); absent means 0.
pub(super) const KEY_REVISION: &str = "kv";

/// The `owners` attribute of a key whose owners are `owners`.
/// `absent`: the scopes the key names that do not exist (the user's
/// budget in the team, when none was given), so a cold authorizer does not
/// look for them. Only a hint, like the rest: creating one bumps the
/// version of its team, which the reservation is conditional on.
pub(super) fn owner_snapshots(owners: &[Entity], absent: &[EntityRef]) -> AttributeValue {
    let mut m: HashMap<String, AttributeValue> = owners
        .iter()
        .map(|o| (o.entity.kind.as_str().to_string(), owner_snapshot(o)))
        .collect();
    for a in absent {
        m.insert(
            a.kind.as_str().to_string(),
            AttributeValue::M(HashMap::from([
                ("id".to_string(), s(a.id.clone())),
                (ABSENT.to_string(), AttributeValue::Bool(true)),
            ])),
        );
    }
    AttributeValue::M(m)
}

/// Marks a scope the snapshot knows does not exist.
const ABSENT: &str = "absent";

/// What a key's snapshot knows of one scope it names.
pub(super) enum Snapshot {
    Known(Box<Entity>),
    /// It did not exist when the snapshot was taken.
    Absent,
    Unknown,
}

/// [`owner_from_snapshot`], telling a known absence from no knowledge.
pub(super) fn snapshot_of(
    item: &HashMap<String, AttributeValue>,
    kind: EntityKind,
    id: &str,
) -> Snapshot {
    let absent = match item.get(OWNERS) {
        Some(AttributeValue::M(owners)) => match owners.get(kind.as_str()) {
            Some(AttributeValue::M(snap)) => {
                matches!(snap.get("id"), Some(AttributeValue::S(i)) if i == id)
                    && matches!(snap.get(ABSENT), Some(AttributeValue::Bool(true)))
            }
            _ => false,
        },
        _ => false,
    };
    if absent {
        return Snapshot::Absent;
    }
    owner_from_snapshot(item, kind, id).map_or(Snapshot::Unknown, |e| Snapshot::Known(Box::new(e)))
}

pub(super) fn owner_snapshot(e: &Entity) -> AttributeValue {
    let mut snapshot = HashMap::from([
        ("id".to_string(), s(e.entity.id.clone())),
        ("ver".to_string(), n(e.version as i64)),
        (INCARNATION.to_string(), n(e.incarnation as i64)),
        (KEY_REVISION.to_string(), n(e.key_revision as i64)),
        (
            "w".to_string(),
            AttributeValue::M(
                e.windows
                    .iter()
                    .map(|w| {
                        (
                            w.id(),
                            AttributeValue::M(HashMap::from([
                                ("max".to_string(), money(w.max)),
                                ("gen".to_string(), n(w.generation as i64)),
                                ("legacy".to_string(), AttributeValue::Bool(w.legacy)),
                            ])),
                        )
                    })
                    .collect(),
            ),
        ),
    ]);
    if let Some(floor) = e.reservation_floor {
        snapshot.insert(FLOOR.to_string(), money(floor));
    }
    // A team's organization: the scope a cold instance looks for next.
    if let Some(o) = &e.organization_id {
        snapshot.insert(ORGANIZATION.to_string(), s(o.clone()));
    }
    // A cold instance must know the owner is sharded (it reserves on a
    // shard, never on the owner's item).
    if e.shards > 0 || e.shard_items > 0 {
        snapshot.insert(SHARDS.to_string(), n(e.shards as i64));
        snapshot.insert(SHARD_ITEMS.to_string(), n(e.shard_items as i64));
    }
    AttributeValue::M(snapshot)
}

/// The attribute of an entity's reservation floor (nano-USD).
pub(super) const FLOOR: &str = "floor";

/// The attribute of a team's number of member budgets (absent: 0).
pub(super) const MEMBER_COUNT: &str = "member_count";

/// The attribute of a key's models with a budget of their own.
pub(super) const MODEL_BUDGETS: &str = "model_budgets";

/// The attribute of a team's organization.
pub(super) const ORGANIZATION: &str = "organization_id";

/// The owner `kind` (`user`/`team`) with id `id` as the key's snapshot
/// knows it: limits and generations, counters unknown (zero), boundaries
/// unknown (`None`: the write checks them).
pub(super) fn owner_from_snapshot(
    item: &HashMap<String, AttributeValue>,
    kind: EntityKind,
    id: &str,
) -> Option<Entity> {
    let AttributeValue::M(owners) = item.get(OWNERS)? else {
        return None;
    };
    let AttributeValue::M(snap) = owners.get(kind.as_str())? else {
        return None;
    };
    let r = ItemReader { pk: "owners" };
    if r.opt_s(snap, "id").ok()?? != id {
        return None;
    }
    let mut e = Entity::new(EntityRef::new(kind, id), Utc::now());
    e.version = r.n(snap, "ver").ok()? as u64;
    e.incarnation = r.n(snap, INCARNATION).ok()? as u64;
    e.key_revision = r.opt_n(snap, KEY_REVISION).ok()?.unwrap_or(0) as u64;
    e.shards = r.opt_n(snap, SHARDS).ok()?.unwrap_or(0) as u32;
    e.shard_items = r.opt_n(snap, SHARD_ITEMS).ok()?.unwrap_or(0) as u32;
    e.reservation_floor = r.opt_n(snap, FLOOR).ok()?.map(Money::from_nanos);
    e.organization_id = r.opt_s(snap, ORGANIZATION).ok()?.map(str::to_string);
    if let Some(AttributeValue::M(ws)) = snap.get("w") {
        for (wid, w) in ws {
            let AttributeValue::M(w) = w else { return None };
            e.windows.push(Window {
                span: Span::parse_id(wid)?,
                max: Money::from_nanos(r.n(w, "max").ok()?),
                spent: Money::ZERO,
                reserved: Money::ZERO,
                reset_at: None,
                generation: r.n(w, "gen").ok()? as u64,
                legacy: r.bool(w, "legacy"),
                avail: Money::ZERO,
                parked: Money::ZERO,
                topped: Money::ZERO,
            });
        }
    }
    e.windows.sort_by_key(|w| w.span);
    Some(e)
}

/// The attributes an admin update rewrites on the counter item (everything
/// but counters, windows, version, creation time and the attributes, which
/// live in the meta item).
pub(super) fn entity_config_attributes(e: &Entity) -> Vec<(String, AttributeValue)> {
    let mut out = vec![
        ("blocked".to_string(), AttributeValue::Bool(e.blocked)),
        ("updated_at".to_string(), epoch(e.updated_at)),
    ];
    if let Some(u) = &e.user_id {
        out.push(("user_id".into(), s(u.clone())));
        if e.entity.kind == EntityKind::Key {
            out.push((
                "gsi1pk".into(),
                s(owner_index_pk(&EntityRef::user(u.clone()))),
            ));
            out.push(("gsi1sk".into(), s(e.entity.id.clone())));
        }
    }
    if let Some(t) = &e.team_id {
        out.push(("team_id".into(), s(t.clone())));
        if e.entity.kind == EntityKind::Key {
            out.push((
                "gsi2pk".into(),
                s(owner_index_pk(&EntityRef::team(t.clone()))),
            ));
            out.push(("gsi2sk".into(), s(e.entity.id.clone())));
        }
    }
    // A team's organization; the organization's teams are found through
    // the same index as a user's keys (its partition names the
    // organization, so the two never mix).
    if let Some(o) = &e.organization_id {
        out.push((ORGANIZATION.into(), s(o.clone())));
        if e.entity.kind == EntityKind::Team {
            out.push((
                "gsi1pk".into(),
                s(owner_index_pk(&EntityRef::organization(o.clone()))),
            ));
            out.push(("gsi1sk".into(), s(e.entity.id.clone())));
        }
    }
    // A team's member budgets, found by the team (apart from its keys).
    if let Some((team, user)) = e.entity.member_of() {
        out.push(("gsi2pk".into(), s(members_index_pk(team))));
        out.push(("gsi2sk".into(), s(user.to_string())));
    }
    if let Some(x) = e.expires {
        out.push(("expires".into(), epoch(x)));
    }
    if !e.model_budgets.is_empty() {
        out.push((
            MODEL_BUDGETS.into(),
            AttributeValue::L(e.model_budgets.iter().map(|m| s(m.clone())).collect()),
        ));
    }
    if let Some(floor) = e.reservation_floor {
        out.push((FLOOR.into(), money(floor)));
    }
    if e.shards > 0 || e.shard_items > 0 {
        out.push((SHARDS.into(), n(e.shards as i64)));
        out.push((SHARD_ITEMS.into(), n(e.shard_items as i64)));
    }
    if let Some(cfg) = alert_config_item(&AlertConfig::from_attributes(&e.attributes)) {
        out.push((ALERTS.into(), cfg));
    }
    out
}

/// The counter item's copy of what the entity asks to be alerted on (its
/// attributes live in the meta item, which the stream record of a spend
/// does not carry): `{t: "50,80" | "none", soft: nanos}`.
pub(super) const ALERTS: &str = "alerts";

fn alert_config_item(c: &AlertConfig) -> Option<AttributeValue> {
    if c.is_default() {
        return None;
    }
    let mut m = HashMap::new();
    if let Some(t) = &c.thresholds {
        let text = if t.is_empty() {
            "none".to_string()
        } else {
            t.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        };
        m.insert("t".to_string(), s(text));
    }
    if let Some(soft) = c.soft_budget {
        m.insert("soft".to_string(), money(soft));
    }
    Some(AttributeValue::M(m))
}

/// What a counter item says the entity asks to be alerted on.
pub(super) fn alert_config_of(item: &HashMap<String, AttributeValue>) -> AlertConfig {
    let Some(AttributeValue::M(m)) = item.get(ALERTS) else {
        return AlertConfig::default();
    };
    let thresholds = match m.get("t") {
        Some(AttributeValue::S(t)) => crate::alerts::parse_thresholds(t).ok(),
        _ => None,
    };
    let soft_budget = match m.get("soft") {
        Some(AttributeValue::N(n)) => saturating_integer(n).map(Money::from_nanos),
        _ => None,
    };
    AlertConfig {
        thresholds,
        soft_budget,
    }
}

/// Optional configuration attributes: removed when absent in the new form.
pub(super) const OPTIONAL_CONFIG: [&str; 11] = [
    MODEL_BUDGETS,
    "user_id",
    "team_id",
    ORGANIZATION,
    "expires",
    "gsi1pk",
    "gsi1sk",
    "gsi2pk",
    "gsi2sk",
    FLOOR,
    ALERTS,
];

pub(super) fn entity_from_item(
    item: &HashMap<String, AttributeValue>,
) -> Result<Entity, StoreError> {
    let pk = match item.get(PARTITION_KEY) {
        Some(AttributeValue::S(pk)) => pk.as_str(),
        _ => "?",
    };
    let r = ItemReader { pk };
    let entity = entity_ref_from_pk(pk).ok_or_else(|| r.corrupt("not an entity"))?;
    let mut windows = Vec::new();
    if let Some(AttributeValue::M(ws)) = item.get("w") {
        for (id, w) in ws {
            let AttributeValue::M(w) = w else {
                return Err(r.corrupt(format!("window {id} is not a map")));
            };
            let span = Span::parse_id(id).ok_or_else(|| r.corrupt(format!("window id {id}")))?;
            windows.push(Window {
                span,
                max: Money::from_nanos(r.n(w, "max")?),
                spent: r.counter(w, "spent")?,
                reserved: r.counter(w, "reserved")?,
                reset_at: r.time(w, "reset_at")?,
                generation: r.n(w, "gen")? as u64,
                legacy: r.bool(w, "legacy"),
                avail: match w.get("avail") {
                    Some(_) => r.counter(w, "avail")?,
                    None => Money::ZERO,
                },
                parked: match w.get("parked") {
                    Some(_) => r.counter(w, "parked")?,
                    None => Money::ZERO,
                },
                topped: match w.get("topped") {
                    Some(_) => r.counter(w, "topped")?,
                    None => Money::ZERO,
                },
            });
        }
    }
    windows.sort_by_key(|w| w.span);
    // Only items written before the attributes moved out have them here.
    let attributes = attributes_of(item)?;
    let created_at = r.time(item, "created_at")?.unwrap_or_default();
    Ok(Entity {
        entity,
        version: r.n(item, "ver")? as u64,
        incarnation: r.opt_n(item, INCARNATION)?.unwrap_or(0) as u64,
        reservation_floor: r.opt_n(item, FLOOR)?.map(Money::from_nanos),
        windows,
        user_id: r.opt_s(item, "user_id")?.map(str::to_string),
        team_id: r.opt_s(item, "team_id")?.map(str::to_string),
        organization_id: r.opt_s(item, ORGANIZATION)?.map(str::to_string),
        model_budgets: match item.get(MODEL_BUDGETS) {
            Some(AttributeValue::L(list)) => list
                .iter()
                .map(|v| match v {
                    AttributeValue::S(m) => Ok(m.clone()),
                    _ => Err(r.corrupt("model_budgets holds a non-string")),
                })
                .collect::<Result<_, _>>()?,
            _ => Vec::new(),
        },
        blocked: r.bool(item, "blocked"),
        expires: r.time(item, "expires")?,
        key_count: r.opt_n(item, "key_count")?.unwrap_or(0),
        member_count: r.opt_n(item, MEMBER_COUNT)?.unwrap_or(0),
        // A counter like a window's: read saturated past i64.
        lifetime_spent: match item.get(super::expr::LIFETIME_SPENT) {
            None => Money::ZERO,
            Some(_) => r.counter(item, super::expr::LIFETIME_SPENT)?,
        },
        key_revision: r.opt_n(item, KEY_REVISION)?.unwrap_or(0) as u64,
        shards: r.opt_n(item, SHARDS)?.unwrap_or(0) as u32,
        shard_items: r.opt_n(item, SHARD_ITEMS)?.unwrap_or(0) as u32,
        created_at,
        updated_at: r.time(item, "updated_at")?.unwrap_or(created_at),
        attributes,
    })
}

pub(super) fn held_shard(id: &str) -> u32 {
    id.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
        % HELD_SHARDS
}

pub(super) fn expiry_sort_key(t: DateTime<Utc>) -> String {
    format!("{:012}", t.timestamp().max(0))
}

pub(super) fn reservation_item(r: &Reservation) -> HashMap<String, AttributeValue> {
    let mut item = key_of(reservation_pk(&r.id));
    item.insert("kind".into(), s("reservation"));
    item.insert("id".into(), s(r.id.clone()));
    item.insert("state".into(), s(r.state.as_str()));
    item.insert("amount".into(), money(r.amount));
    item.insert(
        "holds".into(),
        AttributeValue::L(
            r.holds
                .iter()
                .map(|h| {
                    AttributeValue::M(HashMap::from([
                        ("e".to_string(), s(entity_pk(&h.entity))),
                        ("i".to_string(), n(h.incarnation as i64)),
                        ("w".to_string(), s(h.window.clone())),
                        ("g".to_string(), n(h.generation as i64)),
                    ]))
                })
                .collect(),
        ),
    );
    item.insert("key_hash".into(), s(r.key_hash.clone()));
    if let Some(u) = &r.user_id {
        item.insert("user_id".into(), s(u.clone()));
    }
    if let Some(t) = &r.team_id {
        item.insert("team_id".into(), s(t.clone()));
    }
    item.insert("created_at".into(), epoch(r.created_at));
    item.insert("expires_at".into(), epoch(r.expires_at));
    // A held reservation holds budget: it is never removed by TTL (only
    // the reset job releases it). A finished one expires after the
    // retention (see `reservation_end`).
    if r.state != ReservationState::Held {
        let finished = r.settled_at.or(r.expired_at).unwrap_or(r.expires_at);
        item.insert(TTL_ATTRIBUTE.into(), n(retention_until(finished)));
    }
    if r.state == ReservationState::Held {
        item.insert("gsi1pk".into(), s(format!("held#{}", held_shard(&r.id))));
        item.insert("gsi1sk".into(), s(expiry_sort_key(r.expires_at)));
    }
    if let Some(c) = r.cost {
        item.insert("cost".into(), money(c));
    }
    if let Some(t) = r.settled_at {
        item.insert("settled_at".into(), epoch(t));
    }
    if let Some(t) = r.expired_at {
        item.insert("expired_at".into(), epoch(t));
    }
    if let Some(d) = &r.receipt_digest {
        item.insert("digest".into(), s(d.clone()));
    }
    if let Some(m) = r.remaining {
        item.insert("remaining".into(), money(m));
    }
    if let Some((e, span)) = &r.tightest {
        item.insert("tight_e".into(), s(entity_pk(e)));
        item.insert("tight_w".into(), s(span.id()));
    }
    item
}

pub(super) fn reservation_from_item(
    item: &HashMap<String, AttributeValue>,
) -> Result<Reservation, StoreError> {
    let pk = match item.get(PARTITION_KEY) {
        Some(AttributeValue::S(pk)) => pk.as_str(),
        _ => "?",
    };
    let r = ItemReader { pk };
    let mut holds = Vec::new();
    if let Some(AttributeValue::L(list)) = item.get("holds") {
        for h in list {
            let AttributeValue::M(h) = h else {
                return Err(r.corrupt("hold is not a map"));
            };
            let e = r
                .opt_s(h, "e")?
                .ok_or_else(|| r.corrupt("hold without entity"))?;
            holds.push(Hold {
                entity: entity_ref_from_pk(e).ok_or_else(|| r.corrupt("hold entity"))?,
                incarnation: r.opt_n(h, "i")?.unwrap_or(0) as u64,
                window: r
                    .opt_s(h, "w")?
                    .ok_or_else(|| r.corrupt("hold without window"))?
                    .to_string(),
                generation: r.n(h, "g")? as u64,
            });
        }
    }
    let state = r
        .opt_s(item, "state")?
        .and_then(ReservationState::parse)
        .ok_or_else(|| r.corrupt("state"))?;
    Ok(Reservation {
        id: r
            .opt_s(item, "id")?
            .ok_or_else(|| r.corrupt("id"))?
            .to_string(),
        amount: Money::from_nanos(r.n(item, "amount")?),
        holds,
        key_hash: r.opt_s(item, "key_hash")?.unwrap_or_default().to_string(),
        user_id: r.opt_s(item, "user_id")?.map(str::to_string),
        team_id: r.opt_s(item, "team_id")?.map(str::to_string),
        state,
        created_at: r.time(item, "created_at")?.unwrap_or_default(),
        expires_at: r.time(item, "expires_at")?.unwrap_or_default(),
        cost: r.opt_n(item, "cost")?.map(Money::from_nanos),
        settled_at: r.time(item, "settled_at")?,
        expired_at: r.time(item, "expired_at")?,
        receipt_digest: r.opt_s(item, "digest")?.map(str::to_string),
        receipt: None,
        remaining: r.opt_n(item, "remaining")?.map(Money::from_nanos),
        tightest: match (r.opt_s(item, "tight_e")?, r.opt_s(item, "tight_w")?) {
            (Some(e), Some(w)) => entity_ref_from_pk(e).zip(Span::parse_id(w)),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::ResetClock;
    use chrono::TimeZone;

    #[test]
    fn entity_items_round_trip() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap();
        let clock = ResetClock::default();
        let mut e = Entity::new(EntityRef::user("user-123"), now);
        e.windows.push(Window::open(
            Span::parse_id("1d").unwrap(),
            Money::usd(150),
            false,
            now,
            &clock,
        ));
        e.windows.push(Window::open(
            Span::Lifetime,
            Money::usd(1000),
            true,
            now,
            &clock,
        ));
        e.windows.sort_by_key(|w| w.span);
        let back = entity_from_item(&entity_item(&e)).unwrap();
        assert_eq!(back, e);
        e.attributes
            .insert("metadata".into(), serde_json::json!({"team": "x"}));
        // The attributes live in their own item, never on the counters.
        assert_eq!(entity_item(&e), entity_item(&back));
        let meta = meta_item(&e).unwrap();
        assert_eq!(attributes_of(&meta).unwrap(), e.attributes);
        assert!(meta_item(&back).is_none());
    }

    #[test]
    fn counters_past_i64_read_saturated_not_corrupt() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap();
        let clock = ResetClock::default();
        let mut e = Entity::new(EntityRef::user("u"), now);
        e.windows.push(Window::open(
            Span::parse_id("1d").unwrap(),
            Money::usd(1),
            false,
            now,
            &clock,
        ));
        let mut item = entity_item(&e);
        let Some(AttributeValue::M(ws)) = item.get_mut("w") else {
            unreachable!()
        };
        let Some(AttributeValue::M(w)) = ws.get_mut("1d") else {
            unreachable!()
        };
        // Ten settles of $1e9: 1e19 nano-USD, past i64::MAX.
        w.insert("spent".into(), n_text("10000000000000000000"));
        w.insert("reserved".into(), n_text("-99999999999999999999999"));
        let back = entity_from_item(&item).unwrap();
        assert_eq!(back.windows[0].spent, Money::from_nanos(i64::MAX));
        assert_eq!(back.windows[0].reserved, Money::from_nanos(i64::MIN));
        w_insert_bad(&mut item);
        assert!(entity_from_item(&item).is_err());
    }

    fn n_text(v: &str) -> AttributeValue {
        AttributeValue::N(v.to_string())
    }

    fn w_insert_bad(item: &mut HashMap<String, AttributeValue>) {
        if let Some(AttributeValue::M(ws)) = item.get_mut("w") {
            if let Some(AttributeValue::M(w)) = ws.get_mut("1d") {
                w.insert("spent".into(), n_text("1.5"));
            }
        }
    }

    #[test]
    fn reservation_items_round_trip() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap();
        let holds = vec![Hold {
            entity: EntityRef::team("t"),
            incarnation: 11,
            window: "1d".into(),
            generation: 7,
        }];
        let owners = (None, Some("t".into()));
        let mut r = Reservation::held("r1", Money::from_nanos(5), holds, "abc", owners, now, now);
        r.receipt_digest = Some("d".into());
        r.remaining = Some(Money::usd(3));
        r.tightest = Some((EntityRef::team("t"), Span::parse_id("1d").unwrap()));
        assert_eq!(reservation_from_item(&reservation_item(&r)).unwrap(), r);
    }
}
