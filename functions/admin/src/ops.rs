//! The operations behind the routes. Each one checks the whole request
//! before its first write, so a refused request writes nothing; updates
//! are read-modify-write, conditional on the version read, retried a few
//! times when another writer got there first.

use std::time::Duration;

use crate::fields::check_id;
use crate::limits::{self, BudgetPatch};
use budget_core::keys::{generate_key, hash_key};
use budget_core::model::{key_hash_prefix, Entity, EntityKind, EntityRef};
use budget_core::store::{AdminStore, AdminWrite, StoreError};
use budget_core::Settings;
use chrono::{DateTime, Utc};
use http_api::{required_str, ApiError};
use serde_json::{json, Map, Value};

use crate::fields::{self, attributes, bool_patch, expiry_patch, id_patch, key_hash_of};
use crate::view;

mod members;
mod models;

/// Attempts at a write that lost a race before giving up.
const ATTEMPTS: u32 = 5;

/// Key fields edge-budget acts on; every other field is kept as given.
const KEY_FIELDS: &[&str] = &[
    "key",
    "token",
    "user_id",
    "team_id",
    "max_budget",
    "budget_duration",
    "budget_limits",
    "expires",
    "duration",
    "blocked",
    "reservation_floor",
];

pub(crate) struct Admin<'a, S> {
    pub store: &'a S,
    pub settings: &'a Settings,
    pub now: DateTime<Utc>,
}

/// The id field of a user, team or organization (`user_id`, `team_id`,
/// `organization_id`).
pub(crate) fn id_field(kind: EntityKind) -> &'static str {
    match kind {
        EntityKind::User => "user_id",
        EntityKind::Team => "team_id",
        EntityKind::Organization => "organization_id",
        EntityKind::TeamMember | EntityKind::Customer => "user_id",
        EntityKind::Model => "model_max_budget",
        EntityKind::Tag => "name",
        EntityKind::Key => "key",
    }
}

/// The fields of a scope edge-budget acts on (the others are kept as
/// given): its id, its budget, and a team's `organization_id`.
fn owner_fields(kind: EntityKind) -> Vec<&'static str> {
    let mut out = vec![
        id_field(kind),
        "max_budget",
        "budget_duration",
        "budget_limits",
        "reservation_floor",
        "budget_shards",
    ];
    if kind == EntityKind::Team {
        out.push("organization_id");
    }
    out
}

/// Sharded budgets (`budget_shards`) exist for users and teams only.
fn refuse_shards(kind: EntityKind, shards: Option<u32>) -> Result<(), ApiError> {
    match shards {
        Some(n) if n > 1 && !matches!(kind, EntityKind::User | EntityKind::Team) => {
            Err(ApiError::bad_request(
                "budget_shards",
                format!("budget_shards is not supported on an {kind}: only users and teams can be sharded"),
            ))
        }
        _ => Ok(()),
    }
}

/// `old` (`None`: new) with `budget_shards` set to `n`: 1 stays 1 (not
/// sharded); a sharded entity never goes back to 1 (its reservations live
/// on its shards), and keeps every shard item it had (lowered shards are
/// retired: nothing new is reserved there, what they hold settles there).
fn with_shards(old: Option<&Entity>, mut new: Entity, n: Option<u32>) -> Result<Entity, ApiError> {
    let Some(n) = n else { return Ok(new) };
    if n >= 2 && old.is_some_and(|o| o.member_count > 0) {
        return Err(ApiError::bad_request(
            "budget_shards",
            format!(
                "{} has member budgets (/team/member_add): a team with them cannot be sharded",
                named(&new.entity)
            ),
        ));
    }
    let sharded = old.is_some_and(budget_core::escrow::is_sharded);
    if n < 2 {
        if sharded {
            return Err(ApiError::bad_request(
                "budget_shards",
                format!(
                    "{} is sharded: budget_shards can be lowered to 2, not to 1 (its reservations live on its shards); delete and re-create it to undo sharding",
                    named(&new.entity)
                ),
            ));
        }
        return Ok(new);
    }
    new.shards = n;
    new.shard_items = old.map_or(0, |o| o.shard_items).max(n);
    Ok(new)
}

