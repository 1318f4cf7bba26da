//! The DynamoDB adapter. Every change of a counter is a conditional write:
//! admission is the condition of the write that reserves, so there is no
//! read-then-write gap for concurrent requests to slip through.
//!
//! Amounts are stored as integer nano-USD (exact in DynamoDB's decimal
//! numbers and in any emulator); instants as epoch seconds.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, KeysAndAttributes, Put, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use super::table::{HELD_SHARDS, PARTITION_KEY, TTL_ATTRIBUTE};
use super::{
    AdminStore, AdminWrite, BudgetStore, Cursor, Finish, FinishWrite, Reads, ReserveWrite,
    ResetStore, StoreError,
};
use crate::duration::ResetClock;
use crate::model::{
    Chain, Entity, EntityKind, EntityRef, Hold, Reservation, ReservationState, Span, Window,
};
use crate::money::Money;
use crate::plan::{
    self, Change, Counter, EntityWrite, Guard, ReservationEnd, ReservationGuard, WindowEdit,
};

/// Finished reservations stay this long, so a settle delivered again days
/// later is still recognised; then DynamoDB's TTL removes them.
const FINISHED_RETENTION_SECONDS: i64 = 7 * 24 * 3600;

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

/// The partition key of an entity.
pub fn entity_pk(entity: &EntityRef) -> String {
    format!("{}#{}", entity.kind.as_str(), entity.id)
}

pub fn reservation_pk(id: &str) -> String {
    format!("res#{id}")
}

fn entity_ref_from_pk(pk: &str) -> Option<EntityRef> {
    let (kind, id) = pk.split_once('#')?;
    Some(EntityRef::new(EntityKind::parse(kind)?, id))
}

fn owner_index_pk(owner: &EntityRef) -> String {
    format!("{}#keys", entity_pk(owner))
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> DynamoStore {
        DynamoStore {
            client,
            table: table.into(),
        }
    }

    /// A client from the standard AWS environment (`AWS_REGION`,
    /// credentials, `AWS_ENDPOINT_URL_DYNAMODB` for an emulator), with a
    /// deadline on every operation: past it, callers fail closed.
    pub async fn client_from_env(timeout: Duration) -> Client {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(timeout)
            .operation_attempt_timeout(timeout.mul_f32(0.6))
            .connect_timeout(timeout.mul_f32(0.5).min(Duration::from_secs(1)))
            .build();
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(timeouts)
            .load()
            .await;
        Client::new(&config)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

/// A failed call as a [`StoreError`]: a `ValidationException` is
/// [`StoreError::Rejected`] (sending it again cannot help), anything else
/// [`StoreError::Unavailable`] (fail closed, retry later).
fn unavailable<E>(what: &str, e: E) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match classify(e.code().unwrap_or_default(), e.message()) {
        Some(Refusal::Validation(message)) => StoreError::Rejected(format!("{what}: {message}")),
        _ => StoreError::Unavailable(format!("{what}: {}", DisplayErrorContext(&e))),
    }
}

fn build_error(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Unavailable(format!("request could not be built: {e}"))
}

/// Why DynamoDB refused an item of a transaction (a cancellation reason's
/// `Code`) or a whole request (an error's code). Every answer is read here,
/// once; the table in docs/reliability.md lists what each becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// `ConditionalCheckFailed`: the item is not as it was read. Re-read.
    Condition,
    /// `TransactionConflict` (another transaction holds the item),
    /// `TransactionConflictException` (a plain write met a transaction),
    /// `TransactionInProgressException` (the same transaction, sent again
    /// while the first is still running). Back off, send again.
    Conflict,
    /// `ThrottlingError`, `ProvisionedThroughputExceeded`: an item of a
    /// transaction was throttled (the SDK does not retry those). Back off,
    /// send again. The request-level `ThrottlingException` and
    /// `ProvisionedThroughputExceededException` are the SDK's to retry
    /// (with its own backoff, within the deadline); past that the store is
    /// unavailable.
    Throttled,
    /// `ValidationError`, `ItemCollectionSizeLimitExceeded`,
    /// `ValidationException`: the request itself is refused (an item past
    /// 400 KB, a key past 2,048 bytes). Never retried.
    Validation(String),
    /// Any other code: the store failed. Fail closed.
    Other(String),
}

/// `None` for an item that passed (code `None`) or an empty code.
fn classify(code: &str, message: Option<&str>) -> Option<Refusal> {
    let described = |code: &str| match message {
        Some(m) if !m.is_empty() => format!("{code}: {m}"),
        _ => code.to_string(),
    };
    Some(match code {
        "" | "None" => return None,
        "ConditionalCheckFailed" | "ConditionalCheckFailedException" => Refusal::Condition,
        "TransactionConflict"
        | "TransactionConflictException"
        | "TransactionInProgressException" => Refusal::Conflict,
        "ThrottlingError"
        | "ProvisionedThroughputExceeded"
        | "ThrottlingException"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded" => Refusal::Throttled,
        "ValidationError"
        | "ValidationException"
        | "ItemCollectionSizeLimitExceeded"
        | "ItemCollectionSizeLimitExceededException" => Refusal::Validation(described(code)),
        other => Refusal::Other(described(other)),
    })
}

/// The outcome of one transaction, after validation errors and unknown
/// codes became errors.
#[derive(Debug)]
enum TxOutcome {
    Committed,
    /// Some condition failed: per item, whether it was that item's.
    /// Re-read and decide.
    Failed(Vec<bool>),
    /// No condition failed, but an item was held by another transaction or
    /// throttled (or the request was): back off, send again.
    Busy,
}

