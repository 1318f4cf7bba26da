//! Team-member budgets: one user's cap inside one team (LiteLLM's
//! `/team/member_add|member_update|member_delete` with
//! `max_budget_in_team`; the team's `team_member_budget` and
//! `team_member_budget_duration` are the default of a member added without
//! one). A member budget is an entity of its own (`team_member`), charged
//! by every request of the user's keys in that team.

use budget_core::model::{Entity, EntityRef};
use budget_core::store::AdminStore;
use http_api::ApiError;
use serde_json::{json, Map, Value};

use super::{unavailable, with_param, Admin};
use crate::fields::{self, check_id};
use crate::limits::{self, BudgetPatch};
use crate::view;

/// The member fields edge-budget acts on (the others are kept as given).
const MEMBER_FIELDS: &[&str] = &[
    "team_id",
    "user_id",
    "member",
    "max_budget_in_team",
    "budget_duration",
    "budget_limits",
];

/// The users a `/team/member_add` names: `member` is one member or a list
/// (LiteLLM's `Member`), each with a `user_id` (edge-budget does not look
/// users up by `user_email`).
fn users_of(body: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let members = match body.get("member") {
        Some(Value::Array(list)) => list.iter().collect::<Vec<_>>(),
        Some(m @ Value::Object(_)) => vec![m],
        _ => {
            return Err(ApiError::bad_request(
                "member",
                "member is required: {\"user_id\": ...} or a list of them",
            ))
        }
    };
    if members.is_empty() || members.len() > 100 {
        return Err(ApiError::bad_request(
            "member",
            "member must name 1 to 100 members",
        ));
    }
    let mut users: Vec<String> = Vec::new();
    for m in members {
        let Some(Value::String(user)) = m.get("user_id") else {
            return Err(ApiError::bad_request(
                "member",
                "every member needs a user_id (edge-budget does not resolve user_email)",
            ));
        };
        check_id("user_id", user).map_err(|e| with_param(e, "member"))?;
        if !users.contains(user) {
            users.push(user.clone());
        }
    }
    Ok(users)
}

/// The budget fields of a member request as the windows' fields
/// (`max_budget_in_team` is the legacy `max_budget`; its duration is
/// `budget_duration`, else the team's `team_member_budget_duration`), or the
/// team's default (`team_member_budget`) when the request gives none and
/// `use_default`. `None`: no budget at all.
fn budget_fields(
    body: &Map<String, Value>,
    team: &Entity,
    use_default: bool,
) -> Option<Map<String, Value>> {
    let mut m = Map::new();
    if let Some(v) = body.get("max_budget_in_team") {
        m.insert("max_budget".into(), v.clone());
    }
    if let Some(v) = body.get("budget_limits") {
        m.insert("budget_limits".into(), v.clone());
    }
    let default_duration = team.attributes.get("team_member_budget_duration");
    match body.get("budget_duration") {
        Some(v) => {
            m.insert("budget_duration".into(), v.clone());
        }
        None if m.contains_key("max_budget") => {
            if let Some(d) = default_duration.filter(|d| !d.is_null()) {
                m.insert("budget_duration".into(), d.clone());
            }
        }
        None => {}
    }
    if m.is_empty() && use_default {
        let budget = team
            .attributes
            .get("team_member_budget")
            .filter(|b| !b.is_null())?;
        m.insert("max_budget".into(), budget.clone());
        if let Some(d) = default_duration.filter(|d| !d.is_null()) {
            m.insert("budget_duration".into(), d.clone());
        }
    }
    (!m.is_empty()).then_some(m)
}

/// A budget field's error names the field the caller sent.
fn member_param(mut e: ApiError) -> ApiError {
    if e.param.as_deref() == Some("max_budget") {
        e.param = Some("max_budget_in_team".into());
        e.message = e.message.replace("max_budget", "max_budget_in_team");
    }
    e
}

/// The team's `team_member_budget` and `team_member_budget_duration`, the
/// default of its members, checked as a budget would be.
pub(crate) fn check_member_default(body: &Map<String, Value>) -> Result<(), ApiError> {
    let mut m = Map::new();
    for (from, to) in [
        ("team_member_budget", "max_budget"),
        ("team_member_budget_duration", "budget_duration"),
    ] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            m.insert(to.into(), v.clone());
        }
    }
    BudgetPatch::parse(&m)
        .and_then(|p| p.resolve(&[]))
        .map(|_| ())
        .map_err(|mut e| {
            e.param = Some(match e.param.as_deref() {
                Some("budget_duration") => "team_member_budget_duration".into(),
                _ => "team_member_budget".into(),
            });
            e
        })
}

/// Member budgets exist on teams that are not sharded.
fn refuse_sharded(team: &Entity) -> Result<(), ApiError> {
    if budget_core::escrow::is_sharded(team) {
        return Err(ApiError::bad_request(
            "team_id",
            format!(
                "team {} is sharded (budget_shards): member budgets are not supported on sharded teams",
                team.entity.id
            ),
        ));
    }
    Ok(())
}