/// A failed read: 503 to retry, or 500 when DynamoDB refused the request
/// itself (retrying will not help).
fn unavailable(e: StoreError) -> ApiError {
    match e {
        StoreError::Rejected(_) => ApiError::store_rejected(format!(
            "the budget store refused this read; retrying will not help: {e}"
        )),
        e => ApiError::unavailable(format!("the budget store is unavailable; retry: {e}")),
    }
}

/// A failed write: as [`unavailable`], except that a write DynamoDB refuses
/// (an item past 400 KB, a key past 2,048 bytes) is made of this request's
/// content: 400, nothing written.
fn write_failed(e: StoreError) -> ApiError {
    match e {
        StoreError::Rejected(_) => ApiError {
            status: 400,
            message: format!("the budget store refused this write, nothing was written: {e}"),
            kind: "invalid_request_error",
            param: None,
        },
        e => unavailable(e),
    }
}

fn with_param(mut e: ApiError, param: &str) -> ApiError {
    e.param = Some(param.to_string());
    e
}

/// How an entity is named in messages: keys by a hash prefix.
fn named(r: &EntityRef) -> String {
    match r.kind {
        EntityKind::Key => format!("key {}", key_hash_prefix(&r.id)),
        EntityKind::TeamMember => format!("team member {}", r.display_id()),
        EntityKind::Model => format!("the budget of model {}", r.display_id()),
        kind => format!("{kind} {}", r.id),
    }
}

fn missing_owner(owner: &EntityRef) -> ApiError {
    with_param(
        ApiError::not_found(format!(
            "{} does not exist: create it first (/{}/new)",
            named(owner),
            owner.kind
        )),
        id_field(owner.kind),
    )
}

async fn backoff(attempt: u32) {
    let base = 10u64 << attempt.min(4);
    let jitter = rand::random::<u64>() % base;
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

/// A user or team may not be blocked here: admission only looks at keys'
/// `blocked`, and accepting `true` would promise what is not enforced.
fn refuse_owner_blocking(kind: EntityKind, body: &Map<String, Value>) -> Result<(), ApiError> {
    if kind == EntityKind::Customer {
        // Customers are blocked as LiteLLM blocks them: every request that
        // names one is refused.
        return bool_patch(body, "blocked").map(|_| ());
    }
    match body.get("blocked") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(()),
        Some(Value::Bool(true)) => Err(ApiError::bad_request(
            "blocked",
            format!("blocking a {kind} is not supported: block its keys with /key/block"),
        )),
        Some(_) => Err(ApiError::bad_request(
            "blocked",
            "blocked must be true or false",
        )),
    }
}

/// A team's `organization_id` (the organization whose windows govern
/// every request of the team's keys; it must exist); other scopes keep the
/// field as given.
fn organization_patch(
    kind: EntityKind,
    body: &Map<String, Value>,
) -> Result<limits::Patch<String>, ApiError> {
    if kind == EntityKind::Team {
        id_patch(body, "organization_id")
    } else {
        Ok(limits::Patch::Absent)
    }
}

/// A user's `team_id` (LiteLLM's "add to team", kept as a field) is an
/// id like any other.
fn check_owner_fields(kind: EntityKind, body: &Map<String, Value>) -> Result<(), ApiError> {
    if kind == EntityKind::User {
        id_patch(body, "team_id")?;
    }
    if kind == EntityKind::Team {
        members::check_member_default(body)?;
    }
    Ok(())
}

/// The key a request names by `key` (plaintext or token) or `token`.
fn named_key(body: &Map<String, Value>) -> Result<String, ApiError> {
    let field = if body.get("key").is_some_and(|v| !v.is_null())
        || body.get("token").is_none_or(Value::is_null)
    {
        "key"
    } else {
        "token"
    };
    Ok(key_hash_of(&required_str(body, field)?))
}