/// What a cancelled transaction's reasons mean, in order of precedence: a
/// validation error (nothing will ever commit), an unknown code, a
/// conflict or throttle (the conditions of those items were not decided:
/// try the same write again), then failed conditions.
fn cancelled(reasons: Vec<Option<Refusal>>) -> Result<TxOutcome, StoreError> {
    if let Some(Refusal::Validation(m)) = reasons
        .iter()
        .flatten()
        .find(|r| matches!(r, Refusal::Validation(_)))
    {
        return Err(StoreError::Rejected(format!("transaction: {m}")));
    }
    if let Some(Refusal::Other(m)) = reasons
        .iter()
        .flatten()
        .find(|r| matches!(r, Refusal::Other(_)))
    {
        return Err(StoreError::Unavailable(format!(
            "transaction cancelled: {m}"
        )));
    }
    if reasons
        .iter()
        .flatten()
        .any(|r| matches!(r, Refusal::Conflict | Refusal::Throttled))
    {
        return Ok(TxOutcome::Busy);
    }
    let failed: Vec<bool> = reasons
        .iter()
        .map(|r| r == &Some(Refusal::Condition))
        .collect();
    if failed.iter().any(|f| *f) {
        Ok(TxOutcome::Failed(failed))
    } else {
        Err(StoreError::Unavailable(
            "transaction cancelled without a reason".into(),
        ))
    }
}

async fn transact(client: &Client, items: Vec<TransactWriteItem>) -> Result<TxOutcome, StoreError> {
    match client
        .transact_write_items()
        .set_transact_items(Some(items))
        .send()
        .await
    {
        Ok(_) => Ok(TxOutcome::Committed),
        Err(SdkError::ServiceError(e)) => match e.into_err() {
            TransactWriteItemsError::TransactionCanceledException(c) => cancelled(
                c.cancellation_reasons()
                    .iter()
                    .map(|r| classify(r.code().unwrap_or_default(), r.message()))
                    .collect(),
            ),
            other => match classify(other.code().unwrap_or_default(), other.message()) {
                // TransactionInProgressException: the SDK sent it again with
                // the same token while the first was running; once the SDK
                // gives up, a new attempt (a new token) decides afresh.
                Some(Refusal::Conflict) => Ok(TxOutcome::Busy),
                _ => Err(unavailable("transaction", other)),
            },
        },
        Err(e) => Err(unavailable("transaction", e)),
    }
}

/// DynamoDB's limit of keys in one BatchGetItem.
const BATCH_GET_KEYS: usize = 100;
/// Answers with unprocessed keys a batch read accepts before giving up.
const BATCH_GET_ROUNDS: usize = 8;

/// Attempts at a plain (non-transactional) write that keeps meeting a
/// transaction on its item.
const PLAIN_ATTEMPTS: usize = 6;

