//! Expressions: placeholders for names and values, and the rendering of
//! the core's plans (guards and changes) into condition and update
//! expressions. Each guard and change has one rendering; no budget rule
//! is decided here.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Put, Update};
use chrono::{DateTime, Utc};

use crate::model::EntityRef;
use crate::money::Money;
use crate::plan::{Change, Counter, EntityWrite, Guard};
use crate::store::table::{DUE_PK, DUE_SK, PARTITION_KEY};
use crate::store::StoreError;

use super::codec::*;
use super::errors::*;
use super::DynamoStore;

/// Builds one expression's placeholders: every attribute name goes through
/// `#nN` (window ids like `1d` are not valid bare names), every value
/// through `:vN`.
#[derive(Default)]
pub(super) struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    by_name: HashMap<String, String>,
}

impl Expr {
    pub(super) fn name(&mut self, attr: &str) -> String {
        if let Some(p) = self.by_name.get(attr) {
            return p.clone();
        }
        let p = format!("#n{}", self.by_name.len());
        self.by_name.insert(attr.to_string(), p.clone());
        self.names.insert(p.clone(), attr.to_string());
        p
    }

    pub(super) fn path(&mut self, parts: &[&str]) -> String {
        parts
            .iter()
            .map(|p| self.name(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    pub(super) fn value(&mut self, v: AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), v);
        p
    }

    pub(super) fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    pub(super) fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

pub(super) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn money(m: Money) -> AttributeValue {
    n(m.nanos())
}

pub(super) fn epoch(t: DateTime<Utc>) -> AttributeValue {
    n(t.timestamp())
}

pub(super) fn key_of(pk: String) -> HashMap<String, AttributeValue> {
    HashMap::from([(PARTITION_KEY.to_string(), s(pk))])
}

/// Paths of one window's attributes. Each placeholder is made only when
/// asked for: DynamoDB refuses names and values an expression does not use.
pub(super) struct WindowPaths {
    id: String,
}

impl WindowPaths {
    pub(super) fn new(window_id: &str) -> WindowPaths {
        WindowPaths {
            id: window_id.to_string(),
        }
    }

    pub(super) fn field(&self, ex: &mut Expr, name: &str) -> String {
        ex.path(&["w", &self.id, name])
    }
}

/// A plan's guards and changes as condition, SET and REMOVE clauses (no
/// rule here: each guard and change has one rendering).
pub(super) struct Rendered {
    pub(super) conds: Vec<String>,
    pub(super) sets: Vec<String>,
    pub(super) removes: Vec<String>,
}

pub(super) fn render(ex: &mut Expr, write: &EntityWrite) -> Rendered {
    let conds = write.guards.iter().map(|g| render_guard(ex, g)).collect();
    let (mut sets, mut removes) = (Vec::new(), Vec::new());
    for c in &write.changes {
        match c {
            Change::SetNextDue(due) => {
                let (set, remove) = render_due(ex, &write.entity, *due);
                sets.extend(set);
                removes.extend(remove);
            }
            Change::DropWindow(id) => removes.push(ex.path(&["w", id])),
            _ => sets.extend(render_change(ex, c)),
        }
    }
    Rendered {
        conds,
        sets,
        removes,
    }
}

/// The entity's entry in the `due` index: set to its earliest boundary,
/// or removed (out of the sparse index) when it has none.
pub(super) fn render_due(
    ex: &mut Expr,
    entity: &EntityRef,
    due: Option<DateTime<Utc>>,
) -> (Vec<String>, Vec<String>) {
    let (pk, sk) = (ex.name(DUE_PK), ex.name(DUE_SK));
    match due {
        Some(at) => {
            let (shard, at) = due_keys(entity, at);
            let (pv, sv) = (ex.value(s(shard)), ex.value(s(at)));
            (vec![format!("{pk} = {pv}"), format!("{sk} = {sv}")], vec![])
        }
        None => (vec![], vec![pk, sk]),
    }
}

pub(super) fn counter_name(c: Counter) -> &'static str {
    match c {
        Counter::Used => "used",
        Counter::Spent => "spent",
        Counter::Reserved => "reserved",
        Counter::Avail => "avail",
        Counter::Parked => "parked",
        Counter::Topped => "topped",
    }
}

pub(super) fn render_guard(ex: &mut Expr, guard: &Guard) -> String {
    match guard {
        Guard::Version(v) => {
            let (ver, value) = (ex.name("ver"), ex.value(n(*v as i64)));
            format!("{ver} = {value}")
        }
        Guard::Incarnation(i) => incarnation_is(ex, *i),
        Guard::AtMost(w, c, m) => {
            let (path, value) = (
                WindowPaths::new(w).field(ex, counter_name(*c)),
                ex.value(money(*m)),
            );
            format!("{path} <= {value}")
        }
        Guard::Below(w, c, m) => {
            let (path, value) = (
                WindowPaths::new(w).field(ex, counter_name(*c)),
                ex.value(money(*m)),
            );
            format!("{path} < {value}")
        }
        Guard::ResetAtIs(w, at) => {
            let (path, value) = (
                WindowPaths::new(w).field(ex, "reset_at"),
                ex.value(epoch(*at)),
            );
            format!("{path} = {value}")
        }
        Guard::ResetAfter(w, now) => {
            let (path, value) = (
                WindowPaths::new(w).field(ex, "reset_at"),
                ex.value(epoch(*now)),
            );
            format!("{path} > {value}")
        }
        Guard::Generation(w, g) => {
            let (path, value) = (WindowPaths::new(w).field(ex, "gen"), ex.value(n(*g as i64)));
            format!("{path} = {value}")
        }
        Guard::NoKeys => {
            let (kc, zero) = (ex.name("key_count"), ex.value(n(0)));
            format!("({kc} = {zero} OR attribute_not_exists({kc}))")
        }
        Guard::NoMembers => {
            let (mc, zero) = (ex.name(MEMBER_COUNT), ex.value(n(0)));
            format!("({mc} = {zero} OR attribute_not_exists({mc}))")
        }
        Guard::AtLeast(w, c, m) => {
            let (path, value) = (
                WindowPaths::new(w).field(ex, counter_name(*c)),
                ex.value(money(*m)),
            );
            format!("{path} >= {value}")
        }
        // Stored only when not zero.
        Guard::Is(w, Counter::Parked, m) if m.is_zero() => {
            let (path, value) = (
                WindowPaths::new(w).field(ex, counter_name(Counter::Parked)),
                ex.value(money(*m)),
            );
            format!("(attribute_not_exists({path}) OR {path} = {value})")
        }
        Guard::Is(w, c, m) => {
            let (path, value) = (
                WindowPaths::new(w).field(ex, counter_name(*c)),
                ex.value(money(*m)),
            );
            format!("{path} = {value}")
        }
        Guard::KeyRevision(0) => format!("attribute_not_exists({})", ex.name(KEY_REVISION)),
        Guard::KeyRevision(r) => {
            let (kv, value) = (ex.name(KEY_REVISION), ex.value(n(*r as i64)));
            format!("{kv} = {value}")
        }
    }
}

/// The entity attribute of [`Entity::lifetime_spent`](crate::model::Entity)
/// (nano-USD; absent means 0).
pub(super) const LIFETIME_SPENT: &str = "lifetime_spent";

/// A change to the item's windows as a SET clause; `None` for the index
/// entry ([`render_due`]: it needs the entity, and may REMOVE).
fn render_change(ex: &mut Expr, change: &Change) -> Option<String> {
    let set = match change {
        Change::Add(w, c, m) => {
            let (path, value) = (
                WindowPaths::new(w).field(ex, counter_name(*c)),
                ex.value(money(*m)),
            );
            format!("{path} = {path} + {value}")
        }
        Change::UsedFromReserved(w, m) => {
            let p = WindowPaths::new(w);
            let (used, reserved) = (p.field(ex, "used"), p.field(ex, "reserved"));
            let value = ex.value(money(*m));
            format!("{used} = {reserved} + {value}")
        }
        Change::SetSpent(w, m) => {
            let (path, value) = (WindowPaths::new(w).field(ex, "spent"), ex.value(money(*m)));
            format!("{path} = {value}")
        }
        Change::SetResetAt(w, at) => {
            let (path, value) = (
                WindowPaths::new(w).field(ex, "reset_at"),
                ex.value(epoch(*at)),
            );
            format!("{path} = {value}")
        }
        Change::Set(w, c, m) => {
            let (path, value) = (
                WindowPaths::new(w).field(ex, counter_name(*c)),
                ex.value(money(*m)),
            );
            format!("{path} = {value}")
        }
        Change::PutWindow(w) => {
            let (path, value) = (ex.path(&["w", &w.id()]), ex.value(window_item(w, true)));
            format!("{path} = {value}")
        }
        Change::SetVersion(v) => {
            let (ver, value) = (ex.name("ver"), ex.value(n(*v as i64)));
            format!("{ver} = {value}")
        }
        Change::AddLifetimeSpent(m) => {
            let (path, zero, value) = (
                ex.name(LIFETIME_SPENT),
                ex.value(money(Money::ZERO)),
                ex.value(money(*m)),
            );
            format!("{path} = if_not_exists({path}, {zero}) + {value}")
        }
        Change::SetNextDue(_) | Change::DropWindow(_) => return None,
    };
    Some(set)
}

/// `SET …` and `REMOVE …` clauses as one update expression.
pub(super) fn update_expression(sets: &[String], removes: &[String]) -> String {
    let mut clauses = Vec::new();
    if !sets.is_empty() {
        clauses.push(format!("SET {}", sets.join(", ")));
    }
    if !removes.is_empty() {
        clauses.push(format!("REMOVE {}", removes.join(", ")));
    }
    clauses.join(" ")
}

/// The condition "this item is the incarnation `incarnation`" (an item
/// written before incarnations existed has none: incarnation 0).
pub(super) fn incarnation_is(ex: &mut Expr, incarnation: u64) -> String {
    let inc = ex.name(INCARNATION);
    if incarnation == 0 {
        format!("attribute_not_exists({inc})")
    } else {
        let v = ex.value(n(incarnation as i64));
        format!("{inc} = {v}")
    }
}

impl DynamoStore {
    pub(super) fn update(
        &self,
        pk: String,
        sets: Vec<String>,
        removes: Vec<String>,
        conds: Vec<String>,
        ex: &Expr,
    ) -> Result<Update, StoreError> {
        let expression = update_expression(&sets, &removes);
        Update::builder()
            .table_name(&self.table)
            .set_key(Some(key_of(pk)))
            .update_expression(expression)
            .set_condition_expression((!conds.is_empty()).then(|| conds.join(" AND ")))
            .set_expression_attribute_names(ex.names())
            .set_expression_attribute_values(ex.values())
            .build()
            .map_err(build_error)
    }

    pub(super) fn condition_check(
        &self,
        pk: String,
        conds: Vec<String>,
        ex: &Expr,
    ) -> Result<ConditionCheck, StoreError> {
        ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key_of(pk)))
            .condition_expression(conds.join(" AND "))
            .set_expression_attribute_names(ex.names())
            .set_expression_attribute_values(ex.values())
            .build()
            .map_err(build_error)
    }

    pub(super) fn put(
        &self,
        item: HashMap<String, AttributeValue>,
        condition: &str,
    ) -> Result<Put, StoreError> {
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .build()
            .map_err(build_error)
    }
}