impl<S: AdminStore> Admin<'_, S> {
    fn show(&self, e: &Entity) -> Map<String, Value> {
        view::entity(e, self.now, &self.settings.clock)
    }

    /// A user or team as shown: a sharded one with its windows' totals
    /// over its slots, and each slot's part.
    async fn show_owner(&self, e: &Entity) -> Result<Map<String, Value>, ApiError> {
        let refs = budget_core::escrow::slot_refs(e);
        if refs.is_empty() {
            return Ok(self.show(e));
        }
        let slots = self.store.load_many(&refs).await.map_err(unavailable)?;
        let totals = budget_core::escrow::totals(e, &slots);
        Ok(view::sharded(
            &totals,
            &slots,
            self.now,
            &self.settings.clock,
        ))
    }

    async fn create(&self, e: &Entity) -> Result<(), ApiError> {
        check_attributes_size(e)?;
        for attempt in 0..ATTEMPTS {
            match self.store.create(e).await.map_err(write_failed)? {
                AdminWrite::Done => {
                    tracing::info!(entity = %named(&e.entity), windows = e.windows.len(), "created");
                    return Ok(());
                }
                AdminWrite::AlreadyExists => {
                    let message = match e.entity.kind {
                        EntityKind::Key => "this key exists already".to_string(),
                        _ => format!(
                            "{} exists already: use /{}/update",
                            named(&e.entity),
                            e.entity.kind
                        ),
                    };
                    return Err(with_param(
                        ApiError::conflict(message),
                        id_field(e.entity.kind),
                    ));
                }
                AdminWrite::Missing(owner) => return Err(missing_owner(&owner)),
                AdminWrite::Conflict => backoff(attempt).await,
            }
        }
        Err(ApiError::unavailable(
            "the owners of this key are being changed by other requests; retry",
        ))
    }

    async fn load(&self, r: &EntityRef, param: &str) -> Result<Entity, ApiError> {
        match self.store.load_described(r).await.map_err(unavailable)? {
            Some(e) => Ok(e),
            None => Err(with_param(
                ApiError::not_found(format!("{} not found", named(r))),
                param,
            )),
        }
    }

    /// Read, change with `change`, write conditional on the version read;
    /// again from a fresh read when another writer got there first.
    async fn modify(
        &self,
        r: &EntityRef,
        param: &str,
        change: impl Fn(&Entity) -> Result<Entity, ApiError>,
    ) -> Result<Entity, ApiError> {
        for attempt in 0..ATTEMPTS {
            let old = self.load(r, param).await?;
            let mut new = change(&old)?;
            check_attributes_size(&new)?;
            new.updated_at = self.now;
            match self.store.update(&old, &new).await.map_err(write_failed)? {
                AdminWrite::Done => {
                    tracing::info!(entity = %named(r), windows = new.windows.len(), "updated");
                    new.version = old.version + 1;
                    // Show what the table holds now (counters may have moved).
                    return Ok(self
                        .store
                        .load_described(r)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(new));
                }
                AdminWrite::Missing(owner) => return Err(missing_owner(&owner)),
                AdminWrite::AlreadyExists => {
                    return Err(ApiError::conflict(format!("{} exists already", named(r))))
                }
                AdminWrite::Conflict => backoff(attempt).await,
            }
        }
        Err(ApiError::conflict(format!(
            "{} kept changing while it was being updated ({ATTEMPTS} attempts); try again",
            named(r)
        )))
    }

    /// Deletes one entity as read; `false` when it was gone already.
    async fn delete_one(&self, mut current: Entity) -> Result<bool, ApiError> {
        for attempt in 0..ATTEMPTS {
            match self.store.delete(&current).await.map_err(write_failed)? {
                AdminWrite::Done => {
                    tracing::info!(entity = %named(&current.entity), "deleted");
                    return Ok(true);
                }
                _ => match self
                    .store
                    .load(&current.entity)
                    .await
                    .map_err(unavailable)?
                {
                    None => return Ok(false),
                    Some(e) if e.key_count > 0 || e.member_count > 0 => {
                        return Err(still_has_keys(&e))
                    }
                    Some(e) => {
                        current = e;
                        backoff(attempt).await;
                    }
                },
            }
        }
        Err(ApiError::conflict(format!(
            "{} kept changing while it was being deleted; try again",
            named(&current.entity)
        )))
    }

    pub async fn key_generate(&self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let custom = fields::custom_key(body)?;
        let user_id = id_patch(body, "user_id")?.apply(None);
        let team_id = id_patch(body, "team_id")?.apply(None);
        let limits = BudgetPatch::parse(body)?.resolve(&[])?;
        let expires = expiry_patch(body, self.now)?.apply(None);
        let blocked = bool_patch(body, "blocked")?.apply(None).unwrap_or(false);
        let floor = fields::floor_patch(body)?.apply(None);
        let mut attrs = attributes(body, KEY_FIELDS)?;
        attrs.remove(view::DURATION_TEXTS);
        if let Some(t) = view::duration_texts(&Map::new(), body) {
            attrs.insert(view::DURATION_TEXTS.into(), t);
        }
        let key = custom.unwrap_or_else(generate_key);
        attrs.insert("key_name".into(), json!(fields::key_name(&key)));
        let models = models::parse(body)?.unwrap_or_default();
        let mut e = Entity::new(EntityRef::key(hash_key(&key)), self.now);
        e.model_budgets = models.iter().map(|(m, _)| m.clone()).collect();
        e.windows = limits::apply(&[], &limits, self.now, &self.settings.clock);
        e.user_id = user_id;
        e.team_id = team_id;
        e.expires = expires;
        e.blocked = blocked;
        e.reservation_floor = floor;
        e.attributes = attrs;
        self.create(&e).await?;
        self.write_models(&e.entity.id, &[], &models).await?;
        let mut out = self.show(&e);
        out.insert("key".into(), json!(key));
        Ok(Value::Object(out))
    }

    pub async fn key_update(&self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let hash = named_key(body)?;
        let budget = BudgetPatch::parse(body)?;
        let models = models::parse(body)?;
        let user_id = id_patch(body, "user_id")?;
        let team_id = id_patch(body, "team_id")?;
        let expires = expiry_patch(body, self.now)?;
        let blocked = bool_patch(body, "blocked")?;
        let floor = fields::floor_patch(body)?;
        let mut attrs = attributes(body, KEY_FIELDS)?;
        // The key's name comes from the key itself, set once.
        attrs.remove("key_name");
        attrs.remove(view::DURATION_TEXTS);
        let (now, clock) = (self.now, &self.settings.clock);
        let before = match &models {
            Some(_) => {
                self.load(&EntityRef::key(hash.clone()), "key")
                    .await?
                    .model_budgets
            }
            None => Vec::new(),
        };
        let e = self
            .modify(&EntityRef::key(hash.clone()), "key", |old| {
                let limits = budget.resolve(&old.windows)?;
                let mut new = old.clone();
                new.windows = limits::apply(&old.windows, &limits, now, clock);
                if let Some(m) = &models {
                    new.model_budgets = m.iter().map(|(name, _)| name.clone()).collect();
                }
                new.user_id = user_id.clone().apply(old.user_id.clone());
                new.team_id = team_id.clone().apply(old.team_id.clone());
                new.expires = expires.clone().apply(old.expires);
                new.blocked = blocked.clone().apply(Some(old.blocked)).unwrap_or(false);
                new.reservation_floor = floor.clone().apply(old.reservation_floor);
                new.attributes.extend(attrs.clone());
                if let Some(t) = view::duration_texts(&old.attributes, body) {
                    new.attributes.insert(view::DURATION_TEXTS.into(), t);
                }
                Ok(new)
            })
            .await?;
        if let Some(m) = &models {
            self.write_models(&hash, &before, m).await?;
        }
        Ok(Value::Object(self.show(&e)))
    }

    pub async fn key_block(
        &self,
        body: &Map<String, Value>,
        blocked: bool,
    ) -> Result<Value, ApiError> {
        let hash = named_key(body)?;
        let e = self
            .modify(&EntityRef::key(hash), "key", |old| {
                Ok(Entity {
                    blocked,
                    ..old.clone()
                })
            })
            .await?;
        Ok(Value::Object(self.show(&e)))
    }

    /// Every entity of `refs`, or a 404 (on `param`, saying `missing(id)`)
    /// naming the first that does not exist.
    async fn load_all(
        &self,
        refs: &[EntityRef],
        param: &str,
        missing: impl Fn(&str) -> String,
    ) -> Result<Vec<Entity>, ApiError> {
        let found = self.store.load_many(refs).await.map_err(unavailable)?;
        match refs.iter().find(|r| !found.iter().any(|e| &e.entity == *r)) {
            Some(absent) => Err(with_param(ApiError::not_found(missing(&absent.id)), param)),
            None => Ok(found),
        }
    }

    /// `/customer/block`, `/customer/unblock` (`user_ids`): every request
    /// naming a blocked customer is refused. All must exist, or nothing
    /// is written.
    pub async fn customer_block(
        &self,
        body: &Map<String, Value>,
        blocked: bool,
    ) -> Result<Value, ApiError> {
        let ids = fields::owner_id_list(body, "user_ids")?;
        let refs: Vec<EntityRef> = ids.iter().map(EntityRef::customer).collect();
        self.load_all(&refs, "user_ids", |id| {
            format!("no customer {id}; nothing was changed")
        })
        .await?;
        for r in &refs {
            self.modify(r, "user_ids", |old| {
                Ok(Entity {
                    blocked,
                    ..old.clone()
                })
            })
            .await?;
        }
        let field = if blocked {
            "blocked_users"
        } else {
            "unblocked_users"
        };
        Ok(json!({ field: ids }))
    }

    /// `/tag/info {"names": [...]}`: LiteLLM's answer, each tag by name.
    pub async fn tag_info(&self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let names = fields::owner_id_list(body, "names")?;
        let refs: Vec<EntityRef> = names.iter().map(EntityRef::tag).collect();
        let found = self
            .load_all(&refs, "names", |id| format!("no tag {id}"))
            .await?;
        let mut out = Map::new();
        for e in &found {
            out.insert(e.entity.id.clone(), Value::Object(self.show(e)));
        }
        Ok(Value::Object(out))
    }

    /// `/tag/delete {"name"}`.
    pub async fn tag_delete(&self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let name = fields::required_id(body, "name")?;
        let e = self.load(&EntityRef::tag(name.clone()), "name").await?;
        self.delete_one(e).await?;
        Ok(json!({"deleted_tags": [name]}))
    }

    pub async fn key_info(&self, key: Option<String>) -> Result<Value, ApiError> {
        let Some(key) = key.filter(|k| !k.trim().is_empty()) else {
            return Err(ApiError::bad_request(
                "key",
                "key is required: /key/info?key=<sk-... or its token>",
            ));
        };
        let key = key.trim();
        fields::check_named_key("key", key)?;
        let e = self.load(&EntityRef::key(key_hash_of(key)), "key").await?;
        let mut info = self.show(&e);
        info.insert(
            "model_budgets".into(),
            Value::Array(self.model_views(&e).await?),
        );
        Ok(json!({"key": e.entity.id, "info": info}))
    }

    pub async fn key_delete(&self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        match body.get("key_aliases") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(_) => return Err(ApiError::bad_request(
                "key_aliases",
                "deleting keys by alias is not supported: list the keys (or their tokens) in keys",
            )),
        }
        let mut hashes: Vec<String> = Vec::new();
        for k in fields::id_list(body, "keys")? {
            let h = key_hash_of(k.trim());
            if !hashes.contains(&h) {
                hashes.push(h);
            }
        }
        let refs: Vec<EntityRef> = hashes.iter().map(EntityRef::key).collect();
        let found = self.store.load_many(&refs).await.map_err(unavailable)?;
        let missing: Vec<String> = refs
            .iter()
            .filter(|r| !found.iter().any(|e| &e.entity == *r))
            .map(|r| key_hash_prefix(&r.id))
            .collect();
        if !missing.is_empty() {
            return Err(with_param(
                ApiError::not_found(format!(
                    "no key with token {}; nothing was deleted",
                    missing.join(", ")
                )),
                "keys",
            ));
        }
        // In as few transactions as DynamoDB allows; what changed since it
        // was read is deleted one by one, from a fresh read.
        let count = found.len();
        let left = self.store.delete_keys(&found).await.map_err(write_failed)?;
        tracing::info!(keys = count, one_by_one = left.len(), "deleting keys");
        for e in left {
            self.delete_one(e.clone()).await?;
        }
        // Their model budgets go after them (a key never outlives its caps).
        for e in &found {
            self.write_models(&e.entity.id, &e.model_budgets, &[])
                .await?;
        }
        Ok(json!({"deleted_keys": hashes}))
    }

    pub async fn new_owner(
        &self,
        kind: EntityKind,
        body: &Map<String, Value>,
    ) -> Result<Value, ApiError> {
        let field = id_field(kind);
        let id = id_patch(body, field)?
            .apply(None)
            .unwrap_or_else(fields::new_id);
        check_owner_fields(kind, body)?;
        refuse_owner_blocking(kind, body)?;
        let limits = BudgetPatch::parse(body)?.resolve(&[])?;
        let floor = fields::floor_patch(body)?.apply(None);
        let shards = fields::shards_field(body)?;
        refuse_shards(kind, shards)?;
        let organization = organization_patch(kind, body)?.apply(None);
        let mut attrs = attributes(body, &owner_fields(kind))?;
        attrs.remove(view::DURATION_TEXTS);
        if let Some(t) = view::duration_texts(&Map::new(), body) {
            attrs.insert(view::DURATION_TEXTS.into(), t);
        }
        let mut e = Entity::new(EntityRef::new(kind, id), self.now);
        e.windows = limits::apply(&[], &limits, self.now, &self.settings.clock);
        e.reservation_floor = floor;
        e.organization_id = organization;
        if kind == EntityKind::Customer {
            e.blocked = bool_patch(body, "blocked")?.apply(None).unwrap_or(false);
        }
        e.attributes = attrs;
        let e = with_shards(None, e, shards)?;
        self.create(&e).await?;
        Ok(Value::Object(self.show_owner(&e).await?))
    }

    pub async fn update_owner(
        &self,
        kind: EntityKind,
        body: &Map<String, Value>,
    ) -> Result<Value, ApiError> {
        let field = id_field(kind);
        let id = fields::required_id(body, field)?;
        check_owner_fields(kind, body)?;
        refuse_owner_blocking(kind, body)?;
        let budget = BudgetPatch::parse(body)?;
        let floor = fields::floor_patch(body)?;
        let shards = fields::shards_field(body)?;
        refuse_shards(kind, shards)?;
        let organization = organization_patch(kind, body)?;
        let blocked = match kind {
            EntityKind::Customer => bool_patch(body, "blocked")?,
            _ => limits::Patch::Absent,
        };
        let mut attrs = attributes(body, &owner_fields(kind))?;
        attrs.remove(view::DURATION_TEXTS);
        let (now, clock) = (self.now, &self.settings.clock);
        let e = self
            .modify(&EntityRef::new(kind, id), field, |old| {
                let limits = budget.resolve(&old.windows)?;
                let mut new = old.clone();
                new.windows = limits::apply(&old.windows, &limits, now, clock);
                new.reservation_floor = floor.clone().apply(old.reservation_floor);
                new.organization_id = organization.clone().apply(old.organization_id.clone());
                new.blocked = blocked.clone().apply(Some(old.blocked)).unwrap_or(false);
                new.attributes.extend(attrs.clone());
                if let Some(t) = view::duration_texts(&old.attributes, body) {
                    new.attributes.insert(view::DURATION_TEXTS.into(), t);
                }
                with_shards(Some(old), new, shards)
            })
            .await?;
        Ok(Value::Object(self.show_owner(&e).await?))
    }

    pub async fn info(&self, kind: EntityKind, id: Option<String>) -> Result<Value, ApiError> {
        let field = id_field(kind);
        let Some(id) = id.filter(|i| !i.trim().is_empty()) else {
            return Err(ApiError::bad_request(
                field,
                format!("{field} is required: /{kind}/info?{field}=..."),
            ));
        };
        check_id(field, &id)?;
        let e = self.load(&EntityRef::new(kind, id.clone()), field).await?;
        let keys = self.store.keys_of(&e.entity).await.map_err(unavailable)?;
        if kind == EntityKind::Customer {
            // LiteLLM's shape: the customer itself, with its budget table.
            let mut out = self.show_owner(&e).await?;
            let table = json!({
                "max_budget": out.get("max_budget").cloned().unwrap_or(Value::Null),
                "budget_duration": out.get("budget_duration").cloned().unwrap_or(Value::Null),
                "budget_reset_at": out.get("budget_reset_at").cloned().unwrap_or(Value::Null),
            });
            out.insert("litellm_budget_table".into(), table);
            return Ok(Value::Object(out));
        }
        if kind == EntityKind::Organization {
            // LiteLLM's shape: the organization itself, with its teams and
            // its budget table.
            let mut out = self.show_owner(&e).await?;
            let teams: Vec<Value> = keys.iter().map(|t| json!({"team_id": t})).collect();
            out.insert("teams".into(), Value::Array(teams));
            let table = json!({
                "max_budget": out.get("max_budget").cloned().unwrap_or(Value::Null),
                "budget_duration": out.get("budget_duration").cloned().unwrap_or(Value::Null),
                "budget_reset_at": out.get("budget_reset_at").cloned().unwrap_or(Value::Null),
            });
            out.insert("litellm_budget_table".into(), table);
            return Ok(Value::Object(out));
        }
        let mut out = Map::new();
        out.insert(field.into(), json!(id));
        out.insert(
            format!("{kind}_info"),
            Value::Object(self.show_owner(&e).await?),
        );
        out.insert("keys".into(), json!(keys));
        if kind == EntityKind::Team {
            // LiteLLM's name for the members' budgets.
            let members = self.memberships(&id).await?;
            out.insert("team_memberships".into(), Value::Array(members));
        }
        Ok(Value::Object(out))
    }

    pub async fn delete_owners(
        &self,
        kind: EntityKind,
        body: &Map<String, Value>,
    ) -> Result<Value, ApiError> {
        let field = format!("{}s", id_field(kind));
        let ids = fields::owner_id_list(body, &field)?;
        let refs: Vec<EntityRef> = ids
            .iter()
            .map(|i| EntityRef::new(kind, i.clone()))
            .collect();
        let found = self.store.load_many(&refs).await.map_err(unavailable)?;
        let missing: Vec<&str> = ids
            .iter()
            .filter(|i| !found.iter().any(|e| &e.entity.id == *i))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(with_param(
                ApiError::not_found(format!(
                    "no {kind} {}; nothing was deleted",
                    missing.join(", ")
                )),
                &field,
            ));
        }
        if let Some(e) = found.iter().find(|e| e.key_count > 0 || e.member_count > 0) {
            return Err(with_param(still_has_keys(e), &field));
        }
        for e in found {
            self.delete_one(e).await?;
        }
        Ok(json!({format!("deleted_{kind}s"): ids}))
    }
}