/// Sends a plain write, and again after a jittered pause while DynamoDB
/// answers `TransactionConflictException` (the item is in a transaction
/// right now; the SDK does not retry that).
async fn send_plain<T, E, R, F, Fut>(mut send: F) -> Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, R>>>,
{
    let mut attempt = 0;
    loop {
        match send().await {
            Err(SdkError::ServiceError(e))
                if attempt + 1 < PLAIN_ATTEMPTS
                    && classify(e.err().code().unwrap_or_default(), None)
                        == Some(Refusal::Conflict) =>
            {
                backoff(attempt).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A jittered exponential pause: 5–10 ms, 10–20 ms, … up to 160–320 ms.
async fn backoff(attempt: usize) {
    let base = 5u64 << attempt.min(5);
    let jitter = rand::random::<u64>() % base;
    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
}

// ---------------------------------------------------------------- expressions

/// Builds one expression's placeholders: every attribute name goes through
/// `#nN` (window ids like `1d` are not valid bare names), every value
/// through `:vN`.
#[derive(Default)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    by_name: HashMap<String, String>,
}

impl Expr {
    fn name(&mut self, attr: &str) -> String {
        if let Some(p) = self.by_name.get(attr) {
            return p.clone();
        }
        let p = format!("#n{}", self.by_name.len());
        self.by_name.insert(attr.to_string(), p.clone());
        self.names.insert(p.clone(), attr.to_string());
        p
    }

    fn path(&mut self, parts: &[&str]) -> String {
        parts
            .iter()
            .map(|p| self.name(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn value(&mut self, v: AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), v);
        p
    }

    fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn money(m: Money) -> AttributeValue {
    n(m.nanos())
}

fn epoch(t: DateTime<Utc>) -> AttributeValue {
    n(t.timestamp())
}

fn key_of(pk: String) -> HashMap<String, AttributeValue> {
    HashMap::from([(PARTITION_KEY.to_string(), s(pk))])
}

/// Paths of one window's attributes. Each placeholder is made only when
/// asked for: DynamoDB refuses names and values an expression does not use.
struct WindowPaths {
    id: String,
}

impl WindowPaths {
    fn new(window_id: &str) -> WindowPaths {
        WindowPaths {
            id: window_id.to_string(),
        }
    }

    fn field(&self, ex: &mut Expr, name: &str) -> String {
        ex.path(&["w", &self.id, name])
    }
}

/// A plan's guards and changes as condition and SET clauses (no rule
/// here: each guard and change has one rendering).
fn render(ex: &mut Expr, write: &EntityWrite) -> (Vec<String>, Vec<String>) {
    let conds = write.guards.iter().map(|g| render_guard(ex, g)).collect();
    let sets = write.changes.iter().map(|c| render_change(ex, c)).collect();
    (conds, sets)
}

fn counter_name(c: Counter) -> &'static str {
    match c {
        Counter::Used => "used",
        Counter::Spent => "spent",
        Counter::Reserved => "reserved",
    }
}

fn render_guard(ex: &mut Expr, guard: &Guard) -> String {
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
    }
}

fn render_change(ex: &mut Expr, change: &Change) -> String {
    match change {
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
    }
}

// ---------------------------------------------------------------- items

fn window_item(w: &Window) -> AttributeValue {
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
    AttributeValue::M(m)
}

struct ItemReader<'a> {
    pk: &'a str,
}

impl<'a> ItemReader<'a> {
    fn corrupt(&self, message: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            pk: self.pk.to_string(),
            message: message.into(),
        }
    }

    fn opt_s(
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

    fn opt_n(
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
    fn counter(
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

    fn n(&self, m: &HashMap<String, AttributeValue>, name: &str) -> Result<i64, StoreError> {
        self.opt_n(m, name)?
            .ok_or_else(|| self.corrupt(format!("{name} is missing")))
    }

    fn time(
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

    fn bool(&self, m: &HashMap<String, AttributeValue>, name: &str) -> bool {
        matches!(m.get(name), Some(AttributeValue::Bool(true)))
    }
}

/// An integer in DynamoDB's number form, clamped to `i64`; `None` if it
/// is not an integer.
fn saturating_integer(text: &str) -> Option<i64> {
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

fn entity_item(e: &Entity) -> HashMap<String, AttributeValue> {
    let mut item = key_of(entity_pk(&e.entity));
    item.insert("kind".into(), s(e.entity.kind.as_str()));
    item.insert("id".into(), s(e.entity.id.clone()));
    item.insert("ver".into(), n(e.version as i64));
    if e.incarnation != 0 {
        item.insert(INCARNATION.into(), n(e.incarnation as i64));
    }
    item.insert(
        "w".into(),
        AttributeValue::M(e.windows.iter().map(|w| (w.id(), window_item(w))).collect()),
    );
    item.extend(entity_config_attributes(e));
    item.insert("key_count".into(), n(e.key_count));
    item.insert("created_at".into(), epoch(e.created_at));
    if e.entity.kind == EntityKind::Key {
        item.insert(OWNERS.into(), AttributeValue::M(HashMap::new()));
    }
    item
}

/// Keys carry a snapshot of their user's and team's configuration (id,
/// version, each window's limit and generation) under this attribute, so a
/// cold authorizer learns the whole chain from the key item alone. It is
/// only ever a hint: the reservation is conditional on the versions in it,
/// and a window's counters and boundary are checked by the write itself.
const OWNERS: &str = "owners";

/// The attribute that holds an entity's incarnation (see
/// [`Entity::incarnation`]).
const INCARNATION: &str = "inc";

/// The condition "this item is the incarnation `incarnation`" (an item
/// written before incarnations existed has none: incarnation 0).
fn incarnation_is(ex: &mut Expr, incarnation: u64) -> String {
    let inc = ex.name(INCARNATION);
    if incarnation == 0 {
        format!("attribute_not_exists({inc})")
    } else {
        let v = ex.value(n(incarnation as i64));
        format!("{inc} = {v}")
    }
}

fn owner_snapshot(e: &Entity) -> AttributeValue {
    let mut snapshot = HashMap::from([
        ("id".to_string(), s(e.entity.id.clone())),
        ("ver".to_string(), n(e.version as i64)),
        (INCARNATION.to_string(), n(e.incarnation as i64)),
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
    AttributeValue::M(snapshot)
}

/// The attribute of an entity's reservation floor (nano-USD).
const FLOOR: &str = "floor";

/// The owner `kind` (`user`/`team`) with id `id` as the key's snapshot
/// knows it: limits and generations, counters unknown (zero), boundaries
/// unknown (`None`: the write checks them).
fn owner_from_snapshot(
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
    e.reservation_floor = r.opt_n(snap, FLOOR).ok()?.map(Money::from_nanos);
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
            });
        }
    }
    e.windows.sort_by_key(|w| w.span);
    Some(e)
}

/// The attributes an admin update rewrites (everything but counters,
/// windows, version and creation time). Absent optional values are
/// `None`, to be REMOVEd.
fn entity_config_attributes(e: &Entity) -> Vec<(String, AttributeValue)> {
    let mut out = vec![
        ("blocked".to_string(), AttributeValue::Bool(e.blocked)),
        ("updated_at".to_string(), epoch(e.updated_at)),
        (
            "attrs".to_string(),
            s(Value::Object(e.attributes.clone()).to_string()),
        ),
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
    if let Some(x) = e.expires {
        out.push(("expires".into(), epoch(x)));
    }
    if let Some(floor) = e.reservation_floor {
        out.push((FLOOR.into(), money(floor)));
    }
    out
}

/// Optional configuration attributes: removed when absent in the new form.
const OPTIONAL_CONFIG: [&str; 8] = [
    "user_id", "team_id", "expires", "gsi1pk", "gsi1sk", "gsi2pk", "gsi2sk", FLOOR,
];

fn entity_from_item(item: &HashMap<String, AttributeValue>) -> Result<Entity, StoreError> {
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
            });
        }
    }
    windows.sort_by_key(|w| w.span);
    let attributes = match r.opt_s(item, "attrs")? {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            _ => return Err(r.corrupt("attrs is not a JSON object")),
        },
        None => Map::new(),
    };
    let created_at = r.time(item, "created_at")?.unwrap_or_default();
    Ok(Entity {
        entity,
        version: r.n(item, "ver")? as u64,
        incarnation: r.opt_n(item, INCARNATION)?.unwrap_or(0) as u64,
        reservation_floor: r.opt_n(item, FLOOR)?.map(Money::from_nanos),
        windows,
        user_id: r.opt_s(item, "user_id")?.map(str::to_string),
        team_id: r.opt_s(item, "team_id")?.map(str::to_string),
        blocked: r.bool(item, "blocked"),
        expires: r.time(item, "expires")?,
        key_count: r.opt_n(item, "key_count")?.unwrap_or(0),
        created_at,
        updated_at: r.time(item, "updated_at")?.unwrap_or(created_at),
        attributes,
    })
}