impl<S: AdminStore> Admin<'_, S> {
    fn show_member(&self, e: &Entity) -> Value {
        Value::Object(view::entity(e, self.now, &self.settings.clock))
    }

    /// The team's member budgets, as shown.
    pub(super) async fn memberships(&self, team: &str) -> Result<Vec<Value>, ApiError> {
        let users = self.store.members_of(team).await.map_err(unavailable)?;
        let refs: Vec<EntityRef> = users
            .iter()
            .map(|u| EntityRef::team_member(team, u))
            .collect();
        let found = self.store.load_many(&refs).await.map_err(unavailable)?;
        Ok(found.iter().map(|e| self.show_member(e)).collect())
    }

    async fn team_with_memberships(
        &self,
        team: &str,
        updated: Vec<Value>,
    ) -> Result<Value, ApiError> {
        let e = self.load(&EntityRef::team(team), "team_id").await?;
        let mut out = self.show_owner(&e).await?;
        out.insert("updated_team_memberships".into(), Value::Array(updated));
        Ok(Value::Object(out))
    }

    pub async fn member_add(&self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let team_id = fields::required_id(body, "team_id")?;
        let users = users_of(body)?;
        let attrs = fields::attributes(body, MEMBER_FIELDS)?;
        let team = self.load(&EntityRef::team(&team_id), "team_id").await?;
        refuse_sharded(&team)?;
        let Some(budget) = budget_fields(body, &team, true) else {
            // No budget for them: nothing to enforce, nothing stored.
            let updated = users
                .iter()
                .map(|u| json!({"user_id": u, "team_id": team_id, "max_budget_in_team": null}))
                .collect();
            return self.team_with_memberships(&team_id, updated).await;
        };
        let limits = BudgetPatch::parse(&budget)
            .and_then(|p| p.resolve(&[]))
            .map_err(member_param)?;
        let refs: Vec<EntityRef> = users
            .iter()
            .map(|u| EntityRef::team_member(&team_id, u))
            .collect();
        let existing = self.store.load_many(&refs).await.map_err(unavailable)?;
        if let Some(e) = existing.first() {
            return Err(with_param(
                ApiError::conflict(format!(
                    "{} has a budget in this team already: use /team/member_update; nothing was written",
                    e.entity.display_id()
                )),
                "member",
            ));
        }
        let mut updated = Vec::new();
        for (user, r) in users.iter().zip(refs) {
            let mut e = Entity::new(r, self.now);
            e.user_id = Some(user.clone());
            e.team_id = Some(team_id.clone());
            e.windows = limits::apply(&[], &limits, self.now, &self.settings.clock);
            e.attributes = attrs.clone();
            if let Some(t) = view::duration_texts(&Map::new(), &budget) {
                e.attributes.insert(view::DURATION_TEXTS.into(), t);
            }
            self.create(&e).await?;
            updated.push(self.show_member(&e));
        }
        self.team_with_memberships(&team_id, updated).await
    }

    pub async fn member_update(&self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let team_id = fields::required_id(body, "team_id")?;
        let user = fields::required_id(body, "user_id")?;
        let attrs = fields::attributes(body, MEMBER_FIELDS)?;
        let team = self.load(&EntityRef::team(&team_id), "team_id").await?;
        refuse_sharded(&team)?;
        let r = EntityRef::team_member(&team_id, &user);
        let budget = budget_fields(body, &team, false).unwrap_or_default();
        let patch = BudgetPatch::parse(&budget).map_err(member_param)?;
        let found = self.store.load(&r).await.map_err(unavailable)?;
        let e = match found {
            // A member without a budget so far: this one is its first.
            None => {
                let limits = patch.resolve(&[]).map_err(member_param)?;
                let mut e = Entity::new(r, self.now);
                e.user_id = Some(user.clone());
                e.team_id = Some(team_id.clone());
                e.windows = limits::apply(&[], &limits, self.now, &self.settings.clock);
                e.attributes = attrs;
                if e.windows.is_empty() {
                    return Ok(
                        json!({"team_id": team_id, "user_id": user, "max_budget_in_team": null}),
                    );
                }
                self.create(&e).await?;
                e
            }
            Some(_) => {
                let (now, clock) = (self.now, &self.settings.clock);
                self.modify(&r, "user_id", |old| {
                    let limits = patch.resolve(&old.windows).map_err(member_param)?;
                    let mut new = old.clone();
                    new.windows = limits::apply(&old.windows, &limits, now, clock);
                    new.attributes.extend(attrs.clone());
                    if let Some(t) = view::duration_texts(&old.attributes, &budget) {
                        new.attributes.insert(view::DURATION_TEXTS.into(), t);
                    }
                    Ok(new)
                })
                .await?
            }
        };
        Ok(self.show_member(&e))
    }

    pub async fn member_delete(&self, body: &Map<String, Value>) -> Result<Value, ApiError> {
        let team_id = fields::required_id(body, "team_id")?;
        let user = fields::required_id(body, "user_id")?;
        self.load(&EntityRef::team(&team_id), "team_id").await?;
        let r = EntityRef::team_member(&team_id, &user);
        if let Some(e) = self.store.load(&r).await.map_err(unavailable)? {
            self.delete_one(e).await?;
        }
        self.team_with_memberships(&team_id, Vec::new()).await
    }
}