/// The attributes an entity keeps beside its budget (LiteLLM's `metadata`,
/// aliases, models, …) are stored in one item of their own, which DynamoDB
/// caps at 400 KB; updates merge into them, so their total is bounded here.
pub const MAX_ATTRIBUTES_BYTES: usize = 256 * 1024;

fn check_attributes_size(e: &Entity) -> Result<(), ApiError> {
    let size = Value::Object(e.attributes.clone()).to_string().len();
    if size > MAX_ATTRIBUTES_BYTES {
        return Err(ApiError::bad_request(
            "metadata",
            format!(
                "{}'s metadata and other attributes would take {size} bytes, more than {MAX_ATTRIBUTES_BYTES}: send smaller values; nothing was written",
                named(&e.entity)
            ),
        ));
    }
    Ok(())
}

fn still_has_keys(e: &Entity) -> ApiError {
    let n = e.key_count;
    if n == 0 && e.member_count > 0 {
        let m = e.member_count;
        return ApiError::conflict(format!(
            "{} still has {m} member budget{}: remove {} first (/team/member_delete); nothing was deleted",
            named(&e.entity),
            if m == 1 { "" } else { "s" },
            if m == 1 { "it" } else { "them" },
        ));
    }
    if e.entity.kind == EntityKind::Organization {
        return ApiError::conflict(format!(
            "{} still has {n} team{}: move {} to another organization (/team/update with organization_id) or delete {} first; an organization is never deleted with its teams, and nothing was deleted",
            named(&e.entity),
            if n == 1 { "" } else { "s" },
            if n == 1 { "it" } else { "them" },
            if n == 1 { "it" } else { "them" },
        ));
    }
    ApiError::conflict(format!(
        "{} still has {n} key{}: delete {} first (/key/delete); a {} is never deleted with its keys, and nothing was deleted",
        named(&e.entity),
        if n == 1 { "" } else { "s" },
        if n == 1 { "it" } else { "them" },
        e.entity.kind,
    ))
}