fn held_shard(id: &str) -> u32 {
    id.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
        % HELD_SHARDS
}

fn expiry_sort_key(t: DateTime<Utc>) -> String {
    format!("{:012}", t.timestamp().max(0))
}

fn reservation_item(r: &Reservation) -> HashMap<String, AttributeValue> {
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
    item.insert(
        TTL_ATTRIBUTE.into(),
        n(r.expires_at.timestamp() + FINISHED_RETENTION_SECONDS),
    );
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

fn reservation_from_item(
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

// ---------------------------------------------------------------- writes

impl DynamoStore {
    fn update(
        &self,
        pk: String,
        sets: Vec<String>,
        removes: Vec<String>,
        conds: Vec<String>,
        ex: &Expr,
    ) -> Result<Update, StoreError> {
        let mut expression = format!("SET {}", sets.join(", "));
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
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

    fn condition_check(
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

    fn put(
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

    /// The snapshots of `owners` (as they are now) for a key item.
    async fn owner_snapshots(&self, owners: &[EntityRef]) -> Result<AttributeValue, StoreError> {
        let loaded = self.load_many(owners).await?;
        Ok(AttributeValue::M(
            loaded
                .iter()
                .map(|o| (o.entity.kind.as_str().to_string(), owner_snapshot(o)))
                .collect(),
        ))
    }

    /// After an admin update: a user or team refreshes the snapshot in
    /// each of its keys (never replacing a newer one), a key re-reads its
    /// owners. Best effort: a snapshot left stale costs a cold authorizer
    /// one more read, never a wrong admission.
    async fn refresh_snapshots(&self, old: &Entity, new: &Entity) {
        let result = match new.entity.kind {
            EntityKind::Key => match self.owner_snapshots(&new.owners()).await {
                Ok(snapshots) => {
                    let mut ex = Expr::default();
                    let owners = ex.name(OWNERS);
                    let v = ex.value(snapshots);
                    let pk = ex.name(PARTITION_KEY);
                    let request = self
                        .client
                        .update_item()
                        .table_name(&self.table)
                        .set_key(Some(key_of(entity_pk(&new.entity))))
                        .update_expression(format!("SET {owners} = {v}"))
                        .condition_expression(format!("attribute_exists({pk})"))
                        .set_expression_attribute_names(ex.names())
                        .set_expression_attribute_values(ex.values());
                    send_plain(|| request.clone().send())
                        .await
                        .map(|_| ())
                        .map_err(|e| unavailable("refresh key snapshot", e))
                }
                Err(e) => Err(e),
            },
            EntityKind::User | EntityKind::Team => {
                // The stored form: kept windows keep their generation.
                let mut stored = new.clone();
                stored.version = old.version + 1;
                for w in &mut stored.windows {
                    if let Some(o) = old.window(&w.id()) {
                        w.generation = o.generation;
                    }
                }
                self.push_snapshot(&stored).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "owner snapshot not refreshed");
        }
    }

    async fn push_snapshot(&self, owner: &Entity) -> Result<(), StoreError> {
        let snapshot = owner_snapshot(owner);
        for key in self.keys_of(&owner.entity).await? {
            let mut ex = Expr::default();
            let owners = ex.name(OWNERS);
            let kind = ex.name(owner.entity.kind.as_str());
            let ver = ex.name("ver");
            let v = ex.value(n(owner.version as i64));
            let inc = ex.name(INCARNATION);
            let inc_value = ex.value(n(owner.incarnation as i64));
            let snap = ex.value(snapshot.clone());
            let request = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_of(entity_pk(&EntityRef::key(key)))))
                .update_expression(format!("SET {owners}.{kind} = {snap}"))
                .condition_expression(format!(
                    "attribute_exists({owners}) AND (attribute_not_exists({owners}.{kind}) OR {owners}.{kind}.{ver} < {v} OR {owners}.{kind}.{inc} <> {inc_value} OR attribute_not_exists({owners}.{kind}.{inc}))"
                ))
                .set_expression_attribute_names(ex.names())
                .set_expression_attribute_values(ex.values());
            let result = send_plain(|| request.clone().send()).await;
            match result {
                Ok(_) => {}
                Err(SdkError::ServiceError(e))
                    if e.err().is_conditional_check_failed_exception() => {}
                Err(e) => return Err(unavailable("push owner snapshot", e)),
            }
        }
        Ok(())
    }

    /// One entity's write of a plan, as a transaction item (a condition
    /// check when it changes nothing).
    fn entity_write(&self, write: &EntityWrite) -> Result<TransactWriteItem, StoreError> {
        let mut ex = Expr::default();
        let (conds, sets) = render(&mut ex, write);
        let pk = entity_pk(&write.entity);
        if sets.is_empty() {
            let check = self.condition_check(pk, conds, &ex)?;
            return Ok(TransactWriteItem::builder().condition_check(check).build());
        }
        let update = self.update(pk, sets, vec![], conds, &ex)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    /// A reservation's end (state, cost, instant) as a transaction item;
    /// it leaves the index of held reservations.
    fn reservation_end(&self, end: &ReservationEnd) -> Result<TransactWriteItem, StoreError> {
        let mut ex = Expr::default();
        let state = ex.name("state");
        let to = ex.value(s(end.to.as_str()));
        let at = ex.value(epoch(end.at));
        let mut sets = vec![format!("{state} = {to}")];
        let when = if end.to == ReservationState::Expired {
            "expired_at"
        } else {
            "settled_at"
        };
        sets.push(format!("{} = {at}", ex.name(when)));
        if let Some(cost) = end.cost {
            let c = ex.value(money(cost));
            sets.push(format!("{} = {c}", ex.name("cost")));
        }
        let removes = vec![ex.name("gsi1pk"), ex.name("gsi1sk")];
        let conds = end
            .guards
            .iter()
            .map(|g| match g {
                ReservationGuard::State(from) => {
                    let v = ex.value(s(from.as_str()));
                    format!("{state} = {v}")
                }
                ReservationGuard::Digest(d) => {
                    let (name, v) = (ex.name("digest"), ex.value(s(d.clone())));
                    format!("{name} = {v}")
                }
            })
            .collect();
        let update = self.update(reservation_pk(&end.id), sets, removes, conds, &ex)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }

    async fn batch_get(
        &self,
        pks: Vec<String>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut pending: Vec<HashMap<String, AttributeValue>> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for pk in pks {
            if seen.insert(pk.clone()) {
                pending.push(key_of(pk));
            }
        }
        let mut found = Vec::new();
        // BatchGetItem takes at most 100 keys, and answers at most 16 MB:
        // what it did not read comes back as unprocessed keys (also under
        // throttling), to ask for again after a pause.
        let mut rounds_short = 0;
        while !pending.is_empty() {
            let rest = pending.split_off(pending.len().min(BATCH_GET_KEYS));
            let request = KeysAndAttributes::builder()
                .set_keys(Some(std::mem::replace(&mut pending, rest)))
                .consistent_read(true)
                .build()
                .map_err(build_error)?;
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(|e| unavailable("batch get", e))?;
            if let Some(items) = out.responses().and_then(|r| r.get(&self.table)) {
                found.extend(items.iter().cloned());
            }
            if let Some(rest) = out.unprocessed_keys().and_then(|u| u.get(&self.table)) {
                if !rest.keys().is_empty() {
                    if rounds_short == BATCH_GET_ROUNDS {
                        return Err(StoreError::Unavailable(format!(
                            "batch get left {} keys unprocessed after {BATCH_GET_ROUNDS} retries",
                            rest.keys().len() + pending.len()
                        )));
                    }
                    pending.extend(rest.keys().iter().cloned());
                    backoff(rounds_short).await;
                    rounds_short += 1;
                }
            }
        }
        Ok(found)
    }

    async fn query_all(
        &self,
        index: &str,
        pk_attr: &str,
        pk: String,
        sk_upper: Option<(&str, String)>,
        limit: usize,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let mut ex = Expr::default();
            let pk_name = ex.name(pk_attr);
            let pk_value = ex.value(s(pk.clone()));
            let mut condition = format!("{pk_name} = {pk_value}");
            if let Some((sk_attr, upper)) = &sk_upper {
                let sk = ex.name(sk_attr);
                let v = ex.value(s(upper.clone()));
                condition.push_str(&format!(" AND {sk} <= {v}"));
            }
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(condition)
                .set_expression_attribute_names(ex.names())
                .set_expression_attribute_values(ex.values())
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| unavailable("query", e))?;
            out.extend(page.items().iter().cloned());
            start = page.last_evaluated_key().cloned();
            if start.is_none() || out.len() >= limit {
                return Ok(out);
            }
        }
    }
}

#[async_trait]
impl Reads for DynamoStore {
    async fn load(&self, entity: &EntityRef) -> Result<Option<Entity>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(entity_pk(entity))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get item", e))?;
        out.item().map(entity_from_item).transpose()
    }

    async fn load_many(&self, entities: &[EntityRef]) -> Result<Vec<Entity>, StoreError> {
        let items = self
            .batch_get(entities.iter().map(entity_pk).collect())
            .await?;
        let mut found = items
            .iter()
            .map(entity_from_item)
            .collect::<Result<Vec<_>, _>>()?;
        found.sort_by(|a, b| a.entity.cmp(&b.entity));
        Ok(found)
    }
}

#[async_trait]
impl BudgetStore for DynamoStore {
    async fn load_chain(&self, key_hash: &str) -> Result<Option<Chain>, StoreError> {
        let Some(key) = self.load(&EntityRef::key(key_hash)).await? else {
            return Ok(None);
        };
        let owners = self.load_many(&key.owners()).await?;
        let mut chain = Chain {
            key,
            user: None,
            team: None,
        };
        for e in owners {
            chain.set_owner(e);
        }
        Ok(Some(chain))
    }

    async fn load_chain_and_reservation(
        &self,
        key_hash: &str,
        id: &str,
    ) -> Result<(Option<Chain>, Option<Reservation>), StoreError> {
        let Some(key) = self.load(&EntityRef::key(key_hash)).await? else {
            return Ok((None, None));
        };
        // The owners and the reservation in one BatchGetItem.
        let mut pks: Vec<String> = key.owners().iter().map(entity_pk).collect();
        pks.push(reservation_pk(id));
        let mut chain = Chain {
            key,
            user: None,
            team: None,
        };
        let mut reservation = None;
        for item in self.batch_get(pks).await? {
            if matches!(item.get("kind"), Some(AttributeValue::S(k)) if k == "reservation") {
                reservation = Some(reservation_from_item(&item)?);
            } else {
                chain.set_owner(entity_from_item(&item)?);
            }
        }
        Ok((Some(chain), reservation))
    }

    async fn load_chain_quick(&self, key_hash: &str) -> Result<Option<Chain>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(entity_pk(&EntityRef::key(key_hash)))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get item", e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let key = entity_from_item(item)?;
        let mut chain = Chain {
            user: None,
            team: None,
            key,
        };
        let mut missing = Vec::new();
        for owner in chain.key.owners() {
            match owner_from_snapshot(item, owner.kind, &owner.id) {
                Some(e) => chain.set_owner(e),
                None => missing.push(owner),
            }
        }
        for e in self.load_many(&missing).await? {
            chain.set_owner(e);
        }
        Ok(Some(chain))
    }

    async fn reserve(
        &self,
        chain: &Chain,
        reservation: &Reservation,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<ReserveWrite, StoreError> {
        let Some(writes) = plan::reserve_chain(chain, reservation.amount, now, clock) else {
            return Ok(ReserveWrite::Stale);
        };
        let mut items = writes
            .iter()
            .map(|w| self.entity_write(w))
            .collect::<Result<Vec<_>, _>>()?;
        // Recorded only if its id is new (a retry finds it).
        let put = self.put(reservation_item(reservation), "attribute_not_exists(pk)")?;
        items.push(TransactWriteItem::builder().put(put).build());
        let last = items.len() - 1;
        match transact(&self.client, items).await? {
            TxOutcome::Committed => Ok(ReserveWrite::Reserved),
            TxOutcome::Busy => Ok(ReserveWrite::Conflict),
            // The reservation's own put: its id exists already.
            TxOutcome::Failed(failed) if failed.get(last) == Some(&true) => {
                Ok(ReserveWrite::Duplicate)
            }
            TxOutcome::Failed(_) => Ok(ReserveWrite::Stale),
        }
    }

    async fn reservation(&self, id: &str) -> Result<Option<Reservation>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(reservation_pk(id))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| unavailable("get reservation", e))?;
        match out.item() {
            Some(item) if matches!(item.get("kind"), Some(AttributeValue::S(k)) if k == "reservation") => {
                reservation_from_item(item).map(Some)
            }
            _ => Ok(None),
        }
    }

    async fn finish(
        &self,
        reservation: &Reservation,
        entities: Option<&[Entity]>,
        finish: Finish,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<FinishWrite, StoreError> {
        let (writes, end) = plan::end_reservation(reservation, entities, finish, now, clock);
        let mut items = writes
            .iter()
            .map(|w| self.entity_write(w))
            .collect::<Result<Vec<_>, _>>()?;
        items.push(self.reservation_end(&end)?);
        match transact(&self.client, items).await? {
            TxOutcome::Committed => Ok(FinishWrite::Done),
            TxOutcome::Busy => Ok(FinishWrite::Busy),
            TxOutcome::Failed(_) => Ok(FinishWrite::Stale),
        }
    }
}

