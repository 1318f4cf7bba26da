//! Per-model budgets on a key: LiteLLM's `model_max_budget`
//! (`{"gpt-4o": {"budget_limit": 10, "time_period": "1d"}}`), each model a
//! `model` entity of its own, charged when a request of the key names that
//! model in `x-litellm-model`. The key lists its models, so a request that
//! names none, or whose model's budget cannot be read, is refused rather
//! than charged to nothing.

use budget_core::model::{Entity, EntityRef};
use budget_core::store::AdminStore;
use http_api::ApiError;
use serde_json::{json, Map, Value};

use super::{unavailable, with_param, Admin};
use crate::limits::{self, BudgetPatch, Limit};
use crate::view;

/// The most models with a budget on one key (each is one more item in a
/// request's transaction, and a key's item lists them).
pub const MAX_MODEL_BUDGETS: usize = 16;

const FIELD: &str = "model_max_budget";

/// Each model with its limits.
pub(super) type ModelLimits = Vec<(String, Vec<Limit>)>;

/// The models and limits `model_max_budget` gives: `None` when absent,
/// empty for `null` or `{}` (no model budgets). Checked whole before
/// anything is written.
pub(super) fn parse(body: &Map<String, Value>) -> Result<Option<ModelLimits>, ApiError> {
    let map = match body.get(FIELD) {
        None => return Ok(None),
        Some(Value::Null) => return Ok(Some(Vec::new())),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err(ApiError::bad_request(
                FIELD,
                "model_max_budget must be an object: {\"<model>\": {\"budget_limit\": <USD>, \"time_period\": \"1d\"}}",
            ))
        }
    };
    if map.len() > MAX_MODEL_BUDGETS {
        return Err(ApiError::bad_request(
            FIELD,
            format!("model_max_budget may name at most {MAX_MODEL_BUDGETS} models"),
        ));
    }
    let mut out = Vec::new();
    for (model, spec) in map {
        if !budget_core::ids::is_model_name(model) {
            return Err(ApiError::bad_request(
                FIELD,
                "model_max_budget: a model name must be 1 to 128 ASCII letters, digits or ._-:@+/",
            ));
        }
        let Value::Object(spec) = spec else {
            return Err(ApiError::bad_request(
                FIELD,
                format!("model_max_budget.{model} must be {{\"budget_limit\": <USD>, \"time_period\": \"1d\"}}"),
            ));
        };
        let mut m = Map::new();
        match spec.get("budget_limit") {
            Some(v) if !v.is_null() => {
                m.insert("max_budget".into(), v.clone());
            }
            _ => {
                return Err(ApiError::bad_request(
                    FIELD,
                    format!("model_max_budget.{model}.budget_limit is required"),
                ))
            }
        }
        if let Some(p) = spec.get("time_period").filter(|p| !p.is_null()) {
            m.insert("budget_duration".into(), p.clone());
        }
        let limits = BudgetPatch::parse(&m)
            .and_then(|p| p.resolve(&[]))
            .map_err(|e| {
                with_param(
                    ApiError::bad_request(
                        FIELD,
                        format!("model_max_budget.{model}: {}", e.message),
                    ),
                    FIELD,
                )
            })?;
        out.push((model.clone(), limits));
    }
    Ok(Some(out))
}

impl<S: AdminStore> Admin<'_, S> {
    /// Writes key `hash`'s model budgets as `new` over the models it had
    /// (`old`): new ones created, kept ones given their new limits (their
    /// counters kept), dropped ones deleted. The key's list was written
    /// first, so a failure part way leaves a model refused, never
    /// unmetered.
    pub(super) async fn write_models(
        &self,
        hash: &str,
        old: &[String],
        new: &[(String, Vec<Limit>)],
    ) -> Result<(), ApiError> {
        let (now, clock) = (self.now, &self.settings.clock);
        for (model, limits) in new {
            let r = EntityRef::model(hash, model);
            let found = self.store.load(&r).await.map_err(unavailable)?;
            if found.is_some() {
                self.modify(&r, FIELD, |current| {
                    let mut e = current.clone();
                    e.windows = limits::apply(&current.windows, limits, now, clock);
                    Ok(e)
                })
                .await?;
            } else {
                let mut e = Entity::new(r, now);
                e.windows = limits::apply(&[], limits, now, clock);
                self.create(&e).await?;
            }
        }
        for model in old {
            if new.iter().any(|(m, _)| m == model) {
                continue;
            }
            if let Some(e) = self
                .store
                .load(&EntityRef::model(hash, model))
                .await
                .map_err(unavailable)?
            {
                self.delete_one(e).await?;
            }
        }
        Ok(())
    }

    /// Key `key`'s model budgets, as shown (`model`, windows, …).
    pub(super) async fn model_views(&self, key: &Entity) -> Result<Vec<Value>, ApiError> {
        let refs: Vec<EntityRef> = key
            .model_budgets
            .iter()
            .map(|m| EntityRef::model(&key.entity.id, m))
            .collect();
        let found = self.store.load_many(&refs).await.map_err(unavailable)?;
        Ok(found
            .iter()
            .map(|e| {
                let mut v = view::entity(e, self.now, &self.settings.clock);
                let model = e.entity.model_of().map_or("", |(_, m)| m).to_string();
                v.insert("model".into(), json!(model));
                Value::Object(v)
            })
            .collect())
    }
}