#[async_trait]
impl ResetStore for DynamoStore {
    async fn roll_over(
        &self,
        entity: &Entity,
        now: DateTime<Utc>,
        clock: &ResetClock,
    ) -> Result<Option<usize>, StoreError> {
        let Some(write) = plan::roll_over(entity, now, clock) else {
            return Ok(Some(0));
        };
        let rolled = write
            .guards
            .iter()
            .filter(|g| matches!(g, Guard::ResetAtIs(..)))
            .count();
        let mut ex = Expr::default();
        let (conds, sets) = render(&mut ex, &write);
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(entity_pk(&entity.entity))))
            .update_expression(format!("SET {}", sets.join(", ")))
            .condition_expression(conds.join(" AND "))
            .set_expression_attribute_names(ex.names())
            .set_expression_attribute_values(ex.values());
        let result = send_plain(|| request.clone().send()).await;
        match result {
            Ok(_) => Ok(Some(rolled)),
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => {
                Ok(None)
            }
            Err(e) => Err(unavailable("roll over", e)),
        }
    }

    async fn scan_entities(&self, cursor: Cursor) -> Result<(Vec<Entity>, Cursor), StoreError> {
        let mut ex = Expr::default();
        let kind = ex.name("kind");
        let (k, u, t) = (ex.value(s("key")), ex.value(s("user")), ex.value(s("team")));
        let page = self
            .client
            .scan()
            .table_name(&self.table)
            .filter_expression(format!("{kind} IN ({k}, {u}, {t})"))
            .set_expression_attribute_names(ex.names())
            .set_expression_attribute_values(ex.values())
            .consistent_read(true)
            .set_exclusive_start_key(cursor.map(key_of))
            .send()
            .await
            .map_err(|e| unavailable("scan", e))?;
        let entities = page
            .items()
            .iter()
            .map(entity_from_item)
            .collect::<Result<Vec<_>, _>>()?;
        // The table's key is its partition key alone: the cursor is it.
        let next = page
            .last_evaluated_key()
            .and_then(|k| match k.get(PARTITION_KEY) {
                Some(AttributeValue::S(pk)) => Some(pk.clone()),
                _ => None,
            });
        Ok((entities, next))
    }

    async fn expired_reservations(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // The index holds keys only (no write amplification on every
        // counter update); the sort key already says the expiry is due.
        let mut out = Vec::new();
        for shard in 0..HELD_SHARDS {
            let items = self
                .query_all(
                    "gsi1",
                    "gsi1pk",
                    format!("held#{shard}"),
                    Some(("gsi1sk", expiry_sort_key(now))),
                    limit,
                )
                .await?;
            out.extend(
                items
                    .iter()
                    .filter_map(|item| match item.get(PARTITION_KEY) {
                        Some(AttributeValue::S(pk)) => pk.strip_prefix("res#").map(str::to_string),
                        _ => None,
                    }),
            );
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl AdminStore for DynamoStore {
    async fn create(&self, entity: &Entity) -> Result<AdminWrite, StoreError> {
        let mut item = entity_item(entity);
        let owners = entity.owners();
        if !owners.is_empty() {
            item.insert(OWNERS.into(), self.owner_snapshots(&owners).await?);
        }
        let put = self.put(item, "attribute_not_exists(pk)")?;
        let mut items = vec![TransactWriteItem::builder().put(put).build()];
        for owner in &owners {
            items.push(count_key(self, owner, 1)?);
        }
        match transact(&self.client, items).await? {
            TxOutcome::Committed => Ok(AdminWrite::Done),
            TxOutcome::Busy => Ok(AdminWrite::Conflict),
            TxOutcome::Failed(failed) => Ok(admin_cancellation(
                &failed,
                &owners,
                AdminWrite::AlreadyExists,
            )),
        }
    }

    async fn update(&self, old: &Entity, new: &Entity) -> Result<AdminWrite, StoreError> {
        let (guards, edits) = plan::update(old, new);
        let mut ex = Expr::default();
        let conds = guards.iter().map(|g| render_guard(&mut ex, g)).collect();
        let (ver, one) = (ex.name("ver"), ex.value(n(1)));
        let mut sets = vec![format!("{ver} = {ver} + {one}")];
        let mut removes = Vec::new();
        let config = entity_config_attributes(new);
        for (name, value) in &config {
            let p = ex.name(name);
            let v = ex.value(value.clone());
            sets.push(format!("{p} = {v}"));
        }
        for name in OPTIONAL_CONFIG {
            if !config.iter().any(|(n, _)| n == name) {
                removes.push(ex.name(name));
            }
        }
        for edit in &edits {
            match edit {
                WindowEdit::Limit { id, max, legacy } => {
                    let (max_path, legacy_path) =
                        (ex.path(&["w", id, "max"]), ex.path(&["w", id, "legacy"]));
                    let (mv, lv) = (
                        ex.value(money(*max)),
                        ex.value(AttributeValue::Bool(*legacy)),
                    );
                    sets.push(format!("{max_path} = {mv}"));
                    sets.push(format!("{legacy_path} = {lv}"));
                }
                WindowEdit::Open(w) => {
                    let path = ex.path(&["w", &w.id()]);
                    let v = ex.value(window_item(w));
                    sets.push(format!("{path} = {v}"));
                }
                WindowEdit::Drop(id) => removes.push(ex.path(&["w", id])),
            }
        }
        let update = self.update(entity_pk(&old.entity), sets, removes, conds, &ex)?;
        let mut items = vec![TransactWriteItem::builder().update(update).build()];
        // A key that changes owner moves its count from the old to the new.
        let mut added = Vec::new();
        if old.entity.kind == EntityKind::Key {
            let pairs = [
                (
                    old.user_id.as_ref().map(|u| EntityRef::user(u.clone())),
                    new.user_id.as_ref().map(|u| EntityRef::user(u.clone())),
                ),
                (
                    old.team_id.as_ref().map(|t| EntityRef::team(t.clone())),
                    new.team_id.as_ref().map(|t| EntityRef::team(t.clone())),
                ),
            ];
            for (before, after) in pairs {
                if before == after {
                    continue;
                }
                if let Some(b) = before {
                    items.push(count_key(self, &b, -1)?);
                }
                if let Some(a) = after {
                    added.push((items.len(), a.clone()));
                    items.push(count_key(self, &a, 1)?);
                }
            }
        }
        match transact(&self.client, items).await? {
            TxOutcome::Committed => {
                self.refresh_snapshots(old, new).await;
                Ok(AdminWrite::Done)
            }
            TxOutcome::Busy => Ok(AdminWrite::Conflict),
            TxOutcome::Failed(failed) => {
                for (i, owner) in &added {
                    if failed.get(*i) == Some(&true) {
                        return Ok(AdminWrite::Missing(owner.clone()));
                    }
                }
                Ok(AdminWrite::Conflict)
            }
        }
    }

    async fn delete(&self, entity: &Entity) -> Result<AdminWrite, StoreError> {
        let mut ex = Expr::default();
        let condition = plan::delete(entity)
            .iter()
            .map(|g| render_guard(&mut ex, g))
            .collect::<Vec<_>>()
            .join(" AND ");
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key_of(entity_pk(&entity.entity))))
            .condition_expression(condition)
            .set_expression_attribute_names(ex.names())
            .set_expression_attribute_values(ex.values())
            .build()
            .map_err(build_error)?;
        let mut items = vec![TransactWriteItem::builder().delete(delete).build()];
        if entity.entity.kind == EntityKind::Key {
            for owner in entity
                .user_id
                .iter()
                .map(|u| EntityRef::user(u.clone()))
                .chain(entity.team_id.iter().map(|t| EntityRef::team(t.clone())))
            {
                items.push(count_key(self, &owner, -1)?);
            }
        }
        match transact(&self.client, items).await? {
            TxOutcome::Committed => Ok(AdminWrite::Done),
            TxOutcome::Busy | TxOutcome::Failed(_) => Ok(AdminWrite::Conflict),
        }
    }

    async fn keys_of(&self, owner: &EntityRef) -> Result<Vec<String>, StoreError> {
        let (index, attr) = match owner.kind {
            EntityKind::User => ("gsi1", "gsi1pk"),
            EntityKind::Team => ("gsi2", "gsi2pk"),
            EntityKind::Key => return Ok(Vec::new()),
        };
        let items = self
            .query_all(index, attr, owner_index_pk(owner), None, usize::MAX)
            .await?;
        // The index's sort key is the key's hash (the index holds keys only).
        let sort_key = if owner.kind == EntityKind::User {
            "gsi1sk"
        } else {
            "gsi2sk"
        };
        let mut keys: Vec<String> = items
            .iter()
            .filter_map(|i| match i.get(sort_key) {
                Some(AttributeValue::S(id)) => Some(id.clone()),
                _ => None,
            })
            .collect();
        keys.sort();
        Ok(keys)
    }
}

/// `key_count += delta` on an owner that must exist.
fn count_key(
    store: &DynamoStore,
    owner: &EntityRef,
    delta: i64,
) -> Result<TransactWriteItem, StoreError> {
    let mut ex = Expr::default();
    let kc = ex.name("key_count");
    let d = ex.value(n(delta));
    let zero = ex.value(n(0));
    let pk = ex.name(PARTITION_KEY);
    let update = store.update(
        entity_pk(owner),
        vec![format!("{kc} = if_not_exists({kc}, {zero}) + {d}")],
        vec![],
        vec![format!("attribute_exists({pk})")],
        &ex,
    )?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// What failed conditions (per item) mean for a create.
fn admin_cancellation(failed: &[bool], owners: &[EntityRef], first: AdminWrite) -> AdminWrite {
    if failed.first() == Some(&true) {
        return first;
    }
    for (i, owner) in owners.iter().enumerate() {
        if failed.get(i + 1) == Some(&true) {
            return AdminWrite::Missing(owner.clone());
        }
    }
    AdminWrite::Conflict
}

#[cfg(test)]
mod tests {
    use super::*;

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
        e.attributes
            .insert("metadata".into(), serde_json::json!({"team": "x"}));
        let back = entity_from_item(&entity_item(&e)).unwrap();
        assert_eq!(back, e);
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
    fn cancellation_reasons_are_classified_with_precedence() {
        let r = |codes: &[&str]| {
            cancelled(codes.iter().map(|c| classify(c, Some("because"))).collect())
        };
        assert!(matches!(
            r(&["None", "ThrottlingError"]),
            Ok(TxOutcome::Busy)
        ));
        assert!(matches!(
            r(&["ProvisionedThroughputExceeded"]),
            Ok(TxOutcome::Busy)
        ));
        assert!(matches!(
            r(&["ConditionalCheckFailed", "TransactionConflict"]),
            Ok(TxOutcome::Busy)
        ));
        match r(&["None", "ConditionalCheckFailed"]) {
            Ok(TxOutcome::Failed(f)) => assert_eq!(f, vec![false, true]),
            other => panic!("{other:?}"),
        }
        match r(&[
            "ConditionalCheckFailed",
            "ValidationError",
            "ThrottlingError",
        ]) {
            Err(StoreError::Rejected(m)) => assert!(m.contains("ValidationError: because"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r(&["ItemCollectionSizeLimitExceeded"]),
            Err(StoreError::Rejected(_))
        ));
        assert!(matches!(
            r(&["SomethingNew", "ThrottlingError"]),
            Err(StoreError::Unavailable(_))
        ));
        assert!(matches!(
            r(&["None", "None"]),
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(
            classify("TransactionInProgressException", None),
            Some(Refusal::Conflict)
        );
        assert_eq!(classify("None", None), None);
    }

    #[test]
    fn reservation_items_round_trip() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap();
        let r = Reservation {
            id: "r1".into(),
            amount: Money::from_nanos(5),
            holds: vec![Hold {
                entity: EntityRef::team("t"),
                incarnation: 11,
                window: "1d".into(),
                generation: 7,
            }],
            key_hash: "abc".into(),
            user_id: None,
            team_id: Some("t".into()),
            state: ReservationState::Held,
            created_at: now,
            expires_at: now,
            cost: None,
            settled_at: None,
            expired_at: None,
            receipt_digest: Some("d".into()),
            receipt: None,
            remaining: None,
            tightest: None,
        };
        assert_eq!(reservation_from_item(&reservation_item(&r)).unwrap(), r);
    }
}
